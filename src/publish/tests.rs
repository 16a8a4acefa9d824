//! The publish stage against a scripted sink and the real embedded store: which outcomes
//! let the checkpoint move past an event, and which stop the stream's progress.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{PublishError, Publisher};
use crate::checkpoint::{
    CheckpointError, CommitBatch, SentEntry, StateStore, Store, StreamCheckpoint,
};
use crate::config::TransformConfig;
use crate::envelope::Encoded;
use crate::event::{Change, ChangeType, Event, ObjectRef, Origin, StreamId, TraceContext};
use crate::sink::{Ack, Route, SendFuture, Sink, SinkError};
use crate::telemetry::Telemetry;
use crate::transform::Transformer;
use crate::watch::{Item, StreamSpec};

/// Only a safety net against a hung test.
const SAFETY: Duration = Duration::from_secs(10);

/// How the scripted sink settles the event of one object (by name); delivered otherwise.
#[derive(Clone, Copy)]
enum Outcome {
    /// The ack's sender is dropped: not delivered.
    Closed,
    /// Refused for good (too large).
    Rejected,
}

struct ScriptedSink {
    script: Vec<(&'static str, Outcome)>,
    sent: Mutex<Vec<String>>,
}

impl Sink for ScriptedSink {
    fn send<'a>(&'a self, msg: Encoded, _route: &'a Route) -> SendFuture<'a> {
        Box::pin(async move {
            let name = msg
                .subject
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            self.sent.lock().unwrap().push(name.clone());
            let outcome = self
                .script
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, o)| *o);
            let ack: Ack = match outcome {
                None => Box::pin(async { Ok(()) }),
                Some(Outcome::Closed) => Box::pin(async { Err(SinkError::Closed) }),
                Some(Outcome::Rejected) => {
                    let id = msg.id.clone();
                    Box::pin(async move {
                        Err(SinkError::Rejected {
                            id,
                            reason: "too large".into(),
                        })
                    })
                }
            };
            Ok(ack)
        })
    }

    fn name(&self) -> &'static str {
        "scripted"
    }
}

/// The embedded store, with a write-ahead that can be made to fail.
#[derive(Debug)]
struct Flaky {
    store: Store,
    fail_write_ahead: bool,
}

impl StateStore for Flaky {
    fn load(&self, stream_key: &str) -> Result<StreamCheckpoint, CheckpointError> {
        self.store.load(stream_key)
    }

    fn record_sent(
        &self,
        stream_key: &str,
        sent: &[(String, SentEntry)],
    ) -> Result<(), CheckpointError> {
        if self.fail_write_ahead {
            return Err(CheckpointError::InvalidStreamKey(
                "disk full (scripted)".into(),
            ));
        }
        self.store.record_sent(stream_key, sent)
    }

    fn commit(&self, stream_key: &str, batch: &CommitBatch) -> Result<(), CheckpointError> {
        self.store.commit(stream_key, batch)
    }
}

fn stream() -> Arc<StreamId> {
    Arc::new(StreamId::test_configmaps())
}

fn change(id: &Arc<StreamId>, name: &str, rv: &str) -> Item {
    let object = ObjectRef {
        uid: format!("uid-{name}"),
        namespace: Some("default".into()),
        name: name.into(),
        resource_version: rv.into(),
    };
    Item::Event {
        event: Box::new(Event::Object(Change {
            stream: id.clone(),
            change: ChangeType::Added,
            origin: Origin::Watch,
            data: json!({"metadata": {"name": name, "namespace": "default"}}),
            object,
            observed: Utc::now(),
            trace: TraceContext::random(),
        })),
        publish: true,
        advance: Some(rv.into()),
        span: tracing::Span::none(),
    }
}

struct Run {
    result: Result<(), PublishError>,
    checkpoint: StreamCheckpoint,
    sent: Vec<String>,
    telemetry: Arc<Telemetry>,
}

