//! The embedded state backend: one redb file for all streams (redb holds a file lock: one
//! kubewire per file). Tables:
//!
//! - `meta`: `format_version` → [`FORMAT_VERSION`]. A file written by a newer format is
//!   refused with an error naming it.
//! - `streams`: stream key → JSON `{"resourceVersion": ...}`.
//! - `index`: stream key ‖ `\0` ‖ uid → JSON [`IndexEntry`](super::IndexEntry); a stream's index is a prefix
//!   range scan.
//! - `sent`: the write-ahead of the index, same keys → JSON [`SentEntry`].
//!
//! Every commit is one durable (fsynced) write transaction: a crash leaves either the whole
//! batch or none of it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;

use super::{CheckpointError, CommitBatch, SentEntry, StateStore, StreamCheckpoint, StreamRecord};

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

    fn read_prefix<T: DeserializeOwned>(
        &self,
        table: &redb::ReadOnlyTable<&str, &[u8]>,
        stream_key: &str,
    ) -> Result<HashMap<String, T>, CheckpointError> {
        let (start, end) = prefix_range(stream_key);
        let mut out = HashMap::new();
        for row in table
            .range(start.as_str()..end.as_str())
            .map_err(|e| self.storage(e))?
        {
            let (k, v) = row.map_err(|e| self.storage(e))?;
            let key = k.value();
            let uid = &key[start.len()..];
            let entry: T = serde_json::from_slice(v.value()).map_err(|e| self.corrupt(key, e))?;
            out.insert(uid.to_owned(), entry);
        }
        Ok(out)
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

impl StateStore for Store {
    fn record_sent(
        &self,
        stream_key: &str,
        sent: &[(String, SentEntry)],
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

    fn load(&self, stream_key: &str) -> Result<StreamCheckpoint, CheckpointError> {
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

    fn commit(&self, stream_key: &str, batch: &CommitBatch) -> Result<(), CheckpointError> {
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
                    Some(v) => serde_json::from_slice::<SentEntry>(v.value())
                        .map(|s| s.entry.resource_version == entry.resource_version)
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

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
