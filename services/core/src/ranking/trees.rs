//! A tree-ensemble model compiled for serving: the ranking service scores a card's trees
//! itself instead of through ONNX Runtime's `TreeEnsembleClassifier`.
//!
//! A card with a `trees` section (`scripts/train_gbdt.py`) names a file beside the model that
//! holds the same trees as its ONNX graph: every node's feature, threshold and children, every
//! leaf's value. A row's score is `sigmoid(Σ_t leaf_t(x))`, where `x` is the row's dense values
//! followed by its sparse ids as numbers (the graph's `Concat`) and each split sends `x_f ≤
//! threshold` left (a NaN goes right).
//!
//! ONNX Runtime walks one row through one tree at a time, each step a load that waits on the
//! last. Here [`BLOCK`] rows are scored together, their values laid out a column per feature,
//! and a tree of at most 32 leaves is not walked at all (QuickScorer, Lucchese et al., SIGIR
//! 2015): number its leaves left to right; a split a row fails (it goes right) rules out every
//! leaf of its left subtree, so the row's leaf is the leftmost one that no failed split rules
//! out. Each split is then one comparison of a column against a threshold and one AND of a
//! 32-bit mask of the leaves left, for the whole block in lock-step with no load that depends
//! on the last: the compiler turns it into vector instructions. A deeper tree (more than 32
//! leaves) is walked, the block's rows a level at a time, so that their steps overlap.
//!
//! The file's claim is checked, not trusted: the ranking service scores random rows both ways
//! when it loads the model and refuses trees whose scores differ from the graph's.

use serde::{Deserialize, Serialize};

/// Rows walked through a tree together.
pub const BLOCK: usize = 64;

/// The trees as the card's `trees` file holds them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TreesFile {
    /// Values per row: the dense inputs, then the sparse ones.
    pub features: usize,
    /// Added to every row's sum before the sigmoid.
    #[serde(default)]
    pub base: f32,
    pub trees: Vec<Tree>,
}

/// One tree: its nodes, the root first. A child `c ≥ 0` is node `c`; `c < 0` is leaf `−c − 1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    pub feature: Vec<u32>,
    pub threshold: Vec<f32>,
    pub left: Vec<i32>,
    pub right: Vec<i32>,
    pub leaves: Vec<f32>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TreesError {
    #[error("tree {tree}: {what}")]
    Tree { tree: usize, what: String },
    #[error("no trees")]
    Empty,
    #[error("the trees read no inputs (`features` is 0)")]
    NoInputs,
    #[error("{rows} rows need {need} values, got {got}")]
    Shape { rows: usize, need: usize, got: usize },
}

/// A node of a walked tree, packed for the walk: what to compare and where to go. A leaf is
/// a node that sends every row back to itself (threshold +∞, both children itself), so a row
/// that reaches a leaf early waits there while the others walk on: the walk has no branch on
/// where a row is.
#[derive(Clone, Copy, Debug)]
struct Node {
    feature: u32,
    threshold: f32,
    left: u32,
    right: u32,
}

/// A split of a masked tree: a row whose value `feature` is not `≤ threshold` keeps only the
/// leaves in `keep` (every leaf but those of the split's left subtree).
#[derive(Clone, Copy, Debug)]
struct Split {
    feature: u32,
    threshold: f32,
    keep: u32,
}

/// Leaves a tree may have and still be scored by masks (the bits of [`Split::keep`]).
pub const MASKED_LEAVES: usize = 32;

/// How one tree is scored.
#[derive(Clone, Copy, Debug)]
enum Plan {
    /// `splits[first..first + count]` against masks; the row's leaf is `leaves[leaf + k]`,
    /// `k` the lowest bit left.
    Masked { first: u32, count: u32, leaf: u32 },
    /// Walked from `nodes[root]` for `depth` steps; the row's leaf value is `values[node]`.
    Walked { root: u32, depth: u32 },
}

/// The trees, checked and laid out for scoring, in the file's order (so that each row's sum
/// adds the same leaves in the same order whichever way a tree is scored).
#[derive(Clone, Debug)]
pub struct Trees {
    features: usize,
    base: f32,
    plans: Vec<Plan>,
    splits: Vec<Split>,
    /// The masked trees' leaves, each tree's left to right.
    leaves: Vec<f32>,
    nodes: Vec<Node>,
    /// Each walked node's leaf value (0 for a split).
    values: Vec<f32>,
}

impl Trees {
    /// Checks every child and feature index and lays the trees out for scoring.
    pub fn new(file: &TreesFile) -> Result<Self, TreesError> {
        Self::with_masked_leaves(file, MASKED_LEAVES)
    }

