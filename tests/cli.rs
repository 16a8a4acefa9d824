//! The command line, as an operator uses it: the built binary run with flags and
//! environment, its output and exit codes (README, "Commands and exit codes"). Tests that
//! talk to a cluster use the test API server of `dev/testenv`.

mod common;
mod harness;

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn kubewire() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kubewire"));
    // The developer's own settings never leak into a test.
    for v in ["KUBEWIRE_CONFIG", "RUST_LOG", "KUBECONFIG"] {
        c.env_remove(v);
    }
    c.stdin(Stdio::null());
    c
}

fn run(cmd: &mut Command) -> (Option<i32>, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run kubewire");
    (
        status.code(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

const MINIMAL: &str = "resources:\n  - resource: configmaps\n";

#[test]
fn version_names_the_commit_rustc_and_librdkafka() {
    let (code, out, err) = run(kubewire().arg("--version"));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with(&format!("kubewire {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    assert!(out.contains(", rustc 1."), "{out}");
    assert!(out.contains(", librdkafka 2."), "{out}");
    let commit = out
        .split("(commit ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap();
    // A build from a clone names its commit (hex); one without .git says unknown.
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{out}"
    );
}

#[test]
fn help_documents_every_flag_the_environment_and_the_exit_codes() {
    let (code, out, err) = run(kubewire().arg("--help"));
    assert_eq!(code, Some(0), "{err}");
    for needle in [
        "--config",
        "--kubeconfig",
        "--context",
        "--log-level",
        "--log-format",
        "run",
        "check-config",
        "resources",
        "print-config",
        "verify",
        "tail",
        "completions",
        "KUBEWIRE_CONFIG",
        "KUBEWIRE__SECTION__FIELD",
        "RUST_LOG",
        "KUBECONFIG",
        "/etc/kubewire/kubewire.yaml",
        "Exit codes:",
        "130",
    ] {
        assert!(out.contains(needle), "--help lacks {needle:?}:\n{out}");
    }
    for (command, flags) in [
        ("check-config", &["--offline"][..]),
        ("resources", &["--output", "--cluster", "wide"][..]),
        ("print-config", &["--output"][..]),
        (
            "verify",
            &[
                "--file",
                "--topic",
                "--brokers",
                "--stream",
                "--subject",
                "--nats-url",
                "--resource",
                "--cluster",
                "--settle",
                "--limit",
                "--output",
            ][..],
        ),
        (
            "tail",
            &[
                "--follow",
                "--kind",
                "--namespace",
                "--name",
                "--type",
                "--output",
                "--topic",
            ][..],
        ),
        ("completions", &["bash", "zsh", "fish"][..]),
    ] {
        let (code, out, err) = run(kubewire().args([command, "--help"]));
        assert_eq!(code, Some(0), "{command}: {err}");
        for f in flags {
            assert!(out.contains(f), "{command} --help lacks {f:?}:\n{out}");
        }
        // Global flags are documented on every command.
        assert!(out.contains("--log-level"), "{command}:\n{out}");
    }
}

#[test]
fn bad_usage_is_exit_2() {
    let (code, _, err) = run(kubewire().arg("no-such-command"));
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = run(kubewire().args(["completions", "tcsh"]));
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = run(kubewire().args(["resources", "-o", "yaml"]));
    assert_eq!(code, Some(2), "{err}");
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef kubewire"),
        ("fish", "complete -c kubewire"),
    ] {
        let (code, out, err) = run(kubewire().args(["completions", shell]));
        assert_eq!(code, Some(0), "{shell}: {err}");
        assert!(out.contains(marker), "{shell}: {out}");
        assert!(
            out.contains("check-config") && out.contains("kubeconfig"),
            "{shell}"
        );
    }
    // A bash that sources the script knows the command's completion function.
    let (code, out, err) = run(Command::new("bash").args([
        "-c",
        &format!(
            "source <({} completions bash) && complete -p kubewire",
            env!("CARGO_BIN_EXE_kubewire")
        ),
    ]));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("kubewire"), "{out}");
}

#[test]
fn the_config_comes_from_the_flag_then_kubewire_config_then_the_default_path() {
    let dir = tempfile::tempdir().unwrap();
    let from_env = write(dir.path(), "env.yaml", MINIMAL);
    let from_flag = write(dir.path(), "flag.yaml", MINIMAL);
    write(dir.path(), "config/kubewire.yaml", MINIMAL);
    let (code, out, err) = run(kubewire()
        .args(["check-config", "--offline"])
        .env("KUBEWIRE_CONFIG", &from_env)
        .current_dir(dir.path()));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), format!("{}: valid", from_env.display()));
    let (code, out, err) = run(kubewire()
        .args(["check-config", "--offline", "--config"])
        .arg(&from_flag)
        .env("KUBEWIRE_CONFIG", &from_env)
        .current_dir(dir.path()));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), format!("{}: valid", from_flag.display()));
    // Neither: /etc/kubewire/kubewire.yaml (absent on test machines), else the local path.
    assert!(!Path::new("/etc/kubewire/kubewire.yaml").exists());
    let (code, out, err) = run(kubewire()
        .args(["check-config", "--offline"])
        .current_dir(dir.path()));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "config/kubewire.yaml: valid");
    // A KUBEWIRE_CONFIG naming a missing file is an error, not a fallback.
    let (code, _, err) = run(kubewire()
        .args(["check-config", "--offline"])
        .env("KUBEWIRE_CONFIG", dir.path().join("missing.yaml"))
        .current_dir(dir.path()));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("missing.yaml"), "{err}");
}

