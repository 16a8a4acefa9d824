//! The transactional producer of the Kafka state backend (`checkpoint.backend: kafka`):
//! events and the state records they imply are produced in one Kafka transaction, so a
//! consumer reading `read_committed` sees an event exactly when the state that accounts for
//! it is stored. After a crash or a failover the next leader resumes from that state:
//! nothing is sent twice, nothing is skipped (invariant 7).
//!
//! - **One transaction at a time**, filled by every stream, cut by age
//!   (`transactionIntervalMs`) or size (`transactionMaxEvents`). Just before it commits,
//!   the state records — the last change of each key ([`LogDelta`]) — go into it.
//! - **Ack = commit.** An event's acknowledgement resolves when its transaction commits.
//! - **Abort = re-send whole.** A transaction librdkafka must abort (a delivery failed: a
//!   deleted topic, a broker error) is produced again whole and in order in a new one; new
//!   events wait meanwhile (the lock below), so order per key is kept.
//! - **Fencing.** `init_transactions` with the deployment's `transactional.id` bumps its
//!   epoch: the previous holder's producer can commit nothing more. A producer that finds
//!   itself fenced (or dead for another reason) fails every pending acknowledgement and
//!   cancels [`TxnSink::dead`]: the app stops publishing and steps down.
//! - **Start.** `init_transactions` first (it aborts whatever a previous leader left
//!   open), then the state topic is read to its end, `read_committed`, into a [`LogState`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::{Notify, oneshot};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use super::config::KafkaSinkConfig;
use super::{Out, QuietContext, Records, client, log_quietly, without_producer_settings};
use crate::checkpoint::Progress;
use crate::checkpoint::log::{LogDelta, LogRecord, LogState};
use crate::envelope::Encoded;
use crate::sink::{Ack, Route, SendFuture, Sink, SinkCounters, SinkError, SinkHealth};

/// How long one blocking transaction call may take before it is tried again.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Reading the state topic fails when nothing arrives for this long.
const READ_STALL: Duration = Duration::from_secs(30);

/// The transactions' settings (`checkpoint.kafka`, resolved).
#[derive(Clone, Debug)]
pub struct TxnSettings {
    /// The compacted state topic.
    pub state_topic: String,
    /// Its replication factor when created.
    pub replication_factor: i32,
    /// The deployment's `transactional.id`.
    pub transactional_id: String,
    /// A transaction commits at most this long after its first event.
    pub interval: Duration,
    /// ... or once it holds this many events.
    pub max_events: usize,
    /// `transaction.timeout.ms`.
    pub timeout: Duration,
}

/// What a started transactional producer hands the app.
pub struct Started {
    /// The sink, also the writer of the state.
    pub sink: Arc<TxnSink>,
    /// The state as read back, kept current by every commit (the backend's reads).
    pub state: Arc<Mutex<LogState>>,
    /// The Secret redaction key every replica shares (from the state topic, or created
    /// there now; or the configured file's).
    pub redaction_key: Vec<u8>,
}

/// The Kafka sink of the Kafka state backend.
pub struct TxnSink {
    inner: Arc<TxnInner>,
    committer: AbortHandle,
}

impl Drop for TxnSink {
    fn drop(&mut self) {
        self.committer.abort();
    }
}

struct TxnInner {
    producer: Arc<ThreadedProducer<TxnContext>>,
    records: Records,
    settings: TxnSettings,
    state: Arc<Mutex<LogState>>,
    open: tokio::sync::Mutex<Open>,
    /// Wakes the committer: a transaction got its first event, filled up, or failed.
    wake: Notify,
    /// A commit (or its failure) freed room.
    committed: Notify,
    dead: CancellationToken,
    /// Why the producer is dead (fenced, fatal error), once it is.
    dead_reason: Mutex<Option<String>>,
    /// A transaction being aborted and re-sent, since when and why.
    failing: Mutex<Option<String>>,
    aborted: std::sync::atomic::AtomicU64,
}

/// The open transaction.
#[derive(Default)]
struct Open {
    begun: bool,
    first_at: Option<Instant>,
    /// Every record produced into it, in order: what an abort re-sends.
    outs: Vec<Out>,
    events: usize,
    delta: LogDelta,
    acks: Vec<oneshot::Sender<Result<(), SinkError>>>,
    /// A produce librdkafka refused: the transaction must be aborted and re-sent.
    failed: Option<String>,
}

