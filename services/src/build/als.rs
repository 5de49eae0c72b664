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

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AlsParams {
    pub factors: usize,
    pub iterations: usize,
    pub regularization: f32,
    pub alpha: f32,
}

impl Default for AlsParams {
    fn default() -> Self {
        Self {
            factors: 32,
            iterations: 12,
            regularization: 0.05,
            alpha: 20.0,
        }
    }
}

/// Row-major factor matrices.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Factors {
    pub dim: usize,
    pub users: Vec<f32>,
    pub items: Vec<f32>,
    /// `1 / |item|` per item (0 for a zero vector), derived on first use for cosine scans.
    #[serde(skip)]
    inverse_norms: std::sync::OnceLock<Vec<f32>>,
}

/// Equal factors are equal whether or not either has derived its norms yet.
impl PartialEq for Factors {
    fn eq(&self, other: &Self) -> bool {
        (self.dim, &self.users, &self.items) == (other.dim, &other.users, &other.items)
    }
}

impl Factors {
    pub fn user(&self, u: u32) -> &[f32] {
        &self.users[u as usize * self.dim..(u as usize + 1) * self.dim]
    }
    pub fn item(&self, i: u32) -> &[f32] {
        &self.items[i as usize * self.dim..(i as usize + 1) * self.dim]
    }
    pub fn n_items(&self) -> usize {
        self.items.len() / self.dim.max(1)
    }
    /// Every item's dot product with `q`, in id order: one pass down the row-major matrix.
    pub fn scan<'a>(&'a self, q: &'a [f32]) -> impl Iterator<Item = (u32, f32)> + 'a {
        self.items
            .chunks_exact(self.dim.max(1))
            .enumerate()
            .map(move |(i, row)| (i as u32, dot(q, row)))
    }

    /// `1 / |item i|` for every item (0 for a zero vector): cosine = dot × this.
    pub fn inverse_norms(&self) -> &[f32] {
        self.inverse_norms.get_or_init(|| {
            self.items
                .chunks_exact(self.dim.max(1))
                .map(|v| {
                    let norm = dot(v, v).sqrt();
                    if norm > 0.0 { 1.0 / norm } else { 0.0 }
                })
                .collect()
        })
    }
}

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
    Factors {
        dim: f,
        users,
        items,
        inverse_norms: Default::default(),
    }
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

/// Dot product. Eight independent accumulators let the compiler use SIMD lanes (a plain
/// `zip().sum()` must add in order and stays scalar); this is the ALS channel's inner loop.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
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
