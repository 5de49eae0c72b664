//! recstack's services: each stage of [`recstack_core`] behind its gRPC and HTTP faces, with
//! its clients, metrics and stores. Decisions live in the core; this crate does the I/O.
//!
//! - [`gateway`]: the front door: a request pipeline of named stages (features and recall,
//!   rank, rerank, respond) under budgets, degradation levels and breakers, and its trace.
//! - [`recall`]: the recall service over hot-swapped artifacts, with the seen store.
//! - [`features`]: the feature service (L1 cache ▸ Redis ▸ snapshot).
//! - [`ranking`]: the ONNX ranking service (batching, canary, hot swap).
//! - [`rerank`]: the rerank service.
//! - [`events`]: the event log (embedded or Kafka) and the ingest service.
//! - [`stream`]: the built-in stream job (reads the log, writes features with a limiter).
//! - [`serve`]: starting each service, and the whole stack in one process.
//! - [`objects`]: where artifacts and models live (a local directory or an object store), and
//!   the local mirror services read.
//! - [`traces`]: where a service's traces go (embedded store or Elasticsearch).
//! - [`ops`]: what every binary shares: `/metrics` (one registration helper, one RPC metrics
//!   type), health, logs, Redis connections.
//! - [`id_columns`]: item ids on the wire as one buffer and end offsets.
//! - [`link`]: calling another service (gRPC, or directly in process); [`json`]: request
//!   bodies whose errors name the field.
#![forbid(unsafe_code)]

pub mod coalesce;
pub mod codec;
pub mod events;
pub mod features;
pub mod gateway;
pub mod id_columns;
pub mod json;
pub mod link;
pub mod objects;
pub mod ops;
pub mod otlp;
pub mod ranking;
pub mod recall;
pub mod redis_conn;
pub mod rerank;
pub mod serve;
pub mod stream;
pub mod traces;

/// The runtime config the operator writes and every service reads: one type, in the CRD crate.
pub use recstack_crds::runtime as config;
/// The stack's components and the call table (who calls whom), shared with the operator.
pub use recstack_crds::{Component, GRPC_CALLS, StreamEngine};
