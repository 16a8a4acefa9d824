//! Configuration tests of the nats sink's section: parsing, environment overrides, validation.

use super::*;
use crate::config::{Config, Format, ResourceConfig, SinkConfig};
use crate::sink::nats::config::DEFAULT_SUBJECT;

fn full() -> NatsSinkConfig {
    let secret = SecretRef {
        env: Some("X".into()),
        file: Some("/x".into()),
    };
    NatsSinkConfig {
        url: "nats://h:4222".into(),
        stream: NatsStreamConfig {
            subjects: vec!["a.>".into()],
            ..Default::default()
        },
        auth: NatsAuthConfig {
            token: Some(secret.clone()),
            user: Some("u".into()),
            password: Some(secret.clone()),
            nkey_seed: Some(secret),
            credentials_file: Some("/c".into()),
        },
        tls: NatsTlsConfig {
            required: true,
            ca_file: Some("/ca".into()),
            cert_file: Some("/c".into()),
            key_file: Some("/k".into()),
        },
        ..Default::default()
    }
}

#[test]
fn every_camel_case_nats_field_is_listed_for_env_overrides() {
    let mut keys = std::collections::BTreeSet::new();
    crate::config::json_keys(&serde_json::to_value(full()).unwrap(), &mut keys);
    for k in keys {
        if k.chars().any(|c| c.is_ascii_uppercase()) {
            assert!(crate::config::is_field_name(&k), "{k} missing");
        }
    }
}

#[test]
fn yaml_with_every_field_parses_and_env_overrides_nested_fields() {
    let yaml = "resources: [{resource: configmaps}]\n\
        sink:\n  type: nats\n  url: nats://h:4222\n  jetstream: true\n\
        \x20 subject: kw.{cluster}.{namespace}.{name}\n  maxOutstandingAcks: 10\n\
        \x20 ackTimeoutMs: 100\n\
        \x20 stream:\n    name: S\n    create: true\n    subjects: [kw.>]\n    storage: memory\n\
        \x20   retention: workqueue\n    maxAgeSeconds: 60\n    maxBytes: 1000\n\
        \x20   duplicateWindowSeconds: 30\n    replicas: 3\n\
        \x20 auth:\n    nkeySeed: {file: /seed}\n\
        \x20 tls:\n    caFile: /ca\n";
    let env = [
        ("KUBEWIRE__SINK__STREAM__DUPLICATE_WINDOW_SECONDS", "90"),
        ("KUBEWIRE__SINK__AUTH__NKEY_SEED__FILE", "/other"),
        ("KUBEWIRE__SINK__MAX_OUTSTANDING_ACKS", "20"),
        ("KUBEWIRE__SINK__JETSTREAM", "false"),
    ];
    let c = Config::from_str_with_env(yaml, Format::Yaml, env).unwrap();
    let SinkConfig::Nats(n) = &c.sink else {
        panic!("{:?}", c.sink)
    };
    assert_eq!(n.subject, "kw.{cluster}.{namespace}.{name}");
    assert_eq!(n.max_outstanding_acks, 20);
    assert!(!n.jetstream);
    assert_eq!(n.ack_timeout_ms, 100);
    assert_eq!(n.stream.name, "S");
    assert!(n.stream.create);
    assert_eq!(n.stream.storage, NatsStorage::Memory);
    assert_eq!(n.stream.retention, NatsRetention::Workqueue);
    assert_eq!(n.stream.duplicate_window_seconds, 90);
    assert_eq!(n.stream.replicas, 3);
    assert_eq!(
        n.auth.nkey_seed.as_ref().unwrap().file.as_deref(),
        Some(std::path::Path::new("/other"))
    );
    assert_eq!(n.tls.ca_file.as_deref(), Some(std::path::Path::new("/ca")));
    assert!(c.validate().is_empty(), "{:?}", c.validate());
}

#[test]
fn defaults_are_jetstream_with_the_per_object_subject() {
    let c = Config::from_str_with_env(
        "resources: [{resource: configmaps}]\nsink: {type: nats, url: 'nats://h:1'}\n",
        Format::Yaml,
        std::iter::empty::<(String, String)>(),
    )
    .unwrap();
    let SinkConfig::Nats(n) = &c.sink else {
        panic!()
    };
    assert_eq!(
        n,
        &NatsSinkConfig {
            url: "nats://h:1".into(),
            ..Default::default()
        }
    );
    assert!(n.jetstream);
    assert_eq!(n.subject, DEFAULT_SUBJECT);
    let _ = ResourceConfig::new("x");
    assert!(c.validate().is_empty());
}

#[test]
fn bad_nats_settings_are_all_reported_with_their_paths() {
    let yaml = "resources: [{resource: configmaps}]\n\
        sink:\n  type: nats\n  url: ''\n  subject: 'kw.{nope}.x y.{name}'\n\
        \x20 maxOutstandingAcks: 0\n  ackTimeoutMs: 0\n\
        \x20 stream:\n    name: 'a.b'\n    subjects: ['', 'x.>']\n    replicas: 9\n\
        \x20 auth:\n    token: {env: T, file: /t}\n    user: u\n\
        \x20 tls:\n    certFile: /c\n";
    let c = Config::from_str_with_env(yaml, Format::Yaml, std::iter::empty::<(String, String)>())
        .unwrap();
    let problems = c.validate();
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for want in [
        "sink.url",
        "sink.subject",
        "sink.maxOutstandingAcks",
        "sink.ackTimeoutMs",
        "sink.stream.name",
        "sink.stream.subjects[0]",
        "sink.stream.replicas",
        "sink.auth.token",
        "sink.auth",
        "sink.auth.password",
        "sink.tls.keyFile",
    ] {
        assert!(paths.contains(&want), "{want} not in {problems:#?}");
    }
}

#[test]
fn secrets_come_from_env_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s");
    std::fs::write(&f, "  s3cret\n").unwrap();
    let s = SecretRef {
        env: None,
        file: Some(f),
    };
    assert_eq!(s.read().unwrap(), "s3cret");
    let missing = SecretRef {
        env: Some("KUBEWIRE_TEST_SURELY_UNSET_VARIABLE".into()),
        file: None,
    };
    assert!(
        missing
            .read()
            .unwrap_err()
            .contains("KUBEWIRE_TEST_SURELY_UNSET_VARIABLE")
    );
    assert!(SecretRef::default().read().is_err());
}
