//! `recstack serve <component>`: one component as its own process, as a pod runs it, with
//! flags over the runtime config the operator mounts.

mod args;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use recstack_core::rerank::RerankConfig;
use recstack_core::stream::window::{WindowConfig, parse_window};
use recstack_dashboard::server::{DashboardConfig, LocalComponent, StatusSource};
use recstack_services::Component;
use recstack_services::StreamEngine;
use recstack_services::config::RuntimeConfig;
use recstack_services::events::ingest::SeenLink;
use recstack_services::gateway::{Catalogue, Downstreams, GatewayAccess, GatewayConfig};
use recstack_services::ranking::service::ItemsLink;
use recstack_services::recall::{AnySeenStore, MemorySeenStore, RedisSeenStore};
use recstack_services::rerank::{Experiment, Rules};
use recstack_services::serve::{self, FeatureSource, GatewayTraces, Lifecycle};
use recstack_services::stream::assignment::Assignment;
use recstack_services::stream::sink::{RedisStore, StreamStore};
use recstack_services::stream::{Input, StreamConfig};
use recstack_services::traces::{self, TraceStoreSpec};
use recstack_trace_store::writer::WriterConfig;

pub use args::{LatencyArgs, ModelArgs};
use args::{LogArgs, ServeArgs, TraceArgs};

