//! `kubewire verify` and `kubewire tail` against the real services: a stream kubewire wrote
//! (file, Kafka, NATS) verifies clean against the cluster, also while it is still being
//! written; a damaged copy of it — a deleted event removed, a version changed, a ghost
//! added — reports exactly those; `tail --follow` shows new events as they arrive.

mod common;
mod harness;
mod kafka_util;
mod nats_support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use harness::{Scene, change, configmap, object_events};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

/// The workload every test verifies: a, b, c created, a modified, c deleted. Waits until
/// `downstream` shows all five events.
async fn workload<F, Fut>(s: &Scene, downstream: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Vec<Value>>,
{
    let api = s.configmaps();
    let pp = PostParams::default();
    for name in ["a", "b", "c"] {
        api.create(&pp, &configmap(name, &[], "1")).await.unwrap();
    }
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"value": "2"}})),
    )
    .await
    .unwrap();
    api.delete("c", &DeleteParams::default()).await.unwrap();
    common::eventually(60, "the workload's five events downstream", || async {
        let ev = downstream().await;
        let deleted = object_events(&ev, &s.ns, "c")
            .iter()
            .any(|e| change(e) == "deleted");
        let modified = object_events(&ev, &s.ns, "a")
            .iter()
            .any(|e| change(e) == "modified");
        (deleted && modified && object_events(&ev, &s.ns, "b").len() == 1).then_some(())
    })
    .await;
}

/// `kubewire verify --config <config> -o json --settle <settle> <extra>`: (exit code, report).
fn verify(config: &Path, settle: u64, extra: &[&str]) -> (Option<i32>, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_kubewire"))
        .args([
            "verify",
            "-o",
            "json",
            "--settle",
            &settle.to_string(),
            "--config",
        ])
        .arg(config)
        .args(extra)
        .env("KUBECONFIG", common::var("KUBECONFIG"))
        .env_remove("RUST_LOG")
        .env_remove("KUBEWIRE_CONFIG")
        .output()
        .expect("run kubewire verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "verify printed no JSON report ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report)
}

/// The names of a report's findings of `kind`, sorted.
fn names(report: &Value, kind: &str) -> Vec<String> {
    let mut n: Vec<String> = report[kind]
        .as_array()
        .unwrap_or_else(|| panic!("no {kind} in {report}"))
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect();
    n.sort();
    n
}

fn assert_clean(code: Option<i32>, report: &Value) {
    assert_eq!(code, Some(0), "{report:#}");
    for kind in ["missing", "stale", "ghosts", "orderViolations"] {
        assert_eq!(
            names(report, kind),
            Vec::<String>::new(),
            "{kind}: {report:#}"
        );
    }
    assert_eq!(report["counts"]["clusterObjects"], 2, "{report:#}");
}

/// The damage: c's deleted event removed (c becomes a ghost), b's last version lowered (b
/// stale), and an object g that never existed added (a ghost).
fn damage(events: &[Value], ns: &str) -> Vec<Value> {
    let mut out: Vec<Value> = events
        .iter()
        .filter(|e| !(e["k8sname"] == "c" && change(e) == "deleted"))
        .cloned()
        .collect();
    let b = out
        .iter_mut()
        .rfind(|e| e["k8sname"] == "b")
        .expect("an event of b");
    let rv: u64 = b["k8sresourceversion"].as_str().unwrap().parse().unwrap();
    b["k8sresourceversion"] = json!((rv - 1).to_string());
    let mut ghost = out.iter().find(|e| e["k8sname"] == "a").unwrap().clone();
    ghost["k8sname"] = json!("g");
    ghost["k8suid"] = json!("00000000-0000-0000-0000-00000000000g");
    ghost["k8sresourceversion"] = json!("1");
    ghost["id"] = json!(format!(
        "{}/g/1/added",
        ghost["k8scluster"].as_str().unwrap()
    ));
    ghost["subject"] = json!(format!("core/v1/configmaps/{ns}/g"));
    out.push(ghost);
    out
}