#[test]
fn check_config_names_secrets_and_variables_that_are_missing_without_printing_them() {
    let dir = tempfile::tempdir().unwrap();
    let pw = write(dir.path(), "pw", "hunter2-secret\n");
    let config = write(
        dir.path(),
        "kafka.yaml",
        &format!(
            "{MINIMAL}sink:\n  type: kafka\n  brokers: 127.0.0.1:1\n  securityProtocol: sasl_plaintext\n  \
             sasl: {{mechanism: PLAIN, username: u, passwordFile: {}}}\n  \
             properties: {{client.rack: '${{KW_TEST_RACK}}'}}\n",
            pw.display()
        ),
    );
    let kubeconfig = common::var("KUBECONFIG");
    let check = |env: &[(&str, &str)]| {
        let mut c = kubewire();
        c.args(["check-config", "--config"])
            .arg(&config)
            .env("KUBECONFIG", &kubeconfig);
        for (k, v) in env {
            c.env(k, v);
        }
        run(&mut c)
    };
    let (code, _, err) = check(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("sink.properties.client.rack: environment variable KW_TEST_RACK"),
        "{err}"
    );
    let (code, out, err) = check(&[("KW_TEST_RACK", "r1")]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("valid"), "{out}");
    std::fs::remove_file(&pw).unwrap();
    let (code, out, err) = check(&[("KW_TEST_RACK", "r1")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("sink.sasl: secret: "), "{err}");
    assert!(!err.contains("hunter2") && !out.contains("hunter2"));
    // --offline looks at the file alone.
    let (code, _, err) = run(kubewire()
        .args(["check-config", "--offline", "--config"])
        .arg(&config));
    assert_eq!(code, Some(0), "{err}");
}

/// A kubeconfig whose server nobody listens on.
fn unreachable_kubeconfig(dir: &Path) -> std::path::PathBuf {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    write(
        dir,
        "unreachable.kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: u, cluster: {{server: 'https://127.0.0.1:{port}', insecure-skip-tls-verify: true}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\ncontexts: [{{name: u, context: {{cluster: u, user: u}}}}]\ncurrent-context: u\n"
        ),
    )
}

#[test]
fn an_unreachable_cluster_is_exit_1_naming_it_not_an_invalid_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let kc = unreachable_kubeconfig(dir.path());
    let config = write(
        dir.path(),
        "c.yaml",
        &format!(
            "clusters:\n  - name: faraway\n    kubeconfig: {}\n{MINIMAL}",
            kc.display()
        ),
    );
    let (code, _, err) = run(kubewire().args(["check-config", "--config"]).arg(&config));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(r#"cluster "faraway" cannot be reached"#),
        "{err}"
    );
    // With a problem of the file as well, the file's problem decides: 2.
    let bad = write(
        dir.path(),
        "bad.yaml",
        &format!(
            "clusters:\n  - name: faraway\n    kubeconfig: {}\n{MINIMAL}watch: {{pageSize: 0}}\n",
            kc.display()
        ),
    );
    let (code, _, err) = run(kubewire().args(["check-config", "--config"]).arg(&bad));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("watch.pageSize") && err.contains("faraway"),
        "{err}"
    );
    let (code, _, err) = run(kubewire().args(["resources", "--config"]).arg(&config));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(r#"cluster "faraway" cannot be reached"#),
        "{err}"
    );
}

