//! The runtime configuration: what the operator renders into each stack's ConfigMap (mounted
//! at `/etc/recstack/config.yaml`) and every service reads at start-up
//! (`recstack serve <component> --config …`). One type, written by the operator and read by
//! the services. Reading is lenient: fields a build does not know are ignored and missing
//! optional sections take their defaults, so an older service reads a newer operator's file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::StreamEngine;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    pub stack: String,
    pub namespace: String,
    /// gRPC address of each component (`http://host:port`), keyed by component name.
    pub grpc_endpoints: BTreeMap<String, String>,
    pub http_port: u16,
    pub grpc_port: u16,
    #[serde(default)]
    pub gateway: GatewaySettings,
    pub ranking: RankingSettings,
    #[serde(default)]
    pub stream: StreamSettings,
    #[serde(default)]
    pub event_log: EventLogConfig,
    #[serde(default)]
    pub feature_store: FeatureStoreConfig,
    #[serde(default)]
    pub trace_store: TraceStoreConfig,
    #[serde(default)]
    pub artifacts: ArtifactsSettings,
    /// Read again by rerank while it runs (the operator leaves it out of the pods' config hash,
    /// so a change does not roll them).
    #[serde(default)]
    pub rerank: RerankSettings,
    /// Where the access tokens are mounted and what they allow (the gateway and the trace API;
    /// unset: no tokens, everyone may read and debug, as on one machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessSettings>,
    /// The OTLP collector the gateway sends spans to (the CRD's `spec.otlp.endpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
}

/// The CRD's `spec.access` as the pods need it: the mounted Secret's directory and the rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessSettings {
    /// The directory with one file per key (`reader`, `admin`, `debug`, `pseudonym-key`).
    pub dir: String,
    pub debug_per_second: f64,
    pub debug_burst: u32,
    #[serde(default)]
    pub pseudonymize_users: bool,
}

/// Rerank's business rules and experiment: the CRD's `spec.businessRules` and
/// `spec.experiment`, as they are (the same types; read leniently here).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RerankSettings {
    #[serde(default)]
    pub rules: crate::BusinessRulesSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<crate::ExperimentSpec>,
}

/// Where the services get artifacts (the CRD's `spec.artifacts`, less the Secret, which the
/// pods get as environment).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactsSettings {
    pub uri: String,
    /// The object store's endpoint (an S3-compatible server), when not the provider's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub poll_seconds: u32,
}

impl Default for ArtifactsSettings {
    fn default() -> Self {
        Self {
            uri: crate::defaults::artifacts_uri(),
            endpoint: None,
            poll_seconds: crate::defaults::artifacts_poll_seconds() as u32,
        }
    }
}

impl From<&crate::ArtifactsSpec> for ArtifactsSettings {
    fn from(a: &crate::ArtifactsSpec) -> Self {
        Self {
            uri: a.uri.clone(),
            endpoint: a.endpoint.clone(),
            poll_seconds: a.poll_seconds.max(1) as u32,
        }
    }
}

/// The gateway's settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySettings {
    /// The p99 the gateway keeps by shedding to the reduced level, ms (0: off; unset: the
    /// binary's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_target_ms: Option<u32>,
}

/// The ranking service's model, batching and device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RankingSettings {
    pub model: ModelSettings,
    pub batching: BatchingSettings,
    /// `cpu` or `cuda`: which onnxruntime execution provider to use.
    pub device: String,
}

/// The model (the CRD's `spec.ranking.model`). Its own type because a service must not start
/// on a config without a model: here `uri` and `version` are required, where the CRD defaults
/// them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelSettings {
    pub uri: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_version: Option<String>,
    #[serde(default)]
    pub canary_percent: i32,
}

impl From<&crate::ModelSpec> for ModelSettings {
    fn from(m: &crate::ModelSpec) -> Self {
        Self {
            uri: m.uri.clone(),
            version: m.version.clone(),
            canary_uri: m.canary_uri.clone(),
            canary_version: m.canary_version.clone(),
            canary_percent: m.canary_percent,
        }
    }
}

/// Dynamic batching (the CRD's `spec.ranking.batching`; required here, defaulted there).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchingSettings {
    pub max_batch: i32,
    /// Absent in configs rendered before it existed: the default.
    #[serde(default = "crate::defaults::max_requests")]
    pub max_requests: i32,
    pub max_wait_micros: i32,
}

impl From<&crate::BatchingSpec> for BatchingSettings {
    fn from(b: &crate::BatchingSpec) -> Self {
        Self {
            max_batch: b.max_batch,
            max_requests: b.max_requests,
            max_wait_micros: b.max_wait_micros,
        }
    }
}

/// The stream job's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamSettings {
    pub engine: StreamEngine,
    /// Window length: `30s`, `1m`, `1h`.
    pub window: String,
    pub parallelism: i32,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            engine: StreamEngine::Builtin,
            window: "1m".into(),
            parallelism: 1,
        }
    }
}

/// Where the event log is: on the ingest pod's disk, or a Kafka topic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase", tag = "kind")]
pub enum EventLogConfig {
    /// The ingest service's on-disk log.
    #[default]
    Embedded,
    Kafka {
        bootstrap_servers: Vec<String>,
        topic: String,
        /// How the topic is created when missing (absent in configs of older operators).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        create: Option<TopicCreate>,
    },
}

