//! What the stores answer: search (filters + keyset paging, newest first), aggregates over a
//! time range, and the shapes they answer with. Pure: no I/O here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Detail, Trace};

/// Most hits one page may ask for.
pub const MAX_PAGE: usize = 200;
pub const DEFAULT_PAGE: usize = 20;
/// Most buckets an aggregate may produce (range / interval).
pub const MAX_BUCKETS: i64 = 2_000;

/// Trace search. Every filter is optional; results are newest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SearchQuery {
    pub user: Option<String>,
    /// A served item.
    pub item: Option<String>,
    /// Inclusive lower bound, ms since the epoch.
    pub from_ms: Option<i64>,
    /// Exclusive upper bound, ms since the epoch.
    pub to_ms: Option<i64>,
    pub level: Option<String>,
    pub model_version: Option<String>,
    pub bucket: Option<u32>,
    pub size: usize,
    /// Continue after this hit (the previous page's `next`).
    pub after: Option<Cursor>,
}

impl SearchQuery {
    pub fn new() -> Self {
        Self {
            size: DEFAULT_PAGE,
            ..Self::default()
        }
    }
}

/// A position in the newest-first order: (timestamp, request id) of the last hit seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub timestamp_ms: i64,
    pub request_id: String,
}

impl Cursor {
    pub fn of(hit: &TraceSummary) -> Self {
        Self {
            timestamp_ms: hit.timestamp_ms,
            request_id: hit.request_id.clone(),
        }
    }

    /// `<timestamp>.<request id>`: opaque to callers, readable in logs.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.timestamp_ms, self.request_id)
    }

    pub fn decode(s: &str) -> Option<Self> {
        let (ts, id) = s.split_once('.')?;
        Some(Self {
            timestamp_ms: ts.parse().ok()?,
            request_id: id.to_string(),
        })
        .filter(|c| !c.request_id.is_empty())
    }

    /// Whether `(timestamp_ms, request_id)` comes after the cursor in newest-first order.
    pub fn precedes(&self, timestamp_ms: i64, request_id: &str) -> bool {
        (timestamp_ms, request_id) < (self.timestamp_ms, self.request_id.as_str())
    }
}

/// One search hit: what a results table shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceSummary {
    pub request_id: String,
    pub trace_id: String,
    pub timestamp_ms: i64,
    pub user_id: String,
    pub scene: String,
    pub level: String,
    pub detail: Detail,
    pub latency_us: u64,
    pub model_version: Option<String>,
    pub bucket: u32,
    pub variant: String,
    /// Items served.
    pub served: u32,
}

impl From<&Trace> for TraceSummary {
    fn from(t: &Trace) -> Self {
        Self {
            request_id: t.request_id.clone(),
            trace_id: t.trace_id.clone(),
            timestamp_ms: t.timestamp_ms,
            user_id: t.user_id.clone(),
            scene: t.scene.clone(),
            level: t.level.clone(),
            detail: t.detail,
            latency_us: t.latency_us,
            model_version: t.model_version.clone(),
            bucket: t.bucket,
            variant: t.variant.clone(),
            served: t.items.len() as u32,
        }
    }
}

/// A page of hits; `next` continues the search (absent on the last page).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Page {
    pub hits: Vec<TraceSummary>,
    /// Traces matching the filters (all pages).
    pub total: u64,
    pub next: Option<String>,
}

impl Page {
    /// A page from up to `size + 1` hits in order: the extra one only says there is more.
    pub fn from_hits(mut hits: Vec<TraceSummary>, size: usize, total: u64) -> Self {
        let more = hits.len() > size;
        hits.truncate(size);
        let next = if more {
            hits.last().map(|h| Cursor::of(h).encode())
        } else {
            None
        };
        Self { hits, total, next }
    }
}

/// Aggregates over `[from_ms, to_ms)` with time buckets of `interval_ms`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AggregateQuery {
    pub from_ms: i64,
    pub to_ms: i64,
    pub interval_ms: i64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{field}: {message}")]
pub struct QueryError {
    pub field: &'static str,
    pub message: String,
}

impl AggregateQuery {
    pub fn new(from_ms: i64, to_ms: i64, interval_ms: i64) -> Result<Self, QueryError> {
        let err = |field, message: &str| {
            Err(QueryError {
                field,
                message: message.to_string(),
            })
        };
        if interval_ms <= 0 {
            return err("interval", "must be positive");
        }
        if to_ms <= from_ms {
            return err("to", "must be after `from`");
        }
        if (to_ms - from_ms) / interval_ms > MAX_BUCKETS {
            return err(
                "interval",
                &format!("gives more than {MAX_BUCKETS} buckets for the range"),
            );
        }
        Ok(Self {
            from_ms,
            to_ms,
            interval_ms,
        })
    }

