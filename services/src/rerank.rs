//! The rerank gRPC service: the pure rules of [`super::rerank`] over item genres and release
//! years from the artifacts, with an A/B experiment on the MMR trade-off.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::registry::Registry;
use tonic::{Request, Response, Status};

use crate::features::Snapshot;
use crate::id_columns;
use crate::ops::{Buckets, MetricsRegistry, RpcMetrics};
use recstack_core::rerank::{Candidate, RerankConfig, ab_bucket, rerank};

/// Generated gRPC types (`services/proto/rerank.proto`).
pub mod proto {
    tonic::include_proto!("recstack.rerank.v1");
}

use proto::rerank_server::Rerank;
use proto::{Action, RerankRequest, RerankResponse, Scored};

pub const MAX_ITEMS: usize = 5000;
/// Most pins one request may add (a what-if replay).
pub const MAX_REQUEST_PINS: usize = 20;
pub const MAX_K: usize = 200;

/// An A/B experiment: `traffic_percent` of users (by a stable hash) are in it, split by another
/// stable hash into one bucket per variant; each variant sets the MMR trade-off. Users outside
/// get the rules' default.
#[derive(Clone, Debug, PartialEq)]
pub struct Experiment {
    pub name: String,
    /// (variant name, MMR lambda), one per bucket.
    pub variants: Vec<(String, f32)>,
    /// Percent of users in the experiment, 0–100.
    pub traffic_percent: u32,
}

impl Default for Experiment {
    /// The local stack's experiment (`recstack up`, and `serve rerank` without a runtime
    /// config): half the users at the default λ, half at the next more diverse one the eval
    /// priced.
    fn default() -> Self {
        use recstack_core::rerank::{DEFAULT_MMR_LAMBDA, DIVERSE_MMR_LAMBDA};
        Self {
            name: "mmr-lambda".into(),
            variants: vec![
                ("control".into(), DEFAULT_MMR_LAMBDA),
                ("diverse".into(), DIVERSE_MMR_LAMBDA),
            ],
            traffic_percent: 100,
        }
    }
}

impl Experiment {
    /// The stack's experiment, or none when it sets none or switched it off.
    pub fn from_spec(spec: Option<&recstack_crds::ExperimentSpec>) -> Option<Self> {
        let spec = spec.filter(|e| e.enabled && e.traffic_percent > 0 && !e.variants.is_empty())?;
        Some(Self {
            name: spec.name.clone(),
            variants: spec
                .variants
                .iter()
                .map(|v| (v.name.clone(), v.mmr_lambda.clamp(0.0, 1.0) as f32))
                .collect(),
            traffic_percent: spec.traffic_percent.clamp(0, 100) as u32,
        })
    }

    /// The user's (bucket, variant, lambda), or `None` when the user is not in the experiment.
    pub fn assign(&self, user: &str) -> Option<(u32, &str, f32)> {
        if self.variants.is_empty() || ab_bucket(user, &format!("{}/traffic", self.name), 100) >= self.traffic_percent {
            return None;
        }
        let bucket = ab_bucket(user, &self.name, self.variants.len() as u32);
        let (name, lambda) = self.variants.get(bucket as usize)?;
        Some((bucket, name.as_str(), *lambda))
    }
}

/// What rerank applies to every list: the business rules and the experiment, swapped whole
/// when the stack changes them.
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    pub config: RerankConfig,
    pub experiment: Option<Experiment>,
}

impl Rules {
    /// From the runtime config's `rerank` section, over `base` (k, scatter and the default
    /// lambda stay `base`'s; blocks and pins are added to `base`'s).
    pub fn from_settings(base: &RerankConfig, settings: &recstack_crds::runtime::RerankSettings) -> Self {
        let r = &settings.rules;
        let mut config = base.clone();
        config.blocked.extend(r.block.iter().cloned());
        config
            .pins
            .extend(r.pin.iter().map(|p| (p.item.clone(), p.position.max(0) as usize)));
        config.fresh_boost = r.fresh_boost.clamp(0.0, 10.0) as f32;
        Self {
            config,
            experiment: Experiment::from_spec(settings.experiment.as_ref()),
        }
    }
}

pub struct RerankMetrics {
    pub registry: Registry,
    pub rpc: RpcMetrics,
}

impl Default for RerankMetrics {
    fn default() -> Self {
        let mut m = MetricsRegistry::new("recstack_rerank");
        let rpc = RpcMetrics::register(&mut m, "Rerank", Buckets::exponential(0.000_01, 2.0, 18));
        Self {
            rpc,
            registry: m.finish(),
        }
    }
}

