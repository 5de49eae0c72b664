//! The cost of tracing on the gateway. The local stack (direct links, bundled data and model)
//! serves the same requests, closed loop at a fixed concurrency, with traces off, summary
//! traces into the embedded store (the default: every request), and full traces of every
//! request (every candidate; the default samples 1 %). Prints req/s and latency percentiles
//! with the ratio to tracing off, and the process's CPU time per request (the clients, the
//! stack and the trace writer, to the store's last commit) with its ratio to tracing off — on
//! a saturated machine the cost in throughput, without the scheduling noise — and the trace
//! store's writer thread's own CPU per request and its share of the process's (the thread's
//! own clock, from the gateway's `…_trace_writer_store_cpu_seconds_total`, so without that
//! noise), as a Markdown table. Then read-your-trace: the gap between a
//! response and its trace read back through the query API (asked for the moment the response
//! arrives), for summary and debug (full) traces, p50 and p99. Then a what-if replay of one
//! request: the replay through the gateway (HTTP, a debug request with an item blocked), and
//! with the comparison read from the query API, p50 and p99.
//!
//! `cargo bench -p recstack-services --bench tracing` (`-- profile summary` runs one mode alone,
//! to profile it under `perf record`)

#[path = "common/cpu.rs"]
mod cpu;
use cpu::ProcessCpu;

use std::sync::Arc;
use std::time::{Duration, Instant};

use recstack_core::rerank::RerankConfig;
use recstack_offline::build::{self, BuildParams, Progress};
use recstack_offline::dataset;
use recstack_services::gateway::GatewayConfig;
use recstack_services::gateway::proto::RecommendRequest;
use recstack_services::gateway::proto::gateway_client::GatewayClient;
use recstack_services::ranking::service::ModelSources;
use recstack_services::rerank::Experiment;
use recstack_services::serve::{self, LocalAddrs, LocalOptions, LocalTraces};

const CONCURRENCY: usize = 4;
const REQUESTS: usize = 800;
const ROUNDS: usize = 5;
/// Runs of one mode under `-- profile MODE`.
const PROFILE_RUNS: usize = 8;

/// Where a run keeps its traces, given a scratch directory.
type TracesIn = fn(&std::path::Path) -> LocalTraces;

struct Run {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// The whole process's CPU time per request (user + system), ms.
    cpu_ms: f64,
    /// The trace store's writer thread's CPU time per request, ms (0 without one), from the
    /// gateway's metrics.
    writer_ms: f64,
}

/// The trace store's own writing CPU so far, in s, from the gateway's metrics
/// (`recstack_gateway_trace_writer_store_cpu_seconds_total`; 0 without traces).
async fn store_cpu(metrics_url: &str) -> f64 {
    let text = reqwest::get(metrics_url).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("recstack_gateway_trace_writer_store_cpu_seconds_total "))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// The store's writing CPU once it has written what it was given: read until it has not moved
/// for longer than the writer's linger (the last batch waits that long to fill).
async fn store_cpu_when_idle(metrics_url: &str) -> Duration {
    let mut last = store_cpu(metrics_url).await;
    let mut still = Duration::ZERO;
    const STEP: Duration = Duration::from_millis(100);
    while still < Duration::from_millis(600) {
        tokio::time::sleep(STEP).await;
        let now = store_cpu(metrics_url).await;
        still = if now == last { still + STEP } else { Duration::ZERO };
        last = now;
    }
    Duration::from_secs_f64(last)
}

/// The local stack (direct links, the bundled model) with `traces`, `full` of them in full.
fn options(traces: LocalTraces, full: f64) -> LocalOptions {
    LocalOptions {
        direct_links: true,
        addrs: LocalAddrs::ephemeral(),
        model: ModelSources::cpu(recstack_core::source_file("models/gbdt/model.onnx")),
        redis_url: None,
        gateway: GatewayConfig {
            full_trace_sample: full,
            ..GatewayConfig::default()
        },
        rerank: RerankConfig::default(),
        experiment: Experiment::default(),
        traces,
        dashboard: None,
        events: None,
    }
}

