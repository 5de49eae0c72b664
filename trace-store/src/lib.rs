//! Recommendation traces: one document per request with each item's lineage through recall,
//! filters, ranking and rerank — and where everything else fell out.
//!
//! - the model: [`Trace`] (schema [`SCHEMA_VERSION`]), summary or full detail;
//! - [`TraceSink`]: what the gateway hands traces to without ever waiting ([`writer::TraceWriter`]
//!   queues and batches them into a [`store::TraceStore`]);
//! - two stores answering the same queries: [`embedded::EmbeddedStore`] (SQLite on local disk,
//!   the one-machine default) and [`elastic::ElasticStore`] (Elasticsearch: index template,
//!   dated indices behind an alias, bulk writes, retention by deleting old indices);
//! - [`explain`]: "why" and "why not" for an item of a request, pure functions;
//! - [`api`]: the JSON query API (axum).
#![forbid(unsafe_code)]
// The Elasticsearch index template is one `json!` literal, deeper than the default limit.
#![recursion_limit = "256"]

#[cfg(feature = "access")]
pub mod access;
#[cfg(feature = "server")]
pub mod api;
pub mod compare;

/// Prefix of a pseudonymised user id in a trace (see `access`).
pub const PSEUDONYM_PREFIX: &str = "p-";

#[cfg(feature = "server")]
pub mod elastic;
#[cfg(feature = "server")]
pub mod embedded;
pub mod explain;
pub mod query;
pub mod request_id;
pub mod sample;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod testkit;
#[cfg(feature = "server")]
pub mod writer;

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// The service levels a trace records, best first (the gateway's degradation ladder: `recstack_core::degrade::Level`'s
/// names, which a test in the services pins this to).
pub const LEVELS: [&str; 4] = ["full", "reduced", "popular", "fallback"];

/// The version of [`Trace`]'s shape; stores refuse versions newer than they know. Version 2
/// added `channels` and `filters_passed` (both default to empty when reading version 1);
/// version 3 what why-not needs for every exit — the seen filter's status and times, the
/// history, recall's cuts, the funnel's cut scores, each candidate's positions and what
/// displaced it (all default to empty or absent when reading older traces).
pub const SCHEMA_VERSION: u32 = 3;

/// One request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    pub schema: u32,
    pub request_id: String,
    /// W3C trace id (32 hex digits), from the caller's `traceparent` or new.
    pub trace_id: String,
    /// The gateway's span for the request (16 hex digits): the parent every internal call
    /// carried in `traceparent`, and the span exported over OTLP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    /// The caller's span, when it sent a `traceparent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    pub user_id: String,
    pub scene: String,
    /// Items asked for (`n`), and the request's context: what a replay sends again (0 and
    /// empty in traces written before they were recorded).
    #[serde(default)]
    pub n: u32,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub context: std::collections::BTreeMap<String, String>,
    /// `summary` or `full` (every candidate of every stage).
    pub detail: Detail,
    /// One of [`LEVELS`].
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
    /// Candidates each recall channel contributed (before merge and dedup).
    #[serde(default)]
    pub channels: Vec<ChannelCount>,
    /// The served list, each item with its lineage.
    pub items: Vec<ItemLineage>,
    /// Candidates the seen filter removed.
    pub filtered_seen: Vec<String>,
    /// When the seen filter recorded each item of `filtered_seen`, position by position.
    #[serde(default)]
    pub filtered_seen_when: Vec<SeenWhen>,
    /// The seen filter: `applied`, `empty` (no impressions yet) or `unavailable: …` (recall
    /// ran unfiltered); absent when recall did not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_filter: Option<String>,
    /// How many items the user's history held (channels never return them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumed_total: Option<u32>,
    /// The user's real-time items recall read from the stream job's store (newest first, ahead
    /// of the build's history; a replay as recorded: those it was given): what a what-if replay
    /// of the state as recorded puts back. Empty when there were none, and in traces written
    /// before it was recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub realtime_history: Vec<String>,
    /// The user's history (full traces): what recall's channels left out, and the recent items
    /// the popular level left out.
    #[serde(default)]
    pub consumed: Vec<ConsumedRecord>,
    /// What recall's channels ranked but did not answer (full traces): past a channel's quota,
    /// past the merge's cut, or from a channel switched off at this level.
    #[serde(default)]
    pub cuts: Vec<RecallCut>,
    /// Where the funnel cut, and the scores at each cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub funnel: Option<Funnel>,
    /// Recall explained this request (debug requests): `consumed` and `cuts` are complete.
    /// A sampled full trace keeps every candidate but not recall's cuts or the history.
    #[serde(default)]
    pub explained: bool,
    /// Every candidate and where it left (full traces only).
    pub candidates: Vec<CandidateFate>,
    /// The real-time item features ranking read (absent when its model reads none, and in
    /// traces written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realtime: Option<RealtimeRecord>,
    /// What this request changed, when it replays a stored one (a what-if).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub what_if: Option<WhatIf>,
}

