//! The gateway: the front door (HTTP `POST /v1/recommend`, gRPC `Recommend`).
//!
//! One request: user features and recall in parallel, then ranking, then rerank, each stage
//! within its share of the request's deadline and behind a circuit breaker. A stage that fails,
//! times out or whose circuit is open lowers the request's level ([`degrade`]) instead of
//! failing it: the response is a list whenever any list is possible, and says which level
//! served it and why. Every request leaves a trace in the [`TraceSink`] without waiting on it.

pub use recstack_core::degrade;
pub mod http;
pub mod links;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use recstack_trace_store::{
    CandidateFate, ChannelCount, Detail, ItemLineage, SourceRecord, StageRecord, Trace, TraceSink, outcome,
};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use crate::features::UserFeatures;
use crate::features::proto::GetUserRequest;
use crate::ranking::service::proto::RankRequest;
use crate::recall::proto::{Candidate as RecallCandidate, RecallRequest, Source};
use crate::rerank::proto::{RerankRequest, Scored};
use degrade::{
    Breaker, BreakerConfig, Health, LatencyObjective, Level, LevelPlan, LoadThresholds, Shedder, Stage, after_failure,
    plan, stage_end,
};
use recstack_core::artifacts::{Artifacts, Manifest};

/// Generated gRPC types (`services/proto/gateway.proto`).
pub mod proto {
    tonic::include_proto!("recstack.gateway.v1");
}

pub const DEFAULT_N: u32 = 20;
pub const MAX_N: u32 = 100;
pub const MIN_TIMEOUT_MS: u32 = 10;
pub const MAX_TIMEOUT_MS: u32 = 10_000;

// === requests and responses ===

/// The body of `POST /v1/recommend` (and the fields of the gRPC request).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecommendRequest {
    pub user_id: String,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub scene: Option<String>,
    #[serde(default)]
    pub context: BTreeMap<String, String>,
    #[serde(default)]
    pub timeout_ms: Option<u32>,
    #[serde(default)]
    pub debug: bool,
}

/// A checked request.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    pub user_id: String,
    pub n: u32,
    pub scene: String,
    pub context: BTreeMap<String, String>,
    /// `None`: the gateway's default.
    pub timeout: Option<Duration>,
    pub debug: bool,
}

/// A request field that is wrong, and how.
#[derive(Clone, Debug, PartialEq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn field_error(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Checks a request; the error names the field.
pub fn validate(req: RecommendRequest) -> Result<Query, FieldError> {
    let user_id = req.user_id.trim();
    if user_id.is_empty() {
        return Err(field_error("user_id", "is required"));
    }
    if user_id.len() > 256 {
        return Err(field_error("user_id", "is longer than 256 bytes"));
    }
    let n = match req.n {
        None | Some(0) => DEFAULT_N,
        Some(n) if n > MAX_N => return Err(field_error("n", format!("is {n}; at most {MAX_N}"))),
        Some(n) => n,
    };
    let scene = req.scene.unwrap_or_else(|| "default".into());
    if scene.len() > 64 || !scene.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(field_error(
            "scene",
            "must be at most 64 characters of A-Z a-z 0-9 - _ .",
        ));
    }
    if req.context.len() > 32 {
        return Err(field_error("context", "has more than 32 entries"));
    }
    if let Some((k, _)) = req.context.iter().find(|(k, v)| k.len() > 64 || v.len() > 256) {
        return Err(field_error(
            &format!("context.{k}"),
            "key over 64 or value over 256 bytes",
        ));
    }
    let timeout = match req.timeout_ms {
        None | Some(0) => None,
        Some(ms) if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&ms) => {
            return Err(field_error(
                "timeout_ms",
                format!("is {ms}; between {MIN_TIMEOUT_MS} and {MAX_TIMEOUT_MS}"),
            ));
        }
        Some(ms) => Some(Duration::from_millis(u64::from(ms))),
    };
    Ok(Query {
        user_id: user_id.to_string(),
        n,
        scene,
        context: req.context,
        timeout,
        debug: req.debug,
    })
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServedSource {
    pub channel: String,
    pub score: f32,
    pub rank: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServedItem {
    pub item_id: String,
    pub title: String,
    /// What the list is ordered by: the model's score, or recall's fused score when ranking
    /// was skipped, or the hot score at the popular and fallback levels.
    pub score: f32,
    pub sources: Vec<ServedSource>,
    /// 0-based position before rerank.
    pub ranked_position: Option<u32>,
    pub rerank_rule: Option<String>,
}

/// The answer to a recommendation request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    pub request_id: String,
    pub trace_id: String,
    pub items: Vec<ServedItem>,
    pub level: String,
    pub degraded: Vec<String>,
    pub model_version: Option<String>,
    pub artifact_version: String,
    pub experiment: Option<String>,
    pub bucket: Option<u32>,
    pub variant: Option<String>,
    pub latency_us: u64,
}

