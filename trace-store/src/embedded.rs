//! The one-machine trace store: a SQLite file on local disk.
//!
//! Why SQLite (through `rusqlite`, bundled): it is the most used and best tested embedded
//! database there is, crash-safe with its write-ahead log, and its secondary indexes and SQL
//! aggregates answer the same queries as Elasticsearch without a hand-written index. One file,
//! its tables open in the `sqlite3` shell when debugging (the docs are compressed, below).
//!
//! Layout: `traces` holds one row per request (the searchable fields, a JSON summary for result
//! lists and the whole trace, compressed); `served`, `channel_hits` and `stage_latency` hold the
//! per-item and per-stage rows that item search and the aggregates need. A batch is one
//! transaction. A trace written twice (a retried batch) replaces the first, as in
//! Elasticsearch.
//!
//! The whole-trace `doc` is a zstd frame of the JSON (see [`DocEncoding`]): a summary trace's
//! ~7 KB of JSON is ~1.6 KB compressed, so the writer moves a quarter of the bytes through
//! SQLite, its write-ahead log and the checkpoint. Reads take either form, so a file written
//! with plain JSON docs (older builds, or [`DocEncoding::Json`]) stays readable. To read a doc
//! by hand, ask the trace API (`GET /v1/traces/{request_id}`) rather than the `sqlite3` shell.
//!
//! Retention is by age and, with [`EmbeddedStore::with_max_bytes`], by size: a store on a
//! pod's volume or a laptop's disk must not grow without bound (a summary trace is ~3.6 KB with
//! its rows and indexes; at 300 requests a second that is ~1 GB an hour). Beyond the cap the
//! oldest traces go.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use crate::Trace;
use crate::query::{self, AggregateQuery, Aggregates, Page, SearchQuery, TraceSummary};
use crate::store::{PutOutcome, StoreError, TraceStore};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS traces (
    request_id    TEXT PRIMARY KEY,
    ts            INTEGER NOT NULL,
    user_id       TEXT NOT NULL,
    level         TEXT NOT NULL,
    model_version TEXT,
    bucket        INTEGER NOT NULL,
    summary       TEXT NOT NULL,
    doc           BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS traces_time ON traces (ts, request_id);
CREATE INDEX IF NOT EXISTS traces_user ON traces (user_id, ts);
CREATE TABLE IF NOT EXISTS served (
    request_id TEXT NOT NULL,
    position   INTEGER NOT NULL,
    item_id    TEXT NOT NULL,
    PRIMARY KEY (request_id, position)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS served_item ON served (item_id);
CREATE TABLE IF NOT EXISTS channel_hits (
    request_id TEXT NOT NULL,
    channel    TEXT NOT NULL,
    items      INTEGER NOT NULL,
    PRIMARY KEY (request_id, channel)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stage_latency (
    request_id TEXT NOT NULL,
    name       TEXT NOT NULL,
    latency_us INTEGER NOT NULL,
    PRIMARY KEY (request_id, name)
) WITHOUT ROWID;
";

/// SQLite-backed [`TraceStore`].
pub struct EmbeddedStore {
    path: PathBuf,
    // Writes go through one connection, reads through another: in WAL mode readers do not
    // wait for the writer.
    writer: WriterThread,
    reader: Arc<Mutex<Connection>>,
    /// Most bytes the database may use; `retain` deletes the oldest traces beyond it.
    max_bytes: Option<u64>,
    encoding: DocEncoding,
}

/// How the `doc` column holds a trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DocEncoding {
    /// A zstd frame (level 1) of the JSON: the default.
    #[default]
    Zstd,
    /// The JSON itself: readable in the `sqlite3` shell, ~4× the bytes to write.
    Json,
}

/// zstd's level 1: its fastest standard level; higher levels gain little on trace JSON.
const ZSTD_LEVEL: i32 = 1;
/// Every zstd frame starts with these bytes; JSON starts with `{`.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// The trace a `doc` holds, whichever [`DocEncoding`] wrote it.
fn decode_doc(doc: &[u8]) -> Result<Trace, String> {
    if doc.starts_with(&ZSTD_MAGIC) {
        let json = zstd::decode_all(doc).map_err(|e| format!("zstd: {e}"))?;
        serde_json::from_slice(&json).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice(doc).map_err(|e| e.to_string())
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(unavailable)?;
    // auto_vacuum must be chosen before the first table exists; later it is a no-op. A 32 MiB
    // page cache (SQLite's default is 2 MiB) keeps the indexes' hot pages in memory as the file
    // grows, instead of reading them back from the OS for every batch.
    conn.execute_batch(
        "PRAGMA auto_vacuum = INCREMENTAL; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
         PRAGMA cache_size = -32768;",
    )
    .map_err(unavailable)?;
    Ok(conn)
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store file at `path`; its directory is created too.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| unavailable(format!("{}: {e}", dir.display())))?;
        }
        let writer = open(&path)?;
        writer.execute_batch(SCHEMA).map_err(unavailable)?;
        let reader = open(&path)?;
        Ok(Self {
            path,
            writer: WriterThread::start(writer)?,
            reader: Arc::new(Mutex::new(reader)),
            max_bytes: None,
            encoding: DocEncoding::default(),
        })
    }

    /// Caps the bytes the database uses: each [`TraceStore::retain`] also deletes the oldest
    /// traces until it is under `max_bytes` (to 90 % of it, so a full store is not trimmed on
    /// every call).
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = Some(max_bytes);
        self
    }

    /// How new traces' docs are written (existing rows are read either way).
    pub fn with_doc_encoding(mut self, encoding: DocEncoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// Bytes the database's pages in use take (free pages not counted).
    pub async fn used_bytes(&self) -> Result<u64, StoreError> {
        Self::with(&self.reader, |c| used_bytes(c)).await
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a connection off the async workers.
    async fn with<T: Send + 'static>(
        conn: &Arc<Mutex<Connection>>,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic inside a transaction rolls it back; the connection stays usable.
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| unavailable(format!("store task: {e}")))?
    }
}

