//! A factored model's first stage folded into tables: the service runs only the head per
//! request.
//!
//! A model card with a `factored` section (`scripts/split_ranker.py`) names two graphs beside
//! the model: `first` (the model's inputs → `pre`, `[batch, H]`) and `head` (`pre` → score).
//! When `first` is linear in the one-hot sparse ids and the dense values — an embedding lookup,
//! a concatenation and a Gemm, the first layer of most click-through-rate models — then for a
//! row `(s, d)`
//!
//! ```text
//! first(s, d) = base + Σ_f Δ_f[s_f] + Σ_j d_j · g_j
//! base = first(0, 0),  Δ_f[v] = first(s_f = v, else 0) − base,  g_j = first(d_j = 1, else 0) − base
//! ```
//!
//! [`FoldedFirst::build`] evaluates `first` once for every id of every sparse column and once
//! per dense column (~33,000 rows for the bundled DeepFM, at load time). A request then adds the
//! user's part once, each item's part precomputed with the item table, and the few columns that
//! cross user and item (`genre_affinity`, `item_age`) — three vector adds a row instead of the
//! graph's gather, concatenation and `[rows × 62] · [62 × 73]` product.
//!
//! The card's claim is checked, not trusted: [`FoldedFirst::mismatch`] compares folded and
//! direct values on random rows, and the ranking service refuses a model whose folded scores
//! differ from the whole graph's.

/// Where a column's value comes from, which decides when its part of `pre` is added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The user only: added once per request.
    User,
    /// The item only: added once per (model, item), when the item table is built.
    Item,
    /// Both (or neither): added per row.
    Cross,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FoldError {
    #[error("the first stage failed: {0}")]
    Stage(String),
    #[error("the first stage returned {values} values for {rows} rows")]
    Shape { values: usize, rows: usize },
}

/// `first` as tables (see the module docs).
#[derive(Clone, Debug)]
pub struct FoldedFirst {
    width: usize,
    base: Vec<f32>,
    /// Δ rows of every sparse column, concatenated: column `f`'s start at row `starts[f]`.
    table: Vec<f32>,
    starts: Vec<usize>,
    buckets: Vec<u32>,
    /// g rows, one per dense column.
    dense: Vec<f32>,
}

/// Rows per call of the first stage while folding.
const CHUNK: usize = 4096;

impl FoldedFirst {
    /// Evaluates the first stage (`eval(sparse, dense, rows)` → `rows × H` values, row-major) on
    /// the rows the tables need, for sparse columns with `buckets` ids each and `dense_cols`
    /// dense columns.
    pub fn build(
        buckets: &[u32],
        dense_cols: usize,
        mut eval: impl FnMut(&[i64], &[f32], usize) -> Result<Vec<f32>, String>,
    ) -> Result<Self, FoldError> {
        let sparse_cols = buckets.len();
        // Row 0 is all zeros; then each id of each sparse column; then each dense column at 1.
        let mut rows: Vec<(Vec<i64>, Vec<f32>)> = Vec::new();
        let zero = || (vec![0i64; sparse_cols], vec![0f32; dense_cols]);
        rows.push(zero());
        for (f, &b) in buckets.iter().enumerate() {
            for v in 0..i64::from(b) {
                let mut row = zero();
                row.0[f] = v;
                rows.push(row);
            }
        }
        for j in 0..dense_cols {
            let mut row = zero();
            row.1[j] = 1.0;
            rows.push(row);
        }
        let mut out: Vec<f32> = Vec::new();
        for chunk in rows.chunks(CHUNK) {
            let sparse: Vec<i64> = chunk.iter().flat_map(|r| r.0.iter().copied()).collect();
            let dense: Vec<f32> = chunk.iter().flat_map(|r| r.1.iter().copied()).collect();
            out.extend(eval(&sparse, &dense, chunk.len()).map_err(FoldError::Stage)?);
        }
        if out.is_empty() || !out.len().is_multiple_of(rows.len()) {
            return Err(FoldError::Shape {
                values: out.len(),
                rows: rows.len(),
            });
        }
        let width = out.len() / rows.len();
        let base = out[..width].to_vec();
        let minus_base = |row: &[f32]| row.iter().zip(&base).map(|(v, b)| v - b).collect::<Vec<f32>>();
        let ids: usize = buckets.iter().map(|&b| b as usize).sum();
        let table: Vec<f32> = out[width..(1 + ids) * width]
            .chunks(width)
            .flat_map(minus_base)
            .collect();
        let dense: Vec<f32> = out[(1 + ids) * width..].chunks(width).flat_map(minus_base).collect();
        let starts = buckets
            .iter()
            .scan(0usize, |at, &b| {
                let start = *at;
                *at += b as usize;
                Some(start)
            })
            .collect();
        Ok(Self {
            width,
            base,
            table,
            starts,
            buckets: buckets.to_vec(),
            dense,
        })
    }

