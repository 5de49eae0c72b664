//! Deployment, Service, HorizontalPodAutoscaler and PodDisruptionBudget per component.

use recstack_crds::{AutoscalingSpec, Component, RecommenderStackSpec};
use serde_json::{Value, json};

use super::{Child, ChildKind, GRPC_PORT, HTTP_PORT, RenderError, StackCtx, child};
use crate::labels;

/// Where the gateway finds the Elasticsearch `username` and `password` files. Secrets are
/// mounted outside `/etc/recstack` (the ConfigMap's volume): a mount point inside another
/// read-only volume cannot be created.
pub const ES_CREDENTIALS_DIR: &str = "/var/run/secrets/recstack/elasticsearch";

/// Where the gateway, the trace query API and the dashboard find the access Secret's keys
/// (`reader`, `admin`, `debug`, `pseudonym-key`).
pub const ACCESS_DIR: &str = "/var/run/secrets/recstack/access";

/// Default (requests, limits) as ((cpu, memory), (cpu, memory)) per component: recall holds
/// its indexes in memory, ranking burns CPU on inference, rerank is light.
fn default_resources(component: Component) -> Value {
    let ((rc, rm), (lc, lm)) = match component {
        Component::Gateway => (("250m", "256Mi"), ("2", "1Gi")),
        Component::Recall => (("500m", "1Gi"), ("2", "4Gi")),
        Component::Ranking => (("1", "1Gi"), ("4", "4Gi")),
        Component::Rerank => (("100m", "128Mi"), ("1", "512Mi")),
        Component::Feature => (("250m", "512Mi"), ("2", "2Gi")),
        Component::Ingest => (("250m", "256Mi"), ("1", "1Gi")),
        Component::Stream => (("500m", "1Gi"), ("2", "2Gi")),
        Component::Traces => (("100m", "128Mi"), ("1", "512Mi")),
        Component::Dashboard => (("100m", "128Mi"), ("1", "512Mi")),
    };
    json!({ "requests": { "cpu": rc, "memory": rm }, "limits": { "cpu": lc, "memory": lm } })
}

/// The replica policy a component ends up with.
enum Scaling {
    Fixed(i32),
    Auto(AutoscalingSpec),
}

fn scaling(spec: &RecommenderStackSpec, component: Component) -> Scaling {
    let w = spec.workload(component);
    match (w.replicas, w.autoscaling) {
        (Some(n), _) => Scaling::Fixed(n),
        (None, Some(a)) => Scaling::Auto(a.clone()),
        (None, None) => Scaling::Auto(AutoscalingSpec::default()),
    }
}

/// Deployment, Service, HPA (when autoscaled) and PDB (when enabled) of an online component.
pub(super) fn online_component(
    ctx: &StackCtx,
    component: Component,
    config_hash: &str,
) -> Result<Vec<Child>, RenderError> {
    let spec = ctx.spec();
    let scaling = scaling(spec, component);
    let mut out = vec![
        deployment(ctx, component, &scaling, config_hash)?,
        service(ctx, component)?,
    ];
    if let Scaling::Auto(a) = &scaling {
        out.push(hpa(ctx, component, a)?);
    }
    if spec.policies.pod_disruption_budget.enabled {
        out.push(pdb(ctx, component)?);
    }
    Ok(out)
}

/// The Service in front of a component: `http`, and `grpc` where it serves gRPC. The services
/// other components call over gRPC are headless, so their clients resolve every ready pod and
/// balance their HTTP/2 calls across them (a ClusterIP would pin each long-lived connection to
/// one pod); the gateway, ingest and the dashboard's services keep a ClusterIP for apps,
/// Ingresses and load balancers.
fn service(ctx: &StackCtx, component: Component) -> Result<Child, RenderError> {
    let mut ports = vec![json!({ "name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP" })];
    if !http_only(component) {
        ports.push(json!({ "name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc" }));
    }
    let mut spec = json!({
        "type": "ClusterIP",
        "selector": labels::selector(&ctx.name, component),
        "ports": ports,
    });
    // Headless: gRPC callees (clients balance over every pod address) and the stream
    // StatefulSet's governing Service.
    if component == Component::Stream || recstack_crds::GRPC_CALLS.iter().any(|(_, callee)| *callee == component) {
        spec["clusterIP"] = json!("None");
    }
    child(
        ChildKind::Service,
        json!({
            "metadata": ctx.meta(&labels::component_name(&ctx.name, component), Some(component)),
            "spec": spec,
        }),
    )
}

