//! `recstack tune`: recall's settings chosen on a validation world, never on the holdout.
//!
//! The validation world is the training split split again by time (each user's most recent
//! ratings of the training split held out, as the real split holds out the most recent
//! ratings of all; [`crate::export::validation_world`]): artifacts are built on its training part and judged on its held-out part.
//! There the build chooses the hot list's half-life ([`crate::build::hot::tune_half_life`]),
//! and this module chooses the channels' fusion weights, then their quotas, by coordinate
//! ascent on the merged list's NDCG@20. The chosen weights are what [`Channel::fusion_weight`]
//! serves; the quotas it found gain too little over
//! [`DEFAULT_QUOTA`](recstack_core::recall::DEFAULT_QUOTA) to serve (docs/recall.md). The
//! command prints both so a change of data or channels can be re-tuned and the tables updated.

use std::collections::HashSet;

use indicatif::ProgressBar;
use rayon::prelude::*;
use recstack_core::recall::{self, Channel, ChannelList, merge_weighted};

use crate::build::Artifacts;
use crate::eval::{Truth, ndcg_at};

/// The weights each coordinate tries.
pub const WEIGHT_GRID: &[f32] = &[0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0];

/// What the weight search did.
#[derive(Clone, Debug, PartialEq)]
pub struct FusionTuning {
    /// Every channel's chosen weight.
    pub weights: Vec<(Channel, f32)>,
    /// The merged list's NDCG@20 on the validation world with every weight 1 (plain RRF).
    pub equal_ndcg_20: f64,
    /// The same with the chosen weights.
    pub tuned_ndcg_20: f64,
    pub users: usize,
}

/// The per-channel quotas [`tune_quotas`] tries.
pub const QUOTA_GRID: &[usize] = &[50, 100, 200, 300, 400];

/// What the quota search did.
#[derive(Clone, Debug, PartialEq)]
pub struct QuotaTuning {
    /// Every channel's chosen quota.
    pub quotas: Vec<(Channel, usize)>,
    /// The merged list's NDCG@20 on the validation world with every quota at the start value.
    pub start_ndcg_20: f64,
    /// The same with the chosen quotas.
    pub tuned_ndcg_20: f64,
    pub users: usize,
}

/// Every judged user's channel lists, `depth` deep, computed once for a search: each trial only
/// merges them again (a channel's top `n` is its top `depth` cut to `n` for the list-based
/// channels; the ANN's top `n` may differ from a deeper search's prefix in its last places).
struct Judged {
    truth: Truth,
    lists: Vec<Vec<ChannelList>>,
}

impl Judged {
    fn of(a: &Artifacts, depth: usize) -> Self {
        let truth = Truth::of(a);
        let lists = truth
            .users
            .par_iter()
            .map(|&user| {
                let h = recall::UserHistory::new(a, user);
                Channel::ALL
                    .iter()
                    .map(|&c| recall::channel_for(a, &h, c, depth))
                    .collect()
            })
            .collect();
        Self { truth, lists }
    }

    /// The mean NDCG@20 of the merged lists with `weights` and `quotas` (both in
    /// [`Channel::ALL`] order), `total` merged.
    fn score(&self, weights: &[f32], quotas: &[usize], total: usize) -> f64 {
        let sum: f64 = self
            .lists
            .par_iter()
            .zip(&self.truth.items)
            .map(|(l, t): (&Vec<ChannelList>, &HashSet<u32>)| {
                let merged: Vec<u32> = merge_weighted(l, |c| quotas[c.index()], |c| weights[c.index()], total)
                    .iter()
                    .take(20)
                    .map(|c| c.item)
                    .collect();
                ndcg_at(&merged, t, 20)
            })
            .sum();
        sum / self.truth.len().max(1) as f64
    }
}

