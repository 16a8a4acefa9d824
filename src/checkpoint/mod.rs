//! The checkpoint stage (the end of the data flow, after the sink's *ack*): per stream, the
//! last acknowledged resourceVersion and the uid → version index of what was last
//! published, kept by a state backend behind [`StateStore`].
//!
//! - [`index`]: the index entries, the write-ahead rows, and the watch loop's view
//!   ([`Index`]) of what it has sent;
//! - [`mod@reconcile`]: the pure relist diff (invariant 5);
//! - [`progress`]: what an acknowledged item does to the checkpoint, and what is
//!   acknowledged but not committed yet;
//! - the embedded backend, [`Store`] (a redb file);
//! - [`mod@log`]: the state log of the Kafka backend (records, rebuild) and its reads,
//!   [`LogStore`]; the transactional sink writes it (`sink::kafka::txn`).

pub mod index;
pub mod log;
pub mod progress;
pub mod reconcile;
mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use index::{Index, IndexEntry, SentEntry};
pub use progress::{Progress, Uncommitted};
pub use reconcile::{Reconcile, RelistCounts, RelistPlan, reconcile};
pub use store::{FORMAT_VERSION, Store};

use log::LogState;

/// Errors of the checkpoint stage.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// redb's file lock is held (by another process or another `Store` in this one).
    #[error("checkpoint store {} is in use (is another kubewire running?)", path.display())]
    InUse {
        /// The store file.
        path: PathBuf,
    },
    /// redb cannot open or create the store file (other than a held lock).
    #[error("cannot open checkpoint store {}: {source}", path.display())]
    Open {
        /// The store file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: redb::DatabaseError,
    },
    /// The store was written by a newer kubewire (a higher [`FORMAT_VERSION`]).
    #[error(
        "checkpoint store {} has format version {found}, but this kubewire supports up to {supported}; use a newer kubewire or another checkpoint.path",
        path.display()
    )]
    UnsupportedFormat {
        /// The store file.
        path: PathBuf,
        /// The format version the store records.
        found: u64,
        /// The highest format version this build reads.
        supported: u64,
    },
    /// A read or write transaction of the open store failed.
    #[error("checkpoint store {}: {source}", path.display())]
    Storage {
        /// The store file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: Box<redb::Error>,
    },
    /// A stored record does not decode.
    #[error("checkpoint store {}: corrupt record {key:?}: {source}", path.display())]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// The stream key the record belongs to.
        key: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// A stream key that is empty or contains NUL (NUL separates stream key and uid in the
    /// store's keys).
    #[error("invalid stream key {0:?}: must be non-empty and contain no NUL character")]
    InvalidStreamKey(String),
    /// A file operation around the store failed: creating its directory, reading or writing
    /// the redaction key file.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was attempted, as the message's start.
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The stored form of a stream's resourceVersion, the same in both backends: the embedded
/// store's `streams` row and the state log's `["stream", key]` value.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamRecord {
    resource_version: Option<String>,
}

/// A stream's stored state. Empty (no version, no index) for a stream never committed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamCheckpoint {
    /// The resourceVersion to resume watching from.
    pub resource_version: Option<String>,
    /// uid → last published version of each object.
    pub index: HashMap<String, IndexEntry>,
    /// uid → a version handed to the sink whose acknowledgement was not committed yet (it
    /// may or may not be downstream). Empty after a clean shutdown.
    pub in_doubt: HashMap<String, SentEntry>,
}

/// Changes to one stream's checkpoint, committed atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitBatch {
    /// The new resourceVersion; `None` keeps the stored one.
    pub resource_version: Option<String>,
    /// (uid, entry) to insert or replace; applied before `removals`.
    pub upserts: Vec<(String, IndexEntry)>,
    /// uids to remove from the index.
    pub removals: Vec<String>,
}

impl CommitBatch {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.resource_version.is_none() && self.upserts.is_empty() && self.removals.is_empty()
    }
}

/// Where the checkpoints live (a state backend). Blocking: callers on the runtime use
/// `spawn_blocking`.
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// The stored state of `stream_key` (empty if it was never committed).
    fn load(&self, stream_key: &str) -> Result<StreamCheckpoint, CheckpointError>;

    /// Records, durably and before they are handed to the sink, the versions about to be
    /// published (the write-ahead of the index; see [`StreamCheckpoint::in_doubt`]).
    fn record_sent(
        &self,
        stream_key: &str,
        sent: &[(String, SentEntry)],
    ) -> Result<(), CheckpointError>;

    /// Applies `batch` to `stream_key` atomically and durably (all or nothing).
    fn commit(&self, stream_key: &str, batch: &CommitBatch) -> Result<(), CheckpointError>;
}

/// The reads of a log backend (Kafka): the state as read back when the term started, kept
/// current by each committed transaction. Its writes are the sink's: the state goes in the
/// transactions of the events it accounts for, so there is nothing to write ahead and
/// nothing to commit here.
#[derive(Debug)]
pub struct LogStore {
    state: Arc<Mutex<LogState>>,
}

impl LogStore {
    /// The store over `state`.
    pub fn new(state: Arc<Mutex<LogState>>) -> Self {
        Self { state }
    }
}

impl StateStore for LogStore {
    fn load(&self, stream_key: &str) -> Result<StreamCheckpoint, CheckpointError> {
        Ok(self.state.lock().unwrap().load(stream_key))
    }

    fn record_sent(&self, _: &str, _: &[(String, SentEntry)]) -> Result<(), CheckpointError> {
        Ok(())
    }

    fn commit(&self, _: &str, _: &CommitBatch) -> Result<(), CheckpointError> {
        Ok(())
    }
}

/// Reads the Secret redaction key from `path`, creating it (32 random bytes, hex, mode
/// 0600) when missing, so markers stay stable across restarts. Trailing whitespace in the
/// file is not part of the key.
pub fn load_or_create_key(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    let io = |action: &'static str| {
        move |source| CheckpointError::Io {
            action,
            path: path.into(),
            source,
        }
    };
    match std::fs::read(path) {
        Ok(mut bytes) => {
            while bytes.last().is_some_and(u8::is_ascii_whitespace) {
                bytes.pop();
            }
            if bytes.is_empty() {
                return Err(CheckpointError::Io {
                    action: "redaction key file is empty",
                    path: path.into(),
                    source: std::io::Error::from(std::io::ErrorKind::InvalidData),
                });
            }
            Ok(bytes)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(io("cannot create the directory of"))?;
            }
            let key = hex::encode(rand::random::<[u8; 32]>()).into_bytes();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            use std::io::Write;
            let mut file = options
                .open(path)
                .map_err(io("cannot create redaction key"))?;
            file.write_all(&key)
                .and_then(|()| file.write_all(b"\n"))
                .and_then(|()| file.sync_all())
                .map_err(io("cannot write redaction key"))?;
            Ok(key)
        }
        Err(e) => Err(io("cannot read redaction key")(e)),
    }
}
