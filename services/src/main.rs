//! `recstack`: the offline build and evaluation, the services, the local stack and the load
//! generator.
#![forbid(unsafe_code)]

mod bench;

/// mimalloc instead of the system allocator (see the workspace manifest for why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use recstack_services::build::{self, BuildParams, Progress};
use recstack_services::config::{EventLogConfig, RuntimeConfig, model_path};
use recstack_services::dataset::{self, Dataset};
use recstack_services::eval;
use recstack_services::events::AnyLog;
use recstack_services::events::ingest::SeenLink;
use recstack_services::events::kafka::KafkaLog;
use recstack_services::events::log::{EventLog, FileLog};
use recstack_services::features::Snapshot;
use recstack_services::gateway::degrade::LatencyObjective;
use recstack_services::gateway::{Catalogue, Endpoints, GatewayConfig};
use recstack_services::ranking::batcher::BatchConfig;
use recstack_services::ranking::model::Device;
use recstack_services::ranking::service::ModelSources;
use recstack_services::rerank::RerankConfig;
use recstack_services::rerank::service::Experiment;
use recstack_services::serve::{
    self, Addrs, FeatureSource, GatewayTraces, LocalAddrs, LocalEvents, LocalOptions, LocalTraces, Service,
};
use recstack_services::stream::sink::{RedisStore, Trending};
use recstack_services::stream::window::{WindowConfig, parse_window};
use recstack_services::traces::{self, TraceSettings, TraceStoreSpec};
use recstack_trace_store::writer::WriterConfig;

