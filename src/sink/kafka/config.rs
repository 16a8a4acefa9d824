//! Settings of the Kafka sink (`sink.type: kafka`) and their validation
//! ([`KafkaSinkConfig::check`], called by the configuration's; the topic-name rule shared
//! with the sink's sanitizing). Documented in `docs/configuration.md` (section `sink` /
//! `kafka`); semantics in `docs/sinks.md`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::envelope::template::{Placeholder, Template};
use crate::sink::secret::check_env_references;

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
    #[serde(deserialize_with = "crate::sink::lenient::boolean")]
    pub tombstones: bool,
    /// What to do with an event larger than the topic accepts (`max.message.bytes` of the
    /// topic, `message.max.bytes` of the producer): `replace` (default) publishes a small
    /// `io.kubewire.object.oversize` event with the object's identity in its place; `fail`
    /// stops that stream (it waits, unacknowledged, and is replayed after a restart).
    pub on_oversize: OnOversize,
    /// Most messages the producer queue holds (`queue.buffering.max.messages`); when full,
    /// sending waits (backpressure to the watch loops). Default: 100000.
    #[serde(deserialize_with = "crate::sink::lenient::number")]
    pub queue_max_messages: u32,
    /// Most kilobytes the producer queue holds (`queue.buffering.max.kbytes`). Default:
    /// 65536 (64 MiB): the bound on kubewire's memory while brokers are unreachable.
    #[serde(deserialize_with = "crate::sink::lenient::number")]
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
    #[serde(deserialize_with = "crate::sink::lenient::boolean")]
    pub enabled: bool,
    /// Partitions of a created topic (> 0). Default: 3.
    #[serde(deserialize_with = "crate::sink::lenient::number")]
    pub partitions: i32,
    /// Replication factor of a created topic (> 0). Default: 1.
    #[serde(deserialize_with = "crate::sink::lenient::number")]
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
    /// File holding the password (whitespace around it ignored, as for every secret).
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
    /// File holding the private key's passphrase (whitespace around it ignored).
    pub key_password_file: Option<PathBuf>,
}

/// librdkafka properties that have their own field (and a secret never goes in the file).
const MANAGED_KAFKA_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "brokers"),
    ("metadata.broker.list", "brokers"),
    ("compression.type", "compression"),
    ("compression.codec", "compression"),
    ("queue.buffering.max.messages", "queueMaxMessages"),
    ("queue.buffering.max.kbytes", "queueMaxKbytes"),
    ("security.protocol", "securityProtocol"),
    ("sasl.mechanism", "sasl.mechanism"),
    ("sasl.mechanisms", "sasl.mechanism"),
    ("sasl.username", "sasl.username"),
    ("sasl.password", "sasl.passwordEnv or sasl.passwordFile"),
    ("ssl.ca.location", "tls.caFile"),
    ("ssl.certificate.location", "tls.certFile"),
    ("ssl.key.location", "tls.keyFile"),
    (
        "ssl.key.password",
        "tls.keyPasswordEnv or tls.keyPasswordFile",
    ),
];

/// The longest topic name Kafka accepts.
pub const MAX_TOPIC_LEN: usize = 249;

/// Whether a topic name may hold `c`: letters, digits, `.`, `_` and `-` (the one rule, for
/// validation and for sanitizing rendered topics).
pub fn topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Problems reported as they are found, each with its path.
struct Report<'a>(&'a mut dyn FnMut(String, String));

impl Report<'_> {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        (self.0)(path.into(), message.into());
    }
}

