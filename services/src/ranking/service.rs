//! The ranking gRPC service: features for each candidate, the model (primary or canary) behind
//! a batching queue, scores in request order with the model version that made them.
//!
//! Models are double-buffered: [`watch_models`] loads a changed model card's model next to the
//! serving one and swaps it in at once; requests already holding the old model finish on it.
//!
//! A model whose card names real-time item features (`item_rt_ctr`, …) gets each request's
//! candidates' values from the feature service (L1 ▸ Redis ▸ snapshot: the stream job's
//! windows), within [`REALTIME_BUDGET`]; without them in time the candidates get the features'
//! neutral values and the response says why. What was read, and how fresh, goes back in the
//! response (and so into the trace).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::batcher::{BatchConfig, BatchError, BatchObserver, Batcher, ScoredBy, Scorer};
use super::features::{ItemRow, ItemThen, Lineage, Place, RowWriter, UserRow};
use super::folded::{DenseBlock, FoldedFirst, Side};
use super::model::{Device, Graph, ModelError, OnnxModel, RETRAIN_AFTER_SECONDS, card_path, data_age};
use super::trees::{Trees, TreesFile, row_values};
use crate::features::Snapshot;
use crate::features::proto::features_client::FeaturesClient;
use crate::features::proto::features_server::Features;
use crate::features::proto::{GetItemsRequest, GetItemsResponse, ItemFeatures, UserFeatures};
use crate::id_columns;
use crate::link::{newer_form_first, service_link};
use crate::ops::{Buckets, MetricsRegistry, RpcMetrics};
use recstack_core::recall::{Channel, Source};

/// Generated gRPC types (`services/proto/ranking.proto`).
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/ranking/recstack.ranking.v1.rs"));
}

use proto::ranking_server::Ranking;
use proto::{RankRequest, RankResponse, RealtimeFeatures};

service_link!(
    ItemsLink,
    FeaturesClient,
    Features,
    get_items,
    GetItemsRequest,
    GetItemsResponse,
    "features"
);

/// Longest a request waits for its candidates' real-time item features (less when its own
/// deadline is nearer); past it they get neutral values.
pub const REALTIME_BUDGET: Duration = Duration::from_millis(20);

/// Most candidates in one request.
pub const MAX_ITEMS: usize = 5000;
/// Wait when the request names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);

