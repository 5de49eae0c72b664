//! Sequential co-occurrence: for each item, the items users rated soon after it.
//!
//! Within each user's training history in time order, every item rated up to `window` ratings
//! after item `a` counts towards the pair `a → b`, weighted `1 / gap` (the very next rating
//! counts fully, the fifth a fifth). Each item's counts are divided by `sqrt(ratings of a)`,
//! so the lists of heavily rated items do not drown the others when the channel sums several
//! seeds. Unlike item-CF's cosine (which ignores order), this says what people watch *next*:
//! on MovieTweetings, where new releases dominate, the order carries the time.

use rayon::prelude::*;
use recstack_core::topk::top_k;

/// Top-`k` next items of every item. `sequences[u]` is user `u`'s items, oldest first.
/// Deterministic: ties are broken by item id.
pub fn next_items(sequences: &[Vec<u32>], n_items: usize, window: usize, k: usize) -> Vec<Vec<(u32, f32)>> {
    // Pairs grouped by their first item, so each item's list is built by one task.
    let mut after: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n_items];
    let mut count = vec![0u32; n_items];
    for seq in sequences {
        for (pos, &a) in seq.iter().enumerate() {
            count[a as usize] += 1;
            for (gap, &b) in seq.iter().skip(pos + 1).take(window).enumerate() {
                if b != a {
                    after[a as usize].push((b, 1.0 / (gap as f32 + 1.0)));
                }
            }
        }
    }
    after
        .into_par_iter()
        .enumerate()
        .map(|(a, mut pairs)| {
            if pairs.is_empty() {
                return pairs;
            }
            pairs.sort_unstable_by_key(|p| p.0);
            let norm = (count[a] as f32).sqrt();
            let mut summed: Vec<(u32, f32)> = Vec::with_capacity(pairs.len());
            for (b, w) in pairs {
                match summed.last_mut() {
                    Some(last) if last.0 == b => last.1 += w,
                    _ => summed.push((b, w)),
                }
            }
            for s in &mut summed {
                s.1 /= norm;
            }
            top_k(&mut summed, k);
            summed
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_rating_counts_most_and_order_matters() {
        // Two users watch 0 then 1; one watches 0, 2, 1.
        let seqs = vec![vec![0, 1], vec![0, 1], vec![0, 2, 1]];
        let next = next_items(&seqs, 3, 5, 10);
        let norm = 3f32.sqrt();
        assert_eq!(next[0][0].0, 1);
        assert!((next[0][0].1 - 2.5 / norm).abs() < 1e-6, "{:?}", next[0]);
        assert_eq!(next[0][1].0, 2);
        assert!((next[0][1].1 - 1.0 / norm).abs() < 1e-6);
        // 1 is never followed by anything but once by nothing; 2 is followed by 1 once.
        assert!(next[1].is_empty(), "nothing came after 1: {:?}", next[1]);
        assert_eq!(next[2], vec![(1, 1.0)]);
    }

    #[test]
    fn the_window_and_the_length_bound_the_lists() {
        let seqs = vec![vec![0, 1, 2, 3, 4]];
        let next = next_items(&seqs, 5, 2, 10);
        assert_eq!(next[0].iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2]);
        let next = next_items(&seqs, 5, 4, 3);
        assert_eq!(next[0].iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn repeats_of_an_item_do_not_follow_themselves() {
        let next = next_items(&[vec![0, 0, 1]], 2, 5, 10);
        assert_eq!(next[0].iter().map(|p| p.0).collect::<Vec<_>>(), [1]);
    }
}
