//! The best `k` of a scored list, in one deterministic order (score descending, then the
//! lower id): what every recall channel and the CF build cut their lists with.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Keeps the `k` best (score descending, then index ascending), sorted.
pub fn top_k(scored: &mut Vec<(u32, f32)>, k: usize) {
    if scored.len() > k {
        scored.select_nth_unstable_by(k, better_first);
        scored.truncate(k);
    }
    scored.sort_unstable_by(better_first);
}

/// Highest score first, ties by lower id.
fn better_first(x: &(u32, f32), y: &(u32, f32)) -> Ordering {
    y.1.total_cmp(&x.1).then(x.0.cmp(&y.0))
}

/// The best `k` of a stream of (id, score), in [`top_k`]'s order, holding only `k` at a time:
/// a heap whose top is the worst kept, so most of a catalogue-wide scan costs one comparison
/// per item and no allocation.
pub fn top_k_of(scored: impl Iterator<Item = (u32, f32)>, k: usize) -> Vec<(u32, f32)> {
    /// Orders by [`better_first`], so the max-heap's top is the worst kept.
    struct Kept((u32, f32));
    impl PartialEq for Kept {
        fn eq(&self, other: &Self) -> bool {
            self.cmp(other) == Ordering::Equal
        }
    }
    impl Eq for Kept {}
    impl PartialOrd for Kept {
        fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Kept {
        fn cmp(&self, other: &Self) -> Ordering {
            better_first(&self.0, &other.0)
        }
    }
    if k == 0 {
        return Vec::new();
    }
    let mut heap = BinaryHeap::with_capacity(k + 1);
    // The worst score kept once the heap is full: anything scoring below it is out with one
    // float comparison.
    let mut floor = f32::NEG_INFINITY;
    for x in scored {
        if heap.len() < k {
            heap.push(Kept(x));
        } else if x.1.total_cmp(&floor) != Ordering::Less
            && let Some(mut worst) = heap.peek_mut()
            && better_first(&x, &worst.0) == Ordering::Less
        {
            *worst = Kept(x);
        } else {
            continue;
        }
        if heap.len() == k
            && let Some(worst) = heap.peek()
        {
            floor = worst.0.1;
        }
    }
    let mut v: Vec<(u32, f32)> = heap.into_iter().map(|k| k.0).collect();
    v.sort_unstable_by(better_first);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_of_a_stream_equals_top_k_of_the_whole_list() {
        // Scores from a small set so ties are common; ids in a scrambled order.
        for len in [0usize, 1, 5, 64, 1000] {
            let list: Vec<(u32, f32)> = (0..len as u32)
                .map(|i| ((i * 7919) % 1009, ((i * 31) % 13) as f32 * 0.5 - 2.0))
                .collect();
            for k in [0, 1, 3, 10, 500, 2000] {
                let mut whole = list.clone();
                top_k(&mut whole, k);
                assert_eq!(top_k_of(list.iter().copied(), k), whole, "len {len}, k {k}");
            }
        }
    }

    #[test]
    fn top_k_is_sorted_and_breaks_ties_by_index() {
        let mut v = vec![(5, 0.5), (1, 0.9), (3, 0.5), (2, 0.1)];
        top_k(&mut v, 3);
        assert_eq!(v, vec![(1, 0.9), (3, 0.5), (5, 0.5)]);
    }
}
