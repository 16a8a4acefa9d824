//! High availability: two kubewire replicas competing for one Lease on the real API server.
//! Only the holder publishes; when it is killed, the other takes over within the lease
//! duration and the combined output still converges to the cluster's state.

mod common;
mod harness;

use std::time::Instant;

use harness::{Kubewire, check_duplicates, cluster_configmaps, configmap, fresh_namespace, replay};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

const LEASE_SECONDS: u64 = 6;

fn replica(dir: &std::path::Path, ns: &str, identity: &str) -> Kubewire {
    Kubewire::start_with(
        dir,
        &format!("  - resource: configmaps\n    namespaces: [{ns}]\n"),
        &format!(
            "leaderElection:\n  enabled: true\n  leaseName: kubewire-test\n  leaseNamespace: {ns}\n  \
             identity: {identity}\n  leaseDurationSeconds: {LEASE_SECONDS}\n  renewGraceSeconds: 2\n"
        ),
    )
}

#[tokio::test]
async fn a_standby_takes_over_when_the_leader_is_killed_and_the_stream_converges() {
    let client = common::kube_client().await;
    let ns = fresh_namespace(&client, "kw-ha").await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let pp = PostParams::default();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());

    let mut a = replica(da.path(), &ns, "replica-a");
    a.wait_log(60, 1, "acquired leadership: starting streams", 1)
        .await;
    let b = replica(db.path(), &ns, "replica-b");
    b.wait_log(60, 1, "waiting for leadership", 1).await;

    for i in 0..20 {
        api.create(&pp, &configmap(&format!("cm-{i}"), &[], "1"))
            .await
            .unwrap();
    }
    a.wait_events(60, "the leader publishes the creates", |ev| ev.len() >= 20)
        .await;
    assert!(
        b.events().is_empty(),
        "the standby publishes nothing: {:?}",
        b.events()
    );
    assert!(
        b.log_messages(1, "listing").is_empty(),
        "the standby does not even list"
    );

    a.kill9();
    let killed = Instant::now();
    for i in 0..20 {
        let patch = Patch::Merge(json!({"data": {"value": "2"}}));
        api.patch(&format!("cm-{i}"), &PatchParams::default(), &patch)
            .await
            .unwrap();
    }
    b.wait_log(
        LEASE_SECONDS * 3,
        1,
        "acquired leadership: starting streams",
        1,
    )
    .await;
    let takeover = killed.elapsed();
    eprintln!("takeover after kill -9 of the leader: {takeover:?} (lease {LEASE_SECONDS}s)");
    assert!(takeover.as_secs() <= LEASE_SECONDS + 4, "took {takeover:?}");

    let cluster = cluster_configmaps(&client, &[&ns]).await;
    let combined = || {
        let mut all = a.events();
        all.extend(b.events());
        all
    };
    common::eventually(
        60,
        "leader A's output then B's replays to the cluster state",
        || async { (replay(&combined()) == cluster).then_some(()) },
    )
    .await;
    check_duplicates(&combined());
}

#[tokio::test]
async fn a_graceful_stop_releases_the_lease_and_exits_zero() {
    let client = common::kube_client().await;
    let ns = fresh_namespace(&client, "kw-ha-term").await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = replica(da.path(), &ns, "replica-a");
    a.wait_log(60, 1, "acquired leadership: starting streams", 1)
        .await;
    let b = replica(db.path(), &ns, "replica-b");
    b.wait_log(60, 1, "waiting for leadership", 1).await;
    assert!(a.stop().await.success());
    assert_eq!(
        a.log_messages(1, "lease released").len(),
        1,
        "{:#?}",
        a.logs(1)
    );
    b.wait_log(
        LEASE_SECONDS * 3,
        1,
        "acquired leadership: starting streams",
        1,
    )
    .await;
}
