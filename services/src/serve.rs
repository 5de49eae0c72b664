//! Starting the services: each binds its gRPC and HTTP (`/metrics`, `/healthz`, `/readyz`)
//! listeners first (so port 0 works and addresses are known), then serves on a task until
//! stopped. `recstack serve <component>` runs one; [`start_local`] runs the whole stack in one
//! process on loopback (`recstack up`, and the integration tests).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use recstack_trace_store::explain::ItemIndex;
use recstack_trace_store::store::{TraceStore, spawn_retention};
use recstack_trace_store::writer::{TraceWriter, WriterConfig};
use recstack_trace_store::{MemorySink, NoSink, TraceSink};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::Routes;

use crate::events::ingest::proto::ingest_server::IngestServer;
use crate::events::ingest::{Ingest, IngestGrpc, SeenLink};
use crate::events::log::{EventLog, FileLog};
use crate::features::proto::features_server::Features;
use crate::features::proto::features_server::FeaturesServer;
use crate::features::{CachePolicy, FeatureMetrics, FeatureService, FeatureStore, L2, NoL2, RedisL2, Snapshot};
use crate::gateway::links::{Direct, FeaturesLink, Links, RankingLink, RecallLink, RerankLink};
use crate::gateway::proto::gateway_server::GatewayServer;
use crate::gateway::{Catalogue, Endpoints, Gateway, GatewayConfig, GatewayGrpc, GatewayMetrics};
use crate::ops;
use crate::ranking::model::ModelError;
use crate::ranking::service::proto::ranking_server::Ranking;
use crate::ranking::service::proto::ranking_server::RankingServer;
use crate::ranking::service::{ModelSources, RankingMetrics, RankingService, load_models, watch_models};
use crate::recall::proto::recall_server::Recall;
use crate::recall::proto::recall_server::RecallServer;
use crate::recall::{ArtifactSlot, Loaded, MemorySeenStore, RecallMetrics, RecallService, watch_artifacts};
use crate::rerank::proto::rerank_server::Rerank;
use crate::rerank::proto::rerank_server::RerankServer;
use crate::rerank::{Experiment, RerankMetrics, RerankService};
use crate::stream::sink::{FeatureSink, MemoryStore, RedisStore, Trending};
use crate::stream::{StreamConfig, StreamMetrics, Worker};
use recstack_core::artifacts::ArtifactError;
use recstack_core::recall::seen::SeenConfig;
use recstack_core::rerank::RerankConfig;
use recstack_core::stream::window::WindowConfig;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("no artifacts to serve in {root}: run `recstack build --out {root}` ({source})")]
    Artifacts { root: PathBuf, source: ArtifactError },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("feature store: {0}")]
    Redis(String),
    #[error(transparent)]
    Endpoint(#[from] crate::link::EndpointError),
    #[error("{service}: {message}")]
    Server { service: &'static str, message: String },
}

/// Where a service listens.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

impl Addrs {
    /// Loopback, ports chosen by the OS.
    pub fn ephemeral() -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self { grpc: any, http: any }
    }
}

/// A service's implementation, for callers in the same process (the gateway's direct links).
#[derive(Clone)]
pub enum DirectService {
    Recall(Arc<dyn Recall>),
    Features(Arc<dyn Features>),
    Ranking(Arc<dyn Ranking>),
    Rerank(Arc<dyn Rerank>),
    /// Services other processes only reach over the network.
    None,
}