// === metrics ===

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model_version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScorerLabels {
    pub model_version: String,
    /// trees (the card's trees, scored by the service), folded (the first stage folded into
    /// tables, the head in ONNX Runtime) or graph (the whole graph in ONNX Runtime)
    pub scorer: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    /// idle (scored on the request's own thread), worker (queued for the batcher's worker)
    pub path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RealtimeLabels {
    /// read, unavailable
    pub outcome: &'static str,
}

pub struct RankingMetrics {
    pub registry: Registry,
    pub rpc: RpcMetrics,
    pub rows: Family<ModelLabels, Counter>,
    pub batch_rows: Histogram,
    pub batch_requests: Histogram,
    pub model_seconds: Histogram,
    pub queue_seconds: Histogram,
    pub scored: Family<PathLabels, Counter>,
    pub shed: Family<ModelLabels, Counter>,
    pub reloads: Counter,
    pub reload_failures: Counter,
    /// Real-time feature reads from the feature service, by outcome.
    pub realtime: Family<RealtimeLabels, Counter>,
    pub realtime_seconds: Histogram,
    /// How much newer the served artifacts' data is than each serving model's training data.
    pub data_age: Family<ModelLabels, Gauge>,
    /// 1 for each serving model, labelled with how it is scored.
    pub model_info: Family<ScorerLabels, Gauge>,
}

impl Default for RankingMetrics {
    fn default() -> Self {
        let mut m = MetricsRegistry::new("recstack_ranking");
        let fast = Buckets::exponential(0.000_01, 2.0, 16);
        Self {
            rpc: RpcMetrics::register(&mut m, "Rank", Buckets::exponential(0.000_01, 2.0, 18)),
            rows: m.family("rows", "Candidates scored, by model version"),
            batch_rows: m.histogram(
                "batch_rows",
                "Rows per model call batch",
                Buckets::exponential(1.0, 2.0, 14),
            ),
            batch_requests: m.histogram(
                "batch_requests",
                "Requests per batch",
                Buckets::exponential(1.0, 2.0, 8),
            ),
            model_seconds: m.histogram("model_seconds", "Time in the model per batch", fast),
            queue_seconds: m.histogram("queue_seconds", "Time a request waited for its batch", fast),
            scored: m.family(
                "scored_requests",
                "Requests that reached the model, by path: idle (it found the model free and scored on its own \
                 thread) or worker (queued for the batcher)",
            ),
            shed: m.family("shed", "Requests dropped because their deadline passed in the queue"),
            reloads: m.counter("model_reloads", "Models swapped in"),
            reload_failures: m.counter(
                "model_reload_failures",
                "Changed models that failed to load (the old one serves on)",
            ),
            realtime: m.family(
                "realtime_reads",
                "Reads of the candidates' real-time item features from the feature service, by outcome",
            ),
            realtime_seconds: m.histogram(
                "realtime_seconds",
                "Time to read a request's real-time item features",
                fast,
            ),
            data_age: m.family(
                "model_data_age_seconds",
                "How much newer the served artifacts' data is than the data each serving model was trained on \
                 (its card's training.data_as_of); retrain past about 27 days",
            ),
            model_info: m.family(
                "model_info",
                "1 for each serving model (primary and canary), by how it is scored: trees (the card's trees, \
                 scored by the service), folded (first stage folded into tables) or graph (the whole graph in ONNX \
                 Runtime)",
            ),
            registry: m.finish(),
        }
    }
}

impl RankingMetrics {
    pub fn encode(&self) -> String {
        crate::ops::encode(&self.registry)
    }

    /// Reports how old each model of a newly serving set is against its artifacts' data: the
    /// gauge for each (the set before's versions dropped), and a warning for one due for
    /// retraining.
    pub fn serving(&self, set: &ModelSet) {
        self.data_age.clear();
        self.model_info.clear();
        for model in std::iter::once(&set.primary).chain(set.canary.as_ref().map(|(c, _)| c)) {
            let version = model.batcher.version();
            self.model_info
                .get_or_create(&ScorerLabels {
                    model_version: version.to_string(),
                    scorer: model.scorer(),
                })
                .set(1);
            let Some(age) = model.data_age else {
                continue;
            };
            self.data_age
                .get_or_create(&ModelLabels {
                    model_version: version.to_string(),
                })
                .set(age);
            if age > RETRAIN_AFTER_SECONDS {
                let days = age / 86_400;
                warn!(
                    model = version,
                    days,
                    "ranking: the served artifacts' data is {days} days newer than the data this model was \
                     trained on; retrain it (docs/ranking.md, \"How old a ranker may be\")"
                );
            }
        }
    }
}

impl BatchObserver for RankingMetrics {
    fn batch(&self, version: &str, rows: usize, requests: usize, model_time: Duration) {
        self.batch_rows.observe(rows as f64);
        self.batch_requests.observe(requests as f64);
        self.model_seconds.observe(model_time.as_secs_f64());
        self.rows
            .get_or_create(&ModelLabels {
                model_version: version.to_string(),
            })
            .inc_by(rows as u64);
    }
    fn queued(&self, by: ScoredBy, wait: Duration) {
        self.queue_seconds.observe(wait.as_secs_f64());
        self.scored.get_or_create(&PathLabels { path: by.as_str() }).inc();
    }
    fn shed(&self, version: &str) {
        self.shed
            .get_or_create(&ModelLabels {
                model_version: version.to_string(),
            })
            .inc();
    }
}

// === models ===

/// Where the models are and how they run.
#[derive(Clone, Debug)]
pub struct ModelSources {
    /// `model.onnx`, with `model.json` beside it.
    pub primary: PathBuf,
    pub canary: Option<PathBuf>,
    /// Percent of users (by a stable hash) the canary scores, 0–100.
    pub canary_percent: u32,
    pub device: Device,
    pub batch: BatchConfig,
    /// ONNX Runtime threads per model call.
    pub intra_threads: usize,
    /// Fold a factored model's first stage into tables and run only its head per request
    /// ([`super::folded`]), and walk a card's trees in the service ([`super::trees`]); off, or
    /// for a model whose card has neither section, the whole graph runs.
    pub fold: bool,
}

impl ModelSources {
    /// One model on the CPU, default batching, one thread per call, no canary.
    pub fn cpu(primary: PathBuf) -> Self {
        Self {
            primary,
            canary: None,
            canary_percent: 0,
            device: Device::Cpu,
            batch: BatchConfig::default(),
            intra_threads: 1,
            fold: true,
        }
    }
}

/// A model behind its batching queue, with the features it reads.
pub struct LoadedModel {
    pub batcher: Batcher,
    pub rows: RowWriter,
    /// The item part of this model's rows for every item of the service's feature snapshot
    /// (the snapshot is fixed for the service's life), computed when the model loads.
    pub items: FxHashMap<ItemKey, ItemRow>,
    /// The model's first stage folded into tables: the batcher runs the head on `pre` rows.
    /// `None`: it runs the whole graph on feature rows.
    pub folded: Option<Folded>,
    /// The card's trees are walked by the service in place of the graph ([`TreeScorer`]).
    pub trees_walked: bool,
    /// How much newer the item table's data is than the model's training data, in seconds
    /// ([`data_age`]; `None` when the card or the snapshot does not say).
    pub data_age: Option<i64>,
}

/// A factored model's first stage as tables, and what each of its columns depends on.
pub struct Folded {
    pub first: FoldedFirst,
    sides: (Vec<Side>, Vec<Side>),
    /// The sparse columns whose [`Side`] is `Cross`: added per row.
    cross_sparse: Vec<usize>,
    /// The dense columns whose [`Side`] is `Cross`, as one matrix: added to a request's rows
    /// at once.
    cross_dense: DenseBlock,
}

/// How close folded values must come to the graph's: relative to the largest `pre` value, and
/// absolute for scores. Reordered float sums differ by ~1e-6; a first stage that is not linear
/// in its inputs misses by orders of magnitude more.
const FOLD_TOLERANCE: f32 = 1e-4;
/// Random rows the fold is checked on when a model loads.
const FOLD_CHECK_ROWS: usize = 256;

/// Scores allowed between the service's walk of a card's trees and the graph's: reordered float
/// sums differ by ~1e-7; a file holding other trees, or a threshold read differently, misses by
/// far more on some of the random rows.
const TREES_TOLERANCE: f32 = 1e-5;

/// The trees a card names beside `whole`'s graph, walked by the service ([`TreeScorer`]), once
/// checked on random rows to score as the graph does.
fn walked_trees(path: &Path, mut whole: OnnxModel) -> Result<TreeScorer, ModelError> {
    use rand::{Rng, SeedableRng};
    let file = whole.card.trees.clone().unwrap_or_default();
    let refuse = |message: String| ModelError::Load {
        path: path.to_path_buf(),
        message: format!("trees ({file}): {message}"),
    };
    let text = std::fs::read(path.with_file_name(&file)).map_err(|e| refuse(e.to_string()))?;
    let parsed: TreesFile = serde_json::from_slice(&text).map_err(|e| refuse(e.to_string()))?;
    let trees = Trees::new(&parsed).map_err(|e| refuse(e.to_string()))?;
    let (s, d) = whole.widths;
    if trees.features() != s + d {
        return Err(refuse(format!(
            "they read {} values a row; the graph's inputs have {s} sparse and {d} dense",
            trees.features()
        )));
    }
    // Rows over each input's range: dense values about 0–1 and a little past, sparse ids in
    // their buckets.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x7ee5);
    let buckets: Vec<u32> = whole.card.features.sparse.iter().map(|f| f.buckets).collect();
    let sparse: Vec<i64> = (0..TREES_CHECK_ROWS)
        .flat_map(|_| {
            buckets
                .iter()
                .map(|&b| i64::from(rng.gen_range(0..b.max(1))))
                .collect::<Vec<_>>()
        })
        .collect();
    let dense: Vec<f32> = (0..TREES_CHECK_ROWS * d).map(|_| rng.gen_range(-0.1..1.1)).collect();
    let want = whole.score(&sparse, &dense, TREES_CHECK_ROWS)?;
    let mut scorer = TreeScorer {
        version: whole.card.version.clone(),
        widths: whole.widths,
        trees,
        values: Vec::new(),
    };
    let got = scorer.score(&sparse, &dense, TREES_CHECK_ROWS)?;
    let off = want.iter().zip(&got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    if off.is_nan() || off > TREES_TOLERANCE {
        return Err(refuse(format!(
            "on random rows they score {off:.2e} away from the graph"
        )));
    }
    info!(
        trees = %file,
        simd = recstack_core::simd::level(),
        "ranking: the card's trees are scored by the service"
    );
    Ok(scorer)
}

/// Random rows a card's trees are checked on when the model loads.
const TREES_CHECK_ROWS: usize = 1024;

/// A card's trees, walked by the service in blocks of rows ([`recstack_core::ranking::trees`]):
/// what the batcher runs for a tree model in place of the graph.
pub struct TreeScorer {
    version: String,
    widths: (usize, usize),
    trees: Trees,
    /// The rows' values (dense, then sparse), reused from call to call.
    values: Vec<f32>,
}

impl Scorer for TreeScorer {
    fn version(&self) -> &str {
        &self.version
    }
    fn widths(&self) -> (usize, usize) {
        self.widths
    }
    fn score(&mut self, sparse: &[i64], dense: &[f32], rows: usize) -> Result<Vec<f32>, ModelError> {
        self.values.clear();
        row_values(sparse, dense, rows, &mut self.values);
        let mut out = Vec::with_capacity(rows);
        self.trees
            .score(&self.values, rows, &mut out)
            .map_err(|e| ModelError::Run {
                version: self.version.clone(),
                message: e.to_string(),
            })?;
        Ok(out)
    }
}

/// Loads a factored model's first stage and head, folds the first stage into tables, adds each
/// item's part to `items`, and checks on random rows that the folded values are the first
/// stage's and that the head on them gives `whole`'s scores. Returns the head (what the batcher
/// runs) and the tables.
fn fold(
    path: &Path,
    mut whole: OnnxModel,
    rows: &RowWriter,
    items: &mut FxHashMap<ItemKey, ItemRow>,
    sources: &ModelSources,
) -> Result<(OnnxModel, Folded), ModelError> {
    let refuse = |message: String| ModelError::Load {
        path: path.to_path_buf(),
        message,
    };
    // The first stage runs only here, once: on the CPU whatever the serving device.
    let mut first = OnnxModel::load_graph(path, Graph::First, Device::Cpu, sources.intra_threads)?;
    let buckets: Vec<u32> = whole.card.features.sparse.iter().map(|f| f.buckets).collect();
    let stage = FoldedFirst::build(&buckets, whole.widths.1, |s, d, n| {
        first.run(s, d, n).map_err(|e| e.to_string())
    })
    .map_err(|e| refuse(format!("folding the first stage: {e}")))?;
    let (sparse, dense) = stage.sample_rows(FOLD_CHECK_ROWS, 0x5eed);
    let direct = first.run(&sparse, &dense, FOLD_CHECK_ROWS)?;
    let off = stage.mismatch(&sparse, &dense, FOLD_CHECK_ROWS, &direct);
    if off.is_nan() || off > FOLD_TOLERANCE {
        return Err(refuse(format!(
            "the first stage does not fold: on random rows the folded values differ from the \
             graph's by {off:.2e} of the largest (is it linear in its inputs?)"
        )));
    }
    let mut head = OnnxModel::load_graph(
        path,
        Graph::Head { width: stage.width() },
        sources.device,
        sources.intra_threads,
    )?;
    let want = whole.score(&sparse, &dense, FOLD_CHECK_ROWS)?;
    let got = head.score(&[], &stage.project(&sparse, &dense, FOLD_CHECK_ROWS), FOLD_CHECK_ROWS)?;
    let off = want.iter().zip(&got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    if off.is_nan() || off > FOLD_TOLERANCE {
        return Err(refuse(format!(
            "the head on folded values scores random rows {off:.2e} away from the whole graph"
        )));
    }
    let sides = rows.sides();
    for item in items.values_mut() {
        // Built beside the entry (`parts` borrows it), inline, then moved in: no heap vector.
        let mut part = SmallVec::from_elem(0.0, stage.width());
        stage.add_columns(&mut part, item.parts(), (&sides.0, &sides.1), |s| s == Side::Item);
        item.folded = part;
    }
    let cross_of = |sides: &[Side]| -> Vec<usize> { (0..sides.len()).filter(|&c| sides[c] == Side::Cross).collect() };
    let cross_sparse = cross_of(&sides.0);
    let cross_dense = stage.dense_block(&cross_of(&sides.1));
    Ok((
        head,
        Folded {
            first: stage,
            sides,
            cross_sparse,
            cross_dense,
        },
    ))
}

/// An item id as the key of a model's item table: ids of up to 16 bytes (all of the bundled
/// data's) are held in the table itself, so finding an item does not follow a pointer to
/// compare its id. Looked up by the id's bytes.
pub type ItemKey = SmallVec<[u8; 16]>;

/// A model's item table: `rows`' item part of each of `snapshot`'s items, by id.
pub fn item_table(rows: &RowWriter, snapshot: &Snapshot) -> FxHashMap<ItemKey, ItemRow> {
    snapshot
        .items()
        .map(|i| {
            let row = rows.item(i, snapshot.timeline(&i.item_id));
            (ItemKey::from_slice(i.item_id.as_bytes()), row)
        })
        .collect()
}

impl LoadedModel {
    /// How the model is scored: `trees`, `folded` or `graph` (the metric's `scorer` label).
    pub fn scorer(&self) -> &'static str {
        if self.trees_walked {
            "trees"
        } else if self.folded.is_some() {
            "folded"
        } else {
            "graph"
        }
    }

    /// The model's input rows for `user` and each of `item_ids`, in order (sparse and dense,
    /// row-major), and the ids not in the feature snapshot (brand-new items: they get neutral
    /// item features). `realtime`: the items' real-time values, by id (for the columns that
    /// read them).
    pub fn features(
        &self,
        user_id: &str,
        user: Option<&UserFeatures>,
        item_ids: &[impl AsRef<str>],
        realtime: Option<&RealtimeValues>,
    ) -> (Vec<i64>, Vec<f32>, Vec<String>) {
        self.features_with(user_id, user, item_ids, None, realtime)
    }

    /// [`LoadedModel::features`] with each item's recall lineage (aligned with `item_ids`).
    pub fn features_with(
        &self,
        user_id: &str,
        user: Option<&UserFeatures>,
        item_ids: &[impl AsRef<str>],
        lineage: Option<&[Lineage]>,
        realtime: Option<&RealtimeValues>,
    ) -> (Vec<i64>, Vec<f32>, Vec<String>) {
        let user = self.rows.user(user_id, user);
        let place = |position: usize, id: &str| Place {
            position,
            lineage: lineage.and_then(|l| l.get(position).copied()),
            realtime: realtime.and_then(|r| r.get(id)),
        };
        if let Some(folded) = &self.folded {
            return self.folded_rows(folded, &user, item_ids, place);
        }
        let found = self.find(&user, item_ids);
        let (sparse_width, dense_width) = self.batcher.widths();
        let mut sparse = Vec::with_capacity(item_ids.len() * sparse_width);
        let mut dense = Vec::with_capacity(item_ids.len() * dense_width);
        let mut unknown_items = Vec::new();
        for (position, (id, found)) in item_ids.iter().map(AsRef::as_ref).zip(found).enumerate() {
            match found {
                Some(item) => self
                    .rows
                    .push_item(&user, item, place(position, id), &mut sparse, &mut dense),
                None => {
                    unknown_items.push(id.to_string());
                    self.rows
                        .push(&user, id, None, None, place(position, id), &mut sparse, &mut dense);
                }
            }
        }
        (sparse, dense, unknown_items)
    }

    /// Each of `item_ids`' entry in the item table as `user`'s rows read it (`None`: not in
    /// it), all found before any row is built. The lookups and the timeline reads do not wait
    /// on each other, so the CPU overlaps the cache misses on 500 entries scattered over
    /// megabytes instead of stalling on each in turn between rows (in a profile of the stack
    /// at 700 req/s, finding the entries first took the folded rows from 14.4 % to 11.9 % of
    /// the process).
    fn find<'a>(&'a self, user: &UserRow, item_ids: &[impl AsRef<str>]) -> Vec<Option<ItemThen<'a>>> {
        item_ids
            .iter()
            .map(|id| {
                let item = self.items.get(id.as_ref().as_bytes())?;
                Some(self.rows.item_then(user, item))
            })
            .collect()
    }

    /// [`LoadedModel::features`] for a folded model: one `pre` row per item (as the dense
    /// input; no sparse one) — the user's part once, the item's precomputed part, and the
    /// columns that cross them.
    fn folded_rows<'a>(
        &self,
        f: &Folded,
        user: &UserRow,
        item_ids: &[impl AsRef<str>],
        place: impl Fn(usize, &str) -> Place<'a>,
    ) -> (Vec<i64>, Vec<f32>, Vec<String>) {
        let sides = (&f.sides.0[..], &f.sides.1[..]);
        let mut user_part = f.first.base().to_vec();
        f.first
            .add_columns(&mut user_part, user.parts(), sides, |s| s == Side::User);
        let found = self.find(user, item_ids);
        // In three passes over the rows, each one kind of work: every row's sum of the user's
        // part and the item's; the columns that cross user and item (sparse ones row by row,
        // dense ones column by column); then the crossing dense columns' product.
        let width = f.first.width();
        let mut pre = Vec::with_capacity(item_ids.len() * width);
        for found in &found {
            match found {
                Some(item) => {
                    // `fold` gave every item of the table its part.
                    let folded = &item.row().folded;
                    debug_assert_eq!(folded.len(), width);
                    pre.extend(user_part.iter().zip(&folded[..]).map(|(u, i)| u + i));
                }
                None => pre.extend_from_slice(&user_part),
            }
        }
        let mut unknown_items = Vec::new();
        // An unknown item's whole row of feature values, one at a time.
        let (mut sparse, mut dense) = (Vec::new(), Vec::new());
        // The crossing dense columns' values, a row of `k` per item (zeros for an unknown item,
        // whose every column is added below), then added to all rows as one product.
        let k = f.cross_dense.cols().len();
        let mut xs = vec![0f32; item_ids.len() * k];
        let places: Vec<Place> = item_ids
            .iter()
            .enumerate()
            .map(|(position, id)| place(position, id.as_ref()))
            .collect();
        let rows = pre.chunks_exact_mut(width);
        for (((id, found), row), &place) in item_ids.iter().map(AsRef::as_ref).zip(&found).zip(rows).zip(&places) {
            match *found {
                // Only the columns that cross user and item: the rest are in the parts.
                Some(item) => {
                    for &col in &f.cross_sparse {
                        f.first
                            .add_sparse(row, col, self.rows.item_sparse(user, item, place, col));
                    }
                }
                None => {
                    unknown_items.push(id.to_string());
                    sparse.clear();
                    dense.clear();
                    self.rows.push(user, id, None, None, place, &mut sparse, &mut dense);
                    f.first.add_columns(row, (&sparse, &dense), sides, |s| s != Side::User);
                }
            }
        }
        self.rows
            .items_dense_into(user, &found, &places, f.cross_dense.cols(), &mut xs);
        // Every row is `width` long by construction (the user's part, plus the item's of the
        // same width), so the shapes fit.
        if let Err(e) = f.cross_dense.add(&mut pre, &xs, item_ids.len()) {
            tracing::error!("ranking: the crossing columns were not added to the rows: {e}");
        }
        (Vec::new(), pre, unknown_items)
    }
}

