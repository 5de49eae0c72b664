//! The hot list (recency-weighted popularity) and the choice of its half-life.
//!
//! An interaction's weight halves every `half_life` days before the newest training rating.
//! The half-life is the product's one knob for "what is popular now", so the build chooses it
//! on a validation world (the training ratings split again by time, the way the holdout was
//! split): the half-life whose list, minus what each user has seen, best predicts the
//! validation users' next ratings (NDCG@20). The holdout is never looked at.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;
use recstack_core::artifacts::{Ranked, Rating};
use recstack_core::topk::top_k;

use crate::dataset::{Split, time_split};
use crate::eval::ndcg_at;

/// The half-lives (days) the build tries when none is configured.
pub const HALF_LIFE_GRID: &[f64] = &[
    1.0, 2.0, 4.0, 7.0, 10.0, 14.0, 21.0, 30.0, 45.0, 60.0, 90.0, 180.0, 365.0,
];

/// Time-decayed popularity (relative to the newest rating of `ratings`), then all-time counts;
/// each at most `len` long, best first, items without interactions left out.
pub fn hot_lists(ratings: &[Rating], n_items: usize, half_life_days: f64, len: usize) -> (Ranked, Ranked) {
    let hot = decayed_counts(ratings, n_items, half_life_days);
    let mut count = vec![0f32; n_items];
    for r in ratings {
        count[r.item as usize] += 1.0;
    }
    let ranked = |scores: Vec<(u32, f32)>| {
        let mut v: Vec<(u32, f32)> = scores.into_iter().filter(|s| s.1 > 0.0).collect();
        top_k(&mut v, len);
        v
    };
    (
        ranked(hot.iter().enumerate().map(|(i, &s)| (i as u32, s as f32)).collect()),
        ranked(count.iter().enumerate().map(|(i, &s)| (i as u32, s)).collect()),
    )
}

/// Each item's interactions, each weighted by half every `half_life_days` before the newest
/// of `ratings` (0 for an item without any): the hot list's scores, and with a shorter
/// half-life the items' `recent_score`.
pub fn decayed_counts(ratings: &[Rating], n_items: usize, half_life_days: f64) -> Vec<f64> {
    let now = ratings.iter().map(|r| r.ts).max().unwrap_or(0);
    let half_life = half_life_days * 86_400.0;
    let mut scores = vec![0f64; n_items];
    for r in ratings {
        scores[r.item as usize] += (-(now - r.ts) as f64 * std::f64::consts::LN_2 / half_life).exp();
    }
    scores
}

/// One half-life tried on the validation world.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HalfLifeTrial {
    pub days: f64,
    /// Mean NDCG@20 of the hot list minus each user's history, over the validation users.
    pub ndcg_20: f64,
}

