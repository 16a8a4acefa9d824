//! The NATS server restarts (`dev/testenv restart nats`) while kubewire publishes a burst:
//! no event is lost, none is stored twice, each subject stays in order, and the sink's health
//! goes down and up. In a test binary of its own: it disrupts every other NATS user, and cargo
//! runs test binaries one at a time.

mod common;
mod harness;
mod nats_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use harness::{Scene, configmap};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use nats_support::{
    assert_headers, assert_per_subject_order, distinct_ids, jetstream_sink, js, read_stream,
    unique_prefix, wait_stream_matches_cluster,
};
use serde_json::json;

/// (uid, resourceVersion) of the object a write returned.
fn version(cm: &ConfigMap) -> (String, String) {
    (
        cm.metadata.uid.clone().unwrap(),
        cm.metadata.resource_version.clone().unwrap(),
    )
}

/// Writes annotation `probe: n` on `o-0` and waits until that version is in the stream:
/// returns the seconds it took, and the version written.
async fn probe(api: &Api<ConfigMap>, stream: &str, n: u32) -> (f64, (String, String)) {
    let t = Instant::now();
    let probe = version(
        &api.patch(
            "o-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"probe": n.to_string()}}})),
        )
        .await
        .unwrap(),
    );
    let (_nc, ctx) = js().await;
    common::eventually(60, "the probe write in the stream", || async {
        read_stream(&ctx, stream)
            .await
            .iter()
            .any(|p| p.event["k8sresourceversion"] == probe.1.as_str())
            .then_some(())
    })
    .await;
    (t.elapsed().as_secs_f64(), probe)
}

#[tokio::test]
async fn nats_restart_during_a_burst_loses_no_event() {
    let s = Scene::new("kw-nats-outage").await;
    let (client, ns) = (&s.client, &s.ns);
    let prefix = unique_prefix("kwout");
    let stream = prefix.to_uppercase();
    let kw = s
        .kubewire()
        .watch("configmaps", &[ns])
        .sink_yaml(&jetstream_sink(&common::nats_url(), &stream, &prefix))
        .start();
    kw.wait_log(60, 1, "initial list done", 1).await;

    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    const N: usize = 10;
    let mut written = Vec::new();
    for i in 0..N {
        let cm = api
            .create(
                &PostParams::default(),
                &configmap(&format!("o-{i}"), &[], "0"),
            )
            .await
            .unwrap();
        written.push(version(&cm));
    }
    // Writes go on, round after round, until told to stop; each returns its version.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn({
        let (api, stop, rounds) = (api.clone(), stop.clone(), rounds.clone());
        async move {
            let mut written = Vec::new();
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let patches = (0..N).map(|i| {
                    let api = api.clone();
                    async move {
                        api.patch(
                            &format!("o-{i}"),
                            &PatchParams::default(),
                            &Patch::Merge(json!({"data": {"value": round.to_string()}})),
                        )
                        .await
                        .unwrap()
                    }
                });
                for cm in futures::future::join_all(patches).await {
                    written.push(version(&cm));
                }
                rounds.fetch_add(1, Ordering::Relaxed);
            }
            written
        }
    });
    let (_nc, ctx) = js().await;
    common::eventually(60, "the burst under way in the stream", || async {
        let mut s = ctx.get_stream(&stream).await.ok()?;
        (s.info().await.ok()?.state.messages >= 5 * N as u64).then_some(())
    })
    .await;

    // Outage 1: `dev/testenv restart nats` in the middle of the burst.
    let t = Instant::now();
    tokio::task::spawn_blocking(|| common::testenv(&["restart", "nats"]))
        .await
        .unwrap();
    let restart_secs = t.elapsed().as_secs_f64();
    kw.wait_log(30, 1, "NATS sink down", 1).await;
    let (recovery1, v) = probe(&api, &stream, 1).await;
    written.push(v);
    kw.wait_log(30, 1, "NATS sink connected", 1).await;

    // Outage 2: stopped while several rounds of writes happen, then started again.
    tokio::task::spawn_blocking(|| common::testenv(&["stop", "nats"]))
        .await
        .unwrap();
    kw.wait_log(30, 1, "NATS sink down", 2).await;
    // /readyz and the metrics say so.
    let admin = kw.admin().await;
    common::eventually(
        30,
        "/readyz and sink_up to show the NATS sink down",
        || async {
            let (code, body) = harness::http_get(&admin, "/readyz").await;
            let (_, metrics) = harness::http_get(&admin, "/metrics").await;
            (code != 200
                && body.contains("sink nats: down: disconnected")
                && metrics.contains("sink_up{sink=\"nats\"} 0"))
            .then_some(())
        },
    )
    .await;
    let before = rounds.load(Ordering::Relaxed);
    common::eventually(60, "3 rounds of writes while NATS is down", || async {
        (rounds.load(Ordering::Relaxed) >= before + 3).then_some(())
    })
    .await;
    tokio::task::spawn_blocking(|| common::testenv(&["start", "nats"]))
        .await
        .unwrap();
    let (recovery2, v) = probe(&api, &stream, 2).await;
    written.push(v);
    kw.wait_log(30, 1, "NATS sink connected", 2).await;
    common::eventually(30, "/readyz to show the NATS sink up again", || async {
        let (_, metrics) = harness::http_get(&admin, "/metrics").await;
        metrics.contains("sink_up{sink=\"nats\"} 1").then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    written.extend(writer.await.unwrap());
    let (_nc, ctx) = js().await;

    let published = wait_stream_matches_cluster(&ctx, &stream, client, &[ns], 120).await;
    let stored: HashSet<(String, String)> = published
        .iter()
        .map(|p| {
            (
                p.event["k8suid"].as_str().unwrap().to_owned(),
                p.event["k8sresourceversion"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let lost: Vec<_> = written.iter().filter(|w| !stored.contains(*w)).collect();
    let retries = kw
        .log_messages(1, "publish not acknowledged; will retry with the same id")
        .len();
    println!(
        "outage: {} writes, {} messages stored, {retries} publishes retried; \
         `dev/testenv restart nats` took {restart_secs:.1}s, a write made right after it was \
         stored {recovery1:.1}s later; after a stop of several rounds, a write made once NATS \
         was started was stored {recovery2:.1}s later",
        written.len(),
        published.len()
    );
    assert!(lost.is_empty(), "{} writes lost: {lost:?}", lost.len());
    assert_eq!(
        distinct_ids(&published),
        published.len(),
        "no id stored twice"
    );
    assert_eq!(published.len(), written.len(), "one message per write");
    assert_per_subject_order(&published);
    published.iter().for_each(assert_headers);
    drop(kw);
    nats_support::delete_stream(&ctx, &stream).await;
}
