//! `kubewire verify`'s comparison, after the data flow: the latest state per object of a
//! stream read back as a consumer would, against the cluster. Pure — the command
//! (`crate::cli`) lists the cluster and reads the stream, and feeds both in.
//!
//! One [`Verifier`] holds **one entry per object** (keyed by its stream scope and
//! namespace/name): what the cluster listed (uid, resourceVersion) and what the stream said
//! last (uid, resourceVersion, alive or deleted, the highest version seen and a few recent
//! ones to tell a replay from a regression). Memory is bounded by the number of objects,
//! never by the length of the stream.
//!
//! What it reports ([`Report`]):
//!
//! - **missing**: in the cluster, but nothing downstream, or downstream ends deleted;
//! - **stale**: downstream's last version is not the cluster's (and not newer: a version
//!   newer than the cluster read means the object changed after the list, while the stream
//!   is still being written — not a discrepancy);
//! - **ghosts**: downstream alive, gone from the cluster (and not created after the list);
//!   also an earlier incarnation (uid) of a name that was replaced without a `deleted`;
//! - **order violations**: per object, a resourceVersion lower than one already seen that is
//!   not a replay of a version seen before (duplicates after a crash carry the same ids and
//!   versions, and are counted, not reported);
//! - **relist markers**: where the stream announces compressed history.
//!
//! resourceVersions are opaque to Kubernetes clients except for equality; order and "newer
//! than the list" are judged by comparing them as integers, which the API server's are (etcd
//! revisions). A version that is not an integer is compared for equality only.

pub mod report;

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use crate::consume::{EventView, Kind};

pub use report::render_text;

/// Errors of the verify stage: none of the comparison fails; the command's I/O errors are
/// its own. Kept for the module contract (one error enum per module) and for the inputs a
/// caller may reject.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A scope was added twice.
    #[error("scope {0} is verified twice")]
    DuplicateScope(String),
}

/// Versions remembered per object, to recognise a replayed event (same version again).
const RECENT: usize = 16;
/// Findings kept per kind at most (the counts stay exact).
pub const MAX_FINDINGS: usize = 10_000;

/// What is checked for one scope: a resource that does not publish `deleted` events cannot
/// be checked for ghosts, one without `modified` for staleness, one without its initial
/// snapshot (`initial: false`) for missing objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Checks {
    /// Objects in the cluster must be downstream.
    pub missing: bool,
    /// Downstream versions must be the cluster's.
    pub stale: bool,
    /// Objects downstream must be in the cluster.
    pub ghosts: bool,
}

impl Checks {
    /// Everything.
    pub const ALL: Checks = Checks {
        missing: true,
        stale: true,
        ghosts: true,
    };
}

/// One listed stream scope: (cluster, group, resource, namespace or all), and the list's
/// resourceVersion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Scope {
    /// The configured cluster name (`k8scluster`).
    pub cluster: String,
    /// `core` for the core group (`k8sgroup`).
    pub group: String,
    /// Plural resource name (`k8sresource`).
    pub resource: String,
    /// The namespace listed; `None`: all namespaces (or cluster-scoped).
    pub namespace: Option<String>,
    /// The list's resourceVersion: the cluster state compared against.
    pub list_version: String,
    /// What can be checked.
    pub checks: Checks,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{} in {}",
            self.cluster,
            self.group,
            self.resource,
            self.namespace.as_deref().unwrap_or("all namespaces")
        )
    }
}

/// The cluster's side of an object.
#[derive(Clone, Debug)]
struct Listed {
    uid: String,
    version: String,
}

/// The stream's side of an object: its current incarnation as last seen.
#[derive(Clone, Debug)]
struct Seen {
    uid: String,
    version: String,
    alive: bool,
    kind: Kind,
    /// The highest (integer) version of this incarnation.
    max: Option<u64>,
    /// Recent (version, kind) pairs, to recognise replays.
    recent: VecDeque<(u64, Kind)>,
    /// An earlier incarnation of this name that was never deleted downstream.
    replaced: Option<(String, String)>,
}

