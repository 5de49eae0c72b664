//! The operator against a real Kubernetes control plane (kube-apiserver with RBAC and the
//! default admission plugins, etcd, kube-controller-manager, kube-scheduler; kwok plays the
//! kubelet). `scripts/e2e` starts the control plane, builds the operator and runs this suite:
//!
//! ```sh
//! scripts/e2e                      # up, run, down; ends with "N passed, N failed"
//! RECSTACK_E2E_ONLY=sample,pause scripts/e2e   # install, then scenarios whose name contains one of these
//! ```
//!
//! Run directly, it needs `RECSTACK_E2E_KUBECONFIG` (the admin kubeconfig `scripts/cluster up`
//! prints) and `RECSTACK_OPERATOR_BIN`. Without them it fails when `CI` is set — CI must never
//! count an untested cluster as green — and otherwise says why it skipped.
//!
//! The operator runs as its own process with a kubeconfig holding its ServiceAccount's token,
//! exactly as the install's RBAC grants it: a missing verb is a 403 here.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use recstack_crds::random::{Draw, samples};
use recstack_e2e::{Cluster, Operator, wait_until};
use serde_json::{Value, json};

const SYSTEM: &str = "recstack-system";
const SA: &str = "system:serviceaccount:recstack-system:recstack-operator";
/// Long enough for a rollout on the loopback control plane; the operator's own resync is 300 s,
/// so anything that settles inside this came from a watch.
const SETTLE: Duration = Duration::from_secs(60);

struct Suite {
    cluster: Cluster,
    bin: PathBuf,
    /// The operator's ServiceAccount kubeconfig.
    operator_kubeconfig: PathBuf,
    operator: Option<Operator>,
    started: usize,
}

type Scenario = fn(&mut Suite) -> anyhow::Result<()>;

fn main() {
    let (Some(kubeconfig), Some(bin)) = (
        std::env::var_os("RECSTACK_E2E_KUBECONFIG"),
        std::env::var_os("RECSTACK_OPERATOR_BIN"),
    ) else {
        if std::env::var_os("CI").is_some() {
            eprintln!(
                "cluster e2e: RECSTACK_E2E_KUBECONFIG / RECSTACK_OPERATOR_BIN not set under CI; run it through scripts/e2e, which starts the control plane"
            );
            eprintln!("0 passed, 1 failed");
            std::process::exit(1);
        }
        eprintln!(
            "cluster e2e skipped: no control plane (run scripts/e2e, or set RECSTACK_E2E_KUBECONFIG and RECSTACK_OPERATOR_BIN)"
        );
        return;
    };
    let dir = std::env::var_os("RECSTACK_E2E_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("recstack-e2e"));
    std::fs::create_dir_all(&dir).expect("e2e scratch directory");
    let mut suite = Suite {
        cluster: Cluster {
            admin: PathBuf::from(kubeconfig),
            dir,
        },
        bin: PathBuf::from(bin),
        operator_kubeconfig: PathBuf::new(),
        operator: None,
        started: 0,
    };
    let scenarios: &[(&str, Scenario)] = &[
        ("install as a platform team does", install),
        ("every sample becomes Ready", samples_ready),
        (
            "the server's CEL rejects invalid stacks with their messages",
            cel_rejects,
        ),
        (
            "a resource that is not a quantity: Degraded naming it, nothing applied",
            bad_quantity_degraded,
        ),
        (
            "a write the cluster's policy refuses: nothing applied, new stack or change, then whole once lifted",
            refused_by_policy,
        ),
        (
            "a quota with room for each new object but not all: nothing applied, then whole",
            quota_short_together,
        ),
        (
            "random stacks the server accepts: applied whole, or Degraded by render",
            random_stacks_applied,
        ),
        ("a spec change rolls and status follows observedGeneration", spec_change),
        (
            "fixed replicas to an autoscaler and back",
            replicas_to_autoscaler_and_back,
        ),
        ("a priority class change moves the pods", priority_class_change),
        ("pause stops changes, unpause repairs", pause),
        ("a deleted child is restored by watch", deleted_child_restored),
        (
            "a ClusterIP Service an older operator left is recreated headless",
            cluster_ip_service_recreated,
        ),
        (
            "a child edited by another field manager is repaired",
            foreign_edit_repaired,
        ),
        ("quantity forms: a no-op pass writes nothing", quantities_no_op),
        ("a crash-looping rollout is not Ready", crash_loop_not_ready),
        ("two stacks in two namespaces", two_namespaces),
        ("stack deleted: finalizer runs, children collected", deletion),
        ("a CRD newer than the operator (unknown fields)", version_skew),
        ("the operator killed mid-reconcile converges", restart_mid_reconcile),
        ("leader election: SIGTERM hands over", leader_election),
    ];
    let only = std::env::var("RECSTACK_E2E_ONLY").ok();
    let (mut passed, mut failed) = (0, 0);
    for (i, (name, scenario)) in scenarios.iter().enumerate() {
        if i > 0 && only.as_deref().is_some_and(|o| !o.split(',').any(|o| name.contains(o))) {
            continue;
        }
        let start = Instant::now();
        let result = scenario(&mut suite);
        let secs = start.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                passed += 1;
                println!("ok     {secs:6.1} s  {name}");
            }
            Err(e) => {
                failed += 1;
                println!("FAILED {secs:6.1} s  {name}\n{e:#}");
                if let Some(op) = &suite.operator {
                    println!("--- operator log (last 20 lines) ---\n{}", op.log_tail(20));
                }
                if i == 0 {
                    println!("install failed: the other scenarios need it");
                    break;
                }
            }
        }
    }
    drop(suite.operator.take());
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

impl Suite {
    fn k(&self, args: &[&str]) -> anyhow::Result<String> {
        self.cluster.kubectl(args)
    }

    fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.k(&args)?)?)
    }

    fn apply(&self, yaml: &str) -> anyhow::Result<String> {
        self.cluster.kubectl_stdin(&["apply", "-f", "-"], yaml)
    }

    fn patch_stack(&self, ns: &str, name: &str, patch: Value) -> anyhow::Result<()> {
        self.k(&[
            "-n",
            ns,
            "patch",
            "rstack",
            name,
            "--type=merge",
            "-p",
            &patch.to_string(),
        ])
        .map(drop)
    }

    fn stack(&self, ns: &str, name: &str) -> anyhow::Result<Value> {
        self.json(&["-n", ns, "get", "rstack", name])
    }

    fn condition(&self, ns: &str, name: &str, type_: &str) -> anyhow::Result<Value> {
        let stack = self.stack(ns, name)?;
        stack["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
            .with_context(|| format!("{ns}/{name} has no {type_} condition"))
    }

    fn wait_ready(&self, ns: &str, name: &str) -> anyhow::Result<()> {
        self.k(&[
            "-n",
            ns,
            "wait",
            "--for=condition=Ready",
            &format!("rstack/{name}"),
            &format!("--timeout={}s", SETTLE.as_secs()),
        ])
        .map(drop)
        .with_context(|| {
            format!(
                "{ns}/{name} not Ready; status: {}",
                self.stack(ns, name)
                    .map(|s| s["status"].to_string())
                    .unwrap_or_default()
            )
        })
    }

    /// Ready, and the status describes the stack's current generation.
    fn wait_settled(&self, ns: &str, name: &str) -> anyhow::Result<Value> {
        wait_until(&format!("{ns}/{name} Ready at its generation"), SETTLE, || {
            let s = self.stack(ns, name)?;
            let current = s["status"]["observedGeneration"] == s["metadata"]["generation"];
            let ready = s["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
            Ok((current && ready).then_some(s))
        })
    }

    fn create_namespace(&self, ns: &str) -> anyhow::Result<()> {
        if self.k(&["get", "namespace", ns]).is_err() {
            self.k(&["create", "namespace", ns])?;
        }
        Ok(())
    }

    fn operator(&self) -> anyhow::Result<&Operator> {
        self.operator.as_ref().context("no operator running")
    }

    fn start_operator(&mut self) -> anyhow::Result<Operator> {
        self.started += 1;
        Operator::start(
            &self.bin,
            &self.operator_kubeconfig,
            &format!("e2e-{}", self.started),
            &self.cluster.dir,
        )
    }

    /// Objects of `kinds` (kubectl's comma list) in `ns` labelled as `stack`'s.
    fn owned(&self, ns: &str, kinds: &str, stack: &str) -> anyhow::Result<Vec<Value>> {
        let list = self.json(&["-n", ns, "get", kinds, "-l", &format!("recstack.io/stack={stack}")])?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// Checks that nothing of a new stack exists, its access Secret included: what a refused
    /// pass must leave.
    fn ensure_unmade(&self, ns: &str, stack: &str) -> anyhow::Result<()> {
        let made = self.owned(
            ns,
            "deploy,svc,configmap,networkpolicy,pdb,serviceaccount,job,secret",
            stack,
        )?;
        ensure!(
            made.is_empty(),
            "nothing of the stack may exist while a write is refused: {:?}",
            made.iter()
                .map(|o| format!("{} {}", o["kind"], o["metadata"]["name"]))
                .collect::<Vec<_>>()
        );
        ensure!(
            self.k(&["-n", ns, "get", "secret", &format!("{stack}-access")])
                .is_err(),
            "the access Secret waits too"
        );
        Ok(())
    }

    /// Adds `value` at `path` of the installed CRD (a JSON-patch `add`), as a newer release would.
    fn extend_crd(&self, path: &str, value: Value) -> anyhow::Result<()> {
        let patch = json!([{"op": "add", "path": path, "value": value}]);
        self.k(&[
            "patch",
            "crd",
            "recommenderstacks.recstack.io",
            "--type=json",
            "-p",
            &patch.to_string(),
        ])
        .map(drop)
    }

    /// The pods of one component of a stack that are not terminating.
    fn pods(&self, ns: &str, stack: &str, component: &str) -> anyhow::Result<Vec<Value>> {
        let selector = format!("recstack.io/stack={stack},app.kubernetes.io/component={component}");
        let list = self.json(&["-n", ns, "get", "pods", "-l", &selector])?;
        Ok(list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .cloned()
            .collect())
    }

    /// How many times events of `reason` happened in `ns`: repeats of one (reason, object)
    /// are one Event whose `series.count` grows.
    fn event_count(&self, ns: &str, reason: &str) -> anyhow::Result<u64> {
        let list = self.json(&["-n", ns, "get", "events.events.k8s.io"])?;
        Ok(list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["reason"] == reason)
            .map(|e| e["series"]["count"].as_u64().unwrap_or(1))
            .sum())
    }
}

/// A stack document: `name` in `ns` with `spec` (YAML, indented two spaces under `spec:`).
fn stack_yaml(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: recstack.io/v1alpha1\nkind: RecommenderStack\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}\n"
    )
}

/// A small stack with every workload (the built-in stream job needs Kafka and Redis named).
const SMALL: &str = "  gateway: {replicas: 1}\n  recall: {replicas: 1}\n  ranking: {replicas: 1}\n  rerank: {replicas: 1}\n  feature: {replicas: 1, redisUrl: 'redis://redis.data.svc:6379'}\n  ingest: {replicas: 1}\n  eventLog: {bootstrapServers: ['kafka.data.svc:9092']}";

// ------------------------------------------------------------------------------------------------

fn install(s: &mut Suite) -> anyhow::Result<()> {
    s.cluster.install()?;
    s.k(&["apply", "--server-side", "-f", "e2e/fixtures/flinkdeployment-crd.yaml"])?;
    s.k(&[
        "wait",
        "--for=condition=Established",
        "crd/flinkdeployments.flink.apache.org",
        "--timeout=60s",
    ])?;
    for class in ["recstack-online", "recstack-offline"] {
        s.k(&["get", "priorityclass", class])
            .with_context(|| format!("the install ships PriorityClass {class}"))?;
    }
    // RBAC: what the operator may and may not do, as the server decides it.
    for (verb, resource, ns, allowed) in [
        ("create", "deployments.apps", "default", true),
        ("patch", "deployments.apps", "default", true),
        ("watch", "networkpolicies.networking.k8s.io", "default", true),
        ("create", "roles.rbac.authorization.k8s.io", "default", true),
        ("create", "priorityclasses.scheduling.k8s.io", "", false),
        ("patch", "priorityclasses.scheduling.k8s.io", "", false),
        ("get", "secrets", "default", false),
        ("list", "secrets", "default", false),
        ("create", "secrets", "default", true),
        ("create", "pods", "default", false),
    ] {
        let mut args = vec!["auth", "can-i", verb, resource, "--as", SA];
        if !ns.is_empty() {
            args.extend(["-n", ns]);
        }
        // `can-i` exits 1 on "no": the error then carries the answer.
        let answer = s.k(&args).unwrap_or_else(|e| e.to_string());
        ensure!(
            answer.trim().ends_with("yes") == allowed,
            "can the operator {verb} {resource}? expected {allowed}, the server says {answer:?}"
        );
    }
    s.operator_kubeconfig = s.cluster.service_account_kubeconfig(SYSTEM, "recstack-operator")?;
    let op = s.start_operator()?;
    wait_until("the operator to lead", Duration::from_secs(30), || {
        Ok((op.metric_sum("recstack_operator_leader", &[])? == 1.0).then_some(()))
    })?;
    s.operator = Some(op);
    Ok(())
}

