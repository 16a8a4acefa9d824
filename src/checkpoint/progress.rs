//! Checkpoint progress of one stream: what each acknowledged item does to its checkpoint,
//! and what was acknowledged but not committed yet. The publish stage resolves items in
//! send order (invariant 2: the checkpoint moves only behind the contiguous acknowledgement
//! watermark) and applies each one's [`Progress`] here; commits take the batch.

use std::collections::HashMap;

use crate::event::{ChangeType, Event};

use super::CommitBatch;
use super::index::IndexEntry;

/// What one item does to the checkpoint once it and every item before it are settled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// uid → `Some(entry)` to index, `None` to forget.
    pub index: Option<(String, Option<IndexEntry>)>,
    /// The resourceVersion the stream is complete up to after this item.
    pub advance: Option<String>,
}

impl Progress {
    /// Only moves the resourceVersion (a bookmark, the end of a list).
    pub fn advance(rv: String) -> Self {
        Self {
            index: None,
            advance: Some(rv),
        }
    }

    /// The index change `event` stands for (a marker has none), and `advance`.
    pub fn of(event: &Event, advance: Option<String>) -> Self {
        let index = match event {
            Event::Object(c) => Some(match c.change {
                ChangeType::Deleted => (c.object.uid.clone(), None),
                _ => (c.object.uid.clone(), Some(IndexEntry::of(c))),
            }),
            Event::Relisted(_) => None,
        };
        Self { index, advance }
    }
}

/// Checkpoint changes acknowledged but not yet committed.
#[derive(Debug, Default)]
pub struct Uncommitted {
    index: HashMap<String, Option<IndexEntry>>,
    resource_version: Option<String>,
}

impl Uncommitted {
    /// Adds one settled item's progress (later items win).
    pub fn apply(&mut self, p: Progress) {
        if let Some((uid, entry)) = p.index {
            self.index.insert(uid, entry);
        }
        if let Some(rv) = p.advance {
            self.resource_version = Some(rv);
        }
    }

    /// Nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty() && self.resource_version.is_none()
    }

    /// Everything, as one batch for the store.
    pub fn take_batch(&mut self) -> CommitBatch {
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

    /// Puts back a batch whose commit failed, for the next attempt; what was settled since
    /// is newer and wins over it.
    pub fn restore(&mut self, batch: CommitBatch) {
        for (uid, e) in batch.upserts {
            self.index.entry(uid).or_insert(Some(e));
        }
        for uid in batch.removals {
            self.index.entry(uid).or_insert(None);
        }
        if self.resource_version.is_none() {
            self.resource_version = batch.resource_version;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(rv: &str) -> IndexEntry {
        IndexEntry {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: None,
            name: "n".into(),
            resource_version: rv.into(),
        }
    }

    #[test]
    fn later_progress_wins_and_a_batch_holds_the_last_of_each() {
        let mut u = Uncommitted::default();
        assert!(u.is_empty());
        u.apply(Progress {
            index: Some(("a".into(), Some(entry("1")))),
            advance: Some("1".into()),
        });
        u.apply(Progress {
            index: Some(("a".into(), None)),
            advance: None,
        });
        u.apply(Progress::advance("3".into()));
        let b = u.take_batch();
        assert_eq!(b.resource_version.as_deref(), Some("3"));
        assert_eq!(b.removals, ["a"]);
        assert!(b.upserts.is_empty());
        assert!(u.is_empty());
    }

    #[test]
    fn a_restored_failed_batch_loses_to_what_was_settled_since() {
        let mut u = Uncommitted::default();
        u.apply(Progress {
            index: Some(("a".into(), Some(entry("1")))),
            advance: Some("1".into()),
        });
        u.apply(Progress {
            index: Some(("b".into(), Some(entry("1")))),
            advance: None,
        });
        let failed = u.take_batch();
        u.apply(Progress {
            index: Some(("a".into(), Some(entry("2")))),
            advance: Some("2".into()),
        });
        u.restore(failed);
        let mut b = u.take_batch();
        b.upserts.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(b.resource_version.as_deref(), Some("2"));
        assert_eq!(
            b.upserts,
            [("a".to_owned(), entry("2")), ("b".to_owned(), entry("1"))]
        );
    }
}
