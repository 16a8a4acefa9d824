use super::*;

const NO_ENV: [(&str, &str); 0] = [];

fn yaml(text: &str) -> Result<Config, ConfigError> {
    Config::from_str_with_env(text, Format::Yaml, NO_ENV)
}

fn yaml_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_str_with_env(text, Format::Yaml, env.iter().copied())
}

fn problems(r: Result<Config, ConfigError>) -> Vec<Problem> {
    r.expect_err("expected an error").problems()
}

const FULL_YAML: &str = r#"
clusters:
  - name: prod
    kubeconfig: /etc/kube/config
    context: admin@prod
resources:
  - resource: configmaps
    namespaces: [kubewire-demo, other]
    labelSelector: app=web
    events: [added, deleted]
    initial: false
    transform:
      stripManagedFields: false
  - resource: deployments.apps
sink:
  type: file
  path: /var/log/kubewire.jsonl
checkpoint:
  path: /data/cp.redb
  commitIntervalMs: 250
watch:
  pageSize: 100
  idleTimeoutSeconds: 400
log:
  format: json
  level: debug
"#;

#[test]
fn valid_yaml_loads_with_defaults_filled_in() {
    let c = yaml(FULL_YAML).unwrap();
    assert_eq!(c.clusters.len(), 1);
    assert_eq!(c.clusters[0].name, "prod");
    assert_eq!(
        c.clusters[0].kubeconfig.as_deref(),
        Some(Path::new("/etc/kube/config"))
    );
    let r = &c.resources[0];
    assert_eq!(r.namespaces, ["kubewire-demo", "other"]);
    assert_eq!(r.label_selector.as_deref(), Some("app=web"));
    assert_eq!(r.events, [ChangeType::Added, ChangeType::Deleted]);
    assert!(!r.initial);
    assert!(!r.transform.strip_managed_fields);
    assert!(r.transform.redact_secrets && r.transform.strip_last_applied);
    assert_eq!(c.resources[1], ResourceConfig::new("deployments.apps"));
    assert_eq!(
        c.sink,
        SinkConfig::File {
            path: "/var/log/kubewire.jsonl".into()
        }
    );
    assert_eq!(c.checkpoint.commit_interval_ms, 250);
    assert_eq!(c.watch.page_size, 100);
    assert_eq!(c.watch.timeout_seconds, 290);
    assert_eq!(c.watch.idle_timeout_seconds, 400);
    assert_eq!(c.log.format, LogFormat::Json);
    assert!(c.validate().is_empty(), "{:?}", c.validate());
}

#[test]
fn minimal_yaml_gets_every_default() {
    let c = yaml("resources:\n  - resource: configmaps\n").unwrap();
    assert_eq!(c.clusters, vec![ClusterConfig::default()]);
    assert_eq!(c.sink, SinkConfig::default());
    assert_eq!(c.checkpoint, CheckpointConfig::default());
    assert_eq!(c.watch, WatchConfig::default());
    assert_eq!(c.log, LogConfig::default());
    assert_eq!(c.resources[0].events.len(), 3);
    assert!(c.resources[0].initial);
    assert!(c.validate().is_empty());
}

#[test]
fn valid_toml_loads() {
    let text = r#"
[[resources]]
resource = "apps/v1/deployments"
namespaces = ["a"]
labelSelector = "x=y"

[sink]
type = "file"
path = "/tmp/out.jsonl"

[watch]
pageSize = 50
"#;
    let c = Config::from_str_with_env(text, Format::Toml, NO_ENV).unwrap();
    assert_eq!(c.resources[0].resource, "apps/v1/deployments");
    assert_eq!(c.resources[0].label_selector.as_deref(), Some("x=y"));
    assert_eq!(c.watch.page_size, 50);
    assert_eq!(c.sink.type_name(), "file");
    assert!(c.validate().is_empty());
}

#[test]
fn load_picks_format_by_extension_and_reads_files() {
    let dir = tempfile::tempdir().unwrap();
    let y = dir.path().join("k.yml");
    std::fs::write(&y, "resources: [{resource: configmaps}]\n").unwrap();
    assert_eq!(
        Config::load_with_env(&y, NO_ENV).unwrap().resources.len(),
        1
    );
    let t = dir.path().join("k.toml");
    std::fs::write(&t, "[[resources]]\nresource = \"configmaps\"\n").unwrap();
    assert_eq!(
        Config::load_with_env(&t, NO_ENV).unwrap().resources.len(),
        1
    );
    let j = dir.path().join("k.json");
    assert!(matches!(
        Config::load_with_env(&j, NO_ENV),
        Err(ConfigError::UnsupportedFormat(_))
    ));
    let missing = dir.path().join("missing.yaml");
    let e = Config::load_with_env(&missing, NO_ENV).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(e.problems()[0].message.contains("missing.yaml"));
}