/// The CRD's `eventLog` topic settings, used when a service creates the topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicCreate {
    pub partitions: u32,
    pub replication_factor: u32,
    pub min_insync_replicas: u32,
    pub retention_hours: u32,
}

/// The topic the Flink engine's job writes its closed windows and engagements to, beside the
/// event topic; the stream StatefulSet applies it to the feature store.
pub fn aggregates_topic(events_topic: &str) -> String {
    format!("{events_topic}-aggregates")
}

/// The URL scheme of a Redis Cluster named by some of its nodes (`featureStore.redisUrl`).
pub const REDIS_CLUSTER_SCHEME: &str = "redis+cluster://";

/// A `redis+cluster://[user:password@]host:port,host:port[/]` URL's credentials (what stands
/// before `@`) and seed nodes (`host:port` each, trimmed, empty entries dropped); `None` for
/// a one-server URL. The services connect to the nodes; the operator opens their ports.
pub fn redis_cluster_seeds(url: &str) -> Option<(Option<&str>, Vec<&str>)> {
    let rest = url.strip_prefix(REDIS_CLUSTER_SCHEME)?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (credentials, hosts) = match authority.rsplit_once('@') {
        Some((c, h)) => (Some(c), h),
        None => (None, authority),
    };
    Some((
        credentials,
        hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).collect(),
    ))
}

/// Where real-time features live (Redis), if anywhere.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeatureStoreConfig {
    #[serde(default)]
    pub redis_url: Option<String>,
}

/// Where traces go: the embedded store in the pod, or Elasticsearch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase", tag = "kind")]
pub enum TraceStoreConfig {
    #[default]
    Embedded,
    Elasticsearch {
        url: String,
        /// Directory holding `username` and `password` files (a mounted Secret), never the
        /// ConfigMap itself.
        #[serde(default)]
        credentials_dir: Option<String>,
        sampling: f64,
        retention_days: i32,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

impl RuntimeConfig {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Read { message, .. } => ConfigError::Read {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(yaml: &str) -> Result<Self, ConfigError> {
        serde_yaml::from_str(yaml).map_err(|e| ConfigError::Read {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })
    }

    /// Where a component listens in a pod: every interface, the configured ports.
    pub fn listen(&self) -> (SocketAddr, SocketAddr) {
        (
            SocketAddr::from(([0, 0, 0, 0], self.grpc_port)),
            SocketAddr::from(([0, 0, 0, 0], self.http_port)),
        )
    }

    /// The gRPC endpoint `caller` uses to reach `callee`: only for calls in
    /// [`crate::GRPC_CALLS`], the table the NetworkPolicies are rendered from, so a service
    /// cannot start calling a peer the cluster's policies would block.
    pub fn endpoint_for(&self, caller: crate::Component, callee: crate::Component) -> Result<String, ConfigError> {
        let field = format!("grpcEndpoints.{}", callee.name());
        if !crate::GRPC_CALLS.contains(&(caller, callee)) {
            return Err(ConfigError::Invalid {
                field,
                message: format!(
                    "{} does not call {} (not in the call table, so no NetworkPolicy allows it)",
                    caller.name(),
                    callee.name()
                ),
            });
        }
        self.grpc_endpoints
            .get(callee.name())
            .cloned()
            .ok_or_else(|| ConfigError::Invalid {
                field,
                message: "missing".into(),
            })
    }
}

/// Where a model is: a local path, or an object store URI the service fetches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelUri {
    Local(PathBuf),
    Remote(String),
}

/// Reads a model URI: `file:///abs`, a plain path, or an object store URI (`s3://`, `gs://`,
/// `az://`, `http(s)://` …; the service says if its store cannot read one).
pub fn model_uri(field: &str, uri: &str) -> Result<ModelUri, ConfigError> {
    match uri.strip_prefix("file://") {
        Some(path) if path.starts_with('/') => Ok(ModelUri::Local(PathBuf::from(path))),
        Some(_) => Err(ConfigError::Invalid {
            field: field.into(),
            message: format!("`{uri}`: a file:// URI needs an absolute path"),
        }),
        None if !uri.contains("://") && !uri.is_empty() => Ok(ModelUri::Local(PathBuf::from(uri))),
        None if uri.is_empty() => Err(ConfigError::Invalid {
            field: field.into(),
            message: "empty".into(),
        }),
        None => Ok(ModelUri::Remote(uri.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_uris_are_local_paths_or_remote_objects() {
        assert_eq!(
            model_uri("m", "file:///models/deepfm/model.onnx").unwrap(),
            ModelUri::Local(PathBuf::from("/models/deepfm/model.onnx"))
        );
        assert_eq!(
            model_uri("m", "models/x.onnx").unwrap(),
            ModelUri::Local(PathBuf::from("models/x.onnx"))
        );
        assert_eq!(
            model_uri("m", "s3://bucket/model.onnx").unwrap(),
            ModelUri::Remote("s3://bucket/model.onnx".into())
        );
        let e = model_uri("ranking.model.uri", "file://relative").unwrap_err();
        assert!(e.to_string().starts_with("ranking.model.uri: `file://relative`"), "{e}");
        assert!(model_uri("m", "").is_err());
    }
}
