//! Item-CF and user-CF neighbours: cosine similarity of implicit interactions, with each
//! co-occurrence damped by the activity of whoever links the pair (a user who rated 2,000
//! movies says less about any two of them than one who rated 10).

use rayon::prelude::*;
use recstack_core::topk::top_k;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
