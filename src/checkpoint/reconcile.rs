//! The reconciling relist diff (invariant 5), as pure logic: what a list means against the
//! index of what the stream already sent. No I/O: the watch loop feeds it the listed
//! objects page by page and publishes what it decides.
//!
//! The rules:
//! - indexed at the listed version: unchanged, nothing to publish;
//! - in doubt at the listed version (handed to the sink before a crash, maybe downstream):
//!   repeat exactly the event that was sent (same type, so the same id) — a duplicate at
//!   worst; a new id at the same version (`added` after a `modified`) would read as a
//!   version regression downstream;
//! - neither indexed nor in doubt: Added; otherwise Modified;
//! - indexed or in doubt but not listed: it vanished while nobody watched (or left the
//!   selector): Deleted, reported at its newest known version, so that the stream never goes
//!   back in versions.

use std::collections::HashSet;

use crate::event::{ChangeType, ObjectRef};

use super::index::{Index, IndexEntry};

/// The counts a relist marker announces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelistCounts {
    /// Objects published as Added.
    pub added: u64,
    /// Objects published as Modified.
    pub modified: u64,
    /// Objects published as Deleted.
    pub deleted: u64,
    /// Listed objects already indexed at their listed version.
    pub unchanged: u64,
}

/// The outcome of a whole list: the change of each listed object (in list order; `None`
/// when unchanged), and the objects that vanished, by uid, each with its newest known
/// version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelistPlan {
    /// One entry per listed object, in list order.
    pub changes: Vec<Option<ChangeType>>,
    /// Vanished objects, sorted by uid.
    pub deletions: Vec<(String, IndexEntry)>,
    /// What the marker announces.
    pub counts: RelistCounts,
}

/// Diffs a list read page by page against an index: [`Reconcile::observe`] each listed
/// object as it arrives, then [`Reconcile::vanished`] once the last page is in. The index
/// may record the changes of objects already observed meanwhile (an initial list sends as it
/// reads): each object is listed once, so that changes no other object's outcome.
#[derive(Debug, Default)]
pub struct Reconcile {
    seen: HashSet<String>,
    counts: RelistCounts,
}

impl Reconcile {
    /// The change `object` stands for against `index` (`None`: already published at this
    /// version).
    pub fn observe(&mut self, index: &Index, object: &ObjectRef) -> Option<ChangeType> {
        self.seen.insert(object.uid.clone());
        let indexed = index.get(&object.uid);
        let sent = index.in_doubt(&object.uid);
        let change = match (indexed, sent) {
            (Some(e), _) if e.resource_version == object.resource_version => {
                self.counts.unchanged += 1;
                return None;
            }
            (_, Some(s)) if s.entry.resource_version == object.resource_version => {
                match s.sent_as {
                    Some(c @ (ChangeType::Added | ChangeType::Modified)) => c,
                    _ if indexed.is_some() => ChangeType::Modified,
                    _ => ChangeType::Added,
                }
            }
            (None, None) => ChangeType::Added,
            _ => ChangeType::Modified,
        };
        match change {
            ChangeType::Added => self.counts.added += 1,
            _ => self.counts.modified += 1,
        }
        Some(change)
    }

    /// The objects indexed or in doubt that the list did not have, sorted by uid, each with
    /// its newest known version; and the final counts.
    pub fn vanished(mut self, index: &Index) -> (Vec<(String, IndexEntry)>, RelistCounts) {
        let deletions: Vec<(String, IndexEntry)> = index
            .uids()
            .into_iter()
            .filter(|uid| !self.seen.contains(*uid))
            .map(|uid| {
                let entry = index.newest(uid).expect("indexed or in doubt").clone();
                (uid.to_owned(), entry)
            })
            .collect();
        self.counts.deleted = deletions.len() as u64;
        (deletions, self.counts)
    }
}

