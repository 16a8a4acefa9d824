//! Regression tests for the bugs the fault suite (`dev/faults`, docs/reliability.md) found, each
//! reduced to a deterministic sequence against the real API server with the file sink. Each
//! test is named after the bug it pins.

mod common;
mod harness;

use harness::{Kubewire, Scene, change, configmap, object_events};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// Replaces the harness's checkpoint interval in the kubewire's config (takes effect at the
/// next restart), so that nothing is committed between two points of a test.
fn set_commit_interval(kw: &Kubewire, ms: u64) {
    let path = kw.dir.join("config.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = replace_once(
        &text,
        "\n  commitIntervalMs: 100\n",
        &format!("\n  commitIntervalMs: {ms}\n"),
    );
    std::fs::write(&path, text).unwrap();
}

/// `text` with its one occurrence of `from` replaced by `to`; panics when `from` occurs
/// not exactly once (an edit that changed nothing would leave the test proving nothing).
fn replace_once(text: &str, from: &str, to: &str) -> String {
    let n = text.matches(from).count();
    assert_eq!(
        n, 1,
        "expected {from:?} exactly once, found it {n} times in:\n{text}"
    );
    text.replacen(from, to, 1)
}

fn rv(e: &Value) -> u64 {
    e["k8sresourceversion"].as_str().unwrap().parse().unwrap()
}

/// Starts kubewire on `ns`'s ConfigMaps, waits for `object` in the snapshot, stops it cleanly
/// (the checkpoint is committed), and restarts it with commits pushed out of the test's
/// reach: whatever it publishes from now on is downstream but not in the committed index.
async fn committed_then_frozen(dir: &std::path::Path, ns: &str, object: &str) -> Kubewire {
    let mut kw = Kubewire::builder(dir).watch("configmaps", &[ns]).start();
    kw.wait_events(60, "the initial snapshot", |ev| {
        !object_events(ev, ns, object).is_empty()
    })
    .await;
    assert!(kw.stop().await.success());
    set_commit_interval(&kw, 600_000);
    kw.restart();
    kw.wait_log(30, 2, "resuming from checkpoint", 1).await;
    kw
}

/// After a restart that must relist (run 3): every event, once the marker and as many events
/// as it announces are out.
async fn after_relist(kw: &Kubewire) -> Vec<Value> {
    kw.wait_log(60, 3, "relisted", 1).await;
    kw.wait_events(30, "the relist marker and its events", |ev| {
        let Some(pos) = ev
            .iter()
            .rposition(|e| e["type"] == "io.kubewire.stream.relisted")
        else {
            return false;
        };
        let m = &ev[pos]["data"];
        let announced = m["added"].as_u64().unwrap()
            + m["modified"].as_u64().unwrap()
            + m["deleted"].as_u64().unwrap();
        ev.len() - pos > announced as usize
    })
    .await
}

