//! The recall gRPC service: channels in parallel over double-buffered artifacts, merged with
//! quotas, seen items filtered through each user's rolling Bloom filter.

//!
//! - [`artifacts`]: the artifact version being served, swapped without a pause.
//! - [`seen_store`]: where users' seen filters live (in process, or Redis shared by replicas).
//! - [`tower`]: the vector channel's user tower, run by ONNX Runtime.

mod artifacts;
pub mod packed;
mod seen_store;
pub mod tower;

pub use artifacts::*;
pub use recstack_core::recall::lead_with;
pub use seen_store::*;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::ops::{Buckets, HistogramFamily, LogThrottle, MetricsRegistry, RpcMetrics, WARN_EVERY};
use rustc_hash::FxHashMap;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::stream::sink::{StreamStore, Trending};
use recstack_core::artifacts::{self as build, ArtifactError, Artifacts, Manifest};
use recstack_core::recall::merge::fusion_term;
use recstack_core::recall::seen::{SeenConfig, SeenFilter};
use recstack_core::recall::{
    Channel, ChannelList, CutReason, Source as Lineage, UserHistory, channel_for, fusion_weights, merge_weighted,
    past_quota,
};

/// Generated gRPC types (`services/proto/recall.proto`).
pub mod proto {
    tonic::include_proto!("recstack.recall.v1");

    impl From<super::Channel> for Channel {
        fn from(c: super::Channel) -> Self {
            match c {
                super::Channel::ItemCf => Channel::ItemCf,
                super::Channel::UserCf => Channel::UserCf,
                super::Channel::Hot => Channel::Hot,
                super::Channel::Als => Channel::Als,
                super::Channel::Vector => Channel::Vector,
                super::Channel::Tag => Channel::Tag,
                super::Channel::Cooc => Channel::Cooc,
            }
        }
    }

    impl Channel {
        /// The channel a wire value names (the inverse of the one mapping above); `None` for a
        /// value this build does not know (a newer recall service).
        pub fn known(self) -> Option<super::Channel> {
            super::Channel::ALL.into_iter().find(|&c| Channel::from(c) == self)
        }
    }

    impl Source {
        /// The channel ([`Channel::known`]).
        pub fn known_channel(&self) -> Option<super::Channel> {
            self.channel().known()
        }

        /// The channel's name (`item_cf`, …, as in requests and traces); `unknown` for a value
        /// this build does not know.
        pub fn channel_name(&self) -> &'static str {
            self.known_channel().map_or("unknown", super::Channel::name)
        }

        /// The lineage as the rest of the stack carries it (`None` for an unknown channel).
        pub fn lineage(&self) -> Option<super::Lineage> {
            Some(super::Lineage {
                channel: self.known_channel()?,
                score: self.score,
                rank: self.rank,
            })
        }
    }
}

use proto::recall_server::Recall;
use proto::{
    Candidate, ChannelStats, Consumed, Cut, ImpressionsRequest, ImpressionsResponse, RecallRequest, RecallResponse,
    SeenWindow, Source,
};

pub use recstack_core::recall::{DEFAULT_N, DEFAULT_QUOTA, MAX_N};

// === metrics ===

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    pub channel: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub result: &'static str,
}

/// Metrics of the recall service.
pub struct RecallMetrics {
    pub registry: Registry,
    pub rpc: RpcMetrics,
    pub channel_latency: HistogramFamily<ChannelLabels>,
    pub candidates: Histogram,
    pub seen_filtered: Counter,
    pub seen_errors: Counter,
    pub seen_conflicts: Counter,
    pub live_histories: Counter,
    pub realtime_errors: Counter,
    pub list_cache: Family<CacheLabels, Counter>,
}

impl Default for RecallMetrics {
    fn default() -> Self {
        let mut m = MetricsRegistry::new("recstack_recall");
        Self {
            rpc: RpcMetrics::register(&mut m, "Recall", Buckets::exponential(0.000_05, 2.0, 16)),
            channel_latency: m.histograms(
                "channel_latency_seconds",
                "Latency of each channel",
                Buckets::exponential(0.000_01, 2.0, 16),
            ),
            candidates: m.histogram(
                "candidates",
                "Candidates returned per request",
                Buckets::exponential(1.0, 2.0, 14),
            ),
            seen_filtered: m.counter("seen_filtered", "Candidates removed by the seen filter"),
            seen_conflicts: m.counter(
                "seen_conflicts",
                "Seen filter writes that lost to a concurrent writer and were retried",
            ),
            seen_errors: m.counter("seen_errors", "Seen-store failures (recall goes on unfiltered)"),
            live_histories: m.counter(
                "live_histories",
                "Requests whose history-seeded channels (item_cf, cooc, vector) ran on the user's real-time items",
            ),
            realtime_errors: m.counter(
                "realtime_errors",
                "Failed reads of a user's real-time items (recall goes on with the build's history)",
            ),
            list_cache: m.family(
                "list_cache",
                "Channel lists served from the per-version cache (hit) or computed (miss)",
            ),
            registry: m.finish(),
        }
    }
}

