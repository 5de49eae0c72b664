//! Where users' seen filters live: in this process, or in Redis shared by every recall
//! replica and fed by ingest.

use super::*;

/// Where users' seen filters live, as bytes: in memory on one machine, Redis at scale.
///
/// Updates are compare-and-set: two replicas adding impressions for one user at once both
/// read the same filter, and a plain write would drop one of them. [`SeenStore::put_if`]
/// writes only over the value the writer read, so the loser reads again and retries.
pub trait SeenStore: Send + Sync + 'static {
    fn get(&self, user: &str) -> impl Future<Output = Result<Option<Vec<u8>>, SeenStoreError>> + Send;
    /// Stores `bytes` if the stored value is still `expected` (`None`: no value); whether it
    /// did.
    fn put_if(
        &self,
        user: &str,
        expected: Option<&[u8]>,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<bool, SeenStoreError>> + Send;
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
    async fn put_if(&self, user: &str, expected: Option<&[u8]>, bytes: Vec<u8>) -> Result<bool, SeenStoreError> {
        let mut filters = self.filters.lock().unwrap_or_else(|p| p.into_inner());
        if filters.get(user).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        filters.insert(user.to_string(), bytes);
        Ok(true)
    }
}

/// Sets KEYS[1] to ARGV[3] (expiring in ARGV[4] s) if it holds ARGV[2] (ARGV[1] = 1), or
/// does not exist (ARGV[1] = 0); 1 if it did.
const PUT_IF: &str = r"
local cur = redis.call('GET', KEYS[1])
local ok
if ARGV[1] == '1' then ok = (cur == ARGV[2]) else ok = (cur == false) end
if ok then
  redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4])
  return 1
end
return 0
";

/// Seen filters in Redis under `recstack:seen:<user>`, expiring `ttl` after the last write
/// (a user gone that long has nothing worth filtering).
#[derive(Clone)]
pub struct RedisSeenStore {
    conn: crate::redis_conn::RedisConn,
    ttl: Duration,
    put_if: redis::Script,
}

impl RedisSeenStore {
    pub async fn connect(url: &str, timeout: Duration, ttl: Duration) -> Result<Self, SeenStoreError> {
        let conn = crate::redis_conn::connect(url, timeout).await.map_err(SeenStoreError)?;
        Ok(Self {
            conn,
            ttl,
            put_if: redis::Script::new(PUT_IF),
        })
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

    async fn put_if(&self, user: &str, expected: Option<&[u8]>, bytes: Vec<u8>) -> Result<bool, SeenStoreError> {
        let mut conn = self.conn.clone();
        let stored: i64 = self
            .put_if
            .key(Self::key(user))
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(bytes)
            .arg(self.ttl.as_secs().max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| SeenStoreError(e.to_string()))?;
        Ok(stored == 1)
    }
}

/// The Bloom key of an item: a hash of its external id, so filters survive artifact versions
/// that renumber items.
pub fn item_key(item_id: &str) -> u64 {
    recstack_core::stable_hash(item_id.as_bytes())
}

/// The seen store a recall process uses: Redis when the stack has one (every replica then
/// sees every impression ingest sends to any of them), else this process's memory.
pub enum AnySeenStore {
    Memory(MemorySeenStore),
    Redis(RedisSeenStore),
}

impl SeenStore for AnySeenStore {
    async fn get(&self, user: &str) -> Result<Option<Vec<u8>>, SeenStoreError> {
        match self {
            Self::Memory(s) => s.get(user).await,
            Self::Redis(s) => s.get(user).await,
        }
    }
    async fn put_if(&self, user: &str, expected: Option<&[u8]>, bytes: Vec<u8>) -> Result<bool, SeenStoreError> {
        match self {
            Self::Memory(s) => s.put_if(user, expected, bytes).await,
            Self::Redis(s) => s.put_if(user, expected, bytes).await,
        }
    }
}
