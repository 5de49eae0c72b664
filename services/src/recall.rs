//! The recall gRPC service: channels in parallel over double-buffered artifacts, merged with
//! quotas, seen items filtered through each user's rolling Bloom filter.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::ops::{Buckets, HistogramFamily, MetricsRegistry, RpcMetrics};
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::stream::sink::Trending;
use recstack_core::artifacts::{self as build, ArtifactError, Artifacts, Manifest};
use recstack_core::recall::merge::RRF_K;
use recstack_core::recall::seen::{SeenConfig, SeenFilter};
use recstack_core::recall::{Channel, ChannelList, ItemSet, Source as Lineage, UserHistory, channel_for, merge};

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
            }
        }
    }

    impl Source {
        /// The channel (the inverse of the one mapping above); `None` for a value this build
        /// does not know (a newer recall service).
        pub fn known_channel(&self) -> Option<super::Channel> {
            let wire = self.channel();
            super::Channel::ALL.into_iter().find(|&c| Channel::from(c) == wire)
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
use proto::{Candidate, ChannelStats, ImpressionsRequest, ImpressionsResponse, RecallRequest, RecallResponse, Source};

pub use recstack_core::recall::{DEFAULT_N, DEFAULT_QUOTA, MAX_N};

// === artifacts ===

/// Memory for one artifact version's cached channel lists (about 40,000 lists of 200).
pub const LIST_CACHE_BYTES: u64 = 64 << 20;

/// A channel's list for one user (dense id, `u32::MAX` for users the build has not seen) at
/// one quota.
type ListKey = (u32, Channel, usize);
/// A channel's ranked (item, score) list, shared between the cache and requests.
type List = Arc<[(u32, f32)]>;

/// One artifact version with its id lookups.
pub struct Loaded {
    pub manifest: Manifest,
    pub artifacts: Artifacts,
    users: FxHashMap<String, u32>,
    items: FxHashMap<String, u32>,
    /// The items' ids and seen-filter keys by dense id, packed: a request reads a thousand of
    /// them scattered over the catalogue.
    ids: ItemIds,
    /// Channel lists computed for this version. Every channel is a pure function of the
    /// artifacts and the user's built history (what changes in real time — trending items,
    /// the seen filter — is applied after), so a list is exact for as long as its version is
    /// served, and goes with it. Bounded by [`LIST_CACHE_BYTES`], least-used lists evicted.
    lists: moka::sync::Cache<ListKey, List>,
}

impl Loaded {
    pub fn new(manifest: Manifest, artifacts: Artifacts) -> Self {
        let users = artifacts
            .users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.clone(), i as u32))
            .collect();
        let items = artifacts
            .items
            .iter()
            .enumerate()
            .map(|(i, it)| (it.id.clone(), i as u32))
            .collect();
        let ids = ItemIds::new(artifacts.items.iter().map(|i| i.id.as_str()));
        Self {
            manifest,
            artifacts,
            users,
            items,
            ids,
            lists: moka::sync::Cache::builder()
                .max_capacity(LIST_CACHE_BYTES)
                .weigher(|_, list: &List| {
                    u32::try_from(64 + std::mem::size_of_val::<[(u32, f32)]>(list)).unwrap_or(u32::MAX)
                })
                .build(),
        }
    }

    /// Loads the version `root/current` names.
    pub fn from_dir(root: &Path) -> Result<Self, ArtifactError> {
        let (manifest, artifacts) = build::load(root, None)?;
        Ok(Self::new(manifest, artifacts))
    }
}

/// Item ids by dense id with each one's [`item_key`], one 32-byte entry per item: a request
/// reads a thousand of them scattered over the catalogue, and each is one cache line read.
/// (Reading an id from the catalogue's `Item`s touches a large struct and then the id's own
/// allocation, each a likely cache miss.) Ids longer than 16 bytes are kept beside the entries.
struct ItemIds {
    entries: Vec<IdEntry>,
    long: String,
}

