//! One module per `recstack` subcommand: its flags and what it runs. The work itself is in
//! the library crates (`recstack-offline` for build, eval, synth and the ranking export;
//! `recstack-services` for serving).

pub mod bench;
pub mod build;
pub mod eval;
pub mod export_ranking;
pub mod query;
pub mod replay;
pub mod serve;
pub mod synth;
pub mod tune;
pub mod up;

use anyhow::Context;
use recstack_services::serve::{Lifecycle, Service};

/// Serves until SIGTERM or Ctrl-C, then drains and stops cleanly (see [`Lifecycle`]).
async fn until_stopped(services: Vec<Service>, lifecycle: Lifecycle) -> anyhow::Result<()> {
    lifecycle.serve_until_signal(services).await?;
    Ok(())
}

/// Runs an async command on a fresh multi-threaded runtime (only the serving commands need one).
pub fn block_on(command: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(command)
}
