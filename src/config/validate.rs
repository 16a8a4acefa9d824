//! [`Config::validate`]: every problem, with its path, in one pass.

use std::collections::{HashMap, HashSet};

use super::resource_ref::is_dns_label;
use super::{Config, Problem, ResourceRef, SinkConfig, StateBackend};
use crate::sink::check_topic_template;

impl Config {
    /// Checks everything that can be checked without a cluster and returns every problem
    /// found (empty: valid). Resource names are checked for syntax only; discovery
    /// (`crate::cluster`) resolves them and reports unknown ones.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Problems::default();
        self.validate_clusters(&mut p);
        self.validate_resources(&mut p);
        self.validate_sink(&mut p);
        self.validate_resource_sink_settings(&mut p);
        self.validate_checkpoint(&mut p);
        self.validate_watch(&mut p);
        if self.admin.enabled && self.admin.address.parse::<std::net::SocketAddr>().is_err() {
            p.add(
                "admin.address",
                format!("{:?} is not an ip:port address", self.admin.address),
            );
        }
        let le = &self.leader_election;
        if le.enabled {
            if le.lease_name.trim().is_empty() {
                p.add("leaderElection.leaseName", "must not be empty");
            }
            if le.renew_grace_seconds >= le.lease_duration_seconds {
                p.add(
                    "leaderElection.renewGraceSeconds",
                    "must be less than leaseDurationSeconds",
                );
            }
            if let Some(c) = &le.cluster
                && !self.clusters.is_empty()
                && !self.clusters.iter().any(|k| &k.name == c)
            {
                p.add(
                    "leaderElection.cluster",
                    format!("{c:?} is not one of the configured clusters"),
                );
            }
        }
        if self.log.level.trim().is_empty() {
            p.add("log.level", "must not be empty (e.g. info, debug)");
        }
        self.validate_telemetry(&mut p);
        p.0
    }

    fn validate_telemetry(&self, p: &mut Problems) {
        let o = &self.telemetry.otlp;
        if let Some(e) = &o.endpoint
            && !e.starts_with("http://")
        {
            p.add(
                "telemetry.otlp.endpoint",
                format!(
                    "{e:?} is not an http:// URL (e.g. http://localhost:4317; \
                     the exporter speaks plaintext gRPC, TLS is not supported)"
                ),
            );
        }
        for (field, v) in [
            ("maxQueueSize", o.max_queue_size as u64),
            ("maxExportBatchSize", o.max_export_batch_size as u64),
            ("scheduledDelayMs", o.scheduled_delay_ms),
            ("exportTimeoutMs", o.export_timeout_ms),
        ] {
            if v == 0 {
                p.add(format!("telemetry.otlp.{field}"), "must be at least 1");
            }
        }
        if o.max_export_batch_size > o.max_queue_size {
            p.add(
                "telemetry.otlp.maxExportBatchSize",
                "must not exceed maxQueueSize",
            );
        }
    }

    fn validate_clusters(&self, p: &mut Problems) {
        if self.clusters.is_empty() {
            p.add(
                "clusters",
                "must list at least one cluster (omit it for the default one)",
            );
        }
        let mut seen = HashMap::new();
        for (i, c) in self.clusters.iter().enumerate() {
            let at = format!("clusters[{i}]");
            if c.name.is_empty() {
                p.add(format!("{at}.name"), "must not be empty");
            } else if c.name.len() > 63
                || !c
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                p.add(
                    format!("{at}.name"),
                    format!(
                        "{:?} must be at most 63 letters, digits, '.', '_' or '-' (it is part of event ids)",
                        c.name
                    ),
                );
            } else if let Some(first) = seen.insert(c.name.as_str(), i) {
                p.add(
                    format!("{at}.name"),
                    format!(
                        "duplicate cluster name {:?} (also clusters[{first}])",
                        c.name
                    ),
                );
            }
            if c.kubeconfig
                .as_ref()
                .is_some_and(|k| k.as_os_str().is_empty())
            {
                p.add(
                    format!("{at}.kubeconfig"),
                    "must not be empty; omit it to infer",
                );
            }
            if c.context.as_deref().is_some_and(|s| s.trim().is_empty()) {
                p.add(
                    format!("{at}.context"),
                    "must not be empty; omit it for the current context",
                );
            }
        }
    }

    fn validate_resources(&self, p: &mut Problems) {
        if self.resources.is_empty() {
            p.add("resources", "must list at least one resource to watch");
        }
        // (resource, namespace or "", label selector, field selector) → first entry index
        let mut streams: HashMap<(String, String, String, String), usize> = HashMap::new();
        for (i, r) in self.resources.iter().enumerate() {
            let at = format!("resources[{i}]");
            if r.exclude.is_some() && !r.is_all() {
                p.add(
                    format!("{at}.exclude"),
                    format!("is only used with resource: \"*\" (it is {:?})", r.resource),
                );
            }
            if let Some(ex) = &r.exclude {
                for (j, e) in ex.iter().enumerate() {
                    if e.trim().is_empty() || e.contains(['/', ' ', '*']) {
                        p.add(
                            format!("{at}.exclude[{j}]"),
                            format!("{e:?} must be a plural, plural.group or a group"),
                        );
                    }
                }
            }
            let parsed = match ResourceRef::parse(&r.resource) {
                _ if r.is_all() => None,
                Ok(parsed) => Some(parsed),
                Err(e) => {
                    let message = match e {
                        super::ConfigError::InvalidResource { input, reason } => {
                            format!("{input:?} {reason}")
                        }
                        other => other.to_string(),
                    };
                    p.add(format!("{at}.resource"), message);
                    None
                }
            };
            let mut namespaces = HashSet::new();
            for (j, ns) in r.namespaces.iter().enumerate() {
                let nat = format!("{at}.namespaces[{j}]");
                if !is_dns_label(ns) {
                    p.add(
                        nat,
                        format!(
                            "{ns:?} is not a valid namespace name (lowercase letters, digits and '-', at most 63)"
                        ),
                    );
                } else if !namespaces.insert(ns.as_str()) {
                    p.add(nat, format!("namespace {ns:?} is listed twice"));
                }
            }
            for (field, value) in [
                ("labelSelector", &r.label_selector),
                ("fieldSelector", &r.field_selector),
            ] {
                if let Some(sel) = value {
                    if sel.trim().is_empty() {
                        p.add(
                            format!("{at}.{field}"),
                            "must not be empty; omit it to select all",
                        );
                    } else if let Err(message) = check_selector(sel) {
                        p.add(format!("{at}.{field}"), message);
                    }
                }
            }
            if r.events.is_empty() {
                p.add(
                    format!("{at}.events"),
                    "must list at least one of added, modified, deleted (omit it for all)",
                );
            }
            let mut events = HashSet::new();
            for (j, e) in r.events.iter().enumerate() {
                if !events.insert(*e) {
                    p.add(
                        format!("{at}.events[{j}]"),
                        format!("{} is listed twice", e.as_str()),
                    );
                }
            }
            if let Some(parsed) = parsed {
                let resource = format!(
                    "{}/{}/{}",
                    parsed.group.as_deref().unwrap_or("*"),
                    parsed.version.as_deref().unwrap_or("*"),
                    parsed.name.to_ascii_lowercase()
                );
                let scopes: Vec<&str> = if r.namespaces.is_empty() {
                    vec![""]
                } else {
                    r.namespaces.iter().map(String::as_str).collect()
                };
                let mut reported = false;
                for ns in scopes {
                    let key = (
                        resource.clone(),
                        ns.to_owned(),
                        r.label_selector.clone().unwrap_or_default(),
                        r.field_selector.clone().unwrap_or_default(),
                    );
                    if let Some(first) = streams.get(&key) {
                        if !reported && *first != i {
                            let scope = if ns.is_empty() {
                                "all namespaces".to_owned()
                            } else {
                                format!("namespace {ns:?}")
                            };
                            p.add(
                                format!("{at}.resource"),
                                format!(
                                    "duplicate stream: {:?} in {scope} with the same selectors is already watched by resources[{first}]",
                                    r.resource
                                ),
                            );
                            reported = true;
                        }
                    } else {
                        streams.insert(key, i);
                    }
                }
            }
        }
    }

    fn validate_sink(&self, p: &mut Problems) {
        match &self.sink {
            SinkConfig::Stdout { .. } => {}
            SinkConfig::File { path } => {
                if path.as_os_str().is_empty() {
                    p.add("sink.path", "must not be empty");
                }
            }
            SinkConfig::Kafka(k) => {
                k.check(&mut |path, message| p.add(path, message));
                for (i, r) in self.resources.iter().enumerate() {
                    if let Some(topic) = r.kafka.as_ref().and_then(|k| k.topic.as_deref()) {
                        check_topic_template(
                            topic,
                            &format!("resources[{i}].kafka.topic"),
                            &mut |path, message| p.add(path, message),
                        );
                    }
                }
            }
            SinkConfig::Nats(n) => n.check(&mut |path, message| p.add(path, message)),
        }
    }

    fn validate_resource_sink_settings(&self, p: &mut Problems) {
        if matches!(self.sink, SinkConfig::Kafka(_)) {
            return;
        }
        for (i, r) in self.resources.iter().enumerate() {
            if r.kafka.is_some() {
                p.add(
                    format!("resources[{i}].kafka"),
                    format!(
                        "is only used with sink.type kafka (it is {})",
                        self.sink.type_name()
                    ),
                );
            }
        }
    }

    fn validate_checkpoint(&self, p: &mut Problems) {
        let c = &self.checkpoint;
        if c.path.as_os_str().is_empty() {
            p.add("checkpoint.path", "must not be empty");
        }
        if c.commit_interval_ms == 0 {
            p.add("checkpoint.commitIntervalMs", "must be greater than 0");
        }
        if c.redaction_key_path
            .as_ref()
            .is_some_and(|k| k.as_os_str().is_empty())
        {
            p.add(
                "checkpoint.redactionKeyPath",
                "must not be empty; omit it for a generated key",
            );
        }
        if c.backend == StateBackend::Kafka && !matches!(self.sink, SinkConfig::Kafka(_)) {
            p.add(
                "checkpoint.backend",
                format!(
                    "kafka keeps the state in the Kafka cluster the events go to, but sink.type is {}; use embedded (or auto)",
                    self.sink.type_name()
                ),
            );
        }
        let k = &c.kafka;
        if let Err(e) = crate::sink::kafka::config::check_topic_name(&k.state_topic) {
            p.add("checkpoint.kafka.stateTopic", e);
        }
        if k.replication_factor.is_some_and(|r| r <= 0) {
            p.add(
                "checkpoint.kafka.replicationFactor",
                "must be greater than 0",
            );
        }
        if k.transactional_id
            .as_ref()
            .is_some_and(|t| t.trim().is_empty())
        {
            p.add(
                "checkpoint.kafka.transactionalId",
                "must not be empty; omit it for the default",
            );
        }
        for (field, zero) in [
            ("transactionIntervalMs", k.transaction_interval_ms == 0),
            ("transactionMaxEvents", k.transaction_max_events == 0),
            ("transactionTimeoutMs", k.transaction_timeout_ms == 0),
        ] {
            if zero {
                p.add(
                    format!("checkpoint.kafka.{field}"),
                    "must be greater than 0",
                );
            }
        }
        if k.transaction_timeout_ms <= k.transaction_interval_ms.saturating_mul(4) {
            p.add(
                "checkpoint.kafka.transactionTimeoutMs",
                "must be well above transactionIntervalMs (at least 4 times): the broker would abort transactions still being filled",
            );
        }
    }

    fn validate_watch(&self, p: &mut Problems) {
        let w = &self.watch;
        for (field, zero) in [
            ("pageSize", w.page_size == 0),
            ("timeoutSeconds", w.timeout_seconds == 0),
            ("idleTimeoutSeconds", w.idle_timeout_seconds == 0),
            ("channelCapacity", w.channel_capacity == 0),
            ("backoffInitialMs", w.backoff_initial_ms == 0),
            ("backoffMaxMs", w.backoff_max_ms == 0),
            ("healthyResetSeconds", w.healthy_reset_seconds == 0),
            (
                "discoveryIntervalSeconds",
                w.discovery_interval_seconds == 0,
            ),
        ] {
            if zero {
                p.add(format!("watch.{field}"), "must be greater than 0");
            }
        }
        if w.idle_timeout_seconds != 0 && w.idle_timeout_seconds <= w.timeout_seconds {
            p.add(
                "watch.idleTimeoutSeconds",
                format!(
                    "must be greater than watch.timeoutSeconds ({}), or quiet watches are cut before the server ends them",
                    w.timeout_seconds
                ),
            );
        }
        if w.backoff_max_ms != 0 && w.backoff_max_ms < w.backoff_initial_ms {
            p.add(
                "watch.backoffMaxMs",
                format!(
                    "must be at least watch.backoffInitialMs ({})",
                    w.backoff_initial_ms
                ),
            );
        }
    }
}

/// A light syntax check of a label or field selector: comma-separated requirements, each
/// non-empty and with balanced parentheses. The API server has the last word.
fn check_selector(sel: &str) -> Result<(), String> {
    let mut depth = 0i32;
    let mut start = 0;
    let bytes = sel.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("{sel:?} has an unmatched ')'"));
                }
            }
            b',' if depth == 0 => {
                if sel[start..i].trim().is_empty() {
                    return Err(format!("{sel:?} has an empty requirement"));
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("{sel:?} has an unmatched '('"));
    }
    if sel[start..].trim().is_empty() {
        return Err(format!("{sel:?} has an empty requirement"));
    }
    Ok(())
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem::new(path, message));
    }
}