#[derive(Parser)]
#[command(version, about = "recstack: build, serve and measure the recommender")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build versioned recall and feature artifacts from the ratings.
    Build {
        /// Directory with movies.dat and ratings.dat (default: the bundled MovieTweetings).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Where artifact versions are written (`<out>/<version>/`, `<out>/current`).
        #[arg(long, default_value = "artifacts")]
        out: PathBuf,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Hide progress output.
        #[arg(long)]
        quiet: bool,
    },
    /// Run the whole stack on loopback (gateway, recall, features, ranking, rerank), building
    /// artifacts from the bundled data first if there are none.
    Up {
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, env = "RECSTACK_REDIS_URL")]
        redis_url: Option<String>,
        /// Let the OS pick free loopback ports (printed) instead of the standard ones.
        #[arg(long)]
        ephemeral_ports: bool,
        /// Send the gateway's calls over gRPC on loopback, as in a cluster, instead of calling
        /// the services in this process directly.
        #[arg(long)]
        grpc_links: bool,
        /// The embedded trace store's file (default: `<artifacts>/traces/traces.sqlite`).
        #[arg(long)]
        trace_file: Option<PathBuf>,
        /// Percent of requests traced in full (every candidate); debug requests always are.
        #[arg(long, default_value_t = 1.0)]
        trace_full_percent: f64,
        /// The dashboard's browser build (default: `dashboard/site` of this checkout, made by
        /// `scripts/build-dashboard`); without it pages are served without hydration.
        #[arg(long, env = "RECSTACK_DASHBOARD_SITE")]
        dashboard_site: Option<PathBuf>,
        /// The embedded event log's directory (default: `<artifacts>/events`).
        #[arg(long)]
        events_dir: Option<PathBuf>,
        /// The stream job's window (`30s`, `1m`, `1h`).
        #[arg(long, default_value = "1m", value_parser = parse_window)]
        window: i64,
        #[command(flatten)]
        latency: LatencyArgs,
    },
    /// Ask the local services about a user: features, then recall candidates with lineage.
    Query {
        #[arg(long)]
        user: String,
        #[arg(long, default_value_t = 20)]
        n: u32,
        #[arg(long, default_value = "127.0.0.1:9090")]
        recall_addr: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9091")]
        features_addr: SocketAddr,
    },
    /// Open-loop load against the gateway: requests at a fixed rate for held-out users,
    /// latency percentiles (HdrHistogram, from each request's scheduled start) and levels.
    Bench(bench::BenchArgs),
    /// Write a SYNTHETIC data set calibrated to the bundled data, for scale tests.
    Synth {
        #[arg(long, default_value_t = 10_000_000)]
        users: u64,
        #[arg(long, default_value_t = 1_000_000)]
        items: u32,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Serve one component.
    Serve {
        #[command(subcommand)]
        component: ServeCommand,
    },
    /// Evaluate each recall channel on the held-out ratings of the current artifacts.
    Eval {
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        /// A specific version (default: the one `current` names).
        #[arg(long)]
        version: Option<String>,
        /// Also write the split (train.csv, test.csv: user,item,rating with dense ids) for
        /// peer libraries (`scripts/peers/implicit_als.py`).
        #[arg(long)]
        export_split: Option<PathBuf>,
    },
    /// Write the ranking model's training data (NumPy arrays), with the same recall and
    /// feature code the stack runs: recall's candidates in the validation world (the training
    /// ratings' own time split) to train and judge on, and in the current artifacts' holdout
    /// to report. `scripts/train-ranker` reads it.
    ExportRanking {
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        /// The data the artifacts were built from (default: the bundled MovieTweetings).
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
}

/// Where a served component listens, its artifacts, and the operator's runtime config.
#[derive(Args, Clone)]
struct ServeArgs {
    /// Artifact root written by `recstack build` (serves what `current` names).
    #[arg(long, default_value = "artifacts")]
    artifacts: PathBuf,
    /// gRPC listen address.
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// `/metrics`, `/healthz`, `/readyz` (and the gateway's HTTP API).
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// The runtime config the operator mounts (`/etc/recstack/config.yaml`): ports, peers,
    /// model, batching, feature store. Flags given explicitly win.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl ServeArgs {
    fn addrs(&self, config: Option<&RuntimeConfig>, grpc: u16, http: u16) -> Addrs {
        let (cg, ch) = config.map(RuntimeConfig::listen).unwrap_or((
            SocketAddr::from(([127, 0, 0, 1], grpc)),
            SocketAddr::from(([127, 0, 0, 1], http)),
        ));
        Addrs {
            grpc: self.grpc_addr.unwrap_or(cg),
            http: self.http_addr.unwrap_or(ch),
        }
    }

    fn config(&self) -> anyhow::Result<Option<RuntimeConfig>> {
        self.config
            .as_deref()
            .map(RuntimeConfig::read)
            .transpose()
            .context("reading the runtime config")
    }

    /// The user and item features of the artifacts' current version.
    fn snapshot(&self) -> anyhow::Result<Arc<Snapshot>> {
        Ok(Arc::new(Snapshot::from_artifacts(
            &serve::load_artifacts(&self.artifacts)?.artifacts,
        )))
    }
}

/// Which event log to use: `--log-dir` (embedded), `--kafka` (a Kafka-protocol cluster), or
/// the runtime config's `eventLog`.
#[derive(Args, Clone)]
struct LogArgs {
    /// The embedded log's directory.
    #[arg(long, conflicts_with = "kafka")]
    log_dir: Option<PathBuf>,
    /// Kafka bootstrap servers, comma-separated.
    #[arg(long, value_delimiter = ',')]
    kafka: Vec<String>,
    #[arg(long, default_value = "recstack-events")]
    topic: String,
    /// Partitions of a new log (an existing one keeps its own).
    #[arg(long, default_value_t = 4)]
    partitions: u32,
}

impl LogArgs {
    async fn open(&self, config: Option<&RuntimeConfig>) -> anyhow::Result<AnyLog> {
        let kafka = match (&self.log_dir, self.kafka.is_empty(), config.map(|c| &c.event_log)) {
            (Some(_), _, _) => None,
            (None, false, _) => Some((self.kafka.clone(), self.topic.clone())),
            (
                None,
                true,
                Some(EventLogConfig::Kafka {
                    bootstrap_servers,
                    topic,
                }),
            ) => Some((bootstrap_servers.clone(), topic.clone())),
            (None, true, _) => None,
        };
        Ok(match kafka {
            Some((brokers, topic)) => {
                let log = KafkaLog::connect(&brokers, &topic, self.partitions)
                    .await
                    .with_context(|| format!("connecting to Kafka {} topic {topic}", brokers.join(",")))?;
                eprintln!("event log: Kafka topic {topic} ({} partitions)", log.partitions());
                AnyLog::Kafka(log)
            }
            None => {
                let dir = self.log_dir.clone().unwrap_or_else(|| PathBuf::from("events"));
                let (log, recovered) = FileLog::open(&dir, self.partitions)?;
                eprintln!(
                    "event log: {} ({} records, {} torn bytes cut)",
                    dir.display(),
                    recovered.records,
                    recovered.truncated_bytes
                );
                AnyLog::File(log)
            }
        })
    }
}

/// The ranking model and how it runs.
#[derive(Args, Clone)]
struct ModelArgs {
    /// `model.onnx` with `model.json` beside it (default: the bundled DeepFM).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long)]
    canary_model: Option<PathBuf>,
    /// Percent of users the canary scores (stable per user).
    #[arg(long, default_value_t = 0)]
    canary_percent: u32,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Most rows per model call.
    #[arg(long, default_value_t = 512)]
    max_batch: usize,
    /// Longest a request waits for others to join its batch, in microseconds.
    #[arg(long, default_value_t = 2000)]
    max_wait_us: u64,
    /// Score each request alone (for comparison).
    #[arg(long)]
    no_batching: bool,
    /// ONNX Runtime threads per model call.
    #[arg(long, default_value_t = 1)]
    intra_threads: usize,
    /// Run the whole graph per request even when the model card splits it (for comparison;
    /// by default a factored model's first stage is folded into tables at load time).
    #[arg(long)]
    no_fold: bool,
}

/// The gateway's latency objective.
#[derive(Args, Clone)]
struct LatencyArgs {
    /// p99 the gateway keeps, in ms of its own time per request, by starting a share of
    /// requests at the reduced level while it is missed (0: off; load and downstream health
    /// alone choose levels). Default: the runtime config's `gateway.latencyTargetMs`, else 5.
    #[arg(long, value_parser = parse_target_ms, allow_negative_numbers = true)]
    latency_target_ms: Option<f64>,
}

/// A latency target in ms: a finite number, 0 or more (checked when the flags are read, before
/// `up` spends minutes building artifacts).
fn parse_target_ms(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(ms) if ms.is_finite() && ms >= 0.0 => Ok(ms),
        _ => Err(format!(
            "{s} is not a number of milliseconds (0 turns the objective off)"
        )),
    }
}

