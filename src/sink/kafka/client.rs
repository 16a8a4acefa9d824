//! From [`KafkaSinkConfig`] to a librdkafka [`ClientConfig`]: the correctness defaults of
//! the producer, the settings kubewire owns (compression, queue bound, security), secrets
//! read from the environment or files, then the pass-through `properties` (which win).

use rdkafka::ClientConfig;

use super::config::KafkaSinkConfig;
use crate::sink::SinkError;
use crate::sink::secret::{SecretRef, expand_env};

/// librdkafka's own default of `message.max.bytes`.
const LIBRDKAFKA_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// The producer's configuration, and its effective `message.max.bytes`.
pub fn producer_config(
    cfg: &KafkaSinkConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(ClientConfig, usize), SinkError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        // Correctness: no duplicates from internal retries, no reordering within a partition,
        // every in-sync replica has the message before it counts as delivered.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        // Same partition for a key as the Java client's default partitioner.
        .set("partitioner", "murmur2_random")
        // Nothing expires in the producer: during an outage messages wait (bounded by the
        // queue below, which then pushes back on the watch loops).
        .set("message.timeout.ms", "0")
        // Topics are created by `createTopics` (with its settings) or not at all.
        .set("allow.auto.create.topics", "false")
        .set("compression.type", cfg.compression.as_str())
        .set("linger.ms", "10")
        .set("batch.num.messages", "10000")
        .set(
            "queue.buffering.max.messages",
            cfg.queue_max_messages.to_string(),
        )
        .set(
            "queue.buffering.max.kbytes",
            cfg.queue_max_kbytes.to_string(),
        )
        // Broker states for the health report.
        .set("statistics.interval.ms", "1000")
        .set("client.id", "kubewire")
        .set("security.protocol", cfg.security_protocol.as_str());
    if cfg.security_protocol.uses_sasl() {
        let s = &cfg.sasl;
        if let Some(m) = &s.mechanism {
            c.set("sasl.mechanism", m);
        }
        if let Some(u) = &s.username {
            c.set("sasl.username", u);
        }
        let password = secret(
            "sink.sasl.passwordEnv",
            s.password_env.as_deref(),
            s.password_file.as_deref(),
            env,
        )?;
        if let Some(p) = password {
            c.set("sasl.password", p);
        }
    }
    if cfg.security_protocol.uses_tls() {
        let t = &cfg.tls;
        for (prop, path) in [
            ("ssl.ca.location", &t.ca_file),
            ("ssl.certificate.location", &t.cert_file),
            ("ssl.key.location", &t.key_file),
        ] {
            if let Some(p) = path {
                c.set(prop, p.display().to_string());
            }
        }
        let pass = secret(
            "sink.tls.keyPasswordEnv",
            t.key_password_env.as_deref(),
            t.key_password_file.as_deref(),
            env,
        )?;
        if let Some(p) = pass {
            c.set("ssl.key.password", p);
        }
    }
    let mut max_bytes = LIBRDKAFKA_MESSAGE_MAX_BYTES;
    for (name, value) in &cfg.properties {
        let value = expand_env(value, env)
            .map_err(|e| SinkError::Secret(format!("sink.properties.{name}: {e}")))?;
        if name == "message.max.bytes" {
            max_bytes = value.parse().map_err(|_| {
                SinkError::Config(format!(
                    "sink.properties.message.max.bytes: {value:?} is not a number"
                ))
            })?;
        }
        c.set(name, value);
    }
    Ok((c, max_bytes))
}

/// A secret from an environment variable or a file (the one rule of
/// [`SecretRef`](crate::sink::secret::SecretRef): whitespace around it trimmed); `None` when
/// neither is set.
fn secret(
    what: &str,
    env_name: Option<&str>,
    file: Option<&std::path::Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, SinkError> {
    if env_name.is_none() && file.is_none() {
        return Ok(None);
    }
    SecretRef::of(env_name, file)
        .read_with(env)
        .map(Some)
        .map_err(|e| SinkError::Secret(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::super::config::{KafkaSecurityProtocol, KafkaSinkConfig};
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "PASS").then(|| "s3cret".to_owned())
    }

    #[test]
    fn correctness_defaults_are_set_and_properties_win() {
        let mut cfg = KafkaSinkConfig {
            brokers: "b:9092".into(),
            ..Default::default()
        };
        cfg.properties.insert("linger.ms".into(), "50".into());
        cfg.properties
            .insert("message.max.bytes".into(), "2000000".into());
        let (c, max) = producer_config(&cfg, &env).unwrap();
        for (k, v) in [
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("max.in.flight.requests.per.connection", "5"),
            ("partitioner", "murmur2_random"),
            ("message.timeout.ms", "0"),
            ("compression.type", "zstd"),
            ("linger.ms", "50"),
            ("queue.buffering.max.kbytes", "65536"),
        ] {
            assert_eq!(c.get(k), Some(v), "{k}");
        }
        assert_eq!(max, 2_000_000);
    }

    #[test]
    fn secrets_come_from_env_or_file_and_env_references_expand() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let mut cfg = KafkaSinkConfig {
            brokers: "b:9092".into(),
            security_protocol: KafkaSecurityProtocol::SaslSsl,
            ..Default::default()
        };
        cfg.sasl.mechanism = Some("SCRAM-SHA-512".into());
        cfg.sasl.username = Some("u".into());
        cfg.sasl.password_env = Some("PASS".into());
        cfg.tls.key_password_file = Some(file);
        cfg.properties
            .insert("sasl.oauthbearer.config".into(), "x=${PASS}!".into());
        let (c, _) = producer_config(&cfg, &env).unwrap();
        assert_eq!(c.get("sasl.password"), Some("s3cret"));
        assert_eq!(c.get("ssl.key.password"), Some("from-file"));
        assert_eq!(c.get("sasl.oauthbearer.config"), Some("x=s3cret!"));

        cfg.sasl.password_env = Some("NOPE".into());
        let e = producer_config(&cfg, &env).err().unwrap().to_string();
        assert!(e.contains("NOPE is not set"), "{e}");
    }
}
