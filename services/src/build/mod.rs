//! `recstack build`: from ratings to a versioned artifact directory that recall and the feature
//! service load.
//!
//! Steps (each reports progress): time split → item-CF neighbours → user-CF neighbours →
//! time-decayed hot list → ALS factors → ANN index over item factors → genre inverted index →
//! item and user feature snapshots. Only the training split is used; the held-out ratings are
//! stored beside the artifacts for `recstack eval`. The same data, parameters and seed give
//! byte-identical artifact files.

pub mod als;
pub mod ann;
pub mod cf;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dataset::{Dataset, Item, Rating, Split, time_split};

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
    /// Half-life of an interaction's weight in the hot list, in days.
    pub hot_half_life_days: f64,
    /// Length of the hot and popular lists.
    pub hot_len: usize,
    pub als: als::AlsParams,
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
            hot_half_life_days: 14.0,
            hot_len: 2000,
            als: als::AlsParams::default(),
            ann_ef_construction: 100,
            ann_ef_search: 128,
        }
    }
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Data(#[from] crate::dataset::DataError),
    #[error("writing {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("encoding {what}: {source}")]
    Encode {
        what: &'static str,
        source: postcard::Error,
    },
    #[error("reading artifacts in {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("the data has no ratings")]
    Empty,
}

/// Per-item features served by the feature service and used by rerank.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemFeatures {
    pub ratings: u32,
    pub mean_rating: f32,
    pub hot_score: f32,
    pub year: Option<u16>,
    pub genres: Vec<String>,
}

/// Per-user features from the training split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserFeatures {
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
    pub item_neighbours: Vec<Ranked>,
    pub user_neighbours: Vec<Ranked>,
    /// Time-decayed popularity.
    pub hot: Ranked,
    /// All-time interaction counts (the popularity baseline).
    pub popular: Ranked,
    pub factors: als::Factors,
    pub ann: ann::ItemIndex,
    /// Genre → items, by hot score.
    pub tags: BTreeMap<String, Vec<u32>>,
    pub item_features: Vec<ItemFeatures>,
    pub user_features: Vec<UserFeatures>,
    /// Held-out ratings (never trained on), for evaluation.
    pub holdout: Vec<Rating>,
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
}

const ARTIFACT_FILE: &str = "artifacts.bin";