#[derive(Subcommand)]
pub enum ServeCommand {
    /// The recall gRPC service.
    Recall {
        #[command(flatten)]
        serve: ServeArgs,
        /// How often to look for a new artifact version, in seconds.
        #[arg(long, default_value_t = 10)]
        reload_secs: u64,
    },
    /// The feature gRPC service (L1 cache ▸ Redis ▸ the artifacts' snapshot).
    #[command(alias = "features")]
    Feature {
        #[command(flatten)]
        serve: ServeArgs,
        /// Redis for real-time features (`redis://host:port`); unset: L1 over the snapshot.
        #[arg(long, env = "RECSTACK_REDIS_URL")]
        redis_url: Option<String>,
        /// L1 dump written on shutdown and loaded on start.
        #[arg(long)]
        dump: Option<PathBuf>,
    },
    /// The ranking gRPC service (ONNX model, dynamic batching, canary, hot swap).
    Ranking {
        #[command(flatten)]
        serve: ServeArgs,
        #[command(flatten)]
        model: ModelArgs,
        /// The feature service, for a model reading real-time item features (default: the
        /// runtime config's; without either such a model gets their neutral values).
        #[arg(long)]
        features_url: Option<String>,
    },
    /// The rerank gRPC service.
    Rerank {
        #[command(flatten)]
        serve: ServeArgs,
        /// An item never served (repeatable).
        #[arg(long = "block", value_name = "ITEM")]
        blocked: Vec<String>,
        /// Serve ITEM at 0-based POSITION when it is a candidate (repeatable).
        #[arg(long = "pin", value_name = "ITEM:POSITION", value_parser = parse_pin)]
        pins: Vec<(String, usize)>,
        /// Score multiplier for items from the newest two release years.
        #[arg(long, default_value_t = 1.2)]
        fresh_boost: f32,
    },
    /// The gateway: HTTP `POST /v1/recommend` and gRPC `Recommend`.
    Gateway {
        #[command(flatten)]
        serve: ServeArgs,
        #[arg(long, default_value = "http://127.0.0.1:9090")]
        recall: String,
        #[arg(long, default_value = "http://127.0.0.1:9091")]
        features: String,
        #[arg(long, default_value = "http://127.0.0.1:9092")]
        ranking: String,
        #[arg(long, default_value = "http://127.0.0.1:9093")]
        rerank: String,
        #[command(flatten)]
        traces: TraceArgs,
        #[command(flatten)]
        latency: LatencyArgs,
        /// The access Secret's directory (`debug`, `admin`, `pseudonym-key`): only callers
        /// sending its debug token get debug traces (default: the runtime config's; neither:
        /// anyone may).
        #[arg(long)]
        access_dir: Option<PathBuf>,
        /// An OpenTelemetry collector (OTLP/gRPC) for the spans of full traces (default: the
        /// runtime config's; neither: none).
        #[arg(long)]
        otlp_endpoint: Option<String>,
    },
    /// The trace query API over HTTP: search, a trace, why / why-not, aggregates.
    Traces {
        /// `embedded:PATH` (or a path) or an `http(s)://` Elasticsearch URL (default: the
        /// runtime config's trace store, else `embedded:traces/traces.sqlite`).
        #[arg(long, value_parser = |s: &str| s.parse::<TraceStoreSpec>())]
        trace_store: Option<TraceStoreSpec>,
        #[arg(long)]
        trace_credentials_dir: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:8090")]
        http_addr: SocketAddr,
        /// Artifact root: lets why-not say when an item is not in the recall index.
        #[arg(long)]
        artifacts: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// The access Secret's directory (`reader`, `admin` tokens; default: the runtime
        /// config's; neither: no token needed).
        #[arg(long)]
        access_dir: Option<PathBuf>,
    },
    /// The ingest service: HTTP `POST /v1/events` and gRPC `PostEvents` into the event log.
    Ingest {
        #[command(flatten)]
        serve: ServeArgs,
        #[command(flatten)]
        log: LogArgs,
        /// The recall service whose seen filters take impressions (default: the runtime
        /// config's recall endpoint; none: impressions are only logged).
        #[arg(long)]
        recall: Option<String>,
    },
    /// The built-in stream job: windows over the event log into the feature store.
    Stream {
        #[command(flatten)]
        serve: ServeArgs,
        #[command(flatten)]
        log: LogArgs,
        /// The feature store (`redis://host:port`; default: the runtime config's).
        #[arg(long, env = "RECSTACK_REDIS_URL")]
        redis_url: Option<String>,
        /// Window length (default: the runtime config's, else 1m).
        #[arg(long, value_parser = parse_window)]
        window: Option<i64>,
        /// This replica's ordinal: it reads partitions `p` with `p % replicas == replica`.
        #[arg(long, env = "RECSTACK_STREAM_REPLICA", default_value_t = 0)]
        replica: u32,
        /// How many replicas share the log.
        #[arg(long, env = "RECSTACK_STREAM_REPLICAS", default_value_t = 1)]
        replicas: u32,
        /// Apply the Flink job's output (`<topic>-aggregates`) instead of aggregating the events
        /// (default: when the runtime config's stream engine is flink).
        #[arg(long)]
        flink_output: bool,
    },
    /// The dashboard over a trace query API; stack status from a RecommenderStack (`--stack`)
    /// or, without one, from the health of the `--component NAME=URL`s given.
    Dashboard {
        #[arg(long, default_value = "http://127.0.0.1:8090")]
        traces_url: String,
        #[arg(long, default_value = "127.0.0.1:8091")]
        http_addr: SocketAddr,
        /// The RecommenderStack to show (read through the Kubernetes API).
        #[arg(long, requires = "namespace")]
        stack: Option<String>,
        #[arg(long, env = "POD_NAMESPACE")]
        namespace: Option<String>,
        /// A component whose `/readyz` the status page checks, as `NAME=http://HOST:PORT`.
        #[arg(long = "component", value_parser = parse_component, conflicts_with = "stack")]
        components: Vec<(String, String)>,
        /// The browser build (`scripts/build-dashboard`).
        #[arg(long, env = "RECSTACK_DASHBOARD_SITE")]
        site: Option<PathBuf>,
        /// The access Secret's directory: visitors sign in with its reader or admin token
        /// (none: no sign-in).
        #[arg(long)]
        access_dir: Option<PathBuf>,
        /// The gateway replays (what-if) go through (none: no replays).
        #[arg(long)]
        gateway_url: Option<String>,
        /// A link to one trace in the tracing UI that receives the OTLP spans, `{trace_id}`
        /// where the request's trace id goes.
        #[arg(long)]
        trace_link: Option<String>,
    },
}

