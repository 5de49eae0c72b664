//! One suite, both backends: the embedded SQLite store and Elasticsearch (the real
//! ES-compatible test server, started here). Results are compared with the in-memory
//! reference in `query` (filters, order, paging, aggregates), not with hard-coded numbers.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::registry::Registry;
use recstack_trace_store::elastic::{ElasticConfig, ElasticStore};
use recstack_trace_store::embedded::EmbeddedStore;
use recstack_trace_store::query::{self, AggregateQuery, Cursor, SearchQuery, TraceSummary};
use recstack_trace_store::sample;
use recstack_trace_store::store::{TraceStore, now_ms};
use recstack_trace_store::testkit::TestServer;
use recstack_trace_store::writer::{TraceWriter, WriterConfig};
use recstack_trace_store::{Detail, Trace, TraceSink};

const DAY: i64 = 86_400_000;

/// One test server for the suite (each test uses its own index prefix).
fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| TestServer::start().expect("start osmem-server"))
}

fn embedded() -> (Arc<dyn TraceStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("traces.sqlite")).unwrap();
    (Arc::new(store), dir)
}

fn elastic(prefix: &str) -> Arc<dyn TraceStore> {
    let mut config = ElasticConfig::new(server().url());
    config.prefix = format!("suite{prefix}");
    Arc::new(ElasticStore::connect(&config).unwrap())
}

/// `n` traces, one a second from `start`, a mix of summary and full.
fn traces(n: u64, start: i64) -> Vec<Trace> {
    traces_from(1, n, start)
}

/// `n` traces numbered from `first`, trace `i` at `start + i` seconds, a mix of summary and full.
fn traces_from(first: u64, n: u64, start: i64) -> Vec<Trace> {
    (first..first + n)
        .map(|i| {
            let ts = start + i as i64 * 1_000;
            if i % 4 == 0 {
                sample::full_trace(i, ts)
            } else {
                sample::summary_trace(i, ts)
            }
        })
        .collect()
}

async fn put_all(store: &dyn TraceStore, traces: &[Trace]) {
    for chunk in traces.chunks(25) {
        let out = store.put(chunk.into()).await.unwrap();
        assert_eq!(out.written, chunk.len(), "{out:?}");
    }
    store.refresh().await.unwrap();
}

/// The reference answer: matching traces, newest first.
fn expected(traces: &[Trace], q: &SearchQuery) -> Vec<TraceSummary> {
    let mut hits: Vec<TraceSummary> = traces
        .iter()
        .filter(|t| query::matches(t, q))
        .map(TraceSummary::from)
        .collect();
    hits.sort_by(|a, b| (b.timestamp_ms, &b.request_id).cmp(&(a.timestamp_ms, &a.request_id)));
    hits
}

/// Every page of a search, in order.
async fn all_pages(store: &dyn TraceStore, mut q: SearchQuery) -> (Vec<TraceSummary>, u64) {
    let mut hits = Vec::new();
    for _ in 0..1_000 {
        let page = store.search(&q).await.unwrap();
        assert!(page.hits.len() <= q.size);
        hits.extend(page.hits);
        match page.next {
            Some(next) => q.after = Some(Cursor::decode(&next).unwrap()),
            None => return (hits, page.total),
        }
    }
    panic!("paging did not end");
}

async fn round_trip(store: Arc<dyn TraceStore>) {
    let now = now_ms();
    let ts = traces(8, now);
    put_all(&*store, &ts).await;
    for t in &ts {
        let got = store.get(&t.request_id).await.unwrap().expect("stored trace");
        assert_eq!(&got, t, "{}", t.request_id);
    }
    // Full traces keep every candidate.
    assert_eq!(
        store.get(&ts[3].request_id).await.unwrap().unwrap().candidates.len(),
        1_000
    );
    assert!(store.get("no-such-request").await.unwrap().is_none());
}

