//! The fault suite in its shortened CI form (docs/reliability.md): each test runs one scenario of
//! `dev/faults --ci` against the real services — churn workload, one fault, then the
//! independent checker (`dev/checker/`, which shares no code with kubewire) compares the sink
//! with the cluster — and asserts its verdict: nothing lost, order kept, data equal.
//!
//! These tests stop and restart shared services (Kafka, NATS, the API server) and compact
//! etcd, so they live in a test binary of their own (cargo runs test binaries one at a time),
//! and a mutex runs them one after another within it. The full-length run is `dev/faults`.

mod common;

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// One scenario at a time: they share the services and the machine.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `dev/faults --ci <scenario>` with kubewire's test binary and returns its verdict
/// line; panics with the suite's output unless the scenario passed.
fn scenario(name: &str) -> String {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    common::env(); // the services are up (panics with "run dev/testenv up" otherwise)
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("faults.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(common::repo_root().join("dev/faults"))
        .args([
            "--ci",
            "--kubewire",
            env!("CARGO_BIN_EXE_kubewire"),
            "--workdir",
        ])
        .arg(dir.path())
        .arg(name)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("run dev/faults");
    // Bounded wait for the scenario (the CI form of each takes well under a minute): the
    // child is awaited on a thread of its own, and killed if it outlives the deadline.
    let pid = child.id().to_string();
    let (done, finished) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait().unwrap();
        let _ = done.send(());
        status
    });
    let status = match finished.recv_timeout(Duration::from_secs(240)) {
        Ok(()) => Some(waiter.join().unwrap()),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            let _ = waiter.join();
            None
        }
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let verdict = output
        .lines()
        .rfind(|l| l.starts_with("VERDICT "))
        .unwrap_or("")
        .to_owned();
    println!("{verdict}");
    match status {
        Some(s) if s.success() && verdict.contains(": PASS ") => {}
        Some(s) => panic!("scenario {name} failed ({s}):\n{output}"),
        None => panic!("scenario {name} did not finish within 240 s:\n{output}"),
    }
    assert!(verdict.contains(" lost=0 "), "{verdict}");
    // `kubewire verify` on the destination agrees with the independent checker's PASS
    // (where the destination still holds the whole stream).
    let expected = if ["nats-stream-deleted", "kafka-topic-deleted"].contains(&name) {
        "skipped"
    } else {
        "pass"
    };
    assert_eq!(figure(&verdict, "kubewire_verify"), expected, "{verdict}");
    // keep the scenario's files only on failure (the panic above skips this)
    drop(dir);
    verdict
}

/// Reads one `key=value` figure of a verdict line.
/// A figure that is a number above zero (not `0`, not `none`).
fn positive(figure: &str) -> bool {
    figure.parse::<f64>().is_ok_and(|n| n > 0.0)
}

fn figure<'a>(verdict: &'a str, key: &str) -> &'a str {
    verdict
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {verdict}"))
}

#[test]
fn kill9_ten_times_under_churn_loses_nothing_and_replays_with_identical_ids() {
    let v = scenario("kill9-file");
    assert_kill9_restarts_resumed(&v);
}

