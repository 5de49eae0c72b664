//! Spans over OTLP/gRPC from a real local stack to a collector endpoint: an OTLP trace
//! service (the generated server of the OpenTelemetry protos, as a collector runs it) that
//! keeps what it receives. A debug request sent with a caller's `traceparent` arrives as the
//! gateway's request span (the caller's trace and parent) with a child span per stage that ran;
//! a summary request sends nothing; the gateway counts what the collector accepted.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use recstack_services::otlp::OtlpConfig;
use recstack_services::serve;

#[derive(Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.received.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    fn spans(&self) -> Vec<Span> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| s.spans.clone())
            .collect()
    }

    fn service_names(&self) -> Vec<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| &r.resource_spans)
            .filter_map(|r| r.resource.as_ref())
            .flat_map(|r| &r.attributes)
            .filter(|a| a.key == "service.name")
            .filter_map(|a| match a.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_traces_arrive_at_the_collector_as_a_request_span_and_its_stages() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn({
        let collector = collector.clone();
        async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector))
                .serve_with_incoming(recstack_services::ops::grpc_incoming(listener))
                .await
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut opts = common::traced_stack(&dir.path().join("traces.sqlite"), None);
    let mut otlp = OtlpConfig::new(&format!("http://{addr}"));
    otlp.linger = Duration::from_millis(100);
    opts.gateway.otlp = Some(otlp);
    let stack = serve::start_local(common::artifact_root(), opts).await.unwrap();
    let gateway = stack.get("gateway").http.to_string();

    // A summary request: no spans. A debug request with the caller's context: spans.
    common::recommend(&stack, "7", false).await;
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let (status, _, body) = tokio::task::spawn_blocking({
        let gateway = gateway.clone();
        move || {
            let traceparent = format!("00-{caller_trace}-{caller_span}-01");
            let headers = [
                ("traceparent", traceparent.as_str()),
                (recstack_trace_store::access::DEBUG_TOKEN_HEADER, common::TEST_DEBUG),
            ];
            common::http_with(
                &gateway,
                "POST",
                "/v1/recommend",
                &headers,
                r#"{"user_id": "7", "n": 10, "debug": true}"#,
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let trace = common::stored_trace(
        &stack.get("traces").http.to_string(),
        answer["request_id"].as_str().unwrap(),
    )
    .await;

    let mut spans = Vec::new();
    for _ in 0..100 {
        spans = collector.spans();
        if !spans.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let root = spans
        .iter()
        .find(|s| s.name == "recommend")
        .expect("the request's span");
    assert_eq!(hex(&root.trace_id), caller_trace);
    assert_eq!(
        hex(&root.parent_span_id),
        caller_span,
        "the caller's span is the parent"
    );
    assert_eq!(
        Some(hex(&root.span_id)),
        trace.span_id,
        "the span every internal call carried"
    );
    assert!(
        spans.iter().all(|s| hex(&s.trace_id) == caller_trace),
        "only the debug request's spans"
    );
    let ran: Vec<&str> = trace
        .stages
        .iter()
        .filter(|s| !s.outcome.starts_with("skipped"))
        .map(|s| s.name.as_str())
        .collect();
    let children: Vec<&str> = spans
        .iter()
        .filter(|s| s.parent_span_id == root.span_id)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(children, ran);
    for name in ["features", "recall", "ranking", "rerank"] {
        assert!(children.contains(&name), "{name}: {children:?}");
    }
    for s in spans.iter().filter(|s| s.parent_span_id == root.span_id) {
        assert!(s.start_time_unix_nano >= root.start_time_unix_nano, "{}", s.name);
        assert!(
            s.end_time_unix_nano <= root.end_time_unix_nano + 1_000_000,
            "{}",
            s.name
        );
    }
    assert_eq!(collector.service_names()[0], "recstack-gateway");
    let metrics = tokio::task::spawn_blocking(move || common::http_get(&gateway, "/metrics").1)
        .await
        .unwrap();
    let exported = format!("recstack_gateway_otlp_spans_exported_total {}", spans.len());
    assert!(metrics.contains(&exported), "{exported} in\n{metrics}");
    stack.stop().await.unwrap();
    server.abort();
}
