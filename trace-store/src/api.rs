//! The trace query API (JSON over HTTP):
//!
//! | route | answers |
//! |---|---|
//! | `GET /v1/traces?user=&item=&from=&to=&level=&model_version=&bucket=&size=&after=` | a page of [`TraceSummary`](crate::query::TraceSummary), newest first |
//! | `GET /v1/traces/{request_id}` | the whole [`Trace`](crate::Trace) |
//! | `GET /v1/traces/{request_id}/why/{item_id}` | [`Why`]: the lineage of a served item |
//! | `GET /v1/traces/{request_id}/why-not/{item_id}` | [`WhyNot`](crate::explain::WhyNot): where a missing item fell out |
//! | `GET /v1/compare?a={request_id}&b={request_id}` | [`Comparison`](crate::compare::Comparison): the two served lists side by side, every item's movement and the stage that made it |
//! | `GET /v1/aggregates?from=&to=&interval=` | [`Aggregates`](crate::query::Aggregates) |
//! | `GET /v1/items?ids=a,b,c` | `{"titles": {"a": "…"}}`: the catalogue's titles of up to [`MAX_TITLES`] items (unknown ids left out) |
//!
//! Every route needs a token when the stack has them ([`crate::access`]): `Authorization: Bearer
//! <token>` of the reader or the admin role; none or a wrong one is a 401, too little power a 403,
//! each with a message and nothing else. With user ids pseudonymised, searching by a user's own
//! id (`user=42`) is the admin's; a reader searches by the pseudonym (`user=p-…`).
//!
//! Times are milliseconds since the epoch or RFC 3339 (`2026-11-22T10:00:00Z`); intervals are
//! milliseconds or a number with `s`, `m`, `h` or `d`. A bad parameter is a 400 whose body
//! names it: `{"error": "...", "field": "from"}`; an unknown request is a 404; a store that
//! cannot be reached is a 503. A trace asked for right after its response was sent is answered
//! as soon as it is written (read-your-trace: see [`PENDING_WINDOW_MS`]).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::access::{Access, Denied, PSEUDONYM_PREFIX, Role};
use crate::explain::{self, ItemIndex, Why};
use crate::query::{AggregateQuery, Cursor, MAX_PAGE, SearchQuery};
use crate::store::{StoreError, TraceStore, now_ms};

#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn TraceStore>,
    /// The items recall can return, so why-not can say "not in the index".
    pub index: Option<Arc<dyn ItemIndex>>,
    /// Who may read ([`Access::open`]: everyone).
    pub access: Arc<Access>,
}

/// How long after its request was served a trace may still be on its way to the store (the
/// gateway's writer lingers up to 250 ms, then a store write): a read of a younger trace that
/// is not there yet waits for it instead of answering 404 — read-your-trace.
pub const PENDING_WINDOW_MS: i64 = 3_000;

/// Most ids one `GET /v1/items` may ask about.
pub const MAX_TITLES: usize = 500;

/// How often a waiting read looks again.
const PENDING_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// The query API's routes.
pub fn router(state: ApiState) -> axum::Router {
    axum::Router::new()
        .route("/v1/traces", get(search))
        .route("/v1/traces/{request_id}", get(get_trace))
        .route("/v1/traces/{request_id}/why/{item_id}", get(why))
        .route("/v1/traces/{request_id}/why-not/{item_id}", get(why_not))
        .route("/v1/compare", get(compare))
        .route("/v1/aggregates", get(aggregates))
        .route("/v1/items", get(titles))
        .layer(axum::middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// Lets a caller with a reader or admin token through, its role in the request's extensions;
/// turns the rest away with 401 (asking for a bearer token) or 403.
async fn authorize(State(s): State<ApiState>, mut request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match s.access.authorize(header, Role::Reader) {
        Ok(role) => {
            request.extensions_mut().insert(role);
            next.run(request).await
        }
        Err(denied) => denied_response(&denied),
    }
}

/// The answer to a caller turned away: its status, the message, and for a 401 the scheme to use.
pub fn denied_response(denied: &Denied) -> Response {
    let status = StatusCode::from_u16(denied.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut response = (status, Json(json!({ "error": denied.to_string() }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer realm=\"recstack\""),
        );
    }
    response
}

/// An error answer: status, message and (for 400s) the parameter at fault.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn bad(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: format!("{field}: {}", message.into()),
            field: Some(field.to_string()),
        }
    }

    fn not_found(message: String) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message,
            field: None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match e {
            StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::Refused(_) | StoreError::Corrupt { .. } => StatusCode::BAD_GATEWAY,
        };
        Self {
            status,
            message: e.to_string(),
            field: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.field {
            Some(f) => json!({ "error": self.message, "field": f }),
            None => json!({ "error": self.message }),
        };
        (self.status, Json(body)).into_response()
    }
}

