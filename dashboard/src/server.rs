//! The dashboard's server side (feature `ssr`): the axum router, the trace query API client the
//! server functions use, and where stack status comes from.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use leptos::prelude::*;
use leptos_axum::{LeptosRoutes, generate_route_list};
use recstack_crds::RecommenderStack;
use serde::de::DeserializeOwned;

use recstack_trace_store::access::Access;

use crate::api::{ComponentHealth, ConditionView, StackStatus};

/// What the server functions reach: the trace query API and the stack status source.
pub struct Dashboard {
    pub traces: TraceApi,
    /// The gateway replays go through (`None`: no replays).
    pub gateway: Option<GatewayApi>,
    /// A link to one trace in the tracing UI, `{trace_id}` in it (`None`: no link).
    pub trace_link: Option<String>,
    pub status: StatusSource,
}

impl Dashboard {
    /// The dashboard serving the current request (provided to every route and server function).
    pub fn current() -> Result<Arc<Dashboard>, ServerFnError> {
        use_context::<Arc<Dashboard>>().ok_or_else(|| ServerFnError::new("the dashboard's state is missing"))
    }
}

/// How the dashboard is set up.
pub struct DashboardConfig {
    /// Base URL of the trace query API, e.g. `http://127.0.0.1:8090`.
    pub traces_url: String,
    pub status: StatusSource,
    /// The browser build (`pkg/dashboard.js`, `pkg/dashboard_bg.wasm`) from
    /// `scripts/build-dashboard`. Without it pages are served without hydration: readable,
    /// but the interactive parts (opening an item's lineage) do nothing.
    pub site_root: Option<PathBuf>,
    /// Who may sign in ([`Access::open`]: no sign-in).
    pub access: Arc<Access>,
    /// The gateway's base URL, for replays (what-if); `None`: the dashboard offers none.
    pub gateway_url: Option<String>,
    /// A link to one trace in the tracing UI that receives the gateway's OTLP spans, with
    /// `{trace_id}` where the request's trace id goes.
    pub trace_link: Option<String>,
}

/// Name of the browser build's files (`pkg/<name>.js`, `pkg/<name>_bg.wasm`).
pub const OUTPUT_NAME: &str = "dashboard";

/// Whether `site_root` holds the browser build.
pub fn has_browser_build(site_root: &Path) -> bool {
    let pkg = site_root.join("pkg");
    pkg.join(format!("{OUTPUT_NAME}.js")).is_file() && pkg.join(format!("{OUTPUT_NAME}_bg.wasm")).is_file()
}

/// The dashboard's routes: the pages, their server functions under `/api`, and `/pkg`.
impl DashboardConfig {
    /// A dashboard over the trace query API at `traces_url` whose status page checks the
    /// `/readyz` of each `(name, base URL)` component: the local stack's.
    pub fn local(
        traces_url: String,
        components: Vec<(String, String)>,
        site_root: Option<PathBuf>,
        access: Arc<Access>,
        gateway_url: Option<String>,
    ) -> Self {
        Self {
            access,
            gateway_url,
            trace_link: None,
            traces_url,
            status: StatusSource::local(
                components
                    .into_iter()
                    .map(|(name, url)| LocalComponent { name, url })
                    .collect(),
            ),
            site_root,
        }
    }
}