/// Bug (found by the `compaction` scenario): after a crash, the checkpoint's uid index only
/// knows the versions that were acknowledged *and committed*; events published after the last
/// commit are downstream but not in the index. When the restart then has to relist (410 Gone,
/// etcd compacted), the relist diffs against that stale index:
///
/// - an object created after the last commit and deleted while kubewire was down gets no
///   `deleted` at all: consumers keep it forever;
/// - an object modified after the last commit and then deleted gets a `deleted` carrying the
///   older, committed resourceVersion: its versions go backwards downstream.
#[tokio::test]
async fn regression_relist_after_kill9_uses_a_stale_index_losing_deletes_and_reordering() {
    let s = Scene::new("kw-stale-index").await;
    let (client, dir, ns) = (&s.client, &s.dir, &s.ns);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let pp = PostParams::default();
    api.create(&pp, &configmap("modified-then-deleted", &[], "1"))
        .await
        .unwrap();
    // index = {modified-then-deleted @ rv1}, and nothing committed from here on
    let mut kw = committed_then_frozen(dir.path(), ns, "modified-then-deleted").await;
    let modified = api
        .patch(
            "modified-then-deleted",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"value": "2"}})),
        )
        .await
        .unwrap();
    let created = api
        .create(&pp, &configmap("created-then-deleted", &[], "1"))
        .await
        .unwrap();
    let rv2 = modified.metadata.resource_version.clone().unwrap();
    kw.wait_events(60, "the modification and the creation published", |ev| {
        object_events(ev, ns, "modified-then-deleted")
            .iter()
            .any(|e| e["k8sresourceversion"] == rv2.as_str())
            && !object_events(ev, ns, "created-then-deleted").is_empty()
    })
    .await;
    // both are downstream; the crash loses only the (uncommitted) checkpoint progress
    kw.kill9();
    api.delete("modified-then-deleted", &Default::default())
        .await
        .unwrap();
    api.delete("created-then-deleted", &Default::default())
        .await
        .unwrap();
    common::testenv(&["compact"]); // the resume point is gone: the restart must relist
    kw.restart();
    let events = after_relist(&kw).await;

    let mut problems = Vec::new();
    let created_events = object_events(&events, ns, "created-then-deleted");
    if created_events.last().map(|e| change(e)) != Some("deleted") {
        problems.push(format!(
            "created-then-deleted (uid {:?}) was published as added, then deleted while \
             kubewire was down; the relist did not publish its deletion: the stream ends with {:?}",
            created.metadata.uid,
            created_events
                .iter()
                .map(|e| (change(e), rv(e), e["kubewireorigin"].clone()))
                .collect::<Vec<_>>()
        ));
    }
    let modified_events = object_events(&events, ns, "modified-then-deleted");
    let versions: Vec<(&str, u64, Value)> = modified_events
        .iter()
        .map(|e| (change(e), rv(e), e["kubewireorigin"].clone()))
        .collect();
    if !versions.windows(2).all(|w| w[0].1 <= w[1].1) {
        problems.push(format!(
            "modified-then-deleted's resourceVersions go backwards downstream: {versions:?}"
        ));
    }
    if versions.last().map(|v| v.0) != Some("deleted") {
        problems.push(format!(
            "modified-then-deleted does not end deleted: {versions:?}"
        ));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Bug (found by the `compaction` scenario after the write-ahead fix): an object created
/// *and then modified* after the last checkpoint commit is downstream as `added@v1`,
/// `modified@v2`. After a kill -9 and a compaction, the relist found it in the list at `v2` but
/// not in the (committed) index and published `added@v2`: a second event at the same version
/// with another id and type, which consumers read as a version going backwards (and a
/// compacted topic as the object re-created). The relist must repeat exactly what may be
/// downstream: `modified@v2`, the same id.
#[tokio::test]
async fn regression_relist_after_kill9_repeats_an_in_doubt_modified_as_added() {
    let s = Scene::new("kw-in-doubt-type").await;
    let (client, dir, ns) = (&s.client, &s.dir, &s.ns);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let pp = PostParams::default();
    api.create(&pp, &configmap("committed", &[], "1"))
        .await
        .unwrap();
    let mut kw = committed_then_frozen(dir.path(), ns, "committed").await;
    api.create(&pp, &configmap("created-then-modified", &[], "1"))
        .await
        .unwrap();
    let modified = api
        .patch(
            "created-then-modified",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"value": "2"}})),
        )
        .await
        .unwrap();
    let rv2 = modified.metadata.resource_version.clone().unwrap();
    kw.wait_events(60, "the creation and the modification published", |ev| {
        object_events(ev, ns, "created-then-modified")
            .iter()
            .any(|e| e["k8sresourceversion"] == rv2.as_str())
    })
    .await;
    kw.kill9();
    common::testenv(&["compact"]); // the resume point is gone: the restart must relist
    kw.restart();
    let events = after_relist(&kw).await;
    let seen: Vec<(String, &str, Value)> = object_events(&events, ns, "created-then-modified")
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                change(e),
                e["kubewireorigin"].clone(),
            )
        })
        .collect();
    let at_rv2: Vec<&(String, &str, Value)> = seen
        .iter()
        .filter(|(id, ..)| id.contains(&format!("/{rv2}/")))
        .collect();
    assert!(
        at_rv2.len() >= 2 && at_rv2.iter().any(|(.., o)| o == "relist"),
        "the relist repeats the in-doubt version: {seen:?}"
    );
    assert!(
        at_rv2
            .iter()
            .all(|(id, c, _)| *c == "modified" && *id == at_rv2[0].0),
        "every event at {rv2} is the same modified event (same id): {seen:?}"
    );
}

