//! The core issue's behaviours, against the real kube-apiserver of `dev/testenv`: the real
//! `kubewire` binary runs with a file sink, and the tests read what it published.

mod common;
mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use harness::{
    REPLAY_WINDOW, Scene, Server, Sightings, assert_replay_bounded, change, check_duplicates,
    cluster_configmaps, configmap, object_events, replay,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// Core behaviours that must hold on both API servers of the test environment: the
/// deterministic one and the one configured as production clusters are (watch cache,
/// bookmarks, priority and fairness). Each becomes two tests, `<name>` and
/// `on_realistic_server::<name>`.
macro_rules! on_both_servers {
    ($($name:ident => $body:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                $body(Server::Deterministic).await
            }
        )*
        mod on_realistic_server {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    $body(Server::Realistic).await
                }
            )*
        }
    };
}

on_both_servers!(
    configmap_changes_in_two_namespaces_yield_exact_ordered_events => configmap_changes_in_two_namespaces_yield_exact_ordered_events_on,
    restart_within_watch_window_resumes_without_list_and_publishes_each_change_once => restart_within_watch_window_resumes_without_list_and_publishes_each_change_once_on,
    custom_resources_are_watched_by_kind_name => custom_resources_are_watched_by_kind_name_on,
    a_crd_installed_after_start_is_streamed_without_a_restart => a_crd_installed_after_start_is_streamed_without_a_restart_on,
    label_selector_transitions_yield_deleted_and_added => label_selector_transitions_yield_deleted_and_added_on,
    kill9_during_a_burst_then_restart_replays_to_the_cluster_state => kill9_during_a_burst_then_restart_replays_to_the_cluster_state_on,
);

fn merge(v: serde_json::Value) -> Patch<serde_json::Value> {
    Patch::Merge(v)
}

async fn configmap_changes_in_two_namespaces_yield_exact_ordered_events_on(server: Server) {
    let s = Scene::on("kw-order", server).await;
    let ns = [s.ns.clone(), s.fresh_namespace("kw-order").await];
    let kw = s.kubewire().watch("configmaps", &[&ns[0], &ns[1]]).start();
    kw.ready_streams(60, 2).await;

    let a: Api<ConfigMap> = Api::namespaced(s.client.clone(), &ns[0]);
    let b: Api<ConfigMap> = Api::namespaced(s.client.clone(), &ns[1]);
    let pp = PostParams::default();
    let c1 = a.create(&pp, &configmap("one", &[], "1")).await.unwrap();
    let c2 = b.create(&pp, &configmap("two", &[], "1")).await.unwrap();
    let c1m = a
        .patch(
            "one",
            &PatchParams::default(),
            &merge(json!({"data": {"value": "2"}})),
        )
        .await
        .unwrap();
    b.delete("two", &DeleteParams::default()).await.unwrap();
    let c2d = b.get_opt("two").await.unwrap();
    assert!(c2d.is_none());

    let events = kw
        .wait_events(60, "4 object events", |ev| ev.len() >= 4)
        .await;
    assert_eq!(events.len(), 4, "exactly four events: {events:#?}");
    let one = object_events(&events, &ns[0], "one");
    let two = object_events(&events, &ns[1], "two");
    assert_eq!(
        one.iter().map(|e| change(e)).collect::<Vec<_>>(),
        ["added", "modified"]
    );
    assert_eq!(
        two.iter().map(|e| change(e)).collect::<Vec<_>>(),
        ["added", "deleted"]
    );

    let uid1 = c1.metadata.uid.clone().unwrap();
    let uid2 = c2.metadata.uid.clone().unwrap();
    let rv = |c: &ConfigMap| c.metadata.resource_version.clone().unwrap();
    assert_eq!(one[0]["id"], format!("default/{uid1}/{}/added", rv(&c1)));
    assert_eq!(
        one[1]["id"],
        format!("default/{uid1}/{}/modified", rv(&c1m))
    );
    assert_eq!(two[0]["id"], format!("default/{uid2}/{}/added", rv(&c2)));
    assert_eq!(two[1]["k8suid"], uid2.as_str());
    for e in &events {
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["kubewireorigin"], "watch");
        assert_eq!(e["source"], "kubewire/default");
        assert_eq!(e["k8skind"], "ConfigMap");
        assert!(e["traceparent"].as_str().unwrap().starts_with("00-"));
        assert!(
            e["data"]["metadata"].get("managedFields").is_none(),
            "managedFields stripped"
        );
    }
    assert_eq!(one[1]["data"]["data"]["value"], "2");
}

