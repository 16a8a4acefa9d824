//! Topics the sink writes to: whether each exists (created on first use when
//! `createTopics.enabled`), and its `max.message.bytes`, looked up once and cached.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::QuietContext;
use super::config::CreateTopicsConfig;
use crate::sink::SinkError;

const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY: Duration = Duration::from_secs(5);

/// What is known of one topic.
#[derive(Debug)]
pub struct TopicInfo {
    /// The topic's `max.message.bytes`, if the broker said.
    pub max_message_bytes: Option<usize>,
    /// The topic's `cleanup.policy`, if the broker said.
    pub cleanup_policy: Option<String>,
}

/// The result of one look-up.
pub enum Lookup {
    Exists(Arc<TopicInfo>),
    Missing,
    /// The brokers could not answer.
    Unreachable(String),
}

impl Lookup {
    /// The outcome's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Lookup::Exists(_) => "exists",
            Lookup::Missing => "missing",
            Lookup::Unreachable(_) => "unreachable",
        }
    }
}

pub struct Topics {
    admin: Arc<AdminClient<QuietContext>>,
    create: CreateTopicsConfig,
    known: Mutex<HashMap<String, Arc<TopicInfo>>>,
    /// Serialises look-ups of unknown topics.
    slow: tokio::sync::Mutex<()>,
    /// Missing topics already logged (once each).
    reported: Mutex<HashSet<String>>,
}

impl Topics {
    pub fn new(admin: AdminClient<QuietContext>, create: CreateTopicsConfig) -> Self {
        Self {
            admin: Arc::new(admin),
            create,
            known: Mutex::default(),
            slow: tokio::sync::Mutex::new(()),
            reported: Mutex::default(),
        }
    }

    fn cached(&self, topic: &str) -> Option<Arc<TopicInfo>> {
        self.known.lock().unwrap().get(topic).cloned()
    }

    /// One attempt: from the cache, or asks the brokers (and creates the topic when
    /// allowed).
    pub async fn lookup(&self, topic: &str) -> Lookup {
        if let Some(info) = self.cached(topic) {
            return Lookup::Exists(info);
        }
        let _guard = self.slow.lock().await;
        if let Some(info) = self.cached(topic) {
            return Lookup::Exists(info);
        }
        let mut result = self.describe(topic).await;
        if matches!(result, Lookup::Missing) && self.create.enabled {
            match self.create(topic).await {
                Ok(()) => result = self.describe(topic).await,
                Err(e) => result = Lookup::Unreachable(e),
            }
        }
        if let Lookup::Exists(info) = &result {
            tracing::debug!(%topic, max_message_bytes = ?info.max_message_bytes, "kafka topic found");
            self.known
                .lock()
                .unwrap()
                .insert(topic.to_owned(), info.clone());
            if self.reported.lock().unwrap().remove(topic) {
                tracing::info!(%topic, "kafka topic now exists; publishing to it");
            }
        }
        result
    }

    /// Asks the brokers again, past the cache: whether a topic that existed still does
    /// (and creates it again when allowed).
    pub async fn recheck(&self, topic: &str) -> Lookup {
        self.known.lock().unwrap().remove(topic);
        let result = self.lookup(topic).await;
        if matches!(result, Lookup::Missing) {
            // The caller reports it (with how many events wait); `ensure` need not again.
            self.reported.lock().unwrap().insert(topic.to_owned());
        }
        result
    }

