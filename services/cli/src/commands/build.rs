//! `recstack build`: versioned artifacts from ratings.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use recstack_offline::build::{self, BuildParams, Progress};
use recstack_offline::dataset::{self, Dataset};
use recstack_services::objects::{self, Location};

/// The flags of `recstack build`.
#[derive(Args)]
pub struct BuildArgs {
    /// Where movies.dat and ratings.dat are: a directory, or an object store prefix
    /// (`s3://bucket/ratings`, …), copied to a temporary directory first. Default: the bundled
    /// MovieTweetings sample.
    #[arg(long, value_name = "URI")]
    pub data: Option<String>,
    /// Where artifact versions are written (`<out>/<version>/`, `<out>/current`): a directory,
    /// or an object store prefix (`s3://bucket/prefix`, `gs://`, `az://`; settings and
    /// credentials from the environment), to which the version is published only once whole.
    #[arg(long, default_value = "artifacts", value_name = "URI")]
    pub out: String,
    /// The object store's endpoint for `--data` and `--out` when it is not the provider's
    /// default (an S3-compatible server such as `http://minio.storage.svc:9000`).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Hide progress output.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: BuildArgs) -> anyhow::Result<()> {
    let endpoint = args.endpoint.as_deref();
    let out = Location::parse_at(&args.out, endpoint).context("--out")?;
    let data = match &args.data {
        None => Location::Local(dataset::bundled_dir()),
        Some(uri) => Location::parse_at(uri, endpoint).context("--data")?,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    // Remote ratings are copied to local disk first; the directory lives until the build ends.
    let fetched = tempfile::tempdir().context("a directory for the ratings")?;
    let dir = match data {
        Location::Local(dir) => dir,
        Location::Remote(remote) => {
            let n = runtime
                .block_on(remote.download(fetched.path()))
                .with_context(|| format!("fetching the ratings from {}", remote.uri))?;
            eprintln!("build: fetched {n} files from {}", remote.uri);
            fetched.path().to_path_buf()
        }
    };
    match out {
        Location::Local(out) => {
            let manifest = run_build(dir, &out, args.seed, args.quiet)?;
            println!("{}", out.join(&manifest.version).display());
        }
        Location::Remote(remote) => {
            // Built on local disk, then uploaded: files first, `current` last.
            let staging = tempfile::tempdir().context("a staging directory for the build")?;
            let manifest = run_build(dir, staging.path(), args.seed, args.quiet)?;
            eprintln!("build: publishing {} to {}", manifest.version, remote.uri);
            let files = runtime.block_on(objects::publish(staging.path(), &manifest.version, &remote))?;
            eprintln!(
                "build: published {files} files; {}/current names {}",
                remote.uri, manifest.version
            );
            println!("{}/{}", remote.uri, manifest.version);
        }
    }
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
