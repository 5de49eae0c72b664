//! `recstack`: the offline build and evaluation (the serving commands arrive with the
//! services).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use recstack_services::build::{self, BuildParams, Progress};
use recstack_services::dataset::{self, Dataset};
use recstack_services::eval;

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
    /// Evaluate each recall channel on the held-out ratings of the current artifacts.
    Eval {
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        /// A specific version (default: the one `current` names).
        #[arg(long)]
        version: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Build { data, out, seed, quiet } => {
            let dir = data.unwrap_or_else(dataset::bundled_dir);
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
            let manifest = build::write(&out, &artifacts, "movietweetings-100k", inputs, &params)?;
            println!("{}", out.join(&manifest.version).display());
            eprintln!(
                "build: version {} written in {:.1}s",
                manifest.version,
                start.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Eval { artifacts, version } => {
            let (manifest, a) = build::load(&artifacts, version.as_deref()).context("loading artifacts")?;
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