/// Chooses the half-life from `grid` on the validation world of `train` (split again with
/// `holdout` and `min_history`): the best NDCG@20, the shorter half-life on a tie. Returns the
/// choice and every trial; `None` when the validation world has no held-out users (too
/// little data), and the caller keeps its default.
pub fn tune_half_life(
    train: &[Rating],
    n_items: usize,
    holdout: f64,
    min_history: usize,
    grid: &[f64],
) -> Option<(f64, Vec<HalfLifeTrial>)> {
    let Split { train: fit, test } = time_split(train, holdout, min_history);
    let mut truth: HashMap<u32, HashSet<u32>> = HashMap::new();
    for r in &test {
        truth.entry(r.user).or_default().insert(r.item);
    }
    if truth.is_empty() || grid.is_empty() {
        return None;
    }
    let mut seen: HashMap<u32, HashSet<u32>> = HashMap::new();
    for r in &fit {
        seen.entry(r.user).or_default().insert(r.item);
    }
    let no_history = HashSet::new();
    let trials: Vec<HalfLifeTrial> = grid
        .par_iter()
        .map(|&days| {
            // The list must reach past any one user's history.
            let (hot, _) = hot_lists(&fit, n_items, days, n_items);
            let total: f64 = truth
                .iter()
                .map(|(user, t)| {
                    let s = seen.get(user).unwrap_or(&no_history);
                    let list: Vec<u32> = hot.iter().map(|h| h.0).filter(|i| !s.contains(i)).take(20).collect();
                    ndcg_at(&list, t, 20)
                })
                .sum();
            HalfLifeTrial {
                days,
                ndcg_20: total / truth.len() as f64,
            }
        })
        .collect();
    let best = trials.iter().fold(None::<HalfLifeTrial>, |best, t| match best {
        Some(b) if b.ndcg_20 > t.ndcg_20 || (b.ndcg_20 == t.ndcg_20 && b.days <= t.days) => Some(b),
        _ => Some(*t),
    })?;
    Some((best.days, trials))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::r;

    #[test]
    fn decayed_counts_halve_every_half_life_before_the_newest_rating() {
        let day = 86_400;
        let now = 100 * day;
        // Item 0: one now and one a half-life (14 days) before; item 1: one two half-lives
        // before; item 2: none; item 3: one a day before the newest.
        let train = vec![
            r(0, 0, now),
            r(1, 0, now - 14 * day),
            r(0, 1, now - 28 * day),
            r(2, 3, now - day),
        ];
        let s = decayed_counts(&train, 4, 14.0);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(s[0], 1.5), "{s:?}");
        assert!(close(s[1], 0.25), "{s:?}");
        assert_eq!(s[2], 0.0);
        assert!(close(s[3], 0.5f64.powf(1.0 / 14.0)), "{s:?}");
        // "Now" is the newest rating given, not the clock: the same ratings a year later score
        // the same.
        let later: Vec<_> = train.iter().map(|x| r(x.user, x.item, x.ts + 365 * day)).collect();
        assert_eq!(decayed_counts(&later, 4, 14.0), s);
        assert_eq!(decayed_counts(&[], 2, 14.0), [0.0, 0.0]);
    }

    #[test]
    fn hot_list_decays_with_age() {
        let day = 86_400;
        // Item 0: three interactions four weeks ago. Item 1: two today. Item 2: one a week ago.
        let now = 100 * day;
        let train = vec![
            r(0, 0, now - 28 * day),
            r(0, 0, now - 28 * day),
            r(0, 0, now - 28 * day),
            r(0, 1, now),
            r(0, 1, now),
            r(0, 2, now - 7 * day),
        ];
        let (hot, popular) = hot_lists(&train, 4, 7.0, 2000);
        assert_eq!(
            hot.iter().map(|h| h.0).collect::<Vec<_>>(),
            [1, 2, 0],
            "recent beats frequent-but-old"
        );
        assert_eq!(
            popular.iter().map(|h| h.0).collect::<Vec<_>>(),
            [0, 1, 2],
            "all-time counts ignore age"
        );
        // One half-life halves the weight; four halve it four times.
        assert!((hot[1].1 - 0.5).abs() < 1e-6, "{hot:?}");
        assert!((hot[2].1 - 3.0 / 16.0).abs() < 1e-6, "{hot:?}");
        assert_eq!(hot[0].1, 2.0);
        assert!(hot.iter().all(|h| h.0 != 3), "never-seen items are not hot");
    }

    /// A world where what users rate next is what was popular long ago (item 0: many old
    /// ratings) rather than lately (item 1: a few recent ones): a long half-life must win.
    /// And the mirror world, where the latest fad is what comes next: a short one must.
    #[test]
    fn the_half_life_follows_what_validation_users_rate_next() {
        let day = 86_400;
        let world = |next: u32| {
            let mut rs = Vec::new();
            for u in 0..40u32 {
                // Old, frequent: item 0 rated by 30 "background" users 200 days ago.
                if u < 30 {
                    rs.push(r(100 + u, 0, 0));
                }
                // Recent, few: item 1 rated by 5 others yesterday.
                if u < 5 {
                    rs.push(r(200 + u, 1, 199 * day));
                }
                // Each user: four filler items, then (held out in the validation world) `next`.
                for k in 0..4 {
                    rs.push(r(u, 10 + u * 4 + k, (150 + k as i64) * day));
                }
                rs.push(r(u, next, 199 * day + 10));
            }
            rs
        };
        let grid = [1.0, 365.0];
        let (long, trials) = tune_half_life(&world(0), 200, 0.2, 5, &grid).unwrap();
        assert_eq!(long, 365.0, "{trials:?}");
        assert_eq!(trials.len(), 2);
        let (short, trials) = tune_half_life(&world(1), 200, 0.2, 5, &grid).unwrap();
        assert_eq!(short, 1.0, "{trials:?}");
        assert!(trials.iter().all(|t| (0.0..=1.0).contains(&t.ndcg_20)));
    }

    #[test]
    fn too_little_data_keeps_the_default() {
        let rs = vec![r(0, 0, 0), r(0, 1, 1)];
        assert_eq!(tune_half_life(&rs, 2, 0.2, 5, HALF_LIFE_GRID), None);
    }
}
