//! What a degraded answer gives up: the quality of the served list at each degradation level,
//! on the time-split holdout, printed as a Markdown table.
//!
//! The local stack (services linked over gRPC on loopback) is started once per setting with
//! load thresholds that start every request at that level (`serve::served`, as `recstack eval`); every held-out user asks for 20 items over gRPC;
//! recall@20 and NDCG@20 of the served list against the user's held-out items, the distinct
//! genres in it (what rerank's MMR buys with relevance), and the gateway's mean time. This is
//! the price of the latency objective's shedding (`full` → `reduced`), of the load levels
//! below it, and of rerank's diversity (the rows with MMR off).
//!
//! `cargo bench -p recstack-services --bench levels` (onnxruntime from the project venv).

use std::collections::{BTreeMap, HashSet};

use recstack_core::degrade::LevelPlan;
use recstack_offline::build::{self, BuildParams, Progress};
use recstack_offline::dataset;
use recstack_offline::eval::{self, ndcg_at, recall_at};
use recstack_services::gateway::GatewayConfig;
use recstack_services::ranking::service::ModelSources;
use recstack_services::serve::served::{Setting, serve_lists};

const N: u32 = 20;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    eprintln!("building artifacts from the bundled data …");
    let root = tempfile::tempdir().expect("temp dir");
    let (_, a) = build::build_dir(
        &dataset::bundled_dir(),
        root.path(),
        &BuildParams::default(),
        Some(&recstack_offline::build::seq::bundled_dir()),
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
    let item_index = eval::item_index(&a);

    let plan = |p: &LevelPlan| format!("{} candidates, ranks {}", p.candidates, p.rank_limit);
    // Every level as `recstack eval` serves it, and two narrower full levels: how far down
    // recall's order the ranker reaches.
    let narrower = |rank_limit: usize| {
        let full = Setting::at("full");
        Setting {
            name: format!("full, ranks {rank_limit}"),
            full: LevelPlan {
                rank_limit,
                ..full.full.clone()
            },
            ..full
        }
    };
    let mut settings = Setting::standard();
    settings.insert(1, narrower(100));
    settings.insert(2, narrower(20));
    let users: Vec<String> = truth.keys().map(|u| u.to_string()).collect();
    println!("| level | what it serves | users | recall@20 | NDCG@20 | genres in the 20 | gateway mean ms |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for setting in settings {
        let level = setting.level;
        let mut what = match level {
            "full" => plan(&setting.full),
            "reduced" => plan(&GatewayConfig::default().reduced),
            "popular" => "the hot list minus recent items".to_string(),
            _ => "the precomputed list".to_string(),
        };
        if setting.rerank.mmr_lambda == 1.0 {
            what.push_str(", no MMR");
        }
        let model = ModelSources::cpu(recstack_core::source_file("models/gbdt/model.onnx"));
        let answers = serve_lists(root.path(), model, &setting, &users, N, |k| {
            if k % 1_000 == 0 {
                eprintln!("{}: {k}/{} users", setting.name, users.len());
            }
        })
        .await
        .expect("served lists");
        let (mut recall, mut ndcg, mut genres, mut gateway_us) = (0.0, 0.0, 0usize, 0u64);
        for (r, held_out) in answers.iter().zip(truth.values()) {
            assert_eq!(r.level, level);
            let served: Vec<u32> = r
                .items
                .iter()
                .filter_map(|i| item_index.get(i.as_str()).copied())
                .collect();
            recall += recall_at(&served, held_out, N as usize);
            genres += served
                .iter()
                .flat_map(|&i| &a.items[i as usize].genres)
                .collect::<HashSet<_>>()
                .len();
            ndcg += ndcg_at(&served, held_out, N as usize);
            gateway_us += u64::from(r.gateway_us);
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
    }
}