/// What a what-if replay changed from the request it replays ([`Trace::what_if`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WhatIf {
    /// The stored request replayed.
    pub replay_of: String,
    /// The degradation level it was made to start at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Items put among the candidates before ranking (served only if they earn it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub force_items: Vec<String>,
    /// Items blocked for this request, beside the stack's block list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block: Vec<String>,
    /// The ranking model asked for: `primary` or `canary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The user's seen items as recorded (the replayed request's seen removals), filtered
    /// instead of the user's seen filter now; `None`: the seen filter as it is now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<Vec<String>>,
    /// The user's real-time items as recorded (the replayed request's `realtime_history`),
    /// ahead of the build's history instead of those in the stream's store now; `None`: as
    /// they are now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realtime_history: Option<Vec<String>>,
    /// Rerank's MMR trade-off for this request (0.0–1.0), instead of the stack's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmr_lambda: Option<f32>,
    /// Items served at a 0-based position for this request, before the stack's pins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pins: Vec<PinRecord>,
}

/// An item pinned to a 0-based position.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    pub item_id: String,
    pub position: u32,
}

impl WhatIf {
    /// What it changed, for people: `level popular; block a, b` (`no change` when nothing).
    pub fn changes(&self) -> String {
        let mut out = Vec::new();
        if let Some(l) = &self.level {
            out.push(format!("level {l}"));
        }
        if !self.force_items.is_empty() {
            out.push(format!("force in {}", self.force_items.join(", ")));
        }
        if !self.block.is_empty() {
            out.push(format!("block {}", self.block.join(", ")));
        }
        if let Some(m) = &self.model {
            out.push(format!("model {m}"));
        }
        if let Some(seen) = &self.seen {
            out.push(format!("seen items as recorded ({})", seen.len()));
        }
        if let Some(recent) = &self.realtime_history {
            out.push(format!("real-time items as recorded ({})", recent.len()));
        }
        if let Some(l) = self.mmr_lambda {
            out.push(format!("MMR λ {l}"));
        }
        if !self.pins.is_empty() {
            let pins: Vec<String> = self
                .pins
                .iter()
                .map(|p| format!("{} at {}", p.item_id, p.position + 1))
                .collect();
            out.push(format!("pin {}", pins.join(", ")));
        }
        if out.is_empty() {
            "no change".into()
        } else {
            out.join("; ")
        }
    }
}

/// The real-time item features ranking read from the feature service for one request: how
/// many candidates the stream job's windows had counted, and how fresh the newest and oldest
/// of those windows were (against `timestamp_ms`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RealtimeRecord {
    /// `read`, or `unavailable: …` (every candidate then had neutral values).
    pub status: String,
    pub items: u32,
    /// Milliseconds since the epoch; 0 when no candidate had a window.
    pub oldest_window_end_ms: i64,
    pub newest_window_end_ms: i64,
    pub fetch_us: u64,
}

/// When the seen filter recorded an item: between the first and last impressions of the
/// filter shard holding it (ms since the epoch; 0 when the filter predates recorded times).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenWhen {
    pub first_ms: i64,
    pub last_ms: i64,
}

/// An item the user already consumed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsumedRecord {
    pub item_id: String,
    /// When (ms since the epoch), where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<i64>,
    /// `history` (the build's training history, which recall's channels leave out) or
    /// `recent` (the user's recent items, which the popular level leaves out).
    pub source: String,
}

/// An item recall's channels ranked but did not answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecallCut {
    pub item_id: String,
    /// One of [`cut`].
    pub reason: String,
    /// The channels that ranked it, at the rank it had there (1-based).
    pub sources: Vec<SourceRecord>,
    /// `merge`: 0-based position in the merged list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    /// `merge`: the candidates recall answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<u32>,
}

