//! `recstack up`: the whole stack in one process on loopback, artifacts built from the
//! bundled data first when there are none.

use std::path::PathBuf;

use clap::Args;
use recstack_core::rerank::RerankConfig;
use recstack_core::stream::window::{WindowConfig, parse_window};
use recstack_offline::dataset;
use recstack_services::gateway::GatewayConfig;
use recstack_services::rerank::Experiment;
use recstack_services::serve::{self, Lifecycle, LocalAddrs, LocalEvents, LocalOptions, LocalTraces};
use recstack_services::traces;

use super::serve::{LatencyArgs, ModelArgs};

/// The flags of `recstack up`.
#[derive(Args)]
pub struct UpArgs {
    #[arg(long, default_value = "artifacts")]
    pub artifacts: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, env = "RECSTACK_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Let the OS pick free loopback ports (printed) instead of the standard ones.
    #[arg(long)]
    pub ephemeral_ports: bool,
    /// Send the gateway's calls over gRPC on loopback, as in a cluster, instead of calling
    /// the services in this process directly.
    #[arg(long)]
    pub grpc_links: bool,
    /// The embedded trace store's file (default: `<artifacts>/traces/traces.sqlite`).
    #[arg(long)]
    pub trace_file: Option<PathBuf>,
    /// Percent of requests traced in full (every candidate); debug requests always are.
    #[arg(long, default_value_t = 1.0)]
    pub trace_full_percent: f64,
    /// The dashboard's browser build (default: `dashboard/site` of this checkout, made by
    /// `scripts/build-dashboard`); without it pages are served without hydration.
    #[arg(long, env = "RECSTACK_DASHBOARD_SITE")]
    pub dashboard_site: Option<PathBuf>,
    /// The embedded event log's directory (default: `<artifacts>/events`).
    #[arg(long)]
    pub events_dir: Option<PathBuf>,
    /// The stream job's window (`30s`, `1m`, `1h`).
    #[arg(long, default_value = "1m", value_parser = parse_window)]
    pub window: i64,
    #[command(flatten)]
    pub latency: LatencyArgs,
}

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    super::check_simd()?;
    let UpArgs {
        artifacts,
        model,
        redis_url,
        ephemeral_ports,
        grpc_links,
        trace_file,
        trace_full_percent,
        dashboard_site,
        events_dir,
        window,
        latency,
    } = args;
    let lifecycle = Lifecycle::from_env()?;
    if !artifacts.join("current").exists() {
        eprintln!(
            "up: no artifacts in {}; building them from the bundled data",
            artifacts.display()
        );
        super::build::run_build(
            dataset::bundled_dir(),
            &artifacts,
            42,
            &super::build::SeqModelChoice::Bundled,
            false,
        )?;
    }
    anyhow::ensure!(
        (0.0..=100.0).contains(&trace_full_percent),
        "--trace-full-percent: {trace_full_percent} is not in 0..=100"
    );
    let traces = trace_file.unwrap_or_else(|| traces::local_path(&artifacts));
    let gateway = GatewayConfig {
        full_trace_sample: trace_full_percent / 100.0,
        latency: latency.objective(None),
        ..GatewayConfig::default()
    };
    let opts = LocalOptions {
        addrs: if ephemeral_ports {
            LocalAddrs::ephemeral()
        } else {
            LocalAddrs::standard()
        },
        model: model.flag_sources(),
        redis_url,
        gateway,
        rerank: RerankConfig::default(),
        experiment: Experiment::default(),
        traces: LocalTraces::Embedded(traces.clone()),
        direct_links: !grpc_links,
        dashboard: Some(crate::dashboard::local(Some(
            dashboard_site.unwrap_or_else(|| recstack_core::source_file("../dashboard/site")),
        ))),
        events: Some(LocalEvents {
            log_dir: events_dir.unwrap_or_else(|| artifacts.join("events")),
            partitions: 4,
            window: WindowConfig {
                size_ms: window,
                ..WindowConfig::default()
            },
        }),
    };
    super::block_on(up(artifacts, opts, traces, lifecycle))
}

/// Runs the local stack until Ctrl-C; `trace_file` is where `opts` keeps its traces.
async fn up(artifacts: PathBuf, opts: LocalOptions, trace_file: PathBuf, lifecycle: Lifecycle) -> anyhow::Result<()> {
    let stack = serve::start_local(&artifacts, opts).await?;
    let gw = stack.get("gateway");
    println!(
        "recstack is up on the bundled data (artifacts {}):",
        stack.artifact_version
    );
    println!("  gateway   http://{}/v1/recommend   {}", gw.http, gw.grpc_url());
    for s in &stack.services[1..] {
        if s.name == "dashboard" {
            continue;
        }
        match (s.name, s.grpc) {
            ("ingest", Some(grpc)) => println!("  ingest    http://{}/v1/events   http://{grpc}", s.http),
            ("traces", _) => println!(
                "  {:<9} http://{}/v1/traces   metrics http://{}/metrics",
                s.name, s.http, s.http
            ),
            (_, Some(grpc)) => println!("  {:<9} http://{grpc}   metrics http://{}/metrics", s.name, s.http),
            (_, None) => println!("  {:<9} metrics http://{}/metrics", s.name, s.http),
        }
    }
    println!("try:");
    println!(
        "  curl -s http://{}/v1/recommend -H 'content-type: application/json' -d '{{\"user_id\": \"1\", \"n\": 10}}'",
        gw.http
    );
    if let Some(ingest) = stack.find("ingest") {
        println!(
            "  curl -s http://{}/v1/events -H 'content-type: application/json' -d '{{\"events\": [{{\"event_id\": \"e1\", \"user_id\": \"1\", \"item_id\": \"0110912\", \"kind\": \"click\"}}]}}'",
            ingest.http
        );
    }
    println!(
        "  cargo run -p recstack-cli -- query --user 1 --recall-addr {} --features-addr {}",
        stack.get("recall").grpc.map(|a| a.to_string()).unwrap_or_default(),
        stack.get("features").grpc.map(|a| a.to_string()).unwrap_or_default()
    );
    println!(
        "  cargo run --release -p recstack-cli -- bench --gateway {} --rate 200",
        gw.grpc_url()
    );
    if let Some(traces) = stack.find("traces") {
        println!(
            "  curl -s 'http://{}/v1/traces?user=1'   (then /v1/traces/<request_id>/why/<item_id>)",
            traces.http
        );
        println!("trace store file: {}", trace_file.display());
    }
    if let Some(dashboard) = stack.find("dashboard") {
        println!(
            "dashboard: http://{}/   (traces, funnels, lineage, why-not, stack status)",
            dashboard.http
        );
    }
    println!("Ctrl-C stops.");
    super::until_stopped(stack.services, lifecycle).await
}
