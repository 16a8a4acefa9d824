//! The deployment artefacts — Helm chart, kustomize base and overlay, Dockerfile,
//! docker-compose.yml — checked against the real API server of `dev/testenv`:
//!
//! - what `helm template` and `kustomize build` render is accepted by the API server
//!   (`kubectl apply --dry-run=server`), and the kubewire config they ship passes
//!   `kubewire check-config`;
//! - the chart's RBAC follows the configured resources, and the kustomize RBAC agrees with it;
//! - in-cluster emulation: the chart's RBAC applied for real, a ServiceAccount token from the
//!   TokenRequest API, and kubewire running with nothing but that token and the cluster CA
//!   streams its resources, while everything else is forbidden to it;
//! - the Dockerfile and docker-compose.yml, as far as a machine without a Docker engine can
//!   check them.
//!
//! helm and kustomize are built from the Go module proxy on first use (`dev/tools path`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

const CHART: &str = "deploy/helm/kubewire";

// --- tools --------------------------------------------------------------------------------------

/// The path of a tool `dev/tools` builds (and caches) on first use.
fn tool(name: &str) -> PathBuf {
    static PATHS: OnceLock<std::sync::Mutex<BTreeMap<String, PathBuf>>> = OnceLock::new();
    let paths = PATHS.get_or_init(Default::default);
    let mut paths = paths.lock().unwrap();
    paths
        .entry(name.to_owned())
        .or_insert_with(|| {
            let out = Command::new(common::repo_root().join("dev/tools"))
                .args(["path", name])
                .output()
                .expect("run dev/tools");
            assert!(
                out.status.success(),
                "dev/tools path {name} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
            assert!(path.is_file(), "dev/tools printed {}", path.display());
            path
        })
        .clone()
}

/// Runs a command; returns stdout, panicking with stderr on failure.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command expected to fail; returns its stderr.
fn run_failing(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        !out.status.success(),
        "{cmd:?} succeeded but should have failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn helm_cmd(release: &str, namespace: &str, values: &str, dir: &Path) -> Command {
    let file = dir.join(format!("values-{}.yaml", common::unique_name("v")));
    std::fs::write(&file, values).unwrap();
    let mut cmd = Command::new(tool("helm"));
    cmd.current_dir(common::repo_root())
        .args(["template", release, CHART, "--namespace", namespace, "-f"])
        .arg(&file)
        .env("HELM_CACHE_HOME", dir.join("helm-cache"))
        .env("HELM_CONFIG_HOME", dir.join("helm-config"))
        .env("HELM_DATA_HOME", dir.join("helm-data"));
    cmd
}

/// `helm template` of the chart with `values` (YAML); the rendered manifests.
fn helm_template(release: &str, namespace: &str, values: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    run(&mut helm_cmd(release, namespace, values, dir.path()))
}

/// `helm template` that must fail; its error output.
fn helm_template_error(values: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    run_failing(&mut helm_cmd("kw", "kw", values, dir.path()))
}

fn kustomize_build(dir: &str) -> String {
    run(Command::new(tool("kustomize"))
        .current_dir(common::repo_root())
        .args(["build", dir]))
}

/// The PATH of the test environment (where kubectl is).
fn testenv_path() -> String {
    common::env()
        .get("PATH")
        .cloned()
        .unwrap_or_else(|| std::env::var("PATH").unwrap_or_default())
}

/// `kubectl <args>` as the admin, with `stdin`; returns stdout.
fn kubectl(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", common::var("KUBECONFIG"))
        .env("PATH", testenv_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kubectl (is dev/testenv up?)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {} failed:\n{}\n--- input ---\n{stdin}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `kubectl apply --dry-run=server`: the API server validates (schema, admission, namespaces
/// existing) without persisting. Returns the objects as the server would store them.
fn server_dry_run(objects: &[Value]) -> Vec<Value> {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    let out = kubectl(
        &["apply", "--dry-run=server", "-o", "json", "-f", "-"],
        &list.to_string(),
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    match v["kind"].as_str() {
        Some("List") => v["items"].as_array().unwrap().clone(),
        _ => vec![v],
    }
}

// --- YAML ---------------------------------------------------------------------------------------

/// One YAML document as JSON (through the `config` crate's YAML reader, which kubewire uses).
fn yaml_doc(text: &str) -> Value {
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Yaml))
        .build()
        .unwrap_or_else(|e| panic!("invalid YAML ({e}):\n{text}"))
        .try_deserialize()
        .unwrap()
}

/// The objects of a multi-document YAML stream (empty documents skipped).
fn yaml_docs(text: &str) -> Vec<Value> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.starts_with("---") {
            docs.push(String::new());
        } else {
            let last = docs.last_mut().unwrap();
            last.push_str(line);
            last.push('\n');
        }
    }
    docs.iter()
        .map(|d| yaml_doc(d))
        .filter(|v| v.as_object().is_some_and(|o| !o.is_empty()))
        .collect()
}

fn kinds(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_owned())
        .collect()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// RBAC rules as a set of (apiGroup, resource, verb) triples, order-independent.
fn rule_set(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut set = BTreeSet::new();
    for rule in role["rules"].as_array().cloned().unwrap_or_default() {
        for g in rule["apiGroups"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                for v in rule["verbs"].as_array().unwrap() {
                    set.insert((
                        g.as_str().unwrap().to_owned(),
                        r.as_str().unwrap().to_owned(),
                        v.as_str().unwrap().to_owned(),
                    ));
                }
            }
        }
    }
    set
}

