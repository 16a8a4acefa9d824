//! [`Config::check_references`]: what `check-config` can check of the secrets and files a
//! configuration names without running — each variable set, each file readable, each
//! `${NAME}` set — reporting where and which, never a value. Reads files (small I/O); the
//! environment is passed in.

use std::path::Path;

use super::{Config, Problem, SecretRef, SinkConfig};

impl Config {
    /// Every secret reference, `${NAME}` and file of the configuration that cannot be read,
    /// each with its path. `env` looks up an environment variable.
    pub fn check_references(&self, env: &dyn Fn(&str) -> Option<String>) -> Vec<Problem> {
        let mut p = Vec::new();
        let file = |p: &mut Vec<Problem>, at: String, path: &Path, what: &str| {
            if let Err(e) = std::fs::File::open(path) {
                p.push(Problem::new(
                    at,
                    format!("{what} {} cannot be read: {e}", path.display()),
                ));
            }
        };
        for (i, c) in self.clusters.iter().enumerate() {
            if let Some(k) = &c.kubeconfig {
                file(&mut p, format!("clusters[{i}].kubeconfig"), k, "kubeconfig");
            }
        }
        let mut secrets: Vec<(String, SecretRef)> = Vec::new();
        match &self.sink {
            SinkConfig::Kafka(k) => {
                if k.security_protocol.uses_sasl()
                    && (k.sasl.password_env.is_some() || k.sasl.password_file.is_some())
                {
                    secrets.push((
                        "sink.sasl".into(),
                        SecretRef::of(
                            k.sasl.password_env.as_deref(),
                            k.sasl.password_file.as_deref(),
                        ),
                    ));
                }
                if k.security_protocol.uses_tls() {
                    let t = &k.tls;
                    for (field, path) in [
                        ("caFile", &t.ca_file),
                        ("certFile", &t.cert_file),
                        ("keyFile", &t.key_file),
                    ] {
                        if let Some(path) = path {
                            file(&mut p, format!("sink.tls.{field}"), path, "file");
                        }
                    }
                    if t.key_password_env.is_some() != t.key_password_file.is_some() {
                        secrets.push((
                            "sink.tls".into(),
                            SecretRef::of(
                                t.key_password_env.as_deref(),
                                t.key_password_file.as_deref(),
                            ),
                        ));
                    }
                }
                for (name, value) in &k.properties {
                    for var in env_references(value) {
                        if env(var).is_none() {
                            p.push(Problem::new(
                                format!("sink.properties.{name}"),
                                format!("environment variable {var} (${{{var}}}) is not set"),
                            ));
                        }
                    }
                }
            }
            SinkConfig::Nats(n) => {
                let a = &n.auth;
                for (field, s) in [
                    ("auth.token", &a.token),
                    ("auth.password", &a.password),
                    ("auth.nkeySeed", &a.nkey_seed),
                ] {
                    if let Some(s) = s {
                        secrets.push((format!("sink.{field}"), s.clone()));
                    }
                }
                if let Some(c) = &a.credentials_file {
                    file(
                        &mut p,
                        "sink.auth.credentialsFile".into(),
                        c,
                        "credentials file",
                    );
                }
                let t = &n.tls;
                for (field, path) in [
                    ("caFile", &t.ca_file),
                    ("certFile", &t.cert_file),
                    ("keyFile", &t.key_file),
                ] {
                    if let Some(path) = path {
                        file(&mut p, format!("sink.tls.{field}"), path, "file");
                    }
                }
            }
            SinkConfig::Stdout { .. } | SinkConfig::File { .. } => {}
        }
        for (at, s) in secrets {
            // Malformed references (both or neither of env and file) are validate()'s.
            if s.env.is_some() == s.file.is_some() {
                continue;
            }
            match s.read_with(env) {
                Ok(v) if v.is_empty() => p.push(Problem::new(at, "the secret is empty")),
                Ok(_) => {}
                Err(e) => p.push(Problem::new(at, format!("secret: {e}"))),
            }
        }
        p
    }
}

/// The `NAME`s of the well-formed `${NAME}` references in `value` (malformed ones are
/// reported by validation).
fn env_references(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(i) = rest.find("${") {
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else { break };
        let name = &after[..end];
        if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            out.push(name);
        }
        rest = &after[end + 1..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{Format, Problem};
    use super::*;

    fn config(yaml: &str) -> Config {
        Config::from_str_with_env(yaml, Format::Yaml, [("", ""); 0]).unwrap()
    }

    fn paths(p: &[Problem]) -> Vec<&str> {
        p.iter().map(|p| p.path.as_str()).collect()
    }

    #[test]
    fn kafka_secrets_files_and_env_references_must_be_readable() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let yaml = format!(
            "resources: [{{resource: configmaps}}]\n\
             sink:\n  type: kafka\n  brokers: b:9092\n  securityProtocol: sasl_ssl\n\
             \x20 sasl: {{mechanism: PLAIN, username: u, passwordFile: {pw}}}\n\
             \x20 tls: {{caFile: {missing}, keyPasswordEnv: KEYPASS}}\n\
             \x20 properties: {{sasl.oauthbearer.config: 'a=${{SET}} b=${{UNSET}}'}}\n",
            pw = pw.display(),
            missing = dir.path().join("nope.pem").display(),
        );
        let env = |n: &str| (n == "SET").then(|| "x".to_owned());
        let p = config(&yaml).check_references(&env);
        assert_eq!(
            paths(&p),
            [
                "sink.tls.caFile",
                "sink.properties.sasl.oauthbearer.config",
                "sink.tls"
            ],
            "{p:?}"
        );
        assert!(
            p[1].message.contains("UNSET") && !p[1].message.contains("SET)"),
            "{p:?}"
        );
        assert!(p[2].message.contains("KEYPASS is not set"), "{p:?}");
        // Never the value itself.
        assert!(!format!("{p:?}").contains("s3cret"));
        std::fs::remove_file(&pw).unwrap();
        let p = config(&yaml).check_references(&env);
        assert!(paths(&p).contains(&"sink.sasl"), "{p:?}");
    }

    #[test]
    fn nats_secrets_and_kubeconfigs_must_be_readable() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let yaml = format!(
            "clusters: [{{name: a, kubeconfig: {kc}}}]\nresources: [{{resource: configmaps}}]\n\
             sink:\n  type: nats\n  url: nats://x:4222\n  auth: {{nkeySeed: {{file: {empty}}}}}\n",
            kc = dir.path().join("kubeconfig").display(),
            empty = empty.display(),
        );
        let p = config(&yaml).check_references(&|_| None);
        assert_eq!(
            paths(&p),
            ["clusters[0].kubeconfig", "sink.auth.nkeySeed"],
            "{p:?}"
        );
        assert!(p[1].message.contains("empty"), "{p:?}");
        let ok = "resources: [{resource: configmaps}]\nsink: {type: nats, url: 'nats://x', auth: {token: {env: TOKEN}}}\n";
        let env = |n: &str| (n == "TOKEN").then(|| "t".to_owned());
        assert!(config(ok).check_references(&env).is_empty());
        assert_eq!(
            paths(&config(ok).check_references(&|_| None)),
            ["sink.auth.token"]
        );
    }
}
