//! The stream job's pure parts: tumbling-window aggregation and the fast path ([`window`]),
//! the adaptive write limiter ([`limiter`]) and which replica reads which partition
//! ([`assignment`]). The job that reads the log and writes the
//! sinks is `recstack_services::stream`.

pub mod assignment;
pub mod limiter;
pub mod window;
