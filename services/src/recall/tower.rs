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

#[cfg(test)]
mod tests {
    use recstack_offline::build::seq::SeqSource;

    use super::*;

    /// The bundled sequence model for a catalogue of its first three items, read and matched
    /// as the build does.
    fn bundled() -> SeqModel {
        let source = SeqSource::read(&recstack_offline::build::seq::bundled_dir()).unwrap();
        let items = source.card.items[..3].to_vec();
        source.for_catalogue(&items, &[true; 3]).unwrap()
    }

    fn load_error(model: &SeqModel) -> String {
        match OnnxTower::load(model) {
            Ok(_) => panic!("{} loaded", model.version),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_bundled_tower_turns_recent_items_into_a_unit_vector() {
        let model = bundled();
        let tower = OnnxTower::load(&model).unwrap();
        let (recent, mask) = model.tower_inputs(&[2, 0, 1]).unwrap();
        let v = tower.user_vector(&recent, &mask).unwrap();
        assert_eq!(v.len(), model.rows.dim);
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        // Another history, another query; the same history, the same query.
        let (other, other_mask) = model.tower_inputs(&[1]).unwrap();
        assert_ne!(tower.user_vector(&other, &other_mask).unwrap(), v);
        assert_eq!(tower.user_vector(&recent, &mask).unwrap(), v);
        // Inputs of the wrong shape are refused, not run.
        assert_eq!(tower.user_vector(&recent[1..], &mask), None);
        assert_eq!(tower.user_vector(&recent, &mask[1..]), None);
    }

    #[test]
    fn concurrent_calls_answer_as_calls_one_at_a_time() {
        let model = bundled();
        let tower = OnnxTower::load(&model).unwrap();
        let histories: Vec<Vec<u32>> = vec![vec![0], vec![1, 2], vec![2, 0, 1], vec![1, 1, 0, 2]];
        let inputs: Vec<_> = histories.iter().map(|h| model.tower_inputs(h).unwrap()).collect();
        let alone: Vec<Vec<f32>> = inputs.iter().map(|(r, m)| tower.user_vector(r, m).unwrap()).collect();
        std::thread::scope(|s| {
            for t in 0..8 {
                let (tower, inputs, alone) = (&tower, &inputs, &alone);
                s.spawn(move || {
                    for k in 0..200 {
                        let i = (t + k) % inputs.len();
                        let (r, m) = &inputs[i];
                        assert_eq!(
                            tower.user_vector(r, m).as_ref(),
                            Some(&alone[i]),
                            "thread {t}, call {k}"
                        );
                    }
                });
            }
        });
    }

    #[test]
    fn a_graph_that_is_not_onnx_is_refused_naming_the_model() {
        let mut model = bundled();
        model.tower_onnx.truncate(model.tower_onnx.len() / 2);
        let e = load_error(&model);
        assert!(e.contains(&format!("sequence model {}", model.version)), "{e}");
        model.tower_onnx = b"not a graph".to_vec();
        assert!(load_error(&model).contains("sequence model"));
    }

    #[test]
    fn names_the_graph_lacks_are_refused_naming_them() {
        let mut model = bundled();
        model.input = "rows".into();
        assert!(load_error(&model).contains("`rows` is not an input of the graph"));
        let mut model = bundled();
        model.mask_input = "padding".into();
        assert!(load_error(&model).contains("`padding` is not an input of the graph"));
        let mut model = bundled();
        model.output = "query".into();
        assert!(load_error(&model).contains("`query` is not an output of the graph"));
    }
}
