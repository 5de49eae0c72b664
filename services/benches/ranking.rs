//! Ranking benchmarks on the bundled data and model, printed as a Markdown table: the ranking
//! gRPC service (feature assembly, queue, batching, gRPC on loopback) against calling the
//! whole graph's ONNX session directly on the same rows, with batching on (the defaults), on
//! with every request handed to the batcher's worker (none scored on its own thread when the
//! model is idle), by requests with the row cap raised, and off, at 1 and 16
//! concurrent requests of 500 candidates, with the model's first stage folded (the default)
//! and as the whole graph; the head's session alone on prebuilt `pre` rows; a request's ranking
//! work in process (rows, then the model) folded against whole, interleaved; and the service's
//! feature assembly alone (its per-model item table) for 500 items scattered over the
//! catalogue, as recall's candidates are. Then the request's forms on the wire (ids as a
//! string each, as columns, and with the channels' ranks sparse), interleaved rounds at 16
//! concurrent, with the process's CPU time per request (client and service: both ends of the
//! wire); the batcher's idle path (a request finding the model idle scored on its own thread)
//! against every request through the worker, at 1, 4 and 16 concurrent in interleaved rounds;
//! a full request's messages (ranking's call, recall's answer) through tonic's framing with
//! tonic_prost's codec and with recstack's;
//! and the service against the raw session in paired, interleaved rounds (issue 32's ratios).
//! The service is sent what the gateway sends (columns, sparse ranks) and the binary allocates
//! with mimalloc, as the pods' binary does.
//!
//! `cargo bench -p recstack-services --bench ranking` (onnxruntime from the project venv);
//! `-- assembly` times a folded model's rows alone, `-- profile` runs the service alone, run
//! after run, to profile under `perf record`, `-- codec` compares the codecs alone.

#[path = "common/cpu.rs"]
mod cpu;

/// The allocator of the `recstack` binary the pods run, so the service is measured as deployed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use cpu::ProcessCpu;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use recstack_core::recall::{self, DEFAULT_N, DEFAULT_QUOTA, UserHistory};
use recstack_offline::build::{self, BuildParams, Progress};
use recstack_offline::dataset::{self, Dataset};
use recstack_services::codec::{self, SliceCodec};
use recstack_services::features::Snapshot;
use recstack_services::link::{Wire, lazy_channel};
use recstack_services::ranking::batcher::BatchConfig;
use recstack_services::ranking::features::{Lineage, Place, RowWriter};
use recstack_services::ranking::model::{Device, Graph, OnnxModel};
use recstack_services::ranking::service::proto::ranking_client::RankingClient;
use recstack_services::ranking::service::proto::{PackedIds, RankRequest, RankResponse};
use recstack_services::ranking::service::{ModelSources, item_table, lineage, lineage_fields, load_models};
use recstack_services::recall::packed::Packer;
use recstack_services::recall::proto::RecallResponse;
use recstack_services::serve;
use tonic::codec::Codec;
use tonic_prost::ProstCodec;

const CANDIDATES: usize = 500;
/// A request's rows for a whole graph: the sparse and the dense inputs.
type Rows = (Vec<i64>, Vec<f32>);
const REQUESTS: usize = 400;
/// Runs of the service under `-- profile`.
const PROFILE_RUNS: usize = 60;

