//! The Kafka sink through a broker outage (issue 4, test 2): `dev/testenv stop kafka` for
//! 30 s during a burst of writes, then `start`: every change reaches the topic, the sink's
//! down state is logged once (not per message), and kubewire's memory stays bounded.
//!
//! In a binary of its own: stopping the broker breaks any other test using Kafka at that
//! moment, and cargo runs test binaries one at a time.

mod common;
mod harness;
mod kafka_util;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use harness::{Scene, cluster_configmaps, configmap, replay};
use kafka_util::{Reader, create_topic, sink_yaml};

/// Peak resident memory (VmHWM, kB) of the kubewire process whose command line names `dir`.
fn peak_rss_kb(dir: &std::path::Path) -> Option<u64> {
    let needle = dir.join("config.yaml").display().to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            return line.split_whitespace().nth(1)?.parse().ok();
        }
    }
    None
}

/// Ensures the broker is started again even if the test fails half-way.
struct RestartKafka;

impl Drop for RestartKafka {
    fn drop(&mut self) {
        if common::service_state("kafka") != "up" {
            common::testenv(&["start", "kafka"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_during_a_burst_loses_nothing() {
    let s = Scene::new("kafka-outage").await;
    let (client, ns, dir) = (&s.client, &s.ns, &s.dir);
    let topic = common::unique_name("kw-outage");
    create_topic(&topic, 3, &[]).await;
    let kw = s
        .kubewire()
        .watch("configmaps", &[ns])
        .sink_yaml(&sink_yaml(&topic, ""))
        .start();
    kw.wait_log(60, 1, "initial list done", 1).await;

    // A writer that keeps changing 50 objects until told to stop; it records every
    // (uid, resourceVersion) the API server returned: each one must reach the topic.
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (api, stop) = (api.clone(), stop.clone());
        tokio::spawn(async move {
            let mut written = BTreeSet::new();
            for i in 0..50 {
                let cm = api
                    .create(
                        &PostParams::default(),
                        &configmap(&format!("cm-{i}"), &[], "0"),
                    )
                    .await
                    .unwrap();
                written.insert((
                    cm.metadata.uid.unwrap(),
                    cm.metadata.resource_version.unwrap(),
                ));
            }
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let patch = Patch::Merge(
                    json!({"data": {"value": n.to_string(), "pad": "p".repeat(2000)}}),
                );
                let cm = api
                    .patch(&format!("cm-{}", n % 50), &PatchParams::default(), &patch)
                    .await
                    .unwrap();
                written.insert((
                    cm.metadata.uid.unwrap(),
                    cm.metadata.resource_version.unwrap(),
                ));
                tokio::time::sleep(Duration::from_millis(20)).await; // write rate, not sync
            }
            written
        })
    };

    let mut reader = Reader::new(&topic).await;
    reader
        .wait(60, "the burst flowing before the outage", |r| {
            r.len() >= 100
        })
        .await;

    let _restart = RestartKafka;
    let t = Instant::now();
    common::testenv(&["stop", "kafka"]);
    eprintln!(
        "kafka outage: broker stopped in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let stopped = Instant::now();
    kw.wait_log(
        60,
        1,
        "kafka sink down: events wait in the producer queue (bounded), then the watch loops pause",
        1,
    )
    .await;
    // The outage itself: 30 s of writes with no broker (a duration of the scenario, not a
    // synchronisation).
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed())).await;
    let t = Instant::now();
    common::testenv(&["start", "kafka"]);
    eprintln!(
        "kafka outage: broker started in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();

    let want = cluster_configmaps(client, &[ns.as_str()]).await;
    reader
        .wait(
            180,
            "every written version on the topic after the outage",
            |r| {
                let seen: BTreeSet<(String, String)> = r
                    .iter()
                    .filter_map(|r| r.value.as_ref())
                    .map(|e| {
                        (
                            e["k8suid"].as_str().unwrap_or_default().to_owned(),
                            e["k8sresourceversion"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                        )
                    })
                    .collect();
                written.is_subset(&seen)
            },
        )
        .await;
    let recovered = started.elapsed();
    let events = reader.events();
    assert_eq!(
        replay(&events),
        want,
        "replaying the topic gives the cluster's state"
    );
    let rss = peak_rss_kb(dir.path());
    eprintln!(
        "kafka outage: {} writes, {} events on the topic; all delivered {:.1}s after the broker was started again; kubewire peak RSS {:?} kB",
        written.len(),
        events.len(),
        recovered.as_secs_f64(),
        rss
    );
    assert!(rss.is_some_and(|kb| kb < 256 * 1024), "peak RSS {rss:?} kB");

    // Down and up again, each logged once.
    kw.wait_log(60, 1, "kafka sink up again: brokers reachable", 1)
        .await;
    assert_eq!(
        kw.log_messages(1, "kafka sink down: events wait in the producer queue (bounded), then the watch loops pause").len(),
        1
    );
    assert_eq!(
        kw.log_messages(1, "kafka sink up again: brokers reachable")
            .len(),
        1
    );
    drop(kw);
}
