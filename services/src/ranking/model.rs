//! An ONNX ranking model and its model card, run by ONNX Runtime through `ort`.
//!
//! ONNX Runtime is loaded at run time (`load-dynamic`) from the library the PyPI `onnxruntime`
//! wheel ships (`onnxruntime-gpu` on GPU nodes): [`find_onnxruntime`] looks at `ORT_DYLIB_PATH`,
//! then a project-local `.venv`. Nothing is downloaded at build or run time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use serde::{Deserialize, Serialize};

use super::features::{InputSpec, SpecError};

/// `model.json` beside `model.onnx`: what the model reads and returns, and how it did offline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub name: String,
    /// Recorded on every score (traces, responses, metrics).
    pub version: String,
    /// Names of the graph's inputs and output.
    pub sparse_input: String,
    pub dense_input: String,
    /// `[batch]` or `[batch, 1]` float32; higher is better.
    pub output: String,
    /// The features, in tensor column order.
    pub features: InputSpec,
    /// Offline metrics on the holdout (AUC, NDCG@10, …) and their baselines.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// How it was trained (data, artifact version, epochs, library versions).
    #[serde(default)]
    pub training: BTreeMap<String, String>,
    /// The graph split in two beside it, for serving with the first stage folded
    /// (`scripts/split_ranker.py`, [`super::folded`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factored: Option<Factored>,
    /// A file beside it holding the graph's trees, for the service to walk itself
    /// (`scripts/train_gbdt.py`, [`recstack_core::ranking::trees`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trees: Option<String>,
}

/// A model's graph in two parts, files beside `model.onnx`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Factored {
    /// The model's inputs → `pre`: linear in the one-hot sparse ids and the dense values.
    pub first: String,
    /// `pre` → the model's output.
    pub head: String,
    /// The tensor between them (`[batch, H]` float32).
    pub pre: String,
}

/// Which graph of a model to load: the whole one, or a part of a factored one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Graph {
    Whole,
    /// Inputs as the whole graph's; output the card's `factored.pre`.
    First,
    /// Input `factored.pre`, `width` values a row; output the card's.
    Head {
        width: usize,
    },
}

/// Where the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// The CUDA execution provider on this GPU (needs `onnxruntime-gpu`).
    Cuda(i32),
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(id)) => Ok(Device::Cuda(id)),
                _ => Err(format!("device `{other}`: expected cpu, cuda or cuda:N")),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "no ONNX Runtime library found: set ORT_DYLIB_PATH to libonnxruntime.so, or create the \
         project venv with `scripts/setup` (it installs the onnxruntime wheel)"
    )]
    NoRuntime,
    #[error("loading ONNX Runtime from {path}: {message}")]
    Runtime { path: PathBuf, message: String },
    #[error("reading the model card {path}: {message}")]
    Card { path: PathBuf, message: String },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("model {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("scoring with model {version}: {message}")]
    Run { version: String, message: String },
}

/// The ONNX Runtime library: `ORT_DYLIB_PATH`, else the onnxruntime wheel in the venv that
/// `RECSTACK_VENV` names, else in a `.venv` in the working directory or any ancestor of it or
/// of this executable (`lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*`).
pub fn find_onnxruntime() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Some(PathBuf::from(p));
    }
    if let Some(lib) = std::env::var_os("RECSTACK_VENV").and_then(|v| venv_library(Path::new(&v))) {
        return Some(lib);
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots.iter().find_map(|root| venv_library(&root.join(".venv")))
}

fn venv_library(venv: &Path) -> Option<PathBuf> {
    entries_starting_with(&venv.join("lib"), "python3")
        .iter()
        .find_map(|py| {
            // The fully versioned name (libonnxruntime.so.1.31.1) sorts last.
            entries_starting_with(&py.join("site-packages/onnxruntime/capi"), "libonnxruntime.so").pop()
        })
}

/// The entries of `dir` whose names start with `prefix`, sorted; none if `dir` is unreadable.
fn entries_starting_with(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
        .collect();
    found.sort();
    found
}

/// The process's ONNX Runtime environment, loaded once (the library is looked for once too).
pub fn environment() -> Result<&'static ort::environment::Environment, ModelError> {
    /// Where loading failed (`None`: no library found) and why.
    type Failure = (Option<PathBuf>, String);
    static ENV: OnceLock<Result<ort::environment::Environment, Failure>> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = find_onnxruntime().ok_or((None, String::new()))?;
        let failed = |e: String| (Some(path.clone()), e);
        ort::init_from(&path)
            .map_err(|e| failed(e.to_string()))?
            .with_name("recstack")
            .build()
            .map_err(|e| failed(e.to_string()))
    })
    .as_ref()
    .map_err(|(path, message)| match path {
        None => ModelError::NoRuntime,
        Some(path) => ModelError::Runtime {
            path: path.clone(),
            message: message.clone(),
        },
    })
}

