//! A minimal consumer of kubewire's NATS sink: reads the `KUBEWIRE` stream with a durable
//! pull consumer and prints each ConfigMap event (documented in `docs/sinks.md`).
//!
//! `cargo run --example nats_consumer -- nats://127.0.0.1:4222`

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client);
    let stream = js.get_stream("KUBEWIRE").await?;
    let consumer = stream
        .get_or_create_consumer(
            "audit",
            pull::Config {
                durable_name: Some("audit".into()),
                filter_subject: "kubewire.*.*.ConfigMap.>".into(),
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer.messages().await?;
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        let event: serde_json::Value = serde_json::from_slice(&msg.payload)?;
        println!(
            "{} {} {}",
            msg.subject, event["type"], event["k8sresourceversion"]
        );
        msg.ack().await?;
    }
    Ok(())
}
