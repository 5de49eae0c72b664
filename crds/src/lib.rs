//! The `RecommenderStack` custom resource (`recstack.io/v1alpha1`).
//!
//! One object describes a whole recommendation stack: the online components (recall, ranking,
//! rerank, feature, ingest, gateway), the streaming aggregation (built-in worker or a Flink
//! job), where traces go, and the cluster policies around them. The operator turns it into
//! workloads; see `docs/operator.md`.
//!
//! Doc comments on the spec types are user documentation: they become the CRD's OpenAPI
//! descriptions, which `kubectl explain recommenderstack.spec...` prints. Cross-field rules are
//! CEL `x-kubernetes-validations` with messages written for the person running `kubectl apply`;
//! [`RecommenderStack::validate_cel`] evaluates the same rules client-side.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

pub mod assignment;
pub mod defaults;
pub mod names;
pub mod quantity;
#[cfg(feature = "random")]
pub mod random;
pub mod runtime;
pub mod strict;

/// CEL rules shared by several component types.
mod rules {
    pub const REPLICAS_XOR_AUTOSCALING: &str = "!(has(self.replicas) && has(self.autoscaling))";
    pub const REPLICAS_XOR_AUTOSCALING_MSG: &str = "set either replicas (a fixed count) or autoscaling, not both";
    pub const NO_GPU_LIMITS: &str =
        "!has(self.resources) || !has(self.resources.limits) || !('nvidia.com/gpu' in self.resources.limits)";
    pub const NO_GPU_REQUESTS: &str =
        "!has(self.resources) || !has(self.resources.requests) || !('nvidia.com/gpu' in self.resources.requests)";
    pub const NO_GPU_MSG: &str = "GPUs can only be requested by the ranking component, with spec.ranking.gpu";
}

/// API group of every recstack resource.
pub const GROUP: &str = "recstack.io";

/// The CRD as YAML, exactly as committed in `crds/recommenderstack.yaml`.
pub fn crd_yaml() -> String {
    let crd = RecommenderStack::crd();
    // A CRD always serializes; a failure here is a bug in the derive, not user input.
    let body = serde_yaml::to_string(&crd).expect("CRD serializes to YAML");
    format!(
        "# Generated from the Rust types in crds/src/lib.rs by `cargo run -p recstack-crds --bin crdgen`.\n# Do not edit by hand: a test fails when this file and the types drift.\n{body}"
    )
}

// === spec ===

/// Desired state of a recommendation stack.
// Each `printcolumn(...)` repeats `type_`/`priority`; clippy reads them as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "recstack.io",
    version = "v1alpha1",
    kind = "RecommenderStack",
    plural = "recommenderstacks",
    singular = "recommenderstack",
    shortname = "rstack",
    category = "recstack",
    namespaced,
    cel,
    status = "RecommenderStackStatus",
    validation = Rule::new("self.metadata.name.size() <= 51 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS-1035 label of at most 51 characters (lower-case letters, digits and '-', starting with a letter): every name derived from it, up to the Flink operator's <name>-flink-rest Service, must fit in 63"),
    validation = Rule::new("self.spec.stream.engine == 'none' || self.metadata.name.size() <= 45").message("a stream engine runs the StatefulSet <name>-stream, whose pods carry the label controller-revision-hash: <name>-stream-<hash> of at most 63 characters: metadata.name must be at most 45 characters, or stream.engine none"),
    validation = Rule::new("!has(self.spec.build) || !has(self.spec.build.schedule) || self.metadata.name.size() <= 46").message("build.schedule makes a CronJob named <name>-build, and Kubernetes limits CronJob names to 52 characters: metadata.name must be at most 46 characters to use a schedule"),
    doc = "A recommendation stack: multi-channel recall, ONNX ranking (CPU or GPU), rerank, real-time features, event ingest and streaming aggregation, with traces that explain every recommendation.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether every component has its desired ready replicas"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Running, Progressing, Degraded or Paused"
    ),
    printcolumn(
        name = "Stream",
        type_ = "string",
        json_path = ".spec.stream.engine",
        description = "Streaming engine",
        priority = 1
    ),
    printcolumn(
        name = "Model",
        type_ = "string",
        json_path = ".spec.ranking.model.version",
        description = "Ranking model version",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.stream.engine != 'flink' || has(self.eventLog)").message("stream.engine flink reads events from Kafka: set spec.eventLog.bootstrapServers"),
    validation = Rule::new("self.stream.engine != 'flink' || !self.artifacts.uri.startsWith('file://') || (has(self.stream.flink) && has(self.stream.flink.stateUri))").message("stream.engine flink keeps its checkpoints and savepoints on an object store: set stream.flink.stateUri (s3://bucket/prefix), or artifacts.uri to an object store (the state then goes beside it)"),
    validation = Rule::new("self.stream.engine != 'builtin' || has(self.eventLog)").message("stream.engine builtin reads the events ingest logs from another pod: set spec.eventLog.bootstrapServers (the embedded log is on each ingest pod's own disk), or set stream.engine: none"),
    validation = Rule::new("self.stream.engine == 'none' || has(self.feature.redisUrl)").message("the stream job writes its windows to Redis (with engine flink, the StatefulSet applying the job's output does): set spec.feature.redisUrl, or set stream.engine: none"),
    validation = Rule::new("!has(self.dashboard) || has(self.traceStore)").message("dashboard reads traces from a shared store: set spec.traceStore (with the embedded default each gateway pod keeps its own traces)"),
    validation = Rule::new("!has(self.eventLog) || self.stream.engine == 'none' || self.eventLog.partitions >= self.stream.parallelism").message("stream.parallelism must not exceed eventLog.partitions: the stream replicas share the topic's partitions, and a replica without one would idle"),
    validation = Rule::new("!has(self.build) || !self.artifacts.uri.startsWith('file://')").message("build publishes to artifacts.uri, which every pod must read: set artifacts.uri to an object store (s3://bucket/prefix, gs://…, az://…), not file://")
)]
pub struct RecommenderStackSpec {
    /// Container image for every recstack component (one image, one binary per component),
    /// for example `ghcr.io/recstack/recstack:0.1.0`. A component's own `image` overrides it.
    #[serde(default = "defaults::image")]
    pub image: String,

