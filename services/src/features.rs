//! The feature service: user and item features through three levels.
//!
//! - **L1**: an in-process moka cache. An entry is fresh for `ttl`; loads of one key are
//!   serialized by moka's per-key compute lock, so a burst of requests for a cold key makes
//!   one L2 read (single-flight), and waiters find the fresh entry.
//! - **L2**: Redis, where the stream job writes real-time features (protobuf bytes under
//!   `recstack:features:{user|item}:<id>`). Optional: one machine runs without it.
//! - **Snapshot**: the features in the build's artifacts, for keys Redis does not have.
//!
//! When Redis fails, a stale L1 value is served and its freshness extended (stale-on-error);
//! without one, the snapshot answers. A request never fails because Redis did. The L1 can be
//! dumped on shutdown and loaded on start (warm restart).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::id_columns;
use crate::ops::{Buckets, LogThrottle, MetricsRegistry, RpcMetrics, WARN_EVERY};
use prost::Message;
use tonic::{Request, Response, Status};
use tracing::warn;

/// Generated gRPC types (`services/proto/features.proto`): the service stubs here, the
/// messages from [`recstack_core::features`].
pub mod proto {
    pub use recstack_core::features::*;
    tonic::include_proto!("recstack.features.v1");
}

use proto::features_server::Features;
use proto::{CacheDump, GetItemsRequest, GetItemsResponse, GetUserRequest, GetUserResponse};
pub use proto::{ItemFeatures, UserFeatures};
pub use recstack_core::features::Snapshot;

/// A feature key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    User(String),
    Item(String),
}

impl Key {
    /// The Redis key.
    pub fn redis_key(&self) -> String {
        match self {
            // Hash-tagged: the stream job writes a user's value and its generation
            // (`…:gen`) in one script, which Redis Cluster allows only within one slot.
            Key::User(id) => format!("recstack:features:user:{{{id}}}"),
            Key::Item(id) => format!("recstack:features:item:{id}"),
        }
    }
}

/// A cached value (`None`: known to exist nowhere).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    User(UserFeatures),
    Item(ItemFeatures),
}

impl Value {
    fn encode(&self) -> Vec<u8> {
        match self {
            Value::User(u) => u.encode_to_vec(),
            Value::Item(i) => i.encode_to_vec(),
        }
    }

    fn decode(key: &Key, bytes: &[u8]) -> Result<Value, prost::DecodeError> {
        Ok(match key {
            Key::User(_) => Value::User(UserFeatures::decode(bytes)?),
            Key::Item(_) => Value::Item(ItemFeatures::decode(bytes)?),
        })
    }
}

#[derive(Clone, Debug)]
struct Cached {
    value: Option<Arc<Value>>,
    fresh_until: Instant,
}

/// Why L2 could not answer.
#[derive(Debug, thiserror::Error)]
#[error("feature L2: {0}")]
pub struct L2Error(pub String);

/// The second cache level.
pub trait L2: Send + Sync + 'static {
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, L2Error>> + Send;
}

/// The snapshot's value for a key.
fn from_snapshot(snapshot: &Snapshot, key: &Key) -> Option<Value> {
    match key {
        Key::User(id) => snapshot.user(id).cloned().map(Value::User),
        Key::Item(id) => snapshot.item(id).cloned().map(Value::Item),
    }
}

/// No L2: L1 over the snapshot (one machine).
pub struct NoL2;

impl L2 for NoL2 {
    async fn get(&self, _key: &str) -> Result<Option<Vec<u8>>, L2Error> {
        Ok(None)
    }
}

/// Redis through a reconnecting connection manager with short timeouts, so a dead Redis costs
/// a request at most `timeout`.
#[derive(Clone)]
pub struct RedisL2 {
    conn: crate::redis_conn::RedisConn,
}

impl RedisL2 {
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, L2Error> {
        let conn = crate::redis_conn::connect(url, timeout).await.map_err(L2Error)?;
        Ok(Self { conn })
    }
}

impl L2 for RedisL2 {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, L2Error> {
        let mut conn = self.conn.clone();
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(|e| L2Error(e.to_string()))
    }
}

// === metrics ===

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// l1, l2, snapshot, stale
    pub source: &'static str,
}

