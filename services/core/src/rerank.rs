//! Rerank: from ranked candidates to the served list, recording what each rule did.
//!
//! Order of rules: the block list removes items; fresh items get a score boost; MMR picks `k`
//! items trading score against genre similarity to what is already picked (the scores
//! min–max scaled over the items it chooses from, so `mmr_lambda` means the same whatever the
//! scorer's scale: a ranker's probabilities of 0.01–0.2, a hot list's counts); category scatter
//! reorders so no genre holds more than `max` of any `window` consecutive slots; pins put
//! items at fixed positions. Every item that left or moved gets an [`Action`] with its
//! position before and after — the trace's "what rerank did".
//!
//! Pure functions; `recstack_services::rerank` serves them over gRPC.

use std::collections::HashSet;

use rustc_hash::{FxHashMap, FxHashSet};

pub use crate::hash::ab_bucket;

/// A ranked candidate, borrowing its id and genres from the request and the catalogue.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate<'a> {
    pub id: &'a str,
    /// The ranking model's score.
    pub score: f32,
    pub genres: &'a [String],
    /// Recent enough to be boosted.
    pub fresh: bool,
}

/// What rerank does.
#[derive(Clone, Debug, PartialEq)]
pub struct RerankConfig {
    /// Items served.
    pub k: usize,
    /// MMR trade-off: 1.0 is pure score, 0.0 pure diversity. The score side is the candidate's
    /// score scaled to 0–1 over the candidates MMR chooses from (see [`relevance`]).
    pub mmr_lambda: f32,
    /// At most `scatter_max` items of one genre in any `scatter_window` consecutive slots.
    pub scatter_max: usize,
    pub scatter_window: usize,
    /// Items never served.
    pub blocked: HashSet<String>,
    /// Score multiplier for fresh items.
    pub fresh_boost: f32,
    /// (item, 0-based position): served at that position if it is a candidate.
    pub pins: Vec<(String, usize)>,
}

/// MMR's trade-off when nothing else is set: the most diverse λ that keeps 99 % of the full
/// level's relevance-only NDCG@20 on the holdout (`recstack eval --mmr-lambdas
/// 0.95,0.9,0.85,0.8,0.7,0.6,0.5`; `eval::choose_mmr_lambda`; BENCHMARKS.md).
pub const DEFAULT_MMR_LAMBDA: f32 = 0.9;

/// The next more diverse λ of that sweep: the default experiment's second arm.
pub const DIVERSE_MMR_LAMBDA: f32 = 0.85;

/// Category scatter when nothing else is set: at most `.0` items of a genre in any `.1`
/// consecutive slots. Of the settings priced at the default λ, the one with the fewest
/// neighbouring items of a genre that keeps 99 % of the full level's NDCG@20 without scatter (`recstack eval --scatters
/// 4/5,3/4,2/3,3/5,3/6,2/4`; `eval::choose_scatter`; BENCHMARKS.md). 2 in 4, set by hand
/// before, cost 1.3–1.4 %.
pub const DEFAULT_SCATTER: (usize, usize) = (2, 3);

impl Default for RerankConfig {
    fn default() -> Self {
        Self {
            k: 20,
            mmr_lambda: DEFAULT_MMR_LAMBDA,
            scatter_max: DEFAULT_SCATTER.0,
            scatter_window: DEFAULT_SCATTER.1,
            blocked: HashSet::new(),
            fresh_boost: 1.2,
            pins: Vec::new(),
        }
    }
}

/// The rule behind an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    Blocked,
    FreshBoost,
    Mmr,
    Scatter,
    Pin,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::Blocked => "blocked",
            Rule::FreshBoost => "fresh_boost",
            Rule::Mmr => "mmr",
            Rule::Scatter => "category_scatter",
            Rule::Pin => "pin",
        }
    }
}

/// What happened to one item: positions are 0-based; `after: None` means it was not served.
#[derive(Clone, Debug, PartialEq)]
pub struct Action<'a> {
    pub id: &'a str,
    pub before: usize,
    pub after: Option<usize>,
    /// The last rule that changed the item's fate.
    pub rule: Rule,
    /// For an item a diversity rule left out: the item served in its place (the one that
    /// took the slot its score would have earned).
    pub displaced_by: Option<&'a str>,
}

