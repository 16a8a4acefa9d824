//! JSON-lines sinks (stdout and file): one CloudEvent per line. A writer task drains whatever
//! is queued, writes it, flushes once, then acknowledges the whole batch: one flush per batch
//! instead of one per event, and an event is acknowledged only after it was flushed.

use std::path::Path;

use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot};

use super::{Ack, SendFuture, Sink, SinkError};
use crate::envelope::Encoded;

const QUEUE: usize = 4096;
const MAX_BATCH: usize = 1024;

type Job = (Vec<u8>, oneshot::Sender<()>);

pub struct LinesSink {
    name: &'static str,
    tx: mpsc::Sender<Job>,
}

impl LinesSink {
    pub fn stdout() -> Self {
        Self::spawn("stdout", tokio::io::stdout())
    }

    /// Appends to `path`, creating it (and its parent directory) if needed.
    pub async fn file(path: &Path) -> Result<Self, SinkError> {
        let open = async {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(dir).await?;
            }
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await
        };
        let file = open.await.map_err(|source| SinkError::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::spawn("file", file))
    }

    fn spawn<W: AsyncWrite + Unpin + Send + 'static>(name: &'static str, w: W) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(name, BufWriter::with_capacity(1 << 16, w), rx));
        Self { name, tx }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    name: &'static str,
    mut w: BufWriter<W>,
    mut rx: mpsc::Receiver<Job>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut failing = false;
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // A write error (disk full, closed pipe) must not lose events: retry the same batch
        // until it goes through; the queue filling up pushes back on the watch loops.
        let mut delay = std::time::Duration::from_millis(200);
        loop {
            match write_batch(&mut w, &batch).await {
                Ok(()) => break,
                Err(e) => {
                    if !failing {
                        tracing::error!(sink = name, error = %e, "sink write failed; retrying");
                        failing = true;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(10));
                }
            }
        }
        if failing {
            tracing::info!(sink = name, "sink writes recovered");
            failing = false;
        }
        for (_, ack) in batch.drain(..) {
            let _ = ack.send(());
        }
    }
}

async fn write_batch<W: AsyncWrite + Unpin>(
    w: &mut BufWriter<W>,
    batch: &[Job],
) -> std::io::Result<()> {
    for (line, _) in batch {
        w.write_all(line).await?;
    }
    w.flush().await
}

impl Sink for LinesSink {
    fn send(&self, msg: Encoded) -> SendFuture<'_> {
        Box::pin(async move {
            let mut line = msg.payload;
            line.push(b'\n');
            let (ack_tx, ack_rx) = oneshot::channel();
            self.tx
                .send((line, ack_tx))
                .await
                .map_err(|_| SinkError::Closed)?;
            let ack: Ack = Box::pin(async move { ack_rx.await.map_err(|_| SinkError::Closed) });
            Ok(ack)
        })
    }

    fn name(&self) -> &'static str {
        self.name
    }
}
