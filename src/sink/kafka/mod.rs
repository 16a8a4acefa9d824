//! The Kafka sink (`sink.type: kafka`): one idempotent librdkafka producer shared by every
//! stream. Semantics in `docs/sinks.md`; in short:
//!
//! - **Ack = delivery report.** `send` enqueues into librdkafka and returns at once; the ack
//!   resolves when the broker has the message (`acks=all`). Many messages are in flight.
//! - **Backpressure.** The producer queue is bounded (`queueMaxMessages`, `queueMaxKbytes`);
//!   when it is full, `send` waits for deliveries to free room. Nothing is dropped.
//! - **Nothing expires, order kept.** `message.timeout.ms=0`: during a broker outage messages
//!   wait in the queue. A delivery librdkafka still gives up on (a deleted topic, a
//!   non-retriable broker error) is produced again, in order, by `delivery`: new events
//!   wait until every failed one is delivered.
//! - **Oversize.** An event larger than its topic accepts is replaced by a small
//!   `io.kubewire.object.oversize` event (or, with `onOversize: fail`, stops its stream).
//! - **Health.** `Down` from librdkafka's "all brokers down" until a broker is up again
//!   (statistics) or a delivery succeeds; while failed deliveries are re-sent; while a topic
//!   with events waiting for it turns out to be missing. Logged once per change.