#[repr(align(32))]
struct IdEntry {
    key: u64,
    len: u32,
    /// Where a long id starts in `ItemIds::long`.
    start: u32,
    inline: [u8; 16],
}

impl ItemIds {
    fn new<'a>(ids: impl Iterator<Item = &'a str>) -> Self {
        let (mut entries, mut long) = (Vec::new(), String::new());
        for id in ids {
            let mut entry = IdEntry {
                key: item_key(id),
                len: u32::try_from(id.len()).expect("an item id under 4 GiB"),
                start: 0,
                inline: [0; 16],
            };
            match entry.inline.get_mut(..id.len()) {
                Some(inline) => inline.copy_from_slice(id.as_bytes()),
                None => {
                    entry.start = u32::try_from(long.len()).expect("long item ids under 4 GiB");
                    long.push_str(id);
                }
            }
            entries.push(entry);
        }
        Self { entries, long }
    }

    /// The id and seen-filter key of dense item `i` (one the artifacts list).
    fn get(&self, i: u32) -> (&str, u64) {
        let e = &self.entries[i as usize];
        let len = e.len as usize;
        let id = match e.inline.get(..len) {
            // Copied from a `&str` whole, so it is UTF-8.
            Some(inline) => std::str::from_utf8(inline).unwrap_or_default(),
            None => &self.long[e.start as usize..e.start as usize + len],
        };
        (id, e.key)
    }
}

/// The artifacts being served. A new version is loaded beside the old one and swapped in with
/// one atomic pointer store: requests in flight finish on the version they started with, new
/// ones see the new version, and nobody waits.
pub struct ArtifactSlot {
    current: ArcSwap<Loaded>,
}

impl ArtifactSlot {
    pub fn new(loaded: Loaded) -> Self {
        Self {
            current: ArcSwap::from_pointee(loaded),
        }
    }

    pub fn get(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    pub fn swap(&self, loaded: Loaded) {
        info!(version = %loaded.manifest.version, "serving new artifact version");
        self.current.store(Arc::new(loaded));
    }

    /// Loads `root/current` if it names another version than the one served; returns whether
    /// it swapped. Loading happens on a blocking thread.
    pub async fn reload_if_changed(&self, root: PathBuf) -> Result<bool, ArtifactError> {
        let wanted = std::fs::read_to_string(root.join("current"))
            .unwrap_or_default()
            .trim()
            .to_string();
        if wanted.is_empty() || wanted == self.get().manifest.version {
            return Ok(false);
        }
        let loaded = tokio::task::spawn_blocking(move || Loaded::from_dir(&root))
            .await
            .map_err(|e| ArtifactError::Load {
                path: PathBuf::new(),
                message: format!("loader panicked: {e}"),
            })??;
        self.swap(loaded);
        Ok(true)
    }
}

// === seen filters ===

/// Where users' seen filters live, as bytes: in memory on one machine, Redis at scale.
pub trait SeenStore: Send + Sync + 'static {
    fn get(&self, user: &str) -> impl Future<Output = Result<Option<Vec<u8>>, SeenStoreError>> + Send;
    fn put(&self, user: &str, bytes: Vec<u8>) -> impl Future<Output = Result<(), SeenStoreError>> + Send;
}

#[derive(Debug, thiserror::Error)]
#[error("seen store: {0}")]
pub struct SeenStoreError(pub String);

/// In-process seen filters.
#[derive(Default)]
pub struct MemorySeenStore {
    filters: Mutex<HashMap<String, Vec<u8>>>,
}

impl SeenStore for MemorySeenStore {
    async fn get(&self, user: &str) -> Result<Option<Vec<u8>>, SeenStoreError> {
        Ok(self
            .filters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .cloned())
    }
    async fn put(&self, user: &str, bytes: Vec<u8>) -> Result<(), SeenStoreError> {
        self.filters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user.to_string(), bytes);
        Ok(())
    }
}

