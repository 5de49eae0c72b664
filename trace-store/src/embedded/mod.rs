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
//! a query), and the whole trace, compressed. `served_lists` is the item index: for each item
//! a batch served, one row per epoch listing the row ids of the traces that served it, the
//! epoch being the row id's high bits ([`EPOCH_SHIFT`]). Served lists repeat popular items, so
//! a batch of 500 summary traces writes ~1,500 lists instead of 10,000 keys, all in the newest
//! epoch's pages: row ids grow with each write, and a store holding millions of traces writes
//! as few index pages per batch as a new one. (Keyed `(item, trace)` alone, layout 2, each key
//! went to a page of its own all over the index: 18× the bytes written per trace once the
//! store held 200,000 traces.) A list may keep the ids of traces deleted or written again
//! since; a search joins ids to `traces`, so they match nothing, and ids are never given out
//! twice (`row_ids` holds the next). Retention drops an epoch's lists once its traces are gone.
//! The user index leads with the epoch too, `(id >> EPOCH_SHIFT, user_id, ts, request_id)`
//! (a user's page is sorted from the index alone, its summaries read after); the request-id
//! and time indexes take keys in write order already (the gateway's request ids start with
//! the time). An item or user search seeks once in each epoch. A summary trace is so ~7 B-tree
//! inserts (its row, three indexes, its share of the batch's lists), nearly all in the newest
//! pages of each. A batch is one transaction. A trace written twice (a retried batch) replaces
//! the first, as in Elasticsearch.
//!
//! The whole trace is MessagePack (see [`DocEncoding`]): a summary trace's doc goes into its
//! batch's current chunk of docs, up to 64 KiB compressed together as one LZ4 frame in
//! `doc_chunks`, and its row's `doc` is a reference into it; a full trace's doc is a zstd frame
//! in its row. Encoding the doc is most of the writer's CPU, which is what summary tracing
//! costs a request (BENCHMARKS.md): MessagePack takes ~0.6× serde_json's time, and a chunk of
//! alike traces compresses to ~0.6× the bytes of each trace alone. Reads take every form, so a
//! file written with LZ4 or zstd frames or plain JSON docs (older builds, or the other
//! [`DocEncoding`]s) stays readable. To read a doc by hand, ask the trace API
//! (`GET /v1/traces/{request_id}`).
//!
//! Retention is by age and, with [`EmbeddedStore::with_max_bytes`], by size: a store on a
//! pod's volume or a laptop's disk must not grow without bound (a summary trace is ~2.0–2.4 KB
//! with its index rows; at 300 requests a second that is ~2.6 GB an hour). Beyond the cap the
//! oldest traces go.

mod doc;
mod queries;
mod retention;
mod schema;
mod writer;
mod writes;

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use crate::Trace;
use crate::query::{self, AggregateQuery, Aggregates, Page, SearchQuery, TraceSummary};
use crate::store::{PutOutcome, StoreError, TraceStore};

use doc::*;
use queries::*;
use retention::*;
use schema::*;
use writer::*;
use writes::*;

pub use doc::{DocEncoding, LARGE_DOC};
pub use writer::WRITER_THREAD;

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