    /// When true the operator stops changing the stack's objects (no applies, no pruning) but
    /// keeps reporting status, with the `Paused` condition set. Use it for maintenance.
    #[serde(default)]
    pub paused: bool,

    /// Multi-channel recall: item-CF, user-CF, hot, ALS/MF, vector ANN and tag channels,
    /// merged and filtered against the user's seen items.
    #[serde(default)]
    pub recall: ComponentSpec,

    /// The ranking service: an ONNX model served through onnxruntime, on CPU or GPU.
    #[serde(default)]
    pub ranking: RankingSpec,

    /// Rerank: diversity (MMR, category scatter), business rules and A/B buckets (the rules
    /// and the experiment themselves are `businessRules` and `experiment`).
    #[serde(default)]
    pub rerank: ComponentSpec,

    /// The feature service: user and item features through a local cache, Redis and a snapshot.
    #[serde(default)]
    pub feature: FeatureSpec,

    /// The ingest service: validates, deduplicates and appends behaviour events to the event log.
    #[serde(default)]
    pub ingest: ComponentSpec,

    /// The gateway: the stack's only public entry point (HTTP `POST /v1/recommend`, gRPC
    /// `Recommend`), owner of the latency budget and the degradation levels.
    #[serde(default)]
    pub gateway: GatewaySpec,

    /// Streaming aggregation of behaviour events into real-time features and the hot list.
    #[serde(default)]
    pub stream: StreamSpec,

    /// Where behaviour events are logged. Unset means the ingest service's embedded log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_log: Option<EventLogSpec>,

    /// Where request traces go. Unset means traces stay in each gateway's embedded store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_store: Option<TraceStoreSpec>,

    /// The dashboard (trace search, each request's funnel and item lineage, why-not, stack
    /// status) and the trace query service it reads. Set it (`dashboard: {}` for the defaults)
    /// to deploy both; it needs `traceStore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard: Option<DashboardSpec>,

    /// Where every component gets the stack's artifacts (recall indexes, embeddings, the
    /// feature snapshot, the item table): fetched at start (a pod is ready only after) and
    /// polled for new versions, which are swapped in without a restart.
    #[serde(default)]
    pub artifacts: ArtifactsSpec,

    /// The offline build: a Job runs `recstack build` on `data` and publishes a new artifact
    /// version to `artifacts.uri` (pods see it only once it is whole, and swap it in); with a
    /// `schedule`, a CronJob rebuilds on it too. Unset: artifacts are published by other means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildSpec>,

    /// Business rules rerank applies to every list: blocked items, pinned positions, the
    /// boost for fresh items. Changes reach the rerank pods without a restart.
    #[serde(default)]
    pub business_rules: BusinessRulesSpec,

    /// An A/B experiment on rerank's diversity trade-off (MMR lambda): a share of users, split
    /// evenly and stably between the variants; everyone else gets the stack's default. Unset:
    /// no experiment. Changes reach the rerank pods without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<ExperimentSpec>,

    /// Cluster policies created around the workloads.
    #[serde(default)]
    pub policies: PoliciesSpec,

    /// Who may read traces (the trace query API and the dashboard need a reader or admin
    /// token) and who may ask the gateway for `debug` traces. The tokens come from a Secret:
    /// `secretRef`, or one the operator creates with random tokens (`<stack>-access`).
    #[serde(default)]
    pub access: AccessSpec,

    /// An OpenTelemetry collector the gateway sends the spans of full traces to (OTLP/gRPC),
    /// and where the dashboard links each request's trace. Unset: no spans are exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpSpec>,
}

/// OTLP span export (see `docs/traces.md`, "Spans over OTLP").
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("self.endpoint.startsWith('http://') || self.endpoint.startsWith('https://')").message("otlp.endpoint is the collector's OTLP/gRPC URL, http:// or https://, for example http://otel-collector.observability:4317"),
    validation = Rule::new("!has(self.traceLink) || self.traceLink.contains('{trace_id}')").message("otlp.traceLink must contain {trace_id}, where the dashboard puts a request's trace id")
)]
pub struct OtlpSpec {
    /// The collector's OTLP/gRPC endpoint, for example `http://otel-collector.observability:4317`.
    #[schemars(length(min = 8, max = 2048))]
    pub endpoint: String,
    /// A link to one trace in the tracing UI, `{trace_id}` replaced by the request's trace id,
    /// for example `http://jaeger.observability:16686/trace/{trace_id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub trace_link: Option<String>,
}

/// Access to traces and debug requests (see `docs/traces.md`, "Access").
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("self.debugPerSecond >= 0.0 && self.debugPerSecond <= 1000.0").message("access.debugPerSecond is the rate of debug requests one gateway pod accepts, between 0 and 1000 per second")
)]
pub struct AccessSpec {
    /// A Secret in the stack's namespace with the keys `reader` and `admin` (bearer tokens of
    /// the trace API and the dashboard, at least 16 characters), `debug` (the token callers
    /// send the gateway as `x-recstack-debug-token` with `debug: true`) and `pseudonym-key`.
    /// Unset: the operator creates `<stack>-access` with random values once, and keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// Debug requests each gateway pod accepts per second (on average; `debugBurst` at once);
    /// more get 429.
    #[serde(default = "defaults::debug_per_second")]
    pub debug_per_second: f64,
    /// Debug requests a gateway pod accepts at once before the rate applies.
    #[serde(default = "defaults::debug_burst")]
    #[schemars(range(min = 1, max = 10000))]
    pub debug_burst: i32,
    /// Store a keyed pseudonym (`p-…`, HMAC-SHA256 with the Secret's `pseudonym-key`) instead of
    /// the user id in every trace. Readers search by pseudonym; the admin may search by id.
    #[serde(default)]
    pub pseudonymize_users: bool,
}

