//! `recstack eval`: NDCG@20, recall@20 and @200, catalogue coverage, novelty and genres per list on
//! the held-out ratings (each user's most recent ones), with 95 % bootstrap intervals, and
//! each list's ratio to the baseline (recency-weighted popularity). This module scores any
//! list per user and produces recall's own (each channel, the merged set, the baselines); the
//! CLI adds the lists the gateway serves at each level.

use std::collections::{BTreeMap, HashMap, HashSet};

use indicatif::ProgressBar;
use rayon::prelude::*;

use crate::build::Artifacts;
use recstack_core::artifacts::Rating;
use recstack_core::recall::{self, Channel};

/// Recall@k: the share of the held-out items found in the top k.
pub fn recall_at(ranked: &[u32], truth: &HashSet<u32>, k: usize) -> f64 {
    if truth.is_empty() {
        return 0.0;
    }
    ranked.iter().take(k).filter(|i| truth.contains(i)).count() as f64 / truth.len() as f64
}

/// NDCG@k with binary relevance.
pub fn ndcg_at(ranked: &[u32], truth: &HashSet<u32>, k: usize) -> f64 {
    ndcg_of_hits(ranked.iter().map(|i| truth.contains(i)), truth.len(), k)
}

/// NDCG@k with binary relevance, from whether each ranked item is relevant (best first) and
/// how many relevant items there are in all (ranked or not).
pub fn ndcg_of_hits(hits: impl IntoIterator<Item = bool>, relevant: usize, k: usize) -> f64 {
    let dcg: f64 = hits
        .into_iter()
        .take(k)
        .enumerate()
        .filter(|(_, hit)| *hit)
        .map(|(r, _)| 1.0 / (r as f64 + 2.0).log2())
        .sum();
    let ideal: f64 = (0..relevant.min(k)).map(|r| 1.0 / (r as f64 + 2.0).log2()).sum();
    if ideal == 0.0 { 0.0 } else { dcg / ideal }
}

/// Each evaluated user's held-out items, users in id order.
pub struct Truth {
    pub users: Vec<u32>,
    pub items: Vec<HashSet<u32>>,
}

impl Truth {
    /// The held-out ratings of the artifacts, by user.
    pub fn of(a: &Artifacts) -> Self {
        let mut by_user: BTreeMap<u32, HashSet<u32>> = BTreeMap::new();
        for r in &a.holdout {
            by_user.entry(r.user).or_default().insert(r.item);
        }
        let (users, items) = by_user.into_iter().unzip();
        Self { users, items }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// The replay eval's split of the holdout: each user with at least two held-out ratings
/// engages, in time order, with the earlier half of them (rounded down, at least one) after
/// the build, and is then judged on the rest, which their lists must find.
pub struct Replay {
    /// Each user's replayed items, oldest first (`events[k]` for `truth.users[k]`).
    pub events: Vec<Vec<u32>>,
    /// The items left to find, per user, users in id order.
    pub truth: Truth,
}

impl Replay {
    /// Splits `holdout` by user and time (ties broken by item, as the time split does).
    pub fn of(holdout: &[Rating]) -> Self {
        let mut by_user: BTreeMap<u32, Vec<&Rating>> = BTreeMap::new();
        for r in holdout {
            by_user.entry(r.user).or_default().push(r);
        }
        let (mut events, mut users, mut items) = (Vec::new(), Vec::new(), Vec::new());
        for (user, mut rs) in by_user {
            rs.sort_by_key(|r| (r.ts, r.item));
            rs.dedup_by_key(|r| r.item);
            if rs.len() < 2 {
                continue;
            }
            let (before, after) = rs.split_at(rs.len() / 2);
            let replayed: Vec<u32> = before.iter().map(|r| r.item).collect();
            let left: HashSet<u32> = after.iter().map(|r| r.item).filter(|i| !replayed.contains(i)).collect();
            if left.is_empty() {
                continue;
            }
            users.push(user);
            events.push(replayed);
            items.push(left);
        }
        Self {
            events,
            truth: Truth { users, items },
        }
    }

    /// The user's replayed items as the stream keeps them: newest first.
    pub fn recent(&self, k: usize) -> Vec<u32> {
        self.events[k].iter().rev().copied().collect()
    }
}

/// The baseline of a replay: the hot list minus each user's history and replayed items
/// (recency-weighted popularity, minus what the user has seen), 200 long.
pub fn replay_baseline(a: &Artifacts, replay: &Replay) -> Vec<Vec<u32>> {
    replay
        .truth
        .users
        .par_iter()
        .enumerate()
        .map(|(k, &user)| {
            let recent = replay.recent(k);
            let h = recall::UserHistory::live(a, user, &recent).unwrap_or_else(|| recall::UserHistory::new(a, user));
            recall::channel_for(a, &h, Channel::Hot, 200)
                .items
                .iter()
                .map(|x| x.0)
                .collect()
        })
        .collect()
}

/// A mean over users with its 95 % bootstrap interval (percentiles of the resampled means).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
}

impl Estimate {
    /// Whether this interval lies wholly above `other`'s.
    pub fn above(&self, other: &Estimate) -> bool {
        self.low > other.high
    }
}

impl std::fmt::Display for Estimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.4} [{:.4}, {:.4}]", self.mean, self.low, self.high)
    }
}

