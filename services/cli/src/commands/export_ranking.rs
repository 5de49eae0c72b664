//! `recstack export-ranking`: the ranking model's training data
//! ([`recstack_offline::export`]); `recstack export-sequences`: the sequence model's
//! ([`recstack_offline::sequences`]).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use recstack_offline::build::Progress;
use recstack_offline::build::{BuildParams, seq};
use recstack_offline::dataset;
use recstack_offline::export::{self, ExportError};
use recstack_offline::sequences;

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
    /// The sequence model the artifacts were built with; its `validation/` model builds the
    /// validation world (default: the bundled one).
    #[arg(long, value_name = "DIR")]
    pub seq_model: Option<PathBuf>,
}

pub fn run(args: ExportRankingArgs) -> anyhow::Result<()> {
    let data = args.data.unwrap_or_else(dataset::bundled_dir);
    let seq_validation = args.seq_model.unwrap_or_else(seq::bundled_dir).join("validation");
    let attach = |a: &mut recstack_offline::build::Artifacts| {
        recstack_services::recall::tower::attach(a).map_err(|e| e.to_string())
    };
    let progress = Progress::new(false);
    match export::export(&args.artifacts, &data, &seq_validation, &attach, &args.out, &progress) {
        Err(e @ ExportError::OtherData { .. }) => Err(anyhow::anyhow!("--data {e}")),
        other => other.with_context(|| format!("export-ranking to {}", args.out.display())),
    }
}

/// The flags of `recstack export-sequences`.
#[derive(Args)]
pub struct ExportSequencesArgs {
    /// MovieTweetings-format data (default: the bundled data), split as `recstack build`
    /// splits it with its default parameters.
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run_sequences(args: ExportSequencesArgs) -> anyhow::Result<()> {
    let data = args.data.unwrap_or_else(dataset::bundled_dir);
    let ds = dataset::Dataset::load_movietweetings(&data).with_context(|| format!("--data {}", data.display()))?;
    let s = sequences::sequences(&ds, &BuildParams::default());
    sequences::write(&args.out, &s).with_context(|| format!("export-sequences to {}", args.out.display()))?;
    eprintln!(
        "export-sequences: {} users, {} items, {} training ratings in the real split, to {}",
        s.test.train.len(),
        s.items.len(),
        s.test.train.iter().map(Vec::len).sum::<usize>(),
        args.out.display()
    );
    Ok(())
}