async fn restart_within_watch_window_resumes_without_list_and_publishes_each_change_once_on(
    server: Server,
) {
    let s = Scene::on("kw-resume", server).await;
    let api = s.configmaps();
    let pp = PostParams::default();
    api.create(&pp, &configmap("keep", &[], "1")).await.unwrap();
    api.create(&pp, &configmap("gone", &[], "1")).await.unwrap();

    let mut kw = s.kubewire().watch("configmaps", &[&s.ns]).start();
    kw.wait_events(60, "initial snapshot of 2", |ev| ev.len() >= 2)
        .await;
    assert!(kw.stop().await.success(), "SIGTERM exits 0");

    api.patch(
        "keep",
        &PatchParams::default(),
        &merge(json!({"data": {"value": "2"}})),
    )
    .await
    .unwrap();
    api.delete("gone", &DeleteParams::default()).await.unwrap();
    api.create(&pp, &configmap("new", &[], "1")).await.unwrap();

    kw.restart();
    let events = kw
        .wait_events(60, "3 changes after restart", |ev| ev.len() >= 5)
        .await;
    kw.wait_log(30, 2, "resuming from checkpoint", 1).await;
    assert!(
        kw.log_messages(2, "listing").is_empty(),
        "the resumed run made no LIST: {:#?}",
        kw.logs(2)
    );
    assert_eq!(
        kw.log_messages(1, "listing").len(),
        1,
        "the first run listed once"
    );

    let after: Vec<_> = events[2..]
        .iter()
        .map(|e| (e["k8sname"].as_str().unwrap(), change(e)))
        .collect();
    assert_eq!(
        after,
        [("keep", "modified"), ("gone", "deleted"), ("new", "added")]
    );
    assert!(events[2..].iter().all(|e| e["kubewireorigin"] == "watch"));
    assert_eq!(check_duplicates(&events), 0, "every change published once");
    assert_eq!(
        replay(&events),
        cluster_configmaps(&s.client, &[&s.ns]).await
    );
}

async fn custom_resources_are_watched_by_kind_name_on(server: Server) {
    let s = Scene::on("kw-crd", server).await;
    let group = format!("{}.kubewire.test", common::unique_name("g"));
    let ar = harness::install_crd(&s.client, &group, "gadgets", "Gadget").await;
    let kw = s
        .kubewire()
        .watch(&format!("Gadget.v1.{group}"), &[&s.ns])
        .start();
    kw.ready(60).await;
    let gadgets: Api<kube::api::DynamicObject> = Api::namespaced_with(s.client.clone(), &s.ns, &ar);
    let obj: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{group}/v1"), "kind": "Gadget",
        "metadata": {"name": "g1"}, "spec": {"size": 3}
    }))
    .unwrap();
    gadgets.create(&PostParams::default(), &obj).await.unwrap();
    let events = kw
        .wait_events(60, "the Gadget's Added", |ev| !ev.is_empty())
        .await;
    assert_eq!(change(&events[0]), "added");
    assert_eq!(events[0]["k8skind"], "Gadget");
    assert_eq!(events[0]["k8sgroup"], group.as_str());
    assert_eq!(events[0]["data"]["spec"]["size"], 3);
}