async fn search_filters_and_paging(store: Arc<dyn TraceStore>) {
    let start = now_ms() - 3_600_000;
    let ts = traces(60, start);
    put_all(&*store, &ts).await;

    let mut q = SearchQuery::new();
    q.size = 7;
    let (hits, total) = all_pages(&*store, q.clone()).await;
    assert_eq!(total, 60);
    assert_eq!(hits, expected(&ts, &q), "all traces newest first across pages");

    let item = ts[10].items[3].item_id.clone();
    let filters: Vec<(&str, SearchQuery)> = vec![
        (
            "user",
            SearchQuery {
                user: Some("u7".into()),
                ..q.clone()
            },
        ),
        (
            "item",
            SearchQuery {
                item: Some(item),
                ..q.clone()
            },
        ),
        (
            "level",
            SearchQuery {
                level: Some("reduced".into()),
                ..q.clone()
            },
        ),
        (
            "model",
            SearchQuery {
                model_version: Some("deepfm-2".into()),
                ..q.clone()
            },
        ),
        (
            "bucket",
            SearchQuery {
                bucket: Some(13),
                ..q.clone()
            },
        ),
        (
            "time",
            SearchQuery {
                from_ms: Some(start + 10_000),
                to_ms: Some(start + 20_000),
                ..q.clone()
            },
        ),
        (
            "combined",
            SearchQuery {
                level: Some("full".into()),
                from_ms: Some(start + 30_000),
                size: 3,
                ..q.clone()
            },
        ),
        (
            "nothing",
            SearchQuery {
                user: Some("nobody".into()),
                ..q.clone()
            },
        ),
    ];
    for (name, f) in filters {
        let want = expected(&ts, &f);
        let (got, total) = all_pages(&*store, f).await;
        assert_eq!(total as usize, want.len(), "{name}");
        assert_eq!(got, want, "{name}");
        if name != "nothing" {
            assert!(!got.is_empty(), "{name} should match something");
        }
    }
}

async fn aggregates_match_the_reference(store: Arc<dyn TraceStore>) {
    // Aligned to a minute so the buckets are the same whatever the clock.
    let start = (now_ms() - 7_200_000) / 60_000 * 60_000;
    let ts = traces(150, start);
    put_all(&*store, &ts).await;
    let q = AggregateQuery::new(start + 5_000, start + 140_000, 60_000).unwrap();
    let want = query::aggregate(&ts, &q);
    let got = store.aggregate(&q).await.unwrap();
    assert_eq!(got.requests, want.requests);
    assert_eq!(got.levels_over_time, want.levels_over_time);
    assert_eq!(got.channels, want.channels);
    assert_eq!(
        got.stages.keys().collect::<Vec<_>>(),
        want.stages.keys().collect::<Vec<_>>()
    );
    for (name, w) in &want.stages {
        let g = &got.stages[name];
        assert_eq!(g.count, w.count, "{name}");
        // Percentile definitions differ by up to a rank between engines: compare with the
        // neighbouring values.
        let mut v: Vec<u64> = ts
            .iter()
            .filter(|t| t.timestamp_ms >= q.from_ms && t.timestamp_ms < q.to_ms)
            .flat_map(|t| t.stages.iter().filter(|s| &s.name == name).map(|s| s.latency_us))
            .collect();
        v.sort_unstable();
        for (p, got_p) in [(50.0, g.p50_us), (99.0, g.p99_us)] {
            let lo = query::percentile(&v, p - 2.0);
            let hi = query::percentile(&v, (p + 2.0f64).min(100.0));
            assert!(
                got_p >= lo - 1.0 && got_p <= hi + 1.0,
                "{name} p{p}: {got_p} not in [{lo}, {hi}]"
            );
        }
    }
    // An empty range.
    let empty = store
        .aggregate(&AggregateQuery::new(start - 10 * DAY, start - 9 * DAY, 60_000).unwrap())
        .await
        .unwrap();
    assert_eq!(empty.requests, 0);
    assert!(empty.levels_over_time.is_empty() && empty.channels.is_empty());
}

