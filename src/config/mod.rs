//! Configuration: the stage *before* the data flow. Owns the serde structs of the
//! configuration file (every field documented: these doc comments are the configuration
//! reference, mirrored in `docs/configuration.md`), loading YAML or TOML by extension,
//! layering `KUBEWIRE__SECTION__FIELD` environment overrides on top, and [`Config::validate`],
//! which reports every problem at once, each with its path (`resources[2].namespaces[0]`).
//!
//! Resolving resource names against a cluster (discovery, "did you mean") is not done here:
//! this module only checks their syntax, with [`ResourceRef::parse`].
//!
//! # Environment overrides
//!
//! A variable `KUBEWIRE__A__B__C=value` overrides the field at path `a.b.c`. Segments match
//! field names case-insensitively and ignoring `_`, so `KUBEWIRE__WATCH__PAGE_SIZE`,
//! `KUBEWIRE__WATCH__PAGESIZE` and `KUBEWIRE__WATCH__pageSize` all set `watch.pageSize`. A
//! numeric segment is a list index (`KUBEWIRE__RESOURCES__0__LABEL_SELECTOR`). List fields
//! (`namespaces`, `events`) take a comma-separated value. The environment is passed in
//! explicitly ([`Config::load_with_env`]) so tests never touch the process environment.

mod resource_ref;
mod secrets;
mod validate;

#[cfg(test)]
mod kafka_tests;
#[cfg(test)]
mod nats_tests;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::event::ChangeType;

// Each sink owns its section (settings and their validation); the file's layout names them.
pub use crate::sink::SinkConfig;
pub use crate::sink::kafka::config::{
    CreateTopicsConfig, KafkaCompression, KafkaSecurityProtocol, KafkaSinkConfig, OnOversize,
    ResourceKafkaConfig, SaslConfig, TlsConfig,
};
pub use crate::sink::nats::config::{
    DEFAULT_SUBJECT as DEFAULT_NATS_SUBJECT, NatsAuthConfig, NatsRetention, NatsSinkConfig,
    NatsStorage, NatsStreamConfig, NatsTlsConfig,
};
pub use crate::sink::secret::SecretRef;
pub use resource_ref::ResourceRef;

/// Prefix of the environment variables that override configuration fields.
pub const ENV_PREFIX: &str = "KUBEWIRE__";

/// Errors of the configuration stage.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file name has no extension we know how to parse.
    #[error("configuration file {} must end in .yaml, .yml or .toml", .0.display())]
    UnsupportedFormat(PathBuf),
    /// Syntax errors, unknown fields, wrong types, or failed validation: each with its path.
    #[error("invalid configuration:\n{}", format_problems(.0))]
    Invalid(Vec<Problem>),
    /// A `resource` string that is not one of the accepted forms.
    #[error("invalid resource {input:?}: {reason}")]
    InvalidResource {
        /// The string as configured.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ConfigError {
    /// Every problem this error stands for, each with a path (empty when it concerns the
    /// whole file): what `kubewire check-config` prints.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ConfigError::Invalid(p) => p.clone(),
            other => vec![Problem::new("", other.to_string())],
        }
    }
}