fn samples_ready(s: &mut Suite) -> anyhow::Result<()> {
    s.create_namespace("recstack")?;
    for sample in ["minimal", "gpu-ranking", "flink-streaming"] {
        s.k(&["apply", "-f", &format!("manifests/samples/{sample}.yaml")])?;
    }
    // Play the Flink operator: once the FlinkDeployment exists, report its job running.
    wait_until("the FlinkDeployment", SETTLE, || {
        Ok(s.k(&["-n", "recstack", "get", "flinkdeployment", "flink-flink"]).ok())
    })?;
    s.k(&[
        "-n",
        "recstack",
        "patch",
        "flinkdeployment",
        "flink-flink",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"jobStatus":{"state":"RUNNING"}}}"#,
    ])?;
    for name in ["minimal", "gpu", "flink"] {
        s.wait_ready("recstack", name)?;
        // The access Secret the operator created (the samples name none): four keys, owned
        // by the stack (the operator itself may not read it: the admin's kubectl does).
        let secret = s.json(&["-n", "recstack", "get", "secret", &format!("{name}-access")])?;
        let keys: Vec<&String> = secret["data"]
            .as_object()
            .context("the access Secret's data")?
            .keys()
            .collect();
        ensure!(
            keys == ["admin", "debug", "pseudonym-key", "reader"],
            "{name}-access keys: {keys:?}"
        );
        ensure!(
            secret["metadata"]["ownerReferences"][0]["name"] == name,
            "{name}-access is owned by its stack: {}",
            secret["metadata"]
        );
    }
    // What Ready stands on: the GPU ranking pods were scheduled with their GPUs and classes.
    let pods = s.pods("recstack", "gpu", "ranking")?;
    let pod = pods.first().context("a gpu ranking pod")?;
    ensure!(
        pod["spec"]["nodeName"] == "kwok-gpu-0",
        "scheduled onto the GPU node: {}",
        pod["spec"]["nodeName"]
    );
    ensure!(
        pod["status"]["phase"] == "Running",
        "gpu ranking pod: {}",
        pod["status"]
    );
    ensure!(
        pod["spec"]["priorityClassName"] == "recstack-online",
        "{}",
        pod["spec"]["priorityClassName"]
    );
    ensure!(
        pod["spec"]["priority"] == 100000,
        "the admission plugin resolved the class's value"
    );
    let stack = s.stack("recstack", "minimal")?;
    let components = stack["status"]["components"].as_array().context("components")?;
    // Six: the minimal stack runs no stream job.
    ensure!(components.len() == 6, "{components:?}");
    for c in components {
        ensure!(c["readyReplicas"] == c["desiredReplicas"], "{c}");
    }
    Ok(())
}

fn cel_rejects(s: &mut Suite) -> anyhow::Result<()> {
    let cases = [
        (
            "bad",
            "  recall: {replicas: 2, autoscaling: {minReplicas: 1, maxReplicas: 3, targetCpuUtilization: 50}}",
            "set either replicas (a fixed count) or autoscaling, not both",
        ),
        (
            "bad",
            "  stream: {engine: flink}",
            "stream.engine flink reads events from Kafka",
        ),
        (
            "bad",
            "  recall: {resources: {limits: {nvidia.com/gpu: '1'}}}",
            "GPUs can only be requested by the ranking component",
        ),
        ("bad", "  dashboard: {}", "dashboard reads traces from a shared store"),
        (
            "bad",
            "  build: {}",
            "build publishes to artifacts.uri, which every pod must read",
        ),
        (
            "bad",
            "  artifacts: {uri: 's3://b/a'}\n  build: {schedule: 'nightly'}",
            "build.schedule must be a cron schedule of five fields",
        ),
        (
            "bad",
            "  gateway: {autoscaling: {minReplicas: 5, maxReplicas: 2, targetCpuUtilization: 60}}",
            "minReplicas must be less than or equal to autoscaling.maxReplicas",
        ),
        (
            "bad",
            "  eventLog: {bootstrapServers: ['kafka:9092'], partitions: 1}\n  feature: {redisUrl: 'redis://r:6379'}",
            "stream.parallelism must not exceed eventLog.partitions",
        ),
        (
            "bad",
            "  feature: {redisUrl: 'http://redis:6379'}",
            "feature.redisUrl must be redis://host:port[/db] (one server) or redis+cluster://",
        ),
        (
            "bad",
            "  policies: {networkPolicy: {gatewayClientNamespaces: [apps, Team_B]}}",
            "gatewayClientNamespaces entries must be namespace names",
        ),
        (
            "a-name-far-too-long-for-every-name-derived-from-it-xy",
            "  {}",
            "metadata.name must be a DNS-1035 label of at most 51",
        ),
        (
            "a-streaming-stack-name-just-over-the-limit-xyz",
            "  {}",
            "metadata.name must be at most 45 characters, or stream.engine none",
        ),
    ];
    s.create_namespace("e2e-cel")?;
    for (name, spec, message) in cases {
        let err = s
            .cluster
            .kubectl_stdin(
                &["apply", "--dry-run=server", "-f", "-"],
                &stack_yaml("e2e-cel", name, spec),
            )
            .err()
            .with_context(|| format!("the server accepted:\n{spec}"))?;
        ensure!(err.to_string().contains(message), "expected {message:?}, got: {err}");
    }
    // The same fields written well pass the server's rules (and its cost limits on them).
    s.cluster
        .kubectl_stdin(
            &["apply", "--dry-run=server", "-f", "-"],
            &stack_yaml(
                "e2e-cel",
                "good",
                "  recall: {resources: {requests: {cpu: 500m, memory: 512Mi}, limits: {cpu: 2, memory: 1.5Gi}}}\n  policies: {networkPolicy: {gatewayClientNamespaces: [apps, team-2], metricsNamespace: monitoring}}\n  stream: {engine: none}",
            ),
        )
        .context("the server refused well-formed quantities and namespace names")?;
    // Nothing was created on the way.
    let left = s.json(&["-n", "e2e-cel", "get", "rstack"])?;
    ensure!(left["items"].as_array().is_some_and(Vec::is_empty), "{left}");
    Ok(())
}

