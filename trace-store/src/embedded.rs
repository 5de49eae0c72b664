//! The one-machine trace store: a SQLite file on local disk.
//!
//! Why SQLite (through `rusqlite`, bundled): it is the most used and best tested embedded
//! database there is, crash-safe with its write-ahead log, and its secondary indexes and SQL
//! aggregates answer the same queries as Elasticsearch without a hand-written index. One file,
//! its tables open in the `sqlite3` shell when debugging (the docs are compressed, below).
//!
//! Layout: `traces` holds one row per request: the searchable fields, a JSON summary for result
//! lists, three small JSON values the item index and the aggregates read (the served item ids
//! in order, items served per channel, each stage's latency; SQLite's `json_each` opens them in
//! a query), and the whole trace, compressed. `served` is the item index: one
//! `(epoch, item, trace)` key per served item, the trace by its integer row id and the epoch
//! its row id's high bits ([`EPOCH_SHIFT`]): row ids grow with each write, so a batch's keys
//! all land in the newest epoch's few pages, and a store holding millions of traces writes as
//! few index pages per batch as a new one. (Keyed `(item, trace)` alone, each key went to a
//! page of its own all over the index: 18× the bytes written per trace once the store held
//! 200,000 traces.) The user index leads with the epoch too, `(id >> EPOCH_SHIFT, user_id, ts,
//! request_id)` (a user's page is sorted from the index alone, its summaries read after);
//! the request-id and time indexes take keys in write order already (the gateway's request
//! ids start with the time). An item or user search seeks once in each epoch. A summary trace
//! is so ~25 B-tree inserts (its row, three indexes, one key per served item), nearly all in
//! the newest pages of each. A batch is one transaction. A trace written twice (a retried
//! batch) replaces the first, as in Elasticsearch.
//!
//! The whole-trace `doc` is a zstd frame of the JSON (see [`DocEncoding`]): a summary trace's
//! ~7 KB of JSON is ~1.6 KB compressed, so the writer moves a quarter of the bytes through
//! SQLite, its write-ahead log and the checkpoint. Reads take either form, so a file written
//! with plain JSON docs (older builds, or [`DocEncoding::Json`]) stays readable. To read a doc
//! by hand, ask the trace API (`GET /v1/traces/{request_id}`) rather than the `sqlite3` shell.
//!
//! Retention is by age and, with [`EmbeddedStore::with_max_bytes`], by size: a store on a
//! pod's volume or a laptop's disk must not grow without bound (a summary trace is ~2.5 KB with
//! its index keys; at 300 requests a second that is ~0.7 GB an hour). Beyond the cap the
//! oldest traces go.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use crate::Trace;
use crate::query::{self, AggregateQuery, Aggregates, Page, SearchQuery, TraceSummary};
use crate::store::{PutOutcome, StoreError, TraceStore};

/// The layout this build writes, in `PRAGMA user_version`. Version 1 (user_version 0, the
/// first layout) kept channel and stage rows in tables of their own and two B-trees of served
/// items keyed by request id; version 2 keyed the item index `(item, trace)`, without the
/// epoch. [`migrate_v1`] and [`migrate_v2`] convert such files when they are opened.
const SCHEMA_VERSION: i64 = 3;

/// A trace's epoch in the item and user indexes is its row id shifted right by this: 1,024
/// traces an epoch. The newest epoch's keys (~25,000 item keys for summary traces, ~150 pages)
/// are what a batch writes into; an item or user search makes one index seek per epoch
/// (~1,000 for a million traces). Part of the layout: a file's keys were written with it.
const EPOCH_SHIFT: u32 = 10;