/// Issue "Real clusters", item 5: GitOps applies CRDs and workloads in any order. A resource
/// whose CRD is installed after kubewire started waits (named in `/readyz`, `/healthz` 200)
/// and is streamed once discovery finds it, without a restart.
async fn a_crd_installed_after_start_is_streamed_without_a_restart_on(server: Server) {
    let s = Scene::on("kw-crd-late", server).await;
    let group = format!("{}.kubewire.test", common::unique_name("late"));
    let kw = s
        .kubewire()
        .watch("configmaps", &[&s.ns])
        .watch(&format!("Widget.v1.{group}"), &[&s.ns])
        .extra_yaml("watch:\n  discoveryIntervalSeconds: 1\n")
        .start();
    let admin = kw.admin().await;
    let waiting = format!("resource default/Widget.v1.{group} (resources[1]): waiting: ");
    common::eventually(60, "/readyz to name the waiting resource", || async {
        let (code, body) = harness::http_get(&admin, "/readyz").await;
        (code == 503 && body.contains(&waiting)).then_some(())
    })
    .await;
    assert_eq!(
        harness::http_get(&admin, "/healthz").await,
        (200, "ok\n".to_owned())
    );

    let ar = harness::install_crd(&s.client, &group, "widgets", "Widget").await;
    kw.ready_streams(60, 2).await;
    let widgets: Api<kube::api::DynamicObject> = Api::namespaced_with(s.client.clone(), &s.ns, &ar);
    let obj: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{group}/v1"), "kind": "Widget",
        "metadata": {"name": "w1"}, "spec": {"size": 5}
    }))
    .unwrap();
    widgets.create(&PostParams::default(), &obj).await.unwrap();
    let events = kw
        .wait_events(60, "the Widget's Added", |ev| {
            ev.iter().any(|e| e["k8skind"] == "Widget")
        })
        .await;
    let w: Vec<_> = events.iter().filter(|e| e["k8skind"] == "Widget").collect();
    assert_eq!(change(w[0]), "added");
    assert_eq!(w[0]["data"]["spec"]["size"], 5);
    assert_eq!(kw.runs(), 1, "no restart");
    assert_eq!(
        kw.log_messages(1, "resource not watched").len(),
        1,
        "said once, not once per discovery"
    );
}

async fn label_selector_transitions_yield_deleted_and_added_on(server: Server) {
    let s = Scene::on("kw-label", server).await;
    let kw = s
        .kubewire()
        .watch("configmaps", &[&s.ns])
        .with("labelSelector: tier=front")
        .start();
    kw.ready(60).await;
    let api = s.configmaps();
    api.create(
        &PostParams::default(),
        &configmap("sel", &[("tier", "front")], "1"),
    )
    .await
    .unwrap();
    api.create(
        &PostParams::default(),
        &configmap("other", &[("tier", "back")], "1"),
    )
    .await
    .unwrap();
    kw.wait_events(60, "Added of the matching object", |ev| !ev.is_empty())
        .await;
    let relabel = |tier: &str| merge(json!({"metadata": {"labels": {"tier": tier}}}));
    api.patch("sel", &PatchParams::default(), &relabel("back"))
        .await
        .unwrap();
    kw.wait_events(60, "Deleted when it stops matching", |ev| ev.len() >= 2)
        .await;
    api.patch("sel", &PatchParams::default(), &relabel("front"))
        .await
        .unwrap();
    let events = kw
        .wait_events(60, "Added when it matches again", |ev| ev.len() >= 3)
        .await;
    let seq: Vec<_> = events
        .iter()
        .map(|e| (e["k8sname"].as_str().unwrap(), change(e)))
        .collect();
    assert_eq!(
        seq,
        [("sel", "added"), ("sel", "deleted"), ("sel", "added")]
    );
}

/// A kubeconfig for an identity that may read only the scene namespace's ConfigMaps.
async fn configmaps_only(s: &Scene) -> std::path::PathBuf {
    harness::limited_kubeconfig(
        s,
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}]),
    )
    .await
}

#[tokio::test]
async fn forbidden_resource_is_named_and_the_others_keep_flowing() {
    let s = Scene::new("kw-rbac").await;
    let (client, ns) = (&s.client, &s.ns);
    let pp = PostParams::default();
    let kubeconfig = configmaps_only(&s).await;

    let kw = s
        .kubewire()
        .watch("configmaps", &[ns])
        .watch("secrets", &[ns])
        .cluster("limited", &kubeconfig)
        .start();
    kw.wait_log(60, 1, "stream failing; retrying with backoff", 1)
        .await;
    let failing = kw.log_messages(1, "stream failing; retrying with backoff");
    let err = failing[0]["error"].as_str().unwrap();
    assert!(
        err.contains(&format!("secrets in namespace \"{ns}\"")),
        "names the resource: {err}"
    );
    assert!(
        err.contains("403") && err.contains("Forbidden"),
        "says forbidden: {err}"
    );

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    cms.create(&pp, &configmap("flows", &[], "1"))
        .await
        .unwrap();
    let events = kw
        .wait_events(60, "configmap event despite the forbidden secrets", |ev| {
            !ev.is_empty()
        })
        .await;
    assert_eq!(events[0]["k8sname"], "flows");
    assert_eq!(events[0]["source"], "kubewire/limited");
}