impl Open {
    fn is_empty(&self) -> bool {
        self.outs.is_empty() && self.delta.is_empty() && self.acks.is_empty()
    }
}

/// What a failed transaction call means.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// Fenced, or a fatal producer error: nothing more can be produced.
    Dead(String),
    /// The transaction must be aborted (and re-sent).
    Abort(String),
    /// Try the same call again.
    Retry(String),
}

fn classify(e: &KafkaError) -> Failure {
    let text = e.to_string();
    match e {
        KafkaError::Transaction(r) => {
            let fenced = matches!(
                r.code(),
                RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::Fenced
            );
            if fenced {
                Failure::Dead(format!(
                    "fenced: another kubewire with the same transactional.id took over ({text})"
                ))
            } else if r.is_fatal() {
                Failure::Dead(format!("fatal kafka producer error: {text}"))
            } else if r.txn_requires_abort() {
                Failure::Abort(text)
            } else {
                Failure::Retry(text)
            }
        }
        other => match other.rdkafka_error_code() {
            Some(
                RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::Fenced,
            ) => Failure::Dead(format!(
                "fenced: another kubewire with the same transactional.id took over ({text})"
            )),
            Some(RDKafkaErrorCode::Fatal) => {
                Failure::Dead(format!("fatal kafka producer error: {text}"))
            }
            _ => Failure::Abort(text),
        },
    }
}

/// An `init_transactions` failure, as a start-up error naming what is missing.
fn init_error(e: &KafkaError, id: &str) -> SinkError {
    let code = e.rdkafka_error_code();
    match code {
        Some(RDKafkaErrorCode::TransactionalIdAuthorizationFailed) => SinkError::Config(format!(
            "kafka refuses transactions for transactional.id {id:?}: kubewire needs the ACLs TransactionalId Write and Describe on it and IdempotentWrite on the cluster ({e}); or set checkpoint.backend: embedded"
        )),
        Some(RDKafkaErrorCode::ClusterAuthorizationFailed) => SinkError::Config(format!(
            "kafka refuses idempotent writes: kubewire needs the ACL IdempotentWrite on the cluster ({e}); or set checkpoint.backend: embedded"
        )),
        Some(
            RDKafkaErrorCode::UnsupportedVersion
            | RDKafkaErrorCode::UnsupportedFeature
            | RDKafkaErrorCode::CoordinatorNotAvailable,
        ) if !matches!(classify(e), Failure::Retry(_)) => SinkError::Config(format!(
            "the kafka brokers do not support transactions ({e}): they need Kafka ≥ 0.11 and transaction.state.log.replication.factor ≤ the number of brokers; or set checkpoint.backend: embedded"
        )),
        _ => SinkError::Connect(format!(
            "cannot connect to kafka to start transactions (transactional.id {id:?}): {e}"
        )),
    }
}

