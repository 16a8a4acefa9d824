//! Wires the stages together: per cluster a client and a discovery catalog, per stream a
//! watch loop and a publisher joined by a bounded channel; and the shutdown: stop watching,
//! drain in-flight events within a grace period, commit the checkpoints.

pub mod state;
mod streams;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::checkpoint::{self, CheckpointError, LogStore, StateStore, Store};
use crate::cluster::{self, ClusterError, leader};
use crate::config::{Config, SinkConfig, StateBackend};
use crate::sink::kafka::txn;
use crate::sink::{self, Sink, SinkError};
use crate::telemetry::{self, HealthKey, Telemetry, TelemetryError};
use crate::transform::TransformError;

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
    /// The Kafka backend's producer can publish nothing more (fenced by another kubewire
    /// with the same `transactional.id`, or a fatal error) and no Lease says who leads.
    #[error("kafka state backend stopped: {0}")]
    Stopped(String),
}

/// Runs the daemon until `shutdown` is cancelled, then drains and returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    let telemetry = Arc::new(Telemetry::default());
    let admin_stop = CancellationToken::new();
    let sink = tokio::sync::OnceCell::new();
    let backend = match config.checkpoint.backend.resolve(&config.sink) {
        StateBackend::Kafka => {
            tracing::info!(topic = %config.checkpoint.kafka.state_topic, transactional_id = %config.transactional_id(), "state backend: kafka (events and state in one transaction)");
            // The key from a file when configured; else the state topic's (read per term).
            let key = match &config.checkpoint.redaction_key_path {
                Some(path) => Some(checkpoint::load_or_create_key(path)?),
                None => None,
            };
            Backend::Kafka { key }
        }
        _ => {
            let store: Arc<dyn StateStore> = Arc::new(Store::open(&config.checkpoint.path)?);
            // Stable across restarts: a replayed Secret event must carry the same markers.
            let key = checkpoint::load_or_create_key(&config.checkpoint.redaction_key_file())?;
            // One attempt now, so that a configuration the sink refuses fails the start; an
            // unreachable destination is waited for when a term needs the sink (a standby
            // never does), never a reason to exit.
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
            Backend::Embedded { store, key }
        }
    };
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
        backend,
        sink,
        telemetry,
        admin_stop: admin_stop.clone(),
    });
    if elect {
        ctx.run_elected(shutdown).await?;
    } else {
        // Never aborted by a Lease: a stop always drains.
        if let TermEnd::Dead(reason) = ctx.run_term(shutdown, CancellationToken::new()).await? {
            admin_stop.cancel();
            return Err(AppError::Stopped(reason));
        }
    }
    admin_stop.cancel();
    Ok(())
}

/// The Kafka sink's settings, which the Kafka backend writes its state with (validation
/// refuses the backend with any other sink; this says so again for a caller that skipped it).
pub(crate) fn kafka_sink(config: &Config) -> Result<&crate::config::KafkaSinkConfig, SinkError> {
    match &config.sink {
        SinkConfig::Kafka(k) => Ok(k),
        _ => Err(SinkError::Config(
            "checkpoint.backend kafka needs sink.type: kafka".into(),
        )),
    }
}

/// The Kafka backend's transactions, as `checkpoint.kafka` and the sink configure them.
pub(crate) fn txn_settings(
    config: &Config,
    kafka: &crate::config::KafkaSinkConfig,
) -> txn::TxnSettings {
    let k = &config.checkpoint.kafka;
    txn::TxnSettings {
        state_topic: k.state_topic.clone(),
        replication_factor: k
            .replication_factor
            .unwrap_or(kafka.create_topics.replication_factor),
        transactional_id: config.transactional_id(),
        interval: Duration::from_millis(k.transaction_interval_ms),
        max_events: k.transaction_max_events,
        timeout: Duration::from_millis(k.transaction_timeout_ms),
    }
}

