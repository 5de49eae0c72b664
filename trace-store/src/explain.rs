//! "Why was item X recommended in request R?" and "why was it not?" — answered from one
//! trace, as pure functions.
//!
//! Why-not walks the funnel in order: not in the index → not recalled → filtered as seen →
//! ranked below the cut (not sent to the model, or scored below rerank's pool, or below the
//! `n` served) → a business rule (block list) → diversity (MMR, category scatter). A summary
//! trace keeps only the served list and the seen filter's removals, so for anything else it
//! says plainly that it cannot tell and how to get a full trace.

use serde::{Deserialize, Serialize};

use crate::{CandidateFate, Detail, ItemLineage, RecallCut, Trace, cut, outcome};

/// The catalogue recall can find items in, when the query service knows it.
pub trait ItemIndex: Send + Sync + 'static {
    fn contains(&self, item_id: &str) -> bool;

    /// The item's title, when the catalogue has one (the dashboard shows it beside the id).
    fn title(&self, _item_id: &str) -> Option<String> {
        None
    }
}

impl ItemIndex for std::collections::HashSet<String> {
    fn contains(&self, item_id: &str) -> bool {
        std::collections::HashSet::contains(self, item_id)
    }
}

/// The lineage of a served item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Why {
    pub request_id: String,
    pub item_id: String,
    pub level: String,
    pub model_version: Option<String>,
    pub lineage: ItemLineage,
    /// The lineage as sentences, stage by stage.
    pub steps: Vec<String>,
}

/// Where a missing item left the funnel, in funnel order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FellOut {
    /// It was served after all.
    Served,
    /// Not in the catalogue recall searches.
    NotInIndex,
    /// The user already consumed it (the history recall's channels leave out, or the recent
    /// items the popular level leaves out).
    Consumed,
    /// A channel ranked it past its quota.
    QuotaCut,
    /// Merged, but past the candidates recall answered.
    MergeCut,
    /// The seen (impressions) filter removed it.
    FilteredSeen,
    /// Only a channel switched off at this level ranked it, or recall itself was skipped or
    /// failed at this level.
    ChannelSkipped,
    /// No channel ranked it (within the depth recall explains).
    NotRecalled,
    /// Scored (or not sent to the model) below a cut: the model's limit, rerank's pool, or
    /// the items served.
    RankedBelowCut,
    /// A business rule (the block list) removed it.
    BusinessRule,
    /// A diversity rule (MMR, category scatter) served other items.
    Diversity,
}

/// The numbers behind an answer; only those that apply are set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The channel whose quota or switch cut it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Its 1-based rank where it was cut: in the channel, the merged list, recall's answer, or
    /// the ranked list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
    /// The cut it fell past: a quota, recall's `n`, the model's limit, rerank's pool, the
    /// items served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<u32>,
    /// Its score at that stage (fused recall score before ranking, the model's after).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    /// The score of the last item inside the cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_score: Option<f32>,
    /// The rule that removed it or served others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The item a diversity rule served in its place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub displaced_by: Option<String>,
    /// When it was consumed, or the seen filter's window (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<i64>,
    /// The stage that was skipped or failed, and its record's outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WhyNot {
    pub request_id: String,
    pub item_id: String,
    /// The trace's detail level: a `summary` often cannot answer.
    pub detail: Detail,
    /// `None` when this trace cannot tell.
    pub stage: Option<FellOut>,
    /// A sentence for people.
    pub explanation: String,
    /// The numbers behind it.
    #[serde(default)]
    pub evidence: Evidence,
    /// The candidate's record in a full trace.
    pub candidate: Option<CandidateFate>,
}

