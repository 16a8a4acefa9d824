//! The observation stage: Prometheus metrics of every other stage, the health of every
//! stream and of the sink, and the admin HTTP server that serves them (`/metrics`,
//! `/healthz`, `/readyz`). Nothing here is on the data path's critical section: metric
//! handles are resolved once per stream and updated with atomics.

mod admin;
pub mod traces;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

pub use admin::serve;

use crate::event::{ChangeType, Origin, StreamId};
use crate::sink::{Sink, SinkHealth};

/// Errors of the telemetry stage.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The admin server (`/metrics`, `/healthz`, `/readyz`) cannot bind its address.
    #[error("admin server cannot listen on {address}: {source}")]
    Bind {
        /// The configured `admin.address`.
        address: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Labels of everything per stream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// The configured cluster name.
    pub cluster: String,
    /// The resource's qualified name, e.g. `deployments.apps`.
    pub resource: String,
    /// Empty for all namespaces / cluster-scoped.
    pub namespace: String,
}

impl StreamLabels {
    /// The labels of stream `id` (its selectors are not among them).
    pub fn of(id: &StreamId) -> Self {
        Self {
            cluster: id.cluster.clone(),
            resource: id.resource.qualified_name(),
            namespace: id.namespace.clone().unwrap_or_default(),
        }
    }
}

