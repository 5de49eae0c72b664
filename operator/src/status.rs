//! Status as a pure function of the stack, what is observed in the cluster, and the outcome of
//! this reconcile.
//!
//! Transition times only move when a condition's status flips, and a status equal to the one
//! stored is not written at all: status writes must not wake the controller again (the
//! "reconcile storm" operators are known for).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use recstack_crds::{
    BuildStatus, Component, ComponentStatus, Endpoints, RecommenderStack, RecommenderStackStatus, ReplicaAssignment,
    StreamEngine, StreamStatus, assignment,
};

use crate::labels;
use crate::render::{GRPC_PORT, HTTP_PORT};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const PAUSED: &str = "Paused";

/// One component's rollout as seen in the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The component's name (`Component::name`), or the Flink job's (`flink`).
    pub name: Option<&'static str>,
    /// Replicas wanted (the Deployment's `spec.replicas`, which an autoscaler moves).
    pub desired: i32,
    /// Pods passing their readiness probe, of any revision.
    pub ready: i32,
    /// Pods of the latest revision.
    pub updated: i32,
    /// Ready pods of any revision past `minReadySeconds`.
    pub available: i32,
    /// All pods, of any revision (old ones linger during a rollout).
    pub total: i32,
    /// The workload controller has seen the latest spec (`status.observedGeneration`).
    pub current: bool,
    /// Why the rollout cannot finish, when the workload says so (a Deployment past its
    /// `progressDeadlineSeconds`).
    pub stalled: Option<String>,
}

impl Observed {
    /// Done rolling out, as `kubectl rollout status` judges it: the latest spec observed,
    /// every wanted pod on it and available, no pod of an older revision left. Ready replicas
    /// alone are not enough: during a rollout whose new pods crash-loop, the old pods keep
    /// `readyReplicas` at the desired count.
    pub fn rolled_out(&self) -> bool {
        self.current
            && self.updated >= self.desired
            && self.total <= self.updated
            && self.available >= self.desired
            && self.ready >= self.desired
    }

    fn describe(&self, name: &str) -> String {
        let mut s = format!("{name} {}/{} ready", self.ready, self.desired);
        if !self.current {
            s.push_str(", new spec not yet observed");
        } else if self.updated < self.desired || self.total > self.updated {
            s.push_str(&format!(", {}/{} updated", self.updated, self.desired));
        }
        s
    }
}