/// The tables and indexes. The user index, like the item index, leads with the epoch: a batch's
/// keys go to the newest epoch's pages, not to one page per user all over the index.
static SCHEMA: LazyLock<String> = LazyLock::new(|| {
    format!(
        "
CREATE TABLE IF NOT EXISTS traces (
    id            INTEGER PRIMARY KEY,
    request_id    TEXT NOT NULL UNIQUE,
    ts            INTEGER NOT NULL,
    user_id       TEXT NOT NULL,
    level         TEXT NOT NULL,
    model_version TEXT,
    bucket        INTEGER NOT NULL,
    summary       TEXT NOT NULL,
    items         TEXT NOT NULL,
    channels      TEXT NOT NULL,
    stages        TEXT NOT NULL,
    doc           BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS traces_time ON traces (ts, request_id);
CREATE INDEX IF NOT EXISTS traces_user ON traces (id >> {EPOCH_SHIFT}, user_id, ts, request_id);
CREATE TABLE IF NOT EXISTS served (
    epoch   INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    trace   INTEGER NOT NULL,
    PRIMARY KEY (epoch, item_id, trace)
) WITHOUT ROWID;
"
    )
});

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

/// Creates the tables of a new file, converts a file of an older layout, and refuses one
/// written by a newer build (its layout is unknown here).
fn prepare_schema(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(unavailable)?;
    if version > SCHEMA_VERSION {
        return Err(unavailable(format!(
            "the trace store's layout is version {version}, newer than this build's ({SCHEMA_VERSION})"
        )));
    }
    // An older layout to convert, not a new file.
    let converting = version < SCHEMA_VERSION && has_table(conn, "traces")?;
    if converting {
        // A large store's conversion takes seconds to minutes as the service starts: say so,
        // and that it is moving.
        let mut progress = Progress::new(std::time::Instant::now());
        conn.progress_handler(
            100_000,
            Some(move || {
                if let Some(elapsed) = progress.due(std::time::Instant::now()) {
                    tracing::info!(
                        seconds = elapsed.as_secs(),
                        "trace store: converting to layout {SCHEMA_VERSION}, still going"
                    );
                }
                false
            }),
        )
        .map_err(unavailable)?;
    }
    let tx = conn.transaction().map_err(unavailable)?;
    if version < SCHEMA_VERSION {
        if has_table(&tx, "channel_hits")? {
            migrate_v1(&tx)?;
        } else if version == 2 {
            migrate_v2(&tx)?;
        } else {
            tx.execute_batch(&SCHEMA).map_err(unavailable)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(unavailable)?;
    }
    tx.commit().map_err(unavailable)?;
    if converting {
        conn.progress_handler(0, None::<fn() -> bool>).map_err(unavailable)?;
        tracing::info!("trace store: converted to layout {SCHEMA_VERSION}");
    }
    Ok(())
}

/// Whether the file has a table of this name.
fn has_table(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [name],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
    .map_err(unavailable)
}

/// When a long conversion's next "still going" line is due: every [`Progress::EVERY`].
struct Progress {
    started: std::time::Instant,
    next: std::time::Duration,
}

impl Progress {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);

    fn new(started: std::time::Instant) -> Self {
        Self {
            started,
            next: Self::EVERY,
        }
    }

    /// The time since the start, when a line is due at `now`.
    fn due(&mut self, now: std::time::Instant) -> Option<std::time::Duration> {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed < self.next {
            return None;
        }
        self.next = elapsed + Self::EVERY;
        Some(elapsed)
    }
}

/// Converts the first layout (user_version 0) in place, in the caller's transaction: each
/// trace's child rows become its JSON columns, the served rows its item-index keys. Reads
/// nothing but SQL; the docs are copied as they are.
fn migrate_v1(tx: &rusqlite::Transaction) -> Result<(), StoreError> {
    tracing::info!("trace store: converting the first table layout to version {SCHEMA_VERSION}");
    // The old indexes move with a renamed table under their names; drop them first so the new
    // schema can take the names.
    tx.execute_batch(
        "DROP INDEX IF EXISTS traces_time; DROP INDEX IF EXISTS traces_user; DROP INDEX IF EXISTS served_item;
         ALTER TABLE traces RENAME TO traces_v1;
         ALTER TABLE served RENAME TO served_v1;",
    )
    .map_err(unavailable)?;
    tx.execute_batch(&SCHEMA).map_err(unavailable)?;
    tx.execute_batch(&format!(
        "INSERT INTO traces (request_id, ts, user_id, level, model_version, bucket, summary, items, channels, stages, doc)
         SELECT t.request_id, t.ts, t.user_id, t.level, t.model_version, t.bucket, t.summary,
             (SELECT json_group_array(item_id) FROM
                 (SELECT item_id FROM served_v1 s WHERE s.request_id = t.request_id ORDER BY position)),
             (SELECT json_group_object(channel, items) FROM channel_hits c WHERE c.request_id = t.request_id),
             (SELECT json_group_object(name, latency_us) FROM stage_latency s WHERE s.request_id = t.request_id),
             t.doc
         FROM traces_v1 t ORDER BY t.ts, t.request_id;
         INSERT OR IGNORE INTO served (epoch, item_id, trace)
             SELECT t.id >> {EPOCH_SHIFT}, s.item_id, t.id FROM served_v1 s JOIN traces t ON t.request_id = s.request_id;
         DROP TABLE traces_v1; DROP TABLE served_v1; DROP TABLE channel_hits; DROP TABLE stage_latency;"
    ))
    .map_err(unavailable)
}

/// Converts layout 2 in place, in the caller's transaction: its item index, keyed
/// `(item, trace)`, is rebuilt with each key's epoch in front, and so is the user index. The
/// traces table is unchanged.
fn migrate_v2(tx: &rusqlite::Transaction) -> Result<(), StoreError> {
    tracing::info!("trace store: rebuilding the item and user indexes of layout 2 for version {SCHEMA_VERSION}");
    tx.execute_batch("DROP INDEX traces_user; ALTER TABLE served RENAME TO served_v2;")
        .map_err(unavailable)?;
    tx.execute_batch(&SCHEMA).map_err(unavailable)?;
    tx.execute_batch(&format!(
        "INSERT INTO served (epoch, item_id, trace)
             SELECT trace >> {EPOCH_SHIFT}, item_id, trace FROM served_v2 ORDER BY trace >> {EPOCH_SHIFT}, item_id, trace;
         DROP TABLE served_v2;"
    ))
    .map_err(unavailable)
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store file at `path`; its directory is created too.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| unavailable(format!("{}: {e}", dir.display())))?;
        }
        let mut writer = open(&path)?;
        prepare_schema(&mut writer).map_err(|e| match e {
            StoreError::Unavailable(m) => unavailable(format!("{}: {m}", path.display())),
            e => e,
        })?;
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

