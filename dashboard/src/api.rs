//! The server functions the pages call (run on the server, called over HTTP from the browser)
//! and the shapes they return. On the server each one asks the trace query API or the stack
//! status source held in [`crate::server::Dashboard`].

use leptos::prelude::*;
use recstack_trace_store::Trace;
use recstack_trace_store::explain::WhyNot;
use recstack_trace_store::query::{Aggregates, Page};
use serde::{Deserialize, Serialize};

use crate::model::CandidatePage;

/// The search form's fields as typed (empty = not filtered).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SearchFilters {
    pub user: String,
    pub item: String,
    pub from: String,
    pub to: String,
    pub level: String,
    pub model_version: String,
    pub bucket: String,
    /// The previous page's `next`.
    pub after: String,
}

impl SearchFilters {
    /// The form fields in query-string order (names as the query API and the page URL use them).
    pub fn fields(&self) -> [(&'static str, &str); 8] {
        [
            ("user", &self.user),
            ("item", &self.item),
            ("from", &self.from),
            ("to", &self.to),
            ("level", &self.level),
            ("model_version", &self.model_version),
            ("bucket", &self.bucket),
            ("after", &self.after),
        ]
    }

    /// The trace query API's parameters: non-empty fields, times normalized.
    pub fn to_api_params(&self) -> Result<Vec<(&'static str, String)>, (&'static str, String)> {
        let mut out = Vec::new();
        for (name, value) in self.fields() {
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            let value = if name == "from" || name == "to" {
                match crate::model::normalize_time(value).map_err(|e| (name, e))? {
                    Some(v) => v,
                    None => continue,
                }
            } else {
                value.to_string()
            };
            out.push((name, value));
        }
        Ok(out)
    }
}

/// A trace for the request view: everything but the candidate list, which comes a page at a
/// time (a full trace has a thousand).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceView {
    pub trace: Trace,
    /// `None` for a summary trace.
    pub candidates: Option<CandidatePage>,
    /// Titles of the items shown (served, and this page of candidates), from the query API's
    /// catalogue; empty when it has none.
    pub titles: std::collections::BTreeMap<String, String>,
    /// Where the request's spans are in the tracing UI (`--trace-link`), when configured.
    #[serde(default)]
    pub trace_link: Option<String>,
}

/// One component of the stack and how it is doing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComponentHealth {
    pub name: String,
    pub ready: bool,
    /// `2/3 replicas ready`, `ready in 1.2 ms`, or what went wrong.
    pub detail: String,
    /// Where it listens, when known.
    pub address: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConditionView {
    pub kind: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub since: String,
}

/// The RecommenderStack (in a cluster) or the local stack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StackStatus {
    /// `local` or `namespace/name`.
    pub name: String,
    /// `Running`, `Progressing`, `Degraded`, `Paused`, or `Unknown`.
    pub phase: String,
    pub conditions: Vec<ConditionView>,
    pub components: Vec<ComponentHealth>,
}

#[cfg(feature = "ssr")]
/// An error for the page: the message, and the form field it is about when there is one.
fn page_error(field: Option<&str>, message: impl std::fmt::Display) -> ServerFnError {
    match field {
        Some(f) => ServerFnError::new(format!("{f}: {message}")),
        None => ServerFnError::new(message.to_string()),
    }
}

#[server]
pub async fn search_traces(filters: SearchFilters) -> Result<Page, ServerFnError> {
    let params = filters.to_api_params().map_err(|(f, e)| page_error(Some(f), e))?;
    let d = crate::server::Dashboard::current()?;
    d.traces.get("/v1/traces", &params).await.map_err(Into::into)
}

#[server]
pub async fn fetch_trace(request_id: String, candidate_page: usize) -> Result<TraceView, ServerFnError> {
    let d = crate::server::Dashboard::current()?;
    let path = format!("/v1/traces/{}", crate::model::percent_encode(&request_id));
    let mut trace: Trace = d.traces.get(&path, &[]).await?;
    let candidates = (trace.detail == recstack_trace_store::Detail::Full)
        .then(|| crate::model::candidate_page(&trace.candidates, candidate_page, crate::model::CANDIDATES_PER_PAGE));
    trace.candidates = Vec::new();
    let shown: Vec<&str> = trace
        .items
        .iter()
        .map(|i| i.item_id.as_str())
        .chain(
            candidates
                .iter()
                .flat_map(|c| c.rows.iter().map(|r| r.item_id.as_str())),
        )
        .collect();
    let titles = d.traces.titles(&shown).await;
    let trace_link = d
        .trace_link
        .as_ref()
        .map(|template| template.replace("{trace_id}", &crate::model::percent_encode(&trace.trace_id)));
    Ok(TraceView {
        trace,
        candidates,
        titles,
        trace_link,
    })
}

