//! Wires the stages together: per cluster a client and a discovery catalog, per stream a
//! watch loop and a publisher joined by a bounded channel; and the shutdown: stop watching,
//! drain in-flight events within a grace period, commit the checkpoints.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::checkpoint::{self, CheckpointError, StateStore, Store};
use crate::cluster::{self, Catalog, ClusterError, leader};
use crate::config::{ClusterConfig, Config, ResourceConfig};
use crate::event::StreamId;
use crate::publish::Publisher;
use crate::sink::{self, Sink, SinkError};
use crate::telemetry::{self, HealthKey, Telemetry, TelemetryError};
use crate::transform::{TransformError, Transformer};
use crate::watch::{StreamSpec, WatchLoop};

/// How long a shutdown may spend draining in-flight events before it gives up (the
/// checkpoint stays consistent either way: what was not acknowledged is replayed).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Sends a stream may have outstanding at the sink before it waits for acknowledgements.
const MAX_IN_FLIGHT: usize = 4096;

/// What makes [`run`] fail at startup, or keeps one stream from starting (then logged, and
/// the other streams run).
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The checkpoint store or the redaction key file cannot be opened, or a stream's
    /// checkpoint cannot be loaded.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The configured sink cannot be built.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A stream's transforms cannot be set up.
    #[error(transparent)]
    Transform(#[from] TransformError),
    /// The admin server cannot listen.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// Under leader election: no client for the cluster that holds the Lease.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The lease manager cannot start.
    #[error("leader election: {0}")]
    Leader(#[from] kube_lease_manager::LeaseManagerError),
}

/// Runs the daemon until `shutdown` is cancelled, then drains and returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    let store: Arc<dyn StateStore> = Arc::new(Store::open(&config.checkpoint.path)?);
    // Stable across restarts: a replayed Secret event must carry the same markers.
    let key = checkpoint::load_or_create_key(&config.checkpoint.redaction_key_file())?;
    let telemetry = Arc::new(Telemetry::default());
    let admin_stop = CancellationToken::new();
    // One attempt now, so that a configuration the sink refuses fails the start; an
    // unreachable destination is waited for when a term needs the sink (a standby never
    // does), never a reason to exit.
    let sink = tokio::sync::OnceCell::new();
    match sink::build(&config.sink).await {
        Ok(s) => {
            let s: Arc<dyn Sink> = Arc::from(s);
            observe_sink(&telemetry, &s, &admin_stop);
            let _ = sink.set(s);
        }
        Err(e) if e.is_unreachable() => {
            tracing::warn!(sink = config.sink.type_name(), error = %e, "sink unreachable at start; waiting for it");
        }
        Err(e) => return Err(e.into()),
    }
    if config.admin.enabled {
        // A loop that shows no sign of life for longer than its own idle timeout plus a
        // margin is wedged.
        let wedged_after = Duration::from_secs(u64::from(config.watch.idle_timeout_seconds) + 60);
        let addr = telemetry::serve(
            &config.admin.address,
            telemetry.clone(),
            wedged_after,
            admin_stop.clone(),
        )
        .await?;
        tracing::info!(address = %addr, "admin server listening (/metrics /healthz /readyz)");
    }
    let elect = config.leader_election.enabled;
    let ctx = Arc::new(Context {
        config: Arc::new(config),
        store,
        sink,
        redaction_key: key,
        telemetry,
        admin_stop: admin_stop.clone(),
    });
    if elect {
        ctx.run_elected(shutdown).await?;
    } else {
        // Never aborted: a stop always drains.
        ctx.run_term(shutdown, CancellationToken::new()).await;
    }
    admin_stop.cancel();
    Ok(())
}

/// Reports a built sink in `/readyz` and the metrics.
fn observe_sink(telemetry: &Arc<Telemetry>, sink: &Arc<dyn Sink>, stop: &CancellationToken) {
    telemetry.health.set_sink(sink.clone());
    telemetry.metrics.init_sink(sink.name());
    tokio::spawn(telemetry::mirror_sink(
        sink.clone(),
        telemetry.clone(),
        stop.clone(),
    ));
}

struct Context {
    config: Arc<Config>,
    store: Arc<dyn StateStore>,
    /// Built at start, or once its destination is reachable.
    sink: tokio::sync::OnceCell<Arc<dyn Sink>>,
    redaction_key: Vec<u8>,
    telemetry: Arc<Telemetry>,
    admin_stop: CancellationToken,
}

/// One period of watching: its watch loops and publishers.
#[derive(Clone)]
struct Term {
    /// Where the publishers send.
    sink: Arc<dyn Sink>,
    /// Cancelled to stop the watch loops.
    watching: CancellationToken,
    /// Cancelled to make the publishers stop taking new events (leadership lost).
    abort: CancellationToken,
    publishers: TaskTracker,
}

