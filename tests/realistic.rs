//! Behaviour only a server configured as production clusters are can show (the test env's
//! `apiserver-real`: watch cache on, priority and fairness on, its own compaction).

mod common;
mod harness;

use harness::{Scene, Server, configmap};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::PostParams;
use kubewire::checkpoint::{StateStore, Store};

/// Issue "Real clusters", item 3: BOOKMARK events advance a quiet stream's checkpoint behind
/// the acknowledgement watermark, so that its resume point does not fall out of the watch
/// window while nothing happens in its namespace.
#[tokio::test]
async fn bookmarks_advance_a_quiet_streams_checkpoint() {
    let s = Scene::on("kw-bookmark", Server::Realistic).await;
    // The server sends a bookmark before it ends a watch at its timeout.
    let mut kw = s
        .kubewire()
        .watch("configmaps", &[&s.ns])
        .extra_yaml("watch:\n  timeoutSeconds: 15\n  idleTimeoutSeconds: 40\n")
        .start();
    kw.ready(60).await;
    kw.wait_log(60, 1, "initial list done", 1).await;
    let listed: u64 = kw.log_messages(1, "initial list done")[0]["resource_version"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // Writes elsewhere move the cluster's resourceVersion; this stream stays quiet.
    let other = s.fresh_namespace("kw-bookmark-elsewhere").await;
    let written: u64 = Api::<ConfigMap>::namespaced(s.client.clone(), &other)
        .create(&PostParams::default(), &configmap("elsewhere", &[], "1"))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
        .parse()
        .unwrap();
    assert!(written > listed);
    let bookmark = common::eventually(90, "a bookmark past the write elsewhere", || async {
        kw.log_messages(1, "bookmark").iter().find_map(|r| {
            let rv: u64 = r["resource_version"].as_str()?.parse().ok()?;
            (rv >= written).then_some(rv)
        })
    })
    .await;
    assert!(kw.stop().await.success());
    assert!(kw.events().is_empty(), "nothing happened in the namespace");

    let store = Store::open(&kw.dir.join("checkpoint.redb")).unwrap();
    let key = format!("default|/configmaps|{}||", s.ns);
    let stored: u64 = store
        .load(&key)
        .unwrap()
        .resource_version
        .expect("a checkpoint")
        .parse()
        .unwrap();
    assert!(
        stored >= bookmark,
        "the checkpoint took the bookmark: stored {stored}, bookmark {bookmark}, listed {listed}"
    );
}

/// Issue "Real clusters", item 2: on a server with the watch cache, the first sync is one
/// streamed watch (no LIST), its snapshot is complete, and the same watch goes on.
#[tokio::test]
async fn a_first_sync_is_streamed_and_its_watch_goes_on() {
    let s = Scene::on("kw-streamed", Server::Realistic).await;
    let api = s.configmaps();
    for i in 0..30 {
        api.create(
            &PostParams::default(),
            &configmap(&format!("pre-{i}"), &[], "1"),
        )
        .await
        .unwrap();
    }
    let kw = s.kubewire().watch("configmaps", &[&s.ns]).start();
    kw.ready(60).await;
    api.create(&PostParams::default(), &configmap("after", &[], "1"))
        .await
        .unwrap();
    let cluster = harness::cluster_configmaps(&s.client, &[&s.ns]).await;
    kw.wait_events(60, "the snapshot and the change after it", |ev| {
        harness::replay(ev) == cluster
    })
    .await;
    let admin = kw.admin().await;
    let (_, metrics) = harness::http_get(&admin, "/metrics").await;
    let streamed = format!(
        "kubewire_snapshots_total{{cluster=\"default\",resource=\"configmaps\",namespace=\"{}\",mode=\"stream\"}} 1",
        s.ns
    );
    assert!(metrics.contains(&streamed), "{streamed} in\n{metrics}");
    let watches = format!(
        "kubewire_watch_starts_total{{cluster=\"default\",resource=\"configmaps\",namespace=\"{}\",cause=\"after-list\"}} 1",
        s.ns
    );
    assert!(metrics.contains(&watches), "{watches} in\n{metrics}");
    assert_eq!(
        kw.log_messages(1, "watching").len(),
        0,
        "the snapshot's own watch went on: no new watch request"
    );
}