/// The lineage of `item_id` in `trace`, or `None` when it was not served.
pub fn why(trace: &Trace, item_id: &str) -> Option<Why> {
    let item = trace.items.iter().find(|i| i.item_id == item_id)?;
    let mut steps = Vec::new();
    if item.sources.is_empty() {
        steps.push(format!(
            "no recall channel: served from the {} level's list",
            trace.level
        ));
    } else {
        let channels: Vec<String> = item
            .sources
            .iter()
            .map(|s| format!("{} (score {:.4}, rank {})", s.channel, s.score, s.rank + 1))
            .collect();
        steps.push(format!("recalled by {}", channels.join(", ")));
    }
    if let Some(p) = item.recall_position {
        steps.push(format!("position {} in the merged recall list", p + 1));
    }
    if !item.filters_passed.is_empty() {
        steps.push(format!("passed filters: {}", item.filters_passed.join(", ")));
    }
    match (item.rank_score, &trace.model_version) {
        (Some(score), Some(model)) => steps.push(format!(
            "scored {score:.4} by {model}, ranked {}",
            item.ranked_position.map_or("?".to_string(), |p| (p + 1).to_string())
        )),
        (Some(score), None) => steps.push(format!("scored {score:.4}")),
        (None, _) => steps.push("not scored by the ranking model".to_string()),
    }
    match (&item.rerank_rule, item.ranked_position) {
        (Some(rule), Some(before)) => steps.push(format!(
            "rerank rule {rule}: position {} → {}",
            before + 1,
            item.position + 1
        )),
        (Some(rule), None) => steps.push(format!("rerank rule {rule}: served at {}", item.position + 1)),
        (None, _) => steps.push(format!("served at position {}", item.position + 1)),
    }
    Some(Why {
        request_id: trace.request_id.clone(),
        item_id: item_id.to_string(),
        level: trace.level.clone(),
        model_version: trace.model_version.clone(),
        lineage: item.clone(),
        steps,
    })
}

/// Where `item_id` fell out of `trace`'s funnel: each check in the funnel's order, the
/// first that holds answers.
pub fn why_not(trace: &Trace, item_id: &str, index: Option<&dyn ItemIndex>) -> WhyNot {
    let answer =
        |stage: Option<FellOut>, explanation: String, evidence: Evidence, candidate: Option<&CandidateFate>| WhyNot {
            request_id: trace.request_id.clone(),
            item_id: item_id.to_string(),
            detail: trace.detail,
            stage,
            explanation: format!("{item_id}: {explanation}"),
            evidence,
            candidate: candidate.cloned(),
        };
    if let Some(item) = trace.items.iter().find(|i| i.item_id == item_id) {
        let evidence = Evidence {
            rank: Some(item.position + 1),
            ..Evidence::default()
        };
        let why = format!("served at position {}", item.position + 1);
        return answer(Some(FellOut::Served), why, evidence, None);
    }
    if index.is_some_and(|ix| !ix.contains(item_id)) {
        let why = "not in the catalogue recall searches: no channel can return it".to_string();
        return answer(Some(FellOut::NotInIndex), why, Evidence::default(), None);
    }
    if let Some(c) = trace.consumed.iter().find(|c| c.item_id == item_id) {
        let when = c.at_ms.map_or(String::new(), |ms| format!(" on {}", day(ms)));
        let why = match c.source.as_str() {
            "recent" => format!("the user consumed it recently{when}: the popular level leaves recent items out"),
            _ => format!("the user already consumed it{when}: recall's channels never return the user's history"),
        };
        let evidence = Evidence {
            at_ms: c.at_ms,
            ..Evidence::default()
        };
        return answer(Some(FellOut::Consumed), why, evidence, None);
    }
    // Every trace (summaries too) keeps the real-time items recall read; an explained one also
    // lists them, with their times, in `consumed` (above).
    if trace.realtime_history.iter().any(|i| i == item_id) {
        let why = "the user engaged with it since the build (a real-time item recall read with the request): \
                   recall's channels never return what the user has consumed"
            .to_string();
        return answer(Some(FellOut::Consumed), why, Evidence::default(), None);
    }
    if let Some(k) = trace.filtered_seen.iter().position(|s| s == item_id) {
        let when = trace.filtered_seen_when.get(k).filter(|w| w.last_ms > 0);
        let evidence = Evidence {
            since_ms: when.map(|w| w.first_ms),
            at_ms: when.map(|w| w.last_ms),
            ..Evidence::default()
        };
        let seen = when.map_or("recently".to_string(), |w| {
            format!("between {} and {}", instant(w.first_ms), instant(w.last_ms))
        });
        let why = format!("recalled, but the user was shown it {seen}: the seen filter removed it");
        return answer(Some(FellOut::FilteredSeen), why, evidence, None);
    }
    if let Some(c) = trace.candidates.iter().find(|c| c.item_id == item_id) {
        let (stage, why, evidence) = candidate_exit(trace, c);
        return answer(Some(stage), why, evidence, Some(c));
    }
    if let Some(c) = trace.cuts.iter().find(|c| c.item_id == item_id) {
        let (stage, why, evidence) = recall_cut(trace, c);
        return answer(Some(stage), why, evidence, None);
    }
    if let Some((stage, why, evidence)) = recall_did_not_run(trace) {
        return answer(Some(stage), why, evidence, None);
    }
    if trace.detail == Detail::Full && trace.schema >= 3 && !trace.explained {
        let why = "not among recall's candidates; this sampled trace keeps every candidate but not recall's cuts \
                   (past a quota, past the merge, switched-off channels) or the user's history, so it cannot say \
                   which; send the request with \"debug\": true for a trace that does"
            .to_string();
        return answer(None, why, Evidence::default(), None);
    }
    if trace.detail == Detail::Summary {
        let why = "this is a summary trace: it keeps the served list and what the seen filter removed, not every \
                   candidate, so it cannot say where it fell out; send the request with \"debug\": true for a full \
                   trace"
            .to_string();
        return answer(None, why, Evidence::default(), None);
    }
    let ran: Vec<String> = trace
        .channels
        .iter()
        .filter(|c| c.quota.is_none_or(|q| q > 0))
        .map(|c| c.channel.clone())
        .collect();
    let why = if trace.level == "popular" {
        "not recalled: at the popular level only the hot list was considered".to_string()
    } else if trace.schema >= 3 {
        format!(
            "not recalled: none of the channels that ran ({}) ranked it, even past their quotas",
            ran.join(", ")
        )
    } else {
        format!(
            "not recalled: no recall channel returned it among the {} candidates",
            trace.candidates.len()
        )
    };
    answer(Some(FellOut::NotRecalled), why, Evidence::default(), None)
}

