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

/// How many threads a serving process's runtime gets: `RECSTACK_WORKER_THREADS` (the operator
/// sets it to the cores the pod requests, rounded up), else one per core this process may use.
pub const WORKER_THREADS_VAR: &str = "RECSTACK_WORKER_THREADS";

/// Reads [`WORKER_THREADS_VAR`]'s value: `None` (unset, empty, or 0 — a pod that requests no
/// CPU) leaves the runtime's default; a count of threads; anything else is an error naming
/// the variable.
pub fn worker_threads(value: Option<&str>) -> anyhow::Result<Option<usize>> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => match v.parse::<usize>() {
            Ok(0) => Ok(None),
            Ok(n) if n <= 1024 => Ok(Some(n)),
            _ => anyhow::bail!("{WORKER_THREADS_VAR} is {v:?}: a whole number of threads, 1 to 1024"),
        },
    }
}

/// [`block_on`] for a serving process: its runtime's threads per [`worker_threads`]. On a
/// loaded node a thread per node core only adds hand-offs between threads that get no core:
/// each wake-up of a parked one is a system call and a context switch (BENCHMARKS.md, "Fewer
/// hand-offs and writes per request").
///
/// Once the command has returned (the lifecycle drained within its grace period), blocking
/// calls still running get [`BLOCKING_SPARE`] more, then the process ends without them:
/// dropping the runtime would wait for them without end. A stream pod stopped while Kafka was
/// gone waited forever on a librdkafka call that had no timeout (its process outlived the
/// harness in `scripts/bench-deployed`; in a cluster the kubelet's SIGKILL ends it after the
/// termination grace period).
pub fn serve_on(command: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = worker_threads(std::env::var(WORKER_THREADS_VAR).ok().as_deref())? {
        runtime.worker_threads(n);
    }
    check_simd()?;
    let runtime = runtime.build().context("starting the async runtime")?;
    let result = runtime.block_on(command);
    runtime.shutdown_timeout(BLOCKING_SPARE);
    result
}

/// Refuses a value of `RECSTACK_SIMD` that is not one ([`recstack_core::simd::wide_allowed`]).
/// Every serving process checks it before it serves: the hot loops read it when they first
/// run, and there a bad value could only be ignored.
pub fn check_simd() -> anyhow::Result<()> {
    recstack_core::simd::wide_allowed(std::env::var(recstack_core::simd::VAR).ok().as_deref())?;
    Ok(())
}

/// How long a serving process waits for blocking calls still running once it has stopped.
pub const BLOCKING_SPARE: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    /// A blocking call that never returns (a client library waiting on a peer that is gone)
    /// does not keep a stopped process alive.
    #[test]
    fn a_stopped_process_does_not_wait_for_a_blocking_call_without_end() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let result = serve_on(async {
                tokio::task::spawn_blocking(|| std::thread::sleep(std::time::Duration::from_secs(3600)));
                Ok(())
            });
            let _ = done.send(result.is_ok());
        });
        let returned = finished.recv_timeout(BLOCKING_SPARE + std::time::Duration::from_secs(10));
        assert_eq!(returned, Ok(true), "serve_on still waiting for the blocking call");
    }

    #[test]
    fn worker_threads_read_the_pods_cpu_request_or_leave_the_default() {
        assert_eq!(worker_threads(None).unwrap(), None);
        assert_eq!(worker_threads(Some("")).unwrap(), None);
        assert_eq!(worker_threads(Some("0")).unwrap(), None);
        assert_eq!(worker_threads(Some("1")).unwrap(), Some(1));
        assert_eq!(worker_threads(Some(" 4\n")).unwrap(), Some(4));
        for bad in ["-1", "1.5", "250m", "two", "100000"] {
            let e = worker_threads(Some(bad)).unwrap_err().to_string();
            assert!(e.contains(WORKER_THREADS_VAR) && e.contains(bad), "{bad}: {e}");
        }
    }
}