impl LatencyArgs {
    /// The flag over the runtime config over the default.
    fn objective(&self, config: Option<&RuntimeConfig>) -> Option<LatencyObjective> {
        let configured = config.and_then(|c| c.gateway.latency_target_ms).map(f64::from);
        let ms = self
            .latency_target_ms
            .or(configured)
            .unwrap_or(LatencyObjective::DEFAULT_TARGET.as_secs_f64() * 1e3);
        (ms > 0.0).then(|| LatencyObjective::p99_within(Duration::from_secs_f64(ms / 1e3)))
    }
}

/// Where the gateway writes traces.
#[derive(Args, Clone)]
struct TraceArgs {
    /// `off`, `embedded:PATH` (or a path) or an `http(s)://` Elasticsearch URL. Default: the
    /// runtime config's trace store, else `embedded:traces/traces.sqlite`.
    #[arg(long, value_parser = |s: &str| s.parse::<TraceStoreSpec>())]
    trace_store: Option<TraceStoreSpec>,
    /// A directory with `username` and `password` files for Elasticsearch.
    #[arg(long)]
    trace_credentials_dir: Option<PathBuf>,
    /// Percent of requests traced in full (default: the config's sampling, else 1).
    #[arg(long)]
    trace_full_percent: Option<f64>,
    /// Days of traces kept (default: the config's retention, else 7).
    #[arg(long)]
    trace_retention_days: Option<u32>,
}

