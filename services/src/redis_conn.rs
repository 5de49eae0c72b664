//! Redis for every component that uses it (the feature service's L2, recall's seen filters,
//! the stream job's writes): one server or a Redis Cluster behind one connection type.
//!
//! - `redis://host:port/db` is one server, through a `ConnectionManager` (reconnects).
//! - `redis+cluster://host:port,host:port,…` names a Redis Cluster by some of its nodes; the
//!   cluster client learns the slot map from them and follows `MOVED`/`ASK` redirects.
//!
//! Keys a script or a multi-key write touches together carry one hash tag (`{user}`), so they
//! live in one slot. A batch of calls goes as one pipeline to one server, and to a cluster as
//! one pipeline per hash slot, all sent at once (the cluster client routes a pipeline by its
//! first key and refuses one that spans slots; concurrent pipelines share each node's
//! multiplexed connection, so a batch still costs about one round trip per node).

use std::collections::BTreeMap;
use std::time::Duration;

use recstack_crds::runtime::redis_cluster_seeds;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};

/// How long a starting service waits for Redis before it exits (and is restarted).
pub const START_WAIT: Duration = Duration::from_secs(30);

/// Hash slots of a Redis Cluster.
const SLOTS: u16 = 16_384;

/// A connection to one Redis server or to a Redis Cluster.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// The seed nodes of a `redis+cluster://` URL as `redis://` URLs (credentials kept on each),
/// or `None` for a one-server URL.
pub fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let (credentials, hosts) = redis_cluster_seeds(url)?;
    let credentials = credentials.map(|c| format!("{c}@")).unwrap_or_default();
    Some(hosts.into_iter().map(|h| format!("redis://{credentials}{h}")).collect())
}

/// Connects to `url` with short timeouts: a dead Redis costs a request at most `timeout`, and
/// the connection comes back by itself when Redis does. The first connection gets more time (a
/// pod starting beside many others, or a Redis still starting) and is retried for up to
/// [`START_WAIT`] before the process gives up.
pub async fn connect(url: &str, timeout: Duration) -> Result<RedisConn, String> {
    let start = std::time::Instant::now();
    loop {
        match try_connect(url, timeout).await {
            Ok(conn) => return Ok(conn),
            Err(Retry::No(e)) => return Err(e),
            Err(Retry::Yes(e)) if start.elapsed() < START_WAIT => {
                tracing::warn!(url = %redact(url), error = %e, "Redis not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(Retry::Yes(e)) => {
                return Err(format!("{}: {e} (retried for {} s)", redact(url), START_WAIT.as_secs()));
            }
        }
    }
}

enum Retry {
    Yes(String),
    No(String),
}

async fn try_connect(url: &str, timeout: Duration) -> Result<RedisConn, Retry> {
    let connect_timeout = timeout.max(Duration::from_secs(2));
    if let Some(nodes) = cluster_nodes(url) {
        if nodes.is_empty() {
            return Err(Retry::No(format!("{}: no cluster node named", redact(url))));
        }
        let client = redis::cluster::ClusterClient::builder(nodes)
            .connection_timeout(connect_timeout)
            .response_timeout(timeout)
            .retries(2)
            .build()
            .map_err(|e| Retry::No(format!("{}: {e}", redact(url))))?;
        return client
            .get_async_connection()
            .await
            .map(RedisConn::Cluster)
            .map_err(|e| Retry::Yes(e.to_string()));
    }
    let client = redis::Client::open(url).map_err(|e| Retry::No(format!("{}: {e}", redact(url))))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_with_config(client, config)
        .await
        .map(RedisConn::Single)
        .map_err(|e| Retry::Yes(e.to_string()))
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, hosts))) => format!("{scheme}://…@{hosts}"),
        _ => url.to_string(),
    }
}

/// The hash slot of `key` (CRC16-XMODEM of its hash tag, or of the whole key, mod 16384), as
/// Redis Cluster computes it.
pub fn hash_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let close = key[open + 1..].iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &key[open + 1..open + 1 + close])
        })
        .unwrap_or(key);
    crc16_xmodem(tagged) % SLOTS
}

fn crc16_xmodem(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |mut crc, &b| {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
        crc
    })
}

impl RedisConn {
    /// Runs one call per key of `keys` — `add(pipe, i)` adds call `i` (one command whose
    /// reply is kept, not ignored), which touches only `keys[i]`'s slot — and returns their
    /// replies in order. With `script`, each pipeline
    /// loads it first, so a Redis that lost its script cache (a restart, a failover) still
    /// runs the calls.
    pub async fn batch<T: FromRedisValue>(
        &self,
        script: Option<&redis::Script>,
        keys: &[String],
        add: impl Fn(&mut Pipeline, usize),
    ) -> RedisResult<Vec<T>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let groups: Vec<Vec<usize>> = match self {
            RedisConn::Single(_) => vec![(0..keys.len()).collect()],
            RedisConn::Cluster(_) => {
                let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
                for (i, k) in keys.iter().enumerate() {
                    by_slot.entry(hash_slot(k.as_bytes())).or_default().push(i);
                }
                by_slot.into_values().collect()
            }
        };
        let replies = futures::future::try_join_all(groups.iter().map(|group| {
            let mut pipe = redis::pipe();
            if let Some(s) = script {
                pipe.load_script(s).ignore();
            }
            for &i in group {
                add(&mut pipe, i);
            }
            let mut conn = self.clone();
            async move { pipe.query_async::<Vec<T>>(&mut conn).await }
        }))
        .await?;
        let mut out: Vec<Option<T>> = (0..keys.len()).map(|_| None).collect();
        for (group, values) in groups.iter().zip(replies) {
            if values.len() != group.len() {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "a pipeline answered with fewer replies than calls",
                )));
            }
            for (&i, v) in group.iter().zip(values) {
                out[i] = Some(v);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_hash_tag_as_redis_computes_them() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(hash_slot(b"foo"), 12182);
        assert_eq!(hash_slot(b"{user1000}.following"), hash_slot(b"{user1000}.followers"));
        assert_eq!(hash_slot(b"{user1000}.following"), hash_slot(b"user1000"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(hash_slot(b"foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % SLOTS);
        // Only the first tag counts.
        assert_eq!(hash_slot(b"foo{{bar}}zap"), crc16_xmodem(b"{bar") % SLOTS);
        assert_eq!(hash_slot(b"foo{bar}{zap}"), hash_slot(b"bar"));
    }

    #[test]
    fn cluster_urls_name_their_seed_nodes() {
        assert_eq!(cluster_nodes("redis://r:6379/0"), None);
        assert_eq!(
            cluster_nodes("redis+cluster://a:7000,b:7001/"),
            Some(vec!["redis://a:7000".to_string(), "redis://b:7001".to_string()])
        );
        assert_eq!(
            cluster_nodes("redis+cluster://u:pw@a:7000, b:7001"),
            Some(vec![
                "redis://u:pw@a:7000".to_string(),
                "redis://u:pw@b:7001".to_string()
            ])
        );
        assert_eq!(cluster_nodes("redis+cluster://"), Some(vec![]));
        assert_eq!(redact("redis+cluster://u:pw@a:7000"), "redis+cluster://…@a:7000");
    }
}
