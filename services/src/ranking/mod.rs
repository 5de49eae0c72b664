//! Ranking: scores recall's candidates with an ONNX model.
//!
//! - [`model`]: the model card and the ONNX Runtime session (CPU or CUDA).
//! - [`batcher`]: dynamic batching across concurrent requests, deadline shedding.
//! - [`service`]: the gRPC service, canary split, hot model swap, metrics.
//!
//! The model's inputs, the folded first stage and the trees' walk are pure:
//! [`recstack_core::ranking`] (re-exported here as [`features`], [`folded`] and [`trees`]). Its training data is
//! `recstack_offline::export`.

pub mod batcher;
pub mod model;
pub mod service;

pub use recstack_core::ranking::{features, folded, trees};