impl ModelCard {
    /// Reads `model.json` beside the model file.
    pub fn read(model: &Path) -> Result<Self, ModelError> {
        let path = card_path(model);
        let bytes = std::fs::read(&path).map_err(|e| ModelError::Card {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let card: ModelCard = serde_json::from_slice(&bytes).map_err(|e| ModelError::Card {
            path: path.clone(),
            message: e.to_string(),
        })?;
        card.features.check()?;
        card.data_as_of()
            .map_err(|message| ModelError::Card { path, message })?;
        Ok(card)
    }

    /// When the data the model was trained on ends: the card's `training.data_as_of`, the
    /// newest training rating of the artifacts `training.artifact_version` names (RFC 3339),
    /// as Unix seconds. `None` for a card without it (trained before the field); an error
    /// naming the field for one that is not a time.
    pub fn data_as_of(&self) -> Result<Option<i64>, String> {
        let Some(value) = self.training.get(DATA_AS_OF) else {
            return Ok(None);
        };
        value
            .parse::<jiff::Timestamp>()
            .map(|t| Some(t.as_second()))
            .map_err(|e| format!("training.{DATA_AS_OF}: {value:?} is not an RFC 3339 time ({e})"))
    }
}

/// The card's `training` key for when the training data ends ([`ModelCard::data_as_of`]).
pub const DATA_AS_OF: &str = "data_as_of";

/// How far the served artifacts' data may move past a model's before it is due for retraining:
/// about one period of the data's time split, after which a ranker measured below recall's own
/// order (docs/ranking.md, "How old a ranker may be").
pub const RETRAIN_AFTER_SECONDS: i64 = 27 * 86_400;

/// How much newer the served artifacts' data is than the model's training data, in seconds
/// (negative: the model was trained on newer data than it serves); `None` when either time is
/// unknown.
pub fn data_age(trained: Option<i64>, serving: Option<i64>) -> Option<i64> {
    Some(serving? - trained?)
}

/// The card of `dir/model.onnx` is `dir/model.json`.
pub fn card_path(model: &Path) -> PathBuf {
    model.with_extension("json")
}

/// A loaded model: one ONNX Runtime session and its card.
pub struct OnnxModel {
    session: Session,
    pub card: ModelCard,
    /// The graph's inputs (no sparse one in a head) and the output read.
    sparse_input: Option<String>,
    dense_input: String,
    output: String,
    /// Values per row of each input (0 for an absent one).
    pub widths: (usize, usize),
}

/// Rows of the all-zero batch a model scores when it loads (a request's 500 candidates fit).
const PROBE_ROWS: usize = 512;

impl OnnxModel {
    /// Loads `model.onnx` and its card, and scores an all-zero batch to prove the two agree.
    pub fn load(model: &Path, device: Device, intra_threads: usize) -> Result<Self, ModelError> {
        Self::load_graph(model, Graph::Whole, device, intra_threads)
    }

    /// Loads one graph of the model at `model` (`model.onnx`, its card beside it): the whole
    /// graph, or a part the card's `factored` section names. Runs an all-zero batch to prove the
    /// graph and the card agree (and to warm the session).
    pub fn load_graph(model: &Path, graph: Graph, device: Device, intra_threads: usize) -> Result<Self, ModelError> {
        let card = ModelCard::read(model)?;
        let load_err = |message: String| ModelError::Load {
            path: model.to_path_buf(),
            message,
        };
        let (file, sparse_input, dense_input, output, widths) = match (graph, &card.factored) {
            (Graph::Whole, _) => (
                model.to_path_buf(),
                Some(card.sparse_input.clone()),
                card.dense_input.clone(),
                card.output.clone(),
                (card.features.sparse.len(), card.features.dense.len()),
            ),
            (_, None) => return Err(load_err("the card has no `factored` section".into())),
            (Graph::First, Some(f)) => (
                model.with_file_name(&f.first),
                Some(card.sparse_input.clone()),
                card.dense_input.clone(),
                f.pre.clone(),
                (card.features.sparse.len(), card.features.dense.len()),
            ),
            (Graph::Head { width }, Some(f)) => (
                model.with_file_name(&f.head),
                None,
                f.pre.clone(),
                card.output.clone(),
                (0, width),
            ),
        };
        let env = environment()?;
        let load_err = |message: String| ModelError::Load {
            path: file.clone(),
            message,
        };
        let mut builder = Session::builder(env)
            .map_err(|e| load_err(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| load_err(e.to_string()))?
            .with_intra_threads(intra_threads.max(1))
            .map_err(|e| load_err(e.to_string()))?;
        if let Device::Cuda(id) = device {
            builder = builder
                .with_execution_providers([ort::ep::CUDA::default().with_device_id(id).build().error_on_failure()])
                .map_err(|e| load_err(format!("CUDA execution provider on GPU {id}: {e}")))?;
        }
        let session = builder.commit_from_file(&file).map_err(|e| load_err(e.to_string()))?;
        for name in sparse_input.iter().chain([&dense_input]) {
            if !session.inputs().iter().any(|i| i.name() == name) {
                return Err(load_err(format!(
                    "the card's input `{name}` is not an input of the graph"
                )));
            }
        }
        if !session.outputs().iter().any(|o| o.name() == output) {
            return Err(load_err(format!(
                "the card's output `{output}` is not an output of the graph"
            )));
        }
        let mut model = Self {
            session,
            card,
            sparse_input,
            dense_input,
            output,
            widths,
        };
        // A batch of the size requests bring, not one row: the first request then finds the
        // session's buffers already allocated.
        let rows = PROBE_ROWS;
        let probe = model.run(&vec![0; widths.0 * rows], &vec![0.0; widths.1 * rows], rows)?;
        if probe.is_empty() || (graph != Graph::First && probe.len() != rows) || !probe.iter().all(|v| v.is_finite()) {
            return Err(load_err(format!(
                "a probe batch of {rows} rows gave {} values, first {:?}",
                probe.len(),
                &probe[..probe.len().min(4)]
            )));
        }
        Ok(model)
    }

    pub fn version(&self) -> &str {
        &self.card.version
    }

    /// Scores `rows` rows (row-major inputs); one score per row.
    pub fn score(&mut self, sparse: &[i64], dense: &[f32], rows: usize) -> Result<Vec<f32>, ModelError> {
        let scores = self.run(sparse, dense, rows)?;
        if scores.len() != rows {
            return Err(ModelError::Run {
                version: self.card.version.clone(),
                message: format!("{rows} rows in, {} scores out", scores.len()),
            });
        }
        Ok(scores)
    }

    /// Runs the graph on `rows` rows (row-major inputs): the output's values, row-major (one a
    /// row for a score, `H` a row for a first stage's `pre`).
    pub fn run(&mut self, sparse: &[i64], dense: &[f32], rows: usize) -> Result<Vec<f32>, ModelError> {
        let run_err = |message: String| ModelError::Run {
            version: self.card.version.clone(),
            message,
        };
        if sparse.len() != rows * self.widths.0 || dense.len() != rows * self.widths.1 {
            return Err(run_err(format!(
                "{rows} rows need {}×{} sparse and dense values, got {} and {}",
                self.widths.0,
                self.widths.1,
                sparse.len(),
                dense.len()
            )));
        }
        if rows == 0 {
            return Ok(Vec::new());
        }
        let dense_t = TensorRef::from_array_view(([rows, self.widths.1], dense)).map_err(|e| run_err(e.to_string()))?;
        let inputs = match &self.sparse_input {
            Some(sparse_name) => {
                let sparse_t =
                    TensorRef::from_array_view(([rows, self.widths.0], sparse)).map_err(|e| run_err(e.to_string()))?;
                ort::inputs![sparse_name.as_str() => sparse_t, self.dense_input.as_str() => dense_t]
            }
            None => ort::inputs![self.dense_input.as_str() => dense_t],
        };
        let version = &self.card.version;
        let outputs = self.session.run(inputs).map_err(|e| ModelError::Run {
            version: version.clone(),
            message: e.to_string(),
        })?;
        let (_, values) = outputs[self.output.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| ModelError::Run {
                version: version.clone(),
                message: e.to_string(),
            })?;
        if values.len() % rows != 0 {
            return Err(ModelError::Run {
                version: version.clone(),
                message: format!("{rows} rows in, {} values out", values.len()),
            });
        }
        Ok(values.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(training: &[(&str, &str)]) -> ModelCard {
        ModelCard {
            name: "m".into(),
            version: "m-1".into(),
            sparse_input: "sparse".into(),
            dense_input: "dense".into(),
            output: "score".into(),
            features: InputSpec {
                sparse: Vec::new(),
                dense: Vec::new(),
            },
            metrics: BTreeMap::new(),
            training: training.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            factored: None,
            trees: None,
        }
    }

    #[test]
    fn the_cards_data_time_is_read_as_unix_seconds_or_refused_by_name() {
        assert_eq!(
            card(&[("data_as_of", "2013-09-01T20:27:45Z")]).data_as_of(),
            Ok(Some(1_378_067_265))
        );
        // Any RFC 3339 offset is the same instant.
        assert_eq!(
            card(&[("data_as_of", "2013-09-01T22:27:45+02:00")]).data_as_of(),
            Ok(Some(1_378_067_265))
        );
        assert_eq!(card(&[("artifact_version", "v-1")]).data_as_of(), Ok(None));
        for bad in ["", "2013-09-01", "yesterday", "1378067265"] {
            let e = card(&[("data_as_of", bad)]).data_as_of().unwrap_err();
            assert!(
                e.starts_with(&format!("training.data_as_of: {bad:?} is not an RFC 3339 time")),
                "{e}"
            );
        }
    }

    #[test]
    fn the_data_age_is_the_gap_when_both_times_are_known() {
        assert_eq!(data_age(Some(100), Some(400)), Some(300));
        assert_eq!(data_age(Some(400), Some(100)), Some(-300));
        assert_eq!(data_age(None, Some(100)), None);
        assert_eq!(data_age(Some(100), None), None);
    }
}
