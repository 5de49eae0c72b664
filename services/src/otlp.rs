//! Spans over OTLP: the gateway's traces, as OpenTelemetry spans, to any collector (the
//! OpenTelemetry Collector, Jaeger, Tempo) that speaks OTLP/gRPC.
//!
//! Each request traced in full (sampled, or debug) becomes one span for the request — the
//! gateway's span, whose id every internal call carried in `traceparent`, its parent the
//! caller's span when the caller sent one — and a child span per stage that ran (features,
//! recall, ranking, rerank, popular, fallback, what_if), at the start and for the time the trace
//! recorded, with its counts and outcome; a failed stage's status is an error. Spans are made
//! from the finished trace off the request path ([`OtlpSink`] beside the trace sink) and sent
//! in batches by a background task ([`spawn_exporter`]); a full queue or an unreachable
//! collector drops spans and counts them, never slows a request.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};
use prometheus_client::metrics::counter::Counter;
use recstack_trace_store::{Detail, Trace, TraceSink};
use tokio::sync::mpsc;

/// Where spans go and how they are batched.
#[derive(Clone, Debug)]
pub struct OtlpConfig {
    /// The collector's OTLP/gRPC endpoint, e.g. `http://otel-collector.observability:4317`.
    pub endpoint: String,
    /// `service.name` of the spans.
    pub service: String,
    /// Most spans one export carries.
    pub batch: usize,
    /// How long a batch waits to fill.
    pub linger: Duration,
    /// Requests' spans waiting to be sent; past it, new ones are dropped.
    pub queue: usize,
}

impl OtlpConfig {
    pub fn new(endpoint: &str) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            service: "recstack-gateway".into(),
            batch: 512,
            linger: Duration::from_secs(1),
            queue: 2_048,
        }
    }
}

/// Counts of the export.
#[derive(Clone, Default)]
pub struct OtlpMetrics {
    pub exported: Counter,
    pub dropped: Counter,
}

impl OtlpMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "otlp_spans_exported",
            "Spans the OTLP collector accepted",
            self.exported.clone(),
        );
        registry.register(
            "otlp_spans_dropped",
            "Spans dropped: the queue was full or the collector refused or could not be reached",
            self.dropped.clone(),
        );
    }
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A stage's span id: the stable hash (FNV-1a) of the trace id, the request's span id and the
/// stage's index —
/// stable, and distinct within the trace.
fn stage_span_id(trace_id: &[u8], parent: &[u8], index: usize) -> Vec<u8> {
    let key = [trace_id, parent, &(index as u64).to_le_bytes()].concat();
    let h = recstack_core::hash::stable_hash(&key);
    // A span id of all zeros is invalid.
    h.max(1).to_be_bytes().to_vec()
}

