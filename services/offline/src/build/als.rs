//! Implicit-feedback ALS (Hu, Koren, Volinsky 2008): user and item factors such that
//! `u·i ≈ 1` where a user interacted with an item, weighted by confidence `1 + α·r/10`.
//!
//! Each half-step solves one small `f×f` system per user (or item) with nalgebra's Cholesky;
//! the solves are independent, so they run in parallel and the result does not depend on
//! the thread count.

use nalgebra::{DMatrix, DVector};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
pub use recstack_core::artifacts::factors::{AlsParams, Factors, dot};

/// `by_user[u]` = (item, rating 0–10) pairs; `by_item[i]` = (user, rating).
pub fn train(
    by_user: &[Vec<(u32, u8)>],
    by_item: &[Vec<(u32, u8)>],
    p: &AlsParams,
    seed: u64,
    on_iteration: &dyn Fn(usize),
) -> Factors {
    let f = p.factors;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut init = |n: usize| -> Vec<f32> { (0..n * f).map(|_| rng.gen_range(-0.01..0.01)).collect() };
    let mut users = init(by_user.len());
    let mut items = init(by_item.len());
    for it in 0..p.iterations {
        users = half_step(by_user, &items, p);
        items = half_step(by_item, &users, p);
        on_iteration(it + 1);
    }
    Factors::new(f, users, items)
}

/// Solves every row's factors given the other side's fixed factors `y`.
fn half_step(rows: &[Vec<(u32, u8)>], y: &[f32], p: &AlsParams) -> Vec<f32> {
    let f = p.factors;
    let n_other = y.len() / f;
    let ym = DMatrix::from_row_slice(n_other, f, y);
    let yty = ym.transpose() * &ym;
    let solved: Vec<Vec<f32>> = rows
        .par_iter()
        .map(|row| {
            if row.is_empty() {
                return vec![0.0; f];
            }
            // A = YᵀY + Yᵤᵀ(Cᵤ − I)Yᵤ + λI,  b = YᵤᵀCᵤp(u)
            let mut a = yty.clone();
            let mut b = DVector::<f32>::zeros(f);
            for &(j, r) in row {
                let c = 1.0 + p.alpha * f32::from(r) / 10.0;
                let yj = &y[j as usize * f..(j as usize + 1) * f];
                for x in 0..f {
                    b[x] += c * yj[x];
                    let cx = (c - 1.0) * yj[x];
                    for z in 0..f {
                        a[(x, z)] += cx * yj[z];
                    }
                }
            }
            for x in 0..f {
                a[(x, x)] += p.regularization * row.len() as f32;
            }
            match a.cholesky() {
                Some(ch) => ch.solve(&b).iter().copied().collect(),
                None => vec![0.0; f],
            }
        })
        .collect();
    solved.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_the_plain_sum() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.25 - 3.0).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 / (1.0 + i as f32)).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-4, "{} vs {plain}", dot(&a, &b));
        assert_eq!(dot(&[], &[]), 0.0);
    }

    #[test]
    fn learns_the_block_structure() {
        // Two taste groups: users 0–3 like items 0–3, users 4–7 like items 4–7.
        let mut by_user = vec![Vec::new(); 8];
        let mut by_item = vec![Vec::new(); 8];
        for u in 0..8u32 {
            let base = if u < 4 { 0 } else { 4 };
            for i in base..base + 4 {
                if (u + i) % 4 != 0 {
                    by_user[u as usize].push((i, 8));
                    by_item[i as usize].push((u, 8));
                }
            }
        }
        let p = AlsParams {
            factors: 4,
            iterations: 10,
            regularization: 0.01,
            alpha: 10.0,
        };
        let f = train(&by_user, &by_item, &p, 7, &|_| ());
        // User 0 never saw item 0 (held out by the pattern) but it scores above every item of
        // the other group.
        let own = dot(f.user(0), f.item(0));
        for other in 4..8 {
            assert!(own > dot(f.user(0), f.item(other)), "item {other}");
        }
        // Same seed, same factors.
        assert_eq!(f, train(&by_user, &by_item, &p, 7, &|_| ()));
    }
}