impl RerankMetrics {
    pub fn encode(&self) -> String {
        crate::ops::encode(&self.registry)
    }
}

pub struct RerankService {
    /// The item table, swapped with each new artifact version.
    pub items: arc_swap::ArcSwap<Snapshot>,
    /// Rules for everyone (k and lambda are set per request and per bucket) and the
    /// experiment, swapped whole when the stack changes them.
    pub rules: arc_swap::ArcSwap<Rules>,
    /// Items released in this year or later are fresh.
    pub fresh_since: std::sync::atomic::AtomicU32,
    pub metrics: Arc<RerankMetrics>,
}

/// Items from the newest two release years are fresh.
fn fresh_since(items: &Snapshot) -> u32 {
    items
        .items()
        .map(|i| i.year)
        .max()
        .unwrap_or(0)
        .saturating_sub(1)
        .max(1)
}

impl RerankService {
    /// Fresh items: those from the newest two release years in the catalogue.
    pub fn new(
        items: Arc<Snapshot>,
        config: RerankConfig,
        experiment: Experiment,
        metrics: Arc<RerankMetrics>,
    ) -> Self {
        let experiment = Some(experiment).filter(|e| !e.variants.is_empty());
        Self::with_rules(items, Rules { config, experiment }, metrics)
    }

    pub fn with_rules(items: Arc<Snapshot>, rules: Rules, metrics: Arc<RerankMetrics>) -> Self {
        Self {
            fresh_since: std::sync::atomic::AtomicU32::new(fresh_since(&items)),
            items: arc_swap::ArcSwap::new(items),
            rules: arc_swap::ArcSwap::from_pointee(rules),
            metrics,
        }
    }

    /// Applies new business rules and experiment from the next request on; returns whether
    /// they differ from the serving ones.
    pub fn swap_rules(&self, rules: Rules) -> bool {
        if **self.rules.load() == rules {
            return false;
        }
        tracing::info!(
            blocked = rules.config.blocked.len(),
            pins = rules.config.pins.len(),
            experiment = rules.experiment.as_ref().map_or("none", |e| e.name.as_str()),
            "rerank: new business rules"
        );
        self.rules.store(Arc::new(rules));
        true
    }

    /// Serves a new artifact version's item table from the next request on.
    pub fn swap_items(&self, items: Arc<Snapshot>) {
        self.fresh_since
            .store(fresh_since(&items), std::sync::atomic::Ordering::Relaxed);
        self.items.store(items);
    }

