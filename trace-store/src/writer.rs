//! The gateway's trace writer: [`TraceWriter::offer`] puts a trace on a bounded in-memory queue
//! and returns at once; one task takes batches off the queue and writes them to a
//! [`TraceStore`], retrying with exponential backoff while the store is unavailable.
//!
//! Nothing is lost silently. The queue is bounded by count and by an estimate of the memory
//! the queued traces hold; a trace that does not fit is dropped and counted by reason. At every
//! moment `offered = written + rejected + dropped + queued`, and all five are metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::store::TraceStore;
use crate::{Detail, Trace, TraceSink};

#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Most traces waiting to be written.
    pub max_traces: usize,
    /// Most estimated bytes waiting ([`Trace::approx_bytes`]); full traces are ~100× a summary.
    pub max_bytes: usize,
    /// Most traces per store write.
    pub batch: usize,
    /// How long a batch waits to fill before it is written anyway.
    pub linger: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long shutdown keeps trying to write what is queued.
    pub shutdown_grace: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_traces: 10_000,
            max_bytes: 64 << 20,
            batch: 500,
            // A commit shared by more traces costs less per trace; a short wait keeps the
            // read-after-response gap small (the query API waits for a trace this young).
            linger: Duration::from_millis(250),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    /// `queue_full`, `memory`, `closed`, `shutdown`.
    reason: &'static str,
}

/// The writer's metrics; also its bookkeeping (tests and `stats()` read the same counters).
#[derive(Clone)]
struct WriterMetrics {
    offered: Counter,
    written: Counter,
    rejected: Counter,
    dropped: Family<DropLabels, Counter>,
    retries: Counter,
    queued: Gauge,
    queued_bytes: Gauge,
    write_seconds: Histogram,
    /// The store's own writing CPU ([`TraceStore::write_cpu`]), where it reports one.
    store_cpu_seconds: Counter<f64, AtomicU64>,
}

impl WriterMetrics {
    fn new(registry: &mut Registry) -> Self {
        let m = Self {
            offered: Counter::default(),
            written: Counter::default(),
            rejected: Counter::default(),
            dropped: Family::default(),
            retries: Counter::default(),
            queued: Gauge::default(),
            queued_bytes: Gauge::default(),
            write_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            store_cpu_seconds: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("trace_writer");
        r.register("offered", "Traces handed to the writer", m.offered.clone());
        r.register("written", "Traces the store acknowledged", m.written.clone());
        r.register(
            "rejected",
            "Traces the store refused for good (bad schema, mapping conflict)",
            m.rejected.clone(),
        );
        r.register(
            "dropped",
            "Traces dropped before reaching the store, by reason",
            m.dropped.clone(),
        );
        r.register(
            "retries",
            "Store writes retried after a transient failure",
            m.retries.clone(),
        );
        r.register("queued", "Traces accepted and not yet written", m.queued.clone());
        r.register(
            "queued_bytes",
            "Estimated memory held by queued traces",
            m.queued_bytes.clone(),
        );
        r.register(
            "write_seconds",
            "Time of one store write (a batch)",
            m.write_seconds.clone(),
        );
        r.register(
            "store_cpu_seconds",
            "CPU time this process spent in the store's writes (the embedded store's writer thread; 0 for a remote store)",
            m.store_cpu_seconds.clone(),
        );
        m
    }
}

/// Counts since start: `offered = written + rejected + dropped + queued`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    pub offered: u64,
    pub written: u64,
    pub rejected: u64,
    pub dropped: u64,
    pub queued: u64,
    pub queued_bytes: u64,
    pub retries: u64,
}

struct Shared {
    config: WriterConfig,
    bytes: AtomicUsize,
    metrics: WriterMetrics,
    /// The store's write CPU at its last reading, ns.
    store_cpu_ns: AtomicU64,
}

