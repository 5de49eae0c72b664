//! The artifacts recall, features, ranking and evaluation read: their types, and one version
//! written to and loaded from an artifact directory (`root/<version>/`, `root/current`).
//! `recstack_offline::build` computes them from ratings.

pub mod ann;
pub mod factors;
pub mod seq;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use factors::AlsParams;

/// A movie (item).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// External id (the IMDb number, e.g. `0110912`).
    pub id: String,
    pub title: String,
    pub year: Option<u16>,
    pub genres: Vec<String>,
}

/// One rating, with dense user and item indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rating {
    pub user: u32,
    pub item: u32,
    /// 0–10.
    pub rating: u8,
    /// Unix seconds.
    pub ts: i64,
}

/// (item or user, score) pairs, best first.
pub type Ranked = Vec<(u32, f32)>;

/// Build parameters. Part of the artifact version: change one and the version changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuildParams {
    pub seed: u64,
    /// Fraction of each user's most recent ratings held out for evaluation.
    pub holdout: f64,
    /// Users with fewer ratings are not held out (all train).
    pub min_history: usize,
    /// Neighbours kept per item (item-CF) and per user (user-CF).
    pub neighbours: usize,
    /// Half-life of an interaction's weight in the hot list, in days; `None`: chosen on a
    /// validation world by the build (the training ratings split again by time).
    #[serde(default)]
    pub hot_half_life_days: Option<f64>,
    /// Ratings after an item that count as rated "next" (the co-occurrence channel).
    #[serde(default = "default_cooc_window")]
    pub cooc_window: usize,
    /// Length of the hot and popular lists.
    pub hot_len: usize,
    pub als: AlsParams,
    pub ann_ef_construction: usize,
    pub ann_ef_search: usize,
}

impl Default for BuildParams {
    fn default() -> Self {
        Self {
            seed: 42,
            holdout: 0.2,
            min_history: 5,
            neighbours: 50,
            hot_half_life_days: None,
            cooc_window: 5,
            hot_len: 2000,
            als: AlsParams::default(),
            ann_ef_construction: 100,
            ann_ef_search: 128,
        }
    }
}

fn default_cooc_window() -> usize {
    5
}

/// The hot list's half-life when none is configured and the data is too small to choose one.
pub const DEFAULT_HOT_HALF_LIFE_DAYS: f64 = 14.0;

/// Why artifacts could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("writing {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("encoding {what}: {source}")]
    Encode {
        what: &'static str,
        source: postcard::Error,
    },
    #[error("reading artifacts in {path}: {message}")]
    Load { path: PathBuf, message: String },
}

/// Per-item features served by the feature service and used by rerank.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemProfile {
    pub ratings: u32,
    pub mean_rating: f32,
    pub hot_score: f32,
    pub year: Option<u16>,
    pub genres: Vec<String>,
    /// The item's ratings decayed with a [`RECENT_HALF_LIFE_DAYS`] half-life as of the newest
    /// training rating.
    pub recent_score: f32,
    /// Its training ratings by day: the ranker's `item_*_then` features, as of each user's
    /// latest activity.
    pub timeline: crate::timeline::Timeline,
}

/// The half-life of [`ItemProfile::recent_score`], in days. Chosen on the validation world
/// (docs/ranking.md, "`deepfm-6`"): of 2, 4, 7, 14, 21 and 45 days, the ranker trained with
/// the feature read 14 best there.
pub const RECENT_HALF_LIFE_DAYS: f64 = 14.0;

/// Per-user features from the training split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserProfile {
    pub ratings: u32,
    pub mean_rating: f32,
    pub last_ts: i64,
    /// Genre → share of the user's ratings, highest first (at most 5).
    pub top_genres: Vec<(String, f32)>,
    /// Most recent items first (at most 20).
    pub recent_items: Vec<u32>,
}

/// Everything recall, features and evaluation read, in memory.
#[derive(Serialize, Deserialize)]
pub struct Artifacts {
    pub items: Vec<Item>,
    pub users: Vec<String>,
    /// Training items per user, most recent first.
    pub history: Vec<Vec<u32>>,
    /// The ratings (0–10) of `history`, position by position.
    pub history_ratings: Vec<Vec<u8>>,
    /// When each item of `history` was rated (Unix seconds), position by position: why-not's
    /// "already consumed, on …".
    pub history_times: Vec<Vec<i64>>,
    pub item_neighbours: Vec<Ranked>,
    pub user_neighbours: Vec<Ranked>,
    /// Per item, the items users rated within a few ratings after it (sequential
    /// co-occurrence, best first): the `cooc` channel.
    pub next_items: Vec<Ranked>,
    /// Time-decayed popularity.
    pub hot: Ranked,
    /// The half-life the hot list was built with (configured or chosen), in days.
    pub hot_half_life_days: f64,
    /// All-time interaction counts (the popularity baseline).
    pub popular: Ranked,
    pub factors: factors::Factors,
    pub ann: ann::ItemIndex,
    /// Genre → items, by hot score.
    pub tags: BTreeMap<String, Vec<u32>>,
    pub item_features: Vec<ItemProfile>,
    pub user_features: Vec<UserProfile>,
    /// Held-out ratings (never trained on), for evaluation.
    pub holdout: Vec<Rating>,
    /// The vector channel's sequence model, when the build was given one (its item rows are
    /// what [`Artifacts::ann`] indexes then).
    pub seq: Option<seq::SeqModel>,
}

impl Artifacts {
    /// The newest training rating (Unix seconds): the time the build's popularity and features
    /// are as of. `None` without any rating.
    pub fn newest_rating(&self) -> Option<i64> {
        self.history_times.iter().flatten().copied().max()
    }
}

