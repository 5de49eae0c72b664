//! The online and streaming services of recstack and the offline build they load.
//!
//! - [`dataset`]: MovieTweetings loading and the per-user time split.
//! - [`build`]: `recstack build`, the versioned artifacts (CF neighbours, hot list, ALS, ANN,
//!   tag index, feature snapshots).
//! - [`recall`]: the recall channels over the artifacts, merge/dedup/quota, the seen filter.
//! - [`eval`]: `recstack eval` on the held-out ratings.
#![forbid(unsafe_code)]

pub mod build;
pub mod dataset;
pub mod eval;
pub mod features;
pub mod ops;
pub mod recall;
pub mod rerank;
pub mod synth;
