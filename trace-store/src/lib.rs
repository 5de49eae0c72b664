//! Recommendation traces: one document per request with each item's lineage through recall,
//! filters, ranking and rerank; writers for Elasticsearch and an embedded store; the query API
//! ("why", "why not", search, aggregates).
//!
//! Empty until the trace-store issue lands.