async fn writes_are_idempotent_and_bad_traces_rejected(store: Arc<dyn TraceStore>) {
    let ts = traces(10, now_ms());
    put_all(&*store, &ts).await;
    store.refresh().await.unwrap();
    let all = AggregateQuery::new(now_ms() - DAY, now_ms() + DAY, 3_600_000).unwrap();
    let first = store.aggregate(&all).await.unwrap();
    assert_eq!(first.requests, 10);
    // A retried batch, with one trace changed: the later write wins.
    let mut again = ts.clone();
    again[0].level = "popular".into();
    // ... and one that now serves a different first item.
    let dropped_item = std::mem::replace(&mut again[1].items[0].item_id, "replacing-item".into());
    let mut bad = sample::summary_trace(99, now_ms());
    bad.schema = 999;
    again.push(bad);
    let out = store.put(again.clone().into()).await.unwrap();
    assert_eq!(out.written, 10);
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.rejected[0].0, sample::request_id(99));
    store.refresh().await.unwrap();
    let page = store.search(&SearchQuery::new()).await.unwrap();
    assert_eq!(page.total, 10);
    assert_eq!(store.get(&ts[0].request_id).await.unwrap().unwrap().level, "popular");
    // Item search sees the rewritten trace's items, not the first write's.
    let stored = &again[..10];
    for item in [dropped_item, "replacing-item".to_string()] {
        let q = SearchQuery {
            item: Some(item.clone()),
            ..SearchQuery::new()
        };
        let (hits, total) = all_pages(&*store, q.clone()).await;
        assert_eq!(hits, expected(stored, &q), "item {item}");
        assert_eq!(total as usize, hits.len());
    }
    assert!(store.get(&sample::request_id(99)).await.unwrap().is_none());
    // Rewritten traces replace their per-item, per-channel and per-stage rows, not add to them.
    let after = store.aggregate(&all).await.unwrap();
    assert_eq!(after.requests, 10);
    assert!(!first.channels.is_empty());
    assert_eq!(after.channels, first.channels);
    let counts = |a: &query::Aggregates| a.stages.iter().map(|(n, s)| (n.clone(), s.count)).collect::<Vec<_>>();
    assert_eq!(counts(&after), counts(&first));
}

async fn retention_removes_old_traces_only(store: Arc<dyn TraceStore>) {
    let now = now_ms();
    let old = traces(5, now - 10 * DAY);
    let new: Vec<Trace> = (100..105).map(|i| sample::summary_trace(i, now - i as i64)).collect();
    put_all(&*store, &old).await;
    put_all(&*store, &new).await;
    let removed = store.retain(now - 7 * DAY).await.unwrap();
    assert!(removed >= 1, "removed {removed}");
    store.refresh().await.unwrap();
    for t in &old {
        assert!(
            store.get(&t.request_id).await.unwrap().is_none(),
            "{} kept",
            t.request_id
        );
    }
    for t in &new {
        assert!(
            store.get(&t.request_id).await.unwrap().is_some(),
            "{} lost",
            t.request_id
        );
    }
    let (hits, total) = all_pages(&*store, SearchQuery::new()).await;
    assert_eq!(total, 5);
    assert_eq!(hits.len(), 5);
    // Nothing more to do.
    assert_eq!(store.retain(now - 7 * DAY).await.unwrap(), 0);
}

async fn the_writer_delivers_everything(store: Arc<dyn TraceStore>) {
    let mut registry = Registry::default();
    let config = WriterConfig {
        batch: 64,
        linger: Duration::from_millis(20),
        ..WriterConfig::default()
    };
    let (writer, task) = TraceWriter::spawn(store.clone(), config, &mut registry);
    let ts = traces(300, now_ms());
    for t in &ts {
        assert!(writer.offer(t.clone()));
    }
    task.shutdown().await;
    let s = writer.stats();
    assert_eq!(
        (s.offered, s.written, s.dropped, s.queued, s.queued_bytes),
        (300, 300, 0, 0, 0),
        "{s:?}"
    );
    store.refresh().await.unwrap();
    let (hits, _) = all_pages(
        &*store,
        SearchQuery {
            size: 200,
            ..SearchQuery::new()
        },
    )
    .await;
    let ids: HashSet<String> = hits.into_iter().map(|h| h.request_id).collect();
    assert_eq!(ids, ts.iter().map(|t| t.request_id.clone()).collect());
    // Offers after shutdown are counted, not lost silently.
    assert!(!writer.offer(sample::summary_trace(1, 0)));
    assert_eq!(writer.stats().dropped, 1);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("trace_writer_written_total 300"), "{text}");
    assert!(
        text.contains("trace_writer_dropped_total{reason=\"closed\"} 1"),
        "{text}"
    );
    // The store's own writing CPU: the embedded store's writer thread reads its clock on
    // Linux, and the counter holds exactly its last reading (nothing was written after);
    // a remote store reports none.
    let counted: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("trace_writer_store_cpu_seconds_total "))
        .unwrap_or_else(|| panic!("no store CPU counter in {text}"))
        .parse()
        .unwrap();
    match store.write_cpu() {
        Some(cpu) => {
            assert!(cpu > Duration::ZERO);
            assert!((counted - cpu.as_secs_f64()).abs() < 1e-6, "{counted} against {cpu:?}");
        }
        None => {
            let embedded_on_linux = cfg!(target_os = "linux") && store.kind() == "embedded";
            assert!(!embedded_on_linux, "the writer thread's CPU was not read");
            assert_eq!(counted, 0.0);
        }
    }
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod embedded_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _dir) = super::embedded();
                    super::$name(store).await;
                }
            )*
        }
        mod elasticsearch_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::elastic(stringify!($name))).await;
                }
            )*
        }
    };
}