/// Components without a gRPC server.
fn http_only(component: Component) -> bool {
    matches!(component, Component::Stream | Component::Traces | Component::Dashboard)
}

/// The trace query service and the dashboard (when `spec.dashboard` is set): a Deployment and
/// an HTTP Service each, and the dashboard's service account with read access to this stack.
pub(super) fn observability(ctx: &StackCtx, config_hash: &str) -> Result<Vec<Child>, RenderError> {
    let Some(d) = &ctx.spec().dashboard else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for component in Component::OBSERVABILITY {
        out.push(deployment(ctx, component, &Scaling::Fixed(d.replicas), config_hash)?);
        out.push(service(ctx, component)?);
    }
    // The dashboard reads this stack's status (conditions, components): `get` on this one
    // RecommenderStack and nothing else.
    let name = labels::component_name(&ctx.name, Component::Dashboard);
    let meta = ctx.meta(&name, Some(Component::Dashboard));
    out.push(child(
        ChildKind::ServiceAccount,
        json!({ "metadata": meta, "automountServiceAccountToken": false }),
    )?);
    out.push(child(
        ChildKind::Role,
        json!({
            "metadata": meta,
            "rules": [{
                "apiGroups": [recstack_crds::GROUP],
                "resources": ["recommenderstacks"],
                "resourceNames": [ctx.name],
                "verbs": ["get"],
            }],
        }),
    )?);
    out.push(child(
        ChildKind::RoleBinding,
        json!({
            "metadata": meta,
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name },
            "subjects": [{ "kind": "ServiceAccount", "name": name, "namespace": ctx.namespace }],
        }),
    )?);
    Ok(out)
}

/// The built-in stream worker: a StatefulSet of `stream.parallelism` replicas sharing the
/// event log's partitions, its headless Service (the StatefulSet's pod names and metrics
/// scraping) and its PDB.
pub(super) fn stream_worker(ctx: &StackCtx, config_hash: &str) -> Result<Vec<Child>, RenderError> {
    let mut out = vec![stream_stateful_set(ctx, config_hash)?, service(ctx, Component::Stream)?];
    if ctx.spec().policies.pod_disruption_budget.enabled {
        out.push(pdb(ctx, Component::Stream)?);
    }
    Ok(out)
}

/// Seconds a stopping pod stays serving while unready, then has to finish its work; the pod's
/// grace period covers both with room to spare.
const DRAIN_SECONDS: u64 = 5;
const SHUTDOWN_GRACE_SECONDS: u64 = 20;
const TERMINATION_GRACE_SECONDS: u64 = 30;
const _: () = assert!(DRAIN_SECONDS + SHUTDOWN_GRACE_SECONDS < TERMINATION_GRACE_SECONDS);
/// Where pods keep their copies of remote artifacts and models.
pub const CACHE_DIR: &str = "/var/lib/recstack/cache";

fn deployment(
    ctx: &StackCtx,
    component: Component,
    scaling: &Scaling,
    config_hash: &str,
) -> Result<Child, RenderError> {
    let (meta, template) = pod_template(ctx, component, config_hash)?;
    let mut deploy_spec = json!({
        "selector": { "matchLabels": labels::selector(&ctx.name, component) },
        "revisionHistoryLimit": 5,
        "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 0, "maxSurge": "25%" } },
        "template": template,
    });
    // With an HPA the replica count belongs to the autoscaler: leaving it out of the applied
    // object keeps server-side apply from resetting it on every reconcile.
    if let Scaling::Fixed(n) = scaling {
        deploy_spec["replicas"] = json!(n);
    }
    child(ChildKind::Deployment, json!({ "metadata": meta, "spec": deploy_spec }))
}

