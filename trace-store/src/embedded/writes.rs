//! Writing a batch of traces: the row, the index columns, the item keys.

use super::*;

/// A trace's JSON columns: its served item ids in order, items served per channel, and the
/// latency of each stage in µs (a stage named twice: the last).
pub(super) fn index_columns(t: &Trace) -> Result<[String; 3], serde_json::Error> {
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

/// A batch's item index as it is written: for each epoch and item, the row ids of the batch's
/// traces that served it (a trace that lists an item twice, once).
#[derive(Default)]
pub(super) struct PendingLists<'a> {
    lists: std::collections::HashMap<(i64, &'a str), Vec<i64>>,
}

impl<'a> PendingLists<'a> {
    /// Trace `id` served `items`.
    pub(super) fn add(&mut self, id: i64, items: impl IntoIterator<Item = &'a str>) {
        for item in items {
            let ids = self.lists.entry((id >> EPOCH_SHIFT, item)).or_default();
            if ids.last() != Some(&id) {
                ids.push(id);
            }
        }
    }

    /// The batch's lists: epoch, item, and the ids ascending, each once.
    pub(super) fn into_lists(self) -> impl Iterator<Item = (i64, &'a str, Vec<i64>)> {
        self.lists.into_iter().map(|((epoch, item), mut ids)| {
            ids.sort_unstable();
            ids.dedup();
            (epoch, item, ids)
        })
    }
}

/// A list of row ids as its `traces` column holds it: a JSON array.
pub(super) fn ids_json(ids: &[i64]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(ids.len() * 8 + 2);
    out.push('[');
    for (k, id) in ids.iter().enumerate() {
        if k > 0 {
            out.push(',');
        }
        let _ = write!(out, "{id}");
    }
    out.push(']');
    out
}

/// The row id the next trace gets: past every row there is and every id a list has named, so
/// an id a list still holds for a deleted trace is never given to another.
pub(super) fn next_row_id(tx: &rusqlite::Transaction) -> Result<i64, StoreError> {
    tx.prepare_cached(
        "SELECT max((SELECT coalesce(max(id), 0) + 1 FROM traces), coalesce((SELECT next FROM row_ids), 1))",
    )
    .and_then(|mut s| s.query_row([], |r| r.get(0)))
    .map_err(unavailable)
}

/// Deletes one trace's row. Its ids in the item lists stay until retention drops their epoch:
/// they match no row, and row ids are not given out twice ([`next_row_id`]).
pub(super) fn remove_trace(tx: &rusqlite::Transaction, id: i64) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM traces WHERE id = ?1")
        .and_then(|mut s| s.execute([id]))
        .map_err(unavailable)?;
    Ok(())
}

/// Drops what holds no stored trace (all of it once no trace is left): the item lists of
/// epochs older than the oldest stored trace's, and the doc chunks before the one that holds
/// it (a chunk holds the docs of the rows from its `first` to the next chunk's).
pub(super) fn drop_dead(tx: &rusqlite::Transaction) -> Result<(), StoreError> {
    tx.prepare_cached(&format!(
        "DELETE FROM served_lists WHERE epoch < coalesce((SELECT min(id) FROM traces) >> {EPOCH_SHIFT}, 1 << 62)"
    ))
    .and_then(|mut s| s.execute([]))
    .map_err(unavailable)?;
    tx.prepare_cached(
        "DELETE FROM doc_chunks WHERE first < coalesce(
             (SELECT max(first) FROM doc_chunks WHERE first <= (SELECT min(id) FROM traces)),
             (SELECT min(id) FROM traces),
             1 << 62)",
    )
    .and_then(|mut s| s.execute([]))
    .map_err(unavailable)?;
    Ok(())
}

/// Writes a closed chunk of docs: its first trace's row id and its LZ4 frame.
fn write_chunk(tx: &rusqlite::Transaction, (first, frame): (i64, Vec<u8>)) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO doc_chunks (first, frame) VALUES (?1, ?2)")
        .and_then(|mut s| s.execute(params![first, frame]))
        .map_err(unavailable)?;
    Ok(())
}

pub(super) fn put_batch(
    conn: &mut Connection,
    traces: &[Trace],
    encoding: DocEncoding,
) -> Result<PutOutcome, StoreError> {
    let mut outcome = PutOutcome::default();
    let mut docs = DocWriter::new(encoding);
    let mut lists = PendingLists::default();
    let tx = conn.transaction().map_err(unavailable)?;
    let mut next_id = next_row_id(&tx)?;
    {
        // A new request id (the usual case) is one insert; a trace written again (a retried
        // batch) replaces the first: its row goes, and it is inserted as new.
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO traces (id, request_id, ts, user_id, level, model_version, bucket, summary, items,
                                     channels, stages, doc)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT (request_id) DO NOTHING",
            )
            .map_err(unavailable)?;
        let mut existing = tx
            .prepare_cached("SELECT id FROM traces WHERE request_id = ?1")
            .map_err(unavailable)?;
        for t in traces {
            if let Err(e) = t.check() {
                outcome.rejected.push((t.request_id.clone(), e.to_string()));
                continue;
            }
            let refused = |e: serde_json::Error| StoreError::Refused(e.to_string());
            let doc = docs.encode(next_id, t)?;
            let summary = serde_json::to_string(&TraceSummary::from(t)).map_err(refused)?;
            let [items, channels, stages] = index_columns(t).map_err(refused)?;
            let id = next_id;
            let row = params![
                id,
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
            if insert.execute(row).map_err(unavailable)? == 0 {
                let old: i64 = existing.query_row([&t.request_id], |r| r.get(0)).map_err(unavailable)?;
                remove_trace(&tx, old)?;
                if insert.execute(row).map_err(unavailable)? == 0 {
                    return Err(unavailable("a replaced trace was not inserted"));
                }
            }
            next_id += 1;
            lists.add(id, t.items.iter().map(|i| i.item_id.as_str()));
            if let Some(chunk) = docs.take_closed() {
                write_chunk(&tx, chunk)?;
            }
            outcome.written += 1;
        }
        if let Some(chunk) = docs.close() {
            write_chunk(&tx, chunk)?;
        }
        // One row per item and epoch. No list can have the same key while row ids are not
        // reused; should one (a file whose `row_ids` was lost), the two are merged, not
        // refused or replaced.
        let mut serve = tx
            .prepare_cached(
                "INSERT INTO served_lists (epoch, item_id, first, last, traces) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (epoch, item_id, first) DO UPDATE SET
                     last = max(last, excluded.last),
                     traces = (SELECT json_group_array(value ORDER BY value) FROM
                         (SELECT value FROM json_each(served_lists.traces)
                          UNION SELECT value FROM json_each(excluded.traces)))",
            )
            .map_err(unavailable)?;
        for (epoch, item, ids) in lists.into_lists() {
            let (first, last) = (ids[0], ids[ids.len() - 1]);
            serve
                .execute(params![epoch, item, first, last, ids_json(&ids)])
                .map_err(unavailable)?;
        }
        tx.prepare_cached("INSERT OR REPLACE INTO row_ids (rowid, next) VALUES (1, ?1)")
            .and_then(|mut s| s.execute([next_id]))
            .map_err(unavailable)?;
    }
    tx.commit().map_err(unavailable)?;
    Ok(outcome)
}