#[tokio::test]
async fn check_config_reports_every_problem_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "resources:\n  - resource: deploymnts\n  - resource: configmaps\n    namespaces: [Not_A_Namespace]\n    events: []\n  - resource: 'a/b/c/d'\nsink:\n  type: file\n  path: ''\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubewire"))
        .args(["check-config", "--config"])
        .arg(&bad)
        .env("KUBECONFIG", common::var("KUBECONFIG"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for expected in [
        r#"resources[0].resource: unknown resource "deploymnts" (did you mean deployments.apps?)"#,
        "resources[1].namespaces[0]",
        "resources[1].events",
        "resources[2].resource",
        "sink.path",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[[resources]]\nresource = \"apps/v1/deployments\"\n[[resources]]\nresource = \"Deployment.v1.apps\"\nnamespaces = [\"default\"]\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubewire"))
        .args(["check-config", "--config"])
        .arg(&good)
        .env("KUBECONFIG", common::var("KUBECONFIG"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn kill9_during_a_burst_then_restart_replays_to_the_cluster_state_on(server: Server) {
    let s = Scene::on("kw-kill", server).await;
    let mut kw = s.kubewire().watch("configmaps", &[&s.ns]).start();
    kw.ready(60).await;
    let api = s.configmaps();
    // The writer runs until told to stop, so the kill lands in the middle of its burst.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let api = api.clone();
        let stop = stop.clone();
        async move {
            let pp = PostParams::default();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("cm-{}", i % 40);
                match i % 5 {
                    0..=2 => {
                        if api
                            .create(&pp, &configmap(&name, &[], &i.to_string()))
                            .await
                            .is_err()
                        {
                            api.patch(
                                &name,
                                &PatchParams::default(),
                                &merge(json!({"data": {"value": i.to_string()}})),
                            )
                            .await
                            .unwrap();
                        }
                    }
                    3 => {
                        let _ = api
                            .patch(
                                &name,
                                &PatchParams::default(),
                                &merge(json!({"data": {"value": i.to_string()}})),
                            )
                            .await;
                    }
                    _ => {
                        let _ = api.delete(&name, &DeleteParams::default()).await;
                    }
                }
                i += 1;
            }
            i
        }
    });
    // Watch the output until enough events have been downstream for longer than the replay
    // window: those are the ones the kill must not replay.
    let mut seen = Sightings::default();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ev = kw.events();
        seen.saw(ev.iter().map(|e| e["id"].as_str().unwrap()));
        if seen.older_than(REPLAY_WINDOW) >= 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not within 90s: 20 events downstream for {REPLAY_WINDOW:?} (output in {})",
            s.dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!writer.is_finished(), "the kill must land during the burst");
    let killed_at = Instant::now();
    kw.kill9();
    let before_restart = kw.events().len();
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    kw.restart();
    kw.wait_log(60, 2, "resuming from checkpoint", 1).await;
    let cluster = cluster_configmaps(&s.client, &[&s.ns]).await;
    let events = kw
        .wait_events(90, "replay equals the cluster", |ev| replay(ev) == cluster)
        .await;
    // identical copies (same id, same content) ...
    let dups = check_duplicates(&events);
    // ... and only of what was in flight or acknowledged after the last commit
    seen.saw(events.iter().map(|e| e["id"].as_str().unwrap()));
    let replayed = assert_replay_bounded(
        events.iter().map(|e| e["id"].as_str().unwrap()),
        &seen,
        killed_at,
    );
    assert_eq!(replayed, dups);
    eprintln!(
        "kill -9 after {writes} writes: {before_restart} events before the restart, {} in \
         all, {dups} duplicates",
        events.len()
    );
}