impl TraceArgs {
    /// Flags over the runtime config over the defaults.
    fn settings(&self, config: Option<&RuntimeConfig>) -> anyhow::Result<TraceSettings> {
        let mut s = match config {
            Some(c) => TraceSettings::from_config(c)?,
            None => TraceSettings {
                spec: TraceStoreSpec::Embedded(PathBuf::from("traces/traces.sqlite")),
                full_sample: None,
                retention_days: TraceSettings::DEFAULT_RETENTION_DAYS,
            },
        };
        if let Some(spec) = &self.trace_store {
            s.spec = spec.clone();
        }
        if let (TraceStoreSpec::Elasticsearch { credentials_dir, .. }, Some(dir)) =
            (&mut s.spec, &self.trace_credentials_dir)
        {
            *credentials_dir = Some(dir.clone());
        }
        if let Some(p) = self.trace_full_percent {
            anyhow::ensure!(
                (0.0..=100.0).contains(&p),
                "--trace-full-percent: {p} is not in 0..=100"
            );
            s.full_sample = Some(p / 100.0);
        }
        if let Some(d) = self.trace_retention_days {
            anyhow::ensure!(d > 0, "--trace-retention-days: must be at least 1");
            s.retention_days = d;
        }
        Ok(s)
    }
}

/// The model bundled with the source tree.
fn bundled_model() -> PathBuf {
    recstack_services::source_file("models/deepfm/model.onnx")
}

impl ModelArgs {
    fn sources(&self, config: Option<&RuntimeConfig>) -> anyhow::Result<ModelSources> {
        let mut s = ModelSources {
            primary: self.model.clone().unwrap_or_else(bundled_model),
            canary: self.canary_model.clone(),
            canary_percent: self.canary_percent,
            device: self.device,
            batch: BatchConfig {
                max_batch: self.max_batch,
                max_wait: Duration::from_micros(self.max_wait_us),
                enabled: !self.no_batching,
                ..BatchConfig::default()
            },
            intra_threads: self.intra_threads,
            fold: !self.no_fold,
        };
        if let Some(c) = config {
            let r = &c.ranking;
            if self.model.is_none() {
                s.primary = model_path("ranking.model.uri", &r.model.uri)?;
            }
            if self.canary_model.is_none()
                && let Some(uri) = &r.model.canary_uri
            {
                s.canary = Some(model_path("ranking.model.canaryUri", uri)?);
                s.canary_percent = r.model.canary_percent.clamp(0, 100) as u32;
            }
            s.device = r.device.parse().map_err(anyhow::Error::msg)?;
            s.batch.max_batch = r.batching.max_batch.max(1) as usize;
            s.batch.max_wait = Duration::from_micros(r.batching.max_wait_micros.max(0) as u64);
        }
        Ok(s)
    }
}

#[derive(Subcommand)]
enum ServeCommand {
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
    },
}

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

/// Serves until Ctrl-C, then stops cleanly.
async fn until_ctrl_c(services: Vec<Service>) -> anyhow::Result<()> {
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("stopping…");
    for s in services {
        s.stop().await?;
    }
    Ok(())
}