impl Default for AccessSpec {
    fn default() -> Self {
        Self {
            secret_ref: None,
            debug_per_second: defaults::debug_per_second(),
            debug_burst: defaults::debug_burst(),
            pseudonymize_users: false,
        }
    }
}

impl AccessSpec {
    /// The Secret the stack's access tokens are in: the named one, or the operator's.
    pub fn secret_name(&self, stack: &str) -> String {
        match &self.secret_ref {
            Some(r) => r.name.clone(),
            None => format!("{stack}-access"),
        }
    }
}

/// Business rules: what rerank never serves, what it serves at a fixed place, what it favours.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BusinessRulesSpec {
    /// Item ids never served.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10000), inner(length(min = 1, max = 256)))]
    pub block: Vec<String>,
    /// Items served at a fixed 0-based position whenever they are candidates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub pin: Vec<PinSpec>,
    /// Score multiplier for items from the newest two release years (1.0: no boost).
    #[serde(default = "defaults::fresh_boost")]
    #[schemars(range(min = 0.0, max = 10.0))]
    pub fresh_boost: f64,
}

impl Default for BusinessRulesSpec {
    fn default() -> Self {
        Self {
            block: Vec::new(),
            pin: Vec::new(),
            fresh_boost: defaults::fresh_boost(),
        }
    }
}

/// An item pinned to a position.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PinSpec {
    /// The item id.
    #[schemars(length(min = 1, max = 256))]
    pub item: String,
    /// 0-based position in the served list.
    #[schemars(range(min = 0, max = 199))]
    pub position: i32,
}

/// An A/B experiment on the MMR trade-off.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("self.variants.all(v, self.variants.exists_one(w, w.name == v.name))").message("experiment.variants names must be unique"),
    validation = Rule::new("self.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("experiment.name must be lower-case letters, digits and '-' (it is recorded on every trace)")
)]
pub struct ExperimentSpec {
    /// The experiment's name, recorded on every request's trace; users are bucketed by a
    /// stable hash of it and their id, so renaming reshuffles them.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Whether it runs. `false` keeps the definition but serves everyone the default.
    #[serde(default = "defaults::enabled")]
    pub enabled: bool,
    /// Percent of users in the experiment (stable per user), split evenly between variants.
    #[serde(default = "defaults::traffic_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub traffic_percent: i32,
    /// The variants and the MMR lambda each serves (1.0: pure score, 0.0: pure diversity).
    #[schemars(length(min = 1, max = 10))]
    pub variants: Vec<VariantSpec>,
}

/// One arm of an experiment.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VariantSpec {
    /// The variant's name, recorded on the traces of the users it serves.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// MMR's trade-off for these users: 1.0 ranks by score alone, 0.0 by diversity alone.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub mmr_lambda: f64,
}

/// The stack's artifacts: `recstack build`'s layout (`<uri>/<version>/`, `<uri>/current`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("self.uri.matches('^(file:///|s3://|s3a://|gs://|az://|abfss?://|adl://|https?://)')").message("artifacts.uri must be file:///<absolute path> (a path inside every pod) or an object store URI: s3://bucket/prefix, gs://…, az://…, https://…"),
    validation = Rule::new("!has(self.endpoint) || self.endpoint.matches('^https?://[^/]+/?$')").message("artifacts.endpoint must be an http:// or https:// URL with no path, such as http://minio.storage.svc:9000")
)]
pub struct ArtifactsSpec {
    /// `file:///…`: a directory inside every pod (the default is the set the image bundles,
    /// built from the MovieTweetings sample); or an object store prefix such as
    /// `s3://bucket/recstack/artifacts` (also `gs://`, `az://`, `https://`), which each pod
    /// copies to its local disk.
    #[serde(default = "defaults::artifacts_uri")]
    #[schemars(length(min = 8, max = 2048))]
    pub uri: String,
    /// The object store's endpoint when it is not the provider's default: an S3-compatible
    /// server such as `http://minio.storage.svc:9000`. Used for the artifacts and for model
    /// URIs of the same scheme; the NetworkPolicies allow egress to its port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 8, max = 2048))]
    pub endpoint: Option<String>,
    /// Secret in the stack's namespace with the object store's credentials and settings, one
    /// key each, named like the environment variables (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ALLOW_HTTP`, or the
    /// GCS/Azure equivalents). Mounted as files into every pod that reads the store (never put
    /// in the environment). Also used for `s3://` model URIs and by the build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// Seconds between checks for a new version (artifacts and remote models).
    #[serde(default = "defaults::artifacts_poll_seconds")]
    #[schemars(range(min = 5, max = 86400))]
    pub poll_seconds: i32,
}

impl Default for ArtifactsSpec {
    fn default() -> Self {
        Self {
            uri: defaults::artifacts_uri(),
            endpoint: None,
            credentials_secret_ref: None,
            poll_seconds: defaults::artifacts_poll_seconds(),
        }
    }
}

/// The offline build Job (and CronJob).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("self.data.matches('^(file:///|s3://|s3a://|gs://|az://|abfss?://|adl://|https?://)')").message("build.data must be file:///<absolute path> (a directory in the image) or an object store prefix: s3://bucket/ratings, gs://…, az://…, https://…"),
    validation = Rule::new("!has(self.schedule) || self.schedule.matches('^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|[^ ]+( +[^ ]+){4})$')").message("build.schedule must be a cron schedule of five fields (\"0 3 * * *\") or @hourly, @daily, @weekly, @monthly, @yearly")
)]
pub struct BuildSpec {
    /// Where the ratings are: a directory or object store prefix holding `movies.dat` and
    /// `ratings.dat` (MovieTweetings format). Default: the sample the image bundles.
    #[serde(default = "defaults::build_data")]
    #[schemars(length(min = 8, max = 2048))]
    pub data: String,
    /// Cron schedule (the cluster's time zone) for rebuilds from `data` on a CronJob, such as
    /// `"0 3 * * *"`. Unset: the build runs once per change of this spec or of the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub schedule: Option<String>,
    /// Seconds a build may run before Kubernetes stops it (a failed build publishes nothing).
    #[serde(default = "defaults::build_deadline_seconds")]
    #[schemars(range(min = 60, max = 86400))]
    pub active_deadline_seconds: i64,
    /// Retries of a failed build.
    #[serde(default = "defaults::build_backoff_limit")]
    #[schemars(range(min = 0, max = 10))]
    pub backoff_limit: i32,
    /// CPU and memory of the build container (default: 1 CPU and 2 GiB requested, 2 CPUs and
    /// 4 GiB at most).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for BuildSpec {
    fn default() -> Self {
        Self {
            data: defaults::build_data(),
            schedule: None,
            active_deadline_seconds: defaults::build_deadline_seconds(),
            backoff_limit: defaults::build_backoff_limit(),
            resources: None,
        }
    }
}

