//! The online and streaming services of recstack: gateway, recall, ranking, rerank, feature,
//! ingest and stream, and the all-in-one local runner.
//!
//! Empty until the serving issues land; the operator already renders their workloads from a
//! `RecommenderStack` (see `docs/operator.md`).