/// The `reason` values of [`RecallCut`].
pub mod cut {
    /// Ranked past its channel's quota.
    pub const QUOTA: &str = "quota";
    /// Merged, but past the candidates recall answered.
    pub const MERGE: &str = "merge";
    /// Ranked only by channels switched off at the request's level.
    pub const CHANNEL_OFF: &str = "channel_off";
}

/// Where the request's funnel cut, with the scores either side.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Funnel {
    /// Candidates recall was asked for (or the popular level's pool).
    pub candidates: u32,
    /// Candidates the model could score (by recall's order); the rest were below the cut.
    pub rank_limit: u32,
    /// The fused recall score of the last candidate sent to the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank_cut_prior: Option<f32>,
    /// Candidates rerank chose from (best first).
    pub rerank_pool: u32,
    /// The score of the last candidate in rerank's pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_cut_score: Option<f32>,
    /// The lowest score among the served items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_cut_score: Option<f32>,
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
    /// When the stage began, µs after the request did (stages run in parallel: features and
    /// recall together). Absent in traces written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_us: Option<u64>,
    pub items_in: u32,
    pub items_out: u32,
    /// `ok`, `skipped: …` or `failed: …`.
    pub outcome: String,
}

/// What one recall channel did: how many candidates it gave, at which quota, or why it
/// gave none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelCount {
    pub channel: String,
    pub candidates: u32,
    /// The quota it ran with (absent in traces written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<u32>,
    /// `ok`, `empty` (it ran and found nothing for this user), `skipped: …` (switched off at
    /// this level) or `failed: …` (recall failed); empty in older traces.
    #[serde(default)]
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
    /// The filters it went through (`seen`, `block_list`).
    #[serde(default)]
    pub filters_passed: Vec<String>,
}

/// Where a candidate left the funnel (full traces).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CandidateFate {
    pub item_id: String,
    pub sources: Vec<SourceRecord>,
    pub rank_score: Option<f32>,
    /// The fused recall score (or hot score at the popular level) that ordered it before
    /// ranking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior: Option<f32>,
    /// 0-based position in recall's answer (or the popular level's pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall_position: Option<u32>,
    /// 0-based position after ranking, for the candidates the model scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranked_position: Option<u32>,
    /// The item a diversity rule served in its place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub displaced_by: Option<String>,
    /// `served`, `ranked_below_cut` (not sent to the model), `below_rerank_pool` (scored but
    /// below the pool rerank chooses from), `rerank:<rule>`, `not_served`.
    pub outcome: String,
}

/// The `outcome` values of [`CandidateFate`].
pub mod outcome {
    pub const SERVED: &str = "served";
    /// Recall returned it but it was below the number of candidates sent to the model.
    pub const RANKED_BELOW_CUT: &str = "ranked_below_cut";
    /// Scored, but below the pool rerank chooses from.
    pub const BELOW_RERANK_POOL: &str = "below_rerank_pool";
    /// In rerank's pool, not chosen, no rule involved: rerank kept the best `n`.
    pub const NOT_SERVED: &str = "not_served";
    /// Prefix of `rerank:<rule>` (rules: `blocked`, `mmr`, `category_scatter`, `pin`, `fresh_boost`).
    pub const RERANK_PREFIX: &str = "rerank:";
}

/// Why a trace cannot be stored.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InvalidTrace {
    #[error("schema {0} is newer than this store knows ({SCHEMA_VERSION})")]
    Schema(u32),
    #[error("request_id is empty or longer than 128 bytes")]
    RequestId,
}

impl Trace {
    /// Checks what a store relies on: a known schema and a usable id.
    pub fn check(&self) -> Result<(), InvalidTrace> {
        if self.schema == 0 || self.schema > SCHEMA_VERSION {
            return Err(InvalidTrace::Schema(self.schema));
        }
        if self.request_id.is_empty() || self.request_id.len() > 128 {
            return Err(InvalidTrace::RequestId);
        }
        Ok(())
    }

