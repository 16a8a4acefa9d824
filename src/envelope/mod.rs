//! The envelope stage (between *transform* and *sink*): encodes an [`Event`] as a
//! CloudEvents 1.0 structured-mode JSON document, plus the attributes sinks put in headers.
//! Pure: no I/O, no clock (times come from the event), no randomness.
//!
//! The contract is the one in `DESIGN.md`, documented with examples in
//! `docs/event-format.md`. Conventions chosen here:
//!
//! - The core API group is written `core` (in `subject` and `k8sgroup`), never as an empty
//!   string: CloudEvents attribute values should not be empty, and no real group is named
//!   `core`.
//! - A cluster-scoped object has `_` in the namespace position of `subject` (not a valid
//!   namespace name, so unambiguous) and no `k8snamespace` attribute.
//! - `time` is when kubewire observed the change, RFC 3339 in UTC.
//! - Relist markers have `subject` `<group>/<version>/<resource>/<namespace or _>` and the
//!   stream's selectors in their data (so two streams over the same resource with
//!   different selectors are told apart).
//!
//! The JSON is written in one pass from a borrowing struct: the object is never cloned.

pub mod template;

use chrono::SecondsFormat;
use serde::Serialize;

use crate::event::{Change, ChangeType, Event, RelistMarker, ResourceInfo, StreamId};

/// `type` of a relist marker.
pub const RELISTED_TYPE: &str = "io.kubewire.stream.relisted";

/// Errors of the envelope stage.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// serde_json cannot write the document (not expected: its parts are JSON already).
    #[error("cannot encode event {id} as JSON: {source}")]
    Json {
        /// The event's id.
        id: String,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
}

/// An encoded event: the JSON document and the attributes sinks use as key and headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// CloudEvents `id` (deterministic): Kafka `ce_id`, NATS `Nats-Msg-Id`.
    pub id: String,
    /// Ordering key: `<namespace>/<name>` (or `<name>`) for objects, the stream key for
    /// markers.
    pub key: String,
    /// CloudEvents `type`.
    pub ce_type: String,
    /// CloudEvents `source`: `kubewire/<cluster>`.
    pub source: String,
    /// CloudEvents `subject`.
    pub subject: String,
    /// W3C `traceparent`.
    pub traceparent: String,
    /// The structured-mode JSON document (no trailing newline).
    pub payload: Vec<u8>,
    /// Where the event comes from, for sinks' topic / subject / key templates.
    pub attrs: Attrs,
    /// The change an object event (or its oversize stand-in) stands for; `None` for a
    /// relist marker.
    pub change: Option<ChangeType>,
}

/// The stream and object an event is about: the values of `{cluster}`, `{group}`, ... in
/// sinks' templates. Same conventions as the document (`core` for the core group).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attrs {
    /// The configured cluster name.
    pub cluster: String,
    /// `core` for the core group.
    pub group: String,
    /// The served version of the stream's resource, e.g. `v1`.
    pub version: String,
    /// The kind, e.g. `ConfigMap`.
    pub kind: String,
    /// Plural resource name, e.g. `configmaps`.
    pub resource: String,
    /// The object's namespace; for a relist marker, the stream's namespace scope. `None`:
    /// cluster-scoped (or a marker of an all-namespaces stream).
    pub namespace: Option<String>,
    /// The object's name; `None` for relist markers.
    pub name: Option<String>,
}

impl Attrs {
    fn new(stream: &StreamId, namespace: Option<&str>, name: Option<&str>) -> Self {
        let r = &stream.resource;
        Self {
            cluster: stream.cluster.clone(),
            group: group_name(r).to_owned(),
            version: r.version.clone(),
            kind: r.kind.clone(),
            resource: r.resource.clone(),
            namespace: namespace.map(str::to_owned),
            name: name.map(str::to_owned),
        }
    }
}

/// Encodes `event` (whose object, if any, is already transformed).
pub fn encode(event: &Event) -> Result<Encoded, EnvelopeError> {
    match event {
        Event::Object(change) => encode_change(change),
        Event::Relisted(marker) => encode_marker(marker),
    }
}