/// Shows one step of the build on stderr: a line when it starts and ends, and a bar for steps
/// with many units of work.
pub struct Progress {
    quiet: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        Self { quiet }
    }

    fn step<T>(&self, name: &str, units: u64, f: impl FnOnce(&ProgressBar) -> T) -> T {
        let bar = if self.quiet || units == 0 {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(units).with_style(
                ProgressStyle::with_template("  {msg:<18} [{bar:30}] {pos}/{len} ({eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            )
        };
        bar.set_message(name.to_string());
        let start = Instant::now();
        if !self.quiet {
            eprintln!("build: {name} …");
        }
        let out = f(&bar);
        bar.finish_and_clear();
        if !self.quiet {
            eprintln!("build: {name} done in {:.1}s", start.elapsed().as_secs_f64());
        }
        out
    }
}

/// Builds the artifacts from a data set (pure computation; see [`write`] for the files).
pub fn build(ds: &Dataset, params: &BuildParams, progress: &Progress) -> Result<Artifacts, BuildError> {
    if ds.ratings.is_empty() {
        return Err(BuildError::Empty);
    }
    let (n_users, n_items) = (ds.n_users(), ds.n_items());
    let Split { train, test } = progress.step("time split", 0, |_| {
        time_split(&ds.ratings, params.holdout, params.min_history)
    });

    let mut by_user: Vec<Vec<(u32, u8)>> = vec![Vec::new(); n_users];
    let mut by_item: Vec<Vec<(u32, u8)>> = vec![Vec::new(); n_items];
    let mut sorted = train.clone();
    sorted.sort_by_key(|r| (r.user, std::cmp::Reverse(r.ts), r.item));
    for r in &sorted {
        by_user[r.user as usize].push((r.item, r.rating));
        by_item[r.item as usize].push((r.user, r.rating));
    }
    let history: Vec<Vec<u32>> = by_user.iter().map(|rs| rs.iter().map(|r| r.0).collect()).collect();
    let history_ratings: Vec<Vec<u8>> = by_user.iter().map(|rs| rs.iter().map(|r| r.1).collect()).collect();
    let item_users: Vec<Vec<u32>> = by_item.iter().map(|rs| rs.iter().map(|r| r.0).collect()).collect();

    let item_neighbours = progress.step("item-CF", n_items as u64, |bar| {
        cf::neighbours(&item_users, &history, params.neighbours, &|| bar.inc(1))
    });
    let user_neighbours = progress.step("user-CF", n_users as u64, |bar| {
        cf::neighbours(&history, &item_users, params.neighbours, &|| bar.inc(1))
    });
    let (hot, popular) = progress.step("hot list", 0, |_| hot_lists(&train, n_items, params));
    let factors = progress.step("ALS", params.als.iterations as u64, |bar| {
        als::train(&by_user, &by_item, &params.als, params.seed, &|i| {
            bar.set_position(i as u64)
        })
    });
    let ann = progress.step("ANN index", 0, |_| {
        let vectors = (0..n_items as u32)
            .filter(|&i| !by_item[i as usize].is_empty())
            .map(|i| (i, ann::UnitVec::new(factors.item(i))))
            .collect();
        ann::ItemIndex::build(vectors, params.seed, params.ann_ef_construction, params.ann_ef_search)
    });
    let hot_score: Vec<f32> = {
        let mut s = vec![0f32; n_items];
        for &(i, score) in &hot {
            s[i as usize] = score;
        }
        s
    };
    let tags = progress.step("tag index", 0, |_| tag_index(&ds.items, &by_item, &hot_score));
    let (item_features, user_features) = progress.step("features", 0, |_| {
        let items = item_features(&ds.items, &by_item, &hot_score);
        let users = user_features(&ds.items, &by_user, &sorted);
        (items, users)
    });

    Ok(Artifacts {
        items: ds.items.clone(),
        users: ds.users.clone(),
        history,
        history_ratings,
        item_neighbours,
        user_neighbours,
        hot,
        popular,
        factors,
        ann,
        tags,
        item_features,
        user_features,
        holdout: test,
    })
}

/// Time-decayed hot list (relative to the newest training rating) and all-time popularity.
fn hot_lists(train: &[Rating], n_items: usize, p: &BuildParams) -> (Ranked, Ranked) {
    let now = train.iter().map(|r| r.ts).max().unwrap_or(0);
    let half_life = p.hot_half_life_days * 86_400.0;
    let mut hot = vec![0f64; n_items];
    let mut count = vec![0f32; n_items];
    for r in train {
        hot[r.item as usize] += (-(now - r.ts) as f64 * std::f64::consts::LN_2 / half_life).exp();
        count[r.item as usize] += 1.0;
    }
    let ranked = |scores: Vec<(u32, f32)>| {
        let mut v: Vec<(u32, f32)> = scores.into_iter().filter(|s| s.1 > 0.0).collect();
        cf::top_k(&mut v, p.hot_len);
        v
    };
    (
        ranked(hot.iter().enumerate().map(|(i, &s)| (i as u32, s as f32)).collect()),
        ranked(count.iter().enumerate().map(|(i, &s)| (i as u32, s)).collect()),
    )
}

fn tag_index(items: &[Item], by_item: &[Vec<(u32, u8)>], hot: &[f32]) -> BTreeMap<String, Vec<u32>> {
    let mut tags: BTreeMap<String, Vec<(u32, f32)>> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        if by_item[i].is_empty() {
            continue;
        }
        // Hot score first, then how often it was rated at all, so old classics still rank.
        let score = hot[i] + by_item[i].len() as f32 * 1e-3;
        for g in &item.genres {
            tags.entry(g.clone()).or_default().push((i as u32, score));
        }
    }
    tags.into_iter()
        .map(|(g, mut v)| {
            let len = v.len();
            cf::top_k(&mut v, len);
            (g, v.into_iter().map(|x| x.0).collect())
        })
        .collect()
}

fn item_features(items: &[Item], by_item: &[Vec<(u32, u8)>], hot: &[f32]) -> Vec<ItemFeatures> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let rs = &by_item[i];
            ItemFeatures {
                ratings: rs.len() as u32,
                mean_rating: mean(rs.iter().map(|r| r.1)),
                hot_score: hot[i],
                year: item.year,
                genres: item.genres.clone(),
            }
        })
        .collect()
}

/// `sorted` is the training split sorted by (user, newest first).
fn user_features(items: &[Item], by_user: &[Vec<(u32, u8)>], sorted: &[Rating]) -> Vec<UserFeatures> {
    let mut last_ts = vec![0i64; by_user.len()];
    for r in sorted.iter().rev() {
        last_ts[r.user as usize] = r.ts;
    }
    by_user
        .iter()
        .enumerate()
        .map(|(u, rs)| {
            let mut genres: BTreeMap<&str, f32> = BTreeMap::new();
            for &(i, _) in rs {
                for g in &items[i as usize].genres {
                    *genres.entry(g).or_default() += 1.0;
                }
            }
            let total = rs.len().max(1) as f32;
            let mut top: Vec<(String, f32)> = genres.into_iter().map(|(g, c)| (g.to_string(), c / total)).collect();
            top.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            top.truncate(5);
            UserFeatures {
                ratings: rs.len() as u32,
                mean_rating: mean(rs.iter().map(|r| r.1)),
                last_ts: last_ts[u],
                top_genres: top,
                recent_items: rs.iter().take(20).map(|r| r.0).collect(),
            }
        })
        .collect()
}

