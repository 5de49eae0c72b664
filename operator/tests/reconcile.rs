//! Reconcile scenarios against the in-memory API (`mock_api`): every request the operator
//! makes is recorded, so each scenario asserts on exactly what was written.

mod common;

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use recstack_crds::{RecommenderStack, StreamEngine};
use recstack_operator::metrics::Metrics;
use recstack_operator::mock_api::{Call, MockApi};
use recstack_operator::reconcile::{self, Context, backoff};
use recstack_operator::render::ChildKind;
use serde::Deserialize as _;
use serde_json::{Value, json};

const STACKS: &str = "/apis/recstack.io/v1alpha1/namespaces/recstack/recommenderstacks";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/recstack/deployments";
const STATEFULSETS: &str = "/apis/apps/v1/namespaces/recstack/statefulsets";
const PDBS: &str = "/apis/policy/v1/namespaces/recstack/poddisruptionbudgets";
const FLINK: &str = "/apis/flink.apache.org/v1beta1/namespaces/recstack/flinkdeployments";
const CONFIGMAPS: &str = "/api/v1/namespaces/recstack/configmaps";
const SERVICES: &str = "/api/v1/namespaces/recstack/services";
const PRIORITY: &str = "/apis/scheduling.k8s.io/v1/priorityclasses";

fn fixed_clock() -> Time {
    Time(jiff::Timestamp::from_second(1_800_000_000).unwrap())
}

/// A mock API holding one stack, and a context wired to it.
struct Harness {
    api: MockApi,
    ctx: Arc<Context>,
    name: String,
}

impl Harness {
    fn new(sample: &str) -> Self {
        let (client, api) = MockApi::start();
        let ctx =
            Arc::new(Context::new(client, Arc::new(Metrics::default()), Some("test".into())).with_clock(fixed_clock));
        let stack = common::sample(sample);
        let name = stack.metadata.name.clone().unwrap();
        let mut value = serde_json::to_value(&stack).unwrap();
        value["metadata"]["uid"] = json!("stack-uid");
        value["metadata"]["generation"] = json!(1);
        api.put(STACKS, &name, value);
        Harness { api, ctx, name }
    }

    /// A stack as after `kubectl apply` and the first two reconciles: the first adds the
    /// finalizer (the watch then triggers the second), the second creates the children.
    async fn created(sample: &str) -> Self {
        let h = Self::new(sample);
        h.reconcile_ok().await;
        h.reconcile_ok().await;
        h
    }

    fn stack(&self) -> RecommenderStack {
        serde_json::from_value(self.api.get(STACKS, &self.name).expect("stack exists")).unwrap()
    }

    /// Changes the stored spec the way `kubectl apply` would (bumping the generation).
    fn edit_spec(&self, f: impl FnOnce(&mut RecommenderStack)) {
        let mut stack = self.stack();
        f(&mut stack);
        let spec = serde_json::to_value(&stack.spec).unwrap();
        self.api.edit(STACKS, &self.name, |o| {
            o["spec"] = spec;
            let g = o["metadata"]["generation"].as_i64().unwrap();
            o["metadata"]["generation"] = json!(g + 1);
        });
    }

    async fn reconcile(&self) -> Result<Action, reconcile::Error> {
        reconcile::reconcile(Arc::new(self.stack()), self.ctx.clone()).await
    }

    /// Reconciles and returns the writes it made.
    async fn reconcile_ok(&self) -> Vec<Call> {
        self.api.clear_calls();
        self.reconcile().await.expect("reconcile succeeds");
        self.api.writes()
    }

    /// Reconciles with the server refusing the next dry run of `method` on a path holding
    /// `path`, and checks that the pass then wrote nothing but the stack's status. Returns the
    /// error and every object request made (dry runs marked).
    async fn reconcile_refused(
        &self,
        method: Method,
        path: &str,
        code: u16,
        message: &str,
    ) -> (reconcile::Error, Vec<String>) {
        self.api.fail_dry_run(method, path, code, message, 1);
        self.api.clear_calls();
        let err = self.reconcile().await.expect_err("the dry run was refused");
        (err, self.only_status_written())
    }

    /// Checks that the last pass wrote nothing but the stack's status; returns every object
    /// request it made (dry runs marked).
    fn only_status_written(&self) -> Vec<String> {
        let requests = object_requests(&self.api.calls());
        let written: Vec<&String> = requests.iter().filter(|r| !r.ends_with("(dry run)")).collect();
        assert_eq!(
            written,
            [&format!("PATCH recommenderstacks/{}/status", self.name)],
            "only the stack's status was written: {requests:#?}"
        );
        requests
    }

    /// Checks that a new stack was left unmade: none of its objects, not its access Secret,
    /// and `Degraded`.
    fn assert_unmade(&self) {
        for collection in [DEPLOYMENTS, SERVICES, CONFIGMAPS, NETWORK_POLICIES, PDBS] {
            assert!(
                self.api.names(collection).is_empty(),
                "{collection}: {:?}",
                self.api.names(collection)
            );
        }
        let secret = format!("{}-access", self.name);
        assert!(self.api.get("/api/v1/namespaces/recstack/secrets", &secret).is_none());
        assert_eq!(self.phase(), "Degraded");
    }

