//! Test support shared by every integration test: the connection details of the real services
//! that `dev/testenv up` starts (kube-apiserver + etcd, Kafka, NATS JetStream).
//!
//! Where the settings come from: if `TESTENV_DIR` is set in the process environment (someone ran
//! `eval "$(dev/testenv env)"`), every variable is read from the process environment; otherwise
//! from `<repo>/.testenv/env`, which `dev/testenv up` writes. A developer's own `KUBECONFIG` is
//! therefore never used by accident.
//!
//! Tests never skip: a missing environment or an unreachable service panics with a message that
//! says to run `dev/testenv up`.
//!
//! Each test binary compiles its own copy of this module (`mod common;`), hence the `dead_code`
//! allowance: not every binary uses every helper.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kube::config::{KubeConfigOptions, Kubeconfig};

/// Variables every test environment must define (see `dev/testenv env`).
const REQUIRED: &[&str] = &[
    "KUBECONFIG",
    "KAFKA_BROKERS",
    "NATS_URL",
    "NATS_MONITOR_URL",
    "ETCDCTL_ENDPOINTS",
    "TESTENV_DIR",
    "TESTENV_APISERVER_URL",
    "TESTENV_CA_FILE",
];

/// The repository root (where `dev/testenv` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The test environment's variables, loaded once and checked for reachability.
pub fn env() -> &'static HashMap<String, String> {
    static ENV: OnceLock<HashMap<String, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let vars = load_env();
        check_reachable(&vars);
        vars
    })
}

/// One variable of the test environment.
pub fn var(name: &str) -> String {
    env()
        .get(name)
        .unwrap_or_else(|| panic!("testenv: {name} is not defined — run dev/testenv up"))
        .clone()
}

fn load_env() -> HashMap<String, String> {
    let mut vars = HashMap::new();
    if std::env::var_os("TESTENV_DIR").is_some() {
        // Everything `dev/testenv env` exported, optional services' variables included.
        vars.extend(std::env::vars());
    } else {
        let file = repo_root().join(".testenv/env");
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
            panic!(
                "testenv: cannot read {} ({e}) — run dev/testenv up (tests never skip)",
                file.display()
            )
        });
        vars = parse_env_file(&text);
    }
    let missing: Vec<_> = REQUIRED
        .iter()
        .filter(|n| !vars.contains_key(**n))
        .collect();
    assert!(
        missing.is_empty(),
        "testenv: {missing:?} not set — run dev/testenv up (tests never skip)"
    );
    vars
}

/// Parses the `export NAME="value"` lines `dev/testenv env` prints. `$PATH` in a value is
/// expanded from the current process.
fn parse_env_file(text: &str) -> HashMap<String, String> {
    let path = std::env::var("PATH").unwrap_or_default();
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let v = v.trim().trim_matches('"').replace("$PATH", &path);
            (k.trim().to_string(), v)
        })
        .collect()
}

fn check_reachable(vars: &HashMap<String, String>) {
    let apiserver = vars["TESTENV_APISERVER_URL"]
        .trim_start_matches("https://")
        .to_string();
    let realistic = vars
        .get("TESTENV_APISERVER_REAL_URL")
        .unwrap_or_else(|| {
            panic!("testenv: no realistic API server in the env — run dev/testenv up")
        })
        .trim_start_matches("https://")
        .to_string();
    let nats = vars["NATS_URL"].trim_start_matches("nats://").to_string();
    let etcd = vars["ETCDCTL_ENDPOINTS"]
        .trim_start_matches("http://")
        .to_string();
    for (service, addr) in [
        ("kube-apiserver", apiserver),
        ("kube-apiserver (realistic)", realistic),
        ("kafka", vars["KAFKA_BROKERS"].clone()),
        ("nats", nats),
        ("etcd", etcd),
    ] {
        let sock: SocketAddr = addr
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| panic!("testenv: bad {service} address {addr:?}"));
        if let Err(e) = TcpStream::connect_timeout(&sock, Duration::from_secs(3)) {
            panic!(
                "testenv: {service} at {addr} is unreachable ({e}) — run dev/testenv up (tests never skip)"
            );
        }
    }
}

/// An admin `kube::Client` (CN=kubewire-admin, O=system:masters) from `$KUBECONFIG`.
pub async fn kube_client() -> kube::Client {
    let path = var("KUBECONFIG");
    let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        panic!("testenv: cannot read kubeconfig {path}: {e} — run dev/testenv up")
    });
    client_from(kubeconfig).await
}

/// An admin `kube::Client` of the realistic API server (`$KUBECONFIG_REAL`).
pub async fn kube_client_real() -> kube::Client {
    let path = var("KUBECONFIG_REAL");
    let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        panic!("testenv: cannot read kubeconfig {path}: {e} — run dev/testenv up")
    });
    client_from(kubeconfig).await
}

/// A `kube::Client` that authenticates with a bearer token (e.g. a ServiceAccount token from the
/// TokenRequest API), trusting the test environment's CA.
pub async fn kube_client_with_token(token: &str) -> kube::Client {
    let yaml = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters: [{{name: testenv, cluster: {{server: '{server}', certificate-authority: '{ca}'}}}}]\n\
         users: [{{name: token, user: {{token: '{token}'}}}}]\n\
         contexts: [{{name: testenv, context: {{cluster: testenv, user: token}}}}]\n\
         current-context: testenv\n",
        server = var("TESTENV_APISERVER_URL"),
        ca = var("TESTENV_CA_FILE"),
    );
    client_from(Kubeconfig::from_yaml(&yaml).expect("token kubeconfig")).await
}

async fn client_from(kubeconfig: Kubeconfig) -> kube::Client {
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("testenv: kubeconfig rejected");
    kube::Client::try_from(config).expect("testenv: kube client")
}

/// Kafka bootstrap servers, `host:port`.
pub fn kafka_brokers() -> String {
    var("KAFKA_BROKERS")
}

/// NATS server URL, `nats://host:port`.
pub fn nats_url() -> String {
    var("NATS_URL")
}

/// Runs `dev/testenv <args>` and returns its stdout; panics (with its output) if it fails.
///
/// Synchronous on purpose: it is a short shell command, and a forgotten `.await` must not be
/// able to silently skip it.
pub fn testenv(args: &[&str]) -> String {
    let script = repo_root().join("dev/testenv");
    let out = Command::new(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dev/testenv {} failed ({}):\n{stdout}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `up` or `down`, as `dev/testenv status` reports a service.
pub fn service_state(service: &str) -> String {
    let status = testenv(&["status"]);
    let line = status
        .lines()
        .find(|l| l.split_whitespace().next() == Some(service))
        .unwrap_or_else(|| panic!("no {service} line in dev/testenv status:\n{status}"));
    line.split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// A name that is unique per call and per run, valid as a Kubernetes object name, Kafka topic
/// and NATS stream name: `<prefix>-<hex time><hex pid><hex counter>`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{prefix}-{:x}{:x}{n:x}",
        nanos & 0xff_ffff_ffff,
        std::process::id()
    )
}

/// Awaits `fut` for at most `secs` seconds, panicking with `what` on timeout.
pub async fn within<T>(secs: u64, what: &str, fut: impl IntoFuture<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs}s: {what}"))
}

/// Retries `attempt` until it returns `Some`, for at most `secs` seconds (a condition with a
/// deadline, not a sleep used as synchronisation).
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = attempt().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {secs}s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The path of the test environment's directory (`.testenv/`).
pub fn testenv_dir() -> PathBuf {
    Path::new(&var("TESTENV_DIR")).to_path_buf()
}
