//! The checkpoint stage (the end of the data flow, after the sink's *ack*): the in-order
//! acknowledgement [`Watermark`], and the embedded [`Store`] that keeps, per stream, the
//! last acknowledged resourceVersion and the uid → version index of what was last
//! published (what a reconciling relist diffs against).
//!
//! # Store layout
//!
//! One redb file for all streams (redb holds a file lock: one kubewire per file). Tables:
//!
//! - `meta`: `format_version` → [`FORMAT_VERSION`]. A file written by a newer format is
//!   refused with an error naming it.
//! - `streams`: stream key → JSON `{"resourceVersion": ...}`.
//! - `index`: stream key ‖ `\0` ‖ uid → JSON [`IndexEntry`]; a stream's index is a prefix
//!   range scan.
//!
//! Every [`Store::commit`] is one durable (fsynced) write transaction: a crash leaves either
//! the whole batch or none of it.

mod watermark;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

pub use watermark::Watermark;

/// The store format this build reads and writes.
pub const FORMAT_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");
const INDEX: TableDefinition<&str, &[u8]> = TableDefinition::new("index");
/// Write-ahead of the index: the latest version handed to the sink, recorded before the hand-
/// over and dropped once the acknowledged index catches up. After a crash these objects may
/// be downstream although the index does not know them yet; a relist must consider them.
const SENT: TableDefinition<&str, &[u8]> = TableDefinition::new("sent");
const FORMAT_KEY: &str = "format_version";

