//! The change stage: what one observed change *is*, independent of where it came from or
//! where it goes. Owns stream identity, the `Change` and relist-marker types, per-object
//! keys and the deterministic event ids (invariant 3 of DESIGN.md).

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Errors of this stage: an object the API server sent that cannot become a change.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The object lacks `metadata`, or one of `metadata.uid`, `.name`, `.resourceVersion`
    /// (the field named).
    #[error("object has no metadata.{0}")]
    MissingField(&'static str),
}

/// A resolved API resource (never guessed: it comes from discovery).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResourceInfo {
    /// API group, empty for the core group.
    pub group: String,
    /// API version within the group, e.g. `v1`: the preferred one discovery resolved.
    pub version: String,
    /// Plural resource name, e.g. `deployments`.
    pub resource: String,
    /// The kind of its objects, e.g. `Deployment`.
    pub kind: String,
    /// Whether its objects live in namespaces (`false`: cluster-scoped).
    pub namespaced: bool,
}

impl ResourceInfo {
    /// `apps/v1` or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps`, or `configmaps` for the core group.
    pub fn qualified_name(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

/// A stream's identity: (cluster, resource, namespace scope, selectors). Its checkpoint and
/// index belong to exactly this identity, so changing a selector starts a new stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamId {
    /// The configured name of the cluster watched.
    pub cluster: String,
    /// The resource watched, as discovery resolved it.
    pub resource: ResourceInfo,
    /// `None`: all namespaces (or a cluster-scoped resource).
    pub namespace: Option<String>,
    /// The list/watch label selector; `None`: none.
    pub label_selector: Option<String>,
    /// The list/watch field selector; `None`: none.
    pub field_selector: Option<String>,
}

impl StreamId {
    /// A stable, human-readable key; used as the checkpoint store key and in logs/metrics.
    ///
    /// The API version is not part of it: uids and resourceVersions are the same in every
    /// served version, so when a CRD's preferred version changes the stream resumes from its
    /// checkpoint instead of starting over with an orphaned index (regression:
    /// tests/faults_regressions.rs, CRD preferred version change across a restart).
    pub fn key(&self) -> String {
        format!(
            "{}|{}/{}|{}|{}|{}",
            self.cluster,
            self.resource.group,
            self.resource.resource,
            self.namespace.as_deref().unwrap_or("*"),
            self.label_selector.as_deref().unwrap_or(""),
            self.field_selector.as_deref().unwrap_or(""),
        )
    }
}

#[cfg(test)]
impl StreamId {
    /// The stream of the unit tests: ConfigMaps in `default` on cluster `test`.
    pub(crate) fn test_configmaps() -> Self {
        StreamId {
            cluster: "test".into(),
            resource: ResourceInfo {
                group: String::new(),
                version: "v1".into(),
                resource: "configmaps".into(),
                kind: "ConfigMap".into(),
                namespaced: true,
            },
            namespace: Some("default".into()),
            label_selector: None,
            field_selector: None,
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.cluster, self.resource.qualified_name())?;
        if let Some(ns) = &self.namespace {
            write!(f, " in {ns}")?;
        }
        if let Some(l) = &self.label_selector {
            write!(f, " [{l}]")?;
        }
        if let Some(fs) = &self.field_selector {
            write!(f, " [{fs}]")?;
        }
        Ok(())
    }
}

/// The type of one change of one object, as published (and as part of its event id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeType {
    /// The object appeared (or was first seen by an initial list or a relist).
    Added,
    /// The object changed to a new resourceVersion.
    Modified,
    /// The object is gone (a watch DELETED, or it vanished between two lists).
    Deleted,
}

impl ChangeType {
    /// The lowercase name, as in event ids, metric labels and the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Added => "added",
            ChangeType::Modified => "modified",
            ChangeType::Deleted => "deleted",
        }
    }
}

