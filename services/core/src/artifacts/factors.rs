//! The factor matrices of the ALS channel (trained offline, `recstack_offline::build::als`)
//! and the dot product every vector scan runs on.

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
    /// The items' factors again, laid out for [`Factors::scan_into`]: blocks of [`BLOCK`]
    /// items, each block dimension-major (the block's first factor for each of its items, then
    /// its second, …), the last block padded with zero items. Derived on first scan.
    #[serde(skip)]
    blocked: std::sync::OnceLock<Vec<f32>>,
}

/// Items a scan scores at once: one dimension's factor of each is a run of contiguous floats,
/// which the compiler turns into a few SIMD multiply-adds, with no sum across lanes per item.
const BLOCK: usize = 16;

/// Equal factors are equal whether or not either has derived its norms yet.
impl PartialEq for Factors {
    fn eq(&self, other: &Self) -> bool {
        (self.dim, &self.users, &self.items) == (other.dim, &other.users, &other.items)
    }
}

impl Factors {
    /// Factors of `dim` dimensions, users' and items' rows laid end to end.
    pub fn new(dim: usize, users: Vec<f32>, items: Vec<f32>) -> Self {
        Self {
            dim,
            users,
            items,
            inverse_norms: std::sync::OnceLock::new(),
            blocked: std::sync::OnceLock::new(),
        }
    }

    pub fn user(&self, u: u32) -> &[f32] {
        &self.users[u as usize * self.dim..(u as usize + 1) * self.dim]
    }
    pub fn item(&self, i: u32) -> &[f32] {
        &self.items[i as usize * self.dim..(i as usize + 1) * self.dim]
    }
    pub fn n_items(&self) -> usize {
        self.items.len() / self.dim.max(1)
    }
    /// Every item's dot product with `q`, by item id, into `out` (cleared first): one pass
    /// down the blocked layout, [`BLOCK`] items at a time. The recall channels that score the
    /// whole catalogue run on this; a row at a time through [`dot`] pays a sum across SIMD
    /// lanes for every item, which was most of its time (BENCHMARKS.md, "Scoring the
    /// catalogue"). Equal to [`dot`] up to float rounding (the sums run in another order).
    pub fn scan_into(&self, q: &[f32], out: &mut Vec<f32>) {
        out.clear();
        let (dim, n) = (self.dim, self.n_items());
        if dim == 0 || n == 0 {
            return;
        }
        // A query of another length reads as this one's, missing factors 0.
        let padded: Vec<f32>;
        let q = if q.len() == dim {
            q
        } else {
            padded = q.iter().copied().chain(std::iter::repeat(0.0)).take(dim).collect();
            &padded
        };
        out.reserve(n.next_multiple_of(BLOCK));
        for block in self.blocked().chunks_exact(dim * BLOCK) {
            out.extend_from_slice(&block_dots(q, block));
        }
        out.truncate(n);
    }

    fn blocked(&self) -> &[f32] {
        self.blocked.get_or_init(|| {
            let dim = self.dim.max(1);
            let mut blocked = vec![0.0; self.n_items().next_multiple_of(BLOCK) * dim];
            for (i, row) in self.items.chunks_exact(dim).enumerate() {
                let (block, lane) = (i / BLOCK, i % BLOCK);
                for (d, &x) in row.iter().enumerate() {
                    blocked[(block * dim + d) * BLOCK + lane] = x;
                }
            }
            blocked
        })
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

/// `q`'s dot product with each of a block's [`BLOCK`] items (`block`: `dim` runs of
/// [`BLOCK`] floats).
fn block_dots(q: &[f32], block: &[f32]) -> [f32; BLOCK] {
    let mut sums = [0f32; BLOCK];
    for (&qd, lanes) in q.iter().zip(block.chunks_exact(BLOCK)) {
        for (sum, &x) in sums.iter_mut().zip(lanes) {
            *sum += qd * x;
        }
    }
    sums
}

/// Dot product. Eight independent accumulators let the compiler use SIMD lanes (a plain
/// `zip().sum()` must add in order and stays scalar). For one pair of vectors (the HNSW
/// index's distance, the offline build); a whole catalogue is scored by
/// [`Factors::scan_into`].
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

    /// Factors with `n` items of `dim` dimensions, values spread over both signs.
    fn factors(n: usize, dim: usize) -> Factors {
        let value = |i: usize| ((i * 7919 % 1013) as f32 - 506.0) / 100.0;
        Factors::new(
            dim,
            (0..dim).map(value).collect(),
            (0..n * dim).map(|i| value(i + 3)).collect(),
        )
    }

    #[test]
    fn a_scan_scores_every_item_as_its_dot_product() {
        let mut out = vec![42.0];
        for dim in [1, 2, 7, 8, 16, 31, 32, 33, 64] {
            for n in [1, 15, 16, 17, 40, 1000] {
                let f = factors(n, dim);
                let q = f.user(0);
                f.scan_into(q, &mut out);
                assert_eq!(out.len(), n, "dim {dim}, n {n}");
                for (i, &s) in out.iter().enumerate() {
                    let want = dot(q, f.item(i as u32));
                    assert!(
                        (s - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "dim {dim}, item {i}: {s} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_query_of_another_length_reads_missing_factors_as_zero() {
        let f = factors(20, 5);
        let mut out = Vec::new();
        f.scan_into(&[1.0, 0.0, 0.0], &mut out);
        let firsts: Vec<f32> = (0..20).map(|i| f.item(i)[0]).collect();
        assert_eq!(out, firsts);
        f.scan_into(&[1.0, 0.0, 0.0, 0.0, 0.0, 9.0, 9.0], &mut out);
        assert_eq!(out, firsts);
    }

    #[test]
    fn nothing_to_scan_is_an_empty_answer() {
        let mut out = vec![1.0];
        Factors::default().scan_into(&[], &mut out);
        assert!(out.is_empty());
        factors(0, 8).scan_into(&[1.0; 8], &mut out);
        assert!(out.is_empty());
    }
}
