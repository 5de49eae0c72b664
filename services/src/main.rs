//! `recstack`: the offline build and evaluation (the serving commands arrive with the
//! services).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use recstack_services::build::{self, BuildParams, Progress};
use recstack_services::dataset::{self, Dataset};
use recstack_services::eval;
use recstack_services::features::proto::features_server::FeaturesServer;
use recstack_services::features::{
    CachePolicy, FeatureMetrics, FeatureService, FeatureStore, L2, NoL2, RedisL2, Snapshot,
};
use recstack_services::ops;
use recstack_services::recall::seen::SeenConfig;
use recstack_services::recall::service::proto::recall_server::RecallServer;
use recstack_services::recall::service::{
    ArtifactSlot, Loaded, MemorySeenStore, RecallMetrics, RecallService, watch_artifacts,
};

#[derive(Parser)]
#[command(version, about = "recstack: offline build and evaluation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build versioned recall and feature artifacts from the ratings.
    Build {
        /// Directory with movies.dat and ratings.dat (default: the bundled MovieTweetings).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Where artifact versions are written (`<out>/<version>/`, `<out>/current`).
        #[arg(long, default_value = "artifacts")]
        out: PathBuf,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Hide progress output.
        #[arg(long)]
        quiet: bool,
    },
    /// Run the local services on loopback (recall, features), building artifacts from the
    /// bundled data first if there are none.
    Up {
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        #[arg(long, default_value = "127.0.0.1:9090")]
        recall_addr: SocketAddr,
        /// The recall service's /metrics, /healthz, /readyz.
        #[arg(long, default_value = "127.0.0.1:8080")]
        recall_http_addr: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9091")]
        features_addr: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:8081")]
        features_http_addr: SocketAddr,
        #[arg(long, env = "RECSTACK_REDIS_URL")]
        redis_url: Option<String>,
    },
    /// Ask the local services about a user: features, then recall candidates with lineage.
    Query {
        #[arg(long)]
        user: String,
        #[arg(long, default_value_t = 20)]
        n: u32,
        #[arg(long, default_value = "127.0.0.1:9090")]
        recall_addr: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9091")]
        features_addr: SocketAddr,
    },
    /// Write a SYNTHETIC data set calibrated to the bundled data, for scale tests.
    Synth {
        #[arg(long, default_value_t = 10_000_000)]
        users: u64,
        #[arg(long, default_value_t = 1_000_000)]
        items: u32,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Write the ranking model's training data (NumPy arrays) from the current artifacts, with
    /// the same feature code the ranking service runs: `scripts/train-ranker` reads it.
    ExportRanking {
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Serve one component.
    Serve {
        #[command(subcommand)]
        component: Serve,
    },
    /// Evaluate each recall channel on the held-out ratings of the current artifacts.
    Eval {
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        /// A specific version (default: the one `current` names).
        #[arg(long)]
        version: Option<String>,
        /// Also write the split (train.csv, test.csv: user,item,rating with dense ids) for
        /// peer libraries (`scripts/peers/implicit_als.py`).
        #[arg(long)]
        export_split: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum Serve {
    /// The recall gRPC service.
    Recall {
        /// Artifact root written by `recstack build` (serves what `current` names).
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        #[arg(long, default_value = "127.0.0.1:9090")]
        grpc_addr: SocketAddr,
        /// `/metrics`, `/healthz`, `/readyz`.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http_addr: SocketAddr,
        /// How often to look for a new artifact version, in seconds.
        #[arg(long, default_value_t = 10)]
        reload_secs: u64,
    },
    /// The feature gRPC service (L1 cache ▸ Redis ▸ the artifacts' snapshot).
    Features {
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        /// Redis for real-time features (`redis://host:port`); unset: L1 over the snapshot.
        #[arg(long, env = "RECSTACK_REDIS_URL")]
        redis_url: Option<String>,
        /// L1 dump written on shutdown and loaded on start.
        #[arg(long)]
        dump: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:9091")]
        grpc_addr: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:8081")]
        http_addr: SocketAddr,
    },
}

async fn serve_features(
    artifacts: PathBuf,
    redis_url: Option<String>,
    dump: Option<PathBuf>,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
) -> anyhow::Result<()> {
    let loaded = load_artifacts(&artifacts)?;
    let snapshot = Arc::new(Snapshot::from_artifacts(&loaded.artifacts));
    drop(loaded);
    let metrics = Arc::new(FeatureMetrics::default());
    let encode: ops::Encode = {
        let metrics = metrics.clone();
        Arc::new(move || metrics.encode())
    };
    let http = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("binding {http_addr}"))?;
    tokio::spawn(async move { axum::serve(http, ops::router(encode, Arc::new(AtomicBool::new(true)))).await });
    match redis_url {
        Some(url) => {
            let l2 = RedisL2::connect(&url, Duration::from_millis(100))
                .await
                .context("connecting to Redis")?;
            run_features(
                FeatureStore::new(l2, snapshot, CachePolicy::default(), metrics),
                dump,
                grpc_addr,
            )
            .await
        }
        None => {
            run_features(
                FeatureStore::new(NoL2, snapshot, CachePolicy::default(), metrics),
                dump,
                grpc_addr,
            )
            .await
        }
    }
}

async fn run_features<L: L2>(
    store: FeatureStore<L>,
    dump: Option<PathBuf>,
    grpc_addr: SocketAddr,
) -> anyhow::Result<()> {
    let store = Arc::new(store);
    if let Some(path) = &dump {
        let n = store
            .warm(path)
            .await
            .with_context(|| format!("reading the L1 dump {}", path.display()))?;
        eprintln!("features: warmed L1 with {n} values from {}", path.display());
    }
    eprintln!("features: gRPC on {grpc_addr}");
    let grpc = tokio::net::TcpListener::bind(grpc_addr)
        .await
        .with_context(|| format!("binding {grpc_addr}"))?;
    tonic::transport::Server::builder()
        .add_service(FeaturesServer::new(FeatureService { store: store.clone() }))
        .serve_with_incoming_shutdown(ops::grpc_incoming(grpc), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("feature server")?;
    if let Some(path) = &dump {
        let n = store
            .dump(path)
            .await
            .with_context(|| format!("writing the L1 dump {}", path.display()))?;
        eprintln!("features: dumped {n} values to {}", path.display());
    }
    Ok(())
}

async fn serve_recall(
    artifacts: PathBuf,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    reload_secs: u64,
) -> anyhow::Result<()> {
    let loaded = load_artifacts(&artifacts)?;
    eprintln!("recall: serving artifact version {}", loaded.manifest.version);
    let slot = Arc::new(ArtifactSlot::new(loaded));
    let metrics = Arc::new(RecallMetrics::default());
    let service = RecallService::new(
        slot.clone(),
        MemorySeenStore::default(),
        SeenConfig::default(),
        metrics.clone(),
    );
    tokio::spawn(watch_artifacts(
        slot,
        artifacts,
        Duration::from_secs(reload_secs.max(1)),
    ));

    let ready = Arc::new(AtomicBool::new(true));
    let encode: ops::Encode = Arc::new(move || metrics.encode());
    let http = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("binding {http_addr}"))?;
    tokio::spawn(async move { axum::serve(http, ops::router(encode, ready)).await });
    eprintln!("recall: gRPC on {grpc_addr}, metrics on http://{http_addr}/metrics");
    let grpc = tokio::net::TcpListener::bind(grpc_addr)
        .await
        .with_context(|| format!("binding {grpc_addr}"))?;
    tonic::transport::Server::builder()
        .add_service(RecallServer::new(service))
        .serve_with_incoming_shutdown(ops::grpc_incoming(grpc), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("recall server")?;
    Ok(())
}

/// The artifact version `root/current` names, or an error saying how to build one.
fn load_artifacts(root: &std::path::Path) -> anyhow::Result<Loaded> {
    Loaded::from_dir(root).with_context(|| {
        format!(
            "no artifacts to serve in {}: run `recstack build --out {}`",
            root.display(),
            root.display()
        )
    })
}

/// Runs an async command on a fresh multi-threaded runtime (only the serving commands need one).
fn block_on(command: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(command)
}

/// Builds and writes artifacts from the data in `dir`.
fn run_build(dir: PathBuf, out: &std::path::Path, seed: u64, quiet: bool) -> anyhow::Result<build::Manifest> {
    let start = Instant::now();
    let ds = Dataset::load_movietweetings(&dir)?;
    eprintln!(
        "build: {} users, {} items, {} ratings from {}",
        ds.n_users(),
        ds.n_items(),
        ds.ratings.len(),
        dir.display()
    );
    let params = BuildParams {
        seed,
        ..BuildParams::default()
    };
    let artifacts = build::build(&ds, &params, &Progress::new(quiet))?;
    let inputs = build::hash_inputs(&dir, &["movies.dat", "ratings.dat"])?;
    let manifest = build::write(out, &artifacts, "movietweetings-100k", inputs, &params)?;
    eprintln!(
        "build: version {} written in {:.1}s",
        manifest.version,
        start.elapsed().as_secs_f64()
    );
    Ok(manifest)
}

/// Asks the local services for a user's features and recall candidates, and prints them.
async fn query(user: String, n: u32, recall_addr: SocketAddr, features_addr: SocketAddr) -> anyhow::Result<()> {
    use recstack_services::features::proto::GetUserRequest;
    use recstack_services::features::proto::features_client::FeaturesClient;
    use recstack_services::recall::service::proto::RecallRequest;
    use recstack_services::recall::service::proto::recall_client::RecallClient;

    let mut features = FeaturesClient::connect(format!("http://{features_addr}"))
        .await
        .with_context(|| format!("no feature service on {features_addr}: start it with `recstack up`"))?;
    match features
        .get_user(GetUserRequest { user_id: user.clone() })
        .await?
        .into_inner()
        .features
    {
        Some(f) => {
            let genres: Vec<String> = f
                .top_genres
                .iter()
                .map(|g| format!("{} {:.0}%", g.genre, g.share * 100.0))
                .collect();
            println!(
                "user {user}: {} ratings, mean {:.1}, top genres: {}",
                f.ratings,
                f.mean_rating,
                genres.join(", ")
            );
        }
        None => println!("user {user}: unknown (cold start: hot items only)"),
    }
    let mut recall = RecallClient::connect(format!("http://{recall_addr}"))
        .await
        .with_context(|| format!("no recall service on {recall_addr}: start it with `recstack up`"))?;
    let resp = recall
        .recall(RecallRequest {
            user_id: user,
            n,
            ..Default::default()
        })
        .await?
        .into_inner();
    println!(
        "{} candidates from artifact version {}:",
        resp.candidates.len(),
        resp.artifact_version
    );
    for (rank, c) in resp.candidates.iter().enumerate() {
        let sources: Vec<String> = c
            .sources
            .iter()
            .map(|s| format!("{}#{} ({:.3})", s.channel, s.rank, s.score))
            .collect();
        println!(
            "{:>4}. {}  fused {:.4}  from {}",
            rank + 1,
            c.item_id,
            c.fused_score,
            sources.join(", ")
        );
    }
    Ok(())
}

/// Writes the training and held-out ratings as CSV with dense ids.
fn export(a: &build::Artifacts, dir: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut train = std::io::BufWriter::new(std::fs::File::create(dir.join("train.csv"))?);
    for (u, (items, ratings)) in a.history.iter().zip(&a.history_ratings).enumerate() {
        for (i, r) in items.iter().zip(ratings) {
            writeln!(train, "{u},{i},{r}")?;
        }
    }
    let mut test = std::io::BufWriter::new(std::fs::File::create(dir.join("test.csv"))?);
    for r in &a.holdout {
        writeln!(test, "{},{},{}", r.user, r.item, r.rating)?;
    }
    std::fs::write(dir.join("shape.txt"), format!("{} {}\n", a.users.len(), a.items.len()))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Build { data, out, seed, quiet } => {
            let manifest = run_build(data.unwrap_or_else(dataset::bundled_dir), &out, seed, quiet)?;
            println!("{}", out.join(&manifest.version).display());
            Ok(())
        }
        Command::Up {
            artifacts,
            recall_addr,
            recall_http_addr,
            features_addr,
            features_http_addr,
            redis_url,
        } => {
            if !artifacts.join("current").exists() {
                eprintln!(
                    "up: no artifacts in {}; building them from the bundled data",
                    artifacts.display()
                );
                run_build(dataset::bundled_dir(), &artifacts, 42, false)?;
            }
            block_on(async {
                println!(
                    "recstack is up on the bundled data (artifacts in {}):",
                    artifacts.display()
                );
                println!("  recall    grpc://{recall_addr}   metrics http://{recall_http_addr}/metrics");
                println!("  features  grpc://{features_addr}   metrics http://{features_http_addr}/metrics");
                println!("try:  cargo run -p recstack-services -- query --user 1");
                println!("(gateway, ranking and rerank services are not built yet; Ctrl-C stops)");
                let (r, f) = tokio::join!(
                    serve_recall(artifacts.clone(), recall_addr, recall_http_addr, 10),
                    serve_features(artifacts.clone(), redis_url, None, features_addr, features_http_addr),
                );
                r.and(f)
            })
        }
        Command::Query {
            user,
            n,
            recall_addr,
            features_addr,
        } => block_on(query(user, n, recall_addr, features_addr)),
        Command::Serve {
            component:
                Serve::Recall {
                    artifacts,
                    grpc_addr,
                    http_addr,
                    reload_secs,
                },
        } => block_on(serve_recall(artifacts, grpc_addr, http_addr, reload_secs)),
        Command::Serve {
            component:
                Serve::Features {
                    artifacts,
                    redis_url,
                    dump,
                    grpc_addr,
                    http_addr,
                },
        } => block_on(serve_features(artifacts, redis_url, dump, grpc_addr, http_addr)),
        Command::Synth {
            users,
            items,
            out,
            seed,
        } => {
            let reference = Dataset::load_movietweetings(&dataset::bundled_dir())?;
            let cal = recstack_services::synth::Calibration::from_dataset(&reference);
            eprintln!("synth: SYNTHETIC data, {users} users × {items} items, calibrated to MovieTweetings 100K");
            let n = recstack_services::synth::generate(&cal, users, items, seed, &out, true)
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!("synth: {n} ratings written to {}", out.display());
            Ok(())
        }
        Command::ExportRanking { artifacts, out } => {
            use recstack_services::ranking::{export, features::FeatureSpec};
            let (manifest, a) = build::load(&artifacts, None).context("loading artifacts")?;
            let spec = FeatureSpec::all(FeatureSpec::default_buckets);
            let (train, test) = export::sample(&a, &spec, &export::ExportParams::default());
            export::write(&out, &spec, &train, &test).with_context(|| format!("writing {}", out.display()))?;
            std::fs::write(out.join("artifact_version"), &manifest.version)?;
            eprintln!(
                "export-ranking: {} training rows, {} test rows from artifacts {} in {}",
                train.rows(),
                test.rows(),
                manifest.version,
                out.display()
            );
            Ok(())
        }
        Command::Eval {
            artifacts,
            version,
            export_split,
        } => {
            let (manifest, a) = build::load(&artifacts, version.as_deref()).context("loading artifacts")?;
            if let Some(dir) = export_split {
                export(&a, &dir).with_context(|| format!("writing the split to {}", dir.display()))?;
            }
            let (rows, users) = eval::evaluate(&a, true);
            println!(
                "evaluation of {} on {users} users' held-out ratings ({} ratings)\n",
                manifest.version,
                a.holdout.len()
            );
            println!("| list | recall@50 | recall@200 | NDCG@20 |");
            println!("|---|---:|---:|---:|");
            for (name, m) in &rows {
                println!(
                    "| {name} | {:.4} | {:.4} | {:.4} |",
                    m.recall_50, m.recall_200, m.ndcg_20
                );
            }
            Ok(())
        }
    }
}