#[derive(Clone, Debug, Default)]
struct Entry {
    listed: Option<Listed>,
    seen: Option<Seen>,
}

/// Counts of what was read and listed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Records read from the stream.
    pub records: u64,
    /// Object events (added, modified, deleted, oversize) of the verified scopes.
    pub object_events: u64,
    /// Events repeated (replays after a crash: same version and type again).
    pub duplicates: u64,
    /// Relist markers of the verified scopes.
    pub relist_markers: u64,
    /// Kafka tombstones (null values; they follow `deleted` events).
    pub tombstones: u64,
    /// Records that are not JSON documents (a file's torn last line after a crash).
    pub unparsable: u64,
    /// Documents that are not kubewire events.
    pub foreign: u64,
    /// Events of resources, namespaces or clusters not verified.
    pub out_of_scope: u64,
    /// Objects the cluster listed.
    pub cluster_objects: u64,
    /// Objects seen downstream.
    pub downstream_objects: u64,
}

/// One discrepancy, about one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// Cluster.
    pub cluster: String,
    /// Group (`core` for the core group).
    pub group: String,
    /// Plural resource.
    pub resource: String,
    /// Namespace; `None` when cluster-scoped.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// The uid concerned.
    pub uid: Option<String>,
    /// The version downstream ends at (for order violations: the one that went back).
    pub downstream_version: Option<String>,
    /// The version in the cluster.
    pub cluster_version: Option<String>,
    /// What is wrong, in words.
    pub detail: String,
}

impl Finding {
    /// `cluster/group/resource/namespace/name` (`_` for no namespace).
    pub fn object(&self) -> String {
        format!(
            "{}/{}/{}/{}/{}",
            self.cluster,
            self.group,
            self.resource,
            self.namespace.as_deref().unwrap_or("_"),
            self.name
        )
    }
}

/// A relist marker: where the stream compressed history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Relist {
    /// The scope's cluster.
    pub cluster: String,
    /// Group.
    pub group: String,
    /// Plural resource.
    pub resource: String,
    /// The stream's namespace; `None`: all namespaces.
    pub namespace: Option<String>,
    /// `data.fromResourceVersion`.
    pub from_resource_version: Option<String>,
    /// `data.toResourceVersion`.
    pub to_resource_version: Option<String>,
    /// Added, modified, deleted, unchanged objects of the relist.
    pub added: u64,
    /// See `added`.
    pub modified: u64,
    /// See `added`.
    pub deleted: u64,
    /// See `added`.
    pub unchanged: u64,
}

/// The outcome of a comparison.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// What was read.
    pub source: String,
    /// The scopes compared.
    pub scopes: Vec<Scope>,
    /// Counts of what was read and listed.
    pub counts: Counts,
    /// Exact totals of each kind (the lists below stop at [`MAX_FINDINGS`]).
    pub totals: Totals,
    /// In the cluster, not (alive) downstream.
    pub missing: Vec<Finding>,
    /// Downstream at another version than the cluster.
    pub stale: Vec<Finding>,
    /// Alive downstream, gone from the cluster.
    pub ghosts: Vec<Finding>,
    /// Versions going backwards.
    pub order_violations: Vec<Finding>,
    /// Relist markers, in stream order.
    pub relists: Vec<Relist>,
}

/// Exact numbers of each kind of finding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    /// Missing objects.
    pub missing: u64,
    /// Stale objects.
    pub stale: u64,
    /// Ghosts.
    pub ghosts: u64,
    /// Order violations.
    pub order_violations: u64,
}

impl Totals {
    /// Every discrepancy.
    pub fn discrepancies(&self) -> u64 {
        self.missing + self.stale + self.ghosts + self.order_violations
    }
}

impl Report {
    /// Whether the stream matches the cluster.
    pub fn is_clean(&self) -> bool {
        self.totals.discrepancies() == 0
    }
}

/// The comparison's state: one entry per object.
#[derive(Default)]
pub struct Verifier {
    scopes: Vec<Scope>,
    /// (cluster, group, resource) → the scopes over it.
    by_resource: HashMap<(String, String, String), Vec<u32>>,
    objects: HashMap<(u32, String), Entry>,
    counts: Counts,
    order: Vec<Finding>,
    order_total: u64,
    relists: Vec<Relist>,
}

