//! The streams of a term: per cluster, connect and discover (retried while the cluster is
//! unreachable, discovery read again while a resource does not resolve), then per stream a
//! watch loop and a publisher joined by a bounded channel.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{AppError, Context, MAX_IN_FLIGHT, Term};
use crate::cluster::{self, Catalog, ClusterError};
use crate::config::{ClusterConfig, ResourceConfig};
use crate::event::{ResourceInfo, StreamId};
use crate::publish::Publisher;
use crate::telemetry::HealthKey;
use crate::transform::Transformer;
use crate::watch::{StreamSpec, WatchLoop};

/// One connected cluster within a term: what every stream start on it needs.
struct On<'a> {
    cluster: &'a ClusterConfig,
    client: &'a kube::Client,
    term: &'a Term,
}

impl Context {
    /// Connects and discovers (retrying with backoff while the cluster is unreachable),
    /// then starts every stream of this cluster.
    pub(super) async fn start_cluster(self: Arc<Self>, cluster: ClusterConfig, term: Term) {
        let mut backoff = self.config.watch.backoff();
        let cluster_key = HealthKey::Cluster(cluster.name.clone());
        self.telemetry.metrics.init_cluster(&cluster.name);
        let (client, catalog) = loop {
            let attempt = async {
                let metrics = self.telemetry.metrics.clone();
                let name = cluster.name.clone();
                let count: cluster::throttle::OnThrottled =
                    Arc::new(move || metrics.api_throttled(&name));
                let client = cluster::connect_with(&cluster, Some(count)).await?;
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
        // `resource: "*"` stays pending for good: a CRD installed later joins it.
        let mut pending: Vec<usize> = (0..self.config.resources.len()).collect();
        let mut started_all: HashMap<usize, HashSet<(String, String)>> = HashMap::new();
        let mut catalog = catalog;
        let interval = Duration::from_secs(self.config.watch.discovery_interval_seconds);
        let on = On {
            cluster: &cluster,
            client: &client,
            term: &term,
        };
        loop {
            for &i in &pending {
                if self.config.resources[i].is_all() {
                    let started = started_all.entry(i).or_default();
                    self.start_all(&on, &catalog, i, started).await;
                }
            }
            pending.retain(|&i| {
                self.config.resources[i].is_all() || !self.start_resource(&on, &catalog, i)
            });
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

    /// `resources[index]` is `"*"`: starts the streams of every resource the catalog serves
    /// (minus the excludes) that this identity may list and watch and that `started` does
    /// not hold yet. A resource it may not watch is skipped, said once at info.
    async fn start_all(
        self: &Arc<Self>,
        on: &On<'_>,
        catalog: &Catalog,
        index: usize,
        started: &mut HashSet<(String, String)>,
    ) {
        let (cluster, client) = (on.cluster, on.client);
        let rc = &self.config.resources[index];
        for info in catalog.all_watchable(&rc.excludes()) {
            let key = (info.group.clone(), info.resource.clone());
            if started.contains(&key) {
                continue;
            }
            let scopes = rc.scopes(info.namespaced);
            let mut allowed = true;
            for ns in &scopes {
                match cluster::may_list_and_watch(client, &info, ns.as_deref()).await {
                    Ok(true) => {}
                    Ok(false) => allowed = false,
                    // Unknown: try; a forbidden stream then says so in /readyz.
                    Err(e) => {
                        tracing::warn!(cluster = %cluster.name, resource = %info.qualified_name(), error = %e, "access review failed; watching anyway")
                    }
                }
            }
            started.insert(key);
            if !allowed {
                tracing::info!(cluster = %cluster.name, resource = %info.qualified_name(), path = %format!("resources[{index}]"), "not permitted to list and watch: skipped");
                continue;
            }
            self.spawn_streams(on, &info, index);
        }
    }

    /// Starts the streams of `resources[index]` if it resolves in `catalog`; otherwise
    /// reports it waiting (logged when it first fails). Returns whether it resolved.
    fn start_resource(self: &Arc<Self>, on: &On<'_>, catalog: &Catalog, index: usize) -> bool {
        let cluster = on.cluster;
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
        self.spawn_streams(on, &info, index);
        true
    }

    /// Spawns the start of one stream per namespace scope of `info` under `resources[index]`.
    fn spawn_streams(self: &Arc<Self>, on: &On<'_>, info: &ResourceInfo, index: usize) {
        let cluster = on.cluster;
        let rc = &self.config.resources[index];
        for ns in rc.scopes(info.namespaced) {
            let id = rc.stream_id(&cluster.name, info, ns);
            let ctx = self.clone();
            let (client, term) = (on.client.clone(), on.term.clone());
            let cluster_name = cluster.name.clone();
            let resource = rc.resource.clone();
            tokio::spawn(async move {
                let rc = &ctx.config.resources[index];
                if let Err(e) = ctx.start_stream(client, id, rc, &term).await {
                    tracing::error!(cluster = %cluster_name, %resource, error = %e, "stream not started");
                }
            });
        }
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
        let store = term.store.clone();
        let checkpoint = tokio::task::spawn_blocking(move || store.load(&key))
            .await
            .expect("checkpoint load task")?;
        let spec = StreamSpec {
            id: id.clone(),
            events: rc.events.clone(),
            initial: rc.initial,
        };
        let transformer = Arc::new(Transformer::new(
            &rc.transform,
            term.redaction_key.to_vec(),
        )?);
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
            store: term.store.clone(),
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
