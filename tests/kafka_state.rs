//! The Kafka state backend (issue 14): the checkpoint and index in a compacted state topic,
//! written in the same Kafka transaction as the events. Two replicas with no shared disk
//! hand over through the state topic: the new leader lists nothing and re-sends no
//! snapshot, and a `read_committed` consumer (librdkafka's default, as in [`Reader`]) sees
//! every change exactly once — after a kill -9, a graceful handover, a frozen leader that
//! is fenced, and repeated kills of a single replica.

mod common;
mod harness;
mod kafka_util;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use harness::{Kubewire, Scene, check_duplicates, cluster_configmaps, configmap, replay};
use kafka_util::{Reader, create_topic, sink_yaml};

// Long enough that a loaded machine does not miss a renewal (a spurious handover during
// the first sync would rightly list).
const LEASE_SECONDS: u64 = 10;

/// A replica of a two-replica deployment: its own directory (no shared disk), the shared
/// event topic and state topic, leader election on a Lease in the test namespace (so the
/// transactional id, derived from the Lease, is the deployment's own).
fn replica(dir: &std::path::Path, s: &Scene, topic: &str, state: &str, id: &str) -> Kubewire {
    Kubewire::builder(dir)
        .watch("configmaps", &[&s.ns])
        .sink_yaml(&sink_yaml(topic, ""))
        .checkpoint("backend: kafka")
        .checkpoint(&format!("kafka: {{stateTopic: {state}}}"))
        .extra_yaml(&format!(
            "leaderElection:\n  enabled: true\n  leaseName: kubewire-test\n  leaseNamespace: {}\n  \
             identity: {id}\n  leaseDurationSeconds: {LEASE_SECONDS}\n  renewGraceSeconds: 4\n",
            s.ns
        ))
        .start()
}

/// Patches the ConfigMaps `cm-0..n` round-robin until stopped; counts the writes.
struct Churn {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl Churn {
    fn start(api: Api<ConfigMap>, n: u32) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU32::new(0));
        let (st, w) = (stop.clone(), writes.clone());
        let task = tokio::spawn(async move {
            let mut i = 0u32;
            while !st.load(Ordering::Relaxed) {
                let patch = Patch::Merge(json!({"data": {"value": i.to_string()}}));
                api.patch(&format!("cm-{}", i % n), &PatchParams::default(), &patch)
                    .await
                    .expect("patch");
                w.fetch_add(1, Ordering::Relaxed);
                i += 1;
                // A steady rate (~100 writes/s) rather than as fast as possible: the
                // leader is killed while changes keep coming.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Churn { stop, writes, task }
    }

    async fn stop(self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        self.writes.load(Ordering::Relaxed)
    }
}

async fn create_configmaps(api: &Api<ConfigMap>, n: u32) {
    let pp = PostParams::default();
    let creates = (0..n).map(|i| {
        let api = api.clone();
        let pp = pp.clone();
        async move {
            api.create(&pp, &configmap(&format!("cm-{i}"), &[], "0"))
                .await
                .unwrap()
        }
    });
    futures::future::join_all(creates).await;
}

/// Events by origin (`initial`, `watch`, `relist`).
fn origins(events: &[Value]) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for e in events {
        let o = e["kubewireorigin"].as_str().unwrap_or("marker").to_owned();
        *out.entry(o).or_default() += 1;
    }
    out
}

/// The end state of every handover test: the topic, read `read_committed`, replays to the
/// cluster's state, with no event twice and the snapshot sent once.
async fn assert_exactly_once(s: &Scene, reader: &mut Reader, objects: usize) {
    let cluster = cluster_configmaps(&s.client, &[&s.ns]).await;
    reader
        .wait(90, "the topic replays to the cluster's state", |_| true)
        .await;
    common::eventually(90, "the topic replays to the cluster's state", || {
        reader.poll();
        let events = reader.events();
        std::future::ready((replay(&events) == cluster).then_some(()))
    })
    .await;
    let events = reader.events();
    assert_eq!(
        check_duplicates(&events),
        0,
        "a read_committed consumer sees no event twice"
    );
    let by_origin = origins(&events);
    assert_eq!(by_origin.get("relist"), None, "no relist: {by_origin:?}");
    assert_eq!(
        by_origin.get("marker"),
        None,
        "no relist marker: {by_origin:?}"
    );
    // No snapshot re-sent: whichever way each object first arrived (in the first leader's
    // snapshot, or by its watch), nobody announced it a second time.
    let mut added: HashMap<&str, usize> = HashMap::new();
    for e in &events {
        if e["type"] == "io.kubewire.object.added" {
            *added.entry(e["k8suid"].as_str().unwrap()).or_default() += 1;
        }
    }
    let twice: Vec<_> = added.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "objects added more than once: {twice:?}");
    assert_eq!(added.len(), objects, "every object was added once");
}

