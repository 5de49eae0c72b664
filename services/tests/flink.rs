//! The Flink engine end to end, beside the built-in one, on the same events in a real Kafka
//! broker:
//!
//! - built-in: the stream worker aggregates the event topic into Redis A;
//! - Flink: the operator's rendered SQL runs through the job image's SQL runner
//!   (`services/flink/sql_runner.py`) in a local Flink mini-cluster (PyPI `apache-flink` on
//!   Java 17, with the Kafka SQL connector from Maven Central), writing `<topic>-aggregates`;
//!   the stream worker in its Flink mode applies that topic to Redis B.
//!
//! Then: every window the Flink job emitted equals the built-in engine's, window for window;
//! and the feature service reads the same item features (counts, CTR, hot score), the same
//! users' fast-path features and the same trending list from B as from A.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use recstack_core::stream::aggregate::Aggregate;
use recstack_core::stream::window::{Counts, ItemWindow, WindowConfig};
use recstack_operator::render::aggregation_sql;
use recstack_services::config::aggregates_topic;
use recstack_services::events::kafka::{KafkaLog, TopicSettings};
use recstack_services::events::log::EventLog;
use recstack_services::events::{Event, EventKind};
use recstack_services::features::{CachePolicy, FeatureMetrics, FeatureStore, Key, RedisL2, Snapshot, Value};
use recstack_services::stream::sink::{FeatureSink, RedisStore};
use recstack_services::stream::{Input, StreamConfig, StreamMetrics, Worker};
use tokio::sync::watch;

const MIN: i64 = 60_000;
const T0: i64 = 1_790_000_040_000 - 1_790_000_040_000 % MIN;
const TOPIC: &str = "events";
const PARTITIONS: u32 = 4;

/// 20,000 events over about 33 minutes for 300 items and 500 users, out of order by less than
/// the 5 s the watermark allows (so no event is late in either engine), skewed towards a few
/// items.
fn events() -> Vec<Event> {
    (0..20_000u64)
        .map(|i| {
            let h = recstack_core::stable_hash(&i.to_le_bytes());
            let item = (h % 1_000).pow(2) / 3_334; // 0..300, skewed
            Event {
                event_id: format!("e{i}"),
                user_id: format!("u{}", (h >> 20) % 500),
                item_id: format!("i{item}"),
                kind: EventKind::ALL[[0, 0, 0, 0, 1, 1, 2, 3][((h >> 40) % 8) as usize]],
                ts_ms: T0 + i as i64 * 100 - ((h >> 50) % 4_000) as i64,
                request_id: (i % 3 == 0).then(|| format!("r{}", i / 3)),
            }
        })
        .collect()
}

type Windows = BTreeMap<(String, i64), Counts>;

fn by_key(windows: &[ItemWindow]) -> Windows {
    let mut out = Windows::new();
    for w in windows {
        assert_eq!(w.window_end_ms - w.window_start_ms, MIN, "{w:?}");
        let previous = out.insert((w.item_id.clone(), w.window_end_ms), w.counts);
        assert!(previous.is_none(), "one window emitted twice: {w:?}");
    }
    out
}

/// Reads `log` to its end with the stream worker (`input`), into `sink`: a bounded replay.
async fn replay<S: FeatureSink>(log: KafkaLog, sink: Arc<S>, input: Input) -> Arc<StreamMetrics> {
    let metrics = Arc::new(StreamMetrics::default());
    let worker = Worker {
        log: Arc::new(log),
        sink,
        snapshot: Arc::new(Snapshot::default()),
        config: StreamConfig {
            input,
            limiter: None,
            follow_clock: false,
            ..StreamConfig::live(WindowConfig::default())
        },
        metrics: metrics.clone(),
    };
    let (_stop, stopped) = watch::channel(false);
    worker.run(stopped, true).await.unwrap();
    metrics
}