/// The same bootstrap resamples of the users for every list, so lists are compared on the
/// same draws (a paired bootstrap): `weights[b][u]` is how often user `u` was drawn in
/// resample `b`.
pub struct Resamples {
    weights: Vec<Vec<u16>>,
}

impl Resamples {
    /// `count` resamples of `users` users, from a fixed seed (the tables are reproducible).
    pub fn new(users: usize, count: usize, seed: u64) -> Self {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let weights = (0..count)
            .map(|_| {
                let mut w = vec![0u16; users];
                for _ in 0..users {
                    w[rng.gen_range(0..users)] += 1;
                }
                w
            })
            .collect();
        Self { weights }
    }

    /// The mean of `values` (one per user) and its 95 % percentile interval.
    pub fn estimate(&self, values: &[f64]) -> Estimate {
        self.ratio(values, None)
    }

    /// Like [`estimate`](Self::estimate), of `mean(values) / mean(base)` when `base` is given
    /// (each resample's ratio: the interval of a relative difference).
    pub fn ratio(&self, values: &[f64], base: Option<&[f64]>) -> Estimate {
        let n = values.len().max(1) as f64;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / n;
        let of = |num: f64, den: Option<f64>| match den {
            Some(d) if d > 0.0 => num / d,
            Some(_) => f64::NAN,
            None => num,
        };
        let point = of(mean(values), base.map(mean));
        let weighted = |w: &[u16], v: &[f64]| w.iter().zip(v).map(|(&w, &x)| f64::from(w) * x).sum::<f64>() / n;
        let mut draws: Vec<f64> = self
            .weights
            .par_iter()
            .map(|w| of(weighted(w, values), base.map(|b| weighted(w, b))))
            // A resample whose base mean is 0 has no ratio.
            .filter(|d| d.is_finite())
            .collect();
        draws.sort_by(f64::total_cmp);
        if draws.is_empty() {
            return Estimate {
                mean: point,
                low: point,
                high: point,
            };
        }
        let at = |q: f64| draws[((q * (draws.len() - 1) as f64).round() as usize).min(draws.len() - 1)];
        Estimate {
            mean: point,
            low: at(0.025),
            high: at(0.975),
        }
    }
}

/// One list's per-user scores (in [`Truth`]'s user order) and its catalogue-level measures.
#[derive(Clone, Debug)]
pub struct Scored {
    pub name: String,
    pub ndcg_20: Vec<f64>,
    pub recall_20: Vec<f64>,
    /// Only for lists of 200 or more (recall's channels and merge); served lists are 20 long.
    pub recall_200: Option<Vec<f64>>,
    /// Distinct items in the users' top 20s over the catalogue's items.
    pub coverage: f64,
    /// Mean self-information of the top-20 items, `-log2(share of users who rated it)`:
    /// higher is less obvious.
    pub novelty: f64,
    /// Intra-list diversity: the mean number of distinct genres in a user's top 20.
    pub genres_20: f64,
    /// Runs of a genre: the share of neighbouring items in the users' top 20s that share a
    /// genre (what category scatter spreads out).
    pub alike_neighbours: f64,
}

