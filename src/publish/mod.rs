//! The publish stage of one stream: takes the watch loop's items in order, prepares each
//! event ([`prepare`]: transform → envelope), hands it to the sink while many sends are in
//! flight, and settles their acknowledgements in send order, so that the checkpoint moves
//! only behind the contiguous acknowledgement watermark (invariant 2). Before a batch is
//! handed over, its versions are written ahead to the state store (a relist after a crash
//! must know what may be downstream). Commits are batched on a timer and at the end.
//!
//! An event the sink *rejects* for good (too large) is named loudly and passed over: the
//! checkpoint may move past it. An event the sink did *not deliver* (its acknowledgement
//! was dropped, the sink closed, the write-ahead failed) stops the stream's progress: nothing
//! at or after it is checkpointed, the stream is marked halted (so `/healthz` fails and a
//! restart replays from the checkpoint), and the publisher ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::checkpoint::{CheckpointError, Progress, SentEntry, StateStore, Uncommitted};
use crate::envelope::{self, Encoded, EnvelopeError};
use crate::event::{ChangeType, Event, Origin};
use crate::sink::{Delivery, Route, Sink, SinkError};
use crate::telemetry::traces::{self, TARGET};
use crate::telemetry::{HealthKey, StreamMetrics, Telemetry};
use crate::transform::Transformer;
use crate::watch::{Item, StreamSpec};

/// Errors of the publish stage: why a stream's progress stopped.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The sink did not deliver an event (and did not reject it for good).
    #[error("event {id} not delivered: {source}")]
    NotDelivered {
        /// The event's id.
        id: String,
        /// Why the send or the acknowledgement failed.
        #[source]
        source: SinkError,
    },
    /// The write-ahead of sent versions failed: handing the batch over could lose deletes
    /// after a crash.
    #[error("write-ahead of sent versions failed: {0}")]
    WriteAhead(#[source] CheckpointError),
    /// The write-ahead task itself failed.
    #[error("write-ahead task failed: {0}")]
    Task(String),
}

/// The per-event work before the sink: the stream's transforms on a change's object, then
/// the CloudEvents envelope. Also what `benches/pipeline.rs` measures.
pub fn prepare(
    transformer: &Transformer,
    event: &mut Event,
    span: &tracing::Span,
) -> Result<Encoded, EnvelopeError> {
    if let Event::Object(c) = event {
        let _stage =
            tracing::info_span!(target: TARGET, parent: span, "kubewire.transform").entered();
        transformer.apply(&c.stream.resource, &mut c.data);
    }
    let _stage = tracing::info_span!(target: TARGET, parent: span, "kubewire.encode").entered();
    envelope::encode(event)
}

/// What a settled item does: its checkpoint progress, and for the metrics what was
/// published. `failed` stops the stream's progress at this item.
struct Effect {
    progress: Progress,
    /// (change, origin) of an event the sink acknowledged; no change for a relist marker.
    published: Option<(Option<ChangeType>, Origin)>,
    failed: Option<PublishError>,
}

impl Effect {
    fn settled(progress: Progress) -> Self {
        Self {
            progress,
            published: None,
            failed: None,
        }
    }
}

type Pending = BoxFuture<'static, Effect>;

/// One stream's publisher.
pub struct Publisher {
    /// The stream.
    pub spec: StreamSpec,
    /// Where events go.
    pub sink: Arc<dyn Sink>,
    /// The stream's transforms.
    pub transformer: Arc<Transformer>,
    /// Where the checkpoint goes.
    pub store: Arc<dyn StateStore>,
    /// How often acknowledged progress is committed.
    pub commit_interval: Duration,
    /// Sends outstanding at the sink before the publisher waits for acknowledgements.
    pub max_in_flight: usize,
    /// Metric handles of the stream.
    pub metrics: StreamMetrics,
    /// Health: a halted stream is reported here.
    pub telemetry: Arc<Telemetry>,
    /// Where the stream's events go (resolved once by the sink, at the stream's start).
    pub route: Route,
}

/// Items taken from the channel and written ahead in one store transaction.
const WRITE_AHEAD_BATCH: usize = 512;

