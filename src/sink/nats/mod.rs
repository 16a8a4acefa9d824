//! The NATS sink (`sink.type: nats`): JetStream by default, core NATS on request.
//!
//! - **JetStream** (`jetstream::JetStreamSink`): each event is published with `Nats-Msg-Id` =
//!   its deterministic id and acknowledged when its PubAck arrives; a replay within the
//!   stream's duplicate window is dropped by the server. Publishes are pipelined (a window
//!   of `maxOutstandingAcks`), with at most one unacknowledged publish per subject, so a
//!   retry can never overtake: the stream holds each subject's events in order. A failed or
//!   timed-out publish is retried with the same id, forever, while the client reconnects
//!   forever.
//! - **Core NATS** (`CoreSink`): fire-and-forget, at most once.
//!
//! Subjects come from a template with reversible escaping ([`subject`]). At start-up the
//! stream is created or updated (`stream.create`), or must exist; either way it must cover
//! the template, else kubewire does not start. `docs/sinks.md` documents the semantics.

pub mod config;
mod jetstream;
pub mod subject;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::stream::{self as js_stream, RetentionPolicy, StorageType};
use async_nats::{ConnectOptions, HeaderMap};
use bytes::Bytes;

use super::{Ack, Route, SendFuture, Sink, SinkError, SinkHealth};
use crate::envelope::Encoded;
use config::{NatsRetention, NatsSinkConfig, NatsStorage};
use subject::SubjectTemplate;

/// `Content-Type` of a structured-mode CloudEvent.
pub const CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";

/// Builds the NATS sink: connects, prepares or checks the stream, starts the publisher.
pub async fn build(cfg: &NatsSinkConfig) -> Result<Box<dyn Sink>, SinkError> {
    let template = SubjectTemplate::parse(&cfg.subject)
        .map_err(|e| SinkError::Config(format!("sink.subject {:?} {e}", cfg.subject)))?;
    let health = Arc::new(Health::default());
    let (connected_tx, connected_rx) = tokio::sync::watch::channel(true);
    let client = connect(cfg, health.clone(), connected_tx).await?;
    if cfg.jetstream {
        let window = cfg.max_outstanding_acks.max(1);
        let ctx = async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_millis(cfg.ack_timeout_ms))
            // Our own window bounds the publishes awaiting a PubAck, and each holds at most
            // one of async-nats' permits at a time: with its limit above ours (and waiting
            // rather than failing at the limit), async-nats never blocks or refuses one.
            .max_ack_inflight(window + 64)
            .backpressure_on_inflight(true)
            .build(client.clone());
        prepare_stream(&ctx, cfg, &template).await?;
        let max_payload = client.server_info().max_payload;
        let sink = jetstream::JetStreamSink::start(
            ctx,
            template,
            window,
            health,
            connected_rx,
            max_payload,
        );
        Ok(Box::new(sink))
    } else {
        tracing::warn!(
            "NATS sink in core mode (jetstream: false): fire-and-forget, at most once; events published while disconnected or without subscribers are lost"
        );
        Ok(Box::new(CoreSink {
            client,
            template,
            health,
        }))
    }
}

/// Connects with the configured auth and TLS, once: an unreachable server is
/// [`SinkError::Connect`], which the caller retries with its own backoff (and its own
/// readiness report) for as long as it needs the sink. Once connected, the client reconnects
/// forever; [`Health`] follows its state.
async fn connect(
    cfg: &NatsSinkConfig,
    health: Arc<Health>,
    connected: tokio::sync::watch::Sender<bool>,
) -> Result<async_nats::Client, SinkError> {
    let url = cfg.url.clone();
    let opts = options(cfg).await?.event_callback(move |event| {
        let health = health.clone();
        let connected = connected.clone();
        async move {
            match event {
                async_nats::Event::Disconnected => {
                    connected.send_replace(false);
                    health.set_connection(Some("disconnected from the NATS server".into()));
                }
                async_nats::Event::Connected => {
                    connected.send_replace(true);
                    health.set_connection(None);
                }
                async_nats::Event::Closed => {
                    connected.send_replace(false);
                    health.set_connection(Some("NATS connection closed".into()));
                }
                other => tracing::warn!(sink = "nats", event = %other, "NATS client event"),
            }
        }
    });
    match opts.connect(url.as_str()).await {
        Ok(client) => {
            tracing::info!(sink = "nats", %url, max_payload = client.server_info().max_payload, "connected to NATS");
            Ok(client)
        }
        Err(e) => Err(SinkError::Connect(format!(
            "cannot connect to NATS at {url}: {e}"
        ))),
    }
}

/// The connection options of `cfg` (auth, TLS, reconnects) without the sink's health
/// callbacks: for reading the stream back (`kubewire verify`, `kubewire tail`).
pub async fn connect_options(cfg: &NatsSinkConfig) -> Result<ConnectOptions, SinkError> {
    options(cfg).await
}