suite!(
    round_trip,
    search_filters_and_paging,
    aggregates_match_the_reference,
    writes_are_idempotent_and_bad_traces_rejected,
    retention_removes_old_traces_only,
    the_writer_delivers_everything,
);

/// The Elasticsearch server dies mid-stream and comes back empty on the same port: the writer
/// keeps its batch, drops (and counts) what does not fit its queue, puts the template back and
/// resumes. Every trace offered is accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_survives_the_server_stopping_mid_stream() {
    let mut server = TestServer::start().unwrap();
    let addr = server.addr().to_string();
    let mut config = ElasticConfig::new(server.url());
    config.timeout = Duration::from_secs(2);
    let store: Arc<dyn TraceStore> = Arc::new(ElasticStore::connect(&config).unwrap());
    let mut registry = Registry::default();
    let (writer, task) = TraceWriter::spawn(
        store.clone(),
        WriterConfig {
            max_traces: 100,
            batch: 25,
            linger: Duration::from_millis(10),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
            ..WriterConfig::default()
        },
        &mut registry,
    );
    let wait = |what: &'static str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                writer.stats()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    let now = now_ms();
    for i in 0..50 {
        assert!(writer.offer(sample::summary_trace(i, now)));
    }
    wait("the first 50", &|| writer.stats().written == 50);

    server.stop();
    let mut accepted_while_down = 0;
    for i in 50..350 {
        if writer.offer(sample::summary_trace(i, now)) {
            accepted_while_down += 1;
        }
    }
    let s = writer.stats();
    assert!((100..300).contains(&accepted_while_down), "{accepted_while_down}");
    assert_eq!(s.dropped, 300 - accepted_while_down, "{s:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        writer.stats().retries > 0,
        "the writer retries while the server is down"
    );
    assert_eq!(writer.stats().written, 50, "nothing written while down");

    let _server = TestServer::start_on(&addr).unwrap();
    wait("the queue to drain", &|| writer.stats().queued == 0);
    task.shutdown().await;
    let s = writer.stats();
    assert_eq!(s.offered, 350);
    assert_eq!(s.written, 50 + accepted_while_down, "{s:?}");
    assert_eq!(s.offered, s.written + s.rejected + s.dropped + s.queued, "{s:?}");
    // The restarted server holds exactly what was written after it came back.
    store.refresh().await.unwrap();
    let page = store.search(&SearchQuery::new()).await.unwrap();
    assert_eq!(page.total, accepted_while_down);
}

/// A size-capped embedded store: `retain` deletes the oldest traces (and their item and stage
/// rows) until the database is under the cap, whatever their age; the newest stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_keeps_under_its_size_cap_by_dropping_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let uncapped = EmbeddedStore::open(dir.path().join("traces.sqlite")).unwrap();
    let now = now_ms();
    let all = traces(400, now - 400_000);
    put_all(&uncapped, &all).await;
    let full = uncapped.used_bytes().await.unwrap();
    // Age alone removes nothing here.
    assert_eq!(uncapped.retain(now - 7 * DAY).await.unwrap(), 0);
    drop(uncapped);

    let cap = full / 3;
    let store = EmbeddedStore::open(dir.path().join("traces.sqlite"))
        .unwrap()
        .with_max_bytes(cap);
    let removed = store.retain(now - 7 * DAY).await.unwrap() as usize;
    let used = store.used_bytes().await.unwrap();
    assert!(used <= cap, "{used} bytes used, cap {cap} (was {full})");
    assert!((200..400).contains(&removed), "removed {removed} of 400");

    // Exactly the oldest went: the kept ones are the newest `400 - removed`.
    let (hits, total) = all_pages(&store, SearchQuery::new()).await;
    assert_eq!(total as usize, 400 - removed);
    let kept: HashSet<&str> = hits.iter().map(|h| h.request_id.as_str()).collect();
    let (gone, stay) = all.split_at(removed);
    assert!(stay.iter().all(|t| kept.contains(t.request_id.as_str())));
    assert!(gone.iter().all(|t| !kept.contains(t.request_id.as_str())));
    // Their child rows went with them: the aggregates count only what is kept.
    let q = AggregateQuery::new(now - 500_000, now + 60_000, 60_000).unwrap();
    let (got, want) = (store.aggregate(&q).await.unwrap(), query::aggregate(stay, &q));
    assert_eq!((got.requests, &got.channels), (want.requests, &want.channels));
    for (name, w) in &want.stages {
        assert_eq!(got.stages[name].count, w.count, "{name}");
    }
    // Under the cap now: nothing more goes.
    assert_eq!(store.retain(now - 7 * DAY).await.unwrap(), 0);
}

