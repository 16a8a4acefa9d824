//! The publishing half of a stream: transform → envelope → sink, keeping many sends in
//! flight, and moving the checkpoint only behind the in-order acknowledgement watermark
//! (invariant 2). Commits to the store are batched on a timer and at the end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::checkpoint::{CommitBatch, IndexEntry, Store};
use crate::envelope;
use crate::event::{ChangeType, Event, Origin};
use crate::sink::{Sink, SinkError};
use crate::telemetry::StreamMetrics;
use crate::telemetry::traces::{self, TARGET};
use crate::transform::Transformer;
use crate::watch::{Item, StreamSpec};

/// What an acknowledged item does to the checkpoint.
#[derive(Default)]
struct Effect {
    /// uid → Some(entry) to index, None to forget.
    index: Option<(String, Option<IndexEntry>)>,
    advance: Option<String>,
    /// (type, origin) of an event the sink acknowledged, for the metrics.
    published: Option<(&'static str, &'static str)>,
}

pub struct Publisher {
    pub spec: StreamSpec,
    pub sink: Arc<dyn Sink>,
    pub transformer: Arc<Transformer>,
    pub store: Arc<Store>,
    pub commit_interval: Duration,
    pub max_in_flight: usize,
    pub metrics: StreamMetrics,
    /// This resource's destination template for the sink (`resources[].kafka.topic`).
    pub destination: Option<Arc<str>>,
}

/// Items taken from the channel and written ahead in one store transaction.
const WRITE_AHEAD_BATCH: usize = 512;

/// What the index records of one published version.
fn index_entry(c: &crate::event::Change) -> IndexEntry {
    IndexEntry {
        api_version: c.stream.resource.api_version(),
        kind: c.stream.resource.kind.clone(),
        namespace: c.object.namespace.clone(),
        name: c.object.name.clone(),
        resource_version: c.object.resource_version.clone(),
        sent_as: None,
    }
}

/// Checkpoint changes acknowledged but not yet committed.
#[derive(Default)]
struct Pending {
    index: HashMap<String, Option<IndexEntry>>,
    resource_version: Option<String>,
}

impl Pending {
    fn apply(&mut self, e: Effect) {
        if let Some((uid, entry)) = e.index {
            self.index.insert(uid, entry);
        }
        if let Some(rv) = e.advance {
            self.resource_version = Some(rv);
        }
    }

    fn is_empty(&self) -> bool {
        self.index.is_empty() && self.resource_version.is_none()
    }

    fn take_batch(&mut self) -> CommitBatch {
        let mut batch = CommitBatch {
            resource_version: self.resource_version.take(),
            ..Default::default()
        };
        for (uid, entry) in self.index.drain() {
            match entry {
                Some(e) => batch.upserts.push((uid, e)),
                None => batch.removals.push(uid),
            }
        }
        batch
    }
}

