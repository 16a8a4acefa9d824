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
    admin: String,
    /// The kubeconfig the process reaches its (first) cluster with.
    kubeconfig: String,
}

/// Which of the test environment's API servers a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    /// `apiserver`: watch cache off, compaction only by `dev/testenv compact` (410 on demand).
    Deterministic,
    /// `apiserver-real`: as production clusters run (watch cache, bookmarks, priority and
    /// fairness, its own compaction).
    Realistic,
}

impl Server {
    /// Its admin kubeconfig.
    pub fn kubeconfig(self) -> String {
        match self {
            Server::Deterministic => common::var("KUBECONFIG"),
            Server::Realistic => common::var("KUBECONFIG_REAL"),
        }
    }

    /// Its URL.
    pub fn url(self) -> String {
        match self {
            Server::Deterministic => common::var("TESTENV_APISERVER_URL"),
            Server::Realistic => common::var("TESTENV_APISERVER_REAL_URL"),
        }
    }

    /// An admin client of it.
    pub async fn client(self) -> kube::Client {
        match self {
            Server::Deterministic => common::kube_client().await,
            Server::Realistic => common::kube_client_real().await,
        }
    }
}

/// The configuration of a kubewire under test, built call by call: a `resources:` block, a
/// sink (the file sink unless told otherwise), the checkpoint and JSON logs inside the
/// directory, and the admin server on a port the harness picked (so [`Kubewire::admin`]
/// knows it without reading logs).
pub struct Builder {
    dir: PathBuf,
    kubeconfig: Option<String>,
    resources: String,
    sink: Option<String>,
    checkpoint: String,
    extra: String,
}

impl Builder {
    /// Watches `resource` in `namespaces` (every namespace when empty).
    pub fn watch(mut self, resource: &str, namespaces: &[&str]) -> Self {
        self.resources += &format!("  - resource: {resource}\n");
        if !namespaces.is_empty() {
            self.resources += &format!("    namespaces: [{}]\n", namespaces.join(", "));
        }
        self
    }

    /// One more field of the resource last added by [`Builder::watch`], e.g.
    /// `"labelSelector: tier=front"` or `"kafka: {topic: mine}"`.
    pub fn with(mut self, field: &str) -> Self {
        assert!(!self.resources.is_empty(), "with() follows a watch()");
        self.resources += &format!("    {field}\n");
        self
    }

    /// Escape hatch: raw entries of the `resources:` list (indented by two, newline-terminated).
    pub fn resource_yaml(mut self, yaml: &str) -> Self {
        self.resources += yaml;
        self
    }

    /// Another `sink:` block instead of the file sink, e.g.
    /// `"sink:\n  type: nats\n  url: nats://..."` (top-level YAML, newline-terminated).
    /// [`Kubewire::events`] then reads nothing: read the events from the sink.
    pub fn sink_yaml(mut self, yaml: &str) -> Self {
        self.sink = Some(yaml.to_owned());
        self
    }

    /// One more field of the `checkpoint:` block, e.g. `"backend: kafka"` or
    /// `"kafka: {stateTopic: shared}"`. With `backend: kafka` and no `kafka:` field here,
    /// the Kafka backend gets a state topic of this kubewire's own.
    pub fn checkpoint(mut self, field: &str) -> Self {
        self.checkpoint += &format!("  {field}\n");
        self
    }

    /// Escape hatch: extra top-level YAML (e.g. a `clusters:` block), newline-terminated.
    pub fn extra_yaml(mut self, yaml: &str) -> Self {
        self.extra += yaml;
        self
    }

    /// A `clusters:` block with one cluster, `name`, reached with `kubeconfig`.
    pub fn cluster(self, name: &str, kubeconfig: &Path) -> Self {
        let yaml = format!(
            "clusters:\n  - name: {name}\n    kubeconfig: {}\n",
            kubeconfig.display()
        );
        self.extra_yaml(&yaml)
    }

    /// Reach the (first) cluster with this kubeconfig instead of the deterministic server's.
    pub fn kubeconfig(mut self, path: &str) -> Self {
        self.kubeconfig = Some(path.to_owned());
        self
    }