/// Where the streams' checkpoints live.
enum Backend {
    /// The redb store, and the redaction key beside it; the sink is built once.
    Embedded {
        store: Arc<dyn StateStore>,
        key: Vec<u8>,
    },
    /// The state topic, written by a transactional sink built anew for every term (its
    /// `init_transactions` fences the previous leader). `key`: from a configured file.
    Kafka { key: Option<Vec<u8>> },
}

/// How a term ended.
#[derive(Debug, PartialEq, Eq)]
enum TermEnd {
    /// Stopped (shutdown or leadership lost).
    Stopped,
    /// The Kafka backend's producer was fenced or died: it published nothing more.
    Dead(String),
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
    backend: Backend,
    /// The embedded backend's sink: built at start, or once its destination is reachable.
    sink: tokio::sync::OnceCell<Arc<dyn Sink>>,
    telemetry: Arc<Telemetry>,
    admin_stop: CancellationToken,
}

/// One period of watching: its watch loops and publishers.
#[derive(Clone)]
struct Term {
    /// Where the publishers send.
    sink: Arc<dyn Sink>,
    /// Where the checkpoints are read from (and, embedded, written to).
    store: Arc<dyn StateStore>,
    /// The Secret redaction key.
    redaction_key: Arc<Vec<u8>>,
    /// Cancelled to stop the watch loops.
    watching: CancellationToken,
    /// Cancelled to make the publishers stop taking new events (leadership lost).
    abort: CancellationToken,
    publishers: TaskTracker,
}

impl Context {
    /// The sink, built now if the start could not reach it: retried with backoff while its
    /// destination is unreachable (`/readyz` says `sink <type>: waiting: …`); `None` when
    /// `stop` comes first; `Err` when it is reached but refuses the configuration (a missing
    /// JetStream stream, say): kubewire then exits 1, as it would have at start.
    async fn wait_for_sink(
        &self,
        stop: &CancellationToken,
    ) -> Result<Option<Arc<dyn Sink>>, SinkError> {
        let key = HealthKey::Sink(self.config.sink.type_name());
        let attempts = async {
            self.sink
                .get_or_try_init(|| async {
                    let s: Arc<dyn Sink> = Arc::from(
                        self.until_reachable(&key, || sink::build(&self.config.sink))
                            .await?,
                    );
                    tracing::info!(sink = s.name(), "sink reachable");
                    observe_sink(&self.telemetry, &s, &self.admin_stop);
                    Ok(s)
                })
                .await
                .cloned()
        };
        tokio::select! {
            _ = stop.cancelled() => Ok(None),
            r = attempts => r.map(Some),
        }
    }