    /// H: values per row of `pre`.
    pub fn width(&self) -> usize {
        self.width
    }

    /// `first` of the all-zero row: where every row's sum starts.
    pub fn base(&self) -> &[f32] {
        &self.base
    }

    /// Adds sparse column `col`'s part for id `id` to `out`. Ids come from the row writer,
    /// always below the column's bucket count; one outside it (which the graph would refuse)
    /// adds nothing rather than reading another column's rows.
    pub fn add_sparse(&self, out: &mut [f32], col: usize, id: i64) {
        if let Ok(v) = u32::try_from(id)
            && v < self.buckets[col]
        {
            let at = (self.starts[col] + v as usize) * self.width;
            add(out, &self.table[at..at + self.width]);
        }
    }

    /// Adds dense column `col`'s part for value `x` to `out`.
    pub fn add_dense(&self, out: &mut [f32], col: usize, x: f32) {
        if x != 0.0 {
            let g = &self.dense[col * self.width..(col + 1) * self.width];
            for (o, g) in out.iter_mut().zip(g) {
                *o += x * g;
            }
        }
    }

    /// Adds the parts of one row's columns that `take` selects (by side) to `out`.
    pub fn add_columns(
        &self,
        out: &mut [f32],
        (sparse, dense): (&[i64], &[f32]),
        (sparse_sides, dense_sides): (&[Side], &[Side]),
        take: impl Fn(Side) -> bool,
    ) {
        for (col, (&id, &side)) in sparse.iter().zip(sparse_sides).enumerate() {
            if take(side) {
                self.add_sparse(out, col, id);
            }
        }
        for (col, (&x, &side)) in dense.iter().zip(dense_sides).enumerate() {
            if take(side) {
                self.add_dense(out, col, x);
            }
        }
    }

    /// `first` of `rows` rows, folded: `rows × H` values.
    pub fn project(&self, sparse: &[i64], dense: &[f32], rows: usize) -> Vec<f32> {
        let (sw, dw) = (self.buckets.len(), self.dense.len() / self.width.max(1));
        let mut out = Vec::with_capacity(rows * self.width);
        for r in 0..rows {
            let start = out.len();
            out.extend_from_slice(&self.base);
            let row = &mut out[start..];
            for (col, &id) in sparse[r * sw..(r + 1) * sw].iter().enumerate() {
                self.add_sparse(row, col, id);
            }
            for (col, &x) in dense[r * dw..(r + 1) * dw].iter().enumerate() {
                self.add_dense(row, col, x);
            }
        }
        out
    }

    /// `rows` pseudo-random rows (ids across each column's range, dense values in 0–1), the
    /// same for a given seed: what the fold is checked on.
    pub fn sample_rows(&self, rows: usize, seed: u64) -> (Vec<i64>, Vec<f32>) {
        let mut state = seed | 1;
        let mut next = move || {
            // xorshift64*: enough spread for a check, no dependency.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11
        };
        let dense_cols = self.dense.len() / self.width.max(1);
        let mut sparse = Vec::with_capacity(rows * self.buckets.len());
        let mut dense = Vec::with_capacity(rows * dense_cols);
        for _ in 0..rows {
            sparse.extend(self.buckets.iter().map(|&b| (next() % u64::from(b.max(1))) as i64));
            dense.extend((0..dense_cols).map(|_| (next() % 1_000_000) as f32 / 1_000_000.0));
        }
        (sparse, dense)
    }

    /// The largest difference between `direct` (the first stage's own values for the rows) and
    /// the folded ones, relative to the largest direct value (at least 1).
    pub fn mismatch(&self, sparse: &[i64], dense: &[f32], rows: usize, direct: &[f32]) -> f32 {
        let folded = self.project(sparse, dense, rows);
        if folded.len() != direct.len() {
            return f32::INFINITY;
        }
        let scale = direct.iter().fold(1f32, |m, v| m.max(v.abs()));
        folded.iter().zip(direct).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
    }
}

