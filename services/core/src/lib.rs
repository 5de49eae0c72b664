//! The pure core of recstack's serving path: domain types and decisions, with no I/O crate
//! (no tokio, tonic, ort, redis, axum or kube). The services crate serves these over the wire;
//! the offline crate builds the artifacts they read.
//!
//! - [`artifacts`]: items, ratings, the built artifacts (CF neighbours, hot list, ALS factors,
//!   ANN index, tag index, profiles) and their versioned directory.
//! - [`recall`]: the recall channels over the artifacts, merge/dedup/quota with lineage, the
//!   seen filter.
//! - [`features`]: the user and item feature messages every stage passes along.
//! - [`ranking`]: the model's inputs (feature assembly into rows) and the folded first stage.
//! - [`rerank`]: diversity and business rules.
//! - [`degrade`]: degradation levels, load thresholds, breakers, the latency shedder.
//! - [`events`]: behaviour events and their validation.
//! - [`stream`]: the stream job's window math and its adaptive write limiter.
//! - [`timeline`]: an item's ratings by day, read as of a user's latest activity.
//! - [`hash`]: stable hashing and A/B buckets; [`topk`]: the best `k` of a scored list.
#![forbid(unsafe_code)]

pub mod artifacts;
pub mod degrade;
pub mod events;
pub mod features;
pub mod hash;
pub mod ranking;
pub mod recall;
pub mod rerank;
pub mod simd;
pub mod stream;
pub mod timeline;
pub mod topk;

pub use hash::{ab_bucket, stable_hash};

/// A file shipped in the `services/` source tree (bundled data, the bundled model): found from
/// the working directory (a checkout or any directory inside one), else where this crate was
/// built. Looking at run time keeps a binary built in one checkout usable from another.
pub fn source_file(relative: &str) -> std::path::PathBuf {
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            let in_checkout = dir.join("services").join(relative);
            if in_checkout.exists() {
                return in_checkout;
            }
            if dir.file_name().is_some_and(|n| n == "services") && dir.join(relative).exists() {
                return dir.join(relative);
            }
        }
    }
    // This crate lives in `services/core`.
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}