    /// Every object of `collections`, in a fixed order.
    fn objects(&self, collections: &[&str]) -> Vec<Value> {
        collections
            .iter()
            .flat_map(|c| self.api.names(c).into_iter().map(|n| self.api.get(c, &n).unwrap()))
            .collect()
    }

    fn condition(&self, type_: &str) -> Value {
        let stack = self.api.get(STACKS, &self.name).unwrap();
        stack["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
            .unwrap_or_else(|| panic!("no {type_} condition in {}", stack["status"]))
    }

    fn phase(&self) -> String {
        self.api.get(STACKS, &self.name).unwrap()["status"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

fn summaries(calls: &[Call]) -> Vec<String> {
    calls.iter().map(Call::summary).collect()
}

fn applies(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| {
            c.method == Method::PATCH
                && c.content_type
                    .as_deref()
                    .is_some_and(|t| t.starts_with("application/apply-patch"))
        })
        .map(Call::summary)
        .collect()
}

fn events(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.path.contains("/events"))
        .filter_map(|c| c.body.as_ref().and_then(|b| b["reason"].as_str()).map(String::from))
        .collect()
}

#[tokio::test]
async fn create_applies_every_child_adds_the_finalizer_and_reports_status() {
    let h = Harness::new("minimal");
    let writes = h.reconcile_ok().await;
    assert_eq!(
        summaries(&writes),
        ["PATCH recommenderstacks/minimal"],
        "first the finalizer, nothing else"
    );
    assert_eq!(writes[0].content_type.as_deref(), Some("application/json-patch+json"));
    let writes = h.reconcile_ok().await;

    let stack = h.stack();
    assert_eq!(
        stack.metadata.finalizers.as_deref(),
        Some(&["recstack.io/cleanup".to_string()][..])
    );
    let expected = recstack_operator::render::render(&stack).unwrap().len();
    assert_eq!(applies(&writes).len(), expected, "{:#?}", summaries(&writes));
    assert_eq!(
        events(&writes),
        ["AccessSecretCreated", "Created"],
        "one Event for the access Secret, one for the whole create, not one per object"
    );
    // The access Secret: created (not applied) once, with four distinct random values.
    let creates: Vec<String> = writes
        .iter()
        .filter(|c| c.method == Method::POST && c.path.ends_with("/secrets"))
        .map(Call::summary)
        .collect();
    assert_eq!(creates.len(), 1, "{:#?}", summaries(&writes));
    let secret = h
        .api
        .get("/api/v1/namespaces/recstack/secrets", "minimal-access")
        .expect("access Secret");
    assert_eq!(secret["metadata"]["ownerReferences"][0]["uid"], "stack-uid");
    let data = secret["stringData"].as_object().unwrap();
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(keys, ["admin", "debug", "pseudonym-key", "reader"]);
    let values: std::collections::BTreeSet<&str> = data.values().filter_map(Value::as_str).collect();
    assert_eq!(values.len(), 4, "distinct tokens");
    assert!(
        values
            .iter()
            .all(|v| v.len() == 32 && v.chars().all(|c| c.is_ascii_alphanumeric()))
    );
    let note = writes
        .iter()
        .filter(|c| c.path.contains("/events"))
        .filter_map(|c| c.body.as_ref())
        .find(|b| b["reason"] == "Created")
        .and_then(|b| b["note"].as_str().map(String::from))
        .unwrap();
    assert!(note.starts_with(&format!("{expected} objects created: ")), "{note}");
    assert!(note.len() <= 1024, "within the API's limit: {}", note.len());

    let gateway = h.api.get(DEPLOYMENTS, "minimal-gateway").expect("gateway deployment");
    assert_eq!(
        gateway["spec"]["template"]["spec"]["containers"][0]["args"][1],
        "gateway"
    );
    assert_eq!(gateway["metadata"]["ownerReferences"][0]["uid"], "stack-uid");
    assert!(gateway["metadata"]["annotations"]["recstack.io/applied-hash"].is_string());
    assert_eq!(
        gateway["spec"]["template"]["spec"]["priorityClassName"], "recstack-online",
        "the install's class, not one of the stack's own"
    );
    assert!(
        h.api.names(PRIORITY).is_empty(),
        "the operator creates no PriorityClass"
    );

    // Nothing is ready yet: progressing, not degraded.
    assert_eq!(h.phase(), "Progressing");
    assert_eq!(h.condition("Ready")["status"], "False");
    assert!(
        h.condition("Ready")["message"]
            .as_str()
            .unwrap()
            .contains("gateway 0/2")
    );
    assert_eq!(h.condition("Progressing")["status"], "True");
    assert_eq!(h.condition("Degraded")["status"], "False");
    assert_eq!(h.condition("Paused")["status"], "False");
    let status = h.stack().status.unwrap();
    assert_eq!(status.observed_generation, Some(1));
    // The minimal stack runs no stream job.
    assert_eq!(status.components.len(), 6);
    assert_eq!(
        status.endpoints.unwrap().gateway_http,
        "http://minimal-gateway.recstack.svc:8080"
    );
}

#[tokio::test]
async fn nothing_changed_means_no_write() {
    let h = Harness::created("minimal").await;
    let writes = h.reconcile_ok().await;
    assert!(writes.is_empty(), "a no-op reconcile wrote: {:#?}", summaries(&writes));
    assert!(h.api.calls().iter().all(|c| c.method == Method::GET), "only reads");
    let writes = h.reconcile_ok().await;
    assert!(
        writes.is_empty(),
        "still silent on the third pass: {:#?}",
        summaries(&writes)
    );
}

#[tokio::test]
async fn readiness_flips_ready_and_keeps_other_transition_times() {
    let h = Harness::created("minimal").await;
    let degraded_since = h.condition("Degraded")["lastTransitionTime"].clone();
    let settling = h.reconcile().await.unwrap();
    assert_eq!(
        settling,
        Action::requeue(Duration::from_secs(30)),
        "poll while settling"
    );
    h.api.make_deployments_ready();
    let writes = h.reconcile_ok().await;
    assert_eq!(
        summaries(&writes),
        ["PATCH recommenderstacks/minimal/status"],
        "only status changes"
    );
    let settled = h.reconcile().await.unwrap();
    assert_eq!(
        settled,
        Action::requeue(Duration::from_secs(300)),
        "resync when settled"
    );
    assert_eq!(h.phase(), "Running");
    assert_eq!(h.condition("Ready")["status"], "True");
    assert_eq!(h.condition("Progressing")["status"], "False");
    assert_eq!(h.condition("Degraded")["lastTransitionTime"], degraded_since);
    assert!(h.reconcile_ok().await.is_empty());
}

#[tokio::test]
async fn spec_change_updates_only_what_changed() {
    let h = Harness::created("minimal").await;
    h.edit_spec(|s| s.spec.rerank.image = Some("registry.example/recstack:canary".into()));
    let writes = h.reconcile_ok().await;
    assert_eq!(applies(&writes), ["PATCH deployments/minimal-rerank"]);
    assert_eq!(events(&writes), ["Updated"]);
    let rerank = h.api.get(DEPLOYMENTS, "minimal-rerank").unwrap();
    assert_eq!(
        rerank["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/recstack:canary"
    );
    assert_eq!(h.stack().status.unwrap().observed_generation, Some(2));
}

#[tokio::test]
async fn scale_changes_replicas() {
    let h = Harness::created("minimal").await;
    h.edit_spec(|s| s.spec.recall.replicas = Some(5));
    let writes = h.reconcile_ok().await;
    assert_eq!(applies(&writes), ["PATCH deployments/minimal-recall"]);
    assert_eq!(h.api.get(DEPLOYMENTS, "minimal-recall").unwrap()["spec"]["replicas"], 5);
    let recall = h
        .stack()
        .status
        .unwrap()
        .components
        .into_iter()
        .find(|c| c.name == "recall")
        .unwrap();
    assert_eq!((recall.desired_replicas, recall.ready_replicas), (5, 0));
}

const NETWORK_POLICIES: &str = "/apis/networking.k8s.io/v1/namespaces/recstack/networkpolicies";

#[tokio::test]
async fn engine_builtin_to_flink_adds_the_job_and_none_prunes_both() {
    let h = Harness::created("gpu-ranking").await;
    assert!(h.api.get(STATEFULSETS, "gpu-stream").is_some());
    h.edit_spec(|s| {
        s.spec.event_log = Some(recstack_crds::EventLogSpec::new(vec!["kafka:9092".into()], "ev"));
        s.spec.stream.engine = StreamEngine::Flink;
    });
    let writes = h.reconcile_ok().await;
    let w = summaries(&writes);
    // The StatefulSet stays: it now applies the job's output to the feature store.
    assert!(!w.iter().any(|w| w.starts_with("DELETE")), "{w:#?}");
    assert!(h.api.get(STATEFULSETS, "gpu-stream").is_some());
    let config = h.api.get(CONFIGMAPS, "gpu-config").expect("runtime config");
    let runtime: recstack_crds::runtime::RuntimeConfig =
        serde_yaml::from_str(config["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(
        runtime.stream.engine,
        StreamEngine::Flink,
        "the stream pods apply the job's output"
    );
    let flink = h.api.get(FLINK, "gpu-flink").expect("FlinkDeployment created");
    assert_eq!(flink["spec"]["job"]["parallelism"], 2);
    // Its pods are not the stream component's: the StatefulSet's selector must not match them.
    let pod_labels = &flink["spec"]["podTemplate"]["metadata"]["labels"];
    assert_eq!(pod_labels["app.kubernetes.io/component"], "flink");
    assert!(h.api.get(CONFIGMAPS, "gpu-flink-sql").is_some());
    assert!(h.api.get(NETWORK_POLICIES, "gpu-flink").is_some());
    // The Flink job reports RUNNING through the Flink operator's status.
    h.api.edit(FLINK, "gpu-flink", |o| {
        o["status"] = json!({ "jobStatus": { "state": "RUNNING" } })
    });
    h.api.make_deployments_ready();
    h.reconcile_ok().await;
    assert_eq!(h.phase(), "Running");
    let status = h.stack().status.unwrap();
    let names: Vec<&str> = status.components.iter().map(|c| c.name.as_str()).collect();
    assert!(names.contains(&"stream") && names.contains(&"flink"), "{names:?}");
    assert_eq!(
        status
            .stream
            .expect("the StatefulSet's partition plan")
            .assignment
            .len(),
        2
    );

    // No engine: the StatefulSet and the job go.
    h.edit_spec(|s| s.spec.stream.engine = StreamEngine::None);
    let writes = h.reconcile_ok().await;
    let w = summaries(&writes);
    for gone in [
        "DELETE statefulsets/gpu-stream",
        "DELETE poddisruptionbudgets/gpu-stream",
        "DELETE services/gpu-stream",
        "DELETE flinkdeployments/gpu-flink",
        "DELETE configmaps/gpu-flink-sql",
        "DELETE networkpolicies/gpu-flink",
    ] {
        assert!(w.contains(&gone.to_string()), "{gone}: {w:#?}");
    }
    assert!(h.api.get(STATEFULSETS, "gpu-stream").is_none());
    assert!(h.api.get(PDBS, "gpu-stream").is_none());
    assert!(events(&writes).contains(&"Pruned".to_string()));
}

#[tokio::test]
async fn missing_flink_operator_is_degraded_with_a_clear_message() {
    let h = Harness::new("flink-streaming");
    h.api.without_resource("flinkdeployments");
    h.reconcile_ok().await; // adds the finalizer
    let err = h
        .reconcile()
        .await
        .expect_err("cannot create a FlinkDeployment without its CRD");
    assert!(err.to_string().contains("FlinkDeployment"), "{err}");
    assert_eq!(h.phase(), "Degraded");
    let degraded = h.condition("Degraded");
    assert_eq!(degraded["status"], "True");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("applying FlinkDeployment flink-flink"),
        "{degraded}"
    );
}

#[tokio::test]
async fn pause_stops_changes_but_keeps_status() {
    let h = Harness::created("minimal").await;
    h.edit_spec(|s| {
        s.spec.paused = true;
        s.spec.recall.replicas = Some(9);
    });
    let writes = h.reconcile_ok().await;
    assert_eq!(
        summaries(&writes),
        ["PATCH recommenderstacks/minimal/status"],
        "only status while paused"
    );
    assert_eq!(
        h.api.get(DEPLOYMENTS, "minimal-recall").unwrap()["spec"]["replicas"],
        2,
        "not scaled while paused"
    );
    assert_eq!(h.phase(), "Paused");
    assert_eq!(h.condition("Paused")["status"], "True");
    // Removing a child while paused is not repaired either.
    h.edit_spec(|s| s.spec.paused = false);
    let writes = h.reconcile_ok().await;
    assert_eq!(applies(&writes), ["PATCH deployments/minimal-recall"]);
    assert_eq!(h.api.get(DEPLOYMENTS, "minimal-recall").unwrap()["spec"]["replicas"], 9);
    assert_eq!(h.condition("Paused")["status"], "False");
}

#[tokio::test]
async fn deletion_removes_legacy_priority_classes_then_the_finalizer() {
    let h = Harness::created("minimal").await;
    // What operators before 0.2 created per stack, and another stack's, which must stay.
    for (name, stack, ns) in [
        ("recstack-recstack-minimal-online", "minimal", "recstack"),
        ("recstack-recstack-minimal-offline", "minimal", "recstack"),
        ("recstack-other-minimal-online", "minimal", "other"),
    ] {
        h.api.put(
            PRIORITY,
            name,
            json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "value": 1000,
                "metadata": {"name": name, "labels": {
                    "app.kubernetes.io/managed-by": "recstack-operator",
                    "recstack.io/stack": stack, "recstack.io/stack-namespace": ns}}}),
        );
    }
    // kubectl delete: the finalizer holds the object with a deletionTimestamp.
    h.api.edit(STACKS, "minimal", |o| {
        o["metadata"]["deletionTimestamp"] = json!("2026-01-02T00:00:00Z")
    });
    let writes = h.reconcile_ok().await;
    let w = summaries(&writes);
    assert_eq!(
        w.iter().filter(|s| s.starts_with("DELETE priorityclasses/")).count(),
        2,
        "{w:#?}"
    );
    assert_eq!(h.api.names(PRIORITY), ["recstack-other-minimal-online"]);
    assert!(h.api.get(STACKS, "minimal").is_none(), "finalizer removed, stack gone");
    assert!(events(&writes).contains(&"Deleted".to_string()));
}

#[tokio::test]
async fn apply_error_sets_degraded_and_backs_off() {
    let h = Harness::new("minimal");
    h.reconcile_ok().await; // adds the finalizer
    h.api.fail(
        Method::PATCH,
        "/deployments/minimal-ranking",
        500,
        "etcdserver: request timed out",
        1,
    );
    let err = h.reconcile().await.expect_err("apply failed");
    assert!(err.to_string().contains("applying Deployment minimal-ranking"), "{err}");
    assert_eq!(h.phase(), "Degraded");
    assert!(
        h.condition("Degraded")["message"]
            .as_str()
            .unwrap()
            .contains("etcdserver: request timed out")
    );
    assert_eq!(h.condition("Ready")["status"], "False");

    let action = reconcile::error_policy(Arc::new(h.stack()), &err, h.ctx.clone());
    assert_eq!(action, Action::requeue(backoff(1)));
    assert!(
        h.ctx
            .metrics
            .encode()
            .contains("recstack_operator_reconcile_errors_total{stage=\"apply\",cause=\"server_error\"} 1"),
        "errors are counted by stage (the reconcile's, not the finalizer helper's) and cause: {}",
        h.ctx.metrics.encode()
    );
    let action = reconcile::error_policy(Arc::new(h.stack()), &err, h.ctx.clone());
    assert_eq!(action, Action::requeue(backoff(2)));

    // The next pass succeeds and clears Degraded.
    h.reconcile_ok().await;
    assert_eq!(h.condition("Degraded")["status"], "False");
    assert!(h.api.get(DEPLOYMENTS, "minimal-ranking").is_some());
}

/// The non-GET, non-Event requests of `calls` (dry runs included), as summaries.
fn object_requests(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.method != Method::GET && !c.path.contains("/events"))
        .map(|c| format!("{}{}", c.summary(), if c.is_dry_run() { " (dry run)" } else { "" }))
        .collect()
}

