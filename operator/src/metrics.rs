//! Prometheus metrics of the operator, served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Where the reconcile failed: render, list, apply, status, finalizer, spec.
    pub stage: &'static str,
    /// Why: forbidden, conflict, invalid, not_found, throttled, server_error, connection, …
    pub cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub kind: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// read (GET one or LIST), watch (a long-lived GET), dry_run (a request with `dryRun=All`
    /// in its query: the reconcile's check before it writes; a dry-run DELETE carries it in its
    /// body and counts as a write), write (everything else).
    pub kind: &'static str,
    pub method: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<OutcomeLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    /// Child writes by kind and reason (created, updated, drift, pruned).
    pub writes: Family<WriteLabels, Counter>,
    pub status_writes: Counter,
    pub leader: Gauge,
    /// Requests to the Kubernetes API by kind and HTTP method (leader election included).
    pub api_requests: Family<RequestLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("recstack_operator");
        let reconciles = Family::<OutcomeLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        // 1 ms .. ~16 s
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let writes = Family::<WriteLabels, Counter>::default();
        let status_writes = Counter::default();
        let leader = Gauge::default();
        let api_requests = Family::<RequestLabels, Counter>::default();
        registry.register("reconciles", "Reconciles by outcome (ok, error)", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconcile errors by stage and cause",
            errors.clone(),
        );
        registry.register("reconcile_duration_seconds", "Time per reconcile", duration.clone());
        registry.register(
            "child_writes",
            "Writes to child objects by kind and reason",
            writes.clone(),
        );
        registry.register("status_writes", "Status subresource writes", status_writes.clone());
        registry.register("leader", "1 while this replica holds the leader lease", leader.clone());
        registry.register(
            "api_requests",
            "Requests to the Kubernetes API by kind (read, watch, write) and method",
            api_requests.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            writes,
            status_writes,
            leader,
            api_requests,
        }
    }
}

impl Metrics {
    /// Counts one API request.
    pub fn count_request(&self, method: &http::Method, uri: &http::Uri) {
        let has = |pairs: &[&str]| uri.query().is_some_and(|q| q.split('&').any(|p| pairs.contains(&p)));
        let kind = match *method {
            http::Method::GET if has(&["watch=true", "watch=1"]) => "watch",
            http::Method::GET => "read",
            _ if has(&["dryRun=All"]) => "dry_run",
            _ => "write",
        };
        self.api_requests
            .get_or_create(&RequestLabels {
                kind,
                method: method.as_str().to_string(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_kind() {
        let m = Metrics::default();
        for (method, uri) in [
            ("GET", "/apis/apps/v1/namespaces/a/deployments?labelSelector=x"),
            (
                "GET",
                "/apis/apps/v1/namespaces/a/deployments?watch=true&resourceVersion=1",
            ),
            (
                "PATCH",
                "/apis/apps/v1/namespaces/a/deployments/b?&dryRun=All&fieldManager=m&force=true",
            ),
            (
                "PATCH",
                "/apis/apps/v1/namespaces/a/deployments/b?&fieldManager=m&force=true",
            ),
            (
                "PATCH",
                "/apis/apps/v1/namespaces/a/deployments/b?fieldManager=dryRun%3DAll",
            ),
            ("DELETE", "/apis/apps/v1/namespaces/a/deployments/b"),
        ] {
            m.count_request(&method.parse().unwrap(), &uri.parse().unwrap());
        }
        let text = m.encode();
        for line in [
            "recstack_operator_api_requests_total{kind=\"read\",method=\"GET\"} 1",
            "recstack_operator_api_requests_total{kind=\"watch\",method=\"GET\"} 1",
            "recstack_operator_api_requests_total{kind=\"dry_run\",method=\"PATCH\"} 1",
            "recstack_operator_api_requests_total{kind=\"write\",method=\"PATCH\"} 2",
            "recstack_operator_api_requests_total{kind=\"write\",method=\"DELETE\"} 1",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }
}