// === configuration ===

/// Where the downstream services are.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub recall: String,
    pub features: String,
    pub ranking: String,
    pub rerank: String,
}

/// Candidates (best first) rerank chooses from: enough for diversity, few enough to keep the
/// rerank call small.
pub const RERANK_POOL: usize = 200;

#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub default_timeout: Duration,
    pub load: LoadThresholds,
    /// The latency kept by starting a share of requests at `reduced` ([`Shedder`]); `None`:
    /// only load (in-flight counts) and downstream health choose levels.
    pub latency: Option<LatencyObjective>,
    pub breaker: BreakerConfig,
    pub full: LevelPlan,
    pub reduced: LevelPlan,
    /// Share of requests traced in full (debug requests always are).
    pub full_trace_sample: f64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_millis(100),
            load: LoadThresholds::default(),
            latency: None,
            breaker: BreakerConfig::default(),
            full: LevelPlan::full(),
            reduced: LevelPlan::reduced(),
            full_trace_sample: 0.01,
        }
    }
}

/// What the gateway keeps from the artifacts: titles, and the hot list behind the popular and
/// fallback levels.
pub struct Catalogue {
    pub artifact_version: String,
    titles: HashMap<String, String>,
    /// Hottest first, with scores.
    hot: Vec<(String, f32)>,
}

impl Catalogue {
    pub fn new(manifest: &Manifest, a: &Artifacts) -> Self {
        Self {
            artifact_version: manifest.version.clone(),
            titles: a.items.iter().map(|i| (i.id.clone(), i.title.clone())).collect(),
            hot: a
                .hot
                .iter()
                .take(1000)
                .map(|&(i, s)| (a.items[i as usize].id.clone(), s))
                .collect(),
        }
    }

    /// Whether recall's artifacts know the item.
    pub fn has(&self, id: &str) -> bool {
        self.titles.contains_key(id)
    }

    pub fn title(&self, id: &str) -> String {
        self.titles.get(id).cloned().unwrap_or_default()
    }
}

// === metrics ===

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LevelLabels {
    pub level: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: &'static str,
}

pub struct GatewayMetrics {
    pub registry: Registry,
    pub requests: Family<LevelLabels, Counter>,
    pub invalid: Counter,
    pub latency: Histogram,
    pub stage_latency: Family<StageLabels, Histogram>,
    pub stage_failures: Family<StageLabels, Counter>,
    pub in_flight: Gauge,
    /// The share of requests started at `reduced` to keep the latency objective.
    pub shed_share: Gauge<f64, AtomicU64>,
    pub traces_dropped: Counter,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("recstack_gateway");
        let m = Self {
            registry: Registry::default(),
            requests: Family::default(),
            invalid: Counter::default(),
            latency: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            stage_latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_05, 2.0, 16))),
            stage_failures: Family::default(),
            in_flight: Gauge::default(),
            shed_share: Gauge::default(),
            traces_dropped: Counter::default(),
        };
        registry.register("requests", "Requests served, by degradation level", m.requests.clone());
        registry.register(
            "invalid_requests",
            "Requests refused as malformed (400)",
            m.invalid.clone(),
        );
        registry.register("latency_seconds", "End-to-end latency", m.latency.clone());
        registry.register(
            "stage_latency_seconds",
            "Latency of each downstream stage",
            m.stage_latency.clone(),
        );
        registry.register(
            "stage_failures",
            "Stage calls that failed, timed out or met an open circuit",
            m.stage_failures.clone(),
        );
        registry.register("in_flight", "Requests being served", m.in_flight.clone());
        registry.register(
            "shed_share",
            "Share of requests started at the reduced level to keep the latency objective",
            m.shed_share.clone(),
        );
        registry.register("traces_dropped", "Traces the sink refused", m.traces_dropped.clone());
        Self { registry, ..m }
    }
}