pub struct FeatureMetrics {
    pub registry: Registry,
    pub rpc: RpcMetrics,
    /// Values served, by where they came from.
    pub served: Family<SourceLabels, Counter>,
    pub l2_reads: Counter,
    pub l2_errors: Counter,
}

impl Default for FeatureMetrics {
    fn default() -> Self {
        let mut m = MetricsRegistry::new("recstack_features");
        Self {
            rpc: RpcMetrics::register(&mut m, "Feature", Buckets::exponential(0.000_01, 2.0, 18)),
            served: m.family("served", "Feature values served, by source (l1, l2, snapshot, stale)"),
            l2_reads: m.counter("l2_reads", "Reads from L2 (Redis)"),
            l2_errors: m.counter("l2_errors", "L2 failures answered from a stale value or the snapshot"),
            registry: m.finish(),
        }
    }
}

impl FeatureMetrics {
    pub fn encode(&self) -> String {
        crate::ops::encode(&self.registry)
    }
    fn served(&self, source: &'static str) {
        self.served_n(source, 1);
    }

    fn served_n(&self, source: &'static str, n: u64) {
        if n > 0 {
            self.served.get_or_create(&SourceLabels { source }).inc_by(n);
        }
    }
}

// === the store ===

/// Freshness settings.
#[derive(Clone, Copy, Debug)]
pub struct CachePolicy {
    /// How long an L1 entry is served without asking L2.
    pub ttl: Duration,
    /// How much longer a stale entry is served when L2 fails.
    pub stale_extension: Duration,
    pub max_entries: u64,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            // Short, so a stream-job write is served within the 2 s event-to-feature target;
            // still long enough to absorb a burst on one key.
            ttl: Duration::from_secs(1),
            stale_extension: Duration::from_secs(30),
            max_entries: 1_000_000,
        }
    }
}

/// L1 ▸ L2 ▸ snapshot.
pub struct FeatureStore<L: L2> {
    l1: Cache<Key, Cached>,
    l2: L,
    /// The artifacts' users and items, swapped with each new version.
    snapshot: arc_swap::ArcSwap<Snapshot>,
    policy: CachePolicy,
    pub metrics: Arc<FeatureMetrics>,
}

impl<L: L2> FeatureStore<L> {
    /// Serves a new artifact version's snapshot; cached values read from the old one are
    /// dropped so none outlives its version.
    pub fn swap_snapshot(&self, snapshot: Arc<Snapshot>) {
        self.snapshot.store(snapshot);
        self.l1.invalidate_all();
    }

    pub fn new(l2: L, snapshot: Arc<Snapshot>, policy: CachePolicy, metrics: Arc<FeatureMetrics>) -> Self {
        Self {
            l1: Cache::new(policy.max_entries),
            l2,
            snapshot: arc_swap::ArcSwap::new(snapshot),
            policy,
            metrics,
        }
    }

    /// The value of `key`, or `None` when no level has it. Never fails.
    pub async fn get(&self, key: &Key) -> Option<Arc<Value>> {
        if let Some(c) = self.l1.get(key).await
            && c.fresh_until > Instant::now()
        {
            self.metrics.served("l1");
            return c.value;
        }
        let result = self
            .l1
            .entry(key.clone())
            .and_compute_with(|old| async move {
                let old = old.map(|e| e.into_value());
                // Another caller refreshed it while this one waited for the key lock.
                if let Some(c) = &old
                    && c.fresh_until > Instant::now()
                {
                    self.metrics.served("l1");
                    return Op::Nop;
                }
                Op::Put(self.load(key, old).await)
            })
            .await;
        match result {
            CompResult::Inserted(e) | CompResult::ReplacedWith(e) | CompResult::Unchanged(e) => e.into_value().value,
            CompResult::Removed(_) | CompResult::StillNone(_) => None,
        }
    }