/// Coordinate ascent: for each of `values`' places in turn, `passes` times, every value of
/// `grid` but those `allowed` refuses; a value changes only when `score` strictly improves (so
/// ties keep the start). Returns the values, the start's score and theirs.
fn coordinate_ascent<T: Copy + PartialEq>(
    mut values: Vec<T>,
    grid: &[T],
    passes: usize,
    allowed: impl Fn(usize, T) -> bool,
    score: impl Fn(&[T]) -> f64,
    bar: &ProgressBar,
) -> (Vec<T>, f64, f64) {
    let start = score(&values);
    let mut best = start;
    for _ in 0..passes {
        for k in 0..values.len() {
            for &v in grid {
                bar.inc(1);
                if v == values[k] || !allowed(k, v) {
                    continue;
                }
                let mut trial = values.clone();
                trial[k] = v;
                let s = score(&trial);
                if s > best {
                    (best, values) = (s, trial);
                }
            }
        }
    }
    (values, start, best)
}

fn progress(show: bool, steps: usize) -> ProgressBar {
    if show {
        ProgressBar::new(steps as u64)
    } else {
        ProgressBar::hidden()
    }
}

/// Coordinate ascent over [`WEIGHT_GRID`] for each channel in turn, `passes` times, starting
/// from equal weights; a weight changes only when the merged list's mean NDCG@20 strictly
/// improves (so ties keep the simpler setting). The hot channel's weight stays above 0: it is
/// all a cold user's candidates. `quota` per channel, `total` merged, as the
/// full level asks.
pub fn tune_fusion(a: &Artifacts, quota: usize, total: usize, passes: usize, show_progress: bool) -> FusionTuning {
    let judged = Judged::of(a, quota);
    let quotas = [quota; Channel::ALL.len()];
    let bar = progress(show_progress, passes * Channel::ALL.len() * WEIGHT_GRID.len());
    // The hot list is the only channel cold and unknown users get: at weight 0 their
    // candidates would tie and fall into id order.
    let (weights, equal, best) = coordinate_ascent(
        vec![1.0f32; Channel::ALL.len()],
        WEIGHT_GRID,
        passes,
        |k, w| !(w == 0.0 && Channel::ALL[k] == Channel::Hot),
        |w| judged.score(w, &quotas, total),
        &bar,
    );
    bar.finish_and_clear();
    FusionTuning {
        weights: Channel::ALL.iter().copied().zip(weights).collect(),
        equal_ndcg_20: equal,
        tuned_ndcg_20: best,
        users: judged.truth.len(),
    }
}

