//! Desired state: a pure function from a `RecommenderStack` to every child object it needs.
//!
//! No I/O happens here. `reconcile` applies what this returns and prunes what it no longer
//! returns; `recstack-operator render -f stack.yaml` prints it; the snapshot tests in
//! `tests/render.rs` pin it. Objects are written as JSON templates because they read like the
//! YAML a reviewer checks; `kubernetes-validate --strict` in the test suite catches any field
//! the API server would not know.

mod build;
mod config;
mod flink;
mod network;
mod values;
mod workloads;

use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use recstack_crds::{Component, RecommenderStack, StreamEngine};
use serde_json::{Value, json};

pub use config::RuntimeConfig;
pub use config::fnv1a as stable_hash;
pub use flink::{EVENT_COLUMNS, aggregation_sql, image as flink_image, window_query};
pub use network::{GRPC_CALLS, HTTP_CALLS, url_port};

use crate::labels;

/// Why a stack cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("the RecommenderStack has no metadata.name")]
    MissingName,
    #[error("the RecommenderStack has no metadata.namespace (render: pass --namespace)")]
    MissingNamespace,
    #[error("{field}: {message}")]
    InvalidField { field: &'static str, message: String },
    /// A value the CRD's schema and rules let through but the API server would refuse in a
    /// rendered object: refused before anything is applied.
    #[error("{field}: {message}")]
    InvalidValue { field: String, message: String },
    #[error("internal error building {kind}: {source}")]
    Build {
        kind: &'static str,
        source: serde_json::Error,
    },
}

/// The kinds of object a stack owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChildKind {
    ConfigMap,
    ServiceAccount,
    Role,
    RoleBinding,
    Service,
    Deployment,
    StatefulSet,
    HorizontalPodAutoscaler,
    PodDisruptionBudget,
    NetworkPolicy,
    FlinkDeployment,
    Job,
    CronJob,
}

impl ChildKind {
    /// Every kind, in apply order: config and identities first, so pods that reference them
    /// start cleanly. All are namespaced and carry an owner reference to the stack, so the
    /// garbage collector removes them with it. (PriorityClasses are cluster-wide and belong to
    /// the install: see `recstack_crds::PriorityClassPolicy`.) The build Job comes last, after
    /// the NetworkPolicy that lets it reach the object store.
    pub const ALL: [ChildKind; 13] = [
        ChildKind::ConfigMap,
        ChildKind::ServiceAccount,
        ChildKind::Role,
        ChildKind::RoleBinding,
        ChildKind::Service,
        ChildKind::Deployment,
        ChildKind::StatefulSet,
        ChildKind::HorizontalPodAutoscaler,
        ChildKind::PodDisruptionBudget,
        ChildKind::NetworkPolicy,
        ChildKind::FlinkDeployment,
        ChildKind::Job,
        ChildKind::CronJob,
    ];

    pub fn gvk(self) -> (&'static str, &'static str, &'static str, &'static str) {
        // (group, version, kind, plural)
        match self {
            ChildKind::ConfigMap => ("", "v1", "ConfigMap", "configmaps"),
            ChildKind::ServiceAccount => ("", "v1", "ServiceAccount", "serviceaccounts"),
            ChildKind::Role => ("rbac.authorization.k8s.io", "v1", "Role", "roles"),
            ChildKind::RoleBinding => ("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings"),
            ChildKind::Service => ("", "v1", "Service", "services"),
            ChildKind::Deployment => ("apps", "v1", "Deployment", "deployments"),
            ChildKind::StatefulSet => ("apps", "v1", "StatefulSet", "statefulsets"),
            ChildKind::HorizontalPodAutoscaler => (
                "autoscaling",
                "v2",
                "HorizontalPodAutoscaler",
                "horizontalpodautoscalers",
            ),
            ChildKind::PodDisruptionBudget => ("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets"),
            ChildKind::NetworkPolicy => ("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies"),
            ChildKind::FlinkDeployment => ("flink.apache.org", "v1beta1", "FlinkDeployment", "flinkdeployments"),
            ChildKind::Job => ("batch", "v1", "Job", "jobs"),
            ChildKind::CronJob => ("batch", "v1", "CronJob", "cronjobs"),
        }
    }

    pub fn api_resource(self) -> ApiResource {
        let (group, version, kind, plural) = self.gvk();
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
    }

    pub fn kind(self) -> &'static str {
        self.gvk().2
    }

    /// Kinds whose CRD may be missing from a cluster (a 404 on list means "none").
    pub fn optional(self) -> bool {
        self == ChildKind::FlinkDeployment
    }
}

/// One object the stack should have.
#[derive(Clone, Debug, PartialEq)]
pub struct Child {
    pub kind: ChildKind,
    pub object: DynamicObject,
}

impl Child {
    pub fn name(&self) -> String {
        self.object.name_any()
    }
}

/// Everything a stack needs, in apply order.
pub fn render(stack: &RecommenderStack) -> Result<Vec<Child>, RenderError> {
    let ctx = StackCtx::new(stack)?;
    let spec = &stack.spec;
    let mut out = Vec::new();

    if spec.stream.engine == StreamEngine::Unknown {
        return Err(RenderError::InvalidField {
            field: "spec.stream.engine",
            message: "a value this operator does not know (the CRD is newer than the operator): upgrade the operator; the stack's objects are left as they are".into(),
        });
    }
    values::check(spec)?;
    let config = config::runtime_config(&ctx);
    let config_map = config::config_map(&ctx, &config)?;
    let config_hash = config::hash_of(&config);
    out.push(config_map);

    for component in Component::ONLINE {
        out.extend(workloads::online_component(&ctx, component, &config_hash)?);
    }
    out.extend(workloads::observability(&ctx, &config_hash)?);
    match spec.stream.engine {
        StreamEngine::Builtin => out.extend(workloads::stream_worker(&ctx, &config_hash)?),
        // The job computes; the stream StatefulSet applies its output to the feature store.
        StreamEngine::Flink => {
            out.extend(workloads::stream_worker(&ctx, &config_hash)?);
            out.extend(flink::flink_job(&ctx)?);
        }
        // Refused at the top; `none` runs no stream workload.
        StreamEngine::None | StreamEngine::Unknown => {}
    }
    if spec.policies.network_policy.enabled {
        out.extend(network::network_policies(&ctx)?);
    }
    if let Some(b) = &spec.build {
        out.extend(build::build_jobs(&ctx, b)?);
    }
    out.sort_by_key(|c| c.kind);
    Ok(out)
}