/// Exactly the damage: ghosts c and g, b stale, nothing missing, order kept.
fn assert_exactly_the_damage(code: Option<i32>, report: &Value) {
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(names(report, "missing"), Vec::<String>::new(), "{report:#}");
    assert_eq!(names(report, "stale"), ["b"], "{report:#}");
    assert_eq!(names(report, "ghosts"), ["c", "g"], "{report:#}");
    assert_eq!(
        names(report, "orderViolations"),
        Vec::<String>::new(),
        "{report:#}"
    );
    assert_eq!(report["totals"]["stale"], 1);
    assert_eq!(report["totals"]["ghosts"], 2);
}

#[tokio::test]
async fn a_file_stream_verifies_clean_also_while_written_and_a_damaged_copy_reports_exactly_the_damage()
 {
    let s = Scene::new("kw-verify-file").await;
    let mut kw = s.kubewire().watch("configmaps", &[&s.ns]).start();
    kw.ready(60).await;
    workload(&s, || async { kw.events() }).await;
    let config = s.dir.path().join("config.yaml");

    // Still being written: a writer keeps changing b while verify reads. Versions newer than
    // the cluster read are not discrepancies; lagging ones catch up within the settle time.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (api, stop) = (s.configmaps(), stop.clone());
        async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let patch = Patch::Merge(json!({"data": {"value": format!("w{i}")}}));
                api.patch("b", &PatchParams::default(), &patch)
                    .await
                    .unwrap();
            }
            i
        }
    });
    let (code, report) = tokio::task::spawn_blocking({
        let config = config.clone();
        move || verify(&config, 20, &[])
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(writes > 0, "the writer wrote while verify ran");
    assert_clean(code, &report);
    assert!(
        report["source"].as_str().unwrap().contains("events.jsonl"),
        "the configured file sink is read: {report}"
    );

    let status = kw.stop().await;
    assert!(status.success(), "{status}");
    let (code, report) = verify(&config, 0, &[]);
    assert_clean(code, &report);

    let damaged = s.dir.path().join("damaged.jsonl");
    let lines: Vec<String> = damage(&kw.events(), &s.ns)
        .iter()
        .map(|e| e.to_string())
        .collect();
    std::fs::write(&damaged, lines.join("\n") + "\n").unwrap();
    let (code, report) = verify(&config, 0, &["--file", damaged.to_str().unwrap()]);
    assert_exactly_the_damage(code, &report);

    // The text summary says the same.
    let out = Command::new(env!("CARGO_BIN_EXE_kubewire"))
        .args(["verify", "--settle", "0", "--config"])
        .arg(&config)
        .args(["--file", damaged.to_str().unwrap()])
        .env("KUBECONFIG", common::var("KUBECONFIG"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("stale: 1\n"), "{text}");
    assert!(text.contains("ghosts: 2\n"), "{text}");
    assert!(text.contains(&format!("/{}/c (uid ", s.ns)), "{text}");
    assert!(text.ends_with("result: 3 discrepancies\n"), "{text}");
}

#[tokio::test]
async fn a_kafka_topic_verifies_clean_and_a_damaged_copy_reports_exactly_the_damage() {
    let s = Scene::new("kw-verify-kafka").await;
    let topic = common::unique_name("kw-verify");
    kafka_util::create_topic(&topic, 3, &[]).await;
    let mut kw = s
        .kubewire()
        .watch("configmaps", &[&s.ns])
        .sink_yaml(&kafka_util::sink_yaml(&topic, ""))
        .start();
    kw.ready(60).await;
    let reader = tokio::sync::Mutex::new(kafka_util::Reader::new(&topic).await);
    workload(&s, || async {
        reader
            .lock()
            .await
            .poll()
            .iter()
            .filter_map(|r| r.value.clone())
            .collect()
    })
    .await;
    assert!(kw.stop().await.success());
    let config = s.dir.path().join("config.yaml");
    let (code, report) = verify(&config, 0, &[]);
    assert_clean(code, &report);
    assert!(
        report["source"].as_str().unwrap().contains(&topic),
        "{report}"
    );

    // The damaged copy, keyed as kubewire keys, in a topic of its own.
    let copy = format!("damaged-{topic}");
    kafka_util::create_topic(&copy, 3, &[]).await;
    let events = reader.lock().await.events();
    produce(&copy, &damage(&events, &s.ns)).await;
    let (code, report) = verify(&config, 0, &["--topic", &copy]);
    assert_exactly_the_damage(code, &report);
    // A pattern: every topic it matches (here the original alone) is read.
    let (code, report) = verify(&config, 0, &["--topic", &format!("{topic}*")]);
    assert_clean(code, &report);
    // A pattern matching nothing is a failure to read, exit 1.
    let out = Command::new(env!("CARGO_BIN_EXE_kubewire"))
        .args(["verify", "--settle", "0", "--config"])
        .arg(&config)
        .args(["--topic", "kw-no-such-topic-*"])
        .env("KUBECONFIG", common::var("KUBECONFIG"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no topic matches"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Produces `events` to `topic`, each keyed `<namespace>/<name>`, and waits for every ack.
async fn produce(topic: &str, events: &[Value]) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::kafka_brokers())
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for e in events {
        let key = format!(
            "{}/{}",
            e["k8snamespace"].as_str().unwrap_or(""),
            e["k8sname"].as_str().unwrap_or("")
        );
        let payload = e.to_string();
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload(&payload),
                std::time::Duration::from_secs(30),
            )
            .await
            .expect("produced");
    }
}

#[tokio::test]
async fn a_nats_stream_verifies_clean_and_a_damaged_copy_reports_exactly_the_damage() {
    let s = Scene::new("kw-verify-nats").await;
    let (_client, ctx) = nats_support::js().await;
    let prefix = nats_support::unique_prefix("kwverify");
    let stream = prefix.to_uppercase();
    let mut kw = s
        .kubewire()
        .watch("configmaps", &[&s.ns])
        .sink_yaml(&nats_support::jetstream_sink(
            &common::nats_url(),
            &stream,
            &prefix,
        ))
        .start();
    kw.ready(60).await;
    workload(&s, || async {
        nats_support::events(&nats_support::read_stream(&ctx, &stream).await)
    })
    .await;
    assert!(kw.stop().await.success());
    let config = s.dir.path().join("config.yaml");
    let (code, report) = verify(&config, 0, &[]);
    assert_clean(code, &report);
    assert!(
        report["source"].as_str().unwrap().contains(&stream),
        "{report}"
    );

    let copy = format!("{stream}D");
    let subjects = format!("{prefix}d.>");
    ctx.create_stream(async_nats::jetstream::stream::Config {
        name: copy.clone(),
        subjects: vec![subjects.clone()],
        ..Default::default()
    })
    .await
    .expect("create the copy's stream");
    let events = nats_support::events(&nats_support::read_stream(&ctx, &stream).await);
    for e in damage(&events, &s.ns) {
        let subject = format!("{prefix}d.{}", e["k8sname"].as_str().unwrap());
        ctx.publish(subject, e.to_string().into())
            .await
            .unwrap()
            .await
            .expect("stored");
    }
    let (code, report) = verify(&config, 0, &["--stream", &copy]);
    assert_exactly_the_damage(code, &report);
    // A subject filter reads a part of the stream: only g's subject → g is the only ghost,
    // a and b are missing.
    let (code, report) = verify(
        &config,
        0,
        &["--stream", &copy, "--subject", &format!("{prefix}d.g")],
    );
    assert_eq!(code, Some(1));
    assert_eq!(names(&report, "ghosts"), ["g"], "{report:#}");
    assert_eq!(names(&report, "missing"), ["a", "b"], "{report:#}");
    nats_support::delete_stream(&ctx, &copy).await;
    nats_support::delete_stream(&ctx, &stream).await;
}

/// `kubewire tail <args>`, its stdout read line by line.
struct Tail {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Tail {
    fn start(args: &[&str]) -> Tail {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubewire"))
            .arg("tail")
            .args(args)
            .env_remove("KUBEWIRE_CONFIG")
            .stdout(std::process::Stdio::piped())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn kubewire tail");
        let stdout = child.stdout.take().unwrap();
        Tail {
            child,
            lines: tokio::io::BufReader::new(stdout).lines(),
        }
    }

    /// The next line that contains `needle`; every other line read on the way is returned
    /// too (all of them, in order).
    async fn until(&mut self, needle: &str) -> Vec<String> {
        let mut seen = Vec::new();
        common::within(
            60,
            &format!("tail to print a line with {needle:?}"),
            async {
                loop {
                    let line = self
                        .lines
                        .next_line()
                        .await
                        .unwrap()
                        .unwrap_or_else(|| panic!("tail ended; printed {seen:?}"));
                    let hit = line.contains(needle);
                    seen.push(line);
                    if hit {
                        return;
                    }
                }
            },
        )
        .await;
        seen
    }
}

/// With kubewire running, `tail --follow --name 'f*'` prints `first` when it is created
/// and when it changes (naming the changed path), and not `other`.
async fn tail_follows(s: &Scene, tail: &mut Tail) {
    let api = s.configmaps();
    api.create(&PostParams::default(), &configmap("other", &[], "1"))
        .await
        .unwrap();
    api.create(&PostParams::default(), &configmap("first", &[], "1"))
        .await
        .unwrap();
    let seen = tail.until(&format!("ConfigMap {}/first rv=", s.ns)).await;
    assert!(seen.last().unwrap().contains(" added "), "{seen:?}");
    api.patch(
        "first",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"value": "2"}})),
    )
    .await
    .unwrap();
    let more = tail.until(" modified ").await;
    let line = more.last().unwrap();
    assert!(
        line.contains(&format!("ConfigMap {}/first", s.ns)),
        "{line}"
    );
    assert!(line.ends_with("changed: data.value"), "{line}");
    assert!(
        !seen.iter().chain(&more).any(|l| l.contains("/other ")),
        "the name filter let other through: {seen:?} {more:?}"
    );
    tail.child.kill().await.unwrap();
}