#[test]
fn resources_lists_as_table_wide_and_json_with_kubeconfig_and_context_flags() {
    let dir = tempfile::tempdir().unwrap(); // no config file here: the kubeconfig's cluster
    let kubeconfig = common::var("KUBECONFIG");
    let (code, out, err) = run(kubewire()
        .args(["resources", "--kubeconfig", &kubeconfig])
        .current_dir(dir.path()));
    assert_eq!(code, Some(0), "{err}");
    let head: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(head, ["NAME", "APIVERSION", "KIND", "NAMESPACED"]);
    assert!(
        out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == ["configmaps", "v1", "ConfigMap", "true"]),
        "{out}"
    );
    assert!(out.contains("deployments.apps"), "{out}");
    let (code, out, err) = run(kubewire()
        .args(["resources", "-o", "wide", "--kubeconfig", &kubeconfig])
        .current_dir(dir.path()));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.lines().next().unwrap().contains("VERBS"), "{out}");
    assert!(out.contains("list") && out.contains("watch"), "{out}");
    let (code, out, err) = run(kubewire()
        .args(["resources", "-o", "json"])
        .env("KUBECONFIG", &kubeconfig)
        .current_dir(dir.path()));
    assert_eq!(code, Some(0), "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let cm = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "configmaps")
        .expect("configmaps");
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["cluster"], "default");
    // A context the kubeconfig does not have is a failure to reach the cluster.
    let (code, _, err) = run(kubewire()
        .args([
            "resources",
            "--kubeconfig",
            &kubeconfig,
            "--context",
            "no-such-context",
        ])
        .current_dir(dir.path()));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no-such-context"), "{err}");
    // --cluster picks configured clusters; an unknown one is wrong usage.
    let two = write(
        dir.path(),
        "two.yaml",
        &format!(
            "clusters:\n  - name: one\n    kubeconfig: {kubeconfig}\n  - name: two\n    kubeconfig: {kubeconfig}\n{MINIMAL}"
        ),
    );
    let (code, out, err) = run(kubewire().args(["resources", "--config"]).arg(&two));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.lines().next().unwrap().starts_with("CLUSTER"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("one ")) && out.lines().any(|l| l.starts_with("two ")),
        "{out}"
    );
    let (code, out, err) = run(kubewire()
        .args(["resources", "--cluster", "two", "--config"])
        .arg(&two));
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.lines().next().unwrap().starts_with("CLUSTER"), "{out}");
    let (code, _, err) = run(kubewire()
        .args(["resources", "--cluster", "three", "--config"])
        .arg(&two));
    assert_eq!(code, Some(2), "{err}");
}

#[test]
fn print_config_shows_the_effective_configuration_with_origins_and_masked_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "c.yaml",
        &format!(
            "{MINIMAL}sink:\n  type: kafka\n  brokers: 127.0.0.1:9092\n  properties:\n    sasl.oauthbearer.config: 'principal=top-secret'\nwatch:\n  pageSize: 100\n"
        ),
    );
    let (code, out, err) = run(kubewire()
        .args(["print-config", "--context", "ctx-from-flag", "--config"])
        .arg(&config)
        .env("KUBEWIRE__WATCH__TIMEOUT_SECONDS", "120"));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("pageSize: 100  # file"), "{out}");
    assert!(out.contains("timeoutSeconds: 120  # environment"), "{out}");
    assert!(out.contains("context: \"ctx-from-flag\"  # flag"), "{out}");
    assert!(
        out.contains("backoffMaxMs: 30000\n"),
        "defaults are shown, uncommented:\n{out}"
    );
    assert!(!out.contains("top-secret"), "{out}");
    assert!(out.contains("********"), "{out}");
    let (code, out, err) = run(kubewire()
        .args(["print-config", "-o", "json", "--config"])
        .arg(&config)
        .env("KUBEWIRE__WATCH__TIMEOUT_SECONDS", "120"));
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["config"]["watch"]["timeoutSeconds"], 120);
    assert_eq!(v["origins"]["watch.timeoutSeconds"], "environment");
    assert_eq!(v["origins"]["watch.pageSize"], "file");
    assert!(v["origins"].get("watch.backoffMaxMs").is_none());
    // An invalid override is an invalid configuration.
    let (code, _, err) = run(kubewire()
        .args(["print-config", "--config"])
        .arg(&config)
        .env("KUBEWIRE__WATCH__PAGESIZES", "1"));
    assert_eq!(code, Some(2), "{err}");
}

#[test]
fn verify_and_tail_refuse_a_stdout_sink_they_cannot_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "c.yaml", MINIMAL);
    for command in ["verify", "tail"] {
        let (code, _, err) = run(kubewire().args([command, "--config"]).arg(&config));
        assert_eq!(code, Some(2), "{command}: {err}");
        assert!(err.contains("stdout, which cannot be read back"), "{err}");
    }
    let (code, _, err) = run(kubewire()
        .args(["tail", "--topic", "t", "--config"])
        .arg(&config));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--brokers"), "{err}");
}