/// The embedded store writes on a thread of its own under `SCHED_IDLE` (on Linux the policy is
/// per thread), so a batch's ~100 ms of SQLite work runs only on a core the requests leave idle.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_embedded_store_writes_on_an_idle_priority_thread() {
    use recstack_trace_store::embedded::WRITER_THREAD;
    /// Linux's number for the `SCHED_IDLE` policy (`sched.h`).
    const SCHED_IDLE: u32 = 5;
    let (store, _dir) = embedded();
    // A write has run on the thread, so it has set its policy.
    put_all(&*store, &traces(3, now_ms())).await;
    let policy_of = |task: std::path::PathBuf| -> Option<(String, u32)> {
        let comm = std::fs::read_to_string(task.join("comm")).ok()?;
        let stat = std::fs::read_to_string(task.join("stat")).ok()?;
        // Fields after the command's closing parenthesis start at the third (state); the
        // scheduling policy is the 41st.
        let rest = &stat[stat.rfind(')')? + 1..];
        let policy = rest.split_whitespace().nth(41 - 3)?.parse().ok()?;
        Some((comm.trim().to_string(), policy))
    };
    let threads: Vec<(String, u32)> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| policy_of(e.ok()?.path()))
        .collect();
    let writers: Vec<u32> = threads
        .iter()
        .filter(|(name, _)| name == WRITER_THREAD)
        .map(|&(_, p)| p)
        .collect();
    assert!(!writers.is_empty(), "no {WRITER_THREAD} thread among {threads:?}");
    assert!(
        writers.iter().all(|&p| p == SCHED_IDLE),
        "writer threads' policies: {writers:?}"
    );
    // The test's own thread is untouched (SCHED_OTHER).
    let me = policy_of("/proc/thread-self".into()).unwrap();
    assert_eq!(me.1, 0, "{me:?}");
}

/// Dropping the embedded store waits for its writer thread: the connections are closed, so the
/// write-ahead log has been checkpointed into the file and removed, and a fresh open sees
/// everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_embedded_store_leaves_a_complete_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("traces.sqlite");
    let store = EmbeddedStore::open(&path).unwrap();
    let all = traces(50, now_ms());
    put_all(&store, &all).await;
    drop(store);
    let wal = dir.path().join("traces.sqlite-wal");
    assert!(!wal.exists(), "{} is still there", wal.display());
    let again = EmbeddedStore::open(&path).unwrap();
    let (_, total) = all_pages(&again, SearchQuery::new()).await;
    assert_eq!(total, 50);
}