/// A request's lineage fields from its candidates' fused scores and sources, in request order:
/// the fused scores, and per channel that found any of them, each one's rank in that channel —
/// for every candidate (0: not found by it), or with `sparse` for those it found, with their
/// positions. The inverse of [`lineage`].
pub fn lineage_fields<'a>(
    candidates: impl ExactSizeIterator<Item = (f32, &'a [Source])>,
    sparse: bool,
) -> (Vec<f32>, Vec<proto::ChannelRanks>) {
    let n = candidates.len();
    let mut found: Vec<Option<proto::ChannelRanks>> = vec![None; Channel::ALL.len()];
    let mut fused = Vec::with_capacity(n);
    for (i, (score, sources)) in candidates.enumerate() {
        fused.push(score);
        for s in sources {
            let c = found[s.channel.index()].get_or_insert_with(|| proto::ChannelRanks {
                channel: s.channel.name().to_string(),
                ranks: if sparse { Vec::new() } else { vec![0; n] },
                positions: Vec::new(),
            });
            if !sparse {
                c.ranks[i] = s.rank;
            } else if c.positions.last() == Some(&(i as u32)) {
                // A channel named twice for one candidate: the last rank, as the dense form.
                if let Some(last) = c.ranks.last_mut() {
                    *last = s.rank;
                }
            } else {
                c.positions.push(i as u32);
                c.ranks.push(s.rank);
            }
        }
    }
    (fused, found.into_iter().flatten().collect())
}