/// Settings shared by every component's workload.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new(rules::REPLICAS_XOR_AUTOSCALING).message(rules::REPLICAS_XOR_AUTOSCALING_MSG),
    validation = Rule::new(rules::NO_GPU_LIMITS).message(rules::NO_GPU_MSG),
    validation = Rule::new(rules::NO_GPU_REQUESTS).message(rules::NO_GPU_MSG)
)]
pub struct ComponentSpec {
    /// Container image for this component; defaults to `spec.image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// A fixed number of replicas. Leave unset to autoscale (the default: 2 to 10 replicas at
    /// 70% CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,

    /// Horizontal autoscaling. Ignored by nothing: when neither `replicas` nor `autoscaling`
    /// is set, the defaults (2 to 10 replicas, 70% CPU) apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,

    /// CPU and memory requests and limits of the component's container. Defaults depend on
    /// the component (see `docs/operator.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// The gateway's workload and the latency it keeps.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new(rules::REPLICAS_XOR_AUTOSCALING).message(rules::REPLICAS_XOR_AUTOSCALING_MSG),
    validation = Rule::new(rules::NO_GPU_LIMITS).message(rules::NO_GPU_MSG),
    validation = Rule::new(rules::NO_GPU_REQUESTS).message(rules::NO_GPU_MSG)
)]
pub struct GatewaySpec {
    /// Container image for the gateway; defaults to `spec.image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A fixed number of replicas. Leave unset to autoscale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Horizontal autoscaling (defaults: 2 to 10 replicas at 70% CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// CPU and memory requests and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The p99 each gateway keeps, in milliseconds of its own time per request: while more
    /// than 1 % of its requests take longer, it starts a growing share of them at the reduced
    /// level (three recall channels, the model ranks 100 instead of 500) and says so in each
    /// response. 0 turns it off: load and downstream health alone choose levels.
    #[serde(default = "defaults::latency_target_ms")]
    #[schemars(range(min = 0, max = 60000))]
    pub latency_target_ms: i32,
}

impl Default for GatewaySpec {
    fn default() -> Self {
        Self {
            image: None,
            replicas: None,
            autoscaling: None,
            resources: None,
            latency_target_ms: defaults::latency_target_ms(),
        }
    }
}

/// Horizontal Pod Autoscaler settings (autoscaling/v2).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas"),
    validation = Rule::new("has(self.targetCpuUtilization) || has(self.targetRequestsPerSecond)").message("autoscaling needs a target: set targetCpuUtilization, targetRequestsPerSecond or both")
)]
pub struct AutoscalingSpec {
    /// Fewest replicas the autoscaler keeps.
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Most replicas the autoscaler may create.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Target average CPU utilization, in percent of the CPU request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: Option<i32>,
    /// Target requests per second per pod. Needs a custom-metrics adapter (for example
    /// prometheus-adapter) that serves the pods metric `recstack_requests_per_second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_requests_per_second: Option<i32>,
}

impl Default for AutoscalingSpec {
    fn default() -> Self {
        Self {
            min_replicas: 2,
            max_replicas: 10,
            target_cpu_utilization: Some(70),
            target_requests_per_second: None,
        }
    }
}

/// The ranking component: its workload, model, request batching and GPUs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new(rules::REPLICAS_XOR_AUTOSCALING).message(rules::REPLICAS_XOR_AUTOSCALING_MSG),
    validation = Rule::new(rules::NO_GPU_LIMITS).message("ranking GPUs are set with spec.ranking.gpu.count, not in spec.ranking.resources"),
    validation = Rule::new(rules::NO_GPU_REQUESTS).message("ranking GPUs are set with spec.ranking.gpu.count, not in spec.ranking.resources")
)]
pub struct RankingSpec {
    /// Container image for ranking; defaults to `spec.image`. GPU nodes usually need an image
    /// with the CUDA build of onnxruntime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A fixed number of replicas. Leave unset to autoscale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Horizontal autoscaling (defaults: 2 to 10 replicas at 70% CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// CPU and memory requests and limits. GPUs go in `gpu`, not here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The ONNX ranking model and its canary.
    #[serde(default)]
    pub model: ModelSpec,
    /// Dynamic batching of concurrent ranking requests.
    #[serde(default)]
    pub batching: BatchingSpec,
    /// GPUs for ranking; unset means CPU inference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuSpec>,
}