/// The embedded store writes a summary trace's doc into its batch's chunk, an LZ4 frame (well
/// under half the JSON's bytes), and a full trace's as a zstd frame (under a third), and reads
/// docs of every encoding,
/// so a file written with plain JSON or zstd frames alone (older builds, or the options) stays
/// readable after the switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_docs_are_compressed_and_every_encoding_reads_back() {
    use recstack_trace_store::embedded::{DocEncoding, LARGE_DOC};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("traces.sqlite");
    let now = now_ms();
    let plain = traces(8, now);
    let json_store = EmbeddedStore::open(&path).unwrap().with_doc_encoding(DocEncoding::Json);
    put_all(&json_store, &plain).await;
    drop(json_store);
    let zstd_framed = traces_from(50, 8, now);
    let zstd_store = EmbeddedStore::open(&path).unwrap().with_doc_encoding(DocEncoding::Zstd);
    put_all(&zstd_store, &zstd_framed).await;
    drop(zstd_store);

    // The default store on the same file: new docs by their size, the older ones still read.
    let store = EmbeddedStore::open(&path).unwrap();
    let by_size = traces_from(100, 8, now);
    put_all(&store, &by_size).await;
    for t in plain.iter().chain(&zstd_framed).chain(&by_size) {
        let got = store.get(&t.request_id).await.unwrap().expect("stored trace");
        assert_eq!(&got, t, "{}", t.request_id);
    }
    drop(store);

    // What the rows hold: JSON for the first store's traces, zstd frames for the second's, and
    // for the default's references into a chunk for summary traces and zstd frames for full
    // ones; each read back by its format's own reader.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let doc = |id: &str| -> Vec<u8> {
        conn.query_row("SELECT doc FROM traces WHERE request_id = ?1", [id], |r| r.get(0))
            .unwrap()
    };
    for t in &plain {
        assert_eq!(doc(&t.request_id), serde_json::to_vec(t).unwrap(), "{}", t.request_id);
    }
    // A doc's bytes and its trace's JSON, once the doc is checked to be the frame `magic`
    // starts and smaller than `at_most` of the JSON.
    let framed = |t: &Trace, magic: [u8; 4], at_most: f64| {
        let (stored, json) = (doc(&t.request_id), serde_json::to_vec(t).unwrap());
        assert_eq!(stored[..4], magic, "{}: not the frame expected", t.request_id);
        let ratio = stored.len() as f64 / json.len() as f64;
        assert!(
            ratio < at_most,
            "{}: {} bytes for {}",
            t.request_id,
            stored.len(),
            json.len()
        );
        (stored, json)
    };
    // The options write JSON; the default writes MessagePack.
    let zstd_frame = |t: &Trace, msgpack: bool| {
        let (stored, json) = framed(t, [0x28, 0xB5, 0x2F, 0xFD], 1.0 / 3.0);
        let body = match msgpack {
            true => rmp_serde::to_vec_named(t).unwrap(),
            false => json,
        };
        assert_eq!(zstd::decode_all(&stored[..]).unwrap(), body, "{}", t.request_id);
    };
    zstd_framed.iter().for_each(|t| zstd_frame(t, false));
    // A summary trace's doc is a 20-byte reference: "RSDR", its chunk (by the first trace's row
    // id), the offset and length of its MessagePack (under 4/5 of its JSON's bytes) in the
    // chunk's; the chunk an LZ4 frame.
    let (mut summaries, mut fulls) = (0, 0);
    let mut chunked: std::collections::BTreeMap<i64, usize> = Default::default();
    for t in &by_size {
        if t.detail == Detail::Full {
            assert!(rmp_serde::to_vec_named(t).unwrap().len() >= LARGE_DOC);
            zstd_frame(t, true);
            fulls += 1;
            continue;
        }
        let stored = doc(&t.request_id);
        assert_eq!(stored.len(), 20, "{}", t.request_id);
        assert_eq!(&stored[..4], b"RSDR", "{}", t.request_id);
        let number = |at: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b[..at.len()].copy_from_slice(&stored[at]);
            i64::from_le_bytes(b)
        };
        let (chunk, offset, len) = (number(4..12), number(12..16) as usize, number(16..20) as usize);
        let frame: Vec<u8> = conn
            .query_row("SELECT frame FROM doc_chunks WHERE first = ?1", [chunk], |r| r.get(0))
            .unwrap();
        let mut json = Vec::new();
        std::io::Read::read_to_end(&mut lz4_flex::frame::FrameDecoder::new(&frame[..]), &mut json).unwrap();
        let body = rmp_serde::to_vec_named(t).unwrap();
        assert_eq!(json[offset..offset + len], body[..], "{}", t.request_id);
        assert!(
            body.len() * 5 < serde_json::to_vec(t).unwrap().len() * 4,
            "{}",
            t.request_id
        );
        *chunked.entry(chunk).or_default() += len;
        summaries += 1;
    }
    // The batch's summary docs share one chunk, under half their MessagePack's bytes.
    assert_eq!(chunked.len(), 1, "{chunked:?}");
    for (chunk, json_bytes) in chunked {
        let frame: Vec<u8> = conn
            .query_row("SELECT frame FROM doc_chunks WHERE first = ?1", [chunk], |r| r.get(0))
            .unwrap();
        assert!(frame.len() * 2 < json_bytes, "{} bytes for {json_bytes}", frame.len());
    }
    assert_eq!((summaries, fulls), (6, 2), "the mix this test reads");
}

/// The first table layout (user_version 0), as files written before layout version 2 hold it.
const FIRST_LAYOUT: &str = "
CREATE TABLE traces (request_id TEXT PRIMARY KEY, ts INTEGER NOT NULL, user_id TEXT NOT NULL, level TEXT NOT NULL,
    model_version TEXT, bucket INTEGER NOT NULL, summary TEXT NOT NULL, doc BLOB NOT NULL);
