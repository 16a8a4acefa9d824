//! The Kafka sink (`sink.type: kafka`): one idempotent librdkafka producer shared by every
//! stream. Semantics in `docs/sinks.md`; in short:
//!
//! - **Ack = delivery report.** `send` enqueues into librdkafka and returns at once; the ack
//!   resolves when the broker has the message (`acks=all`). Many messages are in flight.
//! - **Backpressure.** The producer queue is bounded (`queueMaxMessages`, `queueMaxKbytes`);
//!   when it is full, `send` waits for deliveries to free room. Nothing is dropped.
//! - **Nothing expires.** `message.timeout.ms=0`: during a broker outage messages wait in the
//!   queue. A delivery that still fails (a non-retriable broker error) is produced again
//!   after a backoff, so it is never lost (its order relative to later events of the same
//!   key is then not guaranteed: the one exception to per-key order, logged).
//! - **Oversize.** An event larger than its topic accepts is replaced by a small
//!   `io.kubewire.object.oversize` event (or, with `onOversize: fail`, stops its stream).
//! - **Health.** `Down` from librdkafka's "all brokers down" until a broker is up again
//!   (statistics) or a delivery succeeds; logged once per change.

mod client;
mod topics;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
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

use self::topics::{Lookup, Topics};
use super::{Ack, SendFuture, Sink, SinkError, SinkHealth};
use crate::config::{KafkaSinkConfig, OnOversize};
use crate::envelope::template::{Placeholder, Template};
use crate::envelope::{self, Encoded};

/// `type` of the event published in place of one too large for its topic.
pub use crate::envelope::OVERSIZE_TYPE;

/// Bytes a record costs beyond its key, value and headers (record and batch framing),
/// rounded up: the margin of the size check.
const RECORD_OVERHEAD: usize = 512;

/// How long `build` waits for the brokers to say whether a fixed topic exists.
const STARTUP_LOOKUP: Duration = Duration::from_secs(15);

pub async fn build(cfg: &KafkaSinkConfig) -> Result<Box<dyn Sink>, SinkError> {
    Ok(Box::new(KafkaSink::new(cfg).await?))
}

/// The Kafka sink.
pub struct KafkaSink {
    inner: Arc<Inner>,
}

struct Inner {
    producer: ThreadedProducer<Context>,
    topics: Topics,
    topic: Template,
    /// Parsed per-resource topic templates, by their text.
    overrides: Mutex<HashMap<Arc<str>, Arc<Template>>>,
    key: Option<Template>,
    tombstones: bool,
    on_oversize: OnOversize,
    /// The producer's `message.max.bytes`.
    producer_max_bytes: usize,
    /// Whether re-sends are failing (logged once per episode).
    resending: AtomicBool,
}

