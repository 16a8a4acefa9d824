//! Operations: the admin server's metrics, health and readiness, against the real API server.

mod common;
mod harness;

use harness::{Scene, configmap, http_get};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::PostParams;

#[tokio::test]
async fn readyz_names_the_unresolvable_resource_and_metrics_count_published_events() {
    let s = Scene::new("kw-ops").await;
    let (client, ns) = (&s.client, &s.ns);
    let kw = s
        .kubewire()
        .watch("configmaps", &[ns])
        .watch("nosuchthings", &[])
        .start();
    let admin = kw.admin().await;
    kw.wait_log(60, 1, "initial list done", 1).await;

    let (code, body) = http_get(&admin, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("nosuchthings"),
        "readyz names the culprit: {body}"
    );
    assert!(body.contains("unknown resource"), "{body}");
    assert!(
        !body.contains("configmaps in"),
        "the healthy stream is not listed: {body}"
    );

    let (code, body) = http_get(&admin, "/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));

    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &configmap("m", &[], "1"))
        .await
        .unwrap();
    kw.wait_events(60, "the Added event", |ev| !ev.is_empty())
        .await;
    let published = format!(
        "kubewire_events_published_total{{cluster=\"default\",resource=\"configmaps\",namespace=\"{ns}\",type=\"added\",origin=\"watch\"}} 1"
    );
    let metrics = common::eventually(30, "published counter", || async {
        let (_, m) = http_get(&admin, "/metrics").await;
        (m.contains(&published) && m.contains("kubewire_sink_up{sink=\"file\"} 1")).then_some(m)
    })
    .await;
    for name in [
        "kubewire_sink_acks_total{sink=\"file\"}",
        "kubewire_sink_publish_latency_seconds_bucket",
        "kubewire_watch_starts_total",
        "kubewire_api_requests_total{cluster=\"default\",verb=\"list\",code=\"200\"}",
        "kubewire_objects_tracked",
        "kubewire_stream_ready",
        "kubewire_sink_up{sink=\"file\"} 1",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
}

#[tokio::test]
async fn readyz_is_ok_once_every_stream_has_synced() {
    let s = Scene::new("kw-ready").await;
    let ns = &s.ns;
    let kw = s.kubewire().watch("configmaps", &[ns]).start();
    let admin = kw.admin().await;
    let body = common::eventually(60, "readyz 200", || async {
        let (code, body) = http_get(&admin, "/readyz").await;
        (code == 200).then_some(body)
    })
    .await;
    assert!(body.starts_with("ready: 1 streams"), "{body}");
}

/// Every `kubewire_*` name the Grafana dashboard queries.
fn dashboard_metric_names() -> Vec<String> {
    let path = common::repo_root().join("deploy/grafana/kubewire-dashboard.json");
    let text = std::fs::read_to_string(path).unwrap();
    let mut names: Vec<String> = text
        .match_indices("kubewire_")
        .map(|(i, _)| {
            text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test]
async fn the_dashboard_queries_only_metrics_kubewire_exports() {
    let s = Scene::new("kw-dash").await;
    let (client, ns) = (&s.client, &s.ns);
    let kw = s.kubewire().watch("configmaps", &[ns]).start();
    let admin = kw.admin().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &configmap("d", &[], "1"))
        .await
        .unwrap();
    kw.wait_events(60, "an event", |ev| !ev.is_empty()).await;
    let names = dashboard_metric_names();
    assert!(names.len() >= 10, "{names:?}");
    let (_, m) = http_get(&admin, "/metrics").await;
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !m.contains(&format!("# TYPE {} ", family(n))))
        .collect();
    assert!(
        missing.is_empty(),
        "dashboard metrics {missing:?} missing from\n{m}"
    );
}

/// The metric family a sample name belongs to (`x_total` → `x`, `x_bucket` → `x`).
fn family(sample: &str) -> &str {
    ["_total", "_bucket", "_count", "_sum"]
        .iter()
        .find_map(|s| sample.strip_suffix(s))
        .unwrap_or(sample)
}

/// Regression (issue "One home per stage"): a configured resource that does not resolve got
/// one heartbeat and never another, so after `idleTimeoutSeconds + 60 s` `/healthz` answered
/// 503 and the liveness probe restarted the pod again and again. A waiting resource shows in
/// `/readyz` and never fails `/healthz`.
#[tokio::test]
async fn an_unresolved_resource_never_fails_healthz_past_the_wedge_limit() {
    let s = Scene::new("kw-ops-wait").await;
    let ns = &s.ns;
    // Wedged after idleTimeoutSeconds + 60 s = 62 s without a sign of life.
    let kw = s
        .kubewire()
        .watch("configmaps", &[ns])
        .watch("notyetinstalleds", &[])
        .extra_yaml("watch:\n  timeoutSeconds: 1\n  idleTimeoutSeconds: 2\n")
        .start();
    let admin = kw.admin().await;
    kw.wait_log(60, 1, "resource not watched", 1).await;
    let since = std::time::Instant::now();
    let limit = std::time::Duration::from_secs(62 + 8);
    while since.elapsed() < limit {
        let (code, body) = http_get(&admin, "/healthz").await;
        assert_eq!(
            (code, body.as_str()),
            (200, "ok\n"),
            "after {:?}",
            since.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let (code, body) = http_get(&admin, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains(
            "resource default/notyetinstalleds (resources[1]): waiting: unknown resource"
        ),
        "readyz names the waiting resource: {body}"
    );
}