/// A running service.
pub struct Service {
    pub name: &'static str,
    /// The bound addresses (real ports when 0 was asked for); `None` for HTTP-only services.
    pub grpc: Option<SocketAddr>,
    pub http: SocketAddr,
    pub direct: DirectService,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Service {
    /// `http://<grpc address>` for clients (empty for an HTTP-only service).
    pub fn grpc_url(&self) -> String {
        self.grpc.map(|a| format!("http://{a}")).unwrap_or_default()
    }

    /// Becomes true when the service is stopped.
    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Stops accepting, finishes in-flight calls, and returns how serving ended.
    pub async fn stop(self) -> Result<(), ServeError> {
        let _ = self.stop.send(true);
        self.wait().await
    }

    /// Waits until the service ends by itself (or is stopped elsewhere).
    pub async fn wait(self) -> Result<(), ServeError> {
        self.task.await.unwrap_or_else(|e| {
            Err(ServeError::Server {
                service: self.name,
                message: format!("task ended abnormally: {e}"),
            })
        })
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Serves `routes` over gRPC (when given) and `http` over HTTP until stopped.
async fn spawn(
    name: &'static str,
    addrs: Addrs,
    routes: Option<Routes>,
    http: axum::Router,
    direct: DirectService,
    after: impl Future<Output = ()> + Send + 'static,
) -> Result<Service, ServeError> {
    let grpc_listener = match routes {
        Some(routes) => Some((bind(addrs.grpc).await?, routes)),
        None => None,
    };
    let http_listener = bind(addrs.http).await?;
    let grpc = grpc_listener
        .as_ref()
        .map(|(l, _)| l.local_addr())
        .transpose()
        .map_err(|source| ServeError::Bind {
            addr: addrs.grpc,
            source,
        })?;
    let http_addr = http_listener.local_addr().map_err(|source| ServeError::Bind {
        addr: addrs.http,
        source,
    })?;
    let (stop, stopped) = watch::channel(false);
    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let http_serve = axum::serve(http_listener, http).with_graceful_shutdown(wait(stopped.clone()));
    let http_task = tokio::spawn(async move { http_serve.await });
    let task = tokio::spawn(async move {
        let served = match grpc_listener {
            Some((listener, routes)) => tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(ops::grpc_incoming(listener), wait(stopped))
                .await
                .map_err(|e| ServeError::Server {
                    service: name,
                    message: e.to_string(),
                }),
            None => Ok(()),
        };
        let _ = http_task.await;
        after.await;
        served
    });
    Ok(Service {
        name,
        grpc,
        http: http_addr,
        direct,
        stop,
        task,
    })
}

fn ops_router(encode: ops::Encode) -> axum::Router {
    ops::router(encode, Arc::new(AtomicBool::new(true)))
}

/// Loads the version `root/current` names.
pub fn load_artifacts(root: &Path) -> Result<Loaded, ServeError> {
    Loaded::from_dir(root).map_err(|source| ServeError::Artifacts {
        root: root.to_path_buf(),
        source,
    })
}

/// The recall service; with `reload`, polls the artifact root for new versions; its hot
/// channel leads with `trending` (the stream job's list).
pub async fn recall(
    loaded: Loaded,
    reload: Option<(PathBuf, Duration)>,
    trending: Trending,
    addrs: Addrs,
) -> Result<Service, ServeError> {
    let slot = Arc::new(ArtifactSlot::new(loaded));
    let metrics = Arc::new(RecallMetrics::default());
    let service = Arc::new(
        RecallService::new(
            slot.clone(),
            MemorySeenStore::default(),
            SeenConfig::default(),
            metrics.clone(),
        )
        .with_trending(trending),
    );
    let watcher = reload.map(|(root, every)| tokio::spawn(watch_artifacts(slot, root, every)));
    let encode: ops::Encode = Arc::new(move || metrics.encode());
    spawn(
        "recall",
        addrs,
        Some(Routes::new(RecallServer::from_arc(service.clone()))),
        ops_router(encode),
        DirectService::Recall(service),
        async move {
            if let Some(w) = watcher {
                w.abort();
            }
        },
    )
    .await
}

/// Where the feature service finds real-time values (its L2).
pub enum FeatureSource<'a> {
    /// None: L1 over the snapshot.
    Snapshot,
    /// Redis at this URL.
    Redis(&'a str),
    /// The local stream job's store in this process.
    Memory(Arc<MemoryStore>),
}

/// The feature service: L1 over the real-time `source` over the snapshot; `dump` is read on
/// start and written on stop.
pub async fn features(
    snapshot: Arc<Snapshot>,
    source: FeatureSource<'_>,
    dump: Option<PathBuf>,
    addrs: Addrs,
) -> Result<Service, ServeError> {
    let metrics = Arc::new(FeatureMetrics::default());
    let policy = CachePolicy::default();
    match source {
        FeatureSource::Memory(store) => {
            features_with(
                FeatureStore::new(store, snapshot, policy, metrics.clone()),
                metrics,
                dump,
                addrs,
            )
            .await
        }
        FeatureSource::Redis(url) => {
            let l2 = RedisL2::connect(url, Duration::from_millis(100))
                .await
                .map_err(|e| ServeError::Redis(e.to_string()))?;
            features_with(
                FeatureStore::new(l2, snapshot, policy, metrics.clone()),
                metrics,
                dump,
                addrs,
            )
            .await
        }
        FeatureSource::Snapshot => {
            features_with(
                FeatureStore::new(NoL2, snapshot, policy, metrics.clone()),
                metrics,
                dump,
                addrs,
            )
            .await
        }
    }
}

async fn features_with<L: L2>(
    store: FeatureStore<L>,
    metrics: Arc<FeatureMetrics>,
    dump: Option<PathBuf>,
    addrs: Addrs,
) -> Result<Service, ServeError> {
    let store = Arc::new(store);
    if let Some(path) = &dump
        && path.exists()
    {
        match store.warm(path).await {
            Ok(n) => tracing::info!(n, path = %path.display(), "features: warmed L1"),
            Err(e) => tracing::warn!(error = %e, path = %path.display(), "features: unreadable L1 dump; starting cold"),
        }
    }
    let service = Arc::new(FeatureService { store: store.clone() });
    let encode: ops::Encode = Arc::new(move || metrics.encode());
    let on_stop = {
        let store = store.clone();
        async move {
            if let Some(path) = dump {
                match store.dump(&path).await {
                    Ok(n) => tracing::info!(n, path = %path.display(), "features: dumped L1"),
                    Err(e) => tracing::warn!(error = %e, path = %path.display(), "features: L1 dump failed"),
                }
            }
        }
    };
    spawn(
        "features",
        addrs,
        Some(Routes::new(FeaturesServer::from_arc(service.clone()))),
        ops_router(encode),
        DirectService::Features(service),
        on_stop,
    )
    .await
}

/// The ranking service: loads the models (failing fast on a bad model or card), then watches
/// their files every `reload` for a hot swap.
pub async fn ranking(
    items: Arc<Snapshot>,
    sources: ModelSources,
    reload: Duration,
    addrs: Addrs,
) -> Result<Service, ServeError> {
    let metrics = Arc::new(RankingMetrics::default());
    let set = {
        let (s, i, m) = (sources.clone(), items.clone(), metrics.clone());
        tokio::task::spawn_blocking(move || load_models(&s, &i, m))
            .await
            .map_err(|e| ServeError::Server {
                service: "ranking",
                message: format!("model loader: {e}"),
            })??
    };
    tracing::info!(
        version = set.primary.batcher.version(),
        first_stage_folded = set.primary.folded.is_some(),
        "ranking: model loaded"
    );
    let models = Arc::new(ArcSwap::from_pointee(set));
    let watcher = tokio::spawn(watch_models(
        models.clone(),
        sources,
        items.clone(),
        reload,
        metrics.clone(),
    ));
    let service = Arc::new(RankingService {
        models,
        metrics: metrics.clone(),
    });
    let encode: ops::Encode = Arc::new(move || metrics.encode());
    spawn(
        "ranking",
        addrs,
        Some(Routes::new(RankingServer::from_arc(service.clone()))),
        ops_router(encode),
        DirectService::Ranking(service),
        async move { watcher.abort() },
    )
    .await
}

/// The rerank service with its business rules (block list, pins) in `config` and its A/B
/// experiment on MMR's trade-off.
pub async fn rerank(
    items: Arc<Snapshot>,
    config: RerankConfig,
    experiment: Experiment,
    addrs: Addrs,
) -> Result<Service, ServeError> {
    let metrics = Arc::new(RerankMetrics::default());
    let service = Arc::new(RerankService::new(items, config, experiment, metrics.clone()));
    let encode: ops::Encode = Arc::new(move || metrics.encode());
    spawn(
        "rerank",
        addrs,
        Some(Routes::new(RerankServer::from_arc(service.clone()))),
        ops_router(encode),
        DirectService::Rerank(service),
        async {},
    )
    .await
}

/// Where the gateway's traces go.
pub enum GatewayTraces {
    Off,
    /// The newest traces in memory (tests).
    Memory(Arc<MemorySink>),
    /// Through the writer queue into a store; with `retention_days`, older traces are deleted
    /// hourly (an embedded store is checked every minute, for its size cap too).
    Store {
        store: Arc<dyn TraceStore>,
        writer: WriterConfig,
        retention_days: Option<u32>,
    },
}

/// The gateway: HTTP API (with the operational endpoints) and gRPC. Stopping it flushes the
/// trace writer.
pub async fn gateway(
    catalogue: Arc<Catalogue>,
    links: Links,
    config: GatewayConfig,
    traces: GatewayTraces,
    addrs: Addrs,
) -> Result<Service, ServeError> {
    let mut metrics = GatewayMetrics::default();
    let (sink, writer): (Arc<dyn TraceSink>, _) = match traces {
        GatewayTraces::Off => (Arc::new(NoSink), None),
        GatewayTraces::Memory(memory) => (memory, None),
        GatewayTraces::Store {
            store,
            writer,
            retention_days,
        } => {
            let (writer, task) = TraceWriter::spawn(store.clone(), writer, &mut metrics.registry);
            // An embedded store also keeps under its size cap, checked every minute (a
            // minute of traces is tens of MB at hundreds of requests a second).
            let every = Duration::from_secs(if store.kind() == "embedded" { 60 } else { 3_600 });
            let retention = retention_days.map(|days| spawn_retention(store, days, every));
            (Arc::new(writer), Some((task, retention)))
        }
    };
    let metrics = Arc::new(metrics);
    let gateway = Arc::new(Gateway::new(links, catalogue, config, sink, metrics));
    let http = crate::gateway::http::router(gateway.clone(), Arc::new(AtomicBool::new(true)));
    spawn(
        "gateway",
        addrs,
        Some(Routes::new(GatewayServer::new(GatewayGrpc(gateway)))),
        http,
        DirectService::None,
        async move {
            if let Some((task, retention)) = writer {
                if let Some(r) = retention {
                    r.abort();
                }
                task.shutdown().await;
            }
        },
    )
    .await
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: u16,
}

/// The trace query API (HTTP only) over `store`; `index` lets why-not say "not in the index".
pub async fn trace_query(
    store: Arc<dyn TraceStore>,
    index: Option<Arc<dyn ItemIndex>>,
    http: SocketAddr,
) -> Result<Service, ServeError> {
    let api = recstack_trace_store::api::router(recstack_trace_store::api::ApiState { store, index });
    http_service("traces", "recstack_trace_api", "Query API requests", api, http).await
}

/// Serves `app` over HTTP only, counting its responses by status as `<prefix>_requests_total`
/// beside the usual `/metrics`, `/healthz` and `/readyz`.
pub async fn http_service(
    name: &'static str,
    prefix: &str,
    help: &str,
    app: axum::Router,
    http: SocketAddr,
) -> Result<Service, ServeError> {
    let mut metrics = ops::MetricsRegistry::new(prefix);
    let requests: Family<StatusLabels, Counter> = metrics.family("requests", &format!("{help}, by response status"));
    let registry = metrics.finish();
    let app = app.layer(axum::middleware::from_fn(
        move |request, next: axum::middleware::Next| {
            let requests = requests.clone();
            async move {
                let response = next.run(request).await;
                requests
                    .get_or_create(&StatusLabels {
                        status: response.status().as_u16(),
                    })
                    .inc();
                response
            }
        },
    ));
    let encode: ops::Encode = Arc::new(move || ops::encode(&registry));
    spawn(
        name,
        Addrs { grpc: http, http },
        None,
        app.merge(ops_router(encode)),
        DirectService::None,
        async {},
    )
    .await
}

/// The ingest service over `log`: HTTP `POST /v1/events` and gRPC `PostEvents`. It first
/// reloads the event ids of the log's tail, so a restart still refuses retried events.
pub async fn ingest<L: EventLog>(log: Arc<L>, seen: SeenLink, addrs: Addrs) -> Result<Service, ServeError> {
    let ingest = Arc::new(Ingest::new(log, seen, 2_000_000, Duration::from_secs(3_600)));
    match ingest.warm(100_000).await {
        Ok(n) => tracing::info!(n, "ingest: reloaded recent event ids"),
        Err(e) => tracing::warn!(error = %e, "ingest: could not read the log's tail; dedup starts empty"),
    }
    let http = crate::events::ingest::router(ingest.clone());
    spawn(
        "ingest",
        addrs,
        Some(Routes::new(IngestServer::new(IngestGrpc(ingest)))),
        http,
        DirectService::None,
        async {},
    )
    .await
}

/// The built-in stream job (HTTP: `/metrics`, `/healthz`, `/readyz`). Stopping it lets the
/// worker finish its round and commit what is safe.
pub async fn stream<L: EventLog, S: FeatureSink>(
    worker: Worker<L, S>,
    http: SocketAddr,
) -> Result<Service, ServeError> {
    let metrics = worker.metrics.clone();
    let encode: ops::Encode = Arc::new(move || metrics.encode());
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let service = spawn(
        "stream",
        Addrs { grpc: http, http },
        None,
        ops_router(encode),
        DirectService::None,
        async move {
            let _ = done_rx.await;
        },
    )
    .await?;
    let stop = service.stopped();
    tokio::spawn(async move {
        if let Err(e) = worker.run(stop, false).await {
            tracing::error!(error = %e, "stream worker stopped");
        }
        let _ = done_tx.send(());
    });
    Ok(service)
}

/// The built-in stream job over `log` into `sink` with live settings for `window`.
pub async fn stream_job<L: EventLog, S: FeatureSink>(
    log: Arc<L>,
    sink: Arc<S>,
    snapshot: Arc<Snapshot>,
    window: WindowConfig,
    http: SocketAddr,
) -> Result<Service, ServeError> {
    let worker = Worker {
        log,
        sink,
        snapshot,
        config: StreamConfig::live(window),
        metrics: Arc::new(StreamMetrics::default()),
    };
    stream(worker, http).await
}

/// Addresses of the local stack's services.
#[derive(Clone, Debug)]
pub struct LocalAddrs {
    pub gateway: Addrs,
    pub recall: Addrs,
    pub features: Addrs,
    pub ranking: Addrs,
    pub rerank: Addrs,
    /// The trace query API (HTTP only).
    pub traces: SocketAddr,
    /// The dashboard (HTTP only).
    pub dashboard: SocketAddr,
    pub ingest: Addrs,
    /// The stream job's operational endpoints.
    pub stream: SocketAddr,
}

impl LocalAddrs {
    /// The fixed loopback ports `recstack up` prints.
    pub fn standard() -> Self {
        let at = |grpc: u16, http: u16| Addrs {
            grpc: SocketAddr::from(([127, 0, 0, 1], grpc)),
            http: SocketAddr::from(([127, 0, 0, 1], http)),
        };
        Self {
            gateway: at(9000, 8000),
            recall: at(9090, 8080),
            features: at(9091, 8081),
            ranking: at(9092, 8082),
            rerank: at(9093, 8083),
            traces: SocketAddr::from(([127, 0, 0, 1], 8090)),
            dashboard: SocketAddr::from(([127, 0, 0, 1], 8091)),
            ingest: at(9094, 8084),
            stream: SocketAddr::from(([127, 0, 0, 1], 8085)),
        }
    }

    pub fn ephemeral() -> Self {
        Self {
            gateway: Addrs::ephemeral(),
            recall: Addrs::ephemeral(),
            features: Addrs::ephemeral(),
            ranking: Addrs::ephemeral(),
            rerank: Addrs::ephemeral(),
            traces: Addrs::ephemeral().http,
            dashboard: Addrs::ephemeral().http,
            ingest: Addrs::ephemeral(),
            stream: Addrs::ephemeral().http,
        }
    }
}

pub struct LocalOptions {
    pub addrs: LocalAddrs,
    pub model: ModelSources,
    pub redis_url: Option<String>,
    pub gateway: GatewayConfig,
    /// The rerank service's rules, and its A/B experiment on MMR's trade-off (no variants:
    /// every user gets `rerank.mmr_lambda`).
    pub rerank: RerankConfig,
    pub experiment: Experiment,
    pub traces: LocalTraces,
    /// The gateway calls the services in this process directly instead of over gRPC.
    pub direct_links: bool,
    /// The dashboard's router, made once the trace query API is up (the CLI builds it from
    /// `recstack-dashboard`, the only crate that depends on it). It runs with
    /// [`LocalTraces::Embedded`].
    pub dashboard: Option<MakeDashboard>,
    /// Ingest and the built-in stream job over an embedded event log.
    pub events: Option<LocalEvents>,
}

/// What the local dashboard is given: the trace query API's URL and every local component's
/// operational URL, by name.
#[derive(Clone, Debug)]
pub struct LocalDashboard {
    pub traces_url: String,
    pub components: Vec<(String, String)>,
}

/// Makes the dashboard's router for the local stack.
pub type MakeDashboard = Box<dyn FnOnce(LocalDashboard) -> axum::Router + Send>;

/// The local event path: ingest → the embedded log → the stream job → the feature store
/// (Redis when the stack has a `redis_url`, else in process) → features and recall.
#[derive(Clone, Debug)]
pub struct LocalEvents {
    pub log_dir: PathBuf,
    pub partitions: u32,
    pub window: WindowConfig,
}

/// Where the local stack keeps traces.
pub enum LocalTraces {
    /// None kept (benchmarks of tracing's cost).
    Off,
    /// The newest N in memory, no query API (tests that read traces directly).
    Memory(usize),
    /// The embedded store at this file, with the query API on `LocalAddrs::traces`.
    Embedded(PathBuf),
}

enum LocalSink {
    Memory(Arc<MemoryStore>),
    Redis(RedisStore),
}

/// The whole stack in this process.
pub struct LocalStack {
    pub services: Vec<Service>,
    /// The traces, with [`LocalTraces::Memory`].
    pub sink: Option<Arc<MemorySink>>,
    pub artifact_version: String,
}

impl LocalStack {
    pub fn find(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The named service; panics when the stack has none (a programming error).
    pub fn get(&self, name: &str) -> &Service {
        self.find(name).unwrap_or_else(|| panic!("no service {name}"))
    }

    /// Stops one service (the others keep serving), returning it.
    pub async fn stop_one(&mut self, name: &str) -> Result<(), ServeError> {
        let i = self
            .services
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service {name}"));
        self.services.remove(i).stop().await
    }

    /// Stops every service, the gateway first.
    pub async fn stop(self) -> Result<(), ServeError> {
        let mut result = Ok(());
        for s in self.services {
            let r = s.stop().await;
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

/// Starts recall, features, ranking, rerank and the gateway over the artifacts in `root`.
pub async fn start_local(root: &Path, opts: LocalOptions) -> Result<LocalStack, ServeError> {
    let loaded = {
        let root = root.to_path_buf();
        tokio::task::spawn_blocking(move || load_artifacts(&root))
            .await
            .map_err(|e| ServeError::Server {
                service: "artifacts",
                message: e.to_string(),
            })??
    };
    let snapshot = Arc::new(Snapshot::from_artifacts(&loaded.artifacts));
    let catalogue = Arc::new(Catalogue::new(&loaded.manifest, &loaded.artifacts));
    let artifact_version = loaded.manifest.version.clone();
    let a = &opts.addrs;
    // The stream job's output: Redis when the stack has one, else in this process.
    let sink = match (&opts.events, opts.redis_url.as_deref()) {
        (None, _) => None,
        (Some(_), None) => Some(LocalSink::Memory(Arc::new(MemoryStore::default()))),
        (Some(_), Some(url)) => Some(LocalSink::Redis(
            RedisStore::connect(url, Duration::from_secs(2))
                .await
                .map_err(|e| ServeError::Redis(e.to_string()))?,
        )),
    };
    let trending = match &sink {
        Some(LocalSink::Memory(m)) => Trending::memory(m.clone()),
        Some(LocalSink::Redis(r)) => Trending::redis(r.clone()),
        None => Trending::none(),
    };
    let reload = Some((root.to_path_buf(), Duration::from_secs(10)));
    let recall = recall(loaded, reload, trending, a.recall).await?;
    let source = match (&sink, opts.redis_url.as_deref()) {
        (Some(LocalSink::Memory(m)), _) => FeatureSource::Memory(m.clone()),
        (_, Some(url)) => FeatureSource::Redis(url),
        (_, None) => FeatureSource::Snapshot,
    };
    let features = features(snapshot.clone(), source, None, a.features).await?;
    let ranking = ranking(snapshot.clone(), opts.model, Duration::from_secs(5), a.ranking).await?;
    let rerank = rerank(snapshot.clone(), opts.rerank, opts.experiment, a.rerank).await?;
    let mut event_path = Vec::new();
    if let (Some(ev), Some(sink)) = (&opts.events, sink) {
        let (log, recovered) = FileLog::open(&ev.log_dir, ev.partitions).map_err(|e| ServeError::Server {
            service: "ingest",
            message: e.to_string(),
        })?;
        tracing::info!(records = recovered.records, dir = %ev.log_dir.display(), "event log opened");
        let log = Arc::new(log);
        let seen = match &recall.direct {
            DirectService::Recall(r) => SeenLink::Direct(Direct {
                service: r.clone(),
                stopped: recall.stopped(),
            }),
            _ => SeenLink::grpc(&recall.grpc_url())?,
        };
        event_path.push(ingest(log.clone(), seen, a.ingest).await?);
        let stream = match sink {
            LocalSink::Memory(sink) => stream_job(log, sink, snapshot, ev.window, a.stream).await?,
            LocalSink::Redis(sink) => stream_job(log, Arc::new(sink), snapshot, ev.window, a.stream).await?,
        };
        event_path.push(stream);
    }
    let links = if opts.direct_links {
        direct_links(&recall, &features, &ranking, &rerank).ok_or(ServeError::Server {
            service: "gateway",
            message: "a local service offers no direct link".into(),
        })?
    } else {
        let url = Service::grpc_url;
        Links::grpc(&Endpoints {
            recall: url(&recall),
            features: url(&features),
            ranking: url(&ranking),
            rerank: url(&rerank),
        })?
    };
    let (traces, sink, store) = match opts.traces {
        LocalTraces::Off => (GatewayTraces::Off, None, None),
        LocalTraces::Memory(n) => {
            let sink = Arc::new(MemorySink::new(n));
            (GatewayTraces::Memory(sink.clone()), Some(sink), None)
        }
        LocalTraces::Embedded(path) => {
            let store: Arc<dyn TraceStore> = Arc::new(
                recstack_trace_store::embedded::EmbeddedStore::open(&path)
                    .map_err(|e| ServeError::Server {
                        service: "traces",
                        message: e.to_string(),
                    })?
                    .with_max_bytes(crate::traces::TraceSettings::EMBEDDED_MAX_BYTES),
            );
            let traces = GatewayTraces::Store {
                store: store.clone(),
                writer: WriterConfig::default(),
                retention_days: Some(crate::traces::TraceSettings::DEFAULT_RETENTION_DAYS),
            };
            (traces, None, Some(store))
        }
    };
    let index: Arc<dyn ItemIndex> = catalogue.clone();
    let gateway = gateway(catalogue, links, opts.gateway, traces, a.gateway).await?;
    // The gateway first: stopping it flushes its traces before the rest go.
    let mut services = vec![gateway];
    // Ingest and the stream job stop next (the stream job commits), before the services they feed.
    services.extend(event_path);
    services.extend([recall, features, ranking, rerank]);
    if let Some(store) = store {
        let traces = trace_query(store, Some(index), a.traces).await?;
        let dashboard = LocalDashboard {
            traces_url: format!("http://{}", traces.http),
            components: services
                .iter()
                .chain([&traces])
                .map(|s| (s.name.to_string(), format!("http://{}", s.http)))
                .collect(),
        };
        services.push(traces);
        if let Some(make) = opts.dashboard {
            let help = "Dashboard requests (pages, server functions, files)";
            services.push(http_service("dashboard", "recstack_dashboard", help, make(dashboard), a.dashboard).await?);
        }
    }
    Ok(LocalStack {
        services,
        sink,
        artifact_version,
    })
}

/// Links that call the four services directly (`None` if one of them is not what its name says).
fn direct_links(recall: &Service, features: &Service, ranking: &Service, rerank: &Service) -> Option<Links> {
    let direct = |s: &Service| -> DirectService { s.direct.clone() };
    let (DirectService::Recall(r), DirectService::Features(f), DirectService::Ranking(k), DirectService::Rerank(x)) =
        (direct(recall), direct(features), direct(ranking), direct(rerank))
    else {
        return None;
    };
    Some(Links {
        recall: RecallLink::Direct(Direct {
            service: r,
            stopped: recall.stopped(),
        }),
        features: FeaturesLink::Direct(Direct {
            service: f,
            stopped: features.stopped(),
        }),
        ranking: RankingLink::Direct(Direct {
            service: k,
            stopped: ranking.stopped(),
        }),
        rerank: RerankLink::Direct(Direct {
            service: x,
            stopped: rerank.stopped(),
        }),
    })
}