/// Two replicas (leader `a`, standby `b`) of one deployment, no shared disk; `n`
/// ConfigMaps created and synced by the leader, read back `read_committed`.
async fn leader_and_standby(
    prefix: &str,
    n: u32,
) -> (Scene, Kubewire, Kubewire, Reader, tempfile::TempDir) {
    let s = Scene::new(prefix).await;
    let topic = common::unique_name("kw-ha-events");
    let state = common::unique_name("kw-ha-state");
    create_topic(&topic, 3, &[]).await;
    let db = tempfile::tempdir().unwrap();
    let a = replica(s.dir.path(), &s, &topic, &state, "replica-a");
    a.wait_log(60, 1, "acquired leadership: starting streams", 1)
        .await;
    let b = replica(db.path(), &s, &topic, &state, "replica-b");
    b.wait_log(60, 1, "waiting for leadership", 1).await;
    create_configmaps(&s.configmaps(), n).await;
    let mut reader = Reader::new(&topic).await;
    reader
        .wait(120, "the leader syncs every object", |r| {
            let events: Vec<Value> = r.iter().filter_map(|r| r.value.clone()).collect();
            replay(&events).len() == n as usize
        })
        .await;
    (s, a, b, reader, db)
}

enum Handover {
    Kill9,
    Sigterm,
}