/// A write the API server refuses where render foresaw nothing (an admission policy, a quota)
/// is found by the dry run before anything is written: a new stack gets no object at all, the
/// access Secret included, and once the refusal is lifted the next pass applies it whole.
#[tokio::test]
async fn a_write_refused_in_the_dry_run_leaves_a_new_stack_unmade() {
    let h = Harness::new("minimal");
    h.reconcile_ok().await; // adds the finalizer
    let expected = recstack_operator::render::render(&h.stack()).unwrap().len();
    let (err, requests) = h
        .reconcile_refused(
            Method::PATCH,
            "/deployments/minimal-ranking",
            403,
            "admission webhook \"policy.example\" denied the request: no ranking in this namespace",
        )
        .await;
    assert!(
        err.to_string().contains(
            "applying Deployment minimal-ranking: the API server refused it in a dry run, so nothing was written"
        ),
        "{err}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r == "PATCH deployments/minimal-ranking (dry run)"),
        "{requests:#?}"
    );
    h.assert_unmade();
    let message = h.condition("Degraded")["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("Deployment minimal-ranking") && message.contains("no ranking in this namespace"),
        "{message}"
    );
    reconcile::error_policy(Arc::new(h.stack()), &err, h.ctx.clone());
    let metrics = h.ctx.metrics.encode();
    assert!(
        metrics.contains("recstack_operator_reconcile_errors_total{stage=\"dry_run\",cause=\"forbidden\"} 1"),
        "counted as a dry run's refusal, by the server's cause: {metrics}"
    );

    // The refusal lifted: the whole stack, each object checked by a dry run before any write.
    let writes = h.reconcile_ok().await;
    assert_eq!(applies(&writes).len(), expected, "{:#?}", summaries(&writes));
    let requests = object_requests(&h.api.calls());
    let last_dry = requests.iter().rposition(|r| r.ends_with("(dry run)")).unwrap();
    let first_real = requests.iter().position(|r| !r.ends_with("(dry run)")).unwrap();
    assert!(
        last_dry < first_real,
        "every dry run before the first write: {requests:#?}"
    );
    assert_eq!(
        requests.iter().filter(|r| r.ends_with("(dry run)")).count(),
        expected,
        "one dry run per object written: {requests:#?}"
    );
    assert_eq!(h.condition("Degraded")["status"], "False");
}

