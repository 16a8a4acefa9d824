//! The uid index: what was last published of each object of a stream (what a reconciling
//! relist diffs against), and the write-ahead rows of versions handed to the sink whose
//! acknowledgement was not committed yet.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{Change, ChangeType, ObjectRef};

/// What the last published version of one object was, as the relist diff needs it (and as
/// a Deleted event for a vanished object reports it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexEntry {
    /// `apps/v1`, or `v1` for the core group.
    pub api_version: String,
    /// The object's kind.
    pub kind: String,
    /// `None` for a cluster-scoped object.
    pub namespace: Option<String>,
    /// The object's name.
    pub name: String,
    /// The version last published.
    pub resource_version: String,
}

impl IndexEntry {
    /// What the index records of the version `c` publishes.
    pub fn of(c: &Change) -> Self {
        Self {
            api_version: c.stream.resource.api_version(),
            kind: c.stream.resource.kind.clone(),
            namespace: c.object.namespace.clone(),
            name: c.object.name.clone(),
            resource_version: c.object.resource_version.clone(),
        }
    }

    /// The object as a Deleted event for it reports it when only its identity is known
    /// (it vanished while nobody watched): reference and `data`.
    pub fn identity(&self, uid: &str) -> (ObjectRef, Value) {
        let object = ObjectRef {
            uid: uid.to_owned(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            resource_version: self.resource_version.clone(),
        };
        let data = serde_json::json!({
            "apiVersion": self.api_version,
            "kind": self.kind,
            "metadata": {
                "namespace": self.namespace,
                "name": self.name,
                "uid": uid,
                "resourceVersion": self.resource_version,
            }
        });
        (object, data)
    }
}

/// A write-ahead row: a version about to be handed to the sink, recorded before the
/// hand-over, with the type of the event sent at it, so that a relist after a crash repeats
/// exactly that event (same id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SentEntry {
    /// The version sent, as the index would record it.
    #[serde(flatten)]
    pub entry: IndexEntry,
    /// `None` only in rows written before the type was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_as: Option<ChangeType>,
}

impl SentEntry {
    /// The write-ahead row of the event `c`.
    pub fn of(c: &Change) -> Self {
        Self {
            entry: IndexEntry::of(c),
            sent_as: Some(c.change),
        }
    }
}

/// A stream's view of what it has sent, as its watch loop keeps it: the index of what was
/// sent (acknowledged or not), and the versions in doubt after a crash (handed to the sink,
/// maybe downstream, not in the committed index). The watch loop records every change it
/// sends; the relist diff ([`mod@super::reconcile`]) reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Index {
    sent: HashMap<String, IndexEntry>,
    in_doubt: HashMap<String, SentEntry>,
}

impl Index {
    /// The committed index and the write-ahead rows of a stored checkpoint.
    pub fn new(sent: HashMap<String, IndexEntry>, in_doubt: HashMap<String, SentEntry>) -> Self {
        Self { sent, in_doubt }
    }

    /// The entry of `uid`, if it was sent.
    pub fn get(&self, uid: &str) -> Option<&IndexEntry> {
        self.sent.get(uid)
    }

    /// The in-doubt row of `uid`, if any.
    pub fn in_doubt(&self, uid: &str) -> Option<&SentEntry> {
        self.in_doubt.get(uid)
    }

    /// Objects indexed.
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    /// Nothing indexed and nothing in doubt.
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty() && self.in_doubt.is_empty()
    }

    /// Every uid indexed or in doubt, sorted, each once.
    pub fn uids(&self) -> Vec<&str> {
        let mut uids: Vec<&str> = self
            .sent
            .keys()
            .chain(self.in_doubt.keys())
            .map(String::as_str)
            .collect();
        uids.sort_unstable();
        uids.dedup();
        uids
    }

    /// The newest version known of `uid`: in doubt (newer than the index) or indexed.
    pub fn newest(&self, uid: &str) -> Option<&IndexEntry> {
        self.in_doubt
            .get(uid)
            .map(|s| &s.entry)
            .or_else(|| self.sent.get(uid))
    }

    /// Records that `c` is being sent: a newer event of an object supersedes whatever was
    /// in doubt about it; a Deleted leaves the index.
    pub fn record(&mut self, c: &Change) {
        self.in_doubt.remove(&c.object.uid);
        match c.change {
            ChangeType::Deleted => {
                self.sent.remove(&c.object.uid);
            }
            _ => {
                self.sent.insert(c.object.uid.clone(), IndexEntry::of(c));
            }
        }
    }

    /// Forgets the in-doubt rows (a completed list has settled each of them).
    pub fn settle(&mut self) {
        self.in_doubt.clear();
    }
}