/// Some dense columns' parts of `first` as one `[columns × H]` matrix (see
/// [`FoldedFirst::dense_block`]), so that a request's rows get them in one matrix product
/// rather than one vector add per row and column.
///
/// Why: a folded row is the user's part plus the item's plus ~8 columns that cross them, each
/// `x · g` over H = 73 values. Done row by row (as [`FoldedFirst::add_dense`] does) those adds
/// were a third of a request's rows and ran 4 floats at a time (the build targets every x86-64);
/// as `pre += X · G` the product runs in `matrixmultiply`'s kernels, which pick AVX2 and FMA at
/// run time where the CPU has them.
#[derive(Clone, Debug)]
pub struct DenseBlock {
    cols: Vec<usize>,
    /// Row `j`: column `cols[j]`'s part (g, `first(d_j = 1) − base`).
    g: ndarray::Array2<f32>,
}

impl FoldedFirst {
    /// Dense columns `cols`' parts as one matrix. A column beyond the stage's dense columns
    /// gets a zero part (it is not a column of the stage).
    pub fn dense_block(&self, cols: &[usize]) -> DenseBlock {
        let w = self.width;
        let mut g = ndarray::Array2::zeros((cols.len(), w));
        for (mut row, &col) in g.rows_mut().into_iter().zip(cols) {
            if let Some(part) = self.dense.get(col * w..(col + 1) * w) {
                row.iter_mut().zip(part).for_each(|(r, p)| *r = *p);
            }
        }
        DenseBlock { cols: cols.to_vec(), g }
    }
}

impl DenseBlock {
    /// The dense columns, in the order a row of `x` holds their values.
    pub fn cols(&self) -> &[usize] {
        &self.cols
    }

    /// Adds `Σ_j x[r][j] · g_j` to each row `r` of `pre`: `x` is `rows × cols().len()` values
    /// and `pre` `rows × H`, both row-major.
    pub fn add(&self, pre: &mut [f32], x: &[f32], rows: usize) -> Result<(), FoldError> {
        let (k, w) = self.g.dim();
        let shape = |values: usize| FoldError::Shape { values, rows };
        let x = ndarray::ArrayView2::from_shape((rows, k), x).map_err(|_| shape(x.len()))?;
        let values = pre.len();
        let mut pre = ndarray::ArrayViewMut2::from_shape((rows, w), pre).map_err(|_| shape(values))?;
        ndarray::linalg::general_mat_mul(1.0, &x, &self.g, 1.0, &mut pre);
        Ok(())
    }
}

