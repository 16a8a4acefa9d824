//! Configuration tests of the kafka sink's section: parsing, environment overrides, validation.

use crate::config::{Config, Format, SinkConfig};

fn load(text: &str, env: &[(&str, &str)]) -> Config {
    Config::from_str_with_env(text, Format::Yaml, env.iter().copied()).unwrap()
}

#[test]
fn numeric_and_boolean_env_overrides_inside_the_sink_parse() {
    let c = load(
        FULL,
        &[
            ("KUBEWIRE__SINK__QUEUE_MAX_MESSAGES", "777"),
            ("KUBEWIRE__SINK__TOMBSTONES", "false"),
            ("KUBEWIRE__SINK__CREATE_TOPICS__PARTITIONS", "12"),
        ],
    );
    let SinkConfig::Kafka(k) = &c.sink else {
        panic!("{:?}", c.sink)
    };
    assert_eq!(k.queue_max_messages, 777);
    assert!(!k.tombstones);
    assert_eq!(k.create_topics.partitions, 12);
}

const FULL: &str = "resources:\n  - resource: configmaps\n    kafka: {topic: 'cm.{namespace}'}\n\
    sink:\n  type: kafka\n  brokers: b:9092\n  topic: 'kw.{cluster}.{resource}'\n\
    \x20 key: '{namespace}/{name}'\n  compression: lz4\n\
    \x20 createTopics: {enabled: true, partitions: 6, replicationFactor: 3, cleanupPolicy: compact}\n\
    \x20 tombstones: true\n  onOversize: fail\n  queueMaxMessages: 10\n  queueMaxKbytes: 20\n\
    \x20 securityProtocol: sasl_ssl\n\
    \x20 sasl: {mechanism: SCRAM-SHA-512, username: u, passwordFile: /pw}\n\
    \x20 tls: {caFile: /ca, certFile: /c, keyFile: /k, keyPasswordEnv: KP}\n\
    \x20 properties: {linger.ms: '5'}\n";

#[test]
fn every_field_parses_and_validates() {
    let c = load(FULL, &[]);
    assert_eq!(c.validate(), vec![]);
    let SinkConfig::Kafka(k) = &c.sink else {
        panic!("not kafka")
    };
    assert_eq!(k.create_topics.partitions, 6);
    assert_eq!(k.tls.key_password_env.as_deref(), Some("KP"));
    assert_eq!(k.properties["linger.ms"], "5");
    assert_eq!(
        c.resources[0].kafka.as_ref().unwrap().topic.as_deref(),
        Some("cm.{namespace}")
    );
}

#[test]
fn env_overrides_reach_kafka_fields() {
    let c = load(
        FULL,
        &[
            ("KUBEWIRE__SINK__TOPIC", "other"),
            ("KUBEWIRE__SINK__CREATE_TOPICS__CLEANUP_POLICY", "delete"),
            ("KUBEWIRE__SINK__SASL__PASSWORD_ENV", "PW"),
        ],
    );
    let SinkConfig::Kafka(k) = &c.sink else {
        panic!("not kafka")
    };
    assert_eq!(k.topic, "other");
    assert_eq!(k.create_topics.cleanup_policy, "delete");
    assert_eq!(k.sasl.password_env.as_deref(), Some("PW"));
}

#[test]
fn every_camel_case_field_is_known_to_env_overrides() {
    let c = load(FULL, &[]);
    let mut keys = std::collections::BTreeSet::new();
    crate::config::json_keys(&serde_json::to_value(&c.sink).unwrap(), &mut keys);
    crate::config::json_keys(&serde_json::to_value(&c.resources).unwrap()[0], &mut keys);
    for k in keys {
        if k.chars().any(|c| c.is_ascii_uppercase()) && !k.contains('.') {
            assert!(crate::config::is_field_name(&k), "{k} missing");
        }
    }
}

#[test]
fn bad_settings_are_all_reported_with_paths() {
    let c = load(
        "resources:\n  - resource: configmaps\n    kafka: {topic: 'a/{name}'}\n\
         sink:\n  type: kafka\n  brokers: ''\n  topic: 'kw {cluster'\n  key: '{nam}'\n\
         \x20 createTopics: {partitions: 0, replicationFactor: 0, cleanupPolicy: never}\n\
         \x20 queueMaxMessages: 0\n  securityProtocol: sasl_plaintext\n\
         \x20 sasl: {mechanism: GSSAPI}\n  tls: {caFile: /ca}\n\
         \x20 properties: {sasl.password: x, linger.ms: '${UNCLOSED'}\n",
        &[],
    );
    let p: Vec<String> = c.validate().iter().map(|p| p.to_string()).collect();
    for want in [
        "sink.brokers: must not be empty",
        "sink.topic: \"kw {cluster\" has an unclosed",
        "resources[0].kafka.topic: \"a/{name}\" has an unknown placeholder {name}",
        "sink.key: \"{nam}\" has an unknown placeholder",
        "sink.createTopics.partitions",
        "sink.createTopics.replicationFactor",
        "sink.createTopics.cleanupPolicy",
        "sink.queueMaxMessages",
        "sink.sasl.mechanism: \"GSSAPI\"",
        "sink.sasl.username: is required",
        "sink.sasl: set exactly one of passwordEnv and passwordFile",
        "sink.tls: is only used with securityProtocol ssl or sasl_ssl",
        "sink.properties.sasl.password: set it with sink.sasl.passwordEnv",
        "sink.properties.linger.ms: \"${UNCLOSED\" has an unclosed",
    ] {
        assert!(
            p.iter().any(|l| l.starts_with(want)),
            "{want} not in {p:#?}"
        );
    }
    let c = load(
        "resources:\n  - resource: configmaps\n    kafka: {topic: x}\nsink: {type: stdout}\n",
        &[],
    );
    assert_eq!(
        c.validate()[0].to_string(),
        "resources[0].kafka: is only used with sink.type kafka (it is stdout)"
    );
    let c = load(
        "resources: [{resource: configmaps}]\nsink: {type: kafka, brokers: b, topic: 'a b'}\n",
        &[],
    );
    assert!(
        c.validate()[0].message.contains("may not contain"),
        "{:?}",
        c.validate()
    );
}