type Params = Query<HashMap<String, String>>;

/// Refuses parameters the route does not know (a typo should not silently widen a search).
fn only(params: &HashMap<String, String>, known: &[&'static str]) -> Result<(), ApiError> {
    let mut unknown: Vec<&String> = params.keys().filter(|k| !known.contains(&k.as_str())).collect();
    unknown.sort();
    match unknown.first() {
        None => Ok(()),
        Some(k) => Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("unknown parameter {k:?}; known: {}", known.join(", ")),
            field: Some(k.to_string()),
        }),
    }
}

/// A time: milliseconds since the epoch or RFC 3339.
pub fn parse_time(field: &'static str, s: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    s.parse::<jiff::Timestamp>().map(|t| t.as_millisecond()).map_err(|_| {
        ApiError::bad(
            field,
            format!("{s:?} is neither milliseconds since the epoch nor RFC 3339"),
        )
    })
}

/// An interval: milliseconds, or a number with `s`, `m`, `h`, `d`.
pub fn parse_interval(field: &'static str, s: &str) -> Result<i64, ApiError> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "ms"),
    };
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(ApiError::bad(
                field,
                format!("{s:?}: use milliseconds or a number with s, m, h, d"),
            ));
        }
    };
    num.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| ApiError::bad(field, format!("{s:?} is not a positive interval")))
}

fn text(params: &HashMap<String, String>, field: &'static str) -> Result<Option<String>, ApiError> {
    match params.get(field) {
        None => Ok(None),
        Some(v) if v.is_empty() || v.len() > 256 => Err(ApiError::bad(field, "must be 1 to 256 characters")),
        Some(v) => Ok(Some(v.clone())),
    }
}

/// The search a query string asks for.
pub fn search_query(params: &HashMap<String, String>) -> Result<SearchQuery, ApiError> {
    only(
        params,
        &[
            "user",
            "item",
            "from",
            "to",
            "level",
            "model_version",
            "bucket",
            "size",
            "after",
        ],
    )?;
    let mut q = SearchQuery::new();
    q.user = text(params, "user")?;
    q.item = text(params, "item")?;
    q.level = text(params, "level")?;
    if let Some(level) = &q.level
        && !crate::LEVELS.contains(&level.as_str())
    {
        return Err(ApiError::bad(
            "level",
            format!("{level:?} is not one of {}", crate::LEVELS.join(", ")),
        ));
    }
    q.model_version = text(params, "model_version")?;
    q.from_ms = params.get("from").map(|s| parse_time("from", s)).transpose()?;
    q.to_ms = params.get("to").map(|s| parse_time("to", s)).transpose()?;
    if let (Some(f), Some(t)) = (q.from_ms, q.to_ms)
        && t <= f
    {
        return Err(ApiError::bad("to", "must be after `from`"));
    }
    q.bucket = params
        .get("bucket")
        .map(|s| {
            s.parse::<u32>()
                .map_err(|_| ApiError::bad("bucket", format!("{s:?} is not a bucket number")))
        })
        .transpose()?;
    if let Some(s) = params.get("size") {
        q.size = s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| ApiError::bad("size", format!("{s:?}: must be 1 to {MAX_PAGE}")))?;
    }
    q.after = params
        .get("after")
        .map(|s| Cursor::decode(s).ok_or_else(|| ApiError::bad("after", "not a cursor from a previous page's `next`")))
        .transpose()?;
    Ok(q)
}

