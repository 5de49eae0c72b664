//! The best `k` of a scored list, in one deterministic order (score descending, then the
//! lower id): what every recall channel and the CF build cut their lists with.

use std::cmp::Ordering;

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

/// The best `k` of a stream of (id, score) that `keep` admits, in [`top_k`]'s order, holding
/// at most `2k` (64 for small `k`) at a time: items go into a buffer, and a full buffer is cut
/// to its best `k` (a selection, linear in the buffer), whose worst score becomes the floor
/// every later item is checked against first. Most of a catalogue-wide scan is one float
/// comparison per item; the cuts cost amortised O(1) an item even for a stream in ascending
/// order, where a bounded heap paid a sift (log `k` comparisons and moves) for every item it
/// took. No allocation past the buffer.
///
/// `keep` runs only on items that would get past the floor: in a catalogue-wide scan most items
/// fail the floor check, which the CPU predicts, while a filter such as "score above 0" passes
/// about half at random, and a mispredicted branch per item cost more than the rest of the scan
/// (BENCHMARKS.md, "Scoring the catalogue").
pub fn top_k_where(
    scored: impl Iterator<Item = (u32, f32)>,
    k: usize,
    keep: impl Fn(&(u32, f32)) -> bool,
) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let cap = 2 * k.max(MIN_BUFFER / 2);
    let mut kept: Vec<(u32, f32)> = Vec::with_capacity(cap);
    // Anything scoring below the k-th best kept so far is out. (`<` never holds where
    // [`better_first`]'s `total_cmp` would not order the item below the floor; what it lets
    // through — NaN, -0 against 0 — the cut orders as `total_cmp` does. Equal scores go in and
    // are cut by their id.)
    let mut floor = f32::NEG_INFINITY;
    for x in scored {
        if x.1 < floor || !keep(&x) {
            continue;
        }
        kept.push(x);
        if kept.len() == cap {
            kept.select_nth_unstable_by(k - 1, better_first);
            kept.truncate(k);
            floor = kept[k - 1].1;
        }
    }
    top_k(&mut kept, k);
    kept
}

/// The smallest buffer [`top_k_where`] cuts (for small `k`, cutting every `k` items costs more
/// than it saves).
const MIN_BUFFER: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_where_of_a_stream_equals_top_k_of_the_whole_list() {
        // Scores from a small set so ties are common; ids in a scrambled order.
        for len in [0usize, 1, 5, 64, 1000] {
            let list: Vec<(u32, f32)> = (0..len as u32)
                .map(|i| ((i * 7919) % 1009, ((i * 31) % 13) as f32 * 0.5 - 2.0))
                .collect();
            for k in [0, 1, 3, 10, 31, 32, 33, 500, 2000] {
                let mut whole = list.clone();
                top_k(&mut whole, k);
                assert_eq!(
                    top_k_where(list.iter().copied(), k, |_| true),
                    whole,
                    "len {len}, k {k}"
                );
            }
        }
    }

    #[test]
    fn top_k_where_is_top_k_of_the_items_kept() {
        let list: Vec<(u32, f32)> = (0..3_000u32).map(|i| (i, ((i * 7919) % 601) as f32 - 300.0)).collect();
        let keep = |x: &(u32, f32)| x.1 > 0.0 && !x.0.is_multiple_of(3);
        for k in [1, 10, 200, 2_000] {
            let mut want: Vec<(u32, f32)> = list.iter().copied().filter(keep).collect();
            top_k(&mut want, k);
            assert_eq!(top_k_where(list.iter().copied(), k, keep), want, "k {k}");
        }
    }

    #[test]
    fn top_k_where_holds_in_every_arrival_order() {
        // Ascending scores cut the buffer most often, descending never; the same score
        // everywhere leaves only the ids to decide; infinities and NaN sort as `total_cmp` says.
        let n = 5_000u32;
        let orders: Vec<Vec<(u32, f32)>> = vec![
            (0..n).map(|i| (i, i as f32)).collect(),
            (0..n).map(|i| (i, -(i as f32))).collect(),
            (0..n).rev().map(|i| (i, 1.0)).collect(),
            (0..n).map(|i| (n - i, (i % 3) as f32)).collect(),
            (0..n)
                .map(|i| {
                    let s = match i % 5 {
                        0 => f32::INFINITY,
                        1 => f32::NEG_INFINITY,
                        2 => f32::NAN,
                        3 => -0.0,
                        _ => 0.0,
                    };
                    ((i * 7919) % n, s)
                })
                .collect(),
        ];
        for (o, list) in orders.iter().enumerate() {
            for k in [1, 2, 31, 32, 33, 200, 4_999, 5_000, 6_000] {
                let mut whole = list.clone();
                top_k(&mut whole, k);
                let got = top_k_where(list.iter().copied(), k, |_| true);
                // NaN != NaN: compare the bits.
                let bits = |v: &[(u32, f32)]| v.iter().map(|(i, s)| (*i, s.to_bits())).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&whole), "order {o}, k {k}");
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
