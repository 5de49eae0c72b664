//! Two served lists side by side: a stored request and its replay (what-if), or any two
//! stored requests. Every item either list served gets a row: where it was in each, how it
//! moved, and the stage that made the difference — for an item only one list has, the stage
//! where it fell out of the other (why-not on that trace); for an item both have, whether the
//! model ordered it differently or rerank did.
//!
//! Pure: two traces in, a [`Comparison`] out.

use serde::{Deserialize, Serialize};

use crate::explain::{self, FellOut, ItemIndex};
use crate::{ItemLineage, Trace};

/// One side of a comparison: what the request was and how it was served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Side {
    pub request_id: String,
    pub user_id: String,
    pub level: String,
    pub model_version: Option<String>,
    pub artifact_version: Option<String>,
    pub variant: String,
    /// What this request changed, when it is a what-if replay.
    pub what_if: Option<crate::WhatIf>,
    pub served: u32,
}

/// How an item's place changed from list A to list B.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Same position in both.
    Same,
    /// Higher in B (closer to the top), by `by` places.
    Up,
    Down,
    /// Only in B.
    Entered,
    /// Only in A.
    Left,
}

/// One item's row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Movement {
    pub item_id: String,
    /// 0-based positions served in A and in B.
    pub a: Option<u32>,
    pub b: Option<u32>,
    pub change: Change,
    /// Places moved (positive: up in B); 0 unless `Up` or `Down`.
    pub by: i64,
    /// The stage that made the difference: for an item one list lacks, where it fell out of
    /// that list (why-not's stage: `ranked_below_cut`, `diversity`, `business_rule`, …); for
    /// a moved item `ranking` (the model ordered it differently) or `rerank`; `None` when
    /// nothing changed or the other trace cannot tell (a summary).
    pub stage: Option<String>,
    /// A sentence for people.
    pub explanation: String,
    /// The model's score in each (when ranked).
    pub a_score: Option<f32>,
    pub b_score: Option<f32>,
}

/// Totals over the rows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub same: u32,
    pub up: u32,
    pub down: u32,
    pub entered: u32,
    pub left: u32,
    /// Items served by both.
    pub overlap: u32,
}

/// A side-by-side comparison of two traces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub a: Side,
    pub b: Side,
    /// A's served items in A's order, then those only B served in B's order.
    pub rows: Vec<Movement>,
    pub totals: Totals,
}

fn side(t: &Trace) -> Side {
    Side {
        request_id: t.request_id.clone(),
        user_id: t.user_id.clone(),
        level: t.level.clone(),
        model_version: t.model_version.clone(),
        artifact_version: t.artifact_version.clone(),
        variant: t.variant.clone(),
        what_if: t.what_if.clone(),
        served: t.items.len() as u32,
    }
}

