//! Kafka helpers for the Kafka sink tests: topics (created and described with the admin
//! API) and a consumer that reads a topic from the beginning and keeps what it read.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;

use crate::common;

fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", common::kafka_brokers())
        .create()
        .expect("kafka admin client")
}

/// Creates `name` with `partitions` partitions and extra topic configs.
pub async fn create_topic(name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let r = admin()
        .create_topics(
            &[t],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic");
    r[0].as_ref().expect("topic created");
}

/// The topic's configuration entries (name → value).
pub async fn topic_config(name: &str) -> HashMap<String, String> {
    let r = admin()
        .describe_configs(
            &[rdkafka::admin::ResourceSpecifier::Topic(name)],
            &AdminOptions::new(),
        )
        .await
        .expect("describe configs");
    let res = r[0].as_ref().expect("topic described");
    res.entries
        .iter()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect()
}

/// One consumed record.
#[derive(Clone, Debug)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    /// `None`: a tombstone.
    pub value: Option<Value>,
    pub headers: BTreeMap<String, String>,
}

impl Record {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// Reads a topic from the beginning; every call to [`Reader::poll`] adds what arrived.
pub struct Reader {
    consumer: BaseConsumer,
    pub topic: String,
    pub records: Vec<Record>,
}

impl Reader {
    /// Waits (up to 60 s) until `topic` exists, then assigns all its partitions from the
    /// beginning.
    pub async fn new(topic: &str) -> Reader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", common::kafka_brokers())
            .set("group.id", common::unique_name("kwtest"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        let partitions = common::eventually(60, &format!("topic {topic} to exist"), || async {
            let md = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .ok()?;
            let t = md.topics().first()?;
            (t.error().is_none() && !t.partitions().is_empty()).then(|| t.partitions().len())
        })
        .await;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).expect("assign");
        Reader {
            consumer,
            topic: topic.to_owned(),
            records: Vec::new(),
        }
    }

    /// Reads whatever is available now: until a short poll returns nothing, or for at most a
    /// second, so that a topic written to without pause (a writer running during the test)
    /// still lets the caller check its condition.
    pub fn poll(&mut self) -> &[Record] {
        let until = std::time::Instant::now() + Duration::from_secs(1);
        while std::time::Instant::now() < until {
            let Some(m) = self.consumer.poll(Duration::from_millis(300)) else {
                break;
            };
            // Transient errors (e.g. all brokers down during an outage test): read on later.
            let Ok(m) = m else { break };
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            self.records.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                value: m
                    .payload()
                    .map(|p| serde_json::from_slice(p).expect("JSON value")),
                headers,
            });
        }
        &self.records
    }

    /// Polls until `pred` holds for everything read so far, for at most `secs` seconds.
    pub async fn wait(&mut self, secs: u64, what: &str, pred: impl Fn(&[Record]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if pred(self.poll()) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not within {secs}s: {what} (read {} records from {})",
                self.records.len(),
                self.topic
            );
        }
    }

    /// The CloudEvents read so far (tombstones left out), in topic order per partition.
    pub fn events(&self) -> Vec<Value> {
        self.records
            .iter()
            .filter_map(|r| r.value.clone())
            .collect()
    }
}

/// The kafka sink block for `topic` with extra (indented) fields.
pub fn sink_yaml(topic: &str, extra: &str) -> String {
    format!(
        "sink:\n  type: kafka\n  brokers: {}\n  topic: {topic}\n{extra}",
        common::kafka_brokers()
    )
}
