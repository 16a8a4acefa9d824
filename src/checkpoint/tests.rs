//! Tests of the embedded store.

use super::*;
use crate::checkpoint::{IndexEntry, load_or_create_key};

fn entry(name: &str, rv: &str) -> IndexEntry {
    IndexEntry {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: Some("demo".into()),
        name: name.into(),
        resource_version: rv.into(),
    }
}

fn sent(entry: IndexEntry, sent_as: Option<crate::event::ChangeType>) -> SentEntry {
    SentEntry { entry, sent_as }
}

/// A write-ahead row written before `SentEntry` was its own type (an index entry with
/// `sentAs` inside) still loads, with its type.
#[test]
fn write_ahead_rows_keep_their_stored_form() {
    let row = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap", "namespace": "ns", "name": "a",
        "resourceVersion": "5", "sentAs": "modified"
    });
    let parsed: SentEntry = serde_json::from_value(row.clone()).unwrap();
    assert_eq!(parsed.sent_as, Some(crate::event::ChangeType::Modified));
    assert_eq!(parsed.entry.name, "a");
    assert_eq!(serde_json::to_value(&parsed).unwrap(), row);
}

fn batch(rv: Option<&str>, upserts: &[(&str, IndexEntry)], removals: &[&str]) -> CommitBatch {
    CommitBatch {
        resource_version: rv.map(Into::into),
        upserts: upserts
            .iter()
            .map(|(u, e)| ((*u).to_owned(), e.clone()))
            .collect(),
        removals: removals.iter().map(|s| (*s).to_owned()).collect(),
    }
}

const S1: &str = "default|/v1/configmaps|demo||";
const S2: &str = "default|/v1/configmaps|demo|app=web|";

#[test]
fn commit_then_reopen_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/cp.redb");
    {
        let store = Store::open(&path).unwrap();
        assert_eq!(store.load(S1).unwrap(), StreamCheckpoint::default());
        store
            .commit(
                S1,
                &batch(
                    Some("10"),
                    &[("u1", entry("a", "9")), ("u2", entry("b", "10"))],
                    &[],
                ),
            )
            .unwrap();
    }
    let store = Store::open(&path).unwrap();
    let cp = store.load(S1).unwrap();
    assert_eq!(cp.resource_version.as_deref(), Some("10"));
    assert_eq!(cp.index.len(), 2);
    assert_eq!(cp.index["u1"], entry("a", "9"));
    assert_eq!(cp.index["u2"], entry("b", "10"));
    assert_eq!(store.streams().unwrap(), [S1]);
}

#[test]
fn upserts_replace_and_removals_remove() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("cp.redb")).unwrap();
    store
        .commit(
            S1,
            &batch(
                Some("1"),
                &[("u1", entry("a", "1")), ("u2", entry("b", "1"))],
                &[],
            ),
        )
        .unwrap();
    store
        .commit(
            S1,
            &batch(
                Some("2"),
                &[("u1", entry("a", "2"))],
                &["u2", "never-there"],
            ),
        )
        .unwrap();
    let cp = store.load(S1).unwrap();
    assert_eq!(cp.resource_version.as_deref(), Some("2"));
    assert_eq!(cp.index.len(), 1);
    assert_eq!(cp.index["u1"].resource_version, "2");
}

#[test]
fn batch_without_version_keeps_the_stored_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("cp.redb")).unwrap();
    store.commit(S1, &batch(Some("5"), &[], &[])).unwrap();
    store
        .commit(S1, &batch(None, &[("u1", entry("a", "6"))], &[]))
        .unwrap();
    let cp = store.load(S1).unwrap();
    assert_eq!(cp.resource_version.as_deref(), Some("5"));
    assert_eq!(cp.index.len(), 1);
    // An index-only first commit records the stream without a version.
    store
        .commit(S2, &batch(None, &[("u9", entry("z", "1"))], &[]))
        .unwrap();
    assert_eq!(store.load(S2).unwrap().resource_version, None);
    assert_eq!(store.streams().unwrap(), [S2, S1]);
}

#[test]
fn streams_do_not_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("cp.redb")).unwrap();
    // S2 has S1 as a prefix: the NUL separator keeps them apart.
    let s1_prefixed = format!("{S1}x");
    store
        .commit(S1, &batch(Some("1"), &[("u1", entry("a", "1"))], &[]))
        .unwrap();
    store
        .commit(
            &s1_prefixed,
            &batch(Some("7"), &[("u1", entry("other", "7"))], &[]),
        )
        .unwrap();
    store
        .commit(S2, &batch(Some("3"), &[("u3", entry("c", "3"))], &[]))
        .unwrap();
    let a = store.load(S1).unwrap();
    assert_eq!(a.index.len(), 1);
    assert_eq!(a.index["u1"].name, "a");
    let b = store.load(&s1_prefixed).unwrap();
    assert_eq!(b.index["u1"].name, "other");
    assert_eq!(b.resource_version.as_deref(), Some("7"));
    assert_eq!(
        store.load(S2).unwrap().index.keys().collect::<Vec<_>>(),
        ["u3"]
    );

    assert!(store.remove_stream(S1).unwrap());
    assert!(!store.remove_stream(S1).unwrap());
    assert_eq!(store.load(S1).unwrap(), StreamCheckpoint::default());
    assert_eq!(store.load(&s1_prefixed).unwrap().index.len(), 1);
    assert_eq!(store.load(S2).unwrap().index.len(), 1);
    assert_eq!(store.streams().unwrap(), [S2, s1_prefixed.as_str()]);
}