/// The artifact directory's `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Derived from the inputs' hashes and the parameters: same inputs, same version.
    pub version: String,
    pub created: String,
    pub dataset: String,
    /// sha256 of each input file.
    pub inputs: BTreeMap<String, String>,
    pub params: BuildParams,
    /// sha256 of each artifact file.
    pub files: BTreeMap<String, String>,
    pub counts: BTreeMap<String, usize>,
    /// The [`ARTIFACT_FORMAT`] the artifacts were written in (0: a manifest from before the
    /// field, format 4 or older). [`load`] refuses any other than its own, naming both, rather
    /// than misread them.
    #[serde(default)]
    pub format: u32,
}

const ARTIFACT_FILE: &str = "artifacts.bin";

/// The encoding of [`Artifacts`]; part of the version, so a build with a changed layout writes
/// a new version instead of one an older reader misreads (2: `history_times`; 3: `next_items`,
/// `hot_half_life_days`; 5: the items' `recent_score`; 6: the items' `timeline`).
pub const ARTIFACT_FORMAT: u32 = 6;

/// The [`Manifest::format`] of a `manifest.json`, read without the rest of it (so a manifest
/// of any release can be told apart before its artifacts are fetched or decoded).
pub fn manifest_format(json: &[u8]) -> Result<u32, serde_json::Error> {
    #[derive(Deserialize)]
    struct Format {
        #[serde(default)]
        format: u32,
    }
    Ok(serde_json::from_slice::<Format>(json)?.format)
}

/// Why a version in `format` cannot be read by this build, or `None` when it can: "`version`
/// was written in format 4; this build reads format 5".
pub fn format_mismatch(version: &str, format: u32) -> Option<String> {
    if format == ARTIFACT_FORMAT {
        return None;
    }
    let was = match format {
        0 => "an older format (4 or before)".to_string(),
        n => format!("format {n}"),
    };
    Some(format!(
        "{version} was written in {was}; this build reads format {ARTIFACT_FORMAT}"
    ))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `artifacts` to `root/<version>/` (via a temporary directory renamed into place, so
/// a reader never sees half a version) and points `root/current` at it. Returns the manifest.
pub fn write(
    root: &Path,
    artifacts: &Artifacts,
    dataset: &str,
    inputs: BTreeMap<String, String>,
    params: &BuildParams,
) -> Result<Manifest, ArtifactError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArtifactError::Io { path, source }
    };
    let bytes = postcard::to_stdvec(artifacts).map_err(|source| ArtifactError::Encode {
        what: "artifacts",
        source,
    })?;
    let params_json = serde_json::to_string(params).unwrap_or_default();
    let version_key = format!("{dataset}\n{inputs:?}\n{params_json}\nformat {ARTIFACT_FORMAT}");
    let version = format!("v-{}", &sha256_hex(version_key.as_bytes())[..12]);
    let counts = BTreeMap::from([
        ("users".to_string(), artifacts.users.len()),
        ("items".to_string(), artifacts.items.len()),
        (
            "train_ratings".to_string(),
            artifacts.history.iter().map(Vec::len).sum(),
        ),
        ("holdout_ratings".to_string(), artifacts.holdout.len()),
        ("tags".to_string(), artifacts.tags.len()),
    ]);
    let manifest = Manifest {
        version: version.clone(),
        created: jiff::Timestamp::now().to_string(),
        dataset: dataset.to_string(),
        inputs,
        params: params.clone(),
        files: BTreeMap::from([(ARTIFACT_FILE.to_string(), sha256_hex(&bytes))]),
        counts,
        format: ARTIFACT_FORMAT,
    };
    std::fs::create_dir_all(root).map_err(io(root))?;
    let tmp = root.join(format!(".{version}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    std::fs::write(tmp.join(ARTIFACT_FILE), &bytes).map_err(io(&tmp))?;
    let manifest_json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    std::fs::write(tmp.join("manifest.json"), manifest_json).map_err(io(&tmp))?;
    let dir = root.join(&version);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
    // `current` names the newest version; written then renamed, so it is never half-written.
    let current_tmp = root.join(".current.tmp");
    std::fs::write(&current_tmp, format!("{version}\n")).map_err(io(&current_tmp))?;
    std::fs::rename(&current_tmp, root.join("current")).map_err(io(root))?;
    Ok(manifest)
}

/// Loads the version `root/current` names (or `version` when given), checking its hash.
pub fn load(root: &Path, version: Option<&str>) -> Result<(Manifest, Artifacts), ArtifactError> {
    let err = |message: String| ArtifactError::Load {
        path: root.to_path_buf(),
        message,
    };
    let version = match version {
        Some(v) => v.to_string(),
        None => std::fs::read_to_string(root.join("current"))
            .map_err(|e| err(format!("no current version ({e}); run `recstack build`")))?
            .trim()
            .to_string(),
    };
    let dir = root.join(&version);
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(dir.join("manifest.json")).map_err(|e| err(format!("{version}/manifest.json: {e}")))?,
    )
    .map_err(|e| err(format!("{version}/manifest.json: {e}")))?;
    if let Some(why) = format_mismatch(&version, manifest.format) {
        return Err(err(format!("{why}: run `recstack build` to write the same data in it")));
    }
    let bytes = std::fs::read(dir.join(ARTIFACT_FILE)).map_err(|e| err(format!("{version}/{ARTIFACT_FILE}: {e}")))?;
    if manifest.files.get(ARTIFACT_FILE) != Some(&sha256_hex(&bytes)) {
        return Err(err(format!(
            "{version}/{ARTIFACT_FILE} does not match its manifest hash"
        )));
    }
    let artifacts = postcard::from_bytes(&bytes).map_err(|e| err(format!("{version}/{ARTIFACT_FILE}: {e}")))?;
    Ok((manifest, artifacts))
}