/// The names of [`RankRequest`]'s id columns, for errors.
const PACKED_FIELDS: id_columns::Fields = id_columns::Fields {
    ids: "packed_items.ids",
    ends: "packed_items.ends",
};

/// How many items a request asks to score, in whichever form it sends them.
fn item_count(req: &RankRequest) -> usize {
    match &req.packed_items {
        Some(p) if req.item_ids.is_empty() => p.ends.len(),
        _ => req.item_ids.len(),
    }
}

/// A request's item ids, in order, from `item_ids` or the `packed_items` columns (borrowed
/// either way); the error names the field that does not fit.
pub fn request_items(req: &RankRequest) -> Result<Vec<&str>, String> {
    let columns = match &req.packed_items {
        Some(p) => {
            let names = ("item_ids", "packed_items");
            id_columns::instead_of_strings(&p.ids, &p.ends, !req.item_ids.is_empty(), PACKED_FIELDS, names)?
        }
        None => None,
    };
    Ok(columns.unwrap_or_else(|| req.item_ids.iter().map(String::as_str).collect()))
}

/// Whether ranking's answer to a request with `packed_items` reads as a pod that predates the
/// field: it saw no items, so it answered no scores for `items` candidates, or refused the
/// lineage as not fitting them. Asking again with `item_ids` then gets the real answer (or the
/// real error).
pub fn predates_packed_items(answer: &Result<Response<RankResponse>, Status>, items: usize) -> bool {
    match answer {
        Ok(a) => items > 0 && a.get_ref().scores.is_empty(),
        Err(status) => status.code() == tonic::Code::InvalidArgument,
    }
}

