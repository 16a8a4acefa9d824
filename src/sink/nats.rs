//! The NATS sink: not built yet (see the NATS sink issue).

use super::SinkError;
use crate::config::NatsSinkConfig;

pub async fn build(_cfg: &NatsSinkConfig) -> Result<Box<dyn super::Sink>, SinkError> {
    Err(SinkError::Unavailable("nats sink is not implemented yet".into()))
}
