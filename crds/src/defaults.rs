//! Defaults for omitted spec fields. They are serde defaults, so the operator, `render` and
//! the API server's stored object all agree on them.

/// The image every component runs unless the spec names another.
pub fn image() -> String {
    format!("ghcr.io/recstack/recstack:{}", env!("CARGO_PKG_VERSION"))
}
/// Where the services image keeps what it bundles (the rankers, artifacts built from the bundled
/// MovieTweetings sample): a stack with no `artifacts` or model URI starts on them.
pub const IMAGE_SHARE: &str = "/usr/share/recstack";
pub fn model_uri() -> String {
    format!("file://{IMAGE_SHARE}/models/gbdt/model.onnx")
}
pub fn artifacts_uri() -> String {
    format!("file://{IMAGE_SHARE}/artifacts")
}
pub fn artifacts_poll_seconds() -> i32 {
    30
}
/// The MovieTweetings sample the image bundles.
pub fn build_data() -> String {
    format!("file://{IMAGE_SHARE}/data/movietweetings-100k")
}
pub fn build_deadline_seconds() -> i64 {
    3600
}
pub fn build_backoff_limit() -> i32 {
    2
}
pub fn model_version() -> String {
    "gbdt-2".into()
}
/// The gateway's p99 objective, ms of its own time (BENCHMARKS.md: the latency objective).
pub fn latency_target_ms() -> i32 {
    5
}
/// Rows per model call. On CPU, requests of ~500 candidates gain nothing from sharing a call
/// (BENCHMARKS.md, "Ranking service"), so the row cap keeps them apart there; a GPU stack
/// raises it so that `max_requests` binds.
pub fn max_batch() -> i32 {
    512
}
pub fn max_requests() -> i32 {
    32
}
pub fn max_wait_micros() -> i32 {
    5000
}
pub fn gpu_count() -> i32 {
    1
}
pub fn window() -> String {
    "1m".into()
}
pub fn dashboard_replicas() -> i32 {
    1
}
pub fn parallelism() -> i32 {
    2
}
/// The Flink engine's job image (`services/flink/Dockerfile`: Flink, PyFlink, the Kafka SQL
/// connector and the SQL runner), released with the services image.
pub fn flink_image() -> String {
    format!("ghcr.io/recstack/recstack-flink:{}", env!("CARGO_PKG_VERSION"))
}
pub fn flink_version() -> String {
    "v2_2".into()
}
pub fn task_slots() -> i32 {
    2
}
pub fn job_manager_memory() -> String {
    "1024m".into()
}
pub fn task_manager_memory() -> String {
    "2048m".into()
}
pub fn flink_service_account() -> String {
    "flink".into()
}
pub fn events_topic() -> String {
    "recstack-events".into()
}
pub fn event_partitions() -> i32 {
    12
}
pub fn replication_factor() -> i32 {
    3
}
pub fn min_insync_replicas() -> i32 {
    2
}
pub fn event_retention_hours() -> i32 {
    7 * 24
}
pub fn debug_per_second() -> f64 {
    1.0
}
pub fn debug_burst() -> i32 {
    10
}
pub fn sampling() -> f64 {
    0.01
}
pub fn retention_days() -> i32 {
    7
}
pub fn yes() -> bool {
    true
}
pub fn max_unavailable() -> i32 {
    1
}
/// The install's PriorityClass for online serving (manifests/install/priority-classes.yaml).
pub fn online_priority_class() -> String {
    "recstack-online".into()
}
/// The install's PriorityClass for streaming and offline work.
pub fn offline_priority_class() -> String {
    "recstack-offline".into()
}
pub fn fresh_boost() -> f64 {
    1.2
}
pub fn enabled() -> bool {
    true
}
pub fn traffic_percent() -> i32 {
    100
}