/// Seen filters in Redis under `recstack:seen:<user>`, expiring `ttl` after the last write
/// (a user gone that long has nothing worth filtering).
#[derive(Clone)]
pub struct RedisSeenStore {
    conn: redis::aio::ConnectionManager,
    ttl: Duration,
}

impl RedisSeenStore {
    pub async fn connect(url: &str, timeout: Duration, ttl: Duration) -> Result<Self, SeenStoreError> {
        let conn = crate::ops::connect_redis(url, timeout).await.map_err(SeenStoreError)?;
        Ok(Self { conn, ttl })
    }

    fn key(user: &str) -> String {
        format!("recstack:seen:{user}")
    }
}

impl SeenStore for RedisSeenStore {
    async fn get(&self, user: &str) -> Result<Option<Vec<u8>>, SeenStoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("GET")
            .arg(Self::key(user))
            .query_async(&mut conn)
            .await
            .map_err(|e| SeenStoreError(e.to_string()))
    }

    async fn put(&self, user: &str, bytes: Vec<u8>) -> Result<(), SeenStoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(Self::key(user))
            .arg(bytes)
            .arg("EX")
            .arg(self.ttl.as_secs().max(1))
            .query_async(&mut conn)
            .await
            .map_err(|e| SeenStoreError(e.to_string()))
    }
}

/// The Bloom key of an item: a hash of its external id, so filters survive artifact versions
/// that renumber items.
pub fn item_key(item_id: &str) -> u64 {
    recstack_core::stable_hash(item_id.as_bytes())
}

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
            seen_errors: m.counter("seen_errors", "Seen-store failures (recall goes on unfiltered)"),
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
}

/// A validated recall request.
#[derive(Debug, PartialEq)]
pub struct RecallQuery {
    pub user_id: String,
    pub n: usize,
    pub quotas: BTreeMap<Channel, usize>,
}

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
    Ok(RecallQuery {
        user_id: user_id.to_string(),
        n,
        quotas,
    })
}

impl<S: SeenStore> RecallService<S> {
    pub fn new(slot: Arc<ArtifactSlot>, seen: S, seen_config: SeenConfig, metrics: Arc<RecallMetrics>) -> Self {
        Self {
            slot,
            seen,
            seen_config,
            metrics,
            trending: Trending::none(),
        }
    }

    /// Leads the hot channel with the stream job's trending items.
    pub fn with_trending(mut self, trending: Trending) -> Self {
        self.trending = trending;
        self
    }

