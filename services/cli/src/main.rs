//! `recstack`: the offline build and evaluation, the services, the local stack and the load
//! generator. Each subcommand is a module of [`commands`].
#![forbid(unsafe_code)]

mod commands;
mod dashboard;

/// mimalloc instead of the system allocator (see the workspace manifest for why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use commands::{bench, block_on, build, eval, export_ranking, query, replay, serve, serve_on, synth, tune, up};

#[derive(Parser)]
#[command(version, about = "recstack: build, serve and measure the recommender")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build versioned recall and feature artifacts from the ratings.
    Build(build::BuildArgs),
    /// Run the whole stack on loopback (gateway, recall, features, ranking, rerank), building
    /// artifacts from the bundled data first if there are none.
    Up(up::UpArgs),
    /// Ask the local services about a user: features, then recall candidates with lineage.
    Query(query::QueryArgs),
    /// Open-loop load against the gateway: requests at a fixed rate for held-out users,
    /// latency percentiles (HdrHistogram, from each request's scheduled start) and levels.
    Bench(bench::BenchArgs),
    /// Write a SYNTHETIC data set calibrated to the bundled data, for scale tests.
    Synth(synth::SynthArgs),
    /// Replay a stored request with changes (what-if: a level, items forced in or blocked,
    /// the primary or canary model) and show both lists side by side, every item's movement
    /// and the stage that made it.
    Replay(replay::ReplayArgs),
    /// Two stored requests side by side, every item's movement and the stage that made it.
    Compare(replay::CompareArgs),
    /// Serve one component.
    Serve {
        #[command(subcommand)]
        component: serve::ServeCommand,
    },
    /// Evaluate each recall channel, the merged set and the baselines on the held-out ratings
    /// of the current artifacts, with bootstrap intervals.
    Eval(eval::EvalArgs),
    /// Choose recall's settings on the validation world (the training ratings split again by
    /// time): the hot list's half-life and the channels' fusion weights.
    Tune(tune::TuneArgs),
    /// Write the ranking model's training data (NumPy arrays), with the same recall and
    /// feature code the stack runs: recall's candidates in the validation world (the training
    /// ratings' own time split) to train and judge on, and in the current artifacts' holdout
    /// to report. `scripts/train-ranker` reads it.
    ExportRanking(export_ranking::ExportRankingArgs),
    /// Write the sequence model's training data (`sequences.json`): every user's training
    /// items in order, in the validation world and in the real split. `scripts/train-seq`
    /// reads it.
    ExportSequences(export_ranking::ExportSequencesArgs),
}

fn main() -> anyhow::Result<()> {
    recstack_services::ops::init_logging();
    match Cli::parse().command {
        Command::Build(args) => build::run(args),
        Command::Up(args) => up::run(args),
        Command::Query(args) => block_on(query::run(args)),
        Command::Bench(args) => block_on(bench::run(args)),
        Command::Synth(args) => synth::run(args),
        Command::Replay(args) => block_on(replay::replay(args)),
        Command::Compare(args) => block_on(replay::compare(args)),
        Command::Serve { component } => serve_on(serve::run(component)),
        Command::Eval(args) => eval::run(args),
        Command::Tune(args) => tune::run(args),
        Command::ExportRanking(args) => export_ranking::run(args),
        Command::ExportSequences(args) => export_ranking::run_sequences(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
