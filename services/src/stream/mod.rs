//! The built-in stream job: reads the event log, aggregates tumbling windows per item, keeps
//! users' recent items up to date within seconds, and writes both to the feature store.
//!
//! - [`window`]: the window math, versions and recent-item lists (pure, in the core).
//! - [`limiter`]: the adaptive write limiter (pure, in the core).
//! - [`sink`]: where the results go (in memory, or Redis with versioned Lua writes).
//!
//! Replicas share the log: each reads the partitions its [`assignment::Assignment`] gives it
//! (its StatefulSet ordinal among the replicas), and checkpoints are per partition, so a
//! partition continues from its checkpoint whichever replica reads it next.
//!
//! Per partition the worker reads a batch, counts each event in its window and sends every
//! engagement down the **fast path** (the user's recent items and genre affinities are written
//! at once). Windows the watermark has passed are queued for writing; the limiter spreads
//! them over the next window. A write is versioned (window end, newest offset), so a replay
//! changes nothing. The checkpoint committed (offset and watermark) is taken only when every
//! fired window is written, at the oldest event of an open window: after a crash the log is
//! read again from there with that watermark, the windows written since are refused by their
//! versions, and the open ones are counted whole — totals stay exact.
//!
//! With engine `flink` the same worker reads the Flink job's output instead
//! ([`Input::Aggregates`]): closed windows go straight to the write queue, engagements down the
//! fast path, and the checkpoint is simply the next record.

pub mod sink;

pub use recstack_core::stream::{aggregate, limiter, window};
pub use recstack_crds::assignment;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::ops::{Buckets, MetricsRegistry};
use prost::Message;
use tokio::sync::watch;

use crate::events::log::{Checkpoint, EventLog, LogError};
use crate::events::{Event, now_ms};
use crate::features::proto::GenreShare;
use crate::features::{ItemFeatures, Key, Snapshot, UserFeatures};
use aggregate::Aggregate;
use assignment::Assignment;
use limiter::{LimiterConfig, WriteLimiter};
use sink::{FeatureSink, SinkError, trend_rank};
use window::{Aggregator, ItemState, ItemWindow, WindowConfig, genre_affinity, smoothed_ctr};

/// How often a checkpoint whose offset did not move (only its watermark) is written.
const WATERMARK_COMMIT_MS: f64 = 1_000.0;

/// The consumer group the built-in job commits as (the Flink job uses its own).
pub const GROUP: &str = "recstack-stream";

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// What the worker reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Input {
    /// Behaviour events (engine `builtin`): the worker aggregates the windows itself.
    #[default]
    Events,
    /// The Flink job's output (engine `flink`, [`aggregate`]): windows already closed and
    /// engagements, applied as they come — the same writes, so the same hot score, trending
    /// list and user fast path.
    Aggregates,
}

/// Worker settings.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    pub input: Input,
    pub window: WindowConfig,
    pub group: String,
    /// Records read per partition per round.
    pub batch: usize,
    /// Pause when every partition is caught up and nothing is due.
    pub idle_poll: Duration,
    /// Spread window writes (`None`: write each window as it fires).
    pub limiter: Option<LimiterConfig>,
    /// A caught-up partition's watermark follows the clock, so its last window closes
    /// without newer events (live serving). Off for bounded replays, which end with a flush.
    pub follow_clock: bool,
    /// Which partitions this replica reads (all, with one replica).
    pub assignment: Assignment,
}