/// The writer thread's name (short enough for Linux's 15-character thread names).
pub const WRITER_THREAD: &str = "trace-writer";

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The write connection on a thread of its own that runs only when the services leave a core
/// idle (Linux's `SCHED_IDLE` policy).
///
/// Why: a batch of 500 traces is ~100 ms of one core's work. In the gateway's process, on a
/// tokio blocking thread at normal priority, that took a core from the requests for as long,
/// and their tail latency showed it. A lower nice value was not enough: at nice 10, p99 at
/// 1,000 req/s was higher than with `SCHED_IDLE` in 7 of 8 interleaved pairs (BENCHMARKS.md).
/// The likely reason (not measured directly): a running nice-10 batch may keep its core for a
/// scheduler slice after a request thread wakes, while `SCHED_IDLE` threads are preempted at
/// once by any normal thread that wakes. The writer's
/// bounded queue absorbs the delay (and counts what it drops when it cannot: when no core is
/// idle for long, traces are dropped before requests wait).
struct WriterThread {
    /// `None` only while dropping.
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WriterThread {
    /// Closes the queue and waits for the thread to finish what was sent and close its
    /// connection, as dropping a connection does: the file is checkpointed and complete once
    /// the store is gone.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("trace store writer thread panicked");
        }
    }
}

impl WriterThread {
    fn start(mut conn: Connection) -> Result<Self, StoreError> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name(WRITER_THREAD.into())
            .spawn(move || {
                run_when_idle();
                // Ends when the store (the only sender) is dropped.
                while let Ok(job) = rx.recv() {
                    // A panic inside a transaction rolls it back: the connection stays usable,
                    // and the caller gets an error (its reply channel is dropped).
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut conn)));
                }
            })
            .map_err(|e| unavailable(format!("writer thread: {e}")))?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Runs `f` on the write connection.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, result) = tokio::sync::oneshot::channel();
        self.jobs
            .as_ref()
            .ok_or_else(|| unavailable("the writer thread has stopped"))?
            .send(Box::new(move |conn| {
                let _ = reply.send(f(conn));
            }))
            .map_err(|_| unavailable("the writer thread has stopped"))?;
        result.await.map_err(|_| unavailable("store write failed (panicked)"))?
    }
}