/// Where a candidate of a full trace left: below one of the ranking cuts, or by a rerank rule.
fn candidate_exit(trace: &Trace, c: &CandidateFate) -> (FellOut, String, Evidence) {
    let funnel = trace.funnel.clone().unwrap_or_default();
    let score = |s: Option<f32>| s.map_or(String::new(), |s| format!(" {s:.4}"));
    let position = |p: Option<u32>| p.map(|p| p + 1);
    match c.outcome.as_str() {
        outcome::RANKED_BELOW_CUT => {
            let evidence = Evidence {
                rank: position(c.recall_position),
                cut: Some(funnel.rank_limit),
                score: c.prior,
                cut_score: funnel.rank_cut_prior,
                ..Evidence::default()
            };
            let at = evidence.rank.map_or(String::new(), |r| format!(" at position {r}"));
            let why = format!(
                "recalled{at} (fused score{}), but the model scores only the first {} (fused score{} at the cut)",
                score(c.prior),
                funnel.rank_limit,
                score(funnel.rank_cut_prior)
            );
            (FellOut::RankedBelowCut, why, evidence)
        }
        outcome::BELOW_RERANK_POOL => {
            let evidence = Evidence {
                rank: position(c.ranked_position),
                cut: Some(funnel.rerank_pool),
                score: c.rank_score,
                cut_score: funnel.pool_cut_score,
                ..Evidence::default()
            };
            let why = format!(
                "scored{} (ranked {}), below the {} rerank chooses from (score{} at the cut)",
                score(c.rank_score),
                evidence.rank.map_or("?".into(), |r| r.to_string()),
                funnel.rerank_pool,
                score(funnel.pool_cut_score)
            );
            (FellOut::RankedBelowCut, why, evidence)
        }
        outcome::NOT_SERVED => {
            let evidence = Evidence {
                rank: position(c.ranked_position),
                cut: Some(trace.items.len() as u32),
                score: c.rank_score,
                cut_score: funnel.served_cut_score,
                ..Evidence::default()
            };
            let why = format!(
                "in rerank's pool, scored{} (ranked {}), below the {} served (lowest served score{})",
                score(c.rank_score),
                evidence.rank.map_or("?".into(), |r| r.to_string()),
                trace.items.len(),
                score(funnel.served_cut_score)
            );
            (FellOut::RankedBelowCut, why, evidence)
        }
        other => {
            let rule = other.strip_prefix(outcome::RERANK_PREFIX).unwrap_or(other);
            let evidence = Evidence {
                rank: position(c.ranked_position),
                score: c.rank_score,
                rule: Some(if rule == "blocked" { "block_list" } else { rule }.to_string()),
                displaced_by: c.displaced_by.clone(),
                ..Evidence::default()
            };
            match rule {
                "blocked" => (
                    FellOut::BusinessRule,
                    "removed by the business rule block_list".to_string(),
                    evidence,
                ),
                "mmr" | "category_scatter" => {
                    let instead = c
                        .displaced_by
                        .as_ref()
                        .map_or(String::new(), |d| format!("; {d} was served in its place"));
                    let why = format!(
                        "scored{} (ranked {}), but the diversity rule {rule} chose other items{instead}",
                        score(c.rank_score),
                        evidence.rank.map_or("?".into(), |r| r.to_string()),
                    );
                    (FellOut::Diversity, why, evidence)
                }
                _ if other.starts_with(outcome::RERANK_PREFIX) => {
                    let why = format!(
                        "in rerank's pool, scored{}; rule {rule} applied, still below the items served",
                        score(c.rank_score)
                    );
                    (FellOut::RankedBelowCut, why, evidence)
                }
                _ => (FellOut::RankedBelowCut, format!("left the funnel as {other}"), evidence),
            }
        }
    }
}

