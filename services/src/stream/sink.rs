//! Where the stream job writes: per-item window state (versioned), users' recent items (the
//! fast path), the feature values the feature service reads, and the trending list recall
//! reads. [`MemoryStore`] is the one-machine default (the local stack's feature and recall
//! services read it in process); [`RedisStore`] is the same in Redis, each versioned write one
//! Lua script so the compare and the write are atomic, each batch of writes one pipeline (one
//! per hash slot on a Redis Cluster: [`crate::redis_conn`]).
//!
//! Redis keys: `recstack:rt:item:<id>` (hash: totals, last window, hot, version),
//! `recstack:rt:user:{<id>}` (sorted set: item → newest engagement time; its generation in
//! `…:gen`), `recstack:features:item:<id>` and `recstack:features:user:{<id>}` (the protobuf the
//! feature service reads, users' with a generation in `…:gen` so an older fast-path write never
//! overwrites a newer one), and `recstack:trending` (sorted set: item → [`trend_rank`]). The
//! user keys carry the user id as a hash tag: each script that writes a user's key and its
//! generation touches one Redis Cluster slot.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::features::{L2, L2Error};
use recstack_core::stream::window::{
    Counts, HOT_HALF_LIFE_MS, ItemState, ItemWindow, RECENT_ITEMS, Version, add_recent, apply_window,
};

#[derive(Debug, thiserror::Error)]
#[error("feature sink: {0}")]
pub struct SinkError(pub String);

/// A rank for the trending list that orders items as their hot scores decayed to any common
/// time would: `log2(hot) + window_end / half-life`. Stored once per write, it never needs
/// rescoring as time passes.
pub fn trend_rank(hot: f64, window_end_ms: i64) -> f64 {
    hot.max(1e-9).log2() + window_end_ms as f64 / HOT_HALF_LIFE_MS
}

/// Items kept in the trending list.
pub const TRENDING_KEEP: usize = 1_000;

/// Users' recent items after a fast-path write: user → (generation, newest first).
pub type RecentLists = HashMap<String, (u64, Vec<(String, i64)>)>;

/// The stream job's writes.
pub trait FeatureSink: Send + Sync + 'static {
    /// Applies each window whose version is newer than the stored one; returns, per window,
    /// whether it applied and the item's state after.
    fn apply_windows(
        &self,
        windows: &[ItemWindow],
    ) -> impl Future<Output = Result<Vec<(bool, ItemState)>, SinkError>> + Send;

    /// Adds engagements `(user, item, ts)` to the users' recent items; returns each user's
    /// list after (newest first) with a generation that grows with every change.
    fn add_recent(
        &self,
        engagements: &[(String, String, i64)],
    ) -> impl Future<Output = Result<RecentLists, SinkError>> + Send;

    /// Stores item feature values (feature-service key, bytes).
    fn put_items(&self, values: Vec<(String, Vec<u8>)>) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Stores user feature values (key, generation, bytes); an older generation never
    /// replaces a newer one.
    fn put_users(&self, values: Vec<(String, u64, Vec<u8>)>) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Updates the trending list: `(item, rank)`.
    fn put_trending(&self, ranks: Vec<(String, f64)>) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// The `n` top trending items, best first.
    fn trending(&self, n: usize) -> impl Future<Output = Result<Vec<String>, SinkError>> + Send;
}

// === in memory ===

#[derive(Default)]
struct Memory {
    items: HashMap<String, ItemState>,
    recent: RecentLists,
    values: HashMap<String, Vec<u8>>,
    user_gen: HashMap<String, u64>,
    trending: HashMap<String, f64>,
}

/// The stream job's output in this process.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Memory>,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn item_state(&self, item: &str) -> Option<ItemState> {
        self.lock().items.get(item).cloned()
    }

    /// The user's newest `n` real-time items `(item, ms)`, newest first.
    pub fn recent(&self, user: &str, n: usize) -> Vec<(String, i64)> {
        self.lock()
            .recent
            .get(user)
            .map(|(_, list)| list.iter().take(n).cloned().collect())
            .unwrap_or_default()
    }
}

