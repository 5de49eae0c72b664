//! The operator on a real cluster: install, apply a sample, watch it reconcile, change the
//! spec, delete. Runs only when `KUBECONFIG` points at a cluster (kind, k3d, a real one) where
//! the operator image is available; otherwise it says why it skipped and passes.
//!
//! ```sh
//! KUBECONFIG=~/.kube/config cargo test -p recstack-e2e --test cluster -- --nocapture
//! ```
//! Set `RECSTACK_E2E_EXPECT_READY=1` when the service images exist, to also wait for `Ready`.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use recstack_crds::RecommenderStack;

fn repo() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .parent()
        .unwrap()
        .to_path_buf()
}

fn kubectl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("kubectl").args(args).current_dir(repo()).output()?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[tokio::test]
async fn operator_reconciles_a_stack_on_a_real_cluster() -> anyhow::Result<()> {
    if std::env::var_os("KUBECONFIG").is_none() {
        // Straight to stderr, past the test harness's capture, so `cargo test` shows why.
        let _ = writeln!(
            std::io::stderr(),
            "skipping the cluster e2e suite: KUBECONFIG is not set (point it at kind, k3d or a real cluster)"
        );
        return Ok(());
    }
    let client = Client::try_default().await?;
    kubectl(&["apply", "--server-side", "-k", "manifests/install"])?;
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/recommenderstacks.recstack.io",
        "--timeout=60s",
    ])?;
    kubectl(&[
        "-n",
        "recstack-system",
        "rollout",
        "status",
        "deployment/recstack-operator",
        "--timeout=180s",
    ])?;
    kubectl(&["create", "namespace", "recstack"]).ok();
    kubectl(&["apply", "-f", "manifests/samples/minimal.yaml"])?;

    let stacks: Api<RecommenderStack> = Api::namespaced(client.clone(), "recstack");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "recstack");

    // Every component's Deployment exists and the status describes this generation.
    wait_for("status of generation 1", Duration::from_secs(120), || async {
        let s = stacks.get("minimal").await?;
        Ok(s.status
            .filter(|st| st.observed_generation == s.metadata.generation && !st.conditions.is_empty()))
    })
    .await?;
    let names: Vec<String> = deployments
        .list(&ListParams::default().labels("recstack.io/stack=minimal"))
        .await?
        .items
        .iter()
        .map(|d| d.name_any())
        .collect();
    for c in ["gateway", "recall", "ranking", "rerank", "feature", "ingest", "stream"] {
        assert!(
            names.contains(&format!("minimal-{c}")),
            "missing deployment for {c}: {names:?}"
        );
    }
    if std::env::var_os("RECSTACK_E2E_EXPECT_READY").is_some() {
        kubectl(&[
            "-n",
            "recstack",
            "wait",
            "--for=condition=Ready",
            "recommenderstack/minimal",
            "--timeout=300s",
        ])?;
    }

    // Change the spec: recall scales to 3.
    let patch = serde_json::json!({ "spec": { "recall": { "replicas": 3 } } });
    stacks
        .patch("minimal", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_for("recall scaled to 3", Duration::from_secs(60), || async {
        let d = deployments.get("minimal-recall").await?;
        Ok(d.spec.and_then(|s| s.replicas).filter(|r| *r == 3))
    })
    .await?;

    // Delete: the finalizer removes the PriorityClasses, then the stack goes.
    stacks.delete("minimal", &DeleteParams::default()).await?;
    let classes: Api<PriorityClass> = Api::all(client.clone());
    wait_for(
        "stack and priority classes deleted",
        Duration::from_secs(120),
        || async {
            let gone = stacks.get_opt("minimal").await?.is_none();
            let left = classes
                .list(&ListParams::default().labels("recstack.io/stack=minimal"))
                .await?
                .items
                .len();
            Ok((gone && left == 0).then_some(()))
        },
    )
    .await?;
    Ok(())
}