impl Shared {
    /// Adds the store's write CPU since the last reading to its counter.
    fn count_store_cpu(&self, store: &dyn TraceStore) {
        if let Some(cpu) = store.write_cpu() {
            let now = u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX);
            let before = self.store_cpu_ns.swap(now, Ordering::Relaxed);
            self.metrics
                .store_cpu_seconds
                .inc_by(now.saturating_sub(before) as f64 / 1e9);
        }
    }

    fn drop_traces(&self, reason: &'static str, n: usize) {
        self.metrics
            .dropped
            .get_or_create(&DropLabels { reason })
            .inc_by(n as u64);
    }

    /// A queued trace left the writer (written, rejected or dropped).
    fn release(&self, t: &Trace) {
        let size = t.approx_bytes();
        self.bytes.fetch_sub(size, Ordering::AcqRel);
        self.metrics.queued.dec();
        self.metrics.queued_bytes.dec_by(size as i64);
    }
}

/// The sending side; cheap to clone. Implements [`TraceSink`].
#[derive(Clone)]
pub struct TraceWriter {
    tx: mpsc::Sender<Trace>,
    shared: Arc<Shared>,
}

/// Owns the writing task: [`WriterTask::shutdown`] writes what is queued (within the grace
/// period) and stops.
pub struct WriterTask {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl WriterTask {
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "trace writer task failed");
        }
    }
}