impl FeatureSink for MemoryStore {
    async fn apply_windows(&self, windows: &[ItemWindow]) -> Result<Vec<(bool, ItemState)>, SinkError> {
        let mut m = self.lock();
        Ok(windows
            .iter()
            .map(|w| {
                let state = m.items.entry(w.item_id.clone()).or_default();
                let applied = apply_window(state, w);
                (applied, state.clone())
            })
            .collect())
    }

    async fn add_recent(&self, engagements: &[(String, String, i64)]) -> Result<RecentLists, SinkError> {
        let mut m = self.lock();
        let mut out = HashMap::new();
        for (user, item, ts) in engagements {
            let (generation, list) = m.recent.entry(user.clone()).or_default();
            add_recent(list, item, *ts, RECENT_ITEMS);
            *generation += 1;
            out.insert(user.clone(), (*generation, list.clone()));
        }
        Ok(out)
    }

    async fn put_items(&self, values: Vec<(String, Vec<u8>)>) -> Result<(), SinkError> {
        self.lock().values.extend(values);
        Ok(())
    }

    async fn put_users(&self, values: Vec<(String, u64, Vec<u8>)>) -> Result<(), SinkError> {
        let mut m = self.lock();
        for (key, generation, bytes) in values {
            if m.user_gen.get(&key).is_some_and(|&g| g >= generation) {
                continue;
            }
            m.user_gen.insert(key.clone(), generation);
            m.values.insert(key, bytes);
        }
        Ok(())
    }

    async fn put_trending(&self, ranks: Vec<(String, f64)>) -> Result<(), SinkError> {
        let mut m = self.lock();
        m.trending.extend(ranks);
        if m.trending.len() > TRENDING_KEEP * 2 {
            let mut all: Vec<(String, f64)> = m.trending.drain().collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1));
            all.truncate(TRENDING_KEEP);
            m.trending = all.into_iter().collect();
        }
        Ok(())
    }

    async fn trending(&self, n: usize) -> Result<Vec<String>, SinkError> {
        let m = self.lock();
        let mut all: Vec<(&String, f64)> = m.trending.iter().map(|(k, v)| (k, *v)).collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(a.0)));
        Ok(all.into_iter().take(n).map(|(k, _)| k.clone()).collect())
    }
}

/// The feature service reads the stream job's values straight from memory (the local stack).
impl L2 for Arc<MemoryStore> {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, L2Error> {
        Ok(self.lock().values.get(key).cloned())
    }
}

// === Redis ===

/// Compares the window's version with the stored one and applies it (totals, last window,
/// decayed hot score) only when newer — `window::apply_window`, atomically in Redis.
const APPLY_WINDOW: &str = r#"
local k = KEYS[1]
local e, o = tonumber(ARGV[1]), tonumber(ARGV[2])
local v_end = tonumber(redis.call('HGET', k, 'v_end') or '-1')
local v_off = tonumber(redis.call('HGET', k, 'v_off') or '-1')
local applied = 0
if e > v_end or (e == v_end and o > v_off) then
  local last_end = tonumber(redis.call('HGET', k, 'last_end') or '0')
  local hot = tonumber(redis.call('HGET', k, 'hot') or '0')
  local decay = 0
  if last_end ~= 0 then decay = math.pow(0.5, math.max(e - last_end, 0) / tonumber(ARGV[7])) end
  hot = hot * decay + tonumber(ARGV[4]) + tonumber(ARGV[5]) + tonumber(ARGV[6])
  redis.call('HINCRBY', k, 'impressions', ARGV[3])
  redis.call('HINCRBY', k, 'clicks', ARGV[4])
  redis.call('HINCRBY', k, 'plays', ARGV[5])
  redis.call('HINCRBY', k, 'likes', ARGV[6])
  redis.call('HSET', k, 'last_impressions', ARGV[3], 'last_clicks', ARGV[4], 'last_plays', ARGV[5],
    'last_likes', ARGV[6], 'last_end', ARGV[1], 'hot', string.format('%.17g', hot),
    'v_end', ARGV[1], 'v_off', ARGV[2])
  applied = 1
