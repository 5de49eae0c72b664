//! Access to traces on a real local stack with the stack's tokens configured: debug requests
//! only from callers with the debug token (403 otherwise, over HTTP and gRPC) and within the
//! rate (429), pseudonymised user ids in the stored trace, and the trace query API's 401 / 403
//! and roles. Plain requests need no token.

mod common;

use std::sync::Arc;

use recstack_services::gateway::GatewayAccess;
use recstack_services::gateway::proto::RecommendRequest;
use recstack_services::gateway::proto::gateway_client::GatewayClient;
use recstack_services::serve;
use recstack_trace_store::access::{Access, DEBUG_TOKEN_HEADER, Token};
use serde_json::Value;

const READER: &str = "reader-token-for-the-access-test";
const ADMIN: &str = "admin-token-for-the-access-test";
const DEBUG: &str = "debug-token-for-the-access-test";

fn tokens() -> Access {
    Access {
        reader: Some(Token::new(READER).unwrap()),
        admin: Some(Token::new(ADMIN).unwrap()),
        debug: Some(Token::new(DEBUG).unwrap()),
        pseudonym_key: Some(Token::new("pseudonym-key-for-the-access-test").unwrap()),
    }
}

/// `POST /v1/recommend` with `headers`: status, response headers, JSON body.
async fn recommend(
    addr: String,
    user: &str,
    debug: bool,
    headers: Vec<(&'static str, String)>,
) -> (u16, String, Value) {
    let body = format!(r#"{{"user_id": "{user}", "n": 10, "debug": {debug}}}"#);
    tokio::task::spawn_blocking(move || {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, head, body) = common::http_with(&addr, "POST", "/v1/recommend", &h, &body);
        (status, head, serde_json::from_str(&body).unwrap_or(Value::Null))
    })
    .await
    .unwrap()
}

/// `GET path` on the trace API with `token` as a bearer (none: no header).
async fn api_get(addr: String, path: String, token: Option<&'static str>) -> (u16, String, Value) {
    tokio::task::spawn_blocking(move || {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let h: Vec<(&str, &str)> = bearer.iter().map(|b| ("Authorization", b.as_str())).collect();
        let (status, head, body) = common::http_with(&addr, "GET", &path, &h, "");
        (status, head, serde_json::from_str(&body).unwrap_or(Value::Null))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_needs_a_trusted_caller_within_the_rate_and_traces_keep_pseudonyms() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = common::traced_stack(&dir.path().join("traces.sqlite"), None);
    opts.gateway.access = GatewayAccess {
        tokens: Arc::new(tokens()),
        // Two at once, then one every 100 s: the third in this test is over the rate.
        debug_rate: Some((0.01, 2)),
        pseudonymize_users: true,
    };
    let stack = serve::start_local(common::artifact_root(), opts).await.unwrap();
    let gateway = stack.get("gateway").http.to_string();
    let api = stack.get("traces").http.to_string();
    let user = "1002";

    // A plain request needs no token; its trace stores the pseudonym.
    let (status, _, plain) = recommend(gateway.clone(), user, false, vec![]).await;
    assert_eq!(status, 200, "{plain}");
    assert_eq!(plain["items"].as_array().map(Vec::len), Some(10), "{plain}");

    // Debug without the debug token, or with the reader's: 403 naming `debug`, nothing served.
    for headers in [
        vec![],
        vec![(DEBUG_TOKEN_HEADER, READER.to_string())],
        vec![(DEBUG_TOKEN_HEADER, "x".repeat(40))],
    ] {
        let (status, _, body) = recommend(gateway.clone(), user, true, headers.clone()).await;
        assert_eq!(status, 403, "{headers:?}: {body}");
        assert_eq!(body["field"], "debug", "{body}");
        assert!(body["error"].as_str().unwrap().contains(DEBUG_TOKEN_HEADER), "{body}");
        assert!(
            body.get("items").is_none() && !body.to_string().contains(DEBUG),
            "{body}"
        );
    }

    // With it: a full, explained trace; twice within the burst, then 429 with Retry-After.
    let trusted = vec![(DEBUG_TOKEN_HEADER, DEBUG.to_string())];
    let (status, _, debug) = recommend(gateway.clone(), user, true, trusted.clone()).await;
    assert_eq!(status, 200, "{debug}");
    let (status, _, _) = recommend(
        gateway.clone(),
        user,
        true,
        vec![(DEBUG_TOKEN_HEADER, ADMIN.to_string())],
    )
    .await;
    assert_eq!(status, 200, "the admin token is trusted too");
    let (status, head, limited) = recommend(gateway.clone(), user, true, trusted).await;
    assert_eq!(status, 429, "{limited}");
    assert_eq!(limited["field"], "debug");
    let retry: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("a Retry-After header");
    assert!((1..=100).contains(&retry), "{retry}");

    // gRPC answers the same: permission denied without the token.
    let grpc = stack.get("gateway").grpc.expect("the gateway's gRPC address");
    let mut client = GatewayClient::connect(format!("http://{grpc}")).await.unwrap();
    let request = RecommendRequest {
        user_id: user.into(),
        n: 5,
        debug: true,
        ..Default::default()
    };
    let e = client.recommend(request.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains(DEBUG_TOKEN_HEADER), "{e}");
    let mut with_token = tonic::Request::new(request);
    with_token
        .metadata_mut()
        .insert(DEBUG_TOKEN_HEADER, DEBUG.parse().unwrap());
    let e = client.recommend(with_token).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "over the rate already: {e}");

    // The refusals are counted by reason.
    let metrics = tokio::task::spawn_blocking({
        let gateway = gateway.clone();
        move || common::http_get(&gateway, "/metrics").1
    })
    .await
    .unwrap();
    assert!(
        metrics.contains("recstack_gateway_debug_refused_total{reason=\"untrusted\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("recstack_gateway_debug_refused_total{reason=\"rate\"} 2"),
        "{metrics}"
    );

    // The trace API: nothing without a token.
    let id = debug["request_id"].as_str().unwrap().to_string();
    let (status, head, body) = api_get(api.clone(), format!("/v1/traces/{id}"), None).await;
    assert_eq!(status, 401, "{body}");
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "only the message: {body}");
    let (status, _, _) = api_get(api.clone(), format!("/v1/traces/{id}"), Some(DEBUG)).await;
    assert_eq!(status, 401, "the debug token reads no traces");

    // A reader reads the debug trace: full, explained, and the user a pseudonym.
    let pseudonym = tokens().stored_user(user).into_owned();
    let (status, _, trace) = api_get(api.clone(), format!("/v1/traces/{id}"), Some(READER)).await;
    assert_eq!(status, 200, "{trace}");
    assert_eq!(trace["user_id"], pseudonym.as_str());
    assert_eq!(trace["detail"], "full");
    assert_eq!(trace["explained"], true);
    assert!(
        !trace.to_string().contains(&format!("\"{user}\"")),
        "the user id is nowhere in the trace"
    );
    // The plain request's summary too.
    let plain_id = plain["request_id"].as_str().unwrap().to_string();
    let (_, _, summary) = api_get(api.clone(), format!("/v1/traces/{plain_id}"), Some(READER)).await;
    assert_eq!(summary["user_id"], pseudonym.as_str());

    // Searching by the user's own id is the admin's; the reader searches by pseudonym.
    let (status, _, body) = api_get(api.clone(), format!("/v1/traces?user={user}"), Some(READER)).await;
    assert_eq!((status, body["field"].as_str()), (403, Some("user")), "{body}");
    let ids = |page: &Value| -> Vec<String> {
        let mut ids: Vec<String> = page["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["request_id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    // The summary may still be in the writer's batch: wait for all three (up to 5 s).
    let mut by_pseudonym = Value::Null;
    for _ in 0..100 {
        let (status, _, page) = api_get(api.clone(), format!("/v1/traces?user={pseudonym}"), Some(READER)).await;
        assert_eq!(status, 200, "{page}");
        by_pseudonym = page;
        if ids(&by_pseudonym).len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, _, by_id) = api_get(api.clone(), format!("/v1/traces?user={user}"), Some(ADMIN)).await;
    assert_eq!(
        ids(&by_pseudonym).len(),
        3,
        "the plain request and the two debug ones: {by_pseudonym}"
    );
    assert_eq!(ids(&by_pseudonym), ids(&by_id));
    stack.stop().await.unwrap();
}