/// The StatefulSet label that holds a pod's ordinal (Kubernetes ≥ 1.28).
const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// The built-in stream job as a StatefulSet of `stream.parallelism` replicas: each pod's
/// ordinal says which partitions of the event log it reads (`p % replicas == ordinal`, see
/// `recstack_crds::assignment`), so the replicas share the log instead of each
/// reading all of it, and a replaced pod takes over exactly its predecessor's partitions.
fn stream_stateful_set(ctx: &StackCtx, config_hash: &str) -> Result<Child, RenderError> {
    let component = Component::Stream;
    let replicas = ctx.spec().stream.parallelism;
    let (meta, mut template) = pod_template(ctx, component, config_hash)?;
    if let Some(env) = template
        .pointer_mut("/spec/containers/0/env")
        .and_then(Value::as_array_mut)
    {
        env.push(json!({ "name": "RECSTACK_STREAM_REPLICAS", "value": replicas.to_string() }));
        env.push(json!({ "name": "RECSTACK_STREAM_REPLICA", "valueFrom": { "fieldRef": {
            "fieldPath": format!("metadata.labels['{POD_INDEX_LABEL}']"),
        } } }));
    }
    let spec = json!({
        "replicas": replicas,
        "selector": { "matchLabels": labels::selector(&ctx.name, component) },
        "serviceName": labels::component_name(&ctx.name, component),
        // Replicas are peers (no start order) and keep no volumes: start and replace them
        // all at once; a rollout replaces one at a time.
        "podManagementPolicy": "Parallel",
        "updateStrategy": { "type": "RollingUpdate" },
        "revisionHistoryLimit": 5,
        "template": template,
    });
    child(ChildKind::StatefulSet, json!({ "metadata": meta, "spec": spec }))
}