CREATE INDEX traces_time ON traces (ts, request_id);
CREATE INDEX traces_user ON traces (user_id, ts);
CREATE TABLE served (request_id TEXT NOT NULL, position INTEGER NOT NULL, item_id TEXT NOT NULL,
    PRIMARY KEY (request_id, position)) WITHOUT ROWID;
CREATE INDEX served_item ON served (item_id);
CREATE TABLE channel_hits (request_id TEXT NOT NULL, channel TEXT NOT NULL, items INTEGER NOT NULL,
    PRIMARY KEY (request_id, channel)) WITHOUT ROWID;
CREATE TABLE stage_latency (request_id TEXT NOT NULL, name TEXT NOT NULL, latency_us INTEGER NOT NULL,
    PRIMARY KEY (request_id, name)) WITHOUT ROWID;
";

/// Writes `traces` into a new file of the first layout, as its writer did.
fn write_first_layout(path: &std::path::Path, traces: &[Trace]) {
    let mut conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(FIRST_LAYOUT).unwrap();
    let tx = conn.transaction().unwrap();
    for t in traces {
        let summary = serde_json::to_string(&TraceSummary::from(t)).unwrap();
        tx.execute(
            "INSERT INTO traces VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            rusqlite::params![
                t.request_id,
                t.timestamp_ms,
                t.user_id,
                t.level,
                t.model_version,
                t.bucket,
                summary,
                serde_json::to_vec(t).unwrap()
            ],
        )
        .unwrap();
        let mut channels = std::collections::BTreeMap::<&str, u32>::new();
        for item in &t.items {
            tx.execute(
                "INSERT INTO served VALUES (?1, ?2, ?3)",
                rusqlite::params![t.request_id, item.position, item.item_id],
            )
            .unwrap();
            for ch in query::item_channels(item) {
                *channels.entry(ch).or_default() += 1;
            }
        }
        for (ch, n) in channels {
            tx.execute(
                "INSERT INTO channel_hits VALUES (?1, ?2, ?3)",
                rusqlite::params![t.request_id, ch, n],
            )
            .unwrap();
        }
        for s in &t.stages {
            tx.execute(
                "INSERT OR REPLACE INTO stage_latency VALUES (?1, ?2, ?3)",
                rusqlite::params![t.request_id, s.name, s.latency_us as i64],
            )
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// Writes `traces` into a new file of layout 2: the traces table as this build writes it (it
/// is unchanged since), the item index keyed `(item, trace)`, the user index `(user, time)`.
async fn write_second_layout(path: &std::path::Path, traces: &[Trace]) {
    write_third_layout(path, traces).await;
    rusqlite::Connection::open(path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE served_v2 (item_id TEXT NOT NULL, trace INTEGER NOT NULL, PRIMARY KEY (item_id, trace))
                 WITHOUT ROWID;
             INSERT INTO served_v2 SELECT item_id, trace FROM served;
             DROP TABLE served; ALTER TABLE served_v2 RENAME TO served;
             DROP INDEX traces_user; CREATE INDEX traces_user ON traces (user_id, ts);
             PRAGMA user_version = 2;",
        )
        .unwrap();
}

/// Writes `traces` into a new file of layout 3: the traces table and its indexes as this build
/// writes them, the item index one `(epoch, item, trace)` key per served item, no `row_ids`.
async fn write_third_layout(path: &std::path::Path, traces: &[Trace]) {
    put_all(&EmbeddedStore::open(path).unwrap(), traces).await;
    rusqlite::Connection::open(path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE served (epoch INTEGER NOT NULL, item_id TEXT NOT NULL, trace INTEGER NOT NULL,
                 PRIMARY KEY (epoch, item_id, trace)) WITHOUT ROWID;
             INSERT INTO served SELECT s.epoch, s.item_id, j.value FROM served_lists s, json_each(s.traces) j;
             DROP TABLE served_lists; DROP TABLE row_ids;
             PRAGMA user_version = 3;",
        )
        .unwrap();
}

/// A file of the first layout is converted when opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_layout_file_is_converted_when_opened() {
    an_old_layout_file_converts(|path, old| async move { write_first_layout(&path, &old) }).await;
}

/// A file of layout 2 is converted when opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_layout_file_is_converted_when_opened() {
    an_old_layout_file_converts(|path, old| async move { write_second_layout(&path, &old).await }).await;
}

/// A file of layout 3 is converted when opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_layout_file_is_converted_when_opened() {
    an_old_layout_file_converts(|path, old| async move { write_third_layout(&path, &old).await }).await;
}