fn main() {
    let ds = Dataset::load_movietweetings(&dataset::bundled_dir()).expect("bundled data");
    eprintln!("building artifacts from the bundled data …");
    let a = build::build(&ds, &BuildParams::default(), &Progress::new(true)).expect("build");
    let snapshot = Arc::new(Snapshot::from_artifacts(&a));
    let model_path = recstack_core::source_file("models/deepfm/model.onnx");
    let gbdt_path = recstack_core::source_file("models/gbdt/model.onnx");

    // The requests: held-out users, each with recall's first 500 candidates.
    let mut users: Vec<u32> = a.holdout.iter().map(|r| r.user).collect();
    users.sort_unstable();
    users.dedup();
    // Each twice: with a string per id and dense ranks (the form every pod reads), and as the
    // gateway sends it, ids as columns and ranks sparse; and recall's answer to the same user,
    // every candidate packed as the recall service packs them (for the codec table).
    type Requests = (Vec<RankRequest>, Vec<RankRequest>);
    let ((requests, columns), answers): (Requests, Vec<RecallResponse>) = (0..REQUESTS)
        .map(|k| {
            let u = users[(k * 31) % users.len()] as usize;
            let user_id = a.users[u].clone();
            let recalled = recall::recall(&a, &UserHistory::new(&a, u as u32), DEFAULT_QUOTA, DEFAULT_N);
            assert!(recalled.len() >= CANDIDATES, "{user_id}: {} candidates", recalled.len());
            let mut packer = Packer::with_capacity(recalled.len());
            for c in &recalled {
                packer.push(&a.items[c.item as usize].id, c.fused, &c.sources);
            }
            let answer = RecallResponse {
                packed: Some(packer.finish()),
                ..Default::default()
            };
            // What the gateway sends ranking: recall's first 500 with their lineage.
            let candidates = &recalled[..CANDIDATES];
            let lineage = || candidates.iter().map(|c| (c.fused, &c.sources[..]));
            let (fused_scores, channel_ranks) = lineage_fields(lineage(), false);
            let strings = RankRequest {
                user: snapshot.user(&user_id).cloned(),
                user_id,
                item_ids: candidates.iter().map(|c| a.items[c.item as usize].id.clone()).collect(),
                timeout_ms: 10_000,
                fused_scores,
                channel_ranks,
                ..Default::default()
            };
            let (ids, ends) = recstack_services::id_columns::pack(strings.item_ids.iter().map(String::as_str));
            let columns = RankRequest {
                item_ids: Vec::new(),
                packed_items: Some(PackedIds { ids, ends }),
                channel_ranks: lineage_fields(lineage(), true).1,
                ..strings.clone()
            };
            ((strings, columns), answer)
        })
        .unzip();

    // `-- assembly`: a folded model's rows alone (the service's per-request CPU work before the
    // model's head), to compare changes to them quickly.
    if std::env::args().any(|a| a == "assembly") {
        let us = assembly(&snapshot, &model_path, &requests, true);
        println!(
            "rows for a folded model, recall's first {CANDIDATES} with lineage: {us:.1} µs per request (best of 5 rounds)"
        );
        return;
    }
    // `-- rows`: `gbdt-2`'s whole rows alone (the stack's ranker: the service's per-request
    // CPU work before its trees), to compare changes to them quickly.
    if std::env::args().any(|a| a == "rows") {
        let us = assembly(&snapshot, &gbdt_path, &requests, false);
        println!(
            "whole rows for gbdt-2, recall's first {CANDIDATES} with lineage: {us:.1} µs per request (best of 5 rounds)"
        );
        return;
    }
    // `-- models`: the bundled rankers side by side.
    if std::env::args().any(|a| a == "models") {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(bundled_models(snapshot, &requests, &columns));
        return;
    }
    // `-- codec`: the call's messages through tonic's framing with each codec, alone.
    if std::env::args().any(|a| a == "codec") {
        codecs(&columns, &answers);
        return;
    }
    // `-- profile`: the service as the gateway calls it (columns, first stage folded, batching
    // on, 16 concurrent), run after run on one service, to profile under `perf record`;
    // nothing else runs. `-- profile gbdt`: the same with `gbdt-2`, its trees scored by the
    // service (the stack's default ranker).
    if std::env::args().any(|a| a == "profile") {
        let model_path = if std::env::args().any(|a| a == "gbdt") {
            gbdt_path
        } else {
            model_path.clone()
        };
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let mut rates = Vec::with_capacity(PROFILE_RUNS);
        // One service for every run, so that the profile holds requests, not model loads.
        let svc = runtime.block_on(start(snapshot.clone(), &model_path, true, BatchConfig::default()));
        let client = runtime.block_on(async { client(&svc) });
        for run in 0..PROFILE_RUNS {
            let (rps, _, cpu_ms) = runtime.block_on(drive(&client, 16, &columns));
            eprintln!(
                "profile run {}/{PROFILE_RUNS}: {rps:.0} req/s, {cpu_ms:.3} CPU ms/request",
                run + 1
            );
            rates.push(rps);
        }
        runtime.block_on(svc.stop()).expect("stop");
        rates.sort_by(f64::total_cmp);
        println!(
            "service ({}), batching on, 16 concurrent: median {:.0} req/s over {PROFILE_RUNS} runs",
            model_path
                .parent()
                .and_then(|d| d.file_name())
                .map_or_else(String::new, |d| d.to_string_lossy().into_owned()),
            rates[PROFILE_RUNS / 2]
        );
        return;
    }

    // Direct: the same rows through the same session, one call per request.
    let mut model = OnnxModel::load(&model_path, Device::Cpu, 1).expect("model");
    let writer = model.card.features.rows();
    let t = Instant::now();
    let rows = prebuilt_rows(&writer, &snapshot, &requests);
    let features_us = t.elapsed().as_secs_f64() * 1e6 / REQUESTS as f64;
    let [table_us, by_name_us, no_lineage_us] = table_assembly(&a, &snapshot, &model_path, writer.clone(), &requests);
    for (s, d) in rows.iter().take(20) {
        model.score(s, d, CANDIDATES).expect("warm-up");
    }
    let direct = session(&mut model, &rows);
    let direct_rps = direct.rps;

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (head, in_process) = runtime.block_on(folded_vs_whole(&snapshot, &model_path, &requests));
    let mut table = vec![direct, head];
    // Batching with the service's defaults (up to 32 requests and 512 rows, 5 ms from
    // queueing: on CPU the row cap keeps requests of 500 candidates apart), by requests with
    // the row cap raised (up to 32 requests, 16,384 rows: what a GPU stack sets), and off; and
    // the defaults with every request handed to the batcher's worker (before the idle path).
    let [on, worker, off, by_requests] = ["on", WORKER, "off", BY_REQUESTS].map(batching_mode);
    // The service is sent what the gateway sends.
    for (fold, (batching, batch), concurrency) in [
        (true, ("on", &on), 1),
        (true, (WORKER, &worker), 1),
        (true, ("off", &off), 1),
        (true, ("on", &on), 16),
        (true, (WORKER, &worker), 16),
        (true, (BY_REQUESTS, &by_requests), 16),
        (true, ("off", &off), 16),
        (false, ("on", &on), 1),
        (false, ("on", &on), 16),
        (false, (BY_REQUESTS, &by_requests), 16),
        (false, ("off", &off), 16),
    ] {
        let row = runtime.block_on(service(
            snapshot.clone(),
            &model_path,
            fold,
            (batching, batch.clone()),
            concurrency,
            &columns,
        ));
        table.push(row);
    }

    println!("feature assembly: {features_us:.0} µs per request of {CANDIDATES} candidates");
    println!(
        "feature assembly, the service's item table, {CANDIDATES} scattered items: {table_us:.1} µs per request \
         (best of 5 rounds, with lineage); {by_name_us:.1} µs with genres compared by name ({:.2}×)",
        by_name_us / table_us
    );
    println!(
        "the same without the requests' lineage: {no_lineage_us:.1} µs (reading it and its 9 columns cost {:.1} µs, {:.2}×)\n",
        table_us - no_lineage_us,
        table_us / no_lineage_us
    );
    println!(
        "a request's ranking work in process (rows, then the model through its batcher), best of 5 \
         interleaved rounds: folded {:.0} µs, whole graph {:.0} µs ({:.2}×)\n",
        in_process.0,
        in_process.1,
        in_process.1 / in_process.0
    );
    println!("| ranking, 500 candidates/request | req/s | rows/s | p50 ms | p99 ms | throughput vs direct |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &table {
        let (p50, p99) = percentiles(&r.lat);
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2}× |",
            r.name,
            r.rps,
            r.rps * CANDIDATES as f64,
            p50,
            p99,
            r.rps / direct_rps
        );
    }
    runtime.block_on(wire_forms(snapshot.clone(), &model_path, &requests, &columns));
    runtime.block_on(idle_path(snapshot.clone(), &model_path, &columns));
    codecs(&columns, &answers);
    runtime.block_on(against_the_session(snapshot, &model_path, &columns, &mut model, &rows));
}