pub fn router(config: DashboardConfig) -> Router {
    let site_root = config.site_root.filter(|r| {
        let ok = has_browser_build(r);
        if !ok {
            tracing::warn!(
                site = %r.display(),
                "no browser build of the dashboard there (run scripts/build-dashboard): serving pages without hydration"
            );
        }
        ok
    });
    let options = LeptosOptions::builder()
        .output_name(OUTPUT_NAME)
        .site_root(
            site_root
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| ".".into()),
        )
        .site_pkg_dir("pkg")
        .build();
    let state = Arc::new(Dashboard {
        traces: TraceApi::new(&config.traces_url),
        // A replay is a debug request: the dashboard presents the stack's debug token (only
        // admins may ask it to, see `api::replay_request`).
        gateway: config.gateway_url.as_deref().map(|url| {
            let token = config.access.debug.as_ref().or(config.access.admin.as_ref());
            GatewayApi::new(url, token.map(|t| t.reveal()))
        }),
        trace_link: config.trace_link,
        status: config.status,
    });
    let hydrate = site_root.is_some();
    register_server_fns();
    let routes = generate_route_list(crate::app::App);
    let shell_options = options.clone();
    let mut router = Router::new()
        .leptos_routes_with_context(
            &options,
            routes,
            move || provide_context(state.clone()),
            move || crate::app::shell(shell_options.clone(), hydrate),
        )
        .with_state(options);
    if let Some(root) = site_root {
        router = router.nest_service("/pkg", tower_http::services::ServeDir::new(root.join("pkg")));
    }
    if config.access.is_open() {
        return router;
    }
    let access = config.access;
    router
        .merge(
            Router::new()
                .route(
                    "/login",
                    axum::routing::get(crate::auth::login_page).post(crate::auth::login),
                )
                .route(
                    "/logout",
                    axum::routing::get(crate::auth::logout).post(crate::auth::logout),
                )
                .with_state(access.clone()),
        )
        .layer(axum::middleware::from_fn_with_state(access, crate::auth::require))
}

/// The routes of the dashboard's server functions (all `POST`, under `/api/`).
pub fn server_function_paths() -> [&'static str; 7] {
    use leptos::server_fn::ServerFn;
    [
        crate::api::SearchTraces::PATH,
        crate::api::FetchTrace::PATH,
        crate::api::AskWhyNot::PATH,
        crate::api::FetchOverview::PATH,
        crate::api::FetchStackStatus::PATH,
        crate::api::CompareTraces::PATH,
        crate::api::ReplayRequest::PATH,
    ]
}

