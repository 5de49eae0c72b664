//! The event log on a Kafka topic, through `rdkafka` (librdkafka).
//!
//! Records are keyed by item and go to `partition_of(key)`, the same partitioning as the
//! embedded log, so one item's events stay in one partition. The producer is idempotent and
//! waits for all in-sync replicas (`acks=all`): an acknowledged event is durable in the
//! cluster, on at least the topic's `min.insync.replicas` brokers.
//!
//! The topic is created, when missing, with the settings a cluster needs ([`TopicSettings`]:
//! partitions, replication factor, `min.insync.replicas`, retention); an existing topic keeps
//! its own, and a difference is logged.
//!
//! Reads are by offset: each partition read gets its own assigned (not subscribed) consumer,
//! repositioned only when the caller asks for an offset other than the next. Checkpoints are
//! Kafka's group offsets (`__consumer_offsets`, compacted by Kafka): the offset itself, with
//! the whole checkpoint (offset and watermark) in the commit's metadata. Which stream replica
//! reads which partition is decided by the caller (the stream job's assignment), so the
//! group's offsets are committed without group membership.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::log::{Appended, Checkpoint, EventLog, LogError, Record, partition_of};

fn kafka_err(e: impl std::fmt::Display) -> LogError {
    LogError::Kafka(e.to_string())
}

/// How long a read at the end of a partition waits for a record (also the stream worker's
/// idle pace on Kafka).
const FETCH_WAIT: Duration = Duration::from_millis(10);

/// Metadata, watermark, commit and admin calls.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How a new topic is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSettings {
    pub partitions: u32,
    pub replication_factor: u32,
    /// Brokers that must hold an event before it is acknowledged.
    pub min_insync_replicas: u32,
    /// How long events are kept (`retention.ms`).
    pub retention_ms: i64,
}

impl TopicSettings {
    /// One broker (tests and single-node setups): no replication.
    pub fn single_broker(partitions: u32) -> Self {
        Self {
            partitions,
            replication_factor: 1,
            min_insync_replicas: 1,
            retention_ms: 7 * 24 * 3_600_000,
        }
    }

    /// The topic configs these settings set.
    pub fn configs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("min.insync.replicas", self.min_insync_replicas.to_string()),
            ("retention.ms", self.retention_ms.to_string()),
            ("cleanup.policy", "delete".into()),
        ]
    }
}

fn client_config(brokers: &[String]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers.join(","))
        .set("client.id", "recstack")
        .set("log_level", "4");
    c
}

/// The longest a read waits for records it knows exist (the consumer is still fetching them)
/// before it returns what it has.
const FETCH_CAP: Duration = Duration::from_secs(5);

/// A consumer's settings under `group`, committing only when told to.
fn consumer_config(brokers: &[String], group: &str) -> ClientConfig {
    let mut c = client_config(brokers);
    c.set("group.id", group).set("enable.auto.commit", "false");
    c
}

/// One partition's reader: a consumer assigned that partition alone, the offset its next
/// record has, and whether it has read to the partition's end (no record since).
struct PartitionReader {
    consumer: BaseConsumer,
    next: Option<u64>,
    at_end: bool,
}

/// The event log on a Kafka topic.
#[derive(Clone)]
pub struct KafkaLog {
    topic: String,
    partitions: u32,
    brokers: Arc<Vec<String>>,
    producer: FutureProducer,
    readers: Arc<Vec<Mutex<Option<PartitionReader>>>>,
    /// One consumer per group that commits or reads offsets.
    groups: Arc<Mutex<HashMap<String, Arc<BaseConsumer>>>>,
}