impl GatewayMetrics {
    pub fn encode(&self) -> String {
        crate::ops::encode(&self.registry)
    }
}

// === the gateway ===

pub struct Gateway {
    links: Links,
    pub catalogue: Arc<Catalogue>,
    pub config: GatewayConfig,
    breakers: HashMap<Stage, Mutex<Breaker>>,
    in_flight: AtomicUsize,
    shedder: Option<Mutex<Shedder>>,
    sequence: AtomicU64,
    sink: Arc<dyn TraceSink>,
    pub metrics: Arc<GatewayMetrics>,
}

pub use links::{EndpointError, Links};

/// Recall's candidate as the gateway carries it on.
struct Cand {
    id: String,
    /// What orders it before ranking (fused score, or hot score).
    prior: f32,
    sources: Vec<Source>,
    recall_position: Option<u32>,
    rank_score: Option<f32>,
}

/// The stages one request ran, each with its start offset from the request's start.
struct StageLog {
    began: Instant,
    records: Mutex<Vec<StageRecord>>,
}

/// Decrements the in-flight count when the request ends, however it ends.
struct InFlight<'a>(&'a AtomicUsize, &'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.dec();
    }
}

impl Gateway {
    /// A gateway over `links` (gRPC clients connect lazily: it starts, and answers, while
    /// downstreams are still down).
    pub fn new(
        links: Links,
        catalogue: Arc<Catalogue>,
        config: GatewayConfig,
        sink: Arc<dyn TraceSink>,
        metrics: Arc<GatewayMetrics>,
    ) -> Self {
        let breakers = Stage::ALL
            .iter()
            .map(|&s| (s, Mutex::new(Breaker::new(config.breaker.clone()))))
            .collect();
        let shedder = config
            .latency
            .clone()
            .map(|objective| Mutex::new(Shedder::new(objective, Instant::now())));
        Self {
            links,
            catalogue,
            config,
            breakers,
            in_flight: AtomicUsize::new(0),
            shedder,
            sequence: AtomicU64::new(0),
            sink,
            metrics,
        }
    }

    fn breaker(&self, stage: Stage) -> std::sync::MutexGuard<'_, Breaker> {
        self.breakers[&stage].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls one downstream within its stage budget, through its breaker, and logs the stage.
    async fn call<T, F>(
        &self,
        stage: Stage,
        end: Instant,
        stages: &StageLog,
        items_in: u32,
        call: impl FnOnce(Duration) -> F,
    ) -> Result<T, String>
    where
        F: Future<Output = Result<Response<T>, Status>>,
    {
        let start = Instant::now();
        let outcome = if !self.breaker(stage).allow(start) {
            Err("circuit open".to_string())
        } else {
            let budget = end.saturating_duration_since(start);
            match tokio::time::timeout(budget, call(budget)).await {
                Ok(Ok(response)) => {
                    self.breaker(stage).success();
                    Ok(response.into_inner())
                }
                Ok(Err(status)) => {
                    self.breaker(stage).failure(Instant::now());
                    Err(format!(
                        "{}: {}",
                        crate::ops::code_name(status.code()),
                        status.message()
                    ))
                }
                Err(_) => {
                    self.breaker(stage).failure(Instant::now());
                    Err(format!("timed out after {} ms", budget.as_millis()))
                }
            }
        };
        let took = start.elapsed();
        let labels = StageLabels { stage: stage.name() };
        self.metrics
            .stage_latency
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if outcome.is_err() {
            self.metrics.stage_failures.get_or_create(&labels).inc();
        }
        stages
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(StageRecord {
                name: stage.name().to_string(),
                latency_us: took.as_micros() as u64,
                start_us: Some(start.saturating_duration_since(stages.began).as_micros() as u64),
                items_in,
                items_out: 0,
                outcome: match &outcome {
                    Ok(_) => "ok".into(),
                    Err(e) => format!("failed: {e}"),
                },
            });
        outcome
    }

