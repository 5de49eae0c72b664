//! Ranking: scores recall's candidates with an ONNX model.
//!
//! - [`features`]: the model's named inputs, computed from user and item features (shared by
//!   training export and serving).
//! - [`export`]: training data for `scripts/train-ranker` (`recstack export-ranking`).
//! - [`model`]: the model card and the ONNX Runtime session (CPU or CUDA).
//! - [`folded`]: a factored model's first stage folded into tables (only the head runs per
//!   request).
//! - [`batcher`]: dynamic batching across concurrent requests, deadline shedding.
//! - [`service`]: the gRPC service, canary split, hot model swap, metrics.

pub mod batcher;
pub mod export;
pub mod features;
pub mod folded;
pub mod model;
pub mod service;