end
local s = redis.call('HMGET', k, 'impressions', 'clicks', 'plays', 'likes', 'last_impressions',
  'last_clicks', 'last_plays', 'last_likes', 'last_end', 'hot', 'v_end', 'v_off')
for i = 1, #s do s[i] = s[i] or '0' end
table.insert(s, 1, tostring(applied))
return s
"#;

/// Adds an engagement to a user's recent items (newest time per item, the `cap` newest kept)
/// and bumps the user's generation — `window::add_recent` in a sorted set.
const ADD_RECENT: &str = r#"
redis.call('ZADD', KEYS[1], 'GT', ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[3]) + 1))
redis.call('EXPIRE', KEYS[1], ARGV[4])
local g = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
local r = redis.call('ZREVRANGE', KEYS[1], 0, -1, 'WITHSCORES')
table.insert(r, 1, tostring(g))
return r
"#;

/// Sets a value only when its generation is newer than the stored one.
const SET_IF_NEWER: &str = r#"
local g = tonumber(redis.call('GET', KEYS[2]) or '-1')
if tonumber(ARGV[1]) > g then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3])
  return 1
end
return 0
"#;

/// How long a user's real-time state lives after their last engagement.
const USER_TTL: Duration = Duration::from_secs(30 * 24 * 3_600);

/// The stream job's output in Redis.
#[derive(Clone)]
pub struct RedisStore {
    conn: crate::redis_conn::RedisConn,
    apply: redis::Script,
    recent: redis::Script,
    set_if_newer: redis::Script,
}

fn redis_err(e: redis::RedisError) -> SinkError {
    SinkError(e.to_string())
}

impl RedisStore {
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, SinkError> {
        let conn = crate::redis_conn::connect(url, timeout).await.map_err(SinkError)?;
        Ok(Self {
            conn,
            apply: redis::Script::new(APPLY_WINDOW),
            recent: redis::Script::new(ADD_RECENT),
            set_if_newer: redis::Script::new(SET_IF_NEWER),
        })
    }

    fn item_key(item: &str) -> String {
        format!("recstack:rt:item:{item}")
    }

    /// A user's recent items (hash-tagged by the user, like their generation beside it).
    fn recent_key(user: &str) -> String {
        format!("recstack:rt:user:{{{user}}}")
    }

    /// The generation kept beside a user's `key`: the same hash tag, so the same slot.
    fn generation_key(key: &str) -> String {
        format!("{key}:gen")
    }

    /// The user's newest `n` real-time items `(item, ms)`, newest first (one round trip).
    pub async fn recent(&self, user: &str, n: usize) -> Result<Vec<(String, i64)>, SinkError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let rows: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
            .arg(Self::recent_key(user))
            .arg(0)
            .arg(n as i64 - 1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(rows.into_iter().map(|(item, ms)| (item, ms as i64)).collect())
    }

    /// Runs `script` once per key of `keys` (`invoke(i)` builds call `i`), in as few round
    /// trips as the deployment allows (`RedisConn::batch`).
    async fn pipelined<'a, T: redis::FromRedisValue>(
        &'a self,
        script: &'a redis::Script,
        keys: &[String],
        invoke: impl Fn(usize) -> redis::ScriptInvocation<'a>,
    ) -> Result<Vec<T>, SinkError> {
        self.conn
            .batch(Some(script), keys, |pipe, i| {
                pipe.invoke_script(&invoke(i));
            })
            .await
            .map_err(redis_err)
    }
}

fn num<T: std::str::FromStr + Default>(s: &str) -> T {
    s.parse().unwrap_or_default()
}