impl TxnSink {
    /// Builds the transactional producer, fences any previous one, reads the state topic
    /// (created when missing) to its end, and makes sure it holds the format version and
    /// the shared redaction key (`file_key`, when configured, is used instead and not
    /// stored). Unreachable brokers are [`SinkError::Connect`] (the caller waits and tries
    /// again); refusals name what is missing.
    pub async fn start(
        cfg: &KafkaSinkConfig,
        settings: TxnSettings,
        file_key: Option<Vec<u8>>,
    ) -> Result<Started, SinkError> {
        let env = |name: &str| std::env::var(name).ok();
        let (mut client_config, producer_max_bytes) = client::producer_config(cfg, &env)?;
        let timeout_ms = settings.timeout.as_millis().to_string();
        client_config
            .set("transactional.id", &settings.transactional_id)
            .set("transaction.timeout.ms", &timeout_ms)
            // librdkafka requires message.timeout.ms ≤ transaction.timeout.ms: a message
            // that times out fails its transaction, which is then aborted and re-sent.
            .set("message.timeout.ms", &timeout_ms);
        let records = Records::new(cfg, &client_config, producer_max_bytes)?;
        // The producer first: it connects at once, and its error callback is where an
        // authentication failure shows (the admin client's errors are quiet).
        let producer =
            ThreadedProducer::from_config_and_context(&client_config, TxnContext::default())
                .map_err(|e| SinkError::Config(format!("kafka transactional producer: {e}")))?;
        let producer = Arc::new(producer);
        let why = |e: SinkError| match (&e, producer.context().down.lock().unwrap().as_ref()) {
            (SinkError::Connect(text), Some(down)) => {
                SinkError::Connect(format!("{text} ({down})"))
            }
            _ => e,
        };
        records
            .topics
            .ensure_state_topic(&settings.state_topic, settings.replication_factor)
            .await
            .map_err(why)?;
        records.check_static_topic(&cfg.brokers).await?;
        let id = settings.transactional_id.clone();
        {
            let p = producer.clone();
            let timeout = settings.timeout.max(CALL_TIMEOUT);
            tokio::task::spawn_blocking(move || p.init_transactions(timeout))
                .await
                .map_err(|e| SinkError::Config(format!("init_transactions task: {e}")))?
                .map_err(|e| why(init_error(&e, &id)))?;
        }
        tracing::info!(transactional_id = %id, "kafka transactions initialised: any previous producer with this id is fenced");
        let consumer_config = without_producer_settings(&client_config);
        let topic = settings.state_topic.clone();
        let started = Instant::now();
        let (state, _) = tokio::task::spawn_blocking(move || read_state(&consumer_config, &topic))
            .await
            .map_err(|e| SinkError::Config(format!("state reader task: {e}")))??;
        let summary = state.summary();
        tracing::info!(
            topic = %settings.state_topic,
            records = state.records_read(),
            streams = summary.len(),
            objects = summary.iter().map(|s| s.2).sum::<usize>(),
            ms = started.elapsed().as_millis() as u64,
            "kafka state read"
        );
        let mut setup = LogDelta::default();
        if !state.has_format() {
            setup.with_format();
        }
        let redaction_key = match (file_key, state.redaction_key()) {
            (Some(k), _) => k,
            (None, Some(k)) => k.to_vec(),
            (None, None) => {
                let k = hex::encode(rand::random::<[u8; 32]>()).into_bytes();
                setup.with_redaction_key(k.clone());
                tracing::info!(topic = %settings.state_topic, "created the shared Secret redaction key in the state topic");
                k
            }
        };
        let inner = Arc::new(TxnInner {
            producer,
            records,
            settings,
            state: Arc::new(Mutex::new(state)),
            open: tokio::sync::Mutex::new(Open::default()),
            wake: Notify::new(),
            committed: Notify::new(),
            dead: CancellationToken::new(),
            dead_reason: Mutex::new(None),
            failing: Mutex::new(None),
            aborted: Default::default(),
        });
        if !setup.is_empty() {
            // Committed before any event can use the key.
            let mut open = inner.open.lock().await;
            open.delta = setup;
            inner.commit(&mut open).await;
            if let Some(reason) = inner.dead_reason() {
                return Err(SinkError::Publish(format!(
                    "cannot write the state topic's first records: {reason}"
                )));
            }
        }
        let committer = tokio::spawn(committer(inner.clone())).abort_handle();
        let state = inner.state.clone();
        Ok(Started {
            sink: Arc::new(TxnSink { inner, committer }),
            state,
            redaction_key,
        })
    }

    /// Cancelled when the producer can publish nothing more: fenced by a newer one, or a
    /// fatal error. [`Self::dead_reason`] says which.
    pub fn dead(&self) -> CancellationToken {
        self.inner.dead.clone()
    }

    /// Why the producer is dead, once it is.
    pub fn dead_reason(&self) -> Option<String> {
        self.inner.dead_reason()
    }

    /// Removes `streams` from the state topic (tombstones for their version and every
    /// index entry, in one transaction). Returns those that were there.
    pub async fn remove_streams(&self, streams: &[String]) -> Result<Vec<String>, SinkError> {
        let inner = &self.inner;
        let mut open = inner.open.lock().await;
        let mut removed = Vec::new();
        let mut records = Vec::new();
        {
            let state = inner.state.lock().unwrap();
            let known: HashSet<String> = state.summary().into_iter().map(|s| s.0).collect();
            for s in streams {
                if known.contains(s) {
                    removed.push(s.clone());
                    records.extend(state.removal(s));
                }
            }
        }
        if records.is_empty() {
            return Ok(removed);
        }
        inner
            .producer
            .begin_transaction()
            .map_err(|e| SinkError::Publish(format!("begin_transaction: {e}")))?;
        open.begun = true;
        inner
            .produce_state(&records)
            .await
            .map_err(SinkError::Publish)?;
        inner
            .blocking(|p| p.commit_transaction(CALL_TIMEOUT))
            .await
            .map_err(|e| SinkError::Publish(format!("commit_transaction: {e}")))?;
        open.begun = false;
        let mut state = inner.state.lock().unwrap();
        for (key, value) in &records {
            state
                .apply(key, value.as_deref())
                .map_err(|e| SinkError::Destination(e.to_string()))?;
        }
        Ok(removed)
    }
}