/// An item recall's channels ranked but did not answer.
fn recall_cut(trace: &Trace, c: &RecallCut) -> (FellOut, String, Evidence) {
    let quota = |channel: &str| {
        trace
            .channels
            .iter()
            .find(|x| x.channel == channel)
            .and_then(|x| x.quota)
    };
    match c.reason.as_str() {
        cut::MERGE => {
            let evidence = Evidence {
                rank: c.position.map(|p| p + 1),
                cut: c.cut,
                ..Evidence::default()
            };
            let why = format!(
                "recalled by {}, but at position {} of the merged list, past the {} candidates recall answers",
                channels(&c.sources),
                evidence.rank.map_or("?".into(), |r| r.to_string()),
                c.cut.map_or("?".into(), |n| n.to_string())
            );
            (FellOut::MergeCut, why, evidence)
        }
        cut::QUOTA => {
            // The channel that ranked it best among those that ran.
            let best = c
                .sources
                .iter()
                .filter(|s| quota(&s.channel).is_none_or(|q| q > 0))
                .min_by_key(|s| s.rank);
            let evidence = Evidence {
                channel: best.map(|s| s.channel.clone()),
                rank: best.map(|s| s.rank),
                cut: best.and_then(|s| quota(&s.channel)),
                score: best.map(|s| s.score),
                ..Evidence::default()
            };
            let why = match best {
                Some(s) => format!(
                    "{} ranked it {}, past its quota of {}",
                    s.channel,
                    s.rank,
                    evidence.cut.map_or("?".into(), |q| q.to_string())
                ),
                None => "ranked past its channel's quota".to_string(),
            };
            (FellOut::QuotaCut, why, evidence)
        }
        _ => {
            let best = c.sources.iter().min_by_key(|s| s.rank);
            let evidence = Evidence {
                channel: best.map(|s| s.channel.clone()),
                rank: best.map(|s| s.rank),
                score: best.map(|s| s.score),
                ..Evidence::default()
            };
            let why = match best {
                Some(s) => format!(
                    "{} would have ranked it {}, but {} is switched off at the {} level",
                    s.channel, s.rank, s.channel, trace.level
                ),
                None => format!("only channels switched off at the {} level ranked it", trace.level),
            };
            (FellOut::ChannelSkipped, why, evidence)
        }
    }
}

/// Recall skipped or failed (the popular and fallback levels): no channel could find anything.
/// Or it ran and found nothing, and the precomputed list was served.
fn recall_did_not_run(trace: &Trace) -> Option<(FellOut, String, Evidence)> {
    let record = trace.stages.iter().find(|s| s.name == "recall");
    let outcome = match record {
        Some(r) if r.outcome != "ok" => r.outcome.clone(),
        Some(_) if trace.level == "fallback" => {
            let why = "not recalled: recall answered no candidates, so the precomputed list was served, and it is \
                       not on it";
            return Some((FellOut::NotRecalled, why.to_string(), Evidence::default()));
        }
        Some(_) => return None,
        // Older traces record only the stages that ran.
        None if matches!(trace.level.as_str(), "popular" | "fallback") => {
            format!("skipped: the request was at the {} level", trace.level)
        }
        None => return None,
    };
    let considered = match trace.level.as_str() {
        "fallback" => "only the precomputed list was served, and it is not on it",
        "popular" => "only the hot list was considered, and it is not among the first on it",
        _ => "no channel could return it",
    };
    let why = format!("recall {outcome}; {considered}");
    let evidence = Evidence {
        stage: Some("recall".into()),
        outcome: Some(outcome),
        ..Evidence::default()
    };
    Some((FellOut::ChannelSkipped, why, evidence))
}