/// Read-only triples for (group, resource) pairs.
fn read_only(pairs: &[(&str, &str)]) -> BTreeSet<(String, String, String)> {
    pairs
        .iter()
        .flat_map(|(g, r)| {
            ["get", "list", "watch"].map(|v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect()
}

/// The kubewire config file inside the rendered ConfigMap.
fn shipped_config(objects: &[Value]) -> String {
    let cms = of_kind(objects, "ConfigMap");
    assert_eq!(cms.len(), 1, "one ConfigMap expected");
    cms[0]["data"]["config.yaml"]
        .as_str()
        .expect("ConfigMap data config.yaml")
        .to_owned()
}

/// `kubewire check-config --offline` accepts `config` (the syntax, fields and values the
/// binary built from this tree knows).
fn assert_kubewire_accepts(config: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kubewire"))
        .args(["check-config", "--offline", "--config"])
        .arg(&file)
        .env("KAFKA_PASSWORD", "unused")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubewire rejects the config of {what}:\n{}\n--- config ---\n{config}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Replaces namespaces in objects (metadata and RBAC subjects) by the given map.
fn rename_namespaces(objects: &mut [Value], map: &BTreeMap<&str, String>) {
    for o in objects.iter_mut() {
        if let Some(ns) = o["metadata"]["namespace"].as_str()
            && let Some(new) = map.get(ns)
        {
            o["metadata"]["namespace"] = json!(new);
        }
        if let Some(subjects) = o["subjects"].as_array_mut() {
            for s in subjects {
                if let Some(ns) = s["namespace"].as_str()
                    && let Some(new) = map.get(ns)
                {
                    s["namespace"] = json!(new);
                }
            }
        }
    }
}

fn create_namespaces(names: &[&str]) {
    let items: Vec<Value> = names
        .iter()
        .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}))
        .collect();
    kubectl(
        &["create", "-f", "-"],
        &json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
    );
}

/// The ServiceMonitor CRD (a minimal schema of our own), so the chart's ServiceMonitor can be
/// validated by the server like everything else. Idempotent; awaited until Established.
fn ensure_service_monitor_crd() {
    let crd =
        std::fs::read_to_string(common::repo_root().join("tests/deploy/servicemonitor-crd.yaml"))
            .unwrap();
    kubectl(&["apply", "-f", "-"], &crd);
    kubectl(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/servicemonitors.monitoring.coreos.com",
        ],
        "",
    );
}

// --- 1. rendering, accepted by the API server ---------------------------------------------------

#[tokio::test]
async fn helm_chart_renders_and_the_api_server_accepts_it() {
    let release_ns = common::unique_name("kw-helm");
    let (team_a, team_b) = (
        common::unique_name("kw-helm-a"),
        common::unique_name("kw-helm-b"),
    );
    create_namespaces(&[&release_ns, &team_a, &team_b]);

    // Defaults: a ClusterRole, a StatefulSet with a PVC template, no optional extras.
    let objects = yaml_docs(&helm_template("kw", &release_ns, ""));
    assert_eq!(
        kinds(&objects),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Service",
            "ServiceAccount",
            "StatefulSet"
        ]
        .map(String::from)
        .into(),
    );
    assert_kubewire_accepts(&shipped_config(&objects), "the chart's defaults");
    let accepted = server_dry_run(&objects);
    assert_eq!(kinds(&accepted), kinds(&objects));
    let sts = of_kind(&accepted, "StatefulSet")[0];
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "1Gi"
    );
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    // The admin server listens where the probes reach it.
    let config = yaml_doc(&shipped_config(&objects));
    assert_eq!(config["admin"]["address"], "0.0.0.0:9090");
    assert_eq!(
        pod["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/readyz"
    );
    assert_eq!(pod["containers"][0]["ports"][0]["containerPort"], 9090);
    assert_eq!(
        pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        true
    );

    // Namespaced RBAC, without the sections this kubewire may not know yet: still a config
    // kubewire accepts.
    let namespaced = format!(
        "config:\n  resources:\n    - resource: configmaps\n      namespaces: [{team_a}, {team_b}]\n    - resource: apps/v1/deployments\n      namespaces: [{team_b}]\n\
         checkpoint:\n  persistence:\n    enabled: false\n"
    );
    let objects = yaml_docs(&helm_template("kw", &release_ns, &namespaced));
    assert_kubewire_accepts(&shipped_config(&objects), "the namespaced render");
    let accepted = server_dry_run(&objects);
    assert_eq!(of_kind(&accepted, "Role").len(), 2);
    assert!(of_kind(&accepted, "ClusterRole").is_empty());

    // Every option on: leader election, admin server, ServiceMonitor, PDB, NetworkPolicy,
    // credentials and redaction key from Secrets, two replicas.
    ensure_service_monitor_crd();
    let everything = format!(
        "{namespaced}replicas: 2\nleaderElection:\n  enabled: true\nadmin:\n  enabled: true\n\
         serviceMonitor:\n  enabled: true\npodDisruptionBudget:\n  enabled: true\n\
         networkPolicy:\n  enabled: true\n  egress:\n    - {{}}\n\
         sinkCredentials:\n  existingSecret: kafka-credentials\nredactionKey:\n  existingSecret: redaction\n\
         extraEnv:\n  - name: RUST_LOG\n    value: debug\n"
    );
    let objects = yaml_docs(&helm_template("kw", &release_ns, &everything));
    assert_kubewire_accepts(&shipped_config(&objects), "the render with every option on");
    let accepted = server_dry_run(&objects);
    assert_eq!(
        kinds(&accepted),
        [
            "ConfigMap",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
            "StatefulSet"
        ]
        .map(String::from)
        .into(),
    );
    let config = yaml_doc(&shipped_config(&objects));
    assert_eq!(config["admin"]["address"], "0.0.0.0:9090");
    assert_eq!(config["leaderElection"]["enabled"], true);
    assert_eq!(
        config["checkpoint"]["redactionKeyPath"],
        "/etc/kubewire/redaction/redaction.key"
    );
    let container =
        &of_kind(&accepted, "StatefulSet")[0]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(
        container["envFrom"][0]["secretRef"]["name"],
        "kafka-credentials"
    );
}

