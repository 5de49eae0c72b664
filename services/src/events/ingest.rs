//! The ingest service: `POST /v1/events` (JSON) and gRPC `PostEvents`.
//!
//! A call is checked whole before anything is written: one bad event refuses the call with a
//! 400 / `INVALID_ARGUMENT` naming the field (`events[3].kind`), so a client never has to work
//! out which half landed. Events whose id was recorded before (a client retry) are answered as
//! duplicates and not appended again; the ids of the last `dedup_ttl` are kept, and on start
//! they are reloaded from the tail of the log, so a restart does not forget them. The answer
//! comes only once the events are durable in the log (the embedded log `fdatasync`s; Kafka
//! acknowledges from the leader). If the append fails, nothing is acknowledged and the ids are
//! forgotten again, so the retry goes through. Impressions then go into the users' seen
//! filters through the recall service (best effort: the events are already safe).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::ops::{Buckets, MetricsRegistry};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tonic::{Request, Response as GrpcResponse, Status};

use super::log::{EventLog, LogError};
use super::{Event, EventError, EventKind, RawEvent, Timestamp, now_ms};
use crate::link::{Direct, EndpointError, Wire, lazy_channel};
use crate::recall::proto::ImpressionsRequest;
use crate::recall::proto::recall_client::RecallClient;
use crate::recall::proto::recall_server::Recall;

/// Generated gRPC types (`services/proto/events.proto`).
pub mod proto {
    tonic::include_proto!("recstack.events.v1");
}

/// Most events in one call.
pub const MAX_EVENTS: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Invalid(#[from] EventError),
    #[error(transparent)]
    Log(#[from] LogError),
}

/// What a call did.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Posted {
    pub accepted: u32,
    pub duplicates: Vec<String>,
}

/// How ingest reaches the users' seen filters.
#[derive(Clone)]
pub enum SeenLink {
    None,
    Grpc(RecallClient<Wire>),
    Direct(Direct<dyn Recall>),
}

impl SeenLink {
    pub fn grpc(url: &str) -> Result<Self, EndpointError> {
        Ok(Self::Grpc(RecallClient::new(Wire::new(lazy_channel(url)?))))
    }

