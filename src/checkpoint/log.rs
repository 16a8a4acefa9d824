//! The state log: how a log backend (the Kafka state topic) holds every stream's checkpoint,
//! one compacted record per key, and how that state is rebuilt by reading the log to its
//! end. Pure: no I/O. The records a transaction adds are accumulated in a [`LogDelta`]
//! (the last change of each key wins) and written just before it commits.
//!
//! Keys are JSON arrays, readable with any console consumer and unambiguous whatever a
//! stream key or uid holds:
//!
//! | key | value |
//! |---|---|
//! | `["format"]` | `{"formatVersion": 1}` |
//! | `["redactionKey"]` | `{"key": "<hex>"}` |
//! | `["stream", <stream key>]` | `{"resourceVersion": "…"}` |
//! | `["index", <stream key>, <uid>]` | an [`IndexEntry`]; a tombstone (no value) when the object leaves the index |

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::{IndexEntry, Progress, StreamCheckpoint, StreamRecord};

/// The state-log format this build reads and writes.
pub const LOG_FORMAT_VERSION: u64 = 1;

/// A record of the state log that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A key that is not one of the forms above.
    #[error("state record with an unknown key {0:?}")]
    Key(String),
    /// A value that does not decode for its key.
    #[error("state record {key}: {source}")]
    Value {
        /// The key, as text.
        key: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// The log was written by a newer kubewire.
    #[error(
        "state format version {found}, but this kubewire supports up to {supported}: use a newer kubewire or another state topic"
    )]
    UnsupportedFormat {
        /// The version the log records.
        found: u64,
        /// The highest version this build reads.
        supported: u64,
    },
}

/// A key of the state log.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LogKey {
    /// The format version.
    Format,
    /// The Secret redaction key shared by every replica.
    RedactionKey,
    /// A stream's resourceVersion.
    Stream(String),
    /// One object of a stream's index: (stream key, uid).
    Entry(String, String),
}

impl LogKey {
    /// The record key.
    pub fn encode(&self) -> Vec<u8> {
        let parts: Vec<&str> = match self {
            LogKey::Format => vec!["format"],
            LogKey::RedactionKey => vec!["redactionKey"],
            LogKey::Stream(s) => vec!["stream", s],
            LogKey::Entry(s, uid) => vec!["index", s, uid],
        };
        serde_json::to_vec(&parts).expect("strings serialize")
    }

