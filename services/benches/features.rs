//! The feature service's item read: what ranking's real-time read asks of it for every
//! request (`GetItems` with 500 ids, `realtime_only`), and the full read, from a warm L1 over
//! the bundled catalogue's items. Side by side in interleaved rounds: `FeatureStore::get_many`
//! (fresh L1 entries read in turn, only the rest as concurrent futures; what `GetItems` runs)
//! against a `get` future per key joined (what it ran before), and the whole `GetItems` call
//! in process. Prints µs per call (median of rounds) and the ratio to the joined gets.
//!
//! `cargo bench -p recstack-services --bench features`

use std::sync::Arc;
use std::time::{Duration, Instant};

use recstack_offline::build::{self, BuildParams, Progress};
use recstack_offline::dataset::{self, Dataset};
use recstack_services::features::proto::GetItemsRequest;
use recstack_services::features::proto::features_server::Features;
use recstack_services::features::{CachePolicy, FeatureMetrics, FeatureService, FeatureStore, Key, NoL2, Snapshot};

const IDS: usize = 500;
const CALLS: usize = 2_000;
const ROUNDS: usize = 5;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let ds = Dataset::load_movietweetings(&dataset::bundled_dir()).expect("bundled data");
    eprintln!("building artifacts from the bundled data …");
    let a = build::build(&ds, &BuildParams::default(), &Progress::new(true)).expect("build");
    let snapshot = Arc::new(Snapshot::from_artifacts(&a));
    // A TTL longer than the run: every read after the first is an L1 hit, as in a busy pod.
    let policy = CachePolicy {
        ttl: Duration::from_secs(3_600),
        ..CachePolicy::default()
    };
    let store = Arc::new(FeatureStore::new(
        NoL2,
        snapshot,
        policy,
        Arc::new(FeatureMetrics::default()),
    ));
    let service = FeatureService { store: store.clone() };
    // 500 items scattered over the catalogue, as recall's candidates are.
    let ids: Vec<String> = (0..IDS)
        .map(|k| a.items[(k * 7_919) % a.items.len()].id.clone())
        .collect();
    let keys: Vec<Key> = ids.iter().cloned().map(Key::Item).collect();
    store.get_many(&keys).await;

    let mut runs: [Vec<f64>; 4] = Default::default();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..CALLS {
            std::hint::black_box(futures::future::join_all(keys.iter().map(|k| store.get(k))).await);
        }
        runs[0].push(t.elapsed().as_secs_f64() * 1e6 / CALLS as f64);
        let t = Instant::now();
        for _ in 0..CALLS {
            std::hint::black_box(store.get_many(&keys).await);
        }
        runs[1].push(t.elapsed().as_secs_f64() * 1e6 / CALLS as f64);
        for (slot, realtime_only) in [(2, true), (3, false)] {
            let t = Instant::now();
            for _ in 0..CALLS {
                let request = tonic::Request::new(GetItemsRequest {
                    item_ids: ids.clone(),
                    realtime_only,
                    ..Default::default()
                });
                std::hint::black_box(service.get_items(request).await.expect("get_items"));
            }
            runs[slot].push(t.elapsed().as_secs_f64() * 1e6 / CALLS as f64);
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let joined = median(&runs[0]);
    println!("\n### Feature service: {IDS} item ids from a warm L1 ({ROUNDS} interleaved rounds of {CALLS} calls)\n");
    println!("| read | µs per call, median | range | × a `get` per key, joined |");
    println!("|---|---:|---:|---:|");
    for (slot, name) in [
        (0, "a `get` future per key, joined (before)"),
        (1, "`get_many` (fresh L1 entries in turn, misses joined)"),
        (2, "`GetItems`, `realtime_only` (ranking's read), in process"),
        (3, "`GetItems`, full, in process"),
    ] {
        let v = &runs[slot];
        let (lo, hi) = v.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        println!(
            "| {name} | {:.1} | {lo:.1}–{hi:.1} | {:.2}× |",
            median(v),
            median(v) / joined
        );
    }
}
