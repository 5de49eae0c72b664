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
use recstack_core::recall::{Channel, Source};
use recstack_trace_store::{ChannelCount, ConsumedRecord, Funnel, RecallCut, SeenWhen, SourceRecord, StageRecord, cut};
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use tonic::{Request as Call, Response, Status};

use super::Gateway;
use super::metrics::StageLabels;
use super::request::{Query, Recommendation, ServedItem};
use crate::features::UserFeatures;
use crate::features::proto::GetUserRequest;
use crate::link::newer_form_first;
use crate::ranking::service::proto::{PackedIds, RankRequest, RealtimeFeatures};
use crate::recall::packed::{UnpackError, unpack};
use crate::recall::proto::{ChannelStats, CutReason, RecallRequest, RecallResponse};
use crate::rerank::proto::{Action, RerankRequest, RerankResponse, Scored};

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
    /// Recall's candidates in its order, from its columns (asked for) or, from a recall
    /// service that predates them, its messages.
    fn all_recalled(answer: &mut RecallResponse) -> Result<Vec<Self>, UnpackError> {
        let recalled = |pos: usize, id: String, prior: f32, sources| Self {
            id,
            prior,
            sources,
            recall_position: Some(pos as u32),
            rank_score: None,
        };
        Ok(match &answer.packed {
            Some(packed) => unpack(packed)?
                .into_iter()
                .enumerate()
                .map(|(pos, c)| recalled(pos, c.item_id.to_string(), c.fused_score, c.sources))
                .collect(),
            None => std::mem::take(&mut answer.candidates)
                .into_iter()
                .enumerate()
                .map(|(pos, c)| {
                    let sources = c.sources.iter().filter_map(|s| s.lineage()).collect();
                    recalled(pos, c.item_id, c.fused_score, sources)
                })
                .collect(),
        })
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
    /// The W3C trace context every downstream call carries: the trace, and this request's
    /// span in the gateway.
    pub traceparent: String,
    /// The caller's span, from its `traceparent` (the parent of the gateway's).
    pub parent_span: Option<String>,
    pub start: Instant,
    pub timeout: Duration,
    pub level: Level,
    /// Why the level fell, one line per cause.
    pub degraded: Vec<String>,
    /// Traced in full: the trace keeps every candidate (debug requests and the sampled share).
    pub full: bool,
    /// Each stage, in order: those that ran (called a downstream or computed a list), and
    /// those skipped, with why.
    pub stages: Vec<StageRecord>,
    pub user: Option<UserFeatures>,
    /// Recall's candidates (or the hot list's), in the current order: recall's, then the
    /// model's once ranked. Only those the model may score; the rest are in `below_cut`.
    pub candidates: Vec<Cand>,
    /// Recalled but past the ranker's reach.
    pub below_cut: Vec<Cand>,
    /// What recall said beyond its candidates: the seen filter's removals and status, the
    /// history, what its quotas and merge cut, the artifact version it served.
    pub recall: RecallNotes,
    pub channels: Vec<ChannelCount>,
    /// Where the funnel cut, and the scores at each cut.
    pub funnel: Funnel,
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
    /// A request starting at `level`, for the reasons in `degraded`; `full`: traced in full.
    pub fn new(
        q: Query,
        ids: (String, String),
        (start, timeout): (Instant, Duration),
        (level, degraded): (Level, Vec<String>),
        full: bool,
    ) -> Self {
        Self {
            q,
            traceparent: crate::ops::traceparent_for(&ids.1, rand::random::<u64>().max(1)),
            parent_span: None,
            request_id: ids.0,
            trace_id: ids.1,
            start,
            timeout,
            level,
            degraded,
            full,
            stages: Vec::new(),
            user: None,
            candidates: Vec::new(),
            below_cut: Vec::new(),
            recall: RecallNotes::default(),
            channels: Vec::new(),
            funnel: Funnel::default(),
            model_version: None,
            realtime: None,
            reranked: None,
            served: Vec::new(),
            fallback: Vec::new(),
        }
    }

    /// Whether recall is asked to explain its cuts and the history: debug requests only (a
    /// second, deeper pass over every channel — sampled full traces must not slow the requests
    /// they sample).
    pub fn explains(&self) -> bool {
        self.q.debug
    }

    /// A stage failed: say why, and fall to the level its failure leaves.
    fn failed(&mut self, stage: Stage, why: String) {
        self.degraded.push(why);
        self.level = self.level.max(after_failure(stage));
    }

    /// Records a stage that did not run, and why.
    pub(super) fn skipped(&mut self, name: &str, why: String) {
        self.stages.push(StageRecord {
            name: name.to_string(),
            latency_us: 0,
            start_us: None,
            items_in: 0,
            items_out: 0,
            outcome: format!("skipped: {why}"),
        });
    }

    /// Records a stage the gateway ran itself (no downstream), from `began` until now.
    fn ran(&mut self, name: &str, began: Instant, items_in: u32) {
        self.stages.push(StageRecord {
            name: name.to_string(),
            latency_us: began.elapsed().as_micros() as u64,
            start_us: Some(began.saturating_duration_since(self.start).as_micros() as u64),
            items_in,
            items_out: 0,
            outcome: "ok".into(),
        });
    }
}