/// A request's recall lineage, one per item (`None` when it carries none); the error names the
/// field that does not fit.
pub fn lineage(req: &RankRequest) -> Result<Option<Vec<Lineage>>, String> {
    let items = item_count(req);
    if req.fused_scores.is_empty() {
        if let Some(c) = req.channel_ranks.first() {
            return Err(format!(
                "channel_ranks ({}) without fused_scores: lineage needs both",
                c.channel
            ));
        }
        return Ok(None);
    }
    if req.fused_scores.len() != items {
        return Err(format!(
            "fused_scores has {} values for {items} item_ids",
            req.fused_scores.len()
        ));
    }
    let best = Lineage::best(req.fused_scores.iter().copied());
    let mut read: Vec<Lineage> = req
        .fused_scores
        .iter()
        .map(|&fused| Lineage::new(fused, best, []))
        .collect();
    let mut seen = [false; Channel::ALL.len()];
    for c in &req.channel_ranks {
        let channel = Channel::parse(&c.channel).ok_or_else(|| {
            let known: Vec<&str> = Channel::ALL.iter().map(|c| c.name()).collect();
            format!(
                "channel_ranks.channel: unknown channel `{}` (known: {})",
                c.channel,
                known.join(", ")
            )
        })?;
        if std::mem::replace(&mut seen[channel.index()], true) {
            return Err(format!("channel_ranks: `{}` is listed twice", c.channel));
        }
        let slot = channel.index();
        if c.positions.is_empty() {
            if c.ranks.len() != items {
                return Err(format!(
                    "channel_ranks.{}: {} ranks for {items} item_ids",
                    c.channel,
                    c.ranks.len()
                ));
            }
            for (l, &rank) in read.iter_mut().zip(&c.ranks) {
                l.ranks[slot] = rank;
            }
            continue;
        }
        if c.positions.len() != c.ranks.len() {
            return Err(format!(
                "channel_ranks.{}: {} ranks for {} positions",
                c.channel,
                c.ranks.len(),
                c.positions.len()
            ));
        }
        let mut next = 0;
        for (&at, &rank) in c.positions.iter().zip(&c.ranks) {
            let at = at as usize;
            if at < next || at >= items {
                return Err(format!(
                    "channel_ranks.{}.positions: {at} {} (positions ascend, below the {items} item_ids)",
                    c.channel,
                    if at >= items {
                        "is past the items"
                    } else {
                        "is out of order"
                    },
                ));
            }
            read[at].ranks[slot] = rank;
            next = at + 1;
        }
    }
    Ok(Some(read))
}

/// A request's real-time item values, by id.
pub type RealtimeValues = FxHashMap<String, ItemFeatures>;

/// How many of `items` carry real-time values (a stream window has counted them), and the
/// oldest and newest window end among those (0 when none).
pub fn freshness(items: &[ItemFeatures]) -> (u32, i64, i64) {
    let ends = items.iter().map(|i| i.window_end_ms).filter(|&end| end > 0);
    let (n, oldest, newest) = ends.fold((0u32, i64::MAX, 0i64), |(n, lo, hi), end| {
        (n + 1, lo.min(end), hi.max(end))
    });
    (n, if n == 0 { 0 } else { oldest }, newest)
}

/// The serving models.
pub struct ModelSet {
    pub primary: LoadedModel,
    pub canary: Option<(LoadedModel, u32)>,
    /// What the set was loaded from (model cards and file times), to notice changes.
    signature: Vec<u8>,
}

impl ModelSet {
    /// The model a request asks for (`primary`, `canary`), or by the canary split (`""`).
    pub fn choose(&self, user_id: &str, asked: &str) -> Result<(&LoadedModel, bool), String> {
        match asked {
            "" => Ok(self.pick(user_id)),
            "primary" => Ok((&self.primary, false)),
            "canary" => match &self.canary {
                Some((canary, _)) => Ok((canary, true)),
                None => Err("model: \"canary\" asked for, but no canary model is loaded".into()),
            },
            other => Err(format!("model: {other:?}; use \"primary\", \"canary\" or nothing")),
        }
    }

    /// The model for a user: the canary for `canary_percent` of users, stably.
    pub fn pick(&self, user_id: &str) -> (&LoadedModel, bool) {
        match &self.canary {
            Some((canary, percent)) if recstack_core::ab_bucket(user_id, "ranking-canary", 100) < *percent => {
                (canary, true)
            }
            _ => (&self.primary, false),
        }
    }
}

fn signature(sources: &ModelSources) -> Vec<u8> {
    let mut sig = Vec::new();
    let modified = |file: &Path| std::fs::metadata(file).and_then(|m| m.modified()).ok();
    for model in std::iter::once(&sources.primary).chain(&sources.canary) {
        let card = std::fs::read(card_path(model)).unwrap_or_default();
        // A factored card's parts count too: replacing only the head is a new model; and so
        // does a card's trees file.
        let parts: Vec<String> = serde_json::from_slice::<super::model::ModelCard>(&card)
            .map(|c| {
                c.factored
                    .map(|f| [f.first, f.head])
                    .into_iter()
                    .flatten()
                    .chain(c.trees)
                    .collect()
            })
            .unwrap_or_default();
        sig.extend(format!("{:?}", modified(model)).into_bytes());
        for part in &parts {
            sig.extend(format!("{part}:{:?}", modified(&model.with_file_name(part))).into_bytes());
        }
        sig.extend(card);
    }
    sig
}

/// Loads the primary and canary models (blocking: ONNX Runtime compiles the graphs) and
/// computes each one's item rows for the items in `items`.
pub fn load_models(
    sources: &ModelSources,
    items: &Snapshot,
    observer: Arc<dyn BatchObserver>,
) -> Result<ModelSet, ModelError> {
    let signature = signature(sources);
    let batch = sources.batch.for_device(sources.device);
    let load = |path: &Path| -> Result<LoadedModel, ModelError> {
        let model = OnnxModel::load(path, sources.device, sources.intra_threads)?;
        let data_age = data_age(model.card.data_as_of().ok().flatten(), items.as_of());
        let rows = model.card.features.rows().over(items);
        let mut items = item_table(&rows, items);
        let start = |scorer: Box<dyn Scorer>| Batcher::start(scorer, batch.clone(), observer.clone());
        let trees_walked = sources.fold && model.card.factored.is_none() && model.card.trees.is_some();
        let (batcher, folded) = if sources.fold && model.card.factored.is_some() {
            let (head, folded) = fold(path, model, &rows, &mut items, sources)?;
            (start(Box::new(head)), Some(folded))
        } else if trees_walked {
            (start(Box::new(walked_trees(path, model)?)), None)
        } else {
            (start(Box::new(model)), None)
        };
        Ok(LoadedModel {
            batcher,
            rows,
            items,
            folded,
            trees_walked,
            data_age,
        })
    };
    let primary = load(&sources.primary)?;
    let canary = match &sources.canary {
        Some(path) if sources.canary_percent > 0 => Some((load(path)?, sources.canary_percent.min(100))),
        _ => None,
    };
    Ok(ModelSet {
        primary,
        canary,
        signature,
    })
}