/// `item_cf (rank 3), hot (rank 40)`.
fn channels(sources: &[crate::SourceRecord]) -> String {
    let named: Vec<String> = sources
        .iter()
        .map(|s| format!("{} (rank {})", s.channel, s.rank))
        .collect();
    if named.is_empty() {
        "recall".into()
    } else {
        named.join(", ")
    }
}

/// A day, `2026-12-03` (UTC), for people.
fn day(ms: i64) -> String {
    let (y, m, d) = civil(ms.div_euclid(86_400_000));
    format!("{y:04}-{m:02}-{d:02}")
}

/// A moment to the second, `2026-12-03 10:15:02 UTC`, for people.
fn instant(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!(
        "{} {:02}:{:02}:{:02} UTC",
        day(ms),
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The proleptic Gregorian date of a day number (days since 1970-01-01), by Howard Hinnant's
/// `civil_from_days` (no time-zone data needed, and the same in the browser build).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::sample;

    fn full_with(outcome: &str) -> (Trace, String) {
        let mut t = sample::full_trace(7, 0);
        let c = &mut t.candidates[300];
        c.outcome = outcome.to_string();
        let id = c.item_id.clone();
        (t, id)
    }

    #[test]
    fn why_tells_each_stage_of_a_served_item() {
        let t = sample::full_trace(7, 0);
        let served = &t.items[4];
        let w = why(&t, &served.item_id).unwrap();
        assert_eq!(w.lineage, *served);
        assert!(w.steps[0].starts_with("recalled by "), "{:?}", w.steps);
        assert!(w.steps[0].contains(&served.sources[0].channel));
        assert!(w.steps.iter().any(|s| s.contains("passed filters: seen, block_list")));
        assert!(w.steps.iter().any(|s| s.contains("by deepfm-1")));
        assert!(
            w.steps.last().unwrap().contains("rerank rule mmr: position 5 → 5"),
            "{:?}",
            w.steps
        );
        assert!(why(&t, "not-there").is_none());
    }

    /// The sample's catalogue: candidates, seen, consumed and cut ids.
    fn catalogue() -> HashSet<String> {
        (0..300_000).map(|i| format!("{i:07}")).collect()
    }

    #[test]
    fn why_not_names_every_exit_with_its_numbers() {
        let index = catalogue();
        let t = sample::full_trace(7, 1_700_000_000_000);
        let ask = |t: &Trace, id: &str| why_not(t, id, Some(&index));

        let a = ask(&t, &t.items[3].item_id);
        assert_eq!((a.stage, a.evidence.rank), (Some(FellOut::Served), Some(4)));

        let a = ask(&t, "9999999");
        assert_eq!(a.stage, Some(FellOut::NotInIndex));
        assert!(a.explanation.contains("not in the catalogue"), "{}", a.explanation);

        // Consumed: with the day it was consumed.
        let a = ask(&t, &sample::consumed_item_id(7, 2));
        assert_eq!(a.stage, Some(FellOut::Consumed));
        assert_eq!(a.evidence.at_ms, Some(1_700_000_000_000 - 3 * 86_400_000));
        assert!(
            a.explanation.contains("already consumed it on 2023-11-11"),
            "{}",
            a.explanation
        );

        // Seen: with the filter shard's window.
        let a = ask(&t, &t.filtered_seen[1]);
        assert_eq!(a.stage, Some(FellOut::FilteredSeen));
        assert_eq!(
            (a.evidence.since_ms, a.evidence.at_ms),
            (
                Some(t.filtered_seen_when[1].first_ms),
                Some(t.filtered_seen_when[1].last_ms)
            )
        );
        assert!(
            a.explanation
                .contains("between 2023-11-14 19:13:20 UTC and 2023-11-14 20:13:20 UTC"),
            "{}",
            a.explanation
        );

        // Past a channel's quota: which channel, the rank it had, the quota.
        let a = ask(&t, &sample::cut_item_id(7, 3));
        assert_eq!(a.stage, Some(FellOut::QuotaCut));
        assert_eq!(
            (a.evidence.channel.as_deref(), a.evidence.rank, a.evidence.cut),
            (Some(sample::CHANNELS[3]), Some(204), Some(200))
        );
        assert!(
            a.explanation.contains("als ranked it 204, past its quota of 200"),
            "{}",
            a.explanation
        );

        // Past the merge's cut: its merged position and recall's n.
        let a = ask(&t, &sample::cut_item_id(7, 11));
        assert_eq!(a.stage, Some(FellOut::MergeCut));
        assert_eq!((a.evidence.rank, a.evidence.cut), (Some(1002), Some(1000)));
        assert!(
            a.explanation
                .contains("position 1002 of the merged list, past the 1000"),
            "{}",
            a.explanation
        );

        // Only a switched-off channel ranked it.
        let a = ask(&t, &sample::cut_item_id(7, 13));
        assert_eq!(a.stage, Some(FellOut::ChannelSkipped));
        assert_eq!(
            (a.evidence.channel.as_deref(), a.evidence.rank),
            (Some("tag"), Some(13))
        );
        assert!(
            a.explanation.contains("tag is switched off at the full level"),
            "{}",
            a.explanation
        );

        // Not recalled at all.
        let recalled: HashSet<&str> = t.candidates.iter().map(|c| c.item_id.as_str()).collect();
        let absent = (0..10_000)
            .map(|i| format!("{i:07}"))
            .find(|i| !recalled.contains(i.as_str()))
            .unwrap();
        let a = ask(&t, &absent);
        assert_eq!(a.stage, Some(FellOut::NotRecalled));
        assert!(
            a.explanation.contains("item_cf, user_cf, hot, als, vector"),
            "{}",
            a.explanation
        );
        assert!(!a.explanation.contains("tag"), "tag did not run: {}", a.explanation);

        // Below the model's limit: recall position and fused score against the cut's.
        let a = ask(&t, &t.candidates[700].item_id);
        assert_eq!(a.stage, Some(FellOut::RankedBelowCut));
        let e = &a.evidence;
        assert_eq!((e.rank, e.cut), (Some(701), Some(500)));
        assert_eq!((e.score, e.cut_score), (Some(1.0 / 760.0), Some(1.0 / 559.0)));
        assert!(
            a.explanation.contains("the model scores only the first 500"),
            "{}",
            a.explanation
        );

        // Below rerank's pool: its score and the pool's last.
        let a = ask(&t, &t.candidates[300].item_id);
        assert_eq!(a.stage, Some(FellOut::RankedBelowCut));
        let e = &a.evidence;
        assert_eq!((e.rank, e.cut), (Some(301), Some(200)));
        assert_eq!(
            (e.score, e.cut_score),
            (Some(1.0 - 300.0 / 500.0), Some(1.0 - 199.0 / 500.0))
        );

        // In the pool, below the served: against the lowest served score.
        let a = ask(&t, &t.candidates[50].item_id);
        assert_eq!(a.stage, Some(FellOut::RankedBelowCut));
        assert_eq!((a.evidence.rank, a.evidence.cut), (Some(51), Some(20)));
        assert_eq!(a.evidence.cut_score, Some(1.0 - 19.0 / 500.0));
        assert!(a.explanation.contains("below the 20 served"), "{}", a.explanation);

        // Diversity: the rule and the item served instead.
        let a = ask(&t, &t.candidates[21].item_id);
        assert_eq!(a.stage, Some(FellOut::Diversity));
        assert_eq!(a.evidence.rule.as_deref(), Some("mmr"));
        assert_eq!(a.evidence.displaced_by, Some(sample::item_id(7, 1)));
        assert!(
            a.explanation
                .contains(&format!("{} was served in its place", sample::item_id(7, 1)))
        );

        for (outcome, stage, rule) in [
            ("rerank:fresh_boost", FellOut::RankedBelowCut, "fresh_boost"),
            ("rerank:blocked", FellOut::BusinessRule, "block_list"),
            ("rerank:category_scatter", FellOut::Diversity, "category_scatter"),
        ] {
            let (t, id) = full_with(outcome);
            let a = ask(&t, &id);
            assert_eq!(a.stage, Some(stage), "{outcome}: {a:?}");
            assert_eq!(a.evidence.rule.as_deref(), Some(rule));
            assert_eq!(a.candidate.as_ref().unwrap().outcome, outcome);
            assert!(a.explanation.starts_with(&id));
            assert!(a.explanation.contains(rule), "{}", a.explanation);
        }
    }

    #[test]
    fn a_skipped_or_failed_recall_is_the_answer_at_lower_levels() {
        let mut t = sample::summary_trace(7, 0);
        t.level = "popular".into();
        let recall = t.stages.iter_mut().find(|s| s.name == "recall").unwrap();
        recall.outcome = "failed: timed out after 40 ms".into();
        let a = why_not(&t, "0000042", None);
        assert_eq!(a.stage, Some(FellOut::ChannelSkipped));
        assert_eq!(a.evidence.stage.as_deref(), Some("recall"));
        assert_eq!(a.evidence.outcome.as_deref(), Some("failed: timed out after 40 ms"));
        assert!(
            a.explanation
                .contains("recall failed: timed out after 40 ms; only the hot list"),
            "{}",
            a.explanation
        );
        // An older trace without a recall record at the fallback level.
        t.level = "fallback".into();
        t.stages.retain(|s| s.name != "recall");
        let a = why_not(&t, "0000042", None);
        assert_eq!(a.stage, Some(FellOut::ChannelSkipped));
        assert!(a.explanation.contains("precomputed list"), "{}", a.explanation);
    }

    #[test]
    fn a_sampled_full_trace_says_what_it_cannot_tell() {
        let mut t = sample::full_trace(7, 0);
        t.explained = false;
        t.cuts.clear();
        t.consumed.clear();
        let a = why_not(&t, &sample::cut_item_id(7, 3), None);
        assert_eq!(a.stage, None, "{a:?}");
        assert!(a.explanation.contains("\"debug\": true"), "{}", a.explanation);
        // What it keeps still answers.
        assert_eq!(
            why_not(&t, &t.candidates[300].item_id, None).stage,
            Some(FellOut::RankedBelowCut)
        );
    }

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(day(0), "1970-01-01");
        assert_eq!(day(951_782_400_000), "2000-02-29");
        assert_eq!(instant(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(day(-86_400_000), "1969-12-31");
    }

    #[test]
    fn a_summary_trace_says_plainly_when_it_cannot_tell() {
        let t = sample::summary_trace(7, 0);
        let below = sample::full_trace(7, 0).candidates[300].item_id.clone();
        let a = why_not(&t, &below, None);
        assert_eq!(a.stage, None, "{a:?}");
        assert_eq!(a.detail, Detail::Summary);
        assert!(a.explanation.contains("summary trace"), "{}", a.explanation);
        assert!(a.explanation.contains("\"debug\": true"));
        // What a summary does keep still answers.
        assert_eq!(
            why_not(&t, &t.filtered_seen[0], None).stage,
            Some(FellOut::FilteredSeen)
        );
        assert_eq!(why_not(&t, &t.items[2].item_id, None).stage, Some(FellOut::Served));
        // And so do the real-time items recall read: consumed, as a summary can tell.
        let mut t = t;
        t.realtime_history = vec!["played-1".into(), below.clone()];
        let a = why_not(&t, &below, None);
        assert_eq!(a.stage, Some(FellOut::Consumed), "{a:?}");
        assert!(a.explanation.contains("since the build"), "{}", a.explanation);
        assert_eq!(why_not(&t, "played-1", None).stage, Some(FellOut::Consumed));
    }

    #[test]
    fn degraded_levels_explain_their_narrower_funnel() {
        let mut t = sample::summary_trace(7, 0);
        t.level = "fallback".into();
        let a = why_not(&t, "0000001", None);
        assert_eq!(a.stage, Some(FellOut::NotRecalled));
        assert!(a.explanation.contains("precomputed list"));
        let mut t = sample::full_trace(7, 0);
        t.level = "popular".into();
        let a = why_not(&t, "9999999", None);
        assert_eq!(a.stage, Some(FellOut::NotRecalled));
        assert!(a.explanation.contains("hot list"));
    }
}
