//! Status as a pure function of the stack, what is observed in the cluster, and the outcome of
//! this reconcile.
//!
//! Transition times only move when a condition's status flips, and a status equal to the one
//! stored is not written at all: status writes must not wake the controller again (the
//! "reconcile storm" operators are known for).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use recstack_crds::{Component, ComponentStatus, Endpoints, RecommenderStack, RecommenderStackStatus};

use crate::labels;
use crate::render::{GRPC_PORT, HTTP_PORT};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const PAUSED: &str = "Paused";

/// Replicas of one component as seen in the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub component: Option<Component>,
    pub desired: i32,
    pub ready: i32,
}

/// How the apply phase of this reconcile went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything desired is applied (or nothing needed applying).
    Applied,
    /// `spec.paused`: nothing was changed.
    Paused,
    /// Applying failed; the message says which object and why.
    Failed(String),
}

/// The status the stack should have now.
pub fn desired_status(
    stack: &RecommenderStack,
    observed: &[Observed],
    outcome: &Outcome,
    now: &Time,
) -> RecommenderStackStatus {
    let generation = stack.metadata.generation;
    let old = stack
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();

    let components: Vec<ComponentStatus> = observed
        .iter()
        .filter_map(|o| {
            o.component.map(|c| ComponentStatus {
                name: c.name().to_string(),
                desired_replicas: o.desired,
                ready_replicas: o.ready,
            })
        })
        .collect();
    let lagging: Vec<String> = components
        .iter()
        .filter(|c| c.ready_replicas < c.desired_replicas)
        .map(|c| format!("{} {}/{}", c.name, c.ready_replicas, c.desired_replicas))
        .collect();
    let all_ready = lagging.is_empty();
    let paused = matches!(outcome, Outcome::Paused);
    let failure = match outcome {
        Outcome::Failed(msg) => Some(msg.as_str()),
        _ => None,
    };

    let mut conditions = Vec::with_capacity(4);
    let mut set = |type_: &str, status: bool, reason: &str, message: String| {
        conditions.push(condition(old, type_, status, reason, message, generation, now));
    };
    if all_ready && failure.is_none() {
        set(
            READY,
            true,
            "AllComponentsReady",
            "every component has its desired ready replicas".into(),
        );
    } else if all_ready {
        set(
            READY,
            false,
            "ReconcileFailed",
            "the last reconcile failed; see the Degraded condition".into(),
        );
    } else {
        set(
            READY,
            false,
            "ComponentsNotReady",
            format!("not ready: {}", lagging.join(", ")),
        );
    }
    if all_ready {
        set(PROGRESSING, false, "Stable", "no rollout in progress".into());
    } else {
        set(
            PROGRESSING,
            true,
            "RollingOut",
            format!("waiting for {}", lagging.join(", ")),
        );
    }
    match failure {
        Some(msg) => set(DEGRADED, true, "ReconcileFailed", msg.to_string()),
        None => set(
            DEGRADED,
            false,
            "AsExpected",
            "the last reconcile applied every object".into(),
        ),
    }
    if paused {
        set(
            PAUSED,
            true,
            "ReconciliationPaused",
            "spec.paused is true: objects are not being changed".into(),
        );
    } else {
        set(
            PAUSED,
            false,
            "Reconciling",
            "changes to the spec are being applied".into(),
        );
    }

    let phase = if paused {
        "Paused"
    } else if failure.is_some() {
        "Degraded"
    } else if all_ready {
        "Running"
    } else {
        "Progressing"
    };

    RecommenderStackStatus {
        observed_generation: generation,
        phase: Some(phase.to_string()),
        conditions,
        components,
        endpoints: stack
            .metadata
            .name
            .as_deref()
            .zip(stack.metadata.namespace.as_deref())
            .map(|(name, ns)| endpoints(ns, name)),
    }
}

/// A condition that keeps the old transition time when its status did not change.
fn condition(
    old: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

fn endpoints(namespace: &str, stack: &str) -> Endpoints {
    let host = |c: Component| format!("{}.{namespace}.svc", labels::component_name(stack, c));
    Endpoints {
        gateway_http: format!("http://{}:{HTTP_PORT}", host(Component::Gateway)),
        gateway_grpc: format!("{}:{GRPC_PORT}", host(Component::Gateway)),
        ingest_http: format!("http://{}:{HTTP_PORT}", host(Component::Ingest)),
    }
}

/// What a live Deployment says about its component (`None` when it does not exist yet).
pub fn observe_deployment(
    component: Component,
    spec_replicas: Option<i32>,
    live: Option<&serde_json::Value>,
    stack: &RecommenderStack,
) -> Observed {
    let fallback = || {
        let w = stack.spec.workload(component);
        w.replicas.or(w.autoscaling.map(|a| a.min_replicas)).unwrap_or(2)
    };
    let num = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_i64()).map(|n| n as i32);
    let desired = num(live.and_then(|l| l.pointer("/spec/replicas")))
        .or(spec_replicas)
        .unwrap_or_else(fallback);
    let ready = num(live.and_then(|l| l.pointer("/status/readyReplicas"))).unwrap_or(0);
    Observed {
        component: Some(component),
        desired,
        ready,
    }
}

/// What a live FlinkDeployment says: one job, ready when the Flink operator reports it running.
pub fn observe_flink(live: Option<&serde_json::Value>) -> Observed {
    let running = live
        .and_then(|l| l.pointer("/status/jobStatus/state"))
        .and_then(|s| s.as_str())
        == Some("RUNNING");
    Observed {
        component: Some(Component::Stream),
        desired: 1,
        ready: i32::from(running),
    }
}
