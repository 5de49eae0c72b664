//! `recstack eval`: recall@50, recall@200 and NDCG@20 of each channel, of the merged set and
//! of a popularity baseline, on the held-out ratings (each user's most recent ones).

use std::collections::{BTreeMap, HashSet};

use indicatif::ProgressBar;
use rayon::prelude::*;

use crate::build::Artifacts;
use recstack_core::recall::{self, Channel};

/// Averages over the evaluated users.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Metrics {
    pub recall_50: f64,
    pub recall_200: f64,
    pub ndcg_20: f64,
}

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

fn score(ranked: &[u32], truth: &HashSet<u32>) -> Metrics {
    Metrics {
        recall_50: recall_at(ranked, truth, 50),
        recall_200: recall_at(ranked, truth, 200),
        ndcg_20: ndcg_at(ranked, truth, 20),
    }
}

/// Evaluates every channel, the merged set (6 × 200 → 1,000) and the popularity baseline.
/// Returns (rows by name, users evaluated).
pub fn evaluate(a: &Artifacts, show_progress: bool) -> (BTreeMap<String, Metrics>, usize) {
    let mut truth: BTreeMap<u32, HashSet<u32>> = BTreeMap::new();
    for r in &a.holdout {
        truth.entry(r.user).or_default().insert(r.item);
    }
    let bar = if show_progress {
        ProgressBar::new(truth.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    let per_user: Vec<Vec<(String, Metrics)>> = truth
        .par_iter()
        .map(|(&user, t)| {
            let mut rows = Vec::with_capacity(8);
            let h = recall::UserHistory::new(a, user);
            for c in Channel::ALL {
                let list: Vec<u32> = recall::channel_for(a, &h, c, 200).items.iter().map(|x| x.0).collect();
                rows.push((c.name().to_string(), score(&list, t)));
            }
            let merged: Vec<u32> = recall::recall(a, &h, 200, 1000).iter().map(|c| c.item).collect();
            rows.push(("merged".to_string(), score(&merged, t)));
            let popular: Vec<u32> = recall::popular(a, &h, 200).iter().map(|x| x.0).collect();
            rows.push(("popularity baseline".to_string(), score(&popular, t)));
            bar.inc(1);
            rows
        })
        .collect();
    bar.finish_and_clear();
    let n = per_user.len().max(1) as f64;
    let mut sums: BTreeMap<String, Metrics> = BTreeMap::new();
    for rows in per_user {
        for (name, m) in rows {
            let s = sums.entry(name).or_default();
            s.recall_50 += m.recall_50 / n;
            s.recall_200 += m.recall_200 / n;
            s.ndcg_20 += m.ndcg_20 / n;
        }
    }
    (sums, truth.len())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