fn format_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One thing wrong with a configuration, at a path such as `resources[2].namespaces[0]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where: `section.field[index]`, empty for the file as a whole.
    pub path: String,
    /// What is wrong, in words.
    pub message: String,
}

impl Problem {
    /// A problem at `path` (empty: the whole file).
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// File formats, chosen by extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `.yaml` or `.yml`.
    Yaml,
    /// `.toml`.
    Toml,
}

impl Format {
    /// `.yaml`/`.yml` → YAML, `.toml` → TOML.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "yaml" | "yml" => Some(Format::Yaml),
            "toml" => Some(Format::Toml),
            _ => None,
        }
    }
}

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Clusters to watch. Every resource is watched in every cluster. Default: one cluster
    /// named `default`, reached the usual way (`KUBECONFIG` or `~/.kube/config`, then the
    /// in-cluster service account).
    pub clusters: Vec<ClusterConfig>,
    /// The resources to watch (at least one).
    pub resources: Vec<ResourceConfig>,
    /// Where events go. Default: `stdout`.
    pub sink: SinkConfig,
    /// The embedded store of resourceVersions and the uid index.
    pub checkpoint: CheckpointConfig,
    /// List-Watch tuning: page size, timeouts, backoff, buffering.
    pub watch: WatchConfig,
    /// Logging.
    pub log: LogConfig,
    /// The admin HTTP server: `/metrics`, `/healthz`, `/readyz`.
    pub admin: AdminConfig,
    /// High availability: only the holder of a Lease watches and publishes.
    pub leader_election: LeaderElectionConfig,
    /// Traces: one span per event, exported over OTLP (see docs/operations.md, "Traces").
    pub telemetry: TelemetryConfig,
}

/// Telemetry that leaves the process on its own (metrics are served by `admin`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TelemetryConfig {
    /// OTLP trace export. Off unless an endpoint is configured here or in the environment.
    pub otlp: OtlpConfig,
}

/// OTLP/gRPC trace export. Spans are queued in memory and exported in batches by a
/// background thread; when the queue is full (collector down or slow) new spans are dropped,
/// never events, and the pipeline never waits for the exporter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct OtlpConfig {
    /// The collector's OTLP gRPC endpoint, plaintext (`http://`), e.g.
    /// `http://otel-collector:4317`; for TLS, export to a node-local collector. Default: the
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` variable; when
    /// neither is set either, traces are off (spans cost next to nothing then).
    pub endpoint: Option<String>,
    /// `service.name` of the exported spans. Default: `$OTEL_SERVICE_NAME`, else `kubewire`.
    pub service_name: Option<String>,
    /// Spans held for export at most; beyond that new spans are dropped. Default: 4096.
    pub max_queue_size: usize,
    /// Spans per export request at most. Default: 512.
    pub max_export_batch_size: usize,
    /// How often queued spans are exported. Default: 1000.
    pub scheduled_delay_ms: u64,
    /// How long one export request may take before it is abandoned. Default: 5000.
    pub export_timeout_ms: u64,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            service_name: None,
            max_queue_size: 4096,
            max_export_batch_size: 512,
            scheduled_delay_ms: 1000,
            export_timeout_ms: 5000,
        }
    }
}

/// Leader election on a `coordination.k8s.io/v1` Lease. Each replica keeps its own
/// checkpoint store; a new leader resumes from its own (possibly old) checkpoint and the
/// reconciling relist closes the gap (see docs/operations.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LeaderElectionConfig {
    /// Turn leader election on. Default: false (this process always watches).
    pub enabled: bool,
    /// The Lease's name. Default: `kubewire`.
    pub lease_name: String,
    /// The Lease's namespace. Default: `$POD_NAMESPACE`, else `default`.
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease. Default: `$HOSTNAME` (the pod name), else a
    /// random string.
    pub identity: Option<String>,
    /// How long a lease is valid after its last renewal; a crashed leader is replaced after
    /// at most this long. Default: 15.
    pub lease_duration_seconds: u64,
    /// The holder renews this long before expiry (also the clock skew tolerated between
    /// nodes). Must be less than `leaseDurationSeconds`. Default: 5.
    pub renew_grace_seconds: u64,
    /// The configured cluster whose API server holds the Lease. Default: the first.
    pub cluster: Option<String>,
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            lease_name: "kubewire".into(),
            lease_namespace: None,
            identity: None,
            lease_duration_seconds: 15,
            renew_grace_seconds: 5,
            cluster: None,
        }
    }
}

/// The admin HTTP server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AdminConfig {
    /// Serve `/metrics`, `/healthz` and `/readyz`. Default: true.
    pub enabled: bool,
    /// `ip:port` to listen on. Default: `127.0.0.1:9090`; in a pod use `0.0.0.0:9090` so
    /// probes and Prometheus can reach it. Port 0 picks a free port (logged at start-up).
    pub address: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: "127.0.0.1:9090".into(),
        }
    }
}

impl Default for Config {
    /// One default cluster, no resources, everything else at its default.
    fn default() -> Self {
        Self {
            clusters: vec![ClusterConfig::default()],
            resources: Vec::new(),
            sink: SinkConfig::default(),
            checkpoint: CheckpointConfig::default(),
            watch: WatchConfig::default(),
            log: LogConfig::default(),
            admin: AdminConfig::default(),
            leader_election: LeaderElectionConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

/// One Kubernetes cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterConfig {
    /// Name of the cluster in events (`source: kubewire/<name>`, `k8scluster`) and in event
    /// ids. Letters, digits, `.`, `_` and `-`; unique.
    pub name: String,
    /// Path of a kubeconfig file. Omitted: inferred (`KUBECONFIG`, `~/.kube/config`, then
    /// in-cluster).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Context of the kubeconfig to use. Omitted: its current context.
    #[serde(default)]
    pub context: Option<String>,
    /// Client-side rate limit for list and discovery requests to this cluster, per second
    /// (long-running watches do not consume it). 0: unlimited. Default: 50.
    #[serde(default = "default_qps")]
    pub qps: u32,
    /// Requests allowed in a burst above `qps`. Default: 100.
    #[serde(default = "default_burst")]
    pub burst: u32,
}

fn default_qps() -> u32 {
    50
}

fn default_burst() -> u32 {
    100
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            name: "default".into(),
            kubeconfig: None,
            context: None,
            qps: default_qps(),
            burst: default_burst(),
        }
    }
}

/// One resource to watch; becomes one stream per (cluster, namespace).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceConfig {
    /// Which resource: `configmaps`, `deployments.apps`, `apps/v1/deployments`,
    /// `Deployment.v1.apps`, `Deployment`, or a custom resource such as
    /// `widgets.example.com`. Resolved through discovery, never by guessing plurals. `"*"`:
    /// every resource the cluster serves that this identity may list and watch (at its
    /// preferred version), minus `exclude`, including CRDs installed later.
    pub resource: String,
    /// With `resource: "*"` only: what not to watch, each entry a plural (`leases`), a
    /// qualified name (`leases.coordination.k8s.io`) or a group (`coordination.k8s.io`).
    /// Omitted: [`DEFAULT_EXCLUDES`]; `[]` watches everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Vec<String>>,
    /// Namespaces to watch, one stream each. Empty or omitted: all namespaces (and the only
    /// choice for cluster-scoped resources).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Label selector, e.g. `app=web,tier!=cache`. Objects that stop matching are published
    /// as deleted, objects that start matching as added.
    #[serde(default)]
    pub label_selector: Option<String>,
    /// Field selector, e.g. `metadata.name=config`.
    #[serde(default)]
    pub field_selector: Option<String>,
    /// Which change types to publish: a subset of `added`, `modified`, `deleted`. Default:
    /// all three.
    #[serde(default = "all_change_types")]
    pub events: Vec<ChangeType>,
    /// Publish the initial snapshot as `added` events (origin `initial`) on first start.
    /// `false`: the snapshot is only indexed, and publishing starts with the next change.
    #[serde(default = "yes")]
    pub initial: bool,
    /// The default transforms applied before publishing.
    #[serde(default)]
    pub transform: TransformConfig,
    /// Kafka sink settings for this resource (e.g. its own topic). Used only with
    /// `sink.type: kafka`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<ResourceKafkaConfig>,
}

/// `resources[].resource` for every resource the identity may list and watch.
pub const ALL_RESOURCES: &str = "*";

/// What `resource: "*"` leaves out unless `exclude` says otherwise: Leases (renewed every few
/// seconds by every node and controller: most of the volume, none of the audit value) and
/// Events (a high-volume stream of their own, in both groups).
pub const DEFAULT_EXCLUDES: &[&str] = &[
    "leases.coordination.k8s.io",
    "events",
    "events.events.k8s.io",
];

impl ResourceConfig {
    /// The stream this resource makes of `info` on `cluster` in one namespace scope (its
    /// identity includes the selectors: another selector is another stream).
    pub fn stream_id(
        &self,
        cluster: &str,
        info: &crate::event::ResourceInfo,
        namespace: Option<String>,
    ) -> crate::event::StreamId {
        crate::event::StreamId {
            cluster: cluster.to_owned(),
            resource: info.clone(),
            namespace,
            label_selector: self.label_selector.clone(),
            field_selector: self.field_selector.clone(),
        }
    }

    /// Whether this entry is `resource: "*"`.
    pub fn is_all(&self) -> bool {
        self.resource == ALL_RESOURCES
    }

    /// What `resource: "*"` leaves out: `exclude`, or [`DEFAULT_EXCLUDES`] when omitted.
    pub fn excludes(&self) -> Vec<String> {
        match &self.exclude {
            Some(e) => e.clone(),
            None => DEFAULT_EXCLUDES.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// The namespace scope of each of this resource's streams: one per configured
    /// namespace, or one for all namespaces (`None`) when none is configured or the
    /// resource is cluster-scoped.
    pub fn scopes(&self, namespaced: bool) -> Vec<Option<String>> {
        if self.namespaces.is_empty() || !namespaced {
            vec![None]
        } else {
            self.namespaces.iter().cloned().map(Some).collect()
        }
    }
}

impl ResourceConfig {
    /// An entry for `resource` with every other field at its default.
    pub fn new(resource: impl Into<String>) -> Self {
        Self {
            resource: resource.into(),
            exclude: None,
            namespaces: Vec::new(),
            label_selector: None,
            field_selector: None,
            events: all_change_types(),
            initial: true,
            transform: TransformConfig::default(),
            kafka: None,
        }
    }
}

fn all_change_types() -> Vec<ChangeType> {
    vec![ChangeType::Added, ChangeType::Modified, ChangeType::Deleted]
}

fn yes() -> bool {
    true
}

/// The default transforms. Each can be switched off per resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TransformConfig {
    /// Drop `metadata.managedFields` (server-side apply bookkeeping). Default: true.
    pub strip_managed_fields: bool,
    /// Drop the `kubectl.kubernetes.io/last-applied-configuration` annotation (a full copy
    /// of the object as last applied; for Secrets it holds their values). Default: true.
    pub strip_last_applied: bool,
    /// For core `secrets`, replace every value of `data` and `stringData` with a keyed hash
    /// marker that shows a change but not the value. Default: true. **Turning this off
    /// publishes Secret values.**
    pub redact_secrets: bool,
}

impl Default for TransformConfig {
    fn default() -> Self {
        Self {
            strip_managed_fields: true,
            strip_last_applied: true,
            redact_secrets: true,
        }
    }
}

/// Where each stream's checkpoint (resourceVersion and uid index) lives: the state backend
/// and its settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct CheckpointConfig {
    /// The state backend: `auto` (default), `embedded` or `kafka`. `auto` is `embedded`
    /// for now, with every sink: the Kafka backend is chosen explicitly until the fault
    /// suite runs against it (then `auto` becomes `kafka` with the Kafka sink).
    pub backend: StateBackend,
    /// The embedded store file, one for all streams; its directory is created. Default:
    /// `.kubewire/checkpoint.redb` (relative to the working directory). Only one kubewire
    /// may use it at a time.
    pub path: PathBuf,
    /// How often acknowledged progress is committed to the embedded store, in milliseconds
    /// (> 0). Default: 500. A crash replays at most this much (duplicates, never loss).
    pub commit_interval_ms: u64,
    /// File holding the key for the Secret redaction HMAC. Omitted: with the embedded
    /// backend a random key is generated and kept next to the store; with the Kafka backend
    /// the key is kept in the state topic, so every replica uses the same one.
    pub redaction_key_path: Option<PathBuf>,
    /// The Kafka backend's settings (`backend: kafka`).
    pub kafka: KafkaStateConfig,
}

/// `checkpoint.backend`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    /// `embedded` for now (see [`StateBackend::resolve`]).
    #[default]
    Auto,
    /// The redb file at `checkpoint.path`.
    Embedded,
    /// A compacted state topic, written in the same transactions as the events.
    Kafka,
}

impl StateBackend {
    /// `auto` resolved for `sink`: `embedded` for now. The Kafka backend passes its own
    /// tests (tests/kafka_state.rs, and the Kafka sink's suites with it), but the fault
    /// suite's collector does not yet read transactional topics (their offsets have gaps
    /// where commit markers and aborted records are), so it stays an explicit choice.
    pub fn resolve(self, sink: &SinkConfig) -> StateBackend {
        let _ = sink;
        match self {
            StateBackend::Auto => StateBackend::Embedded,
            b => b,
        }
    }

    /// The name, as configured.
    pub fn as_str(self) -> &'static str {
        match self {
            StateBackend::Auto => "auto",
            StateBackend::Embedded => "embedded",
            StateBackend::Kafka => "kafka",
        }
    }
}

/// `checkpoint.kafka`: the state topic and the transactions of the Kafka backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct KafkaStateConfig {
    /// The compacted topic holding every stream's state. Default: `kubewire-state`. Created
    /// (one partition, `cleanup.policy=compact`) when missing.
    pub state_topic: String,
    /// Replication factor of the state topic when kubewire creates it. Default: the
    /// sink's `createTopics.replicationFactor`.
    pub replication_factor: Option<i32>,
    /// The producer's `transactional.id`, the same for every replica of one deployment (a
    /// new leader's producer fences the old one with it). Default:
    /// `kubewire-<leaseNamespace>-<leaseName>` under leader election, else
    /// `kubewire-<stateTopic>`.
    pub transactional_id: Option<String>,
    /// A transaction is committed at most this long after its first event, in milliseconds
    /// (> 0). Default: 50. Consumers reading `read_committed` see events only at commit:
    /// this is the latency the transactions add, on top of the commit's own round trips.
    pub transaction_interval_ms: u64,
    /// A transaction is committed once it holds this many events (> 0), whatever its age.
    /// Default: 5000. Bounds what an aborted transaction re-sends and what waits in memory.
    pub transaction_max_events: usize,
    /// `transaction.timeout.ms` of the producer (> 0): the broker aborts a transaction
    /// left open this long (a frozen leader's). Default: 60000.
    pub transaction_timeout_ms: u64,
}

impl Default for KafkaStateConfig {
    fn default() -> Self {
        Self {
            state_topic: "kubewire-state".into(),
            replication_factor: None,
            transactional_id: None,
            transaction_interval_ms: 50,
            transaction_max_events: 5000,
            transaction_timeout_ms: 60_000,
        }
    }
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            backend: StateBackend::Auto,
            path: PathBuf::from(".kubewire/checkpoint.redb"),
            commit_interval_ms: 500,
            redaction_key_path: None,
            kafka: KafkaStateConfig::default(),
        }
    }
}

impl Config {
    /// The Kafka backend's `transactional.id`: configured, else derived from the Lease
    /// (every replica of a deployment competes for the same one), else from the state topic.
    pub fn transactional_id(&self) -> String {
        if let Some(id) = &self.checkpoint.kafka.transactional_id {
            return id.clone();
        }
        let le = &self.leader_election;
        if le.enabled {
            format!("kubewire-{}-{}", le.namespace(), le.lease_name)
        } else {
            format!("kubewire-{}", self.checkpoint.kafka.state_topic)
        }
    }
}

impl LeaderElectionConfig {
    /// The Lease's namespace: `leaseNamespace`, else `$POD_NAMESPACE`, else `default`.
    pub fn namespace(&self) -> String {
        self.lease_namespace
            .clone()
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|n| !n.is_empty())
            })
            .unwrap_or_else(|| "default".into())
    }
}

impl CheckpointConfig {
    /// The redaction key file: `redactionKeyPath`, or `redaction.key` beside the store.
    pub fn redaction_key_file(&self) -> PathBuf {
        match &self.redaction_key_path {
            Some(p) => p.clone(),
            None => self
                .path
                .parent()
                .unwrap_or(Path::new(""))
                .join("redaction.key"),
        }
    }
}

/// List-Watch tuning, for every stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct WatchConfig {
    /// Objects per page of a paginated list (`limit`). Default: 500.
    pub page_size: u32,
    /// Server-side watch timeout (`timeoutSeconds` of the watch request). Default: 290.
    pub timeout_seconds: u32,
    /// Client-side liveness: a watch that sends nothing (not even a bookmark) for this long
    /// is restarted from the last resourceVersion. Must exceed `timeoutSeconds`. Default: 330.
    pub idle_timeout_seconds: u32,
    /// Events buffered between a stream's watch loop and the sink; when full, the loop
    /// stops reading. Default: 1024.
    pub channel_capacity: usize,
    /// First retry delay after an error, in milliseconds (doubled per failure, with jitter).
    /// Default: 800.
    pub backoff_initial_ms: u64,
    /// Largest retry delay, in milliseconds. Default: 30000.
    pub backoff_max_ms: u64,
    /// A watch healthy for this many seconds resets the backoff. Default: 60.
    pub healthy_reset_seconds: u64,
    /// How often a cluster's discovery is read again while a configured resource does not
    /// resolve there (a CRD not installed yet), in seconds; the resource is streamed as
    /// soon as it resolves. Default: 30.
    pub discovery_interval_seconds: u64,
    /// How a snapshot (a stream's first sync, a relist after 410) is read: `auto` (the
    /// default) streams it where the server can (one watch with `sendInitialEvents=true`,
    /// read up to the `k8s.io/initial-events-end` bookmark, which then goes on as the
    /// stream's watch: much less API server memory for large lists) and falls back to a
    /// paginated list where it cannot, decided per stream and logged once; `stream` insists
    /// (an answer that cannot stream is an error, retried); `paginate` always lists.
    pub initial_list: InitialList,
}

/// How snapshots are read (`watch.initialList`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialList {
    /// Stream where the server supports it, else paginate.
    #[default]
    Auto,
    /// Always stream.
    Stream,
    /// Always a paginated LIST.
    Paginate,
}

impl WatchConfig {
    /// The retry delays of a failing stream or cluster: exponential from `backoffInitialMs`
    /// to `backoffMaxMs`, with jitter, without end.
    pub fn backoff(&self) -> impl Iterator<Item = std::time::Duration> + use<> {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::default()
            .with_min_delay(std::time::Duration::from_millis(self.backoff_initial_ms))
            .with_max_delay(std::time::Duration::from_millis(self.backoff_max_ms))
            .with_jitter()
            .without_max_times()
            .build()
    }
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            page_size: 500,
            timeout_seconds: 290,
            idle_timeout_seconds: 330,
            channel_capacity: 1024,
            backoff_initial_ms: 800,
            backoff_max_ms: 30_000,
            healthy_reset_seconds: 60,
            discovery_interval_seconds: 30,
            initial_list: InitialList::Auto,
        }
    }
}

/// Logging (to standard error).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LogConfig {
    /// `auto` (text on a terminal, JSON otherwise), `text` or `json`. Default: `auto`.
    pub format: LogFormat,
    /// A `tracing` filter: a level (`info`) or directives (`info,kubewire::watch=debug`).
    /// The `RUST_LOG` variable, when set, wins. Default: `info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            level: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    #[default]
    Auto,
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Every field name of the file's structure, read off the structs themselves (their
/// serialized defaults, one of each sink and of a resource and a cluster): env segments are
/// matched against these case- and underscore-insensitively, so a new field needs no list
/// kept by hand.
fn field_names() -> &'static std::collections::BTreeSet<String> {
    static NAMES: std::sync::OnceLock<std::collections::BTreeSet<String>> =
        std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let samples = [
            serde_json::to_value(Config::default()),
            serde_json::to_value(SinkConfig::Kafka(Default::default())),
            serde_json::to_value(SinkConfig::Nats(Default::default())),
            serde_json::to_value(ResourceConfig::new("configmaps")),
            // Fields left out when unset (`exclude`) and nested ones behind an option.
            serde_json::to_value(ResourceConfig {
                exclude: Some(Vec::new()),
                kafka: Some(Default::default()),
                ..ResourceConfig::new(ALL_RESOURCES)
            }),
            serde_json::to_value(ClusterConfig::default()),
        ];
        let mut out = std::collections::BTreeSet::new();
        for v in samples {
            json_keys(&v.expect("the configuration serializes"), &mut out);
        }
        out
    })
}

