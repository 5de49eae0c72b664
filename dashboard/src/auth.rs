//! Signing in to the dashboard (feature `ssr`): with the stack's tokens configured, every page
//! and server function needs a reader or admin token, kept in an `HttpOnly` cookie after
//! `/login`, or sent as `Authorization: Bearer`. The dashboard checks it, then passes it on to
//! the trace query API, which checks it again: the API's roles hold whichever door is used.
//!
//! A page asked for without a token redirects to `/login?next=<page>`; a server function gets a
//! 401 with a message. Nothing of the stack is shown before signing in.

use std::sync::Arc;

use axum::extract::{Form, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use recstack_trace_store::access::{Access, Denied, Role};
use serde::Deserialize;

/// The cookie holding a signed-in visitor's token.
pub const COOKIE: &str = "recstack_token";

/// A signed-in caller: the token it presented (passed on to the trace API) and its role.
#[derive(Clone, Debug)]
pub struct Caller {
    pub token: String,
    pub role: Role,
}

/// The signed-in visitor's token, in a server function or a page being rendered.
pub fn visitor_token() -> Option<String> {
    leptos::prelude::use_context::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Caller>().map(|c| c.token.clone()))
}

/// The signed-in visitor's role (`None`: no sign-in needed, or outside a request).
pub fn visitor_role() -> Option<Role> {
    leptos::prelude::use_context::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Caller>().map(|c| c.role))
}

/// The token a request presents: `Authorization: Bearer …`, else the sign-in cookie.
pub fn presented_token(headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string());
    bearer.or_else(|| cookie(headers, COOKIE))
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// A `next` that stays on this dashboard: a path, never another origin (`//host`, `http:`).
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') && !n.starts_with("/login") => {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

/// Lets signed-in callers through (their [`Caller`] in the request's extensions); sends pages
/// to `/login` and answers server functions 401 / 403.
pub async fn require(State(access): State<Arc<Access>>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path == "/login" || path == "/logout" || path.starts_with("/pkg/") {
        return next.run(request).await;
    }
    let token = presented_token(request.headers());
    match access.authorize(token.as_deref(), Role::Reader) {
        Ok(role) => {
            request.extensions_mut().insert(Caller {
                token: token.unwrap_or_default(),
                role,
            });
            next.run(request).await
        }
        Err(denied) if path.starts_with("/api/") => refused(&denied),
        Err(_) => {
            let target = request
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into());
            let next = safe_next(Some(&target));
            let query = crate::model::query_string([("next", next.as_str())]);
            Redirect::to(&format!("/login{query}")).into_response()
        }
    }
}

fn refused(denied: &Denied) -> Response {
    let status = StatusCode::from_u16(denied.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    (status, denied.to_string()).into_response()
}

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    next: Option<String>,
}

/// `GET /login`: the sign-in form.
pub async fn login_page(Query(q): Query<LoginQuery>) -> Html<String> {
    Html(login_html(&safe_next(q.next.as_deref()), None))
}

/// `POST /login`: a valid token sets the cookie and goes on to `next`; a bad one shows the form
/// again with why (401).
pub async fn login(State(access): State<Arc<Access>>, Form(form): Form<LoginForm>) -> Response {
    let next = safe_next(form.next.as_deref());
    let token = form.token.trim();
    match access.authorize(Some(token), Role::Reader) {
        Ok(_) if token.bytes().all(|b| b.is_ascii_graphic() && b != b';' && b != b',') => {
            let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
            let mut response = Redirect::to(&next).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, v);
            }
            response
        }
        Ok(_) => (
            StatusCode::BAD_REQUEST,
            Html(login_html(&next, Some("token: has characters a cookie cannot hold"))),
        )
            .into_response(),
        Err(denied) => (
            StatusCode::from_u16(denied.status()).unwrap_or(StatusCode::UNAUTHORIZED),
            Html(login_html(&next, Some(&denied.to_string()))),
        )
            .into_response(),
    }
}

/// `/logout`: forgets the cookie.
pub async fn logout() -> Response {
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("recstack_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn login_html(next: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>recstack · sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>
body {{ font-family: system-ui, sans-serif; background: #f6f7f9; display: grid; place-items: center; min-height: 90vh; }}
form {{ background: #fff; padding: 2rem; border-radius: 8px; box-shadow: 0 1px 4px #0002; width: 22rem; }}
h1 {{ font-size: 1.2rem; margin-top: 0; }}
input[type=password] {{ width: 100%; padding: .5rem; box-sizing: border-box; margin: .5rem 0 1rem; }}
.error {{ color: #b00020; }}
p.hint {{ color: #555; font-size: .85rem; }}
</style></head>
<body><form method="post" action="/login">
<h1>recstack dashboard</h1>
{error}
<label for="token">Access token</label>
<input id="token" name="token" type="password" autocomplete="off" required>
<input type="hidden" name="next" value="{next}">
<button type="submit">Sign in</button>
<p class="hint">The reader or admin token from the stack's access Secret.</p>
</form></body></html>"#,
        next = escape(next)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_the_dashboard() {
        assert_eq!(safe_next(Some("/traces/abc?x=1")), "/traces/abc?x=1");
        for bad in [
            None,
            Some(""),
            Some("https://evil.example/"),
            Some("//evil.example/"),
            Some("/\\evil"),
            Some("/login?next=/x"),
        ] {
            assert_eq!(safe_next(bad), "/", "{bad:?}");
        }
    }

    #[test]
    fn the_token_comes_from_the_bearer_header_or_the_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_token(&h), None);
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; recstack_token=abc ; b=2"),
        );
        assert_eq!(presented_token(&h).as_deref(), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer xyz"));
        assert_eq!(presented_token(&h).as_deref(), Some("xyz"));
        let mut empty = HeaderMap::new();
        empty.insert(header::COOKIE, HeaderValue::from_static("recstack_token="));
        assert_eq!(presented_token(&empty), None);
    }

    #[test]
    fn the_form_escapes_what_it_echoes() {
        let html = login_html("/x\"><script>", Some("<b>no</b>"));
        assert!(!html.contains("<script>") && !html.contains("<b>"), "{html}");
        assert!(html.contains("&lt;b&gt;no&lt;/b&gt;"));
    }
}