/// Puts the calling thread under `SCHED_IDLE`: it runs only on a core no other thread wants,
/// and yields it as soon as one does. Elsewhere than Linux, or where the policy cannot be set,
/// the thread takes the lowest nice value it may instead. Best effort: failures are logged.
fn run_when_idle() {
    use thread_priority::{ThreadPriority, set_current_thread_priority};
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy, thread_native_id,
            thread_schedule_policy,
        };
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        // The call sets the policy, then the nice value `SCHED_IDLE` ignores; only the policy
        // matters, so it is checked rather than the call's result.
        let _ = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle);
        if thread_schedule_policy().is_ok_and(|p| p == idle) {
            return;
        }
    }
    if let Err(e) = set_current_thread_priority(ThreadPriority::Min) {
        tracing::warn!(error = ?e, "trace store writer: could not lower the thread's priority");
    }
}

fn put_batch(conn: &mut Connection, traces: &[Trace], encoding: DocEncoding) -> Result<PutOutcome, StoreError> {
    let mut outcome = PutOutcome::default();
    // One compression context for the batch (creating one costs more than a small frame).
    let mut zstd = match encoding {
        DocEncoding::Zstd => Some(zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(unavailable)?),
        DocEncoding::Json => None,
    };
    let tx = conn.transaction().map_err(unavailable)?;
    {
        // A new request id (the usual case) is one insert; a trace written again (a retried
        // batch) replaces the row and its child rows.
        const ROW: &str = "INTO traces (request_id, ts, user_id, level, model_version, bucket, summary, doc)
                           VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
        let mut new_row = tx
            .prepare_cached(&format!("INSERT {ROW} ON CONFLICT (request_id) DO NOTHING"))
            .map_err(unavailable)?;
        let mut replace_row = tx
            .prepare_cached(&format!("INSERT OR REPLACE {ROW}"))
            .map_err(unavailable)?;
        let mut clear = Vec::new();
        for table in ["served", "channel_hits", "stage_latency"] {
            clear.push(
                tx.prepare_cached(&format!("DELETE FROM {table} WHERE request_id = ?1"))
                    .map_err(unavailable)?,
            );
        }
        let mut served = tx
            .prepare_cached("INSERT INTO served (request_id, position, item_id) VALUES (?1, ?2, ?3)")
            .map_err(unavailable)?;
        let mut channel = tx
            .prepare_cached("INSERT INTO channel_hits (request_id, channel, items) VALUES (?1, ?2, ?3)")
            .map_err(unavailable)?;
        let mut stage = tx
            .prepare_cached("INSERT OR REPLACE INTO stage_latency (request_id, name, latency_us) VALUES (?1, ?2, ?3)")
            .map_err(unavailable)?;
        for t in traces {
            if let Err(e) = t.check() {
                outcome.rejected.push((t.request_id.clone(), e.to_string()));
                continue;
            }
            let mut doc = serde_json::to_vec(t).map_err(|e| StoreError::Refused(e.to_string()))?;
            if let Some(z) = &mut zstd {
                doc = z.compress(&doc).map_err(unavailable)?;
            }
            let summary =
                serde_json::to_string(&TraceSummary::from(t)).map_err(|e| StoreError::Refused(e.to_string()))?;
            let row = params![
                t.request_id,
                t.timestamp_ms,
                t.user_id,
                t.level,
                t.model_version,
                t.bucket,
                summary,
                doc
            ];
            if new_row.execute(row).map_err(unavailable)? == 0 {
                replace_row.execute(row).map_err(unavailable)?;
                for stmt in &mut clear {
                    stmt.execute([&t.request_id]).map_err(unavailable)?;
                }
            }
            let mut per_channel: std::collections::BTreeMap<&str, u32> = Default::default();
            for item in &t.items {
                served
                    .execute(params![t.request_id, item.position, item.item_id])
                    .map_err(unavailable)?;
                for ch in query::item_channels(item) {
                    *per_channel.entry(ch).or_default() += 1;
                }
            }
            for (ch, n) in per_channel {
                channel.execute(params![t.request_id, ch, n]).map_err(unavailable)?;
            }
            for s in &t.stages {
                stage
                    .execute(params![t.request_id, s.name, s.latency_us.min(i64::MAX as u64) as i64])
                    .map_err(unavailable)?;
            }
            outcome.written += 1;
        }
    }
    tx.commit().map_err(unavailable)?;
    Ok(outcome)
}

