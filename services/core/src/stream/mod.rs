//! The stream job's pure parts: tumbling-window aggregation and the fast path ([`window`]),
//! the records the Flink engine's job writes ([`aggregate`]), and the adaptive write limiter
//! ([`limiter`]). The job that reads the log and writes the
//! sinks is `recstack_services::stream`.

pub mod aggregate;
pub mod limiter;
pub mod window;