/// The aggregates a query string asks for: the last hour by minute unless told.
pub fn aggregate_query(params: &HashMap<String, String>, now: i64) -> Result<AggregateQuery, ApiError> {
    only(params, &["from", "to", "interval"])?;
    let to = params
        .get("to")
        .map(|s| parse_time("to", s))
        .transpose()?
        .unwrap_or(now);
    let from = params
        .get("from")
        .map(|s| parse_time("from", s))
        .transpose()?
        .unwrap_or(to - 3_600_000);
    let interval = params
        .get("interval")
        .map(|s| parse_interval("interval", s))
        .transpose()?
        .unwrap_or(60_000);
    AggregateQuery::new(from, to, interval).map_err(|e| ApiError::bad(e.field, e.message))
}

async fn search(
    State(s): State<ApiState>,
    role: Option<axum::Extension<Role>>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    let mut q = search_query(&params)?;
    let role = role.map(|r| r.0).unwrap_or(Role::Reader);
    q.user = stored_user(&s.access, role, q.user)?;
    Ok(Json(s.store.search(&q).await?).into_response())
}

/// The user id a search looks for in stored traces: with pseudonyms on, a pseudonym as given,
/// or (for the admin only) the pseudonym of a user's own id.
pub fn stored_user(access: &Access, role: Role, user: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(user) = user else { return Ok(None) };
    if access.pseudonym_key.is_none() || user.starts_with(PSEUDONYM_PREFIX) {
        return Ok(Some(user));
    }
    if role < Role::Admin {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "user: traces keep pseudonyms ({PSEUDONYM_PREFIX}…); searching by a user's own id needs the admin role"
            ),
            field: Some("user".into()),
        });
    }
    Ok(Some(access.stored_user(&user).into_owned()))
}

/// The trace of `request_id`; one whose request was served less than [`PENDING_WINDOW_MS`]
/// ago (its id says when) is waited for until it arrives or the window closes.
async fn load(s: &ApiState, request_id: &str) -> Result<crate::Trace, ApiError> {
    let pending_until = crate::request_id::issued_ms(request_id).map(|at| at + PENDING_WINDOW_MS);
    loop {
        if let Some(trace) = s.store.get(request_id).await? {
            return Ok(trace);
        }
        match pending_until {
            Some(until) if now_ms() < until => tokio::time::sleep(PENDING_POLL).await,
            _ => return Err(ApiError::not_found(format!("no trace for request {request_id:?}"))),
        }
    }
}

async fn get_trace(State(s): State<ApiState>, Path(request_id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(load(&s, &request_id).await?).into_response())
}

async fn why(
    State(s): State<ApiState>,
    Path((request_id, item_id)): Path<(String, String)>,
) -> Result<Json<Why>, ApiError> {
    let trace = load(&s, &request_id).await?;
    explain::why(&trace, &item_id).map(Json).ok_or_else(|| {
        ApiError::not_found(format!(
            "item {item_id:?} was not served in request {request_id:?}; ask /v1/traces/{request_id}/why-not/{item_id}"
        ))
    })
}

