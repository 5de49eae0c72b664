//! One request's way through the gateway: the [`Request`] state, and the named stages that
//! move it along — [`Gateway::features_and_recall`], [`Gateway::popular`], [`Gateway::rank`],
//! [`Gateway::rerank`], [`Gateway::fallback`] — then [`Gateway::respond`]. Each stage reads the
//! state, calls at most one or two downstreams within its budget, and writes back what it
//! learnt: candidates and their lineage, scores, what rerank did, the level and why it fell.
//! The trace is built from the finished state ([`super::trace`]), not from the response.

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use recstack_core::degrade::{Level, LevelPlan, Stage, after_failure, stage_end};
use recstack_core::recall::Source;
use recstack_trace_store::{ChannelCount, StageRecord};
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use tonic::{Request as Call, Response, Status};

use super::Gateway;
use super::metrics::StageLabels;
use super::request::{Query, Recommendation, ServedItem};
use crate::features::UserFeatures;
use crate::features::proto::GetUserRequest;
use crate::ranking::service::proto::{RankRequest, RealtimeFeatures};
use crate::recall::proto::{Candidate as RecallCandidate, RecallRequest};
use crate::rerank::proto::{Action, RerankRequest, Scored};

/// Candidates (best first) rerank chooses from: enough for diversity, few enough to keep the
/// rerank call small.
pub const RERANK_POOL: usize = 200;

/// Popular level: how many of the hot list (less the user's recent items) are ranked.
const POPULAR_POOL: usize = 200;

/// A candidate as the gateway carries it from recall to the trace.
pub(super) struct Cand {
    pub id: String,
    /// What orders it before ranking (fused score, or hot score).
    pub prior: f32,
    /// Every recall channel that produced it (none at the popular level); most items come
    /// from one or two, held inline (a request carries ~1,000 candidates).
    pub sources: SmallVec<[Source; 2]>,
    /// 0-based position in recall's merged list.
    pub recall_position: Option<u32>,
    pub rank_score: Option<f32>,
}

impl Cand {
    fn recalled((pos, c): (usize, RecallCandidate)) -> Self {
        Self {
            id: c.item_id,
            prior: c.fused_score,
            sources: c.sources.iter().filter_map(|s| s.lineage()).collect(),
            recall_position: Some(pos as u32),
            rank_score: None,
        }
    }

    /// What it is ordered by after ranking: the model's score, else its prior.
    pub fn score(&self) -> f32 {
        self.rank_score.unwrap_or(self.prior)
    }
}

/// What rerank answered: its A/B assignment and what each rule did.
pub(super) struct Reranked {
    pub experiment: String,
    pub bucket: u32,
    pub variant: String,
    pub actions: Vec<Action>,
}

impl Reranked {
    /// The rule that moved or dropped each item, by item id.
    pub fn rules(&self) -> FxHashMap<&str, &str> {
        self.actions
            .iter()
            .map(|a| (a.item_id.as_str(), a.rule.as_str()))
            .collect()
    }
}

/// One request as the stages see it.
pub(super) struct Request {
    pub q: Query,
    pub request_id: String,
    pub trace_id: String,
    pub start: Instant,
    pub timeout: Duration,
    pub level: Level,
    /// Why the level fell, one line per cause.
    pub degraded: Vec<String>,
    /// Each stage that called a downstream, in the order they were called.
    pub stages: Vec<StageRecord>,
    pub user: Option<UserFeatures>,
    /// Recall's candidates (or the hot list's), in the current order: recall's, then the
    /// model's once ranked. Only those the model may score; the rest are in `below_cut`.
    pub candidates: Vec<Cand>,
    /// Recalled but past the ranker's reach.
    pub below_cut: Vec<Cand>,
    /// Items the seen filter removed in recall.
    pub filtered_seen: Vec<String>,
    pub channels: Vec<ChannelCount>,
    pub model_version: Option<String>,
    /// What ranking read of the candidates' real-time features (its model names some).
    pub realtime: Option<RealtimeFeatures>,
    pub reranked: Option<Reranked>,
    /// What is served: an index into `candidates`, and the rerank rule that moved it.
    pub served: Vec<(usize, Option<String>)>,
    /// The precomputed list, when nothing else could be served.
    pub fallback: Vec<(String, f32)>,
}

impl Request {
    /// A request starting at `level`, for the reasons in `degraded`.
    pub fn new(
        q: Query,
        ids: (String, String),
        start: Instant,
        timeout: Duration,
        level: Level,
        degraded: Vec<String>,
    ) -> Self {
        Self {
            q,
            request_id: ids.0,
            trace_id: ids.1,
            start,
            timeout,
            level,
            degraded,
            stages: Vec::new(),
            user: None,
            candidates: Vec::new(),
            below_cut: Vec::new(),
            filtered_seen: Vec::new(),
            channels: Vec::new(),
            model_version: None,
            realtime: None,
            reranked: None,
            served: Vec::new(),
            fallback: Vec::new(),
        }
    }

