//! The RecommenderStack operator.
//!
//! - [`render`]: the pure desired state, `RecommenderStack → Vec<Child>`.
//! - [`diff`] and [`status`]: pure decisions (does a live object need an apply? what status?).
//! - [`reconcile`]: the I/O edge: server-side apply, prune, finalizer, status, events.
//! - [`cache`]: the watch caches of the children, indexed by stack.
//! - [`metrics`] and [`server`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`mock_api`]: an in-memory Kubernetes API for tests and the reconcile benchmark.
#![forbid(unsafe_code)]

pub mod cache;
pub mod diff;
pub mod labels;
pub mod metrics;
pub mod mock_api;
pub mod quota;
pub mod reconcile;
pub mod render;
pub mod server;
pub mod status;