fn fell_out_name(stage: FellOut) -> String {
    serde_json::to_value(stage)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Where an item one list lacks fell out of it: (stage, sentence).
fn missing_from(other: &Trace, item_id: &str, index: Option<&dyn ItemIndex>) -> (Option<String>, String) {
    let answer = explain::why_not(other, item_id, index);
    (answer.stage.map(fell_out_name), answer.explanation)
}

/// What moved an item both lists served.
fn moved(a: &ItemLineage, b: &ItemLineage) -> (Option<String>, String) {
    if a.position == b.position {
        return (None, format!("{}: at {} in both", a.item_id, a.position + 1));
    }
    let rule = |l: &ItemLineage| l.rerank_rule.clone().unwrap_or_else(|| "none".into());
    match (a.ranked_position, b.ranked_position) {
        (Some(ra), Some(rb)) if ra != rb => (
            Some("ranking".into()),
            format!("{}: the model ranked it {} in A and {} in B", a.item_id, ra + 1, rb + 1),
        ),
        _ if a.rerank_rule != b.rerank_rule => (
            Some("rerank".into()),
            format!(
                "{}: ranked alike; rerank's rule was {} in A and {} in B",
                a.item_id,
                rule(a),
                rule(b)
            ),
        ),
        _ => (
            Some("rerank".into()),
            format!(
                "{}: ranked alike and the same rule; the items around it changed",
                a.item_id
            ),
        ),
    }
}

/// Compares the served lists of `a` and `b` (`index`: the catalogue, so why-not can say "not
/// in the catalogue").
pub fn compare(a: &Trace, b: &Trace, index: Option<&dyn ItemIndex>) -> Comparison {
    let find = |t: &Trace, id: &str| t.items.iter().find(|i| i.item_id == id).cloned();
    let mut rows = Vec::with_capacity(a.items.len() + b.items.len());
    let mut totals = Totals::default();
    let mut a_items: Vec<&ItemLineage> = a.items.iter().collect();
    a_items.sort_by_key(|i| i.position);
    let mut b_items: Vec<&ItemLineage> = b.items.iter().collect();
    b_items.sort_by_key(|i| i.position);
    for ia in a_items {
        let row = match find(b, &ia.item_id) {
            Some(ib) => {
                totals.overlap += 1;
                let by = i64::from(ia.position) - i64::from(ib.position);
                let change = match by {
                    0 => Change::Same,
                    d if d > 0 => Change::Up,
                    _ => Change::Down,
                };
                let (stage, explanation) = moved(ia, &ib);
                Movement {
                    item_id: ia.item_id.clone(),
                    a: Some(ia.position),
                    b: Some(ib.position),
                    change,
                    by,
                    stage,
                    explanation,
                    a_score: ia.rank_score,
                    b_score: ib.rank_score,
                }
            }
            None => {
                let (stage, explanation) = missing_from(b, &ia.item_id, index);
                Movement {
                    item_id: ia.item_id.clone(),
                    a: Some(ia.position),
                    b: None,
                    change: Change::Left,
                    by: 0,
                    stage,
                    explanation: format!("not served in B: {explanation}"),
                    a_score: ia.rank_score,
                    b_score: b
                        .candidates
                        .iter()
                        .find(|c| c.item_id == ia.item_id)
                        .and_then(|c| c.rank_score),
                }
            }
        };
        rows.push(row);
    }
    for ib in b_items {
        if a.items.iter().any(|i| i.item_id == ib.item_id) {
            continue;
        }
        let (stage, explanation) = missing_from(a, &ib.item_id, index);
        rows.push(Movement {
            item_id: ib.item_id.clone(),
            a: None,
            b: Some(ib.position),
            change: Change::Entered,
            by: 0,
            stage,
            explanation: format!("not served in A: {explanation}"),
            a_score: a
                .candidates
                .iter()
                .find(|c| c.item_id == ib.item_id)
                .and_then(|c| c.rank_score),
            b_score: ib.rank_score,
        });
    }
    for r in &rows {
        match r.change {
            Change::Same => totals.same += 1,
            Change::Up => totals.up += 1,
            Change::Down => totals.down += 1,
            Change::Entered => totals.entered += 1,
            Change::Left => totals.left += 1,
        }
    }
    Comparison {
        a: side(a),
        b: side(b),
        rows,
        totals,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CandidateFate, Detail, outcome};

    fn lineage(id: &str, position: u32, ranked: Option<u32>, rule: Option<&str>) -> ItemLineage {
        ItemLineage {
            item_id: id.into(),
            position,
            sources: Vec::new(),
            recall_position: Some(position),
            rank_score: ranked.map(|r| 1.0 - r as f32 / 100.0),
            ranked_position: ranked,
            rerank_rule: rule.map(str::to_string),
            filters_passed: Vec::new(),
        }
    }

    fn fate(id: &str, outcome: &str, rank: Option<u32>) -> CandidateFate {
        CandidateFate {
            item_id: id.into(),
            sources: Vec::new(),
            rank_score: rank.map(|r| 1.0 - r as f32 / 100.0),
            prior: None,
            recall_position: rank,
            ranked_position: rank,
            displaced_by: None,
            outcome: outcome.into(),
        }
    }

    fn trace(id: &str, items: Vec<ItemLineage>, candidates: Vec<CandidateFate>) -> Trace {
        let mut t = crate::sample::summary_trace(1, 0);
        t.request_id = id.into();
        t.detail = if candidates.is_empty() {
            Detail::Summary
        } else {
            Detail::Full
        };
        t.items = items;
        t.candidates = candidates;
        t.filtered_seen.clear();
        t.consumed.clear();
        t.cuts.clear();
        t.funnel = None;
        t
    }

    #[test]
    fn every_served_item_gets_a_row_with_its_movement() {
        // A: x y z w; B: y x v z (w left, v entered; x down 1, y up 1, z down 1).
        let a = trace(
            "a",
            vec![
                lineage("x", 0, Some(0), None),
                lineage("y", 1, Some(1), None),
                lineage("z", 2, Some(2), Some("mmr")),
                lineage("w", 3, Some(3), None),
            ],
            vec![
                fate("x", outcome::SERVED, Some(0)),
                fate("y", outcome::SERVED, Some(1)),
                fate("z", outcome::SERVED, Some(2)),
                fate("w", outcome::SERVED, Some(3)),
                fate("v", "rerank:mmr", Some(4)),
            ],
        );
        let b = trace(
            "b",
            vec![
                lineage("y", 0, Some(0), None),
                lineage("x", 1, Some(1), None),
                lineage("v", 2, Some(3), None),
                lineage("z", 3, Some(2), None),
            ],
            vec![
                fate("y", outcome::SERVED, Some(0)),
                fate("x", outcome::SERVED, Some(1)),
                fate("z", outcome::SERVED, Some(2)),
                fate("v", outcome::SERVED, Some(3)),
                fate("w", outcome::RANKED_BELOW_CUT, Some(30)),
            ],
        );
        let c = compare(&a, &b, None);
        let row = |id: &str| c.rows.iter().find(|r| r.item_id == id).unwrap().clone();
        assert_eq!(
            c.rows.iter().map(|r| r.item_id.as_str()).collect::<Vec<_>>(),
            ["x", "y", "z", "w", "v"]
        );
        let x = row("x");
        assert_eq!((x.a, x.b, x.change, x.by), (Some(0), Some(1), Change::Down, -1));
        assert_eq!(x.stage.as_deref(), Some("ranking"), "{}", x.explanation);
        assert!(
            x.explanation.contains("ranked it 1 in A and 2 in B"),
            "{}",
            x.explanation
        );
        assert_eq!((row("y").change, row("y").by), (Change::Up, 1));
        // z: ranked alike (2), rule mmr in A, none in B.
        let z = row("z");
        assert_eq!((z.change, z.stage.as_deref()), (Change::Down, Some("rerank")));
        assert!(z.explanation.contains("mmr in A and none in B"), "{}", z.explanation);
        // w left: B's why-not says it ranked below the cut; v entered: A's says diversity.
        let w = row("w");
        assert_eq!((w.a, w.b, w.change), (Some(3), None, Change::Left));
        assert_eq!(w.stage.as_deref(), Some("ranked_below_cut"), "{}", w.explanation);
        assert_eq!(w.b_score, Some(0.7));
        let v = row("v");
        assert_eq!((v.a, v.b, v.change), (None, Some(2), Change::Entered));
        assert_eq!(v.stage.as_deref(), Some("diversity"), "{}", v.explanation);
        assert!(v.explanation.starts_with("not served in A: "), "{}", v.explanation);
        assert_eq!(
            c.totals,
            Totals {
                same: 0,
                up: 1,
                down: 2,
                entered: 1,
                left: 1,
                overlap: 3
            }
        );
        assert_eq!((c.a.request_id.as_str(), c.b.served), ("a", 4));
    }

    #[test]
    fn identical_lists_are_all_same_and_a_summary_cannot_tell() {
        let items = vec![lineage("x", 0, Some(0), None), lineage("y", 1, Some(1), None)];
        let a = trace("a", items.clone(), Vec::new());
        let c = compare(&a, &a, None);
        assert!(
            c.rows
                .iter()
                .all(|r| r.change == Change::Same && r.stage.is_none() && r.by == 0)
        );
        assert_eq!((c.totals.same, c.totals.overlap), (2, 2));
        // B (a summary) served something else: why x left cannot be told from B.
        let b = trace("b", vec![lineage("q", 0, Some(0), None)], Vec::new());
        let c = compare(&a, &b, None);
        let x = c.rows.iter().find(|r| r.item_id == "x").unwrap();
        assert_eq!((x.change, x.stage.clone()), (Change::Left, None), "{}", x.explanation);
        assert_eq!(c.totals.overlap, 0);
        assert_eq!(c.rows.len(), 3);
    }

    #[test]
    fn positions_come_from_the_items_not_their_storage_order() {
        let a = trace(
            "a",
            vec![lineage("y", 1, Some(1), None), lineage("x", 0, Some(0), None)],
            Vec::new(),
        );
        let b = trace(
            "b",
            vec![lineage("x", 0, Some(0), None), lineage("y", 1, Some(1), None)],
            Vec::new(),
        );
        let c = compare(&a, &b, None);
        assert_eq!(c.rows[0].item_id, "x");
        assert!(c.rows.iter().all(|r| r.change == Change::Same));
    }
}
