//! JSON-lines sinks (stdout and file): one CloudEvent per line. A writer task drains whatever
//! is queued, writes it, flushes once, then acknowledges the whole batch: one flush per batch
//! instead of one per event, and an event is acknowledged only after it was flushed.

use std::path::Path;
use std::sync::Mutex;

use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot};

use super::{Ack, Route, SendFuture, Sink, SinkError, StdoutFormat};
use crate::consume::EventView;
use crate::consume::pretty::Pretty;
use crate::envelope::Encoded;

const QUEUE: usize = 4096;
const MAX_BATCH: usize = 1024;

type Job = (Vec<u8>, oneshot::Sender<()>);

/// The stdout and file sink: each event's JSON document on a line of its own, acknowledged
/// once flushed.
pub struct LinesSink {
    name: &'static str,
    tx: mpsc::Sender<Job>,
    /// `format: pretty`: the line for people instead of the document. Rendered in `send`,
    /// which each stream calls in order, so each object's previous version is its last.
    pretty: Option<Mutex<Pretty>>,
}

impl LinesSink {
    /// Writes to the process's standard output.
    pub fn stdout(format: StdoutFormat) -> Self {
        let mut sink = Self::spawn("stdout", tokio::io::stdout());
        if format == StdoutFormat::Pretty {
            sink.pretty = Some(Mutex::new(Pretty::default()));
        }
        sink
    }

    /// Appends to `path`, creating it (and its parent directory) if needed.
    pub async fn file(path: &Path) -> Result<Self, SinkError> {
        let open = async {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(dir).await?;
            }
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(path)
                .await?;
            terminate_torn_line(&mut file).await?;
            Ok::<_, std::io::Error>(file)
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
        Self {
            name,
            tx,
            pretty: None,
        }
    }
}

/// A crash (kill -9) mid-write can leave a partial last line. Ending it keeps every later
/// event on a line of its own; readers skip the one torn line.
async fn terminate_torn_line(file: &mut tokio::fs::File) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt, SeekFrom};
    let len = file.metadata().await?.len();
    if len == 0 {
        return Ok(());
    }
    file.seek(SeekFrom::Start(len - 1)).await?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last).await?;
    if last[0] != b'\n' {
        file.write_all(b"\n").await?;
        file.flush().await?;
    }
    Ok(())
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
    fn send<'a>(&'a self, msg: Encoded, _route: &'a Route) -> SendFuture<'a> {
        Box::pin(async move {
            let mut line = match &self.pretty {
                None => msg.payload,
                Some(p) => {
                    let view = EventView::parse(&msg.payload).unwrap_or_default();
                    let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
                    p.line(&view).into_bytes()
                }
            };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reopening_a_file_with_a_torn_last_line_starts_a_fresh_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "{\"complete\":1}\n{\"torn\":").unwrap();
        let sink = LinesSink::file(&path).await.unwrap();
        let ack = sink
            .send(
                Encoded {
                    id: "i".into(),
                    key: "k".into(),
                    ce_type: "t".into(),
                    source: "s".into(),
                    subject: "s".into(),
                    traceparent: String::new(),
                    payload: b"{\"next\":2}".to_vec(),
                    attrs: Default::default(),
                    change: None,
                },
                &Route::default(),
            )
            .await
            .unwrap();
        ack.await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"complete\":1}\n{\"torn\":\n{\"next\":2}\n");
    }
}
