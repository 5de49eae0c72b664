//! The rerank call as the gateway makes it: a pool of 200 ranked candidates (as columns) for 20
//! slots, reranked by the service over the bundled catalogue, its answer encoded and decoded
//! again (what the rerank pod and the gateway each do with it). Side by side in interleaved
//! rounds: the whole answer (every item's action: what a full trace keeps) against the served
//! items' actions only (`served_actions_only`, what the gateway asks for a summary trace). Prints
//! µs per call (median of rounds), the answer's bytes and actions, and the ratio to the whole.
//!
//! `cargo bench -p recstack-services --bench rerank`

use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use recstack_core::rerank::RerankConfig;
use recstack_offline::build::{self, BuildParams, Progress};
use recstack_offline::dataset::{self, Dataset};
use recstack_services::features::Snapshot;
use recstack_services::rerank::proto::{RerankRequest, RerankResponse};
use recstack_services::rerank::{Experiment, RerankMetrics, RerankService};

const POOL: usize = 200;
const USERS: usize = 100;
const CALLS: usize = 5_000;
const ROUNDS: usize = 7;

fn main() {
    let ds = Dataset::load_movietweetings(&dataset::bundled_dir()).expect("bundled data");
    eprintln!("building artifacts from the bundled data …");
    let a = build::build(&ds, &BuildParams::default(), &Progress::new(true)).expect("build");
    let service = RerankService::new(
        Arc::new(Snapshot::from_artifacts(&a)),
        RerankConfig::default(),
        Experiment::default(),
        Arc::new(RerankMetrics::default()),
    );
    // Each user's pool: 200 items scattered over the catalogue, best first, as the gateway
    // sends them (columns).
    let requests = |served_actions_only: bool| -> Vec<RerankRequest> {
        (0..USERS)
            .map(|u| {
                let ids: Vec<&str> = (0..POOL)
                    .map(|k| a.items[(u * 31 + k * 7_919) % a.items.len()].id.as_str())
                    .collect();
                let (packed_ids, packed_id_ends) = recstack_services::id_columns::pack(ids.iter().copied());
                RerankRequest {
                    user_id: format!("u{u}"),
                    k: 20,
                    packed_ids,
                    packed_id_ends,
                    packed_scores: (0..POOL).map(|k| 1.0 - k as f32 / POOL as f32).collect(),
                    served_actions_only,
                    ..Default::default()
                }
            })
            .collect()
    };
    let modes = [
        ("whole answer", requests(false)),
        ("served actions only", requests(true)),
    ];
    // One call: rerank, encode (the rerank pod), decode (the gateway). Returns the answer's
    // bytes and actions.
    let call = |req: &RerankRequest| -> (usize, usize) {
        let answer = service.rerank(req).expect("a valid request");
        let bytes = answer.encode_to_vec();
        let back = RerankResponse::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(back.items.len(), 20);
        (bytes.len(), back.actions.len())
    };
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut sizes = vec![(0usize, 0usize); modes.len()];
    for round in 0..ROUNDS {
        for (m, (_, reqs)) in modes.iter().enumerate() {
            let t = Instant::now();
            let (mut bytes, mut actions) = (0, 0);
            for i in 0..CALLS {
                let (b, n) = std::hint::black_box(call(&reqs[i % reqs.len()]));
                bytes += b;
                actions += n;
            }
            runs[m].push(t.elapsed().as_secs_f64() * 1e6 / CALLS as f64);
            sizes[m] = (bytes / CALLS, actions / CALLS);
        }
        eprintln!("round {}/{ROUNDS} done", round + 1);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let medians: Vec<f64> = runs.iter_mut().map(median).collect();
    println!("| answer | µs per call (rerank, encode, decode) | answer bytes | actions | vs whole answer |");
    println!("|---|---:|---:|---:|---:|");
    for (m, (name, _)) in modes.iter().enumerate() {
        println!(
            "| {name} | {:.1} | {} | {} | {:.2}× |",
            medians[m],
            sizes[m].0,
            sizes[m].1,
            medians[m] / medians[0]
        );
    }
}
