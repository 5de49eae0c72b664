//! The gateway's gRPC face: `Recommend`, the same checks and answer as HTTP.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::request::{RecommendRequest, validate};
use super::{Gateway, proto};

/// The gRPC face of the gateway.
pub struct GatewayGrpc(pub Arc<Gateway>);

#[tonic::async_trait]
impl proto::gateway_server::Gateway for GatewayGrpc {
    async fn recommend(
        &self,
        request: Request<proto::RecommendRequest>,
    ) -> Result<Response<proto::RecommendResponse>, Status> {
        let traceparent = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let debug_token = request
            .metadata()
            .get(recstack_trace_store::access::DEBUG_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let r = request.into_inner();
        let q = validate(RecommendRequest {
            user_id: r.user_id,
            n: Some(r.n),
            scene: (!r.scene.is_empty()).then_some(r.scene),
            context: r.context.into_iter().collect(),
            timeout_ms: Some(r.timeout_ms),
            debug: r.debug,
            what_if: None,
        })
        .map_err(|e| {
            self.0.metrics.invalid.inc();
            Status::invalid_argument(e.to_string())
        })?;
        if q.debug {
            self.0
                .admit_debug(debug_token.as_deref())
                .map_err(|refused| match refused {
                    super::DebugRefused::Untrusted => Status::permission_denied(refused.to_string()),
                    super::DebugRefused::Limited { .. } => Status::resource_exhausted(refused.to_string()),
                })?;
        }
        let rec = self.0.recommend(q, traceparent.as_deref()).await;
        Ok(Response::new(proto::RecommendResponse {
            request_id: rec.request_id,
            items: rec
                .items
                .into_iter()
                .map(|i| proto::Item {
                    item_id: i.item_id,
                    title: i.title,
                    score: i.score,
                    sources: i
                        .sources
                        .into_iter()
                        .map(|s| proto::Source {
                            channel: s.channel.name().to_string(),
                            score: s.score,
                            rank: s.rank,
                        })
                        .collect(),
                    ranked_position: i.ranked_position.unwrap_or(0),
                    rerank_rule: i.rerank_rule.unwrap_or_default(),
                })
                .collect(),
            level: rec.level,
            degraded: rec.degraded,
            model_version: rec.model_version.unwrap_or_default(),
            experiment: rec.experiment.unwrap_or_default(),
            bucket: rec.bucket.unwrap_or(0),
            latency_us: rec.latency_us.min(u64::from(u32::MAX)) as u32,
        }))
    }
}
