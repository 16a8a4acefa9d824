//! The List-Watch state machine against a scripted API server (`tower_test`): each test
//! answers the loop's requests one by one and checks what comes out of its channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower_test::mock;

use super::{Item, StreamSpec, WatchLoop};
use crate::checkpoint::{IndexEntry, SentEntry, StreamCheckpoint};
use crate::config::{InitialList, WatchConfig};
use crate::event::{Change, ChangeType, Event, Origin, RelistMarker, StreamId};
use crate::telemetry::Telemetry;

// kube's own body cannot stay open without data; axum's can, which the idle test needs.
type ResponseBody = axum::body::Body;
type ApiHandle = mock::Handle<Request<kube::client::Body>, Response<ResponseBody>>;
type Responder = mock::SendResponse<Response<ResponseBody>>;

/// Only a safety net against a hung test: every wait is on a request or an item.
const SAFETY: Duration = Duration::from_secs(5);
const PATH: &str = "/api/v1/namespaces/default/configmaps";

struct Harness {
    api: ApiHandle,
    items: mpsc::Receiver<Item>,
    cancel: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn start(checkpoint: StreamCheckpoint, settings: WatchConfig) -> Harness {
    let (service, api) = mock::pair::<Request<kube::client::Body>, Response<ResponseBody>>();
    let client = kube::Client::new(service, "default");
    let id = Arc::new(StreamId::test_configmaps());
    let telemetry = Arc::new(Telemetry::default());
    let metrics = telemetry.metrics.stream(&id);
    let spec = StreamSpec {
        id,
        events: vec![ChangeType::Added, ChangeType::Modified, ChangeType::Deleted],
        initial: true,
    };
    let (tx, items) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let watch = WatchLoop::new(client, spec, settings, checkpoint, tx, telemetry, metrics);
    tokio::spawn(watch.run(cancel.clone()));
    Harness { api, items, cancel }
}

/// Settings of the tests of paginated snapshots.
fn paginated() -> WatchConfig {
    WatchConfig {
        initial_list: InitialList::Paginate,
        ..Default::default()
    }
}

fn resumed_at(rv: &str) -> StreamCheckpoint {
    StreamCheckpoint {
        resource_version: Some(rv.into()),
        ..Default::default()
    }
}

fn entry(name: &str, rv: &str) -> IndexEntry {
    IndexEntry {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: Some("default".into()),
        name: name.into(),
        resource_version: rv.into(),
    }
}

/// A ConfigMap as a list item (no apiVersion/kind, as the API server sends them).
fn cm(uid: &str, rv: &str) -> Value {
    json!({
        "metadata": {"namespace": "default", "name": format!("cm-{uid}"), "uid": uid, "resourceVersion": rv},
        "data": {"k": "v"},
    })
}

/// A ConfigMap as a watch event carries it.
fn typed_cm(uid: &str, rv: &str) -> Value {
    let mut o = cm(uid, rv);
    o["apiVersion"] = "v1".into();
    o["kind"] = "ConfigMap".into();
    o
}

fn watch_line(kind: &str, object: Value) -> String {
    format!("{}\n", json!({"type": kind, "object": object}))
}

fn gone_status() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "code": 410, "reason": "Expired", "message": "too old resource version"})
}

fn respond(send: Responder, status: StatusCode, body: impl Into<ResponseBody>) {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    send.send_response(response);
}

fn respond_list(send: Responder, rv: &str, continue_: Option<&str>, items: Vec<Value>) {
    let body = json!({
        "kind": "ConfigMapList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": rv, "continue": continue_},
        "items": items,
    });
    respond(send, StatusCode::OK, body.to_string());
}

/// A watch body that ends after `lines`, as when the server's timeout closes the stream.
fn respond_watch(send: Responder, lines: &[String]) {
    respond(send, StatusCode::OK, lines.concat());
}