/// What recall answered besides its candidates (kept for the trace).
#[derive(Default)]
pub(super) struct RecallNotes {
    pub filtered_seen: Vec<String>,
    pub filtered_seen_when: Vec<SeenWhen>,
    /// `applied`, `empty`, `unavailable: …`; `None` when recall did not answer.
    pub seen_filter: Option<String>,
    pub consumed_total: Option<u32>,
    /// The user's real-time items recall read, newest first.
    pub realtime_history: Vec<String>,
    /// The history and the recent items the popular level left out (full traces).
    pub consumed: Vec<ConsumedRecord>,
    pub cuts: Vec<RecallCut>,
    pub artifact_version: Option<String>,
}

impl RecallNotes {
    /// Takes what the trace keeps of recall's answer (its candidates go elsewhere).
    fn from_answer(answer: &mut RecallResponse) -> Self {
        let source = |s: &crate::recall::proto::Source| SourceRecord {
            channel: s.channel_name().to_string(),
            score: s.score,
            rank: s.rank,
        };
        Self {
            filtered_seen: std::mem::take(&mut answer.filtered_seen),
            filtered_seen_when: answer
                .filtered_seen_when
                .iter()
                .map(|w| SeenWhen {
                    first_ms: w.first_ms,
                    last_ms: w.last_ms,
                })
                .collect(),
            seen_filter: Some(std::mem::take(&mut answer.seen_filter)).filter(|s| !s.is_empty()),
            consumed_total: Some(answer.consumed_total),
            realtime_history: std::mem::take(&mut answer.realtime_items),
            consumed: answer
                .consumed
                .drain(..)
                .map(|c| ConsumedRecord {
                    item_id: c.item_id,
                    // 0: not known (a replay's real-time items as recorded carry no times).
                    at_ms: (c.at_ms != 0).then_some(c.at_ms),
                    source: "history".into(),
                })
                .collect(),
            cuts: answer
                .cuts
                .drain(..)
                .map(|c| RecallCut {
                    reason: match c.reason() {
                        CutReason::Merge => cut::MERGE,
                        CutReason::ChannelOff => cut::CHANNEL_OFF,
                        _ => cut::QUOTA,
                    }
                    .to_string(),
                    sources: c.sources.iter().map(source).collect(),
                    position: (c.reason() == CutReason::Merge).then_some(c.position),
                    cut: (c.reason() == CutReason::Merge).then_some(c.cut),
                    item_id: c.item_id,
                })
                .collect(),
            artifact_version: Some(std::mem::take(&mut answer.artifact_version)),
        }
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
        let (level, start, q, explain, tp) = (r.level, r.start, &r.q, r.explains(), r.traceparent.as_str());
        let plan = self.level_plan(level);
        let features = self.call(Stage::Features, start, end, 0, |budget| {
            let mut call = Call::new(GetUserRequest {
                user_id: q.user_id.clone(),
            });
            call.set_timeout(budget);
            crate::ops::propagate(&mut call, tp);
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
                    explain,
                    seen_as_recorded: q.what_if.as_ref().and_then(|w| w.seen.clone()).unwrap_or_default(),
                    use_recorded_seen: q.what_if.as_ref().is_some_and(|w| w.seen.is_some()),
                    packed: true,
                    realtime_as_recorded: q
                        .what_if
                        .as_ref()
                        .and_then(|w| w.realtime_history.clone())
                        .unwrap_or_default(),
                    use_recorded_realtime: q.what_if.as_ref().is_some_and(|w| w.realtime_history.is_some()),
                });
                call.set_timeout(budget);
                crate::ops::propagate(&mut call, tp);
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
        let Some((recall, recall_stage)) = recall else {
            r.skipped("recall", format!("the request is at the {} level", level.name()));
            return;
        };
        r.stages.push(recall_stage);
        r.funnel.candidates = plan.candidates;
        // A failed call and an answer whose candidates do not read fail the stage alike.
        let recalled = recall.map_err(|e| e.to_string()).and_then(|mut answer| {
            r.recall = RecallNotes::from_answer(&mut answer);
            let candidates = Cand::all_recalled(&mut answer).map_err(|e| e.to_string())?;
            Ok((candidates, answer.channels))
        });
        match recalled {
            Ok((candidates, channels)) => {
                r.candidates = candidates;
                r.channels = channel_counts(&r.candidates, &channels, level);
            }
            Err(e) => {
                r.channels = plan_channels(plan, level, &format!("failed: recall {e}"));
                r.failed(Stage::Recall, format!("recall: {e}"));
            }
        }
    }

