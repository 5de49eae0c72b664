//! Where users' seen filters live: in this process, or in Redis shared by every recall
//! replica and fed by ingest.

use super::*;

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
    async fn put(&self, user: &str, bytes: Vec<u8>) -> Result<(), SeenStoreError> {
        match self {
            Self::Memory(s) => s.put(user, bytes).await,
            Self::Redis(s) => s.put(user, bytes).await,
        }
    }
}
