//! Recall benchmarks on the bundled data, printed as Markdown tables:
//!
//! 1. each channel and the merge in process;
//! 2. the HNSW index against exact search (and faiss, via `scripts/bench`, on the same files);
//! 3. the recall gRPC service under load: all seven channels at 1,000 candidates against a
//!    single-channel lookup, with lists computed, cached, and on users' real-time items, and
//!    candidates as columns against a message each.
//!
//! `cargo bench -p recstack-services --bench recall` (`scripts/bench` adds the faiss and
//! `implicit` peers; `-- channels` prints the first table alone). Set `RECSTACK_BENCH_EXPORT=DIR` to write the ANN vectors, queries and
//! exact neighbours for the faiss peer.

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/cpu.rs"]
mod cpu;

use cpu::ProcessCpu;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recstack_core::recall::seen::SeenConfig;
use recstack_offline::build::ann::{ItemIndex, UnitVec};
use recstack_offline::build::{self, BuildParams, Progress};
use recstack_offline::dataset::{self, Dataset};
use recstack_services::recall::packed::unpack;
use recstack_services::recall::proto::RecallRequest;
use recstack_services::recall::proto::recall_client::RecallClient;
use recstack_services::recall::proto::recall_server::RecallServer;
use recstack_services::recall::{ArtifactSlot, Loaded, MemorySeenStore, RecallMetrics, RecallService};
use recstack_services::stream::sink::{FeatureSink, MemoryStore, StreamStore};

fn main() {
    let ds = Dataset::load_movietweetings(&dataset::bundled_dir()).expect("bundled data");
    eprintln!("building artifacts from the bundled data …");
    let params = BuildParams::default();
    let mut artifacts = build::build(&ds, &params, &Progress::new(true)).expect("build");
    // The vector channel in the ALS space first, then with the bundled sequence model (its
    // ONNX user tower), which the rest of the bench serves as the stack does.
    let als_space = vector_times(&artifacts);
    let source = build::seq::SeqSource::read(&build::seq::bundled_dir()).expect("the bundled sequence model");
    build::seq::attach(&mut artifacts, &source, &params).expect("sequence model");
    recstack_services::recall::tower::attach(&mut artifacts).expect("the user tower (ONNX Runtime)");
    channels(&artifacts);
    print_times(
        "vector, in the ALS space (no sequence model; the channel before)",
        &mut { als_space },
    );
    if std::env::args().any(|a| a == "channels") {
        return; // `-- channels`: the first table alone
    }
    ann(&artifacts, &params);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(service(artifacts));
}

// === channels ===

/// Time of each channel (top 200) and of the merge, in process, over the held-out users.
fn channels(a: &build::Artifacts) {
    use recstack_core::recall::{self, Channel};
    let users: Vec<u32> = a
        .holdout
        .iter()
        .map(|r| r.user)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    println!(
        "\n### Channels in process: top 200 for each of {} held-out users, one thread\n",
        users.len()
    );
    println!("| channel | mean | p99 |");
    println!("|---|---:|---:|");
    let mut lists_by_user: Vec<Vec<recall::ChannelList>> = vec![Vec::new(); users.len()];
    for c in Channel::ALL {
        let mut times: Vec<Duration> = Vec::with_capacity(users.len());
        for (k, &u) in users.iter().enumerate() {
            let start = Instant::now();
            let list = recall::channel(a, c, u, 200);
            times.push(start.elapsed());
            lists_by_user[k].push(list);
        }
        print_times(c.name(), &mut times);
    }
    let mut times: Vec<Duration> = lists_by_user
        .iter()
        .map(|lists| {
            let start = Instant::now();
            std::hint::black_box(recall::merge(lists, |_| 200, 1000));
            start.elapsed()
        })
        .collect();
    print_times("merge (7 × 200 → 1,000)", &mut times);
}

/// The vector channel's time (top 200) for each held-out user.
fn vector_times(a: &build::Artifacts) -> Vec<Duration> {
    let users: std::collections::BTreeSet<u32> = a.holdout.iter().map(|r| r.user).collect();
    users
        .into_iter()
        .map(|u| {
            let start = Instant::now();
            std::hint::black_box(recstack_core::recall::channel(
                a,
                recstack_core::recall::Channel::Vector,
                u,
                200,
            ));
            start.elapsed()
        })
        .collect()
}

