//! The watch stage: one List-Watch state machine per stream. It resumes from the stored
//! resourceVersion (no LIST), lists with pagination only without a checkpoint or after
//! 410 Gone, diffs every list against the index of what it already sent (the reconciling
//! relist, invariant 5), restarts silent watches, and backs off on errors without ever
//! ending. Its output is an ordered sequence of [`Item`]s on a bounded channel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use kube::Resource;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::core::{DynamicObject, Request};
use opentelemetry::trace::SpanContext;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::checkpoint::{Index, Reconcile, RelistCounts, StreamCheckpoint};
use crate::cluster::api_resource;
use crate::config::{InitialList, WatchConfig};
use crate::event::{
    Change, ChangeType, Event, EventError, ObjectRef, Origin, RelistMarker, StreamId, TraceContext,
};
use crate::telemetry::traces::{self, TARGET};
use crate::telemetry::{HealthKey, StreamMetrics, Telemetry};

/// Why one list or watch request ended the step in progress; the loop logs it, backs off and
/// carries on (only `Closed` ends it).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The requested resourceVersion is compacted away: relist and reconcile.
    #[error("resourceVersion too old (410 Gone)")]
    Gone,
    /// The API server answered with an error status other than 410 (to the request, or as
    /// a watch ERROR event).
    #[error("{verb} {stream}: {reason} (HTTP {code}): {message}")]
    Api {
        /// `list` or `watch`.
        verb: &'static str,
        /// The resource (and namespace) requested, for the message.
        stream: String,
        /// The HTTP status code.
        code: u16,
        /// The status reason, e.g. `Forbidden`.
        reason: String,
        /// The status message.
        message: String,
    },
    /// The request failed below the API (connection, TLS, timeout, an undecodable body).
    #[error("{verb} {stream}: {source}")]
    Transport {
        /// `list` or `watch`.
        verb: &'static str,
        /// The resource (and namespace) requested, for the message.
        stream: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// A listed or watched object lacks the metadata a change needs.
    #[error("{stream}: bad object from the API server: {source}")]
    BadObject {
        /// The resource (and namespace) requested, for the message.
        stream: String,
        /// What is missing.
        #[source]
        source: EventError,
    },
    /// The list or watch request could not be built (kube rejects its parameters or URL).
    #[error("cannot build request: {0}")]
    Request(#[from] kube::core::request::Error),
    /// The pipeline behind us is gone (shutdown).
    #[error("pipeline closed")]
    Closed,
}

impl WatchError {
    /// The resource is not served (404): its CRD was deleted, or its group removed.
    pub fn is_not_served(&self) -> bool {
        matches!(self, WatchError::Api { code: 404, .. })
    }
}

/// What the loop hands to the publishing side, in order.
#[derive(Debug)]
pub enum Item {
    /// A change. `publish: false` when the stream filters that type out (or `initial: false`
    /// suppresses the snapshot): it still moves the index. `advance` is the resourceVersion
    /// the checkpoint may take once this item and all before it are acknowledged. `span` is
    /// the event's trace span (see `telemetry::traces`), ended at the sink's acknowledgement;
    /// disabled when traces are off or the event is not published.
    Event {
        /// The change, or a relist marker.
        event: Box<Event>,
        /// Whether it goes to the sink (`false`: it only moves the index).
        publish: bool,
        /// The resourceVersion the checkpoint may take after it; `None`: no move.
        advance: Option<String>,
        /// The event's trace span.
        span: tracing::Span,
    },
    /// A bookmark or the end of a list: the checkpoint may move here once all before it are acked.
    Advance(String),
}

/// What one stream is, and how it behaves.
#[derive(Clone, Debug)]
pub struct StreamSpec {
    /// The stream's identity (its checkpoint key).
    pub id: Arc<StreamId>,
    /// The change types published; the others only move the index.
    pub events: Vec<ChangeType>,
    /// Whether the first list (no checkpoint yet) publishes its objects as Added.
    pub initial: bool,
}

#[derive(Deserialize)]
struct RawList {
    metadata: kube::core::ListMeta,
    items: Vec<Value>,
}

/// Why a list or watch request is made (the `cause` label of `kubewire_watch_starts`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    /// The first list of a stream without a checkpoint.
    Initial,
    /// A watch from the stored resourceVersion.
    Resume,
    /// A list after 410 Gone.
    Relist,
    /// The watch that follows a list.
    AfterList,
    /// The server ended the watch (its timeout).
    Timeout,
    /// The watch was silent past its idle timeout.
    Idle,
    /// The previous request failed.
    Error,
}