    /// A stage failed: say why, and fall to the level its failure leaves.
    fn failed(&mut self, stage: Stage, why: String) {
        self.degraded.push(why);
        self.level = self.level.max(after_failure(stage));
    }
}

// === the stages ===

impl Gateway {
    /// The plan of the level the request is at (full or reduced).
    fn level_plan(&self, level: Level) -> &LevelPlan {
        if level == Level::Full {
            &self.config.full
        } else {
            &self.config.reduced
        }
    }

    /// User features and recall, in parallel (recall only at the full and reduced levels).
    pub(super) async fn features_and_recall(&self, r: &mut Request) {
        let end = stage_end(Stage::Recall, r.start, r.timeout);
        let (level, start, q) = (r.level, r.start, &r.q);
        let plan = self.level_plan(level);
        let features = self.call(Stage::Features, start, end, 0, |budget| {
            let mut call = Call::new(GetUserRequest {
                user_id: q.user_id.clone(),
            });
            call.set_timeout(budget);
            self.links.features.call(call)
        });
        let recall = async {
            if level > Level::Reduced {
                return None;
            }
            let recall = self.call(Stage::Recall, start, end, 0, |budget| {
                let mut call = Call::new(RecallRequest {
                    user_id: q.user_id.clone(),
                    context: q.context.clone().into_iter().collect(),
                    n: plan.candidates,
                    channel_quotas: plan.quotas.clone(),
                });
                call.set_timeout(budget);
                self.links.recall.call(call)
            });
            Some(recall.await)
        };
        let ((features, features_stage), recall) = tokio::join!(features, recall);
        r.stages.push(features_stage);
        match features {
            Ok(f) => r.user = f.features,
            Err(e) => r.failed(Stage::Features, format!("features: {e}")),
        }
        if let Some((recall, recall_stage)) = recall {
            r.stages.push(recall_stage);
            match recall {
                Ok(answer) => {
                    r.filtered_seen = answer.filtered_seen;
                    r.candidates = answer.candidates.into_iter().enumerate().map(Cand::recalled).collect();
                    r.channels = channel_counts(&r.candidates);
                }
                Err(e) => r.failed(Stage::Recall, format!("recall: {e}")),
            }
        }
    }

    /// The popular level: the hot list without what the user has recently seen.
    pub(super) fn popular(&self, r: &mut Request) {
        let recent: HashSet<&str> = r
            .user
            .as_ref()
            .map(|u| u.recent_items.iter().map(String::as_str).collect())
            .unwrap_or_default();
        r.candidates = self
            .catalogue
            .load()
            .hot
            .iter()
            .filter(|(id, _)| !recent.contains(id.as_str()))
            .take(POPULAR_POOL)
            .map(|(id, s)| Cand {
                id: id.clone(),
                prior: *s,
                sources: SmallVec::new(),
                recall_position: None,
                rank_score: None,
            })
            .collect();
    }

    /// The model scores the first candidates in recall's order (as many as the level's plan
    /// lets it); they are reordered by score, ties keeping recall's order.
    pub(super) async fn rank(&self, r: &mut Request) {
        let limit = self.level_plan(r.level).rank_limit;
        r.below_cut = r.candidates.split_off(limit.min(r.candidates.len()));
        let end = stage_end(Stage::Ranking, r.start, r.timeout);
        let (candidates, q, user) = (&r.candidates, &r.q, &r.user);
        let (ranked, stage) = self
            .call(Stage::Ranking, r.start, end, candidates.len() as u32, |budget| {
                let mut call = Call::new(RankRequest {
                    user_id: q.user_id.clone(),
                    user: user.clone(),
                    item_ids: candidates.iter().map(|c| c.id.clone()).collect(),
                    timeout_ms: budget.as_millis().clamp(1, u128::from(u32::MAX)) as u32,
                });
                call.set_timeout(budget);
                self.links.ranking.call(call)
            })
            .await;
        r.stages.push(stage);
        match ranked {
            Ok(answer) if answer.scores.len() == r.candidates.len() => {
                for (c, s) in r.candidates.iter_mut().zip(answer.scores) {
                    c.rank_score = Some(s);
                }
                // A total order (ties end on recall's position), so the unstable sort is stable.
                r.candidates.sort_unstable_by(|a, b| {
                    let score = |c: &Cand| c.rank_score.unwrap_or(0.0);
                    score(b)
                        .total_cmp(&score(a))
                        .then(a.recall_position.cmp(&b.recall_position))
                });
                r.model_version = Some(answer.model_version);
                r.realtime = answer.realtime;
            }
            Ok(answer) => {
                let why = format!(
                    "ranking: {} scores for {} candidates",
                    answer.scores.len(),
                    r.candidates.len()
                );
                r.failed(Stage::Ranking, why);
            }
            Err(e) => r.failed(Stage::Ranking, format!("ranking: {e}")),
        }
    }

