//! Training data for the ranking model: recall's own candidates, with the serving code's own
//! feature function.
//!
//! The ranker answers one question in the stack: which of recall's candidates (the first
//! [`CandidateParams::rank_limit`] of its merged order) will this user rate next? Its data asks
//! the same question. [`validation_world`] builds the artifacts of the training ratings alone,
//! whose own time split holds out each user's latest training ratings, so recall, features and
//! labels come from a world that never saw the holdout; the real artifacts' holdout is only
//! reported on.
//!
//! `recstack export-ranking --out DIR` writes NumPy arrays (`.npy`) that
//! `scripts/train-ranker` reads, each split as `{split}_{sparse,dense,label,group,position,relevant}.npy`:
//! - `train`: the validation world's users not judged ([`judged`]), each with every held-out
//!   item recall found and [`CandidateParams::negatives`] of its other candidates;
//! - `valid`: the judged users of the validation world, every candidate (to choose the model on);
//! - `test`: the judged users of the real holdout, every candidate (to report, never to choose);
//! - `features.json`: the [`InputSpec`] the arrays follow (the trainer writes the subset it
//!   uses into the model card).

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use recstack_core::degrade::LevelPlan;
use recstack_core::features::Snapshot;
use recstack_core::ranking::features::{InputSpec, Lineage, Place};
use recstack_core::recall::{self, UserHistory};

use crate::build::seq::SeqSource;
use crate::build::{self, Artifacts, BuildError, BuildParams, Progress};
use crate::dataset::{Dataset, time_split};

/// Why the export could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("loading artifacts: {0}")]
    Artifacts(#[from] recstack_core::artifacts::ArtifactError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Data(#[from] crate::dataset::DataError),
    #[error("{data}: not the data artifacts {version} were built from (the files' sha256 differ)")]
    OtherData { data: PathBuf, version: String },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the sequence model's user tower: {0}")]
    Tower(String),
    #[error(
        "{path}: the validation world's sequence model is {found}, the artifacts' {want} (train both with scripts/train-seq)"
    )]
    OtherSeqModel { path: PathBuf, found: String, want: String },
}

/// The validation world's sequence model in `dir`, which must be the same training run as
/// the artifacts' (the card versions agree).
pub fn validation_model(dir: &Path, want: &str) -> Result<SeqSource, ExportError> {
    let source = SeqSource::read(dir).map_err(BuildError::from)?;
    if source.card.version != want {
        return Err(ExportError::OtherSeqModel {
            path: dir.to_path_buf(),
            found: source.card.version,
            want: want.to_string(),
        });
    }
    Ok(source)
}

/// Attaches a runner to artifacts' sequence model ([`recstack_core::artifacts::seq::UserTower`]):
/// the caller's, which links ONNX Runtime.
pub type AttachTower<'a> = &'a dyn Fn(&mut Artifacts) -> Result<(), String>;

/// The whole export (`recstack export-ranking`): checks that `data` is what the current
/// artifacts in `artifacts` were built from, builds the validation world (with the sequence
/// model in `seq_validation` when the artifacts carry one), and writes the `train`, `valid`
/// and `test` splits with `features.json`, `artifact_version` and `data_as_of` (the artifacts'
/// newest training rating) to `out`. Reports each step on stderr.
pub fn export(
    artifacts: &Path,
    data: &Path,
    seq_validation: &Path,
    attach: AttachTower,
    out: &Path,
    progress: &Progress,
) -> Result<(), ExportError> {
    let (manifest, mut a) = recstack_core::artifacts::load(artifacts, None)?;
    let inputs = build::hash_inputs(data, build::DATA_FILES)?;
    if build::DATA_FILES
        .iter()
        .any(|f| inputs.get(*f) != manifest.inputs.get(*f))
    {
        return Err(ExportError::OtherData {
            data: data.to_path_buf(),
            version: manifest.version,
        });
    }
    let ds = Dataset::load_movietweetings(data)?;
    let seq = match &a.seq {
        Some(model) => Some(validation_model(seq_validation, &model.version)?),
        None => None,
    };
    eprintln!("export-ranking: the validation world (the training ratings, split again by time)");
    let mut world = validation_world(&ds, &manifest.params, seq.as_ref(), progress)?;
    for w in [&mut a, &mut world] {
        attach(w).map_err(ExportError::Tower)?;
    }
    let spec = InputSpec::all(InputSpec::default_buckets);
    let p = CandidateParams::default();
    let (trained, judged) = held_out_users(&world, p.judge_every);
    let (_, reported) = held_out_users(&a, p.judge_every);
    let mut splits = Vec::new();
    for (name, world, users, sample) in [
        ("train", &world, &trained, true),
        ("valid", &world, &judged, false),
        ("test", &a, &reported, false),
    ] {
        let started = std::time::Instant::now();
        let split = candidate_rows(world, &spec, &p, users, sample);
        eprintln!(
            "export-ranking: {name}: {} rows ({} positives) for {} users in {:.1}s",
            split.rows(),
            split.label.iter().filter(|&&l| l > 0.0).count(),
            users.len(),
            started.elapsed().as_secs_f64()
        );
        splits.push((name, split));
    }
    let named: Vec<(&str, &Split)> = splits.iter().map(|(n, s)| (*n, s)).collect();
    let written = |source| ExportError::Write {
        path: out.to_path_buf(),
        source,
    };
    write(out, &spec, &named).map_err(written)?;
    std::fs::write(out.join("artifact_version"), &manifest.version).map_err(written)?;
    // The card's `training.data_as_of`: lets the ranking service tell how far the data it
    // serves has moved past the model's.
    let as_of = a.newest_rating().and_then(|t| jiff::Timestamp::from_second(t).ok());
    if let Some(t) = as_of {
        std::fs::write(out.join("data_as_of"), t.to_string()).map_err(written)?;
    }
    eprintln!(
        "export-ranking: wrote {} (artifacts {})",
        out.display(),
        manifest.version
    );
    Ok(())
}

