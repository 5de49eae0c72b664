//! `recstack-operator`: run the controller, or render a stack's objects without a cluster.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use futures::FutureExt;
use kube_lease_manager::LeaseManagerBuilder;
use recstack_crds::RecommenderStack;
use recstack_operator::metrics::Metrics;
use recstack_operator::reconcile;
use recstack_operator::{render, server};
use tracing::info;

#[derive(Parser)]
#[command(version, about = "The RecommenderStack operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Watch RecommenderStacks and reconcile them (needs a cluster).
    Run {
        /// Address of the /metrics, /healthz and /readyz server.
        #[arg(long, env = "RECSTACK_METRICS_ADDR", default_value = "0.0.0.0:8080")]
        metrics_addr: SocketAddr,
        /// Most stacks reconciled at once.
        #[arg(long, env = "RECSTACK_CONCURRENCY", default_value_t = 4)]
        concurrency: u16,
        /// Namespace of the leader-election Lease (the operator's own namespace).
        #[arg(long, env = "POD_NAMESPACE", default_value = "recstack-system")]
        lease_namespace: String,
        /// This replica's identity in the Lease.
        #[arg(long, env = "POD_NAME", default_value = "recstack-operator-local")]
        identity: String,
    },
    /// Print every object the operator would create for a stack, as YAML, without a cluster.
    Render {
        /// A file holding one RecommenderStack (YAML or JSON).
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// Namespace to assume when the file has none.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Print the RecommenderStack CRD as YAML.
    Crd,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        // Pod logs are not a terminal: no colour codes in them.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Render { file, namespace } => {
            print!("{}", render_file(&file, &namespace)?);
            Ok(())
        }
        Command::Crd => {
            print!("{}", recstack_crds::crd_yaml());
            Ok(())
        }
        Command::Run {
            metrics_addr,
            concurrency,
            lease_namespace,
            identity,
        } => run(metrics_addr, concurrency, lease_namespace, identity).await,
    }
}

/// Reads, validates (CEL rules included) and renders a stack file to multi-document YAML.
fn render_file(file: &PathBuf, namespace: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let value: serde_json::Value =
        serde_yaml::from_str(&text).with_context(|| format!("{} is not YAML or JSON", file.display()))?;
    let unknown = recstack_crds::strict::unknown_fields(&value);
    if !unknown.is_empty() {
        bail!(
            "{} is not a valid RecommenderStack: unknown field{} {}",
            file.display(),
            if unknown.len() == 1 { "" } else { "s" },
            unknown.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
        );
    }
    let mut stack: RecommenderStack =
        serde_json::from_value(value).with_context(|| format!("{} is not a valid RecommenderStack", file.display()))?;
    if let Err(errors) = stack.validate_cel() {
        bail!("{} breaks the CRD's validation rules:\n{errors}", file.display());
    }
    stack.metadata.namespace.get_or_insert_with(|| namespace.to_string());
    let children = render::render(&stack)?;
    let mut out = String::new();
    for child in children {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&child.object)?);
    }
    Ok(out)
}

async fn run(
    metrics_addr: SocketAddr,
    concurrency: u16,
    lease_namespace: String,
    identity: String,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let config = kube::Config::infer()
        .await
        .context("finding the Kubernetes API (is KUBECONFIG or in-cluster config set?)")?;
    let counted = metrics.clone();
    let client = kube::client::ClientBuilder::try_from(config)
        .context("connecting to the Kubernetes API")?
        .with_layer(&tower::util::MapRequestLayer::new(
            move |req: http::Request<kube::client::Body>| {
                counted.count_request(req.method(), req.uri());
                req
            },
        ))
        .build();
    let ready = Arc::new(AtomicBool::new(false));
    let state = server::ServerState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    let listener = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .with_context(|| format!("binding {metrics_addr}"))?;
    info!(%metrics_addr, "serving /metrics, /healthz, /readyz");
    tokio::spawn(async move { axum::serve(listener, server::router(state)).await });

    // Two replicas run; only the holder of the Lease reconciles.
    let leases = LeaseManagerBuilder::new(client.clone(), "recstack-operator")
        .with_namespace(&lease_namespace)
        .with_identity(&identity)
        // A standby checks the Lease when it would expire: a leader that stops cleanly releases
        // it, and a standby takes over within this many seconds; a crashed one's lapses.
        .with_duration(10)
        .with_grace(3)
        .build()
        .await
        .context("setting up leader election")?;
    let (mut leader, lease_task) = leases.watch().await;
    ready.store(true, Ordering::Relaxed);
    // Kubernetes stops a pod with SIGTERM; a terminal with SIGINT. Either ends the loop below,
    // waits for the running reconciles and releases the Lease, which a standby takes at its
    // next look (within the lease duration) instead of waiting out a lapsed lease first.
    let stop = stop_signal().shared();

    loop {
        tokio::select! {
            _ = stop.clone() => break,
            changed = async {
                while !*leader.borrow_and_update() {
                    leader.changed().await?;
                }
                Ok::<_, tokio::sync::watch::error::RecvError>(())
            } => changed.context("leader election stopped")?,
        }
        info!("became leader; reconciling");
        metrics.leader.set(1);
        let mut lost = leader.clone();
        let stop_now = stop.clone();
        let until = async move {
            tokio::select! {
                _ = async {
                    while *lost.borrow_and_update() {
                        if lost.changed().await.is_err() {
                            break;
                        }
                    }
                } => info!("lost leadership; standing by"),
                _ = stop_now => info!("stopping: finishing running reconciles"),
            }
        };
        reconcile::run(
            client.clone(),
            metrics.clone(),
            Some(identity.clone()),
            concurrency,
            until,
        )
        .await;
        metrics.leader.set(0);
        if stop.peek().is_some() {
            break;
        }
    }
    drop(leader);
    let manager = lease_task
        .await
        .context("leader election task")?
        .context("leader election")?;
    manager.release().await.context("releasing the lease")?;
    info!("lease released; stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the operator");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