impl Verifier {
    /// An empty verifier: add the scopes, the listed objects, then observe the stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a listed scope; returns its index for [`Verifier::listed`].
    pub fn add_scope(&mut self, scope: Scope) -> Result<usize, VerifyError> {
        if self.scopes.iter().any(|s| {
            (&s.cluster, &s.group, &s.resource, &s.namespace)
                == (
                    &scope.cluster,
                    &scope.group,
                    &scope.resource,
                    &scope.namespace,
                )
        }) {
            return Err(VerifyError::DuplicateScope(scope.to_string()));
        }
        let i = self.scopes.len();
        self.by_resource
            .entry((
                scope.cluster.clone(),
                scope.group.clone(),
                scope.resource.clone(),
            ))
            .or_default()
            .push(i as u32);
        self.scopes.push(scope);
        Ok(i)
    }

    /// An object the cluster listed in scope `scope`.
    pub fn listed(
        &mut self,
        scope: usize,
        namespace: Option<&str>,
        name: &str,
        uid: &str,
        version: &str,
    ) {
        self.counts.cluster_objects += 1;
        let e = self
            .objects
            .entry((scope as u32, object_key(namespace, name)))
            .or_default();
        e.listed = Some(Listed {
            uid: uid.to_owned(),
            version: version.to_owned(),
        });
    }

    /// The scope an event belongs to: same cluster, group and resource, and the scope's
    /// namespace (or all namespaces).
    fn scope_of(&self, e: &EventView) -> Option<u32> {
        let key = (
            e.k8scluster.clone().unwrap_or_default(),
            e.k8sgroup.clone().unwrap_or_default(),
            e.k8sresource.clone().unwrap_or_default(),
        );
        let candidates = self.by_resource.get(&key)?;
        candidates.iter().copied().find(|i| {
            let s = &self.scopes[*i as usize];
            s.namespace.is_none() || s.namespace == e.k8snamespace
        })
    }

    /// A record that is not a JSON document.
    pub fn unparsable(&mut self) {
        self.counts.records += 1;
        self.counts.unparsable += 1;
    }

    /// A Kafka tombstone (null value).
    pub fn tombstone(&mut self) {
        self.counts.records += 1;
        self.counts.tombstones += 1;
    }

