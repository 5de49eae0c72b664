//! `recstack export-ranking`: the ranking model's training data
//! ([`recstack_offline::export`]).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use recstack_offline::build::Progress;
use recstack_offline::dataset;
use recstack_offline::export::{self, ExportError};

/// The flags of `recstack export-ranking`.
#[derive(Args)]
pub struct ExportRankingArgs {
    #[arg(long, default_value = "artifacts")]
    pub artifacts: PathBuf,
    /// The data the artifacts were built from (default: the bundled MovieTweetings).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: ExportRankingArgs) -> anyhow::Result<()> {
    let data = args.data.unwrap_or_else(dataset::bundled_dir);
    match export::export(&args.artifacts, &data, &args.out, &Progress::new(false)) {
        Err(e @ ExportError::OtherData { .. }) => Err(anyhow::anyhow!("--data {e}")),
        other => other.with_context(|| format!("export-ranking to {}", args.out.display())),
    }
}
