//! The operational HTTP endpoints every recstack service serves: `/metrics` (Prometheus text
//! format), `/healthz` (the process is alive) and `/readyz` (it can serve).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

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

/// A registry in the Prometheus text format, followed by the process's own series
/// ([`process_registry`]).
pub fn encode(registry: &Registry) -> String {
    use prometheus_client::encoding::text;
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = text::encode_registry(&mut out, registry);
    let _ = text::encode_registry(&mut out, &process_registry());
    let _ = text::encode_eof(&mut out);
    out
}

/// What every serving process reports of itself: `recstack_runtime_worker_threads`, its async
/// runtime's worker threads (`RECSTACK_WORKER_THREADS`: the cores its pod requests).
fn process_registry() -> Registry {
    let mut registry = Registry::with_prefix("recstack_runtime");
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let workers = Gauge::<i64>::default();
        workers.set(runtime.metrics().num_workers() as i64);
        registry.register(
            "worker_threads",
            "The async runtime's worker threads (RECSTACK_WORKER_THREADS: the cores the pod requests)",
            workers,
        );
    }
    registry
}

/// Renders the service's metrics.
pub type Encode = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
struct Ops {
    encode: Encode,
}

/// `/metrics` and `/healthz` (the process is alive and its runtime answers).
pub fn metrics_router(encode: Encode) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Ops { encode })
}

/// `/readyz`: 200 while `ready` is set, else 503 (still loading, or draining before a stop).
pub fn readiness_router(ready: Arc<AtomicBool>) -> Router {
    Router::new().route("/readyz", get(readyz)).with_state(ready)
}

/// The operational router: [`metrics_router`] and [`readiness_router`].
pub fn router(encode: Encode, ready: Arc<AtomicBool>) -> Router {
    metrics_router(encode).merge(readiness_router(ready))
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

async fn readyz(State(ready): State<Arc<AtomicBool>>) -> impl IntoResponse {
    if ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// A gRPC listener's connections: `TCP_NODELAY` on (without it, small unary responses wait
/// out Nagle's algorithm against the peer's delayed ACK: ~40 ms per request on Linux), and
/// writes coalesced ([`crate::coalesce`]: a response's headers, message and trailers in one
/// write).
pub fn grpc_incoming(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<crate::coalesce::Coalesced<tokio::net::TcpStream>>> + Send + 'static {
    use futures::StreamExt;
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map(|connection| connection.map(crate::coalesce::Coalesced::new))
}

/// The gRPC metadata key of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// A call's W3C `traceparent` (`00-<trace id>-<parent span id>-<flags>`), when it carries a
/// valid one.
pub fn traceparent(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    let value = metadata.get(TRACEPARENT)?.to_str().ok()?;
    crate::gateway::parse_traceparent(value).map(|_| value)
}

/// The `traceparent` a call made for trace `trace_id` from span `span_id` (16 hex digits)
/// carries.
pub fn traceparent_for(trace_id: &str, span_id: u64) -> String {
    format!("00-{trace_id}-{span_id:016x}-01")
}

/// Sets `call`'s `traceparent` (a value that is not valid header text is left out).
pub fn propagate<T>(call: &mut tonic::Request<T>, traceparent: &str) {
    // Empty: a call that is part of no trace (the gateway's warm-up).
    if traceparent.is_empty() {
        return;
    }
    if let Ok(value) = traceparent.parse() {
        call.metadata_mut().insert(TRACEPARENT, value);
    }
}

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

/// The user id of the requests a starting service sends itself (recall) or through every stage
/// (the gateway) before it takes traffic: one no real client has.
pub const WARM_UP_USER: &str = "recstack-warm-up";

// === metrics ===

/// Makes each metric and registers it under the service's prefix in one call, so a metrics
/// struct is a list of names and help texts.
pub struct MetricsRegistry(Registry);

impl MetricsRegistry {
    /// Metrics named `<prefix>_<name>`.
    pub fn new(prefix: &str) -> Self {
        Self(Registry::with_prefix(prefix))
    }

    /// Registers `metric` (any metric, or a family of them) and returns it.
    pub fn register<M: Metric + Clone>(&mut self, name: &str, help: &str, metric: M) -> M {
        self.0.register(name, help, metric.clone());
        metric
    }

    pub fn counter(&mut self, name: &str, help: &str) -> Counter {
        self.register(name, help, Counter::default())
    }

    pub fn gauge(&mut self, name: &str, help: &str) -> Gauge {
        self.register(name, help, Gauge::default())
    }

    /// A family of counters (or gauges) by label set.
    pub fn family<L, M>(&mut self, name: &str, help: &str) -> Family<L, M>
    where
        L: EncodeLabelSet + Clone + Eq + std::hash::Hash + std::fmt::Debug + Send + Sync + 'static,
        M: Metric + prometheus_client::metrics::TypedMetric + Default + std::fmt::Debug,
    {
        self.register(name, help, Family::default())
    }

    /// A histogram with `count` exponential buckets from `start` (each `factor` times the last).
    pub fn histogram(&mut self, name: &str, help: &str, buckets: Buckets) -> Histogram {
        self.register(name, help, buckets.new_metric())
    }

    /// A family of histograms by label set, each with `buckets`.
    pub fn histograms<L>(&mut self, name: &str, help: &str, buckets: Buckets) -> HistogramFamily<L>
    where
        L: EncodeLabelSet + Clone + Eq + std::hash::Hash + std::fmt::Debug + Send + Sync + 'static,
    {
        self.register(name, help, Family::new_with_constructor(buckets))
    }

    pub fn finish(self) -> Registry {
        self.0
    }
}

/// Exponential histogram buckets: `count` of them from `start`, each `factor` times the last.
#[derive(Clone, Copy, Debug)]
pub struct Buckets {
    pub start: f64,
    pub factor: f64,
    pub count: u16,
}

impl Buckets {
    pub const fn exponential(start: f64, factor: f64, count: u16) -> Self {
        Self { start, factor, count }
    }
}

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(self.start, self.factor, self.count))
    }
}

