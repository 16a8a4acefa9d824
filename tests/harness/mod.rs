//! Runs the real `kubewire` binary against the test API server, with a file sink and JSON
//! logs in a temporary directory, and reads back what it published and logged.
//!
//! Used as `mod common; mod harness;` by the core integration tests.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common;

/// One kubewire process and its working directory (config, checkpoint, output, logs).
pub struct Kubewire {
    child: Option<Child>,
    pub dir: PathBuf,
    runs: u32,
}

impl Kubewire {
    /// Writes `config.yaml` (the given `resources:` block plus a file sink, checkpoint and
    /// JSON logs inside `dir`) and starts kubewire with the admin kubeconfig.
    pub fn start(dir: &Path, resources_yaml: &str) -> Self {
        Self::start_with(dir, resources_yaml, "")
    }

    /// As [`Kubewire::start`], with extra top-level YAML (e.g. a `clusters:` block).
    pub fn start_with(dir: &Path, resources_yaml: &str, extra_yaml: &str) -> Self {
        Self::start_full(dir, resources_yaml, None, extra_yaml)
    }

    /// As [`Kubewire::start`], with another `sink:` block instead of the file sink, e.g.
    /// `"sink:\n  type: nats\n  url: nats://..."` (top-level YAML, newline-terminated).
    /// [`Kubewire::events`] then reads nothing: read the events from the sink.
    pub fn start_with_sink(dir: &Path, resources_yaml: &str, sink_yaml: &str) -> Self {
        Self::start_full(dir, resources_yaml, Some(sink_yaml), "")
    }

    /// Writes the config (`sink_yaml` or the file sink) and starts kubewire.
    pub fn start_full(
        dir: &Path,
        resources_yaml: &str,
        sink_yaml: Option<&str>,
        extra_yaml: &str,
    ) -> Self {
        let file_sink = format!(
            "sink:\n  type: file\n  path: {}\n",
            dir.join("events.jsonl").display()
        );
        let sink = sink_yaml.unwrap_or(&file_sink);
        let config = format!(
            "resources:\n{resources_yaml}\n\
             {sink}\
             checkpoint:\n  path: {cp}\n  commitIntervalMs: 100\n\
             log:\n  format: json\n  level: info,kubewire=debug\n\
             admin:\n  address: 127.0.0.1:0\n{extra_yaml}",
            cp = dir.join("checkpoint.redb").display(),
        );
        std::fs::write(dir.join("config.yaml"), config).unwrap();
        let mut kw = Self {
            child: None,
            dir: dir.to_owned(),
            runs: 0,
        };
        kw.restart();
        kw
    }

    /// Starts the process again (after a stop or a kill) with the same config and state.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kubewire is already running");
        self.runs += 1;
        let log = std::fs::File::create(self.log_path(self.runs)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kubewire"))
            .args(["run", "--config"])
            .arg(self.dir.join("config.yaml"))
            .env("KUBECONFIG", common::var("KUBECONFIG"))
            .env_remove("KUBEWIRE_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn kubewire");
        self.child = Some(child);
    }

    fn log_path(&self, run: u32) -> PathBuf {
        self.dir.join(format!("kubewire-{run}.log"))
    }

