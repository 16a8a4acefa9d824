//! The consumer side, after the data flow: reading a published stream back as a consumer
//! would — a file (JSON lines), a Kafka topic (or every topic matching a pattern), a NATS
//! JetStream stream (optionally one subject filter) — for `kubewire verify` and `kubewire
//! tail`. Owns the [`Source`] of a stream, the readers (I/O, in [`reader`]), the decoded
//! view of an event ([`EventView`], pure) and the human one-line rendering ([`pretty`],
//! pure, also used by the stdout sink's `format: pretty`).
//!
//! A reader yields every record in the order its destination keeps (file order; per Kafka
//! partition; JetStream stream sequence), then [`Item::CaughtUp`] once it has read
//! everything that was there when it started, and then — when following — whatever comes
//! next.

pub mod pretty;
pub mod reader;

use std::path::PathBuf;

use serde::Deserialize;

use crate::sink::{KafkaSinkConfig, NatsSinkConfig};

/// Errors of the consumer side: a source that cannot be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The file cannot be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Kafka: the consumer cannot be built, the topics cannot be listed or read.
    #[error("kafka: {0}")]
    Kafka(String),
    /// No topic matches the requested name or pattern.
    #[error("kafka: no topic matches {0:?}")]
    NoTopic(String),
    /// NATS: cannot connect, the stream does not exist, or a read failed.
    #[error("nats: {0}")]
    Nats(String),
    /// A credential the source's settings name cannot be read.
    #[error("credentials: {0}")]
    Secret(String),
}

/// A published stream to read.
#[derive(Clone, Debug)]
pub enum Source {
    /// A file sink's output: one JSON document per line.
    File(PathBuf),
    /// A Kafka topic, or every topic matching a pattern (`*` any run of characters, `?`
    /// one), read from the beginning of every partition. The connection settings (brokers,
    /// security) are those of a Kafka sink.
    Kafka {
        /// Brokers and security.
        settings: KafkaSinkConfig,
        /// A topic name or a pattern.
        topics: String,
    },
    /// A NATS JetStream stream, from its first message, optionally only the subjects
    /// matching `subject` (a NATS filter, `>` and `*` allowed). The connection settings are
    /// those of a NATS sink.
    Nats {
        /// URL, auth, TLS.
        settings: NatsSinkConfig,
        /// The JetStream stream's name.
        stream: String,
        /// A subject filter; `None`: the whole stream.
        subject: Option<String>,
    },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Kafka { settings, topics } => {
                write!(f, "kafka topic {topics} at {}", settings.brokers)
            }
            Source::Nats {
                settings,
                stream,
                subject,
            } => {
                write!(f, "nats stream {stream}")?;
                if let Some(s) = subject {
                    write!(f, " (subjects {s})")?;
                }
                write!(f, " at {}", settings.url)
            }
        }
    }
}

/// One record as the destination holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Where it was: `line 3`, `kubewire.events[2]@17`, `seq 5`.
    pub position: String,
    /// The Kafka message key, when there is one.
    pub key: Option<String>,
    /// The payload; `None` for a Kafka tombstone (null value).
    pub payload: Option<Vec<u8>>,
}

/// What a reader yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// The next record.
    Record(Record),
    /// Everything that was in the source when the reader started has been yielded (once).
    CaughtUp,
}

/// The attributes of a kubewire CloudEvent that its consumers look at (and `data`), decoded
/// from the structured-mode document. Unknown attributes are ignored; a missing one is
/// `None` (a consumer must cope with foreign or damaged documents).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct EventView {
    /// `id`.
    #[serde(default)]
    pub id: String,
    /// `type`, e.g. `io.kubewire.object.modified`.
    #[serde(rename = "type", default)]
    pub ce_type: String,
    /// `time`.
    pub time: Option<String>,
    /// `subject`.
    pub subject: Option<String>,
    /// `k8scluster`.
    pub k8scluster: Option<String>,
    /// `k8sgroup` (`core` for the core group).
    pub k8sgroup: Option<String>,
    /// `k8sversion`.
    pub k8sversion: Option<String>,
    /// `k8skind`.
    pub k8skind: Option<String>,
    /// `k8sresource`.
    pub k8sresource: Option<String>,
    /// `k8snamespace`: absent for cluster-scoped objects (and all-namespaces markers).
    pub k8snamespace: Option<String>,
    /// `k8sname`.
    pub k8sname: Option<String>,
    /// `k8suid`.
    pub k8suid: Option<String>,
    /// `k8sresourceversion`.
    pub k8sresourceversion: Option<String>,
    /// `kubewireorigin`: `watch`, `initial` or `relist`.
    pub kubewireorigin: Option<String>,
    /// `data`.
    pub data: Option<serde_json::Value>,
}

