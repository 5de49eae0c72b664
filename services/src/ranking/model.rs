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

use super::features::{FeatureSpec, SpecError};

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
    pub features: FeatureSpec,
    /// Offline metrics on the holdout (AUC, NDCG@10, …) and their baselines.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// How it was trained (data, artifact version, epochs, library versions).
    #[serde(default)]
    pub training: BTreeMap<String, String>,
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
        Ok(card)
    }
}

/// The card of `dir/model.onnx` is `dir/model.json`.
pub fn card_path(model: &Path) -> PathBuf {
    model.with_extension("json")
}

/// A loaded model: one ONNX Runtime session and its card.
pub struct OnnxModel {
    session: Session,
    pub card: ModelCard,
    /// Values per row of each input.
    pub widths: (usize, usize),
}

impl OnnxModel {
    /// Loads `model.onnx` and its card, and scores one row to prove the two agree.
    pub fn load(model: &Path, device: Device, intra_threads: usize) -> Result<Self, ModelError> {
        let card = ModelCard::read(model)?;
        let env = environment()?;
        let load_err = |message: String| ModelError::Load {
            path: model.to_path_buf(),
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
        let session = builder.commit_from_file(model).map_err(|e| load_err(e.to_string()))?;
        for name in [&card.sparse_input, &card.dense_input] {
            if !session.inputs().iter().any(|i| i.name() == name) {
                return Err(load_err(format!(
                    "the card's input `{name}` is not an input of the graph"
                )));
            }
        }
        if !session.outputs().iter().any(|o| o.name() == card.output) {
            return Err(load_err(format!(
                "the card's output `{}` is not an output of the graph",
                card.output
            )));
        }
        let widths = (card.features.sparse.len(), card.features.dense.len());
        let mut model = Self { session, card, widths };
        let probe = model.score(&vec![0; widths.0], &vec![0.0; widths.1], 1)?;
        if probe.len() != 1 || !probe[0].is_finite() {
            return Err(load_err(format!("a probe row scored {probe:?}")));
        }
        Ok(model)
    }

    pub fn version(&self) -> &str {
        &self.card.version
    }

    /// Scores `rows` rows (row-major inputs); one score per row.
    pub fn score(&mut self, sparse: &[i64], dense: &[f32], rows: usize) -> Result<Vec<f32>, ModelError> {
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
        let sparse_t =
            TensorRef::from_array_view(([rows, self.widths.0], sparse)).map_err(|e| run_err(e.to_string()))?;
        let dense_t = TensorRef::from_array_view(([rows, self.widths.1], dense)).map_err(|e| run_err(e.to_string()))?;
        let (sparse_name, dense_name, output) = (
            self.card.sparse_input.clone(),
            self.card.dense_input.clone(),
            self.card.output.clone(),
        );
        let version = self.card.version.clone();
        let outputs = self
            .session
            .run(ort::inputs![sparse_name => sparse_t, dense_name => dense_t])
            .map_err(|e| ModelError::Run {
                version: version.clone(),
                message: e.to_string(),
            })?;
        let (_, scores) = outputs[output.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| ModelError::Run {
                version: version.clone(),
                message: e.to_string(),
            })?;
        if scores.len() != rows {
            return Err(ModelError::Run {
                version,
                message: format!("{rows} rows in, {} scores out", scores.len()),
            });
        }
        Ok(scores.to_vec())
    }
}
