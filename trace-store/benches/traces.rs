//! Trace-store throughput and the writer queue's memory bound, printed as Markdown tables.
//!
//! `cargo bench -p recstack-trace-store --bench traces` (starts the ES-compatible test server
//! from `.venv`; run `scripts/setup` first). `… --bench traces -- grown` runs the grown-store
//! case alone.
//!
//! 1. Traces/s into each store, summary and full traces, straight `put` in batches and through
//!    the writer (offer everything, then shut down: the time until the last trace is stored);
//!    the embedded store with its default docs (LZ4 frames for small, zstd for large), LZ4,
//!    zstd and plain JSON docs, interleaved, the bytes each
//!    trace takes in the file and the bytes written per trace (WAL and checkpoint); and
//!    summary traces into a store already holding 200,000 (long-running stores' indexes).
//!    The Elasticsearch figures are the test server's ceiling (`osmem-server` is an in-memory
//!    Go server, ~1K docs/s), not Elasticsearch's.
//!    In the grown store, also the time of an item and a user search (the dashboard's "which
//!    requests served this item", "this user's requests"): their index seeks grow with the
//!    stored traces; and retention deleting the oldest 60,000 of them (a minute at 1,000
//!    req/s, what a full store under its size cap deletes every minute).
//! 2. The queue bound: a writer whose store is unreachable, offered traces until it drops:
//!    how many it holds, its estimate of their memory against the cap, and the process's
//!    resident memory growth.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use recstack_trace_store::elastic::{ElasticConfig, ElasticStore};
use recstack_trace_store::embedded::{DocEncoding, EmbeddedStore};
use recstack_trace_store::sample;
use recstack_trace_store::store::{TraceStore, now_ms};
use recstack_trace_store::testkit::TestServer;
use recstack_trace_store::writer::{TraceWriter, WriterConfig};
use recstack_trace_store::{Trace, TraceSink};

fn traces(full: bool, n: u64, offset: u64) -> Vec<Trace> {
    let make = if full {
        sample::full_trace
    } else {
        sample::summary_trace
    };
    traces_of(make, n, offset)
}

/// Traces `offset..offset + n` from `make`, stamped from now, a millisecond apart.
fn traces_of(make: fn(u64, i64) -> Trace, n: u64, offset: u64) -> Vec<Trace> {
    let now = now_ms();
    (offset..offset + n).map(|i| make(i, now + i as i64)).collect()
}

/// Rows in the file's item index per stored trace: one key per served item (layouts up to
/// 3, `served`), one list per item and epoch (layout 4, `served_lists`).
fn item_rows_per_trace(file: &std::path::Path, traces: u64) -> f64 {
    let conn = rusqlite::Connection::open(file).unwrap();
    let table: String = conn
        .query_row(
            "SELECT name FROM sqlite_schema WHERE name IN ('served_lists', 'served') ORDER BY name DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let rows: i64 = conn
        .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .unwrap();
    rows as f64 / traces as f64
}

async fn put_rate(store: &dyn TraceStore, traces: &[Trace], batch: usize) -> f64 {
    let start = Instant::now();
    for chunk in traces.chunks(batch) {
        let out = store.put(chunk.into()).await.expect("put");
        assert_eq!(out.written, chunk.len());
    }
    traces.len() as f64 / start.elapsed().as_secs_f64()
}

/// Bytes this process has handed to write calls so far (`wchar` in Linux's `/proc/self/io`):
/// the WAL and the checkpoint's writes, here where only the store writes.
fn written_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines().find_map(|l| l.strip_prefix("wchar:"))?.trim().parse().ok()
}

/// Puts `traces` and returns traces/s and the bytes written per trace ("" where unknown).
async fn put_measured(store: &dyn TraceStore, traces: &[Trace], batch: usize) -> (f64, String) {
    let before = written_bytes();
    let rate = put_rate(store, traces, batch).await;
    let written = written_per(before, traces.len() as u64).map_or_else(String::new, |w| w.to_string());
    (rate, written)
}

/// Bytes written since `before` (a [`written_bytes`] reading), per one of `n` traces.
fn written_per(before: Option<u64>, n: u64) -> Option<u64> {
    Some((written_bytes()? - before?) / n.max(1))
}

