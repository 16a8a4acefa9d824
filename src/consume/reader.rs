//! The readers of [`Source`]s (I/O): a file read line by line (following it like
//! `tail -f`), a Kafka topic read by assignment from offset 0 of every partition (no
//! consumer group state is kept), a JetStream stream read by an ordered consumer from its
//! first message. Each yields [`Item::CaughtUp`] once everything that was there when it
//! started is read.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{ConsumeError, Item, Record, Source, glob_match, is_pattern};

/// How often a followed file is looked at again once its end is reached.
const FILE_POLL: Duration = Duration::from_millis(200);
/// How long a Kafka read waits before it looks at the partitions' positions.
const KAFKA_IDLE: Duration = Duration::from_millis(250);
/// Bound on the broker and JetStream requests of setting up a reader.
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Reads one [`Source`].
pub struct Reader {
    inner: Inner,
    follow: bool,
    caught_up: bool,
}

enum Inner {
    File(FileReader),
    Kafka(Box<KafkaReader>),
    Nats(Box<NatsReader>),
}

impl Reader {
    /// Opens `source`. With `follow`, [`Reader::next`] waits for new records after the
    /// catch-up instead of ending.
    pub async fn open(source: &Source, follow: bool) -> Result<Self, ConsumeError> {
        let inner = match source {
            Source::File(path) => Inner::File(FileReader::open(path).await?),
            Source::Kafka { settings, topics } => {
                Inner::Kafka(Box::new(KafkaReader::open(settings, topics).await?))
            }
            Source::Nats {
                settings,
                stream,
                subject,
            } => Inner::Nats(Box::new(
                NatsReader::open(settings, stream, subject.as_deref()).await?,
            )),
        };
        Ok(Self {
            inner,
            follow,
            caught_up: false,
        })
    }

    /// The next item; `None` at the end (after [`Item::CaughtUp`], unless following).
    pub async fn next(&mut self) -> Result<Option<Item>, ConsumeError> {
        if self.caught_up && !self.follow {
            return Ok(None);
        }
        let item = match &mut self.inner {
            Inner::File(r) => r.next(self.caught_up).await?,
            Inner::Kafka(r) => r.next().await?,
            Inner::Nats(r) => r.next().await?,
        };
        if item == Item::CaughtUp {
            if self.caught_up {
                // Only the first catch-up is reported; go on waiting for records.
                return Box::pin(self.next()).await;
            }
            self.caught_up = true;
        }
        Ok(Some(item))
    }
}

// ------------------------------------------------------------------------------------ file

struct FileReader {
    path: PathBuf,
    lines: BufReader<tokio::fs::File>,
    /// A line read without its newline yet (the writer is in the middle of it).
    partial: String,
    line_no: u64,
}

impl FileReader {
    async fn open(path: &std::path::Path) -> Result<Self, ConsumeError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| ConsumeError::File {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            path: path.to_owned(),
            lines: BufReader::with_capacity(1 << 16, file),
            partial: String::new(),
            line_no: 0,
        })
    }

    /// The next complete line, [`Item::CaughtUp`] at the end of the file (once, then, when
    /// following, the next line once one is written).
    async fn next(&mut self, caught_up: bool) -> Result<Item, ConsumeError> {
        loop {
            let read = self
                .lines
                .read_line(&mut self.partial)
                .await
                .map_err(|source| ConsumeError::File {
                    path: self.path.clone(),
                    source,
                })?;
            if self.partial.ends_with('\n') {
                self.line_no += 1;
                let line = std::mem::take(&mut self.partial);
                let line = line.trim_end();
                if line.is_empty() {
                    continue;
                }
                return Ok(Item::Record(Record {
                    position: format!("line {}", self.line_no),
                    key: None,
                    payload: Some(line.as_bytes().to_vec()),
                }));
            }
            if read == 0 {
                if !caught_up {
                    // A last line without its newline is still being written (or was torn
                    // by a crash): it is not a record yet.
                    return Ok(Item::CaughtUp);
                }
                tokio::time::sleep(FILE_POLL).await;
            }
        }
    }
}