impl KafkaSinkConfig {
    /// Reports every problem of these settings to `add` (path under `sink.`, message):
    /// called by the configuration's validation.
    pub fn check(&self, add: &mut dyn FnMut(String, String)) {
        let k = self;
        let mut p = Report(add);
        let p = &mut p;
        if k.brokers.trim().is_empty() {
            p.add("sink.brokers", "must not be empty");
        }
        check_topic_template(&k.topic, "sink.topic", &mut |path, message| {
            p.add(path, message)
        });
        if let Some(key) = &k.key
            && let Err(e) = Template::parse(key, Placeholder::ALL)
        {
            p.add("sink.key", format!("{key:?} {e}"));
        }
        let c = &k.create_topics;
        if c.partitions <= 0 {
            p.add("sink.createTopics.partitions", "must be greater than 0");
        }
        if c.replication_factor <= 0 {
            p.add(
                "sink.createTopics.replicationFactor",
                "must be greater than 0",
            );
        }
        if !matches!(
            c.cleanup_policy.as_str(),
            "delete" | "compact" | "compact,delete" | "delete,compact"
        ) {
            p.add(
                "sink.createTopics.cleanupPolicy",
                format!(
                    "{:?} must be delete, compact or compact,delete",
                    c.cleanup_policy
                ),
            );
        }
        if k.queue_max_messages == 0 {
            p.add("sink.queueMaxMessages", "must be greater than 0");
        }
        if k.queue_max_kbytes == 0 {
            p.add("sink.queueMaxKbytes", "must be greater than 0");
        }
        let sasl = &k.sasl;
        if k.security_protocol.uses_sasl() {
            match sasl.mechanism.as_deref() {
                Some("PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512") => {}
                Some(m) => p.add(
                    "sink.sasl.mechanism",
                    format!("{m:?} must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
                ),
                None => p.add(
                    "sink.sasl.mechanism",
                    "is required with securityProtocol sasl_plaintext or sasl_ssl",
                ),
            }
            if sasl.username.as_deref().is_none_or(|u| u.is_empty()) {
                p.add(
                    "sink.sasl.username",
                    "is required with securityProtocol sasl_plaintext or sasl_ssl",
                );
            }
            if sasl.password_env.is_some() == sasl.password_file.is_some() {
                p.add(
                    "sink.sasl",
                    "set exactly one of passwordEnv and passwordFile (the password never goes in the configuration file)",
                );
            }
        } else if sasl != &Default::default() {
            p.add(
                "sink.sasl",
                format!(
                    "is only used with securityProtocol sasl_plaintext or sasl_ssl (it is {})",
                    k.security_protocol.as_str()
                ),
            );
        }
        let tls = &k.tls;
        if k.security_protocol.uses_tls() {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                p.add("sink.tls", "certFile and keyFile go together");
            }
            if tls.key_password_env.is_some() && tls.key_password_file.is_some() {
                p.add(
                    "sink.tls",
                    "set at most one of keyPasswordEnv and keyPasswordFile",
                );
            }
        } else if tls != &Default::default() {
            p.add(
                "sink.tls",
                format!(
                    "is only used with securityProtocol ssl or sasl_ssl (it is {})",
                    k.security_protocol.as_str()
                ),
            );
        }
        for (name, value) in &k.properties {
            let at = format!("sink.properties.{name}");
            if let Some(field) = MANAGED_KAFKA_PROPERTIES
                .iter()
                .find(|(prop, _)| prop == name)
                .map(|(_, field)| field)
            {
                p.add(at.clone(), format!("set it with sink.{field} instead"));
            }
            if let Err(e) = check_env_references(value) {
                p.add(at, e);
            }
        }
    }
}

/// A topic template: valid syntax, no `{name}`, and literal text a topic name may hold.
pub fn check_topic_template(topic: &str, at: &str, add: &mut dyn FnMut(String, String)) {
    let mut p = Report(add);
    match Template::parse(topic, Placeholder::STREAM) {
        Err(e) => p.add(at, format!("{topic:?} {e}")),
        Ok(t) => {
            let bad: String = t
                .literals()
                .flat_map(str::chars)
                .filter(|c| !topic_char(*c))
                .collect();
            if !bad.is_empty() {
                p.add(
                    at,
                    format!("{topic:?} has characters a Kafka topic may not contain: {bad:?} (letters, digits, '.', '_' and '-' only)"),
                );
            } else if topic.len() > MAX_TOPIC_LEN {
                p.add(at, format!("is longer than {MAX_TOPIC_LEN} characters"));
            }
        }
    }
}

/// A fixed topic name (no placeholders), e.g. the state topic: the message says what is
/// wrong with it.
pub fn check_topic_name(topic: &str) -> Result<(), String> {
    let bad: String = topic.chars().filter(|c| !topic_char(*c)).collect();
    if topic.is_empty() {
        Err("must not be empty".into())
    } else if topic == "." || topic == ".." {
        Err(format!("{topic:?} is not a valid topic name"))
    } else if !bad.is_empty() {
        Err(format!(
            "{topic:?} has characters a Kafka topic may not contain: {bad:?} (letters, digits, '.', '_' and '-' only)"
        ))
    } else if topic.len() > MAX_TOPIC_LEN {
        Err(format!("is longer than {MAX_TOPIC_LEN} characters"))
    } else {
        Ok(())
    }
}