    /// A cheap estimate of the heap memory the trace holds, for the writer's queue bound.
    pub fn approx_bytes(&self) -> usize {
        fn sources(s: &[SourceRecord]) -> usize {
            s.iter().map(|s| size_of::<SourceRecord>() + s.channel.len()).sum()
        }
        fn list(v: &[String]) -> usize {
            v.iter().map(|s| s.len() + size_of::<String>()).sum()
        }
        let strings = self.request_id.len()
            + self.trace_id.len()
            + self.user_id.len()
            + self.scene.len()
            + self.level.len()
            + self.experiment.len()
            + self.variant.len()
            + self.model_version.as_ref().map_or(0, String::len)
            + self.artifact_version.as_ref().map_or(0, String::len)
            + list(&self.degraded);
        let stages: usize = self
            .stages
            .iter()
            .map(|s| size_of::<StageRecord>() + s.name.len() + s.outcome.len())
            .sum();
        let channels: usize = self
            .channels
            .iter()
            .map(|c| size_of::<ChannelCount>() + c.channel.len() + c.outcome.len())
            .sum();
        let items: usize = self
            .items
            .iter()
            .map(|i| {
                size_of::<ItemLineage>()
                    + i.item_id.len()
                    + sources(&i.sources)
                    + i.rerank_rule.as_ref().map_or(0, String::len)
                    + list(&i.filters_passed)
            })
            .sum();
        let seen: usize = list(&self.filtered_seen)
            + self.filtered_seen_when.len() * size_of::<SeenWhen>()
            + self.seen_filter.as_ref().map_or(0, String::len)
            + list(&self.realtime_history);
        let consumed: usize = self
            .consumed
            .iter()
            .map(|c| size_of::<ConsumedRecord>() + c.item_id.len() + c.source.len())
            .sum();
        let cuts: usize = self
            .cuts
            .iter()
            .map(|c| size_of::<RecallCut>() + c.item_id.len() + c.reason.len() + sources(&c.sources))
            .sum();
        let candidates: usize = self
            .candidates
            .iter()
            .map(|c| {
                size_of::<CandidateFate>()
                    + c.item_id.len()
                    + c.outcome.len()
                    + sources(&c.sources)
                    + c.displaced_by.as_ref().map_or(0, String::len)
            })
            .sum();
        size_of::<Trace>() + strings + stages + channels + items + seen + consumed + cuts + candidates
    }
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

    #[test]
    fn a_trace_round_trips_through_json() {
        let t = sample::full_trace(1, 1_700_000_000_000);
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.contains("\"detail\":\"full\""), "{json}");
        assert_eq!(serde_json::from_str::<Trace>(&json).unwrap(), t);
    }

    #[test]
    fn a_version_1_trace_reads_with_empty_new_fields() {
        let mut v = serde_json::to_value(sample::summary_trace(1, 1_700_000_000_000)).unwrap();
        v["schema"] = 1.into();
        v.as_object_mut().unwrap().remove("channels");
        for item in v["items"].as_array_mut().unwrap() {
            item.as_object_mut().unwrap().remove("filters_passed");
        }
        let t: Trace = serde_json::from_value(v).unwrap();
        assert_eq!(t.schema, 1);
        assert!(t.channels.is_empty());
        assert!(t.items.iter().all(|i| i.filters_passed.is_empty()));
        assert_eq!(t.check(), Ok(()));
    }

    #[test]
    fn check_refuses_unknown_schemas_and_bad_ids() {
        let mut t = sample::summary_trace(1, 0);
        t.schema = SCHEMA_VERSION + 1;
        assert_eq!(t.check(), Err(InvalidTrace::Schema(SCHEMA_VERSION + 1)));
        t.schema = SCHEMA_VERSION;
        t.request_id.clear();
        assert_eq!(t.check(), Err(InvalidTrace::RequestId));
    }

    #[test]
    fn approx_bytes_grows_with_the_candidates() {
        let summary = sample::summary_trace(1, 0).approx_bytes();
        let full = sample::full_trace(1, 0).approx_bytes();
        let json = serde_json::to_vec(&sample::full_trace(1, 0)).unwrap().len();
        assert!(summary > 1_000 && summary < 20_000, "{summary}");
        assert!(full > 10 * summary, "{full} vs {summary}");
        // Same order of magnitude as the serialized form.
        assert!(full > json / 4 && full < json * 4, "{full} vs json {json}");
    }

    #[test]
    fn the_memory_sink_keeps_the_newest_and_counts_drops() {
        let sink = MemorySink::new(2);
        assert!(sink.offer(sample::summary_trace(1, 0)));
        assert!(sink.offer(sample::summary_trace(2, 0)));
        assert!(!sink.offer(sample::summary_trace(3, 0)));
        let ids: Vec<String> = sink.traces().into_iter().map(|t| t.request_id).collect();
        assert_eq!(ids, [sample::request_id(2), sample::request_id(3)]);
        assert_eq!(sink.dropped(), 1);
        assert!(sink.find(&sample::request_id(1)).is_none());
        assert!(sink.find(&sample::request_id(3)).is_some());
    }
}