/// A stream's labels plus one more: `stream` flattened, then `name=value`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublishedLabels {
    #[prometheus(flatten)]
    stream: StreamLabels,
    r#type: String,
    origin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    #[prometheus(flatten)]
    stream: StreamLabels,
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    #[prometheus(flatten)]
    stream: StreamLabels,
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabels {
    #[prometheus(flatten)]
    stream: StreamLabels,
    change: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    #[prometheus(flatten)]
    stream: StreamLabels,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkErrorLabels {
    sink: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    cluster: String,
    verb: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiVerbLabels {
    cluster: String,
    verb: String,
}

/// Every metric kubewire exports (documented in `docs/operations.md`, "Metrics").
pub struct Metrics {
    registry: Registry,
    published: Family<PublishedLabels, Counter>,
    sink_acks: Family<SinkLabels, Counter>,
    sink_errors: Family<SinkErrorLabels, Counter>,
    sink_latency: Family<SinkLabels, Histogram>,
    sink_up: Family<SinkLabels, Gauge>,
    sink_retries: Family<SinkLabels, Counter>,
    sink_duplicates: Family<SinkLabels, Counter>,
    watch_starts: Family<CauseLabels, Counter>,
    relists: Family<StreamLabels, Counter>,
    snapshots: Family<ModeLabels, Counter>,
    reconciled: Family<ChangeLabels, Counter>,
    last_event: Family<StreamLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    last_checkpoint: Family<StreamLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    checkpoint_lag: Family<StreamLabels, Gauge>,
    in_flight: Family<StreamLabels, Gauge>,
    tracked: Family<StreamLabels, Gauge>,
    initial_sync: Family<StateLabels, Gauge>,
    stream_ready: Family<StreamLabels, Gauge>,
    api_requests: Family<ApiLabels, Counter>,
    api_throttled: Family<ClusterLabels, Counter>,
    api_latency: Family<ApiVerbLabels, Histogram>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~65 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kubewire");
        let m = Self {
            published: Family::default(),
            sink_acks: Family::default(),
            sink_errors: Family::default(),
            sink_latency: Family::new_with_constructor(latency_histogram),
            sink_up: Family::default(),
            sink_retries: Family::default(),
            sink_duplicates: Family::default(),
            watch_starts: Family::default(),
            relists: Family::default(),
            snapshots: Family::default(),
            reconciled: Family::default(),
            last_event: Family::default(),
            last_checkpoint: Family::default(),
            checkpoint_lag: Family::default(),
            in_flight: Family::default(),
            tracked: Family::default(),
            initial_sync: Family::default(),
            stream_ready: Family::default(),
            api_requests: Family::default(),
            api_throttled: Family::default(),
            api_latency: Family::new_with_constructor(latency_histogram),
            registry: Registry::default(),
        };
        registry.register(
            "events_published",
            "Events acknowledged by the sink, by cluster, resource, namespace, type and origin",
            m.published.clone(),
        );
        registry.register(
            "sink_acks",
            "Acknowledgements received from the sink",
            m.sink_acks.clone(),
        );
        registry.register(
            "sink_errors",
            "Sink errors by kind (rejected, send, unavailable)",
            m.sink_errors.clone(),
        );
        registry.register(
            "sink_publish_latency_seconds",
            "Time from handing an event to the sink to its acknowledgement",
            m.sink_latency.clone(),
        );
        registry.register(
            "sink_up",
            "1 while the sink reaches its destination",
            m.sink_up.clone(),
        );
        registry.register(
            "sink_retries",
            "Deliveries the sink tried again after a failure (Kafka: re-sent in order after librdkafka gave up; NATS: publishes retried with the same id)",
            m.sink_retries.clone(),
        );
        registry.register(
            "sink_duplicates",
            "Events the destination recognised as already stored and dropped (NATS JetStream de-duplication)",
            m.sink_duplicates.clone(),
        );
        registry.register("watch_starts", "Watch and list requests started, by cause (initial, resume, relist, timeout, idle, error)", m.watch_starts.clone());
        registry.register(
            "snapshots",
            "Snapshots taken (first syncs and relists), by how they were read: stream (a watch with sendInitialEvents) or paginate (LIST pages)",
            m.snapshots.clone(),
        );
        registry.register(
            "relists",
            "Reconciling relists (after 410 Gone)",
            m.relists.clone(),
        );
        registry.register(
            "relist_objects_reconciled",
            "Objects a relist published, by change (added, modified, deleted)",
            m.reconciled.clone(),
        );
        registry.register(
            "stream_last_event_timestamp_seconds",
            "Unix time of the last event a stream received from the API server",
            m.last_event.clone(),
        );
        registry.register(
            "stream_last_checkpoint_timestamp_seconds",
            "Unix time of a stream's last checkpoint commit",
            m.last_checkpoint.clone(),
        );
        registry.register(
            "checkpoint_lag_resource_versions",
            "Latest resourceVersion seen minus the checkpointed one (etcd revisions)",
            m.checkpoint_lag.clone(),
        );
        registry.register(
            "events_in_flight",
            "Events handed to the sink and not yet acknowledged",
            m.in_flight.clone(),
        );
        registry.register(
            "objects_tracked",
            "Objects in a stream's index (what was last published)",
            m.tracked.clone(),
        );
        registry.register(
            "initial_sync_objects",
            "Objects of a stream's current list, by state (listed, published)",
            m.initial_sync.clone(),
        );
        registry.register(
            "stream_ready",
            "1 once a stream completed its first sync and is not failing",
            m.stream_ready.clone(),
        );
        registry.register(
            "api_requests",
            "Kubernetes API requests by cluster, verb and HTTP code",
            m.api_requests.clone(),
        );
        registry.register(
            "api_throttled",
            "Kubernetes API requests answered 429 Too Many Requests (priority and fairness), each sent again after its Retry-After",
            m.api_throttled.clone(),
        );
        registry.register(
            "api_request_duration_seconds",
            "Kubernetes API request latency by verb (watch: until the stream opened)",
            m.api_latency.clone(),
        );
        Self { registry, ..m }
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

impl Metrics {
    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Handles for one stream, resolved once. Its counters start at zero so that `rate()`
    /// and `increase()` see their first increment.
    pub fn stream(self: &Arc<Self>, id: &StreamId) -> StreamMetrics {
        let l = StreamLabels::of(id);
        self.relists.get_or_create(&l).inc_by(0);
        for change in ["added", "modified", "deleted"] {
            self.reconciled
                .get_or_create(&ChangeLabels {
                    stream: l.clone(),
                    change: change.into(),
                })
                .inc_by(0);
        }
        StreamMetrics {
            metrics: self.clone(),
            in_flight: self.in_flight.get_or_create(&l).clone(),
            tracked: self.tracked.get_or_create(&l).clone(),
            checkpoint_lag: self.checkpoint_lag.get_or_create(&l).clone(),
            seen_rv: Arc::new(AtomicI64::new(0)),
            labels: l,
        }
    }

    /// Creates the sink's counters at zero.
    pub fn init_sink(&self, sink: &str) {
        for kind in ["send", "rejected"] {
            self.sink_errors
                .get_or_create(&SinkErrorLabels {
                    sink: sink.into(),
                    kind: kind.into(),
                })
                .inc_by(0);
        }
        self.sink_acks
            .get_or_create(&SinkLabels { sink: sink.into() })
            .inc_by(0);
        self.sink_counted(sink, 0, 0);
    }

    /// Creates a cluster's throttled counter at zero.
    pub fn init_cluster(&self, cluster: &str) {
        self.api_throttled
            .get_or_create(&ClusterLabels {
                cluster: cluster.into(),
            })
            .inc_by(0);
    }

    /// Counts one request of `cluster` answered 429.
    pub fn api_throttled(&self, cluster: &str) {
        self.api_throttled
            .get_or_create(&ClusterLabels {
                cluster: cluster.into(),
            })
            .inc();
    }

    /// Adds what the sink's running totals grew by since the last call.
    pub fn sink_counted(&self, sink: &str, retries: u64, duplicates: u64) {
        let labels = SinkLabels { sink: sink.into() };
        self.sink_retries.get_or_create(&labels).inc_by(retries);
        self.sink_duplicates
            .get_or_create(&labels)
            .inc_by(duplicates);
    }

    /// Sets `kubewire_sink_up` (1 while the sink reaches its destination).
    pub fn sink_up(&self, sink: &str, up: bool) {
        self.sink_up
            .get_or_create(&SinkLabels { sink: sink.into() })
            .set(up as i64);
    }

    /// Counts one `kubewire_sink_errors` of `kind` (`send`, `rejected`).
    pub fn sink_error(&self, sink: &str, kind: &str) {
        self.sink_errors
            .get_or_create(&SinkErrorLabels {
                sink: sink.into(),
                kind: kind.into(),
            })
            .inc();
    }

    /// Counts one acknowledgement, `latency` after the event was handed to the sink.
    pub fn sink_ack(&self, sink: &str, latency: Duration) {
        let l = SinkLabels { sink: sink.into() };
        self.sink_acks.get_or_create(&l).inc();
        self.sink_latency
            .get_or_create(&l)
            .observe(latency.as_secs_f64());
    }

    /// Counts one Kubernetes API request (`code` 0: no HTTP answer) and records its latency.
    pub fn api_request(&self, cluster: &str, verb: &str, code: u16, latency: Duration) {
        self.api_requests
            .get_or_create(&ApiLabels {
                cluster: cluster.into(),
                verb: verb.into(),
                code: code.to_string(),
            })
            .inc();
        self.api_latency
            .get_or_create(&ApiVerbLabels {
                cluster: cluster.into(),
                verb: verb.into(),
            })
            .observe(latency.as_secs_f64());
    }
}

/// One stream's metric handles.
#[derive(Clone)]
pub struct StreamMetrics {
    metrics: Arc<Metrics>,
    labels: StreamLabels,
    /// `kubewire_events_in_flight`: handed to the sink, not acknowledged yet.
    pub in_flight: Gauge,
    /// `kubewire_objects_tracked`: objects in the stream's index.
    pub tracked: Gauge,
    checkpoint_lag: Gauge,
    /// The newest resourceVersion seen (as an etcd revision), for the lag gauge.
    seen_rv: Arc<AtomicI64>,
}

impl StreamMetrics {
    /// The process-wide metrics (for the sink's, which are not per stream).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Counts one event acknowledged by the sink, by type (`None`: a relist marker,
    /// `relisted`) and origin.
    pub fn published(&self, change: Option<ChangeType>, origin: Origin) {
        self.metrics
            .published
            .get_or_create(&PublishedLabels {
                stream: self.labels.clone(),
                r#type: change.map_or("relisted", ChangeType::as_str).into(),
                origin: origin.as_str().into(),
            })
            .inc();
    }

    /// Counts one snapshot taken, by how it was read (`stream` or `paginate`).
    pub fn snapshot(&self, mode: &str) {
        self.metrics
            .snapshots
            .get_or_create(&ModeLabels {
                stream: self.labels.clone(),
                mode: mode.into(),
            })
            .inc();
    }

    /// Counts one list or watch request started, by cause.
    pub fn watch_start(&self, cause: &str) {
        self.metrics
            .watch_starts
            .get_or_create(&CauseLabels {
                stream: self.labels.clone(),
                cause: cause.into(),
            })
            .inc();
    }

    /// Counts one reconciling relist and the objects it publishes, by change.
    pub fn relisted(&self, added: u64, modified: u64, deleted: u64) {
        self.metrics.relists.get_or_create(&self.labels).inc();
        for (change, n) in [
            ("added", added),
            ("modified", modified),
            ("deleted", deleted),
        ] {
            self.metrics
                .reconciled
                .get_or_create(&ChangeLabels {
                    stream: self.labels.clone(),
                    change: change.into(),
                })
                .inc_by(n);
        }
    }

    /// An event arrived from the API server at `rv`.
    pub fn event_seen(&self, rv: &str) {
        self.metrics
            .last_event
            .get_or_create(&self.labels)
            .set(now_secs());
        if let Ok(v) = rv.parse::<i64>() {
            self.seen_rv.fetch_max(v, Ordering::Relaxed);
        }
    }

    /// The checkpoint was committed at `rv`.
    pub fn checkpointed(&self, rv: Option<&str>) {
        self.metrics
            .last_checkpoint
            .get_or_create(&self.labels)
            .set(now_secs());
        if let Some(v) = rv.and_then(|r| r.parse::<i64>().ok()) {
            let seen = self.seen_rv.fetch_max(v, Ordering::Relaxed).max(v);
            self.checkpoint_lag.set(seen - v);
        }
    }

    fn initial_sync_gauge(&self, state: &str) -> Gauge {
        self.metrics
            .initial_sync
            .get_or_create(&StateLabels {
                stream: self.labels.clone(),
                state: state.into(),
            })
            .clone()
    }

    /// Sets the `listed` or `published` count of the current list.
    pub fn initial_sync(&self, state: &str, n: i64) {
        self.initial_sync_gauge(state).set(n);
    }

    /// Adds one to the `listed` or `published` count of the current list.
    pub fn initial_sync_add(&self, state: &str) {
        self.initial_sync_gauge(state).inc();
    }

    /// Sets `kubewire_stream_ready`: 1 once the first sync completed and while not failing.
    pub fn ready(&self, ready: bool) {
        self.metrics
            .stream_ready
            .get_or_create(&self.labels)
            .set(ready as i64);
    }

    /// [`Metrics::api_request`] for this stream's cluster.
    pub fn api_request(&self, verb: &str, code: u16, latency: Duration) {
        self.metrics
            .api_request(&self.labels.cluster, verb, code, latency);
    }
}

/// What a health entry is about. Only streams have loops that can wedge: a cluster being
/// connected or a resource waiting to resolve shows in `/readyz` and never fails `/healthz`
/// (a restart would not help; regression: tests/operations.rs, an unresolved resource past
/// `idleTimeoutSeconds + 60 s`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HealthKey {
    /// A stream, by its display form.
    Stream(String),
    /// A cluster being connected to or discovered.
    Cluster(String),
    /// A sink whose destination cannot be reached yet, by its type.
    Sink(&'static str),
    /// A configured resource that does not resolve on a cluster (yet).
    Resource {
        /// The cluster's name.
        cluster: String,
        /// The configuration path, e.g. `resources[2]`.
        path: String,
        /// The resource as configured.
        resource: String,
    },
}

impl std::fmt::Display for HealthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HealthKey::Stream(name) => write!(f, "stream {name}"),
            HealthKey::Cluster(name) => write!(f, "cluster {name}"),
            HealthKey::Sink(name) => write!(f, "sink {name}"),
            HealthKey::Resource {
                cluster,
                path,
                resource,
            } => write!(f, "resource {cluster}/{resource} ({path})"),
        }
    }
}