#[tokio::test]
async fn tail_follow_prints_new_kafka_events_as_they_arrive() {
    let s = Scene::new("kw-tail-kafka").await;
    let topic = common::unique_name("kw-tail");
    kafka_util::create_topic(&topic, 3, &[]).await;
    let kw = s
        .kubewire()
        .watch("configmaps", &[&s.ns])
        .sink_yaml(&kafka_util::sink_yaml(&topic, ""))
        .start();
    kw.ready(60).await;
    let brokers = common::kafka_brokers();
    let mut tail = Tail::start(&[
        "--follow",
        "--topic",
        &topic,
        "--brokers",
        &brokers,
        "--name",
        "f*",
    ]);
    tail_follows(&s, &mut tail).await;
}

#[tokio::test]
async fn tail_follow_prints_new_nats_events_as_they_arrive() {
    let s = Scene::new("kw-tail-nats").await;
    let prefix = nats_support::unique_prefix("kwtail");
    let stream = prefix.to_uppercase();
    let kw = s
        .kubewire()
        .watch("configmaps", &[&s.ns])
        .sink_yaml(&nats_support::jetstream_sink(
            &common::nats_url(),
            &stream,
            &prefix,
        ))
        .start();
    kw.ready(60).await;
    let config = s.dir.path().join("config.yaml");
    // The stream and its subjects come from the configuration's NATS sink.
    let mut tail = Tail::start(&[
        "-f",
        "--config",
        config.to_str().unwrap(),
        "--name",
        "f*",
        "--kind",
        "configmaps",
    ]);
    tail_follows(&s, &mut tail).await;
    let (_client, ctx) = nats_support::js().await;
    nats_support::delete_stream(&ctx, &stream).await;
}