/// `io.kubewire.object.added|modified|deleted`.
pub fn object_type(change: crate::event::ChangeType) -> &'static str {
    use crate::event::ChangeType::*;
    match change {
        Added => "io.kubewire.object.added",
        Modified => "io.kubewire.object.modified",
        Deleted => "io.kubewire.object.deleted",
    }
}

/// `core` for the core group, else the group.
pub fn group_name(resource: &ResourceInfo) -> &str {
    if resource.group.is_empty() {
        "core"
    } else {
        &resource.group
    }
}

/// `<group>/<version>/<resource>/<namespace or _>`: the subject of a stream.
pub fn stream_subject(stream: &StreamId) -> String {
    let r = &stream.resource;
    format!(
        "{}/{}/{}/{}",
        group_name(r),
        r.version,
        r.resource,
        stream.namespace.as_deref().unwrap_or("_")
    )
}

/// The source attribute: `kubewire/<cluster>`.
pub fn source(cluster: &str) -> String {
    format!("kubewire/{cluster}")
}

/// The CloudEvents attributes every kubewire event has, in document order.
#[derive(Serialize)]
struct Head<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    ce_type: &'a str,
    subject: &'a str,
    time: String,
    datacontenttype: &'static str,
    traceparent: &'a str,
    k8scluster: &'a str,
    k8sgroup: &'a str,
    k8sversion: &'a str,
    k8skind: &'a str,
    k8sresource: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    k8snamespace: Option<&'a str>,
}

#[derive(Serialize)]
struct ObjectDocument<'a> {
    #[serde(flatten)]
    head: Head<'a>,
    k8sname: &'a str,
    k8suid: &'a str,
    k8sresourceversion: &'a str,
    kubewireorigin: &'static str,
    data: &'a serde_json::Value,
}

#[derive(Serialize)]
struct MarkerDocument<'a> {
    #[serde(flatten)]
    head: Head<'a>,
    kubewireorigin: &'static str,
    data: MarkerData<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MarkerData<'a> {
    from_resource_version: Option<&'a str>,
    to_resource_version: &'a str,
    added: u64,
    modified: u64,
    deleted: u64,
    unchanged: u64,
    label_selector: Option<&'a str>,
    field_selector: Option<&'a str>,
}

fn encode_change(change: &Change) -> Result<Encoded, EnvelopeError> {
    let stream = &*change.stream;
    let r = &stream.resource;
    let obj = &change.object;
    let id = change.id();
    let source = source(&stream.cluster);
    let ce_type = object_type(change.change);
    let subject = format!(
        "{}/{}/{}/{}/{}",
        group_name(r),
        r.version,
        r.resource,
        obj.namespace.as_deref().unwrap_or("_"),
        obj.name
    );
    let traceparent = change.trace.traceparent();
    let doc = ObjectDocument {
        head: Head {
            specversion: "1.0",
            id: &id,
            source: &source,
            ce_type,
            subject: &subject,
            time: change.observed.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            datacontenttype: "application/json",
            traceparent: &traceparent,
            k8scluster: &stream.cluster,
            k8sgroup: group_name(r),
            k8sversion: &r.version,
            k8skind: &r.kind,
            k8sresource: &r.resource,
            k8snamespace: obj.namespace.as_deref(),
        },
        k8sname: &obj.name,
        k8suid: &obj.uid,
        k8sresourceversion: &obj.resource_version,
        kubewireorigin: change.origin.as_str(),
        data: &change.data,
    };
    let payload = serde_json::to_vec(&doc).map_err(|source| EnvelopeError::Json {
        id: id.clone(),
        source,
    })?;
    Ok(Encoded {
        attrs: Attrs::new(stream, obj.namespace.as_deref(), Some(&obj.name)),
        key: obj.key(),
        ce_type: ce_type.to_owned(),
        change: Some(change.change),
        id,
        source,
        subject,
        traceparent,
        payload,
    })
}