    /// The next event of the stream, in the destination's order.
    pub fn observe(&mut self, e: &EventView) {
        self.counts.records += 1;
        let kind = e.kind();
        if kind == Kind::Other {
            self.counts.foreign += 1;
            return;
        }
        let Some(scope) = self.scope_of(e) else {
            self.counts.out_of_scope += 1;
            return;
        };
        if kind == Kind::Relisted {
            self.counts.relist_markers += 1;
            if self.relists.len() < MAX_FINDINGS {
                let s = &self.scopes[scope as usize];
                self.relists.push(Relist {
                    cluster: s.cluster.clone(),
                    group: s.group.clone(),
                    resource: s.resource.clone(),
                    namespace: e.k8snamespace.clone(),
                    from_resource_version: e.data_str("fromResourceVersion").map(str::to_owned),
                    to_resource_version: e.data_str("toResourceVersion").map(str::to_owned),
                    added: e.data_u64("added").unwrap_or(0),
                    modified: e.data_u64("modified").unwrap_or(0),
                    deleted: e.data_u64("deleted").unwrap_or(0),
                    unchanged: e.data_u64("unchanged").unwrap_or(0),
                });
            }
            return;
        }
        // An oversize event stands for the change it replaced, at its version.
        let change = match kind {
            Kind::Oversize => e.oversize_original().unwrap_or(Kind::Modified),
            k => k,
        };
        let (Some(name), Some(uid), Some(version)) = (&e.k8sname, &e.k8suid, &e.k8sresourceversion)
        else {
            self.counts.foreign += 1;
            return;
        };
        self.counts.object_events += 1;
        let relist = e.kubewireorigin.as_deref() == Some("relist");
        let key = (scope, object_key(e.k8snamespace.as_deref(), name));
        let number = version.parse::<u64>().ok();
        let entry = self.objects.entry(key).or_default();
        let alive = change != Kind::Deleted;
        let seen = match &mut entry.seen {
            None => {
                self.counts.downstream_objects += 1;
                entry.seen = Some(Seen::new(uid, version, alive, change, number));
                return;
            }
            Some(s) => s,
        };
        if &seen.uid != uid {
            if seen.replaced.as_ref().is_some_and(|(u, _)| u == uid) {
                // The earlier incarnation's delete, late: it is accounted for now.
                if !alive {
                    seen.replaced = None;
                }
                return;
            }
            // A new incarnation of the name. The previous one, if still alive downstream,
            // was replaced without a delete.
            let replaced = seen.alive.then(|| (seen.uid.clone(), seen.version.clone()));
            *seen = Seen::new(uid, version, alive, change, number);
            seen.replaced = replaced;
            return;
        }
        let verdict = match (number, seen.max) {
            (Some(n), Some(max)) if n > max => Step::Forward,
            // A relist `deleted` carries the last published version.
            (Some(n), Some(max)) if n == max && change == Kind::Deleted && relist => Step::Forward,
            (Some(n), Some(_)) if seen.recent.contains(&(n, change)) => Step::Replay,
            (Some(n), Some(max)) => Step::Back(n, max),
            // Not integers: only equality can be judged.
            _ if version == &seen.version && change == seen.kind => Step::Replay,
            _ => Step::Forward,
        };
        match verdict {
            Step::Forward => {}
            Step::Replay => self.counts.duplicates += 1,
            Step::Back(n, max) => {
                self.order_total += 1;
                if self.order.len() < MAX_FINDINGS {
                    let s = &self.scopes[scope as usize];
                    self.order.push(Finding {
                        cluster: s.cluster.clone(),
                        group: s.group.clone(),
                        resource: s.resource.clone(),
                        namespace: e.k8snamespace.clone(),
                        name: name.clone(),
                        uid: Some(uid.clone()),
                        downstream_version: Some(version.clone()),
                        cluster_version: None,
                        detail: format!(
                            "{} at resourceVersion {n} after {max} ({})",
                            change.as_str(),
                            e.id
                        ),
                    });
                }
            }
        }
        // What a consumer holds is the last event it read, replay or not.
        seen.version = version.clone();
        seen.alive = alive;
        seen.kind = change;
        if let Some(n) = number {
            seen.max = Some(seen.max.map_or(n, |m| m.max(n)));
            if !seen.recent.contains(&(n, change)) {
                if seen.recent.len() == RECENT {
                    seen.recent.pop_front();
                }
                seen.recent.push_back((n, change));
            }
        }
    }

