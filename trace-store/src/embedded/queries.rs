//! Search and aggregates over the indexes.

use super::*;

/// The epochs from the oldest stored trace's to the newest's, as a subquery.
pub(super) fn epochs() -> String {
    format!(
        "WITH RECURSIVE epochs(n) AS (
             SELECT (SELECT min(id) FROM traces) >> {EPOCH_SHIFT}
             UNION ALL SELECT n + 1 FROM epochs WHERE n < (SELECT max(id) FROM traces) >> {EPOCH_SHIFT})
         SELECT n FROM epochs"
    )
}

/// A search's item filter: the ids in the item's lists of each epoch, one index seek an epoch
/// (`IN` with `traces`' primary key: an id whose trace is gone matches nothing).
pub(super) static SERVED_ITEM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "id IN (SELECT j.value FROM served_lists s, json_each(s.traces) j WHERE s.item_id = ? AND s.epoch IN ({}))",
        epochs()
    )
});

/// A search's user filter: the user's traces in each epoch, one seek of the user index an
/// epoch (the expression is the index's, so that SQLite uses it).
pub(super) static USER: LazyLock<String> =
    LazyLock::new(|| format!("id >> {EPOCH_SHIFT} IN ({}) AND user_id = ?", epochs()));

/// The WHERE clause and parameters of a search (cursor included when `with_cursor`).
pub(super) fn search_filter(q: &SearchQuery, with_cursor: bool) -> (String, Vec<rusqlite::types::Value>) {
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

pub(super) fn search(conn: &Connection, q: &SearchQuery) -> Result<Page, StoreError> {
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

pub(super) fn aggregate(conn: &Connection, q: &AggregateQuery) -> Result<Aggregates, StoreError> {
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