    /// Why request `seq` starts at `reduced` to keep the latency objective, if it does.
    fn shedding(&self, seq: u64) -> Option<String> {
        let shedder = self.shedder.as_ref()?.lock().unwrap_or_else(|e| e.into_inner());
        shedder.sheds(seq).then(|| {
            format!(
                "latency: {:.0} % of requests start reduced to keep p{} within {} ms",
                shedder.share() * 100.0,
                shedder.objective.quantile * 100.0,
                shedder.objective.target.as_secs_f64() * 1e3
            )
        })
    }

    fn health(&self, now: Instant) -> Health {
        let up = |s| self.breaker(s).is_available(now);
        Health {
            recall: up(Stage::Recall),
            ranking: up(Stage::Ranking),
            rerank: up(Stage::Rerank),
            features: up(Stage::Features),
        }
    }

    /// The request id (time and `seq`) and the trace id (the caller's, else a new one).
    fn ids(seq: u64, traceparent: Option<&str>) -> (String, String) {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let request_id = format!("{:012x}-{seq:06x}", nanos as u64 >> 16);
        let trace_id = traceparent
            .and_then(parse_traceparent)
            .unwrap_or_else(|| format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>()));
        (request_id, trace_id)
    }

    /// Serves one request. Never fails: the worst case is the fallback list.
    pub async fn recommend(&self, q: Query, traceparent: Option<&str>) -> Recommendation {
        let start = Instant::now();
        let in_flight = self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.metrics.in_flight.inc();
        let _guard = InFlight(&self.in_flight, &self.metrics.in_flight);
        let seq = self.sequence.fetch_add(1, Ordering::Relaxed);
        let (request_id, trace_id) = Self::ids(seq, traceparent);
        let timeout = q.timeout.unwrap_or(self.config.default_timeout);
        let (mut level, mut degraded) = plan(in_flight, &self.config.load, self.health(start));
        if level == Level::Full
            && let Some(shed) = self.shedding(seq)
        {
            level = Level::Reduced;
            degraded.push(shed);
        }
        let stages = StageLog {
            began: start,
            records: Mutex::new(Vec::new()),
        };
        let mut user: Option<UserFeatures> = None;
        let mut cands: Vec<Cand> = Vec::new();
        let mut filtered_seen = Vec::new();
        let mut channels = Vec::new();
        let mut model_version = None;
        let mut below_cut: Vec<Cand> = Vec::new();

        // 1. Features and recall in parallel.
        if level < Level::Fallback {
            let end = stage_end(Stage::Recall, start, timeout);
            let level_plan = if level == Level::Full {
                &self.config.full
            } else {
                &self.config.reduced
            };
            let features = self.call(Stage::Features, end, &stages, 0, |budget| {
                let mut r = Request::new(GetUserRequest {
                    user_id: q.user_id.clone(),
                });
                r.set_timeout(budget);
                self.links.features.call(r)
            });
            let recall = async {
                if level > Level::Reduced {
                    return None;
                }
                Some(
                    self.call(Stage::Recall, end, &stages, 0, |budget| {
                        let mut r = Request::new(RecallRequest {
                            user_id: q.user_id.clone(),
                            context: q.context.clone().into_iter().collect(),
                            n: level_plan.candidates,
                            channel_quotas: level_plan.quotas.clone(),
                        });
                        r.set_timeout(budget);
                        self.links.recall.call(r)
                    })
                    .await,
                )
            };
            let (features, recall) = tokio::join!(features, recall);
            match features {
                Ok(f) => user = f.features,
                Err(e) => {
                    degraded.push(format!("features: {e}"));
                    level = level.max(after_failure(Stage::Features));
                }
            }
            match recall {
                Some(Ok(r)) => {
                    filtered_seen = r.filtered_seen;
                    cands = r.candidates.into_iter().enumerate().map(recall_cand).collect();
                    channels = channel_counts(&cands);
                }
                Some(Err(e)) => {
                    degraded.push(format!("recall: {e}"));
                    level = level.max(after_failure(Stage::Recall));
                }
                None => {}
            }
        }

        // 2. Popular: the hot list without what the user has recently seen.
        if level == Level::Popular {
            let recent: std::collections::HashSet<&str> = user
                .as_ref()
                .map(|u| u.recent_items.iter().map(String::as_str).collect())
                .unwrap_or_default();
            cands = self
                .catalogue
                .hot
                .iter()
                .filter(|(id, _)| !recent.contains(id.as_str()))
                .take(200)
                .map(|(id, s)| Cand {
                    id: id.clone(),
                    prior: *s,
                    sources: Vec::new(),
                    recall_position: None,
                    rank_score: None,
                })
                .collect();
        }

        // 3. Ranking of the top candidates by recall's order.
        if level <= Level::Reduced && !cands.is_empty() {
            let limit = if level == Level::Full {
                self.config.full.rank_limit
            } else {
                self.config.reduced.rank_limit
            };
            below_cut = cands.split_off(limit.min(cands.len()));
            let end = stage_end(Stage::Ranking, start, timeout);
            let ranked = self
                .call(Stage::Ranking, end, &stages, cands.len() as u32, |budget| {
                    let mut r = Request::new(RankRequest {
                        user_id: q.user_id.clone(),
                        user: user.clone(),
                        item_ids: cands.iter().map(|c| c.id.clone()).collect(),
                        timeout_ms: budget.as_millis().clamp(1, u128::from(u32::MAX)) as u32,
                    });
                    r.set_timeout(budget);
                    self.links.ranking.call(r)
                })
                .await;
            match ranked {
                Ok(r) if r.scores.len() == cands.len() => {
                    for (c, s) in cands.iter_mut().zip(r.scores) {
                        c.rank_score = Some(s);
                    }
                    // Ties keep recall's order (a total order, so the unstable sort is stable here).
                    cands.sort_unstable_by(|a, b| {
                        let score = |c: &Cand| c.rank_score.unwrap_or(0.0);
                        score(b)
                            .total_cmp(&score(a))
                            .then(a.recall_position.cmp(&b.recall_position))
                    });
                    model_version = Some(r.model_version);
                }
                Ok(r) => {
                    degraded.push(format!(
                        "ranking: {} scores for {} candidates",
                        r.scores.len(),
                        cands.len()
                    ));
                    level = level.max(after_failure(Stage::Ranking));
                }
                Err(e) => {
                    degraded.push(format!("ranking: {e}"));
                    level = level.max(after_failure(Stage::Ranking));
                }
            }
        }

        // 4. Rerank to n.
        let mut served: Vec<(usize, Option<String>)> = Vec::new();
        let (mut experiment, mut bucket, mut variant) = (None, None, None);
        let mut rerank_actions = Vec::new();
        if level < Level::Fallback && !cands.is_empty() {
            let end = stage_end(Stage::Rerank, start, timeout);
            let reranked = self
                .call(
                    Stage::Rerank,
                    end,
                    &stages,
                    cands.len().min(RERANK_POOL) as u32,
                    |budget| {
                        let mut r = Request::new(RerankRequest {
                            user_id: q.user_id.clone(),
                            items: cands
                                .iter()
                                .take(RERANK_POOL)
                                .map(|c| Scored {
                                    item_id: c.id.clone(),
                                    score: c.rank_score.unwrap_or(c.prior),
                                })
                                .collect(),
                            k: q.n,
                        });
                        r.set_timeout(budget);
                        self.links.rerank.call(r)
                    },
                )
                .await;
            match reranked {
                Ok(r) => {
                    // Rerank chose from the first RERANK_POOL candidates.
                    let position: FxHashMap<&str, usize> = cands
                        .iter()
                        .take(RERANK_POOL)
                        .enumerate()
                        .map(|(i, c)| (c.id.as_str(), i))
                        .collect();
                    served = r
                        .items
                        .iter()
                        .filter_map(|s| position.get(s.item_id.as_str()).copied())
                        .map(|i| (i, None))
                        .collect();
                    rerank_actions = r.actions;
                    (experiment, bucket, variant) = (Some(r.experiment), Some(r.bucket), Some(r.variant));
                }
                Err(e) => {
                    degraded.push(format!("rerank: {e}"));
                    level = level.max(after_failure(Stage::Rerank));
                    served = (0..cands.len().min(q.n as usize)).map(|i| (i, None)).collect();
                }
            }
        }

        // What rerank did to each item it moved or dropped, by id.
        let rerank_fates: FxHashMap<&str, &str> = rerank_actions
            .iter()
            .map(|a| (a.item_id.as_str(), a.rule.as_str()))
            .collect();
        for (i, rule) in &mut served {
            *rule = rerank_fates.get(cands[*i].id.as_str()).map(|r| r.to_string());
        }

        // 5. Nothing to serve (fallback level, or every stage came back empty): the
        //    precomputed list.
        let mut fallback_items = Vec::new();
        if served.is_empty() {
            if level < Level::Fallback {
                degraded.push("no candidates: serving the precomputed list".into());
            }
            level = Level::Fallback;
            fallback_items = self.catalogue.hot.iter().take(q.n as usize).cloned().collect();
        }

        let items: Vec<ServedItem> = if fallback_items.is_empty() {
            served
                .iter()
                .map(|(i, rule)| {
                    let c = &cands[*i];
                    ServedItem {
                        item_id: c.id.clone(),
                        title: self.catalogue.title(&c.id),
                        score: c.rank_score.unwrap_or(c.prior),
                        sources: c
                            .sources
                            .iter()
                            .map(|s| ServedSource {
                                channel: s.channel_name().to_string(),
                                score: s.score,
                                rank: s.rank,
                            })
                            .collect(),
                        ranked_position: Some(*i as u32),
                        rerank_rule: rule.clone(),
                    }
                })
                .collect()
        } else {
            fallback_items
                .iter()
                .map(|(id, s)| ServedItem {
                    item_id: id.clone(),
                    title: self.catalogue.title(id),
                    score: *s,
                    sources: Vec::new(),
                    ranked_position: None,
                    rerank_rule: None,
                })
                .collect()
        };

        let latency = start.elapsed();
        self.metrics.latency.observe(latency.as_secs_f64());
        if let Some(shedder) = &self.shedder {
            let mut shedder = shedder.lock().unwrap_or_else(|e| e.into_inner());
            shedder.record(Instant::now(), latency);
            self.metrics.shed_share.set(shedder.share());
        }
        self.metrics
            .requests
            .get_or_create(&LevelLabels { level: level.name() })
            .inc();
        let response = Recommendation {
            request_id,
            trace_id,
            items,
            level: level.name().to_string(),
            degraded,
            model_version,
            artifact_version: self.catalogue.artifact_version.clone(),
            experiment,
            bucket,
            variant,
            latency_us: latency.as_micros() as u64,
        };
        let full = q.debug || rand::random::<f64>() < self.config.full_trace_sample;
        let trace = self.trace(
            &q,
            &response,
            stages.records.into_inner().unwrap_or_else(|e| e.into_inner()),
            &cands,
            &served,
            filtered_seen,
            channels,
            below_cut,
            full.then_some(&rerank_fates),
        );
        if !self.sink.offer(trace) {
            self.metrics.traces_dropped.inc();
        }
        response
    }

    #[allow(clippy::too_many_arguments)]
    fn trace(
        &self,
        q: &Query,
        r: &Recommendation,
        mut stages: Vec<StageRecord>,
        cands: &[Cand],
        served: &[(usize, Option<String>)],
        filtered_seen: Vec<String>,
        channels: Vec<ChannelCount>,
        below_cut: Vec<Cand>,
        full: Option<&FxHashMap<&str, &str>>,
    ) -> Trace {
        for s in &mut stages {
            s.items_out = match s.name.as_str() {
                "recall" => (cands.len() + below_cut.len()) as u32,
                "ranking" => cands.iter().filter(|c| c.rank_score.is_some()).count() as u32,
                "rerank" => served.len() as u32,
                _ => 0,
            };
        }
        let source_records = |c: &Cand| {
            c.sources
                .iter()
                .map(|s| SourceRecord {
                    channel: s.channel_name().to_string(),
                    score: s.score,
                    rank: s.rank,
                })
                .collect::<Vec<_>>()
        };
        let items = if served.is_empty() {
            r.items
                .iter()
                .enumerate()
                .map(|(pos, it)| ItemLineage {
                    item_id: it.item_id.clone(),
                    position: pos as u32,
                    sources: Vec::new(),
                    recall_position: None,
                    rank_score: None,
                    ranked_position: None,
                    rerank_rule: None,
                    filters_passed: Vec::new(),
                })
                .collect()
        } else {
            // Recall's seen filter ran on recalled items; rerank's block list on what it served.
            let reranked = r.experiment.is_some();
            served
                .iter()
                .enumerate()
                .map(|(pos, (i, rule))| {
                    let c = &cands[*i];
                    ItemLineage {
                        item_id: c.id.clone(),
                        position: pos as u32,
                        sources: source_records(c),
                        recall_position: c.recall_position,
                        rank_score: c.rank_score,
                        ranked_position: Some(*i as u32),
                        rerank_rule: rule.clone(),
                        filters_passed: c
                            .recall_position
                            .map(|_| "seen")
                            .into_iter()
                            .chain(reranked.then_some("block_list"))
                            .map(String::from)
                            .collect(),
                    }
                })
                .collect()
        };
        let candidates = match full {
            None => Vec::new(),
            Some(fates) => {
                let served_ids: std::collections::HashSet<&str> =
                    served.iter().map(|(i, _)| cands[*i].id.as_str()).collect();
                // Rerank chose from the first RERANK_POOL candidates in ranked order.
                cands
                    .iter()
                    .enumerate()
                    .map(|(i, c)| CandidateFate {
                        item_id: c.id.clone(),
                        sources: source_records(c),
                        rank_score: c.rank_score,
                        outcome: if served_ids.contains(c.id.as_str()) {
                            outcome::SERVED.into()
                        } else if let Some(rule) = fates.get(c.id.as_str()) {
                            format!("{}{rule}", outcome::RERANK_PREFIX)
                        } else if i >= RERANK_POOL {
                            outcome::BELOW_RERANK_POOL.into()
                        } else {
                            outcome::NOT_SERVED.into()
                        },
                    })
                    .chain(below_cut.iter().map(|c| CandidateFate {
                        item_id: c.id.clone(),
                        sources: source_records(c),
                        rank_score: None,
                        outcome: outcome::RANKED_BELOW_CUT.into(),
                    }))
                    .collect()
            }
        };
        Trace {
            schema: recstack_trace_store::SCHEMA_VERSION,
            request_id: r.request_id.clone(),
            trace_id: r.trace_id.clone(),
            timestamp_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as i64,
            user_id: q.user_id.clone(),
            scene: q.scene.clone(),
            detail: if full.is_some() { Detail::Full } else { Detail::Summary },
            level: r.level.clone(),
            degraded: r.degraded.clone(),
            experiment: r.experiment.clone().unwrap_or_default(),
            bucket: r.bucket.unwrap_or(0),
            variant: r.variant.clone().unwrap_or_default(),
            model_version: r.model_version.clone(),
            artifact_version: Some(r.artifact_version.clone()),
            latency_us: r.latency_us,
            stages,
            channels,
            items,
            filtered_seen,
            candidates,
        }
    }
}

