//! The pages. Everything renders on the server (readable without JavaScript); hydration adds
//! the interactive parts: opening a served item's lineage, and client-side navigation.
//!
//! Elements the browser tests look for carry `data-*` attributes (`data-step`, `data-item`,
//! `data-stage`…) so the tests read what a person sees without depending on styling.

mod compare;
mod overview;
mod request;
mod search;
mod status;

use leptos::prelude::*;
use leptos_router::components::{A, Route, Router, Routes};
use leptos_router::hooks::{use_params_map, use_query_map};
use leptos_router::path;
use recstack_trace_store::explain::WhyNot;
use recstack_trace_store::query::{Page, TraceSummary};
use recstack_trace_store::{CandidateFate, Detail, ItemLineage, SourceRecord, Trace};

use crate::api::{self, Overview, SearchFilters, StackStatus, TraceView};
use crate::model::{self, CandidatePage, LEVELS, RANGES, format_ms, format_time, percent_encode, query_string};

use compare::*;
use overview::*;
use request::*;
use search::*;
use status::*;

/// The HTML document around the app. `hydrate`: link the browser build.
pub fn shell(options: LeptosOptions, hydrate: bool) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                <title>"recstack dashboard"</title>
                <link rel="icon" href=FAVICON />
                <style>{STYLE}</style>
                {hydrate.then(|| view! { <HydrationScripts options /> })}
            </head>
            <body>
                <App />
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    // Effects run only in the browser: the attribute turns "true" once hydration is done.
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));
    view! {
        <Router>
            <div id="app" data-hydrated=move || if hydrated.get() { "true" } else { "false" }>
                <header>
                    <span class="brand">"recstack"</span>
                    <nav>
                        <A href="/">"Overview"</A>
                        <A href="/traces">"Traces"</A>
                        <A href="/status">"Stack"</A>
                    </nav>
                </header>
                <main>
                    <Routes fallback=|| view! { <p class="error">"No such page."</p> }>
                        <Route path=path!("/") view=OverviewPage />
                        <Route path=path!("/traces") view=SearchPage />
                        <Route path=path!("/traces/:id") view=RequestPage />
                        <Route path=path!("/status") view=StatusPage />
                        <Route path=path!("/compare") view=ComparePage />
                        <Route path=path!("/replay") view=ReplayPage />
                    </Routes>
                </main>
            </div>
        </Router>
    }
}

fn loading() -> impl IntoView {
    view! { <p class="loading">"Loading…"</p> }
}

/// `render(value)` once `resource` has loaded, its error if it failed, "Loading…" meanwhile.
fn loaded<T>(
    resource: Resource<Result<T, ServerFnError>>,
    render: impl Fn(T) -> AnyView + Clone + Send + Sync + 'static,
) -> impl IntoView
where
    T: Clone + Send + Sync + 'static,
{
    view! {
        <Suspense fallback=loading>
            {move || {
                let render = render.clone();
                Suspend::new(async move {
                    match resource.await {
                        Ok(v) => render(v),
                        Err(e) => error_box(e),
                    }
                })
            }}
        </Suspense>
    }
}

fn error_box(e: ServerFnError) -> AnyView {
    let message = match e {
        ServerFnError::ServerError(m) => m,
        other => other.to_string(),
    };
    view! { <p class="error" role="alert">{message}</p> }.into_any()
}

fn num(x: f64) -> String {
    format!("{x:.1}")
}

// --- Overview ------------------------------------------------------------------------------

/// A small blue square, inline (no extra request, no 404 in the browser's console).
const FAVICON: &str = "data:image/svg+xml,%3Csvg%20xmlns=%22http://www.w3.org/2000/svg%22%20viewBox=%220%200%2016%2016%22%3E%3Crect%20width=%2216%22%20height=%2216%22%20rx=%223%22%20fill=%22%233a6df0%22/%3E%3C/svg%3E";

/// The stylesheet, inlined into every page.
const STYLE: &str = include_str!("style.css");
