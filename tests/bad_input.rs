//! Bad and odd input (issue 9): property tests for the parsers and encoders kubewire feeds
//! with user or cluster data, and odd objects sent through the real API server and kubewire
//! to the file sink.
//!
//! Properties already covered by unit tests are not repeated here: `ResourceRef::parse` on
//! printable strings (`src/config/resource_ref.rs`), NATS subject escaping and the default
//! subject template (`src/sink/nats/subject.rs`), template parsing on short printable text
//! (`src/envelope/template.rs`).

mod common;
mod harness;

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use harness::{Scene, change, object_events};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kubewire::config::{Config, Format, ResourceRef};
use kubewire::envelope::{self, template};
use kubewire::event::{
    Change, ChangeType, Event, ObjectRef, Origin, RelistMarker, ResourceInfo, StreamId,
    TraceContext,
};
use kubewire::sink::nats::subject;
use proptest::prelude::*;
use serde_json::{Value, json};

// ------------------------------------------------------------------ config loader

/// Fragments of a configuration: known keys with values of every shape, so generated files
/// reach deep into the loader (types, enums, lists, nested sections) instead of failing at
/// the first line.
fn yaml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("null".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("-1".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("1e400".to_owned()),
        Just("true".to_owned()),
        Just("~".to_owned()),
        Just("\"\\u0000\"".to_owned()),
        Just("[a, [b, {c: d}]]".to_owned()),
        Just("{env: X}".to_owned()),
        Just("*anchor".to_owned()),
        "[a-zA-Z0-9 ./:{}*_-]{0,12}",
        any::<u32>().prop_map(|n| n.to_string()),
    ]
}

fn yaml_key() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "resources",
        "resource",
        "namespaces",
        "labelSelector",
        "fieldSelector",
        "events",
        "initial",
        "transform",
        "kafka",
        "topic",
        "clusters",
        "name",
        "kubeconfig",
        "sink",
        "type",
        "path",
        "url",
        "subject",
        "stream",
        "brokers",
        "key",
        "auth",
        "token",
        "tls",
        "properties",
        "checkpoint",
        "watch",
        "pageSize",
        "idleTimeoutSeconds",
        "timeoutSeconds",
        "log",
        "level",
        "format",
        "admin",
        "address",
        "leaderElection",
        "enabled",
        "unknownField",
    ])
}

/// A YAML document of random nesting over the known keys.
fn yaml_doc() -> impl Strategy<Value = String> {
    let line = (0usize..4, yaml_key(), yaml_value(), any::<bool>()).prop_map(
        |(indent, key, value, list)| {
            let pad = "  ".repeat(indent);
            let dash = if list { "- " } else { "" };
            format!("{pad}{dash}{key}: {value}\n")
        },
    );
    prop::collection::vec(line, 0..14).prop_map(|lines| lines.concat())
}