impl KafkaLog {
    /// Connects to `brokers`, creating `topic` with `settings` when it does not exist; an
    /// existing topic keeps its partitions and configs (a difference is logged).
    pub async fn connect(brokers: &[String], topic: &str, settings: &TopicSettings) -> Result<Self, LogError> {
        let producer: FutureProducer = client_config(brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "1")
            .set("message.timeout.ms", "30000")
            .create()
            .map_err(kafka_err)?;
        let partitions = match topic_partitions(&producer, topic).await? {
            Some(n) => {
                check_configs(brokers, topic, settings).await;
                n
            }
            None => {
                create_topic(brokers, topic, settings).await?;
                settings.partitions.max(1)
            }
        };
        Ok(Self {
            topic: topic.to_string(),
            partitions,
            brokers: Arc::new(brokers.to_vec()),
            producer,
            readers: Arc::new((0..partitions).map(|_| Mutex::new(None)).collect()),
            groups: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn check(&self, partition: u32) -> Result<(), LogError> {
        if partition < self.partitions {
            Ok(())
        } else {
            Err(LogError::NoPartition {
                partition,
                partitions: self.partitions,
            })
        }
    }

    /// A one-entry partition list: this topic's `partition` at `offset`, with `metadata`.
    fn tpl(&self, partition: u32, offset: Offset, metadata: Option<String>) -> Result<TopicPartitionList, LogError> {
        let mut tpl = TopicPartitionList::new();
        {
            let mut e = tpl.add_partition(&self.topic, partition as i32);
            e.set_offset(offset).map_err(kafka_err)?;
            if let Some(m) = metadata {
                e.set_metadata(m);
            }
        }
        Ok(tpl)
    }

    /// The consumer that commits and reads `group`'s offsets.
    fn group(&self, group: &str) -> Result<Arc<BaseConsumer>, LogError> {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = groups.get(group) {
            return Ok(c.clone());
        }
        let consumer: BaseConsumer = consumer_config(&self.brokers, group).create().map_err(kafka_err)?;
        let consumer = Arc::new(consumer);
        groups.insert(group.to_string(), consumer.clone());
        Ok(consumer)
    }
}

/// Whether a group-offset call failed only because the group's coordinator is moving or
/// loading (a new `__consumer_offsets` partition, a broker restart): worth retrying.
fn coordinator_busy(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorLoadInProgress
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::RequestTimedOut
        )
    )
}

/// Runs a group-offset call, retrying while the coordinator is busy (up to CALL_TIMEOUT).
fn with_coordinator<T>(mut call: impl FnMut() -> Result<T, KafkaError>) -> Result<T, LogError> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match call() {
            Err(e) if coordinator_busy(&e) && started.elapsed() < CALL_TIMEOUT => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other.map_err(kafka_err),
        }
    }
}

/// Runs a blocking librdkafka call off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, LogError> + Send + 'static) -> Result<T, LogError> {
    tokio::task::spawn_blocking(f).await.map_err(kafka_err)?
}

/// The partitions of `topic`, or `None` when it does not exist.
async fn topic_partitions(producer: &FutureProducer, topic: &str) -> Result<Option<u32>, LogError> {
    let producer = producer.clone();
    let topic = topic.to_string();
    blocking(move || {
        let md = producer
            .client()
            .fetch_metadata(Some(&topic), CALL_TIMEOUT)
            .map_err(kafka_err)?;
        Ok(md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len() as u32))
    })
    .await
}

fn admin(brokers: &[String]) -> Result<AdminClient<DefaultClientContext>, LogError> {
    client_config(brokers).create().map_err(kafka_err)
}

async fn create_topic(brokers: &[String], topic: &str, settings: &TopicSettings) -> Result<(), LogError> {
    let admin = admin(brokers)?;
    let configs = settings.configs();
    let mut new = NewTopic::new(
        topic,
        settings.partitions.max(1) as i32,
        TopicReplication::Fixed(settings.replication_factor.max(1) as i32),
    );
    for (k, v) in &configs {
        new = new.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(CALL_TIMEOUT));
    let results = admin.create_topics([&new], &opts).await.map_err(kafka_err)?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(LogError::Kafka(format!(
                    "creating topic {name} ({} partitions, replication factor {}, min.insync.replicas {}): {code}",
                    settings.partitions, settings.replication_factor, settings.min_insync_replicas
                )));
            }
        }
    }
    tracing::info!(
        topic,
        partitions = settings.partitions,
        replication_factor = settings.replication_factor,
        min_insync_replicas = settings.min_insync_replicas,
        retention_ms = settings.retention_ms,
        "created the event topic"
    );
    Ok(())
}

/// Logs where an existing topic's configs differ from the stack's (the topic is not changed:
/// its owners may have tuned it).
async fn check_configs(brokers: &[String], topic: &str, settings: &TopicSettings) {
    let Ok(admin) = admin(brokers) else { return };
    let opts = AdminOptions::new().request_timeout(Some(CALL_TIMEOUT));
    let Ok(results) = admin.describe_configs([&ResourceSpecifier::Topic(topic)], &opts).await else {
        return;
    };
    for resource in results.into_iter().flatten() {
        for (key, want) in settings.configs() {
            let have = resource.get(key).and_then(|e| e.value.clone());
            if have.as_deref() != Some(want.as_str()) {
                tracing::warn!(topic, key, have = ?have, want, "the existing event topic's config differs from the stack's; left as it is");
            }
        }
    }
}