    /// The popular level: the hot list without what the user has recently seen.
    pub(super) fn popular(&self, r: &mut Request) {
        let began = Instant::now();
        let recent: HashSet<&str> = r
            .user
            .as_ref()
            .map(|u| u.recent_items.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let catalogue = self.catalogue.load();
        let mut left_out = Vec::new();
        let mut candidates = Vec::with_capacity(POPULAR_POOL);
        for (id, s) in catalogue.hot.iter() {
            if candidates.len() == POPULAR_POOL {
                break;
            }
            if recent.contains(id.as_str()) {
                left_out.push(id);
                continue;
            }
            candidates.push(Cand {
                id: id.clone(),
                prior: *s,
                sources: SmallVec::new(),
                recall_position: Some(candidates.len() as u32),
                rank_score: None,
            });
        }
        if r.full {
            r.recall.consumed = left_out
                .into_iter()
                .map(|id| ConsumedRecord {
                    item_id: id.clone(),
                    at_ms: None,
                    source: "recent".into(),
                })
                .collect();
        }
        r.candidates = candidates;
        r.funnel.candidates = POPULAR_POOL as u32;
        r.ran("popular", began, catalogue.hot.len() as u32);
    }

    /// A what-if's forced items: put at the head of the candidates, within the model's reach —
    /// moved there when recall had them lower, added without sources when it did not. They are
    /// then ranked and reranked like any other: served only if they earn it.
    pub(super) fn force_in(&self, r: &mut Request) {
        let Some(forced) =
            r.q.what_if
                .as_ref()
                .map(|w| w.force_items.clone())
                .filter(|f| !f.is_empty())
        else {
            return;
        };
        let began = Instant::now();
        let prior = r.candidates.first().map_or(1.0, |c| c.prior);
        let mut head = Vec::with_capacity(forced.len() + r.candidates.len());
        for id in forced {
            match r.candidates.iter().position(|c| c.id == id) {
                Some(i) => head.push(r.candidates.remove(i)),
                None => head.push(Cand {
                    id,
                    prior,
                    sources: SmallVec::new(),
                    recall_position: None,
                    rank_score: None,
                }),
            }
        }
        let count = head.len() as u32;
        head.append(&mut r.candidates);
        r.candidates = head;
        r.ran("what_if", began, count);
    }

    /// The model scores the first candidates in recall's order (as many as the level's plan
    /// lets it); they are reordered by score, ties keeping recall's order.
    pub(super) async fn rank(&self, r: &mut Request) {
        let limit = self.level_plan(r.level).rank_limit;
        r.below_cut = r.candidates.split_off(limit.min(r.candidates.len()));
        r.funnel.rank_limit = limit as u32;
        r.funnel.rank_cut_prior = r.candidates.last().map(|c| c.prior);
        let end = stage_end(Stage::Ranking, r.start, r.timeout);
        let (candidates, q, user, tp) = (&r.candidates, &r.q, &r.user, r.traceparent.as_str());
        let links = &self.links;
        // The ids go as columns and the lineage sparse; `packed: false` is the form every
        // ranking pod reads.
        let request = |packed: bool, budget: Duration| {
            // The newer form's ranks are sparse too (a pod that reads one reads the other).
            let (fused_scores, channel_ranks) =
                crate::ranking::service::lineage_fields(candidates.iter().map(|c| (c.prior, &c.sources[..])), packed);
            let ids = candidates.iter().map(|c| c.id.as_str());
            let (item_ids, packed_items) = if packed {
                let (ids, ends) = crate::id_columns::pack(ids);
                (Vec::new(), Some(PackedIds { ids, ends }))
            } else {
                (ids.map(str::to_string).collect(), None)
            };
            let mut call = Call::new(RankRequest {
                user_id: q.user_id.clone(),
                user: user.clone(),
                item_ids,
                timeout_ms: budget.as_millis().clamp(1, u128::from(u32::MAX)) as u32,
                model: q.what_if.as_ref().and_then(|w| w.model.clone()).unwrap_or_default(),
                fused_scores,
                channel_ranks,
                packed_items,
            });
            call.set_timeout(budget);
            crate::ops::propagate(&mut call, tp);
            call
        };
        let (ranked, stage) = self
            .call(Stage::Ranking, r.start, end, candidates.len() as u32, |budget| {
                // A ranking pod from before `packed_items` is asked again with a string per id.
                let older = |a: &_| crate::ranking::service::predates_packed_items(a, candidates.len());
                newer_form_first(budget, |packed, b| links.ranking.call(request(packed, b)), older)
            })
            .await;
        r.stages.push(stage);
        match ranked {
            Ok(answer) if answer.scores.len() == r.candidates.len() => {
                for (c, s) in r.candidates.iter_mut().zip(answer.scores) {
                    c.rank_score = Some(s);
                }
                r.candidates = by_rank_score(std::mem::take(&mut r.candidates));
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
        r.funnel.rerank_pool = pool as u32;
        r.funnel.pool_cut_score = pool.checked_sub(1).map(|i| r.candidates[i].score());
        let (candidates, q, tp, full) = (&r.candidates, &r.q, r.traceparent.as_str(), r.full);
        let links = &self.links;
        // The items go as columns; `packed: false` is the form every rerank pod reads.
        let request = |packed: bool, budget: Duration| {
            let pooled = &candidates[..pool];
            let (items, (packed_ids, packed_id_ends), packed_scores) = if packed {
                let columns = crate::id_columns::pack(pooled.iter().map(|c| c.id.as_str()));
                (Vec::new(), columns, pooled.iter().map(Cand::score).collect())
            } else {
                let items = pooled
                    .iter()
                    .map(|c| Scored {
                        item_id: c.id.clone(),
                        score: c.score(),
                    })
                    .collect();
                (items, Default::default(), Vec::new())
            };
            let mut call = Call::new(RerankRequest {
                user_id: q.user_id.clone(),
                items,
                k: q.n,
                block: q.what_if.as_ref().map(|w| w.block.clone()).unwrap_or_default(),
                mmr_lambda: q.what_if.as_ref().and_then(|w| w.mmr_lambda),
                pins: q
                    .what_if
                    .iter()
                    .flat_map(|w| &w.pins)
                    .map(|p| crate::rerank::proto::Pin {
                        item_id: p.item_id.clone(),
                        position: p.position,
                    })
                    .collect(),
                packed_ids,
                packed_id_ends,
                packed_scores,
                // The left-out items' actions are kept only by a full trace.
                served_actions_only: !full,
            });
            call.set_timeout(budget);
            crate::ops::propagate(&mut call, tp);
            call
        };
        let (reranked, stage) = self
            .call(Stage::Rerank, r.start, end, pool as u32, |budget| {
                // A rerank pod from before the columns answered from no items, without
                // `packed_read`: it is asked again with a message per item.
                let older = |a: &Result<Response<RerankResponse>, Status>| {
                    pool > 0 && matches!(a, Ok(a) if !a.get_ref().packed_read)
                };
                newer_form_first(budget, |packed, b| links.rerank.call(request(packed, b)), older)
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
        r.funnel.served_cut_score = r
            .served
            .iter()
            .map(|(i, _)| r.candidates[*i].score())
            .min_by(f32::total_cmp);
    }

    /// Nothing to serve (the fallback level, or every stage came back empty): the
    /// precomputed list.
    pub(super) fn fallback(&self, r: &mut Request) {
        let began = Instant::now();
        if r.level < Level::Fallback {
            r.degraded.push("no candidates: serving the precomputed list".into());
        }
        r.level = Level::Fallback;
        let catalogue = self.catalogue.load();
        r.fallback = catalogue.hot.iter().take(r.q.n as usize).cloned().collect();
        r.ran("fallback", began, catalogue.hot.len() as u32);
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
            // The version recall served from (the catalogue's may lag or lead it during a swap).
            artifact_version: r
                .recall
                .artifact_version
                .clone()
                .unwrap_or_else(|| catalogue.artifact_version.clone()),
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

/// Candidates best first by their rank scores (none: 0), ties by recall's position, then by
/// their order here: a total order. The keys are sorted, then each candidate moved once (a
/// candidate is ~100 bytes, a key 24; a sort moves each element ~log2(500) ≈ 9 times).
fn by_rank_score(cands: Vec<Cand>) -> Vec<Cand> {
    let mut keys: Vec<(f32, Option<u32>, usize)> = cands
        .iter()
        .enumerate()
        .map(|(i, c)| (c.rank_score.unwrap_or(0.0), c.recall_position, i))
        .collect();
    keys.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut slots: Vec<Option<Cand>> = cands.into_iter().map(Some).collect();
    keys.iter().filter_map(|&(_, _, i)| slots[i].take()).collect()
}

/// Candidates per recall channel (an item found by two channels counts for both), in order
/// of first appearance, then the channels that gave none: each with its quota and whether it
/// ran (`ok`, `empty`) or was switched off at `level`.
fn channel_counts(cands: &[Cand], stats: &[ChannelStats], level: Level) -> Vec<ChannelCount> {
    // Counted by the channel's index (~1,500 sources a request), named once at the end.
    let mut by_channel = [0u32; Channel::ALL.len()];
    let mut first_seen: SmallVec<[Channel; 8]> = SmallVec::new();
    for s in cands.iter().flat_map(|c| &c.sources) {
        let n = &mut by_channel[s.channel.index()];
        if *n == 0 {
            first_seen.push(s.channel);
        }
        *n += 1;
    }
    let mut counts: Vec<(&str, u32)> = first_seen.iter().map(|c| (c.name(), by_channel[c.index()])).collect();
    for s in stats {
        if counts.iter().all(|(c, _)| *c != s.channel) {
            counts.push((s.channel.as_str(), 0));
        }
    }
    counts
        .into_iter()
        .map(|(channel, candidates)| {
            let stat = stats.iter().find(|s| s.channel == channel);
            let outcome = match stat {
                Some(s) if s.quota == 0 => format!("skipped: switched off at the {} level", level.name()),
                Some(s) if s.returned == 0 => "empty".to_string(),
                _ => "ok".to_string(),
            };
            ChannelCount {
                channel: channel.to_string(),
                candidates,
                quota: stat.map(|s| s.quota),
                outcome,
            }
        })
        .collect()
}

/// The channels `plan` would have run at `level`, each with `outcome` (recall failed: none
/// answered).
fn plan_channels(plan: &LevelPlan, level: Level, outcome: &str) -> Vec<ChannelCount> {
    recstack_core::recall::Channel::ALL
        .iter()
        .map(|c| {
            let quota = plan
                .quotas
                .get(c.name())
                .copied()
                .unwrap_or(recstack_core::recall::DEFAULT_QUOTA as u32);
            ChannelCount {
                channel: c.name().to_string(),
                candidates: 0,
                quota: Some(quota),
                outcome: if quota == 0 {
                    format!("skipped: switched off at the {} level", level.name())
                } else {
                    outcome.to_string()
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recall::packed::{Packer, to_messages};

    fn packed() -> crate::recall::proto::PackedCandidates {
        let mut p = Packer::default();
        let source = |channel, rank| Source {
            channel,
            score: 0.5,
            rank,
        };
        p.push("a", 0.9, &[source(Channel::ItemCf, 1), source(Channel::Hot, 3)]);
        p.push("b", 0.4, &[source(Channel::Cooc, 2)]);
        p.finish()
    }

    fn read(answer: &mut RecallResponse) -> Vec<(String, f32, Vec<Source>, Option<u32>)> {
        Cand::all_recalled(answer)
            .unwrap()
            .into_iter()
            .map(|c| (c.id, c.prior, c.sources.to_vec(), c.recall_position))
            .collect()
    }

    #[test]
    fn candidates_read_the_same_from_columns_or_from_an_older_recalls_messages() {
        let mut columns = RecallResponse {
            packed: Some(packed()),
            ..Default::default()
        };
        // A recall service that predates `packed` answers messages.
        let mut messages = RecallResponse {
            candidates: to_messages(&packed()).unwrap(),
            ..Default::default()
        };
        let from_columns = read(&mut columns);
        assert_eq!(from_columns, read(&mut messages));
        assert_eq!(from_columns[1].0, "b");
        assert_eq!(from_columns[1].3, Some(1));
        assert_eq!(from_columns[0].2.len(), 2);
    }

    #[test]
    fn columns_that_disagree_fail_recall_naming_the_field() {
        let mut bad = packed();
        bad.fused_scores.pop();
        let mut answer = RecallResponse {
            packed: Some(bad),
            ..Default::default()
        };
        let err = Cand::all_recalled(&mut answer).err().unwrap().to_string();
        assert_eq!(err, "packed.fused_scores has 1 entries for 2 ids");
    }

    fn cand(channels: &[Channel]) -> Cand {
        Cand {
            id: "i".into(),
            prior: 0.0,
            sources: channels
                .iter()
                .map(|&channel| Source {
                    channel,
                    score: 1.0,
                    rank: 1,
                })
                .collect(),
            recall_position: None,
            rank_score: None,
        }
    }

    #[test]
    fn candidates_sort_by_rank_score_then_recall_position_then_arrival() {
        let c = |id: &str, score: Option<f32>, pos: Option<u32>| Cand {
            id: id.into(),
            rank_score: score,
            recall_position: pos,
            ..cand(&[])
        };
        let cands = vec![
            c("a", Some(0.5), Some(3)),
            c("b", Some(0.9), Some(7)),
            c("c", Some(0.5), Some(1)),
            c("d", None, Some(0)),
            c("e", Some(-0.1), Some(2)),
            c("f", Some(0.5), None),
            c("g", Some(0.5), None),
            c("h", Some(f32::NAN), Some(9)),
        ];
        let ids: Vec<String> = by_rank_score(cands).into_iter().map(|c| c.id).collect();
        // NaN sorts above every number (`total_cmp`); an absent score reads as 0; an absent
        // recall position before any; equal keys keep their order.
        assert_eq!(ids, ["h", "b", "f", "g", "c", "a", "d", "e"]);
    }

    fn stats(channel: Channel, returned: u32, quota: u32) -> ChannelStats {
        ChannelStats {
            channel: channel.name().into(),
            returned,
            latency_us: 0,
            quota,
        }
    }

    #[test]
    fn channel_counts_count_each_source_in_order_of_first_appearance_then_the_idle_channels() {
        use Channel::*;
        let cands = [cand(&[Cooc]), cand(&[Hot, Cooc]), cand(&[Vector, Cooc]), cand(&[Hot])];
        let stats = [
            stats(Hot, 2, 200),
            stats(Als, 0, 200),
            stats(Cooc, 3, 200),
            stats(Tag, 0, 0),
            stats(Vector, 1, 200),
        ];
        let got: Vec<(String, u32, Option<u32>, String)> = channel_counts(&cands, &stats, Level::Reduced)
            .into_iter()
            .map(|c| (c.channel, c.candidates, c.quota, c.outcome))
            .collect();
        let want = |c: &str, n, q: Option<u32>, o: &str| (c.to_string(), n, q, o.to_string());
        assert_eq!(
            got,
            vec![
                want("cooc", 3, Some(200), "ok"),
                want("hot", 2, Some(200), "ok"),
                want("vector", 1, Some(200), "ok"),
                want("als", 0, Some(200), "empty"),
                want("tag", 0, Some(0), "skipped: switched off at the reduced level"),
            ]
        );
        // A channel that gave candidates but no stats (a recall that predates them).
        let got = channel_counts(&[cand(&[ItemCf])], &[], Level::Full);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].channel.as_str(), got[0].candidates, got[0].quota),
            ("item_cf", 1, None)
        );
        assert_eq!(got[0].outcome, "ok");
    }
}