/// A RoleBinding whose Role the same pass creates cannot be checked alone (the real server
/// resolves the Role to check the binding, and a dry run stores no Role), so it is the one write
/// of a new stack without a dry run; once its Role exists, a change to it is checked too.
#[tokio::test]
async fn a_binding_is_checked_once_its_role_exists() {
    let h = Harness::new("gpu-ranking");
    h.reconcile_ok().await; // adds the finalizer
    let writes = h.reconcile_ok().await;
    let requests = object_requests(&h.api.calls());
    let dry: Vec<&String> = requests.iter().filter(|r| r.ends_with("(dry run)")).collect();
    assert_eq!(dry.len(), applies(&writes).len() - 1, "{requests:#?}");
    assert!(requests.contains(&"PATCH roles/gpu-dashboard (dry run)".to_string()));
    assert!(!requests.contains(&"PATCH rolebindings/gpu-dashboard (dry run)".to_string()));
    assert!(applies(&writes).contains(&"PATCH rolebindings/gpu-dashboard".to_string()));

    h.api.edit(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/recstack/rolebindings",
        "gpu-dashboard",
        |o| {
            o["subjects"] = json!([]);
        },
    );
    let writes = h.reconcile_ok().await;
    assert_eq!(
        object_requests(&h.api.calls()),
        [
            "PATCH rolebindings/gpu-dashboard (dry run)",
            "PATCH rolebindings/gpu-dashboard"
        ],
        "{:#?}",
        summaries(&writes)
    );
}

