//! The trace of one request, built from the state its stages left ([`Request`]): each stage's
//! record with its counts in and out, each served item's lineage, and for full traces every
//! candidate and where it left the funnel.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use recstack_core::recall::Source;
use recstack_trace_store::{CandidateFate, Detail, ItemLineage, RealtimeRecord, SourceRecord, Trace, outcome};
use rustc_hash::FxHashMap;

use super::pipeline::{Cand, RERANK_POOL, Request};
use super::request::Recommendation;

/// A recall channel's vote as the trace stores it.
fn source_record(s: &Source) -> SourceRecord {
    SourceRecord {
        channel: s.channel.name().to_string(),
        score: s.score,
        rank: s.rank,
    }
}

fn source_records(c: &Cand) -> Vec<SourceRecord> {
    c.sources.iter().map(source_record).collect()
}

/// The trace of `r`, answered with `response`; in full (`r.full`): every candidate, not only
/// the served.
pub(super) fn trace(r: Request, response: &Recommendation) -> Trace {
    let (full, explained) = (r.full, r.explains());
    let recalled = (r.candidates.len() + r.below_cut.len()) as u32;
    let ranked = r.candidates.iter().filter(|c| c.rank_score.is_some()).count() as u32;
    let served = r.served.len() as u32;
    let items = lineage(&r, response);
    let candidates = if full { candidate_fates(&r) } else { Vec::new() };
    // What the trace keeps of the request's state is moved, not copied.
    let pool = r.candidates.len() as u32;
    // The gateway's span is the third part of the traceparent it sent (`00-trace-span-01`).
    let r_span_id = r.traceparent.split('-').nth(2).map(str::to_string);
    let r_parent_span = r.parent_span.clone();
    let Request {
        q,
        mut stages,
        channels,
        recall,
        funnel,
        realtime,
        ..
    } = r;
    for s in &mut stages {
        if s.outcome.starts_with("skipped") {
            continue;
        }
        s.items_out = match s.name.as_str() {
            "recall" => recalled,
            "popular" => pool,
            "ranking" => ranked,
            "rerank" => served,
            "fallback" => response.items.len() as u32,
            _ => 0,
        };
    }
    Trace {
        schema: recstack_trace_store::SCHEMA_VERSION,
        request_id: response.request_id.clone(),
        trace_id: response.trace_id.clone(),
        span_id: r_span_id,
        parent_span_id: r_parent_span,
        timestamp_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64,
        user_id: q.user_id,
        scene: q.scene,
        n: q.n,
        context: q.context,
        detail: if full { Detail::Full } else { Detail::Summary },
        level: response.level.clone(),
        degraded: response.degraded.clone(),
        experiment: response.experiment.clone().unwrap_or_default(),
        bucket: response.bucket.unwrap_or(0),
        variant: response.variant.clone().unwrap_or_default(),
        model_version: response.model_version.clone(),
        artifact_version: Some(response.artifact_version.clone()),
        latency_us: response.latency_us,
        stages,
        channels,
        items,
        filtered_seen: recall.filtered_seen,
        filtered_seen_when: recall.filtered_seen_when,
        seen_filter: recall.seen_filter,
        consumed_total: recall.consumed_total,
        realtime_history: recall.realtime_history,
        consumed: if full { recall.consumed } else { Vec::new() },
        cuts: if full { recall.cuts } else { Vec::new() },
        funnel: Some(funnel),
        explained,
        candidates,
        realtime: realtime.map(|r| RealtimeRecord {
            status: r.status,
            items: r.items,
            oldest_window_end_ms: r.oldest_window_end_ms,
            newest_window_end_ms: r.newest_window_end_ms,
            fetch_us: r.fetch_us,
        }),
        what_if: q.what_if,
    }
}

/// How each served item got to its position.
fn lineage(r: &Request, response: &Recommendation) -> Vec<ItemLineage> {
    if r.served.is_empty() {
        // The precomputed list: no lineage.
        return response
            .items
            .iter()
            .enumerate()
            .map(|(pos, it)| ItemLineage {
                item_id: it.item_id.clone(),
                position: pos as u32,
                sources: Vec::new(),
                recall_position: None,
                rank_score: None,
                ranked_position: None,
                rerank_rule: None,
                filters_passed: Vec::new(),
            })
            .collect();
    }
    // Recall's seen filter ran on recalled items (when it could be read); rerank's block list
    // on what it served.
    let seen = r
        .recall
        .seen_filter
        .as_deref()
        .is_some_and(|s| !s.starts_with("unavailable"));
    let reranked = r.reranked.is_some();
    r.served
        .iter()
        .enumerate()
        .map(|(pos, (i, rule))| {
            let c = &r.candidates[*i];
            ItemLineage {
                item_id: c.id.clone(),
                position: pos as u32,
                sources: source_records(c),
                recall_position: c.recall_position,
                rank_score: c.rank_score,
                ranked_position: Some(*i as u32),
                rerank_rule: rule.clone(),
                filters_passed: (seen && !c.sources.is_empty())
                    .then_some("seen")
                    .into_iter()
                    .chain(reranked.then_some("block_list"))
                    .map(String::from)
                    .collect(),
            }
        })
        .collect()
}

/// Where every candidate left the funnel: served, moved or dropped by a rerank rule, below
/// rerank's pool, not chosen, or past the ranker's reach.
fn candidate_fates(r: &Request) -> Vec<CandidateFate> {
    let served: HashSet<&str> = r.served.iter().map(|(i, _)| r.candidates[*i].id.as_str()).collect();
    let rules = r.reranked.as_ref().map(|x| x.rules()).unwrap_or_default();
    let displaced: FxHashMap<&str, &str> = r
        .reranked
        .iter()
        .flat_map(|x| &x.actions)
        .filter(|a| !a.displaced_by.is_empty())
        .map(|a| (a.item_id.as_str(), a.displaced_by.as_str()))
        .collect();
    let scored = r.candidates.iter().any(|c| c.rank_score.is_some());
    r.candidates
        .iter()
        .enumerate()
        .map(|(i, c)| CandidateFate {
            item_id: c.id.clone(),
            sources: source_records(c),
            rank_score: c.rank_score,
            prior: Some(c.prior),
            recall_position: c.recall_position,
            // The current order is the model's once it scored; before, recall's.
            ranked_position: scored.then_some(i as u32),
            displaced_by: displaced.get(c.id.as_str()).map(|d| d.to_string()),
            outcome: if served.contains(c.id.as_str()) {
                outcome::SERVED.into()
            } else if let Some(rule) = rules.get(c.id.as_str()) {
                format!("{}{rule}", outcome::RERANK_PREFIX)
            } else if i >= RERANK_POOL {
                outcome::BELOW_RERANK_POOL.into()
            } else {
                outcome::NOT_SERVED.into()
            },
        })
        .chain(r.below_cut.iter().map(|c| CandidateFate {
            item_id: c.id.clone(),
            sources: source_records(c),
            rank_score: None,
            prior: Some(c.prior),
            recall_position: c.recall_position,
            ranked_position: None,
            displaced_by: None,
            outcome: outcome::RANKED_BELOW_CUT.into(),
        }))
        .collect()
}

#[cfg(test)]
mod tests {
    /// The trace model lists the levels traces record (the search API refuses others, the
    /// dashboard orders by them) without depending on the core: they must be the gateway's.
    #[test]
    fn the_trace_models_levels_are_the_gateways() {
        let names = recstack_core::degrade::Level::ALL.map(|l| l.name());
        assert_eq!(names, recstack_trace_store::LEVELS);
    }
}
