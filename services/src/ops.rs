//! The operational HTTP endpoints every recstack service serves: `/metrics` (Prometheus text
//! format), `/healthz` (the process is alive) and `/readyz` (it can serve).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// Logs to stderr through `tracing`, filtered by `RUST_LOG` (default `info`), with colours only
/// when stderr is a terminal.
pub fn init_logging() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// A registry in the Prometheus text format.
pub fn encode(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Renders the service's metrics.
pub type Encode = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
struct Ops {
    encode: Encode,
    ready: Arc<AtomicBool>,
}

/// The router; `ready` flips `/readyz` to 200.
pub fn router(encode: Encode, ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(Ops { encode, ready })
}

async fn metrics(State(ops): State<Ops>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        (ops.encode)(),
    )
}

async fn readyz(State(ops): State<Ops>) -> impl IntoResponse {
    if ops.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

/// A gRPC listener with `TCP_NODELAY` on. Without it, small unary responses wait out Nagle's
/// algorithm against the peer's delayed ACK: ~40 ms per request on Linux.
pub fn grpc_incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// A reconnecting Redis connection with short timeouts: a dead Redis costs a request at most
/// `timeout`, and the manager reconnects in the background when it comes back.
pub async fn connect_redis(url: &str, timeout: std::time::Duration) -> Result<redis::aio::ConnectionManager, String> {
    let client = redis::Client::open(url).map_err(|e| format!("{url}: {e}"))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(std::time::Duration::from_millis(500));
    redis::aio::ConnectionManager::new_with_config(client, config)
        .await
        .map_err(|e| format!("{url}: {e}"))
}

/// A gRPC status code as a metric label.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        InvalidArgument => "invalid_argument",
        NotFound => "not_found",
        DeadlineExceeded => "deadline_exceeded",
        ResourceExhausted => "resource_exhausted",
        Unavailable => "unavailable",
        Cancelled => "cancelled",
        _ => "internal",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct CodeLabels {
    pub code: &'static str,
}

/// What every unary RPC records: requests by status code, and latency.
pub struct RpcMetrics {
    pub requests: prometheus_client::metrics::family::Family<CodeLabels, prometheus_client::metrics::counter::Counter>,
    pub latency: prometheus_client::metrics::histogram::Histogram,
}

impl RpcMetrics {
    /// Registers `requests` and `latency_seconds` in `registry`.
    pub fn register(registry: &mut prometheus_client::registry::Registry, what: &str) -> Self {
        use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
        let m = Self {
            requests: Default::default(),
            latency: Histogram::new(exponential_buckets(0.000_01, 2.0, 18)),
        };
        registry.register(
            "requests",
            format!("{what} requests by status code"),
            m.requests.clone(),
        );
        registry.register("latency_seconds", format!("{what} latency"), m.latency.clone());
        m
    }

    /// Records one call that began at `start`.
    pub fn record<T>(&self, start: std::time::Instant, result: &Result<T, tonic::Status>) {
        self.latency.observe(start.elapsed().as_secs_f64());
        let code = match result {
            Ok(_) => "ok",
            Err(s) => code_name(s.code()),
        };
        self.requests.get_or_create(&CodeLabels { code }).inc();
    }
}
