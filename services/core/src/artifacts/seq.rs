//! The vector channel's sequence model (a two-tower model trained by `scripts/train-seq`): its
//! item rows, carried in the artifacts by dense item id, and the user tower that turns a
//! user's recent items into a query for them.
//!
//! The tower is an ONNX graph; running it needs ONNX Runtime, which this crate does not link.
//! The artifacts therefore carry the graph's bytes, and whoever serves or evaluates them
//! attaches a runner ([`UserTower`]; `recstack_services::recall::tower`) after loading. Until
//! one is attached the vector channel returns nothing rather than something else.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::factors::Factors;

/// Runs the user tower: `recent` is `seq_len × dim` item rows, oldest first and zero-padded
/// on the left, `mask` 1 where an item is; the answer is the user's vector (`dim` values).
/// `None` when the run failed (the runner reports why).
pub trait UserTower: Send + Sync {
    fn user_vector(&self, recent: &[f32], mask: &[f32]) -> Option<Vec<f32>>;
}

/// The model's card (`model.json` beside `tower.onnx` and `items.f32`, written by
/// `scripts/train_seq.py`).
#[derive(Clone, Debug, Deserialize)]
pub struct SeqCard {
    pub version: String,
    pub dim: usize,
    pub seq_len: usize,
    pub input: String,
    pub mask_input: String,
    pub output: String,
    /// External item ids, in the order of `items.f32`'s rows.
    pub items: Vec<String>,
    /// Holdout and validation metrics of the channel alone (`holdout_recall@200`, …).
    #[serde(default)]
    pub metrics: std::collections::BTreeMap<String, f64>,
}

/// The model as the artifacts hold it.
#[derive(Serialize, Deserialize)]
pub struct SeqModel {
    /// The card's version (`seq-1`, …).
    pub version: String,
    /// How many recent items the tower reads.
    pub seq_len: usize,
    /// The graph's input and mask input and output names.
    pub input: String,
    pub mask_input: String,
    pub output: String,
    /// One row per dense item id (`dim` wide; zeros for an item the model does not know).
    pub rows: Factors,
    /// The user tower's ONNX graph.
    pub tower_onnx: Vec<u8>,
    /// The runner, attached after loading.
    #[serde(skip)]
    pub tower: Option<Arc<dyn UserTower>>,
}

impl SeqModel {
    /// The tower's inputs for a user whose history is `history` (newest first): the rows of
    /// the newest [`SeqModel::seq_len`] items, oldest first, left-padded with zeros, and the
    /// mask. Items the model does not know count as padding. `None` for an empty history.
    pub fn tower_inputs(&self, history: &[u32]) -> Option<(Vec<f32>, Vec<f32>)> {
        let (dim, len) = (self.rows.dim, self.seq_len);
        let known = |i: &&u32| (**i as usize) < self.rows.n_items() && self.rows.inverse_norms()[**i as usize] > 0.0;
        let recent: Vec<u32> = history.iter().filter(known).take(len).copied().collect();
        if recent.is_empty() || dim == 0 {
            return None;
        }
        let mut rows = vec![0f32; len * dim];
        let mut mask = vec![0f32; len];
        // The newest item goes last; older ones fill leftwards.
        for (back, &item) in recent.iter().enumerate() {
            let slot = len - 1 - back;
            rows[slot * dim..(slot + 1) * dim].copy_from_slice(self.rows.item(item));
            mask[slot] = 1.0;
        }
        Some((rows, mask))
    }

    /// The user's query vector: the tower run on [`SeqModel::tower_inputs`]; `None` without a
    /// runner, for an empty history or when the run failed.
    pub fn query(&self, history: &[u32]) -> Option<Vec<f32>> {
        let tower = self.tower.as_ref()?;
        let (recent, mask) = self.tower_inputs(history)?;
        tower
            .user_vector(&recent, &mask)
            .filter(|v| v.len() == self.rows.dim && v.iter().all(|x| x.is_finite()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(rows: Vec<f32>, dim: usize, seq_len: usize) -> SeqModel {
        SeqModel {
            version: "t".into(),
            seq_len,
            input: "recent".into(),
            mask_input: "mask".into(),
            output: "user".into(),
            rows: Factors::new(dim, Vec::new(), rows),
            tower_onnx: Vec::new(),
            tower: None,
        }
    }

    #[test]
    fn the_towers_inputs_put_the_newest_item_last_and_pad_on_the_left() {
        // Items 0..4 of 2 dims; item 2 unknown (a zero row).
        let m = model(vec![1., 0., 0., 1., 0., 0., 3., 4.], 2, 3);
        let (rows, mask) = m.tower_inputs(&[1, 2, 0]).unwrap();
        // History newest first: 1, (2 unknown, skipped), 0 → oldest first 0, 1, padded left.
        assert_eq!(mask, vec![0., 1., 1.]);
        assert_eq!(rows, vec![0., 0., 1., 0., 0., 1.]);
        // Longer than seq_len: the newest three known items.
        let (rows, mask) = m.tower_inputs(&[3, 1, 0, 3]).unwrap();
        assert_eq!(mask, vec![1., 1., 1.]);
        assert_eq!(rows, vec![1., 0., 0., 1., 3., 4.]);
        assert!(m.tower_inputs(&[]).is_none());
        assert!(m.tower_inputs(&[2, 99]).is_none(), "only unknown items");
    }

    struct Fixed(Vec<f32>);
    impl UserTower for Fixed {
        fn user_vector(&self, _: &[f32], _: &[f32]) -> Option<Vec<f32>> {
            Some(self.0.clone())
        }
    }

    #[test]
    fn a_query_needs_a_runner_and_a_well_formed_answer() {
        let mut m = model(vec![1., 0., 0., 1.], 2, 2);
        assert!(m.query(&[0]).is_none(), "no runner attached");
        m.tower = Some(Arc::new(Fixed(vec![0.6, 0.8])));
        assert_eq!(m.query(&[0]), Some(vec![0.6, 0.8]));
        m.tower = Some(Arc::new(Fixed(vec![1.0])));
        assert!(m.query(&[0]).is_none(), "wrong width");
        m.tower = Some(Arc::new(Fixed(vec![f32::NAN, 0.0])));
        assert!(m.query(&[0]).is_none(), "not finite");
    }
}