#[server]
pub async fn ask_why_not(request_id: String, item_id: String) -> Result<WhyNot, ServerFnError> {
    let item_id = item_id.trim().to_string();
    if item_id.is_empty() {
        return Err(page_error(Some("item"), "type an item id"));
    }
    let d = crate::server::Dashboard::current()?;
    let path = format!(
        "/v1/traces/{}/why-not/{}",
        crate::model::percent_encode(&request_id),
        crate::model::percent_encode(&item_id)
    );
    d.traces.get(&path, &[]).await.map_err(Into::into)
}

/// Two served lists side by side, with the titles of their items; `took_ms` for a replay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComparisonView {
    pub comparison: recstack_trace_store::compare::Comparison,
    pub titles: std::collections::BTreeMap<String, String>,
    pub took_ms: Option<f64>,
}

#[cfg(feature = "ssr")]
async fn with_titles(
    d: &crate::server::Dashboard,
    comparison: recstack_trace_store::compare::Comparison,
    took_ms: Option<f64>,
) -> ComparisonView {
    let ids: Vec<&str> = comparison.rows.iter().map(|r| r.item_id.as_str()).collect();
    let titles = d.traces.titles(&ids).await;
    ComparisonView {
        comparison,
        titles,
        took_ms,
    }
}

#[server]
pub async fn compare_traces(a: String, b: String) -> Result<ComparisonView, ServerFnError> {
    let (a, b) = (a.trim().to_string(), b.trim().to_string());
    if a.is_empty() || b.is_empty() {
        return Err(page_error(
            Some(if a.is_empty() { "a" } else { "b" }),
            "a request id is required",
        ));
    }
    let d = crate::server::Dashboard::current()?;
    let comparison = crate::server::compare(&d.traces, &a, &b).await?;
    Ok(with_titles(&d, comparison, None).await)
}

#[server]
pub async fn replay_request(ask: crate::model::ReplayAsk) -> Result<ComparisonView, ServerFnError> {
    // A replay is a debug request made with the stack's token: the admin's to ask for.
    if crate::auth::visitor_role().is_some_and(|r| r < recstack_trace_store::access::Role::Admin) {
        return Err(ServerFnError::new(
            "a replay runs a debug request through the gateway: it needs the admin role (sign in with the admin token)",
        ));
    }
    if ask.request_id.trim().is_empty() {
        return Err(page_error(Some("request"), "a request id is required"));
    }
    let d = crate::server::Dashboard::current()?;
    let gateway = d.gateway.as_ref().ok_or_else(|| {
        ServerFnError::new("this dashboard has no gateway to replay through (recstack serve dashboard --gateway-url)")
    })?;
    let replayed = crate::server::replay(&d.traces, gateway, &ask).await?;
    let took = replayed.took.as_secs_f64() * 1e3;
    Ok(with_titles(&d, replayed.comparison, Some(took)).await)
}

/// The overview's aggregates and the range they cover.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    pub range: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub interval_ms: i64,
    pub aggregates: Aggregates,
}

#[server]
pub async fn fetch_overview(range: String) -> Result<Overview, ServerFnError> {
    let (name, span, interval) = crate::model::range(&range);
    let d = crate::server::Dashboard::current()?;
    let to = crate::server::now_ms();
    let from = to - span;
    let params = [
        ("from", from.to_string()),
        ("to", to.to_string()),
        ("interval", interval.to_string()),
    ];
    let aggregates = d.traces.get("/v1/aggregates", &params).await?;
    Ok(Overview {
        range: name.to_string(),
        from_ms: from,
        to_ms: to,
        interval_ms: interval,
        aggregates,
    })
}

#[server]
pub async fn fetch_stack_status() -> Result<StackStatus, ServerFnError> {
    let d = crate::server::Dashboard::current()?;
    Ok(d.status.status().await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_filters_become_api_parameters() {
        let f = SearchFilters {
            user: " 42 ".into(),
            from: "2026-11-22T10:00".into(),
            bucket: "7".into(),
            ..SearchFilters::default()
        };
        assert_eq!(
            f.to_api_params().unwrap(),
            [
                ("user", "42".to_string()),
                ("from", "2026-11-22T10:00:00Z".to_string()),
                ("bucket", "7".to_string())
            ]
        );
        let bad = SearchFilters {
            to: "soon".into(),
            ..SearchFilters::default()
        };
        let (field, message) = bad.to_api_params().unwrap_err();
        assert_eq!(field, "to");
        assert!(message.contains("soon"), "{message}");
        assert!(SearchFilters::default().to_api_params().unwrap().is_empty());
    }
}
