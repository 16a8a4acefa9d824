//! Traces of watch restarts and of the reconciling relist, against the real OpenTelemetry
//! Collector and kube-apiserver of `dev/testenv`; and that a graceful stop flushes the spans
//! still queued. Its own test binary: `dev/testenv compact` affects every watch on the API
//! server (see tests/core_relist.rs).

mod common;
mod harness;
mod otel_support;

use harness::{Scene, configmap, object_events};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use otel_support::{Span, collector, spans_of, telemetry_yaml, trace_of};
use serde_json::json;

fn find<'a>(spans: &'a [Span], trace: &str, span: &str) -> Option<&'a Span> {
    spans
        .iter()
        .find(|s| s.trace_id == trace && s.span_id == span)
}

#[tokio::test]
async fn watch_restarts_and_relists_are_spans_and_a_graceful_stop_flushes_them() {
    let (endpoint, file) = collector();
    let s = Scene::new("kw-traces-relist").await;
    let (client, ns) = (&s.client, &s.ns);
    let service = common::unique_name("kubewire-relist");
    // The export interval is far longer than the test: only the flush at a graceful stop
    // exports anything. Watches end after 1 s, so they restart (cause `timeout`).
    let extra = format!(
        "{}watch:\n  timeoutSeconds: 1\n  idleTimeoutSeconds: 30\n",
        telemetry_yaml(&endpoint, &service, 600_000, "")
    );
    let mut kw = s
        .kubewire()
        .watch("configmaps", &[ns])
        .extra_yaml(&extra)
        .start();
    kw.ready(60).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &configmap("cm", &[], "1"))
        .await
        .unwrap();
    let events = kw
        .wait_events(60, "the Added event", |ev| {
            !object_events(ev, ns, "cm").is_empty()
        })
        .await;
    let (added_trace, added_span) = trace_of(object_events(&events, ns, "cm")[0]);
    // Three watch requests: the one after the list, and two restarts after it timed out.
    kw.wait_log(30, 1, "watching", 3).await;
    assert!(
        spans_of(&file, &service).is_empty(),
        "nothing is exported before the stop (scheduledDelayMs is 10 min)"
    );
    assert!(kw.stop().await.success());

    let spans = spans_of(&file, &service);
    let added = find(&spans, &added_trace, &added_span)
        .unwrap_or_else(|| panic!("the Added event's span was flushed at stop: {spans:#?}"));
    assert_eq!(added.name, "kubewire.event");
    let (lt, ls) = added.links.first().expect("link to the carrying watch");
    let carrier = find(&spans, lt, ls).expect("the carrying watch span");
    assert_eq!(carrier.name, "kubewire.watch");
    let causes: Vec<&str> = spans
        .iter()
        .filter(|s| s.name == "kubewire.watch")
        .map(|s| s.attributes["kubewire.cause"].as_str())
        .collect();
    assert!(causes.contains(&"after-list"), "{causes:?}");
    assert!(
        causes.contains(&"timeout"),
        "watch restarts are spans: {causes:?}"
    );
    assert!(
        spans
            .iter()
            .any(|s| s.name == "kubewire.list" && s.attributes["kubewire.cause"] == "initial")
    );

    // Changed while kubewire is down, then compacted away: the restart relists.
    api.patch(
        "cm",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"value": "2"}})),
    )
    .await
    .unwrap();
    common::testenv(&["compact"]);
    kw.restart();
    kw.wait_log(60, 2, "relisted", 1).await;
    let events = kw
        .wait_events(60, "the relist marker and the relisted Modified", |ev| {
            ev.iter()
                .any(|e| e["type"] == "io.kubewire.stream.relisted")
                && object_events(ev, ns, "cm")
                    .iter()
                    .any(|e| e["kubewireorigin"] == "relist")
        })
        .await;
    let marker = events
        .iter()
        .find(|e| e["type"] == "io.kubewire.stream.relisted")
        .unwrap();
    let relisted = object_events(&events, ns, "cm")
        .into_iter()
        .find(|e| e["kubewireorigin"] == "relist")
        .unwrap();
    let (marker_trace, marker_span) = trace_of(marker);
    let (relisted_trace, relisted_span) = trace_of(relisted);
    assert!(kw.stop().await.success());

    let spans = spans_of(&file, &service);
    let relist = spans
        .iter()
        .find(|s| s.name == "kubewire.relist")
        .unwrap_or_else(|| panic!("a kubewire.relist span: {spans:#?}"));
    let marker = find(&spans, &marker_trace, &marker_span).expect("the marker's span");
    assert_eq!(marker.name, "kubewire.event");
    assert_eq!(
        marker.attributes["cloudevents.event_type"],
        "io.kubewire.stream.relisted"
    );
    let relisted = find(&spans, &relisted_trace, &relisted_span).expect("the relisted span");
    assert_eq!(relisted.attributes["kubewire.origin"], "relist");
    assert_eq!(
        relisted.attributes["cloudevents.event_id"],
        events
            .iter()
            .find(|e| e["kubewireorigin"] == "relist" && e["k8sname"] == "cm")
            .unwrap()["id"]
            .as_str()
            .unwrap()
    );
    for event in [marker, relisted] {
        let (lt, ls) = event.links.first().expect("link to the relist");
        assert_eq!(
            (lt.as_str(), ls.as_str()),
            (relist.trace_id.as_str(), relist.span_id.as_str()),
            "events of a relist link to its span"
        );
    }
}