/// What coverage and novelty are measured against: the catalogue's size and how many users
/// rated each item in training.
pub struct Catalogue {
    pub items: usize,
    pub users: usize,
    pub raters: Vec<u32>,
    /// Each item's genres as bits (the first 64 genres seen; MovieTweetings has 28).
    pub genre_bits: Vec<u64>,
}

impl Catalogue {
    pub fn of(a: &Artifacts) -> Self {
        let mut raters = vec![0u32; a.items.len()];
        for h in &a.history {
            for &i in h {
                raters[i as usize] += 1;
            }
        }
        let mut bit_of: BTreeMap<&str, u32> = BTreeMap::new();
        let genre_bits = a
            .items
            .iter()
            .map(|item| {
                item.genres.iter().fold(0u64, |bits, g| {
                    let next = bit_of.len() as u32;
                    let bit = *bit_of.entry(g.as_str()).or_insert(next);
                    if bit < 64 { bits | 1 << bit } else { bits }
                })
            })
            .collect();
        Self {
            items: a.items.len(),
            users: a.users.len(),
            raters,
            genre_bits,
        }
    }

    /// An item's genres as bits (none for an item the catalogue does not know).
    fn genres_of(&self, item: u32) -> u64 {
        self.genre_bits.get(item as usize).copied().unwrap_or(0)
    }

    fn genres_in(&self, list: &[u32]) -> u32 {
        list.iter()
            .take(20)
            .fold(0u64, |bits, &i| bits | self.genres_of(i))
            .count_ones()
    }

    /// Neighbouring pairs in `list`'s top 20, and how many of them share a genre.
    fn alike_neighbours(&self, list: &[u32]) -> (usize, usize) {
        let top = &list[..list.len().min(20)];
        let alike = top
            .windows(2)
            .filter(|w| self.genres_of(w[0]) & self.genres_of(w[1]) != 0)
            .count();
        (top.len().saturating_sub(1), alike)
    }

    fn self_information(&self, item: u32) -> f64 {
        let raters = self.raters.get(item as usize).copied().unwrap_or(0);
        -((f64::from(raters) + 1.0) / (self.users as f64 + 1.0)).log2()
    }
}

/// Scores one list per user (`lists[k]` for `truth.users[k]`, best first).
pub fn score(name: &str, lists: &[Vec<u32>], truth: &Truth, catalogue: &Catalogue) -> Scored {
    let long = lists.iter().any(|l| l.len() > 20);
    let (mut shown, mut information, mut shown_count) = (HashSet::new(), 0.0, 0usize);
    for l in lists {
        for &i in l.iter().take(20) {
            shown.insert(i);
            information += catalogue.self_information(i);
            shown_count += 1;
        }
    }
    let per = |f: &dyn Fn(&[u32], &HashSet<u32>) -> f64| -> Vec<f64> {
        lists.iter().zip(&truth.items).map(|(l, t)| f(l, t)).collect()
    };
    Scored {
        name: name.to_string(),
        ndcg_20: per(&|l, t| ndcg_at(l, t, 20)),
        recall_20: per(&|l, t| recall_at(l, t, 20)),
        recall_200: long.then(|| per(&|l, t| recall_at(l, t, 200))),
        coverage: shown.len() as f64 / catalogue.items.max(1) as f64,
        novelty: if shown_count == 0 {
            0.0
        } else {
            information / shown_count as f64
        },
        genres_20: lists.iter().map(|l| f64::from(catalogue.genres_in(l))).sum::<f64>() / lists.len().max(1) as f64,
        alike_neighbours: {
            let (pairs, alike) = lists
                .iter()
                .map(|l| catalogue.alike_neighbours(l))
                .fold((0, 0), |(p, a), (lp, la)| (p + lp, a + la));
            alike as f64 / pairs.max(1) as f64
        },
    }
}

/// A table row: the scores summarised with their intervals, and NDCG@20 and recall@20 as
/// ratios to the baseline's (paired).
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub ndcg_20: Estimate,
    pub recall_20: Estimate,
    pub recall_200: Option<Estimate>,
    pub coverage: f64,
    pub novelty: f64,
    pub genres_20: f64,
    pub alike_neighbours: f64,
    pub ndcg_vs_baseline: Estimate,
    pub recall_vs_baseline: Estimate,
}

