//! The online and streaming services of recstack and the offline build they load.
//!
//! - [`dataset`]: MovieTweetings loading and the per-user time split.
//! - [`build`]: `recstack build`, the versioned artifacts (CF neighbours, hot list, ALS, ANN,
//!   tag index, feature snapshots).
//! - [`recall`]: the recall channels over the artifacts, merge/dedup/quota, the seen filter.
//! - [`eval`]: `recstack eval` on the held-out ratings.
//! - [`features`]: the feature service (L1 cache ▸ Redis ▸ snapshot).
//! - [`ranking`]: the ONNX ranking service (batching, canary, hot swap) and its training data.
//! - [`rerank`]: diversity and business rules, and their service.
//! - [`gateway`]: the front door: budgets, degradation levels, breakers, traces.
//! - [`events`]: behaviour events, the event log (embedded or Kafka) and the ingest service.
//! - [`stream`]: the built-in stream job (windows, fast path, versioned writes, limiter).
#![forbid(unsafe_code)]

/// 64-bit FNV-1a: stable across builds, processes and platforms (unlike `std`'s randomly
/// keyed hasher), for values that are stored or compared across them — Bloom keys of item
/// ids, A/B buckets.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

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
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

pub mod build;
pub mod config;
pub mod dataset;
pub mod eval;
pub mod events;
pub mod features;
pub mod gateway;
pub mod ops;
pub mod ranking;
pub mod recall;
pub mod rerank;
pub mod serve;
pub mod stream;
pub mod synth;
pub mod traces;
