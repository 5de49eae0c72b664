//! Item-CF and user-CF neighbours: cosine similarity of implicit interactions, with each
//! co-occurrence damped by the activity of whoever links the pair (a user who rated 2,000
//! movies says less about any two of them than one who rated 10).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rayon::prelude::*;

/// Top-`k` neighbours of every row of a bipartite interaction graph.
///
/// `rows[r]` lists the columns row `r` interacted with; `cols[c]` the rows that interacted
/// with column `c`. The similarity of rows `a` and `b` is
/// `Σ_c∈a∩b 1/ln(2+|cols[c]|)  /  sqrt(|a|·|b|)`. Ties are broken by index, so the result
/// is deterministic.
pub fn neighbours(rows: &[Vec<u32>], cols: &[Vec<u32>], k: usize, tick: &(dyn Fn() + Sync)) -> Vec<Vec<(u32, f32)>> {
    let weights: Vec<f32> = cols.iter().map(|c| 1.0 / (2.0 + c.len() as f32).ln()).collect();
    (0..rows.len())
        .into_par_iter()
        .map_init(
            || (vec![0f32; rows.len()], Vec::<u32>::new()),
            |(acc, touched), a| {
                for &c in &rows[a] {
                    let w = weights[c as usize];
                    for &b in &cols[c as usize] {
                        if b as usize != a {
                            if acc[b as usize] == 0.0 {
                                touched.push(b);
                            }
                            acc[b as usize] += w;
                        }
                    }
                }
                let norm_a = (rows[a].len() as f32).sqrt();
                let mut scored: Vec<(u32, f32)> = touched
                    .iter()
                    .map(|&b| (b, acc[b as usize] / (norm_a * (rows[b as usize].len() as f32).sqrt())))
                    .collect();
                for &b in touched.iter() {
                    acc[b as usize] = 0.0;
                }
                touched.clear();
                top_k(&mut scored, k);
                tick();
                scored
            },
        )
        .collect()
}

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
    fn items_seen_together_are_neighbours() {
        // users × items: u0 {0,1}, u1 {0,1}, u2 {1,2}, u3 {3}
        let users = vec![vec![0, 1], vec![0, 1], vec![1, 2], vec![3]];
        let items = vec![vec![0, 1], vec![0, 1, 2], vec![2], vec![3]];
        let nb = neighbours(&items, &users, 10, &|| ());
        assert_eq!(nb[0].iter().map(|n| n.0).collect::<Vec<_>>(), [1]);
        assert_eq!(
            nb[1].iter().map(|n| n.0).collect::<Vec<_>>(),
            [0, 2],
            "0 shares two users, 2 one"
        );
        assert!(nb[0][0].1 > nb[1][1].1);
        assert!(nb[3].is_empty(), "nothing co-occurs with item 3");
        // Symmetric similarity.
        let s01 = nb[0].iter().find(|n| n.0 == 1).unwrap().1;
        let s10 = nb[1].iter().find(|n| n.0 == 0).unwrap().1;
        assert!((s01 - s10).abs() < 1e-6);
    }

    #[test]
    fn top_k_is_sorted_and_breaks_ties_by_index() {
        let mut v = vec![(5, 0.5), (1, 0.9), (3, 0.5), (2, 0.1)];
        top_k(&mut v, 3);
        assert_eq!(v, vec![(1, 0.9), (3, 0.5), (5, 0.5)]);
    }
}