/// The whole diff of `listed` against `index` at once.
pub fn reconcile<'o>(index: &Index, listed: impl IntoIterator<Item = &'o ObjectRef>) -> RelistPlan {
    let mut r = Reconcile::default();
    let changes = listed.into_iter().map(|o| r.observe(index, o)).collect();
    let (deletions, counts) = r.vanished(index);
    RelistPlan {
        changes,
        deletions,
        counts,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::checkpoint::SentEntry;

    fn entry(name: &str, rv: &str) -> IndexEntry {
        IndexEntry {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("ns".into()),
            name: name.into(),
            resource_version: rv.into(),
        }
    }

    fn sent(name: &str, rv: &str, sent_as: Option<ChangeType>) -> SentEntry {
        SentEntry {
            entry: entry(name, rv),
            sent_as,
        }
    }

    fn obj(uid: &str, rv: &str) -> ObjectRef {
        ObjectRef {
            uid: uid.into(),
            namespace: Some("ns".into()),
            name: format!("name-{uid}"),
            resource_version: rv.into(),
        }
    }

    fn index(sent_rows: &[(&str, &str)], doubt: &[(&str, &str, Option<ChangeType>)]) -> Index {
        Index::new(
            sent_rows
                .iter()
                .map(|(uid, rv)| (uid.to_string(), entry(&format!("name-{uid}"), rv)))
                .collect(),
            doubt
                .iter()
                .map(|(uid, rv, c)| (uid.to_string(), sent(&format!("name-{uid}"), rv, *c)))
                .collect::<HashMap<_, _>>(),
        )
    }

    #[test]
    fn a_first_list_adds_everything() {
        let plan = reconcile(&Index::default(), &[obj("a", "1"), obj("b", "2")]);
        assert_eq!(
            plan.changes,
            [Some(ChangeType::Added), Some(ChangeType::Added)]
        );
        assert!(plan.deletions.is_empty());
        assert_eq!(
            plan.counts,
            RelistCounts {
                added: 2,
                ..Default::default()
            }
        );
    }

    #[test]
    fn unchanged_modified_added_and_vanished_objects_are_told_apart() {
        let idx = index(&[("a", "1"), ("b", "2"), ("gone", "3")], &[]);
        let plan = reconcile(&idx, &[obj("a", "1"), obj("b", "5"), obj("new", "6")]);
        assert_eq!(
            plan.changes,
            [None, Some(ChangeType::Modified), Some(ChangeType::Added)]
        );
        assert_eq!(
            plan.deletions,
            [("gone".to_owned(), entry("name-gone", "3"))]
        );
        assert_eq!(
            plan.counts,
            RelistCounts {
                added: 1,
                modified: 1,
                deleted: 1,
                unchanged: 1
            }
        );
    }

    #[test]
    fn a_recreated_name_is_a_delete_of_the_old_uid_and_an_add_of_the_new() {
        let idx = index(&[("old", "1")], &[]);
        let mut recreated = obj("new", "9");
        recreated.name = "name-old".into();
        let plan = reconcile(&idx, &[recreated]);
        assert_eq!(plan.changes, [Some(ChangeType::Added)]);
        assert_eq!(plan.deletions[0].0, "old");
    }

    /// Regression (the compaction scenario): an object created and modified after the last
    /// commit is downstream as added@v1, modified@v2; a relist that finds it at v2 must
    /// repeat modified@v2 (same id), not publish added@v2.
    #[test]
    fn an_in_doubt_version_is_repeated_with_the_type_it_was_sent_as() {
        let idx = index(&[], &[("a", "2", Some(ChangeType::Modified))]);
        let plan = reconcile(&idx, &[obj("a", "2")]);
        assert_eq!(plan.changes, [Some(ChangeType::Modified)]);
        let idx = index(&[], &[("a", "2", Some(ChangeType::Added))]);
        assert_eq!(
            reconcile(&idx, &[obj("a", "2")]).changes,
            [Some(ChangeType::Added)]
        );
    }

    #[test]
    fn an_in_doubt_row_without_its_type_is_modified_if_indexed_else_added() {
        let idx = index(&[("a", "1")], &[("a", "2", None)]);
        assert_eq!(
            reconcile(&idx, &[obj("a", "2")]).changes,
            [Some(ChangeType::Modified)]
        );
        let idx = index(&[], &[("a", "2", None)]);
        assert_eq!(
            reconcile(&idx, &[obj("a", "2")]).changes,
            [Some(ChangeType::Added)]
        );
    }

    /// Regression: the relist after a kill -9 lost the deletes of objects published after
    /// the last checkpoint commit (in doubt, never indexed).
    #[test]
    fn a_vanished_in_doubt_object_is_deleted_at_its_newest_version() {
        let idx = index(
            &[("a", "1")],
            &[
                ("a", "4", Some(ChangeType::Modified)),
                ("b", "5", Some(ChangeType::Added)),
            ],
        );
        let plan = reconcile(&idx, std::iter::empty());
        assert_eq!(
            plan.deletions,
            [
                ("a".to_owned(), entry("name-a", "4")),
                ("b".to_owned(), entry("name-b", "5"))
            ]
        );
        assert_eq!(plan.counts.deleted, 2);
    }

    #[test]
    fn an_in_doubt_version_older_than_the_listed_one_is_a_modification() {
        let idx = index(&[], &[("a", "2", Some(ChangeType::Added))]);
        assert_eq!(
            reconcile(&idx, &[obj("a", "7")]).changes,
            [Some(ChangeType::Modified)]
        );
    }
}