/// The ranking model. Every score is recorded with the version that produced it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("self.canaryPercent >= 0 && self.canaryPercent <= 100").message("ranking.model.canaryPercent must be between 0 and 100"),
    validation = Rule::new("self.canaryPercent == 0 || has(self.canaryUri)").message("ranking.model.canaryPercent above 0 needs ranking.model.canaryUri, the model that receives the canary traffic"),
    validation = Rule::new("!has(self.canaryUri) || has(self.canaryVersion)").message("ranking.model.canaryUri needs ranking.model.canaryVersion, so traces can tell the two models apart"),
    validation = Rule::new("self.uri.matches('^(file:///|s3://|s3a://|gs://|az://|abfss?://|adl://|https?://)')").message("ranking.model.uri must be file:///<absolute path> or an object store URI (s3://, gs://, az://, https://)"),
    validation = Rule::new("!has(self.canaryUri) || self.canaryUri.matches('^(file:///|s3://|s3a://|gs://|az://|abfss?://|adl://|https?://)')").message("ranking.model.canaryUri must be file:///<absolute path> or an object store URI (s3://, gs://, az://, https://)")
)]
pub struct ModelSpec {
    /// Where the ONNX model is, with its model card (`model.json`) beside it: a path inside the
    /// pod (`file:///…`; the default is the DeepFM the image bundles) or an object store URI
    /// (`s3://bucket/models/deepfm/3/model.onnx`, `gs://`, `az://`, `https://`) fetched at
    /// start-up and polled for changes (credentials: `spec.artifacts.credentialsSecretRef`).
    #[serde(default = "defaults::model_uri")]
    pub uri: String,
    /// The model's version, recorded on every score and shown by `kubectl get -o wide`.
    #[serde(default = "defaults::model_version")]
    pub version: String,
    /// The canary model's URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_uri: Option<String>,
    /// The canary model's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_version: Option<String>,
    /// Percent of requests (by a stable hash of the user) scored by the canary model, 0–100.
    #[serde(default)]
    pub canary_percent: i32,
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self {
            uri: defaults::model_uri(),
            version: defaults::model_version(),
            canary_uri: None,
            canary_version: None,
            canary_percent: 0,
        }
    }
}

/// Dynamic batching: concurrent requests are scored together in one model call, up to
/// `maxRequests` requests and `maxBatch` candidates; a request waits for others at most
/// `maxWaitMicros` from entering the queue, and only while others are on their way.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BatchingSpec {
    /// Most candidates in one model call (a larger request is split).
    #[serde(default = "defaults::max_batch")]
    #[schemars(range(min = 1, max = 65536))]
    pub max_batch: i32,
    /// Most requests scored together in one model call.
    #[serde(default = "defaults::max_requests")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_requests: i32,
    /// Longest a request waits for others to join its batch, from entering the queue, in
    /// microseconds.
    #[serde(default = "defaults::max_wait_micros")]
    #[schemars(range(min = 0, max = 100000))]
    pub max_wait_micros: i32,
}

impl Default for BatchingSpec {
    fn default() -> Self {
        Self {
            max_batch: defaults::max_batch(),
            max_requests: defaults::max_requests(),
            max_wait_micros: defaults::max_wait_micros(),
        }
    }
}

/// GPUs for the ranking pods (CUDA execution provider of onnxruntime).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GpuSpec {
    /// GPUs per ranking pod (`nvidia.com/gpu` limit).
    #[serde(default = "defaults::gpu_count")]
    #[schemars(range(min = 1, max = 16))]
    pub count: i32,
    /// Node labels the ranking pods must match, for example
    /// `nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations for tainted GPU nodes. Defaults to tolerating `nvidia.com/gpu:NoSchedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
}

/// The feature service and its Redis L2 cache.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new(rules::REPLICAS_XOR_AUTOSCALING).message(rules::REPLICAS_XOR_AUTOSCALING_MSG),
    validation = Rule::new(rules::NO_GPU_LIMITS).message(rules::NO_GPU_MSG),
    validation = Rule::new(rules::NO_GPU_REQUESTS).message(rules::NO_GPU_MSG),
    validation = Rule::new("!has(self.redisUrl) || self.redisUrl.startsWith('redis://') || self.redisUrl.startsWith('redis+cluster://')").message("feature.redisUrl must be redis://host:port[/db] (one server) or redis+cluster://host:port,host:port (a Redis Cluster)")
)]
pub struct FeatureSpec {
    /// Container image for the feature service; defaults to `spec.image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A fixed number of replicas. Leave unset to autoscale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Horizontal autoscaling (defaults: 2 to 10 replicas at 70% CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// CPU and memory requests and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Redis used as the L2 feature cache, recall's seen filters and the stream job's sink:
    /// one server, `redis://redis.recstack.svc:6379[/db]`, or a Redis Cluster named by some of
    /// its nodes, `redis+cluster://redis-0.redis:6379,redis-1.redis:6379`. Unset: local cache
    /// plus snapshot only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 8, max = 2048))]
    pub redis_url: Option<String>,
}

/// Which engine runs the streaming aggregation.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StreamEngine {
    /// recstack's own windowed aggregator, as a Deployment.
    #[default]
    Builtin,
    /// The same windows as a Flink SQL job, run by the Apache Flink Kubernetes Operator
    /// (a `FlinkDeployment`).
    Flink,
    /// No streaming aggregation: features come from the artifacts' snapshot and the hot list
    /// from the offline build. For a stack without Kafka and Redis.
    None,
    /// A value this operator does not know: a newer CRD added it. Read so that one such stack
    /// does not stop the operator from reading every other; it is reported as Degraded
    /// and left as it is. Never part of the schema.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// Streaming aggregation: tumbling windows over behaviour events (impressions, clicks, CTR per
/// item; recent items per user) written to the feature store and the hot list.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("self.engine == 'flink' || !has(self.flink)").message("stream.flink settings are only allowed when stream.engine is 'flink'"),
    validation = Rule::new("self.engine != 'none' || !has(self.workload)").message("stream.workload settings are only allowed when a stream engine runs (builtin, or flink: the StatefulSet applying the job's output); size the Flink job with stream.flink"),
    validation = Rule::new("self.window.matches('^[1-9][0-9]*(s|m|h)$')").message("stream.window must be a duration such as 30s, 1m or 1h")
)]
pub struct StreamSpec {
    /// `builtin` (recstack's stream worker; needs `eventLog` and `feature.redisUrl`), `flink`
    /// (a FlinkDeployment running Flink SQL; needs `eventLog`) or `none` (no real-time
    /// features).
    #[serde(default)]
    pub engine: StreamEngine,
    /// Tumbling window length, such as `30s`, `1m` (the default) or `1h`.
    #[serde(default = "defaults::window")]
    #[schemars(length(min = 2, max = 16))]
    pub window: String,
    /// Replicas of the stream StatefulSet (sharing the topic's partitions), and with engine
    /// `flink` the Flink job's parallelism too.
    #[serde(default = "defaults::parallelism")]
    #[schemars(range(min = 1, max = 1024))]
    pub parallelism: i32,
    /// Resources and image of the stream StatefulSet (the built-in worker, or with engine
    /// `flink` the consumer applying the job's output). Not with engine `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<StreamWorkloadSpec>,
    /// Flink settings. Only with engine `flink`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flink: Option<FlinkSpec>,
}