#[test]
fn shipped_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/kubewire.yaml");
    if !path.exists() {
        // The scratch build used during development has no config/ beside it.
        return;
    }
    let c = Config::load_with_env(&path, NO_ENV).unwrap();
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    assert_eq!(c.sink, SinkConfig::default());
}

#[test]
fn env_overrides_nested_and_camel_case_fields() {
    let env = [
        ("KUBEWIRE__SINK__TYPE", "file"),
        ("KUBEWIRE__SINK__PATH", "/tmp/x"),
        ("KUBEWIRE__CHECKPOINT__PATH", "/tmp/cp.redb"),
        ("KUBEWIRE__WATCH__PAGE_SIZE", "42"),
        ("KUBEWIRE__WATCH__IDLETIMEOUTSECONDS", "999"),
        ("KUBEWIRE__CHECKPOINT__commitIntervalMs", "7"),
        ("KUBEWIRE__RESOURCES__0__LABEL_SELECTOR", "app=db"),
        ("KUBEWIRE__RESOURCES__0__NAMESPACES", "a, b"),
        ("KUBEWIRE__RESOURCES__0__EVENTS", "deleted"),
        ("KUBEWIRE__RESOURCES__0__TRANSFORM__REDACT_SECRETS", "false"),
        ("KUBEWIRE__LOG__LEVEL", "debug"),
        ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
        ("KUBEWIRE_SERVICE_HOST", "10.0.0.2"),
    ];
    let c = yaml_env("resources:\n  - resource: configmaps\n", &env).unwrap();
    assert_eq!(
        c.sink,
        SinkConfig::File {
            path: "/tmp/x".into()
        }
    );
    assert_eq!(c.checkpoint.path, Path::new("/tmp/cp.redb"));
    assert_eq!(c.checkpoint.commit_interval_ms, 7);
    assert_eq!(c.watch.page_size, 42);
    assert_eq!(c.watch.idle_timeout_seconds, 999);
    let r = &c.resources[0];
    assert_eq!(r.resource, "configmaps");
    assert_eq!(r.label_selector.as_deref(), Some("app=db"));
    assert_eq!(r.namespaces, ["a", "b"]);
    assert_eq!(r.events, [ChangeType::Deleted]);
    assert!(!r.transform.redact_secrets);
    assert!(r.transform.strip_managed_fields);
    assert_eq!(c.log.level, "debug");
}

#[test]
fn env_override_wins_over_the_file() {
    let c = yaml_env(
        "resources: [{resource: configmaps}]\nwatch:\n  pageSize: 10\n",
        &[("KUBEWIRE__WATCH__PAGESIZE", "20")],
    )
    .unwrap();
    assert_eq!(c.watch.page_size, 20);
}

#[test]
fn env_override_of_an_unknown_field_is_reported_with_its_path() {
    let p = problems(yaml_env(
        "resources: [{resource: configmaps}]\n",
        &[("KUBEWIRE__WATCH__PAGE_SIZES", "20")],
    ));
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].path, "watch.pagesizes");
    assert!(p[0].message.contains("unknown field"), "{}", p[0]);
}

#[test]
fn malformed_env_variable_is_a_problem() {
    let p = problems(yaml_env(
        "resources: [{resource: configmaps}]\n",
        &[("KUBEWIRE__WATCH____X", "1"), ("KUBEWIRE__0__X", "1")],
    ));
    assert_eq!(p.len(), 2);
    assert!(p[0].message.contains("KUBEWIRE__WATCH____X"));
}

#[test]
fn camel_case_field_list_is_complete() {
    let mut c = Config::default();
    let mut r = ResourceConfig::new("configmaps");
    r.label_selector = Some("a=b".into());
    r.field_selector = Some("a=b".into());
    c.resources.push(r);
    c.checkpoint.redaction_key_path = Some("/k".into());
    c.clusters[0].kubeconfig = Some("/k".into());
    c.clusters[0].context = Some("x".into());
    let mut keys = std::collections::BTreeSet::new();
    crate::config::json_keys(&serde_json::to_value(&c).unwrap(), &mut keys);
    for k in keys {
        if k.chars().any(|c| c.is_ascii_uppercase()) {
            assert!(is_field_name(&k), "{k} missing");
        }
    }
}

