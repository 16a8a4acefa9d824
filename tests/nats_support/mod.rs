//! NATS helpers shared by the NATS sink tests (`tests/nats_sink.rs`, `tests/nats_outage.rs`):
//! a JetStream client to the test server, reading a whole stream back through an ordered
//! consumer, and the checks every test applies to what it read.
//!
//! Used as `mod common; mod harness; mod nats_support;`.
#![allow(dead_code)]

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

use crate::{common, harness};

/// One message read back from a stream.
#[derive(Debug, Clone)]
pub struct Published {
    pub seq: u64,
    pub subject: String,
    pub headers: HashMap<String, String>,
    pub event: Value,
}

/// A client and JetStream context on the test server.
pub async fn js() -> (async_nats::Client, jetstream::Context) {
    let client = common::within(
        20,
        "connect to the test NATS server",
        async_nats::connect(common::nats_url()),
    )
    .await
    .expect("connect to NATS (dev/testenv up)");
    let ctx = jetstream::new(client.clone());
    (client, ctx)
}

/// A unique prefix for subjects (and a stream name) so tests never share subjects.
pub fn unique_prefix(what: &str) -> String {
    common::unique_name(what).replace('-', "")
}

/// A `sink:` block for the harness: JetStream, the given stream and template, created.
pub fn jetstream_sink(url: &str, stream: &str, prefix: &str) -> String {
    format!(
        "sink:\n  type: nats\n  url: {url}\n  \
         subject: '{prefix}.{{cluster}}.{{group}}.{{kind}}.{{namespace}}.{{name}}'\n  \
         stream:\n    name: {stream}\n    create: true\n    duplicateWindowSeconds: 300\n"
    )
}

/// Every message of `stream`, in stream order, via an ordered consumer.
pub async fn read_stream(ctx: &jetstream::Context, stream: &str) -> Vec<Published> {
    let mut s = ctx.get_stream(stream).await.expect("stream exists");
    let n = s.info().await.expect("stream info").state.messages as usize;
    if n == 0 {
        return Vec::new();
    }
    let consumer = s
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("consume");
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let m = common::within(30, "the next stream message", messages.next())
            .await
            .expect("message stream ended")
            .expect("message");
        let headers = m
            .headers
            .as_ref()
            .map(|h| {
                h.iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            v.first().map(|v| v.to_string()).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let seq = m.info().expect("jetstream message").stream_sequence;
        out.push(Published {
            seq,
            subject: m.subject.to_string(),
            headers,
            event: serde_json::from_slice(&m.payload).expect("JSON payload"),
        });
    }
    out
}

/// The CloudEvents of `published`, in stream order.
pub fn events(published: &[Published]) -> Vec<Value> {
    published.iter().map(|p| p.event.clone()).collect()
}

/// Waits until replaying the stream gives exactly the cluster's ConfigMaps in `namespaces`;
/// returns what was read.
pub async fn wait_stream_matches_cluster(
    ctx: &jetstream::Context,
    stream: &str,
    client: &kube::Client,
    namespaces: &[&str],
    secs: u64,
) -> Vec<Published> {
    let what = format!("stream {stream} to replay to the cluster's state");
    common::eventually(secs, &what, || async move {
        let published = read_stream(ctx, stream).await;
        let cluster = harness::cluster_configmaps(client, namespaces).await;
        (harness::replay(&events(&published)) == cluster).then_some(published)
    })
    .await
}

/// Per subject, the objects' resourceVersions never go back (compared as etcd revisions).
/// Duplicates (same id) are allowed to repeat a version; returns the number of subjects.
pub fn assert_per_subject_order(published: &[Published]) -> usize {
    let mut last: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
    for p in published {
        if !p.event["type"]
            .as_str()
            .unwrap_or_default()
            .starts_with("io.kubewire.object.")
        {
            continue;
        }
        let rv: u64 = p.event["k8sresourceversion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let id = p.event["id"].as_str().unwrap();
        if let Some((prev, prev_id)) = last.get(p.subject.as_str()) {
            assert!(
                rv > *prev
                    || (rv == *prev
                        && (id == *prev_id || p.event["type"] == "io.kubewire.object.deleted")),
                "subject {} went from version {prev} to {rv} (seq {})",
                p.subject,
                p.seq
            );
        }
        last.insert(&p.subject, (rv, id));
    }
    last.len()
}

/// Headers are the CloudEvents attributes of the payload, and `Nats-Msg-Id` is its id.
pub fn assert_headers(p: &Published) {
    let e = &p.event;
    let h = |k: &str| {
        p.headers
            .get(k)
            .unwrap_or_else(|| panic!("header {k} missing on seq {}: {:?}", p.seq, p.headers))
            .as_str()
    };
    assert_eq!(h("Nats-Msg-Id"), e["id"].as_str().unwrap());
    assert_eq!(h("Ce-Id"), e["id"].as_str().unwrap());
    assert_eq!(h("Ce-Type"), e["type"].as_str().unwrap());
    assert_eq!(h("Ce-Source"), e["source"].as_str().unwrap());
    assert_eq!(h("traceparent"), e["traceparent"].as_str().unwrap());
    assert!(h("Content-Type").starts_with("application/cloudevents+json"));
}

/// How many distinct event ids `published` holds.
pub fn distinct_ids(published: &[Published]) -> usize {
    let mut ids: Vec<&str> = published
        .iter()
        .map(|p| p.event["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.len()
}

/// Deletes a stream created by a test (best effort).
pub async fn delete_stream(ctx: &jetstream::Context, stream: &str) {
    let _ = ctx.delete_stream(stream).await;
}
