//! Training data for the ranking model, computed by the serving code's own feature function.
//!
//! `recstack export-ranking --out DIR` writes NumPy arrays (`.npy`) that
//! `scripts/train-ranker` reads:
//! - `train_{sparse,dense,label}.npy`: each user's training ratings (at most
//!   [`ExportParams::positives_per_user`], most recent first) as positives, and per positive
//!   `negatives` items the user never rated, half uniform, half by popularity.
//! - `test_{sparse,dense,label,group}.npy`: each held-out user's held-out items (never trained
//!   on) against [`ExportParams::test_negatives`] unrated items, half uniform, half by
//!   popularity (recall's candidates are neither random nor only popular); `group` is the user,
//!   for per-user AUC and NDCG.
//! - `features.json`: the [`FeatureSpec`] the arrays follow (copied into the model card).

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::features::FeatureSpec;
use crate::build::Artifacts;
use crate::features::Snapshot;

/// How many rows the export samples.
#[derive(Clone, Debug)]
pub struct ExportParams {
    pub positives_per_user: usize,
    pub negatives: usize,
    pub test_negatives: usize,
    pub seed: u64,
}

impl Default for ExportParams {
    fn default() -> Self {
        Self {
            positives_per_user: 50,
            negatives: 4,
            test_negatives: 100,
            seed: 7,
        }
    }
}

/// Rows of one split, row-major.
#[derive(Default, Debug)]
pub struct Split {
    pub sparse: Vec<i64>,
    pub dense: Vec<f32>,
    pub label: Vec<f32>,
    pub group: Vec<i64>,
}

impl Split {
    pub fn rows(&self) -> usize {
        self.label.len()
    }
}

/// Samples the training and test rows.
pub fn sample(a: &Artifacts, spec: &FeatureSpec, p: &ExportParams) -> (Split, Split) {
    let snapshot = Snapshot::from_artifacts(a);
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    let n_items = a.items.len() as u32;
    // Every training interaction once: drawing from it is drawing by popularity.
    let pool: Vec<u32> = a.history.iter().flatten().copied().collect();
    let rows = spec.rows();
    let row = |split: &mut Split, u: usize, i: u32, label: f32| {
        let user_id = &a.users[u];
        let item_id = &a.items[i as usize].id;
        rows.push_row(
            user_id,
            snapshot.user(user_id),
            item_id,
            snapshot.item(item_id),
            &mut split.sparse,
            &mut split.dense,
        );
        split.label.push(label);
        split.group.push(u as i64);
    };

    let mut train = Split::default();
    let mut test = Split::default();
    if pool.is_empty() {
        return (train, test);
    }
    for (u, items) in a.history.iter().enumerate() {
        let rated: HashSet<u32> = items.iter().copied().collect();
        if rated.len() >= n_items as usize {
            continue;
        }
        for &i in items.iter().take(p.positives_per_user) {
            row(&mut train, u, i, 1.0);
            for k in 0..p.negatives {
                let neg = negative(&mut rng, k, n_items, &pool, &rated);
                row(&mut train, u, neg, 0.0);
            }
        }
    }

    let mut held: Vec<Vec<u32>> = vec![Vec::new(); a.users.len()];
    for r in &a.holdout {
        held[r.user as usize].push(r.item);
    }
    for (u, positives) in held.iter().enumerate() {
        if positives.is_empty() {
            continue;
        }
        let excluded: HashSet<u32> = a.history[u].iter().chain(positives).copied().collect();
        if excluded.len() + p.test_negatives >= n_items as usize {
            continue;
        }
        for &i in positives {
            row(&mut test, u, i, 1.0);
        }
        for k in 0..p.test_negatives {
            let neg = negative(&mut rng, k, n_items, &pool, &excluded);
            row(&mut test, u, neg, 0.0);
        }
    }
    (train, test)
}

/// The `k`-th negative for a user: an item not in `excluded`, drawn uniformly for even `k` and
/// by popularity (from `pool`, every interaction once) for odd `k`. The caller makes sure
/// some item is not excluded.
fn negative(rng: &mut ChaCha8Rng, k: usize, n_items: u32, pool: &[u32], excluded: &HashSet<u32>) -> u32 {
    loop {
        let j = if k.is_multiple_of(2) {
            rng.gen_range(0..n_items)
        } else {
            pool[rng.gen_range(0..pool.len())]
        };
        if !excluded.contains(&j) {
            return j;
        }
    }
}

/// Writes both splits and the feature spec to `dir`.
pub fn write(dir: &Path, spec: &FeatureSpec, train: &Split, test: &Split) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let (s, d) = (spec.sparse.len(), spec.dense.len());
    for (name, split) in [("train", train), ("test", test)] {
        let n = split.rows();
        write_npy(&dir.join(format!("{name}_sparse.npy")), &[n, s], &split.sparse)?;
        write_npy(&dir.join(format!("{name}_dense.npy")), &[n, d], &split.dense)?;
        write_npy(&dir.join(format!("{name}_label.npy")), &[n], &split.label)?;
        write_npy(&dir.join(format!("{name}_group.npy")), &[n], &split.group)?;
    }
    let json = serde_json::to_vec_pretty(spec).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("features.json"), json)
}

/// An element type NumPy can read.
pub trait NpyElement: Copy {
    const DESCR: &'static str;
    fn write_le(self, out: &mut impl Write) -> std::io::Result<()>;
}

impl NpyElement for f32 {
    const DESCR: &'static str = "<f4";
    fn write_le(self, out: &mut impl Write) -> std::io::Result<()> {
        out.write_all(&self.to_le_bytes())
    }
}

impl NpyElement for i64 {
    const DESCR: &'static str = "<i8";
    fn write_le(self, out: &mut impl Write) -> std::io::Result<()> {
        out.write_all(&self.to_le_bytes())
    }
}

/// Writes a C-order array in the NumPy `.npy` format, version 1.0.
pub fn write_npy<T: NpyElement>(path: &Path, shape: &[usize], data: &[T]) -> std::io::Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        T::DESCR
    );
    // Magic (6) + version (2) + length (2) + header + '\n', padded to a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    out.write_all(b"\x93NUMPY\x01\x00")?;
    out.write_all(&(header.len() as u16).to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    for &v in data {
        v.write_le(&mut out)?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_padded_and_describes_the_array() {
        let dir = std::env::temp_dir().join(format!("recstack-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.npy");
        write_npy(&path, &[2, 3], &[1i64, 2, 3, 4, 5, 6]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
        assert!(header.starts_with("{'descr': '<i8', 'fortran_order': False, 'shape': (2, 3), }"));
        assert!(header.ends_with('\n'));
        assert_eq!(bytes.len(), 10 + len + 6 * 8);
        assert_eq!(&bytes[10 + len..10 + len + 8], &1i64.to_le_bytes());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