/// Each request's rows for `writer`'s model (string ids, with lineage), as the service builds
/// them for a whole graph.
fn prebuilt_rows(writer: &RowWriter, snapshot: &Snapshot, requests: &[RankRequest]) -> Vec<Rows> {
    requests
        .iter()
        .map(|r| {
            let (mut s, mut d) = (Vec::new(), Vec::new());
            let user = writer.user(&r.user_id, r.user.as_ref());
            let lineage = lineage(r).expect("lineage").expect("lineage");
            for (position, id) in r.item_ids.iter().enumerate() {
                let place = Place {
                    position,
                    lineage: Some(lineage[position]),
                    realtime: None,
                };
                let timeline = snapshot.timeline(id).map(|t| &**t);
                writer.push(&user, id, snapshot.item(id), timeline, place, &mut s, &mut d);
            }
            (s, d)
        })
        .collect()
}

/// `-- models`: the bundled rankers side by side, in interleaved rounds: `deepfm-6` (first
/// stage folded; the default before the trees), `gbdt-2` through ONNX Runtime's tree operator
/// (the whole graph), and `gbdt-2` with its trees scored by the service (the default). For each,
/// the model alone on prebuilt rows (one thread, a call per request: ONNX Runtime's session of
/// the whole graph, or the service's scoring of the trees; there also every tree walked, the
/// layout before the masks), and the service as the gateway calls it (ids as columns, the
/// default batching) at 1 and 16 concurrent; CPU is the whole process's, client and service.
async fn bundled_models(items: Arc<Snapshot>, requests: &[RankRequest], columns: &[RankRequest]) {
    use recstack_services::ranking::trees::{Trees, TreesFile, row_values};
    const ROUNDS: usize = 5;
    let deepfm = recstack_core::source_file("models/deepfm/model.onnx");
    let gbdt = recstack_core::source_file("models/gbdt/model.onnx");
    // (name, model, fold or score the trees in the service, the model alone scores the trees)
    let models = [
        ("deepfm-6 (folded)", &deepfm, true, false),
        ("gbdt-2 (ONNX Runtime's trees)", &gbdt, false, false),
        ("gbdt-2 (the service's trees)", &gbdt, true, true),
    ];
    let file: TreesFile =
        serde_json::from_slice(&std::fs::read(gbdt.with_file_name("model.trees.json")).expect("trees"))
            .expect("trees file");
    let trees = Trees::new(&file).expect("trees");
    let walked = Trees::with_masked_leaves(&file, 0).expect("trees");
    // The model alone, the service's trees again with every tree walked instead.
    const WALKED: &str = "gbdt-2 (the service's trees, every tree walked)";
    let alone_trees = |trees: &Trees, rows: &[Rows]| {
        let (mut values, mut out) = (Vec::new(), Vec::new());
        let t = Instant::now();
        let mut lat = Vec::with_capacity(rows.len());
        for (s, d) in rows.iter() {
            let t0 = Instant::now();
            values.clear();
            out.clear();
            row_values(s, d, CANDIDATES, &mut values);
            trees.score(&values, CANDIDATES, &mut out).expect("trees");
            lat.push(t0.elapsed());
        }
        Row {
            name: String::new(),
            rps: rows.len() as f64 / t.elapsed().as_secs_f64(),
            lat,
            cpu_ms: 0.0,
        }
    };
    // One thread busy throughout: its CPU per request is its time per request.
    let busy = |mut row: Row| {
        row.cpu_ms = 1e3 / row.rps;
        row
    };
    let twice: Vec<RankRequest> = columns.iter().chain(columns).cloned().collect();
    let mut alone: Vec<(OnnxModel, Vec<Rows>)> = models
        .iter()
        .map(|(_, path, _, _)| {
            let mut model = OnnxModel::load(path, Device::Cpu, 1).expect("model");
            let rows = prebuilt_rows(&model.card.features.rows(), &items, requests);
            for (s, d) in rows.iter().take(20) {
                model.score(s, d, CANDIDATES).expect("warm-up");
            }
            (model, rows)
        })
        .collect();
    // runs[what][model][round]: the model alone, then the service at 1 and at 16 concurrent;
    // the model alone has one more, every tree walked.
    let mut runs: Vec<Vec<Vec<Row>>> = vec![vec![Vec::new(); models.len()]; 3];
    runs[0].push(Vec::new());
    for round in 0..ROUNDS {
        eprintln!("models: round {}/{ROUNDS}", round + 1);
        for (m, (_, path, fold, own_trees)) in models.iter().enumerate() {
            let (model, rows) = &mut alone[m];
            let direct = if *own_trees {
                alone_trees(&trees, rows)
            } else {
                session(model, rows)
            };
            runs[0][m].push(busy(direct));
            if *own_trees {
                runs[0][models.len()].push(busy(alone_trees(&walked, rows)));
            }
            for (what, concurrency) in [(1, 1), (2, 16)] {
                let batching = ("on", BatchConfig::default());
                runs[what][m].push(service(items.clone(), path, *fold, batching, concurrency, &twice).await);
            }
        }
    }
    let names: Vec<&str> = models.iter().map(|(name, ..)| *name).collect();
    for (what, title) in [
        "the model alone on prebuilt rows (one thread, a call per request; CPU: its time)",
        "the service at 1 concurrent",
        "the service at 16 concurrent",
    ]
    .into_iter()
    .enumerate()
    {
        println!(
            "\nthe bundled rankers, {title} ({ROUNDS} interleaved rounds of {} requests of {CANDIDATES}; the \
             service's trees scored with {} instructions):\n",
            if what == 0 { requests.len() } else { twice.len() },
            recstack_core::simd::level()
        );
        let mut names = names.clone();
        if what == 0 {
            names.push(WALKED);
        }
        paired_table("model", names[0], &names, &runs[what]);
    }
}