/// The build Job's state from its status: Succeeded or Failed from its conditions (with the
/// failure's reason), Running while it has active pods, Pending before.
pub fn observe_build(job: &serde_json::Value) -> BuildStatus {
    let name = job["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let status = &job["status"];
    let condition = |type_: &str| {
        status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == type_ && c["status"] == "True")
    };
    let (state, message) = if let Some(c) = condition("Complete") {
        let at = status["completionTime"].as_str().or(c["lastTransitionTime"].as_str());
        (
            "Succeeded",
            at.map(|t| format!("published a new artifact version at {t}")),
        )
    } else if let Some(c) = condition("Failed") {
        let reason = c["reason"].as_str().unwrap_or("Failed");
        let detail = c["message"].as_str().unwrap_or_default();
        (
            "Failed",
            Some(format!("{reason}: {detail}").trim_end_matches([':', ' ']).to_string()),
        )
    } else if status["active"].as_i64().unwrap_or(0) > 0 {
        ("Running", None)
    } else {
        ("Pending", None)
    };
    BuildStatus {
        job: name,
        state: state.to_string(),
        message,
    }
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
    build: Option<BuildStatus>,
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
            o.name.map(|name| ComponentStatus {
                name: name.to_string(),
                desired_replicas: o.desired,
                ready_replicas: o.ready,
            })
        })
        .collect();
    let lagging: Vec<String> = observed
        .iter()
        .filter(|o| !o.rolled_out())
        .map(|o| o.describe(o.name.unwrap_or("component")))
        .collect();
    let stalled: Vec<String> = observed
        .iter()
        .filter_map(|o| {
            o.stalled
                .as_ref()
                .map(|why| format!("{}: {why}", o.name.unwrap_or("component")))
        })
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
    } else if !stalled.is_empty() {
        set(
            PROGRESSING,
            false,
            "ProgressDeadlineExceeded",
            format!("rollout stalled: {}", stalled.join("; ")),
        );
    } else {
        set(
            PROGRESSING,
            true,
            "RollingOut",
            format!("waiting for {}", lagging.join(", ")),
        );
    }
    // A failed build leaves the stack serving its last published artifacts: degraded, not down.
    let build_failed = build.as_ref().filter(|b| b.state == "Failed");
    match (failure, stalled.is_empty(), build_failed) {
        (Some(msg), _, _) => set(DEGRADED, true, "ReconcileFailed", msg.to_string()),
        (None, false, _) => set(
            DEGRADED,
            true,
            "RolloutStalled",
            format!("rollout stalled: {}", stalled.join("; ")),
        ),
        (None, true, Some(b)) => set(
            DEGRADED,
            true,
            "BuildFailed",
            format!(
                "the build Job {} failed ({}); the last published artifacts are served",
                b.job,
                b.message.as_deref().unwrap_or("no reason given")
            ),
        ),
        (None, true, None) => set(
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
    } else if failure.is_some() || !stalled.is_empty() || build_failed.is_some() {
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
        build,
        stream: stream_status(stack),
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

/// The stream StatefulSet's partition plan (on Kafka: of the event topic with engine builtin,
/// of the Flink job's aggregates topic, created with the same partitions, with engine flink).
fn stream_status(stack: &RecommenderStack) -> Option<StreamStatus> {
    let log = stack.spec.event_log.as_ref()?;
    if stack.spec.stream.engine == StreamEngine::None {
        return None;
    }
    let name = labels::component_name(&stack.name_any(), Component::Stream);
    // The CRD bounds both to at least 1.
    let partitions = log.partitions.max(1);
    let plan = assignment::plan(stack.spec.stream.parallelism.max(1) as u32, partitions as u32);
    Some(StreamStatus {
        partitions,
        assignment: plan
            .into_iter()
            .enumerate()
            .map(|(ordinal, parts)| ReplicaAssignment {
                replica: format!("{name}-{ordinal}"),
                partitions: parts.into_iter().map(|p| p as i32).collect(),
            })
            .collect(),
    })
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
    let num = |path: &str| {
        live.and_then(|l| l.pointer(path))
            .and_then(|v| v.as_i64())
            .map(|n| n as i32)
    };
    let desired = num("/spec/replicas").or(spec_replicas).unwrap_or_else(fallback);
    let Some(live) = live else {
        return Observed {
            name: Some(component.name()),
            desired,
            ..Observed::default()
        };
    };
    let generation = live.pointer("/metadata/generation").and_then(|v| v.as_i64());
    let observed_generation = live.pointer("/status/observedGeneration").and_then(|v| v.as_i64());
    let stalled = live
        .pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Progressing" && c["status"] == "False" && c["reason"] == "ProgressDeadlineExceeded")
        .map(|c| {
            c["message"]
                .as_str()
                .unwrap_or("progress deadline exceeded")
                .to_string()
        });
    Observed {
        name: Some(component.name()),
        desired,
        ready: num("/status/readyReplicas").unwrap_or(0),
        updated: num("/status/updatedReplicas").unwrap_or(0),
        available: num("/status/availableReplicas").unwrap_or(0),
        total: num("/status/replicas").unwrap_or(0),
        // An object with no generation (not from an API server) counts as observed.
        current: match (generation, observed_generation) {
            (Some(g), Some(o)) => o >= g,
            (Some(_), None) => false,
            (None, _) => true,
        },
        stalled,
    }
}

/// What a live FlinkDeployment says: one job (`flink` in `status.components`), ready when the
/// Flink operator reports it running.
pub fn observe_flink(live: Option<&serde_json::Value>) -> Observed {
    let running = live
        .and_then(|l| l.pointer("/status/jobStatus/state"))
        .and_then(|s| s.as_str())
        == Some("RUNNING");
    let n = i32::from(running);
    Observed {
        name: Some(crate::labels::FLINK),
        desired: 1,
        ready: n,
        updated: n,
        available: n,
        total: n,
        current: true,
        stalled: None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn stack() -> RecommenderStack {
        let mut s = RecommenderStack::new("s", Default::default());
        s.metadata.namespace = Some("n".into());
        s.metadata.generation = Some(4);
        s
    }

    fn deployment(status: serde_json::Value) -> Observed {
        let live = json!({"metadata": {"generation": 7}, "spec": {"replicas": 2}, "status": status});
        observe_deployment(Component::Recall, Some(2), Some(&live), &stack())
    }

    fn now() -> Time {
        Time(jiff::Timestamp::from_second(1_800_000_000).unwrap())
    }

    fn condition<'a>(status: &'a RecommenderStackStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_finished_rollout_is_rolled_out() {
        let o = deployment(json!({"observedGeneration": 7, "replicas": 2, "updatedReplicas": 2,
            "readyReplicas": 2, "availableReplicas": 2}));
        assert!(o.rolled_out());
    }

    #[test]
    fn ready_replicas_alone_are_not_a_rollout() {
        // New pods crash-loop; the old ones keep readyReplicas at the desired count.
        let crash_looping = deployment(json!({"observedGeneration": 7, "replicas": 3, "updatedReplicas": 1,
            "readyReplicas": 2, "availableReplicas": 2}));
        assert!(!crash_looping.rolled_out());
        // Every pod updated but the old one not yet gone.
        let old_left = deployment(json!({"observedGeneration": 7, "replicas": 3, "updatedReplicas": 2,
            "readyReplicas": 3, "availableReplicas": 3}));
        assert!(!old_left.rolled_out());
        // The Deployment controller has not seen the new spec yet: its status is about the old.
        let stale = deployment(json!({"observedGeneration": 6, "replicas": 2, "updatedReplicas": 2,
            "readyReplicas": 2, "availableReplicas": 2}));
        assert!(!stale.rolled_out());
        // Ready but not yet available (minReadySeconds).
        let unavailable = deployment(json!({"observedGeneration": 7, "replicas": 2, "updatedReplicas": 2,
            "readyReplicas": 2, "availableReplicas": 1}));
        assert!(!unavailable.rolled_out());
        let missing = observe_deployment(Component::Recall, Some(2), None, &stack());
        assert!(!missing.rolled_out());
        assert_eq!(missing.desired, 2);
    }

    #[test]
    fn a_crash_looping_rollout_reads_not_ready_and_progressing() {
        let o = deployment(json!({"observedGeneration": 7, "replicas": 3, "updatedReplicas": 1,
            "readyReplicas": 2, "availableReplicas": 2}));
        let status = desired_status(&stack(), &[o], &Outcome::Applied, None, &now());
        let ready = condition(&status, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "ComponentsNotReady")
        );
        assert!(
            ready.message.contains("recall 2/2 ready, 1/2 updated"),
            "{}",
            ready.message
        );
        assert_eq!(condition(&status, PROGRESSING).status, "True");
        assert_eq!(condition(&status, DEGRADED).status, "False");
        assert_eq!(status.phase.as_deref(), Some("Progressing"));
        assert_eq!(ready.observed_generation, Some(4));
    }

    #[test]
    fn a_rollout_past_its_deadline_is_degraded() {
        let o = deployment(json!({"observedGeneration": 7, "replicas": 3, "updatedReplicas": 1,
            "readyReplicas": 2, "availableReplicas": 2,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                "message": "ReplicaSet \"s-recall-7d9\" has timed out progressing."}]}));
        assert!(o.stalled.is_some());
        let status = desired_status(&stack(), &[o], &Outcome::Applied, None, &now());
        let degraded = condition(&status, DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "RolloutStalled")
        );
        assert!(degraded.message.contains("recall: ReplicaSet"), "{}", degraded.message);
        let progressing = condition(&status, PROGRESSING);
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_str()),
            ("False", "ProgressDeadlineExceeded")
        );
        assert_eq!(condition(&status, READY).status, "False");
        assert_eq!(status.phase.as_deref(), Some("Degraded"));
    }

    #[test]
    fn a_failed_build_is_degraded_while_the_components_stay_ready() {
        let o = deployment(json!({"observedGeneration": 7, "replicas": 2, "updatedReplicas": 2,
            "readyReplicas": 2, "availableReplicas": 2}));
        let failed = BuildStatus {
            job: "s-build-0abcd".into(),
            state: "Failed".into(),
            message: Some("BackoffLimitExceeded: Job has reached the specified backoff limit".into()),
        };
        let status = desired_status(
            &stack(),
            std::slice::from_ref(&o),
            &Outcome::Applied,
            Some(failed.clone()),
            &now(),
        );
        let degraded = condition(&status, DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "BuildFailed")
        );
        assert!(
            degraded.message.contains("s-build-0abcd failed (BackoffLimitExceeded"),
            "{}",
            degraded.message
        );
        assert_eq!(condition(&status, READY).status, "True");
        assert_eq!(status.phase.as_deref(), Some("Degraded"));
        assert_eq!(status.build, Some(failed));
        // A running or finished build is not.
        for state in ["Pending", "Running", "Succeeded"] {
            let build = BuildStatus {
                state: state.into(),
                ..BuildStatus::default()
            };
            let status = desired_status(
                &stack(),
                std::slice::from_ref(&o),
                &Outcome::Applied,
                Some(build),
                &now(),
            );
            assert_eq!(condition(&status, DEGRADED).status, "False", "{state}");
            assert_eq!(status.phase.as_deref(), Some("Running"), "{state}");
        }
    }

    #[test]
    fn the_build_job_state_comes_from_its_status() {
        let job = |status: serde_json::Value| json!({ "metadata": { "name": "s-build-0abcd" }, "status": status });
        let state = |status| observe_build(&job(status));
        assert_eq!(state(json!({})).state, "Pending");
        assert_eq!(state(json!({ "active": 1 })).state, "Running");
        let done = state(json!({
            "completionTime": "2026-12-03T03:00:00Z",
            "conditions": [
                { "type": "SuccessCriteriaMet", "status": "True" },
                { "type": "Complete", "status": "True", "lastTransitionTime": "2026-12-03T03:00:01Z" },
            ],
        }));
        assert_eq!(done.job, "s-build-0abcd");
        assert_eq!(done.state, "Succeeded");
        assert_eq!(
            done.message.as_deref(),
            Some("published a new artifact version at 2026-12-03T03:00:00Z")
        );
        let failed = state(json!({
            "failed": 3,
            "conditions": [
                { "type": "Complete", "status": "False" },
                { "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                  "message": "Job has reached the specified backoff limit" },
            ],
        }));
        assert_eq!(failed.state, "Failed");
        assert_eq!(
            failed.message.as_deref(),
            Some("BackoffLimitExceeded: Job has reached the specified backoff limit")
        );
        let deadline = state(json!({
            "conditions": [{ "type": "Failed", "status": "True", "reason": "DeadlineExceeded" }],
        }));
        assert_eq!(deadline.message.as_deref(), Some("DeadlineExceeded"));
    }
}