/// Candidates per recall channel (an item found by two channels counts for both).
fn channel_counts(cands: &[Cand]) -> Vec<ChannelCount> {
    // (a source of the channel, candidates), in order of first appearance.
    let mut counts: Vec<(&Source, u32)> = Vec::new();
    for s in cands.iter().flat_map(|c| &c.sources) {
        match counts.iter_mut().find(|(first, _)| first.channel == s.channel) {
            Some((_, n)) => *n += 1,
            None => counts.push((s, 1)),
        }
    }
    counts
        .into_iter()
        .map(|(s, candidates)| ChannelCount {
            channel: s.channel_name().to_string(),
            candidates,
        })
        .collect()
}

fn recall_cand((pos, c): (usize, RecallCandidate)) -> Cand {
    Cand {
        id: c.item_id,
        prior: c.fused_score,
        sources: c.sources,
        recall_position: Some(pos as u32),
        rank_score: None,
    }
}

/// The trace id of a W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn parse_traceparent(header: &str) -> Option<String> {
    let parts: Vec<&str> = header.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    match parts.as_slice() {
        [v, t, p, f] if hex(v, 2) && hex(t, 32) && hex(p, 16) && hex(f, 2) && *t != "0".repeat(32) => {
            Some(t.to_ascii_lowercase())
        }
        _ => None,
    }
}