#[tokio::test]
async fn kustomize_base_and_overlay_render_and_the_api_server_accepts_them() {
    for (dir, namespaces) in [
        ("deploy/kustomize/base", vec!["kubewire"]),
        (
            "deploy/kustomize/overlays/namespaced-kafka",
            vec!["kubewire", "team-a"],
        ),
    ] {
        let mut objects = yaml_docs(&kustomize_build(dir));
        let config = shipped_config(&objects);
        assert_kubewire_accepts(&config, dir);

        // The RBAC the kustomization ships is exactly what the chart derives from its config.
        let config_value = yaml_doc(&config);
        let values = json!({"config": {"resources": config_value["resources"]}}).to_string();
        let derived = yaml_docs(&helm_template("kubewire", "kubewire", &values));
        let roles = |objs: &[Value]| -> BTreeMap<(String, String), BTreeSet<_>> {
            objs.iter()
                .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
                .map(|o| {
                    let ns = o["metadata"]["namespace"].as_str().unwrap_or("").to_owned();
                    ((o["kind"].as_str().unwrap().to_owned(), ns), rule_set(o))
                })
                .collect()
        };
        assert_eq!(
            roles(&objects),
            roles(&derived),
            "{dir}: RBAC differs from what the chart derives from its config.yaml"
        );

        // Into unique namespaces, then the server's verdict.
        let map: BTreeMap<&str, String> = namespaces
            .iter()
            .map(|n| (*n, common::unique_name(&format!("kw-kz-{n}"))))
            .collect();
        let created: Vec<&str> = map.values().map(String::as_str).collect();
        create_namespaces(&created);
        rename_namespaces(&mut objects, &map);
        let accepted = server_dry_run(&objects);
        assert_eq!(kinds(&accepted), kinds(&objects), "{dir}");
        assert!(
            of_kind(&accepted, "StatefulSet")[0]["spec"]["volumeClaimTemplates"].is_array(),
            "{dir}: the checkpoint lives on a PVC"
        );
    }
}

// --- 3. the chart's RBAC follows the configured resources --------------------------------------

fn cluster_rules(values: &str) -> BTreeSet<(String, String, String)> {
    let objects = yaml_docs(&helm_template("kw", "kw", values));
    let roles = of_kind(&objects, "ClusterRole");
    assert_eq!(roles.len(), 1, "one ClusterRole for:\n{values}");
    assert!(of_kind(&objects, "Role").is_empty());
    rule_set(roles[0])
}

