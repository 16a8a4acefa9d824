//! Pipeline micro-benchmark (issue 8, scenario 6): what kubewire does to one watch event
//! between the socket and the sink, against the floor of a raw `serde_json` parse +
//! serialize of the same bytes.
//!
//! - `pipeline`: one watch-event line as the API server sends it
//!   (`{"type":"MODIFIED","object":{...}}`) → `WatchEvent<Value>` (the decode kube does
//!   for `request_events`) → `ObjectRef` + `Change` (as the watch loop builds it, with a
//!   fresh trace and the observation time) → `publish::prepare` (the default transforms,
//!   then the CloudEvents envelope: the JSON document and its attributes).
//! - `raw`: `serde_json::from_slice::<Value>` + `serde_json::to_vec` of the same line.
//!
//! Fixtures (`benches/fixtures/`): a running Pod and a Deployment with their
//! `managedFields` (and the Deployment's last-applied annotation), and a ~1 KB ConfigMap.
//!
//! `cargo bench --bench pipeline` prints divan's table (time per event, events/s on one
//! core), then a ratio section: pipeline and raw timed in alternating rounds in the same
//! process, giving the ratio pipeline events/s ÷ raw events/s as median [min, max] over the
//! rounds. `KUBEWIRE_BENCH_ROUNDS` (default 15) and `KUBEWIRE_BENCH_ROUND_MS` (default 200)
//! size that section; `KUBEWIRE_BENCH_JSON=path` also writes its figures as JSON.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use divan::Bencher;
use divan::counter::{BytesCount, ItemsCount};
use kube::api::WatchEvent;
use serde_json::Value;

use kubewire::config::TransformConfig;
use kubewire::envelope::Encoded;
use kubewire::event::{
    Change, ChangeType, Event, ObjectRef, Origin, ResourceInfo, StreamId, TraceContext,
};
use kubewire::publish;
use kubewire::transform::Transformer;

const FIXTURES: &[&str] = &["pod", "deployment", "configmap-1k"];

/// A fixture as one compact watch-event line, with the stream it belongs to.
struct Fixture {
    line: Vec<u8>,
    stream: Arc<StreamId>,
}