    /// [`Self::new`], masking only the trees of at most `limit` leaves (at most
    /// [`MASKED_LEAVES`]) and walking the rest: 0 walks every tree, the layout before the
    /// masks, which the ranking bench compares against.
    pub fn with_masked_leaves(file: &TreesFile, limit: usize) -> Result<Self, TreesError> {
        let limit = limit.min(MASKED_LEAVES);
        if file.trees.is_empty() {
            return Err(TreesError::Empty);
        }
        if file.features == 0 {
            return Err(TreesError::NoInputs);
        }
        let mut trees = Self {
            features: file.features,
            base: file.base,
            plans: Vec::with_capacity(file.trees.len()),
            splits: Vec::new(),
            leaves: Vec::new(),
            nodes: Vec::new(),
            values: Vec::new(),
        };
        for (t, tree) in file.trees.iter().enumerate() {
            check(tree, file.features).map_err(|what| TreesError::Tree { tree: t, what })?;
            let plan = if tree.leaves.len() <= limit {
                trees.mask(tree)
            } else {
                trees.walk(tree)
            };
            trees.plans.push(plan);
        }
        Ok(trees)
    }

    /// Lays out a checked tree of at most [`MASKED_LEAVES`] leaves for masks.
    fn mask(&mut self, tree: &Tree) -> Plan {
        let n = tree.feature.len();
        // Each node's and leaf's leaves, as a range of the leaves' left-to-right order; a
        // parent comes before its children (checked), so a pass from the back sees children
        // first. Slot `n + l` is leaf `l`.
        let order = in_order(tree);
        let mut span = vec![(0u32, 0u32); 2 * n + 1];
        for (at, &l) in order.iter().enumerate() {
            span[n + l] = (at as u32, at as u32 + 1);
        }
        let slot = |c: i32| slot(n, c);
        for k in (0..n).rev() {
            span[k] = (span[slot(tree.left[k])].0, span[slot(tree.right[k])].1);
        }
        let first = self.splits.len() as u32;
        for k in 0..n {
            let (from, to) = span[slot(tree.left[k])];
            let left = ((1u64 << to) - (1u64 << from)) as u32;
            self.splits.push(Split {
                feature: tree.feature[k],
                threshold: tree.threshold[k],
                keep: !left,
            });
        }
        let leaf = self.leaves.len() as u32;
        self.leaves.extend(order.iter().map(|&l| tree.leaves[l]));
        Plan::Masked {
            first,
            count: n as u32,
            leaf,
        }
    }

    /// Lays out a checked tree as nodes to walk.
    fn walk(&mut self, tree: &Tree) -> Plan {
        let n = tree.feature.len();
        let first = self.nodes.len() as u32;
        // Depths: a parent comes before its children (checked).
        let mut depth = vec![0u32; 2 * n + 1];
        for k in 0..n {
            let (left, right) = (slot(n, tree.left[k]), slot(n, tree.right[k]));
            depth[left] = depth[k] + 1;
            depth[right] = depth[k] + 1;
            self.nodes.push(Node {
                feature: tree.feature[k],
                threshold: tree.threshold[k],
                left: first + left as u32,
                right: first + right as u32,
            });
            self.values.push(0.0);
        }
        for (l, &value) in tree.leaves.iter().enumerate() {
            let me = first + (n + l) as u32;
            self.nodes.push(Node {
                feature: 0,
                threshold: f32::INFINITY,
                left: me,
                right: me,
            });
            self.values.push(value);
        }
        // The root is the first split, or for a tree that is one leaf that leaf (its slot n
        // is 0), which takes no step.
        Plan::Walked {
            root: first,
            depth: depth.iter().copied().max().unwrap_or(0),
        }
    }

    /// Values per row.
    pub fn features(&self) -> usize {
        self.features
    }