async fn writer_rate(store: Arc<dyn TraceStore>, traces: Vec<Trace>) -> (f64, u64) {
    let mut registry = Registry::default();
    let config = WriterConfig {
        max_traces: traces.len(),
        max_bytes: usize::MAX,
        ..WriterConfig::default()
    };
    let (writer, task) = TraceWriter::spawn(store, config, &mut registry);
    let n = traces.len();
    let start = Instant::now();
    for t in traces {
        writer.offer(t);
    }
    task.shutdown().await;
    let s = writer.stats();
    assert_eq!(s.written as usize + s.dropped as usize, n);
    (s.written as f64 / start.elapsed().as_secs_f64(), s.dropped)
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

const QUEUE_CASE: &str = "RECSTACK_BENCH_QUEUE_CASE";

/// A writer whose store nobody answers, offered traces until it drops: what it holds.
async fn queue_case(full: bool) {
    let offered: u64 = if full { 2_000 } else { 20_000 };
    // The writer retries its first batch and the queue fills.
    let mut down = ElasticConfig::new("http://127.0.0.1:9");
    down.timeout = Duration::from_millis(200);
    let store: Arc<dyn TraceStore> = Arc::new(ElasticStore::connect(&down).unwrap());
    let config = WriterConfig {
        max_traces: 10_000,
        max_bytes: 64 << 20,
        shutdown_grace: Duration::from_millis(100),
        ..WriterConfig::default()
    };
    let before = rss_bytes();
    let mut registry = Registry::default();
    let (writer, task) = TraceWriter::spawn(store, config.clone(), &mut registry);
    // Made one at a time: what the queue drops is freed, what it holds is the growth.
    let now = now_ms();
    for i in 0..offered {
        writer.offer(if full {
            sample::full_trace(i, now)
        } else {
            sample::summary_trace(i, now)
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = writer.stats();
    let grown = rss_bytes().saturating_sub(before);
    println!(
        "| {offered} {} | {} / {} | {} | {} | {:.1} | {:.1} |",
        if full { "full" } else { "summary" },
        config.max_traces,
        config.max_bytes >> 20,
        s.queued,
        s.dropped,
        s.queued_bytes as f64 / (1 << 20) as f64,
        grown as f64 / (1 << 20) as f64
    );
    task.shutdown().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // Each queue case in its own process, so resident memory is not reused between cases.
    if let Ok(case) = std::env::var(QUEUE_CASE) {
        queue_case(case == "full").await;
        return;
    }
    if std::env::args().skip(1).any(|a| a == "grown") {
        let dir = tempfile::tempdir().unwrap();
        println!("| store | traces | how | n | traces/s | bytes/trace | written bytes/trace | item-index rows/trace |");
        println!("|---|---|---|---:|---:|---:|---:|---:|");
        grown_store(dir.path(), 20_000, 500).await;
        return;
    }
    println!(
        "| traces offered | queue cap (traces / estimated MiB) | held | dropped | estimate MiB | RSS growth MiB |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    for case in ["summary", "full"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .env(QUEUE_CASE, case)
            .output()
            .expect("queue case");
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    println!();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().expect("osmem-server (run scripts/setup)");
    let mut es_config = ElasticConfig::new(server.url());
    es_config.timeout = Duration::from_secs(120);

    println!("| store | traces | how | n | traces/s | bytes/trace | written bytes/trace | item-index rows/trace |");
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    // (full?, n embedded, n elasticsearch, batch)
    for (full, n_embedded, n_es, batch) in [(false, 20_000u64, 2_000u64, 500usize), (true, 1_000, 100, 50)] {
        let kind = if full {
            "full (1,000 candidates)"
        } else {
            "summary (20 items)"
        };
        // The doc encodings side by side, interleaved, each into a fresh file; summary traces
        // also with served items drawn by popularity (real lists repeat popular items, which
        // the item index's lists gain from).
        let rounds = if full { 1 } else { 3 };
        let mut cases = vec![
            (DocEncoding::BySize, false),
            (DocEncoding::Lz4, false),
            (DocEncoding::Zstd, false),
            (DocEncoding::Json, false),
        ];
        if !full {
            cases.insert(1, (DocEncoding::BySize, true));
        }
        for round in 0..rounds {
            for &(encoding, popular) in &cases {
                let file = dir
                    .path()
                    .join(format!("bench-{full}-{encoding:?}-{popular}-{round}.sqlite"));
                let store = EmbeddedStore::open(&file).unwrap().with_doc_encoding(encoding);
                let batch_of = match popular {
                    true => traces_of(sample::popular_summary_trace, n_embedded, 0),
                    false => traces(full, n_embedded, 0),
                };
                let (rate, written) = put_measured(&store, &batch_of, batch).await;
                let per_trace = store.used_bytes().await.unwrap() / n_embedded;
                drop(store);
                let rows = item_rows_per_trace(&file, n_embedded);
                let kind = match popular {
                    true => "summary (20 items by popularity)",
                    false => kind,
                };
                println!(
                    "| embedded (SQLite), {encoding:?} docs | {kind} | put, batches of {batch} | {n_embedded} | {rate:.0} | {per_trace} | {written} | {rows:.1} |"
                );
            }
        }
        if !full {
            grown_store(dir.path(), n_embedded, batch).await;
        }
        let embedded: Arc<dyn TraceStore> =
            Arc::new(EmbeddedStore::open(dir.path().join(format!("bench-{full}.sqlite"))).unwrap());
        let (rate, _) = writer_rate(embedded, traces(full, n_embedded, 1_000_000)).await;
        println!(
            "| embedded (SQLite), BySize docs (the default) | {kind} | through the writer | {n_embedded} | {rate:.0} | | | |"
        );

        es_config.prefix = format!("bench-{full}");
        let es: Arc<dyn TraceStore> = Arc::new(ElasticStore::connect(&es_config).unwrap());
        let rate = put_rate(&*es, &traces(full, n_es, 0), batch).await;
        println!("| ES test server (ceiling) | {kind} | put, batches of {batch} | {n_es} | {rate:.0} | | | |");
        let (rate, _) = writer_rate(es, traces(full, n_es, 1_000_000)).await;
        println!("| ES test server (ceiling) | {kind} | through the writer | {n_es} | {rate:.0} | | | |");
    }
    drop(server);
}

/// Summary traces into a store that already holds [`GROWN`] of them, as a store does after a
/// few minutes at 1,000 req/s: its indexes no longer fit a few pages, so each batch dirties
/// (and the WAL and the checkpoint write) more pages than in a fresh file.
async fn grown_store(dir: &std::path::Path, n: u64, batch: usize) {
    const GROWN: u64 = 200_000;
    const STEP: u64 = 10_000;
    // A minute of traces at 1,000 req/s: what retention deletes each minute once a store
    // under its size cap is full (the oldest first, by time).
    const EXPIRED: u64 = 60_000;
    let store = EmbeddedStore::open(dir.join("bench-grown.sqlite")).unwrap();
    // `traces` stamps trace i at (the time of the call) + i ms: every trace before EXPIRED is
    // older than `cutoff`, none after it.
    let mut cutoff = 0;
    for start in (0..GROWN).step_by(STEP as usize) {
        if start == EXPIRED {
            cutoff = now_ms() + EXPIRED as i64;
        }
        put_rate(&store, &traces(false, STEP, start), batch).await;
        eprintln!("filling the grown store: {}/{GROWN}", start + STEP);
    }
    // At the writer's full batch (1,000 req/s) and at a fifth of it (a quieter stack's batch).
    let mut stored = GROWN;
    for (batch, n) in [(batch, n), (batch / 5, n / 2)] {
        let (rate, written) = put_measured(&store, &traces(false, n, stored), batch).await;
        stored += n;
        let per_trace = store.used_bytes().await.unwrap() / stored;
        println!(
            "| embedded (SQLite), BySize docs (the default) | summary, into {GROWN} stored | put, batches of {batch} | {n} | {rate:.0} | {per_trace} | {written} | |"
        );
    }
    // Item and user searches, first page (20 newest hits) and the total, spread over the store.
    // The sample has 50 users: each has ~4,600 traces here, a heavy user.
    const SEARCHES: u64 = 200;
    for by in ["item", "user"] {
        let start = Instant::now();
        let mut hits = 0;
        for k in 0..SEARCHES {
            let mut q = recstack_trace_store::query::SearchQuery::new();
            match by {
                "item" => q.item = Some(sample::item_id(k * 997, (k % 20) as usize)),
                _ => q.user = Some(sample::summary_trace(k, 0).user_id),
            }
            let page = store.search(&q).await.expect("search");
            hits += page.total;
        }
        let ms = start.elapsed().as_secs_f64() * 1e3 / SEARCHES as f64;
        println!(
            "\n{by} search in the grown store ({stored} traces): {ms:.2} ms each, mean of {SEARCHES} (first page and \
             total; {} traces each on average)",
            hits / SEARCHES
        );
    }
    // Retention of the oldest EXPIRED; the writer connection does it, so puts wait meanwhile.
    let before = written_bytes();
    let start = Instant::now();
    let removed = store.retain(cutoff).await.expect("retain");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(removed, EXPIRED, "retention removes exactly the expired traces");
    let written = written_per(before, removed).map_or_else(String::new, |w| format!("{w} written bytes/trace"));
    println!(
        "\nretention in the grown store: {removed} oldest of {stored} traces deleted in {secs:.2} s \
         ({:.0} traces/s, {written})",
        removed as f64 / secs
    );
    println!();
}