fn query(req: &Request<kube::client::Body>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

impl Harness {
    async fn request(&mut self, what: &str) -> (HashMap<String, String>, Responder) {
        let (req, send) = tokio::time::timeout(SAFETY, self.api.next_request())
            .await
            .unwrap_or_else(|_| panic!("no {what} request within {SAFETY:?}"))
            .expect("the watch loop dropped its client");
        assert_eq!(req.uri().path(), PATH, "{what}: {}", req.uri());
        (query(&req), send)
    }

    /// Expects a list page (`continue_`: the token it must carry) and returns its responder.
    async fn expect_list(&mut self, page_size: u32, continue_: Option<&str>) -> Responder {
        let (q, send) = self.request("list").await;
        assert_eq!(q.get("watch"), None, "expected a list, got a watch: {q:?}");
        assert_eq!(q.get("limit"), Some(&page_size.to_string()), "{q:?}");
        assert_eq!(q.get("continue").map(String::as_str), continue_, "{q:?}");
        send
    }

    /// Expects a streamed snapshot: a watch with sendInitialEvents from no resourceVersion.
    async fn expect_streamed_snapshot(&mut self) -> Responder {
        let (q, send) = self.request("streamed snapshot").await;
        assert_eq!(q.get("watch").map(String::as_str), Some("true"), "{q:?}");
        assert_eq!(
            q.get("sendInitialEvents").map(String::as_str),
            Some("true"),
            "{q:?}"
        );
        assert_eq!(
            q.get("resourceVersionMatch").map(String::as_str),
            Some("NotOlderThan"),
            "{q:?}"
        );
        assert!(
            q.get("resourceVersion").is_none_or(|rv| rv.is_empty()),
            "a consistent snapshot names no version: {q:?}"
        );
        send
    }

    async fn expect_watch(&mut self, rv: &str) -> Responder {
        let (q, send) = self.request("watch").await;
        assert_eq!(
            q.get("watch").map(String::as_str),
            Some("true"),
            "expected a watch: {q:?}"
        );
        assert_eq!(
            q.get("resourceVersion").map(String::as_str),
            Some(rv),
            "{q:?}"
        );
        assert_eq!(q.get("limit"), None, "{q:?}");
        send
    }

    async fn item(&mut self) -> Item {
        tokio::time::timeout(SAFETY, self.items.recv())
            .await
            .unwrap_or_else(|_| panic!("no item within {SAFETY:?}"))
            .expect("the watch loop ended")
    }

    /// The next item must be a change of `uid` at `rv`; returns it for further checks.
    async fn expect_change(
        &mut self,
        change: ChangeType,
        origin: Origin,
        uid: &str,
        rv: &str,
    ) -> Change {
        let item = self.item().await;
        let Item::Event { event, publish, .. } = item else {
            panic!("expected {change:?} {uid}@{rv}, got {item:?}");
        };
        let Event::Object(c) = *event else {
            panic!("expected {change:?} {uid}@{rv}, got {event:?}");
        };
        let got = (c.change, c.origin, c.object.uid.as_str());
        assert_eq!(got, (change, origin, uid), "at {rv}: {c:?}");
        assert_eq!(c.object.resource_version, rv, "{c:?}");
        assert!(publish, "every type is published in these tests: {c:?}");
        c
    }

    async fn expect_marker(&mut self) -> RelistMarker {
        match self.item().await {
            Item::Event { event, .. } => match *event {
                Event::Relisted(m) => m,
                other => panic!("expected the relisted marker, got {other:?}"),
            },
            other => panic!("expected the relisted marker, got {other:?}"),
        }
    }

    async fn expect_advance(&mut self, rv: &str) {
        match self.item().await {
            Item::Advance(got) => assert_eq!(got, rv),
            other => panic!("expected Advance({rv}), got {other:?}"),
        }
    }
}

fn counts(m: &RelistMarker) -> (u64, u64, u64, u64) {
    (m.added, m.modified, m.deleted, m.unchanged)
}

#[tokio::test]
async fn resumes_from_checkpoint_with_a_watch_and_emits_its_events_in_order() {
    let mut checkpoint = resumed_at("100");
    checkpoint.index.insert("b".into(), entry("cm-b", "90"));
    let mut h = start(checkpoint, paginated());

    let send = h.expect_watch("100").await;
    respond_watch(
        send,
        &[
            watch_line("ADDED", typed_cm("a", "101")),
            watch_line("MODIFIED", typed_cm("a", "102")),
            watch_line("DELETED", typed_cm("b", "103")),
            watch_line(
                "BOOKMARK",
                json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"resourceVersion": "104"}}),
            ),
        ],
    );

    let added = h
        .expect_change(ChangeType::Added, Origin::Watch, "a", "101")
        .await;
    assert_eq!(added.data["data"]["k"], "v", "the object is passed through");
    h.expect_change(ChangeType::Modified, Origin::Watch, "a", "102")
        .await;
    h.expect_change(ChangeType::Deleted, Origin::Watch, "b", "103")
        .await;
    h.expect_advance("104").await;
    // The server closing the stream is routine: the loop resumes after the bookmark.
    h.expect_watch("104").await;
}