    /// `sigmoid(base + Σ leaves)` of each of `rows` rows of `x` (row-major, [`Self::features`]
    /// values each), appended to `out`.
    pub fn score(&self, x: &[f32], rows: usize, out: &mut Vec<f32>) -> Result<(), TreesError> {
        if x.len() != rows * self.features {
            return Err(TreesError::Shape {
                rows,
                need: rows * self.features,
                got: x.len(),
            });
        }
        out.reserve(rows);
        let f = self.features;
        // The block's values a column per feature. A short last block scores the rows left
        // over from the one before too (or zeros), and keeps only its own.
        let mut columns = vec![0.0f32; f * BLOCK];
        for block in x.chunks(BLOCK * f) {
            for (r, row) in block.chunks_exact(f).enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    columns[j * BLOCK + r] = v;
                }
            }
            let mut sum = [self.base; BLOCK];
            // A block's compares and ANDs are vector instructions: eight rows an instruction
            // with AVX2, sixteen with AVX-512.
            crate::simd::widest(
                #[inline(always)]
                || self.block(&columns, &mut sum),
            );
            let n = block.len() / f;
            out.extend(sum[..n].iter().map(|&s| 1.0 / (1.0 + (-s).exp())));
        }
        Ok(())
    }

    /// Adds each tree's leaf for the block's rows to `sum`, tree by tree.
    #[inline(always)]
    fn block(&self, columns: &[f32], sum: &mut [f32; BLOCK]) {
        let column = |feature: u32| -> &[f32; BLOCK] {
            let at = feature as usize * BLOCK;
            columns[at..at + BLOCK].try_into().expect("a column is BLOCK values")
        };
        for plan in &self.plans {
            match *plan {
                Plan::Masked { first, count, leaf } => {
                    let mut left = [!0u32; BLOCK];
                    let splits = &self.splits[first as usize..(first + count) as usize];
                    // The split's fields copied out of it, so that the loop over the block is
                    // one vector compare and AND (read through the reference, it is not).
                    for &Split {
                        feature,
                        threshold,
                        keep,
                    } in splits
                    {
                        for (m, &v) in left.iter_mut().zip(column(feature)) {
                            // As in the walk, a NaN fails the split.
                            *m &= if v <= threshold { !0 } else { keep };
                        }
                    }
                    let leaves = &self.leaves[leaf as usize..];
                    for (s, m) in sum.iter_mut().zip(left) {
                        *s += leaves[m.trailing_zeros() as usize];
                    }
                }
                Plan::Walked { root, depth } => {
                    let mut at = [root; BLOCK];
                    for _ in 0..depth {
                        for (r, a) in at.iter_mut().enumerate() {
                            let node = self.nodes[*a as usize];
                            let v = column(node.feature)[r];
                            *a = if v <= node.threshold { node.left } else { node.right };
                        }
                    }
                    for (s, &a) in sum.iter_mut().zip(at.iter()) {
                        *s += self.values[a as usize];
                    }
                }
            }
        }
    }
}

/// Where child `c` of a checked tree of `n` splits sits among its splits then its leaves: node
/// `c ≥ 0` at `c`, leaf `−c − 1` at `n − c − 1`.
fn slot(n: usize, c: i32) -> usize {
    if c >= 0 { c as usize } else { n + (-(c + 1)) as usize }
}

/// Checks that a tree is one: the lists agree in length, every feature is one of the row's
/// values, and each child points forward (no cycles) to a node or leaf of this tree, each node
/// and leaf reached once.
fn check(tree: &Tree, features: usize) -> Result<(), String> {
    let n = tree.feature.len();
    if [tree.threshold.len(), tree.left.len(), tree.right.len()] != [n; 3] {
        return Err("feature, threshold, left and right differ in length".into());
    }
    if tree.leaves.len() != n + 1 {
        return Err(format!("{n} splits need {} leaves, got {}", n + 1, tree.leaves.len()));
    }
    let mut reached = vec![false; 2 * n + 1];
    for k in 0..n {
        if tree.feature[k] as usize >= features {
            return Err(format!("node {k} splits on value {} of {features}", tree.feature[k]));
        }
        for c in [tree.left[k], tree.right[k]] {
            let slot = if c >= 0 {
                let c = c as usize;
                if c >= n || c <= k {
                    return Err(format!("node {k} has child node {c}"));
                }
                c
            } else {
                let l = (-(c + 1)) as usize;
                if l > n {
                    return Err(format!("node {k} has child leaf {l} of {}", n + 1));
                }
                n + l
            };
            if std::mem::replace(&mut reached[slot], true) {
                return Err(format!("a node or leaf is reached twice (from node {k})"));
            }
        }
    }
    Ok(())
}

/// A checked tree's leaves, left to right.
fn in_order(tree: &Tree) -> Vec<usize> {
    let mut out = Vec::with_capacity(tree.leaves.len());
    if tree.feature.is_empty() {
        out.push(0);
        return out;
    }
    // An explicit stack: a checked tree's depth is bounded only by its size.
    let mut stack = vec![0];
    while let Some(c) = stack.pop() {
        if c < 0 {
            out.push((-(c + 1)) as usize);
        } else {
            stack.push(tree.right[c as usize]);
            stack.push(tree.left[c as usize]);
        }
    }
    out
}

