//! NetworkPolicies: deny everything to and from the stack's pods, then allow exactly the calls
//! in the call table the services read ([`GRPC_CALLS`], [`HTTP_CALLS`]: gateway →
//! feature/recall/ranking/rerank, ingest → recall, dashboard → traces), clients to the gateway
//! and ingest, the stores outside the stack, and DNS.
//!
//! External stores (Kafka, Redis, Elasticsearch, model storage) are usually addressed by host
//! name, which a NetworkPolicy cannot match; egress to them is allowed by port only.

use std::collections::BTreeSet;

use recstack_crds::{Component, StreamEngine};
use serde_json::{Value, json};

use super::{Child, ChildKind, GRPC_PORT, HTTP_PORT, RenderError, StackCtx, child};
use crate::labels;

pub use recstack_crds::{GRPC_CALLS, HTTP_CALLS};

/// Components that apps reach from outside the stack.
const PUBLIC: [Component; 2] = [Component::Gateway, Component::Ingest];

pub(super) fn network_policies(ctx: &StackCtx) -> Result<Vec<Child>, RenderError> {
    let mut out = vec![
        child(
            ChildKind::NetworkPolicy,
            json!({
                "metadata": ctx.meta(&format!("{}-default-deny", ctx.name), None),
                "spec": {
                    "podSelector": { "matchLabels": { labels::STACK: ctx.name } },
                    "policyTypes": ["Ingress", "Egress"],
                },
            }),
        )?,
        child(
            ChildKind::NetworkPolicy,
            json!({
                "metadata": ctx.meta(&format!("{}-allow-dns", ctx.name), None),
                "spec": {
                    "podSelector": { "matchLabels": { labels::STACK: ctx.name } },
                    "policyTypes": ["Egress"],
                    "egress": [{
                        "to": [{
                            "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "kube-system" } },
                            "podSelector": { "matchLabels": { "k8s-app": "kube-dns" } },
                        }],
                        "ports": [{ "protocol": "UDP", "port": 53 }, { "protocol": "TCP", "port": 53 }],
                    }],
                },
            }),
        )?,
    ];
    for component in Component::ALL {
        if component == Component::Stream && ctx.spec().stream.engine == StreamEngine::None {
            continue;
        }
        out.push(component_policy(ctx, component)?);
    }
    if ctx.spec().dashboard.is_some() {
        for component in Component::OBSERVABILITY {
            out.push(component_policy(ctx, component)?);
        }
    }
    if ctx.spec().build.is_some() {
        out.push(build_policy(ctx)?);
    }
    if ctx.spec().stream.engine == StreamEngine::Flink {
        out.push(flink_policy(ctx)?);
    }
    Ok(out)
}

/// The Flink REST port, which the Flink operator calls on the JobManager.
const FLINK_REST_PORT: u16 = 8081;

/// The Flink job's pods: JobManager and TaskManagers talk to each other on ports Flink assigns
/// (RPC, blob server, data exchange); the Flink operator, from its own namespace, calls the
/// JobManager's REST API; out to Kafka, the state's object store and the API server (Flink's
/// native Kubernetes mode makes its own TaskManager pods).
fn flink_policy(ctx: &StackCtx) -> Result<Child, RenderError> {
    let spec = ctx.spec();
    let selector = labels::workload_selector(&ctx.name, labels::FLINK);
    let own = json!({ "podSelector": { "matchLabels": selector } });
    let mut ports: BTreeSet<u16> = spec
        .event_log
        .iter()
        .flat_map(|l| l.bootstrap_servers.iter())
        .filter_map(|s| s.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
        .collect();
    let state = spec.stream.flink.as_ref().and_then(|f| f.state_uri.as_deref());
    ports.extend(match state {
        Some(uri) => url_port(uri),
        None => store_port(ctx, &spec.artifacts.uri),
    });
    ports.extend([443, 6443]);
    let tcp = |port: u16| json!({ "protocol": "TCP", "port": port });
    child(
        ChildKind::NetworkPolicy,
        json!({
            "metadata": ctx.flink_meta(&labels::flink_name(&ctx.name)),
            "spec": {
                "podSelector": { "matchLabels": selector },
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    { "from": [own] },
                    { "from": [{ "namespaceSelector": {} }], "ports": [tcp(FLINK_REST_PORT)] },
                ],
                "egress": [
                    { "to": [own] },
                    { "ports": ports.iter().map(|p| tcp(*p)).collect::<Vec<_>>() },
                ],
            },
        }),
    )
}

