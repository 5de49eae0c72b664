//! `recstack tune`: recall's settings chosen on a validation world, never on the holdout.
//!
//! The validation world is the training split split again by time (each user's most recent
//! ratings of the training split held out, as the real split holds out the most recent
//! ratings of all; [`crate::export::validation_world`]): artifacts are built on its training part and judged on its held-out part.
//! There the build chooses the hot list's half-life ([`crate::build::hot::tune_half_life`]),
//! and this module chooses the channels' fusion weights by coordinate ascent on the merged
//! list's NDCG@20. The chosen weights are what [`Channel::fusion_weight`] serves; the command
//! prints them so a change of data or channels can be re-tuned and the table updated.

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

/// Coordinate ascent over [`WEIGHT_GRID`] for each channel in turn, `passes` times, starting
/// from equal weights; a weight changes only when the merged list's mean NDCG@20 strictly
/// improves (so ties keep the simpler setting). The hot channel's weight stays above 0: it is
/// all a cold user's candidates. `quota` per channel, `total` merged, as the
/// full level asks.
pub fn tune_fusion(a: &Artifacts, quota: usize, total: usize, passes: usize, show_progress: bool) -> FusionTuning {
    let truth = Truth::of(a);
    let lists: Vec<Vec<ChannelList>> = truth
        .users
        .par_iter()
        .map(|&user| {
            let h = recall::UserHistory::new(a, user);
            Channel::ALL
                .iter()
                .map(|&c| recall::channel_for(a, &h, c, quota))
                .collect()
        })
        .collect();
    let score = |weights: &[f32]| -> f64 {
        let weight = |c: Channel| weights[Channel::ALL.iter().position(|&x| x == c).unwrap_or(0)];
        let sum: f64 = lists
            .par_iter()
            .zip(&truth.items)
            .map(|(l, t): (&Vec<ChannelList>, &HashSet<u32>)| {
                let merged: Vec<u32> = merge_weighted(l, |_| quota, weight, total)
                    .iter()
                    .take(20)
                    .map(|c| c.item)
                    .collect();
                ndcg_at(&merged, t, 20)
            })
            .sum();
        sum / truth.len().max(1) as f64
    };
    let bar = if show_progress {
        ProgressBar::new((passes * Channel::ALL.len() * WEIGHT_GRID.len()) as u64)
    } else {
        ProgressBar::hidden()
    };
    let mut weights = vec![1.0f32; Channel::ALL.len()];
    let equal = score(&weights);
    let mut best = equal;
    for _ in 0..passes {
        for k in 0..weights.len() {
            for &w in WEIGHT_GRID {
                bar.inc(1);
                // The hot list is the only channel cold and unknown users get: at weight 0
                // their candidates would tie and fall into id order.
                if w == weights[k] || (w == 0.0 && Channel::ALL[k] == Channel::Hot) {
                    continue;
                }
                let mut trial = weights.clone();
                trial[k] = w;
                let s = score(&trial);
                if s > best {
                    (best, weights) = (s, trial);
                }
            }
        }
    }
    bar.finish_and_clear();
    FusionTuning {
        weights: Channel::ALL.iter().copied().zip(weights).collect(),
        equal_ndcg_20: equal,
        tuned_ndcg_20: best,
        users: truth.len(),
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
    }
}