    /// The values of `keys`, in order, as [`get`](Self::get) answers each. Fresh L1 entries
    /// (most of a request's items) are read in turn, and only the rest go through `get`,
    /// concurrently: a future per key and one counter update per key cost more than the
    /// lookups themselves (the `features` bench).
    pub async fn get_many(&self, keys: &[Key]) -> Vec<Option<Arc<Value>>> {
        let now = Instant::now();
        let mut values = Vec::with_capacity(keys.len());
        let mut misses = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match self.l1.get(key).await {
                Some(c) if c.fresh_until > now => values.push(c.value),
                _ => {
                    values.push(None);
                    misses.push(i);
                }
            }
        }
        self.metrics.served_n("l1", (keys.len() - misses.len()) as u64);
        let loaded = futures::future::join_all(misses.iter().map(|&i| self.get(&keys[i]))).await;
        for (i, value) in misses.into_iter().zip(loaded) {
            values[i] = value;
        }
        values
    }

    async fn load(&self, key: &Key, old: Option<Cached>) -> Cached {
        let now = Instant::now();
        self.metrics.l2_reads.inc();
        match self.l2.get(&key.redis_key()).await {
            Ok(Some(bytes)) => match Value::decode(key, &bytes) {
                Ok(v) => {
                    self.metrics.served("l2");
                    return Cached {
                        value: Some(Arc::new(v)),
                        fresh_until: now + self.policy.ttl,
                    };
                }
                Err(e) => {
                    static WARN: LogThrottle = LogThrottle::new(WARN_EVERY);
                    if let Some(held) = WARN.admit(now) {
                        warn!(key = %key.redis_key(), error = %e, held_back = held, "undecodable feature value in L2; using the snapshot")
                    }
                }
            },
            Ok(None) => {}
            Err(e) => {
                self.metrics.l2_errors.inc();
                // One warning per period, whichever way this read is answered: an outage fails
                // every key a request reads.
                static WARN: LogThrottle = LogThrottle::new(WARN_EVERY);
                let log = WARN.admit(now);
                if let Some(old) = old {
                    if let Some(held) = log {
                        warn!(key = %key.redis_key(), error = %e, held_back = held, "L2 failed; serving the stale value");
                    }
                    self.metrics.served("stale");
                    return Cached {
                        value: old.value,
                        fresh_until: now + self.policy.stale_extension,
                    };
                }
                if let Some(held) = log {
                    warn!(key = %key.redis_key(), error = %e, held_back = held, "L2 failed; serving the snapshot");
                }
                self.metrics.served("snapshot");
                return Cached {
                    value: from_snapshot(&self.snapshot.load(), key).map(Arc::new),
                    fresh_until: now + self.policy.stale_extension,
                };
            }
        }
        self.metrics.served("snapshot");
        Cached {
            value: from_snapshot(&self.snapshot.load(), key).map(Arc::new),
            fresh_until: now + self.policy.ttl,
        }
    }

    /// Writes every cached value to `path` (protobuf `CacheDump`), via a temporary file.
    pub async fn dump(&self, path: &Path) -> std::io::Result<usize> {
        self.l1.run_pending_tasks().await;
        let mut dump = CacheDump::default();
        for (_, cached) in self.l1.iter() {
            match cached.value.as_deref() {
                Some(Value::User(u)) => dump.users.push(u.clone()),
                Some(Value::Item(i)) => dump.items.push(i.clone()),
                None => {}
            }
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, dump.encode_to_vec())?;
        std::fs::rename(&tmp, path)?;
        Ok(dump.users.len() + dump.items.len())
    }

    /// Loads a dump into L1 as fresh entries. A missing file is an empty dump.
    pub async fn warm(&self, path: &Path) -> std::io::Result<usize> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let dump = CacheDump::decode(bytes.as_slice()).map_err(|e| std::io::Error::other(e.to_string()))?;
        let fresh_until = Instant::now() + self.policy.ttl;
        let n = dump.users.len() + dump.items.len();
        for u in dump.users {
            let key = Key::User(u.user_id.clone());
            self.l1
                .insert(
                    key,
                    Cached {
                        value: Some(Arc::new(Value::User(u))),
                        fresh_until,
                    },
                )
                .await;
        }
        for i in dump.items {
            let key = Key::Item(i.item_id.clone());
            self.l1
                .insert(
                    key,
                    Cached {
                        value: Some(Arc::new(Value::Item(i))),
                        fresh_until,
                    },
                )
                .await;
        }
        Ok(n)
    }
}

/// Encodes a value as the stream job writes it to Redis.
pub fn encode_for_l2(value: &Value) -> Vec<u8> {
    value.encode()
}

// === gRPC ===

/// Most items one `GetItems` call may ask for.
pub const MAX_ITEMS: usize = 5000;

pub struct FeatureService<L: L2> {
    pub store: Arc<FeatureStore<L>>,
}