/// Coordinate ascent over [`QUOTA_GRID`] for each channel's quota, `passes` times, starting
/// from `start` for every channel, with the fusion `weights` (by [`Channel::ALL`]) and `total`
/// merged, on the merged list's NDCG@20; ties keep the start.
pub fn tune_quotas(
    a: &Artifacts,
    weights: &[f32],
    start: usize,
    total: usize,
    passes: usize,
    show_progress: bool,
) -> QuotaTuning {
    let depth = QUOTA_GRID.iter().copied().chain([start]).max().unwrap_or(start);
    let judged = Judged::of(a, depth);
    let bar = progress(show_progress, passes * Channel::ALL.len() * QUOTA_GRID.len());
    let initial = vec![start; Channel::ALL.len()];
    let (quotas, start_ndcg_20, best) = coordinate_ascent(
        initial,
        QUOTA_GRID,
        passes,
        |_, _| true,
        |q| judged.score(weights, q, total),
        &bar,
    );
    bar.finish_and_clear();
    QuotaTuning {
        quotas: Channel::ALL.iter().copied().zip(quotas).collect(),
        start_ndcg_20,
        tuned_ndcg_20: best,
        users: judged.truth.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{BuildParams, Item, Progress, Rating};
    use crate::dataset::Dataset;
    use crate::export::validation_world;
    use rand::{Rng, SeedableRng};

    #[test]
    fn coordinate_ascent_finds_a_separable_optimum_keeps_ties_and_skips_what_is_refused() {
        let grid = [0, 1, 2, 3, 4, 5];
        let bowl = |v: &[i32]| -f64::from((v[0] - 3).pow(2) + (v[1] - 1).pow(2));
        let bar = ProgressBar::hidden();
        assert_eq!(
            coordinate_ascent(vec![0, 5], &grid, 1, |_, _| true, bowl, &bar),
            (vec![3, 1], -25.0, 0.0)
        );
        // Refusing the optimum of the first place: the best allowed neighbour (2 before 4, as
        // the search only moves on a strict gain).
        let (v, _, _) = coordinate_ascent(vec![0, 5], &grid, 2, |k, x| !(k == 0 && x == 3), bowl, &bar);
        assert_eq!(v, vec![2, 1]);
        // A flat score never moves off the start.
        assert_eq!(
            coordinate_ascent(vec![4, 4], &grid, 3, |_, _| true, |_| 1.0, &bar).0,
            vec![4, 4]
        );
        // No pass: the start and its score.
        assert_eq!(
            coordinate_ascent(vec![0, 0], &grid, 0, |_, _| true, bowl, &bar),
            (vec![0, 0], -10.0, -10.0)
        );
    }

    #[test]
    fn tuning_never_makes_the_merged_list_worse_and_reports_every_channel() {
        // 120 users rating 20 of 60 items each, in two taste groups, over a year.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let items: Vec<Item> = (0..60)
            .map(|i| Item {
                id: format!("i{i}"),
                title: format!("Item {i}"),
                year: Some(2000),
                genres: vec![if i % 2 == 0 { "Drama" } else { "Comedy" }.to_string()],
            })
            .collect();
        let mut ratings = Vec::new();
        for u in 0..120u32 {
            let mut picked = HashSet::new();
            while picked.len() < 20 {
                let i: u32 = rng.gen_range(0..30) * 2 + u % 2;
                if picked.insert(i) {
                    let ts = i64::from(i) * 86_400 * 6 + rng.gen_range(0..86_400);
                    ratings.push(Rating {
                        user: u,
                        item: i,
                        rating: 8,
                        ts,
                    });
                }
            }
        }
        let ds = Dataset {
            items,
            users: (0..120).map(|u| format!("u{u}")).collect(),
            ratings,
        };
        let params = BuildParams::default();
        let world = validation_world(&ds, &params, None, &Progress::new(true)).unwrap();
        assert!(
            world.holdout.iter().all(|r| ds.ratings.contains(r)),
            "the validation world holds out its own ratings"
        );
        let t = tune_fusion(&world, 50, 200, 1, false);
        assert_eq!(t.weights.len(), Channel::ALL.len());
        assert!(t.tuned_ndcg_20 >= t.equal_ndcg_20, "{t:?}");
        assert!(t.users > 0);
        assert!(t.weights.iter().all(|(_, w)| WEIGHT_GRID.contains(w)));
        assert!(t.weights.iter().any(|&(c, w)| c == Channel::Hot && w > 0.0), "{t:?}");

        let weights: Vec<f32> = t.weights.iter().map(|&(_, w)| w).collect();
        let q = tune_quotas(&world, &weights, 75, 200, 1, false);
        assert_eq!(
            q.quotas.iter().map(|&(c, _)| c).collect::<Vec<_>>(),
            Channel::ALL,
            "every channel, in order"
        );
        assert!(q.tuned_ndcg_20 >= q.start_ndcg_20, "{q:?}");
        assert!(
            q.quotas.iter().all(|(_, n)| *n == 75 || QUOTA_GRID.contains(n)),
            "{q:?}"
        );
        // The start with the fusion search's weights is the fusion search's tuned list (at the
        // same quota it is the same merge).
        let same = tune_quotas(&world, &weights, 50, 200, 0, false);
        assert!(
            (same.start_ndcg_20 - t.tuned_ndcg_20).abs() < 1e-12,
            "{same:?} against {t:?}"
        );
        assert_eq!(same.tuned_ndcg_20, same.start_ndcg_20, "no pass, no change");
    }
}