/// Genre-set Jaccard similarity.
pub fn similarity(a: &[String], b: &[String]) -> f32 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let shared = a.iter().filter(|g| b.contains(g)).count();
    let union = a.len() + b.len() - shared;
    shared as f32 / union as f32
}

/// The candidates' genre sets as bit masks when the request has at most 64 distinct genres
/// (Jaccard by popcount), else the lists themselves.
enum GenreSets<'a> {
    Masks(Vec<u64>),
    Lists(&'a [Candidate<'a>]),
}

impl<'a> GenreSets<'a> {
    fn new(ranked: &'a [Candidate<'a>]) -> Self {
        let mut bits: FxHashMap<&str, u32> = FxHashMap::default();
        let mut masks = Vec::with_capacity(ranked.len());
        for c in ranked {
            let mut m = 0u64;
            for g in c.genres {
                let next = bits.len() as u32;
                let bit = *bits.entry(g.as_str()).or_insert(next);
                if bit >= 64 {
                    return GenreSets::Lists(ranked);
                }
                m |= 1 << bit;
            }
            masks.push(m);
        }
        GenreSets::Masks(masks)
    }

    fn similarity(&self, a: usize, b: usize) -> f32 {
        match self {
            GenreSets::Masks(m) => {
                let (a, b) = (m[a], m[b]);
                if a == 0 || b == 0 {
                    return 0.0;
                }
                (a & b).count_ones() as f32 / (a | b).count_ones() as f32
            }
            GenreSets::Lists(ranked) => similarity(ranked[a].genres, ranked[b].genres),
        }
    }

    /// Whether candidate `i` keeps every one of its genres under `max` items in `window`.
    fn fits(&self, i: usize, window: &[usize], max: usize) -> bool {
        match self {
            GenreSets::Masks(m) => {
                let mut genres = m[i];
                while genres != 0 {
                    let genre = genres & genres.wrapping_neg();
                    if window.iter().filter(|&&o| m[o] & genre != 0).count() >= max {
                        return false;
                    }
                    genres &= genres - 1;
                }
                true
            }
            GenreSets::Lists(ranked) => ranked[i]
                .genres
                .iter()
                .all(|g| window.iter().filter(|&&o| ranked[o].genres.contains(g)).count() < max),
        }
    }
}

/// MMR's score side: `score` min–max scaled to 0–1 over the items in `among` (1 for all when
/// they tie), indexed like `score`. Raw scores would make `mmr_lambda` depend on the scorer:
/// against a genre similarity of up to 1, a ranker's probabilities (differences of a few
/// hundredths) would leave MMR choosing by diversity alone, and a hot list's counts (differences
/// of tens) by score alone.
pub fn relevance(score: &[f32], among: &[usize]) -> Vec<f32> {
    let (lo, hi) = among
        .iter()
        .map(|&i| score[i])
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), s| (lo.min(s), hi.max(s)));
    let span = hi - lo;
    score
        .iter()
        .map(|&s| {
            if span > 0.0 && span.is_finite() {
                ((s - lo) / span).clamp(0.0, 1.0)
            } else {
                1.0
            }
        })
        .collect()
}