/// The messages a full request moves through tonic's framing, encoded and decoded by
/// tonic_prost's codec and by recstack's ([`codec::SliceCodec`]), in interleaved rounds on one
/// thread: the CPU both ends of a call spend in their codecs, without the connection. Ranking's
/// call (the gateway's request, 500 scores back) and recall's answer (the same users' 1,000
/// candidates as columns, as the recall service packs them).
fn codecs(requests: &[RankRequest], answers: &[RecallResponse]) {
    const ROUNDS: usize = 9;
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let scores = RankResponse {
        scores: (0..CANDIDATES).map(|i| 1.0 / (1.0 + i as f32)).collect(),
        model_version: "deepfm-6".into(),
        ..Default::default()
    };
    let scores = vec![scores; requests.len()];
    // Per round, µs per message with (tonic_prost, recstack) for each kind.
    let round = || {
        [
            codec_round(&runtime, requests),
            codec_round(&runtime, &scores),
            codec_round(&runtime, answers),
        ]
    };
    round();
    let rounds: Vec<[(f64, f64); 3]> = (0..ROUNDS).map(|_| round()).collect();
    println!(
        "\nmessages through tonic's framing, encoded and decoded ({ROUNDS} interleaved rounds of {} each; one \
         thread; both ends of the call, without the connection):\n",
        requests.len()
    );
    println!(
        "| message | `tonic_prost`, µs, median | recstack, µs, median | recstack × `tonic_prost`, median [range] |"
    );
    println!("|---|---:|---:|---:|");
    let kinds = [
        "ranking's request, as the gateway sends it (500 ids as columns, sparse ranks)",
        "ranking's answer (500 scores)",
        "recall's answer (1,000 candidates as columns)",
    ];
    for (k, kind) in kinds.iter().enumerate() {
        let (prost, ..) = median_range(rounds.iter().map(|r| r[k].0).collect());
        let (ours, ..) = median_range(rounds.iter().map(|r| r[k].1).collect());
        let (ratio, lo, hi) = median_range(rounds.iter().map(|r| r[k].1 / r[k].0).collect());
        println!("| {kind} | {prost:.1} | {ours:.1} | {ratio:.2}× [{lo:.2}, {hi:.2}] |");
    }
}