fn encode_marker(marker: &RelistMarker) -> Result<Encoded, EnvelopeError> {
    let stream = &*marker.stream;
    let r = &stream.resource;
    let id = marker.id();
    let source = source(&stream.cluster);
    let subject = stream_subject(stream);
    let traceparent = marker.trace.traceparent();
    let doc = MarkerDocument {
        head: Head {
            specversion: "1.0",
            id: &id,
            source: &source,
            ce_type: RELISTED_TYPE,
            subject: &subject,
            time: marker.observed.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            datacontenttype: "application/json",
            traceparent: &traceparent,
            k8scluster: &stream.cluster,
            k8sgroup: group_name(r),
            k8sversion: &r.version,
            k8skind: &r.kind,
            k8sresource: &r.resource,
            k8snamespace: stream.namespace.as_deref(),
        },
        kubewireorigin: crate::event::Origin::Relist.as_str(),
        data: MarkerData {
            from_resource_version: marker.from_resource_version.as_deref(),
            to_resource_version: &marker.to_resource_version,
            added: marker.added,
            modified: marker.modified,
            deleted: marker.deleted,
            unchanged: marker.unchanged,
            label_selector: stream.label_selector.as_deref(),
            field_selector: stream.field_selector.as_deref(),
        },
    };
    let payload = serde_json::to_vec(&doc).map_err(|source| EnvelopeError::Json {
        id: id.clone(),
        source,
    })?;
    Ok(Encoded {
        attrs: Attrs::new(stream, stream.namespace.as_deref(), None),
        key: marker.key(),
        ce_type: RELISTED_TYPE.to_owned(),
        change: None,
        id,
        source,
        subject,
        traceparent,
        payload,
    })
}

/// CloudEvents `type` of the event that stands in for one too large for its destination.
pub const OVERSIZE_TYPE: &str = "io.kubewire.object.oversize";