/// The metadata and pod template every component's workload shares.
fn pod_template(ctx: &StackCtx, component: Component, config_hash: &str) -> Result<(Value, Value), RenderError> {
    let spec = ctx.spec();
    let name = labels::component_name(&ctx.name, component);
    let mut pod_labels = labels::component_labels(&ctx.name, component);
    pod_labels.extend(labels::selector(&ctx.name, component));

    let resources = match spec.workload(component).resources {
        Some(r) => serde_json::to_value(r).map_err(|source| RenderError::Build {
            kind: "Deployment",
            source,
        })?,
        None => default_resources(component),
    };
    let mut container = json!({
        "name": component.name(),
        "image": spec.image_of(component),
        "imagePullPolicy": "IfNotPresent",
        "command": ["recstack"],
        "args": args(ctx, component),
        "env": [
            { "name": "RUST_LOG", "value": "info" },
            { "name": "RECSTACK_STACK", "value": ctx.name },
            { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
            // SIGTERM: unready at once, serve DRAIN more seconds while endpoints and clients'
            // resolvers drop the pod, then finish in-flight work within GRACE (the sum stays
            // under terminationGracePeriodSeconds).
            { "name": "RECSTACK_DRAIN_SECONDS", "value": DRAIN_SECONDS.to_string() },
            { "name": "RECSTACK_SHUTDOWN_GRACE_SECONDS", "value": SHUTDOWN_GRACE_SECONDS.to_string() },
            // Remote artifacts and models are copied here (the `data` volume).
            { "name": "RECSTACK_CACHE_DIR", "value": CACHE_DIR },
            // The async runtime's threads: the cores the pod requests (rounded up), not the
            // node's — a pod without a CPU limit would otherwise start a thread per node core.
            { "name": "RECSTACK_WORKER_THREADS", "valueFrom": { "resourceFieldRef": {
                "resource": "requests.cpu", "divisor": "1",
            } } },
        ],
        "ports": ports(component),
        "resources": resources,
        "readinessProbe": {
            "httpGet": { "path": "/readyz", "port": "http" },
            "periodSeconds": 5, "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": { "path": "/healthz", "port": "http" },
            "periodSeconds": 10, "failureThreshold": 6,
        },
        // Indexes and models load before the service reports ready; give them time.
        "startupProbe": {
            "httpGet": { "path": "/healthz", "port": "http" },
            "periodSeconds": 5, "failureThreshold": 60,
        },
        "securityContext": container_security(),
        "volumeMounts": [
            { "name": "config", "mountPath": "/etc/recstack", "readOnly": true },
            { "name": "tmp", "mountPath": "/tmp" },
            { "name": "data", "mountPath": "/var/lib/recstack" },
        ],
    });
    let mut pod_spec = json!({
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "securityContext": pod_security(),
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "containers": [],
        "volumes": [
            { "name": "config", "configMap": { "name": format!("{}-config", ctx.name) } },
            { "name": "tmp", "emptyDir": { "sizeLimit": "256Mi" } },
            { "name": "data", "emptyDir": { "sizeLimit": "8Gi" } },
        ],
        // Spread replicas over nodes so one node failure takes at most one of them.
        "affinity": { "podAntiAffinity": { "preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "podAffinityTerm": {
                "topologyKey": "kubernetes.io/hostname",
                "labelSelector": { "matchLabels": labels::selector(&ctx.name, component) },
            },
        }]}},
    });
    // Only the request and event paths are online; streaming and the dashboard can wait.
    let offline = matches!(component, Component::Stream | Component::Traces | Component::Dashboard);
    if let Some(class) = priority_class(spec, offline) {
        pod_spec["priorityClassName"] = json!(class);
    }
    if component == Component::Ranking
        && let Some(gpu) = &spec.ranking.gpu
    {
        container["resources"]["limits"]["nvidia.com/gpu"] = json!(gpu.count.to_string());
        container["env"].as_array_mut().into_iter().for_each(|env| {
            env.push(json!({ "name": "RECSTACK_RANKING_DEVICE", "value": "cuda" }));
        });
        if !gpu.node_selector.is_empty() {
            pod_spec["nodeSelector"] = json!(gpu.node_selector);
        }
        pod_spec["tolerations"] = match &gpu.tolerations {
            Some(t) => serde_json::to_value(t).map_err(|source| RenderError::Build {
                kind: "Deployment",
                source,
            })?,
            None => json!([{ "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" }]),
        };
    }
    // Trace-store credentials are mounted as files (not env vars, which leak into crash dumps
    // and `kubectl describe`); the gateway's trace writer reads them from ES_CREDENTIALS_DIR.
    if matches!(component, Component::Gateway | Component::Traces)
        && let Some(secret) = spec
            .trace_store
            .as_ref()
            .and_then(|t| t.credentials_secret_ref.as_ref())
    {
        if let Some(mounts) = container["volumeMounts"].as_array_mut() {
            mounts.push(json!({ "name": "es-credentials", "mountPath": ES_CREDENTIALS_DIR, "readOnly": true }));
        }
        if let Some(volumes) = pod_spec["volumes"].as_array_mut() {
            volumes.push(
                json!({ "name": "es-credentials", "secret": { "secretName": secret.name, "defaultMode": 0o440 } }),
            );
        }
    }
    // The access tokens: the gateway checks debug callers (and pseudonymises), the trace API
    // and the dashboard check readers and admins.
    if matches!(component, Component::Gateway | Component::Traces | Component::Dashboard) {
        if let Some(mounts) = container["volumeMounts"].as_array_mut() {
            mounts.push(json!({ "name": "access", "mountPath": ACCESS_DIR, "readOnly": true }));
        }
        if let Some(volumes) = pod_spec["volumes"].as_array_mut() {
            volumes.push(json!({ "name": "access", "secret": {
                "secretName": spec.access.secret_name(&ctx.name), "defaultMode": 0o440 } }));
        }
    }
    add_store_credentials(spec, &mut container, &mut pod_spec);
    if component == Component::Dashboard {
        // The one pod that talks to the Kubernetes API: its token, for its read-only Role.
        pod_spec["serviceAccountName"] = json!(name);
        pod_spec["automountServiceAccountToken"] = json!(true);
    }
    pod_spec["containers"] = json!([container]);
    let template = json!({
        "metadata": {
            "labels": pod_labels,
            "annotations": { labels::CONFIG_HASH: config_hash },
        },
        "spec": pod_spec,
    });
    let mut meta = ctx.meta(&name, Some(component));
    meta["annotations"] = image_checkov_skips();
    if component == Component::Dashboard {
        meta["annotations"]["checkov.io/skip3"] = json!(
            "CKV_K8S_38=the dashboard reads its stack's status through the API: a Role with get on that one object"
        );
    }
    Ok((meta, template))
}