// ----------------------------------------------------------------------------------- kafka

struct KafkaReader {
    consumer: rdkafka::consumer::StreamConsumer,
    /// (topic, partition) → the high watermark when the reader started.
    ends: BTreeMap<(String, i32), i64>,
    /// (topic, partition) → the offset after the last record read.
    positions: BTreeMap<(String, i32), i64>,
    caught_up: bool,
}

impl KafkaReader {
    async fn open(
        settings: &crate::sink::KafkaSinkConfig,
        topics: &str,
    ) -> Result<Self, ConsumeError> {
        use rdkafka::consumer::Consumer;
        let mut config = crate::sink::kafka::consumer_config(settings).map_err(|e| match e {
            crate::sink::SinkError::Secret(m) => ConsumeError::Secret(m),
            other => ConsumeError::Kafka(other.to_string()),
        })?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        config
            // Assigned partitions only: the group is never joined and nothing is committed.
            .set(
                "group.id",
                format!("kubewire-reader-{}-{nanos}", std::process::id()),
            )
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            // A transactional writer's aborted records are not events.
            .set("isolation.level", "read_committed")
            // librdkafka prefetches up to 64 MiB by default; a reader needs far less to keep
            // up, and its memory is meant to be the verifier's one entry per object.
            .set("queued.max.messages.kbytes", "8192")
            .set("client.id", "kubewire-reader");
        let consumer: rdkafka::consumer::StreamConsumer = config
            .create()
            .map_err(|e| ConsumeError::Kafka(format!("cannot create a consumer: {e}")))?;
        let (consumer, ends) = tokio::task::spawn_blocking({
            let topics = topics.to_owned();
            move || {
                let ends = assign(&consumer, &topics)?;
                Ok::<_, ConsumeError>((consumer, ends))
            }
        })
        .await
        .map_err(|e| ConsumeError::Kafka(e.to_string()))??;
        let _ = consumer.assignment();
        Ok(Self {
            consumer,
            ends,
            positions: BTreeMap::new(),
            caught_up: false,
        })
    }

