//! Settings of the Kafka sink (`sink.type: kafka`).

use serde::{Deserialize, Serialize};

/// The Kafka sink.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct KafkaSinkConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
}