fn attr(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn text(key: &str, value: impl Into<String>) -> KeyValue {
    attr(key, any_value::Value::StringValue(value.into()))
}

fn int(key: &str, value: i64) -> KeyValue {
    attr(key, any_value::Value::IntValue(value))
}

/// The spans of one trace: the request's, then one per stage that was not skipped. Empty when
/// the trace has no valid trace id or span id (a trace written before they were recorded).
pub fn spans(t: &Trace) -> Vec<Span> {
    let (Some(trace_id), Some(span_id)) = (
        hex_bytes(&t.trace_id).filter(|b| b.len() == 16),
        t.span_id.as_deref().and_then(hex_bytes).filter(|b| b.len() == 8),
    ) else {
        return Vec::new();
    };
    let parent = t
        .parent_span_id
        .as_deref()
        .and_then(hex_bytes)
        .filter(|b| b.len() == 8)
        .unwrap_or_default();
    // The trace's timestamp is when it was built, at the end of the request.
    let end_ns = (t.timestamp_ms.max(0) as u64) * 1_000_000;
    let start_ns = end_ns.saturating_sub(t.latency_us * 1_000);
    let mut attributes = vec![
        text("recstack.request_id", t.request_id.clone()),
        text("recstack.user", t.user_id.clone()),
        text("recstack.level", t.level.clone()),
        int("recstack.served", t.items.len() as i64),
    ];
    if let Some(m) = &t.model_version {
        attributes.push(text("recstack.model_version", m.clone()));
    }
    if let Some(w) = &t.what_if {
        attributes.push(text("recstack.replay_of", w.replay_of.clone()));
    }
    if !t.degraded.is_empty() {
        attributes.push(text("recstack.degraded", t.degraded.join("; ")));
    }
    let mut out = vec![Span {
        trace_id: trace_id.clone(),
        span_id: span_id.clone(),
        parent_span_id: parent,
        name: "recommend".into(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: start_ns,
        end_time_unix_nano: end_ns,
        attributes,
        ..Default::default()
    }];
    for (i, s) in t.stages.iter().enumerate() {
        if s.outcome.starts_with("skipped") {
            continue;
        }
        let begin = start_ns + s.start_us.unwrap_or(0) * 1_000;
        let failed = s
            .outcome
            .strip_prefix("failed: ")
            .or_else(|| s.outcome.strip_prefix("failed"));
        out.push(Span {
            trace_id: trace_id.clone(),
            span_id: stage_span_id(&trace_id, &span_id, i),
            parent_span_id: span_id.clone(),
            name: s.name.clone(),
            kind: span::SpanKind::Client as i32,
            start_time_unix_nano: begin,
            end_time_unix_nano: begin + s.latency_us * 1_000,
            attributes: vec![
                int("recstack.items_in", i64::from(s.items_in)),
                int("recstack.items_out", i64::from(s.items_out)),
                text("recstack.outcome", s.outcome.clone()),
            ],
            status: failed.map(|why| Status {
                message: why.trim().to_string(),
                code: status::StatusCode::Error as i32,
            }),
            ..Default::default()
        });
    }
    out
}

/// A trace sink that also hands each full trace's spans to the exporter, then passes the
/// trace on to `inner`.
pub struct OtlpSink {
    inner: Arc<dyn TraceSink>,
    spans: mpsc::Sender<Vec<Span>>,
    metrics: OtlpMetrics,
}

impl TraceSink for OtlpSink {
    fn offer(&self, trace: Trace) -> bool {
        if trace.detail == Detail::Full {
            let spans = spans(&trace);
            let n = spans.len() as u64;
            if n > 0 && self.spans.try_send(spans).is_err() {
                self.metrics.dropped.inc_by(n);
            }
        }
        self.inner.offer(trace)
    }
}

/// The sink in front of `inner`, and the task that exports what it is handed (it ends when the
/// sink is dropped, after sending what it holds).
pub fn spawn_exporter(
    inner: Arc<dyn TraceSink>,
    config: OtlpConfig,
    metrics: OtlpMetrics,
) -> (Arc<OtlpSink>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(config.queue.max(1));
    let sink = Arc::new(OtlpSink {
        inner,
        spans: tx,
        metrics: metrics.clone(),
    });
    let task = tokio::spawn(export(rx, config, metrics));
    (sink, task)
}

async fn export(mut rx: mpsc::Receiver<Vec<Span>>, config: OtlpConfig, metrics: OtlpMetrics) {
    // Connects lazily: a collector that is down at start is retried with each batch.
    let channel = match tonic::transport::Endpoint::from_shared(config.endpoint.clone()) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect_lazy(),
        Err(e) => {
            tracing::error!(endpoint = %config.endpoint, error = %e, "otlp: not an endpoint; spans are dropped");
            while let Some(spans) = rx.recv().await {
                metrics.dropped.inc_by(spans.len() as u64);
            }
            return;
        }
    };
    let mut client = TraceServiceClient::new(channel);
    let resource = Resource {
        attributes: vec![text("service.name", config.service.clone())],
        ..Default::default()
    };
    let scope = InstrumentationScope {
        name: "recstack".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    let mut open = true;
    while open {
        let mut batch: Vec<Span> = Vec::new();
        // Wait for the first, then fill for up to `linger`.
        match rx.recv().await {
            Some(spans) => batch.extend(spans),
            None => break,
        }
        let deadline = tokio::time::Instant::now() + config.linger;
        while batch.len() < config.batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(spans)) => batch.extend(spans),
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope.clone()),
                    spans: batch,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        match client.export(request).await {
            Ok(answer) => {
                let rejected = answer
                    .into_inner()
                    .partial_success
                    .map_or(0, |p| p.rejected_spans.max(0) as u64);
                metrics.exported.inc_by(n.saturating_sub(rejected));
                metrics.dropped.inc_by(rejected);
            }
            Err(e) => {
                metrics.dropped.inc_by(n);
                tracing::warn!(endpoint = %config.endpoint, error = %e, spans = n, "otlp: export failed; spans dropped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace() -> Trace {
        let mut t = recstack_trace_store::sample::full_trace(1, 1_000_000);
        t.trace_id = "0af7651916cd43dd8448eb211c80319c".into();
        t.span_id = Some("b7ad6b7169203331".into());
        t.parent_span_id = Some("00f067aa0ba902b7".into());
        t.latency_us = 8_000;
        t
    }

    #[test]
    fn a_request_span_and_one_per_stage_that_ran() {
        let mut t = trace();
        t.stages[1].outcome = "failed: recall: deadline exceeded".into();
        t.stages.push(recstack_trace_store::StageRecord {
            name: "popular".into(),
            latency_us: 0,
            start_us: None,
            items_in: 0,
            items_out: 0,
            outcome: "skipped: the request is at the full level".into(),
        });
        let spans = spans(&t);
        let root = &spans[0];
        assert_eq!(root.name, "recommend");
        assert_eq!(root.trace_id, hex_bytes("0af7651916cd43dd8448eb211c80319c").unwrap());
        assert_eq!(root.span_id, hex_bytes("b7ad6b7169203331").unwrap());
        assert_eq!(root.parent_span_id, hex_bytes("00f067aa0ba902b7").unwrap());
        assert_eq!(root.end_time_unix_nano, 1_000_000 * 1_000_000);
        assert_eq!(root.end_time_unix_nano - root.start_time_unix_nano, 8_000_000);
        let ran: Vec<&str> = t
            .stages
            .iter()
            .filter(|s| !s.outcome.starts_with("skipped"))
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(spans[1..].iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ran);
        let mut ids: Vec<&Vec<u8>> = spans.iter().map(|s| &s.span_id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), spans.len(), "distinct span ids");
        for (s, stage) in spans[1..]
            .iter()
            .zip(t.stages.iter().filter(|s| !s.outcome.starts_with("skipped")))
        {
            assert_eq!(s.parent_span_id, root.span_id);
            assert_eq!(s.trace_id, root.trace_id);
            assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, stage.latency_us * 1_000);
            assert_eq!(
                s.start_time_unix_nano,
                root.start_time_unix_nano + stage.start_us.unwrap_or(0) * 1_000
            );
        }
        let failed = spans.iter().find(|s| s.name == t.stages[1].name).unwrap();
        let status = failed.status.as_ref().unwrap();
        assert_eq!(status.code, status::StatusCode::Error as i32);
        assert_eq!(status.message, "recall: deadline exceeded");
        assert!(
            spans
                .iter()
                .filter(|s| s.span_id != failed.span_id)
                .all(|s| s.status.is_none())
        );
        let request_id = root.attributes.iter().find(|a| a.key == "recstack.request_id").unwrap();
        assert_eq!(
            request_id.value.as_ref().unwrap().value,
            Some(any_value::Value::StringValue(t.request_id.clone()))
        );
    }

    #[test]
    fn no_spans_without_ids_and_no_parent_without_a_caller() {
        let mut t = trace();
        t.span_id = None;
        assert!(spans(&t).is_empty());
        let mut t = trace();
        t.trace_id = "not hex".into();
        assert!(spans(&t).is_empty());
        let mut t = trace();
        t.parent_span_id = None;
        assert!(spans(&t)[0].parent_span_id.is_empty());
    }
}