async fn handover(prefix: &str, how: Handover) {
    const N: u32 = 300;
    let (s, mut a, b, mut reader, _db) = leader_and_standby(prefix, N).await;
    let api = s.configmaps();
    let churn = Churn::start(api.clone(), N);
    // Mid-churn: after some changes have been published.
    let before = reader.poll().len();
    reader
        .wait(60, "changes flow before the handover", |r| {
            r.len() > before + 100
        })
        .await;
    let handed = Instant::now();
    match how {
        Handover::Kill9 => a.kill9(),
        Handover::Sigterm => {
            let status = a.stop().await;
            assert!(status.success(), "a graceful stop exits 0: {status}");
        }
    }
    b.wait_log(
        LEASE_SECONDS + 30,
        1,
        "acquired leadership: starting streams",
        1,
    )
    .await;
    let takeover = handed.elapsed();
    b.wait_log(60, 1, "kafka state read", 1).await;
    // More changes under the new leader, then quiet.
    let now = reader.poll().len();
    reader
        .wait(60, "the new leader publishes", |r| r.len() > now + 50)
        .await;
    let writes = churn.stop().await;
    assert_exactly_once(&s, &mut reader, N as usize).await;
    assert!(
        a.log_messages(1, "lost leadership: stopping streams")
            .is_empty(),
        "the first leader lost its Lease before the handover (a renewal missed under load): the test proves nothing"
    );
    assert!(
        b.log_messages(1, "listing").is_empty(),
        "the new leader makes no LIST: it resumes from the state topic"
    );
    assert!(
        takeover < Duration::from_secs(LEASE_SECONDS + 10),
        "taken over within the lease duration (+ start): {takeover:?}"
    );
    let read = b.log_messages(1, "kafka state read");
    eprintln!(
        "handover: {writes} writes, takeover {takeover:?}, state read: {}",
        read[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_a_killed_leader_from_the_state_topic_exactly_once() {
    handover("kw-state-kill", Handover::Kill9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_handover_resends_nothing() {
    handover("kw-state-term", Handover::Sigterm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_is_fenced_and_nothing_it_produces_after_the_takeover_is_visible() {
    const N: u32 = 50;
    let (s, a, b, mut reader, _db) = leader_and_standby("kw-state-fence", N).await;
    let api = s.configmaps();
    let churn = Churn::start(api.clone(), N);

    // Frozen past its lease: it can neither renew nor notice that it lost the Lease.
    a.signal("STOP");
    b.wait_log(
        LEASE_SECONDS + 30,
        1,
        "acquired leadership: starting streams",
        1,
    )
    .await;
    b.wait_log(
        60,
        1,
        "kafka transactions initialised: any previous producer with this id is fenced",
        1,
    )
    .await;
    let now = reader.poll().len();
    reader
        .wait(60, "the new leader publishes", |r| r.len() > now + 50)
        .await;
    // Thawed: it wakes with its open transaction and events in hand, still believing
    // it leads.
    a.signal("CONT");
    common::eventually(
        60,
        "the old leader says it was fenced or lost the Lease",
        || {
            let fenced = !a
                .log_messages(
                    1,
                    "stepping down: this replica publishes nothing more until it leads again",
                )
                .is_empty()
                || !a
                    .log_messages(1, "lost leadership: stopping streams")
                    .is_empty();
            std::future::ready(fenced.then_some(()))
        },
    )
    .await;
    let writes = churn.stop().await;
    assert_exactly_once(&s, &mut reader, N as usize).await;
    let fenced = a.log_messages(1, "kafka producer can publish nothing more: stopping");
    eprintln!(
        "fencing: {writes} writes; the old leader's producer {}",
        if fenced.is_empty() {
            "stopped on the lost Lease before it produced again".to_owned()
        } else {
            format!("was fenced: {}", fenced[0]["reason"])
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_kill9_during_churn_gives_a_read_committed_consumer_every_change_once() {
    let s = Scene::new("kw-state-kill9").await;
    let api = s.configmaps();
    let topic = common::unique_name("kw-kill9-events");
    create_topic(&topic, 3, &[]).await;
    const N: u32 = 100;
    create_configmaps(&api, N).await;
    let mut kw = s
        .kubewire()
        .watch("configmaps", &[&s.ns])
        .sink_yaml(&sink_yaml(&topic, ""))
        .checkpoint("backend: kafka")
        .start();
    let mut reader = Reader::new(&topic).await;
    reader
        .wait(120, "the first sync", |r| {
            let events: Vec<Value> = r.iter().filter_map(|r| r.value.clone()).collect();
            replay(&events).len() == N as usize
        })
        .await;
    let churn = Churn::start(api.clone(), N);
    const KILLS: u32 = 10;
    for run in 1..=KILLS {
        // Killed once this run has published something, mid-transaction as often as not.
        kw.wait_log(60, run, "stream started", 1).await;
        let now = reader.poll().len();
        reader
            .wait(60, "events flow in this run", |r| r.len() > now + 20)
            .await;
        kw.kill9();
        kw.restart();
    }
    kw.wait_log(60, KILLS + 1, "stream started", 1).await;
    let writes = churn.stop().await;
    assert_exactly_once(&s, &mut reader, N as usize).await;
    for run in 2..=KILLS + 1 {
        assert!(
            kw.log_messages(run, "listing").is_empty(),
            "run {run} resumed from the state topic without a LIST"
        );
    }
    let uids: BTreeSet<String> = reader
        .events()
        .iter()
        .filter_map(|e| e["k8suid"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(uids.len(), N as usize);
    eprintln!("{KILLS} kills during {writes} writes: 0 duplicates, 0 lost");
}

#[tokio::test]
async fn a_state_topic_that_is_not_compacted_is_a_clear_start_up_error() {
    let s = Scene::new("kw-state-policy").await;
    let topic = common::unique_name("kw-policy-events");
    let state = common::unique_name("kw-policy-state");
    create_topic(&topic, 1, &[]).await;
    create_topic(&state, 1, &[("cleanup.policy", "delete")]).await;
    let mut kw = s
        .kubewire()
        .watch("configmaps", &[&s.ns])
        .sink_yaml(&sink_yaml(&topic, ""))
        .checkpoint("backend: kafka")
        .checkpoint(&format!("kafka: {{stateTopic: {state}}}"))
        .start();
    let status = kw.wait_exit(60).await;
    assert_eq!(status.code(), Some(1), "exit 1");
    let log = kw.log_text(1);
    assert!(
        log.contains(&format!(
            "kafka state topic {state} has cleanup.policy=delete"
        )),
        "{log}"
    );
    assert!(log.contains("set cleanup.policy=compact"), "{log}");
}
