//! What a degraded answer gives up: the quality of the served list at each degradation level,
//! on the time-split holdout, printed as a Markdown table.
//!
//! The local stack (in process, direct links) is started once per level with load thresholds
//! that start every request at that level; every held-out user asks for 20 items over gRPC;
//! recall@20 and NDCG@20 of the served list against the user's held-out items, the distinct
//! genres in it (what rerank's MMR buys with relevance), and the gateway's mean time. This is
//! the price of the latency objective's shedding (`full` → `reduced`), of the load levels
//! below it, and of rerank's diversity (the rows with MMR off).
//!
//! `cargo bench -p recstack-services --bench levels` (onnxruntime from the project venv).

use std::collections::{BTreeMap, HashSet};

use recstack_core::degrade::LevelPlan;
use recstack_core::rerank::RerankConfig;
use recstack_offline::build::{self, BuildParams, Progress};
use recstack_offline::dataset;
use recstack_offline::eval::{ndcg_at, recall_at};
use recstack_services::gateway::GatewayConfig;
use recstack_services::gateway::degrade::LoadThresholds;
use recstack_services::gateway::proto::RecommendRequest;
use recstack_services::gateway::proto::gateway_client::GatewayClient;
use recstack_services::ranking::service::ModelSources;
use recstack_services::rerank::Experiment;
use recstack_services::serve::{self, LocalAddrs, LocalOptions, LocalTraces};

const N: u32 = 20;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    eprintln!("building artifacts from the bundled data …");
    let root = tempfile::tempdir().expect("temp dir");
    let (_, a) = build::build_dir(
        &dataset::bundled_dir(),
        root.path(),
        &BuildParams::default(),
        &Progress::new(true),
    )
    .expect("build");

    // Held-out items by user id.
    let mut truth: BTreeMap<&str, HashSet<u32>> = BTreeMap::new();
    for r in &a.holdout {
        truth
            .entry(a.users[r.user as usize].as_str())
            .or_default()
            .insert(r.item);
    }
    let item_index: std::collections::HashMap<&str, u32> = a
        .items
        .iter()
        .enumerate()
        .map(|(i, it)| (it.id.as_str(), i as u32))
        .collect();

    let defaults = GatewayConfig::default();
    let plan = |p: &LevelPlan| format!("{} candidates, ranks {}", p.candidates, p.rank_limit);
    let full = |rank_limit| LevelPlan {
        rank_limit,
        ..defaults.full.clone()
    };
    // (level, in-flight thresholds, the full level's plan, rerank's rules): the second and
    // third rows narrow how far down recall's order the ranker reaches at the full level; the
    // MMR-off rows price rerank's diversity.
    let all = usize::MAX;
    let rules = RerankConfig::default();
    let no_mmr = RerankConfig {
        mmr_lambda: 1.0,
        ..RerankConfig::default()
    };
    let levels = [
        ("full", (all, all, all), defaults.full.clone(), &rules),
        ("full", (all, all, all), full(100), &rules),
        ("full", (all, all, all), full(20), &rules),
        ("full", (all, all, all), defaults.full.clone(), &no_mmr),
        ("reduced", (0, all, all), defaults.full.clone(), &rules),
        ("popular", (0, 0, all), defaults.full.clone(), &rules),
        ("popular", (0, 0, all), defaults.full.clone(), &no_mmr),
        ("fallback", (0, 0, 0), defaults.full.clone(), &rules),
    ];
    println!("| level | what it serves | users | recall@20 | NDCG@20 | genres in the 20 | gateway mean ms |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (level, (reduced, popular, fallback), full_plan, rerank) in levels {
        let mut what = match level {
            "full" => plan(&full_plan),
            "reduced" => plan(&defaults.reduced),
            "popular" => "the hot list minus recent items".to_string(),
            _ => "the precomputed list".to_string(),
        };
        if rerank.mmr_lambda == 1.0 {
            what.push_str(", no MMR");
        }
        let config = GatewayConfig {
            // In-flight counts at or above these start a request lower: 0 is every request.
            load: LoadThresholds {
                reduced,
                popular,
                fallback,
            },
            latency: None,
            full: full_plan,
            ..GatewayConfig::default()
        };
        let opts = LocalOptions {
            direct_links: true,
            addrs: LocalAddrs::ephemeral(),
            model: ModelSources::cpu(recstack_core::source_file("models/deepfm/model.onnx")),
            redis_url: None,
            gateway: config,
            rerank: rerank.clone(),
            // The served A/B split of MMR's trade-off (0.7 / 0.5), or none: MMR off for all.
            experiment: if rerank.mmr_lambda == 1.0 {
                Experiment {
                    variants: Vec::new(),
                    ..Experiment::default()
                }
            } else {
                Experiment::default()
            },
            traces: LocalTraces::Memory(1_000),
            dashboard: None,
            events: None,
        };
        let stack = serve::start_local(root.path(), opts).await.expect("local stack");
        let mut client = GatewayClient::connect(stack.get("gateway").grpc_url())
            .await
            .expect("gateway");
        let (mut recall, mut ndcg, mut genres, mut gateway_us) = (0.0, 0.0, 0usize, 0u64);
        for (k, (user, held_out)) in truth.iter().enumerate() {
            let r = client
                .recommend(RecommendRequest {
                    user_id: user.to_string(),
                    n: N,
                    ..Default::default()
                })
                .await
                .expect("recommend")
                .into_inner();
            assert_eq!(r.level, level, "{user}: {:?}", r.degraded);
            let served: Vec<u32> = r
                .items
                .iter()
                .filter_map(|i| item_index.get(i.item_id.as_str()).copied())
                .collect();
            recall += recall_at(&served, held_out, N as usize);
            genres += served
                .iter()
                .flat_map(|&i| &a.items[i as usize].genres)
                .collect::<HashSet<_>>()
                .len();
            ndcg += ndcg_at(&served, held_out, N as usize);
            gateway_us += u64::from(r.latency_us);
            if (k + 1) % 1_000 == 0 {
                eprintln!("{level}: {}/{} users", k + 1, truth.len());
            }
        }
        let n = truth.len() as f64;
        println!(
            "| {level} | {what} | {} | {:.4} | {:.4} | {:.1} | {:.2} |",
            truth.len(),
            recall / n,
            ndcg / n,
            genres as f64 / n,
            gateway_us as f64 / n / 1e3
        );
        stack.stop().await.expect("stop");
    }
}
