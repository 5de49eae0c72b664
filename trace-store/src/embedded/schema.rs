//! The layout: its version, the tables and indexes, and the conversions of older files.

use super::*;

/// The layout this build writes, in `PRAGMA user_version`. Version 1 (user_version 0, the
/// first layout) kept channel and stage rows in tables of their own and two B-trees of served
/// items keyed by request id; version 2 keyed the item index `(item, trace)`, without the
/// epoch; version 3 kept one `(epoch, item, trace)` key per served item, where version 4 keeps
/// a list per item and batch. [`migrate_v1`], [`migrate_v2`] and [`migrate_v3`] convert such
/// files when they are opened.
pub(super) const SCHEMA_VERSION: i64 = 4;

/// A trace's epoch in the item and user indexes is its row id shifted right by this: 1,024
/// traces an epoch. The newest epoch's keys (~25,000 item keys for summary traces, ~150 pages)
/// are what a batch writes into; an item or user search makes one index seek per epoch
/// (~1,000 for a million traces). Part of the layout: a file's keys were written with it.
pub(super) const EPOCH_SHIFT: u32 = 10;

/// The tables and indexes. The user index, like the item index, leads with the epoch: a batch's
/// keys go to the newest epoch's pages, not to one page per user all over the index.
///
/// `served_lists` is the item index: for each item a batch served, in each epoch the batch
/// wrote into, one row listing the row ids of the traces that served it (a JSON array,
/// ascending; `first` and `last` are its ends): ~2 rows per summary trace where layout 3 wrote
/// 20 keys, as served lists repeat popular items. A list may still name traces that were
/// deleted or written again (a search joins its ids to `traces`, so they match nothing).
/// `row_ids` holds the id the next trace gets ([`next_row_id`]): ids are never given twice, so
/// an id a list still names for a deleted trace matches no other. A list's ids are all in its
/// epoch, so the lists of epochs older than the oldest trace's hold no live id and retention
/// drops them ([`drop_dead`]).
///
/// `doc_chunks` holds small docs a batch's chunk at a time ([`DocEncoding::BySize`]): an LZ4
/// frame of several traces' MessagePack, keyed by its first trace's row id; such a trace's
/// `doc` is a reference into it. Chunks follow row ids, so those before the chunk that holds
/// the oldest stored trace hold no stored trace, and retention drops them too.
pub(super) static SCHEMA: LazyLock<String> = LazyLock::new(|| {
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
CREATE TABLE IF NOT EXISTS served_lists (
    epoch   INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    first   INTEGER NOT NULL,
    last    INTEGER NOT NULL,
    traces  TEXT NOT NULL,
    PRIMARY KEY (epoch, item_id, first)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS row_ids (next INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS doc_chunks (
    first INTEGER PRIMARY KEY,
    frame BLOB NOT NULL
);
"
    )
});

/// Creates the tables of a new file, converts a file of an older layout, and refuses one
/// written by a newer build (its layout is unknown here).
pub(super) fn prepare_schema(conn: &mut Connection) -> Result<(), StoreError> {
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
        } else if version == 3 {
            migrate_v3(&tx)?;
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
pub(super) fn has_table(conn: &Connection, name: &str) -> Result<bool, StoreError> {
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
pub(super) struct Progress {
    started: std::time::Instant,
    next: std::time::Duration,
}

impl Progress {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);

    pub(super) fn new(started: std::time::Instant) -> Self {
        Self {
            started,
            next: Self::EVERY,
        }
    }

    /// The time since the start, when a line is due at `now`.
    pub(super) fn due(&mut self, now: std::time::Instant) -> Option<std::time::Duration> {
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
pub(super) fn migrate_v1(tx: &rusqlite::Transaction) -> Result<(), StoreError> {
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
    tx.execute_batch(
        "INSERT INTO traces (request_id, ts, user_id, level, model_version, bucket, summary, items, channels, stages, doc)
         SELECT t.request_id, t.ts, t.user_id, t.level, t.model_version, t.bucket, t.summary,
             (SELECT json_group_array(item_id) FROM
                 (SELECT item_id FROM served_v1 s WHERE s.request_id = t.request_id ORDER BY position)),
             (SELECT json_group_object(channel, items) FROM channel_hits c WHERE c.request_id = t.request_id),
             (SELECT json_group_object(name, latency_us) FROM stage_latency s WHERE s.request_id = t.request_id),
             t.doc
         FROM traces_v1 t ORDER BY t.ts, t.request_id;"
    )
    .map_err(unavailable)?;
    lists_from_keys(
        tx,
        "SELECT DISTINCT t.id AS trace, s.item_id FROM served_v1 s JOIN traces t ON t.request_id = s.request_id",
    )?;
    tx.execute_batch("DROP TABLE traces_v1; DROP TABLE served_v1; DROP TABLE channel_hits; DROP TABLE stage_latency;")
        .map_err(unavailable)
}

/// Converts layout 2 in place, in the caller's transaction: its item index, keyed
/// `(item, trace)`, becomes lists per epoch, and the user index is rebuilt with the epoch in
/// front. The traces table is unchanged.
pub(super) fn migrate_v2(tx: &rusqlite::Transaction) -> Result<(), StoreError> {
    tracing::info!("trace store: rebuilding the item and user indexes of layout 2 for version {SCHEMA_VERSION}");
    tx.execute_batch("DROP INDEX traces_user; ALTER TABLE served RENAME TO served_v2;")
        .map_err(unavailable)?;
    tx.execute_batch(&SCHEMA).map_err(unavailable)?;
    lists_from_keys(tx, "SELECT trace, item_id FROM served_v2")?;
    tx.execute_batch("DROP TABLE served_v2;").map_err(unavailable)
}

/// Converts layout 3 in place, in the caller's transaction: its item index, a key per served
/// item, becomes a list per item and epoch. The traces table and its indexes are unchanged.
pub(super) fn migrate_v3(tx: &rusqlite::Transaction) -> Result<(), StoreError> {
    tracing::info!("trace store: rebuilding the item index of layout 3 as lists for version {SCHEMA_VERSION}");
    tx.execute_batch("ALTER TABLE served RENAME TO served_v3;")
        .map_err(unavailable)?;
    tx.execute_batch(&SCHEMA).map_err(unavailable)?;
    lists_from_keys(tx, "SELECT trace, item_id FROM served_v3")?;
    tx.execute_batch("DROP TABLE served_v3;").map_err(unavailable)
}

/// Fills `served_lists` from an older layout's item keys, `keys` a query of distinct
/// `(trace, item_id)` rows: one list per item and epoch, its ids ascending.
fn lists_from_keys(tx: &rusqlite::Transaction, keys: &str) -> Result<(), StoreError> {
    tx.execute_batch(&format!(
        "INSERT INTO served_lists (epoch, item_id, first, last, traces)
             SELECT trace >> {EPOCH_SHIFT}, item_id, min(trace), max(trace), json_group_array(trace ORDER BY trace)
             FROM ({keys}) GROUP BY trace >> {EPOCH_SHIFT}, item_id ORDER BY 1, 2;"
    ))
    .map_err(unavailable)
}
