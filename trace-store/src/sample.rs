//! Deterministic synthetic traces shaped like the gateway's (5 channels → 1,000 candidates →
//! rank 500 → rerank pool 200 → 20 served), for tests, benchmarks and dashboard fixtures.
//! The same `seq` always gives the same trace.

use std::sync::LazyLock;

use crate::{
    CandidateFate, ChannelCount, ConsumedRecord, Detail, Funnel, ItemLineage, RecallCut, SCHEMA_VERSION, SeenWhen,
    SourceRecord, StageRecord, Trace, cut, outcome,
};

pub const CHANNELS: [&str; 5] = ["item_cf", "user_cf", "hot", "als", "vector"];
const CANDIDATES: usize = 1_000;
const RANK_CUT: usize = 500;
const RERANK_POOL: usize = 200;
const SERVED: usize = 20;

/// The request id of trace `seq`.
pub fn request_id(seq: u64) -> String {
    format!("req-{seq:08}")
}

/// The item id of candidate `i` of trace `seq` (overlapping across traces, like a catalogue).
pub fn item_id(seq: u64, i: usize) -> String {
    format!("{:07}", (seq as usize * 37 + i * 13) % 10_000)
}

/// The `k`th item the seen filter removed in trace `seq` (never one of its candidates).
pub fn seen_item_id(seq: u64, k: usize) -> String {
    format!("{:07}", 10_000 + (seq as usize * 7 + k) % 90_000)
}

/// The `k`th item of trace `seq`'s user history (never one of its candidates).
pub fn consumed_item_id(seq: u64, k: usize) -> String {
    format!("{:07}", 100_000 + (seq as usize * 11 + k) % 90_000)
}

/// The `k`th item recall cut in trace `seq` (never one of its candidates): 0–9 past a
/// channel's quota, 10–12 past the merge's cut, 13–14 from the switched-off `tag` channel.
pub fn cut_item_id(seq: u64, k: usize) -> String {
    format!("{:07}", 200_000 + (seq as usize * 17 + k) % 90_000)
}

/// How many cuts [`cut_item_id`] numbers.
pub const CUTS: usize = 15;

/// A summary trace: the served list with lineage, counts per stage, no candidate list, no
/// history, no cuts.
pub fn summary_trace(seq: u64, timestamp_ms: i64) -> Trace {
    let mut t = full_trace(seq, timestamp_ms);
    t.detail = Detail::Summary;
    // Free the lists (not `clear`, which keeps their memory): a summary holds none of them.
    t.candidates = Vec::new();
    t.consumed = Vec::new();
    t.cuts = Vec::new();
    t
}

/// How many item ids [`popular_summary_trace`] draws from: about what the served full level
/// covers of the bundled catalogue in users' top 20s (12 %, BENCHMARKS.md, "Quality on the
/// time-split holdout").
pub const POPULAR_ITEMS: usize = 1_300;

/// A summary trace whose served items are drawn by popularity, as served lists repeat popular
/// items: Zipf with exponent 1 over [`POPULAR_ITEMS`] ids, each at most once a trace. The
/// item index's cost depends on that repetition; [`summary_trace`]'s items, spread evenly over
/// 10,000 ids, barely repeat within a batch.
pub fn popular_summary_trace(seq: u64, timestamp_ms: i64) -> Trace {
    static CDF: LazyLock<Vec<f64>> = LazyLock::new(|| {
        let weights: Vec<f64> = (1..=POPULAR_ITEMS).map(|k| 1.0 / k as f64).collect();
        let total: f64 = weights.iter().sum();
        weights
            .iter()
            .scan(0.0, |acc, w| {
                *acc += w / total;
                Some(*acc)
            })
            .collect()
    });
    let mut t = summary_trace(seq, timestamp_ms);
    let mut rng = SplitMix(seq ^ 0x5eed_1e57);
    let mut drawn = std::collections::HashSet::new();
    for item in &mut t.items {
        let rank = loop {
            let u = rng.next() as f64 / u64::MAX as f64;
            let rank = CDF.partition_point(|&c| c < u).min(POPULAR_ITEMS - 1);
            if drawn.insert(rank) {
                break rank;
            }
        };
        item.item_id = format!("{rank:07}");
    }
    t
}

