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

/// Removes the test's FlowSchema and PriorityLevelConfiguration however the test ends.
struct Unsqueeze(Vec<String>);

impl Drop for Unsqueeze {
    fn drop(&mut self) {
        // `kubectl` from the test env (on PATH); never panic in drop.
        for what in &self.0 {
            let _ = std::process::Command::new("kubectl")
                .args([
                    "--kubeconfig",
                    &common::var("KUBECONFIG_REAL"),
                    "delete",
                    "--ignore-not-found",
                ])
                .args(what.split(' '))
                .output();
        }
    }
}

/// Issue "Real clusters", item 4: under priority and fairness a squeezed identity is
/// answered 429 with Retry-After; kubewire waits as told and sends again (lists, discovery,
/// watch starts), counts each (`kubewire_api_throttled_total`), and every stream still syncs.
#[tokio::test]
async fn a_throttled_identity_waits_its_turn_and_every_stream_syncs() {
    use k8s_openapi::api::flowcontrol::v1::{FlowSchema, PriorityLevelConfiguration};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let s = Scene::on("kw-squeeze", Server::Realistic).await;
    let name = s.ns.clone();
    let _cleanup = Unsqueeze(vec![
        format!("flowschemas.flowcontrol.apiserver.k8s.io {name}"),
        format!("prioritylevelconfigurations.flowcontrol.apiserver.k8s.io {name}"),
        format!("clusterrolebindings.rbac.authorization.k8s.io {name}"),
        format!("clusterroles.rbac.authorization.k8s.io {name}"),
    ]);
    let pp = PostParams::default();
    let kubeconfig = harness::service_account_kubeconfig(&s).await;
    // Read everything, so that `resource: "*"` starts many streams at once.
    Api::<ClusterRole>::all(s.client.clone())
        .create(&pp, &serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "watch"]}]
        })).unwrap())
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(s.client.clone())
        .create(&pp, &serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": "kubewire", "namespace": s.ns}]
        })).unwrap())
        .await
        .unwrap();
    // Its own priority level, with the fewest seats and no queue: beyond them, 429.
    Api::<PriorityLevelConfiguration>::all(s.client.clone())
        .create(
            &pp,
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "spec": {"type": "Limited", "limited": {
                    "nominalConcurrencyShares": 1, "lendablePercent": 0,
                    "limitResponse": {"type": "Reject"}}}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let flow_schema = Api::<FlowSchema>::all(s.client.clone())
        .create(
            &pp,
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "spec": {
                    "priorityLevelConfiguration": {"name": name},
                    "matchingPrecedence": 100,
                    "distinguisherMethod": {"type": "ByUser"},
                    "rules": [{
                        "subjects": [{"kind": "ServiceAccount",
                            "serviceAccount": {"name": "kubewire", "namespace": s.ns}}],
                        "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                            "namespaces": ["*"], "clusterScope": true}],
                        "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]
                    }]
                }
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    // The API server applies new FlowSchemas asynchronously: wait until the identity's
    // requests are classified by this one (its UID in the response header).
    let uid = flow_schema.metadata.uid.expect("a uid");
    let token = std::fs::read_to_string(&kubeconfig)
        .unwrap()
        .split("token: '")
        .nth(1)
        .and_then(|t| t.split('\'').next())
        .expect("the token in the kubeconfig")
        .to_owned();
    common::eventually(60, "the FlowSchema in effect for the identity", || async {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-D", "-", "--cacert"])
            .arg(common::var("TESTENV_CA_FILE"))
            .arg("-H")
            .arg(format!("Authorization: Bearer {token}"))
            .arg(format!("{}/api", common::var("TESTENV_APISERVER_REAL_URL")))
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .to_ascii_lowercase()
            .contains(&format!("x-kubernetes-pf-flowschema-uid: {uid}"))
            .then_some(())
    })
    .await;

    // Whether a start is throttled depends on how many of its requests overlap: start
    // afresh (a new snapshot each time) until one is, five times at most.
    let mut throttled = 0u64;
    for attempt in 1..=5 {
        let dir = tempfile::tempdir().unwrap();
        let kw = harness::Kubewire::builder(dir.path())
            .watch("\"*\"", &[])
            .extra_yaml("watch:\n  initialList: paginate\n  pageSize: 5\n")
            .cluster("squeezed", &kubeconfig)
            .start();
        kw.ready(180).await;
        let admin = kw.admin().await;
        let (_, metrics) = harness::http_get(&admin, "/metrics").await;
        throttled = metrics
            .lines()
            .find(|l| l.starts_with("kubewire_api_throttled_total{cluster=\"squeezed\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no throttled counter in\n{metrics}"));
        eprintln!("attempt {attempt}: {throttled} requests answered 429, every stream synced");
        if throttled > 0 {
            break;
        }
    }
    assert!(throttled > 0, "the squeezed identity was never throttled");
}