fn fixture(name: &str) -> Fixture {
    let path = format!(
        "{}/benches/fixtures/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let object: Value = serde_json::from_str(&text).expect("fixture is JSON");
    // As the API server writes it: `type` first (a `json!` map would sort `object` first,
    // which makes serde buffer the whole object before it knows the variant).
    let line = format!(
        r#"{{"type":"MODIFIED","object":{}}}"#,
        serde_json::to_string(&object).expect("serializable")
    )
    .into_bytes();
    let (group, version, resource, kind) = match name {
        "pod" => ("", "v1", "pods", "Pod"),
        "deployment" => ("apps", "v1", "deployments", "Deployment"),
        _ => ("", "v1", "configmaps", "ConfigMap"),
    };
    let stream = Arc::new(StreamId {
        cluster: "bench".into(),
        resource: ResourceInfo {
            group: group.into(),
            version: version.into(),
            resource: resource.into(),
            kind: kind.into(),
            namespaced: true,
        },
        namespace: None,
        label_selector: None,
        field_selector: None,
    });
    Fixture { line, stream }
}

fn transformer() -> Transformer {
    Transformer::new(&TransformConfig::default(), b"bench-redaction-key".to_vec())
        .expect("valid transformer")
}

/// The real per-event path: decode → change → transform → envelope.
fn pipeline(line: &[u8], stream: &Arc<StreamId>, transformer: &Transformer) -> Encoded {
    let ev: WatchEvent<Value> = serde_json::from_slice(line).expect("watch event");
    let (change, obj) = match ev {
        WatchEvent::Added(o) => (ChangeType::Added, o),
        WatchEvent::Modified(o) => (ChangeType::Modified, o),
        WatchEvent::Deleted(o) => (ChangeType::Deleted, o),
        _ => unreachable!("fixtures are object events"),
    };
    let object = ObjectRef::from_object(&obj).expect("object metadata");
    let mut event = Event::Object(Change {
        stream: stream.clone(),
        change,
        origin: Origin::Watch,
        object,
        data: obj,
        observed: Utc::now(),
        trace: TraceContext::random(),
    });
    // The publish stage's own per-event work (transform + envelope), not a copy of it.
    publish::prepare(transformer, &mut event, &tracing::Span::none()).expect("encodable")
}

/// The floor: parse the same bytes into a `Value` and write it back.
fn raw(line: &[u8]) -> Vec<u8> {
    let v: Value = serde_json::from_slice(line).expect("JSON");
    serde_json::to_vec(&v).expect("serializable")
}

#[divan::bench(args = FIXTURES)]
fn kubewire_pipeline(bencher: Bencher, name: &str) {
    let f = fixture(name);
    let t = transformer();
    bencher
        .counter(ItemsCount::new(1usize))
        .counter(BytesCount::of_slice(&f.line))
        .bench(|| pipeline(black_box(&f.line), &f.stream, &t));
}

#[divan::bench(args = FIXTURES)]
fn raw_serde_json(bencher: Bencher, name: &str) {
    let f = fixture(name);
    bencher
        .counter(ItemsCount::new(1usize))
        .counter(BytesCount::of_slice(&f.line))
        .bench(|| raw(black_box(&f.line)));
}

/// Events per second of `f` run repeatedly for about `budget`.
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..64 {
            f();
        }
        n += 64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (median, min, max)
fn summary(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(|a, b| a.total_cmp(b));
    (xs[xs.len() / 2], xs[0], xs[xs.len() - 1])
}

fn ratios() {
    let rounds = env_or("KUBEWIRE_BENCH_ROUNDS", 15).max(1);
    let budget = Duration::from_millis(env_or("KUBEWIRE_BENCH_ROUND_MS", 200));
    let t = transformer();
    println!();
    println!(
        "ratio pipeline/raw, alternating rounds in one process ({rounds} rounds × {} ms each side)",
        budget.as_millis()
    );
    println!(
        "{:<14} {:>8} {:>22} {:>22} {:>22}",
        "fixture", "bytes", "pipeline ev/s med", "raw ev/s med", "ratio med [min, max]"
    );
    let mut json = Vec::new();
    for name in FIXTURES {
        let f = fixture(name);
        let out = pipeline(&f.line, &f.stream, &t);
        let (mut p, mut r, mut q) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let pr = rate(budget, || {
                black_box(pipeline(black_box(&f.line), &f.stream, &t));
            });
            let rr = rate(budget, || {
                black_box(raw(black_box(&f.line)));
            });
            p.push(pr);
            r.push(rr);
            q.push(pr / rr);
        }
        let (pm, pmin, pmax) = summary(p);
        let (rm, rmin, rmax) = summary(r);
        let (qm, qmin, qmax) = summary(q);
        println!(
            "{name:<14} {:>8} {pm:>22.0} {rm:>22.0} {:>22}",
            f.line.len(),
            format!("{qm:.2} [{qmin:.2}, {qmax:.2}]")
        );
        json.push(serde_json::json!({
            "fixture": name,
            "input_bytes": f.line.len(),
            "output_bytes": out.payload.len(),
            "pipeline_events_per_s": {"median": pm, "min": pmin, "max": pmax},
            "raw_events_per_s": {"median": rm, "min": rmin, "max": rmax},
            "ratio": {"median": qm, "min": qmin, "max": qmax},
            "rounds": rounds,
            "round_ms": budget.as_millis() as u64,
        }));
    }
    if let Ok(path) = std::env::var("KUBEWIRE_BENCH_JSON") {
        std::fs::write(&path, serde_json::to_vec_pretty(&json).expect("json"))
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        println!("figures written to {path}");
    }
}

fn main() {
    // Sanity: the pipeline produces a CloudEvent carrying the (transformed) object.
    for name in FIXTURES {
        let f = fixture(name);
        let e = pipeline(&f.line, &f.stream, &transformer());
        let doc: Value = serde_json::from_slice(&e.payload).expect("payload is JSON");
        assert_eq!(doc["specversion"], "1.0");
        assert!(doc["data"]["metadata"].get("managedFields").is_none());
    }
    divan::main();
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not, and then divan runs
    // each benchmark once: keep that quick and skip the ratio rounds too.
    if std::env::args().any(|a| a == "--bench") && !std::env::args().any(|a| a == "--list") {
        ratios();
    }
}