impl TxnInner {
    fn dead_reason(&self) -> Option<String> {
        self.dead_reason.lock().unwrap().clone()
    }

    fn dead_error(&self) -> SinkError {
        SinkError::Publish(
            self.dead_reason()
                .unwrap_or_else(|| "kafka producer closed".into()),
        )
    }

    /// Adds one item to the open transaction: its records (none for a state-only item)
    /// and its progress. The acknowledgement resolves when the transaction commits.
    async fn add(
        &self,
        outs: Vec<Out>,
        stream: &str,
        progress: Option<&Progress>,
    ) -> Result<oneshot::Receiver<Result<(), SinkError>>, SinkError> {
        let events = usize::from(!outs.is_empty());
        loop {
            let room = self.committed.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let mut open = self.open.lock().await;
            if self.dead.is_cancelled() {
                return Err(self.dead_error());
            }
            if open.events + events > self.settings.max_events && open.events > 0 {
                drop(open);
                self.wake.notify_one();
                room.await;
                continue;
            }
            if !open.begun {
                if let Err(e) = self.producer.begin_transaction() {
                    match classify(&e) {
                        Failure::Dead(reason) => {
                            self.die(reason, &mut open);
                            return Err(self.dead_error());
                        }
                        _ => return Err(SinkError::Publish(format!("begin_transaction: {e}"))),
                    }
                }
                open.begun = true;
            }
            let first = open.first_at.is_none();
            open.first_at.get_or_insert_with(Instant::now);
            for out in outs {
                if open.failed.is_none()
                    && let Err(reason) = self.produce(&out).await
                {
                    open.failed = Some(reason);
                    self.wake.notify_one();
                }
                open.outs.push(out);
            }
            open.events += events;
            if let Some(p) = progress {
                open.delta.apply(stream, p);
            }
            let (tx, rx) = oneshot::channel();
            open.acks.push(tx);
            if first || open.events >= self.settings.max_events {
                self.wake.notify_one();
            }
            return Ok(rx);
        }
    }