/// A running stack whose change the server refuses keeps every object as it was: neither the
/// objects before the refused one are updated nor the ones no longer wanted pruned.
#[tokio::test]
async fn a_change_refused_in_the_dry_run_leaves_a_running_stack_as_it_was() {
    let h = Harness::created("gpu-ranking").await;
    let kept = [DEPLOYMENTS, STATEFULSETS, CONFIGMAPS, SERVICES];
    let before = h.objects(&kept);
    // Flink instead of the built-in engine: a new ConfigMap, NetworkPolicy and FlinkDeployment,
    // an updated runtime config. The FlinkDeployment is refused.
    h.edit_spec(|s| {
        s.spec.event_log = Some(recstack_crds::EventLogSpec::new(vec!["kafka:9092".into()], "ev"));
        s.spec.stream.engine = StreamEngine::Flink;
    });
    let (err, _) = h
        .reconcile_refused(
            Method::PATCH,
            "/flinkdeployments/gpu-flink",
            422,
            "FlinkDeployment.flink.apache.org \"gpu-flink\" is invalid: spec.flinkVersion: Unsupported value",
        )
        .await;
    assert!(err.to_string().contains("applying FlinkDeployment gpu-flink"), "{err}");
    assert!(h.api.get(FLINK, "gpu-flink").is_none());
    assert!(h.api.get(CONFIGMAPS, "gpu-flink-sql").is_none());
    assert_eq!(before, h.objects(&kept), "every object as it was");
    let degraded = h.condition("Degraded");
    assert!(
        degraded["message"].as_str().unwrap().contains("spec.flinkVersion"),
        "{degraded}"
    );

    // No engine at all would prune; a prune refused in its dry run is found the same way.
    h.edit_spec(|s| s.spec.stream.engine = StreamEngine::None);
    let (err, _) = h
        .reconcile_refused(Method::DELETE, "/statefulsets/gpu-stream", 403, "deletion is protected")
        .await;
    assert!(
        err.to_string()
            .contains("pruning StatefulSet gpu-stream: the API server refused it in a dry run"),
        "{err}"
    );
    assert!(h.api.get(STATEFULSETS, "gpu-stream").is_some());
    assert!(h.api.get(PDBS, "gpu-stream").is_some(), "pruned nothing else either");
}