/// What /readyz and /healthz look at: every stream's state and the sink.
#[derive(Default)]
pub struct Health {
    entries: Mutex<BTreeMap<HealthKey, StreamState>>,
    sink: Mutex<Option<Arc<dyn Sink>>>,
    /// A replica waiting for leadership: ready (it is doing its job: standing by).
    standby: std::sync::atomic::AtomicBool,
}

/// One entry's state as far as health goes.
#[derive(Clone, Debug, Default)]
pub struct StreamState {
    /// The first list or resume completed.
    pub synced: bool,
    /// Why it is failing (or waiting) right now, if it is.
    pub error: Option<String>,
    /// Unix seconds of the loop's last sign of life.
    pub heartbeat: f64,
    /// Why the stream's progress stopped for good (a restart replays from the checkpoint).
    pub halted: Option<String>,
}

impl Health {
    /// The sink whose reachability `/readyz` reports.
    pub fn set_sink(&self, sink: Arc<dyn Sink>) {
        *self.sink.lock().expect("health lock") = Some(sink);
    }

    /// Updates the entry `key` (a sign of life).
    pub fn update(&self, key: &HealthKey, f: impl FnOnce(&mut StreamState)) {
        let mut entries = self.entries.lock().expect("health lock");
        let s = entries.entry(key.clone()).or_default();
        f(s);
        s.heartbeat = now_secs();
    }