#[test]
fn chart_rbac_follows_the_configured_resources() {
    let a = cluster_rules(
        "config:\n  resources:\n    - resource: configmaps\n    - resource: apps/v1/deployments\n",
    );
    assert_eq!(a, read_only(&[("", "configmaps"), ("apps", "deployments")]));

    // Every accepted spelling of a plural maps to its group.
    let b = cluster_rules(
        "config:\n  resources:\n    - resource: secrets.v1\n    - resource: v1/pods\n    - resource: widgets.example.com\n    - resource: gadgets.v1beta1.example.com\n    - resource: batch/v1/jobs\n    - resource: networking.k8s.io/ingresses\n    - resource: statefulsets\n",
    );
    assert_eq!(
        b,
        read_only(&[
            ("", "secrets"),
            ("", "pods"),
            ("example.com", "widgets"),
            ("example.com", "gadgets"),
            ("batch", "jobs"),
            ("networking.k8s.io", "ingresses"),
            ("apps", "statefulsets"),
        ])
    );
    assert!(a.is_disjoint(&b));

    // Namespaces on every entry: a Role per namespace with that namespace's resources only.
    let objects = yaml_docs(&helm_template(
        "kw",
        "kw",
        "config:\n  resources:\n    - resource: configmaps\n      namespaces: [a, b]\n    - resource: deployments.apps\n      namespaces: [b]\n",
    ));
    assert!(of_kind(&objects, "ClusterRole").is_empty());
    let roles: BTreeMap<&str, _> = of_kind(&objects, "Role")
        .into_iter()
        .map(|r| (r["metadata"]["namespace"].as_str().unwrap(), rule_set(r)))
        .collect();
    assert_eq!(roles.len(), 2);
    assert_eq!(roles["a"], read_only(&[("", "configmaps")]));
    assert_eq!(
        roles["b"],
        read_only(&[("", "configmaps"), ("apps", "deployments")])
    );
    let bindings = of_kind(&objects, "RoleBinding");
    assert_eq!(bindings.len(), 2);
    for b in bindings {
        assert_eq!(b["subjects"][0]["namespace"], "kw");
        assert_eq!(b["subjects"][0]["name"], "kw-kubewire");
    }

    // One entry without namespaces makes it cluster-wide.
    let mixed = cluster_rules(
        "config:\n  resources:\n    - resource: configmaps\n      namespaces: [a]\n    - resource: secrets\n",
    );
    assert_eq!(mixed, read_only(&[("", "configmaps"), ("", "secrets")]));

    // Lease rights only with leader election.
    let lease = |values: &str| {
        yaml_docs(&helm_template("kw", "kw", values))
            .iter()
            .filter(|o| o["kind"] == "Role")
            .flat_map(rule_set)
            .filter(|(g, r, _)| g == "coordination.k8s.io" && r == "leases")
            .count()
    };
    assert_eq!(lease(""), 0);
    assert!(lease("leaderElection:\n  enabled: true\nreplicas: 2\n") > 0);

    // Written rules replace the derived ones; extra rules are added.
    let written = cluster_rules(
        "config:\n  resources:\n    - resource: Deployment.v1.apps\nrbac:\n  rules:\n    - apiGroups: [apps]\n      resources: [deployments]\n      verbs: [list, watch]\n  extraRules:\n    - apiGroups: ['']\n      resources: [namespaces]\n      verbs: [get]\n",
    );
    assert_eq!(
        written,
        [
            ("apps", "deployments", "list"),
            ("apps", "deployments", "watch"),
            ("", "namespaces", "get"),
        ]
        .iter()
        .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
        .collect()
    );

    // What cannot be mapped fails the render with a message that says what to do.
    let err = helm_template_error("config:\n  resources:\n    - resource: Deployment.v1.apps\n");
    assert!(
        err.contains("\"Deployment.v1.apps\" names a Kind") && err.contains("rbac.rules"),
        "{err}"
    );
    let err = helm_template_error("config:\n  resources:\n    - resource: widgets\n");
    assert!(
        err.contains("cannot derive an RBAC rule for \"widgets\""),
        "{err}"
    );
    let err = helm_template_error(
        "rbac:\n  scope: namespaced\nconfig:\n  resources:\n    - resource: configmaps\n",
    );
    assert!(
        err.contains("every config.resources entry must list namespaces"),
        "{err}"
    );
    let err = helm_template_error("replicas: 2\n");
    assert!(
        err.contains("replicas > 1 needs leaderElection.enabled"),
        "{err}"
    );
}

// --- 2. in-cluster emulation ---------------------------------------------------------------------

/// Kills the process when dropped (a failing assertion must not leave kubewire running).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn can_i(client: &kube::Client, verb: &str, resource: &str, group: &str, ns: &str) -> bool {
    can_i_named(client, verb, resource, group, ns, "").await
}

async fn can_i_named(
    client: &kube::Client,
    verb: &str,
    resource: &str,
    group: &str,
    ns: &str,
    name: &str,
) -> bool {
    let review: SelfSubjectAccessReview = serde_json::from_value(json!({
        "spec": {"resourceAttributes": {
            "verb": verb, "resource": resource, "group": group, "namespace": ns, "name": name
        }}
    }))
    .unwrap();
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let out = api.create(&PostParams::default(), &review).await.unwrap();
    out.status.unwrap().allowed
}

