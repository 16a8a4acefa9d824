//! The NATS sink issue's behaviours against the real nats-server (JetStream) and
//! kube-apiserver of `dev/testenv`: the real `kubewire` binary publishes, and the tests read
//! the stream back through a JetStream consumer. The server-outage test is in
//! `tests/nats_outage.rs` (it restarts the shared server).

mod common;
mod harness;
mod nats_support;

use std::process::{Command, Stdio};
use std::time::Instant;

use futures::StreamExt;
use harness::{Scene, configmap};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use nats_support::{
    Published, assert_headers, assert_per_subject_order, distinct_ids, jetstream_sink, js,
    read_stream, unique_prefix, wait_stream_matches_cluster,
};
use serde_json::json;

/// Updates `name`'s data to `value` (merge patch).
async fn update(api: &Api<ConfigMap>, name: impl AsRef<str>, value: impl ToString) {
    let value = value.to_string();
    api.patch(
        name.as_ref(),
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"value": value}})),
    )
    .await
    .unwrap();
}

/// Percent-decoding of a subject token (the documented escaping), `_` → empty.
fn unescape(token: &str) -> String {
    kubewire::sink::nats::subject::unescape(token).unwrap()
}

async fn stream_messages(ctx: &async_nats::jetstream::Context, stream: &str) -> u64 {
    let mut s = ctx.get_stream(stream).await.unwrap();
    s.info().await.unwrap().state.messages
}

#[tokio::test]
async fn jetstream_end_to_end_ordered_per_subject_with_headers_and_final_state() {
    let s = Scene::new("kw-nats-e2e").await;
    let (client, ns) = (&s.client, &s.ns);
    let (_nc, ctx) = js().await;
    let prefix = unique_prefix("kwe2e");
    let stream = prefix.to_uppercase();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let pp = PostParams::default();

    // A snapshot to measure throughput of the initial sync.
    const SNAPSHOT: usize = 300;
    let creates = (0..SNAPSHOT).map(|i| {
        let api = api.clone();
        async move {
            api.create(
                &PostParams::default(),
                &configmap(&format!("bulk-{i}"), &[], "0"),
            )
            .await
            .unwrap()
        }
    });
    futures::stream::iter(creates)
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;

    let started = Instant::now();
    let kw = s
        .kubewire()
        .watch("configmaps", &[ns])
        .sink_yaml(&jetstream_sink(&common::nats_url(), &stream, &prefix))
        .start();
    kw.ready(60).await;
    common::eventually(60, "the snapshot in the stream", || async {
        (stream_messages(&ctx, &stream).await >= SNAPSHOT as u64).then_some(())
    })
    .await;
    let snapshot_secs = started.elapsed().as_secs_f64();

    // The stream was created as configured.
    let info = ctx.get_stream(&stream).await.unwrap().cached_info().clone();
    assert_eq!(
        info.config.subjects,
        [format!("{prefix}.*.*.*.*.*")],
        "default subjects"
    );
    assert_eq!(info.config.duplicate_window.as_secs(), 300);

    // Churn: creates (some names with dots, escaped in subjects), updates, deletes.
    const N: usize = 20;
    const UPDATES: usize = 8;
    let names: Vec<String> = (0..N)
        .map(|i| {
            if i % 5 == 0 {
                format!("cfg.dotted-{i}")
            } else {
                format!("cfg-{i}")
            }
        })
        .collect();
    let churn_start = Instant::now();
    for n in &names {
        api.create(&pp, &configmap(n, &[], "0")).await.unwrap();
    }
    for round in 1..=UPDATES {
        futures::future::join_all(names.iter().map(|n| update(&api, n, round))).await;
    }
    for n in names.iter().take(5) {
        api.delete(n, &DeleteParams::default()).await.unwrap();
    }
    let writes = N + N * UPDATES + 5;
    let published = wait_stream_matches_cluster(&ctx, &stream, client, &[ns], 90).await;
    let churn_secs = churn_start.elapsed().as_secs_f64();
    println!(
        "e2e: snapshot of {SNAPSHOT} events in {snapshot_secs:.2}s from process start ({:.0} events/s); \
         {writes} churn writes published in {churn_secs:.2}s ({:.0} events/s, API-write bound)",
        SNAPSHOT as f64 / snapshot_secs,
        writes as f64 / churn_secs
    );

    // Exactly one message per change: no loss, no duplicate.
    assert_eq!(published.len(), SNAPSHOT + writes);
    assert_eq!(distinct_ids(&published), published.len());
    let subjects = assert_per_subject_order(&published);
    assert_eq!(subjects, SNAPSHOT + N);
    for p in &published {
        assert_headers(p);
        let tokens: Vec<&str> = p.subject.split('.').collect();
        assert_eq!(tokens.len(), 6, "{}", p.subject);
        assert_eq!(tokens[0], prefix);
        assert_eq!(tokens[1], "default");
        assert_eq!(tokens[2], "core");
        assert_eq!(tokens[3], "ConfigMap");
        assert_eq!(unescape(tokens[4]), *ns);
        assert_eq!(unescape(tokens[5]), p.event["k8sname"].as_str().unwrap());
    }
    let dotted = published
        .iter()
        .find(|p| p.event["k8sname"] == "cfg.dotted-0")
        .unwrap();
    assert!(
        dotted.subject.ends_with(".cfg%2Edotted-0"),
        "{}",
        dotted.subject
    );
    // Each object's events, in order, are exactly its writes.
    let of = |name: &str| -> Vec<&Published> {
        published
            .iter()
            .filter(|p| p.event["k8sname"] == name)
            .collect()
    };
    let first = of(&names[0]);
    let types: Vec<&str> = first
        .iter()
        .map(|p| p.event["type"].as_str().unwrap())
        .collect();
    let mut want = vec!["io.kubewire.object.added"];
    want.extend(std::iter::repeat_n("io.kubewire.object.modified", UPDATES));
    want.push("io.kubewire.object.deleted");
    assert_eq!(types, want);
    drop(kw);
    nats_support::delete_stream(&ctx, &stream).await;
}

