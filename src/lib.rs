//! kubewire: a List-Watch bridge from the Kubernetes API to ordered, replayable event streams.
//!
//! # Layout
//!
//! The modules follow the data flow of `DESIGN.md`, one stage each:
//!
//! ```text
//! cluster ─► watch ─► event ─► transform ─► envelope ─► sink ─► ack ─► checkpoint
//!                              └──────────── publish ────────────────┘
//! ```
//!
//! - [`config`]: the configuration file, environment overrides and validation.
//! - [`cluster`]: kube clients per cluster and resource discovery.
//! - [`watch`]: the List-Watch state machine (resume, paginated list, bookmarks, 410,
//!   idle restarts); the relist diff it applies is [`mod@checkpoint::reconcile`].
//! - [`event`]: the change types, keys and deterministic ids.
//! - [`transform`]: managedFields / last-applied stripping, Secret redaction.
//! - [`envelope`]: CloudEvents encoding (pure).
//! - [`publish`]: per stream, prepare (transform + encode) → send → acknowledgements in
//!   order → checkpoint progress, with the write-ahead of sent versions.
//! - [`sink`]: the sink contract, the delivery outcomes, stdout/file, Kafka, NATS.
//! - [`checkpoint`]: the index, the pure relist reconcile, checkpoint progress, and the
//!   state store (embedded redb).
//! - [`telemetry`]: metrics, health, the admin server.
//! - [`app`]: wires the stages, shutdown and drain.
//!
//! Around the data flow:
//!
//! - [`cli`]: the command line (before): commands, flags, exit codes, config discovery.
//! - [`consume`]: the consumer side (after): reading a stream back, the pretty view.
//! - [`verify`]: the comparison of a stream read back with the cluster (pure).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod checkpoint;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod consume;
pub mod envelope;
pub mod event;
pub mod publish;
pub mod sink;
pub mod telemetry;
pub mod transform;
pub mod verify;
pub mod watch;