/// Summarises every scored list against `baseline` on the same resamples.
pub fn summarize(scored: &[Scored], baseline: &Scored, resamples: &Resamples) -> Vec<Row> {
    scored
        .iter()
        .map(|s| Row {
            name: s.name.clone(),
            ndcg_20: resamples.estimate(&s.ndcg_20),
            recall_20: resamples.estimate(&s.recall_20),
            recall_200: s.recall_200.as_deref().map(|r| resamples.estimate(r)),
            coverage: s.coverage,
            novelty: s.novelty,
            genres_20: s.genres_20,
            alike_neighbours: s.alike_neighbours,
            ndcg_vs_baseline: resamples.ratio(&s.ndcg_20, Some(&baseline.ndcg_20)),
            recall_vs_baseline: resamples.ratio(&s.recall_20, Some(&baseline.recall_20)),
        })
        .collect()
}

/// The name of the baseline row: recency-weighted popularity with the build's half-life.
pub fn baseline_name(a: &Artifacts) -> String {
    format!(
        "baseline: recency-weighted popularity (half-life {} d)",
        a.hot_half_life_days
    )
}

/// Recall's own lists for every held-out user: each channel's top 200, the merged set (every
/// channel at 200, fused into up to 1,000), the baseline (the hot list minus the user's
/// history: recency-weighted popularity) and the all-time most-rated list. The baseline is
/// first.
pub fn recall_lists(a: &Artifacts, truth: &Truth, show_progress: bool) -> Vec<(String, Vec<Vec<u32>>)> {
    let bar = if show_progress {
        ProgressBar::new(truth.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    let per_user: Vec<Vec<Vec<u32>>> = truth
        .users
        .par_iter()
        .map(|&user| {
            let h = recall::UserHistory::new(a, user);
            let ids = |l: &[(u32, f32)]| l.iter().map(|x| x.0).collect::<Vec<u32>>();
            let mut lists = Vec::with_capacity(Channel::ALL.len() + 3);
            lists.push(ids(&recall::channel_for(a, &h, Channel::Hot, 200).items));
            lists.push(ids(&recall::popular(a, &h, 200)));
            lists.push(recall::recall(a, &h, 200, 1000).iter().map(|c| c.item).collect());
            for c in Channel::ALL {
                lists.push(ids(&recall::channel_for(a, &h, c, 200).items));
            }
            bar.inc(1);
            lists
        })
        .collect();
    bar.finish_and_clear();
    let mut names = vec![
        baseline_name(a),
        "all-time popularity".to_string(),
        "merged (every channel)".to_string(),
    ];
    names.extend(Channel::ALL.iter().map(|c| format!("channel: {}", c.name())));
    names
        .into_iter()
        .enumerate()
        .map(|(k, name)| (name, per_user.iter().map(|lists| lists[k].clone()).collect()))
        .collect()
}

/// Bootstrap resamples of a table (enough for stable 95 % percentiles).
pub const RESAMPLES: usize = 1000;

/// Recall's lists and the baselines ([`recall_lists`]), each scored; the baseline first.
pub fn score_recall_lists(a: &Artifacts, truth: &Truth, catalogue: &Catalogue, show_progress: bool) -> Vec<Scored> {
    recall_lists(a, truth, show_progress)
        .iter()
        .map(|(name, lists)| score(name, lists, truth, catalogue))
        .collect()
}

/// Every scored list summarised against the first (the baseline) on [`RESAMPLES`] resamples of
/// the users, from a fixed seed (so tables are reproducible).
pub fn summarize_against_first(scored: &[Scored]) -> Vec<Row> {
    let Some(baseline) = scored.first() else {
        return Vec::new();
    };
    let resamples = Resamples::new(baseline.ndcg_20.len(), RESAMPLES, 7);
    summarize(scored, baseline, &resamples)
}

/// The share of relevance-only NDCG@20 that diversity may cost: rerank's MMR trade-off is the
/// most diverse one whose served NDCG@20 keeps at least `1 - MMR_COST` of it.
pub const MMR_COST: f64 = 0.01;

/// The MMR trade-offs an eval priced, chosen from: the most diverse (smallest) λ whose NDCG@20
/// is at least `(1 - max_cost)` × the relevance-only level's, and the next more diverse λ of
/// the grid (an experiment's second arm), if any. `priced`: (λ, NDCG@20) in any order. `None`
/// when no λ keeps the relevance.
pub fn choose_mmr_lambda(relevance_only: f64, priced: &[(f32, f64)], max_cost: f64) -> Option<(f32, Option<f32>)> {
    let mut grid: Vec<(f32, f64)> = priced
        .iter()
        .copied()
        .filter(|(l, n)| l.is_finite() && n.is_finite())
        .collect();
    grid.sort_by(|a, b| b.0.total_cmp(&a.0));
    let at = grid
        .iter()
        .rposition(|&(_, n)| n >= (1.0 - max_cost) * relevance_only)?;
    Some((grid[at].0, grid.get(at + 1).map(|&(l, _)| l)))
}

/// The share of NDCG@20 that category scatter may cost against the same level without it.
pub const SCATTER_COST: f64 = 0.01;

/// The scatter settings an eval priced, chosen from: of those whose NDCG@20 is at least
/// `(1 - max_cost)` × the level's without scatter, the one whose served lists have the fewest
/// neighbours of a genre (the higher NDCG@20 on a tie). `priced`: (setting, NDCG@20, share of
/// alike neighbours) in any order. `None` when none keeps the relevance.
pub fn choose_scatter<S: Copy>(without: f64, priced: &[(S, f64, f64)], max_cost: f64) -> Option<S> {
    priced
        .iter()
        .filter(|(_, n, a)| n.is_finite() && a.is_finite() && *n >= (1.0 - max_cost) * without)
        .min_by(|a, b| a.2.total_cmp(&b.2).then(b.1.total_cmp(&a.1)))
        .map(|&(s, _, _)| s)
}

/// Recall's lists and the baselines, scored and summarised (the offline half of
/// `recstack eval`; the CLI adds the served levels).
pub fn evaluate(a: &Artifacts, show_progress: bool) -> (Vec<Row>, usize) {
    let truth = Truth::of(a);
    let scored = score_recall_lists(a, &truth, &Catalogue::of(a), show_progress);
    (summarize_against_first(&scored), truth.len())
}

/// External item id → dense index, to score lists the stack served (which carry ids).
pub fn item_index(a: &Artifacts) -> HashMap<&str, u32> {
    a.items
        .iter()
        .enumerate()
        .map(|(i, it)| (it.id.as_str(), i as u32))
        .collect()
}

/// The Markdown table of `rows` (what `recstack eval` prints).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| list | NDCG@20 [95 % CI] | recall@20 [95 % CI] | recall@200 | coverage@20 | novelty | genres in 20 | alike neighbours | NDCG@20 / baseline | recall@20 / baseline |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let ratio = |e: &Estimate| format!("{:.2}× [{:.2}, {:.2}]", e.mean, e.low, e.high);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} % | {:.2} | {:.1} | {:.1} % | {} | {} |\n",
            r.name,
            r.ndcg_20,
            r.recall_20,
            r.recall_200.map_or("–".to_string(), |e| format!("{:.4}", e.mean)),
            r.coverage * 100.0,
            r.novelty,
            r.genres_20,
            r.alike_neighbours * 100.0,
            ratio(&r.ndcg_vs_baseline),
            ratio(&r.recall_vs_baseline),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_posts_the_earlier_half_and_judges_the_rest() {
        let r = |user, item, ts| Rating {
            user,
            item,
            rating: 8,
            ts,
        };
        let holdout = [
            // User 3: four ratings out of order; the two oldest are replayed.
            r(3, 40, 400),
            r(3, 10, 100),
            r(3, 30, 300),
            r(3, 20, 200),
            // User 1: one rating, nothing to judge after a replay: left out.
            r(1, 5, 50),
            // User 2: three ratings, two at the same time (item order breaks the tie).
            r(2, 9, 70),
            r(2, 7, 70),
            r(2, 8, 90),
            // User 4: the same item twice in a row counts once: left out.
            r(4, 6, 10),
            r(4, 6, 20),
        ];
        let replay = Replay::of(&holdout);
        assert_eq!(replay.truth.users, vec![2, 3]);
        assert_eq!(replay.events, vec![vec![7], vec![10, 20]]);
        assert_eq!(replay.recent(1), vec![20, 10], "newest first, as the stream keeps them");
        let sets: Vec<Vec<u32>> = replay
            .truth
            .items
            .iter()
            .map(|s| {
                let mut v: Vec<u32> = s.iter().copied().collect();
                v.sort_unstable();
                v
            })
            .collect();
        assert_eq!(sets, vec![vec![8, 9], vec![30, 40]]);
        // No replayed item is left to find, and every user keeps at least one.
        for (events, left) in replay.events.iter().zip(&replay.truth.items) {
            assert!(!left.is_empty() && events.iter().all(|i| !left.contains(i)));
        }
        assert!(Replay::of(&[]).truth.is_empty());
    }

    #[test]
    fn the_mmr_trade_off_is_the_most_diverse_that_keeps_the_relevance() {
        let priced = [
            (0.5, 0.150),
            (0.9, 0.1625),
            (0.8, 0.1615),
            (0.7, 0.1590),
            (0.95, 0.1630),
        ];
        // 1 % of 0.1629 is 0.0016: 0.8 keeps it, 0.7 does not (and is the other arm).
        assert_eq!(choose_mmr_lambda(0.1629, &priced, 0.01), Some((0.8, Some(0.7))));
        // A stricter budget stops earlier; a looser one goes to the grid's end.
        assert_eq!(choose_mmr_lambda(0.1629, &priced, 0.001), Some((0.95, Some(0.9))));
        assert_eq!(choose_mmr_lambda(0.1629, &priced, 0.2), Some((0.5, None)));
        // The most diverse that keeps it, whatever a less diverse one measured.
        let bumpy = [(0.9, 0.150), (0.8, 0.163), (0.7, 0.10)];
        assert_eq!(choose_mmr_lambda(0.1629, &bumpy, 0.01), Some((0.8, Some(0.7))));
        assert_eq!(choose_mmr_lambda(0.1629, &[(0.9, 0.150)], 0.01), None);
        assert_eq!(choose_mmr_lambda(0.1629, &[], 0.01), None);
        assert_eq!(
            choose_mmr_lambda(0.1629, &[(f32::NAN, 0.2), (0.9, 0.1629)], 0.01),
            Some((0.9, None))
        );
    }

    #[test]
    fn scatter_is_the_most_spread_setting_that_keeps_the_relevance() {
        // (setting, NDCG@20, alike neighbours) against 0.1650 without scatter.
        let priced = [
            ("off", 0.1650, 0.60),
            ("3/4", 0.1645, 0.55),
            ("2/4", 0.1630, 0.45),
            ("1/3", 0.1580, 0.20),
        ];
        // 1/3 spreads most but costs 4 %; 2/4 costs 1.2 %, over a 1 % budget.
        assert_eq!(choose_scatter(0.1650, &priced, 0.01), Some("3/4"));
        assert_eq!(choose_scatter(0.1650, &priced, 0.02), Some("2/4"));
        assert_eq!(choose_scatter(0.1650, &priced, 0.0), Some("off"));
        // Equally spread: the more relevant one.
        let tied = [("a", 0.160, 0.5), ("b", 0.162, 0.5)];
        assert_eq!(choose_scatter(0.162, &tied, 0.05), Some("b"));
        // Nothing keeps the relevance, or nothing was priced; unscored rows are not chosen.
        assert_eq!(choose_scatter(0.2, &priced, 0.01), None);
        assert_eq!(choose_scatter::<&str>(0.2, &[], 0.01), None);
        assert_eq!(
            choose_scatter(0.1, &[("nan", f64::NAN, 0.0), ("ok", 0.1, 0.7)], 0.01),
            Some("ok")
        );
    }

    #[test]
    fn metrics_by_hand() {
        let truth: HashSet<u32> = [1, 2].into();
        assert_eq!(recall_at(&[1, 3, 2], &truth, 2), 0.5);
        assert_eq!(recall_at(&[1, 3, 2], &truth, 3), 1.0);
        assert_eq!(ndcg_at(&[1, 2, 3], &truth, 20), 1.0);
        // Relevant at ranks 1 and 3: (1 + 1/log2(4)) / (1 + 1/log2(3)).
        let expected = (1.0 + 0.5) / (1.0 + 1.0 / 3f64.log2());
        assert!((ndcg_at(&[1, 3, 2], &truth, 20) - expected).abs() < 1e-12);
        assert_eq!(ndcg_at(&[3, 4], &truth, 20), 0.0);
        assert_eq!(recall_at(&[1], &HashSet::new(), 5), 0.0);
    }

    #[test]
    fn the_interval_holds_the_mean_and_narrows_with_agreement() {
        let r = Resamples::new(400, 500, 1);
        let spread: Vec<f64> = (0..400).map(|k| if k % 2 == 0 { 1.0 } else { 0.0 }).collect();
        let e = r.estimate(&spread);
        assert!((e.mean - 0.5).abs() < 1e-12);
        assert!(e.low < 0.5 && e.high > 0.5, "{e}");
        // The standard error of a mean of 400 coin flips is 0.025: the interval is about ±0.05.
        assert!((e.high - e.low - 0.098).abs() < 0.03, "{e}");
        let constant = vec![0.5; 400];
        let c = r.estimate(&constant);
        assert!((c.low - 0.5).abs() < 1e-12 && (c.high - 0.5).abs() < 1e-12, "{c}");
        assert!(!e.above(&c) && !c.above(&e));
        assert!(
            Estimate {
                mean: 0.65,
                low: 0.6,
                high: 0.7
            }
            .above(&e)
        );
    }

    #[test]
    fn paired_ratios_see_a_uniform_lift_that_unpaired_intervals_miss() {
        // Every user scores 10 % more under B than under A, but users differ a lot: the
        // intervals of the means overlap, the paired ratio's is tight around 1.1.
        let r = Resamples::new(200, 500, 3);
        let a: Vec<f64> = (0..200).map(|k| (k % 10) as f64 / 10.0).collect();
        let b: Vec<f64> = a.iter().map(|x| x * 1.1).collect();
        let (ea, eb) = (r.estimate(&a), r.estimate(&b));
        assert!(!eb.above(&ea), "{ea} {eb}");
        let ratio = r.ratio(&b, Some(&a));
        assert!(
            (ratio.mean - 1.1).abs() < 1e-9 && (ratio.low - 1.1).abs() < 1e-9,
            "{ratio}"
        );
        assert!(
            Resamples::new(200, 10, 3).weights == Resamples::new(200, 10, 3).weights,
            "seeded"
        );
    }

    #[test]
    fn coverage_and_novelty_of_lists() {
        let truth = Truth {
            users: vec![0, 1],
            items: vec![[1].into(), [3].into()],
        };
        // Item 0 rated by all 3 users, item 1 by one, items 2 and 3 by none.
        let catalogue = Catalogue {
            items: 8,
            users: 3,
            raters: vec![3, 1, 0, 0, 0, 0, 0, 0],
            // Items 0 and 1 share genre 0; item 2 has genres 1 and 2.
            genre_bits: vec![0b1, 0b1, 0b110, 0, 0, 0, 0, 0],
        };
        let s = score("x", &[vec![0, 1], vec![0, 2]], &truth, &catalogue);
        assert_eq!(s.coverage, 3.0 / 8.0);
        let info = |raters: f64| -((raters + 1.0) / 4.0f64).log2();
        let expected = (2.0 * info(3.0) + info(1.0) + info(0.0)) / 4.0;
        assert!((s.novelty - expected).abs() < 1e-12);
        assert_eq!(s.recall_20, vec![1.0, 0.0]);
        assert_eq!(s.genres_20, (1.0 + 3.0) / 2.0);
        // Items 0 and 1 share a genre; 0 and 2 do not: one of the two neighbouring pairs.
        assert_eq!(s.alike_neighbours, 0.5);
        assert!(s.recall_200.is_none(), "lists of 20 have no recall@200");
        let rows = summarize(std::slice::from_ref(&s), &s, &Resamples::new(2, 20, 1));
        assert_eq!(rows[0].ndcg_vs_baseline.mean, 1.0);
        assert!(table(&rows).contains("| x | 0.3155 ["), "{}", table(&rows));
    }
}