pub(super) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub(super) fn open(path: &Path) -> Result<Connection, StoreError> {
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
                read_doc(c, &d).map_err(|message| StoreError::Corrupt {
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

    fn write_cpu(&self) -> Option<std::time::Duration> {
        self.writer.cpu()
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
            put_batch(&mut conn, &traces, DocEncoding::default()).unwrap().written,
            n as usize
        );
        (conn, traces)
    }

    /// The item index's `(item, request id)` pairs whose trace is stored.
    fn live_keys(conn: &Connection) -> std::collections::BTreeSet<(String, String)> {
        conn.prepare(
            "SELECT s.item_id, t.request_id FROM served_lists s, json_each(s.traces) j JOIN traces t ON t.id = j.value",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// What [`live_keys`] should be for these traces.
    fn keys_of(traces: &[Trace]) -> std::collections::BTreeSet<(String, String)> {
        traces
            .iter()
            .flat_map(|t| t.items.iter().map(|i| (i.item_id.clone(), t.request_id.clone())))
            .collect()
    }

    /// The stored traces' docs read back as the traces (the oldest, the newest and every 37th
    /// row; reading one decompresses its chunk, slow in a debug build), and the first doc chunk
    /// holds the oldest stored trace's doc or a later one's (none holds only deleted traces).
    fn assert_docs_read_back(conn: &Connection, traces: &[Trace]) {
        let docs: Vec<(String, Vec<u8>)> = conn
            .prepare(
                "SELECT request_id, doc FROM traces WHERE id % 37 = 0 OR id = (SELECT min(id) FROM traces)
                     OR id = (SELECT max(id) FROM traces)",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let by_id: std::collections::HashMap<&str, &Trace> =
            traces.iter().map(|t| (t.request_id.as_str(), t)).collect();
        for (request_id, doc) in &docs {
            assert_eq!(
                &&read_doc(conn, doc).unwrap(),
                &by_id[request_id.as_str()],
                "{request_id}"
            );
        }
        let oldest: Option<i64> = conn.query_row("SELECT min(id) FROM traces", [], |r| r.get(0)).unwrap();
        let first_chunk: Option<i64> = conn
            .query_row("SELECT min(first) FROM doc_chunks", [], |r| r.get(0))
            .unwrap();
        match (oldest, first_chunk) {
            (None, chunk) => assert_eq!(chunk, None, "chunks left with no trace"),
            (Some(_), None) => assert!(docs.iter().all(|(_, d)| DocRef::parse(d).is_none())),
            (Some(oldest), Some(chunk)) => {
                let holding: i64 = conn
                    .query_row(
                        "SELECT coalesce(max(first), ?1) FROM doc_chunks WHERE first <= ?1",
                        [oldest],
                        |r| r.get(0),
                    )
                    .unwrap();
                assert_eq!(chunk, holding, "a chunk before the one holding row {oldest}");
            }
        }
    }

    /// Every list's ids: ascending, each once, between its `first` and `last`, all in its
    /// epoch, none at or past the next row id, and the list not older than the oldest trace's
    /// epoch.
    fn assert_lists_well_formed(conn: &Connection) {
        let next: i64 = conn.query_row("SELECT next FROM row_ids", [], |r| r.get(0)).unwrap();
        let oldest: Option<i64> = conn.query_row("SELECT min(id) FROM traces", [], |r| r.get(0)).unwrap();
        let lists: Vec<(i64, String, i64, i64, String)> = conn
            .prepare("SELECT epoch, item_id, first, last, traces FROM served_lists")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (epoch, item, first, last, ids) in lists {
            let ids: Vec<i64> = serde_json::from_str(&ids).unwrap();
            assert!(!ids.is_empty(), "{item}");
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "{item}: {ids:?}");
            assert_eq!((ids[0], ids[ids.len() - 1]), (first, last), "{item}");
            assert!(ids.iter().all(|id| id >> EPOCH_SHIFT == epoch), "{item}: {ids:?}");
            assert!(last < next, "{item}: {last} past the next id {next}");
            let oldest = oldest.expect("no list is left once no trace is");
            assert!(epoch >= oldest >> EPOCH_SHIFT, "{item}: a dead epoch's list");
        }
    }

    /// Row ids are never given twice: after the newest trace is written again, and after every
    /// trace is deleted, new traces get ids past all earlier ones, so the lists' ids for the
    /// gone traces match nothing, and search finds each item's traces exactly.
    #[test]
    fn row_ids_are_not_reused_so_old_list_ids_match_nothing() {
        let (mut conn, traces) = store_of(10);
        let ids = |conn: &Connection| -> Vec<i64> {
            conn.prepare("SELECT id FROM traces ORDER BY id")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(ids(&conn), (1..=10).collect::<Vec<_>>());
        // The newest trace again, serving other items: it gets id 11, not its old 10.
        let mut again = traces[9].clone();
        for (k, item) in again.items.iter_mut().enumerate() {
            item.item_id = format!("again-{k}");
        }
        put_batch(&mut conn, std::slice::from_ref(&again), DocEncoding::default()).unwrap();
        assert_eq!(ids(&conn).last(), Some(&11));
        let stored: Vec<Trace> = traces[..9].iter().cloned().chain([again.clone()]).collect();
        assert_eq!(live_keys(&conn), keys_of(&stored));
        assert_lists_well_formed(&conn);
        assert_docs_read_back(&conn, &stored);
        // Every trace deleted: the lists and the doc chunks go too, and the next trace's id
        // is 12.
        assert_eq!(delete_traces(&mut conn, Doomed::Oldest(100), 3).unwrap(), 10);
        assert_eq!(count(&conn, "served_lists"), 0);
        assert_eq!(count(&conn, "doc_chunks"), 0);
        put_batch(&mut conn, &traces[..2], DocEncoding::default()).unwrap();
        assert_eq!(ids(&conn), [12, 13]);
        assert_eq!(live_keys(&conn), keys_of(&traces[..2]));
        assert_docs_read_back(&conn, &traces[..2]);
        for t in &traces {
            let q = SearchQuery {
                item: Some(t.items[0].item_id.clone()),
                size: 100,
                ..SearchQuery::new()
            };
            let got: Vec<String> = search(&conn, &q)
                .unwrap()
                .hits
                .into_iter()
                .map(|h| h.request_id)
                .collect();
            let mut want: Vec<&Trace> = traces[..2].iter().filter(|t| query::matches(t, &q)).collect();
            want.sort_by(|a, b| (b.timestamp_ms, &b.request_id).cmp(&(a.timestamp_ms, &a.request_id)));
            let want: Vec<String> = want.iter().map(|t| t.request_id.clone()).collect();
            assert_eq!(got, want, "{}", t.items[0].item_id);
        }
    }

    /// A batch's lists: a row per item and epoch, a trace that names an item twice listed
    /// once, a batch across an epoch's end split at it.
    #[test]
    fn a_batch_writes_one_list_per_item_and_epoch() {
        let mut lists = PendingLists::default();
        let edge = 1i64 << EPOCH_SHIFT;
        lists.add(edge - 2, ["a", "b", "a"]);
        lists.add(edge - 1, ["b"]);
        lists.add(edge, ["a", "b"]);
        lists.add(edge + 1, ["c"]);
        let mut got: Vec<(i64, &str, Vec<i64>)> = lists.into_lists().collect();
        got.sort();
        assert_eq!(
            got,
            [
                (0, "a", vec![edge - 2]),
                (0, "b", vec![edge - 2, edge - 1]),
                (1, "a", vec![edge]),
                (1, "b", vec![edge]),
                (1, "c", vec![edge + 1]),
            ]
        );
        assert_eq!(ids_json(&[3, 17, 1024]), "[3,17,1024]");
        assert_eq!(ids_json(&[]), "[]");
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
            assert_eq!(live_keys(&conn), keys_of(&traces[11..]), "chunk {chunk}");
            assert_docs_read_back(&conn, &traces);
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
            .query_row("SELECT COUNT(DISTINCT epoch) FROM served_lists", [], |r| r.get(0))
            .unwrap();
        assert_eq!(epochs, 4);
        assert_eq!(live_keys(&conn), keys_of(&traces));
        assert_lists_well_formed(&conn);
        assert_docs_read_back(&conn, &traces);
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
        assert_eq!(live_keys(&conn), keys_of(&traces[gone..]));
        assert_lists_well_formed(&conn);
        assert_docs_read_back(&conn, &traces[gone..]);
        // ~9 summary docs a chunk: the deleted traces' chunks went.
        let (chunks, left) = (count(&conn, "doc_chunks"), (n as usize - gone) as i64);
        assert!(chunks * 4 < left, "{chunks} chunks for {left} traces");
        assert_eq!(
            conn.query_row("SELECT min(epoch) FROM served_lists", [], |r| r.get::<_, i64>(0))
                .unwrap(),
            2,
            "the two emptied epochs' lists are dropped"
        );

        let item_seek = "SEARCH s USING PRIMARY KEY (epoch=? AND item_id=?)";
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
