//! The records the Flink engine's SQL job writes to the aggregates topic
//! (`<eventLog.topic>-aggregates`), which the stream StatefulSet applies to the feature store.
//!
//! The job emits two kinds of rows into one topic, keyed by item (so an item's windows stay in
//! one partition, in window order):
//! - `window`: one closed tumbling window of one item — its counts;
//! - `engagement`: a click, play or like as it happens — the user fast path.
//!
//! Both are JSON objects with the same columns (the SQL sink table's), unused ones `null`;
//! timestamps in Flink's SQL format (UTC). A window's version is its end alone: Flink's Kafka
//! sink delivers at least once, and a window emitted again after a restore must be refused —
//! which `(window end, 0)` is, and a window's offset in this topic would not be.

use serde::{Deserialize, Serialize};

use super::window::{Counts, ItemWindow, Version};
use crate::events::{parse_sql_timestamp, sql_timestamp};

/// One row of the aggregates topic.
#[derive(Clone, Debug, PartialEq)]
pub enum Aggregate {
    Window(ItemWindow),
    Engagement {
        user_id: String,
        item_id: String,
        ts_ms: i64,
    },
}

/// Why a record of the aggregates topic was not applied.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    #[error("aggregate record is not JSON of the job's sink table: {0}")]
    Json(#[from] serde_json::Error),
    #[error("aggregate record: {field} is missing")]
    Missing { field: &'static str },
    #[error("aggregate record: {field} is not a SQL timestamp: {value:?}")]
    Time { field: &'static str, value: String },
    #[error("aggregate record: unknown row kind {0:?}")]
    Kind(String),
    #[error("aggregate record: window_end {end} is not after window_start {start}")]
    EmptyWindow { start: i64, end: i64 },
}

/// The sink table's row, as Flink's JSON format writes it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Row {
    row_kind: String,
    item_id: Option<String>,
    user_id: Option<String>,
    window_start: Option<String>,
    window_end: Option<String>,
    impressions: Option<u64>,
    clicks: Option<u64>,
    plays: Option<u64>,
    likes: Option<u64>,
    ts: Option<String>,
}

fn time(field: &'static str, value: Option<String>) -> Result<i64, AggregateError> {
    let value = value.ok_or(AggregateError::Missing { field })?;
    parse_sql_timestamp(&value).ok_or(AggregateError::Time { field, value })
}

fn some<T>(field: &'static str, value: Option<T>) -> Result<T, AggregateError> {
    value.ok_or(AggregateError::Missing { field })
}

impl Aggregate {
    /// The row kinds, as the SQL writes them.
    pub const WINDOW: &'static str = "window";
    pub const ENGAGEMENT: &'static str = "engagement";

    pub fn decode(bytes: &[u8]) -> Result<Aggregate, AggregateError> {
        let row: Row = serde_json::from_slice(bytes)?;
        let item_id = some("item_id", row.item_id)?;
        match row.row_kind.as_str() {
            Self::WINDOW => {
                let start = time("window_start", row.window_start)?;
                let end = time("window_end", row.window_end)?;
                if end <= start {
                    return Err(AggregateError::EmptyWindow { start, end });
                }
                Ok(Aggregate::Window(ItemWindow {
                    item_id,
                    window_start_ms: start,
                    window_end_ms: end,
                    counts: Counts {
                        impressions: some("impressions", row.impressions)?,
                        clicks: some("clicks", row.clicks)?,
                        plays: some("plays", row.plays)?,
                        likes: some("likes", row.likes)?,
                    },
                    version: Version {
                        window_end_ms: end,
                        offset: 0,
                    },
                }))
            }
            Self::ENGAGEMENT => Ok(Aggregate::Engagement {
                user_id: some("user_id", row.user_id)?,
                item_id,
                ts_ms: time("ts", row.ts)?,
            }),
            other => Err(AggregateError::Kind(other.to_string())),
        }
    }

    /// The record as the Flink job writes it (for tests and replays).
    pub fn encode(&self) -> Vec<u8> {
        let row = match self {
            Aggregate::Window(w) => Row {
                row_kind: Self::WINDOW.into(),
                item_id: Some(w.item_id.clone()),
                window_start: Some(sql_timestamp(w.window_start_ms)),
                window_end: Some(sql_timestamp(w.window_end_ms)),
                impressions: Some(w.counts.impressions),
                clicks: Some(w.counts.clicks),
                plays: Some(w.counts.plays),
                likes: Some(w.counts.likes),
                ..Row::default()
            },
            Aggregate::Engagement {
                user_id,
                item_id,
                ts_ms,
            } => Row {
                row_kind: Self::ENGAGEMENT.into(),
                item_id: Some(item_id.clone()),
                user_id: Some(user_id.clone()),
                ts: Some(sql_timestamp(*ts_ms)),
                ..Row::default()
            },
        };
        serde_json::to_vec(&row).unwrap_or_default()
    }

    /// The log key: the item (one item's windows in one partition, in order).
    pub fn key(&self) -> &str {
        match self {
            Aggregate::Window(w) => &w.item_id,
            Aggregate::Engagement { item_id, .. } => item_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const END: i64 = 1_790_000_040_000;

    fn window() -> Aggregate {
        Aggregate::Window(ItemWindow {
            item_id: "0110912".into(),
            window_start_ms: END - 60_000,
            window_end_ms: END,
            counts: Counts {
                impressions: 7,
                clicks: 2,
                plays: 1,
                likes: 0,
            },
            version: Version {
                window_end_ms: END,
                offset: 0,
            },
        })
    }

    #[test]
    fn rows_round_trip() {
        let engagement = Aggregate::Engagement {
            user_id: "u1".into(),
            item_id: "0110912".into(),
            ts_ms: END - 1_234,
        };
        for a in [window(), engagement] {
            assert_eq!(Aggregate::decode(&a.encode()).unwrap(), a);
        }
    }

    /// What Flink's JSON format writes: every column, unused ones null, in the sink's order.
    #[test]
    fn reads_the_rows_flink_writes() {
        let w = br#"{"row_kind":"window","item_id":"0110912","user_id":null,"window_start":"2026-09-21 14:33:00","window_end":"2026-09-21 14:34:00","impressions":7,"clicks":2,"plays":1,"likes":0,"ts":null}"#;
        let Aggregate::Window(w) = Aggregate::decode(w).unwrap() else {
            panic!("a window")
        };
        assert_eq!(w.window_end_ms - w.window_start_ms, 60_000);
        assert_eq!(w.version.window_end_ms, w.window_end_ms);
        assert_eq!(w.version.offset, 0, "a window emitted twice has one version");
        assert_eq!(w.counts.engagement(), 3);
        let e = br#"{"row_kind":"engagement","item_id":"i9","user_id":"u3","window_start":null,"window_end":null,"impressions":null,"clicks":null,"plays":null,"likes":null,"ts":"2026-09-21 14:33:12.5"}"#;
        assert_eq!(
            Aggregate::decode(e).unwrap(),
            Aggregate::Engagement {
                user_id: "u3".into(),
                item_id: "i9".into(),
                ts_ms: parse_sql_timestamp("2026-09-21 14:33:12.500").unwrap(),
            }
        );
    }

    #[test]
    fn bad_rows_name_what_is_wrong() {
        let cases: [(&[u8], &str); 6] = [
            (b"not json", "not JSON"),
            (br#"{"row_kind":"window","item_id":"i","window_start":"2026-09-21 14:33:00","window_end":"2026-09-21 14:34:00"}"#, "impressions is missing"),
            (br#"{"row_kind":"window","item_id":"i","window_start":"yesterday","window_end":"2026-09-21 14:34:00"}"#, "window_start is not a SQL timestamp"),
            (br#"{"row_kind":"window","item_id":"i","window_start":"2026-09-21 14:34:00","window_end":"2026-09-21 14:34:00","impressions":1,"clicks":0,"plays":0,"likes":0}"#, "not after window_start"),
            (br#"{"row_kind":"engagement","item_id":"i","ts":"2026-09-21 14:34:00"}"#, "user_id is missing"),
            (br#"{"row_kind":"rating","item_id":"i"}"#, "unknown row kind \"rating\""),
        ];
        for (bytes, message) in cases {
            let err = Aggregate::decode(bytes).unwrap_err().to_string();
            assert!(err.contains(message), "{err} should say {message}");
        }
    }
}