/// Publishes changes of `names` (at versions 1, 2, …) through a sink following `script`,
/// until the stream ends or halts; returns what was committed.
async fn publish(
    names: &[&str],
    script: Vec<(&'static str, Outcome)>,
    fail_write_ahead: bool,
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Flaky {
        store: Store::open(&dir.path().join("cp.redb")).unwrap(),
        fail_write_ahead,
    });
    let id = stream();
    let sink = Arc::new(ScriptedSink {
        script,
        sent: Mutex::new(Vec::new()),
    });
    let telemetry = Arc::new(Telemetry::default());
    let publisher = Publisher {
        spec: StreamSpec {
            id: id.clone(),
            events: vec![ChangeType::Added],
            initial: true,
        },
        sink: sink.clone(),
        transformer: Arc::new(
            Transformer::new(&TransformConfig::default(), b"k".to_vec()).unwrap(),
        ),
        store: store.clone(),
        commit_interval: Duration::from_secs(3600),
        max_in_flight: 64,
        metrics: telemetry.metrics.stream(&id),
        telemetry: telemetry.clone(),
        route: Route::default(),
    };
    let (tx, rx) = mpsc::channel(64);
    for (i, name) in names.iter().enumerate() {
        tx.send(change(&id, name, &(i + 1).to_string()))
            .await
            .unwrap();
    }
    drop(tx);
    let result = tokio::time::timeout(SAFETY, publisher.run(rx, CancellationToken::new()))
        .await
        .expect("the publisher ends");
    let checkpoint = store.load(&id.key()).unwrap();
    let sent = sink.sent.lock().unwrap().clone();
    Run {
        result,
        checkpoint,
        sent,
        telemetry,
    }
}

#[tokio::test]
async fn every_delivered_event_is_checkpointed() {
    let run = publish(&["a", "b", "c"], vec![], false).await;
    run.result.unwrap();
    assert_eq!(run.checkpoint.resource_version.as_deref(), Some("3"));
    assert_eq!(run.checkpoint.index.len(), 3);
    assert!(run.checkpoint.in_doubt.is_empty());
}

/// Regression (issue "One home per stage"): the publisher moved the checkpoint on any ack
/// error, including `SinkError::Closed` — an ack whose sender was dropped, not delivered.
#[tokio::test]
async fn an_ack_that_is_closed_does_not_move_the_checkpoint() {
    let run = publish(&["a", "lost", "c"], vec![("lost", Outcome::Closed)], false).await;
    assert!(
        matches!(
            &run.result,
            Err(PublishError::NotDelivered {
                source: SinkError::Closed,
                ..
            })
        ),
        "{:?}",
        run.result
    );
    // Behind the undelivered event only: version 1, object a.
    assert_eq!(run.checkpoint.resource_version.as_deref(), Some("1"));
    assert_eq!(run.checkpoint.index.keys().collect::<Vec<_>>(), ["uid-a"]);
    // What a relist after a restart must consider: the undelivered one and what followed.
    let mut doubt: Vec<&String> = run.checkpoint.in_doubt.keys().collect();
    doubt.sort();
    assert_eq!(doubt, ["uid-c", "uid-lost"]);
    let wedged = run.telemetry.health.wedged(Duration::from_secs(3600));
    assert_eq!(
        wedged,
        ["stream test/configmaps in default"],
        "halted: a restart helps"
    );
}

#[tokio::test]
async fn a_rejected_event_is_passed_over_and_the_checkpoint_moves_past_it() {
    let run = publish(&["a", "big", "c"], vec![("big", Outcome::Rejected)], false).await;
    run.result.unwrap();
    assert_eq!(run.checkpoint.resource_version.as_deref(), Some("3"));
    assert!(
        run.telemetry
            .health
            .wedged(Duration::from_secs(3600))
            .is_empty()
    );
}

/// Regression (issue "One home per stage"): a failed write-ahead was logged and ignored,
/// although a relist after a crash then misses deletes.
#[tokio::test]
async fn a_failed_write_ahead_stops_the_stream_before_anything_is_handed_over() {
    let run = publish(&["a", "b"], vec![], true).await;
    assert!(
        matches!(run.result, Err(PublishError::WriteAhead(_))),
        "{:?}",
        run.result
    );
    assert!(
        run.sent.is_empty(),
        "nothing handed to the sink: {:?}",
        run.sent
    );
    assert_eq!(run.checkpoint.resource_version, None);
    assert!(
        !run.telemetry
            .health
            .wedged(Duration::from_secs(3600))
            .is_empty()
    );
}