/// The status code of a plain HTTP/1.0 GET (0 when the connection fails).
fn http_get_status(address: &str, path: &str) -> u16 {
    use std::io::Read;
    let Ok(mut conn) = std::net::TcpStream::connect(address) else {
        return 0;
    };
    let timeout = Some(std::time::Duration::from_secs(5));
    conn.set_read_timeout(timeout).unwrap();
    if write!(conn, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").is_err() {
        return 0;
    }
    let mut response = String::new();
    let _ = conn.read_to_string(&mut response);
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn in_cluster_kubewire_with_the_charts_rbac_streams_its_resources_and_nothing_else() {
    let admin = common::kube_client().await;
    let release_ns = common::unique_name("kw-incl");
    let watched = common::unique_name("kw-incl-w");
    let other = common::unique_name("kw-incl-o");
    create_namespaces(&[&release_ns, &watched, &other]);

    // The chart's objects for a namespaced config, applied for real (no controller-manager
    // runs here, so the StatefulSet would never start a pod: kubewire runs below instead).
    let values = format!(
        "config:\n  resources:\n    - resource: configmaps\n      namespaces: [{watched}]\n    - resource: deployments.apps\n      namespaces: [{watched}]\n\
         leaderElection:\n  enabled: true\n"
    );
    let objects: Vec<Value> = yaml_docs(&helm_template("kw", &release_ns, &values))
        .into_iter()
        .filter(|o| o["kind"] != "StatefulSet")
        .collect();
    assert!(
        objects
            .iter()
            .any(|o| o["metadata"]["name"] == "kw-kubewire-leader-election"),
        "the Lease Role"
    );
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string();
    kubectl(&["apply", "-f", "-"], &list);

    // A token for the chart's ServiceAccount, as the kubelet would project it.
    let sa = objects
        .iter()
        .find(|o| o["kind"] == "ServiceAccount")
        .unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = kubectl(
        &["-n", &release_ns, "create", "token", &sa, "--duration=1h"],
        "",
    )
    .trim()
    .to_owned();
    assert!(!token.is_empty());

    // What the pod sees: a token file and the CA, nothing else. The kubeconfig below says just
    // that (in a pod, kubewire infers the same from /var/run/secrets/kubernetes.io).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), &token).unwrap();
    let kubeconfig = dir.path().join("in-cluster.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: in-cluster, cluster: {{server: '{}', certificate-authority: '{}'}}}}]\n\
             users: [{{name: sa, user: {{tokenFile: '{}'}}}}]\ncontexts: [{{name: in-cluster, context: {{cluster: in-cluster, user: sa}}}}]\ncurrent-context: in-cluster\n",
            common::var("TESTENV_APISERVER_URL"),
            common::var("TESTENV_CA_FILE"),
            dir.path().join("token").display()
        ),
    )
    .unwrap();

    // kubewire with the chart's config file; only the sink and the checkpoint move into the
    // temp dir, through KUBEWIRE__ overrides, as an operator would. A clean environment: no
    // admin kubeconfig to fall back to.
    let config_file = dir.path().join("config.yaml");
    std::fs::write(&config_file, shipped_config(&objects)).unwrap();
    let events_file = dir.path().join("events.jsonl");
    let log_file = dir.path().join("kubewire.log");
    let child = Command::new(env!("CARGO_BIN_EXE_kubewire"))
        .args(["run", "--config"])
        .arg(&config_file)
        .env_clear()
        .env("HOME", dir.path())
        .env("KUBECONFIG", &kubeconfig)
        .env("KUBEWIRE__SINK__TYPE", "file")
        .env("KUBEWIRE__SINK__PATH", &events_file)
        .env(
            "KUBEWIRE__CHECKPOINT__PATH",
            dir.path().join("checkpoint.redb"),
        )
        .env("KUBEWIRE__LOG__FORMAT", "json")
        // What the pod would have: its name (the Lease identity) and, from the chart's
        // downward API variable, its namespace (the Lease's).
        .env("HOSTNAME", "kw-kubewire-0")
        .env("POD_NAMESPACE", &release_ns)
        // Tests run in parallel: any free port rather than the chart's 9090.
        .env("KUBEWIRE__ADMIN__ADDRESS", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_file).unwrap())
        .spawn()
        .unwrap();
    let _kubewire = KillOnDrop(child);

    // Both configured resources stream.
    let pp = PostParams::default();
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), &watched);
    cms.create(
        &pp,
        &serde_json::from_value(json!({"metadata": {"name": "seen"}, "data": {"k": "v"}})).unwrap(),
    )
    .await
    .unwrap();
    kubectl(
        &[
            "-n",
            &watched,
            "create",
            "deployment",
            "seen-too",
            "--image=registry.invalid/none",
        ],
        "",
    );
    let read_events = || {
        std::fs::read_to_string(&events_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect::<Vec<_>>()
    };
    let what = format!(
        "events of the ConfigMap and the Deployment (log: {})",
        log_file.display()
    );
    let events = common::eventually(90, &what, || async {
        let events = read_events();
        let has = |resource: &str, name: &str| {
            events
                .iter()
                .any(|e| e["k8sresource"] == resource && e["k8sname"] == name)
        };
        (has("configmaps", "seen") && has("deployments", "seen-too")).then_some(events)
    })
    .await;
    assert!(
        events.iter().all(|e| e["k8snamespace"] == watched.as_str()),
        "only the watched namespace"
    );
    // Only the Lease holder publishes: the Lease rules were enough to take it.
    let holder = kubectl(
        &[
            "-n",
            &release_ns,
            "get",
            "lease",
            "kw-kubewire",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        "",
    );
    assert_eq!(holder, "kw-kubewire-0");

    // Ready means every stream finished its first sync: the rules are enough.
    let log_records = || {
        std::fs::read_to_string(&log_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect::<Vec<_>>()
    };
    let admin_address = log_records()
        .into_iter()
        .find(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("admin server listening"))
        })
        .and_then(|r| r["address"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no admin address logged in {}", log_file.display()));
    common::eventually(60, "/readyz to answer 200", || {
        let address = admin_address.clone();
        async move { (http_get_status(&address, "/readyz") == 200).then_some(()) }
    })
    .await;
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(
        !log.contains("Forbidden"),
        "the chart's RBAC is enough for its config, yet:\n{log}"
    );

    // And nothing more: the token may read its resources in its namespaces, no other resource,
    // no other namespace, no writes.
    let sa_client = common::kube_client_with_token(&token).await;
    assert!(can_i(&sa_client, "watch", "configmaps", "", &watched).await);
    assert!(can_i(&sa_client, "list", "deployments", "apps", &watched).await);
    assert!(!can_i(&sa_client, "list", "secrets", "", &watched).await);
    assert!(!can_i(&sa_client, "list", "configmaps", "", &other).await);
    assert!(!can_i(&sa_client, "list", "configmaps", "", "").await);
    assert!(!can_i(&sa_client, "create", "configmaps", "", &watched).await);
    assert!(!can_i(&sa_client, "delete", "configmaps", "", &watched).await);
    assert!(
        !can_i(
            &sa_client,
            "list",
            "leases",
            "coordination.k8s.io",
            &release_ns
        )
        .await
    );
    assert!(
        !can_i(
            &sa_client,
            "create",
            "leases",
            "coordination.k8s.io",
            &watched
        )
        .await
    );
    let secrets: Api<Secret> = Api::namespaced(sa_client.clone(), &watched);
    match secrets.list(&Default::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
        other => panic!("listing secrets must be forbidden, got {other:?}"),
    }

    drop(_kubewire);
    kubectl(&["delete", "--wait=false", "-f", "-"], &list);
}

#[tokio::test]
async fn cluster_wide_rbac_grants_reads_of_the_configured_resources_and_its_own_lease_only() {
    let release_ns = common::unique_name("kw-crole");
    create_namespaces(&[&release_ns]);
    let release = common::unique_name("kwc");
    let objects: Vec<Value> = yaml_docs(&helm_template(
        &release,
        &release_ns,
        "config:\n  resources:\n    - resource: configmaps\n    - resource: batch/v1/jobs\nleaderElection:\n  enabled: true\n",
    ))
    .into_iter()
    .filter(|o| {
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
        ]
        .contains(&o["kind"].as_str().unwrap())
    })
    .collect();
    assert_eq!(objects.len(), 5);
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string();
    kubectl(&["apply", "-f", "-"], &list);

    let sa = format!("{release}-kubewire");
    let token = kubectl(&["-n", &release_ns, "create", "token", &sa], "")
        .trim()
        .to_owned();
    let client = common::kube_client_with_token(&token).await;
    // RBAC is evaluated from an informer cache in the API server: await the new binding.
    common::eventually(30, "the ClusterRoleBinding to take effect", || {
        let client = client.clone();
        async move {
            can_i(&client, "list", "configmaps", "", "")
                .await
                .then_some(())
        }
    })
    .await;
    assert!(can_i(&client, "watch", "configmaps", "", "default").await);
    assert!(can_i(&client, "get", "jobs", "batch", "kube-system").await);
    assert!(!can_i(&client, "list", "secrets", "", "").await);
    assert!(!can_i(&client, "list", "cronjobs", "batch", "").await);
    assert!(!can_i(&client, "update", "configmaps", "", "default").await);

    // Leader election: create a Lease, then read and renew only its own, in its namespace.
    let lease = format!("{release}-kubewire");
    let leases = "leases";
    let coordination = "coordination.k8s.io";
    let ns = release_ns.as_str();
    assert!(can_i(&client, "create", leases, coordination, ns).await);
    for verb in ["get", "update", "patch"] {
        assert!(can_i_named(&client, verb, leases, coordination, ns, &lease).await);
        assert!(!can_i_named(&client, verb, leases, coordination, ns, "someone-else").await);
    }
    assert!(!can_i(&client, "list", leases, coordination, ns).await);
    assert!(!can_i_named(&client, "delete", leases, coordination, ns, &lease).await);
    assert!(!can_i(&client, "create", leases, coordination, "default").await);

    kubectl(&["delete", "-f", "-"], &list);
}

// --- 4. Dockerfile, .dockerignore, docker-compose.yml ---------------------------------------------

/// A Dockerfile as (instruction, arguments) pairs, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<Instruction> {
    let text = std::fs::read_to_string(common::repo_root().join("Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (instr, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((instr.to_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    out
}

/// An instruction and its arguments.
type Instruction = (String, String);

/// A build stage: (name, base image, instructions).
type Stage = (String, String, Vec<Instruction>);

/// The stages of the Dockerfile, in order.
fn stages() -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    for (instr, args) in dockerfile() {
        if instr == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
                _ => stages.len().to_string(),
            };
            stages.push((name, words[0].to_owned(), Vec::new()));
        } else if let Some(last) = stages.last_mut() {
            last.2.push((instr, args));
        }
    }
    stages
}