async fn run(root: &std::path::Path, users: &[String], traces: LocalTraces, full: f64) -> Run {
    let stack = serve::start_local(root, options(traces, full))
        .await
        .expect("local stack");
    let client = GatewayClient::connect(stack.get("gateway").grpc_url()).await.unwrap();
    let users = Arc::new(users.to_vec());
    // Warm-up.
    for u in users.iter().take(50) {
        let mut c = client.clone();
        c.recommend(request(u)).await.unwrap();
    }
    let cpu_clock = ProcessCpu::new();
    let metrics_url = format!("http://{}/metrics", stack.get("gateway").http);
    let writer_start = store_cpu_when_idle(&metrics_url).await;
    let cpu_start = cpu_clock.now();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let (mut c, users) = (client.clone(), users.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for k in (w..REQUESTS).step_by(CONCURRENCY) {
                let t = Instant::now();
                let r = c
                    .recommend(request(&users[k % users.len()]))
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(r.items.len(), 20);
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat: Vec<Duration> = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    // The writer's time up to its last batch's commit (the checkpoint as the store closes is
    // not in it; the process's time below is).
    let writer = store_cpu_when_idle(&metrics_url).await - writer_start;
    // Stopping flushes the trace writer: its last batch's commit is part of the cost.
    stack.stop().await.unwrap();
    let cpu = cpu_clock.now() - cpu_start;
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    Run {
        rate: REQUESTS as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        cpu_ms: cpu.as_secs_f64() * 1e3 / REQUESTS as f64,
        writer_ms: writer.as_secs_f64() * 1e3 / REQUESTS as f64,
    }
}

/// Read-after-response gaps (ms, sorted) of `n` requests, one at a time: each response, then
/// its trace from the query API at once (the API waits for a trace this young).
async fn read_gaps(
    root: &std::path::Path,
    users: &[String],
    file: std::path::PathBuf,
    debug: bool,
    n: usize,
) -> Vec<f64> {
    let opts = options(LocalTraces::Embedded(file), 0.0);
    let stack = serve::start_local(root, opts).await.expect("local stack");
    let mut client = GatewayClient::connect(stack.get("gateway").grpc_url()).await.unwrap();
    let http = reqwest::Client::new();
    let api = format!("http://{}/v1/traces", stack.get("traces").http);
    let mut gaps = Vec::with_capacity(n);
    for user in users.iter().cycle().take(n) {
        let mut req = request(user);
        req.debug = debug;
        let r = client.recommend(req).await.unwrap().into_inner();
        let answered = Instant::now();
        let got = http.get(format!("{api}/{}", r.request_id)).send().await.unwrap();
        assert_eq!(got.status(), 200, "{}", r.request_id);
        let _ = got.bytes().await.unwrap();
        gaps.push(answered.elapsed().as_secs_f64() * 1e3);
    }
    stack.stop().await.unwrap();
    gaps.sort_unstable_by(f64::total_cmp);
    gaps
}

fn request(user: &str) -> RecommendRequest {
    RecommendRequest {
        user_id: user.to_string(),
        n: 20,
        ..Default::default()
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    eprintln!("building artifacts from the bundled data …");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("artifacts");
    let (_, a) = build::build_dir(
        &dataset::bundled_dir(),
        &root,
        &BuildParams::default(),
        Some(&build::seq::bundled_dir()),
        &Progress::new(true),
    )
    .expect("build");
    let users: Vec<String> = a.users.iter().step_by(7).take(400).cloned().collect();

    let configs: [(&str, TracesIn, f64); 3] = [
        ("off", |_| LocalTraces::Off, 0.0),
        (
            "summary, every request",
            |d| LocalTraces::Embedded(d.join("summary.sqlite")),
            0.0,
        ),
        (
            "full, every request",
            |d| LocalTraces::Embedded(d.join("full.sqlite")),
            1.0,
        ),
    ];
    // `-- profile off|summary|full`: that mode alone, run after run, to profile under `perf
    // record` (each run's CPU per request printed; no table).
    let args: Vec<String> = std::env::args().collect();
    if let Some(k) = args.iter().position(|a| a == "profile") {
        let mode = args.get(k + 1).map(String::as_str).unwrap_or("summary");
        let (name, traces, full) = configs
            .iter()
            .find(|c| c.0.starts_with(mode))
            .unwrap_or_else(|| panic!("profile: no mode {mode} (off, summary, full)"));
        for run_no in 0..PROFILE_RUNS {
            let r = run(&root, &users, traces(tmp.path()), *full).await;
            println!(
                "{name}, run {run_no}: {:.0} req/s, {:.3} CPU ms/request, writer {:.3}",
                r.rate, r.cpu_ms, r.writer_ms
            );
        }
        return;
    }
    // Interleaved rounds; the best round of each (the least disturbed by the machine), and
    // each round's ratio to tracing off in the same round (paired: the machine's drift between
    // rounds cancels), whose median is the cost.
    let mut best: Vec<Option<Run>> = (0..configs.len()).map(|_| None).collect();
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut cpu_ratios: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    // The writer's share of the process's CPU in each run.
    let mut writer_share: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut writer: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    for round in 0..ROUNDS {
        let (mut off, mut off_cpu) = (0.0, 0.0);
        for (i, (name, traces, full)) in configs.iter().enumerate() {
            let r = run(&root, &users, traces(tmp.path()), *full).await;
            eprintln!(
                "round {round} {name}: {:.0} req/s, {:.3} CPU ms/request, writer {:.3}",
                r.rate, r.cpu_ms, r.writer_ms
            );
            if i == 0 {
                (off, off_cpu) = (r.rate, r.cpu_ms);
            }
            ratios[i].push(r.rate / off);
            cpu_ratios[i].push(r.cpu_ms / off_cpu);
            cpu[i].push(r.cpu_ms);
            writer[i].push(r.writer_ms);
            writer_share[i].push(r.writer_ms / r.cpu_ms);
            if best[i].as_ref().is_none_or(|b| r.rate > b.rate) {
                best[i] = Some(r);
            }
        }
    }
    println!(
        "| traces | best req/s | p50 ms | p99 ms | req/s × off, median of rounds | range | CPU ms/request, median | CPU × off, median of rounds | range | writer CPU ms/request, median | writer share of CPU, median | range |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let median_range = |v: &mut Vec<f64>| {
        v.sort_unstable_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    for i in 0..configs.len() {
        let r = best[i].as_ref().unwrap();
        let (rate, rate_lo, rate_hi) = median_range(&mut ratios[i]);
        let (cpu_ms, _, _) = median_range(&mut cpu[i]);
        let (c, c_lo, c_hi) = median_range(&mut cpu_ratios[i]);
        let (w, _, _) = median_range(&mut writer[i]);
        let (share, share_lo, share_hi) = median_range(&mut writer_share[i]);
        let pct = |x: f64| format!("{:.1} %", x * 100.0);
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {rate:.3} | {rate_lo:.2}–{rate_hi:.2} | {cpu_ms:.3} | {c:.3} | {c_lo:.3}–{c_hi:.3} | {w:.3} | {} | {}–{} |",
            configs[i].0,
            r.rate,
            r.p50_ms,
            r.p99_ms,
            pct(share),
            pct(share_lo),
            pct(share_hi),
        );
    }
    println!("\n{CONCURRENCY} concurrent clients, {REQUESTS} requests of n=20 per run, {ROUNDS} interleaved rounds");

    const READS: usize = 200;
    println!("\n| trace | reads | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    for (name, debug) in [("summary", false), ("full (debug)", true)] {
        let file = tmp.path().join(format!("gap-{debug}.sqlite"));
        let gaps = read_gaps(&root, &users, file, debug, READS).await;
        let pct = |p: f64| gaps[((gaps.len() - 1) as f64 * p) as usize];
        println!(
            "| {name} | {READS} | {:.1} | {:.1} | {:.1} |",
            pct(0.5),
            pct(0.99),
            gaps[gaps.len() - 1]
        );
    }
    println!("\nread-after-response gap: from the response to its trace read back through the query API");

    const REPLAYS: usize = 50;
    let (replay, with_compare) = replays(&root, &users, tmp.path().join("replay.sqlite"), REPLAYS).await;
    let pct = |v: &[f64], p: f64| v[((v.len() - 1) as f64 * p) as usize];
    println!("\n| what-if replay of one request | replays | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|");
    println!(
        "| through the gateway (a debug request, first item blocked) | {REPLAYS} | {:.1} | {:.1} |",
        pct(&replay, 0.5),
        pct(&replay, 0.99)
    );
    println!(
        "| and the comparison from the query API | {REPLAYS} | {:.1} | {:.1} |",
        pct(&with_compare, 0.5),
        pct(&with_compare, 0.99)
    );
}

/// `n` what-if replays, one at a time, each of a stored debug request with its first item
/// blocked: the gateway's answer (ms, sorted), and with the comparison read back.
async fn replays(root: &std::path::Path, users: &[String], file: std::path::PathBuf, n: usize) -> (Vec<f64>, Vec<f64>) {
    let opts = options(LocalTraces::Embedded(file), 0.0);
    let stack = serve::start_local(root, opts).await.expect("local stack");
    let mut client = GatewayClient::connect(stack.get("gateway").grpc_url()).await.unwrap();
    let http = reqwest::Client::new();
    let gateway = format!("http://{}/v1/recommend", stack.get("gateway").http);
    let api = format!("http://{}/v1/compare", stack.get("traces").http);
    let (mut replay, mut both) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for user in users.iter().cycle().take(n) {
        let mut req = request(user);
        req.debug = true;
        let original = client.recommend(req).await.unwrap().into_inner();
        let first = original.items[0].item_id.clone();
        let body = serde_json::json!({"user_id": user, "n": 20,
            "what_if": {"replay_of": original.request_id, "block": [first]}});
        let t = Instant::now();
        let answer: serde_json::Value = http
            .post(&gateway)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        replay.push(t.elapsed().as_secs_f64() * 1e3);
        let b = answer["request_id"].as_str().expect("a replay's request id");
        let got = http
            .get(&api)
            .query(&[("a", original.request_id.as_str()), ("b", b)])
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), 200);
        let c: serde_json::Value = got.json().await.unwrap();
        assert!(c["rows"].as_array().is_some_and(|r| !r.is_empty()));
        both.push(t.elapsed().as_secs_f64() * 1e3);
    }
    stack.stop().await.unwrap();
    replay.sort_unstable_by(f64::total_cmp);
    both.sort_unstable_by(f64::total_cmp);
    (replay, both)
}