/// A quota with room for each new object alone but not for all of them passes every dry run
/// (each stores nothing); the operator holds the plan's new objects against it together, so a
/// new stack gets nothing at all, and once the quota has room the next pass applies it whole.
#[tokio::test]
async fn new_objects_that_fit_a_quota_alone_but_not_together_are_not_written() {
    const QUOTAS: &str = "/api/v1/namespaces/recstack/resourcequotas";
    let h = Harness::new("minimal");
    h.reconcile_ok().await; // adds the finalizer
    let deployments = recstack_operator::render::render(&h.stack())
        .unwrap()
        .iter()
        .filter(|c| c.kind == recstack_operator::render::ChildKind::Deployment)
        .count() as i64;
    assert!(deployments > 2, "{deployments}");
    let quota = |hard: i64| {
        json!({"apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "objects", "namespace": "recstack"},
            "spec": {"hard": {"count/deployments.apps": hard.to_string()}},
            "status": {"hard": {"count/deployments.apps": hard.to_string()},
                "used": {"count/deployments.apps": "1"}}})
    };
    // Someone else's Deployment is there already: room for all but one of the stack's.
    h.api.put(QUOTAS, "objects", quota(deployments));
    h.api.clear_calls();
    let err = h.reconcile().await.expect_err("the quota is short");
    let requests = h.only_status_written();
    assert!(
        requests
            .iter()
            .any(|r| r == "PATCH deployments/minimal-ranking (dry run)"),
        "every object passed its dry run first: {requests:#?}"
    );
    let want = format!(
        "creating {deployments} Deployment object(s) would exceed ResourceQuota objects: \
         count/deployments.apps has {} left (used 1 of {deployments}), so nothing was written",
        deployments - 1
    );
    assert!(err.to_string().ends_with(&want), "{err}");
    h.assert_unmade();
    assert!(
        h.condition("Degraded")["message"].as_str().unwrap().contains(&want),
        "{}",
        h.condition("Degraded")
    );
    reconcile::error_policy(Arc::new(h.stack()), &err, h.ctx.clone());
    assert!(
        h.ctx
            .metrics
            .encode()
            .contains("recstack_operator_reconcile_errors_total{stage=\"dry_run\",cause=\"forbidden\"} 1")
    );

    // Room for all of them: the next pass applies the stack whole.
    h.api.put(QUOTAS, "objects", quota(deployments + 1));
    h.reconcile_ok().await;
    assert_eq!(h.api.names(DEPLOYMENTS).len() as i64, deployments);
    assert_eq!(h.condition("Degraded")["status"], "False");
    // An unchanged stack makes no request at all, the quotas' list included.
    h.api.clear_calls();
    h.reconcile().await.expect("reconcile succeeds");
    let requests: Vec<String> = h.api.calls().iter().map(Call::summary).collect();
    assert!(!requests.iter().any(|r| r.contains("resourcequotas")), "{requests:#?}");
}

#[tokio::test]
async fn drift_is_repaired_and_reported() {
    let h = Harness::created("minimal").await;
    h.api.edit(DEPLOYMENTS, "minimal-gateway", |o| {
        o["spec"]["template"]["spec"]["containers"][0]["image"] = json!("someone/else:latest");
    });
    let writes = h.reconcile_ok().await;
    assert_eq!(applies(&writes), ["PATCH deployments/minimal-gateway"]);
    assert_eq!(events(&writes), ["DriftRepaired"]);
    let gateway = h.api.get(DEPLOYMENTS, "minimal-gateway").unwrap();
    assert_eq!(
        gateway["spec"]["template"]["spec"]["containers"][0]["image"],
        h.stack().spec.image
    );
    assert!(
        h.ctx
            .metrics
            .encode()
            .contains("kind=\"Deployment\",reason=\"drift\"} 1")
    );
}