    /// Marks a stream halted: its progress stopped, and only a restart resumes it.
    pub fn halt(&self, key: &HealthKey, why: String) {
        let mut entries = self.entries.lock().expect("health lock");
        entries.entry(key.clone()).or_default().halted = Some(why);
    }

    /// A replica waiting for leadership (ready, and reported as standing by).
    pub fn set_standby(&self, standby: bool) {
        self.standby.store(standby, Ordering::Relaxed);
    }

    /// Forgets every stream (their term ended).
    pub fn clear_streams(&self) {
        self.entries
            .lock()
            .expect("health lock")
            .retain(|k, _| !matches!(k, HealthKey::Stream(_)));
    }

    /// Forgets one entry.
    pub fn remove(&self, key: &HealthKey) {
        self.entries.lock().expect("health lock").remove(key);
    }

    /// `Ok(body)` when every stream is synced and not failing and the sink is up; else the
    /// list of what is not ready and why.
    pub fn readiness(&self) -> Result<String, String> {
        if self.standby.load(Ordering::Relaxed) {
            return Ok("ready: standby (not the leader)\n".into());
        }
        let mut problems = Vec::new();
        let entries = self.entries.lock().expect("health lock").clone();
        let streams = entries
            .keys()
            .filter(|k| matches!(k, HealthKey::Stream(_)))
            .count();
        if streams == 0 {
            problems.push("no stream started yet".to_owned());
        }
        for (key, s) in &entries {
            match (&s.halted, &s.error, s.synced, key) {
                (Some(why), _, _, _) => problems.push(format!("{key}: halted: {why}")),
                (None, Some(e), _, HealthKey::Resource { .. } | HealthKey::Sink(_)) => {
                    problems.push(format!("{key}: waiting: {e}"))
                }
                (None, Some(e), _, _) => problems.push(format!("{key}: {e}")),
                (None, None, false, HealthKey::Stream(_)) => {
                    problems.push(format!("{key}: first sync not complete"))
                }
                (None, None, _, _) => {}
            }
        }
        if let Some(sink) = self.sink.lock().expect("health lock").as_ref()
            && let SinkHealth::Down(why) = sink.health()
        {
            problems.push(format!("sink {}: down: {why}", sink.name()));
        }
        if problems.is_empty() {
            Ok(format!("ready: {streams} streams, sink up\n"))
        } else {
            Err(problems.join("\n") + "\n")
        }
    }