#[tokio::test]
async fn without_checkpoint_lists_every_page_then_watches_from_the_list_version() {
    let settings = WatchConfig {
        initial_list: InitialList::Paginate,
        page_size: 2,
        ..Default::default()
    };
    let mut h = start(StreamCheckpoint::default(), settings);

    let send = h.expect_list(2, None).await;
    respond_list(send, "", Some("page-2"), vec![cm("a", "11"), cm("b", "12")]);
    let send = h.expect_list(2, Some("page-2")).await;
    respond_list(send, "300", None, vec![cm("c", "13")]);

    // A first list has no marker: the snapshot starts straight with its objects.
    let a = h
        .expect_change(ChangeType::Added, Origin::Initial, "a", "11")
        .await;
    assert_eq!(
        (&a.data["apiVersion"], &a.data["kind"]),
        (&json!("v1"), &json!("ConfigMap")),
        "list items get their type back: {}",
        a.data
    );
    h.expect_change(ChangeType::Added, Origin::Initial, "b", "12")
        .await;
    h.expect_change(ChangeType::Added, Origin::Initial, "c", "13")
        .await;
    h.expect_advance("300").await;
    h.expect_watch("300").await;
}

#[tokio::test]
async fn gone_on_the_watch_relists_with_marker_then_deletions_then_changes() {
    let mut checkpoint = resumed_at("100");
    for (uid, rv) in [("same", "10"), ("changed", "20"), ("vanished", "30")] {
        checkpoint
            .index
            .insert(uid.into(), entry(&format!("cm-{uid}"), rv));
    }
    let mut h = start(checkpoint, paginated());

    let send = h.expect_watch("100").await;
    respond_watch(send, &[watch_line("ERROR", gone_status())]);
    let send = h.expect_list(500, None).await;
    respond_list(
        send,
        "200",
        None,
        vec![cm("same", "10"), cm("changed", "25"), cm("new", "150")],
    );

    let marker = h.expect_marker().await;
    assert_eq!(
        (
            marker.from_resource_version.as_deref(),
            marker.to_resource_version.as_str()
        ),
        (Some("100"), "200")
    );
    assert_eq!(
        counts(&marker),
        (1, 1, 1, 1),
        "added, modified, deleted, unchanged"
    );
    let deleted = h
        .expect_change(ChangeType::Deleted, Origin::Relist, "vanished", "30")
        .await;
    assert_eq!(deleted.object.name, "cm-vanished", "rebuilt from the index");
    assert_eq!(deleted.data["kind"], "ConfigMap");
    h.expect_change(ChangeType::Modified, Origin::Relist, "changed", "25")
        .await;
    h.expect_change(ChangeType::Added, Origin::Relist, "new", "150")
        .await;
    // Nothing for `same`: the list's end comes right after the changes.
    h.expect_advance("200").await;
    h.expect_watch("200").await;
}

#[tokio::test]
async fn gone_as_http_status_on_the_watch_relists_too() {
    let mut h = start(resumed_at("100"), paginated());

    let send = h.expect_watch("100").await;
    respond(send, StatusCode::GONE, gone_status().to_string());
    let send = h.expect_list(500, None).await;
    respond_list(send, "200", None, vec![]);

    let marker = h.expect_marker().await;
    assert_eq!(marker.from_resource_version.as_deref(), Some("100"));
    assert_eq!(counts(&marker), (0, 0, 0, 0));
    h.expect_advance("200").await;
    h.expect_watch("200").await;
}

#[tokio::test]
async fn in_doubt_modified_at_the_listed_version_is_repeated_as_modified() {
    let mut checkpoint = resumed_at("100");
    checkpoint.in_doubt.insert(
        "x".into(),
        SentEntry {
            entry: entry("cm-x", "150"),
            sent_as: Some(ChangeType::Modified),
        },
    );
    let mut h = start(checkpoint, paginated());

    let send = h.expect_watch("100").await;
    respond_watch(send, &[watch_line("ERROR", gone_status())]);
    let send = h.expect_list(500, None).await;
    respond_list(send, "200", None, vec![cm("x", "150")]);

    let marker = h.expect_marker().await;
    assert_eq!(
        counts(&marker),
        (0, 1, 0, 0),
        "added, modified, deleted, unchanged"
    );
    // Same type, same version: the same event id as the one possibly already downstream.
    h.expect_change(ChangeType::Modified, Origin::Relist, "x", "150")
        .await;
    h.expect_advance("200").await;
    h.expect_watch("200").await;
}