/// One round of [`codecs`]: µs per message of `messages` through tonic's framing with
/// tonic_prost's codec, then with recstack's. Each message is checked to read back whole
/// before it is timed.
fn codec_round<M>(runtime: &tokio::runtime::Runtime, messages: &[M]) -> (f64, f64)
where
    M: prost::Message + Default + Clone + PartialEq + Send + 'static,
{
    let through = |prost: bool, m: M| {
        runtime.block_on(async {
            if prost {
                let mut c = ProstCodec::<M, M>::default();
                codec::through(c.encoder(), c.decoder(), m).await
            } else {
                let mut c = SliceCodec::<M, M>::default();
                codec::through(c.encoder(), c.decoder(), m).await
            }
        })
    };
    if let Some(m) = messages.first() {
        for prost in [true, false] {
            assert!(
                through(prost, m.clone()).expect("through") == *m,
                "a message read back changed"
            );
        }
    }
    let time = |prost: bool| {
        let t = Instant::now();
        for m in messages {
            through(prost, m.clone()).expect("through");
        }
        t.elapsed().as_secs_f64() * 1e6 / messages.len() as f64
    };
    (time(true), time(false))
}

/// The defaults with every request handed to the batcher's worker thread, none scored on its
/// own thread when the model is idle.
const WORKER: &str = "on, every request through the worker";

/// Up to 32 requests a call, with the row cap raised (what a GPU stack sets).
const BY_REQUESTS: &str = "by requests (32 requests, 16,384 rows)";

/// The batching the bench compares, named: the service's defaults ("on"), the same through the
/// worker alone, off, and by requests with the row cap raised.
fn batching_modes() -> [(&'static str, BatchConfig); 4] {
    let worker = BatchConfig {
        inline_when_idle: false,
        ..BatchConfig::default()
    };
    let by_requests = BatchConfig {
        max_batch: 16_384,
        ..BatchConfig::default()
    };
    let off = BatchConfig {
        enabled: false,
        ..BatchConfig::default()
    };
    [
        ("on", BatchConfig::default()),
        (WORKER, worker),
        ("off", off),
        (BY_REQUESTS, by_requests),
    ]
}

/// Where the mode named `name` is in [`batching_modes`].
fn mode_index(name: &str) -> usize {
    batching_modes()
        .iter()
        .position(|(mode, _)| *mode == name)
        .expect("a batching mode")
}

/// The mode of [`batching_modes`] named `name`.
fn batching_mode(name: &str) -> BatchConfig {
    batching_modes()[mode_index(name)].1.clone()
}

/// The raw session of the whole graph on prebuilt rows, one call per request after another
/// (a [`Row`]).
fn session(model: &mut OnnxModel, rows: &[(Vec<i64>, Vec<f32>)]) -> Row {
    let t = Instant::now();
    let mut lat = Vec::with_capacity(rows.len());
    for (s, d) in rows {
        let t0 = Instant::now();
        model.score(s, d, CANDIDATES).expect("score");
        lat.push(t0.elapsed());
    }
    Row {
        name: "ONNX session of the whole graph, direct (rows prebuilt)".into(),
        rps: rows.len() as f64 / t.elapsed().as_secs_f64(),
        lat,
        cpu_ms: 0.0,
    }
}

/// Issue 32's two ratios, side by side: interleaved rounds of the raw session and of the
/// service (first stage folded, ids as columns, 16 concurrent) in each of [`batching_modes`];
/// each round's req/s over the session's, batching off's and the worker-only mode's in the same round,
/// median and range. One run of the table above swings ±10 % with the machine; paired rounds
/// cancel the drift between them.
async fn against_the_session(
    items: Arc<Snapshot>,
    model_path: &Path,
    requests: &[RankRequest],
    model: &mut OnnxModel,
    rows: &[(Vec<i64>, Vec<f32>)],
) {
    const ROUNDS: usize = 7;
    let modes = batching_modes();
    let (off, worker) = (mode_index("off"), mode_index(WORKER));
    // Per round: the session's req/s, then each mode's.
    let mut rounds: Vec<(f64, Vec<f64>)> = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let direct = session(model, rows).rps;
        let mut rates = Vec::with_capacity(modes.len());
        for (name, batch) in &modes {
            rates.push(
                service(items.clone(), model_path, true, (name, batch.clone()), 16, requests)
                    .await
                    .rps,
            );
        }
        rounds.push((direct, rates));
    }
    let spread = |v: Vec<f64>| {
        let (median, lo, hi) = median_range(v);
        format!("{median:.2}× [{lo:.2}, {hi:.2}]")
    };
    println!(
        "\nthe service against the raw session, {ROUNDS} interleaved rounds ({REQUESTS} requests of {CANDIDATES} each; \
         service: first stage folded, ids as columns, 16 concurrent):\n"
    );
    println!(
        "| batching | service req/s, median | × the session's req/s, median [range] | × batching off, median [range] | × every request through the worker, median [range] |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (m, (name, _)) in modes.iter().enumerate() {
        let mut rates: Vec<f64> = rounds.iter().map(|(_, r)| r[m]).collect();
        rates.sort_by(f64::total_cmp);
        println!(
            "| {name} | {:.0} | {} | {} | {} |",
            rates[ROUNDS / 2],
            spread(rounds.iter().map(|(d, r)| r[m] / d).collect()),
            spread(rounds.iter().map(|(_, r)| r[m] / r[off]).collect()),
            spread(rounds.iter().map(|(_, r)| r[m] / r[worker]).collect()),
        );
    }
    let mut direct: Vec<f64> = rounds.iter().map(|(d, _)| *d).collect();
    direct.sort_by(f64::total_cmp);
    println!("\n(the session: median {:.0} req/s)", direct[ROUNDS / 2]);
}