/// A trace's JSON columns: its served item ids in order, items served per channel, and the
/// latency of each stage in µs (a stage named twice: the last).
fn index_columns(t: &Trace) -> Result<[String; 3], serde_json::Error> {
    use std::collections::BTreeMap;
    let items: Vec<&str> = t.items.iter().map(|i| i.item_id.as_str()).collect();
    let mut channels: BTreeMap<&str, u32> = BTreeMap::new();
    for item in &t.items {
        for ch in query::item_channels(item) {
            *channels.entry(ch).or_default() += 1;
        }
    }
    let stages: BTreeMap<&str, i64> = t
        .stages
        .iter()
        .map(|s| (s.name.as_str(), s.latency_us.min(i64::MAX as u64) as i64))
        .collect();
    Ok([
        serde_json::to_string(&items)?,
        serde_json::to_string(&channels)?,
        serde_json::to_string(&stages)?,
    ])
}

/// Deletes one trace's row and its item-index keys (`items`: its `items` column).
fn remove_trace(tx: &rusqlite::Transaction, id: i64, items: &str) -> Result<(), StoreError> {
    let items: Vec<String> = serde_json::from_str(items).map_err(|e| StoreError::Corrupt {
        request_id: format!("row {id}"),
        message: format!("items: {e}"),
    })?;
    let mut unserve = tx
        .prepare_cached("DELETE FROM served WHERE epoch = ?1 AND item_id = ?2 AND trace = ?3")
        .map_err(unavailable)?;
    for item in &items {
        unserve
            .execute(params![id >> EPOCH_SHIFT, item, id])
            .map_err(unavailable)?;
    }
    tx.prepare_cached("DELETE FROM traces WHERE id = ?1")
        .and_then(|mut s| s.execute([id]))
        .map_err(unavailable)?;
    Ok(())
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
        // batch) replaces the first: its row and keys go, and it is inserted as new.
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO traces (request_id, ts, user_id, level, model_version, bucket, summary, items, channels,
                                     stages, doc)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (request_id) DO NOTHING RETURNING id",
            )
            .map_err(unavailable)?;
        let mut existing = tx
            .prepare_cached("SELECT id, items FROM traces WHERE request_id = ?1")
            .map_err(unavailable)?;
        let mut serve = tx
            .prepare_cached("INSERT OR IGNORE INTO served (epoch, item_id, trace) VALUES (?1, ?2, ?3)")
            .map_err(unavailable)?;
        for t in traces {
            if let Err(e) = t.check() {
                outcome.rejected.push((t.request_id.clone(), e.to_string()));
                continue;
            }
            let refused = |e: serde_json::Error| StoreError::Refused(e.to_string());
            let mut doc = serde_json::to_vec(t).map_err(refused)?;
            if let Some(z) = &mut zstd {
                doc = z.compress(&doc).map_err(unavailable)?;
            }
            let summary = serde_json::to_string(&TraceSummary::from(t)).map_err(refused)?;
            let [items, channels, stages] = index_columns(t).map_err(refused)?;
            let row = params![
                t.request_id,
                t.timestamp_ms,
                t.user_id,
                t.level,
                t.model_version,
                t.bucket,
                summary,
                items,
                channels,
                stages,
                doc
            ];
            let inserted = |s: &mut rusqlite::CachedStatement| {
                s.query_row(row, |r| r.get::<_, i64>(0)).optional().map_err(unavailable)
            };
            let id = match inserted(&mut insert)? {
                Some(id) => id,
                None => {
                    let (old, old_items): (i64, String) = existing
                        .query_row([&t.request_id], |r| Ok((r.get(0)?, r.get(1)?)))
                        .map_err(unavailable)?;
                    remove_trace(&tx, old, &old_items)?;
                    inserted(&mut insert)?.ok_or_else(|| unavailable("a replaced trace was not inserted"))?
                }
            };
            for item in &t.items {
                serve
                    .execute(params![id >> EPOCH_SHIFT, item.item_id, id])
                    .map_err(unavailable)?;
            }
            outcome.written += 1;
        }
    }
    tx.commit().map_err(unavailable)?;
    Ok(outcome)
}

