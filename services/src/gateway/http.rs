//! The gateway's HTTP API: `POST /v1/recommend`, plus `/metrics`, `/healthz`, `/readyz`.
//!
//! Malformed requests get a 400 whose JSON names the field (`{"error": …, "field": …}`);
//! everything else gets a 200 with a list, whatever failed downstream.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use serde_json::json;

use super::{FieldError, Gateway, RecommendRequest, validate};

/// The gateway's router, with the operational endpoints merged in.
pub fn router(gateway: Arc<Gateway>, ready: Arc<AtomicBool>) -> Router {
    let encode: crate::ops::Encode = {
        let metrics = gateway.metrics.clone();
        Arc::new(move || metrics.encode())
    };
    Router::new()
        .route("/v1/recommend", post(recommend))
        .with_state(gateway)
        .merge(crate::ops::router(encode, ready))
}

/// Parses a request body; errors name the field (`n`, `context.scene`, or `body`).
pub fn parse(body: &[u8]) -> Result<RecommendRequest, FieldError> {
    parse_json(body)
}

/// Parses a JSON body into `T`; errors name the field (`events[2].kind`, or `body`).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, FieldError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        // A missing or unknown field is reported at the parent: name the field itself.
        let field = if let Some(name) = quoted(&message, "missing field `") {
            name
        } else if let Some(name) = quoted(&message, "unknown field `") {
            name
        } else if path == "." || inner.is_syntax() || inner.is_eof() {
            "body".to_string()
        } else {
            path
        };
        FieldError { field, message }
    })
}

fn quoted(message: &str, prefix: &str) -> Option<String> {
    let rest = message.split(prefix).nth(1)?;
    Some(rest.split('`').next()?.to_string())
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
    let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
    Json(gateway.recommend(query, traceparent).await).into_response()
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
        ] {
            let e = parse(body.as_bytes()).unwrap_err();
            assert_eq!(e.field, field, "{body}: {e}");
            assert!(!e.message.is_empty());
        }
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
