//! Retention by age and size, deleted in chunks.

use super::*;

pub(super) fn used_bytes(conn: &Connection) -> Result<u64, StoreError> {
    let pragma = |name: &str| -> Result<u64, StoreError> {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0))
            .map(|v| v.max(0) as u64)
            .map_err(unavailable)
    };
    Ok(pragma("page_count")?.saturating_sub(pragma("freelist_count")?) * pragma("page_size")?)
}

/// Traces [`retain`] deletes per transaction.
pub(super) const DELETE_CHUNK: u64 = 5_000;

/// Which traces [`delete_traces`] deletes.
#[derive(Clone, Copy)]
pub(super) enum Doomed {
    /// Those older than this timestamp (ms).
    OlderThan(i64),
    /// The oldest this many.
    Oldest(u64),
}

/// Deletes traces, oldest first, one transaction per chunk (which bounds a transaction's memory
/// and write-ahead log when a whole hour expires at once), and the item lists and doc chunks
/// left with no stored trace. Returns how many traces went.
pub(super) fn delete_traces(conn: &mut Connection, doomed: Doomed, chunk: u64) -> Result<u64, StoreError> {
    let mut removed = 0;
    loop {
        let chunk = match doomed {
            Doomed::OlderThan(_) => chunk,
            Doomed::Oldest(n) => chunk.min(n - removed),
        } as i64;
        let tx = conn.transaction().map_err(unavailable)?;
        let ids = |s: &mut rusqlite::CachedStatement, p: &[&dyn rusqlite::ToSql]| {
            s.query_map(p, |r| r.get::<_, i64>(0))?.collect::<Result<Vec<_>, _>>()
        };
        let traces = match doomed {
            Doomed::OlderThan(cutoff) => tx
                .prepare_cached("SELECT id FROM traces WHERE ts < ?1 ORDER BY ts, request_id LIMIT ?2")
                .and_then(|mut s| ids(&mut s, params![cutoff, chunk])),
            Doomed::Oldest(_) => tx
                .prepare_cached("SELECT id FROM traces ORDER BY ts, request_id LIMIT ?1")
                .and_then(|mut s| ids(&mut s, params![chunk])),
        }
        .map_err(unavailable)?;
        for id in &traces {
            remove_trace(&tx, *id)?;
        }
        drop_dead(&tx)?;
        tx.commit().map_err(unavailable)?;
        removed += traces.len() as u64;
        let done = matches!(doomed, Doomed::Oldest(n) if removed >= n);
        if done || (traces.len() as i64) < chunk {
            return Ok(removed);
        }
    }
}

pub(super) fn retain(conn: &mut Connection, cutoff_ms: i64, max_bytes: Option<u64>) -> Result<u64, StoreError> {
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