impl RecallMetrics {
    pub fn encode(&self) -> String {
        crate::ops::encode(&self.registry)
    }
}

// === the service ===

/// The gRPC recall service.
pub struct RecallService<S> {
    pub slot: Arc<ArtifactSlot>,
    pub seen: S,
    pub seen_config: SeenConfig,
    pub metrics: Arc<RecallMetrics>,
    /// The stream job's trending list: the hot channel leads with it.
    pub trending: Trending,
    /// The stream job's store, for each user's real-time items.
    pub stream: StreamStore,
    /// One user's impressions are added one call at a time in this process (striped by user),
    /// so only other replicas can race a seen filter's compare-and-set.
    seen_writers: Vec<tokio::sync::Mutex<()>>,
}

/// Most real-time items of a user read per request (the stream job keeps 50).
pub const REALTIME_SEEDS: usize = 50;

/// A user's real-time items as recall read them, newest first.
#[derive(Debug, Default)]
struct RealTime {
    /// Those the build knows: `(dense id, ms)`.
    known: Vec<(u32, i64)>,
    /// The ids of those it does not (new items).
    new: Vec<String>,
    /// Every id, in the order read (what a trace records).
    ids: Vec<String>,
}

/// Stripes of [`RecallService::seen_writers`].
const SEEN_WRITER_STRIPES: usize = 64;

/// A validated recall request.
#[derive(Debug, PartialEq)]
pub struct RecallQuery {
    pub user_id: String,
    pub n: usize,
    /// Every channel (0: off).
    pub quotas: BTreeMap<Channel, usize>,
    /// Report the cuts and the history too ([`RecallRequest::explain`]).
    pub explain: bool,
    /// Filter these as seen instead of the user's seen filter (a replay of the state as
    /// recorded).
    pub recorded_seen: Option<std::collections::HashSet<String>>,
    /// Answer the candidates as columns ([`RecallRequest::packed`]).
    pub packed: bool,
    /// Put these ahead of the build's history instead of the user's real-time items (a replay
    /// of the state as recorded), newest first.
    pub recorded_realtime: Option<Vec<String>>,
}

/// How far past its quota an explained request computes each channel (and how deep a
/// switched-off channel): an item ranked deeper is "not recalled".
pub const EXPLAIN_DEPTH: usize = 300;

/// Most history items an explained answer lists.
pub const EXPLAIN_HISTORY: usize = 1000;

/// Checks a request; errors name the offending field.
pub fn validate(req: &RecallRequest) -> Result<RecallQuery, Status> {
    let user_id = req.user_id.trim();
    if user_id.is_empty() {
        return Err(Status::invalid_argument("user_id is required"));
    }
    if user_id.len() > 256 {
        return Err(Status::invalid_argument("user_id is longer than 256 bytes"));
    }
    let n = match req.n as usize {
        0 => DEFAULT_N,
        n if n > MAX_N => {
            return Err(Status::invalid_argument(format!(
                "n is {n}; at most {MAX_N} candidates"
            )));
        }
        n => n,
    };
    let mut quotas: BTreeMap<Channel, usize> = Channel::ALL.iter().map(|&c| (c, DEFAULT_QUOTA)).collect();
    for (name, &q) in &req.channel_quotas {
        let Some(c) = Channel::parse(name) else {
            let known: Vec<&str> = Channel::ALL.iter().map(|c| c.name()).collect();
            return Err(Status::invalid_argument(format!(
                "channel_quotas.{name}: unknown channel (known: {})",
                known.join(", ")
            )));
        };
        if q as usize > MAX_N {
            return Err(Status::invalid_argument(format!(
                "channel_quotas.{name} is {q}; at most {MAX_N}"
            )));
        }
        quotas.insert(c, q as usize);
    }
    if req.seen_as_recorded.len() > MAX_N {
        return Err(Status::invalid_argument(format!(
            "seen_as_recorded has {} items; at most {MAX_N}",
            req.seen_as_recorded.len()
        )));
    }
    if req.realtime_as_recorded.len() > REALTIME_SEEDS {
        return Err(Status::invalid_argument(format!(
            "realtime_as_recorded has {} items; at most {REALTIME_SEEDS}",
            req.realtime_as_recorded.len()
        )));
    }
    if let Some(k) = req
        .realtime_as_recorded
        .iter()
        .position(|id| id.is_empty() || id.len() > 256)
    {
        return Err(Status::invalid_argument(format!(
            "realtime_as_recorded[{k}]: an item id is 1 to 256 bytes"
        )));
    }
    Ok(RecallQuery {
        user_id: user_id.to_string(),
        n,
        quotas,
        explain: req.explain,
        recorded_seen: req
            .use_recorded_seen
            .then(|| req.seen_as_recorded.iter().cloned().collect()),
        packed: req.packed,
        recorded_realtime: req.use_recorded_realtime.then(|| req.realtime_as_recorded.clone()),
    })
}