/// The CRD takes any string as a quantity (Kubernetes' own `ResourceRequirements` schema, which
/// a CEL rule cannot check within the server's cost budget), so the server accepts the stack;
/// the operator refuses it before applying anything, naming the field.
fn bad_quantity_degraded(s: &mut Suite) -> anyhow::Result<()> {
    let ns = "e2e-quantity";
    s.create_namespace(ns)?;
    s.apply(&stack_yaml(
        ns,
        "q",
        "  recall: {replicas: 1, resources: {requests: {cpu: 500m}, limits: {cpu: lots}}}\n  stream: {engine: none}",
    ))?;
    let degraded = wait_until("the stack Degraded naming the field", SETTLE, || {
        let degraded = s.condition(ns, "q", "Degraded").ok();
        Ok(degraded.filter(|d| d["status"] == "True"))
    })?;
    let message = degraded["message"].as_str().unwrap_or("");
    ensure!(
        message.contains("spec.recall.resources.limits.cpu: \"lots\" is not a Kubernetes quantity"),
        "{degraded}"
    );
    // Nothing of the stack was applied: no half-made stack with some workloads and not others.
    for kind in ["deploy", "svc", "configmap"] {
        let left = s.json(&["-n", ns, "get", kind, "-l", "app.kubernetes.io/instance=q"])?;
        ensure!(left["items"].as_array().is_some_and(Vec::is_empty), "{kind}: {left}");
    }
    s.k(&["-n", ns, "delete", "rstack", "q", "--wait=true", "--timeout=60s"])
        .map(drop)
}

/// A refusal render cannot foresee: the cluster's own admission policy (a
/// ValidatingAdmissionPolicy, CEL run by the API server) denies Deployments named `*-ranking`
/// in one namespace. The operator's dry run meets it before writing anything, so a new stack is
/// `Degraded` with the policy's message and none of its objects exist (not even those render
/// orders before the ranking Deployment), and a running stack's refused change leaves every
/// object as it was. Once the policy's binding is deleted the next retry applies it whole.
fn refused_by_policy(s: &mut Suite) -> anyhow::Result<()> {
    let ns = "e2e-policy";
    s.create_namespace(ns)?;
    s.apply(
        "apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: e2e-no-ranking}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: [apps]
      apiVersions: [v1]
      operations: [CREATE, UPDATE]
      resources: [deployments]
  validations:
  - expression: \"!object.metadata.name.endsWith('-ranking')\"
    message: no ranking Deployments in this namespace (e2e policy)
",
    )?;
    let bind = |s: &Suite| -> anyhow::Result<()> {
        s.apply(&format!(
            "apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: e2e-no-ranking}}
spec:
  policyName: e2e-no-ranking
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {{kubernetes.io/metadata.name: {ns}}}
"
        ))?;
        // The API server loads policies asynchronously: wait until it enforces this one.
        wait_until("the policy enforced", SETTLE, || {
            let probe = s.k(&[
                "-n",
                ns,
                "create",
                "deployment",
                "probe-ranking",
                "--image=example.invalid/none",
                "--dry-run=server",
            ]);
            Ok(probe.is_err().then_some(()))
        })
    };
    let refused = |s: &Suite, generation: i64| -> anyhow::Result<()> {
        let degraded = wait_until("the stack Degraded by the policy", SETTLE, || {
            let degraded = s.condition(ns, "p", "Degraded").ok();
            Ok(degraded.filter(|d| d["status"] == "True" && d["observedGeneration"] == generation))
        })?;
        let message = degraded["message"].as_str().unwrap_or("");
        ensure!(
            message.contains("applying Deployment p-ranking: the API server refused it in a dry run")
                && message.contains("no ranking Deployments in this namespace (e2e policy)"),
            "{degraded}"
        );
        Ok(())
    };
    let lifted = |s: &Suite, what: &str, done: &dyn Fn(&Suite) -> bool| -> anyhow::Result<()> {
        s.k(&["delete", "validatingadmissionpolicybinding", "e2e-no-ranking"])?;
        wait_until(what, SETTLE * 2, || {
            let degraded = s.condition(ns, "p", "Degraded")?;
            Ok((degraded["status"] == "False" && done(s)).then_some(()))
        })
    };

    // A new stack: nothing of it is made, not even what render orders before the ranking
    // Deployment (the access Secret, ConfigMaps, Services, the gateway and recall Deployments).
    bind(s)?;
    s.apply(&stack_yaml(
        ns,
        "p",
        "  recall: {replicas: 1}\n  stream: {engine: none}",
    ))?;
    refused(s, 1)?;
    s.ensure_unmade(ns, "p")?;
    lifted(s, "the stack applied once the policy is lifted", &|s| {
        s.k(&["-n", ns, "get", "deploy", "p-ranking"]).is_ok()
    })?;

    // A running stack: a change refused for the ranking Deployment leaves recall's as it was.
    bind(s)?;
    s.patch_stack(
        ns,
        "p",
        json!({"spec": {"recall": {"replicas": 2}, "ranking": {"replicas": 3}}}),
    )?;
    refused(s, 2)?;
    let recall = s.json(&["-n", ns, "get", "deploy", "p-recall"])?;
    ensure!(
        recall["spec"]["replicas"] == 1,
        "recall changed while the change was refused"
    );
    lifted(s, "the change applied once the policy is lifted", &|s| {
        s.json(&["-n", ns, "get", "deploy", "p-recall"])
            .is_ok_and(|d| d["spec"]["replicas"] == 2)
    })?;
    s.k(&["delete", "validatingadmissionpolicy", "e2e-no-ranking"])?;
    s.k(&["-n", ns, "delete", "rstack", "p", "--wait=true", "--timeout=60s"])
        .map(drop)
}