/// What every builder needs to know about the stack.
pub(crate) struct StackCtx<'a> {
    pub stack: &'a RecommenderStack,
    pub name: String,
    pub namespace: String,
    owner: Option<Value>,
}

impl<'a> StackCtx<'a> {
    fn new(stack: &'a RecommenderStack) -> Result<Self, RenderError> {
        let name = stack.metadata.name.clone().ok_or(RenderError::MissingName)?;
        let namespace = stack.metadata.namespace.clone().ok_or(RenderError::MissingNamespace)?;
        if !labels::valid_stack_name(&name) {
            return Err(RenderError::InvalidField {
                field: "metadata.name",
                message: format!(
                    "{name:?} must be a DNS-1035 label of at most {} characters, so every name derived from it fits",
                    labels::MAX_STACK_NAME
                ),
            });
        }
        if stack.spec.stream.engine != StreamEngine::None && name.len() > labels::MAX_STREAMING_STACK_NAME {
            return Err(RenderError::InvalidField {
                field: "metadata.name",
                message: format!(
                    "{name:?}: a stream engine runs the StatefulSet {name}-stream, whose pods' controller-revision-hash label would pass 63 characters: use a name of at most {} characters, or stream.engine none",
                    labels::MAX_STREAMING_STACK_NAME
                ),
            });
        }
        // Objects read from the API server have a uid; a file passed to `render` may not, and
        // then children are printed without an owner reference.
        let owner = stack.metadata.uid.as_ref().map(|uid| {
            json!({
                "apiVersion": "recstack.io/v1alpha1",
                "kind": "RecommenderStack",
                "name": name,
                "uid": uid,
                "controller": true,
                "blockOwnerDeletion": true,
            })
        });
        Ok(Self {
            stack,
            name,
            namespace,
            owner,
        })
    }

    pub fn spec(&self) -> &recstack_crds::RecommenderStackSpec {
        &self.stack.spec
    }

    /// Metadata for a namespaced child.
    pub fn meta(&self, name: &str, component: Option<Component>) -> Value {
        let labels = match component {
            Some(c) => labels::component_labels(&self.name, c),
            None => labels::stack_labels(&self.name),
        };
        self.meta_labelled(name, labels)
    }

    /// Metadata for the offline build's objects (labelled `component: build`).
    pub fn build_meta(&self, name: &str) -> Value {
        self.meta_labelled(name, labels::build_labels(&self.name))
    }

    /// Metadata for the Flink engine's objects (labelled `component: flink`).
    pub fn flink_meta(&self, name: &str) -> Value {
        self.meta_labelled(name, labels::workload_labels(&self.name, labels::FLINK))
    }

    fn meta_labelled(&self, name: &str, labels: std::collections::BTreeMap<String, String>) -> Value {
        let mut meta = json!({ "name": name, "namespace": self.namespace, "labels": labels });
        if let Some(owner) = &self.owner {
            meta["ownerReferences"] = json!([owner]);
        }
        meta
    }

    /// In-cluster DNS name of a component's Service.
    pub fn service_host(&self, component: Component) -> String {
        format!(
            "{}.{}.svc",
            labels::component_name(&self.name, component),
            self.namespace
        )
    }
}

/// Turns a JSON template into a child, adding apiVersion and kind.
pub(crate) fn child(kind: ChildKind, mut body: Value) -> Result<Child, RenderError> {
    let ar = kind.api_resource();
    body["apiVersion"] = json!(ar.api_version);
    body["kind"] = json!(ar.kind);
    let object = serde_json::from_value(body).map_err(|source| RenderError::Build {
        kind: kind.kind(),
        source,
    })?;
    Ok(Child { kind, object })
}

/// Port of every component's HTTP server (API, `/metrics`, `/healthz`, `/readyz`).
pub const HTTP_PORT: u16 = 8080;
/// Port of every component's gRPC server.
pub const GRPC_PORT: u16 = 9090;

/// The access Secret the operator creates for a stack without `spec.access.secretRef`: random
/// `reader`, `admin`, `debug` and `pseudonym-key` values from `random` (called once per key).
/// `None` when the stack names its own Secret. Created once and never re-applied (a re-render
/// would draw new tokens), owned by the stack so it goes with it.
pub fn access_secret(
    stack: &RecommenderStack,
    mut random: impl FnMut() -> String,
) -> Result<Option<Value>, RenderError> {
    if stack.spec.access.secret_ref.is_some() {
        return Ok(None);
    }
    let ctx = StackCtx::new(stack)?;
    let name = stack.spec.access.secret_name(&ctx.name);
    let mut meta = ctx.meta(&name, None);
    meta["annotations"] = json!({
        "recstack.io/generated": "random tokens of the stack's trace access; replace them (keep the keys) to rotate, then restart the gateway, traces and dashboard pods",
    });
    Ok(Some(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
        "stringData": {
            "reader": random(),
            "admin": random(),
            "debug": random(),
            "pseudonym-key": random(),
        },
    })))
}