    /// Produces one record into the open transaction, waiting while the producer queue is
    /// full. `Err`: librdkafka refused it (the transaction must be aborted).
    async fn produce(&self, out: &Out) -> Result<(), String> {
        loop {
            let mut record: BaseRecord<'_, str, [u8], ()> =
                BaseRecord::to(&out.topic).key(out.key.as_str());
            if let Some(p) = &out.payload {
                record = record.payload(p.as_slice());
            }
            if let Some(h) = &out.headers {
                record = record.headers(h.clone());
            }
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // Deliveries free room whether or not the transaction commits.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(format!("topic {}: {e}", out.topic)),
            }
        }
    }

    /// Produces `records` to the state topic, into the open transaction, waiting while
    /// the producer queue is full.
    async fn produce_state(&self, records: &[LogRecord]) -> Result<(), String> {
        let topic = self.settings.state_topic.as_str();
        for (key, value) in records {
            loop {
                let mut record: BaseRecord<'_, [u8], [u8], ()> =
                    BaseRecord::to(topic).key(key.as_slice());
                if let Some(v) = value {
                    record = record.payload(v.as_slice());
                }
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(format!("state topic {topic}: {e}")),
                }
            }
        }
        Ok(())
    }

    async fn blocking<F>(&self, call: F) -> Result<(), KafkaError>
    where
        F: FnOnce(&ThreadedProducer<TxnContext>) -> Result<(), KafkaError> + Send + 'static,
    {
        let p = self.producer.clone();
        tokio::task::spawn_blocking(move || call(&p))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }

    /// Commits the open transaction: its state records, then `commit_transaction`; aborts
    /// and re-sends it whole while that fails; on success applies its state and resolves
    /// its acknowledgements. Called with the transaction locked: nothing else is produced
    /// meanwhile.
    async fn commit(&self, open: &mut Open) {
        if open.is_empty() {
            return;
        }
        let mut backoff = Duration::from_millis(100);
        let mut need_abort = open.failed.take();
        if !open.begun {
            // State only (the first records of a new log): no event began it.
            if let Err(e) = self.producer.begin_transaction() {
                match classify(&e) {
                    Failure::Dead(reason) => return self.die(reason, open),
                    _ => need_abort = Some(format!("begin_transaction: {e}")),
                }
            } else {
                open.begun = true;
            }
        }
        let mut state_sent = false;
        let mut round = 0u32;
        loop {
            let result = match need_abort.take() {
                Some(reason) => Err(Failure::Abort(reason)),
                None => {
                    let produced = if state_sent {
                        Ok(())
                    } else {
                        self.produce_state(&open.delta.records()).await
                    };
                    match produced {
                        Err(reason) => Err(Failure::Abort(reason)),
                        Ok(()) => {
                            state_sent = true;
                            self.blocking(|p| p.commit_transaction(CALL_TIMEOUT))
                                .await
                                .map_err(|e| classify(&e))
                        }
                    }
                }
            };
            match result {
                Ok(()) => {
                    self.state.lock().unwrap().commit(&open.delta);
                    let done = std::mem::take(open);
                    for ack in done.acks {
                        let _ = ack.send(Ok(()));
                    }
                    if let Some(was) = self.failing.lock().unwrap().take() {
                        tracing::info!(%was, rounds = round, "kafka transaction committed again after its failures: events flow");
                    }
                    self.producer.context().brokers_up();
                    self.committed.notify_waiters();
                    return;
                }
                Err(Failure::Dead(reason)) => {
                    self.die(reason, open);
                    return;
                }
                Err(Failure::Retry(reason)) => {
                    tracing::debug!(%reason, "kafka commit_transaction: retrying");
                }
                Err(Failure::Abort(reason)) => {
                    round += 1;
                    {
                        let mut failing = self.failing.lock().unwrap();
                        if failing.is_none() {
                            tracing::error!(%reason, events = open.events, "kafka transaction failed: it is aborted and produced again whole, in order; new events wait");
                            *failing = Some(format!(
                                "kafka transaction failing ({reason}); re-sending it (since {})",
                                super::since_now()
                            ));
                        } else {
                            tracing::debug!(%reason, round, "kafka transaction failed again");
                        }
                    }
                    match self
                        .blocking(|p| p.abort_transaction(CALL_TIMEOUT))
                        .await
                        .map_err(|e| classify(&e))
                    {
                        Ok(()) => {
                            self.aborted
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            open.begun = false;
                            state_sent = false;
                            if round > 1 {
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(Duration::from_secs(5));
                            }
                            match self.resend(open).await {
                                Ok(()) => {}
                                Err(Failure::Dead(reason)) => {
                                    self.die(reason, open);
                                    return;
                                }
                                Err(Failure::Abort(reason) | Failure::Retry(reason)) => {
                                    need_abort = Some(reason)
                                }
                            }
                            continue;
                        }
                        Err(Failure::Dead(reason)) => {
                            self.die(reason, open);
                            return;
                        }
                        Err(Failure::Abort(reason) | Failure::Retry(reason)) => {
                            tracing::debug!(%reason, "kafka abort_transaction: retrying");
                            need_abort = Some(reason);
                        }
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// After an abort: a new transaction with every record of the aborted one, in order.
    async fn resend(&self, open: &mut Open) -> Result<(), Failure> {
        self.producer
            .begin_transaction()
            .map_err(|e| classify(&e))?;
        open.begun = true;
        for out in &open.outs {
            self.produce(out).await.map_err(Failure::Abort)?;
        }
        Ok(())
    }

    /// The producer can publish nothing more: every pending acknowledgement fails, and
    /// the app is told.
    fn die(&self, reason: String, open: &mut Open) {
        tracing::error!(%reason, transactional_id = %self.settings.transactional_id, "kafka producer can publish nothing more: stopping");
        *self.dead_reason.lock().unwrap() = Some(reason.clone());
        let done = std::mem::take(open);
        for ack in done.acks {
            let _ = ack.send(Err(SinkError::Publish(reason.clone())));
        }
        self.dead.cancel();
        self.committed.notify_waiters();
    }
}

/// Commits the open transaction when it is due: `interval` after its first event, when it
/// is full, or at once when a produce failed.
async fn committer(inner: Arc<TxnInner>) {
    loop {
        let wake = inner.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let due = {
            let open = inner.open.lock().await;
            if inner.dead.is_cancelled() {
                return;
            }
            match open.first_at {
                _ if open.failed.is_some() || open.events >= inner.settings.max_events => {
                    Some(Instant::now())
                }
                Some(at) => Some(at + inner.settings.interval),
                None if !open.is_empty() => Some(Instant::now()),
                None => None,
            }
        };
        match due {
            None => wake.await,
            Some(at) if at > Instant::now() => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = &mut wake => continue,
                }
                let mut open = inner.open.lock().await;
                inner.commit(&mut open).await;
            }
            Some(_) => {
                let mut open = inner.open.lock().await;
                inner.commit(&mut open).await;
            }
        }
    }
}

/// Reads the state topic of `cfg`'s cluster without writing to it (`kubewire state show`):
/// the state, and the time of its newest record.
pub async fn read_state_topic(
    cfg: &KafkaSinkConfig,
    topic: &str,
) -> Result<(LogState, Option<std::time::SystemTime>), SinkError> {
    let env = |name: &str| std::env::var(name).ok();
    let (client_config, _) = client::producer_config(cfg, &env)?;
    let consumer_config = without_producer_settings(&client_config);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_state(&consumer_config, &topic))
        .await
        .map_err(|e| SinkError::Config(format!("state reader task: {e}")))?
        .map(|(state, newest)| {
            let newest = newest.map(|ms| {
                std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
            });
            (state, newest)
        })
}

/// Reads the state topic from its beginning to its end (`read_committed`: aborted and
/// still-open transactions are not state). Also the timestamp (ms) of its newest record.
fn read_state(config: &ClientConfig, topic: &str) -> Result<(LogState, Option<i64>), SinkError> {
    let mut c = config.clone();
    c.set("group.id", format!("kubewire-state-reader-{topic}"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer<QuietContext> =
        BaseConsumer::from_config_and_context(&c, QuietContext)
            .map_err(|e| SinkError::Config(format!("kafka state reader: {e}")))?;
    let unreachable = |e: KafkaError| {
        SinkError::Connect(format!(
            "cannot connect to kafka to read the state topic {topic}: {e}"
        ))
    };
    let md = consumer
        .fetch_metadata(Some(topic), CALL_TIMEOUT)
        .map_err(unreachable)?;
    let partitions = md
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    if partitions == 0 {
        return Err(SinkError::Destination(format!(
            "kafka state topic {topic} has no partitions in the metadata"
        )));
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(unreachable)?;
    }
    consumer.assign(&tpl).map_err(unreachable)?;
    let mut state = LogState::default();
    let mut newest: Option<i64> = None;
    let mut at_end: HashSet<i32> = HashSet::new();
    let mut last = Instant::now();
    while at_end.len() < partitions {
        match consumer.poll(Duration::from_millis(500)) {
            None => {
                if last.elapsed() > READ_STALL {
                    return Err(SinkError::Connect(format!(
                        "reading the kafka state topic {topic}: nothing for {}s",
                        READ_STALL.as_secs()
                    )));
                }
            }
            Some(Ok(m)) => {
                last = Instant::now();
                at_end.remove(&m.partition());
                if let Some(ms) = m.timestamp().to_millis() {
                    newest = Some(newest.map_or(ms, |n| n.max(ms)));
                }
                state
                    .apply(m.key().unwrap_or_default(), m.payload())
                    .map_err(|e| {
                        SinkError::Destination(format!("kafka state topic {topic}: {e}"))
                    })?;
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                last = Instant::now();
                at_end.insert(p);
            }
            Some(Err(e)) => return Err(unreachable(e)),
        }
    }
    Ok((state, newest))
}

impl Sink for TxnSink {
    fn send<'a>(&'a self, msg: Encoded, route: &'a Route) -> SendFuture<'a> {
        self.send_with_state(Some(msg), route, "", None)
    }

    fn send_with_state<'a>(
        &'a self,
        msg: Option<Encoded>,
        route: &'a Route,
        stream: &'a str,
        progress: Option<Progress>,
    ) -> SendFuture<'a> {
        Box::pin(async move {
            let inner = &self.inner;
            if inner.dead.is_cancelled() {
                return Err(inner.dead_error());
            }
            let mut outs = Vec::with_capacity(2);
            if let Some(msg) = msg {
                let out = inner.records.prepare(msg, route).await?;
                let tombstone = inner.records.tombstone_for(&out);
                outs.push(out);
                outs.extend(tombstone);
            }
            let rx = inner.add(outs, stream, progress.as_ref()).await?;
            let ack: Ack = Box::pin(async move { rx.await.map_err(|_| SinkError::Closed)? });
            Ok(ack)
        })
    }

    fn keeps_state(&self) -> bool {
        true
    }

    fn route(&self, destination: Option<&str>) -> Result<Route, SinkError> {
        super::route(destination)
    }

    fn name(&self) -> &'static str {
        "kafka"
    }

    fn health(&self) -> SinkHealth {
        let reasons: Vec<String> = [
            self.inner.dead_reason(),
            self.inner.failing.lock().unwrap().clone(),
            self.inner.producer.context().down.lock().unwrap().clone(),
        ]
        .into_iter()
        .flatten()
        .collect();
        if reasons.is_empty() {
            SinkHealth::Up
        } else {
            SinkHealth::Down(reasons.join("; "))
        }
    }

    fn counters(&self) -> SinkCounters {
        SinkCounters {
            retries: self
                .inner
                .aborted
                .load(std::sync::atomic::Ordering::Relaxed),
            duplicates: 0,
        }
    }
}

