//! The NATS server is down when kubewire starts (issue "Real clusters", item 6): kubewire
//! waits for it instead of exiting after 30 s (a CrashLoopBackOff in a pod), `/readyz` names
//! the server it waits for, `/healthz` stays 200, a SIGTERM while waiting exits 0, and once the
//! server is up events flow. In a test binary of its own: it stops the shared NATS server, and
//! cargo runs test binaries one at a time.

mod common;
mod harness;
mod nats_support;

use std::time::{Duration, Instant};

use harness::{Scene, configmap, http_get};
use kube::api::PostParams;
use nats_support::{jetstream_sink, js, read_stream, unique_prefix};

/// Starts NATS again on drop if the test failed while it was stopped.
struct RestartNats;

impl Drop for RestartNats {
    fn drop(&mut self) {
        // `start` is a no-op for a running service; never panic in drop.
        let _ = std::process::Command::new(common::repo_root().join("dev/testenv"))
            .args(["start", "nats"])
            .status();
    }
}

#[tokio::test]
async fn nats_down_at_start_is_waited_for_and_events_flow_once_it_is_up() {
    let s = Scene::new("kw-nats-start").await;
    let stream = unique_prefix("KWSTART");
    let prefix = unique_prefix("kwstart");
    let sink = jetstream_sink(&common::nats_url(), &stream, &prefix);
    common::testenv(&["stop", "nats"]);
    let _restart = RestartNats;

    // A replica that is stopped while it waits exits cleanly.
    let quitter_dir = tempfile::tempdir().unwrap();
    let mut quitter = harness::Kubewire::builder(quitter_dir.path())
        .watch("configmaps", &[&s.ns])
        .sink_yaml(&sink)
        .start();
    let mut kw = s
        .kubewire()
        .watch("configmaps", &[&s.ns])
        .sink_yaml(&sink)
        .start();
    let admin = kw.admin().await;
    let waiting = format!(
        "sink nats: waiting: cannot connect to NATS at {}",
        common::nats_url()
    );
    common::eventually(
        30,
        "/readyz to name the NATS server it waits for",
        || async {
            let (code, body) = http_get(&admin, "/readyz").await;
            (code == 503 && body.contains(&waiting)).then_some(())
        },
    )
    .await;
    quitter.admin().await;
    assert!(
        quitter.stop().await.success(),
        "SIGTERM while waiting for the sink exits 0: {:#?}",
        quitter.logs(1)
    );

    // Past the 30 s after which kubewire used to give up and exit 1: still serving, live.
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(40) {
        let (code, body) = http_get(&admin, "/healthz").await;
        assert_eq!(code, 200, "after {:?}: {body}", since.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    common::testenv(&["start", "nats"]);
    // The next attempt (backoff at most 10 s) connects and creates the stream.
    kw.ready(60).await;
    s.configmaps()
        .create(&PostParams::default(), &configmap("after-start", &[], "1"))
        .await
        .unwrap();
    let (_nc, ctx) = js().await;
    common::eventually(60, "the change in the JetStream stream", || async {
        read_stream(&ctx, &stream)
            .await
            .iter()
            .any(|p| p.event["k8sname"] == "after-start")
            .then_some(())
    })
    .await;
    assert_eq!(kw.log_messages(1, "sink reachable").len(), 1);
    assert!(kw.stop().await.success());
}
