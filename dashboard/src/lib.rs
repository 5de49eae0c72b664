//! The recstack dashboard: Leptos server-side rendering on axum, hydrated in the browser.
//!
//! - [`app`]: the pages — overview charts, trace search, the request view (funnel, latency
//!   waterfall, served items with their lineage, candidates paged, why-not) and stack status;
//! - [`model`]: what the pages compute from traces (funnel steps, waterfall bars, chart
//!   geometry, candidate pages, time parsing), pure and tested here;
//! - [`api`]: the server functions the pages call, and the shapes they return;
//! - `server` (feature `ssr`): the axum router, the trace query API client and the stack
//!   status sources (the local stack's health endpoints, or the RecommenderStack's status
//!   through the Kubernetes API).
//!
//! The server reads traces only through the trace query API (`recstack serve traces`, or the
//! local stack's), so it runs anywhere that API is reachable.
//!
//! Unsafe code is denied, not forbidden: `#[wasm_bindgen]` on the browser entry point
//! generates the glue's `unsafe` blocks; that one function allows it, nothing else does.
#![deny(unsafe_code)]
// Leptos views are deeply nested types; the request view needs more than the default 128.
#![recursion_limit = "256"]

pub mod api;
pub mod app;
#[cfg(feature = "ssr")]
pub mod auth;
pub mod model;
#[cfg(feature = "ssr")]
pub mod server;

/// The browser entry point: hydrates the server-rendered page.
#[cfg(feature = "hydrate")]
#[allow(unsafe_code)]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(app::App);
}
