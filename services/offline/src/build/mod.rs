//! `recstack build`: from ratings to a versioned artifact directory that recall and the feature
//! service load.
//!
//! Steps (each reports progress): time split → item-CF neighbours → user-CF neighbours →
//! the hot list's half-life (chosen on a validation world unless configured) → time-decayed
//! hot list → sequential co-occurrence (what is rated next) → ALS factors → ANN index over item factors → genre inverted index →
//! item and user feature snapshots. Only the training split is used; the held-out ratings are
//! stored beside the artifacts for `recstack eval`. The same data, parameters and seed give
//! byte-identical artifact files.

pub mod als;
pub mod cf;
pub mod cooc;
pub mod hot;
pub mod seq;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
pub use recstack_core::artifacts::{
    ArtifactError, Artifacts, BuildParams, DEFAULT_HOT_HALF_LIFE_DAYS, Item, ItemProfile, Manifest,
    RECENT_HALF_LIFE_DAYS, Ranked, Rating, UserProfile, ann, load, sha256_hex, write,
};

use recstack_core::timeline::Timeline;

use crate::dataset::{Dataset, Split, time_split};

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Data(#[from] crate::dataset::DataError),
    #[error(transparent)]
    Artifacts(#[from] ArtifactError),
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the data has no ratings")]
    Empty,
    #[error("the sequence model: {0}")]
    SeqModel(#[from] seq::SeqModelError),
}

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
    let mut history_times: Vec<Vec<i64>> = vec![Vec::new(); n_users];
    let mut sorted = train.clone();
    sorted.sort_by_key(|r| (r.user, std::cmp::Reverse(r.ts), r.item));
    for r in &sorted {
        by_user[r.user as usize].push((r.item, r.rating));
        by_item[r.item as usize].push((r.user, r.rating));
        history_times[r.user as usize].push(r.ts);
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
    let hot_half_life_days = progress.step("hot half-life", 0, |_| match params.hot_half_life_days {
        Some(days) => days,
        None => hot::tune_half_life(&train, n_items, params.holdout, params.min_history, hot::HALF_LIFE_GRID)
            .map_or(DEFAULT_HOT_HALF_LIFE_DAYS, |(days, _)| days),
    });
    let (hot, popular) = progress.step("hot list", 0, |_| {
        hot::hot_lists(&train, n_items, hot_half_life_days, params.hot_len)
    });
    let next_items = progress.step("co-occurrence", 0, |_| {
        let oldest_first: Vec<Vec<u32>> = history.iter().map(|h| h.iter().rev().copied().collect()).collect();
        cooc::next_items(&oldest_first, n_items, params.cooc_window, params.neighbours)
    });
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
        let recent = hot::decayed_counts(&train, n_items, RECENT_HALF_LIFE_DAYS);
        let timelines = timelines(&train, n_items);
        let items = item_features(&ds.items, &by_item, &hot_score, &recent, timelines);
        let users = user_features(&ds.items, &by_user, &sorted);
        (items, users)
    });

    Ok(Artifacts {
        items: ds.items.clone(),
        users: ds.users.clone(),
        history,
        history_ratings,
        history_times,
        item_neighbours,
        user_neighbours,
        next_items,
        hot,
        hot_half_life_days,
        popular,
        factors,
        ann,
        tags,
        item_features,
        user_features,
        holdout: test,
        seq: None,
    })
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
            recstack_core::topk::top_k(&mut v, len);
            (g, v.into_iter().map(|x| x.0).collect())
        })
        .collect()
}

/// Each item's [`Timeline`] of the training ratings, as of the newest one.
fn timelines(train: &[Rating], n_items: usize) -> Vec<Timeline> {
    let end = train.iter().map(|r| r.ts).max().unwrap_or(0);
    let mut times: Vec<Vec<i64>> = vec![Vec::new(); n_items];
    for r in train {
        times[r.item as usize].push(r.ts);
    }
    times.into_iter().map(|t| Timeline::from_times(t, end)).collect()
}

fn item_features(
    items: &[Item],
    by_item: &[Vec<(u32, u8)>],
    hot: &[f32],
    recent: &[f64],
    timelines: Vec<Timeline>,
) -> Vec<ItemProfile> {
    items
        .iter()
        .zip(timelines)
        .enumerate()
        .map(|(i, (item, timeline))| {
            let rs = &by_item[i];
            ItemProfile {
                ratings: rs.len() as u32,
                mean_rating: mean(rs.iter().map(|r| r.1)),
                hot_score: hot[i],
                year: item.year,
                genres: item.genres.clone(),
                recent_score: recent[i] as f32,
                timeline,
            }
        })
        .collect()
}

/// `sorted` is the training split sorted by (user, newest first).
fn user_features(items: &[Item], by_user: &[Vec<(u32, u8)>], sorted: &[Rating]) -> Vec<UserProfile> {
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
            UserProfile {
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
/// `params`, and the sequence model in `seq_model` when given, and writes them to `root` (as
/// [`write`]): what tests and benches start from.
pub fn build_dir(
    dir: &Path,
    root: &Path,
    params: &BuildParams,
    seq_model: Option<&Path>,
    progress: &Progress,
) -> Result<(Manifest, Artifacts), BuildError> {
    let ds = Dataset::load_movietweetings(dir)?;
    let source = seq_model.map(seq::SeqSource::read).transpose()?;
    build_loaded(&ds, dir, root, params, source.as_ref(), progress)
}

/// [`build_dir`] for a data set already loaded from `dir` (`recstack build` reports on it
/// before the build starts). The sequence model's files join the inputs the version is
/// derived from.
pub fn build_loaded(
    ds: &Dataset,
    dir: &Path,
    root: &Path,
    params: &BuildParams,
    seq_model: Option<&seq::SeqSource>,
    progress: &Progress,
) -> Result<(Manifest, Artifacts), BuildError> {
    let mut artifacts = build(ds, params, progress)?;
    let mut inputs = hash_inputs(dir, DATA_FILES)?;
    if let Some(source) = seq_model {
        progress.step("sequence model", 0, |_| seq::attach(&mut artifacts, source, params))?;
        inputs.extend(source.hashes.iter().cloned());
    }
    let manifest = write(root, &artifacts, "movietweetings-100k", inputs, params)?;
    Ok((manifest, artifacts))
}

/// The data files of a MovieTweetings directory, whose hashes are a build's first inputs.
pub const DATA_FILES: &[&str] = &["movies.dat", "ratings.dat"];