/// Compare-and-set rounds an impressions call makes before it gives up (each lost round means
/// another writer's update landed).
const SEEN_WRITE_ATTEMPTS: u32 = 8;

impl<S: SeenStore> RecallService<S> {
    pub fn new(slot: Arc<ArtifactSlot>, seen: S, seen_config: SeenConfig, metrics: Arc<RecallMetrics>) -> Self {
        Self {
            slot,
            seen,
            seen_config,
            metrics,
            trending: Trending::new(StreamStore::None),
            stream: StreamStore::None,
            seen_writers: (0..SEEN_WRITER_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    /// Reads the stream job's output in `store`: the hot channel leads with its trending
    /// items, and each user's real-time items seed the history-seeded channels.
    pub fn with_stream(mut self, store: StreamStore) -> Self {
        self.trending = Trending::new(store.clone());
        self.stream = store;
        self
    }

    /// What the user engaged with since the build, newest first ([`RealTime`]): read from the
    /// stream store, or the ids of a replay as recorded (`recorded`, times unknown: 0). Empty
    /// without a stream store; on a failed read too (counted, logged): recall then goes on
    /// with the build's history.
    async fn realtime(&self, loaded: &Loaded, user: &str, recorded: Option<&[String]>) -> RealTime {
        let items = match recorded {
            Some(ids) => ids.iter().map(|id| (id.clone(), 0)).collect(),
            None => match self.stream.recent(user, REALTIME_SEEDS).await {
                Ok(items) => items,
                Err(e) => {
                    static WARN: LogThrottle = LogThrottle::new(WARN_EVERY);
                    if let Some(held) = WARN.admit(Instant::now()) {
                        warn!(user, error = %e, held_back = held, "real-time items unavailable; recalling from the build's history");
                    }
                    self.metrics.realtime_errors.inc();
                    Vec::new()
                }
            },
        };
        let mut out = RealTime {
            known: Vec::with_capacity(items.len()),
            new: Vec::new(),
            ids: Vec::with_capacity(items.len()),
        };
        for (id, ms) in items {
            match loaded.items.get(&id) {
                Some(&i) => out.known.push((i, ms)),
                None => out.new.push(id.clone()),
            }
            out.ids.push(id);
        }
        out
    }

    /// A stored filter, or `None` (counted, logged) when it cannot be read: recall then goes on
    /// unfiltered, and the next impressions start a new one.
    fn decode_seen(&self, user: &str, bytes: &[u8]) -> Option<SeenFilter> {
        SeenFilter::from_bytes(self.seen_config, bytes)
            .inspect_err(|e| {
                static WARN: LogThrottle = LogThrottle::new(WARN_EVERY);
                if let Some(held) = WARN.admit(Instant::now()) {
                    warn!(user, error = %e, held_back = held, "unreadable seen filter; ignored");
                }
                self.metrics.seen_errors.inc();
            })
            .ok()
    }

    /// The user's seen filter, and what became of it (the response's `seen_filter`).
    async fn seen_filter(&self, user: &str) -> (Option<SeenFilter>, String) {
        match self.seen.get(user).await {
            Ok(Some(bytes)) => match self.decode_seen(user, &bytes) {
                Some(f) => (Some(f), "applied".into()),
                None => (None, "unavailable: the stored filter is unreadable".into()),
            },
            Ok(None) => (None, "empty".into()),
            Err(e) => {
                // Recall without the filter rather than fail the request.
                static WARN: LogThrottle = LogThrottle::new(WARN_EVERY);
                if let Some(held) = WARN.admit(Instant::now()) {
                    warn!(user, error = %e, held_back = held, "seen store unavailable; recalling unfiltered");
                }
                self.metrics.seen_errors.inc();
                (None, format!("unavailable: {e}"))
            }
        }
    }

    /// Recall for a validated query.
    pub async fn run(&self, q: RecallQuery) -> Result<RecallResponse, Status> {
        let loaded = self.slot.get();
        let user = loaded.users.get(&q.user_id).copied().unwrap_or(u32::MAX);
        // The trending list, the user's real-time items and seen filter, read at once.
        let hot_quota = q.quotas.get(&Channel::Hot).copied().unwrap_or(0);
        let trending = async {
            if hot_quota > 0 {
                self.trending.top(hot_quota).await
            } else {
                Vec::new()
            }
        };
        let seen = async {
            match &q.recorded_seen {
                // The state as recorded: those items, no times (the user's filter is not read).
                Some(items) => (None, format!("as recorded: {} items", items.len())),
                None => self.seen_filter(&q.user_id).await,
            }
        };
        let (trending, read, (filter, seen_filter)) = tokio::join!(
            trending,
            self.realtime(&loaded, &q.user_id, q.recorded_realtime.as_deref()),
            seen
        );
        let RealTime {
            known: mut realtime,
            new: engaged_new,
            ids: realtime_items,
        } = read;
        // What the user engaged with since the build goes ahead of the build's history: it
        // seeds the history-seeded channels and is not recalled back.
        let recent: Recent = realtime.iter().map(|&(i, _)| i).collect();
        let live = recstack_core::recall::live_history(&loaded.artifacts, user, &recent);
        let recent = if live.is_some() {
            self.metrics.live_histories.inc();
            recent
        } else {
            // Each already where the build's history has it: nothing changes.
            realtime.clear();
            loaded.built.clone()
        };
        let engaged: recstack_core::recall::ItemSet = recent.iter().copied().collect();
        // The stream job's trending items: those the build knows lead the hot channel; those
        // it does not know yet (new items) are recalled by id at their trending rank.
        let mut lead = Vec::new();
        let mut new_items: Vec<(u32, String)> = Vec::new();
        for (rank, id) in trending.into_iter().enumerate() {
            match loaded.items.get(&id) {
                Some(&i) => lead.push(i),
                // A new item the user engaged with is consumed like any other.
                None if engaged_new.contains(&id) => {}
                None => new_items.push((rank as u32 + 1, id)),
            }
        }
        let (lists, stats) = self.lists(&loaded, user, &recent, &q.quotas)?;
        let lead_hot = |lists: Vec<(Channel, List)>| -> Vec<ChannelList> {
            lists
                .into_iter()
                .map(|(channel, list)| {
                    let items = if channel == Channel::Hot && !lead.is_empty() {
                        let history = UserHistory::new(&loaded.artifacts, user);
                        lead_with(&lead, &list, &history.seen, list.len().max(lead.len()))
                    } else {
                        list.to_vec()
                    };
                    ChannelList { channel, items }
                })
                .collect()
        };
        let lists = lead_hot(lists);
        let quota = |c: Channel| q.quotas.get(&c).copied().unwrap_or(0);
        let all: usize = q.quotas.values().sum();
        let merged = merge_weighted(&lists, quota, fusion_weights(&loaded.artifacts), all);
        // Explaining: the channels again, deeper (a channel's top n is not always a prefix of
        // its top n + k), only to tell what the quotas cut; the answer stays the same.
        let mut cuts: Vec<Cut> = if q.explain {
            let deep = lead_hot(self.explained_lists(&loaded, user, &recent, &q.quotas)?);
            past_quota(&deep, quota, &merged)
                .into_iter()
                .filter(|c| !engaged.contains(&c.item))
                .map(|c| Cut {
                    item_id: loaded.ids.get(c.item).0.to_string(),
                    reason: match c.reason {
                        CutReason::Quota => proto::CutReason::Quota,
                        CutReason::ChannelOff => proto::CutReason::ChannelOff,
                    }
                    .into(),
                    sources: c.sources.iter().map(source).collect(),
                    position: 0,
                    cut: 0,
                })
                .collect()
        } else {
            Vec::new()
        };

        let recorded = q.recorded_seen.as_ref();
        let mut filtered_seen = Vec::new();
        let mut filtered_seen_when = Vec::new();
        let mut seen = |id: &str, key: u64| match filter.as_ref().and_then(|f| f.when(key)).or_else(|| {
            recorded
                .is_some_and(|r| r.contains(id))
                .then_some(recstack_core::recall::seen::SeenWindow {
                    first_ms: 0,
                    last_ms: 0,
                })
        }) {
            Some(w) => {
                filtered_seen.push(id.to_string());
                filtered_seen_when.push(SeenWindow {
                    first_ms: w.first_ms,
                    last_ms: w.last_ms,
                });
                true
            }
            None => false,
        };
        let mut candidates: Vec<Answered> = Vec::with_capacity(q.n);
        let mut position = 0u32;
        for c in merged {
            if engaged.contains(&c.item) {
                // Consumed since the build (the lists of channels that read the build's
                // history alone may still hold it).
                continue;
            }
            let (id, key) = loaded.ids.get(c.item);
            if seen(id, key) {
                continue;
            }
            if candidates.len() < q.n {
                candidates.push(Answered {
                    id: Cow::Borrowed(id),
                    fused: c.fused,
                    sources: c.sources,
                });
            } else if q.explain {
                cuts.push(Cut {
                    item_id: id.to_string(),
                    reason: proto::CutReason::Merge.into(),
                    sources: c.sources.iter().map(source).collect(),
                    position,
                    cut: q.n as u32,
                });
            }
            position += 1;
        }
        let added_new = !new_items.is_empty();
        for (rank, id) in new_items {
            if seen(&id, item_key(&id)) {
                continue;
            }
            candidates.push(Answered {
                id: Cow::Owned(id),
                // As if it led the hot list at its trending rank.
                fused: fusion_term(Channel::Hot.fusion_weight(), 1.0, rank as f32),
                sources: smallvec::smallvec![Lineage {
                    channel: Channel::Hot,
                    score: 0.0,
                    rank,
                }],
            });
        }
        if added_new {
            // Stable: the merged order (and its tie rules) stays; new items slot in by score.
            candidates.sort_by(|a, b| b.fused.total_cmp(&a.fused));
            for (at, c) in candidates.drain(q.n.min(candidates.len())..).enumerate() {
                if q.explain {
                    cuts.push(Cut {
                        item_id: c.id.into_owned(),
                        reason: proto::CutReason::Merge.into(),
                        sources: c.sources.iter().map(source).collect(),
                        position: (q.n + at) as u32,
                        cut: q.n as u32,
                    });
                }
            }
        }
        self.metrics.candidates.observe(candidates.len() as f64);
        // Columns when asked (one buffer, no message per candidate), else a message each.
        let (candidates, packed) = if q.packed {
            let mut packer = packed::Packer::with_capacity(candidates.len());
            for c in &candidates {
                packer.push(&c.id, c.fused, &c.sources);
            }
            (Vec::new(), Some(packer.finish()))
        } else {
            let messages = candidates
                .into_iter()
                .map(|c| candidate_message(c.id.into_owned(), c.fused, &c.sources))
                .collect();
            (messages, None)
        };
        // The history: the real-time items (when they changed it), then the build's.
        let built: &[u32] = loaded.artifacts.history.get(user as usize).map_or(&[], Vec::as_slice);
        let consumed_total = live.as_ref().map_or(built.len(), Vec::len);
        let consumed = if q.explain {
            let times = loaded
                .artifacts
                .history_times
                .get(user as usize)
                .map_or(&[][..], Vec::as_slice);
            let built = built.iter().zip(times).map(|(&i, &ts)| (i, ts.saturating_mul(1000)));
            realtime
                .iter()
                .copied()
                .chain(built.filter(|(i, _)| !engaged.contains(i)))
                .take(EXPLAIN_HISTORY)
                .map(|(i, at_ms)| Consumed {
                    item_id: loaded.ids.get(i).0.to_string(),
                    at_ms,
                })
                .collect()
        } else {
            Vec::new()
        };
        self.metrics.seen_filtered.inc_by(filtered_seen.len() as u64);
        Ok(RecallResponse {
            candidates,
            packed,
            artifact_version: loaded.manifest.version.clone(),
            channels: stats,
            filtered_seen,
            filtered_seen_when,
            seen_filter,
            consumed_total: consumed_total as u32,
            consumed,
            cuts,
            realtime_items,
        })
    }

    /// Each channel's list at its quota: from this version's cache, or computed here
    /// ([`compute`]). Channel order, with each one's
    /// stats (switched-off channels are not computed). With `recent` items (the user's
    /// real-time ones that change the history), the history-seeded channels' lists are those
    /// of the live history, cached under those items.
    fn lists(
        &self,
        loaded: &Arc<Loaded>,
        user: u32,
        recent: &Recent,
        quotas: &BTreeMap<Channel, usize>,
    ) -> Result<(ChannelLists, Vec<ChannelStats>), Status> {
        // (channel, list, how long computing it took: `None` when it came from the cache)
        let mut lists: Vec<(Channel, List, Option<Duration>)> = Vec::with_capacity(quotas.len());
        let mut missing = Vec::new();
        for (&c, &quota) in quotas.iter().filter(|(_, q)| **q > 0) {
            match loaded.lists.get(&list_key(loaded, user, c, quota, recent)) {
                Some(list) => lists.push((c, list, None)),
                None => missing.push((c, quota, quota)),
            }
        }
        let cache = |result| self.metrics.list_cache.get_or_create(&CacheLabels { result });
        cache("hit").inc_by(lists.len() as u64);
        cache("miss").inc_by(missing.len() as u64);
        if !missing.is_empty() {
            let computed = compute(loaded, user, recent, &missing, true)?;
            lists.extend(computed.into_iter().map(|(c, list, took)| (c, list, Some(took))));
            // Channel order, as the merge's lineage lists sources.
            lists.sort_unstable_by_key(|(c, _, _)| *c);
        }
        let stats = quotas
            .iter()
            .map(|(&channel, &quota)| {
                let done = lists.iter().find(|(c, _, _)| *c == channel);
                let (returned, took) = done.map_or((0, None), |(_, l, took)| (l.len(), *took));
                self.channel_stats(channel, quota, returned, took)
            })
            .collect();
        Ok((lists.into_iter().map(|(c, l, _)| (c, l)).collect(), stats))
    }

    /// Every channel computed past its quota by [`EXPLAIN_DEPTH`] (switched-off ones to that
    /// depth), bypassing the cache: what the quotas cut can then be told.
    fn explained_lists(
        &self,
        loaded: &Arc<Loaded>,
        user: u32,
        recent: &Recent,
        quotas: &BTreeMap<Channel, usize>,
    ) -> Result<ChannelLists, Status> {
        let work: Vec<_> = quotas.iter().map(|(&c, &q)| (c, q, q + EXPLAIN_DEPTH)).collect();
        let mut lists = compute(loaded, user, recent, &work, false)?;
        lists.sort_unstable_by_key(|(c, _, _)| *c);
        Ok(lists.into_iter().map(|(c, l, _)| (c, l)).collect())
    }

    /// A channel's stats, its computing time observed (cached lists report 0 µs).
    fn channel_stats(&self, channel: Channel, quota: usize, returned: usize, took: Option<Duration>) -> ChannelStats {
        if let Some(took) = took {
            self.metrics
                .channel_latency
                .get_or_create(&ChannelLabels {
                    channel: channel.name(),
                })
                .observe(took.as_secs_f64());
        }
        ChannelStats {
            channel: channel.name().to_string(),
            returned: returned as u32,
            latency_us: took.unwrap_or_default().as_micros().min(u128::from(u32::MAX)) as u32,
            quota: quota as u32,
        }
    }

    /// Adds impressions to the user's seen filter.
    pub async fn impressions(&self, req: ImpressionsRequest) -> Result<ImpressionsResponse, Status> {
        let user = req.user_id.trim();
        if user.is_empty() {
            return Err(Status::invalid_argument("user_id is required"));
        }
        if req.item_ids.len() > 10_000 {
            return Err(Status::invalid_argument("item_ids: at most 10000 per call"));
        }
        let loaded = self.slot.get();
        let unavailable = |e: SeenStoreError| Status::unavailable(format!("seen store: {e}"));
        let stripe = item_key(user) as usize % SEEN_WRITER_STRIPES;
        let _one_writer_here = self.seen_writers[stripe].lock().await;
        // Read, add, write only over what was read; a concurrent writer (another replica) makes
        // the write fail, and this one reads theirs and adds again.
        let mut attempts = 0;
        let now = recstack_core::events::now_ms();
        let (recorded, unknown_items) = loop {
            attempts += 1;
            let stored = self.seen.get(user).await.map_err(unavailable)?;
            let mut filter = stored
                .as_deref()
                .and_then(|b| self.decode_seen(user, b))
                .unwrap_or_else(|| SeenFilter::new(self.seen_config));
            let (mut recorded, mut unknown_items) = (0, Vec::new());
            for id in &req.item_ids {
                if loaded.items.contains_key(id) {
                    filter.insert(item_key(id), now);
                    recorded += 1;
                } else {
                    unknown_items.push(id.clone());
                }
            }
            if self
                .seen
                .put_if(user, stored.as_deref(), filter.to_bytes())
                .await
                .map_err(unavailable)?
            {
                break (recorded, unknown_items);
            }
            self.metrics.seen_conflicts.inc();
            if attempts >= SEEN_WRITE_ATTEMPTS {
                return Err(Status::aborted(format!(
                    "seen filter of {user}: {attempts} concurrent updates in a row; retry"
                )));
            }
            // Another replica wrote; let it finish before reading its filter.
            tokio::time::sleep(Duration::from_millis(u64::from(attempts))).await;
        };
        Ok(ImpressionsResponse {
            recorded,
            unknown_items,
        })
    }
}

/// A candidate on its way into the answer: the id borrowed from the artifacts where they hold
/// it (a new trending item's is owned).
struct Answered<'a> {
    id: Cow<'a, str>,
    fused: f32,
    sources: smallvec::SmallVec<[Lineage; 2]>,
}

/// A candidate as one message (the answer's `candidates`, for a caller that did not ask for
/// columns).
fn candidate_message(item_id: String, fused_score: f32, sources: &[Lineage]) -> Candidate {
    Candidate {
        item_id,
        fused_score,
        sources: sources.iter().map(source).collect(),
    }
}

/// A merge source on the wire.
fn source(s: &Lineage) -> Source {
    Source {
        channel: proto::Channel::from(s.channel).into(),
        score: s.score,
        rank: s.rank,
    }
}

/// The cache key of `channel`'s list at `quota` for `user` with the real-time items `recent`
/// (which key only the channels the history seeds).
fn list_key(loaded: &Loaded, user: u32, channel: Channel, quota: usize, recent: &Recent) -> ListKey {
    let recent = if channel.follows_history() && !recent.is_empty() {
        recent
    } else {
        &loaded.built
    };
    (user, channel, quota, recent.clone())
}

/// Each channel's list, in channel order.
type ChannelLists = Vec<(Channel, List)>;

/// Computes `(channel, quota, depth)` lists for `user`, one after the other on the calling
/// thread: the history-seeded channels on the build's history with `recent` ahead of it, the
/// others on the build's; `cache`: keep them in the version's list cache (lists at their quota
/// only).
///
/// On the request's own task, not handed to a pool: under load every core is busy with other
/// requests, so spreading one request's channels over threads saves no time and costs the
/// hand-offs (a wake-up each way) and the pool's idle spinning (rayon's workers `sched_yield`
/// before they sleep: ~8 calls a request in the deployed profile). BENCHMARKS.md, "Fewer
/// hand-offs and writes per request".
fn compute(
    loaded: &Loaded,
    user: u32,
    recent: &Recent,
    work: &[(Channel, usize, usize)],
    cache: bool,
) -> Result<Vec<(Channel, List, Duration)>, Status> {
    let run = || {
        let built = UserHistory::new(&loaded.artifacts, user);
        let live = UserHistory::live(&loaded.artifacts, user, recent);
        work.iter()
            .map(|&(c, quota, depth)| {
                let start = Instant::now();
                let history = live.as_ref().filter(|_| c.follows_history()).unwrap_or(&built);
                let list: List = channel_for(&loaded.artifacts, history, c, depth).items.into();
                if cache {
                    loaded
                        .lists
                        .insert(list_key(loaded, user, c, quota, recent), list.clone());
                }
                (c, list, start.elapsed())
            })
            .collect::<Vec<_>>()
    };
    // A channel that panics fails this request, not the worker thread it runs on.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
        .map_err(|_| Status::internal("recall: computing a channel's list failed"))
}

#[tonic::async_trait]
impl<S: SeenStore> Recall for RecallService<S> {
    async fn recall(&self, request: Request<RecallRequest>) -> Result<Response<RecallResponse>, Status> {
        let start = Instant::now();
        self.metrics.rpc.joined("recall", request.metadata());
        let result = match validate(request.get_ref()) {
            Ok(q) => self.run(q).await,
            Err(e) => Err(e),
        };
        self.metrics.rpc.record("recall", start, &result);
        result.map(Response::new)
    }

    async fn record_impressions(
        &self,
        request: Request<ImpressionsRequest>,
    ) -> Result<Response<ImpressionsResponse>, Status> {
        let start = Instant::now();
        self.metrics.rpc.joined("record_impressions", request.metadata());
        let result = self.impressions(request.into_inner()).await;
        self.metrics.rpc.record("record_impressions", start, &result);
        result.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(user: &str, n: u32, quotas: &[(&str, u32)]) -> RecallRequest {
        RecallRequest {
            user_id: user.into(),
            n,
            channel_quotas: quotas.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn validation_names_the_field() {
        let err = |r: RecallRequest| validate(&r).unwrap_err().message().to_string();
        assert_eq!(err(req("  ", 10, &[])), "user_id is required");
        assert!(err(req("u", 5001, &[])).starts_with("n is 5001"));
        assert!(err(req("u", 10, &[("bogus", 1)])).starts_with("channel_quotas.bogus: unknown channel"));
        assert!(err(req("u", 10, &[("hot", 9999)])).starts_with("channel_quotas.hot is 9999"));
        let q = validate(&req(" u1 ", 0, &[("hot", 0), ("tag", 50)])).unwrap();
        assert_eq!((q.user_id.as_str(), q.n), ("u1", DEFAULT_N));
        assert_eq!(
            (
                q.quotas[&Channel::Hot],
                q.quotas[&Channel::Tag],
                q.quotas[&Channel::Als]
            ),
            (0, 50, 200)
        );
        assert_eq!(q.recorded_seen, None, "the user's seen filter unless told");
        // A replay of the state as recorded: those items, even none.
        let mut r = req("u", 10, &[]);
        r.use_recorded_seen = true;
        assert_eq!(validate(&r).unwrap().recorded_seen, Some(Default::default()));
        r.seen_as_recorded = vec!["a".into(), "b".into(), "a".into()];
        assert_eq!(validate(&r).unwrap().recorded_seen.map(|s| s.len()), Some(2));
        r.seen_as_recorded = vec!["x".into(); MAX_N + 1];
        assert!(err(r).starts_with("seen_as_recorded has 5001 items"));
        // The real-time items as recorded: those, in order, even none; unless told, the store's.
        let mut r = req("u", 10, &[]);
        assert_eq!(validate(&r).unwrap().recorded_realtime, None);
        r.use_recorded_realtime = true;
        assert_eq!(validate(&r).unwrap().recorded_realtime, Some(Vec::new()));
        r.realtime_as_recorded = vec!["b".into(), "a".into()];
        assert_eq!(
            validate(&r).unwrap().recorded_realtime,
            Some(vec!["b".to_string(), "a".to_string()])
        );
        r.realtime_as_recorded = vec!["x".into(); REALTIME_SEEDS + 1];
        assert!(
            err(r.clone()).starts_with("realtime_as_recorded has 51 items"),
            "{}",
            err(r)
        );
        let mut r = req("u", 10, &[]);
        r.realtime_as_recorded = vec!["a".into(), String::new()];
        assert!(err(r.clone()).starts_with("realtime_as_recorded[1]"), "{}", err(r));
    }

    #[test]
    fn packed_item_ids_read_back_with_their_keys() {
        // Inline (up to 16 bytes, the boundary included) and kept beside (longer), mixed.
        let ids = [
            "0110912",
            "",
            "an-item-id-longer-than-sixteen-bytes",
            "exactly-16-bytes",
            "exactly-17-bytes!",
            "7",
            "0110912",
        ];
        let packed = ItemIds::new(ids.iter().copied());
        let read: Vec<(&str, u64)> = (0..ids.len() as u32).map(|i| packed.get(i)).collect();
        let want: Vec<(&str, u64)> = ids.iter().map(|&id| (id, item_key(id))).collect();
        assert_eq!(read, want);
    }

    #[test]
    fn item_keys_are_stable() {
        assert_eq!(item_key("0110912"), item_key("0110912"));
        assert_ne!(item_key("0110912"), item_key("0110913"));
    }
}