/// A full trace: every candidate and where it left.
pub fn full_trace(seq: u64, timestamp_ms: i64) -> Trace {
    let mut rng = SplitMix(seq);
    // Mostly full; every 10th reduced, every 50th popular.
    let level = match seq % 50 {
        0 => "popular",
        s if s % 10 == 0 => "reduced",
        _ => "full",
    };
    let candidates: Vec<CandidateFate> = (0..CANDIDATES)
        .map(|i| {
            let n_sources = 1 + (rng.next() % 2) as usize;
            let first = (i + seq as usize) % CHANNELS.len();
            let sources = (0..n_sources)
                .map(|k| SourceRecord {
                    channel: CHANNELS[(first + k * 2) % CHANNELS.len()].to_string(),
                    score: rng.unit(),
                    rank: (i / CHANNELS.len()) as u32,
                })
                .collect();
            let mmr = (SERVED..RERANK_POOL).contains(&i) && i % 7 == 0;
            CandidateFate {
                item_id: item_id(seq, i),
                sources,
                rank_score: (i < RANK_CUT).then(|| score_at(i)),
                prior: Some(prior_at(i)),
                recall_position: Some(i as u32),
                ranked_position: (i < RANK_CUT).then_some(i as u32),
                displaced_by: mmr.then(|| item_id(seq, i % SERVED)),
                outcome: if i < SERVED {
                    outcome::SERVED.to_string()
                } else if i < RERANK_POOL {
                    if mmr {
                        format!("{}mmr", outcome::RERANK_PREFIX)
                    } else {
                        outcome::NOT_SERVED.to_string()
                    }
                } else if i < RANK_CUT {
                    outcome::BELOW_RERANK_POOL.to_string()
                } else {
                    outcome::RANKED_BELOW_CUT.to_string()
                },
            }
        })
        .collect();
    let items = candidates[..SERVED]
        .iter()
        .enumerate()
        .map(|(pos, c)| ItemLineage {
            item_id: c.item_id.clone(),
            position: pos as u32,
            sources: c.sources.clone(),
            recall_position: Some(pos as u32),
            rank_score: c.rank_score,
            ranked_position: Some(pos as u32),
            rerank_rule: (pos % 5 == 4).then(|| "mmr".to_string()),
            filters_passed: vec!["seen".into(), "block_list".into()],
        })
        .collect();
    let mut per_channel = [0u32; CHANNELS.len()];
    for c in &candidates {
        for s in &c.sources {
            if let Some(k) = CHANNELS.iter().position(|ch| *ch == s.channel) {
                per_channel[k] += 1;
            }
        }
    }
    let stage = |name: &str, start_us: u64, latency_us: u64, items_in: u32, items_out: u32| StageRecord {
        name: name.into(),
        latency_us,
        start_us: Some(start_us),
        items_in,
        items_out,
        outcome: "ok".into(),
    };
    let recall_us = 2_000 + rng.next() % 2_000;
    let ranking_us = 1_500 + rng.next() % 1_500;
    let rerank_us = 300 + rng.next() % 400;
    Trace {
        schema: SCHEMA_VERSION,
        request_id: request_id(seq),
        span_id: Some(format!("{:016x}", seq.wrapping_mul(0x9e37_79b9_7f4a_7c15).max(1))),
        parent_span_id: None,
        trace_id: format!(
            "{:016x}{:016x}",
            SplitMix(seq ^ 0xabc).next(),
            SplitMix(seq ^ 0xdef).next()
        ),
        timestamp_ms,
        user_id: format!("u{}", seq % 50),
        scene: "home".into(),
        n: 10,
        context: [("device".to_string(), "tv".to_string())].into_iter().collect(),
        detail: Detail::Full,
        level: level.into(),
        degraded: if level == "full" {
            Vec::new()
        } else {
            vec![format!("load: {level}")]
        },
        experiment: "mmr-lambda".into(),
        bucket: (seq % 100) as u32,
        variant: if seq.is_multiple_of(2) { "control" } else { "diverse" }.into(),
        model_version: Some(if seq % 10 == 3 { "deepfm-2" } else { "deepfm-1" }.into()),
        artifact_version: Some("v-sample".into()),
        latency_us: recall_us + ranking_us + rerank_us + 200,
        stages: vec![
            stage("features", 50, 300 + rng.next() % 200, 0, 1),
            stage("recall", 50, recall_us, 0, CANDIDATES as u32),
            stage("ranking", 100 + recall_us, ranking_us, RANK_CUT as u32, RANK_CUT as u32),
            stage(
                "rerank",
                150 + recall_us + ranking_us,
                rerank_us,
                RERANK_POOL as u32,
                SERVED as u32,
            ),
        ],
        channels: CHANNELS
            .iter()
            .zip(per_channel)
            .map(|(c, n)| ChannelCount {
                channel: c.to_string(),
                candidates: n,
                quota: Some(200),
                outcome: "ok".into(),
            })
            .chain([ChannelCount {
                channel: "tag".into(),
                candidates: 0,
                quota: Some(0),
                outcome: format!("skipped: switched off at the {level} level"),
            }])
            .collect(),
        items,
        filtered_seen: (0..5).map(|k| seen_item_id(seq, k)).collect(),
        filtered_seen_when: (0..5)
            .map(|k| SeenWhen {
                first_ms: timestamp_ms - 3_600_000 * (k as i64 + 2),
                last_ms: timestamp_ms - 3_600_000 * (k as i64 + 1),
            })
            .collect(),
        seen_filter: Some("applied".into()),
        consumed_total: Some(8),
        realtime_history: Vec::new(),
        consumed: (0..8)
            .map(|k| ConsumedRecord {
                item_id: consumed_item_id(seq, k),
                at_ms: Some(timestamp_ms - 86_400_000 * (k as i64 + 1)),
                source: "history".into(),
            })
            .collect(),
        cuts: (0..CUTS)
            .map(|k| {
                let (reason, channel, rank) = match k {
                    0..10 => (cut::QUOTA, CHANNELS[k % CHANNELS.len()], 201 + k as u32),
                    10..13 => (cut::MERGE, CHANNELS[k % CHANNELS.len()], 150 + k as u32),
                    _ => (cut::CHANNEL_OFF, "tag", k as u32),
                };
                let merge = reason == cut::MERGE;
                RecallCut {
                    item_id: cut_item_id(seq, k),
                    reason: reason.into(),
                    sources: vec![SourceRecord {
                        channel: channel.into(),
                        score: 0.1,
                        rank,
                    }],
                    position: merge.then_some((CANDIDATES + k - 10) as u32),
                    cut: merge.then_some(CANDIDATES as u32),
                }
            })
            .collect(),
        explained: true,
        funnel: Some(Funnel {
            candidates: CANDIDATES as u32,
            rank_limit: RANK_CUT as u32,
            rank_cut_prior: Some(prior_at(RANK_CUT - 1)),
            rerank_pool: RERANK_POOL as u32,
            pool_cut_score: Some(score_at(RERANK_POOL - 1)),
            served_cut_score: Some(score_at(SERVED - 1)),
        }),
        candidates,
        realtime: Some(crate::RealtimeRecord {
            status: "read".into(),
            items: 40 + (seq % 20) as u32,
            oldest_window_end_ms: timestamp_ms - 600_000,
            newest_window_end_ms: timestamp_ms - 30_000 - (seq % 30) as i64 * 1_000,
            fetch_us: 300 + rng.next() % 700,
        }),
        what_if: None,
    }
}