    /// Parses a record key.
    pub fn decode(bytes: &[u8]) -> Result<LogKey, LogError> {
        let text = || String::from_utf8_lossy(bytes).into_owned();
        let parts: Vec<String> =
            serde_json::from_slice(bytes).map_err(|_| LogError::Key(text()))?;
        let mut parts = parts.into_iter();
        let key = match (parts.next().as_deref(), parts.next(), parts.next()) {
            (Some("format"), None, None) => LogKey::Format,
            (Some("redactionKey"), None, None) => LogKey::RedactionKey,
            (Some("stream"), Some(s), None) => LogKey::Stream(s),
            (Some("index"), Some(s), Some(uid)) => LogKey::Entry(s, uid),
            _ => return Err(LogError::Key(text())),
        };
        if parts.next().is_some() {
            return Err(LogError::Key(text()));
        }
        Ok(key)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FormatRecord {
    format_version: u64,
}

#[derive(Serialize, Deserialize)]
struct KeyRecord {
    key: String,
}

/// One record: key and value bytes (`None`: a tombstone).
pub type LogRecord = (Vec<u8>, Option<Vec<u8>>);

/// The format record every log starts with.
pub fn format_record() -> LogRecord {
    let value = FormatRecord {
        format_version: LOG_FORMAT_VERSION,
    };
    (
        LogKey::Format.encode(),
        Some(serde_json::to_vec(&value).expect("serializes")),
    )
}

/// The record of the shared redaction key.
pub fn redaction_key_record(key: &[u8]) -> LogRecord {
    let value = KeyRecord {
        key: String::from_utf8_lossy(key).into_owned(),
    };
    (
        LogKey::RedactionKey.encode(),
        Some(serde_json::to_vec(&value).expect("serializes")),
    )
}

/// Every stream's state as the log holds it, rebuilt record by record.
#[derive(Debug, Default)]
pub struct LogState {
    format: Option<u64>,
    redaction_key: Option<Vec<u8>>,
    streams: HashMap<String, StreamCheckpoint>,
    records: u64,
}

impl LogState {
    /// Applies one record read back from the log (in log order; a later record of a key
    /// replaces an earlier one, a tombstone removes it).
    pub fn apply(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), LogError> {
        self.records += 1;
        let parsed = LogKey::decode(key)?;
        let bad = |source| LogError::Value {
            key: String::from_utf8_lossy(key).into_owned(),
            source,
        };
        match (parsed, value) {
            (LogKey::Format, Some(v)) => {
                let found = serde_json::from_slice::<FormatRecord>(v)
                    .map_err(bad)?
                    .format_version;
                if found > LOG_FORMAT_VERSION {
                    return Err(LogError::UnsupportedFormat {
                        found,
                        supported: LOG_FORMAT_VERSION,
                    });
                }
                self.format = Some(found);
            }
            (LogKey::Format, None) => self.format = None,
            (LogKey::RedactionKey, Some(v)) => {
                let r: KeyRecord = serde_json::from_slice(v).map_err(bad)?;
                self.redaction_key = Some(r.key.into_bytes());
            }
            (LogKey::RedactionKey, None) => self.redaction_key = None,
            (LogKey::Stream(s), Some(v)) => {
                let r: StreamRecord = serde_json::from_slice(v).map_err(bad)?;
                self.streams.entry(s).or_default().resource_version = r.resource_version;
            }
            (LogKey::Stream(s), None) => {
                if let Some(c) = self.streams.get_mut(&s) {
                    c.resource_version = None;
                    if c.index.is_empty() {
                        self.streams.remove(&s);
                    }
                }
            }
            (LogKey::Entry(s, uid), Some(v)) => {
                let e: IndexEntry = serde_json::from_slice(v).map_err(bad)?;
                self.streams.entry(s).or_default().index.insert(uid, e);
            }
            (LogKey::Entry(s, uid), None) => {
                if let Some(c) = self.streams.get_mut(&s) {
                    c.index.remove(&uid);
                    if c.index.is_empty() && c.resource_version.is_none() {
                        self.streams.remove(&s);
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies what a committed transaction wrote.
    pub fn commit(&mut self, delta: &LogDelta) {
        for (stream, rv) in &delta.versions {
            self.streams
                .entry(stream.clone())
                .or_default()
                .resource_version = Some(rv.clone());
        }
        for ((stream, uid), entry) in &delta.index {
            match entry {
                Some(e) => {
                    self.streams
                        .entry(stream.clone())
                        .or_default()
                        .index
                        .insert(uid.clone(), e.clone());
                }
                None => {
                    if let Some(c) = self.streams.get_mut(stream) {
                        c.index.remove(uid);
                    }
                }
            }
        }
        if let Some(key) = &delta.redaction_key {
            self.redaction_key = Some(key.clone());
        }
        if delta.format {
            self.format = Some(LOG_FORMAT_VERSION);
        }
    }

    /// A stream's checkpoint (empty if the log holds none). Nothing is ever in doubt: what
    /// the log holds committed with the events it accounts for.
    pub fn load(&self, stream: &str) -> StreamCheckpoint {
        self.streams.get(stream).cloned().unwrap_or_default()
    }

    /// Whether the log has its format record (a new log has none).
    pub fn has_format(&self) -> bool {
        self.format.is_some()
    }

    /// The shared redaction key, if the log holds one.
    pub fn redaction_key(&self) -> Option<&[u8]> {
        self.redaction_key.as_deref()
    }

    /// (stream key, resourceVersion, index size) of every stream, sorted by key.
    pub fn summary(&self) -> Vec<(String, Option<String>, usize)> {
        let mut out: Vec<_> = self
            .streams
            .iter()
            .map(|(k, c)| (k.clone(), c.resource_version.clone(), c.index.len()))
            .collect();
        out.sort();
        out
    }

    /// Records read back so far.
    pub fn records_read(&self) -> u64 {
        self.records
    }

    /// The tombstones that remove `stream` from the log.
    pub fn removal(&self, stream: &str) -> Vec<LogRecord> {
        let mut out = vec![(LogKey::Stream(stream.to_owned()).encode(), None)];
        if let Some(c) = self.streams.get(stream) {
            let mut uids: Vec<&String> = c.index.keys().collect();
            uids.sort();
            out.extend(
                uids.into_iter()
                    .map(|uid| (LogKey::Entry(stream.to_owned(), uid.clone()).encode(), None)),
            );
        }
        out
    }
}

/// What one transaction changes in the state: per stream the last resourceVersion, per
/// object the last index change. Written as records just before the transaction commits.
#[derive(Debug, Default)]
pub struct LogDelta {
    versions: BTreeMap<String, String>,
    index: BTreeMap<(String, String), Option<IndexEntry>>,
    redaction_key: Option<Vec<u8>>,
    format: bool,
}

impl LogDelta {
    /// Adds one settled item's progress of `stream` (later items win).
    pub fn apply(&mut self, stream: &str, p: &Progress) {
        if let Some((uid, entry)) = &p.index {
            self.index
                .insert((stream.to_owned(), uid.clone()), entry.clone());
        }
        if let Some(rv) = &p.advance {
            self.versions.insert(stream.to_owned(), rv.clone());
        }
    }

    /// Also writes the format record (a new log).
    pub fn with_format(&mut self) {
        self.format = true;
    }

    /// Also writes the shared redaction key.
    pub fn with_redaction_key(&mut self, key: Vec<u8>) {
        self.redaction_key = Some(key);
    }

    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
            && self.index.is_empty()
            && self.redaction_key.is_none()
            && !self.format
    }

    /// The records, in key order: format and key first, then per stream its index
    /// changes and its version.
    pub fn records(&self) -> Vec<LogRecord> {
        let mut out = Vec::with_capacity(self.index.len() + self.versions.len() + 2);
        if self.format {
            out.push(format_record());
        }
        if let Some(k) = &self.redaction_key {
            out.push(redaction_key_record(k));
        }
        for ((stream, uid), entry) in &self.index {
            let key = LogKey::Entry(stream.clone(), uid.clone()).encode();
            let value = entry
                .as_ref()
                .map(|e| serde_json::to_vec(e).expect("an index entry serializes"));
            out.push((key, value));
        }
        for (stream, rv) in &self.versions {
            let value = StreamRecord {
                resource_version: Some(rv.clone()),
            };
            out.push((
                LogKey::Stream(stream.clone()).encode(),
                Some(serde_json::to_vec(&value).expect("serializes")),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, rv: &str) -> IndexEntry {
        IndexEntry {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("ns".into()),
            name: name.into(),
            resource_version: rv.into(),
        }
    }

    fn replay(records: &[LogRecord]) -> LogState {
        let mut s = LogState::default();
        for (k, v) in records {
            s.apply(k, v.as_deref()).unwrap();
        }
        s
    }

    #[test]
    fn keys_round_trip_whatever_a_stream_key_holds() {
        for key in [
            LogKey::Format,
            LogKey::RedactionKey,
            LogKey::Stream("c/v1/configmaps/ns/[\"x\"]".into()),
            LogKey::Entry("a\"b,c".into(), "uid-1".into()),
        ] {
            assert_eq!(LogKey::decode(&key.encode()).unwrap(), key);
        }
        for bad in [
            &b"stream"[..],
            b"[\"stream\"]",
            b"[\"index\",\"s\"]",
            b"[\"x\"]",
        ] {
            assert!(
                LogKey::decode(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_replayed_delta_rebuilds_what_the_writer_committed() {
        let mut d = LogDelta::default();
        d.with_format();
        d.with_redaction_key(b"abcd".to_vec());
        d.apply(
            "s1",
            &Progress {
                index: Some(("u1".into(), Some(entry("a", "5")))),
                advance: None,
            },
        );
        d.apply(
            "s1",
            &Progress {
                index: Some(("u2".into(), Some(entry("b", "6")))),
                advance: Some("6".into()),
            },
        );
        // A later change of the same object in the same transaction wins.
        d.apply(
            "s1",
            &Progress {
                index: Some(("u1".into(), Some(entry("a", "7")))),
                advance: Some("7".into()),
            },
        );
        let mut writer = LogState::default();
        writer.commit(&d);
        let reader = replay(&d.records());
        for s in [&writer, &reader] {
            assert!(s.has_format());
            assert_eq!(s.redaction_key(), Some(&b"abcd"[..]));
            let c = s.load("s1");
            assert_eq!(c.resource_version.as_deref(), Some("7"));
            assert_eq!(c.index["u1"].resource_version, "7");
            assert_eq!(c.index["u2"].resource_version, "6");
            assert!(c.in_doubt.is_empty());
        }
        // One record per key: 2 index entries, 1 version, format, key.
        assert_eq!(d.records().len(), 5);
    }

    #[test]
    fn a_tombstone_removes_an_object_and_a_removal_forgets_the_stream() {
        let mut d = LogDelta::default();
        d.apply(
            "s",
            &Progress {
                index: Some(("u1".into(), Some(entry("a", "1")))),
                advance: Some("1".into()),
            },
        );
        d.apply(
            "s",
            &Progress {
                index: Some(("u2".into(), Some(entry("b", "2")))),
                advance: Some("2".into()),
            },
        );
        let mut log = d.records();
        let mut d2 = LogDelta::default();
        d2.apply(
            "s",
            &Progress {
                index: Some(("u1".into(), None)),
                advance: Some("3".into()),
            },
        );
        log.extend(d2.records());
        let state = replay(&log);
        let c = state.load("s");
        assert_eq!(c.index.keys().collect::<Vec<_>>(), ["u2"]);
        assert_eq!(c.resource_version.as_deref(), Some("3"));
        assert_eq!(state.summary(), [("s".into(), Some("3".into()), 1)]);

        log.extend(state.removal("s"));
        let state = replay(&log);
        assert_eq!(state.load("s"), StreamCheckpoint::default());
        assert!(state.summary().is_empty());
    }

    #[test]
    fn a_relist_cut_over_two_transactions_keeps_the_old_version_until_its_end() {
        // Part one: objects indexed, the version not advanced (a relist's items carry no
        // advance until the last).
        let mut part1 = LogDelta::default();
        part1.apply(
            "s",
            &Progress {
                index: Some(("u1".into(), Some(entry("a", "10")))),
                advance: None,
            },
        );
        let mut log = vec![(
            LogKey::Stream("s".into()).encode(),
            Some(br#"{"resourceVersion":"4"}"#.to_vec()),
        )];
        log.extend(part1.records());
        let crashed = replay(&log);
        let c = crashed.load("s");
        assert_eq!(
            c.resource_version.as_deref(),
            Some("4"),
            "resumes the relist"
        );
        assert_eq!(
            c.index["u1"].resource_version, "10",
            "what was committed is kept"
        );
    }

    #[test]
    fn a_newer_format_is_refused_and_a_bad_value_is_named() {
        let mut s = LogState::default();
        let e = s
            .apply(b"[\"format\"]", Some(br#"{"formatVersion":99}"#))
            .unwrap_err();
        assert!(e.to_string().contains("format version 99"), "{e}");
        let e = s
            .apply(b"[\"stream\",\"s\"]", Some(b"not json"))
            .unwrap_err();
        assert!(e.to_string().contains("[\"stream\",\"s\"]"), "{e}");
    }
}