async fn serve_component(component: ServeCommand) -> anyhow::Result<()> {
    let service = match component {
        ServeCommand::Recall { serve, reload_secs } => {
            let config = serve.config()?;
            let loaded = serve::load_artifacts(&serve.artifacts)?;
            eprintln!("recall: serving artifact version {}", loaded.manifest.version);
            let every = Duration::from_secs(reload_secs.max(1));
            let trending = match config.as_ref().and_then(|c| c.feature_store.redis_url.as_deref()) {
                Some(url) => Trending::redis(RedisStore::connect(url, Duration::from_millis(100)).await?),
                None => Trending::none(),
            };
            serve::recall(
                loaded,
                Some((serve.artifacts.clone(), every)),
                trending,
                serve.addrs(config.as_ref(), 9090, 8080),
            )
            .await?
        }
        ServeCommand::Feature { serve, redis_url, dump } => {
            let config = serve.config()?;
            let redis_url = redis_url.or_else(|| config.as_ref().and_then(|c| c.feature_store.redis_url.clone()));
            let snapshot = serve.snapshot()?;
            let source = match redis_url.as_deref() {
                Some(url) => FeatureSource::Redis(url),
                None => FeatureSource::Snapshot,
            };
            serve::features(snapshot, source, dump, serve.addrs(config.as_ref(), 9091, 8081)).await?
        }
        ServeCommand::Ingest { serve, log, recall } => {
            let config = serve.config()?;
            let log = Arc::new(log.open(config.as_ref()).await?);
            let recall = match recall {
                Some(url) => Some(url),
                None => config.as_ref().map(|c| c.endpoint("recall")).transpose()?,
            };
            let seen = match recall {
                Some(url) => SeenLink::grpc(&url)?,
                None => SeenLink::None,
            };
            serve::ingest(log, seen, serve.addrs(config.as_ref(), 9094, 8084)).await?
        }
        ServeCommand::Stream {
            serve,
            log,
            redis_url,
            window,
        } => {
            let config = serve.config()?;
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
            let log = Arc::new(log.open(config.as_ref()).await?);
            let sink = RedisStore::connect(&redis_url, Duration::from_secs(2)).await?;
            let window = WindowConfig {
                size_ms: window,
                ..WindowConfig::default()
            };
            let http = serve.addrs(config.as_ref(), 9095, 8085).http;
            serve::stream_job(log, Arc::new(sink), serve.snapshot()?, window, http).await?
        }
        ServeCommand::Ranking { serve, model } => {
            let config = serve.config()?;
            let sources = model.sources(config.as_ref())?;
            let snapshot = serve.snapshot()?;
            serve::ranking(
                snapshot,
                sources,
                Duration::from_secs(5),
                serve.addrs(config.as_ref(), 9092, 8082),
            )
            .await?
        }
        ServeCommand::Rerank {
            serve,
            blocked,
            pins,
            fresh_boost,
        } => {
            let config = serve.config()?;
            let snapshot = serve.snapshot()?;
            let rules = RerankConfig {
                blocked: blocked.into_iter().collect(),
                pins,
                fresh_boost,
                ..RerankConfig::default()
            };
            serve::rerank(
                snapshot,
                rules,
                Experiment::default(),
                serve.addrs(config.as_ref(), 9093, 8083),
            )
            .await?
        }
        ServeCommand::Gateway {
            serve,
            recall,
            features,
            ranking,
            rerank,
            traces,
            latency,
        } => {
            let config = serve.config()?;
            let trace_settings = traces.settings(config.as_ref())?;
            let endpoints = match &config {
                Some(c) => Endpoints {
                    recall: c.endpoint("recall")?,
                    features: c.endpoint("feature")?,
                    ranking: c.endpoint("ranking")?,
                    rerank: c.endpoint("rerank")?,
                },
                None => Endpoints {
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
        } => {
            let config = config.as_deref().map(RuntimeConfig::read).transpose()?;
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
            serve::trace_query(store, index, http_addr).await?
        }
        ServeCommand::Dashboard {
            traces_url,
            http_addr,
            stack,
            namespace,
            components,
            site,
        } => {
            use recstack_dashboard::server::{DashboardConfig, LocalComponent, StatusSource};
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
            };
            serve::dashboard(config, http_addr).await?
        }
    };
    match service.grpc {
        Some(grpc) => eprintln!("{}: gRPC on {grpc}, HTTP on http://{}", service.name, service.http),
        None => eprintln!("{}: HTTP on http://{}", service.name, service.http),
    }
    until_ctrl_c(vec![service]).await
}

/// Runs the local stack until Ctrl-C; `trace_file` is where `opts` keeps its traces.
async fn up(artifacts: PathBuf, opts: LocalOptions, trace_file: PathBuf) -> anyhow::Result<()> {
    let stack = serve::start_local(&artifacts, opts).await?;
    let gw = stack.get("gateway");
    println!(
        "recstack is up on the bundled data (artifacts {}):",
        stack.artifact_version
    );
    println!("  gateway   http://{}/v1/recommend   {}", gw.http, gw.grpc_url());
    for s in &stack.services[1..] {
        if s.name == "dashboard" {
            continue;
        }
        match (s.name, s.grpc) {
            ("ingest", Some(grpc)) => println!("  ingest    http://{}/v1/events   http://{grpc}", s.http),
            ("traces", _) => println!(
                "  {:<9} http://{}/v1/traces   metrics http://{}/metrics",
                s.name, s.http, s.http
            ),
            (_, Some(grpc)) => println!("  {:<9} http://{grpc}   metrics http://{}/metrics", s.name, s.http),
            (_, None) => println!("  {:<9} metrics http://{}/metrics", s.name, s.http),
        }
    }
    println!("try:");
    println!(
        "  curl -s http://{}/v1/recommend -H 'content-type: application/json' -d '{{\"user_id\": \"1\", \"n\": 10}}'",
        gw.http
    );
    if let Some(ingest) = stack.find("ingest") {
        println!(
            "  curl -s http://{}/v1/events -H 'content-type: application/json' -d '{{\"events\": [{{\"event_id\": \"e1\", \"user_id\": \"1\", \"item_id\": \"0110912\", \"kind\": \"click\"}}]}}'",
            ingest.http
        );
    }
    println!(
        "  cargo run -p recstack-services -- query --user 1 --recall-addr {} --features-addr {}",
        stack.get("recall").grpc.map(|a| a.to_string()).unwrap_or_default(),
        stack.get("features").grpc.map(|a| a.to_string()).unwrap_or_default()
    );
    println!(
        "  cargo run --release -p recstack-services -- bench --gateway {} --rate 200",
        gw.grpc_url()
    );
    if let Some(traces) = stack.find("traces") {
        println!(
            "  curl -s 'http://{}/v1/traces?user=1'   (then /v1/traces/<request_id>/why/<item_id>)",
            traces.http
        );
        println!("trace store file: {}", trace_file.display());
    }
    if let Some(dashboard) = stack.find("dashboard") {
        println!(
            "dashboard: http://{}/   (traces, funnels, lineage, why-not, stack status)",
            dashboard.http
        );
    }
    println!("Ctrl-C stops.");
    until_ctrl_c(stack.services).await
}

/// Runs an async command on a fresh multi-threaded runtime (only the serving commands need one).
fn block_on(command: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(command)
}

/// Builds and writes artifacts from the data in `dir`.
fn run_build(dir: PathBuf, out: &std::path::Path, seed: u64, quiet: bool) -> anyhow::Result<build::Manifest> {
    let start = Instant::now();
    let ds = Dataset::load_movietweetings(&dir)?;
    eprintln!(
        "build: {} users, {} items, {} ratings from {}",
        ds.n_users(),
        ds.n_items(),
        ds.ratings.len(),
        dir.display()
    );
    let params = BuildParams {
        seed,
        ..BuildParams::default()
    };
    let (manifest, _) = build::build_loaded(&ds, &dir, out, &params, &Progress::new(quiet))?;
    eprintln!(
        "build: version {} written in {:.1}s",
        manifest.version,
        start.elapsed().as_secs_f64()
    );
    Ok(manifest)
}

/// Asks the local services for a user's features and recall candidates, and prints them.
async fn query(user: String, n: u32, recall_addr: SocketAddr, features_addr: SocketAddr) -> anyhow::Result<()> {
    use recstack_services::features::proto::GetUserRequest;
    use recstack_services::features::proto::features_client::FeaturesClient;
    use recstack_services::recall::service::proto::RecallRequest;
    use recstack_services::recall::service::proto::recall_client::RecallClient;

    let mut features = FeaturesClient::connect(format!("http://{features_addr}"))
        .await
        .with_context(|| format!("no feature service on {features_addr}: start it with `recstack up`"))?;
    match features
        .get_user(GetUserRequest { user_id: user.clone() })
        .await?
        .into_inner()
        .features
    {
        Some(f) => {
            let genres: Vec<String> = f
                .top_genres
                .iter()
                .map(|g| format!("{} {:.0}%", g.genre, g.share * 100.0))
                .collect();
            println!(
                "user {user}: {} ratings, mean {:.1}, top genres: {}",
                f.ratings,
                f.mean_rating,
                genres.join(", ")
            );
        }
        None => println!("user {user}: unknown (cold start: hot items only)"),
    }
    let mut recall = RecallClient::connect(format!("http://{recall_addr}"))
        .await
        .with_context(|| format!("no recall service on {recall_addr}: start it with `recstack up`"))?;
    let resp = recall
        .recall(RecallRequest {
            user_id: user,
            n,
            ..Default::default()
        })
        .await?
        .into_inner();
    println!(
        "{} candidates from artifact version {}:",
        resp.candidates.len(),
        resp.artifact_version
    );
    for (rank, c) in resp.candidates.iter().enumerate() {
        let sources: Vec<String> = c
            .sources
            .iter()
            .map(|s| format!("{}#{} ({:.3})", s.channel_name(), s.rank, s.score))
            .collect();
        println!(
            "{:>4}. {}  fused {:.4}  from {}",
            rank + 1,
            c.item_id,
            c.fused_score,
            sources.join(", ")
        );
    }
    Ok(())
}

/// Writes the training and held-out ratings as CSV with dense ids.
fn export(a: &build::Artifacts, dir: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut train = std::io::BufWriter::new(std::fs::File::create(dir.join("train.csv"))?);
    for (u, (items, ratings)) in a.history.iter().zip(&a.history_ratings).enumerate() {
        for (i, r) in items.iter().zip(ratings) {
            writeln!(train, "{u},{i},{r}")?;
        }
    }
    let mut test = std::io::BufWriter::new(std::fs::File::create(dir.join("test.csv"))?);
    for r in &a.holdout {
        writeln!(test, "{},{},{}", r.user, r.item, r.rating)?;
    }
    std::fs::write(dir.join("shape.txt"), format!("{} {}\n", a.users.len(), a.items.len()))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Build { data, out, seed, quiet } => {
            let manifest = run_build(data.unwrap_or_else(dataset::bundled_dir), &out, seed, quiet)?;
            println!("{}", out.join(&manifest.version).display());
            Ok(())
        }
        Command::Up {
            artifacts,
            model,
            redis_url,
            ephemeral_ports,
            grpc_links,
            trace_file,
            trace_full_percent,
            dashboard_site,
            events_dir,
            window,
            latency,
        } => {
            if !artifacts.join("current").exists() {
                eprintln!(
                    "up: no artifacts in {}; building them from the bundled data",
                    artifacts.display()
                );
                run_build(dataset::bundled_dir(), &artifacts, 42, false)?;
            }
            anyhow::ensure!(
                (0.0..=100.0).contains(&trace_full_percent),
                "--trace-full-percent: {trace_full_percent} is not in 0..=100"
            );
            let traces = trace_file.unwrap_or_else(|| traces::local_path(&artifacts));
            let gateway = GatewayConfig {
                full_trace_sample: trace_full_percent / 100.0,
                latency: latency.objective(None),
                ..GatewayConfig::default()
            };
            let opts = LocalOptions {
                addrs: if ephemeral_ports {
                    LocalAddrs::ephemeral()
                } else {
                    LocalAddrs::standard()
                },
                model: model.sources(None)?,
                redis_url,
                gateway,
                rerank: RerankConfig::default(),
                experiment: Experiment::default(),
                traces: LocalTraces::Embedded(traces.clone()),
                direct_links: !grpc_links,
                dashboard_site: Some(
                    dashboard_site.unwrap_or_else(|| recstack_services::source_file("../dashboard/site")),
                ),
                events: Some(LocalEvents {
                    log_dir: events_dir.unwrap_or_else(|| artifacts.join("events")),
                    partitions: 4,
                    window: WindowConfig {
                        size_ms: window,
                        ..WindowConfig::default()
                    },
                }),
            };
            block_on(up(artifacts, opts, traces))
        }
        Command::Query {
            user,
            n,
            recall_addr,
            features_addr,
        } => block_on(query(user, n, recall_addr, features_addr)),
        Command::Bench(args) => block_on(bench::run(args)),
        Command::Serve { component } => block_on(serve_component(component)),
        Command::Synth {
            users,
            items,
            out,
            seed,
        } => {
            let reference = Dataset::load_movietweetings(&dataset::bundled_dir())?;
            let cal = recstack_services::synth::Calibration::from_dataset(&reference);
            eprintln!("synth: SYNTHETIC data, {users} users × {items} items, calibrated to MovieTweetings 100K");
            let n = recstack_services::synth::generate(&cal, users, items, seed, &out, true)
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!("synth: {n} ratings written to {}", out.display());
            Ok(())
        }
        Command::ExportRanking { artifacts, data, out } => {
            use recstack_services::ranking::export::{self, CandidateParams};
            use recstack_services::ranking::features::FeatureSpec;
            let (manifest, a) = build::load(&artifacts, None).context("loading artifacts")?;
            let data = data.unwrap_or_else(dataset::bundled_dir);
            let inputs = build::hash_inputs(&data, &["movies.dat", "ratings.dat"])?;
            anyhow::ensure!(
                inputs == manifest.inputs,
                "--data {}: not the data artifacts {} were built from (the files' sha256 differ)",
                data.display(),
                manifest.version
            );
            let ds = Dataset::load_movietweetings(&data)?;
            eprintln!("export-ranking: the validation world (the training ratings, split again by time)");
            let world = export::validation_world(&ds, &manifest.params, &Progress::new(false))?;
            let spec = FeatureSpec::all(FeatureSpec::default_buckets);
            let p = CandidateParams::default();
            let (trained, judged) = export::held_out_users(&world, p.judge_every);
            let (_, reported) = export::held_out_users(&a, p.judge_every);
            let mut splits = Vec::new();
            for (name, world, users, sample) in [
                ("train", &world, &trained, true),
                ("valid", &world, &judged, false),
                ("test", &a, &reported, false),
            ] {
                let started = Instant::now();
                let split = export::candidate_rows(world, &spec, &p, users, sample);
                eprintln!(
                    "export-ranking: {name}: {} rows ({} positives) for {} users in {:.1}s",
                    split.rows(),
                    split.label.iter().filter(|&&l| l > 0.0).count(),
                    users.len(),
                    started.elapsed().as_secs_f64()
                );
                splits.push((name, split));
            }
            let named: Vec<(&str, &export::Split)> = splits.iter().map(|(n, s)| (*n, s)).collect();
            export::write(&out, &spec, &named).with_context(|| format!("writing {}", out.display()))?;
            std::fs::write(out.join("artifact_version"), &manifest.version)?;
            eprintln!(
                "export-ranking: wrote {} (artifacts {})",
                out.display(),
                manifest.version
            );
            Ok(())
        }
        Command::Eval {
            artifacts,
            version,
            export_split,
        } => {
            let (manifest, a) = build::load(&artifacts, version.as_deref()).context("loading artifacts")?;
            if let Some(dir) = export_split {
                export(&a, &dir).with_context(|| format!("writing the split to {}", dir.display()))?;
            }
            let (rows, users) = eval::evaluate(&a, true);
            println!(
                "evaluation of {} on {users} users' held-out ratings ({} ratings)\n",
                manifest.version,
                a.holdout.len()
            );
            println!("| list | recall@50 | recall@200 | NDCG@20 |");
            println!("|---|---:|---:|---:|");
            for (name, m) in &rows {
                println!(
                    "| {name} | {:.4} | {:.4} | {:.4} |",
                    m.recall_50, m.recall_200, m.ndcg_20
                );
            }
            Ok(())
        }
    }
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

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