/// Every object key in `v`, at any depth (into arrays too).
pub(crate) fn json_keys(v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                out.insert(k.clone());
                json_keys(v, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| json_keys(v, out)),
        _ => {}
    }
}

/// Whether `name` is a field of the configuration (for the tests of the sinks' sections).
#[cfg(test)]
pub(crate) fn is_field_name(name: &str) -> bool {
    field_names().contains(name)
}

/// Fields whose environment value is a comma-separated list.
const LIST_FIELDS: &[&str] = &["namespaces", "events"];

impl Config {
    /// The clusters to watch: the configured ones, or the one inferred the usual way.
    pub fn clusters(&self) -> Vec<ClusterConfig> {
        if self.clusters.is_empty() {
            vec![ClusterConfig::default()]
        } else {
            self.clusters.clone()
        }
    }

    /// Loads `path` (YAML or TOML by extension) with overrides from the process environment.
    /// Does not validate: call [`Config::validate`] (or use [`Config::load_valid`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// [`Config::load`], then [`Config::validate`]; validation problems become
    /// [`ConfigError::Invalid`].
    pub fn load_valid(path: &Path) -> Result<Config, ConfigError> {
        let config = Self::load(path)?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Loads `path` with overrides from `env` (pairs of variable name and value; those not
    /// starting with `KUBEWIRE__` are ignored).
    pub fn load_with_env<I, K, V>(path: &Path, env: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let format =
            Format::from_path(path).ok_or_else(|| ConfigError::UnsupportedFormat(path.into()))?;
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_str_with_env(&text, format, env)
    }

    /// Parses configuration text with overrides from `env`.
    pub fn from_str_with_env<I, K, V>(
        text: &str,
        format: Format,
        env: I,
    ) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let file_format = match format {
            Format::Yaml => config::FileFormat::Yaml,
            Format::Toml => config::FileFormat::Toml,
        };
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(text, file_format).required(false));
        let mut problems = Vec::new();
        for (key, value) in env {
            let key = key.as_ref();
            let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let (path, is_list) = match env_path(rest) {
                Ok(p) => p,
                Err(message) => {
                    problems.push(Problem::new(
                        "",
                        format!("environment variable {key}: {message}"),
                    ));
                    continue;
                }
            };
            let value = value.as_ref();
            // `env_path` only produces valid path expressions, so this cannot fail.
            builder = if is_list {
                let items: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                builder.set_override(path.as_str(), items)
            } else {
                builder.set_override(path.as_str(), value)
            }
            .map_err(|e| ConfigError::Invalid(vec![Problem::new(path, e.to_string())]))?;
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        let loaded = builder
            .build()
            .map_err(|e| ConfigError::Invalid(vec![problem_from_config_error(e)]))?;
        loaded
            .try_deserialize::<Config>()
            .map_err(|e| ConfigError::Invalid(vec![problem_from_config_error(e)]))
    }
}

/// `WATCH__PAGE_SIZE` → `watch.pageSize`; `RESOURCES__0__EVENTS` → `resources[0].events`
/// (and whether the leaf is a list field).
fn env_path(rest: &str) -> Result<(String, bool), String> {
    let mut path = String::new();
    let mut leaf = String::new();
    for segment in rest.split("__") {
        if segment.is_empty() {
            return Err("has an empty segment (`____`) or trailing `__`".into());
        }
        if segment.bytes().all(|b| b.is_ascii_digit()) {
            if path.is_empty() {
                return Err("cannot start with a list index".into());
            }
            let index: usize = segment
                .parse()
                .map_err(|_| format!("list index {segment} is too large"))?;
            path.push_str(&format!("[{index}]"));
            continue;
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "segment {segment:?} must be letters, digits and '_'"
            ));
        }
        let normalized: String = segment
            .chars()
            .filter(|c| *c != '_')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let field = field_names()
            .iter()
            .find(|f| f.to_ascii_lowercase().replace('_', "") == normalized)
            .cloned()
            .unwrap_or(normalized);
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(&field);
        leaf = field;
    }
    let is_list = LIST_FIELDS.contains(&leaf.as_str()) && !path.ends_with(']');
    Ok((path, is_list))
}