/// Runs `kubewire run` (file sink, admin on a free port) with `args` and `env` until its
/// admin server answers, stops it with SIGTERM and returns (exit code, stderr).
async fn run_briefly(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let admin = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let config = write(
        dir,
        "run.yaml",
        &format!(
            "resources:\n  - resource: configmaps\n    namespaces: [default]\n\
             sink: {{type: file, path: {out}}}\ncheckpoint: {{path: {cp}}}\n\
             log: {{level: warn, format: json}}\nadmin: {{address: '{admin}'}}\n",
            out = dir.join("events.jsonl").display(),
            cp = dir.join("cp.redb").display(),
        ),
    );
    let mut c = kubewire();
    c.arg("run")
        .args(args)
        .env("KUBEWIRE_CONFIG", &config)
        .env("KUBECONFIG", common::var("KUBECONFIG"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let child = c.spawn().expect("spawn kubewire run");
    common::eventually(60, &format!("admin server {admin} up"), || async {
        tokio::net::TcpStream::connect(&admin).await.ok()
    })
    .await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn run_logs_where_its_config_came_from_and_honours_rust_log_and_the_log_flags() {
    let dir = tempfile::tempdir().unwrap();
    // RUST_LOG wins over log.level (warn): the info line is there, JSON as configured.
    let (code, err) = run_briefly(dir.path(), &[], &[("RUST_LOG", "info")]).await;
    assert_eq!(code, Some(0), "{err}");
    let loaded: serde_json::Value = err
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["message"] == "configuration loaded")
        .unwrap_or_else(|| panic!("no 'configuration loaded' record:\n{err}"));
    assert_eq!(loaded["from"], "KUBEWIRE_CONFIG");
    assert!(
        loaded["path"].as_str().unwrap().ends_with("run.yaml"),
        "{loaded}"
    );
    assert!(
        loaded["version"].as_str().unwrap().contains("librdkafka"),
        "{loaded}"
    );
    // --log-level wins over RUST_LOG.
    let (code, err) = run_briefly(
        dir.path(),
        &["--log-level", "warn"],
        &[("RUST_LOG", "info")],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("configuration loaded"), "{err}");
    // --log-format wins over log.format.
    let (code, err) = run_briefly(
        dir.path(),
        &["--log-level", "info", "--log-format", "text"],
        &[],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("configuration loaded"))
        .unwrap_or_else(|| panic!("no 'configuration loaded' line:\n{err}"));
    assert!(
        serde_json::from_str::<serde_json::Value>(line).is_err(),
        "{line}"
    );
    assert!(line.contains("INFO"), "{line}");
}

#[tokio::test]
async fn the_stdout_sink_prints_pretty_lines_with_the_changed_paths() {
    use kube::api::{Patch, PatchParams, PostParams};
    use tokio::io::AsyncBufReadExt;
    let s = harness::Scene::new("kw-pretty").await;
    let config = write(
        s.dir.path(),
        "pretty.yaml",
        &format!(
            "resources:\n  - resource: configmaps\n    namespaces: [{ns}]\n\
             sink: {{type: stdout, format: pretty}}\ncheckpoint: {{path: {cp}}}\n\
             admin: {{enabled: false}}\n",
            ns = s.ns,
            cp = s.dir.path().join("cp.redb").display(),
        ),
    );
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubewire"))
        .args(["run", "--config"])
        .arg(&config)
        .env("KUBECONFIG", common::var("KUBECONFIG"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let api = s.configmaps();
    api.create(&PostParams::default(), &harness::configmap("p", &[], "1"))
        .await
        .unwrap();
    let mut next = async || {
        common::within(60, "a pretty line", lines.next_line())
            .await
            .unwrap()
            .expect("kubewire printed a line")
    };
    let added = next().await;
    assert!(
        added.contains(&format!(" added    ConfigMap {}/p rv=", s.ns)),
        "{added}"
    );
    assert!(
        added.ends_with(" initial") || added.ends_with(" watch"),
        "{added}"
    );
    api.patch(
        "p",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": {"tier": "web"}}})),
    )
    .await
    .unwrap();
    let modified = next().await;
    assert!(
        modified.contains(&format!(" modified ConfigMap {}/p rv=", s.ns)),
        "{modified}"
    );
    assert!(
        modified.ends_with(" watch changed: metadata.labels"),
        "{modified}"
    );
    child.kill().await.unwrap();
}