#[test]
fn unknown_field_is_rejected_with_its_path() {
    let p = problems(yaml(
        "resources:\n  - resource: configmaps\n  - resource: pods\n    labelSelectr: a=b\n",
    ));
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].path, "resources[1].labelSelectr");
    assert!(p[0].message.contains("unknown field"), "{}", p[0]);

    let p = problems(yaml(
        "resources: [{resource: configmaps}]\nwatch:\n  page_size: 1\n",
    ));
    assert_eq!(p[0].path, "watch.page_size");

    let p = problems(yaml("resources: [{resource: configmaps}]\nsinks: {}\n"));
    assert_eq!(p[0].path, "sinks");
}

#[test]
fn wrong_type_and_bad_syntax_are_problems_with_paths() {
    let p = problems(yaml(
        "resources: [{resource: configmaps}]\nwatch:\n  pageSize: lots\n",
    ));
    assert_eq!(p[0].path, "watch.pageSize", "{p:?}");

    let p = problems(yaml(
        "resources: [{resource: configmaps, events: [added, renamed]}]\n",
    ));
    assert!(p[0].path.starts_with("resources[0].events"), "{p:?}");
    assert!(p[0].message.contains("renamed"), "{p:?}");

    let p = problems(yaml("resources: [{namespaces: [a]}]\n"));
    assert!(p[0].path.ends_with("resource"), "{p:?}");
    assert!(p[0].message.contains("missing"), "{p:?}");

    let p = problems(yaml("resources: [\n"));
    assert_eq!(p.len(), 1);

    let p = problems(yaml(
        "resources: [{resource: configmaps}]\nsink: {type: kafak}\n",
    ));
    assert!(p[0].message.contains("kafak"), "{p:?}");
}

#[test]
fn validate_reports_every_problem_with_its_path() {
    let text = r#"
clusters:
  - name: a
  - name: a
  - name: ""
  - name: "has/slash"
resources:
  - resource: configmaps
    namespaces: [Bad_NS, ok, ok]
    events: []
  - resource: "apps/v1/deployments/x"
  - resource: configmaps
    namespaces: [ok]
  - resource: pods
    labelSelector: "a=b,,c"
    fieldSelector: ""
    events: [added, added]
sink:
  type: file
  path: ""
checkpoint:
  path: ""
  commitIntervalMs: 0
watch:
  pageSize: 0
  channelCapacity: 0
  timeoutSeconds: 300
  idleTimeoutSeconds: 300
  backoffInitialMs: 5000
  backoffMaxMs: 1000
log:
  level: " "
"#;
    let c = yaml(text).unwrap();
    let got: Vec<String> = c.validate().iter().map(|p| p.path.clone()).collect();
    let want = [
        "clusters[1].name",
        "clusters[2].name",
        "clusters[3].name",
        "resources[0].namespaces[0]",
        "resources[0].namespaces[2]",
        "resources[0].events",
        "resources[1].resource",
        "resources[2].resource",
        "resources[3].labelSelector",
        "resources[3].fieldSelector",
        "resources[3].events[1]",
        "sink.path",
        "checkpoint.path",
        "checkpoint.commitIntervalMs",
        "watch.pageSize",
        "watch.channelCapacity",
        "watch.idleTimeoutSeconds",
        "watch.backoffMaxMs",
        "log.level",
    ];
    let mut got_sorted = got.clone();
    got_sorted.sort();
    let mut want_sorted: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want_sorted.sort();
    assert_eq!(got_sorted, want_sorted, "{:#?}", c.validate());
    let dup = c
        .validate()
        .into_iter()
        .find(|p| p.path == "resources[2].resource")
        .unwrap();
    assert!(dup.message.contains("resources[0]"), "{dup}");
    assert!(
        dup.to_string()
            .starts_with("resources[2].resource: duplicate stream")
    );
}

#[test]
fn empty_resources_and_clusters_are_problems() {
    let c = yaml("clusters: []\n").unwrap();
    let paths: Vec<String> = c.validate().into_iter().map(|p| p.path).collect();
    assert_eq!(paths, ["clusters", "resources"]);
}

#[test]
fn config_error_display_lists_problems() {
    let e = ConfigError::Invalid(vec![
        Problem::new("a.b", "bad"),
        Problem::new("", "whole file"),
    ]);
    assert_eq!(
        e.to_string(),
        "invalid configuration:\n  a.b: bad\n  whole file"
    );
}