    async fn record(&self, user: String, item_ids: Vec<String>) -> Result<(), Status> {
        let req = Request::new(ImpressionsRequest {
            user_id: user,
            item_ids,
        });
        match self {
            SeenLink::None => Ok(()),
            SeenLink::Grpc(c) => c.clone().record_impressions(req).await.map(|_| ()),
            SeenLink::Direct(d) => {
                d.check("recall")?;
                d.service.record_impressions(req).await.map(|_| ())
            }
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// accepted, invalid, unavailable
    pub outcome: &'static str,
}

/// Metrics of the ingest service (`recstack_ingest_*`).
pub struct IngestMetrics {
    pub registry: Registry,
    pub events: Family<KindLabels, Counter>,
    pub duplicates: Counter,
    pub calls: Family<CallLabels, Counter>,
    pub append_latency: Histogram,
    pub seen_errors: Counter,
}

impl Default for IngestMetrics {
    fn default() -> Self {
        let mut m = MetricsRegistry::new("recstack_ingest");
        Self {
            events: m.family("events", "Events appended to the log, by kind"),
            duplicates: m.counter("duplicates", "Events refused as already recorded"),
            calls: m.family("calls", "Calls by outcome"),
            append_latency: m.histogram(
                "append_latency_seconds",
                "Time for the log to make a call's events durable",
                Buckets::exponential(0.000_05, 2.0, 16),
            ),
            seen_errors: m.counter(
                "seen_errors",
                "Impressions the seen filters could not take (events are still logged)",
            ),
            registry: m.finish(),
        }
    }
}

impl IngestMetrics {
    pub fn encode(&self) -> String {
        crate::ops::encode(&self.registry)
    }
    fn call(&self, outcome: &'static str) {
        self.calls.get_or_create(&CallLabels { outcome }).inc();
    }
}

/// The ingest service over an event log.
pub struct Ingest<L: EventLog> {
    log: Arc<L>,
    ids: moka::future::Cache<String, ()>,
    seen: SeenLink,
    pub metrics: Arc<IngestMetrics>,
}

impl<L: EventLog> Ingest<L> {
    /// Remembers up to `dedup_capacity` event ids for `dedup_ttl`.
    pub fn new(log: Arc<L>, seen: SeenLink, dedup_capacity: u64, dedup_ttl: Duration) -> Self {
        Self {
            log,
            ids: moka::future::Cache::builder()
                .max_capacity(dedup_capacity)
                .time_to_live(dedup_ttl)
                .build(),
            seen,
            metrics: Arc::new(IngestMetrics::default()),
        }
    }

    /// Reloads the ids of the last `per_partition` records of every partition.
    pub async fn warm(&self, per_partition: u64) -> Result<usize, LogError> {
        let mut n = 0;
        for p in 0..self.log.partitions() {
            let end = self.log.end_offset(p).await?;
            let mut from = end.saturating_sub(per_partition);
            while from < end {
                let records = self.log.read(p, from, 10_000).await?;
                let Some(last) = records.last() else { break };
                from = last.offset + 1;
                for r in records {
                    if let Ok(e) = Event::decode(&r.value) {
                        self.ids.insert(e.event_id, ()).await;
                        n += 1;
                    }
                }
            }
        }
        Ok(n)
    }

    /// Checks, deduplicates and appends `raw`; see the module docs.
    pub async fn post(&self, raw: &[RawEvent]) -> Result<Posted, IngestError> {
        let result = self.post_inner(raw).await;
        self.metrics.call(match &result {
            Ok(_) => "accepted",
            Err(IngestError::Invalid(_)) => "invalid",
            Err(IngestError::Log(_)) => "unavailable",
        });
        result
    }

    async fn post_inner(&self, raw: &[RawEvent]) -> Result<Posted, IngestError> {
        if raw.is_empty() {
            return Err(EventError {
                field: "events".into(),
                message: "at least one event is required".into(),
            }
            .into());
        }
        if raw.len() > MAX_EVENTS {
            return Err(EventError {
                field: "events".into(),
                message: format!("at most {MAX_EVENTS} per call, got {}", raw.len()),
            }
            .into());
        }
        let now = now_ms();
        let events = raw
            .iter()
            .enumerate()
            .map(|(i, r)| r.validate(&format!("events[{i}]"), now))
            .collect::<Result<Vec<Event>, _>>()?;
        let mut posted = Posted::default();
        let mut in_call = HashSet::new();
        let mut fresh = Vec::with_capacity(events.len());
        for e in events {
            let new_here = in_call.insert(e.event_id.clone());
            if new_here && self.ids.entry(e.event_id.clone()).or_insert(()).await.is_fresh() {
                fresh.push(e);
            } else {
                posted.duplicates.push(e.event_id);
            }
        }
        self.metrics.duplicates.inc_by(posted.duplicates.len() as u64);
        if fresh.is_empty() {
            return Ok(posted);
        }
        let records = fresh.iter().map(|e| (e.key().to_string(), e.encode())).collect();
        let start = Instant::now();
        if let Err(e) = self.log.append(records).await {
            // Not durable: forget the ids so the client's retry is accepted.
            for ev in &fresh {
                self.ids.invalidate(&ev.event_id).await;
            }
            return Err(e.into());
        }
        self.metrics.append_latency.observe(start.elapsed().as_secs_f64());
        posted.accepted = fresh.len() as u32;
        let mut impressions: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for e in &fresh {
            self.metrics
                .events
                .get_or_create(&KindLabels { kind: e.kind.name() })
                .inc();
            if e.kind == EventKind::Impression {
                impressions.entry(&e.user_id).or_default().push(e.item_id.clone());
            }
        }
        for (user, items) in impressions {
            if let Err(e) = self.seen.record(user.to_string(), items).await {
                self.metrics.seen_errors.inc();
                tracing::warn!(user, error = %e, "seen filter not updated");
            }
        }
        Ok(posted)
    }
}

// === HTTP ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostBody {
    events: Vec<RawEvent>,
}

fn error_response(e: IngestError) -> Response {
    match e {
        IngestError::Invalid(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": e.to_string(), "field": e.field})),
        )
            .into_response(),
        IngestError::Log(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": format!("events not recorded, retry: {e}")})),
        )
            .into_response(),
    }
}

async fn post_events<L: EventLog>(State(ingest): State<Arc<Ingest<L>>>, body: Bytes) -> Response {
    let body: PostBody = match crate::json::parse_json(&body) {
        Ok(b) => b,
        Err(e) => {
            ingest.metrics.call("invalid");
            return error_response(IngestError::Invalid(EventError {
                field: e.field,
                message: e.message,
            }));
        }
    };
    match ingest.post(&body.events).await {
        Ok(posted) => Json(posted).into_response(),
        Err(e) => error_response(e),
    }
}

/// `POST /v1/events` with `/metrics` and `/healthz` (the server adds `/readyz`).
pub fn router<L: EventLog>(ingest: Arc<Ingest<L>>) -> Router {
    let encode: crate::ops::Encode = {
        let metrics = ingest.metrics.clone();
        Arc::new(move || metrics.encode())
    };
    Router::new()
        .route("/v1/events", post(post_events::<L>))
        .with_state(ingest)
        .merge(crate::ops::metrics_router(encode))
}

// === gRPC ===

/// The gRPC face of [`Ingest`].
pub struct IngestGrpc<L: EventLog>(pub Arc<Ingest<L>>);

impl From<&proto::Event> for RawEvent {
    fn from(e: &proto::Event) -> Self {
        RawEvent {
            event_id: e.event_id.clone(),
            user_id: e.user_id.clone(),
            item_id: e.item_id.clone(),
            kind: e.kind.clone(),
            ts: (e.ts_ms != 0).then_some(Timestamp::Millis(e.ts_ms)),
            request_id: (!e.request_id.is_empty()).then(|| e.request_id.clone()),
        }
    }
}

#[tonic::async_trait]
impl<L: EventLog> proto::ingest_server::Ingest for IngestGrpc<L> {
    async fn post_events(
        &self,
        request: Request<proto::PostEventsRequest>,
    ) -> Result<GrpcResponse<proto::PostEventsResponse>, Status> {
        let raw: Vec<RawEvent> = request.get_ref().events.iter().map(RawEvent::from).collect();
        match self.0.post(&raw).await {
            Ok(p) => Ok(GrpcResponse::new(proto::PostEventsResponse {
                accepted: p.accepted,
                duplicates: p.duplicates,
            })),
            Err(IngestError::Invalid(e)) => Err(Status::invalid_argument(e.to_string())),
            Err(IngestError::Log(e)) => Err(Status::unavailable(format!("events not recorded, retry: {e}"))),
        }
    }
}