    /// Writes `config.yaml` and starts kubewire with the admin kubeconfig.
    pub fn start(self) -> Kubewire {
        let dir = self.dir;
        let file_sink = format!(
            "sink:\n  type: file\n  path: {}\n",
            dir.join("events.jsonl").display()
        );
        let sink = self.sink.as_deref().unwrap_or(&file_sink);
        let admin = free_loopback_address();
        let mut checkpoint = self.checkpoint;
        if checkpoint.contains("backend: kafka") && !checkpoint.contains("kafka:") {
            // Tests run side by side: each kubewire its own state topic (and so its own
            // transactional id), unless it shares one on purpose.
            checkpoint += &format!(
                "  kafka:\n    stateTopic: {}\n",
                common::unique_name("kw-state")
            );
        }
        let config = format!(
            "resources:\n{resources}\n\
             {sink}\
             checkpoint:\n  path: {cp}\n  commitIntervalMs: 100\n{checkpoint}\
             log:\n  format: json\n  level: info,kubewire=debug\n\
             admin:\n  address: {admin}\n{extra}",
            resources = self.resources,
            cp = dir.join("checkpoint.redb").display(),
            extra = self.extra,
        );
        std::fs::write(dir.join("config.yaml"), config).unwrap();
        let mut kw = Kubewire {
            child: None,
            dir,
            runs: 0,
            admin,
            kubeconfig: self.kubeconfig.unwrap_or_else(|| common::var("KUBECONFIG")),
        };
        kw.restart();
        kw
    }
}