/// Rows of one split, row-major.
#[derive(Default, Debug)]
pub struct Split {
    pub sparse: Vec<i64>,
    pub dense: Vec<f32>,
    pub label: Vec<f32>,
    /// The user (dense id) a row belongs to.
    pub group: Vec<i64>,
    /// Candidate rows: the item's 0-based position in recall's merged order.
    pub position: Vec<i64>,
    /// Candidate rows: how many held-out items the row's user has (retrieved or not), the
    /// denominator of recall@k and NDCG@k.
    pub relevant: Vec<i64>,
}

impl Split {
    pub fn rows(&self) -> usize {
        self.label.len()
    }

    /// Adds `other`'s rows after this split's.
    pub fn append(&mut self, other: Split) {
        self.sparse.extend(other.sparse);
        self.dense.extend(other.dense);
        self.label.extend(other.label);
        self.group.extend(other.group);
        self.position.extend(other.position);
        self.relevant.extend(other.relevant);
    }
}

/// What the full level asks the ranker, and how the export samples it.
#[derive(Clone, Debug)]
pub struct CandidateParams {
    /// Recall's per-channel quota and merged total (the recall service's defaults).
    pub quota: usize,
    pub total: usize,
    /// How far down recall's merged order the ranker reaches (the gateway's full level).
    pub rank_limit: usize,
    /// Training users: candidates kept per user besides the positives, drawn uniformly from
    /// the rest.
    pub negatives: usize,
    /// One user in this many (by a stable hash of the id) is kept out of training to judge it.
    pub judge_every: u64,
    pub seed: u64,
}

impl Default for CandidateParams {
    fn default() -> Self {
        Self {
            quota: recall::DEFAULT_QUOTA,
            total: recall::DEFAULT_N,
            rank_limit: LevelPlan::full().rank_limit,
            negatives: 50,
            judge_every: 5,
            seed: 7,
        }
    }
}

/// The artifacts of the training ratings alone. Their own time split holds out each user's
/// latest training ratings (the validation period) and computes every feature and recall
/// list from what came before, as the real build does for the holdout. A ranker trained on
/// this world's candidates learns the served question (which of recall's candidates does the
/// user rate next) without ever seeing the holdout. `seq` is the sequence model trained on
/// this world's training ratings alone (`scripts/train-seq` writes it to `validation/`).
pub fn validation_world(
    ds: &Dataset,
    params: &BuildParams,
    seq: Option<&SeqSource>,
    progress: &Progress,
) -> Result<Artifacts, BuildError> {
    let train = time_split(&ds.ratings, params.holdout, params.min_history).train;
    let mut world = build::build(
        &Dataset {
            ratings: train,
            ..ds.clone()
        },
        params,
        progress,
    )?;
    if let Some(source) = seq {
        build::seq::attach(&mut world, source, params)?;
    }
    Ok(world)
}

/// Whether a user is one of those kept out of training to judge it.
pub fn judged(user_id: &str, every: u64) -> bool {
    every > 0 && recstack_core::stable_hash(user_id.as_bytes()).is_multiple_of(every)
}

/// The users with held-out items in `a` (dense ids, ascending), split into (trained on,
/// judged).
pub fn held_out_users(a: &Artifacts, judge_every: u64) -> (Vec<u32>, Vec<u32>) {
    let mut users: Vec<u32> = a.holdout.iter().map(|r| r.user).collect();
    users.sort_unstable();
    users.dedup();
    users
        .into_iter()
        .partition(|&u| !judged(&a.users[u as usize], judge_every))
}

