//! The stack's runtime ConfigMap: what each service reads at start-up (endpoints of its peers,
//! model, batching, stores). Pods carry its hash, so a config change rolls them.

use recstack_crds::Component;
pub use recstack_crds::runtime::RuntimeConfig;
use recstack_crds::runtime::{
    AccessSettings, EventLogConfig, FeatureStoreConfig, GatewaySettings, RankingSettings, RerankSettings,
    StreamSettings, TopicCreate, TraceStoreConfig,
};
use serde_json::json;

use super::{Child, ChildKind, GRPC_PORT, HTTP_PORT, RenderError, StackCtx, child};

pub(super) fn runtime_config(ctx: &StackCtx) -> RuntimeConfig {
    let spec = ctx.spec();
    let grpc_endpoints = Component::ONLINE
        .iter()
        .map(|&c| {
            (
                c.name().to_string(),
                format!("http://{}:{GRPC_PORT}", ctx.service_host(c)),
            )
        })
        .collect();
    RuntimeConfig {
        stack: ctx.name.clone(),
        namespace: ctx.namespace.clone(),
        grpc_endpoints,
        http_port: HTTP_PORT,
        grpc_port: GRPC_PORT,
        gateway: GatewaySettings {
            // The CRD bounds it to 0–60000.
            latency_target_ms: Some(spec.gateway.latency_target_ms.max(0) as u32),
        },
        ranking: RankingSettings {
            model: (&spec.ranking.model).into(),
            batching: (&spec.ranking.batching).into(),
            device: if spec.ranking.gpu.is_some() { "cuda" } else { "cpu" }.to_string(),
        },
        stream: StreamSettings {
            engine: spec.stream.engine,
            window: spec.stream.window.clone(),
            parallelism: spec.stream.parallelism,
        },
        event_log: match &spec.event_log {
            None => EventLogConfig::Embedded,
            Some(log) => EventLogConfig::Kafka {
                bootstrap_servers: log.bootstrap_servers.clone(),
                topic: log.topic.clone(),
                // The CRD bounds every value to at least 1.
                create: Some(TopicCreate {
                    partitions: log.partitions.max(1) as u32,
                    replication_factor: log.replication_factor.max(1) as u32,
                    min_insync_replicas: log.min_insync_replicas.max(1) as u32,
                    retention_hours: log.retention_hours.max(1) as u32,
                }),
            },
        },
        feature_store: FeatureStoreConfig {
            redis_url: spec.feature.redis_url.clone(),
        },
        trace_store: match &spec.trace_store {
            None => TraceStoreConfig::Embedded,
            Some(ts) => TraceStoreConfig::Elasticsearch {
                url: ts.elasticsearch_url.clone(),
                credentials_dir: ts
                    .credentials_secret_ref
                    .as_ref()
                    .map(|_| super::workloads::ES_CREDENTIALS_DIR.to_string()),
                sampling: ts.sampling,
                retention_days: ts.retention_days,
            },
        },
        artifacts: (&spec.artifacts).into(),
        rerank: RerankSettings {
            rules: spec.business_rules.clone(),
            experiment: spec.experiment.clone(),
        },
        access: Some(AccessSettings {
            dir: super::workloads::ACCESS_DIR.to_string(),
            // The CRD bounds both.
            debug_per_second: spec.access.debug_per_second,
            debug_burst: spec.access.debug_burst.max(1) as u32,
            pseudonymize_users: spec.access.pseudonymize_users,
        }),
        otlp_endpoint: spec.otlp.as_ref().map(|o| o.endpoint.clone()),
    }
}

pub(super) fn config_map(ctx: &StackCtx, config: &RuntimeConfig) -> Result<Child, RenderError> {
    let yaml = serde_yaml::to_string(config).map_err(|e| RenderError::InvalidField {
        field: "spec",
        message: format!("runtime config does not serialize: {e}"),
    })?;
    child(
        ChildKind::ConfigMap,
        json!({
            "metadata": ctx.meta(&format!("{}-config", ctx.name), None),
            "data": { "config.yaml": yaml },
        }),
    )
}

/// Stable 64-bit FNV-1a of the ConfigMap's data, as hex. Stable across builds and Rust
/// versions, unlike `DefaultHasher`, so pods do not roll when the operator is upgraded.
/// The pods' config hash (a change rolls them). Rerank's business rules and experiment are
/// left out: rerank re-reads them from the mounted file, so changing them restarts nothing.
pub(super) fn hash_of(config: &RuntimeConfig) -> String {
    let mut rolled = config.clone();
    rolled.rerank = RerankSettings::default();
    let yaml = serde_yaml::to_string(&rolled).unwrap_or_default();
    format!("{:016x}", fnv1a(yaml.as_bytes()))
}

/// 64-bit FNV-1a.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