    /// The start of the bucket holding `ts` (buckets are aligned to the epoch, as in
    /// Elasticsearch's `fixed_interval`).
    pub fn bucket_start(&self, ts: i64) -> i64 {
        ts.div_euclid(self.interval_ms) * self.interval_ms
    }
}

/// Requests per degradation level in one time bucket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LevelBucket {
    pub start_ms: i64,
    pub levels: BTreeMap<String, u64>,
}

/// One stage's latency over the range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageLatency {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Aggregates {
    pub requests: u64,
    /// Non-empty buckets, oldest first.
    pub levels_over_time: Vec<LevelBucket>,
    /// Served items each recall channel contributed to (an item found by two channels counts
    /// for both).
    pub channels: BTreeMap<String, u64>,
    pub stages: BTreeMap<String, StageLatency>,
}

/// The `p`th percentile (0–100) of sorted values, interpolating linearly between the closest
/// ranks (numpy's default; Elasticsearch's t-digest agrees on small sets to within a rank).
pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    match sorted {
        [] => 0.0,
        [only] => *only as f64,
        _ => {
            let rank = p.clamp(0.0, 100.0) / 100.0 * (sorted.len() - 1) as f64;
            let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
            let frac = rank - lo as f64;
            sorted[lo] as f64 + (sorted[hi] as f64 - sorted[lo] as f64) * frac
        }
    }
}

/// Aggregates computed from traces in memory: the reference the stores are tested against,
/// and what the embedded store uses for the parts SQL does not do directly.
pub fn aggregate(traces: &[Trace], q: &AggregateQuery) -> Aggregates {
    let mut levels: BTreeMap<i64, BTreeMap<String, u64>> = BTreeMap::new();
    let mut channels: BTreeMap<String, u64> = BTreeMap::new();
    let mut stages: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut requests = 0;
    for t in traces
        .iter()
        .filter(|t| t.timestamp_ms >= q.from_ms && t.timestamp_ms < q.to_ms)
    {
        requests += 1;
        *levels
            .entry(q.bucket_start(t.timestamp_ms))
            .or_default()
            .entry(t.level.clone())
            .or_default() += 1;
        for item in &t.items {
            for channel in item_channels(item) {
                *channels.entry(channel.to_string()).or_default() += 1;
            }
        }
        for s in &t.stages {
            stages.entry(s.name.clone()).or_default().push(s.latency_us);
        }
    }
    Aggregates::from_parts(requests, levels, channels, stages)
}

impl Aggregates {
    /// The answer from what a store collected: requests per level by bucket start, served
    /// items per channel, and each stage's latencies (in any order).
    pub fn from_parts(
        requests: u64,
        levels: BTreeMap<i64, BTreeMap<String, u64>>,
        channels: BTreeMap<String, u64>,
        stages: BTreeMap<String, Vec<u64>>,
    ) -> Self {
        Self {
            requests,
            levels_over_time: levels
                .into_iter()
                .map(|(start_ms, levels)| LevelBucket { start_ms, levels })
                .collect(),
            channels,
            stages: stages
                .into_iter()
                .map(|(name, mut v)| {
                    v.sort_unstable();
                    (name, stage_latency(&v))
                })
                .collect(),
        }
    }
}

/// Count and percentiles of sorted latencies.
pub fn stage_latency(sorted: &[u64]) -> StageLatency {
    StageLatency {
        count: sorted.len() as u64,
        p50_us: percentile(sorted, 50.0),
        p99_us: percentile(sorted, 99.0),
    }
}

/// The distinct channels that found a served item.
pub fn item_channels(item: &crate::ItemLineage) -> impl Iterator<Item = &str> {
    let mut seen: Vec<&str> = Vec::with_capacity(item.sources.len());
    for s in &item.sources {
        if !seen.contains(&s.channel.as_str()) {
            seen.push(&s.channel);
        }
    }
    seen.into_iter()
}