/// The build pods: nothing in, and out only to the object store (the ratings and the
/// artifacts).
fn build_policy(ctx: &StackCtx) -> Result<Child, RenderError> {
    let spec = ctx.spec();
    let mut ports: BTreeSet<u16> = store_port(ctx, &spec.artifacts.uri).into_iter().collect();
    if let Some(build) = &spec.build {
        ports.extend(store_port(ctx, &build.data));
    }
    let mut policy_spec = json!({
        "podSelector": { "matchLabels": labels::build_selector(&ctx.name) },
        "policyTypes": ["Ingress", "Egress"],
    });
    if !ports.is_empty() {
        policy_spec["egress"] = json!([{
            "ports": ports.iter().map(|p| json!({ "protocol": "TCP", "port": p })).collect::<Vec<_>>(),
        }]);
    }
    let meta = ctx.build_meta(&format!("{}-{}", ctx.name, labels::BUILD));
    child(
        ChildKind::NetworkPolicy,
        json!({ "metadata": meta, "spec": policy_spec }),
    )
}

/// The object store's port for `uri`: the configured endpoint's when one is set (and `uri` is
/// remote), else the URI scheme's; `None` for local files.
fn store_port(ctx: &StackCtx, uri: &str) -> Option<u16> {
    match &ctx.spec().artifacts.endpoint {
        Some(endpoint) if uri.contains("://") && !uri.starts_with("file://") => url_port(endpoint),
        _ => url_port(uri),
    }
}

fn component_policy(ctx: &StackCtx, component: Component) -> Result<Child, RenderError> {
    let spec = ctx.spec();
    let peer = |c: Component| json!({ "podSelector": { "matchLabels": labels::selector(&ctx.name, c) } });
    let tcp = |port: u16| json!({ "protocol": "TCP", "port": port });

    let mut ingress: Vec<Value> = Vec::new();
    let callers: Vec<Value> = GRPC_CALLS
        .iter()
        .filter(|(_, to)| *to == component)
        .map(|(from, _)| peer(*from))
        .collect();
    if !callers.is_empty() {
        ingress.push(json!({ "from": callers, "ports": [tcp(GRPC_PORT)] }));
    }
    let http_callers: Vec<Value> = HTTP_CALLS
        .iter()
        .filter(|(_, to)| *to == component)
        .map(|(from, _)| peer(*from))
        .collect();
    if !http_callers.is_empty() {
        ingress.push(json!({ "from": http_callers, "ports": [tcp(HTTP_PORT)] }));
    }
    // Apps (and people, for the dashboard) from anywhere, or from the listed namespaces.
    let from_clients = |ports: Vec<Value>| {
        let clients = &spec.policies.network_policy.gateway_client_namespaces;
        let mut rule = json!({ "ports": ports });
        if !clients.is_empty() {
            rule["from"] = clients
                .iter()
                .map(|ns| json!({ "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": ns } } }))
                .collect();
        }
        rule
    };
    if component == Component::Dashboard {
        ingress.push(from_clients(vec![tcp(HTTP_PORT)]));
    }
    if PUBLIC.contains(&component) {
        ingress.push(from_clients(vec![tcp(HTTP_PORT), tcp(GRPC_PORT)]));
    }
    if let Some(ns) = &spec.policies.network_policy.metrics_namespace {
        ingress.push(json!({
            "from": [{ "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": ns } } }],
            "ports": [tcp(HTTP_PORT)],
        }));
    }

    let mut egress: Vec<Value> = GRPC_CALLS
        .iter()
        .filter(|(from, _)| *from == component)
        .map(|(_, to)| json!({ "to": [peer(*to)], "ports": [tcp(GRPC_PORT)] }))
        .chain(
            HTTP_CALLS
                .iter()
                .filter(|(from, _)| *from == component)
                .map(|(_, to)| json!({ "to": [peer(*to)], "ports": [tcp(HTTP_PORT)] })),
        )
        .collect();
    let external: BTreeSet<u16> = external_ports(ctx, component);
    if !external.is_empty() {
        egress.push(json!({ "ports": external.iter().map(|p| tcp(*p)).collect::<Vec<_>>() }));
    }

    let mut policy_spec = json!({
        "podSelector": { "matchLabels": labels::selector(&ctx.name, component) },
        "policyTypes": ["Ingress", "Egress"],
    });
    if !ingress.is_empty() {
        policy_spec["ingress"] = json!(ingress);
    }
    if !egress.is_empty() {
        policy_spec["egress"] = json!(egress);
    }
    child(
        ChildKind::NetworkPolicy,
        json!({
            "metadata": ctx.meta(&labels::component_name(&ctx.name, component), Some(component)),
            "spec": policy_spec,
        }),
    )
}