/// `out += part`, element by element.
pub fn add(out: &mut [f32], part: &[f32]) {
    for (o, p) in out.iter_mut().zip(part) {
        *o += p;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A linear first stage: per-column embeddings and dense weights, then a bias, into H = 3.
    struct Linear {
        buckets: Vec<u32>,
        dense_cols: usize,
    }

    impl Linear {
        fn value(&self, sparse: &[i64], dense: &[f32]) -> Vec<f32> {
            let mut out = vec![0.5f32, -1.0, 2.0];
            for (f, &v) in sparse.iter().enumerate() {
                for (h, o) in out.iter_mut().enumerate() {
                    *o += ((f * 7 + v as usize * 3 + h) % 11) as f32 * 0.1 - 0.4;
                }
            }
            for (j, &x) in dense.iter().enumerate() {
                for (h, o) in out.iter_mut().enumerate() {
                    *o += x * (j as f32 - h as f32 * 0.5);
                }
            }
            out
        }

        fn eval(&self, sparse: &[i64], dense: &[f32], rows: usize) -> Result<Vec<f32>, String> {
            let (sw, dw) = (self.buckets.len(), self.dense_cols);
            Ok((0..rows)
                .flat_map(|r| self.value(&sparse[r * sw..(r + 1) * sw], &dense[r * dw..(r + 1) * dw]))
                .collect())
        }
    }

    fn linear() -> Linear {
        Linear {
            buckets: vec![5, 3, 4],
            dense_cols: 2,
        }
    }

    #[test]
    fn folding_a_linear_stage_reproduces_it() {
        let stage = linear();
        let folded = FoldedFirst::build(&stage.buckets, stage.dense_cols, |s, d, n| stage.eval(s, d, n)).unwrap();
        assert_eq!(folded.width(), 3);
        assert_eq!(folded.base(), &stage.value(&[0, 0, 0], &[0.0, 0.0])[..]);
        let (sparse, dense) = folded.sample_rows(200, 7);
        assert!(sparse.chunks(3).all(|r| r[0] < 5 && r[1] < 3 && r[2] < 4));
        let direct = stage.eval(&sparse, &dense, 200).unwrap();
        let projected = folded.project(&sparse, &dense, 200);
        for (a, b) in projected.iter().zip(&direct) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert!(folded.mismatch(&sparse, &dense, 200, &direct) < 1e-5);
    }

    #[test]
    fn a_non_linear_stage_shows_as_a_mismatch() {
        let stage = linear();
        let squared = |s: &[i64], d: &[f32], n: usize| {
            stage
                .eval(s, d, n)
                .map(|v| v.into_iter().map(|x| x * x).collect::<Vec<f32>>())
        };
        let folded = FoldedFirst::build(&stage.buckets, stage.dense_cols, squared).unwrap();
        let (sparse, dense) = folded.sample_rows(100, 3);
        let direct = squared(&sparse, &dense, 100).unwrap();
        assert!(folded.mismatch(&sparse, &dense, 100, &direct) > 0.01);
    }

    #[test]
    fn parts_by_side_add_up_to_the_whole_row() {
        let stage = linear();
        let folded = FoldedFirst::build(&stage.buckets, stage.dense_cols, |s, d, n| stage.eval(s, d, n)).unwrap();
        let sides = (
            &[Side::User, Side::Item, Side::Cross][..],
            &[Side::Item, Side::Cross][..],
        );
        let (sparse, dense) = ([4i64, 2, 1], [0.25f32, 0.75]);
        let mut row = folded.base().to_vec();
        for side in [Side::User, Side::Item, Side::Cross] {
            let mut part = vec![0.0; 3];
            folded.add_columns(&mut part, (&sparse, &dense), sides, |s| s == side);
            add(&mut row, &part);
        }
        let whole = stage.value(&sparse, &dense);
        for (a, b) in row.iter().zip(&whole) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn a_dense_block_adds_what_the_columns_add_one_by_one() {
        let stage = Linear {
            buckets: vec![2],
            dense_cols: 4,
        };
        let folded = FoldedFirst::build(&stage.buckets, stage.dense_cols, |s, d, n| stage.eval(s, d, n)).unwrap();
        // Columns out of order, one twice, one beyond the stage (adds nothing); values with zeros.
        let cols = [3, 0, 3, 9];
        let block = folded.dense_block(&cols);
        assert_eq!(block.cols(), &cols);
        let rows = 37;
        let x: Vec<f32> = (0..rows * cols.len())
            .map(|i| if i % 5 == 0 { 0.0 } else { (i % 13) as f32 / 7.0 - 0.6 })
            .collect();
        let start: Vec<f32> = (0..rows * 3).map(|i| i as f32 * 0.01).collect();
        let mut one_by_one = start.clone();
        for (r, row) in one_by_one.chunks_mut(3).enumerate() {
            for (j, &col) in cols.iter().enumerate() {
                if col < stage.dense_cols {
                    folded.add_dense(row, col, x[r * cols.len() + j]);
                }
            }
        }
        let mut blocked = start;
        block.add(&mut blocked, &x, rows).unwrap();
        for (a, b) in blocked.iter().zip(&one_by_one) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // No rows, and no columns: nothing to add.
        block.add(&mut [], &[], 0).unwrap();
        let mut unchanged = vec![1.0; 6];
        folded.dense_block(&[]).add(&mut unchanged, &[], 2).unwrap();
        assert_eq!(unchanged, vec![1.0; 6]);
        // Buffers that do not fit the rows are refused, not read past.
        assert_eq!(
            block.add(&mut [0.0; 5], &x[..8], 2),
            Err(FoldError::Shape { values: 5, rows: 2 })
        );
        assert_eq!(
            block.add(&mut [0.0; 6], &x[..7], 2),
            Err(FoldError::Shape { values: 7, rows: 2 })
        );
    }

    #[test]
    fn an_id_outside_its_column_adds_nothing() {
        let stage = linear();
        let folded = FoldedFirst::build(&stage.buckets, stage.dense_cols, |s, d, n| stage.eval(s, d, n)).unwrap();
        let mut row = vec![0.0; 3];
        folded.add_sparse(&mut row, 1, 3);
        folded.add_sparse(&mut row, 1, -1);
        assert_eq!(row, vec![0.0; 3]);
    }

    #[test]
    fn a_stage_that_fails_or_returns_a_ragged_shape_is_an_error() {
        let failing = FoldedFirst::build(&[2], 1, |_, _, _| Err("boom".into()));
        assert_eq!(failing.unwrap_err(), FoldError::Stage("boom".into()));
        // 4 rows (zero, two ids, one dense column) need a multiple of 4 values.
        let ragged = FoldedFirst::build(&[2], 1, |_, _, n| Ok(vec![0.0; n * 2 + 1]));
        assert_eq!(ragged.unwrap_err(), FoldError::Shape { values: 9, rows: 4 });
    }
}
