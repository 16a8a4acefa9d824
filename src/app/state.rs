//! `kubewire state`: what the configured state backend holds per stream, and the removal of
//! streams from it (a stream to start over, or streams orphaned by a changed selector or
//! resource), for whichever backend is configured — the Kafka backend's state is not a file
//! a user can delete.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use super::AppError;
use crate::checkpoint::{StateStore, Store};
use crate::cluster::{self, Catalog};
use crate::config::{Config, StateBackend};
use crate::sink::kafka::txn;

/// One stream of the state, as `state show` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamState {
    /// The stream key: `cluster|group/resource|namespace|labelSelector|fieldSelector`.
    pub stream: String,
    /// The resourceVersion it resumes from.
    pub resource_version: Option<String>,
    /// Objects in its index.
    pub objects: usize,
    /// `Some(true)`: no configured resource makes this stream any more (a changed selector,
    /// namespace or resource); `None`: unknown (a cluster could not be asked).
    pub orphaned: Option<bool>,
}

/// What `state show` reports.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateReport {
    /// `embedded` or `kafka`.
    pub backend: &'static str,
    /// The store file or the state topic.
    pub location: String,
    /// When the state was last written (the store file's modification time, the state
    /// topic's newest record), RFC 3339.
    pub last_commit: Option<String>,
    /// Every stream, sorted by key.
    pub streams: Vec<StreamState>,
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The configured backend's streams. Orphans are found by resolving the configured
/// resources against the clusters; a cluster that cannot be reached leaves its streams'
/// `orphaned` unknown.
pub async fn show(config: &Config) -> Result<StateReport, AppError> {
    let (backend, location, last_commit, summary) = read(config).await?;
    let configured = configured_streams(config).await;
    let streams = summary
        .into_iter()
        .map(|(stream, resource_version, objects)| {
            let cluster = stream.split('|').next().unwrap_or_default().to_owned();
            let orphaned = match configured.get(&cluster) {
                Some(Some(keys)) => Some(!keys.contains(&stream)),
                // A cluster no longer configured: its streams are orphans.
                None => Some(true),
                Some(None) => None,
            };
            StreamState {
                stream,
                resource_version,
                objects,
                orphaned,
            }
        })
        .collect();
    Ok(StateReport {
        backend,
        location,
        last_commit,
        streams,
    })
}

/// (backend, location, last commit, (stream, resourceVersion, objects) per stream).
type Summary = (
    &'static str,
    String,
    Option<String>,
    Vec<(String, Option<String>, usize)>,
);

async fn read(config: &Config) -> Result<Summary, AppError> {
    match config.checkpoint.backend.resolve(&config.sink) {
        StateBackend::Kafka => {
            let k = super::kafka_sink(config)?;
            let topic = config.checkpoint.kafka.state_topic.clone();
            let (state, newest) = txn::read_state_topic(k, &topic).await?;
            Ok((
                "kafka",
                format!("topic {topic}"),
                newest.map(rfc3339),
                state.summary(),
            ))
        }
        _ => {
            let path = config.checkpoint.path.clone();
            let last = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .map(rfc3339);
            let store = Store::open(&path)?;
            let mut out = Vec::new();
            for key in store.streams()? {
                let c = store.load(&key)?;
                out.push((key, c.resource_version, c.index.len()));
            }
            Ok(("embedded", path.display().to_string(), last, out))
        }
    }
}

/// Per configured cluster, the stream keys its configured resources make now (`None`: the
/// cluster could not be asked).
async fn configured_streams(
    config: &Config,
) -> std::collections::HashMap<String, Option<HashSet<String>>> {
    let mut out = std::collections::HashMap::new();
    for cluster in config.clusters() {
        let keys = async {
            let client = cluster::connect(&cluster).await.ok()?;
            let catalog = Catalog::discover(&cluster.name, &client).await.ok()?;
            let mut keys = HashSet::new();
            for rc in &config.resources {
                let infos = if rc.is_all() {
                    catalog.all_watchable(&rc.excludes())
                } else {
                    catalog
                        .resolve_configured(&rc.resource)
                        .into_iter()
                        .collect()
                };
                for info in infos {
                    for ns in rc.scopes(info.namespaced) {
                        keys.insert(rc.stream_id(&cluster.name, &info, ns).key());
                    }
                }
            }
            Some(keys)
        }
        .await;
        out.insert(cluster.name.clone(), keys);
    }
    out
}

/// Removes `streams` (their resourceVersion and whole index) from the configured backend;
/// each starts over with a fresh snapshot the next time it runs. Returns the keys that
/// existed. With the Kafka backend this fences a running leader (it steps down; the next
/// one reads the new state); with the embedded backend the store must not be in use.
pub async fn remove(config: &Config, streams: &[String]) -> Result<Vec<String>, AppError> {
    match config.checkpoint.backend.resolve(&config.sink) {
        StateBackend::Kafka => {
            let k = super::kafka_sink(config)?;
            let settings = super::txn_settings(config, k);
            let started = txn::TxnSink::start(k, settings, None).await?;
            let sink: Arc<txn::TxnSink> = started.sink;
            Ok(sink.remove_streams(streams).await?)
        }
        _ => {
            let store = Store::open(&config.checkpoint.path)?;
            let mut removed = Vec::new();
            for s in streams {
                if store.remove_stream(s)? {
                    removed.push(s.clone());
                }
            }
            Ok(removed)
        }
    }
}