    async fn seen_filter(&self, user: &str) -> Option<SeenFilter> {
        match self.seen.get(user).await {
            Ok(Some(bytes)) => match SeenFilter::from_bytes(self.seen_config, &bytes) {
                Ok(f) => Some(f),
                Err(e) => {
                    warn!(user, error = %e, "unreadable seen filter; recalling unfiltered");
                    self.metrics.seen_errors.inc();
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                // Recall without the filter rather than fail the request.
                warn!(user, error = %e, "seen store unavailable; recalling unfiltered");
                self.metrics.seen_errors.inc();
                None
            }
        }
    }

    /// Recall for a validated query.
    pub async fn run(&self, q: RecallQuery) -> Result<RecallResponse, Status> {
        let loaded = self.slot.get();
        let user = loaded.users.get(&q.user_id).copied().unwrap_or(u32::MAX);
        // The stream job's trending items: those the build knows lead the hot channel; those
        // it does not know yet (new items) are recalled by id at their trending rank.
        let hot_quota = q.quotas.get(&Channel::Hot).copied().unwrap_or(0);
        let trending = if hot_quota > 0 {
            self.trending.top(hot_quota).await
        } else {
            Vec::new()
        };
        let mut lead = Vec::new();
        let mut new_items: Vec<(u32, String)> = Vec::new();
        for (rank, id) in trending.into_iter().enumerate() {
            match loaded.items.get(&id) {
                Some(&i) => lead.push(i),
                None => new_items.push((rank as u32 + 1, id)),
            }
        }
        // Lists this version has computed come from its cache; the rest run on rayon's pool
        // (CPU work off the async workers), straight from this task: no blocking-pool thread
        // in between to wake and park on every request.
        // (channel, list, how long computing it took: `None` when it came from the cache)
        let mut lists: Vec<(Channel, List, Option<Duration>)> = Vec::with_capacity(q.quotas.len());
        let mut missing = Vec::new();
        for (&c, &quota) in q.quotas.iter().filter(|(_, q)| **q > 0) {
            match loaded.lists.get(&(user, c, quota)) {
                Some(list) => lists.push((c, list, None)),
                None => missing.push((c, quota)),
            }
        }
        let cache = |result| self.metrics.list_cache.get_or_create(&CacheLabels { result });
        cache("hit").inc_by(lists.len() as u64);
        cache("miss").inc_by(missing.len() as u64);
        if !missing.is_empty() {
            let work = loaded.clone();
            let (done, computed) = tokio::sync::oneshot::channel();
            rayon::spawn(move || {
                let run = || {
                    let history = UserHistory::new(&work.artifacts, user);
                    missing
                        .par_iter()
                        .map(|&(c, quota)| {
                            let start = Instant::now();
                            let list: List = channel_for(&work.artifacts, &history, c, quota).items.into();
                            work.lists.insert((user, c, quota), list.clone());
                            (c, list, Some(start.elapsed()))
                        })
                        .collect::<Vec<_>>()
                };
                // A panic must not take down rayon's thread (it would abort the process).
                let _ = done.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)));
            });
            match computed.await {
                Ok(Ok(computed)) => lists.extend(computed),
                _ => return Err(Status::internal("recall worker failed")),
            }
            // Channel order, as the merge's lineage lists sources.
            lists.sort_unstable_by_key(|(c, _, _)| *c);
        }

        let mut stats = Vec::with_capacity(lists.len());
        for (channel, list, took) in &lists {
            // The latency histogram is of computing a channel; cached lists report 0 µs.
            if let Some(took) = took {
                self.metrics
                    .channel_latency
                    .get_or_create(&ChannelLabels {
                        channel: channel.name(),
                    })
                    .observe(took.as_secs_f64());
            }
            let took = took.unwrap_or_default();
            stats.push(ChannelStats {
                channel: channel.name().to_string(),
                returned: list.len() as u32,
                latency_us: took.as_micros().min(u128::from(u32::MAX)) as u32,
            });
        }
        let lists: Vec<ChannelList> = lists
            .into_iter()
            .map(|(channel, list, _)| {
                let items = if channel == Channel::Hot && !lead.is_empty() {
                    let history = UserHistory::new(&loaded.artifacts, user);
                    lead_with(&lead, &list, &history.seen, list.len().max(lead.len()))
                } else {
                    list.to_vec()
                };
                ChannelList { channel, items }
            })
            .collect();
        let all: usize = q.quotas.values().sum();
        let merged = merge(&lists, |c| q.quotas.get(&c).copied().unwrap_or(0), all);

        let filter = self.seen_filter(&q.user_id).await;
        let mut filtered_seen = Vec::new();
        let mut candidates = Vec::with_capacity(q.n);
        for c in merged {
            let (id, key) = loaded.ids.get(c.item);
            if filter.as_ref().is_some_and(|f| f.contains(key)) {
                filtered_seen.push(id.to_string());
                continue;
            }
            if candidates.len() < q.n {
                candidates.push(Candidate {
                    item_id: id.to_string(),
                    fused_score: c.fused,
                    sources: c
                        .sources
                        .iter()
                        .map(|s| Source {
                            channel: proto::Channel::from(s.channel).into(),
                            score: s.score,
                            rank: s.rank,
                        })
                        .collect(),
                });
            }
        }
        let added_new = !new_items.is_empty();
        for (rank, id) in new_items {
            if filter.as_ref().is_some_and(|f| f.contains(item_key(&id))) {
                filtered_seen.push(id);
                continue;
            }
            candidates.push(Candidate {
                item_id: id,
                fused_score: 1.0 / (RRF_K + rank as f32),
                sources: vec![Source {
                    channel: proto::Channel::Hot.into(),
                    score: 0.0,
                    rank,
                }],
            });
        }
        if added_new {
            // Stable: the merged order (and its tie rules) stays; new items slot in by score.
            candidates.sort_by(|a, b| b.fused_score.total_cmp(&a.fused_score));
            candidates.truncate(q.n);
        }
        self.metrics.seen_filtered.inc_by(filtered_seen.len() as u64);
        self.metrics.candidates.observe(candidates.len() as f64);
        Ok(RecallResponse {
            candidates,
            artifact_version: loaded.manifest.version.clone(),
            channels: stats,
            filtered_seen,
        })
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
        let mut filter = self
            .seen_filter(user)
            .await
            .unwrap_or_else(|| SeenFilter::new(self.seen_config));
        let (mut recorded, mut unknown_items) = (0, Vec::new());
        for id in &req.item_ids {
            if loaded.items.contains_key(id) {
                filter.insert(item_key(id));
                recorded += 1;
            } else {
                unknown_items.push(id.clone());
            }
        }
        self.seen
            .put(user, filter.to_bytes())
            .await
            .map_err(|e| Status::unavailable(format!("seen store: {e}")))?;
        Ok(ImpressionsResponse {
            recorded,
            unknown_items,
        })
    }

}