fn env_overrides() -> impl Strategy<Value = Vec<(String, String)>> {
    let seg = prop_oneof![
        yaml_key().prop_map(str::to_owned),
        "[0-9]{1,3}",
        "[A-Z_]{0,6}",
        Just("99999999999999999999".to_owned()),
    ];
    let name =
        prop::collection::vec(seg, 0..5).prop_map(|segs| format!("KUBEWIRE__{}", segs.join("__")));
    prop::collection::vec((name, "\\PC{0,12}"), 0..4)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Whatever the file and the environment say, loading returns a value or an error (with
    /// problems that print), never a panic; a loaded config validates without panicking.
    #[test]
    fn config_loader_never_panics_on_structured_garbage(doc in yaml_doc(), env in env_overrides()) {
        match Config::from_str_with_env(&doc, Format::Yaml, env.clone()) {
            Ok(c) => {
                for p in c.validate() {
                    let _ = p.to_string();
                }
            }
            Err(e) => {
                let _ = e.to_string();
                for p in e.problems() {
                    let _ = p.to_string();
                }
            }
        }
    }

    #[test]
    fn config_loader_never_panics_on_arbitrary_text(text in any::<String>(), toml in any::<bool>()) {
        let format = if toml { Format::Toml } else { Format::Yaml };
        let no_env: [(&str, &str); 0] = [];
        if let Ok(c) = Config::from_str_with_env(&text, format, no_env) {
            let _ = c.validate();
        }
    }

    /// Environment overrides on a valid base file: any name, any value, never a panic.
    #[test]
    fn env_overrides_on_a_valid_file_never_panic(env in env_overrides()) {
        let base = "resources:\n  - resource: configmaps\n";
        if let Ok(c) = Config::from_str_with_env(base, Format::Yaml, env) {
            let _ = c.validate();
        }
    }
}

// ------------------------------------------------------------------ resource names

/// A DNS label starting with a letter other than `v` (so it never looks like a version).
const GROUP_LABEL: &str = "[a-uw-z]([a-z0-9-]{0,6}[a-z0-9])?";

/// The parts of a valid resource reference and one of the accepted forms (the table in
/// `ResourceRef::parse`) spelling them: (text, name, group, version). Every generated text
/// is valid, so the property below checks its assertion on every case.
fn valid_resource_ref() -> impl Strategy<Value = (String, String, Option<String>, Option<String>)> {
    let name = "[a-zA-Z]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?";
    let version = "v[1-9][0-9]{0,1}((alpha|beta)[1-9][0-9]{0,1})?";
    let group = prop::collection::vec(GROUP_LABEL, 1..4).prop_map(|l| l.join("."));
    (name, version, group, 0usize..7).prop_map(|(n, v, g, form)| {
        let (text, group, version) = match form {
            0 => (n.clone(), None, None),
            1 => (format!("{n}.{g}"), Some(g), None),
            2 => (format!("{n}.{v}.{g}"), Some(g), Some(v)),
            3 => (format!("{n}.{v}"), Some(String::new()), Some(v)),
            4 => (format!("{v}/{n}"), Some(String::new()), Some(v)),
            5 => (format!("{g}/{n}"), Some(g), None),
            _ => (format!("{g}/{v}/{n}"), Some(g), Some(v)),
        };
        (text, n, group, version)
    })
}

proptest! {
    /// Any string, control characters and very long ones included: no panic, and a parsed
    /// reference has a name.
    #[test]
    fn resource_ref_parse_is_total(
        s in prop_oneof![any::<String>(), "[a-z0-9./]{200,300}", "[\\x00-\\x1f./a]{0,20}"]
    ) {
        if let Ok(r) = ResourceRef::parse(&s) {
            prop_assert!(!r.name.is_empty());
        }
    }

    /// Every accepted form of a valid reference parses to exactly its parts; the reference
    /// prints in the canonical `group/version/name` form (`*` unspecified, `core` for the
    /// core group), and its slash form parses back to the same reference.
    #[test]
    fn valid_resource_refs_parse_to_their_parts_and_display_round_trips(
        (text, name, group, version) in valid_resource_ref()
    ) {
        let want = ResourceRef { name: name.clone(), group: group.clone(), version: version.clone() };
        let r = ResourceRef::parse(&text);
        prop_assert_eq!(r.as_ref().ok(), Some(&want), "{} -> {:?}", text, r);
        let canonical = format!(
            "{}/{}/{}",
            match group.as_deref() { None => "*", Some("") => "core", Some(g) => g },
            version.as_deref().unwrap_or("*"),
            name
        );
        prop_assert_eq!(want.to_string(), canonical);
        let again = match (group.as_deref(), version.as_deref()) {
            (None, _) => name.clone(),
            (Some(""), Some(v)) => format!("{v}/{name}"),
            (Some(g), None) => format!("{g}/{name}"),
            (Some(g), Some(v)) => format!("{g}/{v}/{name}"),
        };
        prop_assert_eq!(ResourceRef::parse(&again).ok(), Some(want), "{}", again);
    }
}

// ------------------------------------------------------------------ templates

/// One piece of a generated Kafka template.
#[derive(Clone, Debug)]
enum TemplatePart {
    Literal(String),
    /// An index into [`PLACEHOLDERS`].
    Var(usize),
}

type AttrOf = fn(&envelope::Attrs) -> Option<&str>;

/// The documented placeholders (docs: `{cluster}` ... `{name}`) and the value each stands
/// for, written out here independently of `template::Placeholder`.
const PLACEHOLDERS: &[(&str, AttrOf)] = &[
    ("cluster", |a| Some(&a.cluster)),
    ("group", |a| Some(&a.group)),
    ("version", |a| Some(&a.version)),
    ("kind", |a| Some(&a.kind)),
    ("resource", |a| Some(&a.resource)),
    ("namespace", |a| a.namespace.as_deref()),
    ("name", |a| a.name.as_deref()),
];

fn attrs_strategy() -> impl Strategy<Value = envelope::Attrs> {
    (
        any::<String>(),
        any::<String>(),
        any::<String>(),
        prop::option::of(any::<String>()),
        prop::option::of(any::<String>()),
    )
        .prop_map(|(cluster, group, kind, namespace, name)| envelope::Attrs {
            cluster,
            group,
            version: "v1".into(),
            kind,
            resource: "things".into(),
            namespace,
            name,
        })
}

proptest! {
    /// The Kafka topic/key template (`src/envelope/template.rs`) on any text, braces and
    /// newlines included: no panic; rendered without values it is its literals.
    #[test]
    fn kafka_template_parse_is_total(text in any::<String>(), attrs in attrs_strategy()) {
        if let Ok(t) = template::Template::parse(&text, template::Placeholder::ALL) {
            let _ = t.render(&attrs, "_");
            let bare = t.render(&envelope::Attrs::default(), "");
            prop_assert_eq!(bare, t.literals().collect::<String>());
        }
    }

    /// A template built from literals (any text but braces, newlines included) and
    /// placeholders renders, for any values, exactly the literals and the values in order
    /// (nothing lost or invented): the expected string is computed here from the parts,
    /// not by the template.
    #[test]
    fn kafka_templates_render_exactly_their_parts(
        parts in prop::collection::vec(
            prop_oneof![
                "[^{}]{1,8}".prop_map(TemplatePart::Literal),
                (0usize..PLACEHOLDERS.len()).prop_map(TemplatePart::Var),
            ],
            1..12,
        ),
        attrs in attrs_strategy(),
    ) {
        let mut text = String::new();
        let mut want = String::new();
        for p in &parts {
            match p {
                TemplatePart::Literal(l) => {
                    text.push_str(l);
                    want.push_str(l);
                }
                TemplatePart::Var(i) => {
                    let (name, value) = PLACEHOLDERS[*i];
                    text.push_str(&format!("{{{name}}}"));
                    want.push_str(value(&attrs).unwrap_or("_"));
                }
            }
        }
        let t = template::Template::parse(&text, template::Placeholder::ALL);
        prop_assert!(t.is_ok(), "{:?} does not parse: {:?}", text, t.err());
        let t = t.unwrap();
        prop_assert_eq!(t.render(&attrs, "_"), want);
        prop_assert_eq!(t.to_string(), text);
    }

    /// Any NATS subject template that parses renders, for any object, a subject of valid
    /// tokens that the template's own wildcard covers (so the stream check at start-up is
    /// right about every subject kubewire will publish), with one token per value.
    #[test]
    fn nats_subject_templates_always_render_covered_valid_subjects(
        text in prop_oneof![
            any::<String>(),
            "[a-z]{1,5}(\\.(\\{(cluster|group|version|kind|resource|namespace|name)\\}|[a-z0-9-]{1,4})){0,8}",
        ],
        attrs in attrs_strategy(),
    ) {
        if let Ok(t) = subject::SubjectTemplate::parse(&text) {
            let s = t.render(&attrs);
            prop_assert!(!s.is_empty());
            prop_assert!(s.split('.').all(subject::is_valid_token), "{}", s);
            prop_assert!(subject::covers(&t.wildcard(), &s), "{} !< {}", s, t.wildcard());
        }
    }
}

// ------------------------------------------------------------------ envelope encoder

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // exact since serde_json's `float_roundtrip` is on (see the float regression test)
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn stream_strategy() -> impl Strategy<Value = Arc<StreamId>> {
    (
        "[a-z0-9._-]{1,20}",
        prop_oneof![Just(String::new()), any::<String>()],
        any::<String>(),
        prop::option::of(any::<String>()),
        prop::option::of(any::<String>()),
    )
        .prop_map(|(cluster, group, kind, namespace, selector)| {
            Arc::new(StreamId {
                cluster,
                resource: ResourceInfo {
                    group,
                    version: "v1".into(),
                    resource: "things".into(),
                    kind,
                    namespaced: namespace.is_some(),
                },
                namespace,
                label_selector: selector,
                field_selector: None,
            })
        })
}

fn trace() -> TraceContext {
    TraceContext {
        trace_id: [7; 16],
        span_id: [9; 8],
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any object data, names, uids and versions: `encode` never panics, the payload is
    /// valid JSON carrying the data unchanged, and the id is the deterministic
    /// `<cluster>/<uid>/<rv>/<type>`: the same for the same change, whatever the time and
    /// trace.
    #[test]
    fn envelope_encodes_any_object_as_valid_json_with_a_deterministic_id(
        stream in stream_strategy(),
        data in json_value(),
        uid in any::<String>(),
        name in any::<String>(),
        namespace in prop::option::of(any::<String>()),
        rv in any::<String>(),
        ct in prop::sample::select(vec![ChangeType::Added, ChangeType::Modified, ChangeType::Deleted]),
        origin in prop::sample::select(vec![Origin::Watch, Origin::Initial, Origin::Relist]),
        secs in 0i64..4_000_000_000,
    ) {
        let make = |secs: i64, trace: TraceContext| Event::Object(Change {
            stream: stream.clone(),
            change: ct,
            origin,
            object: ObjectRef {
                uid: uid.clone(),
                namespace: namespace.clone(),
                name: name.clone(),
                resource_version: rv.clone(),
            },
            data: data.clone(),
            observed: Utc.timestamp_opt(secs, 0).unwrap(),
            trace,
        });
        let a = envelope::encode(&make(secs, trace())).expect("encodes");
        let doc: Value = serde_json::from_slice(&a.payload).expect("valid JSON");
        let want_id = format!("{}/{uid}/{rv}/{}", stream.cluster, ct.as_str());
        prop_assert_eq!(&a.id, &want_id);
        prop_assert_eq!(&doc["id"], &Value::from(want_id.clone()));
        prop_assert_eq!(&doc["data"], &data);
        prop_assert_eq!(&doc["k8sname"], &Value::from(name.clone()));
        prop_assert_eq!(&doc["k8sresourceversion"], &Value::from(rv.clone()));
        // a replay: other time, other trace, same id and same attributes otherwise
        let b = envelope::encode(&make(secs / 2 + 1, TraceContext::random())).unwrap();
        prop_assert_eq!(&b.id, &a.id);
        prop_assert_eq!(&b.key, &a.key);
        let mut da: Value = serde_json::from_slice(&a.payload).unwrap();
        let mut db: Value = serde_json::from_slice(&b.payload).unwrap();
        for d in [&mut da, &mut db] {
            let m = d.as_object_mut().unwrap();
            m.remove("time");
            m.remove("traceparent");
        }
        prop_assert_eq!(da, db);
    }

    #[test]
    fn relist_markers_encode_as_valid_json_with_a_deterministic_id(
        stream in stream_strategy(),
        from in prop::option::of(any::<String>()),
        to in any::<String>(),
        counts in any::<(u64, u64, u64, u64)>(),
    ) {
        let make = || Event::Relisted(RelistMarker {
            stream: stream.clone(),
            from_resource_version: from.clone(),
            to_resource_version: to.clone(),
            added: counts.0,
            modified: counts.1,
            deleted: counts.2,
            unchanged: counts.3,
            observed: Utc::now(),
            trace: TraceContext::random(),
        });
        let a = envelope::encode(&make()).expect("encodes");
        let doc: Value = serde_json::from_slice(&a.payload).expect("valid JSON");
        prop_assert_eq!(&doc["type"], "io.kubewire.stream.relisted");
        prop_assert_eq!(&doc["data"]["toResourceVersion"], &Value::from(to.clone()));
        prop_assert_eq!(&doc["data"]["added"], &Value::from(counts.0));
        prop_assert_eq!(envelope::encode(&make()).unwrap().id, a.id);
    }
}

// ------------------------------------------------------------------ odd objects, real API server

/// The object as the checker compares it: what the API server returns, minus managedFields.
fn stripped(mut v: Value) -> Value {
    if let Some(md) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        md.remove("managedFields");
    }
    v
}

#[tokio::test]
async fn odd_names_unicode_values_and_near_limit_objects_reach_the_sink_intact() {
    let s = Scene::new("kw-odd").await;
    let (client, ns) = (&s.client, &s.ns);
    let kw = s.kubewire().watch("configmaps", &[ns]).start();
    kw.ready(60).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let pp = PostParams::default();

    // The API server refuses unicode in label values; kubewire never sees such an object.
    let bad: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "bad-label", "labels": {"l": "é"}}
    }))
    .unwrap();
    let err = api
        .create(&pp, &bad)
        .await
        .expect_err("unicode label value");
    assert!(
        err.to_string().contains("422") || err.to_string().contains("Invalid"),
        "{err}"
    );

    // A 253-character name (the DNS subdomain maximum), unicode and control characters in
    // annotation values and data, the longest label value (63).
    let long_name = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61)
    );
    assert_eq!(long_name.len(), 253);
    let unicode = "日本語 — ünïcødé 🚀 \u{200b}\u{0007}\"'\\\n\t{}[]%.*>";
    let odd: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": long_name,
            "labels": {"app.kubernetes.io/name": "x".repeat(63), "v": "a-b_c.d"},
            "annotations": {"note": unicode, "example.com/🚀": "k", "empty": ""},
        },
        "data": {"text": unicode, "key.with.dots": "v", "-_.": "w"},
        "binaryData": {"bin": "AAEC/w=="}
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    // (an annotation key must be a qualified name: the 🚀 key is refused)
    let err = api
        .create(&pp, &odd)
        .await
        .expect_err("unicode annotation key");
    assert!(
        err.to_string().contains("Invalid") || err.to_string().contains("422"),
        "{err}"
    );
    let mut odd_ok = serde_json::to_value(&odd).unwrap();
    odd_ok["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove("example.com/🚀");
    let odd_ok: ConfigMap = serde_json::from_value(odd_ok).unwrap();
    let created_odd = api.create(&pp, &odd_ok).await.unwrap();

    // Near the size limit: etcd's default request limit is 1.5 MiB; a ConfigMap's data is
    // limited to 1 MiB by validation. Take the largest the server accepts.
    let big_value = "z".repeat(1024 * 1024 - 64);
    let big: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "near-limit"}, "data": {"v": big_value}
    }))
    .unwrap();
    let created_big = api.create(&pp, &big).await.unwrap();
    let too_big: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "over-limit"}, "data": {"v": "z".repeat(1024 * 1024 + 1)}
    }))
    .unwrap();
    api.create(&pp, &too_big)
        .await
        .expect_err("over 1 MiB of data is refused by the API server");
    // an update of the big one, then its delete: ordered events of ~1 MiB each
    let updated_big = api
        .patch(
            "near-limit",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"v2": "second"}})),
        )
        .await
        .unwrap();
    api.delete("near-limit", &Default::default()).await.unwrap();

    let events = kw
        .wait_events(60, "events of the odd and the big objects", |ev| {
            object_events(ev, ns, "near-limit").len() >= 3
                && !object_events(ev, ns, &long_name).is_empty()
        })
        .await;
    let odd_ev = object_events(&events, ns, &long_name);
    assert_eq!(change(odd_ev[0]), "added");
    assert_eq!(
        odd_ev[0]["data"],
        stripped(serde_json::to_value(&created_odd).unwrap())
    );
    assert_eq!(odd_ev[0]["data"]["data"]["text"], unicode);
    let big_ev = object_events(&events, ns, "near-limit");
    let kinds: Vec<&str> = big_ev.iter().map(|e| change(e)).collect();
    assert_eq!(kinds, ["added", "modified", "deleted"]);
    assert_eq!(
        big_ev[0]["data"],
        stripped(serde_json::to_value(&created_big).unwrap())
    );
    assert_eq!(
        big_ev[1]["k8sresourceversion"],
        updated_big.metadata.resource_version.unwrap()
    );
    assert_eq!(
        big_ev[1]["data"]["data"]["v"].as_str().map(str::len),
        Some(1024 * 1024 - 64)
    );
    assert!(object_events(&events, ns, "over-limit").is_empty());
    assert!(object_events(&events, ns, "bad-label").is_empty());
    // every line of the output is one valid JSON document
    for line in kw.output().lines() {
        serde_json::from_str::<Value>(line).expect("every line is a JSON document");
    }
}