#[tokio::test]
async fn replay_from_an_older_checkpoint_after_kill9_is_dropped_by_jetstream_dedupe() {
    let s = Scene::new("kw-nats-dedupe").await;
    let (client, dir, ns) = (&s.client, &s.dir, &s.ns);
    let (_nc, ctx) = js().await;
    let prefix = unique_prefix("kwdup");
    let stream = prefix.to_uppercase();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let sink = jetstream_sink(&common::nats_url(), &stream, &prefix);

    // Run 1: ten objects, then a clean stop; keep that (older) checkpoint.
    let mut kw = s
        .kubewire()
        .watch("configmaps", &[ns])
        .sink_yaml(&sink)
        .start();
    kw.ready(60).await;
    const N: usize = 10;
    for i in 0..N {
        api.create(
            &PostParams::default(),
            &configmap(&format!("d-{i}"), &[], "0"),
        )
        .await
        .unwrap();
    }
    wait_stream_matches_cluster(&ctx, &stream, client, &[ns], 60).await;
    assert!(kw.stop().await.success());
    let checkpoint = dir.path().join("checkpoint.redb");
    let older = dir.path().join("older.redb");
    std::fs::copy(&checkpoint, &older).unwrap();

    // Run 2: a burst of updates, killed -9 in the middle of it.
    kw.restart();
    kw.wait_log(30, 2, "resuming from checkpoint", 1).await;
    let burst = |from: usize, to: usize| {
        let api = api.clone();
        async move {
            for round in from..to {
                futures::future::join_all((0..N).map(|i| update(&api, format!("d-{i}"), round)))
                    .await;
            }
        }
    };
    let writer = tokio::spawn(burst(1, 11));
    common::eventually(60, "part of the burst in the stream", || async {
        (stream_messages(&ctx, &stream).await >= (N + 3 * N) as u64).then_some(())
    })
    .await;
    kw.kill9();
    writer.await.unwrap();
    let before_replay = stream_messages(&ctx, &stream).await;

    // Run 3 from the older checkpoint: everything since run 1 is published again.
    std::fs::copy(&older, &checkpoint).unwrap();
    kw.restart();
    burst(11, 13).await;
    let published = wait_stream_matches_cluster(&ctx, &stream, client, &[ns], 90).await;
    let duplicates = kw.log_messages(3, "JetStream dropped a duplicate").len();
    println!(
        "dedupe: {before_replay} messages before the replay, {} after; {duplicates} PubAcks with duplicate: true in run 3",
        published.len()
    );
    assert_eq!(
        distinct_ids(&published),
        published.len(),
        "the stream holds no duplicate id"
    );
    assert_eq!(published.len(), N + 12 * N, "one message per change");
    // Everything stored before the kill was published again by run 3 and dropped.
    assert!(
        duplicates as u64 >= before_replay - N as u64,
        "{duplicates} duplicates, {before_replay} stored before the replay"
    );
    assert_per_subject_order(&published);
    drop(kw);
    nats_support::delete_stream(&ctx, &stream).await;
}