/// `write` puts 40 traces of two hours ago into a new file in an older layout; opened, the file
/// converts ([`an_old_layout_converts`]).
async fn an_old_layout_file_converts<F: std::future::Future<Output = ()>>(
    write: impl FnOnce(std::path::PathBuf, Vec<Trace>) -> F,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("traces.sqlite");
    let start = (now_ms() - 7_200_000) / 60_000 * 60_000;
    let old = traces(40, start);
    write(path.clone(), old.clone()).await;
    an_old_layout_converts(&path, &old, start).await;
}

/// Opens the file at `path`, written in an older layout with `old`: every trace reads back,
/// item search and the aggregates answer as the reference does, new traces go in beside the
/// old, the item index holds exactly the stored traces' items, each under its epoch, and the
/// user index is this layout's.
async fn an_old_layout_converts(path: &std::path::Path, old: &[Trace], start: i64) {
    let store = EmbeddedStore::open(path).unwrap();
    let new = traces_from(100, 10, start);
    put_all(&store, &new).await;
    let all: Vec<Trace> = old.iter().chain(&new).cloned().collect();
    for t in &all {
        assert_eq!(&store.get(&t.request_id).await.unwrap().expect("stored trace"), t);
    }
    for item in [
        &old[0].items[0].item_id,
        &old[5].items[3].item_id,
        &new[2].items[1].item_id,
    ] {
        let q = SearchQuery {
            item: Some(item.clone()),
            ..SearchQuery::new()
        };
        let (hits, _) = all_pages(&store, q.clone()).await;
        assert_eq!(hits, expected(&all, &q), "item {item}");
        assert!(!hits.is_empty());
    }
    for user in [&old[0].user_id, &new[3].user_id] {
        let q = SearchQuery {
            user: Some(user.clone()),
            ..SearchQuery::new()
        };
        let (hits, _) = all_pages(&store, q.clone()).await;
        assert_eq!(hits, expected(&all, &q), "user {user}");
        assert!(hits.len() > 1);
    }
    let q = AggregateQuery::new(start, start + DAY, 60_000).unwrap();
    let (got, want) = (store.aggregate(&q).await.unwrap(), query::aggregate(&all, &q));
    assert_eq!(got.requests, want.requests);
    assert_eq!(got.channels, want.channels);
    let counts = |a: &query::Aggregates| a.stages.iter().map(|(n, s)| (n.clone(), s.count)).collect::<Vec<_>>();
    assert_eq!(counts(&got), counts(&want));
    // Retention works on the converted rows.
    assert_eq!(store.retain(start + 21_000).await.unwrap(), 20);
    assert!(store.get(&old[0].request_id).await.unwrap().is_none());
    // A trace written again with other items.
    let mut again = new[0].clone();
    again.items[0].item_id = "replacing-item".into();
    put_all(&store, std::slice::from_ref(&again)).await;
    drop(store);

    // The item index's lists name exactly the stored traces' items among the traces that are
    // stored (the ids of the deleted and the rewritten trace may stay in their lists; they
    // match no row), each id under its epoch, and no id at or past the next row id.
    let conn = rusqlite::Connection::open(path).unwrap();
    let stored = old[20..].iter().chain(std::iter::once(&again)).chain(&new[1..]);
    let want: HashSet<(String, String)> = stored
        .flat_map(|t| t.items.iter().map(|i| (i.item_id.clone(), t.request_id.clone())))
        .collect();
    let live: HashSet<(String, String)> = conn
        .prepare(
            "SELECT s.item_id, t.request_id FROM served_lists s, json_each(s.traces) j JOIN traces t ON t.id = j.value",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(live, want);
    let misfiled: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM served_lists s, json_each(s.traces) j
             WHERE s.epoch != j.value >> 10 OR j.value >= (SELECT next FROM row_ids)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(misfiled, 0);
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 4);
    let user_index: String = conn
        .query_row("SELECT sql FROM sqlite_schema WHERE name = 'traces_user'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(user_index.contains("id >> 10, user_id, ts, request_id"), "{user_index}");
    let leftovers: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_schema WHERE name IN
                 ('channel_hits', 'stage_latency', 'traces_v1', 'served_v1', 'served_v2', 'served_v3', 'served')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(leftovers, 0);
}

/// A file a newer build wrote is refused with its version, not read as if it were ours.
#[test]
fn a_newer_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("traces.sqlite");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("PRAGMA user_version = 9")
        .unwrap();
    let err = EmbeddedStore::open(&path).err().expect("refused").to_string();
    assert!(err.contains("version 9"), "{err}");
}
