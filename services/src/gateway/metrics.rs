//! The gateway's metrics (`recstack_gateway_*`).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::ops::{Buckets, HistogramFamily, MetricsRegistry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LevelLabels {
    pub level: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

pub struct GatewayMetrics {
    pub registry: Registry,
    pub requests: Family<LevelLabels, Counter>,
    pub invalid: Counter,
    pub latency: Histogram,
    pub stage_latency: HistogramFamily<StageLabels>,
    pub stage_failures: Family<StageLabels, Counter>,
    pub in_flight: Gauge,
    /// The share of requests started at `reduced` to keep the latency objective.
    pub shed_share: Gauge<f64, AtomicU64>,
    pub traces_dropped: Counter,
    /// Debug requests turned away: `untrusted` (403) or `rate` (429).
    pub debug_refused: Family<ReasonLabels, Counter>,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let mut m = MetricsRegistry::new("recstack_gateway");
        Self {
            requests: m.family("requests", "Requests served, by degradation level"),
            invalid: m.counter("invalid_requests", "Requests refused as malformed (400)"),
            latency: m.histogram(
                "latency_seconds",
                "End-to-end latency",
                Buckets::exponential(0.000_1, 2.0, 16),
            ),
            stage_latency: m.histograms(
                "stage_latency_seconds",
                "Latency of each downstream stage",
                Buckets::exponential(0.000_05, 2.0, 16),
            ),
            stage_failures: m.family(
                "stage_failures",
                "Stage calls that failed, timed out or met an open circuit",
            ),
            in_flight: m.gauge("in_flight", "Requests being served"),
            shed_share: m.register(
                "shed_share",
                "Share of requests started at the reduced level to keep the latency objective",
                Gauge::default(),
            ),
            traces_dropped: m.counter("traces_dropped", "Traces the sink refused"),
            debug_refused: m.family(
                "debug_refused",
                "Debug requests refused: from an untrusted caller (403) or over the rate (429)",
            ),
            registry: m.finish(),
        }
    }
}

impl GatewayMetrics {
    pub fn encode(&self) -> String {
        crate::ops::encode(&self.registry)
    }
}