/// The request's forms on the wire — ids as a string each, as columns, and as columns with the
/// channels' ranks sparse (the gateway's form) — through the service (first stage folded,
/// batching on, 16 concurrent), in interleaved rounds: each round's ratio of CPU per request
/// and of req/s to strings' in the same round, median and range.
async fn wire_forms(items: Arc<Snapshot>, model: &Path, requests: &[RankRequest], columns: &[RankRequest]) {
    const ROUNDS: usize = 5;
    // Twice the requests per run, for the CPU clock's 10 ms ticks.
    let strings: Vec<RankRequest> = requests.iter().chain(requests).cloned().collect();
    let sparse: Vec<RankRequest> = columns.iter().chain(columns).cloned().collect();
    let dense: Vec<RankRequest> = sparse
        .iter()
        .zip(&strings)
        .map(|(p, s)| RankRequest {
            channel_ranks: s.channel_ranks.clone(),
            ..p.clone()
        })
        .collect();
    let forms = [
        ("a string each (`item_ids`), ranks dense", &strings),
        ("columns (`packed_items`), ranks dense", &dense),
        ("columns, ranks sparse (`positions`)", &sparse),
    ];
    let mut runs: Vec<Vec<Row>> = vec![Vec::new(); forms.len()];
    for _ in 0..ROUNDS {
        for (form, (_, reqs)) in forms.iter().enumerate() {
            let batching = ("on", BatchConfig::default());
            runs[form].push(service(items.clone(), model, true, batching, 16, reqs).await);
        }
    }
    println!(
        "\nthe request on the wire ({CANDIDATES} items; service, first stage folded, batching on, 16 concurrent, \
         {ROUNDS} interleaved rounds of {} requests; CPU: the whole process, client and service):\n",
        strings.len()
    );
    let names: Vec<&str> = forms.iter().map(|(name, _)| *name).collect();
    paired_table("ids, lineage", "strings", &names, &runs);
}

/// The batcher's idle path: the defaults against every request handed to the worker, at 1, 4
/// and 16 concurrent, in interleaved rounds (service: first stage folded, the gateway's form).
async fn idle_path(items: Arc<Snapshot>, model: &Path, requests: &[RankRequest]) {
    const ROUNDS: usize = 5;
    let twice: Vec<RankRequest> = requests.iter().chain(requests).cloned().collect();
    let (on, worker) = (batching_mode("on"), batching_mode(WORKER));
    for concurrency in [1, 4, 16] {
        let mut runs: Vec<Vec<Row>> = vec![Vec::new(), Vec::new()];
        for _ in 0..ROUNDS {
            for (m, (name, batch)) in [(WORKER, &worker), ("on", &on)].into_iter().enumerate() {
                runs[m].push(service(items.clone(), model, true, (name, batch.clone()), concurrency, &twice).await);
            }
        }
        println!(
            "\nthe idle path at {concurrency} concurrent ({ROUNDS} interleaved rounds of {} requests of {CANDIDATES}; \
             CPU: the whole process, client and service):\n",
            twice.len()
        );
        paired_table("batching", "the worker", &[WORKER, "on"], &runs);
    }
}

/// Prints variants measured in interleaved rounds (`runs[v][round]`): each one's median req/s,
/// p50 and p99 over all its rounds, median CPU per request, and its CPU and req/s over the
/// first variant's in the same round (median and range).
fn paired_table(what: &str, first: &str, names: &[&str], runs: &[Vec<Row>]) {
    println!(
        "| {what} | req/s, median | p50 ms | p99 ms | CPU ms/request, median | CPU × {first}, median [range] | req/s × {first}, median [range] |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, rows) in names.iter().zip(runs) {
        let ratio = |f: fn(&Row) -> f64| median_range(rows.iter().zip(&runs[0]).map(|(r, s)| f(r) / f(s)).collect());
        let lat: Vec<Duration> = rows.iter().flat_map(|r| r.lat.iter().copied()).collect();
        let (p50, p99) = percentiles(&lat);
        let (cpu, cpu_lo, cpu_hi) = ratio(|r| r.cpu_ms);
        let (rps, rps_lo, rps_hi) = ratio(|r| r.rps);
        println!(
            "| {name} | {:.0} | {p50:.2} | {p99:.2} | {:.3} | {cpu:.2}× [{cpu_lo:.2}, {cpu_hi:.2}] | {rps:.2}× [{rps_lo:.2}, {rps_hi:.2}] |",
            median_range(rows.iter().map(|r| r.rps).collect()).0,
            median_range(rows.iter().map(|r| r.cpu_ms).collect()).0,
        );
    }
}