    async fn next(&mut self) -> Result<Item, ConsumeError> {
        use rdkafka::Message;
        loop {
            if !self.caught_up && self.is_caught_up() {
                self.caught_up = true;
                return Ok(Item::CaughtUp);
            }
            match tokio::time::timeout(KAFKA_IDLE, self.consumer.recv()).await {
                Err(_) => self.refresh_positions(),
                Ok(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => self.refresh_positions(),
                Ok(Err(e)) => return Err(ConsumeError::Kafka(format!("read failed: {e}"))),
                Ok(Ok(m)) => {
                    let topic = m.topic().to_owned();
                    let (partition, offset) = (m.partition(), m.offset());
                    let record = Record {
                        position: format!("{topic}[{partition}]@{offset}"),
                        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        payload: m.payload().map(<[u8]>::to_vec),
                    };
                    let p = self.positions.entry((topic, partition)).or_insert(0);
                    *p = (*p).max(offset + 1);
                    return Ok(Item::Record(record));
                }
            }
        }
    }

    fn is_caught_up(&self) -> bool {
        self.ends
            .iter()
            .all(|(tp, end)| self.positions.get(tp).copied().unwrap_or(0) >= *end)
    }

    /// The consumer's own positions: they also move past records a consumer never sees
    /// (transaction markers), which the offsets of the records read would not.
    fn refresh_positions(&mut self) {
        use rdkafka::consumer::Consumer;
        if let Ok(list) = self.consumer.position() {
            for e in list.elements() {
                if let rdkafka::Offset::Offset(o) = e.offset() {
                    let p = self
                        .positions
                        .entry((e.topic().to_owned(), e.partition()))
                        .or_insert(0);
                    *p = (*p).max(o);
                }
            }
        }
    }
}

/// Assigns every partition of the topics `pattern` names, from offset 0; returns their high
/// watermarks now. Blocking (broker requests).
fn assign(
    consumer: &rdkafka::consumer::StreamConsumer,
    pattern: &str,
) -> Result<BTreeMap<(String, i32), i64>, ConsumeError> {
    use rdkafka::consumer::Consumer;
    let metadata = consumer
        .fetch_metadata((!is_pattern(pattern)).then_some(pattern), SETUP_TIMEOUT)
        .map_err(|e| ConsumeError::Kafka(format!("cannot list topics: {e}")))?;
    let mut list = rdkafka::TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for t in metadata.topics() {
        // A missing topic is listed with an error (or no partitions) rather than left out.
        if !glob_match(pattern, t.name()) || t.error().is_some() || t.partitions().is_empty() {
            continue;
        }
        for p in t.partitions() {
            let (_, high) = consumer
                .fetch_watermarks(t.name(), p.id(), SETUP_TIMEOUT)
                .map_err(|e| {
                    ConsumeError::Kafka(format!(
                        "cannot read the end of {}[{}]: {e}",
                        t.name(),
                        p.id()
                    ))
                })?;
            list.add_partition_offset(t.name(), p.id(), rdkafka::Offset::Beginning)
                .map_err(|e| ConsumeError::Kafka(e.to_string()))?;
            ends.insert((t.name().to_owned(), p.id()), high);
        }
    }
    if ends.is_empty() {
        return Err(ConsumeError::NoTopic(pattern.to_owned()));
    }
    consumer
        .assign(&list)
        .map_err(|e| ConsumeError::Kafka(format!("cannot assign partitions: {e}")))?;
    Ok(ends)
}

// ------------------------------------------------------------------------------------ nats

struct NatsReader {
    messages: async_nats::jetstream::consumer::pull::Ordered,
    /// Set when the stream held nothing (for this filter) at the start.
    empty_at_start: bool,
    caught_up: bool,
    /// The catch-up is reported on the call after the record that reached it.
    pending_catch_up: bool,
    _client: async_nats::Client,
}

impl NatsReader {
    async fn open(
        settings: &crate::sink::NatsSinkConfig,
        stream: &str,
        subject: Option<&str>,
    ) -> Result<Self, ConsumeError> {
        use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
        let opts = crate::sink::nats::connect_options(settings)
            .await
            .map_err(|e| ConsumeError::Secret(e.to_string()))?;
        let client = tokio::time::timeout(SETUP_TIMEOUT, opts.connect(settings.url.as_str()))
            .await
            .map_err(|_| {
                ConsumeError::Nats(format!("cannot connect to {}: timed out", settings.url))
            })?
            .map_err(|e| ConsumeError::Nats(format!("cannot connect to {}: {e}", settings.url)))?;
        let js = async_nats::jetstream::new(client.clone());
        let s = js
            .get_stream(stream)
            .await
            .map_err(|e| ConsumeError::Nats(format!("stream {stream}: {e}")))?;
        let consumer = s
            .create_consumer(OrderedConfig {
                filter_subject: subject.unwrap_or_default().to_owned(),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| ConsumeError::Nats(format!("cannot read stream {stream}: {e}")))?;
        let empty_at_start = consumer.cached_info().num_pending == 0;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| ConsumeError::Nats(format!("cannot read stream {stream}: {e}")))?;
        Ok(Self {
            messages,
            empty_at_start,
            caught_up: false,
            pending_catch_up: empty_at_start,
            _client: client,
        })
    }

    async fn next(&mut self) -> Result<Item, ConsumeError> {
        if self.pending_catch_up {
            self.pending_catch_up = false;
            self.caught_up = true;
            return Ok(Item::CaughtUp);
        }
        let m = match self.messages.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(ConsumeError::Nats(format!("read failed: {e}"))),
            None => return Err(ConsumeError::Nats("the consumer ended".into())),
        };
        let info = m
            .info()
            .map_err(|e| ConsumeError::Nats(format!("message without stream info: {e}")))?;
        // `pending`: messages of the filter after this one; none left means caught up
        // (reported after this record).
        if !self.caught_up && !self.empty_at_start && info.pending == 0 {
            self.pending_catch_up = true;
        }
        Ok(Item::Record(Record {
            position: format!("seq {}", info.stream_sequence),
            key: None,
            payload: Some(m.payload.to_vec()),
        }))
    }
}