/// The model's score of the candidate at ranked position `i`.
fn score_at(i: usize) -> f32 {
    1.0 - i as f32 / RANK_CUT as f32
}

/// The fused recall score of the candidate at recall position `i`.
fn prior_at(i: usize) -> f32 {
    1.0 / (60.0 + i as f32)
}

/// splitmix64: a tiny seeded generator, enough for fixtures.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Popular traces: valid, each item once a trace, ids within the popular range, the same
    /// for the same seq, and a batch of 500 repeating items the way served lists do (the most
    /// popular id in most traces, ~1,000 distinct ids for 10,000 served).
    #[test]
    fn popular_traces_repeat_popular_items() {
        let batch: Vec<Trace> = (0..500).map(|i| popular_summary_trace(i, 1_000)).collect();
        assert_eq!(batch[7], popular_summary_trace(7, 1_000));
        let mut distinct = std::collections::HashSet::new();
        for t in &batch {
            assert_eq!(t.check(), Ok(()));
            let ids: std::collections::HashSet<&str> = t.items.iter().map(|i| i.item_id.as_str()).collect();
            assert_eq!(ids.len(), t.items.len(), "{}", t.request_id);
            for id in ids {
                assert!(id.parse::<usize>().unwrap() < POPULAR_ITEMS, "{id}");
                distinct.insert(id.to_string());
            }
        }
        let with_top = batch
            .iter()
            .filter(|t| t.items.iter().any(|i| i.item_id == "0000000"))
            .count();
        assert!(with_top > 400, "the most popular item in {with_top} of 500");
        assert!((600..1_300).contains(&distinct.len()), "{} distinct", distinct.len());
    }
}