/// Registers the server functions by hand. `inventory` registers them at link time, but a
/// linker may leave out the object that holds the registration when nothing else in it is
/// used — then the browser's calls get 404s (seen in one workspace build, not another).
fn register_server_fns() {
    use leptos::server_fn::axum::register_explicit;
    register_explicit::<crate::api::SearchTraces>();
    register_explicit::<crate::api::FetchTrace>();
    register_explicit::<crate::api::AskWhyNot>();
    register_explicit::<crate::api::FetchOverview>();
    register_explicit::<crate::api::FetchStackStatus>();
    register_explicit::<crate::api::CompareTraces>();
    register_explicit::<crate::api::ReplayRequest>();
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Why the trace query API (or the gateway, for a replay) did not answer.
#[derive(Debug, thiserror::Error)]
pub enum TraceApiError {
    /// A 4xx with the API's message (and the parameter it names).
    #[error("{}{message}", field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
    Refused {
        status: u16,
        field: Option<String>,
        message: String,
    },
    #[error("{service} at {url} cannot be reached: {message}")]
    Unreachable {
        service: &'static str,
        url: String,
        message: String,
    },
    #[error("{service} answered something unexpected: {message}")]
    Unexpected { service: &'static str, message: String },
}

/// A small JSON-over-HTTP client: the trace query API's or the gateway's.
struct JsonClient {
    service: &'static str,
    base: String,
    http: reqwest::Client,
}

impl JsonClient {
    fn new(service: &'static str, base: &str) -> Self {
        Self {
            service,
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Sends `request`, decoded; 4xx and 5xx become [`TraceApiError`]s with the answer's message.
    async fn send<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T, TraceApiError> {
        let unreachable = |e: reqwest::Error| TraceApiError::Unreachable {
            service: self.service,
            url: self.base.clone(),
            message: e.to_string(),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let body = response.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let message = v["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(TraceApiError::Refused {
                status: status.as_u16(),
                field: v["field"].as_str().map(str::to_string),
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| TraceApiError::Unexpected {
            service: self.service,
            message: e.to_string(),
        })
    }
}

/// A client of the trace query API. Its token is the one it was given (the CLI's), else the
/// signed-in visitor's (the dashboard passes each visitor's own on: the API applies its role).
pub struct TraceApi {
    client: JsonClient,
    token: Option<String>,
}

impl TraceApi {
    pub fn new(base: &str) -> Self {
        Self {
            client: JsonClient::new("the trace query API", base),
            token: None,
        }
    }

    /// Every call sends `token` as a bearer.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// `GET base + path?params`, decoded; 4xx and 5xx become [`TraceApiError`]s with the API's message.
    pub async fn get<T: DeserializeOwned>(&self, path: &str, params: &[(&str, String)]) -> Result<T, TraceApiError> {
        let url = format!("{}{path}", self.client.base);
        let mut request = self.client.http.get(&url).query(params);
        if let Some(token) = self.token.clone().or_else(crate::auth::visitor_token) {
            request = request.bearer_auth(token);
        }
        self.client.send(request).await
    }
}

impl TraceApi {
    /// The catalogue's titles of `ids`. Titles are a help, not the page: without them (none
    /// asked for, an API with no catalogue, or one that failed) the ids still show.
    pub async fn titles(&self, ids: &[&str]) -> std::collections::BTreeMap<String, String> {
        #[derive(serde::Deserialize)]
        struct Titles {
            titles: std::collections::BTreeMap<String, String>,
        }
        if ids.is_empty() {
            return Default::default();
        }
        match self.get::<Titles>("/v1/items", &[("ids", ids.join(","))]).await {
            Ok(t) => t.titles,
            Err(e) => {
                tracing::warn!(error = %e, "no item titles");
                Default::default()
            }
        }
    }
}

/// A client of the gateway, for replays: it sends the stack's debug token (a replay is a debug
/// request).
pub struct GatewayApi {
    client: JsonClient,
    debug_token: Option<String>,
}

impl GatewayApi {
    pub fn new(base: &str, debug_token: Option<String>) -> Self {
        Self {
            client: JsonClient::new("the gateway", base),
            debug_token,
        }
    }

    /// `POST /v1/recommend` with `body`: the recommendation, as JSON.
    pub async fn recommend(&self, body: &serde_json::Value) -> Result<serde_json::Value, TraceApiError> {
        let url = format!("{}/v1/recommend", self.client.base);
        let mut request = self.client.http.post(&url).json(body);
        if let Some(token) = &self.debug_token {
            request = request.header(recstack_trace_store::access::DEBUG_TOKEN_HEADER, token);
        }
        self.client.send(request).await
    }
}

/// A replay's outcome: the comparison of the stored request with its replay, and how long
/// the replay took end to end (the stored trace read, the gateway's answer, the comparison).
#[derive(Clone, Debug)]
pub struct Replayed {
    pub comparison: recstack_trace_store::compare::Comparison,
    pub took: Duration,
}

/// Replays the stored request `ask.request_id` through `gateway` with `ask`'s changes, then
/// compares it with its replay (whose trace the API finds at once: read-your-trace).
pub async fn replay(
    traces: &TraceApi,
    gateway: &GatewayApi,
    ask: &crate::model::ReplayAsk,
) -> Result<Replayed, TraceApiError> {
    let started = Instant::now();
    let original: recstack_trace_store::Trace = traces
        .get(
            &format!("/v1/traces/{}", crate::model::percent_encode(&ask.request_id)),
            &[],
        )
        .await?;
    let body = crate::model::what_if_body(&original, ask).map_err(|message| TraceApiError::Refused {
        status: 400,
        field: Some("user".into()),
        message,
    })?;
    let answer = gateway.recommend(&body).await?;
    let replayed = answer["request_id"]
        .as_str()
        .ok_or_else(|| TraceApiError::Unexpected {
            service: "the gateway",
            message: format!("no request_id in {answer}"),
        })?
        .to_string();
    let comparison = compare(traces, &original.request_id, &replayed).await?;
    Ok(Replayed {
        comparison,
        took: started.elapsed(),
    })
}

/// Two stored requests side by side.
pub async fn compare(
    traces: &TraceApi,
    a: &str,
    b: &str,
) -> Result<recstack_trace_store::compare::Comparison, TraceApiError> {
    traces
        .get("/v1/compare", &[("a", a.to_string()), ("b", b.to_string())])
        .await
}

/// Where stack status comes from.
pub enum StatusSource {
    /// The local stack: each component's `/readyz`.
    Local {
        components: Vec<LocalComponent>,
        http: reqwest::Client,
    },
    /// A RecommenderStack's status, read through the Kubernetes API.
    Cluster {
        client: kube::Client,
        namespace: String,
        name: String,
    },
}

pub struct LocalComponent {
    pub name: String,
    /// Base URL of its HTTP listener.
    pub url: String,
}

impl StatusSource {
    pub fn local(components: Vec<LocalComponent>) -> Self {
        Self::Local {
            components,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
        }
    }

    /// The stack `name` in `namespace`, through the in-cluster (or `KUBECONFIG`) client.
    pub async fn cluster(namespace: String, name: String) -> Result<Self, kube::Error> {
        Ok(Self::Cluster {
            client: kube::Client::try_default().await?,
            namespace,
            name,
        })
    }

    pub async fn status(&self) -> StackStatus {
        match self {
            Self::Local { components, http } => {
                let checks = components.iter().map(|c| async move {
                    let began = Instant::now();
                    let result = http.get(format!("{}/readyz", c.url)).send().await;
                    let took = began.elapsed();
                    let (ready, detail) = match result {
                        Ok(r) if r.status().is_success() => {
                            (true, format!("ready in {:.1} ms", took.as_secs_f64() * 1e3))
                        }
                        Ok(r) => (false, format!("/readyz answered {}", r.status())),
                        Err(e) => (false, format!("unreachable: {e}")),
                    };
                    ComponentHealth {
                        name: c.name.clone(),
                        ready,
                        detail,
                        address: Some(c.url.clone()),
                    }
                });
                local_status(futures::future::join_all(checks).await)
            }
            Self::Cluster {
                client,
                namespace,
                name,
            } => {
                let api = kube::Api::<RecommenderStack>::namespaced(client.clone(), namespace);
                match api.get(name).await {
                    Ok(stack) => cluster_status(&stack),
                    Err(e) => StackStatus {
                        name: format!("{namespace}/{name}"),
                        phase: "Unknown".into(),
                        conditions: vec![ConditionView {
                            kind: "Readable".into(),
                            status: "False".into(),
                            reason: "ApiError".into(),
                            message: e.to_string(),
                            since: String::new(),
                        }],
                        components: Vec::new(),
                    },
                }
            }
        }
    }
}

/// The local stack's status from its components' health.
pub fn local_status(components: Vec<ComponentHealth>) -> StackStatus {
    let not_ready: Vec<&str> = components
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let (phase, status, reason, message) = if not_ready.is_empty() {
        (
            "Running",
            "True",
            "AllReady",
            format!("{} components ready", components.len()),
        )
    } else {
        (
            "Degraded",
            "False",
            "ComponentsNotReady",
            format!("not ready: {}", not_ready.join(", ")),
        )
    };
    StackStatus {
        name: "local".into(),
        phase: phase.into(),
        conditions: vec![ConditionView {
            kind: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message,
            since: String::new(),
        }],
        components,
    }
}

/// What the operator reported on a RecommenderStack.
pub fn cluster_status(stack: &RecommenderStack) -> StackStatus {
    let name = format!(
        "{}/{}",
        stack.metadata.namespace.as_deref().unwrap_or("default"),
        stack.metadata.name.as_deref().unwrap_or_default()
    );
    let Some(status) = &stack.status else {
        return StackStatus {
            name,
            phase: "Unknown".into(),
            conditions: Vec::new(),
            components: Vec::new(),
        };
    };
    StackStatus {
        name,
        phase: status.phase.clone().unwrap_or_else(|| "Unknown".into()),
        conditions: status
            .conditions
            .iter()
            .map(|c| ConditionView {
                kind: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                since: c.last_transition_time.0.to_string(),
            })
            .collect(),
        components: status
            .components
            .iter()
            .map(|c| ComponentHealth {
                name: c.name.clone(),
                ready: c.desired_replicas > 0 && c.ready_replicas >= c.desired_replicas,
                detail: format!("{}/{} replicas ready", c.ready_replicas, c.desired_replicas),
                address: None,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use recstack_crds::{ComponentStatus, RecommenderStackStatus};

    use super::*;

    #[tokio::test]
    async fn every_server_function_has_a_route() {
        let app = router(DashboardConfig {
            // Nothing listens there: the functions fail, but their routes must exist.
            traces_url: "http://127.0.0.1:9".into(),
            status: StatusSource::local(Vec::new()),
            site_root: None,
            access: Arc::new(Access::open()),
            gateway_url: None,
            trace_link: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();
        for path in server_function_paths() {
            let r = client
                .post(format!("http://{addr}{path}"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("")
                .send()
                .await
                .unwrap();
            assert_ne!(r.status().as_u16(), 404, "{path}");
        }
        // The stack status needs no store: it answers.
        let r = client
            .post(format!("http://{addr}{}", server_function_paths()[4]))
            .header("content-type", "application/x-www-form-urlencoded")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let body = r.text().await.unwrap();
        assert!(body.contains("\"phase\":\"Running\""), "{body}");
    }

    #[test]
    fn local_status_is_degraded_when_a_component_is_not_ready() {
        let c = |name: &str, ready| ComponentHealth {
            name: name.into(),
            ready,
            detail: String::new(),
            address: None,
        };
        let s = local_status(vec![c("gateway", true), c("ranking", true)]);
        assert_eq!((s.phase.as_str(), s.conditions[0].status.as_str()), ("Running", "True"));
        let s = local_status(vec![c("gateway", true), c("ranking", false), c("rerank", false)]);
        assert_eq!(s.phase, "Degraded");
        assert_eq!(s.conditions[0].message, "not ready: ranking, rerank");
    }

    #[test]
    fn cluster_status_reads_conditions_and_replicas() {
        let mut stack = RecommenderStack::new("shop", serde_json::from_value(serde_json::json!({})).unwrap());
        stack.metadata.namespace = Some("recs".into());
        assert_eq!(cluster_status(&stack).phase, "Unknown", "no status yet");
        let since: jiff::Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        stack.status = Some(RecommenderStackStatus {
            phase: Some("Degraded".into()),
            conditions: vec![Condition {
                type_: "Degraded".into(),
                status: "True".into(),
                reason: "ComponentsUnavailable".into(),
                message: "ranking: 1/2 ready".into(),
                last_transition_time: Time(since),
                observed_generation: Some(1),
            }],
            components: vec![
                ComponentStatus {
                    name: "ranking".into(),
                    desired_replicas: 2,
                    ready_replicas: 1,
                },
                ComponentStatus {
                    name: "gateway".into(),
                    desired_replicas: 3,
                    ready_replicas: 3,
                },
            ],
            ..RecommenderStackStatus::default()
        });
        let s = cluster_status(&stack);
        assert_eq!(s.name, "recs/shop");
        assert_eq!(s.phase, "Degraded");
        assert_eq!(s.conditions[0].reason, "ComponentsUnavailable");
        assert_eq!(s.conditions[0].since, "2026-11-22T10:00:00Z");
        assert!(!s.components[0].ready);
        assert_eq!(s.components[0].detail, "1/2 replicas ready");
        assert!(s.components[1].ready);
    }
}
