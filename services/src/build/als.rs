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
    /// The item matrix's scan layout and norms, derived on first use.
    #[serde(skip)]
    derived: std::sync::OnceLock<Derived>,
}

/// What the recall scans derive from the item matrix once.
#[derive(Clone, Debug, Default)]
struct Derived {
    /// The item matrix transposed (`dim` rows of one coordinate for every item), so a scan
    /// is `dim` multiply-adds down contiguous arrays, all SIMD lanes busy and no per-item
    /// horizontal sum.
    columns: Vec<f32>,
    /// `1 / |item|` per item (0 for a zero vector): cosine = dot × this.
    inverse_norms: Vec<f32>,
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
    /// Every item's dot product with `q`, in id order, into `out` (resized to the item
    /// count): for each coordinate `d`, `out += q[d] × column d`.
    pub fn scan_into(&self, q: &[f32], out: &mut Vec<f32>) {
        let n = self.n_items();
        out.clear();
        out.resize(n, 0.0);
        if n == 0 {
            return;
        }
        for (&qd, column) in q.iter().zip(self.derived().columns.chunks_exact(n)) {
            for (o, &x) in out.iter_mut().zip(column) {
                *o += qd * x;
            }
        }
    }

    /// `1 / |item i|` for every item (0 for a zero vector): cosine = dot × this.
    pub fn inverse_norms(&self) -> &[f32] {
        &self.derived().inverse_norms
    }

    fn derived(&self) -> &Derived {
        self.derived.get_or_init(|| {
            let (dim, n) = (self.dim.max(1), self.n_items());
            let mut columns = vec![0f32; self.items.len()];
            let mut inverse_norms = Vec::with_capacity(n);
            for (i, row) in self.items.chunks_exact(dim).enumerate() {
                for (d, &x) in row.iter().enumerate() {
                    columns[d * n + i] = x;
                }
                let norm = dot(row, row).sqrt();
                inverse_norms.push(if norm > 0.0 { 1.0 / norm } else { 0.0 });
            }
            Derived { columns, inverse_norms }
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
        derived: Default::default(),
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
    fn the_column_scan_gives_every_items_dot_product() {
        let (dim, n) = (5, 23);
        let f = Factors {
            dim,
            users: Vec::new(),
            items: (0..dim * n).map(|x| ((x * 7919) % 113) as f32 / 50.0 - 1.0).collect(),
            derived: Default::default(),
        };
        let q: Vec<f32> = (0..dim).map(|d| 0.5 - d as f32 * 0.3).collect();
        let mut out = vec![9.0; 3];
        f.scan_into(&q, &mut out);
        assert_eq!(out.len(), n);
        for (i, s) in out.iter().enumerate() {
            let want = dot(&q, f.item(i as u32));
            assert!((s - want).abs() < 1e-5, "item {i}: {s} vs {want}");
            let norm = dot(f.item(i as u32), f.item(i as u32)).sqrt();
            assert!((f.inverse_norms()[i] * norm - 1.0).abs() < 1e-5);
        }
        let empty = Factors::default();
        empty.scan_into(&[], &mut out);
        assert!(out.is_empty() && empty.inverse_norms().is_empty());
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