#[tonic::async_trait]
impl<L: L2> Features for FeatureService<L> {
    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<GetUserResponse>, Status> {
        let start = Instant::now();
        self.store.metrics.rpc.joined("get_user", request.metadata());
        let result = self.user(request.into_inner()).await;
        self.store.metrics.rpc.record("get_user", start, &result);
        result.map(Response::new)
    }

    async fn get_items(&self, request: Request<GetItemsRequest>) -> Result<Response<GetItemsResponse>, Status> {
        let start = Instant::now();
        self.store.metrics.rpc.joined("get_items", request.metadata());
        let result = self.items(request.into_inner()).await;
        self.store.metrics.rpc.record("get_items", start, &result);
        result.map(Response::new)
    }
}

/// The names of [`GetItemsRequest`]'s id columns, for errors.
const PACKED_FIELDS: id_columns::Fields = id_columns::Fields {
    ids: "packed_ids",
    ends: "packed_id_ends",
};

/// A request's ids, in order, from `item_ids` or the columns (borrowed either way), and
/// whether they came from the columns; the error names the field that does not fit.
pub fn request_ids(request: &GetItemsRequest) -> Result<(Vec<&str>, bool), String> {
    let (ids, ends, strings_set) = (
        &request.packed_ids,
        &request.packed_id_ends,
        !request.item_ids.is_empty(),
    );
    Ok(
        match id_columns::instead_of_strings(ids, ends, strings_set, PACKED_FIELDS, ("item_ids", "packed_ids"))? {
            Some(ids) => (ids, true),
            None => (request.item_ids.iter().map(String::as_str).collect(), false),
        },
    )
}

/// An item's real-time fields alone (`GetItemsRequest::realtime_only`); `None` when no window
/// has counted it (every real-time field zero), which reads the same as leaving it out.
pub fn realtime_part(i: &ItemFeatures) -> Option<ItemFeatures> {
    let counted = i.window_end_ms != 0
        || i.impressions != 0
        || i.clicks != 0
        || i.plays != 0
        || i.likes != 0
        || i.ctr != 0.0
        || i.trend != 0.0;
    counted.then(|| ItemFeatures {
        item_id: i.item_id.clone(),
        impressions: i.impressions,
        clicks: i.clicks,
        plays: i.plays,
        likes: i.likes,
        ctr: i.ctr,
        window_end_ms: i.window_end_ms,
        trend: i.trend,
        ..Default::default()
    })
}

impl<L: L2> FeatureService<L> {
    async fn user(&self, request: GetUserRequest) -> Result<GetUserResponse, Status> {
        let id = request.user_id;
        if id.trim().is_empty() {
            return Err(Status::invalid_argument("user_id is required"));
        }
        let features = match self.store.get(&Key::User(id)).await.as_deref() {
            Some(Value::User(u)) => Some(u.clone()),
            _ => None,
        };
        Ok(GetUserResponse { features })
    }

    async fn items(&self, request: GetItemsRequest) -> Result<GetItemsResponse, Status> {
        let (ids, packed_read) = request_ids(&request).map_err(Status::invalid_argument)?;
        let field = if packed_read { "packed_id_ends" } else { "item_ids" };
        if ids.len() > MAX_ITEMS {
            return Err(Status::invalid_argument(format!(
                "{field}: at most {MAX_ITEMS} per call, got {}",
                ids.len()
            )));
        }
        if let Some(pos) = ids.iter().position(|id| id.trim().is_empty()) {
            return Err(Status::invalid_argument(format!("{field}[{pos}] is empty")));
        }
        // Cached ones in turn; each miss is its own L2 round trip, concurrently.
        let keys: Vec<Key> = if packed_read {
            ids.into_iter().map(|id| Key::Item(id.to_string())).collect()
        } else {
            request.item_ids.into_iter().map(Key::Item).collect()
        };
        let values = self.store.get_many(&keys).await;
        let mut response = GetItemsResponse {
            packed_read,
            ..Default::default()
        };
        for (key, v) in keys.into_iter().zip(values) {
            match (v.as_deref(), request.realtime_only, key) {
                (Some(Value::Item(i)), false, _) => response.items.push(i.clone()),
                (Some(Value::Item(i)), true, _) => response.items.extend(realtime_part(i)),
                (_, false, Key::Item(id)) => response.missing.push(id),
                _ => {}
            }
        }
        Ok(response)
    }
}