impl Publisher {
    /// Runs until the watch side closes the channel and every in-flight event is acknowledged.
    /// `abort` makes it stop taking new items at once (leadership lost); what the sink
    /// already holds is still awaited and checkpointed.
    pub async fn run(self, mut rx: mpsc::Receiver<Item>, abort: CancellationToken) {
        let stream_key = self.spec.id.key();
        let mut in_flight: FuturesOrdered<BoxFuture<'static, Effect>> = FuturesOrdered::new();
        let mut pending = Pending::default();
        let mut tick = tokio::time::interval(self.commit_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut open = true;
        let mut batch: Vec<Item> = Vec::new();
        loop {
            let room = self
                .max_in_flight
                .saturating_sub(in_flight.len())
                .min(WRITE_AHEAD_BATCH);
            tokio::select! {
                biased;
                Some(effect) = in_flight.next(), if !in_flight.is_empty() => {
                    if let Some((change, origin)) = effect.published {
                        self.metrics.published(change, origin);
                        if origin != Origin::Watch.as_str() {
                            self.metrics.initial_sync_add("published");
                        }
                    }
                    pending.apply(effect)
                }
                n = rx.recv_many(&mut batch, room), if open && room > 0 => {
                    if n == 0 {
                        open = false;
                    } else {
                        self.write_ahead(&stream_key, &batch).await;
                        let mut closed = false;
                        for item in batch.drain(..) {
                            match self.start(item).await {
                                Some(f) => in_flight.push_back(f),
                                None => {
                                    closed = true;
                                    break;
                                }
                            }
                        }
                        if closed {
                            break;
                        }
                    }
                }
                _ = tick.tick() => self.commit(&stream_key, &mut pending).await,
                _ = abort.cancelled(), if open => open = false,
            }
            if !open && in_flight.is_empty() {
                break;
            }
        }
        self.commit(&stream_key, &mut pending).await;
    }

    /// Records the versions of `items` about to be handed to the sink, durably, before the
    /// hand-over: after a crash they may be downstream without being in the index, and the
    /// relist must know them (see `checkpoint::StreamCheckpoint::in_doubt`).
    async fn write_ahead(&self, stream_key: &str, items: &[Item]) {
        let sent: Vec<(String, IndexEntry)> = items
            .iter()
            .filter_map(|item| match item {
                Item::Event {
                    event,
                    publish: true,
                    ..
                } => match event.as_ref() {
                    // Deletes too: a relist after a crash must repeat a Deleted that may be
                    // downstream at its own version, not at the older indexed one.
                    Event::Object(c) => Some((
                        c.object.uid.clone(),
                        IndexEntry {
                            sent_as: Some(c.change),
                            ..index_entry(c)
                        },
                    )),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        if sent.is_empty() {
            return;
        }
        let store = self.store.clone();
        let key = stream_key.to_owned();
        match tokio::task::spawn_blocking(move || store.record_sent(&key, &sent)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(stream = %self.spec.id, error = %e, "write-ahead of sent versions failed; a relist after a crash may miss deletes")
            }
            Err(e) => {
                tracing::error!(stream = %self.spec.id, error = %e, "write-ahead task failed")
            }
        }
    }

    /// Starts one item: returns the future of its effect on the checkpoint, resolved at ack.
    /// `None` when the sink is closed (shutdown).
    async fn start(&self, item: Item) -> Option<BoxFuture<'static, Effect>> {
        let (mut event, publish, advance, span) = match item {
            Item::Advance(rv) => {
                let effect = Effect {
                    advance: Some(rv),
                    ..Default::default()
                };
                return Some(Box::pin(futures::future::ready(effect)));
            }
            Item::Event {
                event,
                publish,
                advance,
                span,
            } => (event, publish, advance, span),
        };
        let index = match event.as_ref() {
            Event::Object(c) => Some(match c.change {
                ChangeType::Deleted => (c.object.uid.clone(), None),
                _ => (c.object.uid.clone(), Some(index_entry(c))),
            }),
            Event::Relisted(_) => None,
        };
        let mut effect = Effect {
            index,
            advance,
            published: None,
        };
        if !publish {
            return Some(Box::pin(futures::future::ready(effect)));
        }
        effect.published = Some(match event.as_ref() {
            Event::Object(c) => (c.change.as_str(), c.origin.as_str()),
            Event::Relisted(_) => ("relisted", Origin::Relist.as_str()),
        });
        // The event's span (disabled when traces are off) ends when this item's future
        // resolves: at the acknowledgement. The stage spans below are its children.
        if let Event::Object(c) = event.as_mut() {
            let _stage =
                tracing::info_span!(target: TARGET, parent: &span, "kubewire.transform").entered();
            self.transformer.apply(&c.stream.resource, &mut c.data);
        }
        let encoded = {
            let _stage =
                tracing::info_span!(target: TARGET, parent: &span, "kubewire.encode").entered();
            envelope::encode(&event)
        };
        let mut encoded = match encoded {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(stream = %self.spec.id, id = %event.id(), error = %e, "cannot encode event; skipping it");
                traces::record_error(&span, &e);
                return Some(Box::pin(futures::future::ready(effect)));
            }
        };
        encoded.destination = self.destination.clone();
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
        let ack = match self
            .sink
            .send(encoded)
            .instrument(publish_span.clone())
            .await
        {
            Ok(ack) => ack,
            Err(SinkError::Closed) => return None,
            Err(e) => {
                tracing::error!(stream = %self.spec.id, %id, error = %e, "sink refused event");
                traces::record_error(&publish_span, &e);
                traces::record_error(&span, &e);
                metrics.metrics().sink_error(sink_name, "send");
                return Some(Box::pin(futures::future::ready(effect)));
            }
        };
        metrics.in_flight.inc();
        let stream = self.spec.id.to_string();
        Some(Box::pin(async move {
            // Entered while awaiting, so that the publish span ends at the ack: the
            // OpenTelemetry layer ends a span at its last exit.
            let result = ack.instrument(publish_span.clone()).await;
            metrics.in_flight.dec();
            match result {
                Ok(()) => metrics.metrics().sink_ack(sink_name, started.elapsed()),
                Err(e) => {
                    // A permanent rejection of this one event (e.g. too large): name it
                    // loudly; the stream goes on.
                    tracing::error!(%stream, %id, error = %e, "event not delivered");
                    traces::record_error(&publish_span, &e);
                    traces::record_error(&span, &e);
                    metrics.metrics().sink_error(sink_name, "rejected");
                    effect.published = None;
                }
            }
            // Acknowledged (or rejected): the publish span, then the event's span end here.
            drop(publish_span);
            drop(span);
            effect
        }))
    }

    async fn commit(&self, stream_key: &str, pending: &mut Pending) {
        if pending.is_empty() {
            return;
        }
        let batch = pending.take_batch();
        let store = self.store.clone();
        let key = stream_key.to_owned();
        let res = tokio::task::spawn_blocking(move || {
            let r = store.commit(&key, &batch);
            (batch, r)
        })
        .await;
        let (batch, error) = match res {
            Ok((batch, Ok(()))) => {
                self.metrics.checkpointed(batch.resource_version.as_deref());
                return;
            }
            Ok((batch, Err(e))) => (batch, e.to_string()),
            Err(e) => {
                tracing::error!(stream = %self.spec.id, error = %e, "checkpoint commit panicked");
                return;
            }
        };
        // Keep what failed for the next attempt; newer pending changes win over it.
        tracing::error!(stream = %self.spec.id, %error, "checkpoint commit failed; will retry");
        for (uid, e) in batch.upserts {
            pending.index.entry(uid).or_insert(Some(e));
        }
        for uid in batch.removals {
            pending.index.entry(uid).or_insert(None);
        }
        if pending.resource_version.is_none() {
            pending.resource_version = batch.resource_version;
        }
    }
}