#[test]
fn a_failing_batch_is_not_applied_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("cp.redb")).unwrap();
    store
        .commit(S1, &batch(Some("1"), &[("u1", entry("a", "1"))], &[]))
        .unwrap();
    // A write transaction that is dropped without commit (as on an error midway) leaves
    // nothing behind.
    {
        let tx = store.db.begin_write().unwrap();
        {
            let mut index = tx.open_table(INDEX).unwrap();
            index
                .insert(index_key(S1, "u2").as_str(), b"{}".as_slice())
                .unwrap();
            let mut streams = tx.open_table(STREAMS).unwrap();
            streams
                .insert(S1, b"{\"resourceVersion\":\"2\"}".as_slice())
                .unwrap();
        }
        drop(tx);
    }
    let cp = store.load(S1).unwrap();
    assert_eq!(cp.resource_version.as_deref(), Some("1"));
    assert_eq!(cp.index.len(), 1);
    // An invalid key fails before anything is written.
    assert!(matches!(
        store.commit("bad\0key", &batch(Some("9"), &[], &[])),
        Err(CheckpointError::InvalidStreamKey(_))
    ));
    assert!(matches!(
        store.load(""),
        Err(CheckpointError::InvalidStreamKey(_))
    ));
}

#[test]
fn a_committed_batch_is_visible_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("cp.redb")).unwrap();
    let upserts: Vec<(String, IndexEntry)> = (0..500)
        .map(|i| (format!("uid-{i}"), entry(&format!("n{i}"), "100")))
        .collect();
    store
        .commit(
            S1,
            &CommitBatch {
                resource_version: Some("100".into()),
                upserts,
                removals: vec![],
            },
        )
        .unwrap();
    let cp = store.load(S1).unwrap();
    assert_eq!(cp.index.len(), 500);
    assert_eq!(cp.resource_version.as_deref(), Some("100"));
}

#[test]
fn newer_format_version_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cp.redb");
    {
        let store = Store::open(&path).unwrap();
        let tx = store.db.begin_write().unwrap();
        tx.open_table(META)
            .unwrap()
            .insert(FORMAT_KEY, FORMAT_VERSION + 1)
            .unwrap();
        tx.commit().unwrap();
    }
    let err = Store::open(&path).unwrap_err();
    assert!(
        matches!(err, CheckpointError::UnsupportedFormat { found, .. } if found == FORMAT_VERSION + 1)
    );
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("format version 2"), "{message}");
}

#[test]
fn second_open_of_the_same_file_says_it_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cp.redb");
    let _first = Store::open(&path).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, CheckpointError::InUse { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "checkpoint store {} is in use (is another kubewire running?)",
            path.display()
        )
    );
}

#[test]
fn a_file_that_is_not_a_store_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cp.redb");
    std::fs::write(
        &path,
        b"this is not a redb file, just some text to fill a page",
    )
    .unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn redaction_key_is_created_once_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/redaction.key");
    let k1 = load_or_create_key(&path).unwrap();
    assert_eq!(k1.len(), 64);
    let k2 = load_or_create_key(&path).unwrap();
    assert_eq!(k1, k2);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let given = dir.path().join("given.key");
    std::fs::write(&given, "my-key\n").unwrap();
    assert_eq!(load_or_create_key(&given).unwrap(), b"my-key");
    std::fs::write(&given, "\n").unwrap();
    assert!(load_or_create_key(&given).is_err());
}

#[test]
fn sent_versions_stay_in_doubt_until_the_index_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cp.redb");
    let store = Store::open(&path).unwrap();
    store
        .record_sent(
            S1,
            &[
                ("u1".into(), sent(entry("a", "5"), None)),
                (
                    "u2".into(),
                    sent(entry("b", "6"), Some(crate::event::ChangeType::Modified)),
                ),
            ],
        )
        .unwrap();
    // u1 acknowledged at the version sent; u2 acknowledged at an older version while a
    // newer one is still in flight; u3 deleted.
    store
        .record_sent(S1, &[("u3".into(), sent(entry("c", "7"), None))])
        .unwrap();
    store
        .commit(
            S1,
            &batch(
                Some("7"),
                &[("u1", entry("a", "5")), ("u2", entry("b", "4"))],
                &["u3"],
            ),
        )
        .unwrap();
    drop(store);
    // A crash here: reopening shows what is still in doubt.
    let cp = Store::open(&path).unwrap().load(S1).unwrap();
    assert_eq!(cp.in_doubt.len(), 1, "{:?}", cp.in_doubt);
    // with the type of the event sent, for the relist to repeat it exactly
    assert_eq!(cp.in_doubt["u2"].entry.resource_version, "6");
    assert_eq!(
        cp.in_doubt["u2"].sent_as,
        Some(crate::event::ChangeType::Modified)
    );
    assert_eq!(cp.index["u2"], entry("b", "4"));
    assert!(
        Store::open(&path)
            .unwrap()
            .load(S2)
            .unwrap()
            .in_doubt
            .is_empty()
    );
}