    pub fn rerank(&self, req: &RerankRequest) -> Result<RerankResponse, Status> {
        if req.user_id.trim().is_empty() {
            return Err(Status::invalid_argument("user_id is required"));
        }
        let (scored, packed_read) = request_items(req).map_err(Status::invalid_argument)?;
        if scored.len() > MAX_ITEMS {
            let field = if packed_read { "packed_id_ends" } else { "items" };
            return Err(Status::invalid_argument(format!(
                "{field} has {} entries; at most {MAX_ITEMS}",
                scored.len()
            )));
        }
        let k = match req.k as usize {
            0 => 20,
            k if k > MAX_K => return Err(Status::invalid_argument(format!("k is {k}; at most {MAX_K}"))),
            k => k,
        };
        if let Some(bad) = scored.iter().position(|(_, score)| !score.is_finite()) {
            let field = if packed_read {
                format!("packed_scores[{bad}]")
            } else {
                format!("items[{bad}].score")
            };
            return Err(Status::invalid_argument(format!("{field} is not a finite number")));
        }
        let rules = self.rules.load();
        let (bucket, variant, lambda) = match rules.experiment.as_ref().and_then(|e| e.assign(&req.user_id)) {
            Some((bucket, name, lambda)) => (bucket, name.to_string(), lambda),
            None => (0, "control".to_string(), rules.config.mmr_lambda),
        };
        if req.block.len() > MAX_ITEMS {
            return Err(Status::invalid_argument(format!(
                "block has {} entries; at most {MAX_ITEMS}",
                req.block.len()
            )));
        }
        if let Some(l) = req.mmr_lambda
            && !(0.0..=1.0).contains(&l)
        {
            return Err(Status::invalid_argument(format!("mmr_lambda is {l}; 0.0 to 1.0")));
        }
        if req.pins.len() > MAX_REQUEST_PINS {
            return Err(Status::invalid_argument(format!(
                "pins has {} entries; at most {MAX_REQUEST_PINS}",
                req.pins.len()
            )));
        }
        let mut cfg = RerankConfig {
            k,
            mmr_lambda: req.mmr_lambda.unwrap_or(lambda),
            ..rules.config.clone()
        };
        cfg.blocked.extend(req.block.iter().cloned());
        if !req.pins.is_empty() {
            // The request's pins first; a configured pin of the same item gives way.
            let mut pins: Vec<(String, usize)> = req
                .pins
                .iter()
                .map(|p| (p.item_id.clone(), p.position as usize))
                .collect();
            let configured: Vec<(String, usize)> = cfg
                .pins
                .iter()
                .filter(|(id, _)| !pins.iter().any(|(p, _)| p == id))
                .cloned()
                .collect();
            pins.extend(configured);
            cfg.pins = pins;
        }
        let items = self.items.load();
        let fresh = self.fresh_since.load(std::sync::atomic::Ordering::Relaxed);
        let ranked: Vec<Candidate> = scored
            .iter()
            .map(|&(id, score)| {
                let item = items.item(id);
                Candidate {
                    id,
                    score,
                    genres: item.map_or(&[][..], |i| &i.genres),
                    fresh: item.is_some_and(|i| i.year >= fresh),
                }
            })
            .collect();
        let (served, actions) = rerank(&ranked, &cfg);
        Ok(RerankResponse {
            items: served
                .into_iter()
                .map(|c| Scored {
                    item_id: c.id.to_string(),
                    score: c.score,
                })
                .collect(),
            actions: actions
                .into_iter()
                .filter(|a| a.after.is_some() || !req.served_actions_only)
                .map(|a| Action {
                    item_id: a.id.to_string(),
                    before: a.before as u32,
                    after: a.after.map_or(-1, |p| p as i32),
                    rule: a.rule.name().to_string(),
                    displaced_by: a.displaced_by.unwrap_or_default().to_string(),
                })
                .collect(),
            experiment: rules.experiment.as_ref().map(|e| e.name.clone()).unwrap_or_default(),
            bucket,
            variant,
            packed_read,
        })
    }
}

/// The names of [`RerankRequest`]'s id columns, for errors.
const PACKED_FIELDS: id_columns::Fields = id_columns::Fields {
    ids: "packed_ids",
    ends: "packed_id_ends",
};

/// A request's items with their scores, best first, borrowed from the request.
pub type ScoredIds<'a> = Vec<(&'a str, f32)>;

/// A request's items with their scores, from `items` or from the columns, and whether they
/// came from the columns; the error names the field that does not fit.
pub fn request_items(req: &RerankRequest) -> Result<(ScoredIds<'_>, bool), String> {
    let names = ("items", "packed_ids");
    let strings_set = !req.items.is_empty();
    let columns =
        id_columns::instead_of_strings(&req.packed_ids, &req.packed_id_ends, strings_set, PACKED_FIELDS, names)?;
    let Some(ids) = columns else {
        if !req.packed_scores.is_empty() {
            return Err("packed_scores is set without packed_ids".into());
        }
        return Ok((req.items.iter().map(|s| (s.item_id.as_str(), s.score)).collect(), false));
    };
    if ids.len() != req.packed_scores.len() {
        return Err(format!(
            "packed_scores has {} entries for {} ids",
            req.packed_scores.len(),
            ids.len()
        ));
    }
    Ok((ids.into_iter().zip(req.packed_scores.iter().copied()).collect(), true))
}