#[tokio::test]
async fn secret_values_never_appear_in_the_output_by_default() {
    let s = Scene::new("kw-secret").await;
    let kw = s.kubewire().watch("secrets", &[&s.ns]).start();
    kw.ready(60).await;
    let api: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    let plain = "hunter2-very-secret-value";
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "s", "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": format!("{{\"stringData\":{{\"b\":\"{plain}\"}}}}")
        }},
        "data": {"a": base64(plain.as_bytes())},
        "stringData": {"b": plain}
    }))
    .unwrap();
    api.create(&PostParams::default(), &secret).await.unwrap();
    api.patch(
        "s",
        &PatchParams::default(),
        &merge(json!({"stringData": {"b": "changed-secret"}})),
    )
    .await
    .unwrap();
    let events = kw
        .wait_events(60, "secret added and modified", |ev| ev.len() >= 2)
        .await;
    let raw = kw.output();
    assert!(!raw.contains(plain), "plain value leaked");
    assert!(
        !raw.contains(&base64(plain.as_bytes())),
        "base64 value leaked"
    );
    assert!(!raw.contains("changed-secret") && !raw.contains(&base64(b"changed-secret")));
    let a0 = events[0]["data"]["data"]["a"].as_str().unwrap();
    let b0 = events[0]["data"]["data"]["b"].as_str().unwrap();
    let b1 = events[1]["data"]["data"]["b"].as_str().unwrap();
    assert!(a0.starts_with("kubewire-redacted:"), "{a0}");
    assert_ne!(b0, b1, "the marker shows that the value changed");
    assert_eq!(
        events[0]["data"]["data"]["a"], events[1]["data"]["data"]["a"],
        "unchanged value, same marker"
    );
}

fn base64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Issue "Real clusters", item 5: `resource: "*"` streams every resource the identity may list
/// and watch, minus the default excludes (Leases, Events), and picks up a CRD installed later.
#[tokio::test]
async fn all_resources_stream_every_kind_but_the_excludes_and_later_crds() {
    let s = Scene::new("kw-all").await;
    let group = format!("{}.kubewire.test", common::unique_name("all"));
    let kw = s
        .kubewire()
        .watch("\"*\"", &[&s.ns])
        .extra_yaml("watch:\n  discoveryIntervalSeconds: 1\n")
        .start();
    kw.ready(120).await;
    s.configmaps()
        .create(&PostParams::default(), &configmap("cm-all", &[], "1"))
        .await
        .unwrap();
    let ar = harness::install_crd(&s.client, &group, "gizmos", "Gizmo").await;
    let gizmos: Api<kube::api::DynamicObject> = Api::namespaced_with(s.client.clone(), &s.ns, &ar);
    let obj: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{group}/v1"), "kind": "Gizmo", "metadata": {"name": "z1"}
    }))
    .unwrap();
    common::eventually(60, "the new CRD to be served", || async {
        gizmos.create(&PostParams::default(), &obj).await.ok()
    })
    .await;
    kw.wait_events(60, "the ConfigMap and the Gizmo of the later CRD", |ev| {
        let named = |kind: &str, name: &str| {
            ev.iter().any(|e| {
                e["k8skind"] == kind && e["k8sname"] == name && e["k8snamespace"] == s.ns.as_str()
            })
        };
        named("ConfigMap", "cm-all") && named("Gizmo", "z1")
    })
    .await;
    let started: Vec<String> = kw
        .log_messages(1, "stream started")
        .iter()
        .map(|r| r["stream"].as_str().unwrap_or_default().to_owned())
        .collect();
    for expected in [
        format!("default/configmaps in {}", s.ns),
        format!("default/gizmos.{group} in {}", s.ns),
        "default/namespaces".to_owned(),
    ] {
        assert!(started.contains(&expected), "{expected} in {started:#?}");
    }
    for excluded in ["leases.coordination.k8s.io", "/events"] {
        assert!(
            !started.iter().any(|st| st.contains(excluded)),
            "{excluded} is excluded by default: {started:#?}"
        );
    }
    assert_eq!(kw.runs(), 1);
}