/// A ResourceQuota with room for one more Deployment: the API server's dry run of each of a
/// new stack's Deployments passes (a dry run stores nothing, so each is checked alone), and the
/// real writes would stop at the second. The operator counts the pass's new objects against
/// the quota together, so the stack is `Degraded` naming the quota and none of its objects
/// exist; once the quota has room the next retry applies it whole.
fn quota_short_together(s: &mut Suite) -> anyhow::Result<()> {
    let ns = "e2e-quota";
    s.create_namespace(ns)?;
    let quota = |hard: u32| {
        format!(
            "apiVersion: v1
kind: ResourceQuota
metadata: {{name: e2e-objects, namespace: {ns}}}
spec:
  hard: {{count/deployments.apps: \"{hard}\"}}
"
        )
    };
    s.apply(&quota(1))?;
    // The quota controller fills in the status; admission checks nothing before that.
    wait_until("the quota computed", SETTLE, || {
        let q = s.json(&["-n", ns, "get", "resourcequota", "e2e-objects"])?;
        Ok((q["status"]["used"]["count/deployments.apps"] == "0").then_some(()))
    })?;
    // Each Deployment alone fits: the server's own dry run says so.
    s.k(&[
        "-n",
        ns,
        "create",
        "deployment",
        "probe",
        "--image=example.invalid/none",
        "--dry-run=server",
    ])?;
    s.apply(&stack_yaml(
        ns,
        "qa",
        "  recall: {replicas: 1}\n  stream: {engine: none}",
    ))?;
    let degraded = wait_until("the stack Degraded by the quota", SETTLE, || {
        let degraded = s.condition(ns, "qa", "Degraded").ok();
        Ok(degraded.filter(|d| d["status"] == "True" && d["observedGeneration"] == 1))
    })?;
    let message = degraded["message"].as_str().unwrap_or("");
    ensure!(
        message.contains("would exceed ResourceQuota e2e-objects: count/deployments.apps has 1 left (used 0 of 1)")
            && message.contains("so nothing was written"),
        "{degraded}"
    );
    s.ensure_unmade(ns, "qa")?;
    s.apply(&quota(50))?;
    wait_until("the stack applied once the quota has room", SETTLE * 2, || {
        let degraded = s.condition(ns, "qa", "Degraded")?;
        let deployments = s.owned(ns, "deploy", "qa")?.len();
        Ok((degraded["status"] == "False" && deployments > 1).then_some(()))
    })?;
    s.k(&["-n", ns, "delete", "rstack", "qa", "--wait=true", "--timeout=60s"])?;
    s.k(&["-n", ns, "delete", "resourcequota", "e2e-objects"]).map(drop)
}

/// Stacks nobody wrote (`recstack_crds::random`), applied for real: each one the server accepts
/// (its schema and CEL) is either applied whole by the operator or `Degraded` because render
/// refused it, naming a field — never left half-applied by an object the server refuses.
fn random_stacks_applied(s: &mut Suite) -> anyhow::Result<()> {
    let ns = "e2e-random";
    s.create_namespace(ns)?;
    let samples = samples(&recstack_e2e::repo().join("manifests/samples"))?;
    let stacks: usize = std::env::var("RECSTACK_E2E_RANDOM_STACKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let mut draw = Draw::new(0x5eed_0032, samples);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for n in 0..stacks {
        let (spec, name) = (draw.spec(), draw.name());
        // Unique, at the drawn name's length (the CRD's limits depend on it).
        let suffix = n.to_string();
        let name = if name.len() > suffix.len() + 1 {
            format!("{}{suffix}", &name[..name.len() - suffix.len()])
        } else {
            format!("s{suffix}")
        };
        let doc = Draw::document(&name, ns, spec);
        match s.apply(&doc.to_string()) {
            Ok(_) => accepted.push((name, doc)),
            Err(_) => refused += 1,
        }
    }
    let (mut applied, mut by_render) = (0, 0);
    for (name, doc) in &accepted {
        let stack = wait_until(&format!("{ns}/{name} reconciled"), SETTLE, || {
            let stack = s.stack(ns, name)?;
            let current = stack["status"]["observedGeneration"] == stack["metadata"]["generation"];
            Ok(current.then_some(stack))
        })?;
        let failed = stack["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Degraded" && c["reason"] == "ReconcileFailed");
        match failed {
            None => applied += 1,
            Some(c) => {
                let message = c["message"].as_str().unwrap_or("");
                ensure!(
                    message.starts_with("cannot render the stack: spec.")
                        || message.starts_with("cannot render the stack: metadata."),
                    "{name}: the server accepted the stack, then the operator failed on it: {message}\n{doc}"
                );
                by_render += 1;
            }
        }
    }
    println!(
        "      {stacks} random stacks: {refused} refused by the server, {applied} applied, {by_render} Degraded by render naming a field"
    );
    // The draw reaches the operator: a change that made the server refuse nearly every stack
    // would test nothing here.
    ensure!(applied >= stacks / 5, "only {applied} of {stacks} stacks applied");
    s.k(&["-n", ns, "delete", "rstack", "--all", "--wait=true", "--timeout=120s"])
        .map(drop)
}

fn spec_change(s: &mut Suite) -> anyhow::Result<()> {
    let before = s.stack("recstack", "minimal")?;
    let generation = before["metadata"]["generation"].as_i64().context("generation")?;
    s.patch_stack(
        "recstack",
        "minimal",
        json!({"spec": {"recall": {"replicas": 3}, "ranking": {"image": "ghcr.io/recstack/recstack:0.1.1"}}}),
    )?;
    // At once the status may not claim the new generation is Ready before its rollout.
    let settled = s.wait_settled("recstack", "minimal")?;
    ensure!(settled["metadata"]["generation"].as_i64() == Some(generation + 1));
    let recall = s.json(&["-n", "recstack", "get", "deploy", "minimal-recall"])?;
    ensure!(
        recall["spec"]["replicas"] == 3 && recall["status"]["updatedReplicas"] == 3,
        "{}",
        recall["status"]
    );
    let ranking = s.json(&["-n", "recstack", "get", "deploy", "minimal-ranking"])?;
    ensure!(
        ranking["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/recstack/recstack:0.1.1",
        "ranking rolled to the new image"
    );
    ensure!(ranking["status"]["observedGeneration"] == ranking["metadata"]["generation"]);
    for type_ in ["Ready", "Progressing", "Degraded"] {
        let c = s.condition("recstack", "minimal", type_)?;
        ensure!(c["observedGeneration"].as_i64() == Some(generation + 1), "{type_}: {c}");
    }
    Ok(())
}

fn replicas_to_autoscaler_and_back(s: &mut Suite) -> anyhow::Result<()> {
    // recall runs 3 fixed replicas (previous scenario). Hand it to an autoscaler of 2..5.
    s.patch_stack(
        "recstack",
        "minimal",
        json!({"spec": {"recall": {"replicas": null, "autoscaling": {"minReplicas": 2, "maxReplicas": 5, "targetCpuUtilization": 70}}}}),
    )?;
    let mut lowest = i64::MAX;
    wait_until("the recall HPA", SETTLE, || {
        let d = s.json(&["-n", "recstack", "get", "deploy", "minimal-recall"])?;
        lowest = lowest.min(d["spec"]["replicas"].as_i64().unwrap_or(0));
        Ok(s.k(&["-n", "recstack", "get", "hpa", "minimal-recall"]).ok())
    })?;
    let d = s.json(&["-n", "recstack", "get", "deploy", "minimal-recall"])?;
    lowest = lowest.min(d["spec"]["replicas"].as_i64().unwrap_or(0));
    ensure!(
        lowest == 3,
        "the Deployment kept its 3 replicas through the hand-over (saw {lowest}; server-side apply alone resets it to 1)"
    );
    let managers: Vec<String> = d["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["fieldsV1"]["f:spec"]["f:replicas"].is_object())
        .filter_map(|m| m["manager"].as_str().map(str::to_string))
        .collect();
    ensure!(
        !managers.contains(&"recstack-operator".to_string()),
        "the operator let go of spec.replicas: {managers:?}"
    );
    s.wait_settled("recstack", "minimal")?;

    // And back to a fixed count: the HPA goes, the count is the stack's.
    s.patch_stack(
        "recstack",
        "minimal",
        json!({"spec": {"recall": {"autoscaling": null, "replicas": 2}}}),
    )?;
    wait_until("the recall HPA pruned and 2 replicas", SETTLE, || {
        let hpa_gone = s.k(&["-n", "recstack", "get", "hpa", "minimal-recall"]).is_err();
        let d = s.json(&["-n", "recstack", "get", "deploy", "minimal-recall"])?;
        Ok((hpa_gone && d["spec"]["replicas"] == 2).then_some(()))
    })?;
    s.wait_settled("recstack", "minimal").map(drop)
}

fn priority_class_change(s: &mut Suite) -> anyhow::Result<()> {
    s.apply(
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: e2e-urgent}\nvalue: 200000\npreemptionPolicy: PreemptLowerPriority\n",
    )?;
    s.patch_stack(
        "recstack",
        "minimal",
        json!({"spec": {"policies": {"priorityClasses": {"online": "e2e-urgent"}}}}),
    )?;
    s.wait_settled("recstack", "minimal")?;
    // Every running gateway pod moved to the new class (old ones are gone once the rollout ends).
    wait_until("gateway pods under e2e-urgent", SETTLE, || {
        let live = s.pods("recstack", "minimal", "gateway")?;
        Ok((!live.is_empty()
            && live
                .iter()
                .all(|p| p["spec"]["priorityClassName"] == "e2e-urgent" && p["spec"]["priority"] == 200000))
        .then_some(()))
    })?;
    // Streaming keeps the offline class (the minimal stack has none; the GPU one does).
    let stream = s.json(&["-n", "recstack", "get", "statefulset", "gpu-stream"])?;
    ensure!(stream["spec"]["template"]["spec"]["priorityClassName"] == "recstack-offline");
    s.patch_stack(
        "recstack",
        "minimal",
        json!({"spec": {"policies": {"priorityClasses": {"online": "recstack-online"}}}}),
    )?;
    s.wait_settled("recstack", "minimal").map(drop)
}

fn pause(s: &mut Suite) -> anyhow::Result<()> {
    s.patch_stack("recstack", "minimal", json!({"spec": {"paused": true}}))?;
    wait_until("Paused=True", SETTLE, || {
        Ok((s.condition("recstack", "minimal", "Paused")?["status"] == "True").then_some(()))
    })?;
    s.k(&["-n", "recstack", "scale", "deploy/minimal-rerank", "--replicas=4"])?;
    std::thread::sleep(Duration::from_secs(3));
    let d = s.json(&["-n", "recstack", "get", "deploy", "minimal-rerank"])?;
    ensure!(d["spec"]["replicas"] == 4, "a paused stack is left alone");
    ensure!(s.stack("recstack", "minimal")?["status"]["phase"] == "Paused");
    s.patch_stack("recstack", "minimal", json!({"spec": {"paused": false}}))?;
    wait_until("rerank back to 2", SETTLE, || {
        let d = s.json(&["-n", "recstack", "get", "deploy", "minimal-rerank"])?;
        Ok((d["spec"]["replicas"] == 2).then_some(()))
    })?;
    s.wait_settled("recstack", "minimal").map(drop)
}

fn deleted_child_restored(s: &mut Suite) -> anyhow::Result<()> {
    for (kind, name) in [
        ("service", "minimal-gateway"),
        ("configmap", "minimal-config"),
        ("networkpolicy", "minimal-recall"),
        ("pdb", "minimal-ranking"),
        ("hpa", "minimal-gateway"),
        ("deployment", "minimal-rerank"),
    ] {
        let old = s.json(&["-n", "recstack", "get", kind, name])?;
        s.k(&["-n", "recstack", "delete", kind, name, "--wait=true"])?;
        let start = Instant::now();
        wait_until(&format!("{kind}/{name} restored"), Duration::from_secs(15), || {
            let new = s.json(&["-n", "recstack", "get", kind, name]).ok();
            Ok(new.filter(|n| n["metadata"]["uid"] != old["metadata"]["uid"]))
        })?;
        ensure!(
            start.elapsed() < Duration::from_secs(15),
            "{kind}: restored by watch, not by the 300 s resync"
        );
    }
    s.wait_settled("recstack", "minimal").map(drop)
}

/// Operators before 0.2 gave recall a ClusterIP Service; a Service's cluster IP cannot change,
/// so the API server refuses the headless one and the operator deletes and recreates it.
fn cluster_ip_service_recreated(s: &mut Suite) -> anyhow::Result<()> {
    s.patch_stack("recstack", "minimal", json!({"spec": {"paused": true}}))?;
    wait_until("Paused=True", SETTLE, || {
        Ok((s.condition("recstack", "minimal", "Paused")?["status"] == "True").then_some(()))
    })?;
    let mut old = s.json(&["-n", "recstack", "get", "service", "minimal-recall"])?;
    ensure!(
        old["spec"]["clusterIP"] == "None",
        "recall's Service is headless: {}",
        old["spec"]
    );
    s.k(&["-n", "recstack", "delete", "service", "minimal-recall", "--wait=true"])?;
    // The old shape: the same Service with an allocated cluster IP.
    for field in ["clusterIP", "clusterIPs"] {
        if let Some(spec) = old["spec"].as_object_mut() {
            spec.remove(field);
        }
    }
    for field in ["uid", "resourceVersion", "creationTimestamp", "managedFields"] {
        if let Some(meta) = old["metadata"].as_object_mut() {
            meta.remove(field);
        }
    }
    s.cluster.kubectl_stdin(&["create", "-f", "-"], &old.to_string())?;
    let legacy = s.json(&["-n", "recstack", "get", "service", "minimal-recall"])?;
    ensure!(legacy["spec"]["clusterIP"] != "None", "{}", legacy["spec"]);
    let before = s.event_count("recstack", "Recreated")?;
    s.patch_stack("recstack", "minimal", json!({"spec": {"paused": false}}))?;
    wait_until("recall's Service headless again", SETTLE, || {
        let svc = s.json(&["-n", "recstack", "get", "service", "minimal-recall"])?;
        Ok((svc["spec"]["clusterIP"] == "None").then_some(()))
    })?;
    wait_until("a Recreated event", SETTLE, || {
        Ok((s.event_count("recstack", "Recreated")? > before).then_some(()))
    })?;
    s.wait_settled("recstack", "minimal").map(drop)
}

fn foreign_edit_repaired(s: &mut Suite) -> anyhow::Result<()> {
    let before = s.event_count("recstack", "DriftRepaired")?;
    s.k(&[
        "-n",
        "recstack",
        "patch",
        "deploy",
        "minimal-ingest",
        "--field-manager=someone-else",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"example.com/not-recstack:1"}]"#,
    ])?;
    wait_until("ingest's image repaired", SETTLE, || {
        let d = s.json(&["-n", "recstack", "get", "deploy", "minimal-ingest"])?;
        Ok((d["spec"]["template"]["spec"]["containers"][0]["image"] != "example.com/not-recstack:1").then_some(()))
    })?;
    wait_until("a DriftRepaired event", Duration::from_secs(10), || {
        Ok((s.event_count("recstack", "DriftRepaired")? > before).then_some(()))
    })?;
    s.wait_settled("recstack", "minimal").map(drop)
}

fn quantities_no_op(s: &mut Suite) -> anyhow::Result<()> {
    let ns = "e2e-quantities";
    s.create_namespace(ns)?;
    let spec = format!(
        "{SMALL}\n  rerank: {{replicas: 1, resources: {{requests: {{cpu: 1000m, memory: 1024Mi}}, limits: {{cpu: '2', memory: 2Gi}}}}}}"
    )
    .replace("  rerank: {replicas: 1}\n", "");
    s.apply(&stack_yaml(ns, "q", &spec))?;
    s.wait_settled(ns, "q")?;
    let live = s.json(&["-n", ns, "get", "deploy", "q-rerank"])?;
    ensure!(
        live["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "1",
        "the server canonicalised 1000m: {}",
        live["spec"]["template"]["spec"]["containers"][0]["resources"]
    );
    std::thread::sleep(Duration::from_secs(2));
    let op = s.operator()?;
    let writes = op.metric_sum("recstack_operator_child_writes_total", &[])?;
    let status_writes = op.metric_sum("recstack_operator_status_writes_total", &[])?;
    let passes = op.metric_sum("recstack_operator_reconciles_total", &[])?;
    // Wake every stack: an annotation is a change the operator sees but that changes nothing.
    s.k(&["-n", ns, "annotate", "rstack", "q", "e2e/poke=1", "--overwrite"])?;
    s.k(&[
        "-n",
        "recstack",
        "annotate",
        "rstack",
        "minimal",
        "e2e/poke=1",
        "--overwrite",
    ])?;
    wait_until("the no-op passes", Duration::from_secs(10), || {
        Ok((op.metric_sum("recstack_operator_reconciles_total", &[])? >= passes + 2.0).then_some(()))
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let writes_after = op.metric_sum("recstack_operator_child_writes_total", &[])?;
    let status_after = op.metric_sum("recstack_operator_status_writes_total", &[])?;
    ensure!(
        writes_after == writes,
        "a no-op pass wrote {} children",
        writes_after - writes
    );
    ensure!(status_after == status_writes, "a no-op pass wrote status");
    ensure!(
        s.event_count(ns, "DriftRepaired")? == 0,
        "canonical quantities are not drift"
    );
    Ok(())
}

fn crash_loop_not_ready(s: &mut Suite) -> anyhow::Result<()> {
    let ns = "e2e-quantities";
    s.patch_stack(
        ns,
        "q",
        json!({"spec": {"recall": {"image": "recstack.io/e2e-crashloop"}}}),
    )?;
    wait_until("Ready=False naming recall", SETTLE, || {
        let ready = s.condition(ns, "q", "Ready")?;
        let stack = s.stack(ns, "q")?;
        let current = stack["status"]["observedGeneration"] == stack["metadata"]["generation"];
        Ok(
            (current && ready["status"] == "False" && ready["message"].as_str().unwrap_or("").contains("recall"))
                .then_some(()),
        )
    })?;
    // It stays not Ready while the new pod crash-loops (the old pod still serves).
    std::thread::sleep(Duration::from_secs(3));
    let ready = s.condition(ns, "q", "Ready")?;
    ensure!(ready["status"] == "False", "{ready}");
    ensure!(s.condition(ns, "q", "Progressing")?["status"] == "True");
    let d = s.json(&["-n", ns, "get", "deploy", "q-recall"])?;
    ensure!(
        d["status"]["readyReplicas"] == 1,
        "the old pod keeps readyReplicas at desired: {}",
        d["status"]
    );
    s.patch_stack(ns, "q", json!({"spec": {"recall": {"image": null}}}))?;
    s.wait_settled(ns, "q").map(drop)
}

fn two_namespaces(s: &mut Suite) -> anyhow::Result<()> {
    for ns in ["e2e-a", "e2e-b"] {
        s.create_namespace(ns)?;
        s.apply(&stack_yaml(ns, "twin", SMALL))?;
    }
    for ns in ["e2e-a", "e2e-b"] {
        let stack = s.wait_settled(ns, "twin")?;
        // Six online Deployments and the stream job's StatefulSet, whose two replicas share
        // the topic's twelve partitions (the plan is in status; each pod is Ready by kwok).
        let deployments = s.owned(ns, "deploy,statefulset", "twin")?;
        ensure!(
            deployments.len() == 7,
            "{ns}: {} Deployments and StatefulSets",
            deployments.len()
        );
        let plan = &stack["status"]["stream"];
        ensure!(
            plan["partitions"] == 12
                && plan["assignment"]
                    == json!([
                        {"replica": "twin-stream-0", "partitions": [0, 2, 4, 6, 8, 10]},
                        {"replica": "twin-stream-1", "partitions": [1, 3, 5, 7, 9, 11]},
                    ]),
            "{ns}: status.stream {plan}"
        );
        let pods = s.owned(ns, "pods", "twin")?;
        for ordinal in ["0", "1"] {
            let name = format!("twin-stream-{ordinal}");
            let pod = pods
                .iter()
                .find(|p| p["metadata"]["name"] == name)
                .with_context(|| format!("{ns}: no pod {name}"))?;
            ensure!(
                pod["metadata"]["labels"]["apps.kubernetes.io/pod-index"] == ordinal,
                "{ns}: {name} labels {}",
                pod["metadata"]["labels"]
            );
        }
        for item in &deployments {
            let owners = item["metadata"]["ownerReferences"].as_array().context("owners")?;
            ensure!(
                owners.len() == 1 && owners[0]["name"] == "twin",
                "{}",
                item["metadata"]["name"]
            );
        }
    }
    Ok(())
}

fn deletion(s: &mut Suite) -> anyhow::Result<()> {
    s.k(&[
        "-n",
        "e2e-a",
        "delete",
        "rstack",
        "twin",
        "--wait=true",
        "--timeout=60s",
    ])?;
    wait_until("e2e-a's children garbage-collected", SETTLE, || {
        let left = s.owned("e2e-a", "deploy,statefulset,svc,cm,pdb,netpol,hpa", "twin")?;
        Ok(left.is_empty().then_some(()))
    })?;
    ensure!(s.event_count("e2e-a", "Deleted")? > 0, "the finalizer ran");
    ensure!(
        s.owned("e2e-b", "deploy,statefulset", "twin")?.len() == 7,
        "the other namespace's twin is untouched"
    );
    s.wait_settled("e2e-b", "twin").map(drop)
}

fn version_skew(s: &mut Suite) -> anyhow::Result<()> {
    // A newer CRD: spec gains a field this operator has never heard of.
    s.extend_crd(
        "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/futureField",
        json!({"type": "string"}),
    )?;
    let result = (|| {
        s.patch_stack(
            "e2e-b",
            "twin",
            json!({"spec": {"futureField": "from a newer release", "recall": {"replicas": 2}}}),
        )?;
        let stack = s.stack("e2e-b", "twin")?;
        ensure!(
            stack["spec"]["futureField"] == "from a newer release",
            "the server kept the new field"
        );
        wait_until("recall scaled despite the unknown field", SETTLE, || {
            let d = s.json(&["-n", "e2e-b", "get", "deploy", "twin-recall"])?;
            Ok((d["spec"]["replicas"] == 2).then_some(()))
        })?;
        // A value this operator does not know, in a field it does: only that stack is
        // Degraded, and says why; the others keep reconciling.
        s.extend_crd(
            "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/stream/properties/engine/enum/-",
            json!("spark"),
        )?;
        s.create_namespace("e2e-skew")?;
        s.apply(&stack_yaml(
            "e2e-skew",
            "newer",
            &format!("{SMALL}\n  stream: {{engine: spark}}"),
        ))?;
        wait_until("the newer stack Degraded", SETTLE, || {
            let degraded = s.condition("e2e-skew", "newer", "Degraded").ok();
            Ok(degraded.filter(|d| {
                d["status"] == "True" && d["message"].as_str().unwrap_or("").contains("spec.stream.engine")
            }))
        })?;
        s.patch_stack("recstack", "minimal", json!({"spec": {"ingest": {"replicas": 3}}}))?;
        s.wait_settled("recstack", "minimal")?;
        s.wait_settled("e2e-b", "twin")?;
        s.k(&[
            "-n",
            "e2e-skew",
            "delete",
            "rstack",
            "newer",
            "--wait=true",
            "--timeout=60s",
        ])
        .map(drop)
    })();
    s.k(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "crds/recommenderstack.yaml",
    ])?;
    result
}

fn restart_mid_reconcile(s: &mut Suite) -> anyhow::Result<()> {
    let ns = "e2e-restart";
    s.create_namespace(ns)?;
    let drift_before = s.event_count("recstack", "DriftRepaired")?;
    let writes_before = s.operator()?.metric_sum("recstack_operator_child_writes_total", &[])?;
    s.apply(&stack_yaml(ns, "r", SMALL))?;
    // Kill the operator while it is creating the stack's children: as soon as its first write
    // shows in its metrics (read over loopback in well under a millisecond).
    let start = Instant::now();
    loop {
        let op = s.operator()?;
        if op.metric_sum("recstack_operator_child_writes_total", &[])? > writes_before {
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(20),
            "the operator never started on the stack"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    s.operator.as_mut().context("operator")?.kill()?;
    let at_kill = s.owned(ns, "deploy,statefulset", "r")?.len();
    println!("       killed with {at_kill} of 7 workloads created");
    let restarted = s.start_operator()?;
    // The dead leader's lease lapses (10 s), then the new process leads.
    wait_until("the restarted operator to lead", Duration::from_secs(30), || {
        Ok((restarted.metric_sum("recstack_operator_leader", &[])? == 1.0).then_some(()))
    })?;
    s.operator = Some(restarted);
    s.wait_settled(ns, "r")?;
    if at_kill < 7 {
        let created = s
            .operator()?
            .metric_sum("recstack_operator_child_writes_total", &["reason=\"created\""])?;
        ensure!(created > 0.0, "the restarted operator finished the create");
    }
    let deployments = s.owned(ns, "deploy,statefulset", "r")?;
    let names: Vec<&str> = deployments
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    ensure!(names.len() == 7, "{names:?} (had {at_kill} when killed)");
    let replica_sets = s.owned(ns, "rs", "r")?.len();
    let revisions = s.owned(ns, "controllerrevisions", "r")?.len();
    ensure!(
        (replica_sets, revisions) == (6, 1),
        "one ReplicaSet per Deployment and one revision of the stream StatefulSet, no spurious rollout: {replica_sets} and {revisions}"
    );
    // The new operator found the settled stacks settled: it rewrote nothing of theirs.
    let op = s.operator()?;
    ensure!(
        op.metric_sum("recstack_operator_child_writes_total", &["reason=\"drift\""])? == 0.0
            && op.metric_sum("recstack_operator_child_writes_total", &["reason=\"updated\""])? == 0.0,
        "a restarted operator re-applied settled children: {:?}",
        op.metrics()?
            .iter()
            .filter(|(k, _)| k.starts_with("recstack_operator_child_writes"))
            .collect::<Vec<_>>()
    );
    ensure!(s.event_count("recstack", "DriftRepaired")? == drift_before);
    Ok(())
}

fn leader_election(s: &mut Suite) -> anyhow::Result<()> {
    let second = s.start_operator()?;
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        second.metric_sum("recstack_operator_leader", &[])? == 0.0,
        "the second replica stands by"
    );
    let mut first = s.operator.take().context("operator")?;
    wait_until("the first operator to lead", Duration::from_secs(30), || {
        Ok((first.metric_sum("recstack_operator_leader", &[])? == 1.0).then_some(()))
    })?;
    ensure!(
        second.metric_sum("recstack_operator_leader", &[])? == 0.0,
        "one leader at a time"
    );
    let status = first.terminate()?;
    ensure!(status.success(), "SIGTERM is a clean exit: {status}");
    ensure!(first.log_tail(5).contains("lease released"), "{}", first.log_tail(5));
    let lease = s.json(&["-n", SYSTEM, "get", "lease", "recstack-operator"])?;
    ensure!(
        lease["spec"]["holderIdentity"].as_str().unwrap_or("").is_empty(),
        "the leader released its lease on the way out: {}",
        lease["spec"]
    );
    // The standby looks again when the lease would have expired (10 s), and takes it.
    let start = Instant::now();
    wait_until("the standby to lead", Duration::from_secs(20), || {
        Ok((second.metric_sum("recstack_operator_leader", &[])? == 1.0).then_some(()))
    })?;
    println!(
        "       standby took over {:.1} s after the leader exited",
        start.elapsed().as_secs_f64()
    );
    s.operator = Some(second);
    // The new leader reconciles.
    s.k(&["-n", "recstack", "delete", "service", "minimal-recall"])?;
    wait_until(
        "minimal-recall restored by the new leader",
        Duration::from_secs(20),
        || Ok(s.k(&["-n", "recstack", "get", "service", "minimal-recall"]).ok()),
    )?;
    Ok(())
}