/// Histograms by label set, all with the same buckets.
pub type HistogramFamily<L> = Family<L, Histogram, Buckets>;

/// A gRPC method, and how a call to it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub rpc: &'static str,
    pub code: &'static str,
}

/// What every service records of its RPCs: requests by method and status code, and latency
/// by method (`<prefix>_requests`, `<prefix>_latency_seconds`).
pub struct RpcMetrics {
    pub requests: Family<RpcLabels, Counter>,
    pub latency: HistogramFamily<MethodLabels>,
    /// Calls that carried a W3C `traceparent`: joined to their caller's distributed trace.
    pub traced: Family<MethodLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub rpc: &'static str,
}

impl RpcMetrics {
    /// Registers `requests` and `latency_seconds`; `what` names the service in the help.
    pub fn register(metrics: &mut MetricsRegistry, what: &str, latency: Buckets) -> Self {
        Self {
            requests: metrics.family("requests", &format!("{what} requests by RPC and status code")),
            latency: metrics.histograms("latency_seconds", &format!("{what} latency by RPC"), latency),
            traced: metrics.family(
                "traced_requests",
                &format!("{what} requests that carried a W3C traceparent, by RPC"),
            ),
        }
    }

    /// Notes a call to `rpc` with these `metadata`: when it carries a `traceparent`, counts it
    /// and logs (at debug) the trace it joins. Returns the `traceparent` to pass on.
    pub fn joined(&self, rpc: &'static str, metadata: &tonic::metadata::MetadataMap) -> Option<String> {
        let header = traceparent(metadata)?;
        self.traced.get_or_create(&MethodLabels { rpc }).inc();
        tracing::debug!(rpc, traceparent = %header, "call joins a trace");
        Some(header.to_string())
    }

