//! The gateway's HTTP API: `POST /v1/recommend`, plus `/metrics` and `/healthz` (the server
//! adds `/readyz`).
//!
//! Malformed requests get a 400 whose JSON names the field (`{"error": …, "field": …}`); a
//! `debug` request from a caller without the debug token gets a 403, one over the debug rate a
//! 429 (both naming `debug`); everything else gets a 200 with a list, whatever failed downstream.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use serde_json::json;

use super::Gateway;
use super::request::{RecommendRequest, validate};
use crate::json::{FieldError, parse_json};

/// The gateway's router, with the operational endpoints merged in.
pub fn router(gateway: Arc<Gateway>) -> Router {
    let encode: crate::ops::Encode = {
        let metrics = gateway.metrics.clone();
        Arc::new(move || metrics.encode())
    };
    Router::new()
        .route("/v1/recommend", post(recommend))
        .with_state(gateway)
        .merge(crate::ops::metrics_router(encode))
}

/// Parses a request body; errors name the field (`n`, `context.scene`, or `body`).
pub fn parse(body: &[u8]) -> Result<RecommendRequest, FieldError> {
    parse_json(body)
}

fn bad_request(gateway: &Gateway, e: FieldError) -> Response {
    gateway.metrics.invalid.inc();
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": e.to_string(), "field": e.field})),
    )
        .into_response()
}

async fn recommend(State(gateway): State<Arc<Gateway>>, headers: HeaderMap, body: Bytes) -> Response {
    let request = match parse(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(&gateway, e),
    };
    let query = match validate(request) {
        Ok(q) => q,
        Err(e) => return bad_request(&gateway, e),
    };
    if query.debug {
        // A what-if is a debug request too (`validate` sets `debug`).
        let token = headers
            .get(recstack_trace_store::access::DEBUG_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok());
        if let Err(refused) = gateway.admit_debug(token) {
            return debug_refused(&refused);
        }
    }
    let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
    Json(gateway.recommend(query, traceparent).await).into_response()
}

/// 403 for an untrusted debug caller, 429 (with `Retry-After`) over the debug rate.
fn debug_refused(refused: &super::DebugRefused) -> Response {
    let body = Json(json!({"error": refused.to_string(), "field": "debug"}));
    match refused {
        super::DebugRefused::Untrusted => (StatusCode::FORBIDDEN, body).into_response(),
        super::DebugRefused::Limited { retry_after_s, .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            [(axum::http::header::RETRY_AFTER, retry_after_s.to_string())],
            body,
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_the_field() {
        for (body, field) in [
            (r#"{"n": 3}"#, "user_id"),
            (r#"{"user_id": "1", "n": "three"}"#, "n"),
            (r#"{"user_id": "1", "n": -1}"#, "n"),
            (r#"{"user_id": 1}"#, "user_id"),
            (r#"{"user_id": "1", "colour": "red"}"#, "colour"),
            (r#"{"user_id": "1", "context": {"a": 1}}"#, "context.a"),
            (r#"{"user_id": "1""#, "body"),
            ("", "body"),
            ("[]", "body"),
            // serde reads an array into a struct by position: still the body, not `[0]`.
            (r#"["1", 3]"#, "body"),
            (r#"[1, 2]"#, "body"),
            ("null", "body"),
            (r#""user_id""#, "body"),
            ("  42 ", "body"),
            (r#"{"user_id": "1", "what_if": {}}"#, "what_if.replay_of"),
            (
                r#"{"user_id": "1", "what_if": {"replay_of": "r", "forced": []}}"#,
                "what_if.forced",
            ),
            (
                r#"{"user_id": "1", "what_if": {"replay_of": "r", "block": [1]}}"#,
                "what_if.block[0]",
            ),
        ] {
            let e = parse(body.as_bytes()).unwrap_err();
            assert_eq!(e.field, field, "{body}: {e}");
            assert!(!e.message.is_empty());
        }
        for (body, found) in [
            ("[1, 2]", "an array"),
            ("null", "null"),
            ("true", "a boolean"),
            ("-4", "a number"),
        ] {
            assert_eq!(
                parse(body.as_bytes()).unwrap_err().message,
                format!("expected a JSON object, found {found}")
            );
        }
        // A syntax error keeps the parser's message, with its place.
        assert!(parse(b"[1,").unwrap_err().message.contains("line 1"));
    }

    #[test]
    fn a_good_body_parses() {
        let r =
            parse(br#"{"user_id": "7", "n": 5, "scene": "home", "context": {"device": "tv"}, "debug": true}"#).unwrap();
        assert_eq!(r.user_id, "7");
        assert_eq!(r.n, Some(5));
        assert_eq!(r.context["device"], "tv");
        assert!(r.debug);
    }
}
