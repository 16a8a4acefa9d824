//! The sink stage: where encoded events leave kubewire, and where their acknowledgements come
//! from. Every sink implements [`Sink`]: `send` waits while the sink's buffer is full (that is
//! the backpressure reaching the watch loop) and returns an [`Ack`] future that resolves once
//! the event is durably accepted downstream. Only then may the checkpoint move past it.

pub mod kafka;
mod lenient;
mod lines;
pub mod nats;
pub mod secret;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

pub use lines::LinesSink;

use crate::checkpoint::Progress;
use crate::envelope::Encoded;
use crate::envelope::template::Template;
use serde::{Deserialize, Serialize};

/// Errors of the sink stage: a sink that cannot be built, or an event it did not deliver.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A file the sink needs cannot be opened or read: the JSON-lines file, or a Kafka
    /// secret file (password, key).
    #[error("cannot open sink file {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The sink's configuration cannot be used: a template, a property, a client setting.
    #[error("sink configuration: {0}")]
    Config(String),
    /// A credential the configuration names cannot be read (unset variable, unreadable file).
    #[error("sink credentials: {0}")]
    Secret(String),
    /// The destination cannot be reached (the message says `cannot connect to …`).
    #[error("{0}")]
    Connect(String),
    /// The destination exists in a form events cannot be stored in, or cannot be set up
    /// (a JetStream stream missing, or not covering the subjects).
    #[error("sink destination: {0}")]
    Destination(String),
    /// A publish failed on its way (transport), not as a rejection of the event.
    #[error("sink publish failed: {0}")]
    Publish(String),
    /// The sink can no longer take the event, or dropped its acknowledgement (its task
    /// ended, e.g. at shutdown).
    #[error("sink is closed")]
    Closed,
    /// A destination (Kafka topic) that does not exist and may not be created.
    #[error(
        "{sink} topic {topic:?} does not exist: create it, or set sink.createTopics.enabled: true"
    )]
    MissingTopic {
        /// The sink's name (`kafka`).
        sink: &'static str,
        /// The topic name.
        topic: String,
    },
    /// This one event can never be delivered (e.g. too large); others are unaffected.
    #[error("event {id} rejected by the sink: {reason}")]
    Rejected {
        /// The event's id.
        id: String,
        /// Why the destination refused it.
        reason: String,
    },
}

impl SinkError {
    /// The destination could not be reached: worth waiting for, unlike a configuration the
    /// sink refuses.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, SinkError::Connect(_))
    }
}

/// What became of one event handed to a sink: only a delivery, or a rejection for good of
/// that one event, lets the checkpoint move past it.
#[derive(Debug)]
pub enum Delivery {
    /// Durably accepted downstream.
    Delivered,
    /// This one event can never be delivered (e.g. too large): passed over, named.
    Rejected(SinkError),
    /// Not delivered, and not known to be undeliverable (the acknowledgement was dropped,
    /// the sink closed or failed): the checkpoint must not move past it.
    Failed(SinkError),
}

impl Delivery {
    /// Classifies an acknowledgement's (or a send's) result.
    pub fn of(result: Result<(), SinkError>) -> Self {
        match result {
            Ok(()) => Delivery::Delivered,
            Err(e @ SinkError::Rejected { .. }) => Delivery::Rejected(e),
            Err(e) => Delivery::Failed(e),
        }
    }
}

/// Resolves when the sink has acknowledged one event.
pub type Ack = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send>>;

/// What [`Sink::send`] returns: resolves to the event's [`Ack`] once the sink has taken it
/// (after waiting for room).
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<Ack, SinkError>> + Send + 'a>>;

/// Where one stream's events go, resolved once when the stream starts into what its sink
/// needs beyond each event (Kafka: the resource's own topic template, parsed).
#[derive(Clone, Debug, Default)]
pub struct Route {
    pub(crate) topic: Option<Arc<Template>>,
}

/// The sink contract shared by stdout, file, Kafka and NATS.
pub trait Sink: Send + Sync {
    /// Hands one event of a stream to the sink, along the stream's `route`. Waits while the
    /// sink is full; never drops.
    fn send<'a>(&'a self, msg: Encoded, route: &'a Route) -> SendFuture<'a>;