/// A model's rows (`LoadedModel::features_with` with each request's lineage; for a folded
/// model the user's part, each item's and the crossing columns) for each request's own
/// candidates, as the service builds them, in µs per request: the fastest of five rounds over
/// 2,000 requests. `folded`: whether the model must fold (checked).
fn assembly(snapshot: &Snapshot, model: &Path, requests: &[RankRequest], folded: bool) -> f64 {
    let sources = ModelSources::cpu(model.to_path_buf());
    let set = load_models(&sources, snapshot, Arc::new(())).expect("model");
    assert_eq!(set.primary.folded.is_some(), folded, "{}: folded", model.display());
    let work: Vec<(&RankRequest, Vec<Lineage>)> = requests
        .iter()
        .cycle()
        .take(2000)
        .map(|r| (r, lineage(r).expect("lineage").expect("lineage")))
        .collect();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        for (r, lineage) in &work {
            let (_, dense, unknown) =
                set.primary
                    .features_with(&r.user_id, r.user.as_ref(), &r.item_ids, Some(lineage), None);
            assert!(unknown.is_empty() && !dense.is_empty());
        }
        best = best.min(t.elapsed().as_secs_f64() * 1e6 / work.len() as f64);
    }
    best
}

/// The ranking service's own feature assembly (`LoadedModel::features`: item table lookups
/// and the rows) for each request's user and 500 items picked across the whole catalogue, in
/// µs per request: the fastest of five rounds over 2,000 requests. Then the same with the
/// table built without the catalogue's genre bits (each user genre an item might have is
/// compared by name), rounds interleaved.
fn table_assembly(
    a: &build::Artifacts,
    snapshot: &Snapshot,
    model: &Path,
    by_name: RowWriter,
    requests: &[RankRequest],
) -> [f64; 3] {
    // Feature rows as the whole graph reads them (a folded model's rows are `pre` values).
    let sources = ModelSources {
        fold: false,
        ..ModelSources::cpu(model.to_path_buf())
    };
    let mut set = load_models(&sources, snapshot, Arc::new(())).expect("model");
    let by_name_items = item_table(&by_name, snapshot);
    let mut tables = [
        (set.primary.rows.clone(), std::mem::take(&mut set.primary.items)),
        (by_name, by_name_items),
    ];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut scattered = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                // xorshift: a fixed, well-spread sequence of catalogue positions.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                a.items[(x % a.items.len() as u64) as usize].id.clone()
            })
            .collect()
    };
    let work: Vec<(&RankRequest, Vec<String>)> = requests
        .iter()
        .cycle()
        .take(2000)
        .map(|r| (r, scattered(CANDIDATES)))
        .collect();
    // (the item table, by name) with each request's lineage read as the service reads it, then
    // the item table without lineage: what the lineage columns cost.
    let mut best = [f64::INFINITY; 3];
    for _ in 0..5 {
        for (n, with_lineage) in [(0, true), (1, true), (2, false)] {
            let (rows, items) = &mut tables[n.min(1)];
            std::mem::swap(&mut set.primary.rows, rows);
            std::mem::swap(&mut set.primary.items, items);
            let t = Instant::now();
            for (r, ids) in &work {
                let lineage = if with_lineage {
                    lineage(r).expect("lineage")
                } else {
                    None
                };
                let (sparse, _, unknown) =
                    set.primary
                        .features_with(&r.user_id, r.user.as_ref(), ids, lineage.as_deref(), None);
                assert!(unknown.is_empty() && !sparse.is_empty());
            }
            best[n] = best[n].min(t.elapsed().as_secs_f64() * 1e6 / work.len() as f64);
            let (rows, items) = &mut tables[n.min(1)];
            std::mem::swap(&mut set.primary.rows, rows);
            std::mem::swap(&mut set.primary.items, items);
        }
    }
    best
}

#[derive(Clone)]
struct Row {
    name: String,
    rps: f64,
    lat: Vec<Duration>,
    /// The process's CPU time per request, ms (service rows only).
    cpu_ms: f64,
}