fn json_array(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("exec form expected ({e}): {args}"))
}

#[test]
fn dockerfile_builds_the_locked_release_binary_and_runs_it_as_non_root() {
    let stages = stages();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let (build_name, build_base, build) = &stages[0];
    let (_, runtime_base, runtime) = stages.last().unwrap();
    assert_ne!(
        build_base, runtime_base,
        "the runtime is not the build image"
    );

    // The build runs the same command CI can run outside a container.
    let build_run = build
        .iter()
        .find(|(i, a)| i == "RUN" && a.contains("cargo build"))
        .expect("a cargo build step");
    assert!(
        build_run.1.contains("cargo build --release --locked"),
        "{build_run:?}"
    );
    // The Rust image is at least the crate's rust-version.
    let manifest = std::fs::read_to_string(common::repo_root().join("Cargo.toml")).unwrap();
    let msrv = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let rust_arg = dockerfile()
        .into_iter()
        .find_map(|(i, a)| {
            (i == "ARG")
                .then(|| a.strip_prefix("RUST_VERSION=").map(str::to_owned))
                .flatten()
        })
        .expect("ARG RUST_VERSION=");
    let version = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap()).collect() };
    assert!(
        version(&rust_arg) >= version(&msrv),
        "rust {rust_arg} < rust-version {msrv}"
    );

    // The binary the build installs is the one the runtime stage copies and runs.
    let installed = build_run
        .1
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[0] == "target/release/kubewire")
        .map(|w| w[1].to_owned())
        .expect("install target/release/kubewire <dest>");
    let copy = runtime
        .iter()
        .find(|(i, a)| {
            i == "COPY" && a.contains(&format!("--from={build_name}")) && a.contains(&installed)
        })
        .unwrap_or_else(|| panic!("runtime stage copies {installed} from {build_name}"));
    let dest = copy.1.split_whitespace().last().unwrap().to_owned();
    let entrypoint = runtime
        .iter()
        .find(|(i, _)| i == "ENTRYPOINT")
        .map(|(_, a)| json_array(a))
        .expect("ENTRYPOINT");
    assert_eq!(entrypoint, vec![dest.clone()]);
    let cmd = runtime
        .iter()
        .find(|(i, _)| i == "CMD")
        .map(|(_, a)| json_array(a))
        .expect("CMD");
    assert_eq!(cmd, ["run", "--config", "/etc/kubewire/config.yaml"]);

    // The chart mounts the config where CMD reads it, and runs the same arguments.
    let chart = yaml_docs(&helm_template("kw", "kw", ""));
    let container = &of_kind(&chart, "StatefulSet")[0]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["args"], json!(cmd));
    assert!(
        container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == "/etc/kubewire/config.yaml")
    );

    // Non-root, numerically (so runAsNonRoot can verify it), matching the chart's user.
    let user = runtime
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, a)| a.clone())
        .expect("USER in the runtime stage");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric USER");
    assert_ne!(uid, 0);
    assert_eq!(
        of_kind(&chart, "StatefulSet")[0]["spec"]["template"]["spec"]["securityContext"]["runAsUser"],
        json!(uid)
    );

    // The binary in CARGO_BIN_EXE is the package's `kubewire` bin: the name the build installs.
    assert!(env!("CARGO_BIN_EXE_kubewire").ends_with("/kubewire"));
}

