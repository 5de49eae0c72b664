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
}

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
