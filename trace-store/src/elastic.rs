//! Traces in Elasticsearch (or OpenSearch): a composable index template, one index per UTC
//! day (`<prefix>-YYYY.MM.DD`) joined to the alias `<prefix>` by the template, bulk writes
//! with the request id as document id (a retried batch overwrites), queries through the
//! alias, retention by deleting whole daily indices. ILM and data streams are not required
//! (many clusters and the test server lack them); a cluster that has them can still attach an
//! ILM policy to the template.
//!
//! The mapping indexes what search and the aggregates need (ids, user, level, model version,
//! bucket, time; `items`, `stages` and `channels` as nested documents) and keeps the large
//! parts — every candidate of a full trace, the seen-filtered ids, the history and recall's cuts
//! — in `_source` only.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use elasticsearch::auth::Credentials;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::indices::{IndicesDeleteParts, IndicesPutIndexTemplateParts, IndicesRefreshParts};
use elasticsearch::{BulkParts, Elasticsearch, MgetParts, SearchParts};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Trace;
use crate::query::{AggregateQuery, Aggregates, LevelBucket, Page, SearchQuery, StageLatency, TraceSummary};
use crate::store::{PutOutcome, StoreError, TraceStore, now_ms};

/// Where and how to reach the cluster.
#[derive(Clone, Debug)]
pub struct ElasticConfig {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Template, alias and index name prefix.
    pub prefix: String,
    pub timeout: Duration,
}

impl ElasticConfig {
    pub const DEFAULT_PREFIX: &str = "recstack-traces";

    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            username: None,
            password: None,
            prefix: Self::DEFAULT_PREFIX.to_string(),
            timeout: Duration::from_secs(10),
        }
    }

    /// Reads `username` and `password` files from a mounted Secret (the operator mounts the
    /// stack's `credentialsSecretRef` there).
    pub fn with_credentials_dir(mut self, dir: &Path) -> Result<Self, StoreError> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| StoreError::Refused(format!("credentials {}: {e}", dir.join(name).display())))
        };
        self.username = Some(read("username")?);
        self.password = Some(read("password")?);
        Ok(self)
    }
}

/// Elasticsearch-backed [`crate::store::TraceStore`].
pub struct ElasticStore {
    client: Elasticsearch,
    prefix: String,
    /// False until the template is in place, and again after the cluster was unreachable
    /// (a recreated cluster has lost it).
    ready: AtomicBool,
}

fn transport_error(e: elasticsearch::Error) -> StoreError {
    match e.status_code() {
        Some(s) if s.as_u16() == 429 || s.is_server_error() => StoreError::Unavailable(e.to_string()),
        Some(_) => StoreError::Refused(e.to_string()),
        None => StoreError::Unavailable(e.to_string()),
    }
}

/// The response body, or an error naming the status and the server's reason.
async fn body(
    response: Result<elasticsearch::http::response::Response, elasticsearch::Error>,
) -> Result<Value, StoreError> {
    let response = response.map_err(transport_error)?;
    let status = response.status_code();
    let text = response.text().await.map_err(transport_error)?;
    if status.is_success() {
        return serde_json::from_str(&text).map_err(|e| StoreError::Refused(format!("unreadable response: {e}")));
    }
    let reason = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"]["reason"].as_str().map(str::to_string))
        .unwrap_or(text);
    let message = format!("{status}: {reason}");
    Err(if status.as_u16() == 429 || status.is_server_error() {
        StoreError::Unavailable(message)
    } else {
        StoreError::Refused(message)
    })
}