/// A row of the trees' values: the dense inputs, then the sparse ids as numbers.
pub fn row_values(sparse: &[i64], dense: &[f32], rows: usize, out: &mut Vec<f32>) {
    let (s, d) = (sparse.len() / rows.max(1), dense.len() / rows.max(1));
    out.reserve(rows * (s + d));
    for r in 0..rows {
        out.extend_from_slice(&dense[r * d..(r + 1) * d]);
        out.extend(sparse[r * s..(r + 1) * s].iter().map(|&v| v as f32));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn sigmoid(s: f32) -> f32 {
        1.0 / (1.0 + (-s).exp())
    }

    /// x0 ≤ 0.5 ? (x1 ≤ 2 ? 1 : 2) : 3, and a tree that is one leaf of 0.25.
    fn small() -> TreesFile {
        TreesFile {
            features: 2,
            base: 0.0,
            trees: vec![
                Tree {
                    feature: vec![0, 1],
                    threshold: vec![0.5, 2.0],
                    left: vec![1, -1],
                    right: vec![-3, -2],
                    leaves: vec![1.0, 2.0, 3.0],
                },
                Tree {
                    feature: vec![],
                    threshold: vec![],
                    left: vec![],
                    right: vec![],
                    leaves: vec![0.25],
                },
            ],
        }
    }

    #[test]
    fn a_row_goes_left_at_its_threshold_and_sums_a_leaf_of_each_tree() {
        let t = Trees::new(&small()).unwrap();
        let x = [0.5, 2.0, 0.5, 2.5, 0.6, 0.0, -1.0, f32::MAX];
        let mut out = Vec::new();
        t.score(&x, 4, &mut out).unwrap();
        let want = [1.25, 2.25, 3.25, 2.25].map(sigmoid);
        assert_eq!(out, want);
    }

    /// The naive walk: one row through one tree at a time, from the file.
    fn naive(file: &TreesFile, row: &[f32]) -> f32 {
        let mut sum = file.base;
        for t in &file.trees {
            if t.feature.is_empty() {
                sum += t.leaves[0];
                continue;
            }
            let mut c = 0i32;
            while c >= 0 {
                let k = c as usize;
                c = if row[t.feature[k] as usize] <= t.threshold[k] {
                    t.left[k]
                } else {
                    t.right[k]
                };
            }
            sum += t.leaves[(-(c + 1)) as usize];
        }
        sigmoid(sum)
    }

    /// A random tree of `splits` splits over `features` values, its nodes in pre-order.
    fn random_tree(rng: &mut ChaCha8Rng, splits: usize, features: usize) -> Tree {
        let mut t = Tree {
            feature: vec![],
            threshold: vec![],
            left: vec![],
            right: vec![],
            leaves: vec![],
        };
        fn grow(rng: &mut ChaCha8Rng, t: &mut Tree, splits: usize, features: usize) -> i32 {
            if splits == 0 {
                t.leaves.push(rng.gen_range(-1.0..1.0));
                return -(t.leaves.len() as i32);
            }
            let k = t.feature.len();
            t.feature.push(rng.gen_range(0..features as u32));
            t.threshold.push(rng.gen_range(-1.0..1.0));
            t.left.push(0);
            t.right.push(0);
            let on_left = rng.gen_range(0..splits);
            t.left[k] = grow(rng, t, on_left, features);
            t.right[k] = grow(rng, t, splits - 1 - on_left, features);
            k as i32
        }
        grow(rng, &mut t, splits, features);
        t
    }

    #[test]
    fn blocks_of_rows_score_as_each_row_walked_alone() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (mut masked, mut walked) = (0, 0);
        for case in 0..30 {
            let features = rng.gen_range(1..30);
            // Trees of up to 80 splits: masked (at most 31 splits, 32 leaves) and walked, the
            // edge itself in every case, mixed in one ensemble.
            let file = TreesFile {
                features,
                base: rng.gen_range(-2.0..2.0),
                trees: (0..rng.gen_range(1..40))
                    .map(|t| {
                        let splits = match t {
                            0 => MASKED_LEAVES - 1,
                            1 => MASKED_LEAVES,
                            _ => rng.gen_range(0..80),
                        };
                        random_tree(&mut rng, splits, features)
                    })
                    .collect(),
            };
            let trees = Trees::new(&file).unwrap();
            let walked_only = Trees::with_masked_leaves(&file, 0).unwrap();
            assert!(walked_only.splits.is_empty() && walked_only.leaves.is_empty());
            for (plan, tree) in trees.plans.iter().zip(&file.trees) {
                match plan {
                    Plan::Masked { .. } => masked += 1,
                    Plan::Walked { .. } => walked += 1,
                }
                let want_masked = tree.leaves.len() <= MASKED_LEAVES;
                assert_eq!(matches!(plan, Plan::Masked { .. }), want_masked);
            }
            // Row counts around the block size; values hitting thresholds exactly, NaNs and
            // infinities too.
            for rows in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 5] {
                let x: Vec<f32> = (0..rows * features)
                    .map(|_| match rng.gen_range(0..20) {
                        0 | 1 => {
                            let t = &file.trees[rng.gen_range(0..file.trees.len())];
                            t.threshold.first().copied().unwrap_or(0.0)
                        }
                        2 => f32::NAN,
                        3 => f32::INFINITY,
                        4 => f32::NEG_INFINITY,
                        _ => rng.gen_range(-1.5..1.5),
                    })
                    .collect();
                let (mut out, mut walked) = (Vec::new(), Vec::new());
                trees.score(&x, rows, &mut out).unwrap();
                walked_only.score(&x, rows, &mut walked).unwrap();
                let want: Vec<f32> = x.chunks(features).map(|row| naive(&file, row)).collect();
                assert_eq!(out.len(), rows);
                assert_eq!(walked.len(), rows);
                for (r, ((a, b), w)) in out.iter().zip(&want).zip(&walked).enumerate() {
                    assert_eq!(w.to_bits(), b.to_bits(), "case {case}, every tree walked, row {r}");
                    // The same leaves added in the same order: the same bits.
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "case {case}, {rows} rows, row {r}: {a} against {b}"
                    );
                }
                // And a block's sums are the same bits whichever instruction set scores it.
                let mut columns = vec![0.0f32; features * BLOCK];
                for (r, row) in x.chunks_exact(features).take(BLOCK).enumerate() {
                    for (j, &v) in row.iter().enumerate() {
                        columns[j * BLOCK + r] = v;
                    }
                }
                let runs = crate::simd::each_level(|| {
                    let mut sum = [trees.base; BLOCK];
                    trees.block(&columns, &mut sum);
                    sum.map(f32::to_bits)
                });
                for (level, bits) in &runs[1..] {
                    assert_eq!(bits, &runs[0].1, "case {case}: {level} against the baseline");
                }
            }
        }
        assert!(masked > 100 && walked > 100, "{masked} masked, {walked} walked");
    }

    #[test]
    fn malformed_trees_are_refused_naming_the_tree() {
        let check = |edit: fn(&mut TreesFile), want: &str| {
            let mut f = small();
            edit(&mut f);
            let e = Trees::new(&f).unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        };
        check(|f| f.trees.clear(), "no trees");
        check(
            |f| f.trees[0].threshold.pop().map(drop).unwrap_or(()),
            "tree 0: feature, threshold",
        );
        check(|f| f.trees[0].leaves.push(4.0), "tree 0: 2 splits need 3 leaves, got 4");
        check(|f| f.trees[0].feature[1] = 2, "tree 0: node 1 splits on value 2 of 2");
        check(|f| f.trees[0].left[0] = 0, "tree 0: node 0 has child node 0");
        check(|f| f.trees[0].left[1] = -4, "tree 0: node 1 has child leaf 3 of 3");
        check(|f| f.trees[0].right[1] = -1, "reached twice");
        check(|f| f.trees[1].leaves.clear(), "tree 1: 0 splits need 1 leaves, got 0");
        // Trees over no inputs (only one-leaf trees can claim it) are refused too: a row of
        // them would be nothing to walk.
        check(
            |f| {
                f.features = 0;
                f.trees.truncate(0);
                f.trees.push(Tree {
                    feature: vec![],
                    threshold: vec![],
                    left: vec![],
                    right: vec![],
                    leaves: vec![0.5],
                });
            },
            "the trees read no inputs",
        );
    }

    #[test]
    fn rows_of_the_wrong_width_are_refused() {
        let t = Trees::new(&small()).unwrap();
        let e = t.score(&[0.0; 5], 2, &mut Vec::new()).unwrap_err();
        assert_eq!(
            e,
            TreesError::Shape {
                rows: 2,
                need: 4,
                got: 5
            }
        );
    }

    #[test]
    fn row_values_are_dense_then_sparse() {
        let mut out = Vec::new();
        row_values(&[7, 8, 9, 10], &[0.5, 0.25], 2, &mut out);
        assert_eq!(out, [0.5, 7.0, 8.0, 0.25, 9.0, 10.0]);
    }
}