impl KafkaSink {
    /// Builds the producer. A fixed topic (no placeholders) is checked now: missing (and not
    /// to be created) is an error; unreachable brokers are not (the sink waits for them).
    pub async fn new(cfg: &KafkaSinkConfig) -> Result<Self, SinkError> {
        let env = |name: &str| std::env::var(name).ok();
        let (client_config, producer_max_bytes) = client::producer_config(cfg, &env)?;
        let unavailable = |e: KafkaError| SinkError::Unavailable(format!("kafka producer: {e}"));
        let producer =
            ThreadedProducer::from_config_and_context(&client_config, Context::default())
                .map_err(unavailable)?;
        // A clone, not a copy of `config_map()`: that one masks secrets such as
        // `sasl.password`, and the admin client then fails to authenticate (regression:
        // tests/kafka_sink.rs sasl_plain_authenticates_and_a_wrong_password_is_a_clear_error).
        let mut admin_config = client_config.clone();
        let producer_only: Vec<String> = admin_config
            .config_map()
            .into_keys()
            .filter(|k| is_producer_only(k))
            .map(str::to_owned)
            .collect();
        for k in &producer_only {
            // Producer-only settings would only earn warnings from the admin client.
            admin_config.remove(k);
        }
        let admin = AdminClient::from_config_and_context(&admin_config, QuietContext)
            .map_err(unavailable)?;
        let bad = |what: &str, e| SinkError::Unavailable(format!("{what}: {e}"));
        let inner = Inner {
            producer,
            topics: Topics::new(admin, cfg.create_topics.clone()),
            topic: Template::parse(&cfg.topic, Placeholder::STREAM)
                .map_err(|e| bad("sink.topic", e))?,
            overrides: Mutex::default(),
            key: match &cfg.key {
                Some(k) => {
                    Some(Template::parse(k, Placeholder::ALL).map_err(|e| bad("sink.key", e))?)
                }
                None => None,
            },
            tombstones: cfg.tombstones,
            on_oversize: cfg.on_oversize,
            producer_max_bytes,
            resending: AtomicBool::new(false),
        };
        if let Some(topic) = inner.topic.as_static() {
            match tokio::time::timeout(STARTUP_LOOKUP, inner.topics.lookup(topic)).await {
                Ok(Lookup::Exists(_)) => {}
                Ok(Lookup::Missing) => {
                    return Err(SinkError::MissingTopic {
                        sink: "kafka",
                        topic: topic.to_owned(),
                    });
                }
                Ok(Lookup::Unreachable(e)) => {
                    tracing::warn!(brokers = %cfg.brokers, %topic, error = %e, "kafka brokers unreachable at start-up; events wait for them");
                }
                Err(_) => {
                    tracing::warn!(brokers = %cfg.brokers, %topic, "kafka brokers did not answer at start-up; events wait for them");
                }
            }
        }
        tracing::info!(brokers = %cfg.brokers, topic = %inner.topic, "kafka sink ready");
        Ok(Self {
            inner: Arc::new(inner),
        })
    }
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
    )
}