/// Polls the model files and the item table; a changed model, or a new artifact version's
/// items, is loaded beside the serving set and swapped in. A model that fails to load is logged
/// and counted, and not retried until its files (or the items) change again; the serving one
/// stays.
pub async fn watch_models(
    slot: Arc<ArcSwap<ModelSet>>,
    sources: ModelSources,
    items: Arc<ArcSwap<Snapshot>>,
    every: Duration,
    metrics: Arc<RankingMetrics>,
) {
    let mut failed: Option<Vec<u8>> = None;
    let mut loaded_items = items.load_full();
    loop {
        tokio::time::sleep(every).await;
        let now = signature(&sources);
        let current_items = items.load_full();
        let items_changed = !Arc::ptr_eq(&current_items, &loaded_items);
        if !items_changed && (now == slot.load().signature || failed.as_ref() == Some(&now)) {
            continue;
        }
        let (s, i, m) = (sources.clone(), current_items.clone(), metrics.clone());
        match tokio::task::spawn_blocking(move || load_models(&s, &i, m)).await {
            Ok(Ok(set)) => {
                info!(
                    version = set.primary.batcher.version(),
                    items_changed, "ranking: swapped in a new model set"
                );
                metrics.serving(&set);
                slot.store(Arc::new(set));
                metrics.reloads.inc();
                failed = None;
            }
            Ok(Err(e)) => {
                warn!(error = %e, "ranking: the changed model failed to load; serving the old one");
                metrics.reload_failures.inc();
                failed = Some(now);
            }
            Err(e) => warn!(error = %e, "ranking: the model loader panicked"),
        }
        loaded_items = current_items;
    }
}

// === the service ===

pub struct RankingService {
    /// The serving models, each with its rows for the items of the feature snapshot.
    pub models: Arc<ArcSwap<ModelSet>>,
    pub metrics: Arc<RankingMetrics>,
    /// The feature service, for models that read real-time item features (`None`: they get
    /// neutral values, and the response says so).
    pub realtime: Option<ItemsLink>,
}

impl RankingService {
    /// The candidates' real-time values from the feature service, within [`REALTIME_BUDGET`]
    /// (and before `deadline`), and what the response reports about them.
    async fn read_realtime(
        &self,
        item_ids: &[&str],
        deadline: Instant,
        traceparent: Option<&str>,
    ) -> (Option<RealtimeValues>, RealtimeFeatures) {
        let start = Instant::now();
        let outcome = match &self.realtime {
            None => Err("no feature service configured".to_string()),
            Some(link) => {
                let budget = REALTIME_BUDGET.min(deadline.saturating_duration_since(start));
                let call = |packed: bool, budget: Duration| {
                    let (item_ids, (packed_ids, packed_id_ends)) = if packed {
                        (Vec::new(), id_columns::pack(item_ids.iter().copied()))
                    } else {
                        (item_ids.iter().map(|id| id.to_string()).collect(), Default::default())
                    };
                    let mut call = tonic::Request::new(GetItemsRequest {
                        item_ids,
                        // Only what a window counted, and only those fields: the rest of an
                        // item's features come from the model's own tables.
                        realtime_only: true,
                        packed_ids,
                        packed_id_ends,
                    });
                    call.set_timeout(budget);
                    if let Some(tp) = traceparent {
                        crate::ops::propagate(&mut call, tp);
                    }
                    call
                };
                // A feature service from before the columns saw no ids and answered without
                // `packed_read`: it is asked again with a string per id.
                let older = |a: &Result<Response<GetItemsResponse>, Status>| {
                    !item_ids.is_empty() && matches!(a, Ok(a) if !a.get_ref().packed_read)
                };
                let read = newer_form_first(budget, |packed, b| link.call(call(packed, b)), older);
                let missed = || format!("no answer within {} ms", budget.as_millis());
                match tokio::time::timeout(budget, read).await {
                    Ok(Ok(answer)) => Ok(answer.into_inner().items),
                    // The call's own deadline (the same budget) may fire first: the same miss.
                    Ok(Err(status))
                        if matches!(status.code(), tonic::Code::Cancelled | tonic::Code::DeadlineExceeded)
                            && start.elapsed() >= budget =>
                    {
                        Err(missed())
                    }
                    Ok(Err(status)) => Err(format!("{}: {}", status.code(), status.message())),
                    Err(_) => Err(missed()),
                }
            }
        };
        let fetch_us = start.elapsed().as_micros() as u64;
        self.metrics.realtime_seconds.observe(start.elapsed().as_secs_f64());
        let (status, values, items) = match outcome {
            Ok(items) => {
                let summary = freshness(&items);
                let values = items.into_iter().map(|i| (i.item_id.clone(), i)).collect();
                ("read".to_string(), Some(values), summary)
            }
            Err(why) => (format!("unavailable: {why}"), None, (0, 0, 0)),
        };
        let outcome = if values.is_some() { "read" } else { "unavailable" };
        self.metrics.realtime.get_or_create(&RealtimeLabels { outcome }).inc();
        (
            values,
            RealtimeFeatures {
                status,
                items: items.0,
                oldest_window_end_ms: items.1,
                newest_window_end_ms: items.2,
                fetch_us,
            },
        )
    }