#[test]
fn redaction_key_file_defaults_beside_the_store() {
    let mut c = CheckpointConfig::default();
    assert_eq!(c.redaction_key_file(), Path::new(".kubewire/redaction.key"));
    c.redaction_key_path = Some("/etc/k".into());
    assert_eq!(c.redaction_key_file(), Path::new("/etc/k"));
}

/// Every field of the configuration (read off the structs, as the environment overrides are)
/// is in the reference, `docs/configuration.md`: a new field without its documentation
/// fails here.
#[test]
fn every_configuration_field_is_in_the_reference() {
    let reference = include_str!("../../docs/configuration.md");
    let missing: Vec<&String> = super::field_names()
        .iter()
        .filter(|name| {
            // A field, a nested field (`sink.topic` style) or a section (`auth.token`).
            ![
                format!("`{name}`"),
                format!(".{name}`"),
                format!("`{name}."),
            ]
            .iter()
            .any(|form| reference.contains(form.as_str()))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/configuration.md: {missing:?}"
    );
}

#[test]
fn the_kafka_state_backend_needs_the_kafka_sink_and_sane_transactions() {
    let p = yaml(
        "resources: [{resource: configmaps}]\ncheckpoint:\n  backend: kafka\n  kafka:\n    stateTopic: 'bad topic'\n    transactionIntervalMs: 100\n    transactionTimeoutMs: 300\n",
    )
    .unwrap()
    .validate();
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert!(paths.contains(&"checkpoint.backend"), "{p:?}");
    assert!(paths.contains(&"checkpoint.kafka.stateTopic"), "{p:?}");
    assert!(
        paths.contains(&"checkpoint.kafka.transactionTimeoutMs"),
        "{p:?}"
    );
    let backend = p.iter().find(|p| p.path == "checkpoint.backend").unwrap();
    assert!(
        backend.message.contains("sink.type is stdout"),
        "{backend:?}"
    );
}

#[test]
fn auto_is_embedded_for_now_and_the_transactional_id_follows_the_lease() {
    let c = yaml(
        "resources: [{resource: configmaps}]\nsink: {type: kafka, brokers: 'b:9092', topic: t}\ncheckpoint: {backend: kafka}\nleaderElection: {enabled: true, leaseName: kw, leaseNamespace: ops}\n",
    )
    .unwrap();
    assert_eq!(c.checkpoint.backend.resolve(&c.sink), StateBackend::Kafka);
    assert_eq!(
        StateBackend::Auto.resolve(&c.sink),
        StateBackend::Embedded,
        "auto stays embedded until the fault suite reads transactional topics"
    );
    assert_eq!(c.transactional_id(), "kubewire-ops-kw");
    let c = yaml(
        "resources: [{resource: configmaps}]\nsink: {type: kafka, brokers: 'b:9092', topic: t}\ncheckpoint: {backend: kafka, kafka: {stateTopic: st}}\n",
    )
    .unwrap();
    assert_eq!(c.transactional_id(), "kubewire-st");
}

/// The other direction: every field the reference's tables document (the first column of
/// each `| field | ...` table, dotted paths segment by segment) is a field of the
/// configuration. A renamed or removed field fails here until the reference follows.
#[test]
fn every_field_in_the_reference_exists() {
    let reference = include_str!("../../docs/configuration.md");
    let fields = super::field_names();
    let mut in_table = false;
    let mut documented = Vec::new();
    for line in reference.lines() {
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        let first = line.split('|').nth(1).unwrap_or("").trim();
        if first == "field" {
            in_table = true;
            continue;
        }
        if !in_table || first.starts_with("---") {
            continue;
        }
        // Each `name` in the first cell (`a`, `a.b`, `x` / `y`, `u`, `v`).
        let mut rest = first;
        while let Some(start) = rest.find('`') {
            let after = &rest[start + 1..];
            let Some(end) = after.find('`') else { break };
            documented.push(after[..end].to_owned());
            rest = &after[end + 1..];
        }
    }
    assert!(
        documented.len() > 80,
        "the reference's tables were not read: {documented:?}"
    );
    let unknown: Vec<&String> = documented
        .iter()
        .filter(|name| !name.split('.').all(|segment| fields.contains(segment)))
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/configuration.md documents fields that do not exist: {unknown:?}"
    );
}