#[tonic::async_trait]
impl<S: SeenStore> Recall for RecallService<S> {
    async fn recall(&self, request: Request<RecallRequest>) -> Result<Response<RecallResponse>, Status> {
        let start = Instant::now();
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
        let result = self.impressions(request.into_inner()).await;
        self.metrics.rpc.record("record_impressions", start, &result);
        result.map(Response::new)
    }
}

/// The hot channel with real-time trending items first (scored above the build's list, in
/// trending order), then the build's hot items not already there; history left out.
pub fn lead_with(trending: &[u32], built: &[(u32, f32)], seen: &ItemSet, n: usize) -> Vec<(u32, f32)> {
    let top = built.first().map_or(1.0, |(_, s)| *s);
    let mut out: Vec<(u32, f32)> = Vec::with_capacity(n);
    let mut taken = HashSet::new();
    let fresh = trending
        .iter()
        .filter(|i| !seen.contains(i))
        .copied()
        .collect::<Vec<_>>();
    let k = fresh.len();
    for (rank, i) in fresh.into_iter().enumerate() {
        if taken.insert(i) {
            out.push((i, top * (1.0 + (k - rank) as f32 / k as f32)));
        }
    }
    out.extend(built.iter().filter(|(i, _)| !taken.contains(i)).copied());
    out.truncate(n);
    out
}

/// Reloads `root/current` every `every` until the process ends.
pub async fn watch_artifacts(slot: Arc<ArtifactSlot>, root: PathBuf, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if let Err(e) = slot.reload_if_changed(root.clone()).await {
            warn!(error = %e, "artifact reload failed; still serving the previous version");
        }
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
    }

    #[test]
    fn trending_items_lead_the_hot_channel() {
        let built = vec![(1, 10.0), (2, 8.0), (3, 5.0)];
        let seen: ItemSet = [7].into_iter().collect();
        let out = lead_with(&[3, 7, 9], &built, &seen, 4);
        assert_eq!(out.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![3, 9, 1, 2]);
        assert!(out[0].1 > out[1].1 && out[1].1 > out[2].1, "{out:?}");
        assert_eq!(lead_with(&[], &built, &seen, 3), built);
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
