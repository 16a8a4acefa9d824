//! The Kafka sink against the real broker from `dev/testenv` (issue 4): end to end with a
//! real consumer, templates, created topics, tombstones, a missing topic, an oversize
//! object. The broker outage test is in `kafka_outage.rs` (it stops the broker).

mod common;
mod harness;
mod kafka_util;

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use harness::{
    Kubewire, REPLAY_WINDOW, Scene, Sightings, assert_replay_bounded, cluster_configmaps,
    configmap, replay,
};
use kafka_util::{Reader, Record, create_topic, sink_yaml, topic_config};

fn rv(e: &Value) -> u64 {
    e["k8sresourceversion"].as_str().unwrap().parse().unwrap()
}

fn is_object_event(e: &Value) -> bool {
    e["type"]
        .as_str()
        .is_some_and(|t| t.starts_with("io.kubewire.object."))
}

/// uid → resourceVersion after replaying the CloudEvents read from the topic.
fn replayed(records: &[Record]) -> BTreeMap<String, String> {
    let events: Vec<Value> = records.iter().filter_map(|r| r.value.clone()).collect();
    replay(&events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_churn_reaches_the_topic_in_order_with_headers_and_final_state() {
    let s = Scene::new("kafka-e2e").await;
    let (client, ns) = (&s.client, &s.ns);
    let topic = common::unique_name("kw-e2e");
    create_topic(&topic, 3, &[]).await;
    let kw = s
        .kubewire()
        .watch("configmaps", &[ns])
        .sink_yaml(&sink_yaml(&topic, ""))
        .start();
    kw.ready(60).await;

    // Churn: 40 objects, each created, updated three times; every fourth deleted.
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    let mut writes = 0;
    for i in 0..40 {
        let name = format!("cm-{i}");
        api.create(&PostParams::default(), &configmap(&name, &[], "v0"))
            .await
            .unwrap();
        writes += 1;
    }
    for round in 1..=3 {
        for i in 0..40 {
            let patch = Patch::Merge(json!({"data": {"value": format!("v{round}")}}));
            api.patch(&format!("cm-{i}"), &PatchParams::default(), &patch)
                .await
                .unwrap();
            writes += 1;
        }
    }
    for i in (0..40).step_by(4) {
        api.delete(&format!("cm-{i}"), &DeleteParams::default())
            .await
            .unwrap();
        writes += 1;
    }
    let want = cluster_configmaps(client, &[ns.as_str()]).await;

    let mut reader = Reader::new(&topic).await;
    reader
        .wait(90, "every change on the topic", |r| {
            r.iter()
                .filter(|r| r.value.as_ref().is_some_and(is_object_event))
                .count()
                >= writes
                && replayed(r) == want
        })
        .await;
    let elapsed = started.elapsed();
    let records = reader.records.clone();
    let objects: Vec<&Record> = records
        .iter()
        .filter(|r| r.value.as_ref().is_some_and(is_object_event))
        .collect();
    eprintln!(
        "kafka e2e: {} events on the topic {:.2}s after the churn began ({:.0} events/s, API-write bound)",
        objects.len(),
        elapsed.as_secs_f64(),
        objects.len() as f64 / elapsed.as_secs_f64()
    );

    // The set of final states equals the cluster's.
    assert_eq!(replayed(&records), want);

    // Every event of one object has one key, one partition, increasing versions.
    let mut per_key: HashMap<&str, (i32, Vec<u64>)> = HashMap::new();
    for r in &objects {
        let e = r.value.as_ref().unwrap();
        let key = r.key.as_deref().unwrap();
        assert_eq!(key, format!("{ns}/{}", e["k8sname"].as_str().unwrap()));
        let entry = per_key.entry(key).or_insert((r.partition, Vec::new()));
        assert_eq!(entry.0, r.partition, "{key} on two partitions");
        entry.1.push(rv(e));
    }
    for (key, (_, versions)) in &per_key {
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "{key}: versions out of order: {versions:?}"
        );
    }
    for i in 0..40 {
        let key = format!("{ns}/cm-{i}");
        let n = per_key[key.as_str()].1.len();
        assert_eq!(n, if i % 4 == 0 { 5 } else { 4 }, "{key}: {n} events");
    }

    // Headers: the CloudEvents Kafka binding (structured) and the trace.
    for r in &objects {
        let e = r.value.as_ref().unwrap();
        assert_eq!(r.header("ce_specversion"), "1.0");
        assert_eq!(r.header("ce_id"), e["id"]);
        assert_eq!(r.header("ce_type"), e["type"]);
        assert_eq!(r.header("ce_source"), e["source"]);
        assert_eq!(r.header("ce_subject"), e["subject"]);
        assert_eq!(r.header("traceparent"), e["traceparent"]);
        assert_eq!(r.header("content-type"), "application/cloudevents+json");
        let tp: Vec<&str> = r.header("traceparent").split('-').collect();
        assert_eq!((tp[0], tp[1].len(), tp[2].len()), ("00", 32, 16));
    }
    drop(kw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_override_created_topics_keys_and_tombstones() {
    let s = Scene::new("kafka-tpl-a").await;
    let (client, a) = (&s.client, s.ns.clone());
    let b = s.fresh_namespace("kafka-tpl-b").await;
    let prefix = common::unique_name("kwt");
    let own = format!("{prefix}-own");
    let kw = s
        .kubewire()
        .watch("configmaps", &[&a])
        .watch("configmaps", &[&b])
        .with(&format!("kafka: {{topic: {own}}}"))
        .sink_yaml(&sink_yaml(
            &format!("'{prefix}.{{cluster}}.{{group}}.{{resource}}.{{namespace}}'"),
            "  key: '{kind}:{namespace}/{name}'\n  tombstones: true\n\
             \x20 createTopics: {enabled: true, partitions: 2, cleanupPolicy: compact}\n",
        ))
        .start();
    kw.ready_streams(60, 2).await;
    for ns in [&a, &b] {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        api.create(&PostParams::default(), &configmap("doomed", &[], "x"))
            .await
            .unwrap();
        api.delete("doomed", &DeleteParams::default())
            .await
            .unwrap();
    }

    let templated = format!("{prefix}.default.core.configmaps.{a}");
    for (topic, ns) in [(&templated, &a), (&own, &b)] {
        let mut reader = Reader::new(topic).await;
        reader
            .wait(60, "added, deleted and a tombstone", |r| {
                r.iter().any(|r| r.value.is_none())
            })
            .await;
        let doomed: Vec<&Record> = reader
            .records
            .iter()
            .filter(|r| r.key.as_deref() == Some(&format!("ConfigMap:{ns}/doomed")))
            .collect();
        let kinds: Vec<&str> = doomed
            .iter()
            .map(|r| match &r.value {
                Some(v) => v["type"].as_str().unwrap(),
                None => "tombstone",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "io.kubewire.object.added",
                "io.kubewire.object.deleted",
                "tombstone"
            ],
            "{topic}"
        );
        assert!(doomed.iter().all(|r| r.partition == doomed[0].partition));
        assert!(doomed[2].headers.is_empty(), "a tombstone has no headers");
        let config = topic_config(topic).await;
        assert_eq!(config["cleanup.policy"], "compact", "{topic}");
    }
    drop(kw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topic_is_a_clear_startup_error() {
    let s = Scene::new("kafka-missing").await;
    let (ns, dir) = (&s.ns, &s.dir);
    let topic = common::unique_name("kw-absent");
    let _kw = s
        .kubewire()
        .watch("configmaps", &[ns])
        .sink_yaml(&sink_yaml(&topic, ""))
        .start();
    // kubewire exits with the error on stderr (and in its log), which the harness keeps in
    // `kubewire-1.log`.
    let log = dir.path().join("kubewire-1.log");
    let error = common::eventually(60, "kubewire to report the missing topic", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        // The JSON log line escapes the quotes; the plain stderr line does not.
        text.lines()
            .find(|l| l.contains("does not exist"))
            .map(|l| l.replace("\\\"", "\""))
    })
    .await;
    assert!(
        error.contains(&format!("topic \"{topic}\" does not exist"))
            && error.contains("createTopics"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_object_is_replaced_by_an_oversize_event_and_others_flow() {
    let s = Scene::new("kafka-big").await;
    let (client, ns) = (&s.client, &s.ns);
    let topic = common::unique_name("kw-big");
    create_topic(&topic, 1, &[("max.message.bytes", "100000")]).await;
    let kw = s
        .kubewire()
        .watch("configmaps", &[ns])
        .sink_yaml(&sink_yaml(&topic, ""))
        .start();
    kw.ready(60).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &configmap("before", &[], "small"))
        .await
        .unwrap();
    let big = api
        .create(
            &PostParams::default(),
            &configmap("big", &[], &"x".repeat(300_000)),
        )
        .await
        .unwrap();
    api.create(&PostParams::default(), &configmap("after", &[], "small"))
        .await
        .unwrap();

    let mut reader = Reader::new(&topic).await;
    reader
        .wait(60, "before, oversize, after", |r| {
            r.iter()
                .any(|r| r.value.as_ref().is_some_and(|v| v["k8sname"] == "after"))
        })
        .await;
    let names: Vec<(String, String)> = reader
        .events()
        .iter()
        .filter(|e| e["k8snamespace"] == ns.as_str())
        .map(|e| {
            (
                e["k8sname"].as_str().unwrap().to_owned(),
                e["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("before", "io.kubewire.object.added"),
        ("big", "io.kubewire.object.oversize"),
        ("after", "io.kubewire.object.added"),
    ]
    .iter()
    .map(|(n, t)| (n.to_string(), t.to_string()))
    .collect();
    assert_eq!(names, want);
    let oversize = reader
        .events()
        .into_iter()
        .find(|e| e["type"] == "io.kubewire.object.oversize")
        .unwrap();
    assert_eq!(oversize["k8suid"], big.metadata.uid.clone().unwrap());
    assert!(oversize.get("kubewireerror").is_some());
    assert!(oversize["data"]["size"].as_u64().unwrap() > 300_000);
    assert!(
        oversize["data"]["originalId"]
            .as_str()
            .unwrap()
            .ends_with("/added")
    );

    // The log names the object and its size.
    let logged = kw.log_messages(1, "event too large for its kafka topic; published an io.kubewire.object.oversize event in its place");
    assert_eq!(logged.len(), 1, "logged once");
    assert_eq!(logged[0]["subject"], format!("core/v1/configmaps/{ns}/big"));
    assert!(logged[0]["size"].as_u64().unwrap() > 300_000);
    drop(kw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_kill9_mid_burst_duplicates_carry_the_original_ce_id() {
    let s = Scene::new("kafka-kill").await;
    let (client, ns) = (&s.client, &s.ns);
    let topic = common::unique_name("kw-kill");
    create_topic(&topic, 3, &[]).await;
    let mut kw = s
        .kubewire()
        .watch("configmaps", &[ns])
        .sink_yaml(&sink_yaml(&topic, ""))
        .start();
    kw.ready(60).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    // The writer runs until told to stop, so the kill lands in the middle of its burst.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let api = api.clone();
        let stop = stop.clone();
        async move {
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("cm-{}", i % 30);
                let patch = Patch::Merge(json!({"data": {"value": i.to_string()}}));
                if i % 7 == 6 {
                    let _ = api.delete(&name, &DeleteParams::default()).await;
                } else if api
                    .patch(&name, &PatchParams::default(), &patch)
                    .await
                    .is_err()
                {
                    api.create(&PostParams::default(), &configmap(&name, &[], "0"))
                        .await
                        .unwrap();
                }
                i += 1;
            }
            i
        }
    });
    let mut reader = kafka_util::Reader::new(&topic).await;
    // Read the topic until enough records have been there for longer than the replay
    // window: those are the ones the kill must not replay.
    let mut seen = Sightings::default();
    let deadline = Instant::now() + std::time::Duration::from_secs(90);
    while seen.older_than(REPLAY_WINDOW) < 20 {
        let records = reader.poll();
        seen.saw(record_ids(records));
        assert!(
            Instant::now() < deadline,
            "not within 90s: 20 records in {topic} for {REPLAY_WINDOW:?}"
        );
    }
    assert!(!writer.is_finished(), "the kill must land during the burst");
    let killed_at = Instant::now();
    kw.kill9();
    kw.restart();
    kw.wait_log(60, 2, "resuming from checkpoint", 1).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(writes > 0);
    let cluster = cluster_configmaps(client, &[ns]).await;
    reader
        .wait(90, "the topic replays to the cluster state", |r| {
            replayed(r) == cluster
        })
        .await;
    // Every copy of one change (uid, resourceVersion, type) carries one and the same ce_id,
    // equal to the document's id.
    let mut ids: HashMap<(String, String, String), Vec<String>> = HashMap::new();
    for r in reader.records.iter().filter(|r| r.value.is_some()) {
        let e = r.value.as_ref().unwrap();
        assert_eq!(r.header("ce_id"), e["id"].as_str().unwrap());
        if is_object_event(e) {
            let change = (
                e["k8suid"].as_str().unwrap().to_owned(),
                e["k8sresourceversion"].as_str().unwrap().to_owned(),
                e["type"].as_str().unwrap().to_owned(),
            );
            ids.entry(change)
                .or_default()
                .push(r.header("ce_id").to_owned());
        }
    }
    let duplicated: Vec<_> = ids.values().filter(|v| v.len() > 1).collect();
    for copies in &duplicated {
        assert!(copies.iter().all(|c| c == &copies[0]), "{copies:?}");
    }
    // Only what was in flight or acknowledged after the last commit is produced again.
    seen.saw(record_ids(&reader.records));
    assert_replay_bounded(record_ids(&reader.records), &seen, killed_at);
    eprintln!(
        "kill -9 mid-burst: {} records, {} changes delivered more than once",
        reader.records.len(),
        duplicated.len()
    );
}

/// The ce_id of every record that is not a tombstone, in read order.
fn record_ids(records: &[Record]) -> impl Iterator<Item = &str> {
    records
        .iter()
        .filter(|r| r.value.is_some())
        .map(|r| r.header("ce_id"))
}

/// The sink block for the test broker's SASL/PLAIN listener, the password in a file.
fn sasl_sink_yaml(topic: &str, password_file: &std::path::Path) -> String {
    format!(
        "sink:\n  type: kafka\n  brokers: {}\n  topic: {topic}\n  securityProtocol: sasl_plaintext\n  \
         sasl:\n    mechanism: PLAIN\n    username: {}\n    passwordFile: {}\n",
        common::var("KAFKA_SASL_BROKERS"),
        common::var("KAFKA_SASL_USERNAME"),
        password_file.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_plain_authenticates_and_a_wrong_password_is_a_clear_error() {
    let s = Scene::new("kafka-sasl").await;
    let (client, ns) = (&s.client, &s.ns);
    let topic = common::unique_name("kw-sasl");
    create_topic(&topic, 1, &[]).await;

    let good = &s.dir;
    let pw = good.path().join("password");
    std::fs::write(&pw, format!("{}\n", common::var("KAFKA_SASL_PASSWORD"))).unwrap();
    let kw = Kubewire::builder(good.path())
        .watch("configmaps", &[ns])
        .sink_yaml(&sasl_sink_yaml(&topic, &pw))
        .start();
    kw.ready(60).await;
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &configmap("over-sasl", &[], "1"))
        .await
        .unwrap();
    let mut reader = kafka_util::Reader::new(&topic).await;
    reader
        .wait(60, "the event published over SASL", |r| {
            r.iter().any(|r| {
                r.value
                    .as_ref()
                    .is_some_and(|v| v["k8sname"] == "over-sasl")
            })
        })
        .await;

    let bad = tempfile::tempdir().unwrap();
    let wrong = bad.path().join("password");
    std::fs::write(&wrong, "not-the-password").unwrap();
    let bad_kw = Kubewire::builder(bad.path())
        .watch("configmaps", &[ns])
        .sink_yaml(&sasl_sink_yaml(&topic, &wrong))
        .start();
    let log = bad.path().join("kubewire-1.log");
    let line = common::eventually(60, "an authentication error in the log", || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .find(|l| l.to_ascii_lowercase().contains("authentication"))
            .map(str::to_owned)
    })
    .await;
    assert!(line.contains("SASL") || line.contains("sasl"), "{line}");
    assert!(
        !std::fs::read_to_string(&log)
            .unwrap()
            .contains("not-the-password"),
        "the password never appears in logs"
    );
    let admin = bad_kw.admin().await;
    let body = common::eventually(30, "/readyz reports the sink down", || async {
        let (code, body) = harness::http_get(&admin, "/readyz").await;
        (code == 503 && body.contains("authentication failed")).then_some(body)
    })
    .await;
    // With the Kafka state backend, the sink is only built once Kafka accepts kubewire: it
    // waits (`waiting: …`) and says why.
    assert!(
        body.contains("sink kafka: down") || body.contains("sink kafka: waiting"),
        "{body}"
    );
}