/// Prefix of the object change types.
pub const OBJECT_TYPE_PREFIX: &str = "io.kubewire.object.";

/// What an event is, by its `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `io.kubewire.object.added`.
    Added,
    /// `io.kubewire.object.modified`.
    Modified,
    /// `io.kubewire.object.deleted`.
    Deleted,
    /// `io.kubewire.object.oversize`: stands in for a change too large for the destination.
    Oversize,
    /// `io.kubewire.stream.relisted`: a relist marker.
    Relisted,
    /// Anything else.
    Other,
}

impl Kind {
    /// The short name: `added`, `modified`, `deleted`, `oversize`, `relisted`, `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Added => "added",
            Kind::Modified => "modified",
            Kind::Deleted => "deleted",
            Kind::Oversize => "oversize",
            Kind::Relisted => "relisted",
            Kind::Other => "other",
        }
    }
}

impl EventView {
    /// Decodes a structured-mode document.
    pub fn parse(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }

    /// What the event is.
    pub fn kind(&self) -> Kind {
        match self.ce_type.as_str() {
            "io.kubewire.object.added" => Kind::Added,
            "io.kubewire.object.modified" => Kind::Modified,
            "io.kubewire.object.deleted" => Kind::Deleted,
            crate::envelope::OVERSIZE_TYPE => Kind::Oversize,
            crate::envelope::RELISTED_TYPE => Kind::Relisted,
            _ => Kind::Other,
        }
    }

    /// The change an oversize event stands for (`data.originalType`), if it says.
    pub fn oversize_original(&self) -> Option<Kind> {
        let t = self.data.as_ref()?.get("originalType")?.as_str()?;
        let v = EventView {
            ce_type: t.to_owned(),
            ..Default::default()
        };
        Some(v.kind())
    }

    /// A string field of a relist marker's `data` (`fromResourceVersion`, ...).
    pub fn data_str(&self, field: &str) -> Option<&str> {
        self.data.as_ref()?.get(field)?.as_str()
    }

    /// A count of a relist marker's `data` (`added`, ...).
    pub fn data_u64(&self, field: &str) -> Option<u64> {
        self.data.as_ref()?.get(field)?.as_u64()
    }
}

/// Whether `name` matches `pattern`: `*` any run of characters (also none), `?` exactly one,
/// everything else itself. A pattern without either is a plain name.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matching with one backtrack point (the last `*`): linear in practice.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Whether `pattern` has a wildcard (so it names topics by matching, not one topic).
pub fn is_pattern(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_shell_patterns() {
        assert!(glob_match("kubewire.events", "kubewire.events"));
        assert!(!glob_match("kubewire.events", "kubewire.events2"));
        assert!(glob_match("kubewire.*", "kubewire.default.configmaps"));
        assert!(glob_match("kubewire.*", "kubewire."));
        assert!(!glob_match("kubewire.*", "other.default"));
        assert!(glob_match("k?bewire", "kubewire"));
        assert!(glob_match("*.configmaps", "kubewire.prod.configmaps"));
        assert!(glob_match("a*b*c", "a-x-b-y-c"));
        assert!(!glob_match("a*b*c", "a-x-b-y"));
        assert!(glob_match("*", ""));
        assert!(is_pattern("a*") && is_pattern("a?") && !is_pattern("kubewire.events"));
    }

    #[test]
    fn an_event_view_reads_the_contract_attributes_and_tolerates_missing_ones() {
        let v = EventView::parse(
            br#"{"specversion":"1.0","id":"c/u/5/modified","type":"io.kubewire.object.modified",
                "k8skind":"ConfigMap","k8snamespace":"ns","k8sname":"a","k8suid":"u",
                "k8sresourceversion":"5","kubewireorigin":"watch","extra":1,"data":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(v.kind(), Kind::Modified);
        assert_eq!(v.k8sresourceversion.as_deref(), Some("5"));
        assert_eq!(v.k8scluster, None);
        let o = EventView::parse(
            br#"{"type":"io.kubewire.object.oversize","data":{"originalType":"io.kubewire.object.deleted"}}"#,
        )
        .unwrap();
        assert_eq!(o.kind(), Kind::Oversize);
        assert_eq!(o.oversize_original(), Some(Kind::Deleted));
        assert_eq!(
            EventView::parse(br#"{"type":"x"}"#).unwrap().kind(),
            Kind::Other
        );
    }
}