/// Runs `kubewire run` on `config` (expecting it to exit) and returns (success, stderr).
async fn run_to_exit(dir: &std::path::Path, config: &str) -> (bool, String) {
    let path = dir.join("config.yaml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubewire"));
    cmd.args(["run", "--config"])
        .arg(&path)
        .env("KUBECONFIG", common::var("KUBECONFIG"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let out = common::within(
        60,
        "kubewire to exit",
        tokio::task::spawn_blocking(move || cmd.output().unwrap()),
    )
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn missing_stream_or_uncovered_subject_is_a_clear_startup_error() {
    let s = Scene::new("kw-nats-startup").await;
    let (dir, ns) = (&s.dir, &s.ns);
    let (_nc, ctx) = js().await;
    let prefix = unique_prefix("kwstart");
    let stream = prefix.to_uppercase();
    let config = |stream_yaml: &str| {
        format!(
            "resources:\n  - resource: configmaps\n    namespaces: [{ns}]\n\
             sink:\n  type: nats\n  url: {}\n  subject: '{prefix}.{{namespace}}.{{name}}'\n{stream_yaml}\
             checkpoint:\n  path: {}\nlog:\n  format: text\nadmin:\n  enabled: false\n",
            common::nats_url(),
            dir.path().join("cp.redb").display(),
        )
    };

    // No such stream, and not allowed to create it.
    let (ok, stderr) = run_to_exit(
        dir.path(),
        &config(&format!("  stream:\n    name: {stream}\n")),
    )
    .await;
    assert!(!ok);
    assert!(
        stderr.contains(&format!("JetStream stream {stream} does not exist"))
            && stderr.contains("stream.create: true"),
        "{stderr}"
    );

    // A stream that exists but does not cover the template's subjects.
    ctx.create_stream(async_nats::jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{prefix}.only-this.>")],
        storage: async_nats::jetstream::stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .unwrap();
    let (ok, stderr) = run_to_exit(
        dir.path(),
        &config(&format!("  stream:\n    name: {stream}\n")),
    )
    .await;
    assert!(!ok);
    assert!(
        stderr.contains("does not cover the subject template")
            && stderr.contains(&format!("{prefix}.*.*")),
        "{stderr}"
    );
    nats_support::delete_stream(&ctx, &stream).await;
}

#[tokio::test]
async fn core_nats_mode_publishes_fire_and_forget_with_headers() {
    let s = Scene::new("kw-nats-core").await;
    let (client, ns) = (&s.client, &s.ns);
    let (nc, _ctx) = js().await;
    let prefix = unique_prefix("kwcore");
    let mut sub = nc.subscribe(format!("{prefix}.>")).await.unwrap();
    nc.flush().await.unwrap();
    let kw = s
        .kubewire()
        .watch("configmaps", &[ns])
        .sink_yaml(&format!(
            "sink:\n  type: nats\n  url: {}\n  jetstream: false\n  \
             subject: '{prefix}.{{kind}}.{{namespace}}.{{name}}'\n",
            common::nats_url()
        ))
        .start();
    kw.ready(60).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &configmap("c.1", &[], "a"))
        .await
        .unwrap();
    update(&api, "c.1", "b").await;
    api.delete("c.1", &DeleteParams::default()).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = common::within(30, "core NATS messages", sub.next())
            .await
            .unwrap();
        got.push(m);
    }
    let types: Vec<String> = got
        .iter()
        .map(|m| {
            let e: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            assert_eq!(
                m.subject.as_str(),
                format!("{prefix}.ConfigMap.{}.c%2E1", ns)
            );
            let h = m.headers.as_ref().unwrap();
            assert_eq!(h.get("Ce-Id").unwrap().as_str(), e["id"].as_str().unwrap());
            assert_eq!(
                h.get("Nats-Msg-Id").unwrap().as_str(),
                e["id"].as_str().unwrap()
            );
            e["type"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        types,
        [
            "io.kubewire.object.added",
            "io.kubewire.object.modified",
            "io.kubewire.object.deleted"
        ]
    );
}

#[tokio::test]
async fn oversize_event_is_replaced_by_a_stand_in_naming_the_object_and_later_events_flow() {
    let s = Scene::new("kw-nats-big").await;
    let (client, ns) = (&s.client, &s.ns);
    let (_nc, ctx) = js().await;
    let prefix = unique_prefix("kwbig");
    let stream = prefix.to_uppercase();
    let kw = s
        .kubewire()
        .watch("configmaps", &[ns])
        .sink_yaml(&jetstream_sink(&common::nats_url(), &stream, &prefix))
        .start();
    kw.ready(60).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let pp = PostParams::default();
    api.create(&pp, &configmap("before", &[], "x"))
        .await
        .unwrap();
    // Just under the API server's 1 MiB ConfigMap limit: over NATS' 1 MiB max_payload once
    // wrapped in the envelope and headers.
    let big = "x".repeat(1_048_000);
    api.create(&pp, &configmap("big", &[], &big)).await.unwrap();
    api.create(&pp, &configmap("after", &[], "x"))
        .await
        .unwrap();

    let published = common::eventually(60, "`after` in the stream", || async {
        let p = read_stream(&ctx, &stream).await;
        p.iter().any(|p| p.event["k8sname"] == "after").then_some(p)
    })
    .await;
    let seq: Vec<(&str, &str)> = published
        .iter()
        .map(|p| {
            (
                p.event["k8sname"].as_str().unwrap(),
                p.event["type"].as_str().unwrap(),
            )
        })
        .collect();
    // The same behaviour as the Kafka sink: a small stand-in event keeps the object's
    // place in its stream (identity and version, no data) and says why.
    assert_eq!(
        seq,
        [
            ("before", "io.kubewire.object.added"),
            ("big", "io.kubewire.object.oversize"),
            ("after", "io.kubewire.object.added"),
        ]
    );
    let stand_in = &published[1].event;
    assert!(
        stand_in["id"]
            .as_str()
            .unwrap()
            .ends_with("/added/oversize")
    );
    assert!(
        stand_in
            .get("data")
            .is_some_and(|d| d.get("data").is_none()),
        "no object data"
    );
    assert_eq!(stand_in["data"]["originalType"], "io.kubewire.object.added");
    assert!(stand_in["k8sresourceversion"].is_string());
    let why = stand_in["kubewireerror"].as_str().unwrap();
    assert!(
        why.contains("exceeds") && why.contains("NATS server"),
        "{why}"
    );
    let logged = kw.log_messages(
        1,
        "event larger than the NATS server accepts; publishing an oversize event in its place",
    );
    assert_eq!(
        logged.len(),
        1,
        "the error is logged once, naming the object"
    );
    assert_eq!(logged[0]["subject"], format!("core/v1/configmaps/{ns}/big"));
    drop(kw);
    nats_support::delete_stream(&ctx, &stream).await;
}

/// A private nats-server (JetStream, token auth) on a free port; killed on drop.
struct TokenServer {
    child: std::process::Child,
    url: String,
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nats_server_binary() -> std::path::PathBuf {
    let path = common::env()
        .get("PATH")
        .cloned()
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .expect("nats-server on the test environment's PATH (dev/testenv up)")
}

#[tokio::test]
async fn token_authentication_against_a_server_that_requires_it() {
    let s = Scene::new("kw-nats-auth").await;
    let (client, dir, ns) = (&s.client, &s.dir, &s.ns);
    let token = format!("tok-{}", common::unique_name("s"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = TokenServer {
        child: Command::new(nats_server_binary())
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path().join("js"))
            .args(["--auth", &token])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server"),
        url: format!("nats://127.0.0.1:{port}"),
    };
    let nc = common::eventually(20, "the token server to accept clients", || async {
        async_nats::ConnectOptions::with_token(token.clone())
            .connect(server.url.as_str())
            .await
            .ok()
    })
    .await;
    assert!(
        async_nats::connect(server.url.as_str()).await.is_err(),
        "the server refuses clients without the token"
    );
    let ctx = async_nats::jetstream::new(nc);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let kw = s
        .kubewire()
        .watch("configmaps", &[ns])
        .sink_yaml(&format!(
            "{}  auth:\n    token: {{file: {}}}\n",
            jetstream_sink(&server.url, "AUTHED", "authed"),
            token_file.display()
        ))
        .start();
    kw.ready(60).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &configmap("secured", &[], "1"))
        .await
        .unwrap();
    let published = wait_stream_matches_cluster(&ctx, "AUTHED", client, &[ns], 60).await;
    assert_eq!(published.len(), 1);
    assert_headers(&published[0]);
    drop(kw);
}
