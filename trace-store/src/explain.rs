//! "Why was item X recommended in request R?" and "why was it not?" — answered from one
//! trace, as pure functions.
//!
//! Why-not walks the funnel in order: not in the index → not recalled → filtered as seen →
//! ranked below the cut (not sent to the model, or scored below rerank's pool, or below the
//! `n` served) → a business rule (block list) → diversity (MMR, category scatter). A summary
//! trace keeps only the served list and the seen filter's removals, so for anything else it
//! says plainly that it cannot tell and how to get a full trace.

use serde::{Deserialize, Serialize};

use crate::{CandidateFate, Detail, ItemLineage, Trace, outcome};

/// The catalogue recall can find items in, when the query service knows it.
pub trait ItemIndex: Send + Sync + 'static {
    fn contains(&self, item_id: &str) -> bool;
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

/// Where a missing item left the funnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FellOut {
    /// It was served after all.
    Served,
    NotInIndex,
    NotRecalled,
    FilteredSeen,
    RankedBelowCut,
    BusinessRule,
    Diversity,
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

/// Where `item_id` fell out of `trace`'s funnel.
pub fn why_not(trace: &Trace, item_id: &str, index: Option<&dyn ItemIndex>) -> WhyNot {
    let answer = |stage: Option<FellOut>, explanation: String, candidate: Option<&CandidateFate>| WhyNot {
        request_id: trace.request_id.clone(),
        item_id: item_id.to_string(),
        detail: trace.detail,
        stage,
        explanation,
        candidate: candidate.cloned(),
    };
    if let Some(item) = trace.items.iter().find(|i| i.item_id == item_id) {
        return answer(
            Some(FellOut::Served),
            format!("{item_id} was served at position {}", item.position + 1),
            None,
        );
    }
    if index.is_some_and(|ix| !ix.contains(item_id)) {
        return answer(
            Some(FellOut::NotInIndex),
            format!("{item_id} is not in the recall index: no channel can return it"),
            None,
        );
    }
    if trace.filtered_seen.iter().any(|s| s == item_id) {
        return answer(
            Some(FellOut::FilteredSeen),
            format!("recall found {item_id}, but the user has seen it recently: the seen filter removed it"),
            None,
        );
    }
    if trace.level == "fallback" {
        return answer(
            Some(FellOut::NotRecalled),
            format!(
                "served at the fallback level: only the precomputed list was considered, and {item_id} is not on it"
            ),
            None,
        );
    }
    if trace.detail == Detail::Summary {
        return answer(
            None,
            format!(
                "this is a summary trace: it keeps the served list and what the seen filter removed, not every \
                 candidate, so it cannot say where {item_id} fell out; send the request with \"debug\": true for a \
                 full trace"
            ),
            None,
        );
    }
    let Some(c) = trace.candidates.iter().find(|c| c.item_id == item_id) else {
        let why = match trace.level.as_str() {
            "popular" => "at the popular level only the hot list was considered".to_string(),
            _ => format!(
                "no recall channel returned it among the {} candidates",
                trace.candidates.len()
            ),
        };
        return answer(
            Some(FellOut::NotRecalled),
            format!("{item_id} was not recalled: {why}"),
            None,
        );
    };
    let score = c.rank_score.map_or(String::new(), |s| format!(" (score {s:.4})"));
    let (stage, explanation) = match c.outcome.as_str() {
        outcome::RANKED_BELOW_CUT => (
            FellOut::RankedBelowCut,
            "recalled, but below the candidates sent to the ranking model".to_string(),
        ),
        outcome::BELOW_RERANK_POOL => (
            FellOut::RankedBelowCut,
            format!("scored{score}, but below the pool rerank chooses from"),
        ),
        outcome::NOT_SERVED => (
            FellOut::RankedBelowCut,
            format!("in rerank's pool{score}, but below the items served"),
        ),
        other => match other.strip_prefix(outcome::RERANK_PREFIX) {
            Some("blocked") => (FellOut::BusinessRule, "removed by the block list".to_string()),
            Some(rule @ ("mmr" | "category_scatter")) => (
                FellOut::Diversity,
                format!("scored{score}, but the diversity rule {rule} chose other items"),
            ),
            Some(rule) => (
                FellOut::RankedBelowCut,
                format!("in rerank's pool{score}; rule {rule} applied, still below the items served"),
            ),
            None => (FellOut::RankedBelowCut, format!("left the funnel as {other}")),
        },
    };
    answer(Some(stage), format!("{item_id}: {explanation}"), Some(c))
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

    #[test]
    fn why_not_names_every_stage() {
        let index: HashSet<String> = (0..10_000).map(|i| format!("{i:07}")).collect();
        let t = sample::full_trace(7, 0);
        let ask = |t: &Trace, id: &str| why_not(t, id, Some(&index));

        assert_eq!(ask(&t, &t.items[0].item_id).stage, Some(FellOut::Served));
        assert_eq!(ask(&t, "9999999").stage, Some(FellOut::NotInIndex));
        // In the index (seen ids are ≥ 10,000: add one) and filtered.
        let seen = t.filtered_seen[0].clone();
        let mut index2 = index.clone();
        index2.insert(seen.clone());
        assert_eq!(why_not(&t, &seen, Some(&index2)).stage, Some(FellOut::FilteredSeen));
        // In the index, never a candidate.
        let recalled: HashSet<&str> = t.candidates.iter().map(|c| c.item_id.as_str()).collect();
        let absent = index.iter().find(|i| !recalled.contains(i.as_str())).unwrap();
        let a = ask(&t, absent);
        assert_eq!(a.stage, Some(FellOut::NotRecalled));
        assert!(a.explanation.contains("1000 candidates"), "{}", a.explanation);

        for (outcome, stage) in [
            (outcome::RANKED_BELOW_CUT, FellOut::RankedBelowCut),
            (outcome::BELOW_RERANK_POOL, FellOut::RankedBelowCut),
            (outcome::NOT_SERVED, FellOut::RankedBelowCut),
            ("rerank:fresh_boost", FellOut::RankedBelowCut),
            ("rerank:blocked", FellOut::BusinessRule),
            ("rerank:mmr", FellOut::Diversity),
            ("rerank:category_scatter", FellOut::Diversity),
        ] {
            let (t, id) = full_with(outcome);
            let a = ask(&t, &id);
            assert_eq!(a.stage, Some(stage), "{outcome}: {a:?}");
            assert_eq!(a.candidate.as_ref().unwrap().outcome, outcome);
            assert!(a.explanation.starts_with(&id));
        }
        let (t, id) = full_with("rerank:category_scatter");
        assert!(ask(&t, &id).explanation.contains("category_scatter"));
    }

    #[test]
    fn why_not_without_an_index_still_walks_the_trace() {
        let t = sample::full_trace(7, 0);
        assert_eq!(why_not(&t, "9999999", None).stage, Some(FellOut::NotRecalled));
        assert_eq!(
            why_not(&t, &t.filtered_seen[1], None).stage,
            Some(FellOut::FilteredSeen)
        );
    }

    #[test]
    fn a_summary_trace_says_plainly_when_it_cannot_tell() {
        let t = sample::summary_trace(7, 0);
        let below = sample::full_trace(7, 0).candidates[300].item_id.clone();
        let a = why_not(&t, &below, None);
        assert_eq!(a.stage, None);
        assert_eq!(a.detail, Detail::Summary);
        assert!(a.explanation.contains("summary trace"), "{}", a.explanation);
        assert!(a.explanation.contains("\"debug\": true"));
        // What a summary does keep still answers.
        assert_eq!(
            why_not(&t, &t.filtered_seen[0], None).stage,
            Some(FellOut::FilteredSeen)
        );
        assert_eq!(why_not(&t, &t.items[2].item_id, None).stage, Some(FellOut::Served));
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
