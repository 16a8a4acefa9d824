//! The human view of a stream (`kubewire tail`, the stdout sink's `format: pretty`): one line
//! per event — time, type, kind, namespace/name, resourceVersion, origin — and for a
//! `modified` event the paths that changed since the previous version of that object.
//! Pure: the caller hands in decoded events and prints the lines.
//!
//! To name what changed, [`Pretty`] remembers, per object, a hash of each path of its last
//! version (top-level fields, and one level below for objects such as `data`, `spec`,
//! `metadata`): a few dozen bytes per object, for at most `capacity` objects. Beyond that
//! the object seen longest ago is forgotten, and its next `modified` shows `changed: ?`.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use super::{EventView, Kind};

/// Objects remembered by default (about 1-3 MB).
pub const DEFAULT_CAPACITY: usize = 10_000;

/// Paths that change with every version and say nothing about what changed.
const IGNORED: &[&str] = &[
    "metadata.resourceVersion",
    "metadata.managedFields",
    "metadata.generation",
];

/// Renders events as lines, remembering the previous version of at most `capacity` objects.
pub struct Pretty {
    capacity: usize,
    /// Object key → (path, hash of its value) of its last version, sorted by path.
    last: HashMap<String, Vec<(String, u64)>>,
    /// Keys in the order they were first remembered: the oldest is forgotten first.
    order: VecDeque<String>,
}

impl Default for Pretty {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl Pretty {
    /// A renderer remembering at most `capacity` objects (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            last: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// How many objects are remembered now.
    pub fn remembered(&self) -> usize {
        self.last.len()
    }

    /// The line for `e` (no trailing newline).
    pub fn line(&mut self, e: &EventView) -> String {
        let kind = e.kind();
        let time = e.time.as_deref().unwrap_or("-");
        let what = e.k8skind.as_deref().unwrap_or("?");
        let rv = e.k8sresourceversion.as_deref().unwrap_or("-");
        let origin = e.kubewireorigin.as_deref().unwrap_or("-");
        match kind {
            Kind::Relisted => {
                let scope = e.k8snamespace.as_deref().unwrap_or("*");
                let from = e.data_str("fromResourceVersion").unwrap_or("-");
                let to = e.data_str("toResourceVersion").unwrap_or("-");
                let n = |f| e.data_u64(f).unwrap_or(0);
                format!(
                    "{time} {:<8} {what} {scope}/* rv={from}..{to} {origin} (+{} ~{} -{} ={})",
                    kind.as_str(),
                    n("added"),
                    n("modified"),
                    n("deleted"),
                    n("unchanged"),
                )
            }
            Kind::Other => format!("{time} {} {}", e.ce_type, e.id),
            _ => {
                let mut line = format!(
                    "{time} {:<8} {what} {} rv={rv} {origin}",
                    kind.as_str(),
                    object_name(e)
                );
                match kind {
                    Kind::Modified => {
                        let changed = self.remember(e);
                        line.push_str(" changed: ");
                        match changed {
                            Some(paths) if paths.is_empty() => line.push_str("(none)"),
                            Some(paths) => line.push_str(&paths.join(", ")),
                            None => line.push('?'),
                        }
                    }
                    Kind::Added => {
                        self.remember(e);
                    }
                    Kind::Deleted => self.forget(&key(e)),
                    Kind::Oversize => {
                        if let Some(d) = &e.data {
                            let orig = e.oversize_original().map_or("?", Kind::as_str);
                            let size = d.get("size").and_then(|v| v.as_u64()).unwrap_or(0);
                            let limit = d.get("limit").and_then(|v| v.as_u64()).unwrap_or(0);
                            line.push_str(&format!(" ({orig}: {size} bytes > {limit})"));
                        }
                        // What it replaced is unknown: the next modified cannot be compared.
                        self.forget(&key(e));
                    }
                    _ => {}
                }
                line
            }
        }
    }

