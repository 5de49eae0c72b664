//! The vector channel's user tower run by ONNX Runtime: the sequence model's graph that the
//! artifacts carry ([`SeqModel::tower_onnx`]), attached to the artifacts after they load so
//! recall (and the offline commands that run recall) can turn a user's recent items into a
//! query for the ANN index.

use std::sync::{Arc, Mutex};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use recstack_core::artifacts::Artifacts;
use recstack_core::artifacts::seq::{SeqModel, UserTower};

use crate::ranking::model::{ModelError, environment};

/// One session of the tower graph. Each call is one user (20 × 32 floats): the session runs
/// on the calling thread (one intra-op thread) behind a lock, which recall's channel threads
/// hold for the ~0.1 ms a call takes.
pub struct OnnxTower {
    session: Mutex<Session>,
    version: String,
    input: String,
    mask_input: String,
    output: String,
    seq_len: usize,
    dim: usize,
}

impl OnnxTower {
    /// A session of `model`'s graph, checked by running it once on the first item's row.
    pub fn load(model: &SeqModel) -> Result<Self, ModelError> {
        let load_err = |message: String| ModelError::Load {
            path: format!("artifacts' sequence model {}", model.version).into(),
            message,
        };
        let session = Session::builder(environment()?)
            .map_err(|e| load_err(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| load_err(e.to_string()))?
            .with_intra_threads(1)
            .map_err(|e| load_err(e.to_string()))?
            .commit_from_memory(&model.tower_onnx)
            .map_err(|e| load_err(e.to_string()))?;
        for name in [&model.input, &model.mask_input] {
            if !session.inputs().iter().any(|i| i.name() == name) {
                return Err(load_err(format!("`{name}` is not an input of the graph")));
            }
        }
        if !session.outputs().iter().any(|o| o.name() == model.output) {
            return Err(load_err(format!("`{}` is not an output of the graph", model.output)));
        }
        let tower = Self {
            session: Mutex::new(session),
            version: model.version.clone(),
            input: model.input.clone(),
            mask_input: model.mask_input.clone(),
            output: model.output.clone(),
            seq_len: model.seq_len,
            dim: model.rows.dim,
        };
        let (len, dim) = (tower.seq_len, tower.dim);
        let mut mask = vec![0f32; len];
        mask[len - 1] = 1.0;
        let probe = tower.run(&vec![0.1; len * dim], &mask)?;
        if probe.len() != dim || !probe.iter().all(|x| x.is_finite()) {
            return Err(load_err(format!(
                "a probe gave {} values, first {:?}",
                probe.len(),
                &probe[..probe.len().min(4)]
            )));
        }
        Ok(tower)
    }

    fn run(&self, recent: &[f32], mask: &[f32]) -> Result<Vec<f32>, ModelError> {
        let run_err = |message: String| ModelError::Run {
            version: self.version.clone(),
            message,
        };
        let recent_t =
            TensorRef::from_array_view(([1, self.seq_len, self.dim], recent)).map_err(|e| run_err(e.to_string()))?;
        let mask_t = TensorRef::from_array_view(([1, self.seq_len], mask)).map_err(|e| run_err(e.to_string()))?;
        // A poisoned lock only means another call panicked mid-run; the session is still sound.
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session
            .run(ort::inputs![self.input.as_str() => recent_t, self.mask_input.as_str() => mask_t])
            .map_err(|e| run_err(e.to_string()))?;
        let (_, values) = outputs[self.output.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| run_err(e.to_string()))?;
        Ok(values.to_vec())
    }
}

impl UserTower for OnnxTower {
    fn user_vector(&self, recent: &[f32], mask: &[f32]) -> Option<Vec<f32>> {
        if recent.len() != self.seq_len * self.dim || mask.len() != self.seq_len {
            return None;
        }
        self.run(recent, mask)
            .inspect_err(|e| tracing::warn!(error = %e, "the vector channel's user tower failed"))
            .ok()
    }
}

/// Attaches an [`OnnxTower`] to `a`'s sequence model (nothing to do without one).
pub fn attach(a: &mut Artifacts) -> Result<(), ModelError> {
    if let Some(model) = a.seq.as_mut() {
        model.tower = Some(Arc::new(OnnxTower::load(model)?));
    }
    Ok(())
}

/// [`attach`], and on failure a warning: recall serves on without the vector channel (it
/// returns nothing until a version whose tower loads) rather than not at all.
pub fn attach_or_warn(a: &mut Artifacts) {
    if let Err(e) = attach(a) {
        tracing::warn!(error = %e, "the vector channel's user tower did not load: the channel returns nothing");
    }
}