/// Ports of stores outside the stack that `component` must reach.
fn external_ports(ctx: &StackCtx, component: Component) -> BTreeSet<u16> {
    let spec = ctx.spec();
    let mut ports = BTreeSet::new();
    let kafka: Vec<u16> = spec
        .event_log
        .iter()
        .flat_map(|l| l.bootstrap_servers.iter())
        .filter_map(|s| s.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
        .collect();
    let redis = spec.feature.redis_url.as_deref().map(redis_ports).unwrap_or_default();
    let store = |uri: &str| store_port(ctx, uri);
    // Every component that reads the artifacts fetches them from the store.
    if matches!(
        component,
        Component::Gateway
            | Component::Recall
            | Component::Ranking
            | Component::Rerank
            | Component::Feature
            | Component::Stream
    ) {
        ports.extend(store(&spec.artifacts.uri));
    }
    let elasticsearch = spec.trace_store.as_ref().and_then(|t| url_port(&t.elasticsearch_url));
    let otlp = spec.otlp.as_ref().and_then(|o| url_port(&o.endpoint));
    match component {
        Component::Gateway => ports.extend(elasticsearch.into_iter().chain(otlp)),
        Component::Feature | Component::Recall => ports.extend(redis.iter().copied()),
        Component::Ingest => ports.extend(kafka),
        Component::Stream => {
            ports.extend(kafka);
            ports.extend(redis.iter().copied());
        }
        Component::Ranking => {
            ports.extend(store(&spec.ranking.model.uri));
            ports.extend(spec.ranking.model.canary_uri.as_deref().and_then(store));
        }
        Component::Traces => ports.extend(elasticsearch),
        // The stack's status, read through the Kubernetes API.
        Component::Dashboard => ports.extend([443, 6443]),
        Component::Rerank => {}
    }
    ports
}

/// The ports of a Redis URL: one server's, or every seed node's of a `redis+cluster://` URL
/// (a cluster's other nodes are expected on the same ports, as a StatefulSet runs them).
pub fn redis_ports(url: &str) -> Vec<u16> {
    match recstack_crds::runtime::redis_cluster_seeds(url) {
        Some((_, hosts)) => {
            let mut ports: Vec<u16> = hosts
                .iter()
                .map(|h| h.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(6379))
                .collect();
            ports.sort_unstable();
            ports.dedup();
            ports
        }
        None => url_port(url).into_iter().collect(),
    }
}

/// The TCP port a URL points at: explicit, or the scheme's default. `None` for local files.
pub fn url_port(url: &str) -> Option<u16> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let explicit = host_port.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
    explicit.or(match scheme {
        "http" => Some(80),
        "https" | "s3" | "s3a" | "s3p" | "gs" | "abfs" | "abfss" => Some(443),
        "hdfs" => Some(8020),
        "redis" => Some(6379),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::url_port;

    #[test]
    fn url_ports() {
        assert_eq!(url_port("redis://redis.data:6380"), Some(6380));
        assert_eq!(url_port("redis://redis.data"), Some(6379));
        assert_eq!(url_port("redis://user:pw@redis:7000/0"), Some(7000));
        assert_eq!(
            super::redis_ports("redis+cluster://u:pw@r-0.r:7000,r-1.r:7001,r-2.r:7000/"),
            vec![7000, 7001]
        );
        assert_eq!(super::redis_ports("redis+cluster://r-0.r,r-1.r"), vec![6379]);
        assert_eq!(super::redis_ports("redis://r:6380"), vec![6380]);
        assert_eq!(url_port("https://es.obs:9200/"), Some(9200));
        assert_eq!(url_port("https://es.obs"), Some(443));
        assert_eq!(url_port("http://es.obs/path:9"), Some(80));
        assert_eq!(url_port("s3://bucket/models/m.onnx"), Some(443));
        assert_eq!(url_port("file:///models/m.onnx"), None);
        assert_eq!(url_port("not a url"), None);
    }
}
