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

/// Deletes one trace's row and its item-index keys (`items`: its `items` column).
pub(super) fn remove_trace(tx: &rusqlite::Transaction, id: i64, items: &str) -> Result<(), StoreError> {
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

pub(super) fn put_batch(
    conn: &mut Connection,
    traces: &[Trace],
    encoding: DocEncoding,
) -> Result<PutOutcome, StoreError> {
    let mut outcome = PutOutcome::default();
    let mut docs = DocWriter::new(encoding);
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
            let doc = docs.encode(t)?;
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