impl Sink for KafkaSink {
    fn send(&self, msg: Encoded) -> SendFuture<'_> {
        Box::pin(async move {
            let inner = &self.inner;
            let out = inner.prepare(msg).await?;
            let mut pending = vec![inner.produce(&out).await?];
            if inner.tombstones && out.deleted {
                let tombstone = Out {
                    topic: out.topic.clone(),
                    key: out.key.clone(),
                    payload: None,
                    headers: None,
                    deleted: false,
                };
                pending.push(inner.produce(&tombstone).await?);
            }
            let inner = self.inner.clone();
            let ack: Ack = Box::pin(async move {
                for rx in pending {
                    inner.settle(rx).await?;
                }
                Ok(())
            });
            Ok(ack)
        })
    }

    fn name(&self) -> &'static str {
        "kafka"
    }

    fn health(&self) -> SinkHealth {
        match &self.inner.producer.context().health.lock().unwrap().down {
            Some(reason) => SinkHealth::Down(reason.clone()),
            None => SinkHealth::Up,
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

/// Topic names: letters, digits, `.`, `_`, `-`; at most 249 characters; not `.` or `..`.
fn sanitize_topic(raw: String) -> String {
    let mut t: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(249)
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

    /// Topic, key, headers and the size check: the record for `msg`, or its oversize
    /// replacement.
    async fn prepare(&self, msg: Encoded) -> Result<Out, SinkError> {
        let template = match &msg.destination {
            Some(text) => self.override_template(text)?,
            None => None,
        };
        let topic = sanitize_topic(
            template
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
            deleted: msg.ce_type == crate::envelope::object_type(crate::event::ChangeType::Deleted),
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

    fn override_template(&self, text: &Arc<str>) -> Result<Option<Arc<Template>>, SinkError> {
        let mut map = self.overrides.lock().unwrap();
        if let Some(t) = map.get(text) {
            return Ok(Some(t.clone()));
        }
        let t = Arc::new(Template::parse(text, Placeholder::STREAM).map_err(|e| {
            SinkError::Unavailable(format!("resources[].kafka.topic {text:?}: {e}"))
        })?);
        map.insert(text.clone(), t.clone());
        Ok(Some(t))
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

    /// Produces `out`, waiting while the producer queue is full.
    async fn produce(&self, out: &Out) -> Result<oneshot::Receiver<Delivered>, SinkError> {
        let mut delay = Duration::from_millis(100);
        loop {
            let notified = self.context().room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (tx, rx) = oneshot::channel();
            let mut record: BaseRecord<'_, str, [u8], _> =
                BaseRecord::with_opaque_to(&out.topic, Box::new(tx)).key(out.key.as_str());
            if let Some(p) = &out.payload {
                record = record.payload(p.as_slice());
            }
            if let Some(h) = &out.headers {
                record = record.headers(h.clone());
            }
            match self.producer.send(record) {
                Ok(()) => return Ok(rx),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // Backpressure: wait for a delivery to make room (or poll again soon).
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
                Err((e, _)) => {
                    if !self.resending.swap(true, Ordering::Relaxed) {
                        tracing::error!(topic = %out.topic, error = %e, "kafka producer refuses messages; retrying");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Resolves when the record behind `rx` is delivered, producing it again (or its
    /// oversize replacement) as long as deliveries fail.
    async fn settle(&self, mut rx: oneshot::Receiver<Delivered>) -> Result<(), SinkError> {
        let mut delay = Duration::from_millis(200);
        loop {
            let (error, failed) = match rx.await {
                Ok(Ok(())) => {
                    if self.resending.swap(false, Ordering::Relaxed) {
                        tracing::info!("kafka deliveries succeed again");
                    }
                    return Ok(());
                }
                Ok(Err(failed)) => failed,
                // The producer is gone (shutdown): unacknowledged, hence replayed.
                Err(_) => return Err(SinkError::Closed),
            };
            let mut out = Out::from_failed(failed);
            let too_large = matches!(
                error.rdkafka_error_code(),
                Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
            );
            if too_large
                && out.payload.is_some()
                && out.header("ce_type").as_deref() != Some(OVERSIZE_TYPE)
            {
                let size = out.size();
                let limit = size.saturating_sub(1);
                out = self.oversize(out, size, limit).await?;
            } else {
                if !self.resending.swap(true, Ordering::Relaxed) {
                    tracing::error!(topic = %out.topic, id = ?out.header("ce_id"), error = %error, "kafka delivery failed; producing it again (per-key order is not guaranteed for re-sent events)");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            rx = self.produce(&out).await?;
        }
    }
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
        destination: None,
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

/// A delivery report: delivered, or the error and the message back.
type Delivered = Result<(), (KafkaError, OwnedMessage)>;

/// Health as librdkafka reports it.
#[derive(Default)]
struct HealthState {
    down: Option<String>,
}

/// The producer's callbacks: delivery reports to the waiting acks, broker health, logs.
#[derive(Default)]
struct Context {
    health: Mutex<HealthState>,
    is_down: AtomicBool,
    /// Notified on every delivery report: room in the producer queue.
    room: Notify,
}

impl Context {
    fn set_down(&self, reason: String) {
        let mut h = self.health.lock().unwrap();
        if h.down.is_none() {
            tracing::error!(%reason, "kafka sink down: events wait in the producer queue (bounded), then the watch loops pause");
            let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            h.down = Some(format!("{reason} (since {since})"));
            self.is_down.store(true, Ordering::Release);
        }
    }

    fn set_up(&self) {
        if !self.is_down.load(Ordering::Acquire) {
            return;
        }
        let mut h = self.health.lock().unwrap();
        if let Some(was) = h.down.take() {
            tracing::info!(was = %was, "kafka sink up again: brokers reachable");
            self.is_down.store(false, Ordering::Release);
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
    type DeliveryOpaque = Box<oneshot::Sender<Delivered>>;

    fn delivery(&self, result: &DeliveryResult<'_>, tx: Self::DeliveryOpaque) {
        let outcome = match result {
            Ok(_) => {
                self.set_up();
                Ok(())
            }
            Err((e, m)) => Err((e.clone(), m.detach())),
        };
        let _ = tx.send(outcome);
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

/// The admin client's context: logs like the producer's, errors only at debug.
pub struct QuietContext;

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_quietly(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", error = %error, %reason, "kafka admin client error");
    }
}

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