    /// Scores a request's items; `traceparent`: the caller's trace context, passed on.
    pub async fn rank(&self, req: RankRequest, traceparent: Option<&str>) -> Result<RankResponse, Status> {
        if req.user_id.trim().is_empty() {
            return Err(Status::invalid_argument("user_id is required"));
        }
        let items = request_items(&req).map_err(Status::invalid_argument)?;
        if items.len() > MAX_ITEMS {
            let field = if req.item_ids.is_empty() {
                "packed_items"
            } else {
                "item_ids"
            };
            return Err(Status::invalid_argument(format!(
                "{field} has {} items; at most {MAX_ITEMS}",
                items.len()
            )));
        }
        let lineage = lineage(&req).map_err(Status::invalid_argument)?;
        let timeout = match req.timeout_ms {
            0 => DEFAULT_TIMEOUT,
            ms => Duration::from_millis(u64::from(ms)),
        };
        let deadline = Instant::now() + timeout;
        let models = self.models.load_full();
        let (model, canary) = models
            .choose(&req.user_id, &req.model)
            .map_err(Status::invalid_argument)?;
        let rows = items.len();
        let (realtime, report) = if model.rows.reads_realtime_items() {
            let (values, report) = self.read_realtime(&items, deadline, traceparent).await;
            (values, Some(report))
        } else {
            (None, None)
        };
        let (sparse, dense, unknown_items) = model.features_with(
            &req.user_id,
            req.user.as_ref(),
            &items,
            lineage.as_deref(),
            realtime.as_ref(),
        );
        let scores = model
            .batcher
            .score(sparse, dense, rows, deadline)
            .await
            .map_err(|e| match e {
                BatchError::Overloaded(_) => Status::resource_exhausted(e.to_string()),
                BatchError::DeadlineExceeded => Status::deadline_exceeded(e.to_string()),
                BatchError::Stopped => Status::unavailable(e.to_string()),
                BatchError::Model(_) => Status::internal(e.to_string()),
            })?;
        Ok(RankResponse {
            scores,
            model_version: model.batcher.version().to_string(),
            canary,
            unknown_items,
            realtime: report,
        })
    }
}