    /// `attempt` until it succeeds or fails other than by an unreachable destination
    /// (retried with backoff, the reason in `/readyz` under `key`, logged once).
    async fn until_reachable<T, F, Fut>(&self, key: &HealthKey, attempt: F) -> Result<T, SinkError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, SinkError>>,
    {
        let mut delay = Duration::from_millis(500);
        let mut logged = false;
        loop {
            match attempt().await {
                Ok(t) => {
                    self.telemetry.health.remove(key);
                    return Ok(t);
                }
                Err(e) if e.is_unreachable() => {
                    if !logged {
                        tracing::warn!(%key, error = %e, "waiting for the sink's destination");
                        logged = true;
                    }
                    self.telemetry
                        .health
                        .update(key, |h| h.error = Some(e.to_string()));
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The Kafka backend's sink for one term: started (fencing the previous producer,
    /// reading the state topic) with backoff while Kafka is unreachable (`/readyz` says
    /// why); `None` when `stop` comes first; `Err` when Kafka refuses (ACLs, no
    /// transactions): kubewire then exits 1 with the error.
    async fn start_transactional(
        &self,
        file_key: Option<Vec<u8>>,
        stop: &CancellationToken,
    ) -> Result<Option<txn::Started>, SinkError> {
        let kafka = kafka_sink(&self.config)?;
        let settings = txn_settings(&self.config, kafka);
        let key = HealthKey::Sink("kafka");
        let attempts = self.until_reachable(&key, || {
            txn::TxnSink::start(kafka, settings.clone(), file_key.clone())
        });
        tokio::select! {
            _ = stop.cancelled() => Ok(None),
            r = attempts => r.map(Some),
        }
    }

    /// Watches until `stop`, then stops the watches and lets the publishers finish:
    /// everything already read is published (graceful shutdown: drain), unless `abort` was
    /// cancelled first, in which case only what the sink already holds is awaited
    /// (leadership lost: stop publishing at once). A Kafka backend producer that is fenced
    /// or dies aborts the term at once.
    async fn run_term(
        self: &Arc<Self>,
        stop: CancellationToken,
        abort: CancellationToken,
    ) -> Result<TermEnd, SinkError> {
        let term_stop = self.admin_stop.child_token();
        let _term_stop = term_stop.clone().drop_guard();
        let (sink, store, redaction_key, dead) = match &self.backend {
            Backend::Embedded { store, key } => {
                let Some(sink) = self.wait_for_sink(&stop).await? else {
                    return Ok(TermEnd::Stopped);
                };
                (sink, store.clone(), key.clone(), None)
            }
            Backend::Kafka { key } => {
                let Some(started) = self.start_transactional(key.clone(), &stop).await? else {
                    return Ok(TermEnd::Stopped);
                };
                let dead = started.sink.dead();
                let sink: Arc<dyn Sink> = started.sink.clone();
                observe_sink(&self.telemetry, &sink, &term_stop);
                let store: Arc<dyn StateStore> = Arc::new(LogStore::new(started.state));
                (
                    sink,
                    store,
                    started.redaction_key,
                    Some((dead, started.sink)),
                )
            }
        };
        let term = Term {
            sink,
            store,
            redaction_key: Arc::new(redaction_key),
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
        let mut end = TermEnd::Stopped;
        match &dead {
            Some((dead, txn)) => tokio::select! {
                _ = stop.cancelled() => {}
                _ = dead.cancelled() => {
                    let reason = txn.dead_reason().unwrap_or_default();
                    tracing::error!(%reason, "kafka state backend: publishing nothing more; stepping down");
                    term.abort.cancel();
                    end = TermEnd::Dead(reason);
                }
            },
            None => stop.cancelled().await,
        }
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
        Ok(end)
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
        let mut elector = leader::elect(client.clone(), le).await?;
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
            let mut term = {
                let ctx = self.clone();
                let (stop, abort) = (stop.clone(), abort.clone());
                tokio::spawn(async move { ctx.run_term(stop, abort).await })
            };
            let lost = tokio::select! {
                _ = shutdown.cancelled() => false,
                _ = elector.until(false) => true,
                // A term ends on its own when its sink refuses the configuration, or when
                // the Kafka backend's producer is fenced (another replica leads) or dies.
                ended = &mut term => {
                    match ended.expect("the term task does not panic") {
                        Ok(TermEnd::Dead(reason)) => {
                            // Step down: give the Lease up (if it is still ours) and stand
                            // by again, competing anew.
                            tracing::warn!(identity = %elector.identity, %reason, "stepping down: this replica publishes nothing more until it leads again");
                            self.telemetry.health.set_standby(true);
                            elector.release().await;
                            if shutdown.is_cancelled() {
                                return Ok(());
                            }
                            elector = leader::elect(client.clone(), le).await?;
                            continue;
                        }
                        Ok(TermEnd::Stopped) => Ok(()),
                        Err(e) => Err(e),
                    }.map_err(AppError::from)?;
                    elector.release().await;
                    return Ok(());
                }
            };
            if lost {
                // Another replica may lead already: publish nothing more, at once.
                tracing::warn!(identity = %elector.identity, "lost leadership: stopping streams");
                abort.cancel();
            }
            // A shutdown drains, commits, and only then releases the Lease (below).
            stop.cancel();
            let ended = term.await.expect("the term task does not panic");
            self.telemetry.health.set_standby(true);
            if let Err(e) = ended {
                elector.release().await;
                return Err(e.into());
            }
            // (A producer that died while the term stopped changes nothing: the next term
            // starts a new one.)
            if !lost {
                break;
            }
        }
        elector.release().await;
        Ok(())
    }
}
