//! The dashboard, for `recstack serve dashboard` and the local stack: this crate is the only
//! one that depends on `recstack-dashboard` (Leptos), so no service or test of the serving
//! code compiles it.

use std::net::SocketAddr;
use std::path::PathBuf;

use recstack_dashboard::server::{DashboardConfig, router};
use recstack_services::serve::{self, LocalDashboard, MakeDashboard, ServeError, Service};

/// The dashboard (HTTP only): pages and their server functions over the trace query API at
/// `config.traces_url`, stack status from `config.status`, the browser build from
/// `config.site_root`.
pub async fn serve(config: DashboardConfig, http: SocketAddr) -> Result<Service, ServeError> {
    let help = "Dashboard requests (pages, server functions, files)";
    serve::http_service("dashboard", "recstack_dashboard", help, router(config), http).await
}

/// The local stack's dashboard: status from the health of its components, the browser build
/// from `site_root` (without one pages are served without hydration).
pub fn local(site_root: Option<PathBuf>) -> MakeDashboard {
    Box::new(move |local: LocalDashboard| {
        router(DashboardConfig::local(
            local.traces_url,
            local.components,
            site_root,
            local.access,
            Some(local.gateway_url),
        ))
    })
}