    /// SIGTERM, then wait for the process to exit; returns its status.
    pub async fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("kubewire not running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        common::within(40, "kubewire to exit after SIGTERM", async {
            loop {
                if let Some(s) = child.try_wait().unwrap() {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
    }

    /// SIGKILL: no drain, no final commit.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("kubewire not running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Every event published so far, in file order. A torn last line (after a kill -9) is
    /// skipped.
    pub fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.join("events.jsonl")).unwrap_or_default();
        text.lines()
            .filter(|l| !l.is_empty())
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The raw output file.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("events.jsonl")).unwrap_or_default()
    }

    /// The JSON log records of run `run` (1-based).
    pub fn logs(&self, run: u32) -> Vec<Value> {
        std::fs::read_to_string(self.log_path(run))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn runs(&self) -> u32 {
        self.runs
    }

    /// Log records of run `run` whose message is `message`.
    pub fn log_messages(&self, run: u32, message: &str) -> Vec<Value> {
        self.logs(run)
            .into_iter()
            .filter(|r| r["message"] == message)
            .collect()
    }

    /// Waits until `pred` holds for the published events; returns them.
    pub async fn wait_events(
        &self,
        secs: u64,
        what: &str,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let what = format!("{what} (output in {})", self.dir.display());
        common::eventually(secs, &what, || async {
            let ev = self.events();
            pred(&ev).then_some(ev)
        })
        .await
    }

    /// The admin server's address of run `run` (it listens on a free port).
    pub async fn admin_address(&self, run: u32) -> String {
        self.wait_log(
            30,
            run,
            "admin server listening (/metrics /healthz /readyz)",
            1,
        )
        .await;
        self.log_messages(run, "admin server listening (/metrics /healthz /readyz)")[0]["address"]
            .as_str()
            .expect("address field")
            .to_owned()
    }

    /// Waits until run `run` has logged `message` at least `count` times.
    pub async fn wait_log(&self, secs: u64, run: u32, message: &str, count: usize) {
        let what = format!(
            "{count}× log {message:?} in run {run} ({})",
            self.dir.display()
        );
        common::eventually(secs, &what, || async {
            (self.log_messages(run, message).len() >= count).then_some(())
        })
        .await
    }
}

impl Drop for Kubewire {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Object events (not relist markers) of the object named `ns/name`, in output order.
pub fn object_events<'a>(events: &'a [Value], ns: &str, name: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| {
            e["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("io.kubewire.object."))
        })
        .filter(|e| e["k8snamespace"] == ns && e["k8sname"] == name)
        .collect()
}

/// `added`, `modified`, `deleted` of a CloudEvent.
pub fn change(e: &Value) -> &str {
    e["type"]
        .as_str()
        .and_then(|t| t.strip_prefix("io.kubewire.object."))
        .unwrap_or("")
}

/// Replays an output: uid → resourceVersion of every object that exists at its end.
pub fn replay(events: &[Value]) -> BTreeMap<String, String> {
    let mut state = BTreeMap::new();
    for e in events {
        let uid = e["k8suid"].as_str().unwrap_or_default().to_owned();
        let rv = e["k8sresourceversion"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match change(e) {
            "added" | "modified" => {
                state.insert(uid, rv);
            }
            "deleted" => {
                state.remove(&uid);
            }
            _ => {}
        }
    }
    state
}

/// Events whose id appears more than once must be the same event: same type, object and
/// version. Returns how many duplicates there were.
pub fn check_duplicates(events: &[Value]) -> usize {
    let mut seen: HashMap<&str, &Value> = HashMap::new();
    let mut dups = 0;
    for e in events {
        let id = e["id"].as_str().expect("every event has an id");
        if let Some(first) = seen.insert(id, e) {
            dups += 1;
            for f in [
                "type",
                "k8suid",
                "k8sresourceversion",
                "k8snamespace",
                "k8sname",
                "data",
            ] {
                assert_eq!(first[f], e[f], "duplicate id {id} differs in {f}");
            }
        }
    }
    dups
}

/// uid → resourceVersion of the ConfigMaps in `namespaces`, listed from the API server.
pub async fn cluster_configmaps(
    client: &kube::Client,
    namespaces: &[&str],
) -> BTreeMap<String, String> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let mut out = BTreeMap::new();
    for ns in namespaces {
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), ns);
        for cm in api.list(&Default::default()).await.unwrap() {
            out.insert(
                cm.metadata.uid.unwrap(),
                cm.metadata.resource_version.unwrap(),
            );
        }
    }
    out
}

/// Creates a namespace with a unique name starting with `prefix`; returns the name.
pub async fn fresh_namespace(client: &kube::Client, prefix: &str) -> String {
    let name = common::unique_name(prefix);
    create_namespace(client, &name).await;
    name
}

/// Creates a namespace named `name`.
pub async fn create_namespace(client: &kube::Client, name: &str) {
    use k8s_openapi::api::core::v1::Namespace;
    let api: kube::Api<Namespace> = kube::Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    api.create(&Default::default(), &ns).await.unwrap();
}

/// A ConfigMap of about `size` bytes of data.
pub fn configmap(
    name: &str,
    labels: &[(&str, &str)],
    value: &str,
) -> k8s_openapi::api::core::v1::ConfigMap {
    let labels: BTreeMap<_, _> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels},
        "data": {"value": value}
    }))
    .unwrap()
}