/// The checkov skips every object that runs the stack's image carries, with their reasons.
pub(super) fn image_checkov_skips() -> Value {
    json!({
        "checkov.io/skip1": "CKV_K8S_43=the image comes from the RecommenderStack spec; pin a digest there",
        "checkov.io/skip2": "CKV_K8S_15=IfNotPresent with immutable tags avoids a registry round trip on every pod start",
    })
}

/// The container security context of every recstack pod: non-root, read-only root, no
/// privileges; writable paths are emptyDir volumes.
pub(super) fn container_security() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": { "drop": ["ALL"] },
        "seccompProfile": { "type": "RuntimeDefault" },
    })
}

pub(super) fn pod_security() -> Value {
    json!({
        "runAsNonRoot": true,
        "fsGroup": 65532,
        "seccompProfile": { "type": "RuntimeDefault" },
    })
}

/// The PriorityClass a pod gets, when the stack sets them.
pub(super) fn priority_class(spec: &RecommenderStackSpec, offline: bool) -> Option<&str> {
    let classes = &spec.policies.priority_classes;
    classes.enabled.then_some(if offline {
        classes.offline.as_str()
    } else {
        classes.online.as_str()
    })
}

/// Where the object store's Secret is mounted: one file per key, read by the services as
/// settings named like environment variables (`AWS_ACCESS_KEY_ID`, …).
pub const STORE_CREDENTIALS_DIR: &str = "/var/run/secrets/recstack/object-store";

/// The object store's settings and credentials: the Secret mounted as files (not env vars,
/// which leak into crash dumps and `kubectl describe`), and the variable naming the directory.
pub(super) fn add_store_credentials(spec: &RecommenderStackSpec, container: &mut Value, pod_spec: &mut Value) {
    let Some(secret) = &spec.artifacts.credentials_secret_ref else {
        return;
    };
    if let Some(env) = container["env"].as_array_mut() {
        env.push(json!({ "name": "RECSTACK_STORE_CREDENTIALS_DIR", "value": STORE_CREDENTIALS_DIR }));
    }
    if let Some(mounts) = container["volumeMounts"].as_array_mut() {
        mounts.push(json!({ "name": "store-credentials", "mountPath": STORE_CREDENTIALS_DIR, "readOnly": true }));
    }
    if let Some(volumes) = pod_spec["volumes"].as_array_mut() {
        volumes.push(
            json!({ "name": "store-credentials", "secret": { "secretName": secret.name, "defaultMode": 0o440 } }),
        );
    }
}

/// Where the image keeps the dashboard's browser build (`scripts/build-dashboard`).
pub const DASHBOARD_SITE: &str = "/usr/share/recstack/dashboard";

