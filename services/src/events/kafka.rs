//! The event log on a Kafka-protocol topic (a Kafka cluster at scale; `tansu` in tests), through
//! `rskafka`, a pure-Rust client (no librdkafka to build).
//!
//! Records are keyed by item and go to `partition_of(key)`, the same partitioning as the
//! embedded log, so one item's events stay in one partition. Produce waits for all in-sync
//! replicas (`acks = -1`): an acknowledged event is durable in the cluster.
//!
//! rskafka has no consumer-group API, so committed offsets are kept the way Kafka keeps its
//! own: as records on a topic (`<topic>-offsets`, one partition, key `group/partition`, value
//! the checkpoint: offset and watermark); the newest record per key wins. The Flink job uses Kafka's group offsets under
//! its own group id, so the two never share a position.

use std::collections::HashMap;
use std::sync::Arc;

use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record as KafkaRecord;
use tokio::sync::Mutex;

use super::log::{Appended, Checkpoint, EventLog, LogError, Record, partition_of};

fn kafka_err(e: impl std::fmt::Display) -> LogError {
    LogError::Kafka(e.to_string())
}

/// How long a fetch at the end of a partition waits for data (also the worker's idle pace on
/// Kafka). Not 0: tansu answers a zero-wait fetch with an empty topic list.
const FETCH_WAIT_MS: i32 = 10;

/// Largest fetch per read, bytes.
const FETCH_BYTES: i32 = 4 * 1024 * 1024;

/// The event log on a Kafka topic.
#[derive(Clone)]
pub struct KafkaLog {
    topic: String,
    partitions: Arc<Vec<PartitionClient>>,
    offsets: Arc<PartitionClient>,
    committed: Arc<Mutex<Option<HashMap<String, Checkpoint>>>>,
}