/// `resource: "*"` under an identity that may watch only ConfigMaps in one namespace: that
/// one stream, every other resource skipped (not a failing stream), and ready.
#[tokio::test]
async fn all_resources_under_a_limited_identity_are_only_what_it_may_watch() {
    let s = Scene::new("kw-all-rbac").await;
    let kubeconfig = configmaps_only(&s).await;
    let kw = s
        .kubewire()
        .watch("\"*\"", &[&s.ns])
        .cluster("limited", &kubeconfig)
        .start();
    kw.ready_streams(60, 1).await;
    let started = kw.log_messages(1, "stream started");
    assert_eq!(started.len(), 1, "{started:#?}");
    assert_eq!(
        started[0]["stream"],
        format!("limited/configmaps in {}", s.ns).as_str()
    );
    assert!(
        kw.log_messages(1, "not permitted to list and watch: skipped")
            .iter()
            .any(|r| r["resource"] == "secrets"),
        "{:#?}",
        kw.logs(1)
    );
    assert!(
        kw.log_messages(1, "stream failing; retrying with backoff")
            .is_empty()
    );
}

/// Issue "Real clusters", item 5: a CRD deleted while it is watched pauses its stream — named
/// in `/readyz`, `/healthz` 200, the checkpoint kept — and the stream resumes when the CRD
/// returns, with the deletes of the objects that went with it.
#[tokio::test]
async fn a_crd_deleted_while_watched_pauses_its_stream_and_resumes_when_it_returns() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let s = Scene::new("kw-crd-gone").await;
    let group = format!("{}.kubewire.test", common::unique_name("gone"));
    let crd_name = format!("doohickeys.{group}");
    let ar = harness::install_crd(&s.client, &group, "doohickeys", "Doohickey").await;
    let kw = s
        .kubewire()
        .watch(&format!("Doohickey.v1.{group}"), &[&s.ns])
        .extra_yaml("watch:\n  backoffMaxMs: 1000\n")
        .start();
    kw.ready(60).await;
    let objects = |ar: &kube::discovery::ApiResource| {
        Api::<kube::api::DynamicObject>::namespaced_with(s.client.clone(), &s.ns, ar)
    };
    let object = |name: &str| -> kube::api::DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": format!("{group}/v1"), "kind": "Doohickey", "metadata": {"name": name}
        }))
        .unwrap()
    };
    objects(&ar)
        .create(&PostParams::default(), &object("before"))
        .await
        .unwrap();
    kw.wait_events(60, "the first object", |ev| {
        ev.iter().any(|e| e["k8sname"] == "before")
    })
    .await;

    let crds: Api<CustomResourceDefinition> = Api::all(s.client.clone());
    crds.delete(&crd_name, &DeleteParams::default())
        .await
        .unwrap();
    let admin = kw.admin().await;
    let paused = format!(
        "paused: doohickeys.{group} in namespace \"{}\" is not served any more",
        s.ns
    );
    common::eventually(60, "/readyz to say the stream is paused", || async {
        let (code, body) = harness::http_get(&admin, "/readyz").await;
        (code == 503 && body.contains(&paused)).then_some(())
    })
    .await;
    assert_eq!(harness::http_get(&admin, "/healthz").await.0, 200);
    common::eventually(60, "the CRD gone", || async {
        crds.get_opt(&crd_name)
            .await
            .ok()
            .flatten()
            .is_none()
            .then_some(())
    })
    .await;

    let ar = harness::install_crd(&s.client, &group, "doohickeys", "Doohickey").await;
    common::eventually(60, "the returned CRD to take objects", || async {
        objects(&ar)
            .create(&PostParams::default(), &object("after"))
            .await
            .ok()
    })
    .await;
    let events = kw
        .wait_events(
            60,
            "the object after the CRD returned, and the delete of the one before",
            |ev| {
                let has =
                    |name: &str, c: &str| ev.iter().any(|e| e["k8sname"] == name && change(e) == c);
                has("after", "added") && has("before", "deleted")
            },
        )
        .await;
    assert_eq!(kw.runs(), 1, "no restart");
    assert_eq!(check_duplicates(&events), 0);
    kw.ready(60).await;
}
