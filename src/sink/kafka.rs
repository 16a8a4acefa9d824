//! The Kafka sink: not built yet (see the Kafka sink issue).

use super::SinkError;
use crate::config::KafkaSinkConfig;

pub async fn build(_cfg: &KafkaSinkConfig) -> Result<Box<dyn super::Sink>, SinkError> {
    Err(SinkError::Unavailable("kafka sink is not implemented yet".into()))
}