/// Whether a trace matches a search's filters (cursor aside).
pub fn matches(t: &Trace, q: &SearchQuery) -> bool {
    q.user.as_ref().is_none_or(|u| &t.user_id == u)
        && q.item
            .as_ref()
            .is_none_or(|i| t.items.iter().any(|it| &it.item_id == i))
        && q.from_ms.is_none_or(|f| t.timestamp_ms >= f)
        && q.to_ms.is_none_or(|to| t.timestamp_ms < to)
        && q.level.as_ref().is_none_or(|l| &t.level == l)
        && q.model_version
            .as_ref()
            .is_none_or(|m| t.model_version.as_ref() == Some(m))
        && q.bucket.is_none_or(|b| t.bucket == b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample;

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let v: Vec<u64> = (1..=10).map(|i| i * 100).collect();
        assert_eq!(percentile(&v, 50.0), 550.0);
        assert_eq!(percentile(&v, 0.0), 100.0);
        assert_eq!(percentile(&v, 100.0), 1000.0);
        assert!((percentile(&v, 99.0) - 991.0).abs() < 1e-9);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[7], 99.0), 7.0);
    }

    #[test]
    fn cursors_round_trip_and_order_newest_first() {
        let c = Cursor {
            timestamp_ms: 1_700_000_000_123,
            request_id: "0a1b-00002f.x".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c.clone()));
        assert_eq!(Cursor::decode("nope"), None);
        assert_eq!(Cursor::decode("12."), None);
        assert_eq!(Cursor::decode("x.y"), None);
        assert!(c.precedes(c.timestamp_ms - 1, "zzz"));
        assert!(c.precedes(c.timestamp_ms, "0a1b-00002e"));
        assert!(!c.precedes(c.timestamp_ms, &c.request_id));
        assert!(!c.precedes(c.timestamp_ms + 1, "a"));
    }

    #[test]
    fn a_page_says_whether_more_follow() {
        let hits: Vec<TraceSummary> = (0..3)
            .map(|i| TraceSummary::from(&sample::summary_trace(i, 1_000 - i as i64)))
            .collect();
        let page = Page::from_hits(hits.clone(), 2, 3);
        assert_eq!(page.hits.len(), 2);
        assert_eq!(page.next, Some(Cursor::of(&hits[1]).encode()));
        let last = Page::from_hits(hits[2..].to_vec(), 2, 3);
        assert_eq!(last.next, None);
    }

    #[test]
    fn aggregate_queries_are_checked() {
        assert!(AggregateQuery::new(0, 60_000, 1_000).is_ok());
        assert_eq!(AggregateQuery::new(0, 10, 0).unwrap_err().field, "interval");
        assert_eq!(AggregateQuery::new(10, 10, 1).unwrap_err().field, "to");
        assert_eq!(AggregateQuery::new(0, 10_000_000, 1).unwrap_err().field, "interval");
        let q = AggregateQuery::new(-120_000, 0, 60_000).unwrap();
        assert_eq!(q.bucket_start(-1), -60_000);
        assert_eq!(q.bucket_start(59_999), 0);
    }

    #[test]
    fn in_memory_aggregates_count_levels_channels_and_stages() {
        let traces: Vec<Trace> = (1..=100).map(|i| sample::summary_trace(i, i as i64 * 1_000)).collect();
        let q = AggregateQuery::new(0, 101_000, 60_000).unwrap();
        let a = aggregate(&traces, &q);
        assert_eq!(a.requests, 100);
        assert_eq!(a.levels_over_time.len(), 2);
        assert_eq!(a.levels_over_time[0].start_ms, 0);
        let total: u64 = a.levels_over_time.iter().flat_map(|b| b.levels.values()).sum();
        assert_eq!(total, 100);
        let popular: u64 = a.levels_over_time.iter().filter_map(|b| b.levels.get("popular")).sum();
        assert_eq!(popular, 2); // seq 50 and 100
        let served_channels: u64 = traces
            .iter()
            .flat_map(|t| &t.items)
            .map(|i| item_channels(i).count() as u64)
            .sum();
        assert_eq!(a.channels.values().sum::<u64>(), served_channels);
        assert_eq!(a.stages["recall"].count, 100);
        assert!(a.stages["recall"].p50_us >= 2_000.0 && a.stages["recall"].p99_us < 4_000.0);
        // The range is half-open.
        let q = AggregateQuery::new(1_000, 2_000, 1_000).unwrap();
        assert_eq!(aggregate(&traces, &q).requests, 1);
    }

    #[test]
    fn search_filters_match_fields() {
        let t = sample::summary_trace(13, 5_000);
        let mut q = SearchQuery::new();
        assert!(matches(&t, &q));
        q.user = Some(t.user_id.clone());
        q.item = Some(t.items[3].item_id.clone());
        q.from_ms = Some(5_000);
        q.to_ms = Some(5_001);
        q.level = Some("full".into());
        q.model_version = Some("deepfm-2".into());
        q.bucket = Some(13);
        assert!(matches(&t, &q));
        for change in [
            |q: &mut SearchQuery| q.user = Some("other".into()),
            |q: &mut SearchQuery| q.item = Some("nope".into()),
            |q: &mut SearchQuery| q.to_ms = Some(5_000),
            |q: &mut SearchQuery| q.level = Some("popular".into()),
            |q: &mut SearchQuery| q.model_version = Some("deepfm-1".into()),
            |q: &mut SearchQuery| q.bucket = Some(14),
        ] {
            let mut q2 = q.clone();
            change(&mut q2);
            assert!(!matches(&t, &q2), "{q2:?}");
        }
    }
}
