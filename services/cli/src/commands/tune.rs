//! `recstack tune`: recall's settings chosen on the validation world (never the holdout),
//! printed as tables: the hot list's half-life sweep, the channels' fusion weights and their
//! quotas.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use recstack_core::recall::{Channel, DEFAULT_N, DEFAULT_QUOTA};
use recstack_offline::build::{BuildParams, Progress, hot};
use recstack_offline::dataset::{self, Dataset, time_split};
use recstack_offline::{export, tune};

/// The flags of `recstack tune`.
#[derive(Args)]
pub struct TuneArgs {
    /// A directory with movies.dat and ratings.dat (default: the bundled MovieTweetings sample).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Coordinate-ascent passes over the channels.
    #[arg(long, default_value_t = 2)]
    pub passes: usize,
    #[command(flatten)]
    pub seq: super::build::SeqModelArgs,
}

pub fn run(args: TuneArgs) -> anyhow::Result<()> {
    let dir = args.data.unwrap_or_else(dataset::bundled_dir);
    let ds = Dataset::load_movietweetings(&dir).with_context(|| format!("loading {}", dir.display()))?;
    let params = BuildParams::default();
    let train = time_split(&ds.ratings, params.holdout, params.min_history).train;
    let (chosen, trials) = hot::tune_half_life(
        &train,
        ds.n_items(),
        params.holdout,
        params.min_history,
        hot::HALF_LIFE_GRID,
    )
    .context("the data is too small for a validation world")?;
    println!("hot list half-life on the validation world (what `recstack build` chooses):\n");
    println!("| half-life (days) | validation NDCG@20 |\n|---:|---:|");
    for t in &trials {
        let mark = if t.days == chosen { " (chosen)" } else { "" };
        println!("| {}{mark} | {:.4} |", t.days, t.ndcg_20);
    }
    eprintln!("tune: building the validation world …");
    let seq = args.seq.choice().validation_source(&ds)?;
    let mut world = export::validation_world(&ds, &params, seq.as_ref(), &Progress::new(false))
        .context("building the validation world")?;
    recstack_services::recall::tower::attach(&mut world).context("the sequence model's user tower")?;
    eprintln!("tune: searching fusion weights ({} passes) …", args.passes);
    let t = tune::tune_fusion(&world, DEFAULT_QUOTA, DEFAULT_N, args.passes, true);
    println!(
        "\nfusion weights on the validation world ({} users; merged NDCG@20 {:.4} with equal weights, {:.4} tuned):\n",
        t.users, t.equal_ndcg_20, t.tuned_ndcg_20
    );
    print_by_channel("weight", &t.weights);
    eprintln!("tune: searching per-channel quotas ({} passes) …", args.passes);
    let weights: Vec<f32> = t.weights.iter().map(|&(_, w)| w).collect();
    let q = tune::tune_quotas(&world, &weights, DEFAULT_QUOTA, DEFAULT_N, args.passes, true);
    println!(
        "\nper-channel quotas on the validation world, with those weights ({} users; merged NDCG@20 {:.4} with {DEFAULT_QUOTA} each, {:.4} tuned):\n",
        q.users, q.start_ndcg_20, q.tuned_ndcg_20
    );
    print_by_channel("quota", &q.quotas);
    Ok(())
}

/// A two-column table: each channel and its `what`.
fn print_by_channel(what: &str, values: &[(Channel, impl std::fmt::Display)]) {
    println!("| channel | {what} |\n|---|---:|");
    for (c, v) in values {
        println!("| {} | {v} |", c.name());
    }
}