impl StreamConfig {
    pub fn live(window: WindowConfig) -> Self {
        Self {
            input: Input::Events,
            window,
            group: GROUP.into(),
            batch: 2_000,
            idle_poll: Duration::from_millis(20),
            limiter: Some(LimiterConfig::for_window(window.size_ms)),
            follow_clock: true,
            assignment: Assignment::ALL,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// applied, stale (refused by its version: a replay or duplicate)
    pub outcome: &'static str,
}

/// Metrics of the stream job (`recstack_stream_*`).
pub struct StreamMetrics {
    pub registry: Registry,
    pub events: Counter,
    pub late: Counter,
    pub undecodable: Counter,
    pub windows: Family<OutcomeLabels, Counter>,
    pub user_writes: Counter,
    pub backlog: Gauge,
    pub lag: Gauge,
    /// Partitions this replica reads.
    pub partitions: Gauge,
    pub sink_errors: Counter,
    /// Event time to the user's features written (the fast path).
    pub fast_path_delay: Histogram,
}

impl Default for StreamMetrics {
    fn default() -> Self {
        let mut m = MetricsRegistry::new("recstack_stream");
        Self {
            events: m.counter(
                "events",
                "Events read from the log (with engine flink: engagements read from the job's output)",
            ),
            late: m.counter("late", "Events dropped because their window had fired"),
            undecodable: m.counter("undecodable", "Log records that are not events or aggregates (skipped)"),
            windows: m.family("windows", "Item windows written, by outcome"),
            user_writes: m.counter("user_writes", "User feature writes (fast path)"),
            backlog: m.gauge("backlog", "Item windows waiting for the write limiter"),
            lag: m.gauge("lag", "Records in this replica's partitions not yet read"),
            partitions: m.gauge("partitions", "Partitions of the event log this replica reads"),
            sink_errors: m.counter("sink_errors", "Failed writes to the feature store (retried)"),
            fast_path_delay: m.histogram(
                "fast_path_delay_seconds",
                "From an engagement's event time to its user's features written",
                Buckets::exponential(0.001, 2.0, 16),
            ),
            registry: m.finish(),
        }
    }
}

impl StreamMetrics {
    pub fn encode(&self) -> String {
        crate::ops::encode(&self.registry)
    }
}

/// The feature value of an item: the build's features with the real-time ones over them.
pub fn item_features(base: Option<&ItemFeatures>, item_id: &str, s: &ItemState) -> ItemFeatures {
    let mut f = base.cloned().unwrap_or_else(|| ItemFeatures {
        item_id: item_id.to_string(),
        ..ItemFeatures::default()
    });
    f.impressions = s.totals.impressions;
    f.clicks = s.totals.clicks;
    f.plays = s.totals.plays;
    f.likes = s.totals.likes;
    f.ctr = smoothed_ctr(s.totals.clicks, s.totals.impressions) as f32;
    f.window_end_ms = s.last_window_end_ms;
    f.trend = s.hot as f32;
    f
}

/// The feature value of a user: the build's features with the real-time recent items first
/// and genre affinities over them.
pub fn user_features(snapshot: &Snapshot, user_id: &str, recent: &[(String, i64)]) -> UserFeatures {
    let mut f = snapshot.user(user_id).cloned().unwrap_or_else(|| UserFeatures {
        user_id: user_id.to_string(),
        ..UserFeatures::default()
    });
    let mut items: Vec<(String, i64)> = recent.to_vec();
    let cap = window::RECENT_ITEMS.max(f.recent_items.len());
    for old in &f.recent_items {
        if items.len() >= cap {
            break;
        }
        if !items.iter().any(|(i, _)| i == old) {
            items.push((old.clone(), i64::MIN));
        }
    }
    if let Some((_, newest)) = recent.first() {
        f.last_ts = f.last_ts.max(newest / 1_000);
    }
    f.top_genres = genre_affinity(&items, |i| snapshot.item(i).map(|f| f.genres.as_slice()), 5)
        .into_iter()
        .map(|(genre, share)| GenreShare { genre, share })
        .collect();
    f.recent_items = items.into_iter().map(|(i, _)| i).collect();
    f
}

struct PartitionState {
    partition: u32,
    agg: Aggregator,
    next: u64,
    /// Fired windows not yet written.
    pending: VecDeque<ItemWindow>,
    committed: Checkpoint,
    /// When (worker clock, ms) `committed` was written.
    committed_at: f64,
    caught_up: bool,
    /// Records after `next` at the last read.
    lag: u64,
}

impl PartitionState {
    /// Where a restart may begin: only when every fired window is written, at the oldest
    /// event of an open window, with the current watermark. Replaying from there with that
    /// watermark drops exactly the events this run dropped as late, and rebuilds the open
    /// windows whole; windows written already fire again with the same version and are
    /// refused.
    fn checkpoint(&self, input: Input) -> Option<Checkpoint> {
        let offset = match input {
            Input::Events => self.agg.safe_offset().min(self.next),
            // No open windows here: everything read is applied once the queue is empty.
            Input::Aggregates => self.next,
        };
        self.pending.is_empty().then(|| Checkpoint {
            offset,
            watermark: self.agg.watermark(),
        })
    }
}

/// The built-in stream worker over `log`, writing to `sink`.
pub struct Worker<L: EventLog, S: FeatureSink> {
    pub log: Arc<L>,
    pub sink: Arc<S>,
    pub snapshot: Arc<Snapshot>,
    pub config: StreamConfig,
    pub metrics: Arc<StreamMetrics>,
}

impl<L: EventLog, S: FeatureSink> Worker<L, S> {
    /// Runs until `stop` turns true (then commits what is safe) or, with `until_caught_up`,
    /// until every partition is read to its end, every window flushed and written (a bounded
    /// replay).
    pub async fn run(&self, mut stop: watch::Receiver<bool>, until_caught_up: bool) -> Result<(), StreamError> {
        let mut parts = Vec::new();
        let owned = self.config.assignment.partitions(self.log.partitions());
        tracing::info!(assignment = %self.config.assignment, partitions = ?owned, "reading the event log");
        self.metrics.partitions.set(owned.len() as i64);
        for p in owned {
            let from = self
                .log
                .committed(&self.config.group, p)
                .await?
                .unwrap_or(Checkpoint::at(0));
            let mut agg = Aggregator::new(self.config.window);
            agg.advance_to(from.watermark);
            parts.push(PartitionState {
                partition: p,
                agg,
                next: from.offset,
                pending: VecDeque::new(),
                committed: from,
                committed_at: 0.0,
                caught_up: false,
                lag: 0,
            });
        }
        let started = Instant::now();
        let clock = || started.elapsed().as_secs_f64() * 1_000.0;
        let mut limiter = self.config.limiter.map(WriteLimiter::new);
        loop {
            if *stop.borrow() {
                self.commit(&mut parts, clock(), true).await?;
                break;
            }
            let mut read_any = false;
            for ps in &mut parts {
                read_any |= self.read_partition(ps, limiter.as_mut(), clock()).await?;
            }
            self.metrics.lag.set(parts.iter().map(|p| p.lag).sum::<u64>() as i64);
            if until_caught_up && parts.iter().all(|p| p.caught_up) {
                for ps in &mut parts {
                    ps.pending.extend(ps.agg.flush());
                }
                limiter = None;
            }
            let written = self.write_due(&mut parts, limiter.as_mut(), clock()).await;
            self.commit(&mut parts, clock(), false).await?;
            let backlog: usize = parts.iter().map(|p| p.pending.len()).sum();
            self.metrics.backlog.set(backlog as i64);
            if until_caught_up && parts.iter().all(|p| p.caught_up) && backlog == 0 {
                return Ok(());
            }
            if !read_any && written == 0 {
                let wait = limiter
                    .as_ref()
                    .and_then(WriteLimiter::wait_ms)
                    .map_or(self.config.idle_poll, |ms| Duration::from_secs_f64(ms / 1_000.0))
                    .min(self.config.idle_poll);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {}
                }
            }
        }
        Ok(())
    }

    /// Commits each partition's checkpoint when its offset moved; one whose watermark alone
    /// moved (an idle partition following the clock) at most every [`WATERMARK_COMMIT_MS`],
    /// or at once with `all` (stopping): an idle job would otherwise write and sync a
    /// checkpoint every round.
    async fn commit(&self, parts: &mut [PartitionState], now: f64, all: bool) -> Result<(), StreamError> {
        for ps in parts {
            let Some(at) = ps.checkpoint(self.config.input) else {
                continue;
            };
            let due = at.offset != ps.committed.offset || all || now - ps.committed_at >= WATERMARK_COMMIT_MS;
            if at != ps.committed && due {
                self.log.commit(&self.config.group, ps.partition, at).await?;
                ps.committed = at;
                ps.committed_at = now;
            }
        }
        Ok(())
    }

    /// Reads one batch of a partition; returns whether it read anything.
    async fn read_partition(
        &self,
        ps: &mut PartitionState,
        limiter: Option<&mut WriteLimiter>,
        now: f64,
    ) -> Result<bool, StreamError> {
        let records = self.log.read(ps.partition, ps.next, self.config.batch).await?;
        ps.caught_up = records.len() < self.config.batch;
        let mut engagements = Vec::new();
        let mut closed = Vec::new();
        for r in &records {
            ps.next = r.offset + 1;
            match self.config.input {
                Input::Events => match Event::decode(&r.value) {
                    Ok(e) => {
                        self.metrics.events.inc();
                        if ps.agg.push(&e, r.offset) == window::Accepted::Late {
                            self.metrics.late.inc();
                        }
                        if e.kind.engaged() {
                            engagements.push((e.user_id, e.item_id, e.ts_ms));
                        }
                    }
                    Err(err) => self.skip(ps.partition, r.offset, &err),
                },
                Input::Aggregates => match Aggregate::decode(&r.value) {
                    Ok(Aggregate::Window(w)) => closed.push(w),
                    Ok(Aggregate::Engagement {
                        user_id,
                        item_id,
                        ts_ms,
                    }) => {
                        self.metrics.events.inc();
                        engagements.push((user_id, item_id, ts_ms));
                    }
                    Err(err) => self.skip(ps.partition, r.offset, &err),
                },
            }
        }
        if !engagements.is_empty() {
            self.fast_path(&engagements).await?;
        }
        if ps.caught_up && self.config.follow_clock {
            ps.agg.advance_to(now_ms() - self.config.window.delay_ms);
        }
        let mut fired = ps.agg.fire();
        fired.append(&mut closed);
        if let Some(l) = limiter {
            l.add(fired.len() as u64, now);
        }
        ps.pending.extend(fired);
        // Caught up means read to the end: no lag, and no need to ask the log (on Kafka a
        // round trip) every idle round.
        ps.lag = if ps.caught_up {
            0
        } else {
            self.log
                .end_offset(ps.partition)
                .await
                .map_or(ps.lag, |end| end.saturating_sub(ps.next))
        };
        Ok(!records.is_empty())
    }

    fn skip(&self, partition: u32, offset: u64, err: &dyn std::fmt::Display) {
        self.metrics.undecodable.inc();
        tracing::warn!(partition, offset, error = %err, "skipping a log record");
    }

    /// Users' recent items and their feature values, at once.
    async fn fast_path(&self, engagements: &[(String, String, i64)]) -> Result<(), StreamError> {
        let lists = self.sink.add_recent(engagements).await?;
        let now = now_ms();
        let values = lists
            .into_iter()
            .map(|(user, (generation, recent))| {
                let f = user_features(&self.snapshot, &user, &recent);
                (Key::User(user).redis_key(), generation, f.encode_to_vec())
            })
            .collect::<Vec<_>>();
        self.metrics.user_writes.inc_by(values.len() as u64);
        self.sink.put_users(values).await?;
        for (_, _, ts) in engagements {
            self.metrics.fast_path_delay.observe((now - ts).max(0) as f64 / 1_000.0);
        }
        Ok(())
    }

    /// Writes the windows the limiter allows (all without one), oldest first across
    /// partitions; returns how many. A failed write stays queued and is retried.
    async fn write_due(&self, parts: &mut [PartitionState], mut limiter: Option<&mut WriteLimiter>, now: f64) -> usize {
        let backlog: usize = parts.iter().map(|p| p.pending.len()).sum();
        // The limiter counts every fired window; without one (or after a flush) all go.
        let allowed = match limiter.as_deref_mut() {
            Some(l) => (l.take(now) as usize).min(backlog),
            None => backlog,
        };
        let mut written = 0;
        let mut budget = allowed;
        for ps in parts.iter_mut() {
            if budget == 0 {
                break;
            }
            let n = budget.min(ps.pending.len());
            if n == 0 {
                continue;
            }
            let batch: Vec<ItemWindow> = ps.pending.iter().take(n).cloned().collect();
            match self.write_windows(&batch).await {
                Ok(()) => {
                    ps.pending.drain(..n);
                    written += n;
                    budget -= n;
                }
                Err(e) => {
                    self.metrics.sink_errors.inc();
                    tracing::warn!(error = %e, "feature store write failed; retrying");
                    break;
                }
            }
        }
        // Feedback only for rounds that tried to write: an idle round is not a success, and
        // counting it as one would undo the back-off after a failure within a few rounds.
        if let Some(l) = limiter
            && allowed > 0
        {
            l.done((allowed - written) as u64);
        }
        written
    }

    async fn write_windows(&self, windows: &[ItemWindow]) -> Result<(), SinkError> {
        let results = self.sink.apply_windows(windows).await?;
        let mut values = Vec::with_capacity(windows.len());
        let mut trending = Vec::new();
        for (w, (applied, state)) in windows.iter().zip(results) {
            let outcome = if applied { "applied" } else { "stale" };
            self.metrics.windows.get_or_create(&OutcomeLabels { outcome }).inc();
            let f = item_features(self.snapshot.item(&w.item_id), &w.item_id, &state);
            values.push((Key::Item(w.item_id.clone()).redis_key(), f.encode_to_vec()));
            if state.hot > 0.0 {
                trending.push((w.item_id.clone(), trend_rank(state.hot, state.last_window_end_ms)));
            }
        }
        self.sink.put_items(values).await?;
        self.sink.put_trending(trending).await
    }
}