/// The index template: mappings and the alias every daily index joins.
pub fn index_template(prefix: &str) -> Value {
    let keyword = json!({ "type": "keyword" });
    json!({
        "index_patterns": [format!("{prefix}-*")],
        "priority": 200,
        "_meta": { "recstack_trace_schema": crate::SCHEMA_VERSION },
        "template": {
            "aliases": { prefix: {} },
            "settings": { "number_of_shards": 1, "refresh_interval": "1s" },
            "mappings": {
                "dynamic": false,
                "properties": {
                    "schema": { "type": "integer" },
                    "request_id": keyword,
                    "trace_id": keyword,
                    "timestamp_ms": { "type": "date", "format": "epoch_millis" },
                    "user_id": keyword,
                    "scene": keyword,
                    "span_id": keyword,
                    "parent_span_id": keyword,
                    "n": { "type": "integer" },
                    "context": { "type": "object", "enabled": false },
                    "detail": keyword,
                    "level": keyword,
                    "degraded": keyword,
                    "experiment": keyword,
                    "bucket": { "type": "integer" },
                    "variant": keyword,
                    "model_version": keyword,
                    "artifact_version": keyword,
                    "latency_us": { "type": "long" },
                    "stages": { "type": "nested", "properties": {
                        "name": keyword, "latency_us": { "type": "long" }, "start_us": { "type": "long" },
                        "items_in": { "type": "integer" }, "items_out": { "type": "integer" }, "outcome": keyword,
                    }},
                    "channels": { "type": "nested", "properties": {
                        "channel": keyword, "candidates": { "type": "integer" },
                        "quota": { "type": "integer" }, "outcome": keyword,
                    }},
                    "items": { "type": "nested", "properties": {
                        "item_id": keyword, "position": { "type": "integer" },
                        "sources": { "properties": {
                            "channel": keyword, "score": { "type": "float" }, "rank": { "type": "integer" },
                        }},
                        "recall_position": { "type": "integer" }, "rank_score": { "type": "float" },
                        "ranked_position": { "type": "integer" }, "rerank_rule": keyword, "filters_passed": keyword,
                    }},
                    // Kept for "why not", never searched: out of the inverted index.
                    "filtered_seen": { "type": "keyword", "index": false, "doc_values": false },
                    "filtered_seen_when": { "type": "object", "enabled": false },
                    "seen_filter": keyword,
                    "consumed_total": { "type": "integer" },
                    "realtime_history": { "type": "keyword", "index": false, "doc_values": false },
                    "consumed": { "type": "object", "enabled": false },
                    "cuts": { "type": "object", "enabled": false },
                    "funnel": { "type": "object", "enabled": false },
                    "explained": { "type": "boolean" },
                    "candidates": { "type": "object", "enabled": false },
                    "realtime": { "properties": {
                        "status": keyword, "items": { "type": "integer" },
                        "oldest_window_end_ms": { "type": "date", "format": "epoch_millis" },
                        "newest_window_end_ms": { "type": "date", "format": "epoch_millis" },
                        "fetch_us": { "type": "long" },
                    }},
                    "what_if": { "properties": {
                        "replay_of": keyword, "level": keyword, "force_items": keyword,
                        "block": keyword, "model": keyword,
                        "seen": { "type": "keyword", "index": false },
                        "realtime_history": { "type": "keyword", "index": false },
                        "mmr_lambda": { "type": "float" },
                        "pins": { "type": "object", "enabled": false },
                    }},
                }
            }
        }
    })
}

/// The daily indices a trace is likeliest in: the day its request id says it was served (and
/// the next, for a trace written just past midnight), else today's and yesterday's.
pub fn likely_indices(prefix: &str, request_id: &str, now_ms: i64) -> Vec<String> {
    let at = crate::request_id::issued_ms(request_id);
    let days = match at {
        Some(ms) => [ms, ms + 60_000],
        None => [now_ms, now_ms - 86_400_000],
    };
    let mut indices: Vec<String> = days.iter().map(|&ms| index_for(prefix, ms)).collect();
    indices.dedup();
    indices
}

/// The daily index a trace goes to.
pub fn index_for(prefix: &str, timestamp_ms: i64) -> String {
    let day = jiff::Timestamp::from_millisecond(timestamp_ms)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    format!("{prefix}-{:04}.{:02}.{:02}", day.year(), day.month(), day.day())
}