impl Default for StreamSpec {
    fn default() -> Self {
        Self {
            engine: StreamEngine::Builtin,
            window: defaults::window(),
            parallelism: defaults::parallelism(),
            workload: None,
            flink: None,
        }
    }
}

/// The built-in stream worker's container.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StreamWorkloadSpec {
    /// Container image; defaults to `spec.image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory requests and limits of each worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// The Flink job (needs the Apache Flink Kubernetes Operator in the cluster).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("self.version.matches('^v[0-9]+_[0-9]+$')").message("stream.flink.version must look like v1_20 (the Flink operator's FlinkVersion)"),
    validation = Rule::new("!has(self.stateUri) || self.stateUri.matches('^(s3|s3a|s3p|gs|abfss?|hdfs)://[^/]+')").message("stream.flink.stateUri must be an object store prefix Flink can write to, such as s3://bucket/recstack/flink")
)]
pub struct FlinkSpec {
    /// The job image: Flink with PyFlink, the SQL runner and the Kafka SQL connector at the paths
    /// `services/flink/Dockerfile` uses (default: the recstack-flink image of this release).
    #[serde(default = "defaults::flink_image")]
    pub image: String,
    /// The image's Flink version as the Flink operator spells it (default `v2_2`).
    #[serde(default = "defaults::flink_version")]
    #[schemars(length(min = 4, max = 16))]
    pub version: String,
    /// Task slots per TaskManager.
    #[serde(default = "defaults::task_slots")]
    #[schemars(range(min = 1, max = 64))]
    pub task_slots: i32,
    /// JobManager memory, in Flink's notation (`1024m`, `2g`).
    #[serde(default = "defaults::job_manager_memory")]
    pub job_manager_memory: String,
    /// TaskManager memory, in Flink's notation (`2048m`, `4g`).
    #[serde(default = "defaults::task_manager_memory")]
    pub task_manager_memory: String,
    /// Service account the Flink pods run as (the Flink operator's docs create `flink`).
    #[serde(default = "defaults::flink_service_account")]
    pub service_account: String,
    /// Where the job keeps its checkpoints and savepoints (`<stateUri>/checkpoints`,
    /// `<stateUri>/savepoints`), an object store prefix such as `s3://bucket/recstack/flink`.
    /// Default: beside the artifacts, `<artifacts.uri>-flink`, on the same store with the same
    /// endpoint and credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 6, max = 2048))]
    pub state_uri: Option<String>,
}

impl Default for FlinkSpec {
    fn default() -> Self {
        Self {
            image: defaults::flink_image(),
            version: defaults::flink_version(),
            task_slots: defaults::task_slots(),
            job_manager_memory: defaults::job_manager_memory(),
            task_manager_memory: defaults::task_manager_memory(),
            service_account: defaults::flink_service_account(),
            state_uri: None,
        }
    }
}

/// A Kafka-protocol event log.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("self.bootstrapServers.all(s, s.matches('^[A-Za-z0-9.-]+:[0-9]+$'))").message("eventLog.bootstrapServers entries must be host:port"),
    validation = Rule::new("self.minInsyncReplicas <= self.replicationFactor").message("eventLog.minInsyncReplicas must not exceed eventLog.replicationFactor (no event could ever be acknowledged)"),
    validation = Rule::new("self.topic.matches('^[A-Za-z0-9._-]+$')").message("eventLog.topic must be a Kafka topic name: letters, digits, '.', '_' and '-'")
)]
pub struct EventLogSpec {
    /// Broker addresses as `host:port`.
    #[schemars(length(min = 1, max = 32), inner(length(min = 3, max = 255)))]
    pub bootstrap_servers: Vec<String>,
    /// Topic holding behaviour events, partitioned by item. With engine `flink` the job writes
    /// to `<topic>-aggregates` beside it (hence at most 238 characters: Kafka's 249, less the
    /// suffix).
    #[serde(default = "defaults::events_topic")]
    #[schemars(length(min = 1, max = 238))]
    pub topic: String,
    /// Partitions of the topic when recstack creates it (an existing topic keeps its own).
    /// The stream job's replicas share them, so at least `stream.parallelism`.
    #[serde(default = "defaults::event_partitions")]
    #[schemars(range(min = 1, max = 4096))]
    pub partitions: i32,
    /// Brokers holding each partition when recstack creates the topic.
    #[serde(default = "defaults::replication_factor")]
    #[schemars(range(min = 1, max = 16))]
    pub replication_factor: i32,
    /// Brokers that must hold an event before ingest acknowledges it (`min.insync.replicas`).
    #[serde(default = "defaults::min_insync_replicas")]
    #[schemars(range(min = 1, max = 16))]
    pub min_insync_replicas: i32,
    /// Hours events are kept on the topic (`retention.ms`).
    #[serde(default = "defaults::event_retention_hours")]
    #[schemars(range(min = 1, max = 87600))]
    pub retention_hours: i32,
}

impl EventLogSpec {
    /// `topic` on `bootstrap_servers` with the default topic settings.
    pub fn new(bootstrap_servers: Vec<String>, topic: impl Into<String>) -> Self {
        Self {
            bootstrap_servers,
            topic: topic.into(),
            partitions: defaults::event_partitions(),
            replication_factor: defaults::replication_factor(),
            min_insync_replicas: defaults::min_insync_replicas(),
            retention_hours: defaults::event_retention_hours(),
        }
    }
}