    /// Compares what was read so far with the cluster (may be called again after more
    /// events).
    pub fn report(&self, source: &str) -> Report {
        let mut r = Report {
            source: source.to_owned(),
            scopes: self.scopes.clone(),
            counts: self.counts.clone(),
            order_violations: self.order.clone(),
            relists: self.relists.clone(),
            ..Default::default()
        };
        r.totals.order_violations = self.order_total;
        for ((scope, key), entry) in &self.objects {
            let s = &self.scopes[*scope as usize];
            let list_version = s.list_version.parse::<u64>().ok();
            let (namespace, name) = split_key(key);
            let finding =
                |uid: Option<&str>, down: Option<&str>, up: Option<&str>, detail| Finding {
                    cluster: s.cluster.clone(),
                    group: s.group.clone(),
                    resource: s.resource.clone(),
                    namespace: namespace.map(str::to_owned),
                    name: name.to_owned(),
                    uid: uid.map(str::to_owned),
                    downstream_version: down.map(str::to_owned),
                    cluster_version: up.map(str::to_owned),
                    detail,
                };
            // Newer than the list: a change the list could not show yet.
            let after_list = |v: &str| match (v.parse::<u64>().ok(), list_version) {
                (Some(v), Some(l)) => v > l,
                _ => false,
            };
            if let Some(seen) = &entry.seen
                && let Some((uid, version)) = &seen.replaced
                && s.checks.ghosts
                && !after_list(&seen.version)
            {
                push(
                    &mut r.ghosts,
                    &mut r.totals.ghosts,
                    finding(
                        Some(uid),
                        Some(version),
                        None,
                        format!(
                            "uid {uid} was replaced by uid {} without a deleted event",
                            seen.uid
                        ),
                    ),
                );
            }
            match (&entry.listed, &entry.seen) {
                (Some(l), None) => {
                    if s.checks.missing {
                        push(
                            &mut r.missing,
                            &mut r.totals.missing,
                            finding(
                                Some(&l.uid),
                                None,
                                Some(&l.version),
                                "no event downstream".into(),
                            ),
                        );
                    }
                }
                (Some(l), Some(d)) => {
                    if after_list(&d.version) {
                        continue;
                    }
                    if d.uid != l.uid {
                        if s.checks.stale {
                            push(
                                &mut r.stale,
                                &mut r.totals.stale,
                                finding(
                                    Some(&l.uid),
                                    Some(&d.version),
                                    Some(&l.version),
                                    format!(
                                        "downstream holds uid {} ({}), the cluster uid {}",
                                        d.uid,
                                        d.kind.as_str(),
                                        l.uid
                                    ),
                                ),
                            );
                        }
                    } else if !d.alive {
                        if s.checks.missing {
                            push(
                                &mut r.missing,
                                &mut r.totals.missing,
                                finding(
                                    Some(&l.uid),
                                    Some(&d.version),
                                    Some(&l.version),
                                    format!(
                                        "downstream ends deleted at {}, the cluster has it at {}",
                                        d.version, l.version
                                    ),
                                ),
                            );
                        }
                    } else if d.version != l.version {
                        let newer = matches!(
                            (d.version.parse::<u64>(), l.version.parse::<u64>()),
                            (Ok(d), Ok(l)) if d > l
                        );
                        if !newer && s.checks.stale {
                            push(
                                &mut r.stale,
                                &mut r.totals.stale,
                                finding(
                                    Some(&l.uid),
                                    Some(&d.version),
                                    Some(&l.version),
                                    format!(
                                        "downstream ends at {} ({}), the cluster has {}",
                                        d.version,
                                        d.kind.as_str(),
                                        l.version
                                    ),
                                ),
                            );
                        }
                    }
                }
                (None, Some(d)) => {
                    if d.alive && s.checks.ghosts && !after_list(&d.version) {
                        push(
                            &mut r.ghosts,
                            &mut r.totals.ghosts,
                            finding(
                                Some(&d.uid),
                                Some(&d.version),
                                None,
                                format!(
                                    "downstream alive at {} ({}), gone from the cluster",
                                    d.version,
                                    d.kind.as_str()
                                ),
                            ),
                        );
                    }
                }
                (None, None) => {}
            }
        }
        for list in [&mut r.missing, &mut r.stale, &mut r.ghosts] {
            list.sort_by_key(|f| f.object());
        }
        r
    }
}

enum Step {
    Forward,
    Replay,
    Back(u64, u64),
}

impl Seen {
    fn new(uid: &str, version: &str, alive: bool, kind: Kind, number: Option<u64>) -> Self {
        Self {
            uid: uid.to_owned(),
            version: version.to_owned(),
            alive,
            kind,
            max: number,
            recent: number.map(|n| (n, kind)).into_iter().collect(),
            replaced: None,
        }
    }
}

fn push(list: &mut Vec<Finding>, total: &mut u64, f: Finding) {
    *total += 1;
    if list.len() < MAX_FINDINGS {
        list.push(f);
    }
}

/// `namespace/name`, or `/name` when cluster-scoped (a namespace is never empty).
fn object_key(namespace: Option<&str>, name: &str) -> String {
    format!("{}/{name}", namespace.unwrap_or(""))
}

fn split_key(key: &str) -> (Option<&str>, &str) {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    ((!ns.is_empty()).then_some(ns), name)
}

#[cfg(test)]
mod tests;