#[tokio::test]
async fn deleted_child_is_recreated() {
    let h = Harness::created("minimal").await;
    assert!(
        h.api.remove(CONFIGMAPS, "minimal-config").is_some(),
        "someone deletes the ConfigMap"
    );
    let writes = h.reconcile_ok().await;
    assert_eq!(applies(&writes), ["PATCH configmaps/minimal-config"]);
    assert_eq!(events(&writes), ["Created"]);
    let configmap = h.api.get(CONFIGMAPS, "minimal-config").unwrap();
    assert!(
        configmap["data"]["config.yaml"]
            .as_str()
            .unwrap()
            .contains("stack: minimal")
    );
}

/// Operators before 0.2 gave every component a ClusterIP Service; a Service's clusterIP cannot
/// change in place, so the ones that became headless are deleted and created again.
#[tokio::test]
async fn a_service_that_became_headless_is_recreated() {
    let h = Harness::created("minimal").await;
    h.api.edit(SERVICES, "minimal-recall", |o| {
        o["spec"]["clusterIP"] = json!("10.96.0.7")
    });
    let gateway_ip = h.api.get(SERVICES, "minimal-gateway").unwrap()["spec"]["clusterIP"].clone();
    assert_eq!(gateway_ip, "10.96.0.10", "the gateway keeps a ClusterIP");
    // What the old operator's Service looks like now: an apply that would make it headless is
    // refused by the API server.
    let writes = h.reconcile_ok().await;
    let calls = summaries(&writes);
    let delete = calls.iter().position(|c| c == "DELETE services/minimal-recall");
    let create = calls.iter().rposition(|c| c == "PATCH services/minimal-recall");
    assert!(delete.is_some() && create > delete, "{calls:?}");
    assert_eq!(events(&writes), ["Recreated"]);
    let recall = h.api.get(SERVICES, "minimal-recall").unwrap();
    assert_eq!(recall["spec"]["clusterIP"], "None");
    // Services are the only kind recreated, and only for an immutable field.
    assert!(reconcile::must_recreate(
        ChildKind::Service,
        422,
        "spec.clusterIP: Invalid value: \"None\": field is immutable"
    ));
    assert!(!reconcile::must_recreate(
        ChildKind::Deployment,
        422,
        "spec.selector: field is immutable"
    ));
    assert!(!reconcile::must_recreate(
        ChildKind::Service,
        422,
        "spec.ports[0].port: Invalid value"
    ));
    assert!(!reconcile::must_recreate(ChildKind::Service, 409, "field is immutable"));
    // Nothing left to do afterwards.
    assert!(h.reconcile_ok().await.iter().all(|c| c.path.contains("/events")));
}

#[test]
fn backoff_grows_and_caps() {
    let secs: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
    assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
}

/// `(api group, resource)` and the RBAC verb one recorded request is authorized as.
fn rbac_verbs(call: &Call) -> Vec<(String, String, &'static str)> {
    let segments: Vec<&str> = call.path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => panic!("unexpected path {}", call.path),
    };
    let (resource, name, sub) = match rest {
        ["namespaces", _ns, resource, rest @ ..] => (*resource, rest.first(), rest.get(1)),
        [resource, rest @ ..] => (*resource, rest.first(), rest.get(1)),
        [] => panic!("no resource in {}", call.path),
    };
    let resource = match sub {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_string(),
    };
    let verbs: Vec<&'static str> = match (&call.method, name) {
        (&Method::GET, Some(_)) => vec!["get"],
        (&Method::GET, None) if call.query.contains("watch=true") => vec!["watch"],
        (&Method::GET, None) => vec!["list"],
        (&Method::POST, _) => vec!["create"],
        // A server-side apply of an object that does not exist yet is authorized as `create`.
        (&Method::PATCH, Some(_))
            if call
                .content_type
                .as_deref()
                .is_some_and(|t| t.starts_with("application/apply-patch")) =>
        {
            vec!["patch", "create"]
        }
        (&Method::PATCH, _) => vec!["patch"],
        (&Method::PUT, _) => vec!["update"],
        (&Method::DELETE, Some(_)) => vec!["delete"],
        (&Method::DELETE, None) => vec!["deletecollection"],
        (m, _) => panic!("unexpected method {m}"),
    };
    verbs
        .into_iter()
        .map(|v| (group.to_string(), resource.clone(), v))
        .collect()
}

