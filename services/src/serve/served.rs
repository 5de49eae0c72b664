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

use recstack_core::stream::window::WindowConfig;

use super::{LocalAddrs, LocalEvents, LocalOptions, LocalTraces, ServeError, start_local};
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

    /// The same with category scatter at most `max` items of a genre in any `window`
    /// consecutive slots (`max ≥ window`: no scatter).
    pub fn with_scatter(self, scatter: Scatter) -> Self {
        Self {
            name: format!("{}, {scatter}", self.name),
            rerank: RerankConfig {
                scatter_max: scatter.max,
                scatter_window: scatter.window,
                ..self.rerank
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

/// A category-scatter setting: at most `max` items of one genre in any `window` consecutive
/// slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scatter {
    pub max: usize,
    pub window: usize,
}

impl Scatter {
    /// No scatter: a window no genre can overfill.
    pub const OFF: Scatter = Scatter { max: 1, window: 1 };

    /// Whether it constrains anything.
    pub fn is_off(self) -> bool {
        self.max >= self.window
    }
}

impl std::fmt::Display for Scatter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_off() {
            f.write_str("no scatter")
        } else {
            write!(f, "scatter {} in {}", self.max, self.window)
        }
    }
}

impl std::str::FromStr for Scatter {
    type Err = String;

    /// `MAX/WINDOW` (`2/4`: at most 2 of a genre in any 4 slots; 1 ≤ MAX, WINDOW ≤ 20) or `off`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "off" {
            return Ok(Scatter::OFF);
        }
        let bad = || format!("{s:?} is not a scatter setting: MAX/WINDOW (1–20 each, e.g. 2/4) or off");
        let (max, window) = s.split_once('/').ok_or_else(bad)?;
        let num = |v: &str| v.trim().parse::<usize>().ok().filter(|n| (1..=20).contains(n));
        Ok(Scatter {
            max: num(max).ok_or_else(bad)?,
            window: num(window).ok_or_else(bad)?,
        })
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
    #[error("replaying events: {0}")]
    Replay(String),
}

/// The local stack's options at `setting`: services linked over gRPC on loopback, no event
/// path, traces in memory.
fn local_options(model: ModelSources, setting: &Setting) -> LocalOptions {
    LocalOptions {
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
    }
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
    let opts = local_options(model, setting);
    let stack = start_local(root, opts).await?;
    let answers = ask(&stack.get("gateway").grpc_url(), users, |_| n, progress).await;
    stack.stop().await?;
    answers
}

/// What a replay serves each user: before their events reach the stack, and after.
#[derive(Clone, Debug, PartialEq)]
pub struct Replayed {
    pub before: Vec<Served>,
    pub after: Vec<Served>,
}

