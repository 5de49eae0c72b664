//! Training data for the sequence model behind the vector channel (`scripts/train-seq`):
//! every user's training ratings as an item sequence, in the validation world and in the real
//! split.
//!
//! The vector channel's user tower reads a user's most recent items, in the order the
//! artifacts keep them ([`crate::build::Artifacts::history`]: newest first, ties by item).
//! The export writes each sequence oldest first, the exact reverse of that order, so what the
//! trainer sees is what the channel will feed the tower. Items are dense ids of this data set;
//! `items` names them (the model is written with external ids, so a later build that numbers
//! items differently still maps them).
//!
//! `recstack export-sequences --out DIR` writes `DIR/sequences.json`:
//! - `items`: external item ids, by dense id;
//! - `validation`: the training ratings split again by time (as [`crate::export::validation_world`]):
//!   `train` per user (oldest first) and `holdout` per user (the items to find) — the trainer
//!   chooses its epochs here;
//! - `test`: the real split: `train` (everything the served model may learn from) and
//!   `holdout` (reported on, never chosen on).

use std::path::Path;

use serde::Serialize;

use crate::build::{BuildParams, Rating};
use crate::dataset::{Dataset, time_split};

/// One world's sequences, by dense user id.
#[derive(Debug, Default, PartialEq, Serialize)]
pub struct World {
    /// Each user's training items, oldest first (the reverse of the artifacts' history order).
    pub train: Vec<Vec<u32>>,
    /// Each user's held-out items, oldest first.
    pub holdout: Vec<Vec<u32>>,
}

/// What `sequences.json` holds.
#[derive(Debug, Serialize)]
pub struct Sequences {
    pub items: Vec<String>,
    pub validation: World,
    pub test: World,
}

/// Each user's items oldest first, in the exact reverse of the artifacts' history order
/// (newest first, ties in time by ascending item).
pub fn oldest_first(ratings: &[Rating], n_users: usize) -> Vec<Vec<u32>> {
    let mut sorted = ratings.to_vec();
    sorted.sort_by_key(|r| (r.user, std::cmp::Reverse(r.ts), r.item));
    let mut out = vec![Vec::new(); n_users];
    for r in sorted.iter().rev() {
        out[r.user as usize].push(r.item);
    }
    out
}

fn world(train: &[Rating], holdout: &[Rating], n_users: usize) -> World {
    World {
        train: oldest_first(train, n_users),
        holdout: oldest_first(holdout, n_users),
    }
}

/// The validation world and the real split of `ds`, as the build splits them with `params`.
pub fn sequences(ds: &Dataset, params: &BuildParams) -> Sequences {
    let n_users = ds.n_users();
    let real = time_split(&ds.ratings, params.holdout, params.min_history);
    let validation = time_split(&real.train, params.holdout, params.min_history);
    Sequences {
        items: ds.items.iter().map(|i| i.id.clone()).collect(),
        validation: world(&validation.train, &validation.test, n_users),
        test: world(&real.train, &real.test, n_users),
    }
}

/// Writes `dir/sequences.json`.
pub fn write(dir: &Path, s: &Sequences) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_vec(s).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("sequences.json"), json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{Progress, build};
    use crate::dataset::bundled_dir;
    use crate::dataset::r;

    #[test]
    fn sequences_run_oldest_first_with_ties_the_reverse_of_history() {
        // User 0 rated 4, then 2 and 9 in the same second, then 1; user 1 nothing.
        let got = oldest_first(&[r(0, 2, 20), r(0, 1, 30), r(0, 4, 10), r(0, 9, 20)], 2);
        // History (newest first) breaks the tie by ascending item: 1, 2, 9, 4.
        assert_eq!(got, vec![vec![4, 9, 2, 1], vec![]]);
    }

    #[test]
    fn the_real_worlds_training_sequences_are_the_artifacts_history_reversed() {
        let ds = Dataset::load_movietweetings(&bundled_dir()).unwrap();
        let params = BuildParams::default();
        let s = sequences(&ds, &params);
        let a = build(&ds, &params, &Progress::new(true)).unwrap();
        assert_eq!(s.items.len(), a.items.len());
        assert_eq!(s.test.train.len(), a.history.len());
        for (seq, history) in s.test.train.iter().zip(&a.history) {
            assert!(seq.iter().eq(history.iter().rev()), "{seq:?} / {history:?}");
        }
        let held: usize = s.test.holdout.iter().map(Vec::len).sum();
        assert_eq!(held, a.holdout.len());
        // The validation world holds out part of the real training ratings, and only those.
        for (u, (train, held)) in s.validation.train.iter().zip(&s.validation.holdout).enumerate() {
            let mut both: Vec<u32> = train.iter().chain(held).copied().collect();
            let mut real = s.test.train[u].clone();
            both.sort_unstable();
            real.sort_unstable();
            assert_eq!(both, real, "user {u}");
        }
        assert!(s.validation.holdout.iter().any(|h| !h.is_empty()));
    }
}
