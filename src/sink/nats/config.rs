//! Settings of the NATS sink (`sink.type: nats`) and their validation
//! ([`NatsSinkConfig::check`], called by the configuration's); the subject template's rules
//! are `crate::sink::nats::subject`'s. Documented in `docs/configuration.md` (section `sink` /
//! `nats`); semantics in `docs/sinks.md`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::sink::lenient;

use crate::sink::secret::SecretRef;

/// The default subject template: one subject per object.
pub const DEFAULT_SUBJECT: &str = "kubewire.{cluster}.{group}.{kind}.{namespace}.{name}";

/// The NATS sink.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NatsSinkConfig {
    /// Server URL(s), comma-separated, e.g. `nats://127.0.0.1:4222` or
    /// `tls://a:4222,tls://b:4222`. Required.
    pub url: String,
    /// `true` (default): publish to JetStream and wait for each PubAck (at-least-once, server
    /// de-duplication by `Nats-Msg-Id`). `false`: core NATS, fire-and-forget, **at most
    /// once** (an event published while the connection is down or with no subscriber is
    /// lost).
    #[serde(deserialize_with = "lenient::boolean")]
    pub jetstream: bool,
    /// Subject template over `{cluster}`, `{group}`, `{version}`, `{kind}`, `{resource}`,
    /// `{namespace}` and `{name}`; each placeholder stands for one escaped token (see
    /// `docs/sinks.md`). Must contain `{namespace}` and `{name}` (one object, one subject).
    /// Default: `kubewire.{cluster}.{group}.{kind}.{namespace}.{name}`.
    pub subject: String,
    /// The JetStream stream that stores the events (JetStream mode only).
    pub stream: NatsStreamConfig,
    /// Most publishes waiting for their PubAck at once (the pipelining window, over all
    /// streams); when full, `send` waits (backpressure). Default: 1024.
    #[serde(deserialize_with = "lenient::number")]
    pub max_outstanding_acks: usize,
    /// How long to wait for one PubAck before publishing the event again (same
    /// `Nats-Msg-Id`), in milliseconds. Default: 5000.
    #[serde(deserialize_with = "lenient::number")]
    pub ack_timeout_ms: u64,
    /// Authentication; omitted: none.
    pub auth: NatsAuthConfig,
    /// TLS; omitted: TLS only if the URL says `tls://` or the server requires it, trusting
    /// the system roots.
    pub tls: NatsTlsConfig,
}

impl Default for NatsSinkConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            jetstream: true,
            subject: DEFAULT_SUBJECT.into(),
            stream: NatsStreamConfig::default(),
            max_outstanding_acks: 1024,
            ack_timeout_ms: 5000,
            auth: NatsAuthConfig::default(),
            tls: NatsTlsConfig::default(),
        }
    }
}

/// The JetStream stream events are published to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NatsStreamConfig {
    /// Stream name (no spaces, `.`, `*`, `>`). Default: `KUBEWIRE`.
    pub name: String,
    /// `true`: create the stream, or update it to these settings, at start-up. `false`
    /// (default): it must exist, and cover the subject template, or kubewire does not start.
    #[serde(deserialize_with = "lenient::boolean")]
    pub create: bool,
    /// Subjects of a created stream. Default (empty): the subject template with every
    /// placeholder token replaced by `*`, e.g. `kubewire.*.*.*.*.*`.
    pub subjects: Vec<String>,
    /// Storage of a created stream: `file` (default) or `memory`.
    pub storage: NatsStorage,
    /// Retention of a created stream: `limits` (default), `interest` or `workqueue`.
    pub retention: NatsRetention,
    /// Oldest message age kept by a created stream, in seconds; 0 (default): unlimited.
    #[serde(deserialize_with = "lenient::number")]
    pub max_age_seconds: u64,
    /// Size limit of a created stream in bytes; 0 (default): unlimited.
    #[serde(deserialize_with = "lenient::number")]
    pub max_bytes: u64,
    /// De-duplication window of a created stream, in seconds: a message whose `Nats-Msg-Id`
    /// was stored less than this long ago is dropped. Must cover a restart of kubewire plus
    /// the checkpoint commit interval (see `docs/sinks.md`). Default: 600.
    #[serde(deserialize_with = "lenient::number")]
    pub duplicate_window_seconds: u64,
    /// Replicas of a created stream (1 to 5). Default: 1.
    #[serde(deserialize_with = "lenient::number")]
    pub replicas: usize,
}

impl Default for NatsStreamConfig {
    fn default() -> Self {
        Self {
            name: "KUBEWIRE".into(),
            create: false,
            subjects: Vec::new(),
            storage: NatsStorage::File,
            retention: NatsRetention::Limits,
            max_age_seconds: 0,
            max_bytes: 0,
            duplicate_window_seconds: 600,
            replicas: 1,
        }
    }
}

