//! Recommendation traces: one document per request with each item's lineage through recall,
//! filters, ranking and rerank.
//!
//! This crate holds the trace model and the [`TraceSink`] the gateway hands traces to. The
//! writers (Elasticsearch, embedded) and the query API ("why", "why not", search, aggregates)
//! arrive with the trace-store issue; until then [`MemorySink`] keeps the most recent traces.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// The version of [`Trace`]'s shape; readers refuse versions they do not know.
pub const SCHEMA_VERSION: u32 = 1;

/// One request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    pub schema: u32,
    pub request_id: String,
    /// W3C trace id (32 hex digits), from the caller's `traceparent` or new.
    pub trace_id: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    pub user_id: String,
    pub scene: String,
    /// `summary` or `full` (every candidate of every stage).
    pub detail: Detail,
    /// full, reduced, popular, fallback.
    pub level: String,
    /// Why the level is below full.
    pub degraded: Vec<String>,
    pub experiment: String,
    pub bucket: u32,
    pub variant: String,
    pub model_version: Option<String>,
    pub artifact_version: Option<String>,
    pub latency_us: u64,
    pub stages: Vec<StageRecord>,
    /// The served list, each item with its lineage.
    pub items: Vec<ItemLineage>,
    /// Candidates the seen filter removed.
    pub filtered_seen: Vec<String>,
    /// Every candidate and where it left (full traces only).
    pub candidates: Vec<CandidateFate>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detail {
    Summary,
    Full,
}

/// One stage of the pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// features, recall, ranking, rerank, popular, fallback.
    pub name: String,
    pub latency_us: u64,
    pub items_in: u32,
    pub items_out: u32,
    /// `ok`, `skipped: …` or `failed: …`.
    pub outcome: String,
}

/// A recall channel's vote for an item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceRecord {
    pub channel: String,
    pub score: f32,
    pub rank: u32,
}

/// How a served item got to its position.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemLineage {
    pub item_id: String,
    /// 0-based position served.
    pub position: u32,
    pub sources: Vec<SourceRecord>,
    /// 0-based position in recall's merged list.
    pub recall_position: Option<u32>,
    pub rank_score: Option<f32>,
    /// 0-based position after ranking (before rerank).
    pub ranked_position: Option<u32>,
    /// The rerank rule that moved or boosted it.
    pub rerank_rule: Option<String>,
}

/// Where a candidate left the funnel (full traces).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CandidateFate {
    pub item_id: String,
    pub sources: Vec<SourceRecord>,
    pub rank_score: Option<f32>,
    /// `served`, `ranked_below_cut` (not sent to the model), `below_rerank_pool` (scored but
    /// below the pool rerank chooses from), `rerank:<rule>`, `not_served`.
    pub outcome: String,
}

/// Takes traces without ever blocking the request: a full sink drops (and counts) instead.
pub trait TraceSink: Send + Sync + 'static {
    /// Returns false when the trace was dropped.
    fn offer(&self, trace: Trace) -> bool;
}

/// The most recent `capacity` traces in memory; older ones are dropped and counted.
pub struct MemorySink {
    capacity: usize,
    traces: Mutex<VecDeque<Trace>>,
    dropped: AtomicU64,
}

impl MemorySink {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            traces: Mutex::new(VecDeque::new()),
            dropped: AtomicU64::new(0),
        }
    }

    /// Copies of the held traces, oldest first.
    pub fn traces(&self) -> Vec<Trace> {
        self.lock().iter().cloned().collect()
    }

    pub fn find(&self, request_id: &str) -> Option<Trace> {
        self.lock().iter().find(|t| t.request_id == request_id).cloned()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Trace>> {
        // A panic while holding the lock cannot leave the deque inconsistent.
        self.traces.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl TraceSink for MemorySink {
    fn offer(&self, trace: Trace) -> bool {
        let mut traces = self.lock();
        let kept = if traces.len() >= self.capacity {
            traces.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
            false
        } else {
            true
        };
        traces.push_back(trace);
        kept
    }
}

/// Discards every trace.
pub struct NoSink;

impl TraceSink for NoSink {
    fn offer(&self, _trace: Trace) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(id: &str) -> Trace {
        Trace {
            schema: SCHEMA_VERSION,
            request_id: id.into(),
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            timestamp_ms: 1_700_000_000_000,
            user_id: "u".into(),
            scene: "home".into(),
            detail: Detail::Summary,
            level: "full".into(),
            degraded: vec![],
            experiment: "mmr-lambda".into(),
            bucket: 1,
            variant: "diverse".into(),
            model_version: Some("deepfm-1".into()),
            artifact_version: Some("v-1".into()),
            latency_us: 1234,
            stages: vec![StageRecord {
                name: "recall".into(),
                latency_us: 500,
                items_in: 0,
                items_out: 1000,
                outcome: "ok".into(),
            }],
            items: vec![ItemLineage {
                item_id: "0110912".into(),
                position: 0,
                sources: vec![SourceRecord {
                    channel: "item_cf".into(),
                    score: 0.5,
                    rank: 3,
                }],
                recall_position: Some(7),
                rank_score: Some(0.9),
                ranked_position: Some(1),
                rerank_rule: Some("mmr".into()),
            }],
            filtered_seen: vec![],
            candidates: vec![],
        }
    }

    #[test]
    fn a_trace_round_trips_through_json() {
        let t = trace("r1");
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.contains("\"detail\":\"summary\""), "{json}");
        assert_eq!(serde_json::from_str::<Trace>(&json).unwrap(), t);
    }

    #[test]
    fn the_memory_sink_keeps_the_newest_and_counts_drops() {
        let sink = MemorySink::new(2);
        assert!(sink.offer(trace("a")));
        assert!(sink.offer(trace("b")));
        assert!(!sink.offer(trace("c")));
        let ids: Vec<String> = sink.traces().into_iter().map(|t| t.request_id).collect();
        assert_eq!(ids, ["b", "c"]);
        assert_eq!(sink.dropped(), 1);
        assert!(sink.find("a").is_none());
        assert_eq!(sink.find("c").unwrap().request_id, "c");
    }
}