    /// Records one call to `rpc` that began at `start`.
    pub fn record<T>(&self, rpc: &'static str, start: std::time::Instant, result: &Result<T, tonic::Status>) {
        self.latency
            .get_or_create(&MethodLabels { rpc })
            .observe(start.elapsed().as_secs_f64());
        let code = match result {
            Ok(_) => "ok",
            Err(s) => code_name(s.code()),
        };
        self.requests.get_or_create(&RpcLabels { rpc, code }).inc();
    }
}

/// How often the services log a store failure that repeats per request or per key (each is
/// still counted in its metric): [`LogThrottle`]'s usual period.
pub const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// How often a repeated warning is logged: the first at once, then at most one per `every`,
/// saying how many were held back since the last. A store that is down would otherwise log
/// once per request; the metrics still count each failure.
#[derive(Debug)]
pub struct LogThrottle {
    every: std::time::Duration,
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl LogThrottle {
    pub const fn new(every: std::time::Duration) -> Self {
        Self {
            every,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// Whether to log a warning happening at `now`: `Some(held back since the last logged)`,
    /// or `None` to hold this one back.
    pub fn admit(&self, now: std::time::Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (last, held) = &mut *state;
        match *last {
            Some(at) if now.saturating_duration_since(at) < self.every => {
                *held += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(held))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_end_with_the_runtimes_worker_threads() {
        let mut metrics = MetricsRegistry::new("recstack_test");
        metrics.counter("calls", "Calls").inc();
        let registry = metrics.finish();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(3)
            .build()
            .unwrap();
        let text = runtime.block_on(async { encode(&registry) });
        assert!(text.contains("recstack_test_calls_total 1\n"), "{text}");
        assert!(text.contains("\nrecstack_runtime_worker_threads 3\n"), "{text}");
        assert!(
            text.ends_with("# EOF\n") && text.matches("# EOF").count() == 1,
            "{text}"
        );
        // Outside a runtime: the service's series alone.
        assert!(!encode(&registry).contains("worker_threads"));
    }

    #[test]
    fn a_repeated_warning_is_logged_once_per_period_with_what_was_held_back() {
        use std::time::{Duration, Instant};
        let t = LogThrottle::new(Duration::from_secs(10));
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(t.admit(at(0)), Some(0), "the first is logged");
        assert_eq!(t.admit(at(1)), None);
        assert_eq!(t.admit(at(9)), None);
        assert_eq!(t.admit(at(10)), Some(2), "a period later, with the two held back");
        assert_eq!(t.admit(at(12)), None);
        assert_eq!(t.admit(at(30)), Some(1));
        assert_eq!(t.admit(at(100)), Some(0), "nothing held back since");
        // A clock read out of order (another thread's earlier `now`) is held back, not logged.
        assert_eq!(t.admit(at(99)), None);
    }

    #[test]
    fn a_traceparent_set_on_a_call_reads_back_and_bad_ones_do_not() {
        let mut call = tonic::Request::new(());
        assert_eq!(traceparent(call.metadata()), None);
        let tp = traceparent_for("4bf92f3577b34da6a3ce929d0e0e4736", 0x00f0_67aa_0ba9_02b7);
        assert_eq!(tp, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        propagate(&mut call, &tp);
        assert_eq!(traceparent(call.metadata()), Some(tp.as_str()));
        for bad in [
            "00-xyz-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "nonsense",
        ] {
            let mut call = tonic::Request::new(());
            propagate(&mut call, bad);
            assert_eq!(traceparent(call.metadata()), None, "{bad}");
        }
        let metrics = RpcMetrics::register(
            &mut MetricsRegistry::new("t"),
            "test",
            Buckets::exponential(0.001, 2.0, 4),
        );
        assert_eq!(metrics.joined("x", call.metadata()).as_deref(), Some(tp.as_str()));
        assert_eq!(metrics.traced.get_or_create(&MethodLabels { rpc: "x" }).get(), 1);
        assert_eq!(metrics.joined("x", tonic::Request::new(()).metadata()), None);
    }
}