/// The WHERE clause and parameters of a search (cursor included when `with_cursor`).
fn search_filter(q: &SearchQuery, with_cursor: bool) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let mut clauses: Vec<&str> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    if let Some(u) = &q.user {
        clauses.push("user_id = ?");
        values.push(Value::Text(u.clone()));
    }
    if let Some(i) = &q.item {
        clauses.push("request_id IN (SELECT request_id FROM served WHERE item_id = ?)");
        values.push(Value::Text(i.clone()));
    }
    if let Some(f) = q.from_ms {
        clauses.push("ts >= ?");
        values.push(Value::Integer(f));
    }
    if let Some(t) = q.to_ms {
        clauses.push("ts < ?");
        values.push(Value::Integer(t));
    }
    if let Some(l) = &q.level {
        clauses.push("level = ?");
        values.push(Value::Text(l.clone()));
    }
    if let Some(m) = &q.model_version {
        clauses.push("model_version = ?");
        values.push(Value::Text(m.clone()));
    }
    if let Some(b) = q.bucket {
        clauses.push("bucket = ?");
        values.push(Value::Integer(i64::from(b)));
    }
    if with_cursor && let Some(c) = &q.after {
        clauses.push("(ts < ? OR (ts = ? AND request_id < ?))");
        values.extend([
            Value::Integer(c.timestamp_ms),
            Value::Integer(c.timestamp_ms),
            Value::Text(c.request_id.clone()),
        ]);
    }
    let sql = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    (sql, values)
}

fn search(conn: &Connection, q: &SearchQuery) -> Result<Page, StoreError> {
    let (filter, values) = search_filter(q, true);
    let sql = format!("SELECT request_id, summary FROM traces {filter} ORDER BY ts DESC, request_id DESC LIMIT ?");
    let mut stmt = conn.prepare_cached(&sql).map_err(unavailable)?;
    let limit = rusqlite::types::Value::Integer(q.size as i64 + 1);
    let rows = stmt
        .query_map(params_from_iter(values.iter().chain([&limit])), |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(unavailable)?;
    let mut hits = Vec::new();
    for row in rows {
        let (request_id, summary) = row.map_err(unavailable)?;
        hits.push(
            serde_json::from_str::<TraceSummary>(&summary).map_err(|e| StoreError::Corrupt {
                request_id,
                message: e.to_string(),
            })?,
        );
    }
    let (filter, values) = search_filter(q, false);
    let total: i64 = conn
        .prepare_cached(&format!("SELECT COUNT(*) FROM traces {filter}"))
        .and_then(|mut s| s.query_row(params_from_iter(values.iter()), |r| r.get(0)))
        .map_err(unavailable)?;
    Ok(Page::from_hits(hits, q.size, total as u64))
}

fn aggregate(conn: &Connection, q: &AggregateQuery) -> Result<Aggregates, StoreError> {
    let range = params![q.from_ms, q.to_ms];
    let mut levels: std::collections::BTreeMap<i64, std::collections::BTreeMap<String, u64>> = Default::default();
    let mut requests = 0u64;
    {
        let mut stmt = conn
            .prepare_cached(
                "SELECT ts - ((ts % ?3) + ?3) % ?3 AS b, level, COUNT(*) FROM traces
                 WHERE ts >= ?1 AND ts < ?2 GROUP BY b, level",
            )
            .map_err(unavailable)?;
        let rows = stmt
            .query_map(params![q.from_ms, q.to_ms, q.interval_ms], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
            })
            .map_err(unavailable)?;
        for row in rows {
            let (b, level, n) = row.map_err(unavailable)?;
            levels.entry(b).or_default().insert(level, n as u64);
            requests += n as u64;
        }
    }
    let mut channels = std::collections::BTreeMap::new();
    {
        let mut stmt = conn
            .prepare_cached(
                "SELECT c.channel, SUM(c.items) FROM traces t JOIN channel_hits c ON c.request_id = t.request_id
                 WHERE t.ts >= ?1 AND t.ts < ?2 GROUP BY c.channel",
            )
            .map_err(unavailable)?;
        let rows = stmt
            .query_map(range, |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(unavailable)?;
        for row in rows {
            let (ch, n) = row.map_err(unavailable)?;
            channels.insert(ch, n as u64);
        }
    }
    let mut stages: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    {
        let mut stmt = conn
            .prepare_cached(
                "SELECT s.name, s.latency_us FROM traces t JOIN stage_latency s ON s.request_id = t.request_id
                 WHERE t.ts >= ?1 AND t.ts < ?2",
            )
            .map_err(unavailable)?;
        let rows = stmt
            .query_map(range, |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(unavailable)?;
        for row in rows {
            let (name, us) = row.map_err(unavailable)?;
            stages.entry(name).or_default().push(us.max(0) as u64);
        }
    }
    Ok(Aggregates::from_parts(requests, levels, channels, stages))
}

fn used_bytes(conn: &Connection) -> Result<u64, StoreError> {
    let pragma = |name: &str| -> Result<u64, StoreError> {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0))
            .map(|v| v.max(0) as u64)
            .map_err(unavailable)
    };
    Ok(pragma("page_count")?.saturating_sub(pragma("freelist_count")?) * pragma("page_size")?)
}