    /// Waits until `topic` exists, retrying; logs a missing topic once.
    pub async fn ensure(&self, topic: &str) -> Arc<TopicInfo> {
        loop {
            match self.lookup(topic).await {
                Lookup::Exists(info) => return info,
                Lookup::Missing => {
                    if self.reported.lock().unwrap().insert(topic.to_owned()) {
                        tracing::error!(%topic, "kafka topic does not exist: create it, or set sink.createTopics.enabled: true; events for it wait");
                    }
                }
                Lookup::Unreachable(e) => {
                    tracing::debug!(%topic, error = %e, "cannot look up kafka topic; retrying");
                }
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Existence from the cluster metadata (a describe of a missing topic may answer with
    /// an empty configuration rather than an error), then the topic's configuration.
    async fn describe(&self, topic: &str) -> Lookup {
        let admin = self.admin.clone();
        let name = topic.to_owned();
        let metadata = tokio::task::spawn_blocking(move || {
            let md = admin.inner().fetch_metadata(Some(&name), ADMIN_TIMEOUT)?;
            Ok::<_, KafkaError>(md.topics().first().and_then(|t| t.error()))
        })
        .await;
        match metadata {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(e))) => {
                let code = RDKafkaErrorCode::from(e);
                return match code {
                    RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                        Lookup::Missing
                    }
                    other => Lookup::Unreachable(other.to_string()),
                };
            }
            Ok(Err(e)) => return Lookup::Unreachable(e.to_string()),
            Err(e) => return Lookup::Unreachable(e.to_string()),
        }
        let opts = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
        let res = self
            .admin
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &opts)
            .await;
        match res {
            Ok(mut results) => match results.pop() {
                Some(Ok(resource)) => Lookup::Exists(Arc::new(TopicInfo {
                    max_message_bytes: resource
                        .get("max.message.bytes")
                        .and_then(|e| e.value.as_deref())
                        .and_then(|v| v.parse().ok()),
                    cleanup_policy: resource.get("cleanup.policy").and_then(|e| e.value.clone()),
                })),
                Some(Err(
                    RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic,
                )) => Lookup::Missing,
                Some(Err(code)) => Lookup::Unreachable(code.to_string()),
                None => Lookup::Unreachable("empty answer".into()),
            },
            Err(KafkaError::AdminOp(
                RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic,
            )) => Lookup::Missing,
            Err(e) => Lookup::Unreachable(e.to_string()),
        }
    }

    /// The state topic of the Kafka backend: created when missing (one partition,
    /// `cleanup.policy=compact`); an existing one must be compacted, or the state would
    /// expire with the retention. The error names the topic and what to change.
    pub async fn ensure_state_topic(
        &self,
        topic: &str,
        replication_factor: i32,
    ) -> Result<(), SinkError> {
        let mut created = false;
        loop {
            let lookup = self.describe(topic).await;
            tracing::debug!(%topic, lookup = lookup.kind(), "kafka state topic looked up");
            match lookup {
                Lookup::Exists(info) => {
                    let policy = info.cleanup_policy.as_deref().unwrap_or("");
                    if !policy.split(',').any(|p| p.trim() == "compact") {
                        return Err(SinkError::Destination(format!(
                            "kafka state topic {topic} has cleanup.policy={policy}: the state would expire with the retention; set cleanup.policy=compact on it, or use another checkpoint.kafka.stateTopic"
                        )));
                    }
                    return Ok(());
                }
                Lookup::Missing if !created => {
                    self.create_with(topic, 1, replication_factor, "compact")
                        .await
                        .map_err(|e| {
                            SinkError::Destination(format!(
                                "{e}: kubewire needs the ACL Create on it (or create it with one partition and cleanup.policy=compact)"
                            ))
                        })?;
                    created = true;
                }
                // Created, but the metadata does not show it yet.
                Lookup::Missing => tokio::time::sleep(Duration::from_millis(200)).await,
                Lookup::Unreachable(e) => {
                    return Err(SinkError::Connect(format!(
                        "cannot connect to kafka to look up the state topic {topic}: {e}"
                    )));
                }
            }
        }
    }

    async fn create(&self, topic: &str) -> Result<(), String> {
        let c = &self.create;
        self.create_with(topic, c.partitions, c.replication_factor, &c.cleanup_policy)
            .await
    }

    async fn create_with(
        &self,
        topic: &str,
        partitions: i32,
        replication_factor: i32,
        cleanup_policy: &str,
    ) -> Result<(), String> {
        let new = NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(replication_factor),
        )
        .set("cleanup.policy", cleanup_policy);
        let opts = AdminOptions::new()
            .request_timeout(Some(ADMIN_TIMEOUT))
            .operation_timeout(Some(ADMIN_TIMEOUT));
        match self.admin.create_topics(&[new], &opts).await {
            Ok(mut r) => match r.pop() {
                Some(Ok(_)) => {
                    tracing::info!(%topic, partitions, replication_factor, %cleanup_policy, "created kafka topic");
                    Ok(())
                }
                Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(()),
                Some(Err((_, code))) => Err(format!("cannot create topic {topic}: {code}")),
                None => Err(format!("cannot create topic {topic}: empty answer")),
            },
            Err(e) => Err(format!("cannot create topic {topic}: {e}")),
        }
    }
}