/// The transactional producer's callbacks: logs, and broker health.
#[derive(Default)]
struct TxnContext {
    /// Brokers down or authentication failing (cleared by the next commit).
    down: Mutex<Option<String>>,
}

impl ClientContext for TxnContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        log_quietly(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                let mut down = self.down.lock().unwrap();
                if down.is_none() {
                    tracing::error!(%reason, "kafka sink down: events wait in the producer queue (bounded), then the watch loops pause");
                    *down = Some(format!(
                        "all kafka brokers down: {reason} (since {})",
                        super::since_now()
                    ));
                }
            }
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
                *self.down.lock().unwrap() = Some(format!(
                    "kafka authentication failed (check sink.sasl / sink.tls): {reason}"
                ));
            }
            _ => {
                tracing::debug!(target: "librdkafka", error = %error, %reason, "kafka client error")
            }
        }
    }

    fn stats(&self, stats: rdkafka::statistics::Statistics) {
        if stats
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP")
        {
            self.brokers_up();
        }
    }
}

impl TxnContext {
    fn brokers_up(&self) {
        if let Some(was) = self.down.lock().unwrap().take() {
            tracing::info!(%was, "kafka sink up again: brokers reachable");
        }
    }
}

impl ProducerContext for TxnContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        // A failed delivery fails its transaction's commit, which then aborts and re-sends
        // it: nothing to do per message.
        if let Err((e, m)) = result {
            tracing::debug!(topic = m.topic(), error = %e, "kafka delivery failed inside a transaction");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_transaction_errors_abort_and_fencing_is_dead() {
        assert!(matches!(
            classify(&KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut
            )),
            Failure::Abort(_)
        ));
        let fenced = classify(&KafkaError::MessageProduction(
            RDKafkaErrorCode::ProducerFenced,
        ));
        assert!(
            matches!(&fenced, Failure::Dead(r) if r.starts_with("fenced")),
            "{fenced:?}"
        );
    }

    #[test]
    fn init_errors_name_the_acl_or_are_worth_waiting_for() {
        let e = init_error(
            &KafkaError::Global(RDKafkaErrorCode::TransactionalIdAuthorizationFailed),
            "kw",
        );
        let text = e.to_string();
        assert!(
            text.contains("TransactionalId Write and Describe"),
            "{text}"
        );
        assert!(text.contains("checkpoint.backend: embedded"), "{text}");
        let e = init_error(
            &KafkaError::Global(RDKafkaErrorCode::ClusterAuthorizationFailed),
            "kw",
        );
        assert!(e.to_string().contains("IdempotentWrite"), "{e}");
        let e = init_error(&KafkaError::Global(RDKafkaErrorCode::MessageTimedOut), "kw");
        assert!(e.is_unreachable(), "{e}");
    }
}
