//! JetStream publishing: a window of outstanding PubAcks, one in flight per subject, and
//! retries with the same `Nats-Msg-Id` until the server acknowledges.
//!
//! `send` takes a permit of the window (waiting while it is full: backpressure), renders the
//! subject and hands the job to the [`Pipeline`] task. The task keeps a FIFO per subject and
//! publishes only the head of each: the next event of an object goes out once the previous
//! one is acknowledged, so neither a lost publish nor a retry can reorder a subject, while
//! different objects pipeline freely. A PubAck (also one with `duplicate: true`: the server
//! already had it) resolves the event's [`Ack`]. A timeout or error re-queues the head for a
//! retry, after a short backoff, and once the connection is back. Only a message the server
//! can never take (larger than its max payload or the stream's max message size) is
//! rejected: that one event's `Ack` fails, naming the object; the others flow.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;

use super::subject::SubjectTemplate;
use super::{Health, headers, too_large};
use crate::envelope::Encoded;
use crate::sink::{Ack, Route, SendFuture, Sink, SinkCounters, SinkError, SinkHealth};

/// Retry delay after the first failure; doubled per consecutive failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Counters of the publisher (for logs and tests).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub acked: AtomicU64,
    pub duplicates: AtomicU64,
    pub retries: AtomicU64,
    pub rejected: AtomicU64,
}

struct Job {
    subject: String,
    id: String,
    /// The CloudEvents subject (`group/version/resource/namespace/name`), for errors.
    what: String,
    headers: HeaderMap,
    payload: Bytes,
    done: oneshot::Sender<Result<(), SinkError>>,
    /// Held until the job is acknowledged or rejected: the window.
    _permit: OwnedSemaphorePermit,
}

pub(crate) struct JetStreamSink {
    template: SubjectTemplate,
    window: Arc<Semaphore>,
    jobs: mpsc::UnboundedSender<Job>,
    health: Arc<Health>,
    max_payload: usize,
    stats: Arc<Stats>,
}

impl JetStreamSink {
    pub(crate) fn start(
        ctx: async_nats::jetstream::Context,
        template: SubjectTemplate,
        window: usize,
        health: Arc<Health>,
        connected: watch::Receiver<bool>,
        max_payload: usize,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let pipeline = Pipeline {
            ctx,
            queues: HashMap::new(),
            ready: VecDeque::new(),
            inflight: FuturesUnordered::new(),
            failures: 0,
            not_before: Instant::now(),
            health: health.clone(),
            connected,
            stats: stats.clone(),
        };
        tokio::spawn(pipeline.run(rx));
        Self {
            template,
            window: Arc::new(Semaphore::new(window)),
            jobs: tx,
            health,
            max_payload,
            stats,
        }
    }
}

impl Sink for JetStreamSink {
    fn send<'a>(&'a self, msg: Encoded, _route: &'a Route) -> SendFuture<'a> {
        Box::pin(async move {
            let subject = self.template.render(&msg.attrs);
            let msg = super::fit(msg, &subject, self.max_payload);
            let permit = self
                .window
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| SinkError::Closed)?;
            let (done, rx) = oneshot::channel();
            let job = Job {
                subject,
                headers: headers(&msg),
                id: msg.id,
                what: msg.subject,
                payload: Bytes::from(msg.payload),
                done,
                _permit: permit,
            };
            self.jobs.send(job).map_err(|_| SinkError::Closed)?;
            let ack: Ack = Box::pin(async move { rx.await.map_err(|_| SinkError::Closed)? });
            Ok(ack)
        })
    }

    fn name(&self) -> &'static str {
        "nats"
    }

    fn health(&self) -> SinkHealth {
        self.health.get()
    }

    fn counters(&self) -> SinkCounters {
        SinkCounters {
            retries: self.stats.retries.load(Ordering::Relaxed),
            duplicates: self.stats.duplicates.load(Ordering::Relaxed),
        }
    }
}

type Outcome = (String, Result<PublishAck, PublishError>);

struct Pipeline {
    ctx: async_nats::jetstream::Context,
    /// Per subject, the events not yet acknowledged; the head is in flight or in `ready`.
    queues: HashMap<String, VecDeque<Job>>,
    /// Subjects whose head is to be (re)published.
    ready: VecDeque<String>,
    inflight: FuturesUnordered<BoxFuture<'static, Outcome>>,
    /// Consecutive failed publishes (reset by any PubAck).
    failures: u32,
    /// No (re)publishing before this instant (backoff after failures).
    not_before: Instant,
    health: Arc<Health>,
    connected: watch::Receiver<bool>,
    stats: Arc<Stats>,
}

