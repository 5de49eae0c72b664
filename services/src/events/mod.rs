//! The event path's I/O: the event log (embedded on local disk, or a Kafka-protocol topic) and
//! the ingest service that validates events and appends them. The events themselves (kinds,
//! validation, the JSON on the log) are [`recstack_core::events`].
//!
//! - [`log`]: the [`log::EventLog`] trait and the embedded append-only log on local disk.
//! - [`kafka`]: the same trait over a Kafka-protocol topic.
//! - [`ingest`]: the ingest service (HTTP and gRPC `PostEvents`).

pub mod ingest;
pub mod kafka;
pub mod log;

pub use recstack_core::events::*;

use log::{Appended, Checkpoint, EventLog, LogError, Record};

/// The log a deployment chose: embedded or Kafka.
#[derive(Clone)]
pub enum AnyLog {
    File(log::FileLog),
    Kafka(kafka::KafkaLog),
}

impl EventLog for AnyLog {
    fn partitions(&self) -> u32 {
        match self {
            AnyLog::File(l) => l.partitions(),
            AnyLog::Kafka(l) => l.partitions(),
        }
    }

    async fn append(&self, records: Vec<(String, Vec<u8>)>) -> Result<Vec<Appended>, LogError> {
        match self {
            AnyLog::File(l) => l.append(records).await,
            AnyLog::Kafka(l) => l.append(records).await,
        }
    }

    async fn read(&self, partition: u32, from: u64, max: usize) -> Result<Vec<Record>, LogError> {
        match self {
            AnyLog::File(l) => l.read(partition, from, max).await,
            AnyLog::Kafka(l) => l.read(partition, from, max).await,
        }
    }

    async fn end_offset(&self, partition: u32) -> Result<u64, LogError> {
        match self {
            AnyLog::File(l) => l.end_offset(partition).await,
            AnyLog::Kafka(l) => l.end_offset(partition).await,
        }
    }

    async fn commit(&self, group: &str, partition: u32, at: Checkpoint) -> Result<(), LogError> {
        match self {
            AnyLog::File(l) => l.commit(group, partition, at).await,
            AnyLog::Kafka(l) => l.commit(group, partition, at).await,
        }
    }

    async fn committed(&self, group: &str, partition: u32) -> Result<Option<Checkpoint>, LogError> {
        match self {
            AnyLog::File(l) => l.committed(group, partition).await,
            AnyLog::Kafka(l) => l.committed(group, partition).await,
        }
    }
}