/// The epochs from the oldest stored trace's to the newest's, as a subquery.
fn epochs() -> String {
    format!(
        "WITH RECURSIVE epochs(n) AS (
             SELECT (SELECT min(id) FROM traces) >> {EPOCH_SHIFT}
             UNION ALL SELECT n + 1 FROM epochs WHERE n < (SELECT max(id) FROM traces) >> {EPOCH_SHIFT})
         SELECT n FROM epochs"
    )
}

/// A search's item filter: the item's keys in each epoch, one index seek an epoch.
static SERVED_ITEM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "id IN (SELECT trace FROM served WHERE item_id = ? AND epoch IN ({}))",
        epochs()
    )
});

/// A search's user filter: the user's traces in each epoch, one seek of the user index an
/// epoch (the expression is the index's, so that SQLite uses it).
static USER: LazyLock<String> = LazyLock::new(|| format!("id >> {EPOCH_SHIFT} IN ({}) AND user_id = ?", epochs()));

/// The WHERE clause and parameters of a search (cursor included when `with_cursor`).
fn search_filter(q: &SearchQuery, with_cursor: bool) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let mut clauses: Vec<&str> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    if let Some(u) = &q.user {
        clauses.push(USER.as_str());
        values.push(Value::Text(u.clone()));
    }
    if let Some(i) = &q.item {
        clauses.push(SERVED_ITEM.as_str());
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
    // The page's row ids first, then their summaries: the inner query sorts only what the user
    // index holds (a user's time and request ids), not every matching trace's summary.
    let sql = format!(
        "SELECT request_id, summary FROM traces WHERE id IN
             (SELECT id FROM traces {filter} ORDER BY ts DESC, request_id DESC LIMIT ?)
         ORDER BY ts DESC, request_id DESC"
    );
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
                "SELECT c.key, SUM(c.value) FROM traces t, json_each(t.channels) c
                 WHERE t.ts >= ?1 AND t.ts < ?2 GROUP BY c.key",
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
            .prepare_cached("SELECT s.key, s.value FROM traces t, json_each(t.stages) s WHERE t.ts >= ?1 AND t.ts < ?2")
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

/// Traces [`retain`] deletes per transaction.
const DELETE_CHUNK: u64 = 5_000;

/// Which traces [`delete_traces`] deletes.
#[derive(Clone, Copy)]
enum Doomed {
    /// Those older than this timestamp (ms).
    OlderThan(i64),
    /// The oldest this many.
    Oldest(u64),
}

/// Deletes traces and their item-index keys, oldest first, one transaction per chunk (which
/// bounds a transaction's memory and write-ahead log when a whole hour expires at once; each
/// chunk is whole traces). Returns how many traces went.
fn delete_traces(conn: &mut Connection, doomed: Doomed, chunk: u64) -> Result<u64, StoreError> {
    let mut removed = 0;
    loop {
        let chunk = match doomed {
            Doomed::OlderThan(_) => chunk,
            Doomed::Oldest(n) => chunk.min(n - removed),
        } as i64;
        let tx = conn.transaction().map_err(unavailable)?;
        let rows = |s: &mut rusqlite::CachedStatement, p: &[&dyn rusqlite::ToSql]| {
            s.query_map(p, |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
                .collect::<Result<Vec<_>, _>>()
        };
        let traces = match doomed {
            Doomed::OlderThan(cutoff) => tx
                .prepare_cached("SELECT id, items FROM traces WHERE ts < ?1 ORDER BY ts, request_id LIMIT ?2")
                .and_then(|mut s| rows(&mut s, params![cutoff, chunk])),
            Doomed::Oldest(_) => tx
                .prepare_cached("SELECT id, items FROM traces ORDER BY ts, request_id LIMIT ?1")
                .and_then(|mut s| rows(&mut s, params![chunk])),
        }
        .map_err(unavailable)?;
        for (id, items) in &traces {
            remove_trace(&tx, *id, items)?;
        }
        tx.commit().map_err(unavailable)?;
        removed += traces.len() as u64;
        let done = matches!(doomed, Doomed::Oldest(n) if removed >= n);
        if done || (traces.len() as i64) < chunk {
            return Ok(removed);
        }
    }
}

fn retain(conn: &mut Connection, cutoff_ms: i64, max_bytes: Option<u64>) -> Result<u64, StoreError> {
    let mut removed = delete_traces(conn, Doomed::OlderThan(cutoff_ms), DELETE_CHUNK)?;
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
            removed += delete_traces(conn, Doomed::Oldest(n as u64), DELETE_CHUNK)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn store_of(n: u64) -> (Connection, Vec<Trace>) {
        let mut conn = Connection::open_in_memory().unwrap();
        prepare_schema(&mut conn).unwrap();
        let traces: Vec<Trace> = (0..n)
            .map(|i| crate::sample::summary_trace(i, 1_000 + i as i64))
            .collect();
        assert_eq!(
            put_batch(&mut conn, &traces, DocEncoding::Zstd).unwrap().written,
            n as usize
        );
        (conn, traces)
    }

    fn count(conn: &Connection, table: &str) -> i64 {
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// Deleting in chunks takes exactly the traces asked for, oldest first, with their keys,
    /// whether the chunk divides the count or not.
    #[test]
    fn deletes_run_in_chunks_and_take_exactly_the_doomed() {
        for chunk in [1, 3, 4, 100] {
            let (mut conn, traces) = store_of(12);
            assert_eq!(delete_traces(&mut conn, Doomed::OlderThan(1_008), chunk).unwrap(), 8);
            assert_eq!(delete_traces(&mut conn, Doomed::Oldest(3), chunk).unwrap(), 3);
            assert_eq!(delete_traces(&mut conn, Doomed::Oldest(0), chunk).unwrap(), 0);
            let left: Vec<String> = conn
                .prepare("SELECT request_id FROM traces")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(left, [traces[11].request_id.clone()], "chunk {chunk}");
            assert_eq!(count(&conn, "served") as usize, traces[11].items.len(), "chunk {chunk}");
        }
    }

    #[test]
    fn conversion_progress_is_due_every_five_seconds_from_the_start() {
        let start = std::time::Instant::now();
        let at = |s: u64| start + std::time::Duration::from_secs(s);
        let mut p = Progress::new(start);
        let due: Vec<u64> = [0, 1, 4, 5, 6, 9, 10, 17, 21, 22, 23]
            .into_iter()
            .filter_map(|s| p.due(at(s)).map(|d| d.as_secs()))
            .collect();
        // Due at 5 and 10; none came at 15, so at 17, and the next five seconds after that
        // line, at 22 (not 20).
        assert_eq!(due, [5, 10, 17, 22]);
    }

    /// Item and user search find the traces in every epoch, oldest and newest included, with
    /// one index seek an epoch (not a scan of the index), and after the oldest epochs are gone.
    #[test]
    fn item_and_user_search_reach_every_epoch_by_seeks() {
        let n = 3 * (1 << EPOCH_SHIFT) + 17;
        let (mut conn, traces) = store_of(n);
        let epochs: i64 = conn
            .query_row("SELECT COUNT(DISTINCT epoch) FROM served", [], |r| r.get(0))
            .unwrap();
        assert_eq!(epochs, 4);
        let queries = |traces: &[Trace]| {
            let (first, last) = (&traces[0], &traces[traces.len() - 1]);
            let item = |id: &str| SearchQuery {
                item: Some(id.to_string()),
                size: 10_000,
                ..SearchQuery::new()
            };
            let user = |id: &str| SearchQuery {
                user: Some(id.to_string()),
                size: 10_000,
                ..SearchQuery::new()
            };
            [
                item(&first.items[0].item_id),
                item(&last.items[2].item_id),
                user(&first.user_id),
                user(&last.user_id),
            ]
        };
        let check = |conn: &Connection, traces: &[Trace]| {
            for q in queries(traces) {
                let page = search(conn, &q).unwrap();
                let mut want: Vec<&Trace> = traces.iter().filter(|t| query::matches(t, &q)).collect();
                want.sort_by(|a, b| (b.timestamp_ms, &b.request_id).cmp(&(a.timestamp_ms, &a.request_id)));
                let got: Vec<&str> = page.hits.iter().map(|h| h.request_id.as_str()).collect();
                let want: Vec<&str> = want.iter().map(|t| t.request_id.as_str()).collect();
                assert!(want.len() > 1, "{q:?}");
                assert_eq!(got, want, "{q:?}");
                assert_eq!(page.total, want.len() as u64);
            }
        };
        check(&conn, &traces);
        let gone = 2 * (1 << EPOCH_SHIFT) as usize + 5;
        assert_eq!(
            delete_traces(&mut conn, Doomed::Oldest(gone as u64), 1_000).unwrap(),
            gone as u64
        );
        check(&conn, &traces[gone..]);

        let item_seek = "SEARCH served USING PRIMARY KEY (epoch=? AND item_id=?)";
        let user_seek = "COVERING INDEX traces_user (<expr>=? AND user_id=?)";
        let queries = queries(&traces);
        assert_eq!(queries.len(), 4);
        for (q, seek) in queries.iter().zip([item_seek, item_seek, user_seek, user_seek]) {
            // The page's ids and the total.
            let (filter, values) = search_filter(q, false);
            for sql in [
                format!("SELECT id FROM traces {filter} ORDER BY ts DESC, request_id DESC LIMIT 20"),
                format!("SELECT COUNT(*) FROM traces {filter}"),
            ] {
                let plan: Vec<String> = conn
                    .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                    .unwrap()
                    .query_map(params_from_iter(&values), |r| r.get(3))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                let plan = plan.join("\n");
                assert!(plan.contains(seek), "{q:?}: {plan}");
            }
        }
    }

    #[test]
    fn index_columns_count_channels_once_per_item_and_keep_the_last_stage() {
        let mut t = crate::sample::summary_trace(7, 1_000);
        let first = t.stages[0].clone();
        t.stages.push(crate::StageRecord {
            latency_us: first.latency_us + 5,
            ..first.clone()
        });
        let [items, channels, stages] = index_columns(&t).unwrap();
        let items: Vec<String> = serde_json::from_str(&items).unwrap();
        assert_eq!(items, t.items.iter().map(|i| i.item_id.clone()).collect::<Vec<_>>());
        let channels: std::collections::BTreeMap<String, u64> = serde_json::from_str(&channels).unwrap();
        let want = query::aggregate(
            std::slice::from_ref(&t),
            &AggregateQuery::new(0, 10_000, 1_000).unwrap(),
        );
        assert_eq!(channels, want.channels);
        let stages: std::collections::BTreeMap<String, u64> = serde_json::from_str(&stages).unwrap();
        assert_eq!(stages[&first.name], first.latency_us + 5);
    }
}
