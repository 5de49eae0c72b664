//! The gateway: the front door (HTTP `POST /v1/recommend`, gRPC `Recommend`).
//!
//! One request is a pipeline of named stages over one state ([`pipeline`]): user features and
//! recall in parallel, then the model ranks, then rerank, then the answer — each stage within
//! its share of the request's deadline and behind a circuit breaker. A stage that fails, times
//! out or whose circuit is open lowers the request's level ([`degrade`]) instead of failing it:
//! the response is a list whenever any list is possible, and says which level served it and
//! why. Every request leaves a trace ([`trace`], built from the state) in the [`TraceSink`]
//! without waiting on it.
//!
//! - [`request`]: the request, its checks, the answer.
//! - [`pipeline`]: the request state and the stages.
//! - [`trace`]: the trace from the finished state.
//! - [`links`]: how each downstream is reached (gRPC or in process).
//! - [`catalogue`], [`metrics`], [`http`], [`grpc`].

pub mod catalogue;
pub mod grpc;
pub mod http;
pub mod links;
pub mod metrics;
pub mod pipeline;
pub mod request;
pub mod trace;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
pub use recstack_core::degrade;
use recstack_trace_store::TraceSink;
use recstack_trace_store::access::{Access, RateLimit};

pub use catalogue::Catalogue;
use degrade::{
    Breaker, BreakerConfig, Health, LatencyObjective, Level, LevelPlan, LoadThresholds, Shedder, Stage, plan,
};
pub use grpc::GatewayGrpc;
pub use links::{Downstreams, EndpointError, Links};
pub use metrics::GatewayMetrics;
pub use pipeline::RERANK_POOL;
use pipeline::Request;
pub use request::{Query, RecommendRequest, Recommendation, ServedItem, parse_traceparent, validate};

/// Generated gRPC types (`services/proto/gateway.proto`).
pub mod proto {
    tonic::include_proto!("recstack.gateway.v1");
}

// === configuration ===

#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub default_timeout: Duration,
    pub load: LoadThresholds,
    /// The latency kept by starting a share of requests at `reduced` ([`Shedder`]); `None`:
    /// only load (in-flight counts) and downstream health choose levels.
    pub latency: Option<LatencyObjective>,
    pub breaker: BreakerConfig,
    pub full: LevelPlan,
    pub reduced: LevelPlan,
    /// Share of requests traced in full (debug requests always are).
    pub full_trace_sample: f64,
    /// Who may ask for debug traces, how many, and how user ids are stored.
    pub access: GatewayAccess,
    /// Where the spans of full traces go over OTLP (`None`: nowhere).
    pub otlp: Option<crate::otlp::OtlpConfig>,
}

/// The gateway's side of trace access ([`recstack_trace_store::access`]).
#[derive(Clone, Debug, Default)]
pub struct GatewayAccess {
    /// The stack's tokens ([`Access::open`]: anyone may debug).
    pub tokens: Arc<Access>,
    /// Debug requests per second and burst this gateway accepts; `None`: no limit.
    pub debug_rate: Option<(f64, u32)>,
    /// Store the pseudonym of each user id in traces (needs the `pseudonym-key`).
    pub pseudonymize_users: bool,
}

/// Why a debug request was turned away (before any work was done for it).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DebugRefused {
    #[error("debug: a debug trace needs a trusted caller: send the stack's debug token in `{header}`", header = recstack_trace_store::access::DEBUG_TOKEN_HEADER)]
    Untrusted,
    #[error("debug: this gateway accepts {per_second} debug requests a second; try again in {retry_after_s} s")]
    Limited { per_second: f64, retry_after_s: u64 },
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_millis(100),
            load: LoadThresholds::default(),
            latency: None,
            breaker: BreakerConfig::default(),
            full: LevelPlan::full(),
            reduced: LevelPlan::reduced(),
            full_trace_sample: 0.01,
            access: GatewayAccess::default(),
            otlp: None,
        }
    }
}

// === the gateway ===

pub struct Gateway {
    links: Links,
    /// Titles, the popular list and the artifact version, swapped with each new version.
    pub catalogue: arc_swap::ArcSwap<Catalogue>,
    pub config: GatewayConfig,
    breakers: HashMap<Stage, Mutex<Breaker>>,
    in_flight: AtomicUsize,
    shedder: Option<Mutex<Shedder>>,
    sequence: AtomicU64,
    sink: Arc<dyn TraceSink>,
    pub metrics: Arc<GatewayMetrics>,
    /// The debug requests' token bucket (`config.access.debug_rate`).
    debug_limit: Option<Mutex<RateLimit>>,
}