#[tonic::async_trait]
impl Rerank for RerankService {
    async fn rerank(&self, request: Request<RerankRequest>) -> Result<Response<RerankResponse>, Status> {
        let start = Instant::now();
        self.metrics.rpc.joined("rerank", request.metadata());
        let result = RerankService::rerank(self, request.get_ref());
        self.metrics.rpc.record("rerank", start, &result);
        result.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::proto::ItemFeatures;
    use proto::Pin;

    fn service(config: RerankConfig) -> RerankService {
        let items = (0..30)
            .map(|i| ItemFeatures {
                item_id: format!("i{i}"),
                ratings: 10,
                mean_rating: 7.0,
                hot_score: 1.0,
                year: if i == 1 { 2013 } else { 1990 },
                genres: vec![["Drama", "Comedy", "Horror"][i % 3].to_string()],
                ..ItemFeatures::default()
            })
            .collect();
        let snapshot = Arc::new(Snapshot::from_parts(Vec::new(), items));
        RerankService::new(
            snapshot,
            config,
            Experiment::default(),
            Arc::new(RerankMetrics::default()),
        )
    }

    fn request(user: &str, k: u32) -> RerankRequest {
        RerankRequest {
            user_id: user.into(),
            items: (0..30)
                .map(|i| Scored {
                    item_id: format!("i{i}"),
                    score: 1.0 - i as f32 / 100.0,
                })
                .collect(),
            k,
            ..Default::default()
        }
    }

    #[test]
    fn a_request_may_pin_and_set_the_mmr_trade_off_for_itself() {
        let svc = service(RerankConfig {
            pins: vec![("i25".into(), 1), ("i20".into(), 2)],
            ..RerankConfig::default()
        });
        let mut req = request("u1", 10);
        req.pins = vec![Pin {
            item_id: "i20".into(),
            position: 0,
        }];
        req.mmr_lambda = Some(1.0);
        let r = svc.rerank(&req).unwrap();
        assert_eq!(
            r.items[0].item_id, "i20",
            "the request's pin wins over the configured one"
        );
        assert_eq!(r.items[1].item_id, "i25", "the other configured pin holds");
        // λ = 1: pure score — MMR serves nothing out of score order (it only leaves the rest
        // out); at λ = 0 it does, and the lists differ.
        let moved_by_mmr = |r: &RerankResponse| r.actions.iter().any(|a| a.rule == "mmr" && a.after >= 0);
        assert!(!moved_by_mmr(&r), "{:?}", r.actions);
        let mut diverse = req.clone();
        diverse.mmr_lambda = Some(0.0);
        let d = svc.rerank(&diverse).unwrap();
        assert!(moved_by_mmr(&d), "{:?}", d.actions);
        assert_ne!(d.items, r.items);
        let mut bad = request("u1", 10);
        bad.mmr_lambda = Some(1.5);
        assert!(svc.rerank(&bad).unwrap_err().message().starts_with("mmr_lambda is 1.5"));
        let mut many = request("u1", 10);
        many.pins = vec![Pin::default(); MAX_REQUEST_PINS + 1];
        assert!(svc.rerank(&many).unwrap_err().message().starts_with("pins has"));
    }

    #[test]
    fn a_request_may_block_more_for_itself_only() {
        let svc = service(RerankConfig {
            blocked: ["i0".to_string()].into_iter().collect(),
            ..RerankConfig::default()
        });
        let mut req = request("u1", 10);
        req.block = vec!["i2".into(), "i3".into()];
        let r = svc.rerank(&req).unwrap();
        assert!(
            r.items
                .iter()
                .all(|s| !["i0", "i2", "i3"].contains(&s.item_id.as_str()))
        );
        for id in ["i0", "i2", "i3"] {
            let a = r.actions.iter().find(|a| a.item_id == id).unwrap();
            assert_eq!((a.after, a.rule.as_str()), (-1, "blocked"), "{id}");
        }
        // The next request has only the configured list.
        let r = svc.rerank(&request("u1", 10)).unwrap();
        assert!(r.items.iter().any(|s| s.item_id == "i2"));
        let mut too_many = request("u1", 10);
        too_many.block = vec!["x".into(); MAX_ITEMS + 1];
        assert!(svc.rerank(&too_many).unwrap_err().message().starts_with("block has"));
    }

    #[test]
    fn business_rules_and_the_bucket_are_applied_and_recorded() {
        let svc = service(RerankConfig {
            blocked: ["i0".to_string()].into_iter().collect(),
            pins: vec![("i20".into(), 0)],
            ..RerankConfig::default()
        });
        let r = svc.rerank(&request("u1", 10)).unwrap();
        assert_eq!(r.items.len(), 10);
        assert_eq!(r.items[0].item_id, "i20", "pinned first");
        assert!(r.items.iter().all(|s| s.item_id != "i0"), "blocked");
        let action = |id: &str| r.actions.iter().find(|a| a.item_id == id).unwrap();
        assert_eq!((action("i0").after, action("i0").rule.as_str()), (-1, "blocked"));
        assert_eq!((action("i20").after, action("i20").rule.as_str()), (0, "pin"));
        assert_eq!(action("i1").rule, "fresh_boost", "the newest year is fresh");
        assert_eq!(r.experiment, "mmr-lambda");
        assert_eq!(r.bucket, ab_bucket("u1", "mmr-lambda", 2));
        assert_eq!(r.variant, ["control", "diverse"][r.bucket as usize]);
    }

    /// Asked for the served items' actions only, the answer is the full answer less the left-out
    /// items' actions (blocked, MMR's): the same items, bucket and order.
    #[test]
    fn served_actions_only_leaves_out_the_left_out_items() {
        let svc = service(RerankConfig {
            blocked: ["i0".to_string()].into_iter().collect(),
            pins: vec![("i20".into(), 0)],
            mmr_lambda: 0.3,
            ..RerankConfig::default()
        });
        let whole = svc.rerank(&request("u1", 10)).unwrap();
        let summary = svc
            .rerank(&RerankRequest {
                served_actions_only: true,
                ..request("u1", 10)
            })
            .unwrap();
        let served: Vec<Action> = whole.actions.iter().filter(|a| a.after >= 0).cloned().collect();
        assert!(
            whole.actions.iter().any(|a| a.after < 0 && a.rule == "mmr")
                && whole.actions.iter().any(|a| a.after < 0 && a.rule == "blocked"),
            "the whole answer lists the left-out items: {:?}",
            whole.actions
        );
        assert!(served.iter().any(|a| a.rule == "pin"), "{served:?}");
        assert_eq!(summary.actions, served);
        assert_eq!(summary.items, whole.items);
        assert_eq!(
            (summary.bucket, &summary.variant, &summary.experiment),
            (whole.bucket, &whole.variant, &whole.experiment)
        );
    }

    #[test]
    fn bad_requests_name_the_field() {
        let svc = service(RerankConfig::default());
        let e = svc.rerank(&request("", 10)).unwrap_err();
        assert!(e.message().starts_with("user_id"), "{}", e.message());
        let e = svc.rerank(&request("u", 500)).unwrap_err();
        assert!(e.message().starts_with("k is 500"), "{}", e.message());
        let mut r = request("u", 10);
        r.items[3].score = f32::NAN;
        let e = svc.rerank(&r).unwrap_err();
        assert_eq!(e.message(), "items[3].score is not a finite number");
    }

    /// The items as columns rerank exactly as the messages do, and the answer says it read
    /// them; what a pod from before the columns reads of such a request (no items) does not.
    /// Columns that do not fit are refused, naming the field.
    #[test]
    fn packed_items_rerank_as_messages_and_say_so() {
        let svc = service(RerankConfig {
            pins: vec![("i25".into(), 1)],
            ..RerankConfig::default()
        });
        let messages = request("u1", 10);
        let (packed_ids, packed_id_ends) = id_columns::pack(messages.items.iter().map(|s| s.item_id.as_str()));
        let packed = RerankRequest {
            items: Vec::new(),
            packed_ids,
            packed_id_ends,
            packed_scores: messages.items.iter().map(|s| s.score).collect(),
            ..messages.clone()
        };
        let (by_messages, by_columns) = (svc.rerank(&messages).unwrap(), svc.rerank(&packed).unwrap());
        assert_eq!(by_columns.items.len(), 10);
        assert_eq!(by_columns.items, by_messages.items);
        assert_eq!(by_columns.actions, by_messages.actions);
        assert!(by_columns.packed_read && !by_messages.packed_read);
        // An older pod drops the fields it does not know: it reranks nothing (here only the
        // configured pin could be served), and its answer does not say it read columns.
        let as_old_pod_reads = RerankRequest {
            packed_ids: Vec::new(),
            packed_id_ends: Vec::new(),
            packed_scores: Vec::new(),
            ..packed.clone()
        };
        assert!(!svc.rerank(&as_old_pod_reads).unwrap().packed_read);

        let refused = |r: RerankRequest| svc.rerank(&r).unwrap_err().message().to_string();
        assert_eq!(
            refused(RerankRequest {
                items: messages.items.clone(),
                ..packed.clone()
            }),
            "items and packed_ids are both set: send one"
        );
        let mut short = packed.clone();
        short.packed_scores.pop();
        assert_eq!(refused(short), "packed_scores has 29 entries for 30 ids");
        let mut cut = packed.clone();
        cut.packed_id_ends[0] = 99;
        assert!(refused(cut).starts_with("packed_id_ends[0] is 99: before the previous end"));
        let mut nan = packed.clone();
        nan.packed_scores[3] = f32::NAN;
        assert_eq!(refused(nan), "packed_scores[3] is not a finite number");
    }
}