/// `GET http://<address><path>` → (status code, body). HTTP/1.0, so the server closes the
/// connection after the response.
pub async fn http_get(address: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect admin server");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, body.to_owned())
}

/// How long after an event reached the sink a kill -9 may still replay it on restart.
///
/// The bound, from the publisher (src/app/publish.rs) and the harness's config: an event the
/// sink has acknowledged is in the checkpoint after the next commit tick (`commitIntervalMs:
/// 100`) plus the time that commit takes (a redb fsync). An event downstream but not yet
/// acknowledged is one of at most `MAX_IN_FLIGHT` (4096) sends in flight; the file sink
/// acknowledges a batch as soon as it has flushed it and Kafka as soon as the broker has
/// it, so an event a reader *sees* downstream is acknowledged moments later — the in-flight
/// limit bounds how many, not how long. So an event that was visible downstream more than
/// one commit interval before the kill (plus slack for a commit on a loaded 2-core CI
/// machine) must not be replayed. The 2 s used here are 20 commit intervals: generous
/// against scheduling noise, yet a checkpoint that stopped advancing replays everything
/// since its last commit and fails at once (see [`assert_replay_bounded`]).
pub const REPLAY_WINDOW: Duration = Duration::from_secs(2);

/// When a test first saw each event id downstream. Sightings are taken by polling, so each
/// is at or after the moment the event reached the sink: "seen before t" implies "at the
/// sink before t", which is the direction the replay bound needs.
#[derive(Default)]
pub struct Sightings {
    first: HashMap<String, std::time::Instant>,
}

impl Sightings {
    /// Records every id in `events` not seen before, as seen now.
    pub fn saw<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) {
        let now = std::time::Instant::now();
        for id in ids {
            self.first.entry(id.to_owned()).or_insert(now);
        }
    }

    /// How many ids had been seen at least `age` ago.
    pub fn older_than(&self, age: Duration) -> usize {
        let Some(t) = std::time::Instant::now().checked_sub(age) else {
            return 0;
        };
        self.first.values().filter(|s| **s <= t).count()
    }
}

/// The replay bound after a kill -9 at `killed_at` (see [`REPLAY_WINDOW`]): every id that
/// reached the sink more than once was first seen downstream less than `REPLAY_WINDOW`
/// before the kill, i.e. it was at most in flight or acknowledged within the last commit
/// interval. Also requires that some events *were* older than the window at the kill
/// (otherwise the assertion proves nothing). `ids` is every event id downstream, copies
/// included. Returns the number of duplicate copies.
pub fn assert_replay_bounded<'a>(
    ids: impl IntoIterator<Item = &'a str>,
    sightings: &Sightings,
    killed_at: std::time::Instant,
) -> usize {
    let old = killed_at
        .checked_sub(REPLAY_WINDOW)
        .expect("the test ran longer than the replay window");
    let settled = sightings.first.values().filter(|s| **s <= old).count();
    assert!(
        settled >= 10,
        "only {settled} events were downstream {REPLAY_WINDOW:?} before the kill: the \
         replay bound would prove nothing"
    );
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for id in ids {
        *copies.entry(id).or_default() += 1;
    }
    let mut dups = 0;
    let mut too_old = Vec::new();
    let mut oldest = Duration::ZERO;
    for (id, n) in &copies {
        if *n < 2 {
            continue;
        }
        dups += n - 1;
        let first = sightings
            .first
            .get(*id)
            .unwrap_or_else(|| panic!("duplicate {id} was never seen before the final read"));
        oldest = oldest.max(killed_at.saturating_duration_since(*first));
        if *first <= old {
            too_old.push(format!(
                "{id} (downstream {:.1?} before the kill)",
                killed_at.duration_since(*first)
            ));
        }
    }
    too_old.sort();
    assert!(
        too_old.is_empty(),
        "kill -9 replayed {} of the {settled} events that were downstream more than \
         {REPLAY_WINDOW:?} before it (commit interval 100 ms): the checkpoint did not \
         advance behind the acknowledgements. First: {:?}",
        too_old.len(),
        &too_old[..too_old.len().min(5)]
    );
    eprintln!(
        "replay after kill -9: {dups} copies, the oldest first seen {oldest:.1?} before the \
         kill (bound {REPLAY_WINDOW:?})"
    );
    dups
}