#[test]
fn image_runtime_needs_no_libraries_beyond_the_distroless_cc_base() {
    // What gcr.io/distroless/cc provides: glibc and libgcc.
    let mut provided: BTreeSet<&str> = [
        "libc.so.6",
        "libm.so.6",
        "libdl.so.2",
        "librt.so.1",
        "libpthread.so.0",
        "libgcc_s.so.1",
        "ld-linux-x86-64.so.2",
        "ld-linux-aarch64.so.1",
        "libstdc++.so.6",
    ]
    .into();
    let (_, runtime_base, _) = stages().pop().unwrap();
    assert!(
        runtime_base.contains("distroless/cc"),
        "the list above describes distroless/cc, not {runtime_base}"
    );
    // What the Dockerfile links statically, although a local build links it dynamically.
    let env: String = dockerfile()
        .into_iter()
        .filter(|(i, _)| i == "ENV")
        .map(|(_, a)| a + " ")
        .collect();
    // openssl-sys honours OPENSSL_STATIC only with explicit directories: found through
    // pkg-config, a system OpenSSL is linked dynamically regardless.
    let build_run: String = dockerfile()
        .into_iter()
        .filter(|(i, a)| i == "RUN" && a.contains("cargo build"))
        .map(|(_, a)| a)
        .collect();
    if env.contains("OPENSSL_STATIC=1")
        && env.contains("OPENSSL_INCLUDE_DIR=")
        && (env.contains("OPENSSL_LIB_DIR=") || build_run.contains("OPENSSL_LIB_DIR="))
    {
        provided.extend(["libssl.so.3", "libcrypto.so.3"]);
    }
    if env.contains("LIBZ_SYS_STATIC=1") {
        provided.insert("libz.so.1");
    }
    let out = run(Command::new("readelf").args(["-d", env!("CARGO_BIN_EXE_kubewire")]));
    let needed: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next())
        .collect();
    assert!(needed.contains(&"libc.so.6"), "{out}");
    let missing: Vec<_> = needed.iter().filter(|n| !provided.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the runtime image lacks {missing:?}: add them to the image or link them statically"
    );
}

