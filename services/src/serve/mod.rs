//! Starting the services: each loads what it serves, binds its gRPC and HTTP (`/metrics`,
//! `/healthz`, `/readyz`) listeners (so port 0 works and addresses are known), then serves on
//! a task until stopped. Ready from the moment it listens (everything is loaded by then) until
//! [`Service::drain`] begins. `recstack serve <component>` runs one ([`components`]); [`local::start_local`]
//! runs the whole stack in one process on loopback (`recstack up`, and the integration tests).

mod components;
pub mod lifecycle;
mod local;
pub mod served;

pub use components::*;
pub use lifecycle::Lifecycle;
pub use local::*;

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
use crate::gateway::{Catalogue, Downstreams, Gateway, GatewayConfig, GatewayGrpc, GatewayMetrics};
use crate::ops;
use crate::ranking::model::ModelError;
use crate::ranking::service::proto::ranking_server::Ranking;
use crate::ranking::service::proto::ranking_server::RankingServer;
use crate::ranking::service::{ItemsLink, ModelSources, RankingMetrics, RankingService, load_models, watch_models};
use crate::recall::proto::recall_server::Recall;
use crate::recall::proto::recall_server::RecallServer;
use crate::recall::{AnySeenStore, ArtifactSlot, Loaded, MemorySeenStore, RecallMetrics, RecallService};
use crate::rerank::proto::rerank_server::Rerank;
use crate::rerank::proto::rerank_server::RerankServer;
use crate::rerank::{Experiment, RerankMetrics, RerankService, Rules};
use crate::stream::sink::{FeatureSink, MemoryStore, RedisStore, StreamStore};
use crate::stream::{StreamConfig, StreamMetrics, Worker};
use recstack_core::artifacts::{ArtifactError, Artifacts, Manifest};
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
    ready: Arc<AtomicBool>,
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

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The graceful stop of a pod: `/readyz` turns 503 at once, the service keeps answering for
    /// `delay` (while load balancers and clients' resolvers drop it), then stops accepting,
    /// finishes in-flight calls and runs its last step (trace flush, L1 dump, stream commit).
    pub async fn drain(self, delay: Duration) -> Result<(), ServeError> {
        self.ready.store(false, std::sync::atomic::Ordering::Relaxed);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.stop().await
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
    let ready = Arc::new(AtomicBool::new(true));
    let http = http.merge(ops::readiness_router(ready.clone()));
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
        ready,
        stop,
        task,
    })
}

fn ops_router(encode: ops::Encode) -> axum::Router {
    ops::metrics_router(encode)
}

/// Every `every`, when `root/current` names another version than `version`, loads it and
/// hands it to `swap`, both on a blocking thread (building a service's tables from a version is
/// the slow part): how every service follows new artifact versions. A version that fails to
/// load is logged and tried again only once `current` changes.
pub fn watch_versions(
    name: &'static str,
    root: PathBuf,
    every: Duration,
    mut version: String,
    swap: impl Fn(Manifest, Artifacts) + Send + Sync + 'static,
) -> JoinHandle<()> {
    let swap = Arc::new(swap);
    tokio::spawn(async move {
        let mut failed = String::new();
        loop {
            tokio::time::sleep(every).await;
            let wanted = std::fs::read_to_string(root.join("current"))
                .unwrap_or_default()
                .trim()
                .to_string();
            if wanted.is_empty() || wanted == version || wanted == failed {
                continue;
            }
            let (dir, want, swap) = (root.clone(), wanted.clone(), swap.clone());
            let loaded = tokio::task::spawn_blocking(move || {
                let (manifest, artifacts) = recstack_core::artifacts::load(&dir, Some(&want))?;
                let version = manifest.version.clone();
                swap(manifest, artifacts);
                Ok::<_, ArtifactError>(version)
            });
            match loaded.await {
                Ok(Ok(v)) => {
                    tracing::info!(version = %v, "{name}: serving a new artifact version");
                    version = v;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "{name}: new artifact version failed to load; serving the previous one");
                    failed = wanted;
                }
                Err(e) => tracing::warn!(error = %e, "{name}: artifact loader panicked"),
            }
        }
    })
}

/// Loads the version `root/current` names.
pub fn load_artifacts(root: &Path) -> Result<Loaded, ServeError> {
    Loaded::from_dir(root).map_err(|source| ServeError::Artifacts {
        root: root.to_path_buf(),
        source,
    })
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: u16,
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