/// Where a change was learned: a live watch event, the first snapshot, or a reconciling relist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A live watch event.
    Watch,
    /// The first list of a stream without a checkpoint.
    Initial,
    /// A reconciling relist: a list of a stream that has a checkpoint (e.g. after 410 Gone).
    Relist,
}

impl Origin {
    /// The lowercase name, published as the `kubewireorigin` attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Watch => "watch",
            Origin::Initial => "initial",
            Origin::Relist => "relist",
        }
    }
}

/// A W3C trace context: a fresh trace per event, so consumers can continue it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The 16-byte trace id (never all zero).
    pub trace_id: [u8; 16],
    /// The 8-byte id of the event's span (never all zero).
    pub span_id: [u8; 8],
}

impl TraceContext {
    /// A fresh random context, for an event whose span is not exported.
    pub fn random() -> Self {
        let mut trace_id: [u8; 16] = rand::random();
        // An all-zero id is invalid in W3C trace context.
        trace_id[0] |= 1;
        let mut span_id: [u8; 8] = rand::random();
        span_id[0] |= 1;
        Self { trace_id, span_id }
    }

    /// `00-<trace-id>-<span-id>-01`
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-01",
            hex::encode(self.trace_id),
            hex::encode(self.span_id)
        )
    }
}

/// Identity of one object version, read from its metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    /// `metadata.uid`: what the index and the event id key the object by.
    pub uid: String,
    /// `metadata.namespace`; `None` for a cluster-scoped object.
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.resourceVersion` of this version.
    pub resource_version: String,
}

impl ObjectRef {
    /// Reads uid, namespace, name and resourceVersion from a JSON object.
    pub fn from_object(obj: &serde_json::Value) -> Result<Self, EventError> {
        let meta = obj
            .get("metadata")
            .ok_or(EventError::MissingField("metadata"))?;
        let s = |f: &'static str| {
            meta.get(f)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .ok_or(EventError::MissingField(f))
        };
        Ok(Self {
            uid: s("uid")?,
            namespace: meta
                .get("namespace")
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            name: s("name")?,
            resource_version: s("resourceVersion")?,
        })
    }

    /// The default per-object key: `namespace/name`, or `name` when cluster-scoped.
    pub fn key(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// One Added / Modified / Deleted change of one object.
#[derive(Clone, Debug)]
pub struct Change {
    /// The stream the change belongs to.
    pub stream: Arc<StreamId>,
    /// Added, Modified or Deleted.
    pub change: ChangeType,
    /// Whether a watch, an initial list or a relist learned it.
    pub origin: Origin,
    /// Identity of the object version.
    pub object: ObjectRef,
    /// The object as the API server sent it (transforms are applied later, in place).
    pub data: serde_json::Value,
    /// When kubewire observed the change (published as the CloudEvents `time`).
    pub observed: DateTime<Utc>,
    /// The event's trace context, published as `traceparent`.
    pub trace: TraceContext,
}

impl Change {
    /// Invariant 3: a function of (cluster, uid, resourceVersion, type) only.
    pub fn id(&self) -> String {
        event_id(
            &self.stream.cluster,
            &self.object.uid,
            &self.object.resource_version,
            self.change,
        )
    }
}

/// Announces a reconciling relist: what follows (with origin `relist`) compresses the
/// history between `from_resource_version` and `to_resource_version`.
#[derive(Clone, Debug)]
pub struct RelistMarker {
    /// The stream relisted.
    pub stream: Arc<StreamId>,
    /// The last checkpointed version before the relist (`None` if there was none).
    pub from_resource_version: Option<String>,
    /// The list's resourceVersion: the stream is complete up to here after the relist events.
    pub to_resource_version: String,
    /// Objects the relist publishes as Added.
    pub added: u64,
    /// Objects the relist publishes as Modified.
    pub modified: u64,
    /// Objects the relist publishes as Deleted (indexed, but no longer listed).
    pub deleted: u64,
    /// Listed objects already indexed at their listed version (nothing published).
    pub unchanged: u64,
    /// When the relist completed (published as the CloudEvents `time`).
    pub observed: DateTime<Utc>,
    /// The marker's trace context, published as `traceparent`.
    pub trace: TraceContext,
}

impl RelistMarker {
    /// `cluster/relist/<stream key hash>/<to_resource_version>`: deterministic, so a repeated
    /// relist to the same version repeats the same id.
    pub fn id(&self) -> String {
        format!(
            "{}/relist/{}/{}",
            self.stream.cluster,
            hex::encode(sha2_prefix(&self.stream.key())),
            self.to_resource_version
        )
    }

    /// Markers are keyed by the stream (they concern every object of it).
    pub fn key(&self) -> String {
        self.stream.key()
    }
}

fn sha2_prefix(s: &str) -> [u8; 8] {
    use sha2::Digest;
    let d = sha2::Sha256::digest(s.as_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

/// What flows from the watch loop to the sink.
#[derive(Clone, Debug)]
pub enum Event {
    /// A change of one object.
    Object(Change),
    /// The marker announcing a relist's changes (sent before them).
    Relisted(RelistMarker),
}

impl Event {
    /// The deterministic event id (CloudEvents `id`).
    pub fn id(&self) -> String {
        match self {
            Event::Object(c) => c.id(),
            Event::Relisted(m) => m.id(),
        }
    }

    /// The stream the event belongs to.
    pub fn stream(&self) -> &Arc<StreamId> {
        match self {
            Event::Object(c) => &c.stream,
            Event::Relisted(m) => &m.stream,
        }
    }

    /// The ordering key: one object's events share it.
    pub fn key(&self) -> String {
        match self {
            Event::Object(c) => c.object.key(),
            Event::Relisted(m) => m.key(),
        }
    }

    /// The event's trace context.
    pub fn trace(&self) -> &TraceContext {
        match self {
            Event::Object(c) => &c.trace,
            Event::Relisted(m) => &m.trace,
        }
    }
}

/// `cluster/uid/resourceVersion/type`: the same change always gets the same id.
pub fn event_id(cluster: &str, uid: &str, resource_version: &str, change: ChangeType) -> String {
    format!("{cluster}/{uid}/{resource_version}/{}", change.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_key_ignores_the_served_version() {
        let id = |version: &str| StreamId {
            cluster: "c".into(),
            resource: ResourceInfo {
                group: "example.com".into(),
                version: version.into(),
                resource: "widgets".into(),
                kind: "Widget".into(),
                namespaced: true,
            },
            namespace: Some("ns".into()),
            label_selector: Some("a=b".into()),
            field_selector: None,
        };
        assert_eq!(id("v1").key(), id("v2").key());
        let mut other = id("v1");
        other.label_selector = None;
        assert_ne!(
            id("v1").key(),
            other.key(),
            "selectors are part of the identity"
        );
    }

    #[test]
    fn event_id_is_deterministic_and_distinguishes_type() {
        let a = event_id("c", "u", "7", ChangeType::Modified);
        assert_eq!(a, event_id("c", "u", "7", ChangeType::Modified));
        assert_ne!(a, event_id("c", "u", "7", ChangeType::Deleted));
        assert_eq!(a, "c/u/7/modified");
    }

    #[test]
    fn traceparent_is_w3c_shaped() {
        let t = TraceContext::random().traceparent();
        let parts: Vec<_> = t.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "01")
        );
    }

    #[test]
    fn object_ref_reads_metadata_and_cluster_scoped_key_is_name() {
        let obj =
            serde_json::json!({"metadata": {"uid": "u1", "name": "n", "resourceVersion": "5"}});
        let r = ObjectRef::from_object(&obj).unwrap();
        assert_eq!(r.key(), "n");
        let obj = serde_json::json!({"metadata": {"uid": "u1", "name": "n", "namespace": "ns", "resourceVersion": "5"}});
        assert_eq!(ObjectRef::from_object(&obj).unwrap().key(), "ns/n");
    }
}
