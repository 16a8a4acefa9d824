//! kubewire: a List-Watch bridge from the Kubernetes API to ordered, replayable event streams.
//!
//! # Layout
//!
//! The modules follow the data flow of `DESIGN.md`, one stage each:
//!
//! ```text
//! cluster ─► watch ─► event ─► transform ─► envelope ─► sink ─► checkpoint
//! ```
//!
//! - [`config`]: the configuration file, environment overrides and validation.
//! - [`cluster`]: kube clients per cluster and resource discovery.
//! - [`watch`]: the List-Watch state machine (resume, paginated list, 410, relist diff).
//! - [`event`]: the change types, keys and deterministic ids.
//! - [`transform`]: managedFields / last-applied stripping, Secret redaction.
//! - [`envelope`]: CloudEvents encoding (pure).
//! - [`sink`]: the sink contract and its stdout/file implementations.
//! - [`checkpoint`]: the in-order ack watermark and the embedded store.
//! - [`telemetry`]: metrics, health, the admin server.
//! - [`app`]: wires the stages, shutdown and drain.
#![forbid(unsafe_code)]

pub mod app;
pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod envelope;
pub mod event;
pub mod sink;
pub mod telemetry;
pub mod transform;
pub mod watch;