#[tokio::test]
async fn crd_gaining_a_new_storage_version_while_watched_keeps_its_stream_flowing() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let s = Scene::new("kw-crdver").await;
    let (client, ns) = (&s.client, &s.ns);
    let group = format!("{}.kubewire.test", common::unique_name("v"));
    let crd_name = format!("widgets.{group}");
    let schema = json!({"openAPIV3Schema": {"type": "object", "properties": {
        "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}});
    let version = |name: &str, storage: bool, schema: &Value| json!({"name": name, "served": true, "storage": storage, "schema": schema});
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": crd_name},
        "spec": {"group": group, "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [version("v1", true, &schema)]}
    }))
    .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let established = || async {
        let c = crds.get(&crd_name).await.ok()?;
        c.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    };
    common::eventually(30, "CRD established", established).await;
    let resource = |v: &str| kube::discovery::ApiResource {
        group: group.clone(),
        version: v.into(),
        api_version: format!("{group}/{v}"),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let v1: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource("v1"));
    let widget = |name: &str, api_version: &str, size: i64| -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": api_version, "kind": "Widget",
            "metadata": {"name": name}, "spec": {"size": size}}))
        .unwrap()
    };
    v1.create(
        &PostParams::default(),
        &widget("w1", &format!("{group}/v1"), 1),
    )
    .await
    .unwrap();

    // watched by its group only: kubewire resolves the preferred version (v1 now)
    let kw = s
        .kubewire()
        .watch(&format!("widgets.{group}"), &[ns])
        .start();
    kw.wait_events(60, "w1's initial event", |ev| {
        !object_events(ev, ns, "w1").is_empty()
    })
    .await;

    // add v2 (with a new optional field) and make it the storage version, v1 still served
    let schema2 = json!({"openAPIV3Schema": {"type": "object", "properties": {
        "spec": {"type": "object", "properties": {
            "size": {"type": "integer"}, "color": {"type": "string"}}}}}});
    crds.patch(
        &crd_name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"versions": [
            version("v1", false, &schema), version("v2", true, &schema2)]}})),
    )
    .await
    .unwrap();
    common::eventually(30, "CRD with v2 established", || async {
        let c = crds.get(&crd_name).await.ok()?;
        let stored = c.status.as_ref()?.stored_versions.clone()?;
        established().await?;
        stored.contains(&"v2".to_owned()).then_some(())
    })
    .await;

    // writes through v2 (stored as v2) and through v1 reach the stream, in order
    let v2: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource("v2"));
    let mut w2 = widget("w2", &format!("{group}/v2"), 2);
    w2.data["spec"]["color"] = json!("blue");
    v2.create(&PostParams::default(), &w2).await.unwrap();
    let w1 = v2
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 10, "color": "red"}})),
        )
        .await
        .unwrap();
    let events = kw
        .wait_events(
            60,
            "w2 added and w1 modified after the version change",
            |ev| {
                !object_events(ev, ns, "w2").is_empty()
                    && object_events(ev, ns, "w1").iter().any(|e| {
                        e["k8sresourceversion"]
                            == w1.metadata.resource_version.clone().unwrap().as_str()
                    })
            },
        )
        .await;
    let w1_events = object_events(&events, ns, "w1");
    let last = w1_events.last().unwrap();
    assert_eq!(change(last), "modified");
    assert_eq!(last["data"]["spec"]["size"], 10);
    // the watched version's view: whatever version the stream serves, it is consistent
    // with its own apiVersion attribute
    assert_eq!(
        last["data"]["apiVersion"],
        format!("{group}/{}", last["k8sversion"].as_str().unwrap())
    );

    let errors: Vec<Value> = kw
        .logs(1)
        .into_iter()
        .filter(|r| {
            r["level"] == "ERROR" && r["message"] != "stream failing; retrying with backoff"
        })
        .collect();
    assert!(
        errors.is_empty(),
        "errors after the version change: {errors:?}"
    );
    let _ = crds.delete(&crd_name, &Default::default()).await;
}