fn mean(values: impl Iterator<Item = u8>) -> f32 {
    let (sum, n) = values.fold((0u32, 0u32), |(s, n), v| (s + u32::from(v), n + 1));
    if n == 0 { 0.0 } else { sum as f32 / n as f32 }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of each named input file.
pub fn hash_inputs(dir: &Path, names: &[&str]) -> Result<BTreeMap<String, String>, BuildError> {
    names
        .iter()
        .map(|name| {
            let path = dir.join(name);
            let bytes = std::fs::read(&path).map_err(|source| BuildError::Io { path, source })?;
            Ok((name.to_string(), sha256_hex(&bytes)))
        })
        .collect()
}

/// Builds the artifacts of a MovieTweetings directory (`movies.dat`, `ratings.dat`) with
/// `params` and writes them to `root` (as [`write`]): what tests and benches start from.
pub fn build_dir(
    dir: &Path,
    root: &Path,
    params: &BuildParams,
    progress: &Progress,
) -> Result<(Manifest, Artifacts), BuildError> {
    let ds = Dataset::load_movietweetings(dir)?;
    build_loaded(&ds, dir, root, params, progress)
}

/// [`build_dir`] for a data set already loaded from `dir` (`recstack build` reports on it
/// before the build starts).
pub fn build_loaded(
    ds: &Dataset,
    dir: &Path,
    root: &Path,
    params: &BuildParams,
    progress: &Progress,
) -> Result<(Manifest, Artifacts), BuildError> {
    let artifacts = build(ds, params, progress)?;
    let inputs = hash_inputs(dir, &["movies.dat", "ratings.dat"])?;
    let manifest = write(root, &artifacts, "movietweetings-100k", inputs, params)?;
    Ok((manifest, artifacts))
}

/// Writes `artifacts` to `root/<version>/` (via a temporary directory renamed into place, so
/// a reader never sees half a version) and points `root/current` at it. Returns the manifest.
pub fn write(
    root: &Path,
    artifacts: &Artifacts,
    dataset: &str,
    inputs: BTreeMap<String, String>,
    params: &BuildParams,
) -> Result<Manifest, BuildError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Io { path, source }
    };
    let bytes = postcard::to_stdvec(artifacts).map_err(|source| BuildError::Encode {
        what: "artifacts",
        source,
    })?;
    let params_json = serde_json::to_string(params).unwrap_or_default();
    let version_key = format!("{dataset}\n{inputs:?}\n{params_json}");
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
pub fn load(root: &Path, version: Option<&str>) -> Result<(Manifest, Artifacts), BuildError> {
    let err = |message: String| BuildError::Load {
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
    let bytes = std::fs::read(dir.join(ARTIFACT_FILE)).map_err(|e| err(format!("{version}/{ARTIFACT_FILE}: {e}")))?;
    if manifest.files.get(ARTIFACT_FILE) != Some(&sha256_hex(&bytes)) {
        return Err(err(format!(
            "{version}/{ARTIFACT_FILE} does not match its manifest hash"
        )));
    }
    let artifacts = postcard::from_bytes(&bytes).map_err(|e| err(format!("{version}/{ARTIFACT_FILE}: {e}")))?;
    Ok((manifest, artifacts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(item: u32, ts: i64) -> Rating {
        Rating {
            user: 0,
            item,
            rating: 5,
            ts,
        }
    }

    #[test]
    fn hot_list_decays_with_age() {
        let day = 86_400;
        let p = BuildParams {
            hot_half_life_days: 7.0,
            ..BuildParams::default()
        };
        // Item 0: three interactions four weeks ago. Item 1: two today. Item 2: one a week ago.
        let now = 100 * day;
        let train = vec![
            r(0, now - 28 * day),
            r(0, now - 28 * day),
            r(0, now - 28 * day),
            r(1, now),
            r(1, now),
            r(2, now - 7 * day),
        ];
        let (hot, popular) = hot_lists(&train, 4, &p);
        assert_eq!(
            hot.iter().map(|h| h.0).collect::<Vec<_>>(),
            [1, 2, 0],
            "recent beats frequent-but-old"
        );
        assert_eq!(
            popular.iter().map(|h| h.0).collect::<Vec<_>>(),
            [0, 1, 2],
            "all-time counts ignore age"
        );
        // One half-life halves the weight; four halve it four times.
        assert!((hot[1].1 - 0.5).abs() < 1e-6, "{hot:?}");
        assert!((hot[2].1 - 3.0 / 16.0).abs() < 1e-6, "{hot:?}");
        assert_eq!(hot[0].1, 2.0);
        assert!(hot.iter().all(|h| h.0 != 3), "never-seen items are not hot");
    }
}