async fn options(cfg: &NatsSinkConfig) -> Result<ConnectOptions, SinkError> {
    let secret = |what: &str, s: &crate::sink::secret::SecretRef| {
        s.read()
            .map_err(|e| SinkError::Secret(format!("cannot read the NATS {what} (sink.auth): {e}")))
    };
    let mut o = ConnectOptions::new()
        .name("kubewire")
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(|attempts| {
            // 0, 100ms, 200ms, ... up to 2s: an outage is noticed quickly when it ends.
            Duration::from_millis((attempts as u64 * 100).min(2000))
        });
    let a = &cfg.auth;
    if let Some(t) = &a.token {
        o = o.token(secret("token", t)?);
    }
    if let (Some(user), Some(pw)) = (&a.user, &a.password) {
        o = o.user_and_password(user.clone(), secret("password", pw)?);
    }
    if let Some(seed) = &a.nkey_seed {
        o = o.nkey(secret("NKey seed", seed)?);
    }
    if let Some(path) = &a.credentials_file {
        o = o.credentials_file(path).await.map_err(|e| {
            SinkError::Secret(format!(
                "cannot read NATS credentials file {}: {e}",
                path.display()
            ))
        })?;
    }
    let t = &cfg.tls;
    if t.required {
        o = o.require_tls(true);
    }
    if let Some(ca) = &t.ca_file {
        o = o.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&t.cert_file, &t.key_file) {
        o = o.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(o)
}

/// Creates/updates the stream (`stream.create`) or checks that it exists; either way, checks
/// that it covers every subject the template can produce.
async fn prepare_stream(
    ctx: &async_nats::jetstream::Context,
    cfg: &NatsSinkConfig,
    template: &SubjectTemplate,
) -> Result<(), SinkError> {
    let s = &cfg.stream;
    let pattern = template.wildcard();
    if s.create {
        let subjects = if s.subjects.is_empty() {
            vec![pattern.clone()]
        } else {
            s.subjects.clone()
        };
        let config = js_stream::Config {
            name: s.name.clone(),
            subjects,
            storage: match s.storage {
                NatsStorage::File => StorageType::File,
                NatsStorage::Memory => StorageType::Memory,
            },
            retention: match s.retention {
                NatsRetention::Limits => RetentionPolicy::Limits,
                NatsRetention::Interest => RetentionPolicy::Interest,
                NatsRetention::Workqueue => RetentionPolicy::WorkQueue,
            },
            max_age: Duration::from_secs(s.max_age_seconds),
            max_bytes: if s.max_bytes == 0 {
                -1
            } else {
                i64::try_from(s.max_bytes).unwrap_or(i64::MAX)
            },
            max_messages: -1,
            duplicate_window: Duration::from_secs(s.duplicate_window_seconds),
            num_replicas: s.replicas,
            ..Default::default()
        };
        ctx.create_or_update_stream(config).await.map_err(|e| {
            SinkError::Destination(format!(
                "cannot create or update JetStream stream {}: {e}",
                s.name
            ))
        })?;
        tracing::info!(sink = "nats", stream = %s.name, "JetStream stream created or updated");
    }
    let stream = ctx.get_stream(&s.name).await.map_err(|e| {
        let missing = matches!(
            e.kind(),
            async_nats::jetstream::context::GetStreamErrorKind::JetStream(ref j)
                if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
        );
        SinkError::Destination(if missing {
            format!(
                "JetStream stream {} does not exist: create it (covering subject {pattern}), or set sink.stream.create: true",
                s.name
            )
        } else {
            format!("cannot look up JetStream stream {}: {e}", s.name)
        })
    })?;
    let info = stream.cached_info();
    let subjects = &info.config.subjects;
    if !subjects.iter().any(|f| subject::covers(f, &pattern)) {
        return Err(SinkError::Destination(format!(
            "JetStream stream {} (subjects {subjects:?}) does not cover the subject template {:?} (subjects {pattern}): events would not be stored; add {pattern} to the stream's subjects or change sink.subject",
            s.name,
            template.as_str(),
        )));
    }
    let window = info.config.duplicate_window;
    if window < Duration::from_secs(120) {
        tracing::warn!(sink = "nats", stream = %s.name, ?window, "short duplicate window: a replay after a longer restart stores duplicates (see docs/sinks.md)");
    }
    tracing::info!(sink = "nats", stream = %s.name, ?subjects, duplicate_window = ?window, "publishing to JetStream stream");
    Ok(())
}

/// An event larger than the server's `max_payload` (payload and headers) is replaced by the
/// oversize event, as in every sink (`envelope::oversize`); the error names the object.
fn fit(msg: Encoded, subject: &str, max_payload: usize) -> Encoded {
    // Header names, values and framing: generous, so the estimate never undershoots.
    let headers = 2 * msg.id.len()
        + msg.ce_type.len()
        + msg.source.len()
        + msg.subject.len()
        + msg.traceparent.len()
        + 256;
    let size = msg.payload.len() + headers;
    if max_payload == 0 || size <= max_payload {
        return msg;
    }
    tracing::error!(sink = "nats", id = %msg.id, subject = %msg.subject, size, limit = max_payload,
        "event larger than the NATS server accepts; publishing an oversize event in its place");
    crate::envelope::oversize(
        &msg,
        size,
        max_payload,
        &format!("NATS server (subject {subject})"),
    )
}

/// The NATS headers of an event.
fn headers(msg: &Encoded) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", msg.id.as_str());
    h.insert("Ce-Id", msg.id.as_str());
    h.insert("Ce-Specversion", "1.0");
    h.insert("Ce-Type", msg.ce_type.as_str());
    h.insert("Ce-Source", msg.source.as_str());
    h.insert("Ce-Subject", msg.subject.as_str());
    if !msg.traceparent.is_empty() {
        h.insert("traceparent", msg.traceparent.as_str());
    }
    h.insert("Content-Type", CONTENT_TYPE);
    h
}