/// The median of `v` (the upper one of an even count), its smallest and its largest.
fn median_range(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn percentiles(lat: &[Duration]) -> (f64, f64) {
    let mut v: Vec<f64> = lat.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    (at(0.5), at(0.99))
}

/// The head's session alone on each request's prebuilt `pre` rows (a [`Row`]); and a request's
/// ranking work in process — `LoadedModel::features`, then the model through its batcher — in
/// µs, folded and whole graph: the best of five interleaved rounds.
async fn folded_vs_whole(snapshot: &Snapshot, model: &Path, requests: &[RankRequest]) -> (Row, (f64, f64)) {
    let sources = |fold| ModelSources {
        fold,
        ..ModelSources::cpu(model.to_path_buf())
    };
    let folded = load_models(&sources(true), snapshot, Arc::new(())).expect("folded model");
    let whole = load_models(&sources(false), snapshot, Arc::new(())).expect("whole model");
    let width = folded.primary.folded.as_ref().expect("a factored card").first.width();
    let pre: Vec<Vec<f32>> = requests
        .iter()
        .map(|r| {
            let lineage = lineage(r).expect("lineage");
            folded
                .primary
                .features_with(&r.user_id, r.user.as_ref(), &r.item_ids, lineage.as_deref(), None)
                .1
        })
        .collect();
    let mut head = OnnxModel::load_graph(model, Graph::Head { width }, Device::Cpu, 1).expect("head");
    for p in pre.iter().take(20) {
        head.score(&[], p, CANDIDATES).expect("warm-up");
    }
    let t = Instant::now();
    let mut lat = Vec::with_capacity(pre.len());
    for p in &pre {
        let t0 = Instant::now();
        head.score(&[], p, CANDIDATES).expect("score");
        lat.push(t0.elapsed());
    }
    let head_row = Row {
        name: "ONNX session of the head, direct (`pre` rows prebuilt)".into(),
        rps: pre.len() as f64 / t.elapsed().as_secs_f64(),
        lat,
        cpu_ms: 0.0,
    };
    let deadline = Instant::now() + Duration::from_secs(3600);
    let mut best = [f64::INFINITY; 2];
    for _ in 0..5 {
        for (n, set) in [&folded, &whole].into_iter().enumerate() {
            let m = &set.primary;
            let t = Instant::now();
            for r in requests {
                let lineage = lineage(r).expect("lineage");
                let (s, d, _) = m.features_with(&r.user_id, r.user.as_ref(), &r.item_ids, lineage.as_deref(), None);
                let scores = m.batcher.score(s, d, r.item_ids.len(), deadline).await.expect("score");
                assert_eq!(scores.len(), CANDIDATES);
            }
            best[n] = best[n].min(t.elapsed().as_secs_f64() * 1e6 / requests.len() as f64);
        }
    }
    (head_row, (best[0], best[1]))
}

async fn service(
    items: Arc<Snapshot>,
    model: &Path,
    fold: bool,
    (batching, batch): (&str, BatchConfig),
    concurrency: usize,
    requests: &[RankRequest],
) -> Row {
    let svc = start(items, model, fold, batch).await;
    let client = client(&svc);
    let (rps, lat, cpu_ms) = drive(&client, concurrency, requests).await;
    svc.stop().await.expect("stop");
    Row {
        name: format!(
            "service, {}, batching {batching}, {concurrency} concurrent",
            if fold { "first stage folded" } else { "whole graph" },
        ),
        rps,
        lat,
        cpu_ms,
    }
}

/// A client of `svc` as the gateway's is: the links' channel (writes coalesced), each message
/// one body.
fn client(svc: &serve::Service) -> RankingClient<Wire> {
    RankingClient::new(Wire::new(lazy_channel(&svc.grpc_url()).expect("channel")))
}

/// The ranking service on an ephemeral port, its model loaded (folded or whole) with `batch`.
async fn start(items: Arc<Snapshot>, model: &Path, fold: bool, batch: BatchConfig) -> serve::Service {
    let sources = ModelSources {
        batch,
        fold,
        ..ModelSources::cpu(model.to_path_buf())
    };
    serve::ranking(
        items,
        sources,
        Duration::from_secs(3600),
        None,
        None,
        serve::Addrs::ephemeral(),
    )
    .await
    .expect("ranking service")
}

/// `requests` through `client` from `concurrency` tasks, after 20 to warm up: req/s, each
/// request's latency, and the process's CPU ms per request.
async fn drive(
    client: &RankingClient<Wire>,
    concurrency: usize,
    requests: &[RankRequest],
) -> (f64, Vec<Duration>, f64) {
    for r in requests.iter().take(20) {
        client.clone().rank(r.clone()).await.expect("warm-up");
    }
    let cpu = ProcessCpu::new();
    let cpu_before = cpu.now();
    let t = Instant::now();
    let chunks: Vec<Vec<RankRequest>> = (0..concurrency)
        .map(|c| requests.iter().skip(c).step_by(concurrency).cloned().collect())
        .collect();
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(chunk.len());
                for r in chunk {
                    let t0 = Instant::now();
                    let resp = client.rank(r).await.expect("rank").into_inner();
                    assert_eq!(resp.scores.len(), CANDIDATES);
                    lat.push(t0.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("task"));
    }
    let rps = requests.len() as f64 / t.elapsed().as_secs_f64();
    let cpu_ms = (cpu.now() - cpu_before).as_secs_f64() * 1e3 / requests.len() as f64;
    (rps, lat, cpu_ms)
}