/// Deletes the traces `selected` (a `SELECT request_id FROM traces …` with one parameter) and
/// their child rows, in one transaction. Returns how many traces went.
fn delete_traces(conn: &mut Connection, selected: &str, param: i64) -> Result<u64, StoreError> {
    let tx = conn.transaction().map_err(unavailable)?;
    for table in ["served", "channel_hits", "stage_latency"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE request_id IN ({selected})"),
            [param],
        )
        .map_err(unavailable)?;
    }
    let removed = tx
        .execute(&format!("DELETE FROM traces WHERE request_id IN ({selected})"), [param])
        .map_err(unavailable)?;
    tx.commit().map_err(unavailable)?;
    Ok(removed as u64)
}

fn retain(conn: &mut Connection, cutoff_ms: i64, max_bytes: Option<u64>) -> Result<u64, StoreError> {
    let mut removed = delete_traces(conn, "SELECT request_id FROM traces WHERE ts < ?1", cutoff_ms)?;
    if let Some(max) = max_bytes
        && used_bytes(conn)? > max
    {
        // Oldest first, in chunks sized by the average trace's share of the bytes; index pages
        // are freed less than proportionally, so measure again after each chunk.
        let target = max / 10 * 9;
        for _ in 0..16 {
            let used = used_bytes(conn)?;
            if used <= target {
                break;
            }
            let count: i64 = conn
                .query_row("SELECT COUNT(*) FROM traces", [], |r| r.get(0))
                .map_err(unavailable)?;
            if count == 0 {
                break;
            }
            let share = (used - target) as f64 / used as f64;
            let n = ((count as f64 * share).ceil() as i64).clamp(1, count);
            removed += delete_traces(
                conn,
                "SELECT request_id FROM traces ORDER BY ts, request_id LIMIT ?1",
                n,
            )?;
        }
    }
    // Give freed pages back to the file system.
    conn.execute_batch("PRAGMA incremental_vacuum;").map_err(unavailable)?;
    Ok(removed)
}

#[async_trait]
impl TraceStore for EmbeddedStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn put(&self, traces: Arc<[Trace]>) -> Result<PutOutcome, StoreError> {
        let encoding = self.encoding;
        self.writer.run(move |c| put_batch(c, &traces, encoding)).await
    }

    async fn get(&self, request_id: &str) -> Result<Option<Trace>, StoreError> {
        let id = request_id.to_string();
        Self::with(&self.reader, move |c| {
            let doc: Option<Vec<u8>> = c
                .query_row("SELECT doc FROM traces WHERE request_id = ?1", [&id], |r| r.get(0))
                .optional()
                .map_err(unavailable)?;
            doc.map(|d| {
                decode_doc(&d).map_err(|message| StoreError::Corrupt {
                    request_id: id.clone(),
                    message,
                })
            })
            .transpose()
        })
        .await
    }

    async fn search(&self, q: &SearchQuery) -> Result<Page, StoreError> {
        let q = q.clone();
        Self::with(&self.reader, move |c| search(c, &q)).await
    }

    async fn aggregate(&self, q: &AggregateQuery) -> Result<Aggregates, StoreError> {
        let q = *q;
        Self::with(&self.reader, move |c| aggregate(c, &q)).await
    }

    async fn retain(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        let max_bytes = self.max_bytes;
        self.writer.run(move |c| retain(c, cutoff_ms, max_bytes)).await
    }

    async fn refresh(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
