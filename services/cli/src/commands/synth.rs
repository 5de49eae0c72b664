//! `recstack synth`: a SYNTHETIC data set calibrated to the bundled data, for scale tests.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use recstack_offline::dataset::{self, Dataset};
use recstack_offline::synth;

/// The flags of `recstack synth`.
#[derive(Args)]
pub struct SynthArgs {
    #[arg(long, default_value_t = 10_000_000)]
    pub users: u64,
    #[arg(long, default_value_t = 1_000_000)]
    pub items: u32,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    let SynthArgs {
        users,
        items,
        out,
        seed,
    } = args;
    let reference = Dataset::load_movietweetings(&dataset::bundled_dir())?;
    let cal = synth::Calibration::from_dataset(&reference);
    eprintln!("synth: SYNTHETIC data, {users} users × {items} items, calibrated to MovieTweetings 100K");
    let n =
        synth::generate(&cal, users, items, seed, &out, true).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("synth: {n} ratings written to {}", out.display());
    Ok(())
}