/// Reads up to `max` records of one partition from `from`.
fn read_partition(
    reader: &mut Option<PartitionReader>,
    log: &KafkaLog,
    partition: u32,
    from: u64,
    max: usize,
) -> Result<Vec<Record>, LogError> {
    if reader.as_ref().and_then(|r| r.next) != Some(from) {
        let consumer = match reader.take() {
            Some(r) => r.consumer,
            None => consumer_config(&log.brokers, "recstack-reader")
                .set("enable.auto.offset.store", "false")
                .set("enable.partition.eof", "true")
                .set("auto.offset.reset", "earliest")
                .set("fetch.wait.max.ms", "10")
                .set("queued.max.messages.kbytes", "16384")
                .create()
                .map_err(kafka_err)?,
        };
        consumer
            .assign(&log.tpl(partition, Offset::Offset(from as i64), None)?)
            .map_err(kafka_err)?;
        *reader = Some(PartitionReader {
            consumer,
            next: Some(from),
            at_end: false,
        });
    }
    let r = reader.as_mut().expect("assigned above");
    // A short read must mean the end of the partition (the stream job takes it as caught up
    // and lets its watermark follow the clock): read until `max` records or the end-of-
    // partition event, waiting FETCH_WAIT only when already at the end.
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    while out.len() < max {
        let wait = if r.at_end {
            FETCH_WAIT
        } else {
            FETCH_CAP.saturating_sub(started.elapsed())
        };
        match r.consumer.poll(wait) {
            None => {
                if !r.at_end {
                    tracing::warn!(partition, "no record nor end of partition from Kafka in {FETCH_CAP:?}");
                }
                break;
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {
                r.at_end = true;
                break;
            }
            Some(Err(e)) => {
                // The reader's position is unknown after an error: reposition next time.
                r.next = None;
                return Err(kafka_err(e));
            }
            Some(Ok(m)) => {
                let offset = m.offset() as u64;
                r.next = Some(offset + 1);
                r.at_end = false;
                if offset >= from {
                    out.push(Record {
                        offset,
                        key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                        value: m.payload().unwrap_or_default().to_vec(),
                    });
                }
            }
        }
    }
    Ok(out)
}

impl EventLog for KafkaLog {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    async fn append(&self, records: Vec<(String, Vec<u8>)>) -> Result<Vec<Appended>, LogError> {
        let n = self.partitions;
        let sends = records.iter().map(|(key, value)| {
            let partition = partition_of(key, n);
            let record = FutureRecord::to(&self.topic)
                .key(key.as_bytes())
                .payload(value.as_slice())
                .partition(partition as i32);
            async move {
                let delivery = self
                    .producer
                    .send(record, CALL_TIMEOUT)
                    .await
                    .map_err(|(e, _)| kafka_err(e))?;
                Ok::<_, LogError>(Appended {
                    partition: delivery.partition as u32,
                    offset: delivery.offset as u64,
                })
            }
        });
        futures::future::try_join_all(sends).await
    }

    async fn read(&self, partition: u32, from: u64, max: usize) -> Result<Vec<Record>, LogError> {
        self.check(partition)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let log = self.clone();
        blocking(move || {
            let mut reader = log.readers[partition as usize]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            read_partition(&mut reader, &log, partition, from, max)
        })
        .await
    }

    async fn end_offset(&self, partition: u32) -> Result<u64, LogError> {
        self.check(partition)?;
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        blocking(move || {
            let (_, high) = producer
                .client()
                .fetch_watermarks(&topic, partition as i32, CALL_TIMEOUT)
                .map_err(kafka_err)?;
            Ok(high.max(0) as u64)
        })
        .await
    }

    async fn commit(&self, group: &str, partition: u32, at: Checkpoint) -> Result<(), LogError> {
        self.check(partition)?;
        let consumer = self.group(group)?;
        let tpl = self.tpl(partition, Offset::Offset(at.offset as i64), Some(at.encode()))?;
        blocking(move || with_coordinator(|| consumer.commit(&tpl, CommitMode::Sync))).await
    }

    async fn committed(&self, group: &str, partition: u32) -> Result<Option<Checkpoint>, LogError> {
        self.check(partition)?;
        let consumer = self.group(group)?;
        let tpl = self.tpl(partition, Offset::Invalid, None)?;
        let topic = self.topic.clone();
        blocking(move || {
            let got = with_coordinator(|| consumer.committed_offsets(tpl.clone(), CALL_TIMEOUT))?;
            let Some(e) = got.find_partition(&topic, partition as i32) else {
                return Ok(None);
            };
            Ok(match e.offset() {
                Offset::Offset(o) => Some(Checkpoint::decode(e.metadata()).unwrap_or(Checkpoint::at(o as u64))),
                _ => None,
            })
        })
        .await
    }
}
