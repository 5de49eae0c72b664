//! The flags `serve` components share: where a component listens and its runtime config, the
//! event log, the ranking model, the latency objective, the trace store. Each resolves flags
//! over the operator's runtime config over the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use recstack_core::degrade::LatencyObjective;
use recstack_core::features::Snapshot;
use recstack_services::config::aggregates_topic;
use recstack_services::config::{EventLogConfig, ModelUri, RuntimeConfig, model_uri};
use recstack_services::events::AnyLog;
use recstack_services::events::kafka::{KafkaLog, TopicSettings};
use recstack_services::events::log::{EventLog, FileLog};
use recstack_services::objects;
use recstack_services::ranking::batcher::BatchConfig;
use recstack_services::ranking::model::Device;
use recstack_services::ranking::service::ModelSources;
use recstack_services::serve::{self, Addrs};
use recstack_services::stream::Input;
use recstack_services::traces::{TraceSettings, TraceStoreSpec};

/// Where a served component listens, its artifacts, and the operator's runtime config.
#[derive(Args, Clone)]
pub struct ServeArgs {
    /// Artifacts written by `recstack build` (serves what `current` names): a directory, or an
    /// object store prefix (`s3://bucket/prefix`, `gs://`, `az://`, `https://`) copied into
    /// `--cache-dir` and polled (default: the runtime config's `artifacts.uri`, else
    /// `artifacts`).
    #[arg(long = "artifacts", value_name = "URI")]
    pub artifacts_uri: Option<String>,
    /// Where remote artifacts and models are copied.
    #[arg(long, env = "RECSTACK_CACHE_DIR", default_value = ".recstack-cache")]
    pub cache_dir: PathBuf,
    /// The local artifact root, once [`ServeArgs::prepare`] has fetched it.
    #[arg(skip)]
    pub artifacts: PathBuf,
    /// gRPC listen address.
    #[arg(long)]
    pub grpc_addr: Option<SocketAddr>,
    /// `/metrics`, `/healthz`, `/readyz` (and the gateway's HTTP API).
    #[arg(long)]
    pub http_addr: Option<SocketAddr>,
    /// The runtime config the operator mounts (`/etc/recstack/config.yaml`): ports, peers,
    /// model, batching, feature store. Flags given explicitly win.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl ServeArgs {
    pub fn addrs(&self, config: Option<&RuntimeConfig>, grpc: u16, http: u16) -> Addrs {
        let (cg, ch) = config.map(RuntimeConfig::listen).unwrap_or((
            SocketAddr::from(([127, 0, 0, 1], grpc)),
            SocketAddr::from(([127, 0, 0, 1], http)),
        ));
        Addrs {
            grpc: self.grpc_addr.unwrap_or(cg),
            http: self.http_addr.unwrap_or(ch),
        }
    }

    /// Makes the artifacts local: a directory is used as it is; a remote prefix is copied into
    /// `<cache-dir>/artifacts` (the service starts, and turns ready, only after) and polled
    /// every `artifacts.pollSeconds` on a task. Returns the runtime config.
    pub async fn prepare(&mut self) -> anyhow::Result<Option<RuntimeConfig>> {
        let config = self.config()?;
        let settings = config.as_ref().map(|c| c.artifacts.clone());
        let uri = match (&self.artifacts_uri, &settings) {
            (Some(uri), _) => uri.clone(),
            (None, Some(s)) => s.uri.clone(),
            (None, None) => "artifacts".to_string(),
        };
        let every = Duration::from_secs(settings.as_ref().map_or(30, |s| s.poll_seconds.max(1)) as u64);
        let endpoint = settings.as_ref().and_then(|s| s.endpoint.clone());
        let (root, mirror) =
            objects::artifact_root(&uri, endpoint.as_deref(), &self.cache_dir.join("artifacts"), every)
                .await
                .with_context(|| format!("fetching the artifacts from {uri}"))?;
        if let Some(mirror) = mirror {
            tokio::spawn(mirror.poll(every));
        }
        self.artifacts = root;
        Ok(config)
    }

    pub fn config(&self) -> anyhow::Result<Option<RuntimeConfig>> {
        self.config
            .as_deref()
            .map(RuntimeConfig::read)
            .transpose()
            .context("reading the runtime config")
    }

    /// How a service follows new artifact versions in its local root: checked every
    /// `artifacts.pollSeconds` (10 s without a runtime config), from the version now current.
    pub fn reload(&self, config: Option<&RuntimeConfig>) -> serve::Reload {
        let every = Duration::from_secs(config.map_or(10, |c| c.artifacts.poll_seconds.max(1)) as u64);
        let version = std::fs::read_to_string(self.artifacts.join("current")).unwrap_or_default();
        Some((self.artifacts.clone(), every, version.trim().to_string()))
    }

