//! One module per `recstack` subcommand: its flags and what it runs. The work itself is in
//! the library crates (`recstack-offline` for build, eval, synth and the ranking export;
//! `recstack-services` for serving).

pub mod bench;
pub mod build;
pub mod eval;
pub mod export_ranking;
pub mod query;
pub mod serve;
pub mod synth;
pub mod up;

use anyhow::Context;
use recstack_services::serve::Service;

/// Serves until Ctrl-C, then stops cleanly.
async fn until_ctrl_c(services: Vec<Service>) -> anyhow::Result<()> {
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("stopping…");
    for s in services {
        s.stop().await?;
    }
    Ok(())
}

/// Runs an async command on a fresh multi-threaded runtime (only the serving commands need one).
pub fn block_on(command: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(command)
}