impl Cause {
    fn as_str(self) -> &'static str {
        match self {
            Cause::Initial => "initial",
            Cause::Resume => "resume",
            Cause::Relist => "relist",
            Cause::AfterList => "after-list",
            Cause::Timeout => "timeout",
            Cause::Idle => "idle",
            Cause::Error => "error",
        }
    }
}

/// The next request, and why it is made.
enum Step {
    List(Cause),
    Watch(Cause),
}

/// A watch's events, boxed so that a streamed snapshot can hand its open watch over to the
/// next step (the stream's live watch).
type Events = futures::stream::BoxStream<'static, Result<WatchEvent<Value>, kube::Error>>;

/// The annotation of the bookmark that ends a streamed snapshot's initial events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// How this stream reads its snapshots, as far as it knows (`watch.initialList`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Snapshots {
    /// `auto`, not tried yet: stream, and fall back to pages if the server cannot.
    Try,
    /// Streamed (`stream`, or `auto` once the server has shown it can).
    Stream,
    /// Paginated (`paginate`, or `auto` after the server could not stream).
    Paginate,
}

/// Placeholder until `traces::event_span` gives an event its trace context.
const UNSET_TRACE: TraceContext = TraceContext {
    trace_id: [0; 16],
    span_id: [0; 8],
};

/// How long a loop may wait on a full pipeline before it shows a sign of life again.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// The List-Watch state machine of one stream: feeds its [`Item`]s, in order, to the
/// stream's publisher.
pub struct WatchLoop {
    client: kube::Client,
    spec: StreamSpec,
    settings: WatchConfig,
    url_path: String,
    tx: mpsc::Sender<Item>,
    /// What we sent downstream of each object, and what a crash left in doubt (handed to
    /// the sink, acknowledgement never committed: maybe downstream). The first list treats
    /// those as published (so a vanished one gets its Deleted, with its newest version),
    /// then settles them.
    index: Index,
    /// The version the stream is complete up to, as far as sent items go.
    resource_version: Option<String>,
    /// Whether a checkpoint existed: a list is then a relist, with a marker.
    had_checkpoint: bool,
    telemetry: Arc<Telemetry>,
    metrics: StreamMetrics,
    /// The stream's display name.
    name: String,
    /// Its key in health reports.
    health_key: HealthKey,
    /// The span of the list or watch request in progress: event spans link to it.
    carrier: SpanContext,
    /// How snapshots are read.
    snapshots: Snapshots,
    /// The open watch a streamed snapshot hands over to the next step. A mutex only so that
    /// the loop stays `Sync` (it is never contended).
    handover: std::sync::Mutex<Option<Events>>,
}

impl WatchLoop {
    /// A loop for `spec` that starts from `checkpoint` (resumes a watch when it holds a
    /// resourceVersion, lists otherwise) and sends its items on `tx`.
    pub fn new(
        client: kube::Client,
        spec: StreamSpec,
        settings: WatchConfig,
        checkpoint: StreamCheckpoint,
        tx: mpsc::Sender<Item>,
        telemetry: Arc<Telemetry>,
        metrics: StreamMetrics,
    ) -> Self {
        let ar = api_resource(&spec.id.resource);
        let url_path = DynamicObject::url_path(&ar, spec.id.namespace.as_deref());
        let name = spec.id.to_string();
        let settings_initial_list = settings.initial_list;
        Self {
            health_key: HealthKey::Stream(name.clone()),
            client,
            had_checkpoint: checkpoint.resource_version.is_some(),
            spec,
            settings,
            url_path,
            tx,
            index: Index::new(checkpoint.index, checkpoint.in_doubt),
            resource_version: checkpoint.resource_version,
            name,
            telemetry,
            metrics,
            carrier: SpanContext::empty_context(),
            snapshots: match settings_initial_list {
                InitialList::Auto => Snapshots::Try,
                InitialList::Stream => Snapshots::Stream,
                InitialList::Paginate => Snapshots::Paginate,
            },
            handover: std::sync::Mutex::new(None),
        }
    }

    fn health(&self, f: impl FnOnce(&mut crate::telemetry::StreamState)) {
        self.telemetry.health.update(&self.health_key, f);
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        self.settings.backoff()
    }