impl Publisher {
    /// Runs until the watch side closes the channel and every in-flight event is settled.
    /// `abort` makes it stop taking new items at once (leadership lost); what the sink
    /// already holds is still awaited and checkpointed. Returns why the stream's progress
    /// stopped, if it did.
    pub async fn run(
        self,
        mut rx: mpsc::Receiver<Item>,
        abort: CancellationToken,
    ) -> Result<(), PublishError> {
        let stream_key = self.spec.id.key();
        let mut in_flight: FuturesOrdered<Pending> = FuturesOrdered::new();
        let mut uncommitted = Uncommitted::default();
        let mut tick = tokio::time::interval(self.commit_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut open = true;
        let mut batch: Vec<Item> = Vec::new();
        let mut failure: Option<PublishError> = None;
        // The Kafka backend: each item's progress goes with it, in the sink's transaction.
        let keeps_state = self.sink.keeps_state();
        loop {
            let room = self
                .max_in_flight
                .saturating_sub(in_flight.len())
                .min(WRITE_AHEAD_BATCH);
            tokio::select! {
                biased;
                Some(effect) = in_flight.next(), if !in_flight.is_empty() => {
                    if let Some(e) = effect.failed {
                        // Nothing at or after this item may be checkpointed.
                        failure = Some(e);
                        break;
                    }
                    if let Some((change, origin)) = effect.published {
                        self.metrics.published(change, origin);
                        if origin != Origin::Watch {
                            self.metrics.initial_sync_add("published");
                        }
                    }
                    uncommitted.apply(effect.progress)
                }
                n = rx.recv_many(&mut batch, room), if open && room > 0 => {
                    if n == 0 {
                        open = false;
                    } else if let Err(e) = self.write_ahead(&stream_key, &batch, keeps_state).await {
                        // Not handed over: the stream stops behind what is already out.
                        failure = Some(e);
                        break;
                    } else {
                        for item in batch.drain(..) {
                            in_flight.push_back(self.start(item, &stream_key, keeps_state).await);
                        }
                    }
                }
                _ = tick.tick() => self.commit(&stream_key, &mut uncommitted).await,
                _ = abort.cancelled(), if open => open = false,
            }
            if !open && in_flight.is_empty() {
                break;
            }
        }
        // Whatever is still in flight comes after the failure (acknowledgements settle in
        // send order): dropped, to be replayed from the checkpoint.
        drop(in_flight);
        self.commit(&stream_key, &mut uncommitted).await;
        match failure {
            None => Ok(()),
            Some(e) => {
                tracing::error!(stream = %self.spec.id, error = %e, "stream halted: nothing from this event on is checkpointed; a restart replays from the checkpoint");
                self.telemetry
                    .health
                    .halt(&HealthKey::Stream(self.spec.id.to_string()), e.to_string());
                Err(e)
            }
        }
    }

    /// Records the versions of `items` about to be handed to the sink, durably, before the
    /// hand-over: after a crash they may be downstream without being in the index, and the
    /// relist must know them (see `checkpoint::StreamCheckpoint::in_doubt`).
    async fn write_ahead(
        &self,
        stream_key: &str,
        items: &[Item],
        keeps_state: bool,
    ) -> Result<(), PublishError> {
        if keeps_state {
            // Events and their state commit together: nothing can be downstream unknown.
            return Ok(());
        }
        let sent: Vec<(String, SentEntry)> = items
            .iter()
            .filter_map(|item| match item {
                Item::Event {
                    event,
                    publish: true,
                    ..
                } => match event.as_ref() {
                    // Deletes too: a relist after a crash must repeat a Deleted that may be
                    // downstream at its own version, not at the older indexed one.
                    Event::Object(c) => Some((c.object.uid.clone(), SentEntry::of(c))),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        if sent.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        let key = stream_key.to_owned();
        match tokio::task::spawn_blocking(move || store.record_sent(&key, &sent)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(PublishError::WriteAhead(e)),
            Err(e) => Err(PublishError::Task(e.to_string())),
        }
    }

    /// Starts one item: returns the future of its effect, resolved once the sink settles it.
    async fn start(&self, item: Item, stream_key: &str, keeps_state: bool) -> Pending {
        let (mut event, publish, advance, span) = match item {
            Item::Advance(rv) => {
                let progress = Progress::advance(rv);
                if keeps_state {
                    return self.state_only(stream_key, progress).await;
                }
                return Box::pin(futures::future::ready(Effect::settled(progress)));
            }
            Item::Event {
                event,
                publish,
                advance,
                span,
            } => (event, publish, advance, span),
        };
        let mut effect = Effect::settled(Progress::of(&event, advance));
        if !publish {
            if keeps_state {
                return self.state_only(stream_key, effect.progress).await;
            }
            return Box::pin(futures::future::ready(effect));
        }
        let published = match event.as_ref() {
            Event::Object(c) => (Some(c.change), c.origin),
            Event::Relisted(_) => (None, Origin::Relist),
        };
        // The event's span (disabled when traces are off) ends when this item's future
        // resolves: at the acknowledgement. The stage spans are its children.
        let encoded = match prepare(&self.transformer, &mut event, &span) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(stream = %self.spec.id, id = %event.id(), error = %e, "cannot encode event; skipping it");
                traces::record_error(&span, &e);
                return Box::pin(futures::future::ready(effect));
            }
        };
        let id = encoded.id.clone();
        let sink_name = self.sink.name();
        let metrics = self.metrics.clone();
        let started = Instant::now();
        // From the hand-off to the sink (including waiting while it is full) to its ack.
        let publish_span = tracing::info_span!(
            target: TARGET,
            parent: &span,
            "kubewire.publish",
            otel.kind = "producer",
            messaging.system = sink_name,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        // With a sink that keeps the state, the progress travels with the event: stored in
        // its transaction (kept here too, for an event refused before it was taken).
        let carried = keeps_state.then(|| std::mem::take(&mut effect.progress));
        let sent = if let Some(progress) = &carried {
            self.sink
                .send_with_state(
                    Some(encoded),
                    &self.route,
                    stream_key,
                    Some(progress.clone()),
                )
                .instrument(publish_span.clone())
                .await
        } else {
            self.sink
                .send(encoded, &self.route)
                .instrument(publish_span.clone())
                .await
        };
        let ack = match sent {
            Ok(ack) => ack,
            Err(e) => {
                traces::record_error(&publish_span, &e);
                traces::record_error(&span, &e);
                match Delivery::of(Err(e)) {
                    Delivery::Rejected(e) => {
                        tracing::error!(stream = %self.spec.id, %id, error = %e, "sink refused event");
                        metrics.metrics().sink_error(sink_name, "send");
                        if let Some(progress) = carried {
                            // Passed over: its progress still counts.
                            return self.state_only(stream_key, progress).await;
                        }
                    }
                    Delivery::Failed(e) => {
                        effect.failed = Some(PublishError::NotDelivered { id, source: e })
                    }
                    Delivery::Delivered => unreachable!("an error is not a delivery"),
                }
                return Box::pin(futures::future::ready(effect));
            }
        };
        metrics.in_flight.inc();
        let stream = self.spec.id.to_string();
        Box::pin(async move {
            // Entered while awaiting, so that the publish span ends at the ack: the
            // OpenTelemetry layer ends a span at its last exit.
            let result = ack.instrument(publish_span.clone()).await;
            metrics.in_flight.dec();
            match Delivery::of(result) {
                Delivery::Delivered => {
                    metrics.metrics().sink_ack(sink_name, started.elapsed());
                    effect.published = Some(published);
                }
                Delivery::Rejected(e) => {
                    // A permanent rejection of this one event (e.g. too large): name it
                    // loudly; the stream goes on past it.
                    tracing::error!(%stream, %id, error = %e, "event not delivered");
                    traces::record_error(&publish_span, &e);
                    traces::record_error(&span, &e);
                    metrics.metrics().sink_error(sink_name, "rejected");
                }
                Delivery::Failed(e) => {
                    traces::record_error(&publish_span, &e);
                    traces::record_error(&span, &e);
                    effect.failed = Some(PublishError::NotDelivered { id, source: e });
                }
            }
            // Settled: the publish span, then the event's span end here.
            drop(publish_span);
            drop(span);
            effect
        })
    }

    /// An item with progress but no event (a bookmark, an unchanged object of a relist)
    /// for a sink that keeps the state: the progress goes into its transaction alone.
    async fn state_only(&self, stream_key: &str, progress: Progress) -> Pending {
        let sent = self
            .sink
            .send_with_state(None, &self.route, stream_key, Some(progress))
            .await;
        let ack = match sent {
            Ok(ack) => ack,
            Err(e) => {
                return Box::pin(futures::future::ready(Effect {
                    progress: Progress::default(),
                    published: None,
                    failed: Some(PublishError::NotDelivered {
                        id: format!("{stream_key} (state)"),
                        source: e,
                    }),
                }));
            }
        };
        let stream_key = stream_key.to_owned();
        Box::pin(async move {
            let failed = ack.await.err().map(|e| PublishError::NotDelivered {
                id: format!("{stream_key} (state)"),
                source: e,
            });
            Effect {
                progress: Progress::default(),
                published: None,
                failed,
            }
        })
    }

    async fn commit(&self, stream_key: &str, uncommitted: &mut Uncommitted) {
        if uncommitted.is_empty() {
            return;
        }
        let batch = uncommitted.take_batch();
        let store = self.store.clone();
        let key = stream_key.to_owned();
        let res = tokio::task::spawn_blocking(move || {
            let r = store.commit(&key, &batch);
            (batch, r)
        })
        .await;
        match res {
            Ok((batch, Ok(()))) => self.metrics.checkpointed(batch.resource_version.as_deref()),
            Ok((batch, Err(e))) => {
                // Keep what failed for the next attempt.
                tracing::error!(stream = %self.spec.id, error = %e, "checkpoint commit failed; will retry");
                uncommitted.restore(batch);
            }
            Err(e) => {
                tracing::error!(stream = %self.spec.id, error = %e, "checkpoint commit panicked")
            }
        }
    }
}

#[cfg(test)]
mod tests;