    /// Streams whose loop showed no sign of life for longer than `limit`, or whose progress
    /// halted: a restart would help them. Nothing else is ever wedged.
    pub fn wedged(&self, limit: Duration) -> Vec<String> {
        self.wedged_at(now_secs(), limit)
    }

    /// [`Health::wedged`] as seen at `now` (Unix seconds).
    fn wedged_at(&self, now: f64, limit: Duration) -> Vec<String> {
        self.entries
            .lock()
            .expect("health lock")
            .iter()
            .filter(|(k, s)| {
                matches!(k, HealthKey::Stream(_))
                    && (s.halted.is_some() || now - s.heartbeat > limit.as_secs_f64())
            })
            .map(|(k, _)| k.to_string())
            .collect()
    }
}

/// Mirrors the sink's reachability into `kubewire_sink_up`, and its recovery totals into
/// `kubewire_sink_retries_total` / `kubewire_sink_duplicates_total`.
pub async fn mirror_sink(sink: Arc<dyn Sink>, telemetry: Arc<Telemetry>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut seen = crate::sink::SinkCounters::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let up = sink.health() == SinkHealth::Up;
                telemetry.metrics.sink_up(sink.name(), up);
                let now = sink.counters();
                telemetry.metrics.sink_counted(
                    sink.name(),
                    now.retries.saturating_sub(seen.retries),
                    now.duplicates.saturating_sub(seen.duplicates),
                );
                seen = now;
            }
        }
    }
}