async fn why_not(
    State(s): State<ApiState>,
    Path((request_id, item_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let trace = load(&s, &request_id).await?;
    Ok(Json(explain::why_not(&trace, &item_id, s.index.as_deref())).into_response())
}

/// The two request ids of `GET /v1/compare`.
fn compare_ids(params: &HashMap<String, String>) -> Result<(String, String), ApiError> {
    only(params, &["a", "b"])?;
    let id = |field: &'static str| match text(params, field)? {
        Some(v) => Ok(v),
        None => Err(ApiError::bad(field, "a request id is required")),
    };
    Ok((id("a")?, id("b")?))
}

async fn compare(State(s): State<ApiState>, Query(params): Params) -> Result<Response, ApiError> {
    let (a, b) = compare_ids(&params)?;
    let (ta, tb) = tokio::try_join!(load(&s, &a), load(&s, &b))?;
    Ok(Json(crate::compare::compare(&ta, &tb, s.index.as_deref())).into_response())
}

/// The ids of `GET /v1/items`: comma-separated, 1 to [`MAX_TITLES`], none empty.
fn title_ids(params: &HashMap<String, String>) -> Result<Vec<&str>, ApiError> {
    only(params, &["ids"])?;
    let ids: Vec<&str> = params
        .get("ids")
        .map(|s| s.split(',').map(str::trim).collect())
        .unwrap_or_default();
    if ids.is_empty() || ids.iter().any(|i| i.is_empty()) {
        return Err(ApiError::bad("ids", "a comma-separated list of item ids, none empty"));
    }
    if ids.len() > MAX_TITLES {
        return Err(ApiError::bad("ids", format!("{} ids; at most {MAX_TITLES}", ids.len())));
    }
    Ok(ids)
}

async fn titles(State(s): State<ApiState>, Query(params): Params) -> Result<Response, ApiError> {
    let ids = title_ids(&params)?;
    let titles: serde_json::Map<String, serde_json::Value> = ids
        .into_iter()
        .filter_map(|id| {
            let title = s.index.as_ref()?.title(id)?;
            Some((id.to_string(), title.into()))
        })
        .collect();
    Ok(Json(json!({ "titles": titles })).into_response())
}

async fn aggregates(State(s): State<ApiState>, Query(params): Params) -> Result<Response, ApiError> {
    let q = aggregate_query(&params, now_ms())?;
    Ok(Json(s.store.aggregate(&q).await?).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn field(e: ApiError) -> String {
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        e.field.unwrap()
    }

    /// A request id issued `ago_ms` before now.
    fn issued_ago(ago_ms: i64) -> String {
        crate::request_id::issued_at(now_ms() - ago_ms, 1)
    }

    #[tokio::test]
    async fn a_young_trace_is_waited_for_an_old_or_foreign_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn TraceStore> =
            Arc::new(crate::embedded::EmbeddedStore::open(dir.path().join("t.sqlite")).unwrap());
        let s = ApiState {
            store: store.clone(),
            index: None,
            access: Arc::new(Access::open()),
        };
        // Written 200 ms after it is asked for: the read waits and finds it.
        let mut trace = crate::sample::summary_trace(1, now_ms());
        trace.request_id = crate::request_id::new(1);
        let id = trace.request_id.clone();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            store.put(vec![trace].into()).await.unwrap();
        });
        let asked = std::time::Instant::now();
        assert_eq!(load(&s, &id).await.unwrap().request_id, id);
        assert!(asked.elapsed() >= std::time::Duration::from_millis(150));
        writer.await.unwrap();
        // Never written: a 404 once its window has passed (issued 2.9 s ago: ~100 ms more).
        let started = std::time::Instant::now();
        let e = load(&s, &issued_ago(PENDING_WINDOW_MS - 100)).await.unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        // Old, or not a gateway id: a 404 at once.
        for id in [issued_ago(PENDING_WINDOW_MS + 1_000), "req-1".to_string()] {
            let started = std::time::Instant::now();
            assert_eq!(load(&s, &id).await.unwrap_err().status, StatusCode::NOT_FOUND);
            assert!(started.elapsed() < std::time::Duration::from_millis(500), "{id}");
        }
    }

    /// `GET path` on `router` with `token` as a bearer: status, `WWW-Authenticate`, JSON body.
    async fn call(router: &axum::Router, path: &str, token: Option<&str>) -> (u16, Option<String>, serde_json::Value) {
        use tower::ServiceExt;
        let mut req = axum::http::Request::get(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = router
            .clone()
            .oneshot(req.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(resp.into_body(), 1 << 24).await.unwrap();
        (status, challenge, serde_json::from_slice(&body).unwrap_or_default())
    }

    #[tokio::test]
    async fn every_route_needs_a_token_and_the_role_decides_user_searches() {
        use crate::access::Token;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn TraceStore> =
            Arc::new(crate::embedded::EmbeddedStore::open(dir.path().join("t.sqlite")).unwrap());
        let access = Access {
            reader: Some(Token::new("reader-token-0123456789").unwrap()),
            admin: Some(Token::new("admin-token-0123456789").unwrap()),
            debug: None,
            pseudonym_key: Some(Token::new("pseudonym-key-0123456789").unwrap()),
        };
        // The gateway stores the pseudonym of user 7, never "7".
        let mut trace = crate::sample::summary_trace(1, now_ms());
        trace.user_id = access.stored_user("7").into_owned();
        let (id, pseudonym) = (trace.request_id.clone(), trace.user_id.clone());
        store.put(vec![trace].into()).await.unwrap();
        let router = router(ApiState {
            store,
            index: None,
            access: Arc::new(access),
        });
        let routes = [
            format!("/v1/traces/{id}"),
            "/v1/traces?size=5".to_string(),
            format!("/v1/traces/{id}/why-not/x"),
            "/v1/aggregates".to_string(),
            "/v1/items?ids=a".to_string(),
        ];
        for path in &routes {
            let (status, challenge, body) = call(&router, path, None).await;
            assert_eq!(status, 401, "{path}");
            assert_eq!(challenge.as_deref(), Some("Bearer realm=\"recstack\""), "{path}");
            assert!(
                body["error"].as_str().unwrap().contains("Authorization: Bearer"),
                "{body}"
            );
            assert_eq!(body.as_object().unwrap().len(), 1, "nothing but the message: {body}");
            let (status, _, body) = call(&router, path, Some("reader-token-0123456789x")).await;
            assert_eq!(
                (status, body["error"].as_str()),
                (401, Some("the token is not valid for this stack"))
            );
        }
        // A reader reads the trace, and finds it by its pseudonym.
        let (status, _, body) = call(&router, &format!("/v1/traces/{id}"), Some("reader-token-0123456789")).await;
        assert_eq!((status, body["request_id"].as_str()), (200, Some(id.as_str())));
        assert_eq!(body["user_id"].as_str(), Some(pseudonym.as_str()));
        let path = format!("/v1/traces?user={pseudonym}");
        let (status, _, body) = call(&router, &path, Some("reader-token-0123456789")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["hits"][0]["request_id"].as_str(), Some(id.as_str()), "{body}");
        // By the user's own id: the admin's only.
        let (status, _, body) = call(&router, "/v1/traces?user=7", Some("reader-token-0123456789")).await;
        assert_eq!((status, body["field"].as_str()), (403, Some("user")), "{body}");
        assert!(body["error"].as_str().unwrap().contains("admin role"), "{body}");
        let (status, _, body) = call(&router, "/v1/traces?user=7", Some("admin-token-0123456789")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["hits"][0]["user_id"].as_str(), Some(pseudonym.as_str()), "{body}");
        let (_, _, body) = call(&router, "/v1/traces?user=8", Some("admin-token-0123456789")).await;
        assert_eq!(body["hits"].as_array().map(Vec::len), Some(0), "{body}");
    }

    #[test]
    fn compare_needs_both_ids() {
        assert_eq!(
            compare_ids(&params(&[("a", "x"), ("b", "y")])).unwrap(),
            ("x".to_string(), "y".to_string())
        );
        assert_eq!(field(compare_ids(&params(&[("a", "x")])).unwrap_err()), "b");
        assert_eq!(field(compare_ids(&params(&[("b", "y")])).unwrap_err()), "a");
        assert_eq!(field(compare_ids(&params(&[("a", ""), ("b", "y")])).unwrap_err()), "a");
        assert_eq!(
            field(compare_ids(&params(&[("a", "x"), ("b", "y"), ("c", "z")])).unwrap_err()),
            "c"
        );
    }

    #[test]
    fn title_ids_are_checked() {
        assert_eq!(title_ids(&params(&[("ids", "a, b,c")])).unwrap(), ["a", "b", "c"]);
        for bad in [
            vec![],
            vec![("ids", "")],
            vec![("ids", "a,,b")],
            vec![("ids", "a"), ("id", "b")],
        ] {
            let e = title_ids(&params(&bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad:?}");
        }
        let many = vec!["x"; MAX_TITLES + 1].join(",");
        assert_eq!(field(title_ids(&params(&[("ids", &many)])).unwrap_err()), "ids");
    }

    #[test]
    fn search_parameters_parse_and_bad_ones_name_their_field() {
        let q = search_query(&params(&[
            ("user", "u1"),
            ("from", "2026-11-22T10:00:00Z"),
            ("to", "1795400000000"),
            ("bucket", "7"),
            ("size", "50"),
        ]))
        .unwrap();
        assert_eq!(q.user.as_deref(), Some("u1"));
        assert_eq!(q.from_ms, Some(1_795_341_600_000));
        assert_eq!(q.to_ms, Some(1_795_400_000_000));
        assert_eq!((q.bucket, q.size), (Some(7), 50));

        assert_eq!(
            field(search_query(&params(&[("from", "yesterday")])).unwrap_err()),
            "from"
        );
        assert_eq!(field(search_query(&params(&[("size", "0")])).unwrap_err()), "size");
        assert_eq!(field(search_query(&params(&[("size", "201")])).unwrap_err()), "size");
        assert_eq!(field(search_query(&params(&[("bucket", "-1")])).unwrap_err()), "bucket");
        assert_eq!(
            field(search_query(&params(&[("after", "garbage")])).unwrap_err()),
            "after"
        );
        assert_eq!(field(search_query(&params(&[("user", "")])).unwrap_err()), "user");
        // A level the gateway never records is a mistake to say, not an empty page.
        let e = search_query(&params(&[("level", "ful")])).unwrap_err();
        assert_eq!(
            e.message,
            "level: \"ful\" is not one of full, reduced, popular, fallback"
        );
        assert_eq!(field(e), "level");
        for level in crate::LEVELS {
            assert_eq!(
                search_query(&params(&[("level", level)])).unwrap().level.as_deref(),
                Some(level)
            );
        }
        assert_eq!(
            field(search_query(&params(&[("from", "10"), ("to", "5")])).unwrap_err()),
            "to"
        );
        let e = search_query(&params(&[("usr", "u1")])).unwrap_err();
        assert!(e.message.contains("\"usr\""), "{}", e.message);
        assert_eq!(field(e), "usr");
    }

    #[test]
    fn aggregate_parameters_default_to_the_last_hour_by_minute() {
        let q = aggregate_query(&params(&[]), 10_000_000).unwrap();
        assert_eq!(
            (q.from_ms, q.to_ms, q.interval_ms),
            (10_000_000 - 3_600_000, 10_000_000, 60_000)
        );
        let q = aggregate_query(&params(&[("from", "0"), ("to", "86400000"), ("interval", "1h")]), 0).unwrap();
        assert_eq!(q.interval_ms, 3_600_000);
        assert_eq!(parse_interval("interval", "250").unwrap(), 250);
        assert_eq!(parse_interval("interval", "30s").unwrap(), 30_000);
        assert_eq!(
            field(aggregate_query(&params(&[("interval", "5w")]), 0).unwrap_err()),
            "interval"
        );
        assert_eq!(
            field(aggregate_query(&params(&[("interval", "0s")]), 0).unwrap_err()),
            "interval"
        );
        assert_eq!(
            field(aggregate_query(&params(&[("from", "0"), ("to", "86400000"), ("interval", "1")]), 0).unwrap_err()),
            "interval"
        );
    }
}
