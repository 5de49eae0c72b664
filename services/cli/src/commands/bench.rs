//! `recstack bench`: open-loop load against the gateway's gRPC `Recommend`.
//!
//! Requests go out on a fixed schedule whatever the responses do (open loop), and each
//! latency is measured from the request's scheduled start, so a stalled server shows up in the
//! percentiles instead of slowing the generator down (no coordinated omission).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use recstack_offline::build;
use recstack_services::gateway::proto::RecommendRequest;
use recstack_services::gateway::proto::gateway_client::GatewayClient;
use tonic::transport::{Channel, Endpoint};

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// The gateway's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:9000")]
    pub gateway: String,
    /// Requests per second.
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Items per request.
    #[arg(long, default_value_t = 20)]
    pub n: u32,
    /// Per-request budget sent to the gateway (0: its default).
    #[arg(long, default_value_t = 0)]
    pub timeout_ms: u32,
    /// Connections spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Artifacts whose held-out users the requests are for.
    #[arg(long, default_value = "artifacts")]
    pub artifacts: PathBuf,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
}

/// One request's outcome.
struct Sample {
    latency: Duration,
    /// The level and the gateway's own time (`latency_us`) of an answered request.
    answer: Option<(String, u32)>,
    measured: bool,
}

/// What a run measured.
pub struct Report {
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
    /// The gateway's own time per answered request (from receiving it to answering, as it
    /// reports in `latency_us`): the rest of `hist` is transport and waiting to be read.
    pub server: Histogram<u64>,
    pub levels: BTreeMap<String, u64>,
}

impl Report {
    pub fn print(&self, args: &BenchArgs) {
        let q = |p: f64| self.hist.value_at_quantile(p) as f64 / 1000.0;
        let gw = |p: f64| self.server.value_at_quantile(p) as f64 / 1000.0;
        println!(
            "| target req/s | requests | achieved req/s | p50 ms | p99 ms | p99.9 ms | max ms | gateway p50 ms | gateway p99 ms | errors | levels |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        let levels: Vec<String> = self.levels.iter().map(|(l, n)| format!("{l} {n}")).collect();
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
            args.rate,
            self.sent,
            self.ok as f64 / self.elapsed.as_secs_f64(),
            q(0.5),
            q(0.99),
            q(0.999),
            self.hist.max() as f64 / 1000.0,
            gw(0.5),
            gw(0.99),
            self.errors,
            levels.join(", ")
        );
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let report = load(&args).await?;
    report.print(&args);
    Ok(())
}

/// The users to ask for: those with held-out ratings.
fn users(args: &BenchArgs) -> anyhow::Result<Vec<String>> {
    let (_, a) = build::load(&args.artifacts, None).with_context(|| {
        format!(
            "loading artifacts from {} (for held-out users)",
            args.artifacts.display()
        )
    })?;
    let mut users: Vec<u32> = a.holdout.iter().map(|r| r.user).collect();
    users.sort_unstable();
    users.dedup();
    anyhow::ensure!(!users.is_empty(), "the artifacts hold out no users");
    Ok(users.into_iter().map(|u| a.users[u as usize].clone()).collect())
}

pub async fn load(args: &BenchArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.rate > 0, "--rate must be positive");
    let users = users(args)?;
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        let channel: Channel = Endpoint::from_shared(args.gateway.clone())?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("no gateway at {}: start it with `recstack up`", args.gateway))?;
        clients.push(GatewayClient::new(channel));
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    let warmup = Duration::from_secs(args.warmup);
    let total = warmup + Duration::from_secs(args.seconds);
    let start = Instant::now();
    // The schedule runs on a thread of its own that sleeps to each request's start: tokio's
    // timer rounds sleeps up to whole milliseconds, which at 1,000 req/s made every request
    // start up to a millisecond late and counted that in its latency. A late thread sends its
    // backlog at once (the latency still counts from each scheduled start).
    let runtime = tokio::runtime::Handle::current();
    let generator = {
        let args = args.clone();
        tokio::task::spawn_blocking(move || {
            let mut sent = 0u64;
            for k in 0usize.. {
                let offset = scheduled_offset(k, args.rate);
                if offset >= total {
                    break;
                }
                let at = start + offset;
                if let Some(wait) = at.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let measured = offset >= warmup;
                let mut client = clients[k % clients.len()].clone();
                let user = users[(k * 7919) % users.len()].clone();
                sent += u64::from(measured);
                let tx = tx.clone();
                let (n, timeout_ms) = (args.n, args.timeout_ms);
                runtime.spawn(async move {
                    let r = client
                        .recommend(RecommendRequest {
                            user_id: user,
                            n,
                            timeout_ms,
                            ..Default::default()
                        })
                        .await;
                    let _ = tx.send(Sample {
                        latency: at.elapsed(),
                        answer: r.ok().map(|r| {
                            let r = r.into_inner();
                            (r.level, r.latency_us)
                        }),
                        measured,
                    });
                });
            }
            sent
        })
    };

    let mut tally = Tally {
        hist: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")?,
        server: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")?,
        ok: 0,
        errors: 0,
        levels: BTreeMap::new(),
    };
    let mut last = Instant::now();
    let mut generator = generator;
    // Until the generator has sent everything, report progress each second.
    let sent = loop {
        tokio::select! {
            Some(s) = rx.recv() => {
                tally.record(s);
                if last.elapsed() >= Duration::from_secs(1) {
                    last = Instant::now();
                    eprintln!(
                        "bench: {:>4.0}s  {} ok  {} errors  p99 {:.2} ms",
                        start.elapsed().as_secs_f64(),
                        tally.ok,
                        tally.errors,
                        tally.hist.value_at_quantile(0.99) as f64 / 1000.0
                    );
                }
            }
            sent = &mut generator => break sent.context("load generator")?,
        }
    };
    // Then let the last requests finish (each is bounded by the gateway's deadline).
    let drain = tokio::time::sleep(Duration::from_secs(5));
    tokio::pin!(drain);
    while tally.ok + tally.errors < sent {
        tokio::select! {
            Some(s) = rx.recv() => tally.record(s),
            _ = &mut drain => break,
        }
    }
    let unanswered = sent.saturating_sub(tally.ok + tally.errors);
    Ok(Report {
        sent,
        ok: tally.ok,
        errors: tally.errors + unanswered,
        elapsed: Duration::from_secs(args.seconds),
        hist: tally.hist,
        server: tally.server,
        levels: tally.levels,
    })
}