/// Reranks `ranked` (best first). Returns the served list and the actions.
pub fn rerank<'a>(ranked: &[Candidate<'a>], cfg: &RerankConfig) -> (Vec<Candidate<'a>>, Vec<Action<'a>>) {
    // Why each item is where it ends up, and what took its place, by input position.
    let mut rule: Vec<Option<Rule>> = vec![None; ranked.len()];
    let mut displaced_by: Vec<Option<usize>> = vec![None; ranked.len()];

    // 1. Block list.
    let mut pool: Vec<usize> = Vec::with_capacity(ranked.len());
    for (i, c) in ranked.iter().enumerate() {
        if cfg.blocked.contains(c.id) {
            rule[i] = Some(Rule::Blocked);
        } else {
            pool.push(i);
        }
    }

    // 2. Fresh boost (changes the scores MMR sees).
    let score: Vec<f32> = ranked
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if c.fresh && cfg.fresh_boost != 1.0 && rule[i].is_none() {
                rule[i] = Some(Rule::FreshBoost);
                c.score * cfg.fresh_boost
            } else {
                c.score
            }
        })
        .collect();

    // 3. MMR selection of k (pinned items are placed later, so they do not take MMR slots).
    let pinned: FxHashSet<&str> = cfg.pins.iter().map(|(id, _)| id.as_str()).collect();
    let mut remaining: Vec<usize> = pool
        .iter()
        .copied()
        .filter(|&i| !pinned.contains(ranked[i].id))
        .collect();
    let n_pins = pool.iter().filter(|&&i| pinned.contains(ranked[i].id)).count();
    let slots = cfg.k.saturating_sub(n_pins);
    let mut picked: Vec<usize> = Vec::with_capacity(slots);
    // Each remaining item's highest similarity to the picked ones, updated with each pick
    // (O(k·n) similarities instead of O(k²·n)).
    let sets = GenreSets::new(ranked);
    let rel = relevance(&score, &remaining);
    let mut max_sim: Vec<f32> = vec![0.0; remaining.len()];
    while picked.len() < slots && !remaining.is_empty() {
        let (best_pos, _) = remaining
            .iter()
            .zip(&max_sim)
            .map(|(&i, &sim)| cfg.mmr_lambda * rel[i] - (1.0 - cfg.mmr_lambda) * sim)
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |acc, x| if x.1 > acc.1 { x } else { acc });
        let p = remaining.remove(best_pos);
        max_sim.remove(best_pos);
        for (&i, sim) in remaining.iter().zip(max_sim.iter_mut()) {
            *sim = sim.max(sets.similarity(i, p));
        }
        picked.push(p);
    }
    // Items MMR ranked differently from plain score order, or dropped, are MMR's doing.
    let mut by_score = pool.clone();
    by_score.retain(|i| !pinned.contains(ranked[*i].id));
    by_score.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
    for (slot, &i) in picked.iter().enumerate() {
        if by_score.get(slot) != Some(&i) {
            rule[i] = Some(Rule::Mmr);
        }
    }
    for &i in &remaining {
        if rule[i].is_none() || rule[i] == Some(Rule::FreshBoost) {
            rule[i] = Some(Rule::Mmr);
        }
    }
    // Pair the items score alone would have picked but MMR did not with the items MMR picked
    // instead, each list in its own order: the first left out was displaced by the first
    // let in, and so on.
    let by_score_top = &by_score[..slots.min(by_score.len())];
    let let_in: Vec<usize> = picked.iter().copied().filter(|i| !by_score_top.contains(i)).collect();
    let left_out = by_score_top.iter().copied().filter(|i| !picked.contains(i));
    for (out, instead) in left_out.zip(let_in) {
        displaced_by[out] = Some(instead);
    }

    // 4. Category scatter: greedily fill slots with the first picked item that keeps every
    //    genre under the cap in the trailing window; when no picked item fits, the best item
    //    MMR left out that fits takes the slot (and the last picked item leaves the list);
    //    only when nothing fits anywhere is the rule relaxed.
    let mut order: Vec<usize> = Vec::with_capacity(picked.len());
    let mut queue = picked.clone();
    let mut reserve: Vec<usize> = remaining.clone();
    reserve.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
    while !queue.is_empty() {
        let start = order.len().saturating_sub(cfg.scatter_window.saturating_sub(1));
        let fits = |i: usize| sets.fits(i, &order[start..], cfg.scatter_max);
        if let Some(pos) = queue.iter().position(|&i| fits(i)) {
            let i = queue.remove(pos);
            if pos > 0 {
                rule[i] = Some(Rule::Scatter);
            }
            order.push(i);
        } else if let Some(pos) = reserve.iter().position(|&i| fits(i)) {
            let i = reserve.remove(pos);
            rule[i] = Some(Rule::Scatter);
            order.push(i);
            if let Some(out) = queue.pop() {
                rule[out] = Some(Rule::Scatter);
                displaced_by[out] = Some(i);
            }
        } else {
            order.push(queue.remove(0));
        }
    }
    for (slot, &i) in order.iter().enumerate() {
        if picked.get(slot) != Some(&i) && rule[i].is_none() {
            rule[i] = Some(Rule::Scatter);
        }
    }

    // 5. Pins, in position order.
    let mut pins: Vec<(usize, usize)> = cfg
        .pins
        .iter()
        .filter_map(|(id, at)| pool.iter().find(|&&i| ranked[i].id == id).map(|&i| (*at, i)))
        .collect();
    pins.sort();
    for (at, i) in pins {
        order.insert(at.min(order.len()), i);
        rule[i] = Some(Rule::Pin);
    }
    order.truncate(cfg.k);

    let served: Vec<Candidate> = order
        .iter()
        .map(|&i| Candidate {
            score: score[i],
            ..ranked[i]
        })
        .collect();
    let mut actions = Vec::new();
    for (before, c) in ranked.iter().enumerate() {
        let after = order.iter().position(|&i| i == before);
        if let Some(r) = rule[before]
            && (after != Some(before) || r == Rule::FreshBoost || r == Rule::Pin)
        {
            let diversity = after.is_none() && matches!(r, Rule::Mmr | Rule::Scatter);
            actions.push(Action {
                id: c.id,
                before,
                after,
                rule: r,
                displaced_by: displaced_by[before].filter(|_| diversity).map(|i| ranked[i].id),
            });
        }
    }
    (served, actions)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A candidate for a test (its id and genres leak: they live as long as the test binary).
    fn c(id: &str, score: f32, genres: &[&str]) -> Candidate<'static> {
        Candidate {
            id: String::from(id).leak(),
            score,
            genres: genres.iter().map(|g| g.to_string()).collect::<Vec<_>>().leak(),
            fresh: false,
        }
    }

    fn ids<'a>(list: &[Candidate<'a>]) -> Vec<&'a str> {
        list.iter().map(|c| c.id).collect()
    }

    fn plain(k: usize) -> RerankConfig {
        RerankConfig {
            k,
            mmr_lambda: 1.0,
            scatter_max: 100,
            scatter_window: 1,
            fresh_boost: 1.0,
            ..Default::default()
        }
    }

    #[test]
    fn pure_score_keeps_the_ranking_and_records_nothing() {
        let ranked = vec![c("a", 0.9, &["X"]), c("b", 0.8, &["X"]), c("c", 0.7, &["Y"])];
        let (served, actions) = rerank(&ranked, &plain(2));
        assert_eq!(ids(&served), ["a", "b"]);
        assert_eq!(
            actions,
            vec![Action {
                id: "c",
                before: 2,
                after: None,
                rule: Rule::Mmr,
                displaced_by: None,
            }]
        );
    }

    #[test]
    fn mmr_trades_score_for_diversity() {
        let ranked = vec![c("a", 1.0, &["X"]), c("b", 0.95, &["X"]), c("c", 0.7, &["Y"])];
        let cfg = RerankConfig {
            mmr_lambda: 0.5,
            ..plain(2)
        };
        let (served, actions) = rerank(&ranked, &cfg);
        assert_eq!(ids(&served), ["a", "c"], "c's genre is new, b repeats a's");
        assert!(actions.contains(&Action {
            id: "b",
            before: 1,
            after: None,
            rule: Rule::Mmr,
            displaced_by: Some("c"),
        }));
        assert!(actions.contains(&Action {
            id: "c",
            before: 2,
            after: Some(1),
            rule: Rule::Mmr,
            displaced_by: None,
        }));
    }

    #[test]
    fn mmr_chooses_the_same_whatever_the_scores_scale() {
        // A ranker's probabilities, the same order times 10,000 (a hot list's counts), and
        // shifted: one served list. The second X item is worth its genre repeat at this lambda.
        let scores = [0.20, 0.19, 0.12, 0.05, 0.04];
        let genres: [&[&str]; 5] = [&["X"], &["X"], &["Y"], &["X", "Y"], &["Z"]];
        let cfg = RerankConfig {
            mmr_lambda: 0.7,
            ..plain(4)
        };
        let served = |f: fn(f32) -> f32| {
            let ranked: Vec<Candidate> = (0..5).map(|n| c(&format!("i{n}"), f(scores[n]), genres[n])).collect();
            ids(&rerank(&ranked, &cfg).0)
        };
        let probabilities = served(|s| s);
        assert_eq!(
            probabilities,
            ["i0", "i1", "i2", "i4"],
            "score leads, Z's novelty beats a repeat of X and Y"
        );
        assert_eq!(served(|s| s * 10_000.0), probabilities);
        assert_eq!(served(|s| s + 3.0), probabilities);
    }

    #[test]
    fn relevance_scales_the_chosen_items_scores_to_0_1() {
        let score = [4.0, 2.0, 3.0, 9.0];
        // Item 3 is not among those MMR chooses from (blocked, or pinned): it does not set the scale.
        assert_eq!(relevance(&score, &[0, 1, 2]), [1.0, 0.0, 0.5, 1.0]);
        assert_eq!(relevance(&score, &[1]), [1.0; 4], "one item: nothing to scale by");
        assert_eq!(relevance(&[0.5, 0.5], &[0, 1]), [1.0, 1.0], "ties");
        assert!(relevance(&[], &[]).is_empty());
    }

    #[test]
    fn scatter_caps_a_genre_per_window() {
        let ranked = vec![
            c("x1", 0.9, &["X"]),
            c("x2", 0.8, &["X"]),
            c("x3", 0.7, &["X"]),
            c("y1", 0.6, &["Y"]),
            c("y2", 0.5, &["Y"]),
        ];
        let cfg = RerankConfig {
            scatter_max: 2,
            scatter_window: 3,
            ..plain(5)
        };
        let (served, actions) = rerank(&ranked, &cfg);
        assert_eq!(ids(&served), ["x1", "x2", "y1", "x3", "y2"]);
        for w in served.windows(3) {
            for g in ["X", "Y"] {
                assert!(
                    w.iter().filter(|c| c.genres.iter().any(|x| x == g)).count() <= 2,
                    "{:?}",
                    ids(w)
                );
            }
        }
        assert!(actions.contains(&Action {
            id: "y1",
            before: 3,
            after: Some(2),
            rule: Rule::Scatter,
            displaced_by: None,
        }));
        assert!(actions.contains(&Action {
            id: "x3",
            before: 2,
            after: Some(3),
            rule: Rule::Scatter,
            displaced_by: None,
        }));
    }

    #[test]
    fn scatter_relaxes_when_nothing_fits() {
        let ranked = vec![c("x1", 0.9, &["X"]), c("x2", 0.8, &["X"]), c("x3", 0.7, &["X"])];
        let cfg = RerankConfig {
            scatter_max: 1,
            scatter_window: 2,
            ..plain(3)
        };
        let (served, _) = rerank(&ranked, &cfg);
        assert_eq!(served.len(), 3, "a full list beats a perfectly scattered short one");
    }

    #[test]
    fn block_boost_and_pin() {
        let mut fresh = c("new", 0.5, &["Y"]);
        fresh.fresh = true;
        let ranked = vec![
            c("a", 0.9, &["X"]),
            c("bad", 0.85, &["X"]),
            c("b", 0.55, &["Z"]),
            fresh,
            c("promo", 0.1, &["W"]),
        ];
        let cfg = RerankConfig {
            blocked: HashSet::from(["bad".to_string()]),
            fresh_boost: 1.2,
            pins: vec![("promo".into(), 0)],
            ..plain(4)
        };
        let (served, actions) = rerank(&ranked, &cfg);
        assert_eq!(
            ids(&served),
            ["promo", "a", "new", "b"],
            "pinned first; boosted 0.6 passes 0.55"
        );
        assert!(served.iter().all(|c| c.id != "bad"));
        assert!(actions.contains(&Action {
            id: "bad",
            before: 1,
            after: None,
            rule: Rule::Blocked,
            displaced_by: None,
        }));
        assert!(actions.contains(&Action {
            id: "promo",
            before: 4,
            after: Some(0),
            rule: Rule::Pin,
            displaced_by: None,
        }));
        assert!(actions.iter().any(|a| a.id == "new" && a.after == Some(2)));
        assert!((served[2].score - 0.6).abs() < 1e-6);
    }

    #[test]
    fn scatter_pulls_in_items_mmr_left_out_when_the_picked_ones_cannot_keep_the_rule() {
        let ranked = vec![
            c("x1", 1.0, &["X"]),
            c("x2", 0.9, &["X"]),
            c("x3", 0.8, &["X"]),
            c("x4", 0.7, &["X"]),
            c("y1", 0.2, &["Y"]),
            c("y2", 0.1, &["Y"]),
        ];
        let cfg = RerankConfig {
            scatter_max: 2,
            scatter_window: 4,
            ..plain(4)
        };
        let (served, actions) = rerank(&ranked, &cfg);
        assert_eq!(ids(&served), ["x1", "x2", "y1", "y2"]);
        // Each X left out names the Y that took its slot.
        for (id, before, after, displaced_by) in [
            ("y1", 4, Some(2), None),
            ("y2", 5, Some(3), None),
            ("x3", 2, None, Some("y2")),
            ("x4", 3, None, Some("y1")),
        ] {
            assert!(
                actions.contains(&Action {
                    id,
                    before,
                    after,
                    rule: Rule::Scatter,
                    displaced_by,
                }),
                "{id}: {actions:?}"
            );
        }
    }

    #[test]
    fn genre_masks_give_the_same_similarity_and_scatter_decisions_as_the_lists() {
        let names = ["A", "B", "C", "D", "E"];
        let ranked: Vec<Candidate> = (0..32)
            .map(|i: usize| {
                let genres: Vec<&str> = names
                    .iter()
                    .enumerate()
                    .filter(|(b, _)| i >> b & 1 == 1)
                    .map(|(_, g)| *g)
                    .collect();
                c(&i.to_string(), 1.0, &genres)
            })
            .collect();
        let sets = GenreSets::new(&ranked);
        assert!(matches!(sets, GenreSets::Masks(_)));
        for a in 0..ranked.len() {
            for b in 0..ranked.len() {
                assert_eq!(
                    sets.similarity(a, b),
                    similarity(ranked[a].genres, ranked[b].genres),
                    "{a} {b}"
                );
            }
        }
        // And the same scatter decisions: every candidate against windows of 0–3 others.
        let lists = GenreSets::Lists(&ranked);
        for i in 0..ranked.len() {
            for start in 0..ranked.len() - 3 {
                for len in 0..=3 {
                    let window: Vec<usize> = (start..start + len).map(|o| (o * 7 + 3) % ranked.len()).collect();
                    for max in 1..=3 {
                        assert_eq!(
                            sets.fits(i, &window, max),
                            lists.fits(i, &window, max),
                            "{i} {window:?} {max}"
                        );
                    }
                }
            }
        }
        // More than 64 distinct genres: the lists are compared directly.
        let many: Vec<Candidate> = (0..70).map(|i| c(&i.to_string(), 1.0, &[&format!("g{i}")])).collect();
        let sets = GenreSets::new(&many);
        assert!(matches!(sets, GenreSets::Lists(_)));
        assert_eq!(sets.similarity(0, 0), 1.0);
        assert_eq!(sets.similarity(0, 1), 0.0);
    }

    #[test]
    fn similarity_is_jaccard() {
        let s = |a: &[&str], b: &[&str]| {
            similarity(
                &a.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
                &b.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(s(&["A", "B"], &["B", "C"]), 1.0 / 3.0);
        assert_eq!(s(&["A"], &["A"]), 1.0);
        assert_eq!(s(&[], &["A"]), 0.0);
    }
}
