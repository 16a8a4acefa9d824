//! The reconciling relist, against the real kube-apiserver: compaction makes the stored
//! resourceVersion unusable (410 Gone), and the relist must still tell consumers exactly
//! what changed. Its own test binary: `dev/testenv compact` affects every watch on the
//! server, so nothing else may run beside it.

mod common;
mod harness;

use harness::{Scene, change, check_duplicates, cluster_configmaps, configmap, replay};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// Both ways of reading a snapshot (issue "Real clusters", item 2) reconcile alike: streamed
/// (`auto`: the test server streams) and paginated. One after the other: each compacts etcd.
#[tokio::test]
async fn relist_after_compaction_reconciles_deletes_modifies_and_creates() {
    relist_with("auto").await;
    relist_with("paginate").await;
}

async fn relist_with(initial_list: &str) {
    let s = Scene::new("kw-relist").await;
    let (client, ns) = (&s.client, &s.ns);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let pp = PostParams::default();
    for name in ["stays", "changes", "goes", "recreated"] {
        api.create(&pp, &configmap(name, &[], "1")).await.unwrap();
    }
    let mut kw = s
        .kubewire()
        .watch("configmaps", &[ns])
        .extra_yaml(&format!("watch:\n  initialList: {initial_list}\n"))
        .start();
    kw.wait_events(60, "initial snapshot of 4", |ev| ev.len() >= 4)
        .await;
    assert!(kw.stop().await.success());
    let before = kw.events().len();

    api.patch(
        "changes",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"value": "2"}})),
    )
    .await
    .unwrap();
    api.delete("goes", &DeleteParams::default()).await.unwrap();
    api.delete("recreated", &DeleteParams::default())
        .await
        .unwrap();
    api.create(&pp, &configmap("recreated", &[], "new"))
        .await
        .unwrap();
    api.create(&pp, &configmap("born", &[], "1")).await.unwrap();
    common::testenv(&["compact"]);

    kw.restart();
    kw.wait_log(60, 2, "relisted", 1).await;
    let cluster = cluster_configmaps(client, &[ns]).await;
    let events = kw
        .wait_events(60, "replay equals the cluster", |ev| replay(ev) == cluster)
        .await;
    let after = &events[before..];

    let marker = &after[0];
    assert_eq!(
        marker["type"], "io.kubewire.stream.relisted",
        "the marker comes first: {after:#?}"
    );
    assert_eq!(marker["data"]["added"], 2, "born + recreated");
    assert_eq!(marker["data"]["modified"], 1);
    assert_eq!(marker["data"]["deleted"], 2, "goes + the old recreated");
    assert_eq!(marker["data"]["unchanged"], 1);
    assert!(marker["data"]["fromResourceVersion"].is_string());
    assert!(marker["data"]["toResourceVersion"].is_string());

    let mut seen: Vec<(String, String)> = after[1..]
        .iter()
        .map(|e| {
            assert_eq!(e["kubewireorigin"], "relist");
            (
                e["k8sname"].as_str().unwrap().to_owned(),
                change(e).to_owned(),
            )
        })
        .collect();
    // The old `recreated` must read Deleted before the new one's Added.
    let pos = |n: &str, c: &str| seen.iter().position(|(a, b)| a == n && b == c).unwrap();
    assert!(pos("recreated", "deleted") < pos("recreated", "added"));
    seen.sort();
    let expect = [
        ("born", "added"),
        ("changes", "modified"),
        ("goes", "deleted"),
        ("recreated", "added"),
        ("recreated", "deleted"),
    ];
    let expect: Vec<(String, String)> = expect
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(seen, expect);
    let goes = after.iter().find(|e| e["k8sname"] == "goes").unwrap();
    for f in ["apiVersion", "kind"] {
        assert!(
            goes["data"][f].is_string(),
            "the synthetic Deleted carries the stored identity"
        );
    }
    assert_eq!(goes["data"]["metadata"]["name"], "goes");
    assert_eq!(check_duplicates(&events), 0);
    let streamed = kw.log_messages(
        2,
        "the server streams snapshots (sendInitialEvents): no paginated lists",
    );
    match initial_list {
        "auto" => assert_eq!(
            streamed.len(),
            1,
            "the relist was streamed: {:#?}",
            kw.logs(2)
        ),
        _ => assert!(streamed.is_empty(), "paginate never streams"),
    }
}
