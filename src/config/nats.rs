//! Settings of the NATS sink (`sink.type: nats`).

use serde::{Deserialize, Serialize};

/// The NATS sink.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NatsSinkConfig {
    /// Server URL(s), e.g. `nats://127.0.0.1:4222`.
    pub url: String,
}
