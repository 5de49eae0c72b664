//! What the stack serves, for evaluation: the local stack started at one degradation level
//! (services linked over gRPC on loopback, as in a cluster), every given user asking for `n`
//! items through the gateway's gRPC face. `recstack eval` scores these lists against the
//! holdout beside recall's own; the levels bench prices each level's latency too.
//!
//! A level is forced with the gateway's in-flight thresholds (a threshold of 0 starts every
//! request at or below that level) and the latency objective off, so the answers do not depend
//! on the machine's load.

use std::path::Path;

use recstack_core::degrade::LevelPlan;
use recstack_core::rerank::RerankConfig;

use super::{LocalAddrs, LocalOptions, LocalTraces, ServeError, start_local};
use crate::gateway::GatewayConfig;
use crate::gateway::degrade::LoadThresholds;
use crate::gateway::proto::RecommendRequest;
use crate::gateway::proto::gateway_client::GatewayClient;
use crate::ranking::service::ModelSources;
use crate::rerank::Experiment;

/// One way of serving: a level, the full level's plan and rerank's rules.
#[derive(Clone, Debug)]
pub struct Setting {
    /// How tables name it (`full`, `full, no MMR`, …).
    pub name: String,
    /// The level every answer must come at.
    pub level: &'static str,
    pub full: LevelPlan,
    pub rerank: RerankConfig,
    /// The A/B split of rerank's MMR trade-off (the served one, or none).
    pub experiment: Experiment,
}

impl Setting {
    /// The stack's defaults at `level` (`full`, `reduced`, `popular`, `fallback`).
    pub fn at(level: &'static str) -> Self {
        Self {
            name: level.to_string(),
            level,
            full: GatewayConfig::default().full,
            rerank: RerankConfig::default(),
            experiment: Experiment::default(),
        }
    }

    /// The same with rerank's MMR off for every user (λ = 1, no A/B split).
    pub fn without_mmr(self) -> Self {
        Self {
            name: format!("{}, no MMR", self.name),
            ..self.with_mmr_lambda(1.0)
        }
    }

    /// The same with one MMR trade-off for every user (no A/B split): 1 is relevance only,
    /// 0 diversity only.
    pub fn with_mmr_lambda(self, lambda: f32) -> Self {
        Self {
            name: format!("{}, MMR λ {lambda}", self.name),
            rerank: RerankConfig {
                mmr_lambda: lambda,
                ..self.rerank
            },
            experiment: Experiment {
                variants: Vec::new(),
                ..Experiment::default()
            },
            ..self
        }
    }

    /// Every level as served, and the full and popular levels without MMR (the price of
    /// diversity): what `recstack eval` reports.
    pub fn standard() -> Vec<Setting> {
        vec![
            Setting::at("full"),
            Setting::at("full").without_mmr(),
            Setting::at("reduced"),
            Setting::at("popular"),
            Setting::at("popular").without_mmr(),
            Setting::at("fallback"),
        ]
    }

    fn thresholds(&self) -> LoadThresholds {
        let all = usize::MAX;
        let (reduced, popular, fallback) = match self.level {
            "reduced" => (0, all, all),
            "popular" => (0, 0, all),
            "fallback" => (0, 0, 0),
            _ => (all, all, all),
        };
        LoadThresholds {
            reduced,
            popular,
            fallback,
        }
    }
}

/// One user's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Served {
    pub items: Vec<String>,
    pub level: String,
    /// The gateway's own time for the request.
    pub gateway_us: u32,
}

/// Why the lists could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServedError {
    #[error(transparent)]
    Start(#[from] ServeError),
    #[error("connecting to the gateway: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("recommending for {user}: {status}")]
    Recommend { user: String, status: tonic::Status },
}

/// Starts the local stack on the artifacts in `root` with `setting`, asks for `n` items for
/// each of `users` in turn (`progress(done)` after each), stops it, and returns the answers
/// in `users`' order.
pub async fn serve_lists(
    root: &Path,
    model: ModelSources,
    setting: &Setting,
    users: &[String],
    n: u32,
    progress: impl Fn(usize),
) -> Result<Vec<Served>, ServedError> {
    let opts = LocalOptions {
        direct_links: false,
        addrs: LocalAddrs::ephemeral(),
        model,
        redis_url: None,
        gateway: GatewayConfig {
            load: setting.thresholds(),
            latency: None,
            full: setting.full.clone(),
            ..GatewayConfig::default()
        },
        rerank: setting.rerank.clone(),
        experiment: setting.experiment.clone(),
        traces: LocalTraces::Memory(1_000),
        dashboard: None,
        events: None,
    };
    let stack = start_local(root, opts).await?;
    let answers = ask(&stack.get("gateway").grpc_url(), users, n, progress).await;
    stack.stop().await?;
    answers
}

async fn ask(url: &str, users: &[String], n: u32, progress: impl Fn(usize)) -> Result<Vec<Served>, ServedError> {
    let mut client = GatewayClient::connect(url.to_string()).await?;
    let mut out = Vec::with_capacity(users.len());
    for (k, user) in users.iter().enumerate() {
        let r = client
            .recommend(RecommendRequest {
                user_id: user.clone(),
                n,
                ..Default::default()
            })
            .await
            .map_err(|status| ServedError::Recommend {
                user: user.clone(),
                status,
            })?
            .into_inner();
        out.push(Served {
            items: r.items.into_iter().map(|i| i.item_id).collect(),
            level: r.level,
            gateway_us: r.latency_us,
        });
        progress(k + 1);
    }
    Ok(out)
}