/// Elasticsearch trace store.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("self.elasticsearchUrl.startsWith('http://') || self.elasticsearchUrl.startsWith('https://')").message("traceStore.elasticsearchUrl must be an http:// or https:// URL"),
    validation = Rule::new("self.sampling >= 0.0 && self.sampling <= 1.0").message("traceStore.sampling is the fraction of requests traced in full, between 0.0 and 1.0")
)]
pub struct TraceStoreSpec {
    /// Elasticsearch (or OpenSearch) base URL, for example `https://es.observability:9200`.
    #[schemars(length(min = 8, max = 2048))]
    pub elasticsearch_url: String,
    /// Secret in the stack's namespace holding `username` and `password` for Elasticsearch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// Fraction of requests traced at the `full` level (every candidate); every request gets a
    /// `summary` trace regardless.
    #[serde(default = "defaults::sampling")]
    pub sampling: f64,
    /// Days of traces kept; older daily indices are deleted.
    #[serde(default = "defaults::retention_days")]
    #[schemars(range(min = 1, max = 3650))]
    pub retention_days: i32,
}

/// The dashboard and the trace query service behind it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new(rules::NO_GPU_LIMITS).message(rules::NO_GPU_MSG),
    validation = Rule::new(rules::NO_GPU_REQUESTS).message(rules::NO_GPU_MSG)
)]
pub struct DashboardSpec {
    /// Container image of both; defaults to `spec.image`. The image carries the dashboard's
    /// browser build in `/usr/share/recstack/dashboard`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Replicas of the dashboard and of the trace query service (each).
    #[serde(default = "defaults::dashboard_replicas")]
    #[schemars(range(min = 0, max = 20))]
    pub replicas: i32,
    /// CPU and memory of each container; defaults are small (see `docs/operator.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for DashboardSpec {
    fn default() -> Self {
        Self {
            image: None,
            replicas: defaults::dashboard_replicas(),
            resources: None,
        }
    }
}

/// A reference to a Secret in the stack's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Cluster policies around the workloads.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoliciesSpec {
    /// PodDisruptionBudgets for every component.
    #[serde(default)]
    pub pod_disruption_budget: PdbPolicy,
    /// NetworkPolicies: deny everything, then allow the request and event paths.
    #[serde(default)]
    pub network_policy: NetworkPolicyPolicy,
    /// The PriorityClasses the stack's pods run under (the install's, by default).
    #[serde(default)]
    pub priority_classes: PriorityClassPolicy,
}

/// PodDisruptionBudget policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PdbPolicy {
    /// Create a PodDisruptionBudget per component.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// Pods of one component that voluntary disruptions (drains, upgrades) may take down at once.
    #[serde(default = "defaults::max_unavailable")]
    #[schemars(range(min = 1))]
    pub max_unavailable: i32,
}

impl Default for PdbPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            max_unavailable: defaults::max_unavailable(),
        }
    }
}

/// NetworkPolicy policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("!has(self.gatewayClientNamespaces) || self.gatewayClientNamespaces.all(n, n.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))").message("policies.networkPolicy.gatewayClientNamespaces entries must be namespace names: lower-case letters, digits and '-', at most 63 characters (each becomes a kubernetes.io/metadata.name selector)"),
    validation = Rule::new("!has(self.metricsNamespace) || self.metricsNamespace.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("policies.networkPolicy.metricsNamespace must be a namespace name: lower-case letters, digits and '-', at most 63 characters")
)]
pub struct NetworkPolicyPolicy {
    /// Create the default-deny policy and the allow graph.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// Namespaces (by `kubernetes.io/metadata.name`) allowed to call the gateway. Empty means
    /// any source, inside or outside the cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63)))]
    pub gateway_client_namespaces: Vec<String>,
    /// Namespace of the Prometheus that scrapes `/metrics` on every pod; unset means no scrape
    /// is allowed through the policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub metrics_namespace: Option<String>,
}

impl Default for NetworkPolicyPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            gateway_client_namespaces: Vec::new(),
            metrics_namespace: None,
        }
    }
}

/// PriorityClass policy: which PriorityClasses the stack's pods run under.
///
/// The classes belong to the install (`manifests/install/priority-classes.yaml` ships
/// `recstack-online` and `recstack-offline`), not to the stack: a PriorityClass is
/// cluster-wide, so letting every namespace that may create a stack mint one would let any
/// tenant preempt every other. A stack only names classes a cluster admin created — as any pod
/// in its namespace could — and admins bound their use with a ResourceQuota scoped by
/// PriorityClass.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PriorityClassPolicy {
    /// Set `priorityClassName` on the stack's pods.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// Class of the online components (gateway, recall, ranking, rerank, feature, ingest).
    #[serde(default = "defaults::online_priority_class")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub online: String,
    /// Class of streaming and other offline work (the install's never preempts).
    #[serde(default = "defaults::offline_priority_class")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub offline: String,
}

impl Default for PriorityClassPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            online: defaults::online_priority_class(),
            offline: defaults::offline_priority_class(),
        }
    }
}

// === status ===

/// Observed state, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RecommenderStackStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One word for `kubectl get`: Running, Progressing, Degraded or Paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// `Ready`, `Progressing`, `Degraded` and `Paused`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Ready and desired replicas per component.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub components: Vec<ComponentStatus>,
    /// In-cluster addresses of the stack's entry points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
    /// The offline build's Job (`spec.build`), as its status says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildStatus>,
    /// How the built-in stream job's replicas share the event log's partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamStatus>,
}

/// Which partitions each stream replica reads (`p % replicas == ordinal`; see
/// [`assignment`]): of the event topic with engine builtin, of the Flink job's aggregates topic
/// with engine flink.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StreamStatus {
    /// Partitions of the topic as the stack creates it (`spec.eventLog.partitions`; a topic
    /// that existed before keeps its own count, and the replicas share that the same way).
    pub partitions: i32,
    /// Each replica (StatefulSet pod) and its partitions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["replica"]))]
    pub assignment: Vec<ReplicaAssignment>,
}