async fn feature_store(url: &str) -> FeatureStore<RedisL2> {
    let l2 = RedisL2::connect(url, Duration::from_secs(2)).await.unwrap();
    FeatureStore::new(
        l2,
        Arc::new(Snapshot::default()),
        CachePolicy::default(),
        Arc::new(FeatureMetrics::default()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flink_engine_feeds_serving_what_the_builtin_engine_does() {
    let kafka = common::Kafka::start();
    let (redis_a, redis_b) = (common::Redis::start(), common::Redis::start());
    let brokers = std::slice::from_ref(&kafka.addr);
    let settings = TopicSettings::single_broker(PARTITIONS);
    let log = KafkaLog::connect(brokers, TOPIC, &settings).await.unwrap();
    let events = events();
    for chunk in events.chunks(1_000) {
        log.append(chunk.iter().map(|e| (e.key().to_string(), e.encode())).collect())
            .await
            .unwrap();
    }

    // The built-in engine, into A.
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let record = recorded.clone();
    let a = Arc::new(common::Gated::new(
        Arc::new(RedisStore::connect(&redis_a.url, Duration::from_secs(2)).await.unwrap()),
        move |windows| {
            record.lock().unwrap().extend_from_slice(windows);
            windows.len()
        },
    ));
    let builtin = replay(log, a.clone(), Input::Events).await;
    let ours = by_key(&recorded.lock().unwrap());
    assert!(ours.len() > 3_000, "enough windows to compare: {}", ours.len());
    assert!(
        builtin.encode().contains("recstack_stream_late_total 0"),
        "no late events"
    );

    // The Flink job. Its output topic is created as the stream StatefulSet would (the job's
    // Kafka sink does not create topics).
    let output = KafkaLog::connect(brokers, &aggregates_topic(TOPIC), &settings)
        .await
        .unwrap();
    let seconds = common::flink_job(&aggregation_sql(&kafka.addr, TOPIC, "1m"), 2);
    eprintln!(
        "flink: {} events in {seconds:.1}s (mini-cluster start included)",
        events.len()
    );

    // Window for window, as the job wrote them.
    let mut theirs = Vec::new();
    let mut engagements = 0;
    for p in 0..output.partitions() {
        let end = output.end_offset(p).await.unwrap();
        let mut at = 0;
        while at < end {
            let records = output.read(p, at, 5_000).await.unwrap();
            at = records.last().map_or(end, |r| r.offset + 1);
            for r in records {
                let row = Aggregate::decode(&r.value).unwrap();
                assert_eq!(r.key, row.key(), "keyed by item");
                match row {
                    Aggregate::Window(w) => theirs.push(w),
                    Aggregate::Engagement { .. } => engagements += 1,
                }
            }
        }
    }
    let theirs = by_key(&theirs);
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "the same (item, window) pairs"
    );
    for (key, counts) in &ours {
        assert_eq!(counts, &theirs[key], "counts of {key:?}");
    }
    let total: u64 = ours.values().map(|c| c.impressions + c.engagement()).sum();
    assert_eq!(total, events.len() as u64);
    let engaged = events.iter().filter(|e| e.kind.engaged()).count();
    assert_eq!(
        engagements, engaged,
        "every engagement passed through for the fast path"
    );

    // The Flink engine's output applied by the stream worker, into B.
    let b = Arc::new(RedisStore::connect(&redis_b.url, Duration::from_secs(2)).await.unwrap());
    let applied = replay(output, b.clone(), Input::Aggregates).await;
    assert!(applied.encode().contains("recstack_stream_undecodable_total 0"));

    // What serving reads: the feature service over A and over B.
    let (fa, fb) = (feature_store(&redis_a.url).await, feature_store(&redis_b.url).await);
    let items: std::collections::BTreeSet<&String> = ours.keys().map(|(item, _)| item).collect();
    for item in items {
        let key = Key::Item(item.clone());
        let (va, vb) = (fa.get(&key).await.unwrap(), fb.get(&key).await.unwrap());
        let Value::Item(f) = &*vb else {
            panic!("{item}: an item value")
        };
        assert!(
            f.impressions + f.clicks + f.plays + f.likes > 0,
            "{item}: real-time counts"
        );
        assert_eq!(va, vb, "item features of {item}");
    }
    let users: std::collections::BTreeSet<&String> =
        events.iter().filter(|e| e.kind.engaged()).map(|e| &e.user_id).collect();
    assert!(users.len() > 400);
    for user in users {
        let key = Key::User(user.clone());
        let (va, vb) = (fa.get(&key).await.unwrap(), fb.get(&key).await.unwrap());
        let Value::User(f) = &*vb else {
            panic!("{user}: a user value")
        };
        assert!(!f.recent_items.is_empty(), "{user}: recent items from the fast path");
        assert_eq!(va, vb, "user features of {user}");
    }
    let top_a = a.trending(50).await.unwrap();
    assert_eq!(top_a.len(), 50);
    assert_eq!(top_a, b.trending(50).await.unwrap(), "the trending list");
}
