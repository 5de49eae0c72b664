//! `recstack build`: versioned artifacts from ratings.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use recstack_offline::build::{self, BuildParams, Progress};
use recstack_offline::dataset::{self, Dataset};

/// The flags of `recstack build`.
#[derive(Args)]
pub struct BuildArgs {
    /// Directory with movies.dat and ratings.dat (default: the bundled MovieTweetings).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Where artifact versions are written (`<out>/<version>/`, `<out>/current`).
    #[arg(long, default_value = "artifacts")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Hide progress output.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: BuildArgs) -> anyhow::Result<()> {
    let dir = args.data.unwrap_or_else(dataset::bundled_dir);
    let manifest = run_build(dir, &args.out, args.seed, args.quiet)?;
    println!("{}", args.out.join(&manifest.version).display());
    Ok(())
}

/// Builds and writes artifacts from the data in `dir`.
pub fn run_build(dir: PathBuf, out: &Path, seed: u64, quiet: bool) -> anyhow::Result<build::Manifest> {
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
    let (manifest, _) = build::build_loaded(&ds, &dir, out, &params, &Progress::new(quiet))?;
    eprintln!(
        "build: version {} written in {:.1}s",
        manifest.version,
        start.elapsed().as_secs_f64()
    );
    Ok(manifest)
}