/// One stream replica's partitions.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaAssignment {
    /// The pod, `<stack>-stream-<ordinal>`.
    pub replica: String,
    /// The partitions it reads, ascending.
    pub partitions: Vec<i32>,
}

/// Where the offline build Job stands.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BuildStatus {
    /// The Job's name.
    pub job: String,
    /// Pending, Running, Succeeded or Failed.
    pub state: String,
    /// Why it failed, or when it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Replicas of one component.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Component name (recall, ranking, rerank, feature, ingest, gateway, stream).
    pub name: String,
    /// Replicas the operator (or the autoscaler) wants.
    pub desired_replicas: i32,
    /// Replicas passing their readiness probe.
    pub ready_replicas: i32,
}

/// Entry points of the stack.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// Gateway HTTP base URL (`POST /v1/recommend`).
    pub gateway_http: String,
    /// Gateway gRPC address (`Recommend`).
    pub gateway_grpc: String,
    /// Ingest HTTP base URL (`POST /v1/events`).
    pub ingest_http: String,
}

// === components ===

/// Who calls whom over gRPC, the one table both sides read: each service asks its runtime
/// config for a peer's endpoint through [`runtime::RuntimeConfig::endpoint_for`], which refuses
/// a call not listed here, and the operator's NetworkPolicies allow exactly these calls.
pub const GRPC_CALLS: &[(Component, Component)] = &[
    (Component::Gateway, Component::Feature),
    (Component::Gateway, Component::Recall),
    (Component::Gateway, Component::Ranking),
    (Component::Gateway, Component::Rerank),
    // Impressions: the served items enter the user's seen filter.
    (Component::Ingest, Component::Recall),
    // Real-time item features, for a model whose card names them.
    (Component::Ranking, Component::Feature),
];

/// Calls over HTTP: the dashboard reads the trace query API and replays requests through the
/// gateway.
pub const HTTP_CALLS: &[(Component, Component)] = &[
    (Component::Dashboard, Component::Traces),
    // Replays (what-if) go through the gateway like any request.
    (Component::Dashboard, Component::Gateway),
];

/// The stack's components, in the order they are rendered and reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Gateway,
    Recall,
    Ranking,
    Rerank,
    Feature,
    Ingest,
    Stream,
    /// The trace query API, deployed with the dashboard.
    Traces,
    Dashboard,
}

impl Component {
    /// Components on the request and event paths, served by Deployments behind Services.
    pub const ONLINE: [Component; 6] = [
        Component::Gateway,
        Component::Recall,
        Component::Ranking,
        Component::Rerank,
        Component::Feature,
        Component::Ingest,
    ];

    /// Deployed when `spec.dashboard` is set: the trace query service and the dashboard.
    pub const OBSERVABILITY: [Component; 2] = [Component::Traces, Component::Dashboard];

    /// Every component of the request and event paths, online ones first (not the
    /// [`Component::OBSERVABILITY`] ones).
    pub const ALL: [Component; 7] = [
        Component::Gateway,
        Component::Recall,
        Component::Ranking,
        Component::Rerank,
        Component::Feature,
        Component::Ingest,
        Component::Stream,
    ];

    /// The name used in object names, labels and status.
    pub fn name(self) -> &'static str {
        match self {
            Component::Gateway => "gateway",
            Component::Recall => "recall",
            Component::Ranking => "ranking",
            Component::Rerank => "rerank",
            Component::Feature => "feature",
            Component::Ingest => "ingest",
            Component::Stream => "stream",
            Component::Traces => "traces",
            Component::Dashboard => "dashboard",
        }
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The workload settings of one component, whichever spec type holds them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Workload<'a> {
    pub image: Option<&'a str>,
    pub replicas: Option<i32>,
    pub autoscaling: Option<&'a AutoscalingSpec>,
    pub resources: Option<&'a ResourceRequirements>,
}

/// The spec types that hold a component's workload settings as fields of their own (serde
/// cannot flatten a shared struct into a type that denies unknown fields).
macro_rules! workload_from {
    ($($spec:ty),*) => {$(
        impl<'a> From<&'a $spec> for Workload<'a> {
            fn from(c: &'a $spec) -> Self {
                Workload {
                    image: c.image.as_deref(),
                    replicas: c.replicas,
                    autoscaling: c.autoscaling.as_ref(),
                    resources: c.resources.as_ref(),
                }
            }
        }
    )*};
}

workload_from!(ComponentSpec, RankingSpec, FeatureSpec, GatewaySpec);

impl RecommenderStackSpec {
    /// Workload settings of `component`. The stream component's replicas are its parallelism.
    pub fn workload(&self, component: Component) -> Workload<'_> {
        match component {
            Component::Gateway => (&self.gateway).into(),
            Component::Recall => (&self.recall).into(),
            Component::Rerank => (&self.rerank).into(),
            Component::Ingest => (&self.ingest).into(),
            Component::Ranking => (&self.ranking).into(),
            Component::Feature => (&self.feature).into(),
            Component::Traces | Component::Dashboard => match &self.dashboard {
                Some(d) => Workload {
                    image: d.image.as_deref(),
                    replicas: Some(d.replicas),
                    autoscaling: None,
                    resources: d.resources.as_ref(),
                },
                None => Workload {
                    replicas: Some(0),
                    ..Workload::default()
                },
            },
            Component::Stream => {
                let w = self.stream.workload.as_ref();
                Workload {
                    image: w.and_then(|w| w.image.as_deref()),
                    replicas: Some(self.stream.parallelism),
                    autoscaling: None,
                    resources: w.and_then(|w| w.resources.as_ref()),
                }
            }
        }
    }

    /// The image `component` runs.
    pub fn image_of(&self, component: Component) -> &str {
        self.workload(component).image.unwrap_or(&self.image)
    }
}