/// The reason of a permanent rejection: names the object and the limit.
fn too_large(msg_subject: &str, size: usize, e: &dyn std::fmt::Display) -> String {
    format!("event for {msg_subject} ({size} bytes) is larger than NATS accepts: {e}")
}

/// Reachability for [`Sink::health`]: down while disconnected, or while publishes fail.
/// Each change of state is logged once.
#[derive(Default)]
pub(crate) struct Health {
    state: Mutex<HealthState>,
}

#[derive(Default)]
struct HealthState {
    connection: Option<String>,
    publishing: Option<String>,
}

impl Health {
    fn set_connection(&self, down: Option<String>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.connection == down {
            return;
        }
        match &down {
            Some(why) => tracing::error!(sink = "nats", reason = %why, "NATS sink down"),
            None => tracing::info!(sink = "nats", "NATS sink connected"),
        }
        s.connection = down;
    }

    fn set_publishing(&self, down: Option<String>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.publishing.is_some() == down.is_some() {
            return;
        }
        match &down {
            Some(why) => {
                tracing::error!(sink = "nats", reason = %why, "NATS publishes failing; retrying")
            }
            None => tracing::info!(sink = "nats", "NATS publishes acknowledged again"),
        }
        s.publishing = down;
    }

    fn get(&self) -> SinkHealth {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.connection.as_ref().or(s.publishing.as_ref()) {
            Some(why) => SinkHealth::Down(why.clone()),
            None => SinkHealth::Up,
        }
    }
}

/// Core NATS: publish and forget (at most once).
struct CoreSink {
    client: async_nats::Client,
    template: SubjectTemplate,
    health: Arc<Health>,
}

impl Sink for CoreSink {
    fn send<'a>(&'a self, msg: Encoded, _route: &'a Route) -> SendFuture<'a> {
        Box::pin(async move {
            let subject = self.template.render(&msg.attrs);
            let msg = fit(msg, &subject, self.client.server_info().max_payload);
            let headers = headers(&msg);
            let size = msg.payload.len();
            let payload = Bytes::from(msg.payload);
            match self
                .client
                .publish_with_headers(subject, headers, payload)
                .await
            {
                Ok(()) => {
                    let ack: Ack = Box::pin(async { Ok(()) });
                    Ok(ack)
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        async_nats::client::PublishErrorKind::MaxPayloadExceeded
                    ) =>
                {
                    Err(SinkError::Rejected {
                        id: msg.id,
                        reason: too_large(&msg.subject, size, &e),
                    })
                }
                Err(e) => Err(SinkError::Publish(format!("NATS publish failed: {e}"))),
            }
        })
    }

    fn name(&self) -> &'static str {
        "nats"
    }

    fn health(&self) -> SinkHealth {
        self.health.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_carry_the_cloudevents_attributes_and_the_dedupe_id() {
        let msg = Encoded {
            id: "c/u/1/added".into(),
            key: "ns/n".into(),
            ce_type: "io.kubewire.object.added".into(),
            source: "kubewire/c".into(),
            subject: "core/v1/configmaps/ns/n".into(),
            traceparent: "00-aa-bb-01".into(),
            payload: b"{}".to_vec(),
            attrs: Default::default(),
            change: Some(crate::event::ChangeType::Added),
        };
        let h = headers(&msg);
        let get = |k: &str| h.get(k).map(|v| v.as_str().to_owned());
        assert_eq!(get("Nats-Msg-Id").as_deref(), Some("c/u/1/added"));
        assert_eq!(get("Ce-Id").as_deref(), Some("c/u/1/added"));
        assert_eq!(get("Ce-Type").as_deref(), Some("io.kubewire.object.added"));
        assert_eq!(get("Ce-Source").as_deref(), Some("kubewire/c"));
        assert_eq!(get("traceparent").as_deref(), Some("00-aa-bb-01"));
        assert_eq!(get("Content-Type").as_deref(), Some(CONTENT_TYPE));
    }

    #[test]
    fn health_reports_the_connection_first() {
        let h = Health::default();
        assert_eq!(h.get(), SinkHealth::Up);
        h.set_publishing(Some("no responders".into()));
        assert_eq!(h.get(), SinkHealth::Down("no responders".into()));
        h.set_connection(Some("disconnected".into()));
        assert_eq!(h.get(), SinkHealth::Down("disconnected".into()));
        h.set_connection(None);
        h.set_publishing(None);
        assert_eq!(h.get(), SinkHealth::Up);
    }
}