    /// Records `e`'s version; returns the paths changed since the previous one, `None` when
    /// there was none remembered.
    fn remember(&mut self, e: &EventView) -> Option<Vec<String>> {
        let k = key(e);
        let now = fingerprint(e.data.as_ref());
        let before = match self.last.get_mut(&k) {
            Some(slot) => Some(std::mem::replace(slot, now)),
            None => {
                if self.last.len() >= self.capacity
                    && let Some(oldest) = self.order.pop_front()
                {
                    self.last.remove(&oldest);
                }
                self.last.insert(k.clone(), now);
                self.order.push_back(k.clone());
                None
            }
        }?;
        Some(changed_paths(&before, &self.last[&k]))
    }

    fn forget(&mut self, k: &str) {
        if self.last.remove(k).is_some() {
            self.order.retain(|o| o != k);
        }
    }
}

/// `namespace/name`, or `name` when cluster-scoped.
fn object_name(e: &EventView) -> String {
    let name = e.k8sname.as_deref().unwrap_or("?");
    match &e.k8snamespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

fn key(e: &EventView) -> String {
    format!(
        "{}/{}/{}/{}",
        e.k8scluster.as_deref().unwrap_or(""),
        e.k8sgroup.as_deref().unwrap_or(""),
        e.k8sresource.as_deref().unwrap_or(""),
        object_name(e)
    )
}

/// (path, hash) of every top-level field and every field one level below an object field,
/// sorted by path, without [`IGNORED`].
fn fingerprint(data: Option<&serde_json::Value>) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    if let Some(serde_json::Value::Object(top)) = data {
        for (k, v) in top {
            match v {
                serde_json::Value::Object(inner) if !inner.is_empty() => {
                    for (k2, v2) in inner {
                        out.push((format!("{k}.{k2}"), hash(v2)));
                    }
                }
                _ => out.push((k.clone(), hash(v))),
            }
        }
    }
    out.retain(|(p, _)| !IGNORED.contains(&p.as_str()));
    out.sort();
    out
}

fn hash(v: &serde_json::Value) -> u64 {
    let mut h = DefaultHasher::new();
    // Equal values serialize alike: serde_json's maps are sorted, or (preserve_order) kept
    // in the API server's order, which is stable for one object.
    v.to_string().hash(&mut h);
    h.finish()
}

/// Paths present in one fingerprint and not the other, or with different values (sorted).
fn changed_paths(before: &[(String, u64)], after: &[(String, u64)]) -> Vec<String> {
    let b: HashMap<&str, u64> = before.iter().map(|(p, h)| (p.as_str(), *h)).collect();
    let a: HashMap<&str, u64> = after.iter().map(|(p, h)| (p.as_str(), *h)).collect();
    let mut out: Vec<String> = a
        .iter()
        .filter(|(p, h)| b.get(*p) != Some(*h))
        .map(|(p, _)| (*p).to_owned())
        .chain(
            b.keys()
                .filter(|p| !a.contains_key(*p))
                .map(|p| (*p).to_owned()),
        )
        .collect();
    // An empty object that gained fields (`data: {}` → `data.k`) is named by its fields.
    let parents: Vec<String> = out
        .iter()
        .filter(|p| out.iter().any(|q| q.starts_with(&format!("{p}."))))
        .cloned()
        .collect();
    out.retain(|p| !parents.contains(p));
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ev(ty: &str, name: &str, rv: &str, data: serde_json::Value) -> EventView {
        EventView {
            id: format!("c/u-{name}/{rv}/{ty}"),
            ce_type: format!("io.kubewire.object.{ty}"),
            time: Some("2025-06-01T12:00:03.417Z".into()),
            k8scluster: Some("c".into()),
            k8sgroup: Some("core".into()),
            k8sresource: Some("configmaps".into()),
            k8skind: Some("ConfigMap".into()),
            k8snamespace: Some("demo".into()),
            k8sname: Some(name.into()),
            k8sresourceversion: Some(rv.into()),
            kubewireorigin: Some("watch".into()),
            data: Some(data),
            ..Default::default()
        }
    }

    fn cm(rv: &str, data: serde_json::Value, labels: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "a", "namespace": "demo", "resourceVersion": rv, "labels": labels},
               "data": data})
    }

    #[test]
    fn a_line_names_time_type_kind_object_version_and_origin() {
        let mut p = Pretty::default();
        let line = p.line(&ev(
            "added",
            "a",
            "5",
            cm("5", json!({"k": "1"}), json!({})),
        ));
        assert_eq!(
            line,
            "2025-06-01T12:00:03.417Z added    ConfigMap demo/a rv=5 watch"
        );
        let mut cluster_scoped = ev("deleted", "n1", "9", json!({}));
        cluster_scoped.k8snamespace = None;
        cluster_scoped.k8skind = Some("Node".into());
        assert_eq!(
            p.line(&cluster_scoped),
            "2025-06-01T12:00:03.417Z deleted  Node n1 rv=9 watch"
        );
    }

    #[test]
    fn modified_names_the_paths_that_changed_since_the_previous_version() {
        let mut p = Pretty::default();
        p.line(&ev(
            "added",
            "a",
            "5",
            cm("5", json!({"k": "1", "j": "x"}), json!({"app": "web"})),
        ));
        let line = p.line(&ev(
            "modified",
            "a",
            "6",
            cm(
                "6",
                json!({"k": "2", "j": "x", "new": "y"}),
                json!({"app": "web"}),
            ),
        ));
        assert!(
            line.ends_with("rv=6 watch changed: data.k, data.new"),
            "{line}"
        );
        let line = p.line(&ev(
            "modified",
            "a",
            "7",
            cm(
                "7",
                json!({"k": "2", "j": "x", "new": "y"}),
                json!({"app": "db"}),
            ),
        ));
        assert!(line.ends_with("changed: metadata.labels"), "{line}");
        let line = p.line(&ev(
            "modified",
            "a",
            "8",
            cm(
                "8",
                json!({"k": "2", "j": "x", "new": "y"}),
                json!({"app": "db"}),
            ),
        ));
        assert!(line.ends_with("changed: (none)"), "{line}");
    }

    #[test]
    fn a_modified_without_a_remembered_version_says_it_cannot_tell() {
        let mut p = Pretty::default();
        let line = p.line(&ev("modified", "a", "6", cm("6", json!({}), json!({}))));
        assert!(line.ends_with("changed: ?"), "{line}");
        // ... and it is remembered from then on
        let line = p.line(&ev(
            "modified",
            "a",
            "7",
            cm("7", json!({"k": "v"}), json!({})),
        ));
        assert!(line.ends_with("changed: data.k"), "{line}");
    }

    #[test]
    fn memory_is_bounded_and_deleted_objects_are_forgotten() {
        let mut p = Pretty::new(2);
        for name in ["a", "b", "c"] {
            p.line(&ev("added", name, "1", json!({"data": {"k": name}})));
        }
        assert_eq!(p.remembered(), 2);
        // the oldest, a, was forgotten
        let line = p.line(&ev("modified", "a", "2", json!({"data": {"k": "z"}})));
        assert!(line.ends_with("changed: ?"), "{line}");
        p.line(&ev("deleted", "c", "3", json!({})));
        assert_eq!(p.remembered(), 1);
    }

    #[test]
    fn relist_markers_and_oversize_events_have_lines_of_their_own() {
        let mut p = Pretty::default();
        let m = EventView {
            ce_type: "io.kubewire.stream.relisted".into(),
            time: Some("T".into()),
            k8skind: Some("ConfigMap".into()),
            k8snamespace: Some("demo".into()),
            kubewireorigin: Some("relist".into()),
            data: Some(
                json!({"fromResourceVersion": "10", "toResourceVersion": "20",
                              "added": 1, "modified": 2, "deleted": 3, "unchanged": 4}),
            ),
            ..Default::default()
        };
        assert_eq!(
            p.line(&m),
            "T relisted ConfigMap demo/* rv=10..20 relist (+1 ~2 -3 =4)"
        );
        let mut o = ev(
            "oversize",
            "big",
            "7",
            json!({"originalType": "io.kubewire.object.modified", "size": 2000, "limit": 1000}),
        );
        o.ce_type = "io.kubewire.object.oversize".into();
        let line = p.line(&o);
        assert!(
            line.ends_with("rv=7 watch (modified: 2000 bytes > 1000)"),
            "{line}"
        );
    }
}