impl FeatureSink for RedisStore {
    async fn apply_windows(&self, windows: &[ItemWindow]) -> Result<Vec<(bool, ItemState)>, SinkError> {
        if windows.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = windows.iter().map(|w| Self::item_key(&w.item_id)).collect();
        let rows: Vec<Vec<String>> = self
            .pipelined(&self.apply, &keys, |i| {
                let (w, c) = (&windows[i], windows[i].counts);
                let mut inv = self.apply.prepare_invoke();
                inv.key(&keys[i])
                    .arg(w.version.window_end_ms)
                    .arg(w.version.offset)
                    .arg(c.impressions)
                    .arg(c.clicks)
                    .arg(c.plays)
                    .arg(c.likes)
                    .arg(HOT_HALF_LIFE_MS);
                inv
            })
            .await?;
        let mut out = Vec::with_capacity(windows.len());
        for r in rows {
            if r.len() != 13 {
                return Err(SinkError(format!("apply script returned {} fields", r.len())));
            }
            let counts = |i: usize| Counts {
                impressions: num(&r[i]),
                clicks: num(&r[i + 1]),
                plays: num(&r[i + 2]),
                likes: num(&r[i + 3]),
            };
            let state = ItemState {
                totals: counts(1),
                last: counts(5),
                last_window_end_ms: num(&r[9]),
                hot: num(&r[10]),
                version: Version {
                    window_end_ms: num(&r[11]),
                    offset: num(&r[12]),
                },
            };
            out.push((r[0] == "1", state));
        }
        Ok(out)
    }

    async fn add_recent(&self, engagements: &[(String, String, i64)]) -> Result<RecentLists, SinkError> {
        if engagements.is_empty() {
            return Ok(RecentLists::new());
        }
        let keys: Vec<String> = engagements.iter().map(|(user, _, _)| Self::recent_key(user)).collect();
        let rows: Vec<Vec<String>> = self
            .pipelined(&self.recent, &keys, |i| {
                let (_, item, ts) = &engagements[i];
                let mut inv = self.recent.prepare_invoke();
                inv.key(&keys[i])
                    .key(Self::generation_key(&keys[i]))
                    .arg(*ts)
                    .arg(item)
                    .arg(RECENT_ITEMS)
                    .arg(USER_TTL.as_secs());
                inv
            })
            .await?;
        // In order: a user's last row is their list after all of this batch.
        let mut out = RecentLists::new();
        for ((user, _, _), r) in engagements.iter().zip(rows) {
            let generation = r.first().map(|g| num(g)).unwrap_or_default();
            let list = r
                .get(1..)
                .unwrap_or_default()
                .chunks(2)
                .map(|p| (p[0].clone(), num(&p[1])))
                .collect();
            out.insert(user.clone(), (generation, list));
        }
        Ok(out)
    }

    async fn put_items(&self, values: Vec<(String, Vec<u8>)>) -> Result<(), SinkError> {
        if values.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = values.iter().map(|(k, _)| k.clone()).collect();
        self.conn
            .batch::<()>(None, &keys, |pipe, i| {
                // Not ignored: `batch` hands back one reply per call.
                pipe.set(&values[i].0, values[i].1.as_slice());
            })
            .await
            .map(drop)
            .map_err(redis_err)
    }

    async fn put_users(&self, values: Vec<(String, u64, Vec<u8>)>) -> Result<(), SinkError> {
        if values.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = values.iter().map(|(key, _, _)| key.clone()).collect();
        let _: Vec<i64> = self
            .pipelined(&self.set_if_newer, &keys, |i| {
                let (key, generation, bytes) = &values[i];
                let mut inv = self.set_if_newer.prepare_invoke();
                // The value's key carries the user's hash tag (`Key::redis_key`): its
                // generation beside it lands in the same slot.
                inv.key(key)
                    .key(Self::generation_key(key))
                    .arg(*generation)
                    .arg(bytes.as_slice())
                    .arg(USER_TTL.as_secs());
                inv
            })
            .await?;
        Ok(())
    }

    async fn put_trending(&self, ranks: Vec<(String, f64)>) -> Result<(), SinkError> {
        if ranks.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for (item, rank) in ranks {
            pipe.zadd("recstack:trending", item, rank).ignore();
        }
        pipe.cmd("ZREMRANGEBYRANK")
            .arg("recstack:trending")
            .arg(0)
            .arg(-(TRENDING_KEEP as i64) - 1)
            .ignore();
        pipe.query_async::<()>(&mut conn).await.map_err(redis_err)
    }

    async fn trending(&self, n: usize) -> Result<Vec<String>, SinkError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        redis::cmd("ZREVRANGE")
            .arg("recstack:trending")
            .arg(0)
            .arg(n as i64 - 1)
            .query_async(&mut conn)
            .await
            .map_err(redis_err)
    }
}

