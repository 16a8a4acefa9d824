//! Traces (issue 6), against the real OpenTelemetry Collector of `dev/testenv` (`dev/testenv up
//! otelcol`, which each test runs itself: a no-op when it is up) and the real kube-apiserver:
//! the `traceparent` of every published event names a span the collector received, with the
//! expected stage spans under it; and a collector that is down costs the pipeline nothing.

mod common;
mod harness;
mod otel_support;

use std::collections::HashSet;

use harness::{Scene, configmap, object_events};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::PostParams;
use otel_support::{Span, collector, spans_of, telemetry_yaml, trace_of};

#[tokio::test]
async fn every_published_events_traceparent_is_a_span_the_collector_received_with_its_stage_spans()
{
    let (endpoint, file) = collector();
    let s = Scene::new("kw-traces").await;
    let (client, ns) = (&s.client, &s.ns);
    let service = common::unique_name("kubewire-traces");
    let kw = s
        .kubewire()
        .watch("configmaps", &[ns])
        .extra_yaml(&telemetry_yaml(&endpoint, &service, 200, ""))
        .start();
    kw.ready(60).await;

    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let names = ["one", "two", "three"];
    for n in names {
        api.create(&PostParams::default(), &configmap(n, &[], "v"))
            .await
            .unwrap();
    }
    let events = kw
        .wait_events(60, "three Added events", |ev| {
            names.iter().all(|n| !object_events(ev, ns, n).is_empty())
        })
        .await;
    let published: Vec<(String, String, String)> = names
        .iter()
        .map(|n| {
            let e = object_events(&events, ns, n)[0];
            let (trace, span) = trace_of(e);
            (trace, span, e["id"].as_str().unwrap().to_owned())
        })
        .collect();
    let traces: HashSet<&String> = published.iter().map(|(t, _, _)| t).collect();
    assert_eq!(traces.len(), names.len(), "one trace per event");

    // The collector gets the spans within a few export intervals.
    let spans = common::eventually(60, "the events' spans in the collector's output", || {
        let spans = spans_of(&file, &service);
        let complete = published.iter().all(|(trace, span, _)| {
            let in_trace: Vec<&Span> = spans.iter().filter(|s| &s.trace_id == trace).collect();
            in_trace.iter().any(|s| &s.span_id == span)
                && ["kubewire.transform", "kubewire.encode", "kubewire.publish"]
                    .iter()
                    .all(|n| in_trace.iter().any(|s| s.name == *n))
        }) && spans.iter().any(|s| s.name == "kubewire.list");
        async move { complete.then_some(spans) }
    })
    .await;

    let list = spans
        .iter()
        .find(|s| s.name == "kubewire.list")
        .expect("list span");
    assert_eq!(list.attributes["kubewire.cause"], "initial");
    for (trace, span_id, id) in &published {
        let event = spans
            .iter()
            .find(|s| &s.trace_id == trace && &s.span_id == span_id)
            .unwrap();
        // The traceparent's span is the event's root span, carrying the event's identity.
        assert_eq!(event.name, "kubewire.event");
        assert_eq!(event.parent_span_id, "", "the event span is a trace root");
        assert_eq!(&event.attributes["cloudevents.event_id"], id);
        assert_eq!(
            event.attributes["cloudevents.event_type"],
            "io.kubewire.object.added"
        );
        assert_eq!(event.attributes["k8s.namespace.name"], *ns);
        assert_eq!(event.attributes["kubewire.origin"], "watch");
        // Linked to the watch request that carried it.
        let (link_trace, link_span) = event.links.first().expect("a link to the watch span");
        let carrier = spans
            .iter()
            .find(|s| &s.trace_id == link_trace && &s.span_id == link_span);
        if let Some(c) = carrier {
            assert_eq!(c.name, "kubewire.watch");
        }
        // Its stages are its children.
        for stage in ["kubewire.transform", "kubewire.encode", "kubewire.publish"] {
            let s = spans
                .iter()
                .find(|s| &s.trace_id == trace && s.name == stage)
                .unwrap_or_else(|| panic!("{stage} span of {id}"));
            assert_eq!(
                &s.parent_span_id, span_id,
                "{stage} is a child of the event span"
            );
        }
        let publish = spans
            .iter()
            .find(|s| &s.trace_id == trace && s.name == "kubewire.publish")
            .unwrap();
        assert_eq!(publish.attributes["messaging.system"], "file");
    }
}

#[tokio::test]
async fn a_collector_that_is_down_neither_blocks_nor_slows_the_events() {
    // Nothing listens on this port (the OS refuses it): every export fails.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let s = Scene::new("kw-traces-down").await;
    let (client, ns) = (&s.client, &s.ns);
    // A tiny queue, so that it overflows at once and spans are dropped.
    let mut kw = s
        .kubewire()
        .watch("configmaps", &[ns])
        .extra_yaml(&telemetry_yaml(
            &format!("http://127.0.0.1:{port}"),
            "kubewire-traces-down",
            200,
            "    maxQueueSize: 4\n    maxExportBatchSize: 2\n    exportTimeoutMs: 500\n",
        ))
        .start();
    kw.ready(60).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let n = 40;
    for i in 0..n {
        api.create(
            &PostParams::default(),
            &configmap(&format!("cm-{i}"), &[], "v"),
        )
        .await
        .unwrap();
    }
    let events = kw
        .wait_events(30, "every event despite the dead collector", |ev| {
            (0..n).all(|i| !object_events(ev, ns, &format!("cm-{i}")).is_empty())
        })
        .await;
    for i in 0..n {
        trace_of(object_events(&events, ns, &format!("cm-{i}"))[0]);
    }
    kw.wait_log(
        30,
        1,
        "trace export failing; spans are dropped until the collector is back (events are not affected)",
        1,
    )
    .await;
    // A graceful stop does not hang on the unreachable collector either.
    let started = std::time::Instant::now();
    let status = kw.stop().await;
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "stopping took {:?}",
        started.elapsed()
    );
}