mod client;
pub mod config;
mod delivery;
mod topics;
pub mod txn;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::Message;
use rdkafka::admin::AdminClient;
use rdkafka::config::{FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::{Notify, oneshot};
use tokio::task::AbortHandle;

use self::delivery::{Done, Failed, Next, Token};
use self::topics::{Lookup, Topics};
use super::{Ack, Route, SendFuture, Sink, SinkCounters, SinkError, SinkHealth};
use crate::envelope::template::{Placeholder, Template};
use crate::envelope::{self, Encoded};
use config::{KafkaSinkConfig, OnOversize};

/// `type` of the event published in place of one too large for its topic.
pub use crate::envelope::OVERSIZE_TYPE;

/// Bytes a record costs beyond its key, value and headers (record and batch framing),
/// rounded up: the margin of the size check.
const RECORD_OVERHEAD: usize = 512;

/// How long `build` waits for the brokers to say whether a fixed topic exists.
const STARTUP_LOOKUP: Duration = Duration::from_secs(15);

/// Events outstanding for a topic this long without a delivery: look whether the topic
/// still exists (librdkafka waits 30 s for a deleted topic before saying anything).
const STALL: Duration = Duration::from_secs(10);
const STALL_CHECK: Duration = Duration::from_secs(5);

/// Builds the Kafka sink: the producer, the topic lookups, the stall watch.
pub async fn build(cfg: &KafkaSinkConfig) -> Result<Box<dyn Sink>, SinkError> {
    Ok(Box::new(KafkaSink::new(cfg).await?))
}

/// The Kafka sink.
pub struct KafkaSink {
    inner: Arc<Inner>,
    /// The re-sender and the stall watch.
    tasks: Vec<AbortHandle>,
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Inner {
    producer: ThreadedProducer<Context>,
    records: Records,
    /// Whether librdkafka refuses new records (logged once per episode).
    refusing: AtomicBool,
}

/// From an encoded event to the record(s) to produce: topic, key, headers, the size check.
/// Shared by the idempotent producer and the transactional one ([`txn`]).
struct Records {
    topics: Topics,
    topic: Template,
    key: Option<Template>,
    tombstones: bool,
    on_oversize: OnOversize,
    /// The producer's `message.max.bytes`.
    producer_max_bytes: usize,
}

impl Records {
    /// The admin client (for topic look-ups) and the templates of `cfg`; the producer's
    /// `message.max.bytes` is the size limit beside each topic's own.
    fn new(
        cfg: &KafkaSinkConfig,
        client_config: &rdkafka::ClientConfig,
        producer_max_bytes: usize,
    ) -> Result<Self, SinkError> {
        let unavailable = |e: KafkaError| SinkError::Config(format!("kafka admin client: {e}"));
        // A clone, not a copy of `config_map()`: that one masks secrets such as
        // `sasl.password`, and the admin client then fails to authenticate (regression:
        // tests/kafka_sink.rs sasl_plain_authenticates_and_a_wrong_password_is_a_clear_error).
        let admin_config = without_producer_settings(client_config);
        let admin = AdminClient::from_config_and_context(&admin_config, QuietContext)
            .map_err(unavailable)?;
        let bad = |what: &str, e| SinkError::Config(format!("{what}: {e}"));
        Ok(Records {
            topics: Topics::new(admin, cfg.create_topics.clone()),
            topic: Template::parse(&cfg.topic, Placeholder::STREAM)
                .map_err(|e| bad("sink.topic", e))?,
            key: match &cfg.key {
                Some(k) => {
                    Some(Template::parse(k, Placeholder::ALL).map_err(|e| bad("sink.key", e))?)
                }
                None => None,
            },
            tombstones: cfg.tombstones,
            on_oversize: cfg.on_oversize,
            producer_max_bytes,
        })
    }

    /// A fixed topic (no placeholders) is looked up now: missing (and not to be created)
    /// is an error; unreachable brokers are not (the sink waits for them).
    async fn check_static_topic(&self, brokers: &str) -> Result<(), SinkError> {
        let Some(topic) = self.topic.as_static() else {
            return Ok(());
        };
        match tokio::time::timeout(STARTUP_LOOKUP, self.topics.lookup(topic)).await {
            Ok(Lookup::Exists(_)) => {}
            Ok(Lookup::Missing) => {
                return Err(SinkError::MissingTopic {
                    sink: "kafka",
                    topic: topic.to_owned(),
                });
            }
            Ok(Lookup::Unreachable(e)) => {
                tracing::warn!(%brokers, %topic, error = %e, "kafka brokers unreachable at start-up; events wait for them");
            }
            Err(_) => {
                tracing::warn!(%brokers, %topic, "kafka brokers did not answer at start-up; events wait for them");
            }
        }
        Ok(())
    }

    /// The tombstone that follows a Deleted event's record when `tombstones` is on.
    fn tombstone_for(&self, out: &Out) -> Option<Out> {
        (self.tombstones && out.deleted).then(|| Out {
            topic: out.topic.clone(),
            key: out.key.clone(),
            payload: None,
            headers: None,
            deleted: false,
        })
    }
}

impl KafkaSink {
    /// Builds the producer. A fixed topic (no placeholders) is checked now: missing (and not
    /// to be created) is an error; unreachable brokers are not (the sink waits for them).
    pub async fn new(cfg: &KafkaSinkConfig) -> Result<Self, SinkError> {
        let env = |name: &str| std::env::var(name).ok();
        let (client_config, producer_max_bytes) = client::producer_config(cfg, &env)?;
        let unavailable = |e: KafkaError| SinkError::Config(format!("kafka producer: {e}"));
        let producer =
            ThreadedProducer::from_config_and_context(&client_config, Context::default())
                .map_err(unavailable)?;
        let records = Records::new(cfg, &client_config, producer_max_bytes)?;
        records.check_static_topic(&cfg.brokers).await?;
        let inner = Inner {
            producer,
            records,
            refusing: AtomicBool::new(false),
        };
        tracing::info!(brokers = %cfg.brokers, topic = %inner.records.topic, "kafka sink ready");
        let inner = Arc::new(inner);
        let tasks = vec![
            tokio::spawn(resender(inner.clone())).abort_handle(),
            tokio::spawn(stall_watch(inner.clone())).abort_handle(),
        ];
        Ok(Self { inner, tasks })
    }
}

/// `client` without the producer's own settings: for the admin client and the state
/// reader (they would only earn warnings there).
fn without_producer_settings(client: &rdkafka::ClientConfig) -> rdkafka::ClientConfig {
    let mut c = client.clone();
    let producer_only: Vec<String> = c
        .config_map()
        .into_keys()
        .filter(|k| is_producer_only(k))
        .map(str::to_owned)
        .collect();
    for k in &producer_only {
        c.remove(k);
    }
    c
}

/// A stream's route: its resource's own topic template, parsed once.
fn route(destination: Option<&str>) -> Result<Route, SinkError> {
    let topic = destination
        .map(|text| {
            Template::parse(text, Placeholder::STREAM)
                .map(Arc::new)
                .map_err(|e| SinkError::Config(format!("resources[].kafka.topic {text:?}: {e}")))
        })
        .transpose()?;
    Ok(Route { topic })
}

/// A consumer's configuration with the connection settings of `cfg` (brokers, security,
/// secrets, and the `properties` that are not producer-only): for reading the topics back
/// (`kubewire verify`, `kubewire tail`). The caller adds the consumer's own settings.
pub fn consumer_config(cfg: &KafkaSinkConfig) -> Result<rdkafka::ClientConfig, SinkError> {
    let env = |name: &str| std::env::var(name).ok();
    let (config, _) = client::producer_config(cfg, &env)?;
    let mut config = without_producer_settings(&config);
    config.remove("client.id");
    Ok(config)
}

fn is_producer_only(prop: &str) -> bool {
    matches!(
        prop,
        "enable.idempotence"
            | "acks"
            | "max.in.flight.requests.per.connection"
            | "partitioner"
            | "message.timeout.ms"
            | "compression.type"
            | "linger.ms"
            | "batch.num.messages"
            | "batch.size"
            | "queue.buffering.max.messages"
            | "queue.buffering.max.kbytes"
            | "statistics.interval.ms"
            | "transactional.id"
            | "transaction.timeout.ms"
    )
}

impl Sink for KafkaSink {
    fn send<'a>(&'a self, msg: Encoded, route: &'a Route) -> SendFuture<'a> {
        Box::pin(async move {
            let inner = &self.inner;
            let out = inner.records.prepare(msg, route).await?;
            let mut pending = vec![inner.produce(&out).await?];
            if let Some(tombstone) = inner.records.tombstone_for(&out) {
                pending.push(inner.produce(&tombstone).await?);
            }
            let ack: Ack = Box::pin(async move {
                for rx in pending {
                    // A dropped ack: the producer is gone (shutdown), so unacknowledged.
                    rx.await.map_err(|_| SinkError::Closed)??;
                }
                Ok(())
            });
            Ok(ack)
        })
    }

    fn route(&self, destination: Option<&str>) -> Result<Route, SinkError> {
        route(destination)
    }

    fn name(&self) -> &'static str {
        "kafka"
    }

    fn health(&self) -> SinkHealth {
        match self.inner.context().health.lock().unwrap().reasons() {
            Some(reasons) => SinkHealth::Down(reasons),
            None => SinkHealth::Up,
        }
    }

    fn counters(&self) -> SinkCounters {
        SinkCounters {
            retries: self.inner.context().resent.load(Ordering::Relaxed),
            duplicates: 0,
        }
    }
}

/// One record to produce.
struct Out {
    topic: String,
    key: String,
    /// `None`: a tombstone.
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
    /// An `io.kubewire.object.deleted` event (followed by a tombstone when enabled).
    deleted: bool,
}

impl Out {
    fn size(&self) -> usize {
        let headers = self.headers.as_ref().map_or(0, |h| {
            h.iter()
                .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len) + 8)
                .sum()
        });
        self.key.len() + self.payload.as_ref().map_or(0, Vec::len) + headers + RECORD_OVERHEAD
    }

    fn from_failed(m: OwnedMessage) -> Self {
        let mut m = m;
        let headers = m.detach_headers();
        Out {
            topic: m.topic().to_owned(),
            key: m
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
            deleted: false,
        }
    }

    /// The value of header `name`.
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .as_ref()?
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
    }
}