impl TraceWriter {
    /// Starts the writing task on the current runtime; metrics go to `registry`.
    pub fn spawn(store: Arc<dyn TraceStore>, config: WriterConfig, registry: &mut Registry) -> (Self, WriterTask) {
        let (tx, rx) = mpsc::channel(config.max_traces.max(1));
        let shared = Arc::new(Shared {
            config,
            bytes: AtomicUsize::new(0),
            metrics: WriterMetrics::new(registry),
            store_cpu_ns: AtomicU64::new(0),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(store, rx, shared.clone(), stop_rx));
        (Self { tx, shared }, WriterTask { stop, task })
    }

    pub fn stats(&self) -> WriterStats {
        let m = &self.shared.metrics;
        let dropped = ["queue_full", "memory", "closed", "shutdown"]
            .iter()
            .map(|&reason| m.dropped.get_or_create(&DropLabels { reason }).get())
            .sum();
        WriterStats {
            offered: m.offered.get(),
            written: m.written.get(),
            rejected: m.rejected.get(),
            dropped,
            queued: m.queued.get().max(0) as u64,
            queued_bytes: m.queued_bytes.get().max(0) as u64,
            retries: m.retries.get(),
        }
    }
}

impl TraceSink for TraceWriter {
    fn offer(&self, trace: Trace) -> bool {
        let s = &self.shared;
        s.metrics.offered.inc();
        let size = trace.approx_bytes();
        if s.bytes.fetch_add(size, Ordering::AcqRel) + size > s.config.max_bytes {
            s.bytes.fetch_sub(size, Ordering::AcqRel);
            s.drop_traces("memory", 1);
            return false;
        }
        match self.tx.try_send(trace) {
            Ok(()) => {
                s.metrics.queued.inc();
                s.metrics.queued_bytes.inc_by(size as i64);
                true
            }
            Err(e) => {
                s.bytes.fetch_sub(size, Ordering::AcqRel);
                let reason = match e {
                    mpsc::error::TrySendError::Full(_) => "queue_full",
                    mpsc::error::TrySendError::Closed(_) => "closed",
                };
                s.drop_traces(reason, 1);
                false
            }
        }
    }
}

async fn run(
    store: Arc<dyn TraceStore>,
    mut rx: mpsc::Receiver<Trace>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let cfg = shared.config.clone();
    let mut batch: Vec<Trace> = Vec::with_capacity(cfg.batch);
    let mut deadline: Option<Instant> = None;
    loop {
        // Wait for the first trace of a batch, or for shutdown.
        if deadline.is_none() {
            tokio::select! {
                n = rx.recv_many(&mut batch, cfg.batch) => if n == 0 { break },
                _ = stop.wait_for(|s| *s) => {
                    rx.close();
                    deadline = Some(Instant::now() + cfg.shutdown_grace);
                }
            }
        }
        if deadline.is_some() {
            // Draining: take what is left without waiting.
            while batch.len() < cfg.batch {
                match rx.try_recv() {
                    Ok(t) => batch.push(t),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
        } else {
            // Linger so a batch can fill — unless it holds a full trace: those are debug
            // requests (and the sampled few), whose callers read them back at once.
            let until = Instant::now() + cfg.linger;
            while batch.len() < cfg.batch && !batch.iter().any(|t| t.detail == Detail::Full) {
                let room = cfg.batch - batch.len();
                match tokio::time::timeout_at(until, rx.recv_many(&mut batch, room)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        write(&*store, &mut batch, &shared, &mut stop, &mut deadline).await;
        if !batch.is_empty() {
            // Shutdown's grace ran out with the store still unavailable.
            break;
        }
    }
    // Whatever is still here could not be written in time.
    let mut left = std::mem::take(&mut batch);
    rx.close();
    while let Ok(t) = rx.try_recv() {
        left.push(t);
    }
    if !left.is_empty() {
        tracing::warn!(traces = left.len(), "trace writer stopped with traces unwritten");
        shared.drop_traces("shutdown", left.len());
        for t in &left {
            shared.release(t);
        }
    }
}

/// Writes `batch`, retrying transient failures with backoff; leaves in `batch` only what is
/// still unwritten when the shutdown deadline passes.
async fn write(
    store: &dyn TraceStore,
    batch: &mut Vec<Trace>,
    shared: &Shared,
    stop: &mut watch::Receiver<bool>,
    deadline: &mut Option<Instant>,
) {
    let cfg = &shared.config;
    let m = &shared.metrics;
    let mut backoff = cfg.backoff_min;
    let mut failing_since: Option<Instant> = None;
    // Moved (not copied) into a shared slice that each attempt hands to the store; `batch`
    // keeps its capacity for the next one.
    let mut pending: Arc<[Trace]> = batch.drain(..).collect();
    while !pending.is_empty() {
        let started = Instant::now();
        let result = store.put(pending.clone()).await;
        m.write_seconds.observe(started.elapsed().as_secs_f64());
        shared.count_store_cpu(store);
        match result {
            Ok(out) => {
                if let Some(since) = failing_since.take() {
                    tracing::info!(store = store.kind(), after = ?since.elapsed(), "trace store reachable again");
                }
                m.written.inc_by(out.written as u64);
                m.rejected.inc_by(out.rejected.len() as u64);
                for (id, reason) in out.rejected.iter().take(3) {
                    tracing::warn!(request_id = %id, %reason, "trace rejected by the store");
                }
                let retry: std::collections::HashSet<usize> = out.retry.into_iter().collect();
                let mut kept = Vec::with_capacity(retry.len());
                for (i, t) in pending.iter().enumerate() {
                    if retry.contains(&i) {
                        // Few (the store's back-pressure): copied into the next attempt.
                        kept.push(t.clone());
                    } else {
                        shared.release(t);
                    }
                }
                pending = kept.into();
                if pending.is_empty() {
                    return;
                }
            }
            Err(e) if e.is_transient() => {
                if failing_since.is_none() {
                    tracing::warn!(store = store.kind(), error = %e, traces = pending.len(), "trace store unavailable; retrying");
                    failing_since = Some(Instant::now());
                }
            }
            Err(e) => {
                tracing::error!(store = store.kind(), error = %e, traces = pending.len(), "trace batch refused");
                m.rejected.inc_by(pending.len() as u64);
                for t in pending.iter() {
                    shared.release(t);
                }
                return;
            }
        }
        m.retries.inc();
        let wake = Instant::now() + backoff;
        if let Some(d) = *deadline {
            if wake >= d {
                *batch = pending.to_vec();
                return;
            }
            tokio::time::sleep_until(wake).await;
        } else {
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = stop.wait_for(|s| *s) => *deadline = Some(Instant::now() + cfg.shutdown_grace),
            }
        }
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}