    /// Runs until cancelled or until the pipeline closes. Errors never end it.
    pub async fn run(mut self, cancel: CancellationToken) {
        let stream = self.spec.id.to_string();
        self.health(|_| {});
        self.metrics.tracked.set(self.index.len() as i64);
        let mut step = if self.resource_version.is_some() {
            tracing::info!(%stream, resource_version = ?self.resource_version, "resuming from checkpoint");
            Step::Watch(Cause::Resume)
        } else {
            Step::List(Cause::Initial)
        };
        let mut backoff = self.backoff();
        let mut last_error: Option<String> = None;
        let mut healthy_since = Instant::now();
        let healthy_reset = Duration::from_secs(self.settings.healthy_reset_seconds);
        loop {
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.step(&step) => r,
            };
            match result {
                Ok(next) => {
                    if let Some(e) = last_error.take() {
                        tracing::info!(%stream, previous_error = %e, "stream recovered");
                    }
                    if healthy_since.elapsed() >= healthy_reset {
                        backoff = self.backoff();
                    }
                    step = next;
                }
                Err(WatchError::Gone) => {
                    tracing::info!(%stream, resource_version = ?self.resource_version, "410 Gone: relisting");
                    step = Step::List(Cause::Relist);
                }
                Err(WatchError::Closed) => return,
                Err(e) => {
                    let not_served = e.is_not_served();
                    let msg = if not_served {
                        // Its CRD was deleted (or its API group removed): keep the checkpoint
                        // and index, and resume (or relist) once it is served again.
                        format!(
                            "paused: {} is not served any more (CRD deleted?); its checkpoint is kept and the stream resumes when it is served again",
                            self.describe()
                        )
                    } else {
                        e.to_string()
                    };
                    // Log once per change of state, not once per retry.
                    if last_error.as_deref() != Some(msg.as_str()) {
                        if not_served {
                            tracing::warn!(%stream, reason = %msg, "stream paused: resource not served");
                        } else {
                            tracing::error!(%stream, error = %msg, "stream failing; retrying with backoff");
                        }
                        last_error = Some(msg.clone());
                    }
                    self.health(|h| h.error = Some(msg));
                    self.metrics.ready(false);
                    step = match step {
                        Step::List(c) => Step::List(c),
                        Step::Watch(_) => Step::Watch(Cause::Error),
                    };
                    let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                    healthy_since = Instant::now() + delay;
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// One list or one watch request, as a span of its own (`kubewire.list`,
    /// `kubewire.relist`, `kubewire.watch`, with the cause of the (re)start).
    async fn step(&mut self, step: &Step) -> Result<Step, WatchError> {
        let (span, cause) = match *step {
            Step::List(cause) => (
                tracing::info_span!(
                    target: TARGET,
                    parent: None,
                    "kubewire.list",
                    otel.name = if self.had_checkpoint { traces::RELIST_SPAN } else { traces::LIST_SPAN },
                    k8s.cluster.name = %self.spec.id.cluster,
                    kubewire.stream = %self.name,
                    kubewire.cause = cause.as_str(),
                    otel.status_code = tracing::field::Empty,
                    otel.status_description = tracing::field::Empty,
                ),
                cause,
            ),
            Step::Watch(cause) => (
                tracing::info_span!(
                    target: TARGET,
                    parent: None,
                    "kubewire.watch",
                    k8s.cluster.name = %self.spec.id.cluster,
                    kubewire.stream = %self.name,
                    kubewire.cause = cause.as_str(),
                    kubewire.resource_version = self.resource_version.as_deref().unwrap_or(""),
                    otel.status_code = tracing::field::Empty,
                    otel.status_description = tracing::field::Empty,
                ),
                cause,
            ),
        };
        self.metrics.watch_start(cause.as_str());
        self.carrier = traces::span_context(&span);
        let result = match *step {
            Step::List(_) => self.list().instrument(span.clone()).await,
            Step::Watch(_) => self.watch().instrument(span.clone()).await,
        };
        match &result {
            // 410 is the protocol working as designed, not a failure of the request.
            Err(WatchError::Gone) | Ok(_) => {}
            Err(e) => traces::record_error(&span, e),
        }
        self.carrier = SpanContext::empty_context();
        result
    }

    fn api_error(&self, verb: &'static str, e: kube::Error) -> WatchError {
        match e {
            kube::Error::Api(s) if s.code == 410 => WatchError::Gone,
            kube::Error::Api(s) => WatchError::Api {
                verb,
                stream: self.describe(),
                code: s.code,
                reason: s.reason.clone(),
                message: s.message.clone(),
            },
            source => WatchError::Transport {
                verb,
                stream: self.describe(),
                source,
            },
        }
    }

    /// An ERROR event in a watch: 410 is Gone (relist), anything else the API's error.
    fn event_error(&self, verb: &'static str, s: kube::core::Status) -> WatchError {
        if s.code == 410 {
            return WatchError::Gone;
        }
        WatchError::Api {
            verb,
            stream: self.describe(),
            code: s.code,
            reason: s.reason,
            message: s.message,
        }
    }

    /// `configmaps in namespace "x"`: the resource named in every error.
    fn describe(&self) -> String {
        let r = self.spec.id.resource.qualified_name();
        match &self.spec.id.namespace {
            Some(ns) => format!("{r} in namespace {ns:?}"),
            None => r,
        }
    }

    /// Waits for room in the pipeline (the backpressure), showing signs of life meanwhile so
    /// that a slow sink is not mistaken for a wedged loop.
    async fn send(&self, item: Item) -> Result<(), WatchError> {
        loop {
            match tokio::time::timeout(HEARTBEAT, self.tx.reserve()).await {
                Ok(Ok(permit)) => {
                    permit.send(item);
                    return Ok(());
                }
                Ok(Err(_)) => return Err(WatchError::Closed),
                Err(_) => self.health(|_| {}),
            }
        }
    }

    /// Records one API request's outcome and latency.
    fn observe_request<T>(&self, verb: &str, started: Instant, r: &Result<T, kube::Error>) {
        let code = match r {
            Ok(_) => 200,
            Err(kube::Error::Api(s)) => s.code,
            Err(_) => 0,
        };
        self.metrics.api_request(verb, code, started.elapsed());
    }

    fn list_params(&self) -> ListParams {
        let mut lp = ListParams::default().limit(self.settings.page_size);
        if let Some(l) = &self.spec.id.label_selector {
            lp = lp.labels(l);
        }
        if let Some(f) = &self.spec.id.field_selector {
            lp = lp.fields(f);
        }
        lp
    }

    /// A paginated list, diffed against the index (`checkpoint::reconcile`). Without a
    /// checkpoint the changes stream out page by page (origin `initial`); a relist collects
    /// its changes first so that its marker, which carries the counts, comes before them.
    async fn list(&mut self) -> Result<Step, WatchError> {
        let relist = self.had_checkpoint;
        tracing::info!(stream = %self.spec.id, relist, "listing");
        self.metrics.initial_sync("listed", 0);
        self.metrics.initial_sync("published", 0);
        let origin = if relist {
            Origin::Relist
        } else {
            Origin::Initial
        };
        let publish_snapshot = relist || self.spec.initial;
        let mut diff = Reconcile::default();
        // A relist's changes, recorded in the index only once every page is in: a page that
        // fails (an expired continue token, any error) must leave the index as it was, or the
        // retry reads those objects as unchanged and their events are lost (regression:
        // watch::tests::relist_failing_after_its_first_page_loses_no_change).
        // (Behind a mutex, never contended, so that a streamed attempt falling back to pages
        // can drop what it buffered while `each` holds it.)
        let buffered: std::sync::Mutex<Vec<(ChangeType, ObjectRef, Value, bool)>> =
            Default::default();
        let mut each = |this: &mut Self, change, r, obj| {
            let publish = publish_snapshot && this.spec.events.contains(&change);
            if relist {
                buffered
                    .lock()
                    .expect("buffer lock")
                    .push((change, r, obj, publish));
                None
            } else {
                Some(this.change_item(change, origin, r, obj, publish, None))
            }
        };
        let streamed = if self.snapshots == Snapshots::Paginate {
            None
        } else {
            match self.stream_snapshot(&mut each, &mut diff).await? {
                Ok(rv) => {
                    if self.snapshots == Snapshots::Try {
                        tracing::info!(stream = %self.spec.id, "the server streams snapshots (sendInitialEvents): no paginated lists");
                        self.snapshots = Snapshots::Stream;
                    }
                    Some(rv)
                }
                Err(why) if self.snapshots == Snapshots::Try => {
                    tracing::info!(stream = %self.spec.id, reason = %why, "the server cannot stream snapshots: paginated lists from now on");
                    self.snapshots = Snapshots::Paginate;
                    // What the attempt sent is in the index (an initial sync), so the list
                    // reads it as unchanged; a relist's buffer was not sent at all.
                    diff = Reconcile::default();
                    None
                }
                Err(why) => {
                    return Err(WatchError::Api {
                        verb: "list",
                        stream: self.describe(),
                        code: 0,
                        reason: "CannotStream".into(),
                        message: format!("watch.initialList is stream, but {why}"),
                    });
                }
            }
        };
        let list_rv = match streamed {
            Some(rv) => {
                self.metrics.snapshot("stream");
                rv
            }
            None => {
                buffered.lock().expect("buffer lock").clear();
                let rv = self.list_pages(&mut each, &mut diff).await?;
                self.metrics.snapshot("paginate");
                rv
            }
        };
        let (vanished, counts) = diff.vanished(&self.index);
        let publish_deleted = publish_snapshot && self.spec.events.contains(&ChangeType::Deleted);
        let deletions: Vec<Item> = vanished
            .into_iter()
            .map(|(uid, entry)| {
                let (r, data) = entry.identity(&uid);
                self.change_item(ChangeType::Deleted, origin, r, data, publish_deleted, None)
            })
            .collect();
        let RelistCounts {
            added,
            modified,
            deleted,
            unchanged,
        } = counts;
        if relist {
            let mut marker = Event::Relisted(RelistMarker {
                stream: self.spec.id.clone(),
                from_resource_version: self.resource_version.clone(),
                to_resource_version: list_rv.clone(),
                added,
                modified,
                deleted,
                unchanged,
                observed: Utc::now(),
                trace: UNSET_TRACE,
            });
            let (span, trace) = traces::event_span(&marker, &self.carrier);
            if let Event::Relisted(m) = &mut marker {
                m.trace = trace;
            }
            tracing::info!(stream = %self.spec.id, from = ?self.resource_version, to = %list_rv, added, modified, deleted, unchanged, "relisted");
            self.metrics.relisted(added, modified, deleted);
            self.send(Item::Event {
                event: Box::new(marker),
                publish: true,
                advance: None,
                span,
            })
            .await?;
        } else {
            tracing::info!(stream = %self.spec.id, resource_version = %list_rv, added, deleted, unchanged, "initial list done");
        }
        // Deletions first: a name recreated with a new uid must read Deleted, then Added.
        for item in deletions {
            self.send(item).await?;
        }
        for (change, r, obj, publish) in buffered.into_inner().expect("buffer lock") {
            let item = self.change_item(change, origin, r, obj, publish, None);
            self.send(item).await?;
        }
        self.send(Item::Advance(list_rv.clone())).await?;
        self.index.settle();
        self.metrics.event_seen(&list_rv);
        self.metrics.tracked.set(self.index.len() as i64);
        self.resource_version = Some(list_rv);
        self.had_checkpoint = true;
        self.health(|h| {
            h.synced = true;
            h.error = None;
        });
        self.metrics.ready(true);
        Ok(Step::Watch(Cause::AfterList))
    }

    /// Reads every page of a list, classifies each object with `diff`, and hands each
    /// change to `each`, sending the item it returns at once. Returns the list's
    /// resourceVersion.
    async fn list_pages(
        &mut self,
        each: &mut impl FnMut(&mut Self, ChangeType, ObjectRef, Value) -> Option<Item>,
        diff: &mut Reconcile,
    ) -> Result<String, WatchError> {
        let mut listed = 0i64;
        let mut last_progress = Instant::now();
        let mut continue_token: Option<String> = None;
        loop {
            let mut lp = self.list_params();
            if let Some(c) = &continue_token {
                lp = lp.continue_token(c);
            }
            let req = Request::new(&self.url_path).list(&lp)?;
            let started = Instant::now();
            let page = self.client.request::<RawList>(req).await;
            self.observe_request("list", started, &page);
            let page = page.map_err(|e| self.api_error("list", e))?;
            listed += page.items.len() as i64;
            self.metrics.initial_sync("listed", listed);
            self.health(|_| {});
            if last_progress.elapsed() >= Duration::from_secs(5) {
                tracing::info!(stream = %self.spec.id, listed, "list in progress");
                last_progress = Instant::now();
            }
            for mut obj in page.items {
                let r = ObjectRef::from_object(&obj).map_err(|source| WatchError::BadObject {
                    stream: self.spec.id.to_string(),
                    source,
                })?;
                let Some(change) = diff.observe(&self.index, &r) else {
                    continue;
                };
                // Items of a list carry no apiVersion/kind; the envelope's data should.
                if let Some(map) = obj.as_object_mut() {
                    map.insert(
                        "apiVersion".into(),
                        self.spec.id.resource.api_version().into(),
                    );
                    map.insert("kind".into(), self.spec.id.resource.kind.clone().into());
                }
                if let Some(item) = each(self, change, r, obj) {
                    self.send(item).await?;
                }
            }
            continue_token = page.metadata.continue_.filter(|c| !c.is_empty());
            if continue_token.is_none() {
                return Ok(page.metadata.resource_version.unwrap_or_default());
            }
        }
    }

    /// A streamed snapshot: one watch with `sendInitialEvents=true` and
    /// `resourceVersionMatch=NotOlderThan` from no resourceVersion (a consistent snapshot),
    /// whose ADDED events are the listed objects, classified with `diff` and handed to
    /// `each`, up to the bookmark annotated `k8s.io/initial-events-end`: its version is the
    /// snapshot's, and the open watch is handed over to the next step. `Ok(Err(why))` when
    /// the server cannot stream (a 4xx for the parameters, or it ignores them).
    async fn stream_snapshot(
        &mut self,
        each: &mut impl FnMut(&mut Self, ChangeType, ObjectRef, Value) -> Option<Item>,
        diff: &mut Reconcile,
    ) -> Result<Result<String, String>, WatchError> {
        let mut wp = WatchParams::streaming_lists().timeout(self.settings.timeout_seconds);
        if let Some(l) = &self.spec.id.label_selector {
            wp = wp.labels(l);
        }
        if let Some(f) = &self.spec.id.field_selector {
            wp = wp.fields(f);
        }
        let req = Request::new(&self.url_path).watch(&wp, "")?;
        let started = Instant::now();
        let events = self.client.request_events::<Value>(req).await;
        // A snapshot is a list, however it is read.
        self.observe_request("list", started, &events);
        let mut events: Events = match events {
            Ok(e) => e.boxed(),
            Err(kube::Error::Api(s)) if matches!(s.code, 400 | 422) => {
                return Ok(Err(format!("HTTP {}: {}", s.code, s.message)));
            }
            Err(e) => return Err(self.api_error("list", e)),
        };
        let idle = Duration::from_secs(self.settings.idle_timeout_seconds.into());
        let mut listed = 0i64;
        let mut last_progress = Instant::now();
        loop {
            let next = match tokio::time::timeout(idle, events.try_next()).await {
                Err(_) => return Ok(Err("the snapshot went silent".into())),
                Ok(r) => r.map_err(|e| self.api_error("list", e))?,
            };
            let Some(ev) = next else {
                return Ok(Err(format!(
                    "the watch ended without the {INITIAL_EVENTS_END} bookmark"
                )));
            };
            match ev {
                WatchEvent::Added(obj) => {
                    listed += 1;
                    self.metrics.initial_sync("listed", listed);
                    self.health(|_| {});
                    if last_progress.elapsed() >= Duration::from_secs(5) {
                        tracing::info!(stream = %self.spec.id, listed, "list in progress");
                        last_progress = Instant::now();
                    }
                    let r =
                        ObjectRef::from_object(&obj).map_err(|source| WatchError::BadObject {
                            stream: self.spec.id.to_string(),
                            source,
                        })?;
                    let Some(change) = diff.observe(&self.index, &r) else {
                        continue;
                    };
                    if let Some(item) = each(self, change, r, obj) {
                        self.send(item).await?;
                    }
                }
                WatchEvent::Bookmark(b)
                    if b.metadata
                        .annotations
                        .get(INITIAL_EVENTS_END)
                        .map(String::as_str)
                        == Some("true") =>
                {
                    *self.handover.lock().expect("handover lock") = Some(events);
                    return Ok(Ok(b.metadata.resource_version));
                }
                WatchEvent::Error(s) => return Err(self.event_error("list", *s)),
                // Changes or a plain bookmark before the end of the initial events: the
                // server ignored sendInitialEvents.
                _ => {
                    return Ok(Err(
                        "the server ignored sendInitialEvents (a change before the initial events ended)".into(),
                    ));
                }
            }
        }
    }

    /// Builds the item for one change and records it in the sent-index.
    fn change_item(
        &mut self,
        change: ChangeType,
        origin: Origin,
        object: ObjectRef,
        data: Value,
        publish: bool,
        advance: Option<String>,
    ) -> Item {
        let mut event = Event::Object(Change {
            stream: self.spec.id.clone(),
            change,
            origin,
            object,
            data,
            observed: Utc::now(),
            trace: if publish {
                UNSET_TRACE
            } else {
                TraceContext::random()
            },
        });
        if let Event::Object(c) = &event {
            self.index.record(c);
        }
        // Only an event that will be published gets a span (and its trace context).
        let span = if publish {
            let (span, trace) = traces::event_span(&event, &self.carrier);
            if let Event::Object(c) = &mut event {
                c.trace = trace;
            }
            span
        } else {
            tracing::Span::none()
        };
        Item::Event {
            event: Box::new(event),
            publish,
            advance,
            span,
        }
    }

    async fn watch(&mut self) -> Result<Step, WatchError> {
        let rv = self.resource_version.clone().unwrap_or_default();
        let handed = self.handover.lock().expect("handover lock").take();
        let mut events = match handed {
            // The streamed snapshot's watch goes on: no second request, no gap.
            Some(events) => events,
            None => {
                let mut wp = WatchParams::default().timeout(self.settings.timeout_seconds);
                if let Some(l) = &self.spec.id.label_selector {
                    wp = wp.labels(l);
                }
                if let Some(f) = &self.spec.id.field_selector {
                    wp = wp.fields(f);
                }
                let req = Request::new(&self.url_path).watch(&wp, &rv)?;
                tracing::debug!(stream = %self.spec.id, resource_version = %rv, "watching");
                let started = Instant::now();
                let events = self.client.request_events::<Value>(req).await;
                self.observe_request("watch", started, &events);
                events.map_err(|e| self.api_error("watch", e))?.boxed()
            }
        };
        // The request succeeded: the stream is synced up to the resumed version.
        self.health(|h| {
            h.synced = true;
            h.error = None;
        });
        self.metrics.ready(true);
        let idle = Duration::from_secs(self.settings.idle_timeout_seconds.into());
        loop {
            let next = match tokio::time::timeout(idle, events.try_next()).await {
                Err(_) => {
                    tracing::warn!(stream = %self.spec.id, "watch silent past its idle timeout; restarting it");
                    return Ok(Step::Watch(Cause::Idle));
                }
                Ok(r) => r.map_err(|e| self.api_error("watch", e))?,
            };
            let Some(ev) = next else {
                // The server ended the watch (its timeout): resume where we are.
                return Ok(Step::Watch(Cause::Timeout));
            };
            let (change, obj) = match ev {
                WatchEvent::Added(o) => (ChangeType::Added, o),
                WatchEvent::Modified(o) => (ChangeType::Modified, o),
                WatchEvent::Deleted(o) => (ChangeType::Deleted, o),
                WatchEvent::Bookmark(b) => {
                    // The stream is complete up to here: the checkpoint may take it once every
                    // earlier event is acknowledged (an Advance item, behind the watermark).
                    let rv = b.metadata.resource_version;
                    tracing::debug!(stream = %self.spec.id, resource_version = %rv, "bookmark");
                    self.health(|_| {});
                    self.resource_version = Some(rv.clone());
                    self.send(Item::Advance(rv)).await?;
                    continue;
                }
                WatchEvent::Error(s) => return Err(self.event_error("watch", *s)),
            };
            let r = ObjectRef::from_object(&obj).map_err(|source| WatchError::BadObject {
                stream: self.spec.id.to_string(),
                source,
            })?;
            let rv = r.resource_version.clone();
            self.metrics.event_seen(&rv);
            self.health(|_| {});
            let publish = self.spec.events.contains(&change);
            let item = self.change_item(change, Origin::Watch, r, obj, publish, Some(rv.clone()));
            self.metrics.tracked.set(self.index.len() as i64);
            self.resource_version = Some(rv);
            self.send(item).await?;
        }
    }
}

#[cfg(test)]
mod tests;