#[tokio::test(start_paused = true)]
async fn silent_watch_is_restarted_after_the_idle_timeout() {
    let settings = WatchConfig {
        initial_list: InitialList::Paginate,
        timeout_seconds: 1,
        idle_timeout_seconds: 3,
        ..Default::default()
    };
    let idle = Duration::from_secs(settings.idle_timeout_seconds.into());
    assert!(
        idle < SAFETY,
        "the safety net must not fire before the idle timeout"
    );
    let mut h = start(resumed_at("100"), settings);

    let send = h.expect_watch("100").await;
    let line = Ok::<_, std::io::Error>(Bytes::from(watch_line("ADDED", typed_cm("a", "101"))));
    // One event, then an open connection that never sends again.
    let body = futures::stream::iter([line]).chain(futures::stream::pending());
    respond(send, StatusCode::OK, ResponseBody::from_stream(body));

    h.expect_change(ChangeType::Added, Origin::Watch, "a", "101")
        .await;
    let silent_since = tokio::time::Instant::now();
    h.expect_watch("101").await;
    assert!(
        silent_since.elapsed() >= idle,
        "restarted after {:?}, before the idle timeout {idle:?}",
        silent_since.elapsed()
    );
}

/// Regression (found writing these tests): a relist recorded each change in the index when it
/// buffered it, so a page failing after the first one (here the continue token expired)
/// left the index claiming changes that were never sent; the retry then saw those objects as
/// unchanged and their events were lost.
#[tokio::test]
async fn relist_failing_after_its_first_page_loses_no_change() {
    let mut checkpoint = resumed_at("100");
    checkpoint.index.insert("a".into(), entry("cm-a", "10"));
    let settings = WatchConfig {
        initial_list: InitialList::Paginate,
        page_size: 1,
        backoff_initial_ms: 1,
        backoff_max_ms: 5,
        ..Default::default()
    };
    let mut h = start(checkpoint, settings);

    let send = h.expect_watch("100").await;
    respond_watch(send, &[watch_line("ERROR", gone_status())]);
    let send = h.expect_list(1, None).await;
    respond_list(send, "200", Some("page-2"), vec![cm("a", "15")]);
    let send = h.expect_list(1, Some("page-2")).await;
    respond(send, StatusCode::GONE, gone_status().to_string());

    // The relist starts over and must still see `a` as changed.
    let send = h.expect_list(1, None).await;
    respond_list(send, "210", None, vec![cm("a", "15")]);
    let marker = h.expect_marker().await;
    assert_eq!(
        counts(&marker),
        (0, 1, 0, 0),
        "added, modified, deleted, unchanged"
    );
    h.expect_change(ChangeType::Modified, Origin::Relist, "a", "15")
        .await;
    h.expect_advance("210").await;
}

fn end_of_initial_events(rv: &str) -> String {
    watch_line(
        "BOOKMARK",
        json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {
            "resourceVersion": rv,
            "annotations": {"k8s.io/initial-events-end": "true"}
        }}),
    )
}

/// Issue "Real clusters", item 2: `auto` streams a snapshot with one watch, and that watch
/// goes on as the stream's watch (no second request, no gap).
#[tokio::test]
async fn without_checkpoint_streams_the_snapshot_then_goes_on_with_the_same_watch() {
    let mut h = start(StreamCheckpoint::default(), WatchConfig::default());
    let send = h.expect_streamed_snapshot().await;
    respond_watch(
        send,
        &[
            watch_line("ADDED", typed_cm("a", "11")),
            watch_line("ADDED", typed_cm("b", "12")),
            end_of_initial_events("15"),
            watch_line("MODIFIED", typed_cm("a", "16")),
        ],
    );
    h.expect_change(ChangeType::Added, Origin::Initial, "a", "11")
        .await;
    h.expect_change(ChangeType::Added, Origin::Initial, "b", "12")
        .await;
    h.expect_advance("15").await;
    h.expect_change(ChangeType::Modified, Origin::Watch, "a", "16")
        .await;
    // The handed-over watch ended (the server's timeout): an ordinary watch resumes.
    h.expect_watch("16").await;
}