/// The first millisecond after the day of a daily index, if the name is one of ours.
fn index_day_end(prefix: &str, index: &str) -> Option<i64> {
    let date = index.strip_prefix(prefix)?.strip_prefix('-')?;
    let mut parts = date.split('.').map(|p| p.parse::<i16>().ok());
    let (y, m, d) = (parts.next()??, parts.next()??, parts.next()??);
    let start = jiff::civil::Date::new(y, m as i8, d as i8)
        .ok()?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()?;
    Some(start.timestamp().as_millisecond() + 86_400_000)
}

/// The search body's filter for a query (cursor aside).
fn filters(q: &SearchQuery) -> Vec<Value> {
    let mut f = Vec::new();
    let term = |field: &str, v: Value| json!({ "term": { field: v } });
    if let Some(u) = &q.user {
        f.push(term("user_id", json!(u)));
    }
    if let Some(i) = &q.item {
        f.push(json!({ "nested": { "path": "items", "query": { "term": { "items.item_id": i } } } }));
    }
    if q.from_ms.is_some() || q.to_ms.is_some() {
        let mut range = serde_json::Map::new();
        if let Some(from) = q.from_ms {
            range.insert("gte".into(), json!(from));
        }
        if let Some(to) = q.to_ms {
            range.insert("lt".into(), json!(to));
        }
        f.push(json!({ "range": { "timestamp_ms": range } }));
    }
    if let Some(l) = &q.level {
        f.push(term("level", json!(l)));
    }
    if let Some(m) = &q.model_version {
        f.push(term("model_version", json!(m)));
    }
    if let Some(b) = q.bucket {
        f.push(term("bucket", json!(b)));
    }
    f
}

/// A search hit's `_source` with just what a summary needs.
#[derive(Deserialize)]
struct SummarySource {
    request_id: String,
    trace_id: String,
    timestamp_ms: i64,
    user_id: String,
    scene: String,
    level: String,
    detail: crate::Detail,
    latency_us: u64,
    model_version: Option<String>,
    bucket: u32,
    variant: String,
    #[serde(default)]
    items: Vec<serde::de::IgnoredAny>,
}

impl ElasticStore {
    pub fn connect(config: &ElasticConfig) -> Result<Self, StoreError> {
        let url = config
            .url
            .parse()
            .map_err(|e| StoreError::Refused(format!("elasticsearch url {:?}: {e}", config.url)))?;
        let mut transport = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .timeout(config.timeout)
            .disable_proxy();
        if let (Some(u), Some(p)) = (&config.username, &config.password) {
            transport = transport.auth(Credentials::Basic(u.clone(), p.clone()));
        }
        let transport = transport.build().map_err(|e| StoreError::Refused(e.to_string()))?;
        Ok(Self {
            client: Elasticsearch::new(transport),
            prefix: config.prefix.clone(),
            ready: AtomicBool::new(false),
        })
    }