/// What the stages share: metrics and health.
#[derive(Default)]
pub struct Telemetry {
    /// What `/metrics` exports.
    pub metrics: Arc<Metrics>,
    /// What `/healthz` and `/readyz` report.
    pub health: Health,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_the_stream_that_is_not_ready_and_why() {
        let h = Health::default();
        assert!(h.readiness().unwrap_err().contains("no stream started"));
        let ok = HealthKey::Stream("default/configmaps".into());
        let forbidden = HealthKey::Stream("default/secrets in x".into());
        h.update(&ok, |s| s.synced = true);
        h.update(&forbidden, |s| s.error = Some("403 Forbidden".into()));
        let body = h.readiness().unwrap_err();
        assert_eq!(body, "stream default/secrets in x: 403 Forbidden\n");
        h.update(&forbidden, |s| {
            s.error = None;
            s.synced = true;
        });
        assert!(h.readiness().is_ok());
    }

    #[test]
    fn a_waiting_resource_or_cluster_is_never_wedged_but_a_silent_or_halted_stream_is() {
        let h = Health::default();
        let waiting = HealthKey::Resource {
            cluster: "default".into(),
            path: "resources[1]".into(),
            resource: "widgets".into(),
        };
        h.update(&waiting, |s| s.error = Some("unknown resource".into()));
        h.update(&HealthKey::Cluster("b".into()), |s| {
            s.error = Some("unreachable".into())
        });
        let stream = HealthKey::Stream("default/configmaps".into());
        h.update(&stream, |s| s.synced = true);
        // An hour later, without a sign of life: only the stream can be wedged.
        let later = now_secs() + 3600.0;
        assert_eq!(
            h.wedged_at(later, Duration::from_secs(60)),
            ["stream default/configmaps"]
        );
        assert!(h.wedged(Duration::from_secs(3600)).is_empty());
        let body = h.readiness().unwrap_err();
        assert!(
            body.contains("resource default/widgets (resources[1]): waiting: unknown resource"),
            "{body}"
        );
        h.halt(&stream, "event x not delivered".into());
        assert_eq!(
            h.wedged(Duration::from_secs(3600)),
            ["stream default/configmaps"]
        );
        assert!(
            h.readiness()
                .unwrap_err()
                .contains("halted: event x not delivered")
        );
    }

    #[test]
    fn metrics_encode_with_the_kubewire_prefix() {
        let m = Arc::new(Metrics::default());
        m.sink_ack("file", Duration::from_millis(3));
        let text = m.encode();
        assert!(
            text.contains("kubewire_sink_acks_total{sink=\"file\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kubewire_sink_publish_latency_seconds_bucket"),
            "{text}"
        );
    }
}