/// A relist after 410 is streamed too, with the same diff, marker and order as pages.
#[tokio::test]
async fn a_streamed_relist_reconciles_like_a_paginated_one() {
    let mut checkpoint = resumed_at("100");
    for (uid, rv) in [("same", "10"), ("changed", "20"), ("vanished", "30")] {
        checkpoint
            .index
            .insert(uid.into(), entry(&format!("cm-{uid}"), rv));
    }
    let mut h = start(checkpoint, WatchConfig::default());
    let send = h.expect_watch("100").await;
    respond(send, StatusCode::GONE, gone_status().to_string());
    let send = h.expect_streamed_snapshot().await;
    respond_watch(
        send,
        &[
            watch_line("ADDED", typed_cm("same", "10")),
            watch_line("ADDED", typed_cm("changed", "120")),
            watch_line("ADDED", typed_cm("new", "130")),
            end_of_initial_events("140"),
        ],
    );
    let m = h.expect_marker().await;
    assert_eq!(counts(&m), (1, 1, 1, 1));
    assert_eq!(m.to_resource_version, "140");
    h.expect_change(ChangeType::Deleted, Origin::Relist, "vanished", "30")
        .await;
    h.expect_change(ChangeType::Modified, Origin::Relist, "changed", "120")
        .await;
    h.expect_change(ChangeType::Added, Origin::Relist, "new", "130")
        .await;
    h.expect_advance("140").await;
    h.expect_watch("140").await;
}

/// A server that refuses the parameters (422) is read by pages, and not asked to stream
/// again: the next relist lists at once.
#[tokio::test]
async fn a_server_that_refuses_to_stream_is_read_by_pages_from_then_on() {
    let mut h = start(StreamCheckpoint::default(), WatchConfig::default());
    let send = h.expect_streamed_snapshot().await;
    respond(
        send,
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "code": 422, "reason": "Invalid", "message": "sendInitialEvents is forbidden"})
        .to_string(),
    );
    let send = h.expect_list(500, None).await;
    respond_list(send, "20", None, vec![cm("a", "11")]);
    h.expect_change(ChangeType::Added, Origin::Initial, "a", "11")
        .await;
    h.expect_advance("20").await;
    let send = h.expect_watch("20").await;
    respond(send, StatusCode::GONE, gone_status().to_string());
    let send = h.expect_list(500, None).await;
    respond_list(send, "30", None, vec![cm("a", "11")]);
    let m = h.expect_marker().await;
    assert_eq!(counts(&m), (0, 0, 0, 1));
}

/// A server that ignores the parameters (changes before any end bookmark) is read by pages;
/// what the attempt already sent is not sent again, and nothing is lost.
#[tokio::test]
async fn a_server_that_ignores_the_parameters_is_read_by_pages_without_loss_or_repeat() {
    let mut h = start(StreamCheckpoint::default(), WatchConfig::default());
    let send = h.expect_streamed_snapshot().await;
    respond_watch(
        send,
        &[
            watch_line("ADDED", typed_cm("a", "11")),
            watch_line("MODIFIED", typed_cm("a", "12")),
        ],
    );
    h.expect_change(ChangeType::Added, Origin::Initial, "a", "11")
        .await;
    let send = h.expect_list(500, None).await;
    respond_list(send, "20", None, vec![cm("a", "11"), cm("b", "13")]);
    h.expect_change(ChangeType::Added, Origin::Initial, "b", "13")
        .await;
    h.expect_advance("20").await;
    h.expect_watch("20").await;
}

/// `initialList: stream` insists: a refusal is an error (retried), never a paginated list.
#[tokio::test]
async fn forced_streaming_retries_instead_of_paginating() {
    let settings = WatchConfig {
        initial_list: InitialList::Stream,
        backoff_initial_ms: 5,
        backoff_max_ms: 10,
        ..Default::default()
    };
    let mut h = start(StreamCheckpoint::default(), settings);
    for _ in 0..2 {
        let send = h.expect_streamed_snapshot().await;
        respond(
            send,
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "code": 422, "reason": "Invalid", "message": "no"})
            .to_string(),
        );
    }
    let send = h.expect_streamed_snapshot().await;
    respond_watch(send, &[end_of_initial_events("5")]);
    h.expect_advance("5").await;
}
