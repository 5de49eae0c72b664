//! How a serving process ends: on SIGTERM (a pod being deleted or rolled) or SIGINT (Ctrl-C),
//! every service turns unready, keeps answering for the drain delay, then stops accepting and
//! finishes what it holds within the grace period. A second signal ends the process at once.
//!
//! Both times come from the environment so a pod template sets them beside
//! `terminationGracePeriodSeconds`: `RECSTACK_DRAIN_SECONDS` (default 0: a local run stops at
//! once) and `RECSTACK_SHUTDOWN_GRACE_SECONDS` (default 20).

use std::time::Duration;

use super::{ServeError, Service};

/// The drain delay and grace period of a stopping process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    /// Unready but still serving, so endpoints and clients' resolvers drop the pod first.
    pub drain: Duration,
    /// Then at most this long for in-flight calls and the last step (trace flush, L1 dump,
    /// stream commit) before the process gives up waiting.
    pub grace: Duration,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            drain: Duration::ZERO,
            grace: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{var}: `{value}` is not a whole number of seconds")]
pub struct LifecycleError {
    pub var: &'static str,
    pub value: String,
}

pub const DRAIN_VAR: &str = "RECSTACK_DRAIN_SECONDS";
pub const GRACE_VAR: &str = "RECSTACK_SHUTDOWN_GRACE_SECONDS";

impl Lifecycle {
    /// From the process environment; a malformed value is an error at start, not at stop.
    pub fn from_env() -> Result<Self, LifecycleError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// From any variable lookup (pure, for tests).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, LifecycleError> {
        let seconds = |var: &'static str, default: Duration| match get(var) {
            None => Ok(default),
            Some(v) if v.trim().is_empty() => Ok(default),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|_| LifecycleError { var, value: v }),
        };
        let default = Self::default();
        Ok(Self {
            drain: seconds(DRAIN_VAR, default.drain)?,
            grace: seconds(GRACE_VAR, default.grace)?,
        })
    }

    /// Waits for SIGTERM or SIGINT, then drains every service together. Errors if a service
    /// failed while serving or did not finish within the grace period.
    pub async fn serve_until_signal(self, services: Vec<Service>) -> Result<(), ServeError> {
        let signal = stop_signal().await;
        tracing::info!(signal, drain_s = self.drain.as_secs(), "stopping: draining");
        self.drain(services).await
    }

    /// Drains `services` together (readiness off, the delay, then a graceful stop), bounded by
    /// the delay plus the grace period; a second signal cuts it short.
    pub async fn drain(self, services: Vec<Service>) -> Result<(), ServeError> {
        let drains = futures::future::join_all(services.into_iter().map(|s| s.drain(self.drain)));
        tokio::select! {
            results = tokio::time::timeout(self.drain + self.grace, drains) => match results {
                Ok(results) => {
                    results.into_iter().collect::<Result<Vec<()>, _>>()?;
                    tracing::info!("stopped");
                    Ok(())
                }
                Err(_) => Err(ServeError::Server {
                    service: "process",
                    message: format!("still stopping after the {} s grace period", self.grace.as_secs()),
                }),
            },
            signal = stop_signal() => Err(ServeError::Server {
                service: "process",
                message: format!("{signal} while draining: stopped without finishing"),
            }),
        }
    }
}

/// Resolves on SIGTERM or SIGINT with the signal's name.
pub async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops this process");
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn defaults_stop_at_once_with_a_twenty_second_grace() {
        assert_eq!(Lifecycle::from_vars(vars(&[])).unwrap(), Lifecycle::default());
        assert_eq!(Lifecycle::default().drain, Duration::ZERO);
        assert_eq!(
            Lifecycle::from_vars(vars(&[(DRAIN_VAR, " ")])).unwrap().drain,
            Duration::ZERO
        );
    }

    #[test]
    fn values_are_read_and_bad_ones_name_the_variable() {
        let l = Lifecycle::from_vars(vars(&[(DRAIN_VAR, "5"), (GRACE_VAR, "25")])).unwrap();
        assert_eq!((l.drain, l.grace), (Duration::from_secs(5), Duration::from_secs(25)));
        let e = Lifecycle::from_vars(vars(&[(GRACE_VAR, "5s")])).unwrap_err();
        assert_eq!(e.var, GRACE_VAR);
        assert!(e.to_string().contains("`5s`"), "{e}");
        assert!(Lifecycle::from_vars(vars(&[(DRAIN_VAR, "-1")])).is_err());
    }
}