#[tokio::test]
async fn tail_prints_a_file_as_pretty_lines_or_as_the_cloudevents_and_ends() {
    let s = Scene::new("kw-tail-file").await;
    let mut kw = s.kubewire().watch("configmaps", &[&s.ns]).start();
    kw.ready(60).await;
    workload(&s, || async { kw.events() }).await;
    assert!(kw.stop().await.success());
    let file = s.dir.path().join("events.jsonl");
    let tail = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kubewire"))
            .args(["tail", "--file", file.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let pretty = tail(&[]);
    let lines: Vec<&str> = pretty.lines().collect();
    assert_eq!(lines.len(), 5, "{pretty}");
    assert!(
        lines[3].contains(&format!(" modified ConfigMap {}/a rv=", s.ns)),
        "{pretty}"
    );
    assert!(lines[3].ends_with("watch changed: data.value"), "{pretty}");
    assert!(
        lines[4].contains(&format!(" deleted  ConfigMap {}/c rv=", s.ns)),
        "{pretty}"
    );
    let json = tail(&["-o", "json", "--type", "deleted"]);
    let docs: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(docs.len(), 1, "{json}");
    assert_eq!(docs[0], kw.events()[4]);
    assert_eq!(tail(&["--namespace", "elsewhere"]), "");
}
