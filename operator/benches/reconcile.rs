//! Reconciles 1,000 stacks against the in-memory API and prints a table: time per reconcile
//! for the create pass and the no-op pass, next to the pure render (the baseline: the same
//! work without any API calls), writes made by the no-op pass, and peak memory.
//!
//! `cargo bench -p recstack-operator --bench reconcile` (`-- --stacks N` for another size).

use std::sync::Arc;
use std::time::{Duration, Instant};

use recstack_crds::RecommenderStack;
use recstack_operator::metrics::Metrics;
use recstack_operator::mock_api::MockApi;
use recstack_operator::reconcile::{self, Context};
use recstack_operator::render;
use serde_json::json;

fn stacks(n: usize) -> Vec<RecommenderStack> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/samples/gpu-ranking.yaml"
    ))
    .unwrap();
    let base: RecommenderStack = serde_yaml::from_str(&text).unwrap();
    (0..n)
        .map(|i| {
            let mut s = base.clone();
            s.metadata.name = Some(format!("stack-{i:04}"));
            s.metadata.namespace = Some(format!("team-{}", i % 10));
            s.metadata.uid = Some(format!("uid-{i}"));
            s.metadata.generation = Some(1);
            s.spec.recall.replicas = Some(1 + (i % 5) as i32);
            s
        })
        .collect()
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn collection(s: &RecommenderStack) -> String {
    format!(
        "/apis/recstack.io/v1alpha1/namespaces/{}/recommenderstacks",
        s.metadata.namespace.as_deref().unwrap()
    )
}

/// One reconcile of every stack (read back from the API first, as a watch would deliver it).
async fn pass(label: &str, api: &MockApi, ctx: &Arc<Context>, all: &[RecommenderStack]) -> Duration {
    let start = Instant::now();
    for (i, s) in all.iter().enumerate() {
        let name = s.metadata.name.as_deref().unwrap();
        let stored: RecommenderStack = serde_json::from_value(api.get(&collection(s), name).unwrap()).unwrap();
        reconcile::reconcile(Arc::new(stored), ctx.clone())
            .await
            .expect("reconcile");
        if (i + 1) % 250 == 0 {
            eprintln!("  {label}: {}/{}", i + 1, all.len());
        }
    }
    start.elapsed()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .skip_while(|a| a != "--stacks")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let all = stacks(n);

    // Baseline: the pure desired-state render of every stack.
    let start = Instant::now();
    let mut objects = 0;
    for s in &all {
        objects += render::render(s).unwrap().len();
    }
    let render_time = start.elapsed();

    let (client, api) = MockApi::start();
    api.set_recording(false);
    for s in &all {
        let mut v = serde_json::to_value(s).unwrap();
        v["metadata"]["generation"] = json!(1);
        api.put(&collection(s), s.metadata.name.as_deref().unwrap(), v);
    }
    let ctx = Arc::new(Context::new(client, Arc::new(Metrics::default()), Some("bench".into())));

    eprintln!("reconciling {n} stacks ({objects} child objects)");
    let finalizer = pass("finalizer", &api, &ctx, &all).await;
    let create = pass("create", &api, &ctx, &all).await;
    api.set_recording(true);
    api.clear_calls();
    let noop = pass("no-op", &api, &ctx, &all).await;
    let calls = api.calls();
    let writes = calls.iter().filter(|c| c.is_write()).count();
    let reads = calls.len() - writes;

    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    let base = per(render_time);
    println!("\nreconcile benchmark: {n} stacks, {objects} child objects, in-memory API (operator/src/mock_api.rs)\n");
    println!("| pass | total | per stack | vs render |");
    println!("|---|---:|---:|---:|");
    println!(
        "| render only (baseline, no API) | {:.1} ms | {:.0} µs | 1.0× |",
        render_time.as_secs_f64() * 1e3,
        base
    );
    for (name, d) in [
        ("add finalizer", finalizer),
        ("create (apply every child)", create),
        ("no-op (nothing changed)", noop),
    ] {
        println!(
            "| {name} | {:.1} ms | {:.0} µs | {:.1}× |",
            d.as_secs_f64() * 1e3,
            per(d),
            per(d) / base
        );
    }
    println!(
        "\nno-op pass: {writes} writes, {reads} reads ({:.1} reads per stack)",
        reads as f64 / n as f64
    );
    println!(
        "peak RSS: {:.1} MiB (the in-memory API holds every object)",
        peak_rss_mib()
    );
    assert_eq!(writes, 0, "a no-op pass must not write");
}
