//! The operator's web server: `/metrics` in the Prometheus text format, `/healthz`, and a
//! `/readyz` that turns ready only when told.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use recstack_operator::metrics::{Metrics, OutcomeLabels, WriteLabels};
use recstack_operator::server::{ServerState, router};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test]
async fn metrics_health_and_readiness() {
    let metrics = Arc::new(Metrics::default());
    metrics.reconciles.get_or_create(&OutcomeLabels { outcome: "ok" }).inc();
    metrics
        .writes
        .get_or_create(&WriteLabels {
            kind: "Deployment",
            reason: "drift",
        })
        .inc();
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(ServerState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    });
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (code, body) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("recstack_operator_reconciles_total{outcome=\"ok\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE recstack_operator_reconcile_duration_seconds histogram"),
        "{body}"
    );
    assert!(
        body.contains("recstack_operator_child_writes_total{kind=\"Deployment\",reason=\"drift\"} 1"),
        "{body}"
    );

    assert_eq!(get(addr, "/healthz").await, (200, "ok".to_string()));
    assert_eq!(get(addr, "/readyz").await.0, 503);
    ready.store(true, Ordering::Relaxed);
    assert_eq!(get(addr, "/readyz").await, (200, "ready".to_string()));
}