    /// Hands one item of a stream to a sink that keeps the stream state itself
    /// ([`Self::keeps_state`]: the Kafka state backend): its event, if it has one, and
    /// the `progress` it implies for `stream`'s checkpoint, stored in the same transaction
    /// as the event. The acknowledgement resolves when both are stored.
    fn send_with_state<'a>(
        &'a self,
        msg: Option<Encoded>,
        route: &'a Route,
        stream: &'a str,
        progress: Option<Progress>,
    ) -> SendFuture<'a> {
        let _ = (msg, route, stream, progress);
        Box::pin(async {
            Err(SinkError::Config(format!(
                "the {} sink does not keep stream state",
                self.name()
            )))
        })
    }

    /// Whether this sink stores each stream's checkpoint with its events
    /// ([`Self::send_with_state`]) instead of a separate store after acknowledgement.
    fn keeps_state(&self) -> bool {
        false
    }

    /// Resolves a stream's route once, at its start. `destination` is the resource's own
    /// destination template for this sink, if it has one (`resources[].kafka.topic`); a
    /// sink without per-resource destinations ignores it (validation refuses it there).
    fn route(&self, destination: Option<&str>) -> Result<Route, SinkError> {
        let _ = destination;
        Ok(Route::default())
    }

    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Whether the sink currently reaches its destination, for /readyz and metrics.
    fn health(&self) -> SinkHealth {
        SinkHealth::Up
    }

    /// Running totals of the sink's own recovery work, for metrics.
    fn counters(&self) -> SinkCounters {
        SinkCounters::default()
    }
}

/// Totals since start; each only grows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkCounters {
    /// Deliveries tried again after a failure (Kafka: records produced again after
    /// librdkafka gave up on them; NATS: publishes retried with the same id).
    pub retries: u64,
    /// Events the destination recognised as already stored and dropped (NATS:
    /// PubAcks with `duplicate: true`).
    pub duplicates: u64,
}

/// Reachability of a sink's destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkHealth {
    /// Reaching its destination.
    Up,
    /// Down, and why (e.g. "all brokers down since 12:01:03").
    Down(String),
}

/// Where events are published. Selected by `type`.
///
/// New sinks are new variants (with their own settings struct when they have many fields);
/// each sink's settings and their validation live in its own module (`kafka::config`,
/// `nats::config`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkConfig {
    /// One event per line on standard output (the default).
    Stdout {
        /// `json` (default): the CloudEvents document; `pretty`: one line for people to
        /// read (time, type, kind, namespace/name, resourceVersion, origin, and for
        /// `modified` the paths that changed), as `kubewire tail` prints.
        #[serde(default)]
        format: StdoutFormat,
    },
    /// Appends one JSON event per line to a file; an event is acknowledged once written and
    /// flushed.
    File {
        /// The file to append to (created if missing).
        path: PathBuf,
    },
    /// Apache Kafka: see [`KafkaSinkConfig`].
    Kafka(KafkaSinkConfig),
    /// NATS (JetStream by default): see [`NatsSinkConfig`].
    Nats(NatsSinkConfig),
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig::Stdout {
            format: StdoutFormat::Json,
        }
    }
}

/// What the stdout sink writes per event (`sink.format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StdoutFormat {
    /// The CloudEvents JSON document (for programs).
    #[default]
    Json,
    /// One line for people (`crate::consume::pretty`).
    Pretty,
}

impl SinkConfig {
    /// The `type` name: `stdout`, `file`, ...
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkConfig::Stdout { .. } => "stdout",
            SinkConfig::File { .. } => "file",
            SinkConfig::Kafka(_) => "kafka",
            SinkConfig::Nats(_) => "nats",
        }
    }
}

pub use kafka::config::{KafkaSinkConfig, check_topic_template};
pub use nats::config::NatsSinkConfig;

/// Builds the configured sink.
pub async fn build(cfg: &SinkConfig) -> Result<Box<dyn Sink>, SinkError> {
    Ok(match cfg {
        SinkConfig::Stdout { format } => Box::new(LinesSink::stdout(*format)),
        SinkConfig::File { path } => Box::new(LinesSink::file(path).await?),
        SinkConfig::Kafka(k) => kafka::build(k).await?,
        SinkConfig::Nats(n) => nats::build(n).await?,
    })
}