/// What the kill9 scenarios report about kubewire itself (dev/faults.d/faults.py
/// `fault_kill9`): `kills` counts the kills that ended a *running* kubewire (exit by
/// SIGKILL, not the scenario's plan: a kubewire that had already died would lower it), each
/// was followed by a restart (`kubewire_runs`), the restarts resumed from the checkpoint
/// and none of them listed (no compaction in this scenario: every restart is inside the
/// watch window, invariant 4), and every stream's checkpoint advanced between restarts
/// (`checkpoints_advanced`, 8 streams: 4 namespaces × 2 resources). The scenario also fails
/// on its own when a restart resumed from behind an event that was downstream more than
/// 1 s before the kill (`replay_checked` counts those checks; kills of runs younger than
/// that window are not checked, so it may be 0 in a short run and is not asserted).
fn assert_kill9_restarts_resumed(v: &str) {
    let kills: u32 = figure(v, "kills").parse().expect("kills is a number");
    assert_eq!(kills, 10, "every planned kill found kubewire running: {v}");
    let runs: u32 = figure(v, "kubewire_runs").parse().expect("a number");
    assert_eq!(runs, kills + 1, "every kill was followed by a restart: {v}");
    assert!(
        positive(figure(v, "resumed_restarts")),
        "the restarts resumed from the checkpoint: {v}"
    );
    assert_eq!(
        figure(v, "relisted_restarts"),
        "0",
        "no restart listed instead of resuming: {v}"
    );
    assert_eq!(
        figure(v, "checkpoints_advanced"),
        "8",
        "every stream's checkpoint advanced: {v}"
    );
    assert!(
        figure(v, "replay_checked").parse::<u32>().is_ok(),
        "the replay bound was evaluated: {v}"
    );
}

#[test]
fn kill9_with_nats_sink_loses_nothing() {
    let v = scenario("kill9");
    assert_kill9_restarts_resumed(&v);
}

#[test]
fn kill9_with_kafka_sink_loses_nothing() {
    let v = scenario("kill9-kafka");
    assert_kill9_restarts_resumed(&v);
}

#[test]
fn kafka_outage_under_churn_loses_nothing_and_recovers() {
    scenario("kafka-outage");
}

#[test]
fn nats_restart_under_churn_loses_nothing_and_recovers() {
    scenario("nats-restart");
}

#[test]
fn apiserver_restart_under_churn_loses_nothing_and_recovers() {
    scenario("apiserver-restart");
}

#[test]
fn etcd_compaction_loop_relists_with_markers_and_loses_nothing() {
    let v = scenario("compaction");
    assert_ne!(figure(&v, "relist_markers"), "0", "{v}");
}

#[test]
fn stalled_apiserver_watch_is_restarted_and_loses_nothing() {
    let v = scenario("stalled-watch");
    assert_ne!(figure(&v, "idle_restarts"), "0", "{v}");
}

#[test]
fn deleted_nats_stream_is_reported_and_recovered_when_recreated() {
    let v = scenario("nats-stream-deleted");
    assert_eq!(figure(&v, "error_logged"), "True", "{v}");
    // kubewire's own count of publishes retried while the stream was gone
    assert!(positive(figure(&v, "sink_retries")), "{v}");
}

// Regression (docs/reliability.md, bug 2): messages librdkafka fails for the missing topic
// were produced again after later events of the same key. The checker's verdict counts every
// per-key version regression (`misordered`) and stale final state; both must be 0.
#[test]
fn deleted_kafka_topic_is_reported_and_recovered_when_recreated() {
    let v = scenario("kafka-topic-deleted");
    assert_eq!(figure(&v, "error_logged"), "True", "{v}");
    assert_eq!(figure(&v, "readyz"), "503", "{v}");
    assert_eq!(figure(&v, "misordered"), "0", "{v}");
    // The messages librdkafka gave up on were produced again, and counted. Whether it gives
    // up at all depends on its metadata timing: while it still believes the deleted topic
    // exists it retries the produce requests itself (message.timeout.ms=0) and nothing fails
    // (seen: a run with sink_retries=0, lost=0, misordered=0). The re-send order is pinned by
    // the unit tests of src/sink/kafka/delivery.rs; here the count must be reported.
    let retries: u64 = figure(&v, "sink_retries")
        .parse()
        .unwrap_or_else(|_| panic!("sink_retries is a count: {v}"));
    if retries == 0 {
        eprintln!(
            "kafka-topic-deleted: librdkafka gave up on no delivery this run (nothing to re-send)"
        );
    }
}

#[test]
fn revoked_kafka_credentials_are_reported_and_recovered_when_restored() {
    let v = scenario("kafka-credentials-revoked");
    assert_eq!(figure(&v, "error_logged"), "True", "{v}");
    assert_eq!(figure(&v, "readyz"), "503", "{v}");
}