/// Where a created JetStream stream keeps its messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NatsStorage {
    /// On disk (survives a server restart).
    #[default]
    File,
    /// In memory only.
    Memory,
}

/// When a created JetStream stream discards messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NatsRetention {
    /// Until a limit (age, bytes) is reached.
    #[default]
    Limits,
    /// While some consumer is interested.
    Interest,
    /// Until one consumer acknowledges it.
    Workqueue,
}

/// NATS authentication: at most one of token, user/password, NKey seed, credentials file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NatsAuthConfig {
    /// Token authentication.
    pub token: Option<SecretRef>,
    /// User name for user/password authentication (with `password`).
    pub user: Option<String>,
    /// Password for user/password authentication (with `user`).
    pub password: Option<SecretRef>,
    /// NKey seed (`SU...`) for NKey authentication.
    pub nkey_seed: Option<SecretRef>,
    /// A `.creds` file (user JWT and NKey seed), for decentralised JWT authentication.
    pub credentials_file: Option<PathBuf>,
}

/// TLS to the NATS server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NatsTlsConfig {
    /// Require TLS even if the URL says `nats://`. Default: false.
    #[serde(deserialize_with = "lenient::boolean")]
    pub required: bool,
    /// PEM file of the CA(s) to trust, in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (with `keyFile`), for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `certFile`.
    pub key_file: Option<PathBuf>,
}

impl NatsSinkConfig {
    /// Reports every problem of these settings to `report` (path under `sink.`, message):
    /// called by the configuration's validation.
    pub fn check(&self, report: &mut dyn FnMut(String, String)) {
        let mut add = |path: &str, msg: String| report(format!("sink.{path}"), msg);
        if self.url.trim().is_empty() {
            add(
                "url",
                "must not be empty (e.g. nats://127.0.0.1:4222)".into(),
            );
        }
        if let Err(e) = crate::sink::nats::subject::SubjectTemplate::parse(&self.subject) {
            add("subject", format!("{:?} {e}", self.subject));
        }
        if self.max_outstanding_acks == 0 {
            add("maxOutstandingAcks", "must be greater than 0".into());
        }
        if self.ack_timeout_ms == 0 {
            add("ackTimeoutMs", "must be greater than 0".into());
        }
        if self.jetstream {
            let s = &self.stream;
            if s.name.is_empty()
                || s.name.chars().any(|c| {
                    matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace() || c.is_control()
                })
            {
                add(
                    "stream.name",
                    format!(
                        "{:?} is not a valid stream name (no spaces, '.', '*', '>', '/')",
                        s.name
                    ),
                );
            }
            for (i, subj) in s.subjects.iter().enumerate() {
                let tokens_ok = !subj.is_empty()
                    && subj.split('.').enumerate().all(|(j, t)| {
                        t == "*"
                            || (t == ">" && j == subj.split('.').count() - 1)
                            || crate::sink::nats::subject::is_valid_token(t)
                    });
                if !tokens_ok {
                    add(
                        &format!("stream.subjects[{i}]"),
                        format!("{subj:?} is not a valid subject filter"),
                    );
                }
            }
            if !(1..=5).contains(&s.replicas) {
                add("stream.replicas", format!("{} must be 1 to 5", s.replicas));
            }
        }
        let a = &self.auth;
        for (field, secret) in [
            ("auth.token", &a.token),
            ("auth.password", &a.password),
            ("auth.nkeySeed", &a.nkey_seed),
        ] {
            if let Some(s) = secret {
                match (&s.env, &s.file) {
                    (Some(v), None) if !v.trim().is_empty() => {}
                    (None, Some(f)) if !f.as_os_str().is_empty() => {}
                    _ => add(
                        field,
                        "set exactly one of env (a variable name) and file (a path)".into(),
                    ),
                }
            }
        }
        let methods = [
            a.token.is_some(),
            a.user.is_some() || a.password.is_some(),
            a.nkey_seed.is_some(),
            a.credentials_file.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            add(
                "auth",
                "use one of token, user/password, nkeySeed, credentialsFile".into(),
            );
        }
        if a.user.is_some() != a.password.is_some() {
            let missing = if a.user.is_some() { "password" } else { "user" };
            add(
                &format!("auth.{missing}"),
                "user and password go together".into(),
            );
        }
        if a.user.as_deref().is_some_and(|u| u.trim().is_empty()) {
            add("auth.user", "must not be empty".into());
        }
        let t = &self.tls;
        if t.cert_file.is_some() != t.key_file.is_some() {
            let missing = if t.cert_file.is_some() {
                "keyFile"
            } else {
                "certFile"
            };
            add(
                &format!("tls.{missing}"),
                "certFile and keyFile go together".into(),
            );
        }
    }
}