/// Bug (found by the envelope property test): serde_json parses some numbers one ulp off
/// unless its `float_roundtrip` feature is on, and kubewire parses every watch event with it:
/// a custom resource holding `-8.308357613790884e139` was published as `...883e139`.
#[tokio::test]
async fn regression_floats_in_custom_resources_are_published_exactly() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let s = Scene::new("kw-float").await;
    let (client, ns) = (&s.client, &s.ns);
    let group = format!("{}.kubewire.test", common::unique_name("f"));
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": format!("gauges.{group}")},
        "spec": {"group": group, "scope": "Namespaced",
            "names": {"plural": "gauges", "singular": "gauge", "kind": "Gauge"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema":
                {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    }))
    .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd).await.unwrap();
    common::eventually(30, "CRD established", || async {
        let c = crds.get(&format!("gauges.{group}")).await.ok()?;
        c.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;
    let kw = s
        .kubewire()
        .watch(&format!("gauges.{group}"), &[ns])
        .start();
    kw.ready(60).await;
    let ar = kube::discovery::ApiResource {
        group: group.clone(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: "Gauge".into(),
        plural: "gauges".into(),
    };
    let gauges: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    // The request body is written by serde_json's exact (shortest round-trip) formatter.
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{group}/v1"), "kind": "Gauge", "metadata": {"name": "g"},
        "spec": {"value": -8.308357613790884e139_f64, "tenth": 0.1_f64}
    }))
    .unwrap();
    gauges.create(&PostParams::default(), &obj).await.unwrap();
    kw.wait_events(60, "the Gauge's event", |ev| {
        !object_events(ev, ns, "g").is_empty()
    })
    .await;
    // compare the text: this test's own parse of the output would share the imprecision
    let line = kw
        .output()
        .lines()
        .find(|l| l.contains("\"k8sname\":\"g\""))
        .expect("the event's line")
        .to_owned();
    assert!(
        line.contains("\"value\":-8.308357613790884e"),
        "the float was not published as the API server holds it: {line}"
    );
    let _ = crds
        .delete(&format!("gauges.{group}"), &Default::default())
        .await;
}
