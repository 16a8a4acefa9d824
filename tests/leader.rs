//! High availability: two kubewire replicas competing for one Lease on the real API server.
//! Only the holder publishes; when it is killed, the other takes over within the lease
//! duration and the combined output still converges to the cluster's state.

mod common;
mod harness;

use std::time::Instant;

use harness::{Kubewire, Scene, check_duplicates, cluster_configmaps, configmap, replay};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

const LEASE_SECONDS: u64 = 6;

fn replica(dir: &std::path::Path, ns: &str, identity: &str) -> Kubewire {
    Kubewire::builder(dir).watch("configmaps", &[ns]).extra_yaml(&format!(
            "leaderElection:\n  enabled: true\n  leaseName: kubewire-test\n  leaseNamespace: {ns}\n  \
             identity: {identity}\n  leaseDurationSeconds: {LEASE_SECONDS}\n  renewGraceSeconds: 2\n"
        )).start()
}

#[tokio::test]
async fn a_standby_takes_over_when_the_leader_is_killed_and_the_stream_converges() {
    let s = Scene::new("kw-ha").await;
    let (client, ns) = (&s.client, &s.ns);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let pp = PostParams::default();
    let (da, db) = (&s.dir, tempfile::tempdir().unwrap());

    let mut a = replica(da.path(), ns, "replica-a");
    a.wait_log(60, 1, "acquired leadership: starting streams", 1)
        .await;
    let b = replica(db.path(), ns, "replica-b");
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

    let cluster = cluster_configmaps(client, &[ns]).await;
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
    let s = Scene::new("kw-ha-term").await;
    let ns = &s.ns;
    let (da, db) = (&s.dir, tempfile::tempdir().unwrap());
    let mut a = replica(da.path(), ns, "replica-a");
    a.wait_log(60, 1, "acquired leadership: starting streams", 1)
        .await;
    let b = replica(db.path(), ns, "replica-b");
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

/// Issue "One home per stage", item 5: a SIGTERM under leader election drains what was read,
/// commits, and only then releases the Lease (it used to abort the publishers). The next
/// start resumes from the committed checkpoint and replays nothing.
#[tokio::test]
async fn sigterm_under_leader_election_drains_commits_and_releases_the_lease() {
    let s = Scene::new("kw-ha-drain").await;
    let (client, ns, dir) = (&s.client, &s.ns, &s.dir);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let mut a = replica(dir.path(), ns, "replica-a");
    a.wait_log(60, 1, "acquired leadership: starting streams", 1)
        .await;
    a.ready_streams(60, 1).await;
    // A burst still flowing through the pipeline when the SIGTERM arrives.
    for i in 0..100 {
        api.create(
            &PostParams::default(),
            &configmap(&format!("cm-{i}"), &[], "1"),
        )
        .await
        .unwrap();
    }
    assert!(a.stop().await.success(), "{:#?}", a.logs(1));
    for message in [
        "stopping: draining in-flight events",
        "drained; checkpoints committed",
        "lease released",
    ] {
        assert_eq!(
            a.log_messages(1, message).len(),
            1,
            "{message:?} in {:#?}",
            a.logs(1)
        );
    }
    assert!(
        a.log_messages(1, "stopping: publishing nothing more")
            .is_empty()
    );

    // The released Lease is taken again at once; the stream resumes without a LIST.
    a.restart();
    a.wait_log(60, 2, "acquired leadership: starting streams", 1)
        .await;
    a.wait_log(60, 2, "resuming from checkpoint", 1).await;
    let cluster = cluster_configmaps(client, &[ns]).await;
    common::eventually(60, "the output replays to the cluster state", || async {
        (replay(&a.events()) == cluster).then_some(())
    })
    .await;
    assert!(
        a.log_messages(2, "listing").is_empty(),
        "resumed, not relisted"
    );
    assert_eq!(
        check_duplicates(&a.events()),
        0,
        "what the drain committed is not published again"
    );
}

/// Issue "One home per stage", item 5: a leader whose Lease is taken over stops publishing at
/// once, without draining what it had read.
#[tokio::test]
async fn a_leader_that_loses_its_lease_stops_publishing_at_once() {
    use k8s_openapi::api::coordination::v1::Lease;
    let s = Scene::new("kw-ha-lost").await;
    let (client, ns, dir) = (&s.client, &s.ns, &s.dir);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let a = replica(dir.path(), ns, "replica-a");
    a.wait_log(60, 1, "acquired leadership: starting streams", 1)
        .await;
    a.ready_streams(60, 1).await;

    // Another holder takes the Lease for an hour, as a partitioned leader's successor would.
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let now = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let patch = json!({"spec": {
        "holderIdentity": "intruder", "leaseDurationSeconds": 3600,
        "acquireTime": now, "renewTime": now,
    }});
    leases
        .patch(
            "kubewire-test",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    a.wait_log(LEASE_SECONDS * 3, 1, "lost leadership: stopping streams", 1)
        .await;
    a.wait_log(30, 1, "stopping: publishing nothing more", 1)
        .await;
    assert!(
        a.log_messages(1, "stopping: draining in-flight events")
            .is_empty()
    );
    // The term has ended: its publishers finished what the sink held.
    a.wait_log(30, 1, "drained; checkpoints committed", 1).await;

    // Changes after the loss are not this replica's to publish.
    let before = a.events().len();
    api.create(&PostParams::default(), &configmap("after-loss", &[], "1"))
        .await
        .unwrap();
    let held = common::within(10, "an observation window", async {
        let start = Instant::now();
        while start.elapsed().as_secs() < 5 {
            assert_eq!(a.events().len(), before, "published after losing the lease");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    });
    held.await;
}
