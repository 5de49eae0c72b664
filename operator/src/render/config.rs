//! The stack's runtime ConfigMap: what each service reads at start-up (endpoints of its peers,
//! model, batching, stores). Pods carry its hash, so a config change rolls them.

use std::collections::BTreeMap;

use recstack_crds::{Component, StreamEngine};
use serde::Serialize;
use serde_json::json;

use super::{Child, ChildKind, GRPC_PORT, HTTP_PORT, RenderError, StackCtx, child};

/// The runtime configuration every recstack service reads from `/etc/recstack/config.yaml`.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    pub stack: String,
    pub namespace: String,
    /// gRPC address of each component (`http://host:port`), keyed by component name.
    pub grpc_endpoints: BTreeMap<String, String>,
    pub http_port: u16,
    pub grpc_port: u16,
    pub gateway: GatewayConfig,
    pub ranking: RankingConfig,
    pub stream: StreamConfig,
    pub event_log: EventLogConfig,
    pub feature_store: FeatureStoreConfig,
    pub trace_store: TraceStoreConfig,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayConfig {
    /// The p99 the gateway keeps by shedding to the reduced level, ms (0: off).
    pub latency_target_ms: i32,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RankingConfig {
    pub model: recstack_crds::ModelSpec,
    pub batching: recstack_crds::BatchingSpec,
    /// `cpu` or `cuda`: which onnxruntime execution provider to use.
    pub device: &'static str,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StreamConfig {
    pub engine: StreamEngine,
    pub window: String,
    pub parallelism: i32,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase", tag = "kind")]
pub enum EventLogConfig {
    /// The ingest service's on-disk log.
    Embedded,
    Kafka {
        bootstrap_servers: Vec<String>,
        topic: String,
    },
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FeatureStoreConfig {
    pub redis_url: Option<String>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase", tag = "kind")]
pub enum TraceStoreConfig {
    Embedded,
    Elasticsearch {
        url: String,
        /// Directory holding `username` and `password` files (a mounted Secret), never the
        /// ConfigMap itself.
        credentials_dir: Option<String>,
        sampling: f64,
        retention_days: i32,
    },
}

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
        gateway: GatewayConfig {
            latency_target_ms: spec.gateway.latency_target_ms,
        },
        ranking: RankingConfig {
            model: spec.ranking.model.clone(),
            batching: spec.ranking.batching.clone(),
            device: if spec.ranking.gpu.is_some() { "cuda" } else { "cpu" },
        },
        stream: StreamConfig {
            engine: spec.stream.engine,
            window: spec.stream.window.clone(),
            parallelism: spec.stream.parallelism,
        },
        event_log: match &spec.event_log {
            None => EventLogConfig::Embedded,
            Some(log) => EventLogConfig::Kafka {
                bootstrap_servers: log.bootstrap_servers.clone(),
                topic: log.topic.clone(),
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
pub(super) fn hash_of(config_map: &Child) -> String {
    let data = config_map
        .object
        .data
        .get("data")
        .map(|d| d.to_string())
        .unwrap_or_default();
    format!("{:016x}", fnv1a(data.as_bytes()))
}

/// 64-bit FNV-1a.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