/// The CloudEvents Kafka binding's headers (structured mode) plus `traceparent`.
fn ce_headers(
    id: &str,
    ce_type: &str,
    source: &str,
    subject: &str,
    traceparent: &str,
) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(7);
    for (key, value) in [
        ("ce_specversion", "1.0"),
        ("ce_id", id),
        ("ce_type", ce_type),
        ("ce_source", source),
        ("ce_subject", subject),
        ("content-type", "application/cloudevents+json"),
        ("traceparent", traceparent),
    ] {
        h = h.insert(Header {
            key,
            value: Some(value),
        });
    }
    h
}

/// Topic names ([`config::topic_char`], at most [`config::MAX_TOPIC_LEN`] characters, not `.`
/// or `..`): any other character becomes `_`.
fn sanitize_topic(raw: String) -> String {
    let mut t: String = raw
        .chars()
        .map(|c| if config::topic_char(c) { c } else { '_' })
        .take(config::MAX_TOPIC_LEN)
        .collect();
    if t.is_empty() || t == "." || t == ".." {
        t = t.replace('.', "_");
        if t.is_empty() {
            t.push('_');
        }
    }
    t
}

impl Inner {
    fn context(&self) -> &Context {
        self.producer.context()
    }
}

impl Records {
    /// Topic, key, headers and the size check: the record for `msg`, or its oversize
    /// replacement.
    async fn prepare(&self, msg: Encoded, route: &Route) -> Result<Out, SinkError> {
        let topic = sanitize_topic(
            route
                .topic
                .as_deref()
                .unwrap_or(&self.topic)
                .render(&msg.attrs, "_"),
        );
        let key = match (&self.key, &msg.attrs.name) {
            (Some(t), Some(_)) => t.render(&msg.attrs, ""),
            _ => msg.key,
        };
        let info = self.topics.ensure(&topic).await;
        let out = Out {
            headers: Some(ce_headers(
                &msg.id,
                &msg.ce_type,
                &msg.source,
                &msg.subject,
                &msg.traceparent,
            )),
            deleted: msg.change == Some(crate::event::ChangeType::Deleted),
            payload: Some(msg.payload),
            topic,
            key,
        };
        let limit = info
            .max_message_bytes
            .map_or(self.producer_max_bytes, |m| m.min(self.producer_max_bytes));
        let size = out.size();
        if size <= limit {
            return Ok(out);
        }
        self.oversize(out, size, limit).await
    }