    /// Puts the index template (idempotent). Called before the first write and after an outage.
    pub async fn ensure_template(&self) -> Result<(), StoreError> {
        body(
            self.client
                .indices()
                .put_index_template(IndicesPutIndexTemplateParts::Name(&self.prefix))
                .body(index_template(&self.prefix))
                .send()
                .await,
        )
        .await?;
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    async fn search_body(&self, body_json: Value) -> Result<Value, StoreError> {
        let alias = [self.prefix.as_str()];
        let result = body(
            self.client
                .search(SearchParts::Index(&alias))
                .ignore_unavailable(true)
                .allow_no_indices(true)
                .body(body_json)
                .send()
                .await,
        )
        .await;
        match result {
            // No index yet: nothing written.
            Err(StoreError::Refused(m)) if m.contains("no such index") || m.contains("index_not_found") => {
                Ok(json!({ "hits": { "total": { "value": 0 }, "hits": [] }, "aggregations": {} }))
            }
            other => other,
        }
    }

    async fn daily_indices(&self) -> Result<Vec<String>, StoreError> {
        let pattern = format!("{}-*", self.prefix);
        let v = body(
            self.client
                .cat()
                .indices(elasticsearch::cat::CatIndicesParts::Index(&[&pattern]))
                .format("json")
                .send()
                .await,
        )
        .await?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["index"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// A batch as a bulk request body.
struct Bulk {
    /// Action and document lines for the traces that pass [`Trace::check`].
    lines: Vec<Vec<u8>>,
    /// The batch indexes those traces came from.
    sent: Vec<usize>,
    /// The outcome so far: the traces refused.
    outcome: PutOutcome,
}

fn bulk_lines(prefix: &str, traces: &[Trace]) -> Result<Bulk, StoreError> {
    let mut outcome = PutOutcome::default();
    let mut lines: Vec<Vec<u8>> = Vec::with_capacity(traces.len() * 2);
    let mut sent: Vec<usize> = Vec::with_capacity(traces.len());
    for (i, t) in traces.iter().enumerate() {
        if let Err(e) = t.check() {
            outcome.rejected.push((t.request_id.clone(), e.to_string()));
            continue;
        }
        let action = json!({ "index": { "_index": index_for(prefix, t.timestamp_ms), "_id": t.request_id } });
        lines.push(serde_json::to_vec(&action).map_err(|e| StoreError::Refused(e.to_string()))?);
        lines.push(serde_json::to_vec(t).map_err(|e| StoreError::Refused(e.to_string()))?);
        sent.push(i);
    }
    Ok(Bulk { lines, sent, outcome })
}

#[async_trait]
impl TraceStore for ElasticStore {
    fn kind(&self) -> &'static str {
        "elasticsearch"
    }

    async fn put(&self, traces: Arc<[Trace]>) -> Result<PutOutcome, StoreError> {
        if !self.ready.load(Ordering::Acquire) {
            self.ensure_template().await?;
        }
        // Serialising a batch is milliseconds of CPU: off the async workers.
        let (prefix, batch) = (self.prefix.clone(), traces.clone());
        let Bulk {
            lines,
            sent,
            mut outcome,
        } = tokio::task::spawn_blocking(move || bulk_lines(&prefix, &batch))
            .await
            .map_err(|e| StoreError::Unavailable(format!("serialising a batch: {e}")))??;
        if sent.is_empty() {
            return Ok(outcome);
        }
        let response = body(self.client.bulk(BulkParts::None).body(lines).send().await).await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                if e.is_transient() {
                    self.ready.store(false, Ordering::Release);
                }
                return Err(e);
            }
        };
        let items = response["items"].as_array().cloned().unwrap_or_default();
        if items.len() != sent.len() {
            return Err(StoreError::Unavailable(format!(
                "bulk answered {} items for {}",
                items.len(),
                sent.len()
            )));
        }
        for (item, &i) in items.iter().zip(&sent) {
            let result = &item["index"];
            let status = result["status"].as_u64().unwrap_or(0);
            match status {
                200..=299 => outcome.written += 1,
                429 | 500.. => outcome.retry.push(i),
                _ => outcome.rejected.push((
                    traces[i].request_id.clone(),
                    result["error"]["reason"]
                        .as_str()
                        .map_or_else(|| format!("status {status}"), str::to_string),
                )),
            }
        }
        Ok(outcome)
    }

    async fn get(&self, request_id: &str) -> Result<Option<Trace>, StoreError> {
        let read = |source: &Value| {
            serde_json::from_value(source.clone())
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    request_id: request_id.to_string(),
                    message: e.to_string(),
                })
        };
        // By id from the days it can be in: a real-time read that finds a trace as soon as
        // its bulk write is acknowledged, before the index refreshes.
        let docs: Vec<Value> = likely_indices(&self.prefix, request_id, now_ms())
            .into_iter()
            .map(|index| json!({ "_index": index, "_id": request_id }))
            .collect();
        let v = body(
            self.client
                .mget(MgetParts::None)
                .body(json!({ "docs": docs }))
                .send()
                .await,
        )
        .await?;
        let found = v["docs"].as_array().into_iter().flatten().find(|d| d["found"] == true);
        if let Some(doc) = found {
            return read(&doc["_source"]);
        }
        // Older, or written with another clock: through the alias (what the last refresh shows).
        let v = self
            .search_body(json!({ "size": 1, "query": { "term": { "request_id": request_id } } }))
            .await?;
        match v["hits"]["hits"].as_array().and_then(|h| h.first()) {
            Some(hit) => read(&hit["_source"]),
            None => Ok(None),
        }
    }

    async fn search(&self, q: &SearchQuery) -> Result<Page, StoreError> {
        let mut request = json!({
            "size": q.size + 1,
            "track_total_hits": true,
            "query": { "bool": { "filter": filters(q) } },
            "sort": [{ "timestamp_ms": "desc" }, { "request_id": "desc" }],
            "_source": ["request_id", "trace_id", "timestamp_ms", "user_id", "scene", "level", "detail",
                        "latency_us", "model_version", "bucket", "variant", "items.item_id"],
        });
        if let Some(c) = &q.after {
            request["search_after"] = json!([c.timestamp_ms, c.request_id]);
        }
        let v = self.search_body(request).await?;
        let mut hits = Vec::new();
        for hit in v["hits"]["hits"].as_array().into_iter().flatten() {
            let s: SummarySource = serde_json::from_value(hit["_source"].clone()).map_err(|e| StoreError::Corrupt {
                request_id: hit["_id"].as_str().unwrap_or_default().to_string(),
                message: e.to_string(),
            })?;
            hits.push(TraceSummary {
                served: s.items.len() as u32,
                request_id: s.request_id,
                trace_id: s.trace_id,
                timestamp_ms: s.timestamp_ms,
                user_id: s.user_id,
                scene: s.scene,
                level: s.level,
                detail: s.detail,
                latency_us: s.latency_us,
                model_version: s.model_version,
                bucket: s.bucket,
                variant: s.variant,
            });
        }
        let total = v["hits"]["total"]["value"].as_u64().unwrap_or(hits.len() as u64);
        Ok(Page::from_hits(hits, q.size, total))
    }

    async fn aggregate(&self, q: &AggregateQuery) -> Result<Aggregates, StoreError> {
        let v = self
            .search_body(json!({
                "size": 0,
                "track_total_hits": true,
                "query": { "range": { "timestamp_ms": { "gte": q.from_ms, "lt": q.to_ms } } },
                "aggs": {
                    "over_time": {
                        "date_histogram": { "field": "timestamp_ms", "fixed_interval": format!("{}ms", q.interval_ms), "min_doc_count": 1 },
                        "aggs": { "levels": { "terms": { "field": "level", "size": 16 } } }
                    },
                    "items": { "nested": { "path": "items" },
                        "aggs": { "channels": { "terms": { "field": "items.sources.channel", "size": 64 } } } },
                    "stages": { "nested": { "path": "stages" },
                        "aggs": { "names": { "terms": { "field": "stages.name", "size": 32 },
                            "aggs": { "latency": { "percentiles": { "field": "stages.latency_us", "percents": [50, 99] } } } } } }
                }
            }))
            .await?;
        let aggs = &v["aggregations"];
        let buckets = |a: &Value| a["buckets"].as_array().cloned().unwrap_or_default();
        let levels_over_time = buckets(&aggs["over_time"])
            .iter()
            .map(|b| LevelBucket {
                start_ms: b["key"].as_i64().unwrap_or_default(),
                levels: buckets(&b["levels"])
                    .iter()
                    .map(|l| {
                        (
                            l["key"].as_str().unwrap_or_default().to_string(),
                            l["doc_count"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect(),
            })
            .collect();
        let channels = buckets(&aggs["items"]["channels"])
            .iter()
            .map(|c| {
                (
                    c["key"].as_str().unwrap_or_default().to_string(),
                    c["doc_count"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let percent = |values: &Value, p: &str| {
            values[p]
                .as_f64()
                .or_else(|| values[format!("{p}.0")].as_f64())
                .unwrap_or(0.0)
        };
        let stages = buckets(&aggs["stages"]["names"])
            .iter()
            .map(|s| {
                let values = &s["latency"]["values"];
                (
                    s["key"].as_str().unwrap_or_default().to_string(),
                    StageLatency {
                        count: s["doc_count"].as_u64().unwrap_or(0),
                        p50_us: percent(values, "50"),
                        p99_us: percent(values, "99"),
                    },
                )
            })
            .collect();
        Ok(Aggregates {
            requests: v["hits"]["total"]["value"].as_u64().unwrap_or(0),
            levels_over_time,
            channels,
            stages,
        })
    }

    async fn retain(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        let old: Vec<String> = self
            .daily_indices()
            .await?
            .into_iter()
            .filter(|i| index_day_end(&self.prefix, i).is_some_and(|end| end <= cutoff_ms))
            .collect();
        if old.is_empty() {
            return Ok(0);
        }
        let names: Vec<&str> = old.iter().map(String::as_str).collect();
        body(
            self.client
                .indices()
                .delete(IndicesDeleteParts::Index(&names))
                .send()
                .await,
        )
        .await?;
        Ok(old.len() as u64)
    }

    async fn refresh(&self) -> Result<(), StoreError> {
        let alias = [self.prefix.as_str()];
        body(
            self.client
                .indices()
                .refresh(IndicesRefreshParts::Index(&alias))
                .allow_no_indices(true)
                .ignore_unavailable(true)
                .send()
                .await,
        )
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daily_indices_are_utc_days() {
        // 2023-11-14T22:13:20Z
        assert_eq!(index_for("t", 1_700_000_000_000), "t-2023.11.14");
        let end = index_day_end("t", "t-2023.11.14").unwrap();
        assert_eq!(index_for("t", end - 1), "t-2023.11.14");
        assert_eq!(index_for("t", end), "t-2023.11.15");
        assert_eq!(index_day_end("t", "other-2023.11.14"), None);
        assert_eq!(index_day_end("t", "t-2023.13.14"), None);
        assert_eq!(index_day_end("t", "t-x"), None);
    }

    #[test]
    fn a_trace_is_looked_for_on_the_day_its_id_was_issued() {
        let id = crate::request_id::new(1);
        let issued = crate::request_id::issued_ms(&id).unwrap();
        assert_eq!(likely_indices("t", &id, 0)[0], index_for("t", issued));
        // An id from just before midnight: that day and the next.
        let end = index_day_end("t", "t-2023.11.14").unwrap();
        let late = crate::request_id::issued_at(end - 30_000, 1);
        assert_eq!(likely_indices("t", &late, 0), ["t-2023.11.14", "t-2023.11.15"]);
        // Another id format: today and yesterday.
        assert_eq!(
            likely_indices("t", "req-1", 1_700_000_000_000),
            ["t-2023.11.14", "t-2023.11.13"]
        );
    }

    #[test]
    fn the_template_keeps_candidates_out_of_the_index() {
        let t = index_template("recstack-traces");
        let props = &t["template"]["mappings"]["properties"];
        assert_eq!(props["candidates"]["enabled"], false);
        assert_eq!(props["filtered_seen"]["index"], false);
        assert_eq!(props["items"]["type"], "nested");
        assert_eq!(t["index_patterns"][0], "recstack-traces-*");
        assert!(t["template"]["aliases"]["recstack-traces"].is_object());
        // Every top-level field of a trace is mapped (dynamic mapping is off).
        let trace = serde_json::to_value(crate::sample::full_trace(1, 0)).unwrap();
        for key in trace.as_object().unwrap().keys() {
            assert!(props.get(key).is_some(), "{key} is not in the mapping");
        }
    }

    #[test]
    fn search_filters_become_bool_filters() {
        let mut q = SearchQuery::new();
        assert!(filters(&q).is_empty());
        q.item = Some("0001".into());
        q.from_ms = Some(5);
        q.bucket = Some(3);
        let f = filters(&q);
        assert_eq!(f.len(), 3);
        assert_eq!(f[0]["nested"]["query"]["term"]["items.item_id"], "0001");
        assert_eq!(f[1]["range"]["timestamp_ms"]["gte"], 5);
        assert!(f[1]["range"]["timestamp_ms"].get("lt").is_none());
        assert_eq!(f[2]["term"]["bucket"], 3);
    }
}