#[tonic::async_trait]
impl Ranking for RankingService {
    async fn rank(&self, request: Request<RankRequest>) -> Result<Response<RankResponse>, Status> {
        let start = Instant::now();
        // The feature-service call ranking makes goes on in the caller's trace.
        let traceparent = self.metrics.rpc.joined("rank", request.metadata());
        let result = RankingService::rank(self, request.into_inner(), traceparent.as_deref()).await;
        self.metrics.rpc.record("rank", start, &result);
        result.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::proto::GenreShare;
    use crate::ranking::batcher::Scorer;
    use crate::ranking::features::InputSpec;
    use recstack_core::timeline::{DAY, Timeline};

    #[test]
    fn lineage_fields_and_lineage_are_inverse() {
        let source = |channel, rank| Source {
            channel,
            score: 1.0,
            rank,
        };
        // The second candidate names `hot` twice: both forms keep the last rank.
        let candidates: Vec<(f32, Vec<Source>)> = vec![
            (4.0, vec![source(Channel::Cooc, 1), source(Channel::Hot, 3)]),
            (2.0, vec![source(Channel::Hot, 6), source(Channel::Hot, 1)]),
            (1.0, vec![]),
        ];
        let expected: Vec<Lineage> = candidates
            .iter()
            .map(|(f, s)| Lineage::new(*f, 4.0, s.iter().map(|s| (s.channel, s.rank))))
            .collect();
        for sparse in [false, true] {
            let (fused_scores, channel_ranks) = lineage_fields(candidates.iter().map(|(f, s)| (*f, &s[..])), sparse);
            // Only the channels that found something, in channel order.
            let names: Vec<&str> = channel_ranks.iter().map(|c| c.channel.as_str()).collect();
            assert_eq!(names, ["hot", "cooc"]);
            if sparse {
                assert_eq!(
                    (&channel_ranks[0].positions[..], &channel_ranks[0].ranks[..]),
                    (&[0, 1][..], &[3, 1][..])
                );
                assert_eq!(
                    (&channel_ranks[1].positions[..], &channel_ranks[1].ranks[..]),
                    (&[0][..], &[1][..])
                );
            } else {
                assert_eq!(channel_ranks[0].ranks, [3, 1, 0]);
                assert!(channel_ranks.iter().all(|c| c.positions.is_empty()));
            }
            let req = RankRequest {
                user_id: "u".into(),
                item_ids: vec!["a".into(), "b".into(), "c".into()],
                fused_scores,
                channel_ranks,
                ..Default::default()
            };
            let read = lineage(&req).unwrap().unwrap();
            assert_eq!(read, expected, "sparse: {sparse}");
            assert_eq!(read[1].fused_share, 0.5);
        }
    }

    #[test]
    fn the_two_forms_of_ranks_mix_and_malformed_positions_are_refused() {
        let req = RankRequest {
            user_id: "u".into(),
            item_ids: vec!["a".into(), "b".into(), "c".into()],
            fused_scores: vec![3.0, 2.0, 1.0],
            channel_ranks: vec![
                proto::ChannelRanks {
                    channel: "hot".into(),
                    ranks: vec![0, 7, 2],
                    positions: vec![],
                },
                proto::ChannelRanks {
                    channel: "cooc".into(),
                    ranks: vec![5, 9],
                    positions: vec![0, 2],
                },
            ],
            ..Default::default()
        };
        let read = lineage(&req).unwrap().unwrap();
        let ranks = |l: &Lineage| (l.ranks[Channel::Hot.index()], l.ranks[Channel::Cooc.index()]);
        assert_eq!(read.iter().map(ranks).collect::<Vec<_>>(), [(0, 5), (7, 0), (2, 9)]);
        let refused = |positions: Vec<u32>, ranks: Vec<u32>| {
            let mut bad = req.clone();
            bad.channel_ranks[1].positions = positions;
            bad.channel_ranks[1].ranks = ranks;
            lineage(&bad).unwrap_err()
        };
        let e = refused(vec![0, 2], vec![5]);
        assert!(e.contains("channel_ranks.cooc: 1 ranks for 2 positions"), "{e}");
        let e = refused(vec![0, 3], vec![5, 9]);
        assert!(e.contains("channel_ranks.cooc.positions: 3 is past the items"), "{e}");
        let e = refused(vec![2, 0], vec![5, 9]);
        assert!(e.contains("channel_ranks.cooc.positions: 0 is out of order"), "{e}");
        let e = refused(vec![1, 1], vec![5, 9]);
        assert!(e.contains("channel_ranks.cooc.positions: 1 is out of order"), "{e}");
    }

    #[test]
    fn malformed_lineage_is_refused_naming_the_field() {
        let ok = RankRequest {
            user_id: "u".into(),
            item_ids: vec!["a".into(), "b".into()],
            fused_scores: vec![1.0, 0.5],
            channel_ranks: vec![proto::ChannelRanks {
                channel: "hot".into(),
                ranks: vec![1, 0],
                positions: vec![],
            }],
            ..Default::default()
        };
        assert!(lineage(&ok).unwrap().is_some());
        assert_eq!(lineage(&RankRequest::default()).unwrap(), None);
        let refused = |edit: fn(&mut RankRequest)| {
            let mut req = ok.clone();
            edit(&mut req);
            lineage(&req).unwrap_err()
        };
        let e = refused(|r| r.fused_scores.pop().map(drop).unwrap_or_default());
        assert!(e.contains("fused_scores has 1 values for 2 item_ids"), "{e}");
        let e = refused(|r| r.channel_ranks[0].ranks.push(3));
        assert!(e.contains("channel_ranks.hot: 3 ranks for 2 item_ids"), "{e}");
        let e = refused(|r| r.channel_ranks[0].channel = "trending".into());
        assert!(
            e.contains("channel_ranks.channel: unknown channel `trending`") && e.contains("cooc"),
            "{e}"
        );
        let e = refused(|r| {
            let again = r.channel_ranks[0].clone();
            r.channel_ranks.push(again);
        });
        assert!(e.contains("`hot` is listed twice"), "{e}");
        let e = refused(|r| r.fused_scores.clear());
        assert!(e.contains("without fused_scores"), "{e}");
    }

    /// Never called: `features` only reads the batcher's input widths.
    struct Widths(usize, usize);

    impl Scorer for Widths {
        fn version(&self) -> &str {
            "widths"
        }
        fn widths(&self) -> (usize, usize) {
            (self.0, self.1)
        }
        fn score(&mut self, _: &[i64], _: &[f32], rows: usize) -> Result<Vec<f32>, ModelError> {
            Ok(vec![0.0; rows])
        }
    }

    fn item(id: &str, genres: &[&str], year: u32) -> ItemFeatures {
        ItemFeatures {
            item_id: id.into(),
            ratings: 10 + year % 7,
            mean_rating: 7.0,
            hot_score: 2.0,
            year,
            genres: genres.iter().map(|g| g.to_string()).collect(),
            ..ItemFeatures::default()
        }
    }

    /// The item table's rows are the rows the one feature function computes from scratch, in
    /// request order, and ids missing from it (long ones too) get neutral item features.
    #[test]
    fn features_from_the_item_table_match_the_feature_function() {
        let spec = InputSpec::all(InputSpec::default_buckets);
        let known = [
            item("0110912", &["Crime", "Drama"], 1994),
            item("0111161", &["Drama"], 1994),
            item("an-item-id-longer-than-sixteen-bytes", &["Comedy"], 2001),
        ];
        // Two of the items rated over the ten days before the snapshot's end; the user last
        // active five days before it.
        let end = 1_600_000_000 + 5 * DAY;
        let timelines = [("0110912", 3), ("0111161", 9)].map(|(id, every)| {
            let times = (0..10).filter(|d| d % every == 0).map(|d| end - d * DAY);
            (id.to_string(), Timeline::from_times(times, end))
        });
        let snapshot = Snapshot::from_parts(Vec::new(), known.to_vec()).with_timelines(timelines, end);
        let rows = spec.rows().over(&snapshot);
        let model = LoadedModel {
            batcher: Batcher::start(
                Widths(spec.sparse.len(), spec.dense.len()),
                BatchConfig::default(),
                Arc::new(()),
            ),
            items: item_table(&rows, &snapshot),
            rows,
            folded: None,
            trees_walked: false,
            data_age: None,
        };
        let user = UserFeatures {
            user_id: "u1".into(),
            ratings: 40,
            mean_rating: 7.5,
            last_ts: 1_600_000_000,
            top_genres: vec![GenreShare {
                genre: "Drama".into(),
                share: 0.6,
            }],
            ..UserFeatures::default()
        };
        let ids: Vec<String> = ["an-item-id-longer-than-sixteen-bytes", "new-item", "0111161", "0110912"]
            .map(String::from)
            .to_vec();
        let (sparse, dense, unknown) = model.features("u1", Some(&user), &ids, None);
        assert_eq!(unknown, ["new-item"]);
        let (mut want_sparse, mut want_dense) = (Vec::new(), Vec::new());
        for (position, id) in ids.iter().enumerate() {
            let it = known.iter().find(|i| &i.item_id == id);
            let timeline = snapshot.timeline(id).map(|t| &**t);
            let (s, d) = model
                .rows
                .row_at("u1", Some(&user), id, it, timeline, Place::at(position));
            want_sparse.extend(s);
            want_dense.extend(d);
        }
        assert_eq!(sparse, want_sparse);
        assert_eq!(dense, want_dense);
        assert_eq!(sparse.len(), ids.len() * spec.sparse.len());
        // Different items make different rows (the test would pass on any constant otherwise).
        let row = |n: usize| &sparse[n * spec.sparse.len()..(n + 1) * spec.sparse.len()];
        assert_ne!(row(2), row(3));
        // The timelines read as of the user's day (5 before the end), not the end: 0111161 was
        // rated 4 days before it (and on the end day), 0110912 4 and 1 days before it (and 2
        // and 5 days after).
        let then = |n: usize, name: &str| {
            let col = spec.dense.iter().position(|c| c == name).unwrap();
            dense[n * spec.dense.len() + col]
        };
        let log = |x: f32| x.ln_1p() / 10_001f32.ln();
        assert_eq!(then(2, "item_log_ratings_then"), log(1.0));
        assert_eq!(then(3, "item_log_ratings_then"), log(2.0));
        assert_eq!(then(3, "item_log_week_then"), log(2.0));
        assert_eq!(then(2, "item_days_out_then"), 4f32.ln_1p() / 3_651f32.ln());
        assert_eq!(then(3, "item_days_out_then"), 4f32.ln_1p() / 3_651f32.ln());
        for n in [0, 1] {
            assert_eq!(then(n, "item_log_ratings_then"), 0.0, "no timeline, no ratings");
        }
    }

    /// A new head (or first stage) beside an unchanged `model.onnx` and card is a new model:
    /// the watcher reloads on a change of the signature.
    #[test]
    fn the_signature_follows_a_factored_card_parts() {
        let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/deepfm");
        let dir = tempfile::tempdir().unwrap();
        let card: crate::ranking::model::ModelCard =
            serde_json::from_slice(&std::fs::read(bundled.join("model.json")).unwrap()).unwrap();
        let parts = card.factored.expect("the bundled card is factored");
        std::fs::copy(bundled.join("model.json"), dir.path().join("model.json")).unwrap();
        let time = |secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        for name in ["model.onnx", &parts.first, &parts.head] {
            std::fs::File::create(dir.path().join(name))
                .unwrap()
                .set_modified(time(1_000))
                .unwrap();
        }
        let sources = ModelSources::cpu(dir.path().join("model.onnx"));
        let before = signature(&sources);
        assert_eq!(signature(&sources), before, "nothing changed");
        let head = std::fs::File::options()
            .write(true)
            .open(dir.path().join(&parts.head))
            .unwrap();
        head.set_modified(time(2_000)).unwrap();
        assert_ne!(signature(&sources), before, "the head changed");
    }
}