/// Decrements the in-flight count when the request ends, however it ends.
struct InFlight<'a>(&'a AtomicUsize, &'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.dec();
    }
}

impl Gateway {
    /// Serves a new artifact version's catalogue from the next request on.
    pub fn swap_catalogue(&self, catalogue: Catalogue) {
        tracing::info!(version = %catalogue.artifact_version, "gateway: serving a new artifact version");
        self.catalogue.store(Arc::new(catalogue));
    }

    /// A gateway over `links` (gRPC clients connect lazily: it starts, and answers, while
    /// downstreams are still down).
    pub fn new(
        links: Links,
        catalogue: Arc<Catalogue>,
        config: GatewayConfig,
        sink: Arc<dyn TraceSink>,
        metrics: Arc<GatewayMetrics>,
    ) -> Self {
        let breakers = Stage::ALL
            .iter()
            .map(|&s| (s, Mutex::new(Breaker::new(config.breaker.clone()))))
            .collect();
        let shedder = config
            .latency
            .clone()
            .map(|objective| Mutex::new(Shedder::new(objective, Instant::now())));
        let debug_limit = config
            .access
            .debug_rate
            .map(|(per_second, burst)| Mutex::new(RateLimit::new(per_second, burst, Instant::now())));
        Self {
            debug_limit,
            links,
            catalogue: arc_swap::ArcSwap::new(catalogue),
            config,
            breakers,
            in_flight: AtomicUsize::new(0),
            shedder,
            sequence: AtomicU64::new(0),
            sink,
            metrics,
        }
    }

    /// Whether a caller presenting `token` may have the debug request it sent: a trusted
    /// caller within the rate. Checked before any work, so a refused one costs nothing.
    pub fn admit_debug(&self, token: Option<&str>) -> Result<(), DebugRefused> {
        let refused = |reason| {
            self.metrics
                .debug_refused
                .get_or_create(&metrics::ReasonLabels { reason })
                .inc()
        };
        if !self.config.access.tokens.trusts_debug(token) {
            refused("untrusted");
            return Err(DebugRefused::Untrusted);
        }
        if let Some(limit) = &self.debug_limit {
            let mut limit = limit.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(wait) = limit.take(Instant::now()) {
                refused("rate");
                return Err(DebugRefused::Limited {
                    per_second: limit.per_second(),
                    retry_after_s: wait.ceil().clamp(1.0, 3_600.0) as u64,
                });
            }
        }
        Ok(())
    }

    fn breaker(&self, stage: Stage) -> std::sync::MutexGuard<'_, Breaker> {
        self.breakers[&stage].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why request `seq` starts at `reduced` to keep the latency objective, if it does.
    fn shedding(&self, seq: u64) -> Option<String> {
        let shedder = self.shedder.as_ref()?.lock().unwrap_or_else(|e| e.into_inner());
        shedder.sheds(seq).then(|| {
            format!(
                "latency: {:.0} % of requests start reduced to keep p{} within {} ms",
                shedder.share() * 100.0,
                shedder.objective.quantile * 100.0,
                shedder.objective.target.as_secs_f64() * 1e3
            )
        })
    }

    fn health(&self, now: Instant) -> Health {
        let up = |s| self.breaker(s).is_available(now);
        Health {
            recall: up(Stage::Recall),
            ranking: up(Stage::Ranking),
            rerank: up(Stage::Rerank),
            features: up(Stage::Features),
        }
    }