impl Context {
    /// The sink, built now if the start could not reach it: retried with backoff while its
    /// destination is unreachable (`/readyz` says `sink <type>: waiting: …`); `None` when
    /// `stop` comes first or the sink fails otherwise (logged).
    async fn wait_for_sink(&self, stop: &CancellationToken) -> Option<Arc<dyn Sink>> {
        let key = HealthKey::Sink(self.config.sink.type_name());
        let attempts = async {
            let mut delay = Duration::from_millis(500);
            self.sink
                .get_or_try_init(|| async {
                    loop {
                        match sink::build(&self.config.sink).await {
                            Ok(s) => {
                                let s: Arc<dyn Sink> = Arc::from(s);
                                self.telemetry.health.remove(&key);
                                tracing::info!(sink = s.name(), "sink reachable");
                                observe_sink(&self.telemetry, &s, &self.admin_stop);
                                return Ok(s);
                            }
                            Err(e) if e.is_unreachable() => {
                                self.telemetry
                                    .health
                                    .update(&key, |h| h.error = Some(e.to_string()));
                                tokio::time::sleep(delay).await;
                                delay = (delay * 2).min(Duration::from_secs(10));
                            }
                            Err(e) => return Err(e),
                        }
                    }
                })
                .await
                .cloned()
        };
        tokio::select! {
            _ = stop.cancelled() => None,
            r = attempts => match r {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(error = %e, "sink cannot be built; nothing is published");
                    None
                }
            },
        }
    }

    /// Watches until `stop`, then stops the watches and lets the publishers finish:
    /// everything already read is published (graceful shutdown: drain), unless `abort` was
    /// cancelled first, in which case only what the sink already holds is awaited
    /// (leadership lost: stop publishing at once).
    async fn run_term(self: &Arc<Self>, stop: CancellationToken, abort: CancellationToken) {
        let Some(sink) = self.wait_for_sink(&stop).await else {
            return;
        };
        let term = Term {
            sink,
            watching: CancellationToken::new(),
            abort,
            publishers: TaskTracker::new(),
        };
        let mut starters = Vec::new();
        for cluster in self.config.clusters() {
            starters.push(tokio::spawn(
                self.clone().start_cluster(cluster, term.clone()),
            ));
        }
        stop.cancelled().await;
        if term.abort.is_cancelled() {
            tracing::info!("stopping: publishing nothing more");
        } else {
            tracing::info!("stopping: draining in-flight events");
        }
        term.watching.cancel();
        for s in starters {
            let _ = s.await;
        }
        term.publishers.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, term.publishers.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "drain did not finish in time; unacknowledged events will be replayed");
        } else {
            tracing::info!("drained; checkpoints committed");
        }
        self.telemetry.health.clear_streams();
    }

    /// Leader election: watch only while holding the lease.
    async fn run_elected(self: &Arc<Self>, shutdown: CancellationToken) -> Result<(), AppError> {
        let le = &self.config.leader_election;
        let all = self.config.clusters();
        let cluster = le
            .cluster
            .as_ref()
            .and_then(|name| all.iter().find(|c| &c.name == name))
            .unwrap_or(&all[0]);
        let client = cluster::connect(cluster).await?;
        let mut elector = leader::elect(client, le).await?;
        tracing::info!(identity = %elector.identity, lease = %elector.lease, "waiting for leadership");
        self.telemetry.health.set_standby(true);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                ok = elector.until(true) => if !ok { break },
            }
            tracing::info!(identity = %elector.identity, lease = %elector.lease, "acquired leadership: starting streams");
            self.telemetry.health.set_standby(false);
            let (stop, abort) = (CancellationToken::new(), CancellationToken::new());
            let term = {
                let ctx = self.clone();
                let (stop, abort) = (stop.clone(), abort.clone());
                tokio::spawn(async move { ctx.run_term(stop, abort).await })
            };
            let lost = tokio::select! {
                _ = shutdown.cancelled() => false,
                _ = elector.until(false) => true,
            };
            if lost {
                // Another replica may lead already: publish nothing more, at once.
                tracing::warn!(identity = %elector.identity, "lost leadership: stopping streams");
                abort.cancel();
            }
            // A shutdown drains, commits, and only then releases the Lease (below).
            stop.cancel();
            let _ = term.await;
            self.telemetry.health.set_standby(true);
            if !lost {
                break;
            }
        }
        elector.release().await;
        Ok(())
    }

    /// Connects and discovers (retrying with backoff while the cluster is unreachable),
    /// then starts every stream of this cluster.
    async fn start_cluster(self: Arc<Self>, cluster: ClusterConfig, term: Term) {
        let mut backoff = self.config.watch.backoff();
        let cluster_key = HealthKey::Cluster(cluster.name.clone());
        let (client, catalog) = loop {
            let attempt = async {
                let client = cluster::connect(&cluster).await?;
                let catalog = Catalog::discover(&cluster.name, &client).await?;
                Ok::<_, ClusterError>((client, catalog))
            };
            let res = tokio::select! {
                _ = term.watching.cancelled() => return,
                r = attempt => r,
            };
            match res {
                Ok(ok) => {
                    self.telemetry.health.remove(&cluster_key);
                    break ok;
                }
                Err(e) => {
                    tracing::error!(cluster = %cluster.name, error = %e, "cluster unavailable; retrying");
                    self.telemetry
                        .health
                        .update(&cluster_key, |s| s.error = Some(e.to_string()));
                    let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                    tokio::select! {
                        _ = term.watching.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        };
        // Resources that do not resolve (yet: a CRD installed after kubewire) are retried
        // against a fresh discovery every `watch.discoveryIntervalSeconds`, and streamed as
        // soon as they resolve — without a restart, and never failing /healthz meanwhile.
        let mut pending: Vec<usize> = (0..self.config.resources.len()).collect();
        let mut catalog = catalog;
        let interval = Duration::from_secs(self.config.watch.discovery_interval_seconds);
        loop {
            pending.retain(|&i| !self.start_resource(&cluster, &client, &catalog, i, &term));
            if pending.is_empty() {
                return;
            }
            tokio::select! {
                _ = term.watching.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            match Catalog::discover(&cluster.name, &client).await {
                Ok(fresh) => catalog = fresh,
                Err(e) => {
                    tracing::warn!(cluster = %cluster.name, error = %e, "discovery failed; retrying later")
                }
            }
        }
    }

    /// Starts the streams of `resources[index]` if it resolves in `catalog`; otherwise
    /// reports it waiting (logged when it first fails). Returns whether it resolved.
    fn start_resource(
        self: &Arc<Self>,
        cluster: &ClusterConfig,
        client: &kube::Client,
        catalog: &Catalog,
        index: usize,
        term: &Term,
    ) -> bool {
        let rc = &self.config.resources[index];
        let key = HealthKey::Resource {
            cluster: cluster.name.clone(),
            path: format!("resources[{index}]"),
            resource: rc.resource.clone(),
        };
        let info = match catalog.resolve_configured(&rc.resource) {
            Ok(info) => info,
            Err(e) => {
                // One bad resource does not stop the others; it shows in /readyz.
                let mut first = false;
                self.telemetry.health.update(&key, |s| {
                    first = s.error.is_none();
                    s.error = Some(e.clone());
                });
                if first {
                    tracing::error!(cluster = %cluster.name, resource = %rc.resource, path = %format!("resources[{index}].resource"), error = %e, "resource not watched");
                }
                return false;
            }
        };
        self.telemetry.health.remove(&key);
        if !rc.namespaces.is_empty() && !info.namespaced {
            tracing::warn!(resource = %rc.resource, "cluster-scoped resource: namespaces ignored");
        }
        for ns in rc.scopes(info.namespaced) {
            let id = StreamId {
                cluster: cluster.name.clone(),
                resource: info.clone(),
                namespace: ns,
                label_selector: rc.label_selector.clone(),
                field_selector: rc.field_selector.clone(),
            };
            let ctx = self.clone();
            let (client, term) = (client.clone(), term.clone());
            let cluster_name = cluster.name.clone();
            let resource = rc.resource.clone();
            tokio::spawn(async move {
                let rc = &ctx.config.resources[index];
                if let Err(e) = ctx.start_stream(client, id, rc, &term).await {
                    tracing::error!(cluster = %cluster_name, %resource, error = %e, "stream not started");
                }
            });
        }
        true
    }

    async fn start_stream(
        &self,
        client: kube::Client,
        id: StreamId,
        rc: &ResourceConfig,
        term: &Term,
    ) -> Result<(), AppError> {
        let id = Arc::new(id);
        let key = id.key();
        let store = self.store.clone();
        let checkpoint = tokio::task::spawn_blocking(move || store.load(&key))
            .await
            .expect("checkpoint load task")?;
        let spec = StreamSpec {
            id: id.clone(),
            events: rc.events.clone(),
            initial: rc.initial,
        };
        let transformer = Arc::new(Transformer::new(&rc.transform, self.redaction_key.clone())?);
        // The resource's own destination, resolved by the sink once for the stream.
        let route = term
            .sink
            .route(rc.kafka.as_ref().and_then(|k| k.topic.as_deref()))?;
        let (tx, rx) = mpsc::channel(self.config.watch.channel_capacity);
        let metrics = self.telemetry.metrics.stream(&id);
        let watch = WatchLoop::new(
            client,
            spec.clone(),
            self.config.watch.clone(),
            checkpoint,
            tx,
            self.telemetry.clone(),
            metrics.clone(),
        );
        let publisher = Publisher {
            spec,
            sink: term.sink.clone(),
            transformer,
            store: self.store.clone(),
            commit_interval: Duration::from_millis(self.config.checkpoint.commit_interval_ms),
            max_in_flight: MAX_IN_FLIGHT,
            route,
            metrics,
            telemetry: self.telemetry.clone(),
        };
        let abort = term.abort.clone();
        term.publishers.spawn(async move {
            // A halted stream has logged why and shows in /readyz and /healthz.
            let _ = publisher.run(rx, abort).await;
        });
        tokio::spawn(watch.run(term.watching.clone()));
        tracing::info!(stream = %id, "stream started");
        Ok(())
    }
}
