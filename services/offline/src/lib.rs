//! recstack's offline side: what runs before serving, on ratings, and writes files.
//!
//! - [`dataset`]: MovieTweetings loading and the per-user time split.
//! - [`build`]: `recstack build`, the versioned artifacts (CF neighbours, hot list, ALS, ANN,
//!   tag index, profiles) written with [`recstack_core::artifacts::write`].
//! - [`eval`]: `recstack eval` on the held-out ratings.
//! - [`synth`]: a synthetic data set of any size (benches, scale tests).
//! - [`export`]: the ranking model's training data from recall's own candidates.
//! - [`sequences`]: the vector channel's sequence model's training data.
//! - [`tune`]: `recstack tune`, recall's fusion weights chosen on a validation world.
#![forbid(unsafe_code)]

pub mod build;
pub mod dataset;
pub mod eval;
pub mod export;
pub mod sequences;
pub mod synth;
pub mod tune;