    /// The request id (time and `seq`) and the trace id (the caller's, else a new one).
    fn ids(seq: u64, caller: Option<&(String, String)>) -> (String, String) {
        let request_id = recstack_trace_store::request_id::new(seq);
        let trace_id = caller
            .map(|(trace, _)| trace.clone())
            .unwrap_or_else(|| format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>()));
        (request_id, trace_id)
    }

    /// Serves one request. Never fails: the worst case is the fallback list.
    pub async fn recommend(&self, q: Query, traceparent: Option<&str>) -> Recommendation {
        let (r, response, latency) = self.serve(q, traceparent, true).await;
        self.record(r, &response, latency);
        response
    }

    /// Sends one request through every stage before the gateway takes traffic, so the first
    /// caller does not pay for cold paths downstream (a model's first inference, a channel's
    /// first lookup, fresh connections' windows). Nothing is recorded: no trace, no request
    /// metrics, no latency sample. Returns the level it reached and why it fell, if it did.
    pub async fn warm_up(&self) -> (Level, Vec<String>) {
        let q = Query {
            user_id: crate::ops::WARM_UP_USER.into(),
            n: request::DEFAULT_N,
            scene: "default".into(),
            context: Default::default(),
            // Cold paths are slow: give the warm-up the longest budget a caller may ask for.
            timeout: Some(Duration::from_millis(u64::from(request::MAX_TIMEOUT_MS))),
            debug: false,
            what_if: None,
        };
        let (r, _, _) = self.serve(q, None, false).await;
        (r.level, r.degraded)
    }

    /// Runs every stage of one request: its state, the answer, and how long it took.
    /// `traced: false`: the internal calls carry no trace context (the warm-up is no request).
    async fn serve(&self, q: Query, traceparent: Option<&str>, traced: bool) -> (Request, Recommendation, Duration) {
        let start = Instant::now();
        let in_flight = self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.metrics.in_flight.inc();
        let _guard = InFlight(&self.in_flight, &self.metrics.in_flight);
        let mut r = self.begin(q, traceparent, in_flight, start);
        if !traced {
            r.traceparent.clear();
        }
        // Every stage either runs or records why it did not.
        let at_level = |r: &Request| format!("the request is at the {} level", r.level.name());
        if r.level < Level::Fallback {
            self.features_and_recall(&mut r).await;
        } else {
            r.skipped("features", at_level(&r));
            r.skipped("recall", at_level(&r));
        }
        if r.level == Level::Popular {
            self.popular(&mut r);
        }
        if r.level < Level::Fallback {
            self.force_in(&mut r);
        }
        if r.level <= Level::Reduced && !r.candidates.is_empty() {
            self.rank(&mut r).await;
        } else if r.level == Level::Popular && !r.candidates.is_empty() {
            r.skipped("ranking", "the popular level orders the hot list by hot score".into());
        } else if r.level < Level::Fallback {
            r.skipped("ranking", "no candidates".into());
        } else {
            r.skipped("ranking", at_level(&r));
        }
        if r.level < Level::Fallback && !r.candidates.is_empty() {
            self.rerank(&mut r).await;
        } else if r.level < Level::Fallback {
            r.skipped("rerank", "no candidates".into());
        } else {
            r.skipped("rerank", at_level(&r));
        }
        if r.served.is_empty() {
            self.fallback(&mut r);
        }
        let latency = start.elapsed();
        let response = self.respond(&r, latency);
        (r, response, latency)
    }

    /// A new request's state: its ids, and the level load, downstream health and the latency
    /// objective start it at.
    fn begin(&self, q: Query, traceparent: Option<&str>, in_flight: usize, start: Instant) -> Request {
        let seq = self.sequence.fetch_add(1, Ordering::Relaxed);
        let timeout = q.timeout.unwrap_or(self.config.default_timeout);
        let (mut level, mut degraded) = plan(in_flight, &self.config.load, self.health(start));
        if level == Level::Full
            && let Some(shed) = self.shedding(seq)
        {
            level = Level::Reduced;
            degraded.push(shed);
        }
        if let Some(forced) = q
            .what_if
            .as_ref()
            .and_then(|w| w.level.as_deref())
            .and_then(Level::from_name)
        {
            level = forced;
            degraded.push(format!("what-if: started at the {} level", forced.name()));
        }
        let full = q.debug || rand::random::<f64>() < self.config.full_trace_sample;
        let caller = traceparent.and_then(request::caller_context);
        let mut r = Request::new(
            q,
            Self::ids(seq, caller.as_ref()),
            (start, timeout),
            (level, degraded),
            full,
        );
        r.parent_span = caller.map(|(_, span)| span);
        r
    }

    /// Counts the answer, feeds the latency objective, and hands the trace to the sink.
    fn record(&self, r: Request, response: &Recommendation, latency: Duration) {
        self.metrics.latency.observe(latency.as_secs_f64());
        if let Some(shedder) = &self.shedder {
            let mut shedder = shedder.lock().unwrap_or_else(|e| e.into_inner());
            shedder.record(Instant::now(), latency);
            self.metrics.shed_share.set(shedder.share());
        }
        self.metrics
            .requests
            .get_or_create(&metrics::LevelLabels { level: r.level.name() })
            .inc();
        let mut t = trace::trace(r, response);
        if self.config.access.pseudonymize_users
            && let std::borrow::Cow::Owned(p) = self.config.access.tokens.stored_user(&t.user_id)
        {
            t.user_id = p;
        }
        if !self.sink.offer(t) {
            self.metrics.traces_dropped.inc();
        }
    }
}