fn print_times(name: &str, times: &mut [Duration]) {
    times.sort();
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    println!(
        "| {name} | {:.0} µs | {:.0} µs |",
        mean.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
}

// === 2. ANN ===

/// ef_search values of the ANN table (from the smallest that still answers 10), and the passes
/// over the queries timed at each (the peer script uses the same).
const ANN_EF: [usize; 8] = [10, 12, 16, 24, 32, 64, 128, 256];
const ANN_PASSES: usize = 5;

fn ann(a: &build::Artifacts, params: &BuildParams) {
    let items: Vec<(u32, UnitVec)> = (0..a.factors.n_items() as u32)
        .filter(|&i| a.item_features[i as usize].ratings > 0)
        .map(|i| (i, UnitVec::new(a.factors.item(i))))
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let queries: Vec<UnitVec> = (0..1000)
        .map(|_| {
            let (_, v) = &items[rng.gen_range(0..items.len())];
            // A nearby point, not the item itself.
            UnitVec::new(&v.0.iter().map(|x| x + rng.gen_range(-0.05..0.05)).collect::<Vec<_>>())
        })
        .collect();
    // The ground truth, timed: it is also the brute-force row of the table.
    let start = Instant::now();
    let exact = exact_search(&items, &queries);
    let exact_qps = queries.len() as f64 / start.elapsed().as_secs_f64();
    if let Ok(dir) = std::env::var("RECSTACK_BENCH_EXPORT") {
        export_ann(&dir, &items, &queries, &exact);
    }

    println!(
        "\n### ANN: {} item vectors (ALS, {} dims, cosine), 1,000 queries, one thread\n",
        items.len(),
        a.factors.dim
    );
    // Many rarely rated items have near-identical vectors, so the exact top 10 often ends in a
    // tie that float rounding breaks one way or the other. "Tie-aware" counts a found item whose
    // true similarity (in f64) reaches the exact 10th best's, less 1e-5.
    let position: std::collections::HashMap<u32, usize> = items.iter().enumerate().map(|(p, (i, _))| (*i, p)).collect();
    let similarity = |q: &UnitVec, i: u32| -> f64 {
        let v = &items[position[&i]].1;
        q.0.iter().zip(&v.0).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum()
    };
    let tenth: Vec<f64> = queries
        .iter()
        .zip(&exact)
        .map(|(q, e)| e.iter().map(|&i| similarity(q, i)).fold(f64::INFINITY, f64::min))
        .collect();
    println!("| index | ef_search | recall@10 | recall@10, tie-aware | queries/s | build |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!("| exact (brute force) | – | 1.000 | 1.000 | {exact_qps:.0} | – |");
    for ef in ANN_EF {
        let start = Instant::now();
        let index = ItemIndex::build(items.clone(), params.seed, params.ann_ef_construction, ef);
        let build_time = start.elapsed();
        // The median of several passes over the queries: one pass takes tens of milliseconds.
        let mut passes: Vec<f64> = Vec::with_capacity(ANN_PASSES);
        let mut found: Vec<Vec<u32>> = Vec::new();
        for _ in 0..ANN_PASSES {
            let start = Instant::now();
            found = queries
                .iter()
                .map(|q| index.search(q, 10).into_iter().map(|h| h.0).collect())
                .collect();
            passes.push(queries.len() as f64 / start.elapsed().as_secs_f64());
        }
        passes.sort_by(f64::total_cmp);
        let qps = passes[ANN_PASSES / 2];
        let recall = found
            .iter()
            .zip(&exact)
            .map(|(f, e)| f.iter().filter(|i| e.contains(i)).count() as f64 / 10.0)
            .sum::<f64>()
            / queries.len() as f64;
        let tie_aware = found
            .iter()
            .zip(queries.iter().zip(&tenth))
            .map(|(f, (q, t))| f.iter().filter(|&&i| similarity(q, i) >= t - 1e-5).count() as f64 / 10.0)
            .sum::<f64>()
            / queries.len() as f64;
        println!(
            "| instant-distance HNSW | {ef} | {recall:.3} | {tie_aware:.3} | {qps:.0} | {:.1} s |",
            build_time.as_secs_f64()
        );
    }
}

/// Exact top 10 by cosine for each query.
fn exact_search(items: &[(u32, UnitVec)], queries: &[UnitVec]) -> Vec<Vec<u32>> {
    queries
        .iter()
        .map(|q| {
            let mut scored: Vec<(u32, f32)> = items
                .iter()
                .map(|(i, v)| (*i, q.0.iter().zip(&v.0).map(|(x, y)| x * y).sum()))
                .collect();
            recstack_core::topk::top_k(&mut scored, 10);
            scored.into_iter().map(|s| s.0).collect()
        })
        .collect()
}

/// f32 little-endian matrices (`items.f32`, `queries.f32`), `exact.u32` ids (positions in
/// `items.f32`), and `shape.txt` with "n_items n_queries dim".
fn export_ann(dir: &str, items: &[(u32, UnitVec)], queries: &[UnitVec], exact: &[Vec<u32>]) {
    let dir = std::path::Path::new(dir);
    std::fs::create_dir_all(dir).expect("export dir");
    let position: std::collections::HashMap<u32, u32> =
        items.iter().enumerate().map(|(p, (i, _))| (*i, p as u32)).collect();
    let write_f32 = |name: &str, rows: &mut dyn Iterator<Item = &UnitVec>| {
        let mut f = std::fs::File::create(dir.join(name)).expect("file");
        for v in rows {
            for x in &v.0 {
                f.write_all(&x.to_le_bytes()).expect("write");
            }
        }
    };
    write_f32("items.f32", &mut items.iter().map(|(_, v)| v));
    write_f32("queries.f32", &mut queries.iter());
    let mut f = std::fs::File::create(dir.join("exact.u32")).expect("file");
    for row in exact {
        for i in row {
            f.write_all(&position[i].to_le_bytes()).expect("write");
        }
    }
    std::fs::write(
        dir.join("shape.txt"),
        format!("{} {} {}\n", items.len(), queries.len(), items[0].1.0.len()),
    )
    .expect("shape");
}

// === 3. recall service ===

async fn service(artifacts: build::Artifacts) {
    let users: Vec<String> = artifacts
        .holdout
        .iter()
        .map(|r| artifacts.users[r.user as usize].clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let bytes = postcard::to_stdvec(&artifacts).expect("artifacts encode");
    let slot = Arc::new(ArtifactSlot::new(Loaded::new(manifest_named("bench"), artifacts)));
    // The stream job's store, empty until the real-time row fills it.
    let stream = Arc::new(MemoryStore::default());
    let metrics = Arc::new(RecallMetrics::default());
    let service = RecallService::new(
        slot.clone(),
        MemorySeenStore::default(),
        SeenConfig::default(),
        metrics.clone(),
    )
    .with_stream(StreamStore::Memory(stream.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RecallServer::new(service))
            .serve_with_incoming(recstack_services::ops::grpc_incoming(listener)),
    );
    let client = RecallClient::connect(format!("http://{addr}")).await.expect("connect");

    println!("\n### Recall service over gRPC (loopback, same process), 4 concurrent clients, 3,000 requests\n");
    println!("| request | candidates | req/s | p50 | p99 |");
    println!("|---|---:|---:|---:|---:|");
    let all = load(&client, &users, 1000, &[]).await;
    // The same users again: their channel lists now come from the version's cache.
    let again = load(&client, &users, 1000, &[]).await;
    let single_quotas = [
        ("item_cf", 0),
        ("user_cf", 0),
        ("als", 0),
        ("vector", 0),
        ("tag", 0),
        ("cooc", 0),
    ];
    let single = load(&client, &users, 200, &single_quotas).await;
    // The same 7-channel load while a new artifact version (with an empty list cache) is
    // loaded beside the served one and swapped in every 100 ms.
    let swapping = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let swaps = tokio::spawn({
        let (slot, swapping) = (slot.clone(), swapping.clone());
        let bytes = Arc::new(bytes);
        async move {
            let mut n = 0;
            while swapping.load(std::sync::atomic::Ordering::Relaxed) {
                let b = bytes.clone();
                let loaded = tokio::task::spawn_blocking(move || {
                    let artifacts: build::Artifacts = postcard::from_bytes(&b).expect("artifacts");
                    Loaded::new(manifest_named(&format!("swap-{n}")), artifacts)
                })
                .await
                .expect("loader");
                slot.swap(loaded);
                n += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            n
        }
    });
    let during_swaps = load(&client, &users, 1000, &[]).await;
    swapping.store(false, std::sync::atomic::Ordering::Relaxed);
    let n_swaps = swaps.await.expect("swapper");
    for (name, r) in [
        (
            "7 channels → 1,000 (first request per user: lists computed)".to_string(),
            &all,
        ),
        (
            "7 channels → 1,000 (the same users again: lists cached)".to_string(),
            &again,
        ),
        ("hot only (single-channel lookup) → 200".to_string(), &single),
        (
            format!("7 channels → 1,000, during {n_swaps} artifact swaps"),
            &during_swaps,
        ),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} ms | {:.2} ms |",
            r.candidates,
            r.rps,
            ms(r.p50),
            ms(r.p99)
        );
    }
    println!(
        "\n7-channel recall costs {:.1}× a single-channel lookup at p50 ({:.1}× at p99).",
        all.p50.as_secs_f64() / single.p50.as_secs_f64(),
        all.p99.as_secs_f64() / single.p99.as_secs_f64()
    );
    println!(
        "A user's second request (lists cached) takes {:.2}× the first at p50 ({:.2}× at p99).",
        again.p50.as_secs_f64() / all.p50.as_secs_f64(),
        again.p99.as_secs_f64() / all.p99.as_secs_f64()
    );
    wire_forms(&client, &users).await;
    realtime(&client, &users, &slot, &stream, &metrics).await;
}

/// Users with real-time items against the same users without: each user engages with 5
/// random items since the build, so item_cf, cooc and the vector channel run on the live
/// history at the user's next request (the other four channels' lists come from the cache),
/// and come from the cache too at the one after.
async fn realtime(
    client: &RecallClient<tonic::transport::Channel>,
    users: &[String],
    slot: &ArtifactSlot,
    stream: &MemoryStore,
    metrics: &RecallMetrics,
) {
    println!("\n### Recall on users' real-time items (7 channels → 1,000, 4 concurrent clients, 3,000 requests)\n");
    println!("| users | candidates | req/s | p50 | p99 | CPU per request | lists computed per request |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    // Each load with the list-cache misses it caused, per request.
    let misses = || {
        metrics
            .list_cache
            .get_or_create(&recstack_services::recall::CacheLabels { result: "miss" })
            .get()
    };
    let measured = async || {
        let before = misses();
        let r = load(client, users, 1000, &[]).await;
        (r, (misses() - before) as f64 / 3_000.0)
    };
    // Every list cached first: the baseline computes none.
    load(client, users, 1000, &[]).await;
    let cached = measured().await;
    let a = &slot.get().artifacts;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let now = recstack_core::events::now_ms();
    let engagements: Vec<(String, String, i64)> = users
        .iter()
        .flat_map(|u| {
            let mut picks = Vec::with_capacity(5);
            for k in 0..5 {
                picks.push((u.clone(), a.items[rng.gen_range(0..a.items.len())].id.clone(), now - k));
            }
            picks
        })
        .collect();
    stream.add_recent(&engagements).await.expect("memory store");
    let live = measured().await;
    // No engagement since: the live lists are cached under the items that made them.
    let live_again = measured().await;
    for (name, r) in [
        ("no real-time items (lists cached)", &cached),
        (
            "5 real-time items each: first request (3 channels computed on the live history)",
            &live,
        ),
        (
            "5 real-time items each: the same users again (every list cached)",
            &live_again,
        ),
    ] {
        let (r, computed) = r;
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} ms | {:.2} ms | {:.3} ms | {computed:.2} |",
            r.candidates,
            r.rps,
            ms(r.p50),
            ms(r.p99),
            r.cpu_ms
        );
    }
    let (cached, live, live_again) = (cached.0, live.0, live_again.0);
    for (what, r) in [
        ("The first request on a live history", &live),
        ("The next", &live_again),
    ] {
        println!(
            "\n{what} takes {:.2}× a request on cached lists of the build's history at p50 ({:.2}× at p99), {:.2}× the CPU.",
            r.p50.as_secs_f64() / cached.p50.as_secs_f64(),
            r.p99.as_secs_f64() / cached.p99.as_secs_f64(),
            r.cpu_ms / cached.cpu_ms
        );
    }
}

/// Candidates as columns against a message each: 7 channels → 1,000, lists cached, the two
/// forms interleaved round by round (this machine drifts); CPU is the whole process's (the
/// service and its 4 clients), per request.
async fn wire_forms(client: &RecallClient<tonic::transport::Channel>, users: &[String]) {
    const ROUNDS: usize = 5;
    println!(
        "\n### Candidates on the wire: columns against a message each (7 channels → 1,000, lists cached, {ROUNDS} interleaved rounds)\n"
    );
    println!("| form | req/s | p50 | p99 | CPU per request |");
    println!("|---|---:|---:|---:|---:|");
    // The version's list cache may be cold (the swaps above): fill it first, so that no round
    // of either form computes lists.
    load_as(client, users, 1000, &[], true).await;
    let (mut messages, mut columns) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        messages.push(load_as(client, users, 1000, &[], false).await);
        columns.push(load_as(client, users, 1000, &[], true).await);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (name, runs) in [
        ("a message per candidate and source", &messages),
        ("columns (`packed`)", &columns),
    ] {
        let mut rps: Vec<f64> = runs.iter().map(|r| r.rps).collect();
        let mut p50: Vec<f64> = runs.iter().map(|r| ms(r.p50)).collect();
        let mut p99: Vec<f64> = runs.iter().map(|r| ms(r.p99)).collect();
        let mut cpu: Vec<f64> = runs.iter().map(|r| r.cpu_ms).collect();
        let row = (median(&mut rps), median(&mut p50), median(&mut p99), median(&mut cpu));
        println!(
            "| {name} | {:.0} | {:.2} ms | {:.2} ms | {:.3} ms |",
            row.0, row.1, row.2, row.3
        );
    }
    let mut cpu_ratio: Vec<f64> = columns
        .iter()
        .zip(&messages)
        .map(|(c, m)| c.cpu_ms / m.cpu_ms)
        .collect();
    let mut rps_ratio: Vec<f64> = columns.iter().zip(&messages).map(|(c, m)| c.rps / m.rps).collect();
    let (lo, hi) = (
        cpu_ratio.iter().copied().fold(f64::INFINITY, f64::min),
        cpu_ratio.iter().copied().fold(0.0, f64::max),
    );
    println!(
        "\nColumns: {:.2}× the CPU per request of messages (median of paired rounds; {lo:.2}–{hi:.2}), {:.2}× the requests per second.",
        median(&mut cpu_ratio),
        median(&mut rps_ratio)
    );
}

fn manifest_named(version: &str) -> build::Manifest {
    build::Manifest {
        version: version.into(),
        created: String::new(),
        dataset: "movietweetings-100k".into(),
        inputs: Default::default(),
        params: BuildParams::default(),
        files: Default::default(),
        counts: Default::default(),
        format: recstack_core::artifacts::ARTIFACT_FORMAT,
    }
}

struct LoadResult {
    /// The process's CPU (server and clients) per request, ms.
    cpu_ms: f64,
    rps: f64,
    p50: Duration,
    p99: Duration,
    candidates: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn load(
    client: &RecallClient<tonic::transport::Channel>,
    users: &[String],
    n: u32,
    quotas: &[(&str, u32)],
) -> LoadResult {
    load_as(client, users, n, quotas, false).await
}

/// 3,000 requests from 4 clients; `packed`: ask for columns and read them back into owned ids
/// and lineage (what the gateway does with them).
async fn load_as(
    client: &RecallClient<tonic::transport::Channel>,
    users: &[String],
    n: u32,
    quotas: &[(&str, u32)],
    packed: bool,
) -> LoadResult {
    let cpu = ProcessCpu::new();
    let cpu_start = cpu.now();
    let per_client = 750;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..4 {
        let mut client = client.clone();
        let users = users.to_vec();
        let quotas: std::collections::HashMap<String, u32> = quotas.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            let mut candidates = 0usize;
            for i in 0..per_client {
                let req = RecallRequest {
                    user_id: users[(c * per_client + i) % users.len()].clone(),
                    n,
                    channel_quotas: quotas.clone(),
                    packed,
                    ..Default::default()
                };
                let t = Instant::now();
                let resp = client.recall(req).await.expect("recall").into_inner();
                candidates += match &resp.packed {
                    Some(columns) => {
                        let owned: Vec<(String, f32, usize)> = unpack(columns)
                            .expect("columns")
                            .into_iter()
                            .map(|c| (c.item_id.to_string(), c.fused_score, c.sources.len()))
                            .collect();
                        owned.len()
                    }
                    None => resp.candidates.len(),
                };
                lat.push(t.elapsed());
            }
            (lat, candidates)
        }));
    }
    let mut latencies = Vec::new();
    let mut candidates = 0;
    for t in tasks {
        let (l, c) = t.await.expect("client");
        latencies.extend(l);
        candidates += c;
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    LoadResult {
        cpu_ms: ms(cpu.now() - cpu_start) / latencies.len() as f64,
        rps: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        candidates: candidates as f64 / latencies.len() as f64,
    }
}