/// The install's ClusterRole grants exactly the verbs the operator's requests need — no
/// fewer (the first server-side apply of a child is a `create`), no more — derived from every
/// request recorded over a stack's life: create, scale, engine switch and prune, drift,
/// deletion with legacy PriorityClasses. Leader election's Lease verbs are in their own Role
/// and are exercised by the cluster e2e (`scripts/e2e`).
#[tokio::test]
async fn rbac_grants_exactly_the_verbs_the_code_uses() {
    use std::collections::BTreeSet;
    let mut used = BTreeSet::new();
    let mut record = |calls: Vec<Call>| {
        for c in &calls {
            used.extend(rbac_verbs(c));
        }
    };
    let h = Harness::new("gpu-ranking");
    h.reconcile_ok().await;
    record(h.api.calls());
    h.reconcile_ok().await;
    record(h.api.calls());
    h.api.make_deployments_ready();
    h.api
        .edit(DEPLOYMENTS, "gpu-rerank", |o| o["spec"]["replicas"] = json!(9));
    h.edit_spec(|s| {
        s.spec.event_log = Some(recstack_crds::EventLogSpec::new(vec!["kafka:9092".into()], "ev"));
        s.spec.stream.engine = StreamEngine::Flink;
    });
    h.reconcile_ok().await;
    record(h.api.calls());
    // No stream engine and down to the bare stack: every kind is pruned somewhere.
    h.edit_spec(|s| {
        let mut spec = serde_json::to_value(&s.spec).unwrap();
        for c in ["gateway", "recall", "ranking", "rerank", "feature", "ingest"] {
            let o = spec[c].as_object_mut().unwrap();
            o.remove("autoscaling");
            o.insert("replicas".into(), json!(2));
        }
        spec.as_object_mut().unwrap().remove("dashboard");
        spec.as_object_mut().unwrap().remove("build");
        spec["stream"]["engine"] = json!("none");
        spec["policies"]["networkPolicy"]["enabled"] = json!(false);
        spec["policies"]["podDisruptionBudget"]["enabled"] = json!(false);
        s.spec = serde_json::from_value(spec).unwrap();
    });
    let writes = h.reconcile_ok().await;
    record(h.api.calls());
    let pruned: BTreeSet<String> = summaries(&writes)
        .iter()
        .filter_map(|w| {
            w.strip_prefix("DELETE ")
                .and_then(|w| w.split('/').next())
                .map(String::from)
        })
        .collect();
    assert_eq!(pruned.len(), 13, "every kind pruned once: {pruned:?}");
    h.api.put(
        PRIORITY,
        "recstack-recstack-gpu-online",
        json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "value": 1000,
            "metadata": {"name": "recstack-recstack-gpu-online", "labels": {
                "app.kubernetes.io/managed-by": "recstack-operator",
                "recstack.io/stack": "gpu", "recstack.io/stack-namespace": "recstack"}}}),
    );
    h.api.edit(STACKS, "gpu", |o| {
        o["metadata"]["deletionTimestamp"] = json!("2026-01-02T00:00:00Z")
    });
    h.reconcile_ok().await;
    record(h.api.calls());
    // The production path watches the stacks and every kind a stack owns (`reconcile::run`);
    // the in-memory API is listed instead.
    used.insert(("recstack.io".into(), "recommenderstacks".into(), "list"));
    used.insert(("recstack.io".into(), "recommenderstacks".into(), "watch"));
    for kind in recstack_operator::render::ChildKind::ALL {
        let ar = kind.api_resource();
        used.insert((ar.group.clone(), ar.plural.clone(), "watch"));
    }
    // A Role the operator writes may grant only what the operator holds itself (RBAC's
    // escalation check), and a blockOwnerDeletion owner reference needs `update` on the
    // owner's finalizers where OwnerReferencesPermissionEnforcement is on.
    let mut stack = common::sample("gpu-ranking");
    stack.metadata.uid = Some("uid".into());
    for child in recstack_operator::render::render(&stack).unwrap() {
        let object = serde_json::to_value(&child.object).unwrap();
        for rule in object["rules"].as_array().into_iter().flatten() {
            for group in rule["apiGroups"].as_array().unwrap() {
                for resource in rule["resources"].as_array().unwrap() {
                    for verb in rule["verbs"].as_array().unwrap() {
                        let verb: &'static str = match verb.as_str().unwrap() {
                            "get" => "get",
                            other => panic!("a rendered Role grants {other}: add it here"),
                        };
                        used.insert((group.as_str().unwrap().into(), resource.as_str().unwrap().into(), verb));
                    }
                }
            }
        }
        if object["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] == true {
            used.insert(("recstack.io".into(), "recommenderstacks/finalizers".into(), "update"));
        }
    }

    let install =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/install/rbac.yaml")).unwrap();
    let mut granted = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&install) {
        let doc = Value::deserialize(doc).unwrap();
        if doc["kind"] != "ClusterRole" {
            continue;
        }
        for rule in doc["rules"].as_array().unwrap() {
            for group in rule["apiGroups"].as_array().unwrap() {
                for resource in rule["resources"].as_array().unwrap() {
                    for verb in rule["verbs"].as_array().unwrap() {
                        granted.insert((
                            group.as_str().unwrap().to_string(),
                            resource.as_str().unwrap().to_string(),
                            verb.as_str().unwrap().to_string(),
                        ));
                    }
                }
            }
        }
    }
    let used: BTreeSet<(String, String, String)> = used.into_iter().map(|(g, r, v)| (g, r, v.to_string())).collect();
    let missing: Vec<_> = used.difference(&granted).collect();
    let unused: Vec<_> = granted.difference(&used).collect();
    assert!(
        missing.is_empty(),
        "rbac.yaml lacks verbs the operator uses: {missing:#?}"
    );
    assert!(
        unused.is_empty(),
        "rbac.yaml grants verbs the operator never uses: {unused:#?}"
    );
}