// === gRPC ===

/// The gRPC face of the gateway.
pub struct GatewayGrpc(pub Arc<Gateway>);

#[tonic::async_trait]
impl proto::gateway_server::Gateway for GatewayGrpc {
    async fn recommend(
        &self,
        request: Request<proto::RecommendRequest>,
    ) -> Result<Response<proto::RecommendResponse>, Status> {
        let traceparent = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let r = request.into_inner();
        let q = validate(RecommendRequest {
            user_id: r.user_id,
            n: Some(r.n),
            scene: (!r.scene.is_empty()).then_some(r.scene),
            context: r.context.into_iter().collect(),
            timeout_ms: Some(r.timeout_ms),
            debug: r.debug,
        })
        .map_err(|e| {
            self.0.metrics.invalid.inc();
            Status::invalid_argument(e.to_string())
        })?;
        let rec = self.0.recommend(q, traceparent.as_deref()).await;
        Ok(Response::new(proto::RecommendResponse {
            request_id: rec.request_id,
            items: rec
                .items
                .into_iter()
                .map(|i| proto::Item {
                    item_id: i.item_id,
                    title: i.title,
                    score: i.score,
                    sources: i
                        .sources
                        .into_iter()
                        .map(|s| proto::Source {
                            channel: s.channel,
                            score: s.score,
                            rank: s.rank,
                        })
                        .collect(),
                    ranked_position: i.ranked_position.unwrap_or(0),
                    rerank_rule: i.rerank_rule.unwrap_or_default(),
                })
                .collect(),
            level: rec.level,
            degraded: rec.degraded,
            model_version: rec.model_version.unwrap_or_default(),
            experiment: rec.experiment.unwrap_or_default(),
            bucket: rec.bucket.unwrap_or(0),
            latency_us: rec.latency_us.min(u64::from(u32::MAX)) as u32,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(user: &str) -> RecommendRequest {
        RecommendRequest {
            user_id: user.into(),
            ..Default::default()
        }
    }

    #[test]
    fn validation_names_the_field() {
        let cases = [
            (req(""), "user_id"),
            (req("   "), "user_id"),
            (req(&"u".repeat(300)), "user_id"),
            (
                RecommendRequest {
                    n: Some(500),
                    ..req("u")
                },
                "n",
            ),
            (
                RecommendRequest {
                    timeout_ms: Some(5),
                    ..req("u")
                },
                "timeout_ms",
            ),
            (
                RecommendRequest {
                    scene: Some("home page!".into()),
                    ..req("u")
                },
                "scene",
            ),
            (
                RecommendRequest {
                    context: [("k".repeat(100), "v".into())].into_iter().collect(),
                    ..req("u")
                },
                "context.",
            ),
        ];
        for (r, field) in cases {
            let e = validate(r).unwrap_err();
            assert!(e.field.starts_with(field), "{e:?} should name {field}");
        }
    }

    #[test]
    fn validation_fills_defaults() {
        let q = validate(req(" 42 ")).unwrap();
        assert_eq!(q.user_id, "42");
        assert_eq!(q.n, DEFAULT_N);
        assert_eq!(q.scene, "default");
        assert_eq!(q.timeout, None);
        let q = validate(RecommendRequest {
            n: Some(5),
            timeout_ms: Some(250),
            ..req("42")
        })
        .unwrap();
        assert_eq!((q.n, q.timeout), (5, Some(Duration::from_millis(250))));
    }

    #[test]
    fn traceparent_gives_the_callers_trace_id() {
        assert_eq!(
            parse_traceparent("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01").as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-xyz-b7ad6b7169203331-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }
}