/// Turns a `config` crate error into a [`Problem`] with the path the crate knows, and the
/// unknown field's name appended to it for `deny_unknown_fields` errors.
fn problem_from_config_error(e: config::ConfigError) -> Problem {
    use config::ConfigError as E;
    match e {
        E::At { error, key, .. } => {
            let inner = problem_from_config_error(*error);
            let path = join_path(&normalize_path(key.as_deref().unwrap_or("")), &inner.path);
            Problem::new(path, inner.message)
        }
        E::Type {
            unexpected,
            expected,
            key,
            ..
        } => Problem::new(
            normalize_path(&key.unwrap_or_default()),
            format!("invalid type: {unexpected}, expected {expected}"),
        ),
        E::NotFound(key) => Problem::new(normalize_path(&key), "missing"),
        E::Message(message) => {
            // serde: "unknown field `x`, expected one of ...", "missing field `x`",
            // "unknown variant `x`, expected ...".
            let field = ["unknown field `", "missing field `"]
                .iter()
                .find_map(|p| message.strip_prefix(p))
                .and_then(|rest| rest.split_once('`'))
                .map(|(name, _)| name.to_owned());
            let message = match message.split_once(" does not have variant constructor ") {
                Some((_, value)) => format!("unknown value {value:?}"),
                None => message.replace('`', ""),
            };
            match field {
                Some(name) => Problem::new(name, message),
                None => Problem::new("", message),
            }
        }
        E::Foreign(err) => Problem::new("", err.to_string()),
        other => Problem::new("", other.to_string()),
    }
}

/// The `config` crate writes `a[0]b` for `a[0].b`; put the dot back.
fn normalize_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 4);
    let mut after_bracket = false;
    for c in path.chars() {
        if after_bracket && c != '[' && c != '.' {
            out.push('.');
        }
        after_bracket = c == ']';
        out.push(c);
    }
    out
}

fn join_path(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_owned(),
        (_, true) => prefix.to_owned(),
        _ if rest.starts_with('[') => format!("{prefix}{rest}"),
        _ => format!("{prefix}.{rest}"),
    }
}

#[cfg(test)]
mod tests;