/// Bug (found by the bad-input CRD test): a resource named without a version
/// (`widgets.<group>`) is resolved to the group's preferred version at start-up, and the
/// version is part of the stream's identity. When a CRD gains a new preferred (storage)
/// version while kubewire is down, the restart starts a *new* stream from scratch: every object
/// is published again as `added` (origin `initial`), and objects deleted while kubewire was
/// down are never published as `deleted` (the old stream's index is orphaned): consumers keep
/// them forever.
#[tokio::test]
async fn regression_crd_preferred_version_change_across_restart_loses_deletes() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let s = Scene::new("kw-crd-pref").await;
    let (client, ns) = (&s.client, &s.ns);
    let group = format!("{}.kubewire.test", common::unique_name("p"));
    let crd_name = format!("widgets.{group}");
    let schema = json!({"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}});
    let version = |name: &str, storage: bool| json!({"name": name, "served": true, "storage": storage, "schema": schema});
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": crd_name},
        "spec": {"group": group, "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [version("v1", true)]}
    }))
    .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let served = |v: &'static str| {
        let crds = crds.clone();
        let crd_name = crd_name.clone();
        move || {
            let crds = crds.clone();
            let crd_name = crd_name.clone();
            async move {
                let c = crds.get(&crd_name).await.ok()?;
                let status = c.status?;
                let established = status
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                (established && status.stored_versions?.iter().any(|s| s == v)).then_some(())
            }
        }
    };
    common::eventually(30, "CRD v1 established", served("v1")).await;
    let ar = kube::discovery::ApiResource {
        group: group.clone(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    for name in ["stays", "goes"] {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": format!("{group}/v1"), "kind": "Widget", "metadata": {"name": name}
        }))
        .unwrap();
        widgets.create(&PostParams::default(), &obj).await.unwrap();
    }
    let mut kw = s
        .kubewire()
        .watch(&format!("widgets.{group}"), &[ns])
        .start();
    kw.wait_events(60, "both widgets' initial events", |ev| {
        !object_events(ev, ns, "goes").is_empty() && !object_events(ev, ns, "stays").is_empty()
    })
    .await;
    assert!(kw.stop().await.success());

    // while kubewire is down: v2 becomes the storage (and preferred) version, one is deleted
    crds.patch(
        &crd_name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"versions": [version("v1", false), version("v2", true)]}})),
    )
    .await
    .unwrap();
    common::eventually(30, "CRD v2 established", served("v2")).await;
    widgets.delete("goes", &Default::default()).await.unwrap();

    kw.restart();
    // however kubewire starts (resume, relist or a fresh list), within 30 s the stream must
    // say that 'goes' is gone (bounded polling of that condition)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let events = kw.events();
        let goes = object_events(&events, ns, "goes");
        if goes.last().map(|e| change(e)) == Some("deleted") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "'goes' was deleted while kubewire was down; 30 s after the restart the stream has \
             not said so. Events (type, name, version, origin): {:?}",
            events
                .iter()
                .map(|e| (
                    e["type"].clone(),
                    e["k8sname"].clone(),
                    e["k8sversion"].clone(),
                    e["kubewireorigin"].clone()
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let _ = crds.delete(&crd_name, &Default::default()).await;
}