/// How long a user's seen filter outlives their last impression.
const SEEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// `NAME=URL` of `--component`.
fn parse_component(s: &str) -> Result<(String, String), String> {
    let (name, url) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=http://HOST:PORT"))?;
    if name.is_empty() || !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{s:?}: expected NAME=http://HOST:PORT"));
    }
    Ok((name.to_string(), url.trim_end_matches('/').to_string()))
}

/// `ITEM:POSITION` of `--pin`.
fn parse_pin(s: &str) -> Result<(String, usize), String> {
    let (item, pos) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("`{s}`: expected ITEM:POSITION"))?;
    let pos = pos.parse().map_err(|_| format!("`{s}`: POSITION must be a number"))?;
    if item.is_empty() {
        return Err(format!("`{s}`: ITEM is empty"));
    }
    Ok((item.to_string(), pos))
}

/// Starts one component and serves it until SIGTERM or Ctrl-C, then drains it.
pub async fn run(component: ServeCommand) -> anyhow::Result<()> {
    let lifecycle = Lifecycle::from_env()?;
    let service = match component {
        ServeCommand::Recall { mut serve, reload_secs } => {
            let config = serve.prepare().await?;
            let loaded = serve::load_artifacts(&serve.artifacts)?;
            eprintln!("recall: serving artifact version {}", loaded.manifest.version);
            let every = Duration::from_secs(reload_secs.max(1));
            // With Redis, the hot channel leads with the stream job's trending list, users'
            // real-time items seed the history-seeded channels, and seen filters are shared by
            // every replica (ingest sends each impression to one).
            let (stream, seen) = match config.as_ref().and_then(|c| c.feature_store.redis_url.as_deref()) {
                Some(url) => (
                    StreamStore::Redis(RedisStore::connect(url, Duration::from_millis(100)).await?),
                    AnySeenStore::Redis(
                        RedisSeenStore::connect(url, Duration::from_millis(100), SEEN_TTL)
                            .await
                            .context("the seen store in Redis")?,
                    ),
                ),
                None => (StreamStore::None, AnySeenStore::Memory(MemorySeenStore::default())),
            };
            serve::recall(
                loaded,
                Some((serve.artifacts.clone(), every)),
                stream,
                seen,
                serve.addrs(config.as_ref(), 9090, 8080),
            )
            .await?
        }
        ServeCommand::Feature {
            mut serve,
            redis_url,
            dump,
        } => {
            let config = serve.prepare().await?;
            let redis_url = redis_url.or_else(|| config.as_ref().and_then(|c| c.feature_store.redis_url.clone()));
            let snapshot = serve.snapshot()?;
            let source = match redis_url.as_deref() {
                Some(url) => FeatureSource::Redis(url),
                None => FeatureSource::Snapshot,
            };
            serve::features(
                snapshot,
                source,
                dump,
                serve.reload(config.as_ref()),
                serve.addrs(config.as_ref(), 9091, 8081),
            )
            .await?
        }
        ServeCommand::Ingest { serve, log, recall } => {
            let config = serve.config()?;
            let log = Arc::new(log.open(config.as_ref()).await?);
            let recall = match recall {
                Some(url) => Some(url),
                None => config
                    .as_ref()
                    .map(|c| c.endpoint_for(Component::Ingest, Component::Recall))
                    .transpose()?,
            };
            let seen = match recall {
                Some(url) => SeenLink::grpc(&url)?,
                None => SeenLink::None,
            };
            serve::ingest(log, seen, serve.addrs(config.as_ref(), 9094, 8084)).await?
        }
        ServeCommand::Stream {
            mut serve,
            log,
            redis_url,
            window,
            replica,
            replicas,
            flink_output,
        } => {
            let assignment = Assignment::new(replica, replicas).context("--replica/--replicas")?;
            let config = serve.prepare().await?;
            let flink = config.as_ref().is_some_and(|c| c.stream.engine == StreamEngine::Flink);
            let input = if flink_output || flink {
                Input::Aggregates
            } else {
                Input::Events
            };
            let window = match (window, config.as_ref()) {
                (Some(w), _) => w,
                (None, Some(c)) => parse_window(&c.stream.window).map_err(|e| anyhow::anyhow!("stream.window: {e}"))?,
                (None, None) => 60_000,
            };
            let redis_url = redis_url.or_else(|| config.as_ref().and_then(|c| c.feature_store.redis_url.clone()));
            let Some(redis_url) = redis_url else {
                anyhow::bail!(
                    "serve stream writes to Redis: give --redis-url or a runtime config with featureStore.redisUrl (`recstack up` runs the stream job in process without Redis)"
                );
            };
            let log = Arc::new(log.open_input(config.as_ref(), input).await?);
            let sink = RedisStore::connect(&redis_url, Duration::from_secs(2)).await?;
            let window = WindowConfig {
                size_ms: window,
                ..WindowConfig::default()
            };
            let http = serve.addrs(config.as_ref(), 9095, 8085).http;
            let settings = StreamConfig {
                input,
                assignment,
                ..StreamConfig::live(window)
            };
            serve::stream_job(log, Arc::new(sink), serve.snapshot()?, settings, http).await?
        }
        ServeCommand::Ranking {
            mut serve,
            model,
            features_url,
        } => {
            let config = serve.prepare().await?;
            let sources = model.sources(config.as_ref(), &serve.cache_dir).await?;
            let snapshot = serve.snapshot()?;
            let features_url = match features_url {
                Some(url) => Some(url),
                None => config
                    .as_ref()
                    .map(|c| c.endpoint_for(Component::Ranking, Component::Feature))
                    .transpose()?,
            };
            let realtime = features_url.as_deref().map(ItemsLink::grpc).transpose()?;
            serve::ranking(
                snapshot,
                sources,
                Duration::from_secs(5),
                serve.reload(config.as_ref()),
                realtime,
                serve.addrs(config.as_ref(), 9092, 8082),
            )
            .await?
        }
        ServeCommand::Rerank {
            mut serve,
            blocked,
            pins,
            fresh_boost,
        } => {
            let config = serve.prepare().await?;
            let snapshot = serve.snapshot()?;
            let base = RerankConfig {
                blocked: blocked.into_iter().collect(),
                pins,
                fresh_boost,
                ..RerankConfig::default()
            };
            // With a runtime config its rules and experiment apply (and are re-read while
            // serving: the operator changes them without rolling the pods); without one, the
            // flags and the local stack's experiment.
            let (rules, rules_file) = match (&config, &serve.config) {
                (Some(c), Some(path)) => (
                    Rules::from_settings(&base, &c.rerank),
                    Some(serve::RulesFile {
                        path: path.clone(),
                        base,
                        every: Duration::from_secs(5),
                    }),
                ),
                _ => (
                    Rules {
                        config: base,
                        experiment: Some(Experiment::default()),
                    },
                    None,
                ),
            };
            serve::rerank(
                snapshot,
                rules,
                rules_file,
                serve.reload(config.as_ref()),
                serve.addrs(config.as_ref(), 9093, 8083),
            )
            .await?
        }
        ServeCommand::Gateway {
            mut serve,
            recall,
            features,
            ranking,
            rerank,
            traces,
            latency,
            access_dir,
            otlp_endpoint,
        } => {
            let config = serve.prepare().await?;
            let (tokens, access) = traces::access(access_dir.as_deref(), config.as_ref())?;
            let trace_settings = traces.settings(config.as_ref())?;
            let endpoints = match &config {
                Some(c) => Downstreams {
                    recall: c.endpoint_for(Component::Gateway, Component::Recall)?,
                    features: c.endpoint_for(Component::Gateway, Component::Feature)?,
                    ranking: c.endpoint_for(Component::Gateway, Component::Ranking)?,
                    rerank: c.endpoint_for(Component::Gateway, Component::Rerank)?,
                },
                None => Downstreams {
                    recall,
                    features,
                    ranking,
                    rerank,
                },
            };
            let loaded = serve::load_artifacts(&serve.artifacts)?;
            let catalogue = Arc::new(Catalogue::new(&loaded.manifest, &loaded.artifacts));
            drop(loaded);
            let mut gateway_config = GatewayConfig {
                latency: latency.objective(config.as_ref()),
                access: GatewayAccess {
                    tokens,
                    debug_rate: access.as_ref().map(|a| (a.debug_per_second, a.debug_burst)),
                    pseudonymize_users: access.is_some_and(|a| a.pseudonymize_users),
                },
                otlp: otlp_endpoint
                    .or_else(|| config.as_ref().and_then(|c| c.otlp_endpoint.clone()))
                    .map(|e| recstack_services::otlp::OtlpConfig::new(&e)),
                ..GatewayConfig::default()
            };
            if let Some(f) = trace_settings.full_sample {
                gateway_config.full_trace_sample = f;
            }
            let traces = match traces::open(&trace_settings.spec).context("opening the trace store")? {
                None => GatewayTraces::Off,
                Some(store) => {
                    eprintln!("gateway: traces to the {} store", store.kind());
                    GatewayTraces::Store {
                        store,
                        writer: WriterConfig::default(),
                        retention_days: Some(trace_settings.retention_days),
                    }
                }
            };
            serve::gateway(
                catalogue,
                recstack_services::gateway::Links::grpc(&endpoints)?,
                gateway_config,
                traces,
                serve.reload(config.as_ref()),
                serve.addrs(config.as_ref(), 9000, 8000),
            )
            .await?
        }
        ServeCommand::Traces {
            trace_store,
            trace_credentials_dir,
            http_addr,
            artifacts,
            config,
            access_dir,
        } => {
            let config = config.as_deref().map(RuntimeConfig::read).transpose()?;
            let (access, _) = traces::access(access_dir.as_deref(), config.as_ref())?;
            let args = TraceArgs {
                trace_store,
                trace_credentials_dir,
                trace_full_percent: None,
                trace_retention_days: None,
            };
            let store = traces::open(&args.settings(config.as_ref())?.spec)
                .context("opening the trace store")?
                .context("the query API needs a trace store, not `off`")?;
            let index = match artifacts {
                Some(root) => {
                    let loaded = serve::load_artifacts(&root)?;
                    let catalogue: Arc<dyn recstack_trace_store::explain::ItemIndex> =
                        Arc::new(Catalogue::new(&loaded.manifest, &loaded.artifacts));
                    Some(catalogue)
                }
                None => None,
            };
            serve::trace_query(store, index, access, http_addr).await?
        }
        ServeCommand::Dashboard {
            traces_url,
            http_addr,
            stack,
            namespace,
            components,
            site,
            access_dir,
            gateway_url,
            trace_link,
        } => {
            let (access, _) = traces::access(access_dir.as_deref(), None)?;
            let status = match (stack, namespace) {
                (Some(name), Some(namespace)) => StatusSource::cluster(namespace, name)
                    .await
                    .context("connecting to the Kubernetes API for the stack's status")?,
                _ => StatusSource::local(
                    components
                        .into_iter()
                        .map(|(name, url)| LocalComponent { name, url })
                        .collect(),
                ),
            };
            let config = DashboardConfig {
                traces_url,
                status,
                site_root: site,
                access,
                gateway_url,
                trace_link,
            };
            crate::dashboard::serve(config, http_addr).await?
        }
    };
    match service.grpc {
        Some(grpc) => eprintln!("{}: gRPC on {grpc}, HTTP on http://{}", service.name, service.http),
        None => eprintln!("{}: HTTP on http://{}", service.name, service.http),
    }
    super::until_stopped(vec![service], lifecycle).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_or_say_what_is_wrong() {
        assert_eq!(parse_pin("0110912:3"), Ok(("0110912".into(), 3)));
        assert_eq!(parse_pin("a:b:0"), Ok(("a:b".into(), 0)));
        assert!(parse_pin("0110912").unwrap_err().contains("ITEM:POSITION"));
        assert!(parse_pin("x:first").unwrap_err().contains("must be a number"));
        assert!(parse_pin(":1").unwrap_err().contains("ITEM is empty"));
    }
}
