//! The seam between the writer / query API and a backend. Two real implementations answer the
//! same queries: [`crate::embedded::EmbeddedStore`] and [`crate::elastic::ElasticStore`].

use std::sync::Arc;

use async_trait::async_trait;

use crate::Trace;
use crate::query::{AggregateQuery, Aggregates, Page, SearchQuery};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or is overloaded: try again later.
    #[error("trace store unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with an error that retrying will not fix.
    #[error("trace store refused the request: {0}")]
    Refused(String),
    /// A stored document does not read as a trace.
    #[error("stored trace {request_id} is unreadable: {message}")]
    Corrupt { request_id: String, message: String },
}

impl StoreError {
    /// Whether the writer should keep the batch and try again.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// What became of a batch handed to [`TraceStore::put`].
#[derive(Debug, Default, PartialEq)]
pub struct PutOutcome {
    pub written: usize,
    /// Traces the store will never take (bad schema, mapping conflicts): (request id, reason).
    pub rejected: Vec<(String, String)>,
    /// Indexes into the batch of traces refused for now (back-pressure): try them again.
    pub retry: Vec<usize>,
}

/// A trace backend. Writes are idempotent by request id (a retried batch overwrites).
#[async_trait]
pub trait TraceStore: Send + Sync + 'static {
    /// For logs and metrics labels: `embedded` or `elasticsearch`.
    fn kind(&self) -> &'static str;

    /// Writes a batch. Shared rather than borrowed so that a store can do the heavy part
    /// (serialising, SQLite) on a thread of its own without copying the batch: a copy of 500
    /// traces is ~5 ms, on the async worker that called.
    async fn put(&self, traces: Arc<[Trace]>) -> Result<PutOutcome, StoreError>;

    async fn get(&self, request_id: &str) -> Result<Option<Trace>, StoreError>;

    async fn search(&self, q: &SearchQuery) -> Result<Page, StoreError>;

    async fn aggregate(&self, q: &AggregateQuery) -> Result<Aggregates, StoreError>;

    /// Deletes traces older than `cutoff_ms`. Returns how many units went: traces for the
    /// embedded store, whole daily indices for Elasticsearch (which keeps a day's index until
    /// all of it is past the cutoff).
    async fn retain(&self, cutoff_ms: i64) -> Result<u64, StoreError>;

    /// Makes everything written so far visible to search (Elasticsearch refreshes on its own
    /// about once a second; tests and benchmarks call this).
    async fn refresh(&self) -> Result<(), StoreError>;

    /// The CPU time this process has spent writing into the store so far, where the store does
    /// its writes on a thread of its own and can read that thread's clock (the embedded store
    /// on Linux): what tracing costs the process beyond the request path. `None` elsewhere
    /// (Elasticsearch's work is in its own process).
    fn write_cpu(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Runs `retain` every `every`, keeping `days` of traces; logs what it removed.
pub fn spawn_retention(
    store: std::sync::Arc<dyn TraceStore>,
    days: u32,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let cutoff = now_ms() - i64::from(days) * 86_400_000;
            match store.retain(cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(store = store.kind(), removed = n, days, "trace retention"),
                Err(e) => tracing::warn!(store = store.kind(), error = %e, "trace retention failed"),
            }
        }
    })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}
