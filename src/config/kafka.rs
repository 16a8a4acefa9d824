//! Settings of the Kafka sink (`sink.type: kafka`). Documented in `docs/configuration.md`
//! (section `sink` / `kafka`); semantics in `docs/sinks.md`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The Kafka sink.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct KafkaSinkConfig {
    /// Bootstrap servers, `host:port[,host:port...]` (required).
    pub brokers: String,
    /// Topic template over `{cluster}`, `{group}` (`core` for the core group), `{version}`,
    /// `{kind}`, `{resource}` and `{namespace}` (`_` when cluster-scoped or for an
    /// all-namespaces relist marker). Characters a topic may not contain are replaced by
    /// `_`. A resource may override it with `resources[].kafka.topic`. Default:
    /// `kubewire.events`.
    pub topic: String,
    /// Message key template over the placeholders of `topic` plus `{name}`. Omitted: the
    /// default key `<namespace>/<name>` (`<name>` when cluster-scoped), so every event of
    /// an object lands on one partition in order. Relist markers are always keyed by their
    /// stream.
    pub key: Option<String>,
    /// Compression codec: `zstd` (default), `lz4`, `snappy`, `gzip` or `none`.
    pub compression: KafkaCompression,
    /// Create missing topics (instead of refusing to start). Off by default.
    pub create_topics: CreateTopicsConfig,
    /// After each `deleted` event, also publish a tombstone (same key, null value) so that
    /// compacted topics forget the object. Default: false.
    #[serde(deserialize_with = "super::lenient::boolean")]
    pub tombstones: bool,
    /// What to do with an event larger than the topic accepts (`max.message.bytes` of the
    /// topic, `message.max.bytes` of the producer): `replace` (default) publishes a small
    /// `io.kubewire.object.oversize` event with the object's identity in its place; `fail`
    /// stops that stream (it waits, unacknowledged, and is replayed after a restart).
    pub on_oversize: OnOversize,
    /// Most messages the producer queue holds (`queue.buffering.max.messages`); when full,
    /// sending waits (backpressure to the watch loops). Default: 100000.
    #[serde(deserialize_with = "super::lenient::number")]
    pub queue_max_messages: u32,
    /// Most kilobytes the producer queue holds (`queue.buffering.max.kbytes`). Default:
    /// 65536 (64 MiB): the bound on kubewire's memory while brokers are unreachable.
    #[serde(deserialize_with = "super::lenient::number")]
    pub queue_max_kbytes: u32,
    /// `security.protocol`: `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: KafkaSecurityProtocol,
    /// SASL settings (used with `sasl_plaintext` / `sasl_ssl`).
    pub sasl: SaslConfig,
    /// TLS settings (used with `ssl` / `sasl_ssl`).
    pub tls: TlsConfig,
    /// Any other librdkafka producer property, passed through as is (after the defaults,
    /// so they win), e.g. `linger.ms: "20"`. A value may reference environment variables
    /// as `${NAME}`; a missing variable is an error at start-up.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSinkConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            topic: "kubewire.events".into(),
            key: None,
            compression: KafkaCompression::Zstd,
            create_topics: CreateTopicsConfig::default(),
            tombstones: false,
            on_oversize: OnOversize::Replace,
            queue_max_messages: 100_000,
            queue_max_kbytes: 65_536,
            security_protocol: KafkaSecurityProtocol::Plaintext,
            sasl: SaslConfig::default(),
            tls: TlsConfig::default(),
            properties: BTreeMap::new(),
        }
    }
}

/// Per-resource Kafka settings (`resources[].kafka`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceKafkaConfig {
    /// Topic template for this resource's events, overriding `sink.topic`.
    pub topic: Option<String>,
}

/// Compression codec of produced batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KafkaCompression {
    /// Uncompressed batches.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard (the default).
    #[default]
    Zstd,
}

impl KafkaCompression {
    /// The librdkafka `compression.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaCompression::None => "none",
            KafkaCompression::Gzip => "gzip",
            KafkaCompression::Snappy => "snappy",
            KafkaCompression::Lz4 => "lz4",
            KafkaCompression::Zstd => "zstd",
        }
    }
}

/// What happens to an event too large for its topic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOversize {
    /// Publish a small `io.kubewire.object.oversize` event in its place and go on.
    #[default]
    Replace,
    /// Stop the stream at that event (it stays unacknowledged).
    Fail,
}

/// `security.protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaSecurityProtocol {
    /// No TLS, no authentication (the default).
    #[default]
    Plaintext,
    /// TLS, no SASL.
    Ssl,
    /// SASL authentication without TLS.
    SaslPlaintext,
    /// SASL authentication over TLS.
    SaslSsl,
}

impl KafkaSecurityProtocol {
    /// The librdkafka `security.protocol` value.
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaSecurityProtocol::Plaintext => "plaintext",
            KafkaSecurityProtocol::Ssl => "ssl",
            KafkaSecurityProtocol::SaslPlaintext => "sasl_plaintext",
            KafkaSecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether the protocol authenticates with SASL (so `sink.sasl` is needed).
    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            KafkaSecurityProtocol::SaslPlaintext | KafkaSecurityProtocol::SaslSsl
        )
    }

    /// Whether the protocol runs over TLS (so `sink.tls` applies).
    pub fn uses_tls(self) -> bool {
        matches!(
            self,
            KafkaSecurityProtocol::Ssl | KafkaSecurityProtocol::SaslSsl
        )
    }
}

/// Creation of missing topics (`sink.createTopics`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateTopicsConfig {
    /// Create a topic the first time an event goes to it and it does not exist. Default:
    /// false (a missing topic is an error).
    #[serde(deserialize_with = "super::lenient::boolean")]
    pub enabled: bool,
    /// Partitions of a created topic (> 0). Default: 3.
    #[serde(deserialize_with = "super::lenient::number")]
    pub partitions: i32,
    /// Replication factor of a created topic (> 0). Default: 1.
    #[serde(deserialize_with = "super::lenient::number")]
    pub replication_factor: i32,
    /// `cleanup.policy` of a created topic: `delete` (default), `compact` or
    /// `compact,delete`. Use `compact` with `tombstones: true`.
    pub cleanup_policy: String,
}

impl Default for CreateTopicsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            partitions: 3,
            replication_factor: 1,
            cleanup_policy: "delete".into(),
        }
    }
}

/// SASL authentication (`sink.sasl`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct SaslConfig {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: Option<String>,
    /// The user name.
    pub username: Option<String>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding the password (trailing whitespace ignored).
    pub password_file: Option<PathBuf>,
}

/// TLS (`sink.tls`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsConfig {
    /// CA certificate(s) to trust (PEM). Omitted: the system store.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// Client private key (PEM), for mutual TLS.
    pub key_file: Option<PathBuf>,
    /// Environment variable holding the private key's passphrase.
    pub key_password_env: Option<String>,
    /// File holding the private key's passphrase (trailing whitespace ignored).
    pub key_password_file: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
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
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            if let serde_json::Value::Object(m) = v {
                for (k, v) in m {
                    out.push(k.clone());
                    walk(v, out);
                }
            }
        }
        let c = load(FULL, &[]);
        let mut keys = Vec::new();
        walk(&serde_json::to_value(&c.sink).unwrap(), &mut keys);
        walk(&serde_json::to_value(&c.resources).unwrap()[0], &mut keys);
        for k in keys {
            if k.chars().any(|c| c.is_ascii_uppercase()) && !k.contains('.') {
                assert!(
                    crate::config::CAMEL_CASE_FIELDS.contains(&k.as_str()),
                    "{k} missing"
                );
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
}