    /// Rerank chooses `n` from the first [`RERANK_POOL`] candidates; without it, the first `n`
    /// are served as ranked.
    pub(super) async fn rerank(&self, r: &mut Request) {
        let end = stage_end(Stage::Rerank, r.start, r.timeout);
        let pool = r.candidates.len().min(RERANK_POOL);
        let (candidates, q) = (&r.candidates, &r.q);
        let (reranked, stage) = self
            .call(Stage::Rerank, r.start, end, pool as u32, |budget| {
                let mut call = Call::new(RerankRequest {
                    user_id: q.user_id.clone(),
                    items: candidates[..pool]
                        .iter()
                        .map(|c| Scored {
                            item_id: c.id.clone(),
                            score: c.score(),
                        })
                        .collect(),
                    k: q.n,
                });
                call.set_timeout(budget);
                self.links.rerank.call(call)
            })
            .await;
        r.stages.push(stage);
        match reranked {
            Ok(answer) => {
                let position: FxHashMap<&str, usize> = r.candidates[..pool]
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.id.as_str(), i))
                    .collect();
                let done = Reranked {
                    experiment: answer.experiment,
                    bucket: answer.bucket,
                    variant: answer.variant,
                    actions: answer.actions,
                };
                let rules = done.rules();
                r.served = answer
                    .items
                    .iter()
                    .filter_map(|s| position.get(s.item_id.as_str()).copied())
                    .map(|i| (i, rules.get(r.candidates[i].id.as_str()).map(|r| r.to_string())))
                    .collect();
                r.reranked = Some(done);
            }
            Err(e) => {
                r.failed(Stage::Rerank, format!("rerank: {e}"));
                r.served = (0..r.candidates.len().min(r.q.n as usize)).map(|i| (i, None)).collect();
            }
        }
    }

    /// Nothing to serve (the fallback level, or every stage came back empty): the
    /// precomputed list.
    pub(super) fn fallback(&self, r: &mut Request) {
        if r.level < Level::Fallback {
            r.degraded.push("no candidates: serving the precomputed list".into());
        }
        r.level = Level::Fallback;
        r.fallback = self.catalogue.load().hot.iter().take(r.q.n as usize).cloned().collect();
    }

    /// The answer: the served items with their lineage, the level and why.
    pub(super) fn respond(&self, r: &Request, latency: Duration) -> Recommendation {
        let catalogue = self.catalogue.load();
        let items = if r.fallback.is_empty() {
            r.served
                .iter()
                .map(|(i, rule)| {
                    let c = &r.candidates[*i];
                    ServedItem {
                        item_id: c.id.clone(),
                        title: catalogue.title(&c.id),
                        score: c.score(),
                        sources: c.sources.to_vec(),
                        ranked_position: Some(*i as u32),
                        rerank_rule: rule.clone(),
                    }
                })
                .collect()
        } else {
            r.fallback
                .iter()
                .map(|(id, s)| ServedItem {
                    item_id: id.clone(),
                    title: catalogue.title(id),
                    score: *s,
                    sources: Vec::new(),
                    ranked_position: None,
                    rerank_rule: None,
                })
                .collect()
        };
        let rerank = r.reranked.as_ref();
        Recommendation {
            request_id: r.request_id.clone(),
            trace_id: r.trace_id.clone(),
            items,
            level: r.level.name().to_string(),
            degraded: r.degraded.clone(),
            model_version: r.model_version.clone(),
            artifact_version: catalogue.artifact_version.clone(),
            experiment: rerank.map(|x| x.experiment.clone()),
            bucket: rerank.map(|x| x.bucket),
            variant: rerank.map(|x| x.variant.clone()),
            latency_us: latency.as_micros() as u64,
        }
    }

    // === calling a downstream ===

    /// Calls one downstream within its stage budget (until `end`), through its breaker, and
    /// returns the answer with the stage's record (offset from the request's `began`).
    async fn call<T, F>(
        &self,
        stage: Stage,
        began: Instant,
        end: Instant,
        items_in: u32,
        call: impl FnOnce(Duration) -> F,
    ) -> (Result<T, String>, StageRecord)
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
        let record = StageRecord {
            name: stage.name().to_string(),
            latency_us: took.as_micros() as u64,
            start_us: Some(start.saturating_duration_since(began).as_micros() as u64),
            items_in,
            items_out: 0,
            outcome: match &outcome {
                Ok(_) => "ok".into(),
                Err(e) => format!("failed: {e}"),
            },
        };
        (outcome, record)
    }
}

/// Candidates per recall channel (an item found by two channels counts for both), in order
/// of first appearance.
fn channel_counts(cands: &[Cand]) -> Vec<ChannelCount> {
    let mut counts: Vec<(recstack_core::recall::Channel, u32)> = Vec::new();
    for s in cands.iter().flat_map(|c| &c.sources) {
        match counts.iter_mut().find(|(channel, _)| *channel == s.channel) {
            Some((_, n)) => *n += 1,
            None => counts.push((s.channel, 1)),
        }
    }
    counts
        .into_iter()
        .map(|(channel, candidates)| ChannelCount {
            channel: channel.name().to_string(),
            candidates,
        })
        .collect()
}