/// Waits (up to `secs`) for `child` to exit; returns its status.
async fn exited(mut child: std::process::Child, secs: u64, what: &str) -> ExitStatus {
    common::within(secs, what, async {
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// `127.0.0.1:<port>` of a port free right now: bound, read, released.
fn free_loopback_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    address
}

impl Kubewire {
    /// A kubewire under test whose config, checkpoint, output and logs live in `dir`.
    pub fn builder(dir: &Path) -> Builder {
        Builder {
            dir: dir.to_owned(),
            kubeconfig: None,
            resources: String::new(),
            sink: None,
            checkpoint: String::new(),
            extra: String::new(),
        }
    }

    /// The admin server's address (the harness picked the port; the same in every run),
    /// once the server accepts connections.
    pub async fn admin(&self) -> String {
        let what = format!("admin server on {} ({})", self.admin, self.dir.display());
        common::eventually(30, &what, || async {
            tokio::net::TcpStream::connect(&self.admin).await.ok()
        })
        .await;
        self.admin.clone()
    }

    /// Waits until `/readyz` answers 200: every stream synced, the sink up.
    pub async fn ready(&self, secs: u64) {
        self.ready_body(secs, |_| true).await;
    }

    /// As [`Kubewire::ready`], and ready with exactly `streams` streams (with several, one
    /// synced stream is ready before the next has started).
    pub async fn ready_streams(&self, secs: u64, streams: usize) {
        let expected = format!("ready: {streams} streams");
        self.ready_body(secs, |b| b.starts_with(&expected)).await;
    }

    async fn ready_body(&self, secs: u64, ok: impl Fn(&str) -> bool) {
        let what = format!("/readyz 200 ({})", self.dir.display());
        common::eventually(secs, &what, || async {
            let s = tokio::net::TcpStream::connect(&self.admin).await.ok()?;
            drop(s);
            let (code, body) = http_get(&self.admin, "/readyz").await;
            (code == 200 && ok(&body)).then_some(())
        })
        .await
    }

    /// Starts the process again (after a stop or a kill) with the same config and state.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kubewire is already running");
        self.runs += 1;
        let log = std::fs::File::create(self.log_path(self.runs)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kubewire"))
            .args(["run", "--config"])
            .arg(self.dir.join("config.yaml"))
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn kubewire");
        self.child = Some(child);
    }

    fn log_path(&self, run: u32) -> PathBuf {
        self.dir.join(format!("kubewire-{run}.log"))
    }

    /// Waits (up to `secs`) for the process to exit on its own; returns its status.
    pub async fn wait_exit(&mut self, secs: u64) -> ExitStatus {
        let child = self.child.take().expect("kubewire not running");
        exited(child, secs, "kubewire to exit").await
    }

    /// The whole log of run `run`, as text.
    pub fn log_text(&self, run: u32) -> String {
        std::fs::read_to_string(self.log_path(run)).unwrap_or_default()
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the running process.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("kubewire not running");
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    /// SIGTERM, then wait for the process to exit; returns its status.
    pub async fn stop(&mut self) -> ExitStatus {
        let child = self.child.take().expect("kubewire not running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        exited(child, 40, "kubewire to exit after SIGTERM").await
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

/// What most tests start from: a kube client (admin), a fresh namespace of their own and a
/// temporary directory for kubewire's config, checkpoint, output and logs.
pub struct Scene {
    pub client: kube::Client,
    /// A fresh namespace, named `<prefix>-<unique>`.
    pub ns: String,
    pub dir: tempfile::TempDir,
    /// The API server the scene (and the kubewire it starts) uses.
    pub server: Server,
}

impl Scene {
    /// A scene on the deterministic server.
    pub async fn new(prefix: &str) -> Self {
        Self::on(prefix, Server::Deterministic).await
    }

    /// A scene on `server`.
    pub async fn on(prefix: &str, server: Server) -> Self {
        let client = server.client().await;
        let ns = fresh_namespace(&client, prefix).await;
        Self {
            client,
            ns,
            dir: tempfile::tempdir().unwrap(),
            server,
        }
    }

    /// Another fresh namespace.
    pub async fn fresh_namespace(&self, prefix: &str) -> String {
        fresh_namespace(&self.client, prefix).await
    }

    /// A kubewire under test in this scene's directory, on the scene's server.
    pub fn kubewire(&self) -> Builder {
        Kubewire::builder(self.dir.path()).kubeconfig(&self.server.kubeconfig())
    }

    /// The ConfigMaps of the scene's namespace.
    pub fn configmaps(&self) -> kube::Api<k8s_openapi::api::core::v1::ConfigMap> {
        kube::Api::namespaced(self.client.clone(), &self.ns)
    }
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

/// Installs a namespaced CRD `<plural>.<group>` (version `v1`, any fields) and waits until it
/// is established; returns its API resource for a dynamic client.
pub async fn install_crd(
    client: &kube::Client,
    group: &str,
    plural: &str,
    kind: &str,
) -> kube::discovery::ApiResource {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, PostParams};
    let name = format!("{plural}.{group}");
    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.to_lowercase(), "kind": kind},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    }))
    .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd).await.unwrap();
    common::eventually(30, "CRD established", || async {
        let c = crds.get(&name).await.ok()?;
        let established = c
            .status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        established.then_some(())
    })
    .await;
    kube::discovery::ApiResource {
        group: group.to_owned(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: kind.to_owned(),
        plural: plural.to_owned(),
    }
}

/// A kubeconfig (in the scene's directory) for a ServiceAccount of the scene's namespace
/// bound to a Role with `rules` there: an identity that may do only that.
pub async fn limited_kubeconfig(s: &Scene, rules: serde_json::Value) -> PathBuf {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    use kube::api::{Api, PostParams};
    let (client, ns) = (&s.client, &s.ns);
    let pp = PostParams::default();
    let kubeconfig = service_account_kubeconfig(s).await;
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    roles
        .create(
            &pp,
            &serde_json::from_value(
                serde_json::json!({"metadata": {"name": "kubewire"}, "rules": rules}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    bindings.create(&pp, &serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kubewire"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kubewire"},
        "subjects": [{"kind": "ServiceAccount", "name": "kubewire", "namespace": ns}]
    })).unwrap()).await.unwrap();
    kubeconfig
}

/// A kubeconfig (in the scene's directory) for the ServiceAccount `kubewire` of the scene's
/// namespace (created here, with a token from the TokenRequest API), on the scene's server.
pub async fn service_account_kubeconfig(s: &Scene) -> PathBuf {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    use kube::api::{Api, PostParams};
    let pp = PostParams::default();
    let sas: Api<ServiceAccount> = Api::namespaced(s.client.clone(), &s.ns);
    sas.create(
        &pp,
        &serde_json::from_value(serde_json::json!({"metadata": {"name": "kubewire"}})).unwrap(),
    )
    .await
    .unwrap();
    let tr: TokenRequest = serde_json::from_value(
        serde_json::json!({"spec": {"audiences": [], "expirationSeconds": 3600}}),
    )
    .unwrap();
    let token = sas
        .create_token_request("kubewire", &pp, &tr)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let kubeconfig = s.dir.path().join("sa.kubeconfig");
    std::fs::write(&kubeconfig, format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: t, cluster: {{server: '{}', certificate-authority: '{}'}}}}]\n\
         users: [{{name: sa, user: {{token: '{token}'}}}}]\ncontexts: [{{name: t, context: {{cluster: t, user: sa}}}}]\ncurrent-context: t\n",
        s.server.url(), common::var("TESTENV_CA_FILE"))).unwrap();
    kubeconfig
}