impl KafkaLog {
    /// Connects to `brokers`, creating `topic` with `partitions` partitions (and its offsets
    /// topic) when they do not exist; an existing topic keeps its partitions.
    pub async fn connect(brokers: &[String], topic: &str, partitions: u32) -> Result<Self, LogError> {
        let client = ClientBuilder::new(brokers.to_vec())
            .client_id("recstack")
            .build()
            .await
            .map_err(kafka_err)?;
        let offsets_topic = format!("{topic}-offsets");
        let existing = client.list_topics().await.map_err(kafka_err)?;
        let count = |name: &str| {
            existing
                .iter()
                .find(|t| t.name == name)
                .map(|t| t.partitions.len() as u32)
        };
        let controller = client.controller_client().map_err(kafka_err)?;
        let partitions = match count(topic) {
            Some(n) => n,
            None => {
                create(&controller, topic, partitions.max(1)).await?;
                partitions.max(1)
            }
        };
        if count(&offsets_topic).is_none() {
            create(&controller, &offsets_topic, 1).await?;
        }
        let mut clients = Vec::new();
        for p in 0..partitions {
            clients.push(partition_client(&client, topic, p).await?);
        }
        let offsets = partition_client(&client, &offsets_topic, 0).await?;
        Ok(Self {
            topic: topic.to_string(),
            partitions: Arc::new(clients),
            offsets: Arc::new(offsets),
            committed: Arc::new(Mutex::new(None)),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn partition(&self, partition: u32) -> Result<&PartitionClient, LogError> {
        self.partitions.get(partition as usize).ok_or(LogError::NoPartition {
            partition,
            partitions: self.partitions.len() as u32,
        })
    }
}

async fn create(
    controller: &rskafka::client::controller::ControllerClient,
    topic: &str,
    n: u32,
) -> Result<(), LogError> {
    match controller.create_topic(topic, n as i32, 1, 5_000).await {
        Ok(()) => Ok(()),
        Err(rskafka::client::error::Error::ServerError {
            protocol_error: rskafka::client::error::ProtocolError::TopicAlreadyExists,
            ..
        }) => Ok(()),
        Err(e) => Err(kafka_err(e)),
    }
}

async fn partition_client(client: &Client, topic: &str, p: u32) -> Result<PartitionClient, LogError> {
    client
        .partition_client(topic, p as i32, UnknownTopicHandling::Retry)
        .await
        .map_err(kafka_err)
}

fn record(key: &str, value: Vec<u8>) -> KafkaRecord {
    KafkaRecord {
        key: Some(key.as_bytes().to_vec()),
        value: Some(value),
        headers: Default::default(),
        timestamp: chrono::Utc::now(),
    }
}

/// Reads a partition from `from` up to `max` records.
async fn fetch(client: &PartitionClient, from: u64, max: usize) -> Result<Vec<Record>, LogError> {
    let (records, _high) = client
        .fetch_records(from as i64, 1..FETCH_BYTES, FETCH_WAIT_MS)
        .await
        .map_err(kafka_err)?;
    Ok(records
        .into_iter()
        .filter(|r| r.offset >= from as i64)
        .take(max)
        .map(|r| Record {
            offset: r.offset as u64,
            key: String::from_utf8_lossy(r.record.key.as_deref().unwrap_or_default()).into_owned(),
            value: r.record.value.unwrap_or_default(),
        })
        .collect())
}

impl EventLog for KafkaLog {
    fn partitions(&self) -> u32 {
        self.partitions.len() as u32
    }

    async fn append(&self, records: Vec<(String, Vec<u8>)>) -> Result<Vec<Appended>, LogError> {
        let n = self.partitions();
        let mut by_partition: HashMap<u32, Vec<(usize, KafkaRecord)>> = HashMap::new();
        for (i, (key, value)) in records.into_iter().enumerate() {
            by_partition
                .entry(partition_of(&key, n))
                .or_default()
                .push((i, record(&key, value)));
        }
        let total = by_partition.values().map(Vec::len).sum();
        let produced = futures::future::try_join_all(by_partition.into_iter().map(|(p, recs)| async move {
            let (positions, recs): (Vec<usize>, Vec<KafkaRecord>) = recs.into_iter().unzip();
            let offsets = self
                .partition(p)?
                .produce(recs, Compression::NoCompression)
                .await
                .map_err(kafka_err)?;
            Ok::<_, LogError>((p, positions, offsets))
        }))
        .await?;
        let mut out = vec![
            Appended {
                partition: 0,
                offset: 0
            };
            total
        ];
        for (p, positions, offsets) in produced {
            for (i, o) in positions.into_iter().zip(offsets) {
                out[i] = Appended {
                    partition: p,
                    offset: o as u64,
                };
            }
        }
        Ok(out)
    }

    async fn read(&self, partition: u32, from: u64, max: usize) -> Result<Vec<Record>, LogError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        fetch(self.partition(partition)?, from, max).await
    }

    async fn end_offset(&self, partition: u32) -> Result<u64, LogError> {
        // The fetch's high watermark: tansu's ListOffsets(latest) has been seen to lag it.
        // The fetch's high watermark (tansu's ListOffsets(latest) lags it).
        let client = self.partition(partition)?;
        let high = match client.fetch_records(0, 1..2, FETCH_WAIT_MS).await {
            Ok((_, high)) => high,
            Err(_) => {
                // Retention removed offset 0: ask from the earliest kept.
                let earliest = client.get_offset(OffsetAt::Earliest).await.map_err(kafka_err)?;
                client
                    .fetch_records(earliest, 1..2, FETCH_WAIT_MS)
                    .await
                    .map_err(kafka_err)?
                    .1
            }
        };
        Ok(high.max(0) as u64)
    }

    async fn commit(&self, group: &str, partition: u32, at: Checkpoint) -> Result<(), LogError> {
        self.partition(partition)?;
        let key = format!("{group}/{partition}");
        self.offsets
            .produce(vec![record(&key, at.encode().into_bytes())], Compression::NoCompression)
            .await
            .map_err(kafka_err)?;
        if let Some(cache) = self.committed.lock().await.as_mut() {
            cache.insert(key, at);
        }
        Ok(())
    }

    async fn committed(&self, group: &str, partition: u32) -> Result<Option<Checkpoint>, LogError> {
        self.partition(partition)?;
        let mut cache = self.committed.lock().await;
        if cache.is_none() {
            let mut all = HashMap::new();
            let mut from = 0;
            loop {
                let records = fetch(&self.offsets, from, usize::MAX).await?;
                let Some(last) = records.last() else { break };
                from = last.offset + 1;
                for r in records {
                    if let Some(c) = Checkpoint::decode(&String::from_utf8_lossy(&r.value)) {
                        all.insert(r.key, c);
                    }
                }
            }
            *cache = Some(all);
        }
        Ok(cache
            .as_ref()
            .and_then(|c| c.get(&format!("{group}/{partition}")).copied()))
    }
}