/// Errors of the checkpoint stage.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// redb's file lock is held (by another process or another `Store` in this one).
    #[error("checkpoint store {} is in use (is another kubewire running?)", path.display())]
    InUse { path: PathBuf },
    #[error("cannot open checkpoint store {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error(
        "checkpoint store {} has format version {found}, but this kubewire supports up to {supported}; use a newer kubewire or another checkpoint.path",
        path.display()
    )]
    UnsupportedFormat {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    #[error("checkpoint store {}: {source}", path.display())]
    Storage {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("checkpoint store {}: corrupt record {key:?}: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid stream key {0:?}: must be non-empty and contain no NUL character")]
    InvalidStreamKey(String),
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the last published version of one object was, as the relist diff needs it (and as
/// a Deleted event for a vanished object reports it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexEntry {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub resource_version: String,
    /// Only in the write-ahead of sent versions: the type of the event sent at this version,
    /// so that a relist after a crash repeats exactly that event (same id). `None` in the
    /// index, and in rows written before the type was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_as: Option<crate::event::ChangeType>,
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
    pub in_doubt: HashMap<String, IndexEntry>,
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

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamRecord {
    resource_version: Option<String>,
}

/// The embedded checkpoint store: one file for every stream.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (or creates, with its parent directory) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, CheckpointError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| CheckpointError::Io {
                action: "cannot create the directory of checkpoint store",
                path: path.into(),
                source,
            })?;
        }
        let db = Database::create(path).map_err(|source| match source {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                CheckpointError::InUse { path: path.into() }
            }
            source => CheckpointError::Open {
                path: path.into(),
                source,
            },
        })?;
        let store = Store {
            db,
            path: path.into(),
        };
        store.init_format()?;
        Ok(store)
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn storage<E: Into<redb::Error>>(&self, e: E) -> CheckpointError {
        CheckpointError::Storage {
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    fn corrupt(&self, key: &str, source: serde_json::Error) -> CheckpointError {
        CheckpointError::Corrupt {
            path: self.path.clone(),
            key: key.to_owned(),
            source,
        }
    }

    fn init_format(&self) -> Result<(), CheckpointError> {
        let tx = self.db.begin_write().map_err(|e| self.storage(e))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| self.storage(e))?;
            let found = meta
                .get(FORMAT_KEY)
                .map_err(|e| self.storage(e))?
                .map(|v| v.value());
            match found {
                None => {
                    meta.insert(FORMAT_KEY, FORMAT_VERSION)
                        .map_err(|e| self.storage(e))?;
                }
                Some(v) if v > FORMAT_VERSION => {
                    return Err(CheckpointError::UnsupportedFormat {
                        path: self.path.clone(),
                        found: v,
                        supported: FORMAT_VERSION,
                    });
                }
                // Older formats would be migrated here; there are none yet.
                Some(_) => {}
            }
            tx.open_table(STREAMS).map_err(|e| self.storage(e))?;
            tx.open_table(INDEX).map_err(|e| self.storage(e))?;
            tx.open_table(SENT).map_err(|e| self.storage(e))?;
        }
        tx.commit().map_err(|e| self.storage(e))
    }

    fn read_prefix(
        &self,
        table: &redb::ReadOnlyTable<&str, &[u8]>,
        stream_key: &str,
    ) -> Result<HashMap<String, IndexEntry>, CheckpointError> {
        let (start, end) = prefix_range(stream_key);
        let mut out = HashMap::new();
        for row in table
            .range(start.as_str()..end.as_str())
            .map_err(|e| self.storage(e))?
        {
            let (k, v) = row.map_err(|e| self.storage(e))?;
            let key = k.value();
            let uid = &key[start.len()..];
            let entry: IndexEntry =
                serde_json::from_slice(v.value()).map_err(|e| self.corrupt(key, e))?;
            out.insert(uid.to_owned(), entry);
        }
        Ok(out)
    }

    /// Records, durably and before they are handed to the sink, the versions about to be
    /// published (the write-ahead of the index; see [`StreamCheckpoint::in_doubt`]).
    pub fn record_sent(
        &self,
        stream_key: &str,
        sent: &[(String, IndexEntry)],
    ) -> Result<(), CheckpointError> {
        check_key(stream_key)?;
        let tx = self.db.begin_write().map_err(|e| self.storage(e))?;
        {
            let mut table = tx.open_table(SENT).map_err(|e| self.storage(e))?;
            for (uid, entry) in sent {
                let bytes = serde_json::to_vec(entry).expect("an index entry serializes");
                table
                    .insert(index_key(stream_key, uid).as_str(), bytes.as_slice())
                    .map_err(|e| self.storage(e))?;
            }
        }
        tx.commit().map_err(|e| self.storage(e))
    }

    /// The stored state of `stream_key` (empty if it was never committed).
    pub fn load(&self, stream_key: &str) -> Result<StreamCheckpoint, CheckpointError> {
        check_key(stream_key)?;
        let tx = self.db.begin_read().map_err(|e| self.storage(e))?;
        let streams = tx.open_table(STREAMS).map_err(|e| self.storage(e))?;
        let resource_version = match streams.get(stream_key).map_err(|e| self.storage(e))? {
            Some(v) => {
                serde_json::from_slice::<StreamRecord>(v.value())
                    .map_err(|e| self.corrupt(stream_key, e))?
                    .resource_version
            }
            None => None,
        };
        let index = self.read_prefix(
            &tx.open_table(INDEX).map_err(|e| self.storage(e))?,
            stream_key,
        )?;
        let in_doubt = self.read_prefix(
            &tx.open_table(SENT).map_err(|e| self.storage(e))?,
            stream_key,
        )?;
        Ok(StreamCheckpoint {
            resource_version,
            index,
            in_doubt,
        })
    }

    /// Applies `batch` to `stream_key` in one durable write transaction (all or nothing).
    /// Records the stream even when the batch is empty.
    pub fn commit(&self, stream_key: &str, batch: &CommitBatch) -> Result<(), CheckpointError> {
        check_key(stream_key)?;
        let tx = self.db.begin_write().map_err(|e| self.storage(e))?;
        {
            let mut streams = tx.open_table(STREAMS).map_err(|e| self.storage(e))?;
            let existing = match streams.get(stream_key).map_err(|e| self.storage(e))? {
                Some(v) => Some(
                    serde_json::from_slice::<StreamRecord>(v.value())
                        .map_err(|e| self.corrupt(stream_key, e))?,
                ),
                None => None,
            };
            if existing.is_none() || batch.resource_version.is_some() {
                let record = StreamRecord {
                    resource_version: batch
                        .resource_version
                        .clone()
                        .or_else(|| existing.and_then(|r| r.resource_version)),
                };
                let bytes = serde_json::to_vec(&record).expect("a record serializes");
                streams
                    .insert(stream_key, bytes.as_slice())
                    .map_err(|e| self.storage(e))?;
            }
            let mut index = tx.open_table(INDEX).map_err(|e| self.storage(e))?;
            for (uid, entry) in &batch.upserts {
                let bytes = serde_json::to_vec(entry).expect("an index entry serializes");
                index
                    .insert(index_key(stream_key, uid).as_str(), bytes.as_slice())
                    .map_err(|e| self.storage(e))?;
            }
            for uid in &batch.removals {
                index
                    .remove(index_key(stream_key, uid).as_str())
                    .map_err(|e| self.storage(e))?;
            }
            // What the index now knows is no longer in doubt: drop the write-ahead rows it
            // caught up with (a newer version still in flight stays).
            let mut sent = tx.open_table(SENT).map_err(|e| self.storage(e))?;
            for (uid, entry) in &batch.upserts {
                let key = index_key(stream_key, uid);
                let caught_up = match sent.get(key.as_str()).map_err(|e| self.storage(e))? {
                    Some(v) => serde_json::from_slice::<IndexEntry>(v.value())
                        .map(|s| s.resource_version == entry.resource_version)
                        .unwrap_or(true),
                    None => false,
                };
                if caught_up {
                    sent.remove(key.as_str()).map_err(|e| self.storage(e))?;
                }
            }
            for uid in &batch.removals {
                sent.remove(index_key(stream_key, uid).as_str())
                    .map_err(|e| self.storage(e))?;
            }
        }
        tx.commit().map_err(|e| self.storage(e))
    }

    /// Every stream key with a stored checkpoint, sorted.
    pub fn streams(&self) -> Result<Vec<String>, CheckpointError> {
        let tx = self.db.begin_read().map_err(|e| self.storage(e))?;
        let streams = tx.open_table(STREAMS).map_err(|e| self.storage(e))?;
        let mut out = Vec::new();
        for row in streams.iter().map_err(|e| self.storage(e))? {
            let (k, _) = row.map_err(|e| self.storage(e))?;
            out.push(k.value().to_owned());
        }
        Ok(out)
    }

    /// Forgets `stream_key`: its resourceVersion and its whole index, in one transaction.
    /// Returns whether it existed.
    pub fn remove_stream(&self, stream_key: &str) -> Result<bool, CheckpointError> {
        check_key(stream_key)?;
        let tx = self.db.begin_write().map_err(|e| self.storage(e))?;
        let existed;
        {
            let mut streams = tx.open_table(STREAMS).map_err(|e| self.storage(e))?;
            existed = streams
                .remove(stream_key)
                .map_err(|e| self.storage(e))?
                .is_some();
            let mut index = tx.open_table(INDEX).map_err(|e| self.storage(e))?;
            let (start, end) = prefix_range(stream_key);
            index
                .retain_in(start.as_str()..end.as_str(), |_, _| false)
                .map_err(|e| self.storage(e))?;
            let mut sent = tx.open_table(SENT).map_err(|e| self.storage(e))?;
            sent.retain_in(start.as_str()..end.as_str(), |_, _| false)
                .map_err(|e| self.storage(e))?;
        }
        tx.commit().map_err(|e| self.storage(e))?;
        Ok(existed)
    }
}

fn check_key(stream_key: &str) -> Result<(), CheckpointError> {
    if stream_key.is_empty() || stream_key.contains('\0') {
        return Err(CheckpointError::InvalidStreamKey(stream_key.to_owned()));
    }
    Ok(())
}

fn index_key(stream_key: &str, uid: &str) -> String {
    format!("{stream_key}\0{uid}")
}

/// `[key\0, key\x01)`: exactly the index keys of `stream_key` (no key contains NUL, so no
/// other stream's key can fall in between).
fn prefix_range(stream_key: &str) -> (String, String) {
    (format!("{stream_key}\0"), format!("{stream_key}\u{1}"))
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

#[cfg(test)]
mod tests;