/// `recstack serve <component> …`: the runtime config for the services; the trace query API and
/// the dashboard take their addresses as flags.
fn args(ctx: &StackCtx, component: Component) -> Value {
    let config = "/etc/recstack/config.yaml";
    let listen = format!("0.0.0.0:{HTTP_PORT}");
    match component {
        Component::Traces => {
            let mut args = vec!["serve", "traces", "--config", config, "--http-addr", &listen];
            let has_secret = ctx
                .spec()
                .trace_store
                .as_ref()
                .is_some_and(|t| t.credentials_secret_ref.is_some());
            if has_secret {
                args.extend(["--trace-credentials-dir", ES_CREDENTIALS_DIR]);
            }
            json!(args)
        }
        Component::Dashboard => {
            let mut args = dashboard_args(ctx, &listen);
            if let Some(link) = ctx.spec().otlp.as_ref().and_then(|o| o.trace_link.as_ref()) {
                args.extend(["--trace-link".to_string(), link.clone()]);
            }
            json!(args)
        }
        _ => json!(["serve", component.name(), "--config", config]),
    }
}

/// `recstack serve dashboard …`: where the trace API and the gateway are, the stack it shows,
/// its browser build and the access tokens.
fn dashboard_args(ctx: &StackCtx, listen: &str) -> Vec<String> {
    let traces = format!("http://{}:{HTTP_PORT}", ctx.service_host(Component::Traces));
    let gateway = format!("http://{}:{HTTP_PORT}", ctx.service_host(Component::Gateway));
    [
        "serve",
        "dashboard",
        "--http-addr",
        listen,
        "--traces-url",
        &traces,
        "--stack",
        &ctx.name,
        "--namespace",
        &ctx.namespace,
        "--site",
        DASHBOARD_SITE,
        "--access-dir",
        ACCESS_DIR,
        "--gateway-url",
        &gateway,
    ]
    .into_iter()
    .map(str::to_string)
    .collect()
}

fn ports(component: Component) -> Value {
    let http = json!({ "name": "http", "containerPort": HTTP_PORT, "protocol": "TCP" });
    let grpc = json!({ "name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP" });
    if http_only(component) {
        json!([http])
    } else {
        json!([http, grpc])
    }
}

fn hpa(ctx: &StackCtx, component: Component, a: &AutoscalingSpec) -> Result<Child, RenderError> {
    let name = labels::component_name(&ctx.name, component);
    let mut metrics = Vec::new();
    if let Some(cpu) = a.target_cpu_utilization {
        metrics.push(json!({ "type": "Resource", "resource": {
            "name": "cpu", "target": { "type": "Utilization", "averageUtilization": cpu } } }));
    }
    if let Some(rps) = a.target_requests_per_second {
        metrics.push(json!({ "type": "Pods", "pods": {
            "metric": { "name": "recstack_requests_per_second" },
            "target": { "type": "AverageValue", "averageValue": rps.to_string() } } }));
    }
    child(
        ChildKind::HorizontalPodAutoscaler,
        json!({
            "metadata": ctx.meta(&name, Some(component)),
            "spec": {
                "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": name },
                "minReplicas": a.min_replicas,
                "maxReplicas": a.max_replicas,
                "metrics": metrics,
                // Scale up fast for traffic spikes, down slowly to avoid flapping.
                "behavior": {
                    "scaleUp": { "stabilizationWindowSeconds": 0,
                        "policies": [{ "type": "Percent", "value": 100, "periodSeconds": 15 }] },
                    "scaleDown": { "stabilizationWindowSeconds": 300,
                        "policies": [{ "type": "Percent", "value": 20, "periodSeconds": 60 }] },
                },
            },
        }),
    )
}

fn pdb(ctx: &StackCtx, component: Component) -> Result<Child, RenderError> {
    child(
        ChildKind::PodDisruptionBudget,
        json!({
            "metadata": ctx.meta(&labels::component_name(&ctx.name, component), Some(component)),
            "spec": {
                "maxUnavailable": ctx.spec().policies.pod_disruption_budget.max_unavailable,
                "selector": { "matchLabels": labels::selector(&ctx.name, component) },
                // Let evictions through for pods that never became ready (a bad rollout must
                // not block a node drain).
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
            },
        }),
    )
}