    /// The user and item features of the artifacts' current version.
    pub fn snapshot(&self) -> anyhow::Result<Arc<Snapshot>> {
        Ok(Arc::new(Snapshot::from_artifacts(
            &serve::load_artifacts(&self.artifacts)?.artifacts,
        )))
    }
}

/// Which event log to use: `--log-dir` (embedded), `--kafka` (a Kafka-protocol cluster), or
/// the runtime config's `eventLog`.
#[derive(Args, Clone)]
pub struct LogArgs {
    /// The embedded log's directory.
    #[arg(long, conflicts_with = "kafka")]
    pub log_dir: Option<PathBuf>,
    /// Kafka bootstrap servers, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub kafka: Vec<String>,
    #[arg(long, default_value = "recstack-events")]
    pub topic: String,
    /// Partitions of a new log (an existing one keeps its own).
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Replication factor of a new Kafka topic (the runtime config's when it has one).
    #[arg(long, default_value_t = 1)]
    pub replication_factor: u32,
}

impl LogArgs {
    pub async fn open(&self, config: Option<&RuntimeConfig>) -> anyhow::Result<AnyLog> {
        self.open_input(config, Input::Events).await
    }

    /// The log the stream job reads: the events, or beside them the Flink job's output
    /// (`<topic>-aggregates`, created with the event topic's settings when missing).
    pub async fn open_input(&self, config: Option<&RuntimeConfig>, input: Input) -> anyhow::Result<AnyLog> {
        let cli_topic = || TopicSettings {
            replication_factor: self.replication_factor,
            min_insync_replicas: self.replication_factor.min(2),
            ..TopicSettings::single_broker(self.partitions)
        };
        let kafka = match (&self.log_dir, self.kafka.is_empty(), config.map(|c| &c.event_log)) {
            (Some(_), _, _) => None,
            (None, false, _) => Some((self.kafka.clone(), self.topic.clone(), cli_topic())),
            (
                None,
                true,
                Some(EventLogConfig::Kafka {
                    bootstrap_servers,
                    topic,
                    create,
                }),
            ) => Some((
                bootstrap_servers.clone(),
                topic.clone(),
                create.as_ref().map_or_else(cli_topic, |c| TopicSettings {
                    partitions: c.partitions,
                    replication_factor: c.replication_factor,
                    min_insync_replicas: c.min_insync_replicas,
                    retention_ms: i64::from(c.retention_hours) * 3_600_000,
                }),
            )),
            (None, true, _) => None,
        };
        let kafka = kafka.map(|(brokers, topic, settings)| match input {
            Input::Events => (brokers, topic, settings),
            Input::Aggregates => (brokers, aggregates_topic(&topic), settings),
        });
        if input == Input::Aggregates && kafka.is_none() {
            anyhow::bail!("the Flink job's output is a Kafka topic: give --kafka or a runtime config with eventLog");
        }
        Ok(match kafka {
            Some((brokers, topic, settings)) => {
                let log = KafkaLog::connect(&brokers, &topic, &settings)
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
pub struct ModelArgs {
    /// `model.onnx` with `model.json` beside it (default: the bundled trees, `models/gbdt`).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long)]
    pub canary_model: Option<PathBuf>,
    /// Percent of users the canary scores (stable per user).
    #[arg(long, default_value_t = 0)]
    pub canary_percent: u32,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// Most rows per model call.
    #[arg(long, default_value_t = BatchConfig::default().max_batch)]
    pub max_batch: usize,
    /// Most requests scored together in one model call.
    #[arg(long, default_value_t = BatchConfig::default().max_requests)]
    pub max_requests: usize,
    /// Longest a request waits for others to join its batch, from entering the queue, in
    /// microseconds.
    #[arg(long, default_value_t = BatchConfig::default().max_wait.as_micros() as u64)]
    pub max_wait_us: u64,
    /// Score each request alone (for comparison).
    #[arg(long)]
    pub no_batching: bool,
    /// ONNX Runtime threads per model call.
    #[arg(long, default_value_t = 1)]
    pub intra_threads: usize,
    /// Run the whole graph in ONNX Runtime per request even when the model card splits it or
    /// names its trees (for comparison; by default a factored model's first stage is folded
    /// into tables at load time, and a tree model's trees are walked by the service).
    #[arg(long)]
    pub no_fold: bool,
}

/// The gateway's latency objective.
#[derive(Args, Clone)]
pub struct LatencyArgs {
    /// p99 the gateway keeps, in ms of its own time per request, by starting a share of
    /// requests at the reduced level while it is missed (0: off; load and downstream health
    /// alone choose levels). Default: the runtime config's `gateway.latencyTargetMs`, else 5.
    #[arg(long, value_parser = parse_target_ms, allow_negative_numbers = true)]
    pub latency_target_ms: Option<f64>,
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
    pub fn objective(&self, config: Option<&RuntimeConfig>) -> Option<LatencyObjective> {
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
pub struct TraceArgs {
    /// `off`, `embedded:PATH` (or a path) or an `http(s)://` Elasticsearch URL. Default: the
    /// runtime config's trace store, else `embedded:traces/traces.sqlite`.
    #[arg(long, value_parser = |s: &str| s.parse::<TraceStoreSpec>())]
    pub trace_store: Option<TraceStoreSpec>,
    /// A directory with `username` and `password` files for Elasticsearch.
    #[arg(long)]
    pub trace_credentials_dir: Option<PathBuf>,
    /// Percent of requests traced in full (default: the config's sampling, else 1).
    #[arg(long)]
    pub trace_full_percent: Option<f64>,
    /// Days of traces kept (default: the config's retention, else 7).
    #[arg(long)]
    pub trace_retention_days: Option<u32>,
}

impl TraceArgs {
    /// Flags over the runtime config over the defaults.
    pub fn settings(&self, config: Option<&RuntimeConfig>) -> anyhow::Result<TraceSettings> {
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
    recstack_core::source_file("models/gbdt/model.onnx")
}

/// A model's local path: itself, or for an object store URI a copy under `cache` fetched now
/// and polled every `every` (the ranking service's watcher swaps in what changes).
async fn local_model(
    field: &str,
    uri: &str,
    endpoint: Option<&str>,
    cache: &Path,
    every: Duration,
) -> anyhow::Result<PathBuf> {
    match model_uri(field, uri)? {
        ModelUri::Local(path) => Ok(path),
        ModelUri::Remote(uri) => {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            uri.hash(&mut h);
            let files = objects::ModelFiles::new(&uri, endpoint, &cache.join(format!("model-{:016x}", h.finish())))
                .with_context(|| field.to_string())?;
            files.sync().await.with_context(|| format!("{field}: fetching {uri}"))?;
            tracing::info!(%uri, path = %files.path().display(), "fetched the model");
            let path = files.path();
            tokio::spawn(files.poll(every));
            Ok(path)
        }
    }
}

impl ModelArgs {
    /// The models the flags name (no runtime config).
    pub fn flag_sources(&self) -> ModelSources {
        ModelSources {
            primary: self.model.clone().unwrap_or_else(bundled_model),
            canary: self.canary_model.clone(),
            canary_percent: self.canary_percent,
            device: self.device,
            batch: BatchConfig {
                max_batch: self.max_batch,
                max_requests: self.max_requests,
                max_wait: Duration::from_micros(self.max_wait_us),
                enabled: !self.no_batching,
                ..BatchConfig::default()
            },
            intra_threads: self.intra_threads,
            fold: !self.no_fold,
        }
    }

    /// The models to serve: the flags over the runtime config; remote ones are fetched into
    /// `cache` first.
    pub async fn sources(&self, config: Option<&RuntimeConfig>, cache: &Path) -> anyhow::Result<ModelSources> {
        let mut s = self.flag_sources();
        if let Some(c) = config {
            let r = &c.ranking;
            let every = Duration::from_secs(c.artifacts.poll_seconds.max(1) as u64);
            let endpoint = c.artifacts.endpoint.as_deref();
            if self.model.is_none() {
                s.primary = local_model("ranking.model.uri", &r.model.uri, endpoint, cache, every).await?;
            }
            if self.canary_model.is_none()
                && let Some(uri) = &r.model.canary_uri
            {
                s.canary = Some(local_model("ranking.model.canaryUri", uri, endpoint, cache, every).await?);
                s.canary_percent = r.model.canary_percent.clamp(0, 100) as u32;
            }
            s.device = r.device.parse().map_err(anyhow::Error::msg)?;
            s.batch.max_batch = r.batching.max_batch.max(1) as usize;
            s.batch.max_requests = r.batching.max_requests.max(1) as usize;
            s.batch.max_wait = Duration::from_micros(r.batching.max_wait_micros.max(0) as u64);
        }
        Ok(s)
    }
}