/// When request `k` (from 0) is due, from the start of the run, at `rate` requests a second:
/// computed from `k` rather than added up, so the schedule does not drift.
fn scheduled_offset(k: usize, rate: u32) -> Duration {
    Duration::from_nanos((k as u64).saturating_mul(1_000_000_000) / u64::from(rate.max(1)))
}

struct Tally {
    hist: Histogram<u64>,
    server: Histogram<u64>,
    ok: u64,
    errors: u64,
    levels: BTreeMap<String, u64>,
}

impl Tally {
    /// Counts a measured sample (warm-up samples are dropped).
    fn record(&mut self, s: Sample) {
        if !s.measured {
            return;
        }
        let _ = self.hist.record(s.latency.as_micros().max(1) as u64);
        match s.answer {
            Some((l, server_us)) => {
                let _ = self.server.record(u64::from(server_us).max(1));
                self.ok += 1;
                *self.levels.entry(l).or_insert(0) += 1;
            }
            None => self.errors += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_evenly_spaced_and_does_not_drift() {
        assert_eq!(scheduled_offset(0, 1000), Duration::ZERO);
        assert_eq!(scheduled_offset(1, 1000), Duration::from_millis(1));
        assert_eq!(scheduled_offset(3, 3), Duration::from_secs(1));
        // One second of 7 req/s ends exactly on the second, not 7 rounded intervals later.
        assert_eq!(scheduled_offset(7, 7), Duration::from_secs(1));
        assert_eq!(scheduled_offset(7_000_000, 7), Duration::from_secs(1_000_000));
    }
}