/// The small event that stands in for `msg` when it is larger than its destination accepts
/// (the same behaviour for every sink): the original's attributes (identity, version, trace)
/// without its data, type [`OVERSIZE_TYPE`], id `<original id>/oversize`, a `kubewireerror`
/// attribute naming the limit, and data saying how large it was. Consumers learn that the
/// object changed and where to read it (the API server); nothing else is lost.
pub fn oversize(msg: &Encoded, size: usize, limit: usize, destination: &str) -> Encoded {
    use serde_json::{Map, Value, json};
    let mut doc: Map<String, Value> = serde_json::from_slice(&msg.payload).unwrap_or_default();
    doc.remove("data");
    let id = format!("{}/oversize", msg.id);
    doc.insert("specversion".into(), json!("1.0"));
    doc.insert("id".into(), json!(id));
    doc.insert("type".into(), json!(OVERSIZE_TYPE));
    doc.insert("source".into(), json!(msg.source));
    doc.insert("subject".into(), json!(msg.subject));
    doc.insert("datacontenttype".into(), json!("application/json"));
    doc.insert(
        "kubewireerror".into(),
        json!(format!(
            "event of {size} bytes exceeds the {limit} bytes {destination} accepts"
        )),
    );
    doc.insert(
        "data".into(),
        json!({
            "originalId": msg.id,
            "originalType": msg.ce_type,
            "size": size,
            "limit": limit,
            "destination": destination,
        }),
    );
    Encoded {
        id,
        key: msg.key.clone(),
        ce_type: OVERSIZE_TYPE.into(),
        change: msg.change,
        source: msg.source.clone(),
        subject: msg.subject.clone(),
        traceparent: msg.traceparent.clone(),
        payload: serde_json::to_vec(&Value::Object(doc)).expect("a JSON map serialises"),
        attrs: msg.attrs.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{TimeZone, Utc};
    use serde_json::{Value, json};

    use super::*;
    use crate::event::{ChangeType, ObjectRef, Origin, TraceContext};

    fn stream(group: &str, resource: &str, kind: &str, ns: Option<&str>) -> Arc<StreamId> {
        Arc::new(StreamId {
            cluster: "prod".into(),
            resource: ResourceInfo {
                group: group.into(),
                version: "v1".into(),
                resource: resource.into(),
                kind: kind.into(),
                namespaced: ns.is_some(),
            },
            namespace: ns.map(Into::into),
            label_selector: Some("app=web".into()),
            field_selector: None,
        })
    }

    fn trace() -> TraceContext {
        TraceContext {
            trace_id: [0xab; 16],
            span_id: [0xcd; 8],
        }
    }

    fn configmap_change(change: ChangeType, origin: Origin) -> Change {
        let data = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "demo", "uid": "uid-1", "resourceVersion": "42"},
            "data": {"a": "b"}
        });
        Change {
            stream: stream("", "configmaps", "ConfigMap", Some("demo")),
            change,
            origin,
            object: ObjectRef::from_object(&data).unwrap(),
            data,
            observed: Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap(),
            trace: trace(),
        }
    }

    fn parse(e: &Encoded) -> serde_json::Map<String, Value> {
        let v: Value = serde_json::from_slice(&e.payload).unwrap();
        v.as_object().unwrap().clone()
    }

    #[test]
    fn object_event_has_every_contract_attribute() {
        let c = configmap_change(ChangeType::Modified, Origin::Watch);
        let e = encode(&Event::Object(c.clone())).unwrap();
        let doc = parse(&e);
        let tp = format!("00-{}-{}-01", "ab".repeat(16), "cd".repeat(8));
        let want = json!({
            "specversion": "1.0",
            "id": "prod/uid-1/42/modified",
            "source": "kubewire/prod",
            "type": "io.kubewire.object.modified",
            "subject": "core/v1/configmaps/demo/settings",
            "time": "2025-01-02T03:04:05Z",
            "datacontenttype": "application/json",
            "traceparent": tp,
            "k8scluster": "prod",
            "k8sgroup": "core",
            "k8sversion": "v1",
            "k8skind": "ConfigMap",
            "k8sresource": "configmaps",
            "k8snamespace": "demo",
            "k8sname": "settings",
            "k8suid": "uid-1",
            "k8sresourceversion": "42",
            "kubewireorigin": "watch",
            "data": c.data,
        });
        assert_eq!(Value::Object(doc), want);
        assert_eq!(e.id, c.id());
        assert_eq!(e.key, "demo/settings");
        assert_eq!(e.ce_type, "io.kubewire.object.modified");
        assert_eq!(e.source, "kubewire/prod");
        assert_eq!(e.subject, "core/v1/configmaps/demo/settings");
        assert_eq!(e.traceparent, tp);
        assert!(!e.payload.ends_with(b"\n"));
        assert_eq!(
            e.attrs,
            Attrs {
                cluster: "prod".into(),
                group: "core".into(),
                version: "v1".into(),
                kind: "ConfigMap".into(),
                resource: "configmaps".into(),
                namespace: Some("demo".into()),
                name: Some("settings".into()),
            }
        );
    }

    #[test]
    fn attributes_come_in_contract_order() {
        let e = encode(&Event::Object(configmap_change(
            ChangeType::Added,
            Origin::Initial,
        )))
        .unwrap();
        let text = String::from_utf8(e.payload).unwrap();
        let pos = |k: &str| text.find(&format!("\"{k}\":")).unwrap();
        assert!(pos("specversion") < pos("id"));
        assert!(pos("id") < pos("source"));
        assert!(pos("kubewireorigin") < pos("data"));
        assert!(text.starts_with("{\"specversion\":\"1.0\""));
    }

    #[test]
    fn type_and_origin_follow_the_change() {
        for (ct, want) in [
            (ChangeType::Added, "io.kubewire.object.added"),
            (ChangeType::Modified, "io.kubewire.object.modified"),
            (ChangeType::Deleted, "io.kubewire.object.deleted"),
        ] {
            for origin in [Origin::Watch, Origin::Initial, Origin::Relist] {
                let doc = parse(&encode(&Event::Object(configmap_change(ct, origin))).unwrap());
                assert_eq!(doc["type"], want);
                assert_eq!(doc["kubewireorigin"], origin.as_str());
                assert!(doc["id"].as_str().unwrap().ends_with(ct.as_str()));
            }
        }
    }

    #[test]
    fn ids_are_deterministic_and_trace_is_not_part_of_them() {
        let a = configmap_change(ChangeType::Modified, Origin::Watch);
        let mut b = a.clone();
        b.trace = TraceContext::random();
        b.observed = Utc::now();
        b.origin = Origin::Relist;
        let (ea, eb) = (
            encode(&Event::Object(a)).unwrap(),
            encode(&Event::Object(b)).unwrap(),
        );
        assert_eq!(ea.id, eb.id);
        assert_eq!(parse(&ea)["id"], parse(&eb)["id"]);
        assert_ne!(ea.traceparent, eb.traceparent);
    }

    #[test]
    fn cluster_scoped_objects_use_underscore_and_omit_namespace() {
        let data = json!({"metadata": {"name": "n1", "uid": "u", "resourceVersion": "9"}});
        let c = Change {
            stream: stream("", "nodes", "Node", None),
            change: ChangeType::Added,
            origin: Origin::Watch,
            object: ObjectRef::from_object(&data).unwrap(),
            data,
            observed: Utc::now(),
            trace: trace(),
        };
        let e = encode(&Event::Object(c)).unwrap();
        let doc = parse(&e);
        assert_eq!(doc["subject"], "core/v1/nodes/_/n1");
        assert!(!doc.contains_key("k8snamespace"));
        assert_eq!(e.key, "n1");
    }

    #[test]
    fn named_groups_appear_as_is() {
        let data = json!({"metadata": {"name": "web", "namespace": "a", "uid": "u", "resourceVersion": "9"}});
        let c = Change {
            stream: stream("apps", "deployments", "Deployment", None),
            change: ChangeType::Deleted,
            origin: Origin::Relist,
            object: ObjectRef::from_object(&data).unwrap(),
            data,
            observed: Utc::now(),
            trace: trace(),
        };
        let doc = parse(&encode(&Event::Object(c)).unwrap());
        assert_eq!(doc["subject"], "apps/v1/deployments/a/web");
        assert_eq!(doc["k8sgroup"], "apps");
        assert_eq!(doc["k8snamespace"], "a");
    }

    fn marker(from: Option<&str>) -> RelistMarker {
        RelistMarker {
            stream: stream("", "configmaps", "ConfigMap", Some("demo")),
            from_resource_version: from.map(Into::into),
            to_resource_version: "100".into(),
            added: 1,
            modified: 2,
            deleted: 3,
            unchanged: 4,
            observed: Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap(),
            trace: trace(),
        }
    }

    #[test]
    fn relist_marker_encoding() {
        let m = marker(Some("50"));
        let e = encode(&Event::Relisted(m.clone())).unwrap();
        let doc = parse(&e);
        assert_eq!(doc["specversion"], "1.0");
        assert_eq!(doc["id"], m.id());
        assert_eq!(e.id, m.id());
        assert_eq!(doc["type"], RELISTED_TYPE);
        assert_eq!(doc["source"], "kubewire/prod");
        assert_eq!(doc["subject"], "core/v1/configmaps/demo");
        assert_eq!(doc["kubewireorigin"], "relist");
        assert_eq!(doc["k8sresource"], "configmaps");
        assert_eq!(doc["k8skind"], "ConfigMap");
        assert_eq!(doc["k8snamespace"], "demo");
        assert_eq!(doc["datacontenttype"], "application/json");
        for absent in ["k8sname", "k8suid", "k8sresourceversion"] {
            assert!(!doc.contains_key(absent), "{absent}");
        }
        assert_eq!(
            doc["data"],
            json!({
                "fromResourceVersion": "50", "toResourceVersion": "100",
                "added": 1, "modified": 2, "deleted": 3, "unchanged": 4,
                "labelSelector": "app=web", "fieldSelector": null
            })
        );
        assert_eq!(e.key, m.key());
        assert_eq!(e.attrs.namespace.as_deref(), Some("demo"));
        assert_eq!(e.attrs.name, None);
        // Deterministic: the same relist encodes to the same id.
        assert_eq!(
            encode(&Event::Relisted(marker(Some("50")))).unwrap().id,
            e.id
        );
    }

    #[test]
    fn first_relist_has_null_from_version() {
        let doc = parse(&encode(&Event::Relisted(marker(None))).unwrap());
        assert_eq!(doc["data"]["fromResourceVersion"], Value::Null);
    }
}