/// Candidate rows for `users` (dense ids): recall's merged candidates for each, cut at the
/// ranker's reach, labelled 1 where the user rated the item in the holdout, with each row's
/// recall position and the user's held-out count. `sample` keeps every positive and
/// [`CandidateParams::negatives`] of the rest (and drops users recall found nothing for);
/// otherwise every candidate is kept, as judging a ranked list needs.
pub fn candidate_rows(a: &Artifacts, spec: &InputSpec, p: &CandidateParams, users: &[u32], sample: bool) -> Split {
    let snapshot = Snapshot::from_artifacts(a);
    let rows = spec.rows().over(&snapshot);
    let mut held: Vec<HashSet<u32>> = vec![HashSet::new(); a.users.len()];
    for r in &a.holdout {
        held[r.user as usize].insert(r.item);
    }
    let parts: Vec<Split> = users
        .par_iter()
        .map(|&u| {
            let mut out = Split::default();
            let truth = &held[u as usize];
            let candidates = recall::recall(a, &UserHistory::new(a, u), p.quota, p.total);
            let cut = &candidates[..candidates.len().min(p.rank_limit)];
            let mut keep: Vec<usize> = (0..cut.len()).collect();
            if sample {
                let (positives, rest): (Vec<usize>, Vec<usize>) =
                    keep.into_iter().partition(|&k| truth.contains(&cut[k].item));
                if positives.is_empty() {
                    return out;
                }
                let mut rng = ChaCha8Rng::seed_from_u64(p.seed ^ u64::from(u).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let drawn = rand::seq::index::sample(&mut rng, rest.len(), p.negatives.min(rest.len()));
                keep = positives.into_iter().chain(drawn.iter().map(|k| rest[k])).collect();
                keep.sort_unstable();
            }
            let user_id = &a.users[u as usize];
            let user = rows.user(user_id, snapshot.user(user_id));
            // The gateway sends ranking the fused scores of the candidates it ranks: the best
            // is the first's.
            let best = Lineage::best(cut.iter().map(|c| c.fused));
            for k in keep {
                let c = &cut[k];
                let item_id = &a.items[c.item as usize].id;
                let place = Place {
                    position: k,
                    lineage: Some(Lineage::new(
                        c.fused,
                        best,
                        c.sources.iter().map(|s| (s.channel, s.rank)),
                    )),
                    // No event stream offline (and `InputSpec::all` names no real-time column).
                    realtime: None,
                };
                let item = c.item;
                rows.push(
                    &user,
                    item_id,
                    snapshot.item(item_id),
                    snapshot.timeline(item_id).map(|t| &**t),
                    place,
                    &mut out.sparse,
                    &mut out.dense,
                );
                out.label.push(if truth.contains(&item) { 1.0 } else { 0.0 });
                out.group.push(i64::from(u));
                out.position.push(k as i64);
                out.relevant.push(truth.len() as i64);
            }
            out
        })
        .collect();
    let mut all = Split::default();
    for part in parts {
        all.append(part);
    }
    all
}

/// Writes the named splits and the feature spec to `dir`: `{name}_{sparse,dense,label,group}.npy`
/// for every split, and `{name}_{position,relevant}.npy` for candidate splits.
pub fn write(dir: &Path, spec: &InputSpec, splits: &[(&str, &Split)]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let (s, d) = (spec.sparse.len(), spec.dense.len());
    for &(name, split) in splits {
        let n = split.rows();
        write_npy(&dir.join(format!("{name}_sparse.npy")), &[n, s], &split.sparse)?;
        write_npy(&dir.join(format!("{name}_dense.npy")), &[n, d], &split.dense)?;
        write_npy(&dir.join(format!("{name}_label.npy")), &[n], &split.label)?;
        write_npy(&dir.join(format!("{name}_group.npy")), &[n], &split.group)?;
        if split.position.len() == n {
            write_npy(&dir.join(format!("{name}_position.npy")), &[n], &split.position)?;
            write_npy(&dir.join(format!("{name}_relevant.npy")), &[n], &split.relevant)?;
        }
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
    use crate::dataset::{Item, Rating};

    /// 60 users rating 12 of 40 items each, one a day, with overlapping tastes.
    fn dataset() -> Dataset {
        let items = (0..40)
            .map(|i| Item {
                id: format!("{i:07}"),
                title: format!("item {i}"),
                year: Some(1990 + i as u16 % 30),
                genres: vec![format!("g{}", i % 5)],
            })
            .collect();
        let ratings = (0..60u32)
            .flat_map(|u| {
                (0..12u32).map(move |k| Rating {
                    user: u,
                    item: (u * 7 + k * 3 + k * k) % 40,
                    rating: 5 + (k % 5) as u8,
                    ts: 1_600_000_000 + i64::from(k) * 86_400 + i64::from(u),
                })
            })
            .collect();
        Dataset {
            items,
            users: (0..60).map(|u| format!("user-{u}")).collect(),
            ratings,
        }
    }

    fn per_user(split: &Split) -> std::collections::BTreeMap<i64, Vec<usize>> {
        let mut rows: std::collections::BTreeMap<i64, Vec<usize>> = Default::default();
        for (r, &g) in split.group.iter().enumerate() {
            rows.entry(g).or_default().push(r);
        }
        rows
    }

    #[test]
    fn the_validation_world_holds_out_the_latest_training_ratings_and_never_the_real_holdout() {
        let ds = dataset();
        let p = BuildParams::default();
        let quiet = Progress::new(true);
        let real = build::build(&ds, &p, &quiet).unwrap();
        let world = validation_world(&ds, &p, None, &quiet).unwrap();
        let mut checked = 0;
        for u in 0..ds.users.len() {
            let trained: HashSet<u32> = real.history[u].iter().copied().collect();
            let held: HashSet<u32> = world
                .holdout
                .iter()
                .filter(|r| r.user as usize == u)
                .map(|r| r.item)
                .collect();
            let earlier: HashSet<u32> = world.history[u].iter().copied().collect();
            // The world's training and held-out items are the real training items, split.
            assert_eq!(&earlier | &held, trained, "user {u}");
            assert!(earlier.is_disjoint(&held));
            // Held out are the latest: the real history is most recent first.
            let latest: HashSet<u32> = real.history[u].iter().take(held.len()).copied().collect();
            assert_eq!(held, latest, "user {u}");
            checked += usize::from(!held.is_empty());
        }
        assert!(checked > 50, "{checked} users with a validation period");
    }

    #[test]
    fn candidate_rows_are_recalls_cut_labelled_by_the_holdout_and_sampled_around_every_positive() {
        let a = build::build(&dataset(), &BuildParams::default(), &Progress::new(true)).unwrap();
        let spec = InputSpec::all(InputSpec::default_buckets);
        let p = CandidateParams {
            rank_limit: 10,
            negatives: 3,
            judge_every: 2,
            ..CandidateParams::default()
        };
        let (trained, judged) = held_out_users(&a, p.judge_every);
        assert!(!trained.is_empty() && !judged.is_empty());
        assert!(judged.iter().all(|&u| judged_user(&a, u)) && !trained.iter().any(|&u| judged_user(&a, u)));
        let mut all: Vec<u32> = a.holdout.iter().map(|r| r.user).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(trained.len() + judged.len(), all.len());

        let held = |u: u32| -> HashSet<u32> { a.holdout.iter().filter(|r| r.user == u).map(|r| r.item).collect() };
        let whole = candidate_rows(&a, &spec, &p, &all, false);
        assert_eq!(whole.sparse.len(), whole.rows() * spec.sparse.len());
        assert_eq!(whole.dense.len(), whole.rows() * spec.dense.len());
        let whole_rows = per_user(&whole);
        assert_eq!(whole_rows.len(), all.len(), "every user, found something or not");
        for (&g, rows) in &whole_rows {
            let u = g as u32;
            let cut: Vec<u32> = recall::recall(&a, &UserHistory::new(&a, u), p.quota, p.total)
                .into_iter()
                .take(p.rank_limit)
                .map(|c| c.item)
                .collect();
            assert_eq!(rows.len(), cut.len(), "user {u}");
            let truth = held(u);
            for (k, &r) in rows.iter().enumerate() {
                assert_eq!(whole.position[r], k as i64, "in recall's order");
                assert_eq!(whole.label[r] == 1.0, truth.contains(&cut[k]), "user {u}, position {k}");
                assert_eq!(whole.relevant[r], truth.len() as i64);
            }
        }

        let sampled = candidate_rows(&a, &spec, &p, &all, true);
        let sampled_rows = per_user(&sampled);
        let positives = |split: &Split, rows: &[usize]| rows.iter().filter(|&&r| split.label[r] == 1.0).count();
        for (g, rows) in &whole_rows {
            let found = positives(&whole, rows);
            match sampled_rows.get(g) {
                None => assert_eq!(found, 0, "user {g} dropped though recall found a positive"),
                Some(kept) => {
                    assert_eq!(positives(&sampled, kept), found, "user {g}: every positive kept");
                    assert_eq!(kept.len() - found, p.negatives.min(rows.len() - found), "user {g}");
                    assert!(kept.windows(2).all(|w| sampled.position[w[0]] < sampled.position[w[1]]));
                }
            }
        }
        assert!(!sampled_rows.is_empty());
    }

    fn judged_user(a: &Artifacts, u: u32) -> bool {
        judged(&a.users[u as usize], 2)
    }

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