impl Pipeline {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job>) {
        let mut open = true;
        let mut watching_connection = true;
        loop {
            let connected = *self.connected.borrow();
            if !self.ready.is_empty() && connected && Instant::now() >= self.not_before {
                while let Some(subject) = self.ready.pop_front() {
                    self.publish_head(subject);
                }
            }
            let gated = !self.ready.is_empty();
            let backing_off = gated && Instant::now() < self.not_before;
            tokio::select! {
                biased;
                Some((subject, res)) = self.inflight.next(), if !self.inflight.is_empty() => {
                    self.on_outcome(subject, res);
                }
                job = rx.recv(), if open => match job {
                    Some(job) => self.enqueue(job),
                    None => open = false,
                },
                changed = self.connected.changed(), if gated && watching_connection => {
                    match changed {
                        // Reconnected: retry now rather than after the backoff.
                        Ok(()) if *self.connected.borrow() => self.not_before = Instant::now(),
                        Ok(()) => {}
                        Err(_) => watching_connection = false,
                    }
                }
                _ = tokio::time::sleep_until(self.not_before), if backing_off => {}
            }
            if !open && self.queues.is_empty() {
                break;
            }
        }
        tracing::debug!(
            sink = "nats",
            acked = self.stats.acked.load(Ordering::Relaxed),
            duplicates = self.stats.duplicates.load(Ordering::Relaxed),
            retries = self.stats.retries.load(Ordering::Relaxed),
            "NATS publisher finished"
        );
    }

    fn enqueue(&mut self, job: Job) {
        let queue = self.queues.entry(job.subject.clone()).or_default();
        queue.push_back(job);
        if queue.len() == 1 {
            let subject = queue[0].subject.clone();
            self.ready.push_back(subject);
        }
    }

    fn publish_head(&mut self, subject: String) {
        let Some(job) = self.queues.get(&subject).and_then(|q| q.front()) else {
            return;
        };
        let msg = PublishMessage::build()
            .headers(job.headers.clone())
            .payload(job.payload.clone());
        let ctx = self.ctx.clone();
        self.inflight.push(Box::pin(async move {
            let res = match ctx.send_publish(Subject::from(subject.as_str()), msg).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            (subject, res)
        }));
    }

    fn on_outcome(&mut self, subject: String, res: Result<PublishAck, PublishError>) {
        let Some(queue) = self.queues.get_mut(&subject) else {
            return;
        };
        let outcome = match res {
            Ok(ack) => {
                self.stats.acked.fetch_add(1, Ordering::Relaxed);
                if ack.duplicate {
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(sink = "nats", id = %queue[0].id, stream_seq = ack.sequence, "JetStream dropped a duplicate");
                }
                if self.failures > 0 {
                    self.failures = 0;
                    self.health.set_publishing(None);
                }
                Ok(())
            }
            Err(e) if is_permanent(&e) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                let job = &queue[0];
                Err(SinkError::Rejected {
                    id: job.id.clone(),
                    reason: too_large(&job.what, job.payload.len(), &e),
                })
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                let shift = self.failures.saturating_sub(1).min(10);
                let delay = (FIRST_BACKOFF * (1 << shift)).min(MAX_BACKOFF);
                self.not_before = self.not_before.max(Instant::now() + delay);
                tracing::debug!(sink = "nats", id = %queue[0].id, error = %e, "publish not acknowledged; will retry with the same id");
                self.health
                    .set_publishing(Some(format!("JetStream publishes failing: {e}")));
                self.ready.push_back(subject);
                return;
            }
        };
        let job = queue.pop_front().expect("an outcome is for the head");
        let _ = job.done.send(outcome);
        if queue.is_empty() {
            self.queues.remove(&subject);
        } else {
            self.ready.push_back(subject);
        }
    }
}

/// Errors a retry cannot fix: the message is too large for the server or the stream.
fn is_permanent(e: &PublishError) -> bool {
    if e.kind() == PublishErrorKind::MaxPayloadExceeded {
        return true;
    }
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
        .is_some_and(|j| {
            j.error_code() == async_nats::jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM
        })
}