    /// An event too large for its topic: by default, replaced by a small oversize event.
    async fn oversize(&self, out: Out, size: usize, limit: usize) -> Result<Out, SinkError> {
        let id = out.header("ce_id").unwrap_or_default();
        let subject = out.header("ce_subject").unwrap_or_default();
        if self.on_oversize == OnOversize::Fail {
            tracing::error!(%id, %subject, topic = %out.topic, size, limit, "event too large for its kafka topic; onOversize is fail: this stream stops here (restart after raising the limit)");
            std::future::pending::<()>().await;
        }
        tracing::error!(%id, %subject, topic = %out.topic, size, limit, "event too large for its kafka topic; published an {OVERSIZE_TYPE} event in its place");
        Ok(oversize_replacement(out, size, limit))
    }
}

impl Inner {
    /// Produces a new record, waiting while the producer queue is full or a recovery
    /// episode holds new records back. The receiver resolves on delivery.
    async fn produce(
        &self,
        out: &Out,
    ) -> Result<oneshot::Receiver<Result<(), SinkError>>, SinkError> {
        let (tx, rx) = oneshot::channel();
        let mut done = tx;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.send_waiting(out, None, done).await {
                Ok(()) => {
                    if self.refusing.swap(false, Ordering::Relaxed) {
                        tracing::info!(topic = %out.topic, "kafka producer accepts messages again");
                    }
                    return Ok(rx);
                }
                Err((e, d)) => {
                    done = d;
                    if !self.refusing.swap(true, Ordering::Relaxed) {
                        tracing::error!(topic = %out.topic, error = %e, "kafka producer refuses messages; retrying");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// [`Self::attempt`] until librdkafka takes or refuses the record: waits while the
    /// producer queue is full, and (a new record) while an episode holds new records back.
    async fn send_waiting(
        &self,
        out: &Out,
        seq: Option<u64>,
        mut done: Done,
    ) -> Result<(), (KafkaError, Done)> {
        loop {
            let room = self.context().room.notified();
            let gate = self.context().gate.notified();
            tokio::pin!(room, gate);
            room.as_mut().enable();
            gate.as_mut().enable();
            match self.attempt(out, seq, done) {
                Attempt::Sent => return Ok(()),
                Attempt::Gated(d) => {
                    done = d;
                    let _ = tokio::time::timeout(Duration::from_secs(1), &mut gate).await;
                }
                Attempt::Full(d) => {
                    done = d;
                    // Backpressure: wait for a delivery to make room (or poll again soon).
                    let _ = tokio::time::timeout(Duration::from_millis(100), &mut room).await;
                }
                Attempt::Refused(e, d) => return Err((e, d)),
            }
        }
    }

    /// One `producer.send` under the ordering lock, so sequence numbers follow produce order.
    /// `seq`: a re-sent record keeps its number and passes the gate; `None`: a new record.
    fn attempt(&self, out: &Out, seq: Option<u64>, done: Done) -> Attempt {
        let mut order = self.context().order.lock().unwrap();
        if seq.is_none() && order.gate_closed() {
            return Attempt::Gated(done);
        }
        let seq = seq.unwrap_or_else(|| order.next_seq());
        let mut record: BaseRecord<'_, str, [u8], _> =
            BaseRecord::with_opaque_to(&out.topic, Box::new(Token { seq, done }))
                .key(out.key.as_str());
        if let Some(p) = &out.payload {
            record = record.payload(p.as_slice());
        }
        if let Some(h) = &out.headers {
            record = record.headers(h.clone());
        }
        match self.producer.send(record) {
            Ok(()) => {
                order.produced(seq, &out.topic);
                Attempt::Sent
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                Attempt::Full(r.delivery_opaque.done)
            }
            Err((e, r)) => Attempt::Refused(e, r.delivery_opaque.done),
        }
    }

    /// One re-send round: the failed records in sequence order (oversize ones replaced).
    /// Stops at the first record librdkafka refuses, giving it and the rest back.
    async fn resend_round(&self, round: Vec<(u64, Failed)>, number: u32) -> Result<(), SinkError> {
        let mut round = round.into_iter();
        while let Some((seq, failed)) = round.next() {
            let Failed {
                mut out,
                error,
                done,
            } = failed;
            let too_large = matches!(
                error.as_ref().and_then(KafkaError::rdkafka_error_code),
                Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
            );
            if too_large
                && out.payload.is_some()
                && out.header("ce_type").as_deref() != Some(OVERSIZE_TYPE)
            {
                // The broker's limit was below what the size check saw. With `onOversize:
                // fail` this waits for ever, holding every stream (not only this one) behind
                // the gate: order first; the log names the event.
                let size = out.size();
                out = self
                    .records
                    .oversize(out, size, size.saturating_sub(1))
                    .await?;
            }
            if let Err((e, done)) = self.send_waiting(&out, Some(seq), done).await {
                // The topic is usually still missing: said once per episode (the stall watch
                // names the topic), the rest at debug.
                if number == 1 {
                    tracing::warn!(topic = %out.topic, error = %e, "kafka producer refuses a re-sent message; the round stops here and is tried again");
                } else {
                    tracing::debug!(topic = %out.topic, error = %e, round = number, "kafka producer refuses a re-sent message");
                }
                let back = std::iter::once((seq, Failed { out, error, done }));
                self.context()
                    .order
                    .lock()
                    .unwrap()
                    .give_back(back.chain(round));
                return Ok(());
            }
            self.context().resent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The outcome of one `producer.send`.
enum Attempt {
    Sent,
    /// A recovery episode holds new records back.
    Gated(Done),
    /// The producer queue is full.
    Full(Done),
    /// librdkafka refuses the record (e.g. its topic is known not to exist).
    Refused(KafkaError, Done),
}

/// A small event standing for `out`: the original's attributes (identity, version, trace),
/// type [`OVERSIZE_TYPE`], id `<original id>/oversize`, a `kubewireerror` attribute and
/// data saying how large it was.
fn oversize_replacement(out: Out, size: usize, limit: usize) -> Out {
    let header = |name: &str| out.header(name).unwrap_or_default();
    let original = Encoded {
        id: header("ce_id"),
        key: out.key.clone(),
        ce_type: header("ce_type"),
        source: header("ce_source"),
        subject: header("ce_subject"),
        traceparent: header("traceparent"),
        payload: out.payload.clone().unwrap_or_default(),
        attrs: Default::default(),
        // Only the stand-in's own fields are read from here; tombstones follow `out.deleted`.
        change: None,
    };
    let r = envelope::oversize(&original, size, limit, &format!("topic {}", out.topic));
    Out {
        headers: Some(ce_headers(
            &r.id,
            OVERSIZE_TYPE,
            &r.source,
            &r.subject,
            &r.traceparent,
        )),
        payload: Some(r.payload),
        topic: out.topic,
        key: out.key,
        deleted: out.deleted,
    }
}

/// The re-sender: one task, so failed records go out again one round at a time, in order.
async fn resender(inner: Arc<Inner>) {
    let ctx = inner.context();
    loop {
        let wake = ctx.resend.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let round = ctx.order.lock().unwrap().take_round();
        let Some((round, number)) = round else {
            wake.await;
            continue;
        };
        // The first round goes at once (the failure is usually a deleted topic that is back
        // or a broker that moved); later ones back off.
        if number > 1 {
            let backoff = Duration::from_millis(200) * 2u32.pow((number - 2).min(6));
            tokio::time::sleep(backoff.min(Duration::from_secs(10))).await;
        }
        let count = round.len();
        tracing::debug!(
            round = number,
            count,
            "kafka: producing failed messages again, in order"
        );
        if let Err(e) = inner.resend_round(round, number).await {
            tracing::error!(error = %e, "kafka re-send stopped");
            return;
        }
        let next = ctx.order.lock().unwrap().round_produced();
        ctx.after(next);
    }
}

/// Turns "events wait for a topic and nothing is delivered" into a clear error when the
/// topic turns out to be missing; recreates it when `createTopics` allows.
async fn stall_watch(inner: Arc<Inner>) {
    let ctx = inner.context();
    loop {
        tokio::time::sleep(STALL_CHECK).await;
        let down: Vec<String> = ctx.health.lock().unwrap().topics.keys().cloned().collect();
        for topic in down {
            // No event waits for it any more and no episode holds any back: whether it is
            // missing is the next event's question (the watch asks again if it stalls).
            let order = ctx.order.lock().unwrap();
            let idle = !order.busy(&topic) && !order.gate_closed();
            drop(order);
            if idle {
                ctx.topic_up(&topic);
            }
        }
        if ctx.health.lock().unwrap().client.is_some() {
            continue; // brokers down: that is the reason, already reported
        }
        let stalled = ctx.order.lock().unwrap().stalled(STALL);
        for (topic, waiting) in stalled {
            match inner.records.topics.recheck(&topic).await {
                Lookup::Missing => ctx.topic_down(
                    &topic,
                    format!(
                        "kafka topic {topic} does not exist (deleted?): {waiting} events wait for it; create it again, or set sink.createTopics.enabled: true"
                    ),
                ),
                Lookup::Exists(_) => {
                    tracing::debug!(%topic, waiting, "kafka: no delivery for a while, but the topic exists")
                }
                Lookup::Unreachable(e) => {
                    tracing::debug!(%topic, error = %e, "kafka: cannot look up a stalled topic")
                }
            }
        }
    }
}

/// Why the sink is down, by cause; `None` each when fine.
#[derive(Default)]
struct HealthState {
    /// Brokers down, authentication failed, fatal producer error.
    client: Option<String>,
    /// A recovery episode: failed deliveries being produced again.
    deliveries: Option<String>,
    /// Topics found missing while events wait for them.
    topics: BTreeMap<String, String>,
}

impl HealthState {
    fn reasons(&self) -> Option<String> {
        let all: Vec<&str> = self
            .client
            .iter()
            .chain(self.deliveries.iter())
            .chain(self.topics.values())
            .map(String::as_str)
            .collect();
        (!all.is_empty()).then(|| all.join("; "))
    }
}

/// The producer's callbacks: delivery reports to the ordering state and the waiting acks,
/// broker health, logs.
#[derive(Default)]
struct Context {
    health: Mutex<HealthState>,
    /// Fast path of `set_up`: whether `health.client` is set.
    is_down: AtomicBool,
    /// Fast path of the delivery callback: whether `health.topics` is non-empty.
    topics_down: AtomicBool,
    order: Mutex<delivery::State>,
    /// Notified on every delivery report: room in the producer queue.
    room: Notify,
    /// Notified when a recovery episode ends: new records may go.
    gate: Notify,
    /// Wakes the re-sender.
    resend: Notify,
    /// Records produced again by the re-sender, in total.
    resent: AtomicU64,
}

fn since_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Context {
    fn set_down(&self, reason: String) {
        let mut h = self.health.lock().unwrap();
        if h.client.is_none() {
            tracing::error!(%reason, "kafka sink down: events wait in the producer queue (bounded), then the watch loops pause");
            h.client = Some(format!("{reason} (since {})", since_now()));
            self.is_down.store(true, Ordering::Release);
        }
    }

    fn set_up(&self) {
        if !self.is_down.load(Ordering::Acquire) {
            return;
        }
        let mut h = self.health.lock().unwrap();
        if let Some(was) = h.client.take() {
            tracing::info!(was = %was, "kafka sink up again: brokers reachable");
            self.is_down.store(false, Ordering::Release);
        }
    }

    fn topic_down(&self, topic: &str, reason: String) {
        let mut h = self.health.lock().unwrap();
        if !h.topics.contains_key(topic) {
            tracing::error!(%topic, "{reason}");
            h.topics.insert(
                topic.to_owned(),
                format!("{reason} (since {})", since_now()),
            );
            self.topics_down.store(true, Ordering::Release);
        }
    }

    fn topic_up(&self, topic: &str) {
        if !self.topics_down.load(Ordering::Acquire) {
            return;
        }
        let mut h = self.health.lock().unwrap();
        if h.topics.remove(topic).is_some() {
            tracing::info!(%topic, "kafka topic reachable again: deliveries to it resume");
        }
        self.topics_down
            .store(!h.topics.is_empty(), Ordering::Release);
    }

    /// Acts on what a change of the ordering state asks for.
    fn after(&self, next: Next) {
        match next {
            Next::Nothing => {}
            Next::Resend => self.resend.notify_one(),
            Next::Open {
                resent,
                rounds,
                secs,
            } => {
                tracing::info!(
                    resent,
                    rounds,
                    secs = format!("{secs:.1}"),
                    "kafka deliveries succeed again: the failed messages were produced again in order; new events flow"
                );
                self.health.lock().unwrap().deliveries = None;
                self.gate.notify_waiters();
            }
        }
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_quietly(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                self.set_down(format!("all kafka brokers down: {reason}"))
            }
            Some(RDKafkaErrorCode::Fatal) => self.set_down(format!(
                "fatal kafka producer error, restart kubewire: {reason}"
            )),
            // Wrong or revoked credentials: a configuration problem the operator must see
            // (once per change of state), not a transient connection error.
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
                self.set_down(format!(
                    "kafka authentication failed (check sink.sasl / sink.tls): {reason}"
                ))
            }
            _ => {
                tracing::debug!(target: "librdkafka", error = %error, %reason, "kafka client error")
            }
        }
    }

    fn stats(&self, stats: Statistics) {
        if stats
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP")
        {
            self.set_up();
        }
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = Box<Token>;

    fn delivery(&self, result: &DeliveryResult<'_>, token: Self::DeliveryOpaque) {
        let (message, error) = match result {
            Ok(m) => (m, None),
            Err((e, m)) => (m, Some(e)),
        };
        let topic = message.topic();
        let (done, started, next) = self.order.lock().unwrap().report(
            *token,
            topic,
            message.key().unwrap_or_default(),
            error,
            || Out::from_failed(message.detach()),
        );
        if error.is_none() {
            self.set_up();
            self.topic_up(topic);
        }
        if started {
            let error = error.map(ToString::to_string).unwrap_or_default();
            tracing::error!(%topic, %error, "kafka delivery failed: new events wait while the failed ones are produced again, in order");
            self.health.lock().unwrap().deliveries = Some(format!(
                "kafka deliveries failing ({error}, topic {topic}); re-sending in order (since {})",
                since_now()
            ));
        }
        if let Some(done) = done {
            let _ = done.send(Ok(()));
        }
        self.after(next);
        self.room.notify_waiters();
    }
}

/// librdkafka's own log lines: connection failures repeat every few seconds during an
/// outage, so they go to debug (the health state change is logged once instead).
fn log_quietly(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
            tracing::error!(target: "librdkafka", %fac, "{message}")
        }
        RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning
            if !matches!(fac, "FAIL" | "ERROR" | "BROKERFAIL" | "REQTMOUT") =>
        {
            tracing::warn!(target: "librdkafka", %fac, "{message}")
        }
        _ => tracing::debug!(target: "librdkafka", %fac, "{message}"),
    }
}

/// The admin client's and the state reader's context: logs like the producer's, errors
/// only at debug.
pub struct QuietContext;

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_quietly(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", error = %error, %reason, "kafka admin client error");
    }
}

/// The state reader (`txn`) is a consumer with the admin client's quiet logs.
impl rdkafka::consumer::ConsumerContext for QuietContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_sanitized() {
        assert_eq!(sanitize_topic("a.b-c_d".into()), "a.b-c_d");
        assert_eq!(sanitize_topic("a/b c".into()), "a_b_c");
        assert_eq!(sanitize_topic("".into()), "_");
        assert_eq!(sanitize_topic("..".into()), "__");
        assert_eq!(sanitize_topic("x".repeat(300)).len(), 249);
    }

    #[test]
    fn oversize_replacement_keeps_identity_and_drops_data() {
        let payload = serde_json::to_vec(&serde_json::json!({
            "specversion": "1.0", "id": "c/u/7/modified", "type": "io.kubewire.object.modified",
            "source": "kubewire/c", "subject": "core/v1/configmaps/ns/big",
            "k8sname": "big", "k8suid": "u", "k8sresourceversion": "7",
            "data": {"huge": "x".repeat(1000)}
        }))
        .unwrap();
        let out = Out {
            topic: "t".into(),
            key: "ns/big".into(),
            headers: Some(ce_headers(
                "c/u/7/modified",
                "io.kubewire.object.modified",
                "kubewire/c",
                "core/v1/configmaps/ns/big",
                "00-aa-bb-01",
            )),
            payload: Some(payload),
            deleted: false,
        };
        let r = oversize_replacement(out, 1600, 1000);
        assert_eq!(r.key, "ns/big");
        assert_eq!(r.header("ce_type").as_deref(), Some(OVERSIZE_TYPE));
        assert_eq!(
            r.header("ce_id").as_deref(),
            Some("c/u/7/modified/oversize")
        );
        let doc: serde_json::Value = serde_json::from_slice(r.payload.as_ref().unwrap()).unwrap();
        assert_eq!(doc["type"], OVERSIZE_TYPE);
        assert_eq!(doc["k8sresourceversion"], "7");
        assert_eq!(doc["data"]["originalId"], "c/u/7/modified");
        assert_eq!(doc["data"]["size"], 1600);
        assert!(
            doc["kubewireerror"]
                .as_str()
                .unwrap()
                .contains("1600 bytes")
        );
        assert!(r.payload.unwrap().len() < 1000);
    }
}