/// How long a replay waits for the stream job to bring every posted event to the feature
/// store before it gives up.
const REPLAY_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Starts the local stack with its event path (ingest, the embedded log in `log_dir`, the
/// stream job, the in-process feature store) at `setting`, then:
/// 1. asks for `n + events[k].len()` items (at most the gateway's 100) for each user
///    (`before`: the stack on the build's history alone, long enough to drop the replayed
///    items and keep `n`);
/// 2. posts each user's `events` (item ids, oldest first) as plays, in that order;
/// 3. waits until the feature service reads each user's newest replayed item first among their
///    recent items (the stream job's fast path wrote them all);
/// 4. asks for `n` items for each user again (`after`).
///
/// Its windows are an hour long, so no window closes during a replay and the trending list
/// stays the build's: what changes between the two answers is the users' own real-time items.
#[allow(clippy::too_many_arguments)]
pub async fn serve_replay(
    root: &Path,
    model: ModelSources,
    setting: &Setting,
    log_dir: &Path,
    users: &[String],
    events: &[Vec<String>],
    n: u32,
    progress: impl Fn(&str, usize),
) -> Result<Replayed, ServedError> {
    if users.len() != events.len() {
        return Err(ServedError::Replay(format!(
            "{} users but {} lists of events: one list per user",
            users.len(),
            events.len()
        )));
    }
    let mut opts = local_options(model, setting);
    opts.events = Some(LocalEvents {
        log_dir: log_dir.to_path_buf(),
        partitions: 2,
        window: WindowConfig {
            size_ms: 3_600_000,
            delay_ms: 5_000,
        },
    });
    let stack = start_local(root, opts).await?;
    let result = async {
        let url = stack.get("gateway").grpc_url();
        let longer = |k: usize| (n + events[k].len() as u32).min(crate::gateway::request::MAX_N);
        let before = ask(&url, users, longer, |k| progress("before", k)).await?;
        post_plays(&stack.get("ingest").grpc_url(), users, events).await?;
        wait_for_recent(&stack.get("features").grpc_url(), users, events, &progress).await?;
        let after = ask(&url, users, |_| n, |k| progress("after", k)).await?;
        Ok(Replayed { before, after })
    }
    .await;
    stack.stop().await?;
    result
}

/// Posts `events[k]` for `users[k]` as plays, a millisecond apart in each user's order, at
/// most [`MAX_EVENTS`](crate::events::ingest::MAX_EVENTS) a call.
async fn post_plays(url: &str, users: &[String], events: &[Vec<String>]) -> Result<(), ServedError> {
    use crate::events::ingest::proto::ingest_client::IngestClient;
    use crate::events::ingest::proto::{Event, PostEventsRequest};
    let mut client = IngestClient::connect(url.to_string()).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    let all: Vec<Event> = users
        .iter()
        .zip(events)
        .flat_map(|(user, items)| {
            items.iter().enumerate().map(move |(j, item)| Event {
                event_id: format!("replay-{user}-{j}"),
                user_id: user.clone(),
                item_id: item.clone(),
                kind: "play".into(),
                ts_ms: now + j as i64,
                request_id: String::new(),
            })
        })
        .collect();
    for chunk in all.chunks(crate::events::ingest::MAX_EVENTS) {
        client
            .post_events(PostEventsRequest { events: chunk.to_vec() })
            .await
            .map_err(|status| ServedError::Replay(format!("posting events: {status}")))?;
    }
    Ok(())
}

/// Waits until every user's newest replayed item leads their recent items in the feature
/// service (at most [`REPLAY_WAIT`]).
async fn wait_for_recent(
    url: &str,
    users: &[String],
    events: &[Vec<String>],
    progress: &impl Fn(&str, usize),
) -> Result<(), ServedError> {
    use crate::features::proto::GetUserRequest;
    use crate::features::proto::features_client::FeaturesClient;
    let mut client = FeaturesClient::connect(url.to_string()).await?;
    let start = std::time::Instant::now();
    let mut waiting: Vec<usize> = (0..users.len()).filter(|&k| !events[k].is_empty()).collect();
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for &k in &waiting {
            let features = client
                .get_user(GetUserRequest {
                    user_id: users[k].clone(),
                })
                .await
                .map_err(|status| ServedError::Replay(format!("reading {}'s features: {status}", users[k])))?
                .into_inner()
                .features;
            let newest = events[k].last();
            if features.and_then(|f| f.recent_items.into_iter().next()).as_ref() != newest {
                still.push(k);
            }
        }
        progress("written", users.len() - still.len());
        if !still.is_empty() {
            if start.elapsed() > REPLAY_WAIT {
                return Err(ServedError::Replay(format!(
                    "{} of {} users' events had not reached the feature store after {REPLAY_WAIT:?} (first: {})",
                    still.len(),
                    users.len(),
                    users[still[0]]
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        waiting = still;
    }
    Ok(())
}

/// Asks the gateway at `url` for `n(k)` items for each `users[k]` in turn (`progress(done)`
/// after each), answers in `users`' order.
async fn ask(
    url: &str,
    users: &[String],
    n: impl Fn(usize) -> u32,
    progress: impl Fn(usize),
) -> Result<Vec<Served>, ServedError> {
    let mut client = GatewayClient::connect(url.to_string()).await?;
    let mut out = Vec::with_capacity(users.len());
    for (k, user) in users.iter().enumerate() {
        let r = client
            .recommend(RecommendRequest {
                user_id: user.clone(),
                n: n(k),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scatter_settings_parse_name_and_configure_rerank() {
        let s: Scatter = "2/4".parse().unwrap();
        assert_eq!(s, Scatter { max: 2, window: 4 });
        assert_eq!(" 3 / 6 ".parse::<Scatter>(), Ok(Scatter { max: 3, window: 6 }));
        assert!("off".parse::<Scatter>().unwrap().is_off());
        assert!(Scatter { max: 4, window: 4 }.is_off(), "4 in 4 constrains nothing");
        for bad in ["", "2", "2/", "/4", "0/4", "2/0", "2/21", "x/4", "2/4/6", "-1/4"] {
            let err = bad.parse::<Scatter>().unwrap_err();
            assert!(err.contains("MAX/WINDOW"), "{bad:?}: {err}");
        }
        let full = Setting::at("full").with_scatter(s);
        assert_eq!(full.name, "full, scatter 2 in 4");
        assert_eq!((full.rerank.scatter_max, full.rerank.scatter_window), (2, 4));
        let off = Setting::at("full").with_scatter(Scatter::OFF);
        assert_eq!(off.name, "full, no scatter");
        // The rest of rerank's rules and the A/B split are the level's as served.
        assert_eq!(off.rerank.mmr_lambda, RerankConfig::default().mmr_lambda);
        assert_eq!(off.experiment.variants, Setting::at("full").experiment.variants);
    }
}