#[test]
fn dockerignore_keeps_the_build_inputs_and_drops_state_and_build_output() {
    let text = std::fs::read_to_string(common::repo_root().join(".dockerignore")).unwrap();
    let patterns: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let ignored = |path: &str| {
        patterns.iter().any(|p| {
            let p = p.trim_start_matches('/');
            path == p || path.starts_with(&format!("{p}/"))
        })
    };
    for heavy in ["target", ".testenv", ".git", ".kubewire"] {
        assert!(ignored(heavy), "{heavy} must not be sent to the build");
    }
    let mut inputs = vec!["Cargo.toml", "Cargo.lock", "src"];
    for optional in ["build.rs", "benches", ".cargo"] {
        if common::repo_root().join(optional).exists() {
            inputs.push(optional);
        }
    }
    for input in inputs {
        assert!(!ignored(input), "{input} is needed by the build");
    }
    assert!(
        patterns
            .iter()
            .all(|p| !p.starts_with('!') && !p.contains("src")),
        "keep .dockerignore simple: {patterns:?}"
    );
}

#[test]
fn cargo_lock_is_current_for_the_locked_image_build() {
    // `cargo build --locked` in the image fails if Cargo.lock is stale; this is the same check,
    // without a build.
    run(Command::new(env!("CARGO"))
        .current_dir(common::repo_root())
        .args([
            "metadata",
            "--locked",
            "--offline",
            "--format-version",
            "1",
            "--no-deps",
        ]));
}

#[test]
fn compose_runs_kraft_kafka_nats_jetstream_jaeger_and_kubewire_built_from_the_dockerfile() {
    let root = common::repo_root();
    let text = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    let compose = yaml_doc(&text);
    let services = compose["services"].as_object().expect("services");
    for s in ["kafka", "nats", "jaeger", "kubewire"] {
        assert!(services.contains_key(s), "service {s}");
    }
    for (name, s) in services {
        for dep in s["depends_on"]
            .as_object()
            .into_iter()
            .flat_map(|d| d.keys())
        {
            assert!(
                services.contains_key(dep),
                "{name} depends on unknown {dep}"
            );
        }
    }

    // Kafka in KRaft mode (broker and controller in one process), no ZooKeeper.
    let kafka = &services["kafka"];
    let roles = kafka["environment"]["KAFKA_PROCESS_ROLES"]
        .as_str()
        .unwrap();
    assert!(roles.contains("broker") && roles.contains("controller"));
    assert!(
        kafka["environment"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| !k.contains("ZOOKEEPER")),
        "no ZooKeeper settings"
    );
    assert!(kafka["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"].is_string());
    // NATS with JetStream.
    let nats_cmd: Vec<&str> = services["nats"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(nats_cmd.contains(&"-js") || nats_cmd.contains(&"--jetstream"));
    // Jaeger takes OTLP (gRPC), where kubewire sends its traces.
    let published: Vec<String> = services["jaeger"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    assert!(published.iter().any(|p| p == "4317:4317"), "{published:?}");

    // kubewire from the Dockerfile, with its config, the user's kubeconfig and a state dir.
    let kw = &services["kubewire"];
    assert_eq!(kw["build"]["context"], ".");
    let dockerfile = kw["build"]["dockerfile"].as_str().unwrap();
    assert!(root.join(dockerfile).is_file());
    assert_eq!(kw["network_mode"], "host");
    assert!(
        kw["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
            .as_str()
            .unwrap()
            .ends_with(":4317")
    );
    let volumes: Vec<(String, String)> = kw["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let v = v.as_str().unwrap();
            let mut parts = v.rsplitn(3, ':').collect::<Vec<_>>();
            parts.reverse();
            (parts[0].to_owned(), parts[1].to_owned())
        })
        .collect();
    let source_of = |target: &str| {
        volumes
            .iter()
            .find(|(_, t)| t == target)
            .unwrap_or_else(|| panic!("a volume at {target}: {volumes:?}"))
            .0
            .clone()
    };
    let config_path = source_of("/etc/kubewire/config.yaml");
    let kubeconfig_env = kw["environment"]["KUBECONFIG"].as_str().unwrap();
    assert!(source_of(kubeconfig_env).contains("kube"));
    let config_text = std::fs::read_to_string(root.join(&config_path))
        .unwrap_or_else(|e| panic!("{config_path}: {e}"));
    assert_kubewire_accepts(&config_text, &config_path);

    // The config reaches the compose Kafka on the port it publishes, and keeps its checkpoint
    // on the mounted state dir.
    let config = yaml_doc(&config_text);
    assert_eq!(config["sink"]["type"], "kafka");
    let port = config["sink"]["brokers"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        kafka["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap() == format!("{port}:{port}")),
        "Kafka publishes {port}"
    );
    source_of("/var/lib/kubewire");
    assert!(
        config["checkpoint"]["path"]
            .as_str()
            .unwrap()
            .starts_with("/var/lib/kubewire/")
    );
}