/// Where recall reads the stream job's output — the trending list ([`Trending`]) and users'
/// real-time items ([`StreamStore::recent`]): nowhere, this process's store, or Redis.
#[derive(Clone)]
pub enum StreamStore {
    None,
    Memory(Arc<MemoryStore>),
    Redis(RedisStore),
}

impl StreamStore {
    /// The user's newest `n` real-time items `(item, ms)`, newest first; empty without a store.
    pub async fn recent(&self, user: &str, n: usize) -> Result<Vec<(String, i64)>, SinkError> {
        match self {
            StreamStore::None => Ok(Vec::new()),
            StreamStore::Memory(m) => Ok(m.recent(user, n)),
            StreamStore::Redis(r) => r.recent(user, n).await,
        }
    }

    async fn trending(&self, n: usize) -> Result<Vec<String>, SinkError> {
        match self {
            StreamStore::None => Ok(Vec::new()),
            StreamStore::Memory(m) => m.trending(n).await,
            StreamStore::Redis(r) => r.trending(n).await,
        }
    }
}

/// Where recall finds the trending list: the stream job's store, read at most every
/// [`Trending::FRESH`] (the list changes when windows fire, not per request), so a recall
/// request costs no store round trip or sort. One caller refreshes a stale list while the
/// others use the previous one; if the store fails, the previous list is kept.
#[derive(Clone)]
pub struct Trending {
    source: StreamStore,
    cache: Arc<TrendingCache>,
}

#[derive(Default)]
struct TrendingCache {
    list: Mutex<Option<(Instant, Arc<Vec<String>>)>>,
    refreshing: tokio::sync::Mutex<()>,
}

impl Trending {
    /// How long a read of the list is served.
    pub const FRESH: Duration = Duration::from_millis(500);

    /// The list in `source` (none in [`StreamStore::None`]: recall uses the build's hot list
    /// alone).
    pub fn new(source: StreamStore) -> Self {
        Self {
            source,
            cache: Arc::default(),
        }
    }

    /// The top `n` (empty when there is no list and none could be read: recall goes on with
    /// the build's hot list).
    pub async fn top(&self, n: usize) -> Vec<String> {
        if matches!(self.source, StreamStore::None) {
            return Vec::new();
        }
        let take = |list: &[String]| list.iter().take(n).cloned().collect();
        let cached = self.cache.list.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((at, list)) = &cached
            && at.elapsed() < Self::FRESH
        {
            return take(list);
        }
        let _refreshing = match (self.cache.refreshing.try_lock(), &cached) {
            (Ok(guard), _) => guard,
            // Another request is refreshing: use the previous list meanwhile.
            (Err(_), Some((_, list))) => return take(list),
            // The very first read: wait for it.
            (Err(_), None) => self.cache.refreshing.lock().await,
        };
        match self.source.trending(TRENDING_KEEP).await {
            Ok(list) => {
                let list = Arc::new(list);
                *self.cache.list.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), list.clone()));
                take(&list)
            }
            Err(e) => {
                tracing::warn!(error = %e, "trending list unavailable; recalling with the last one read");
                cached.map(|(_, list)| take(&list)).unwrap_or_default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn recall_reads_the_trending_list_at_most_every_fresh_period() {
        let store = Arc::new(MemoryStore::default());
        let trending = Trending::new(StreamStore::Memory(store.clone()));
        assert!(Trending::new(StreamStore::None).top(5).await.is_empty());
        store.put_trending(vec![("a".into(), 2.0)]).await.unwrap();
        assert_eq!(trending.top(5).await, vec!["a"]);
        // A newer list is not read while the last read is fresh …
        store.put_trending(vec![("b".into(), 3.0)]).await.unwrap();
        assert_eq!(trending.top(5).await, vec!["a"]);
        // … and is once it is not; `n` still cuts the cached list.
        tokio::time::sleep(Trending::FRESH + Duration::from_millis(50)).await;
        assert_eq!(trending.top(5).await, vec!["b", "a"]);
        assert_eq!(trending.top(1).await, vec!["b"]);
    }
}
