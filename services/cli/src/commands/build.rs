//! `recstack build`: versioned artifacts from ratings.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use recstack_offline::build::seq::{self, SeqSource};
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
    #[command(flatten)]
    pub seq: SeqModelArgs,
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
    let seq = args.seq.choice();
    match out {
        Location::Local(out) => {
            let manifest = run_build(dir, &out, args.seed, &seq, args.quiet)?;
            println!("{}", out.join(&manifest.version).display());
        }
        Location::Remote(remote) => {
            // Built on local disk, then uploaded: files first, `current` last.
            let staging = tempfile::tempdir().context("a staging directory for the build")?;
            let manifest = run_build(dir, staging.path(), args.seed, &seq, args.quiet)?;
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

/// The sequence-model flags of `recstack build` (and of the commands that build a validation
/// world: `tune`, `export-ranking`).
#[derive(Args, Clone)]
pub struct SeqModelArgs {
    /// The vector channel's sequence model (`model.json`, `items.f32`, `tower.onnx`, and the
    /// validation world's in `validation/`; see `scripts/train-seq`). Default: the bundled
    /// model, when it knows the data's items (otherwise the channel searches the ALS space,
    /// with a warning).
    #[arg(long, value_name = "DIR", conflicts_with = "no_seq_model")]
    pub seq_model: Option<PathBuf>,
    /// Build without a sequence model (the vector channel searches the ALS space).
    #[arg(long)]
    pub no_seq_model: bool,
}

impl SeqModelArgs {
    pub fn choice(&self) -> SeqModelChoice {
        SeqModelChoice::of(self.seq_model.clone(), self.no_seq_model)
    }
}

/// Which sequence model a build uses.
pub enum SeqModelChoice {
    /// The bundled one, if it fits the data.
    Bundled,
    /// This directory's; an error if it does not fit.
    Dir(PathBuf),
    None,
}

impl SeqModelChoice {
    pub fn of(dir: Option<PathBuf>, none: bool) -> Self {
        match (dir, none) {
            (_, true) => Self::None,
            (Some(dir), false) => Self::Dir(dir),
            (None, false) => Self::Bundled,
        }
    }

    /// The model to build with for `ds`, read from disk.
    pub fn source(&self, ds: &Dataset) -> anyhow::Result<Option<SeqSource>> {
        self.source_in(ds, "")
    }

    /// The validation world's model (the `validation/` directory beside the served one).
    pub fn validation_source(&self, ds: &Dataset) -> anyhow::Result<Option<SeqSource>> {
        self.source_in(ds, "validation")
    }

    fn source_in(&self, ds: &Dataset, sub: &str) -> anyhow::Result<Option<SeqSource>> {
        match self {
            Self::None => Ok(None),
            Self::Dir(dir) => {
                let dir = dir.join(sub);
                let source = SeqSource::read(&dir).context("--seq-model")?;
                anyhow::ensure!(
                    source.fits(ds),
                    "--seq-model {}: the model knows under half of the data's rated items (trained on other data?)",
                    dir.display()
                );
                Ok(Some(source))
            }
            Self::Bundled => {
                let Some(dir) = [seq::bundled_dir(), PathBuf::from(IMAGE_SEQ_MODEL)]
                    .into_iter()
                    .find(|d| d.join("model.json").exists())
                else {
                    tracing::warn!(
                        "no bundled sequence model found: building without one (the vector channel searches the ALS space)"
                    );
                    return Ok(None);
                };
                let source = SeqSource::read(&dir.join(sub)).context("the bundled sequence model")?;
                if source.fits(ds) {
                    return Ok(Some(source));
                }
                tracing::warn!(
                    "the bundled sequence model was trained on other data: building without one (the vector channel searches the ALS space); train one with scripts/train-seq and pass --seq-model"
                );
                Ok(None)
            }
        }
    }
}

/// Where the container images keep the bundled sequence model (`COPY services/models` in
/// `services/Dockerfile`): the build Job runs outside a checkout.
const IMAGE_SEQ_MODEL: &str = "/usr/share/recstack/models/seq";

/// Builds and writes artifacts from the data in `dir`.
pub fn run_build(
    dir: PathBuf,
    out: &Path,
    seed: u64,
    seq: &SeqModelChoice,
    quiet: bool,
) -> anyhow::Result<build::Manifest> {
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
    let source = seq.source(&ds)?;
    if let Some(s) = &source {
        eprintln!("build: sequence model {} from {}", s.card.version, s.dir.display());
    }
    let (manifest, _) = build::build_loaded(&ds, &dir, out, &params, source.as_ref(), &Progress::new(quiet))?;
    eprintln!(
        "build: version {} written in {:.1}s",
        manifest.version,
        start.elapsed().as_secs_f64()
    );
    Ok(manifest)
}
