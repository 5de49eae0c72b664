//! The event path's speed: ingest → embedded log → stream job → feature store.
//!
//! 1. Throughput: concurrent posters of 100-event calls through the ingest service (validated,
//!    deduplicated, group-committed with `fdatasync`), then the stream job reading the log to
//!    its end into the in-process store and into Redis — events/s for each step; then both at
//!    once (posters and a live job), end to end.
//! 2. Event to visible: clicks posted at a steady rate while the stream job runs live; the
//!    time from the post until the user's feature value in the store lists the item (p50, p99,
//!    max; HdrHistogram).
//! 3. Write-rate smoothness: windows of 1 s with 2,000 items each, written to the store with
//!    and without the adaptive limiter; peak and mean writes per 50 ms slot.
//! 4. At cluster scale: ingest into a real Apache Kafka broker (a 4-partition topic), then the
//!    stream job reading it into a three-master Redis Cluster with one replica and with two
//!    replicas sharing the partitions (each its own worker, as two pods would run them).
//!
//! `cargo bench -p recstack-services --bench events`

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use recstack_core::stream::limiter::LimiterConfig;
use recstack_core::stream::window::WindowConfig;
use recstack_services::config::aggregates_topic;
use recstack_services::events::ingest::{Ingest, SeenLink};
use recstack_services::events::kafka::{KafkaLog, TopicSettings};
use recstack_services::events::log::{EventLog, FileLog};
use recstack_services::events::{Event, EventKind, RawEvent, Timestamp, now_ms};
use recstack_services::features::{Key, L2, Snapshot};
use recstack_services::stream::assignment::Assignment;
use recstack_services::stream::sink::{FeatureSink, MemoryStore, RedisStore};
use recstack_services::stream::{Input, StreamConfig, StreamMetrics, Worker};
use tokio::sync::watch;

#[path = "../tests/common/mod.rs"]
mod common;

const POSTERS: usize = 8;
const CALLS_PER_POSTER: usize = 100;
const PER_CALL: usize = 100;

fn raw(id: u64, user: &str, item: &str, kind: &str, ts: i64) -> RawEvent {
    RawEvent {
        event_id: format!("e{id}"),
        user_id: user.into(),
        item_id: item.into(),
        kind: kind.into(),
        ts: Some(Timestamp::Millis(ts)),
        request_id: None,
    }
}

fn worker<L: EventLog, S: FeatureSink>(log: Arc<L>, sink: Arc<S>, config: StreamConfig) -> Worker<L, S> {
    Worker {
        log,
        sink,
        snapshot: Arc::new(Snapshot::default()),
        config,
        metrics: Arc::new(StreamMetrics::default()),
    }
}

fn replay_config() -> StreamConfig {
    StreamConfig {
        limiter: None,
        follow_clock: false,
        ..StreamConfig::live(WindowConfig::default())
    }
}

struct RedisServer(Child, String);

impl RedisServer {
    fn start() -> Option<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        std::thread::sleep(Duration::from_millis(300));
        Some(RedisServer(child, format!("redis://127.0.0.1:{port}/")))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh embedded log (4 partitions) in `dir` and an ingest service over it.
fn log_and_ingest(dir: &std::path::Path, dedup: u64) -> (Arc<FileLog>, Arc<Ingest<FileLog>>) {
    let (log, _) = FileLog::open(dir, 4).unwrap();
    let log = Arc::new(log);
    let ingest = Arc::new(Ingest::new(
        log.clone(),
        SeenLink::None,
        dedup,
        Duration::from_secs(600),
    ));
    (log, ingest)
}

/// Posts `POSTERS × CALLS_PER_POSTER` calls of `PER_CALL` events concurrently through
/// `ingest` (2,000 items, 5,000 users, 3 impressions : 1 click : 1 play). Event times are
/// spread over the `spread_ms` before each call (0: every event at its call's time).
async fn post_all<L: EventLog>(ingest: &Arc<Ingest<L>>, spread_ms: i64) {
    let total = (POSTERS * CALLS_PER_POSTER * PER_CALL) as i64;
    let posters: Vec<_> = (0..POSTERS)
        .map(|p| {
            let ingest = ingest.clone();
            tokio::spawn(async move {
                for c in 0..CALLS_PER_POSTER {
                    let now = now_ms();
                    let batch: Vec<RawEvent> = (0..PER_CALL)
                        .map(|i| {
                            let n = ((p * CALLS_PER_POSTER + c) * PER_CALL + i) as u64;
                            let kind = ["impression", "impression", "impression", "click", "play"][(n % 5) as usize];
                            let ts = now - spread_ms + n as i64 * spread_ms / total;
                            raw(n, &format!("u{}", n % 5_000), &format!("i{}", n % 2_000), kind, ts)
                        })
                        .collect();
                    ingest.post(&batch).await.unwrap();
                }
            })
        })
        .collect();
    for p in posters {
        p.await.unwrap();
    }
}

async fn throughput() {
    let dir = tempfile::tempdir().unwrap();
    let (log, ingest) = log_and_ingest(dir.path(), 2_000_000);
    let start = Instant::now();
    // Event times spread over the last four minutes: the replays below close windows.
    post_all(&ingest, 240_000).await;
    let total = (POSTERS * CALLS_PER_POSTER * PER_CALL) as f64;
    let ingest_rate = total / start.elapsed().as_secs_f64();

    let mut rows = vec![("ingest (validate, dedup, append + fdatasync)".to_string(), ingest_rate)];
    let memory = Arc::new(MemoryStore::default());
    let w = worker(log.clone(), memory, replay_config());
    let start = Instant::now();
    w.run(watch::channel(false).1, true).await.unwrap();
    assert_eq!(w.metrics.events.get() as f64, total);
    rows.push((
        "stream job: log → windows + fast path → in-process store".into(),
        total / start.elapsed().as_secs_f64(),
    ));
    if let Some(redis) = RedisServer::start() {
        let sink = Arc::new(RedisStore::connect(&redis.1, Duration::from_secs(2)).await.unwrap());
        let config = StreamConfig {
            group: "bench-redis".into(),
            ..replay_config()
        };
        let w = worker(log.clone(), sink, config);
        let start = Instant::now();
        w.run(watch::channel(false).1, true).await.unwrap();
        rows.push((
            "stream job: log → windows + fast path → Redis".into(),
            total / start.elapsed().as_secs_f64(),
        ));
    } else {
        eprintln!("redis-server not found: the Redis row is left out");
    }
    rows.push((
        "end to end, live: post → log → stream job → in-process store".into(),
        end_to_end(Arc::new(MemoryStore::default())).await,
    ));
    if let Some(redis) = RedisServer::start() {
        let sink = Arc::new(RedisStore::connect(&redis.1, Duration::from_secs(2)).await.unwrap());
        rows.push((
            "end to end, live: post → log → stream job → Redis".into(),
            end_to_end(sink).await,
        ));
    }
    println!("\n### Throughput ({total} events: 8 posters × 100 calls × 100 events, 2,000 items, 5,000 users)\n");
    println!("| step | events/s |\n|---|---:|");
    for (step, rate) in rows {
        println!("| {step} | {rate:.0} |");
    }
}

/// Posters and a live stream job at once: events/s from the first post until the job has
/// read the last event (and written its fast path).
async fn end_to_end<S: FeatureSink>(sink: Arc<S>) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let (log, ingest) = log_and_ingest(dir.path(), 2_000_000);
    let w = worker(log.clone(), sink, StreamConfig::live(WindowConfig::default()));
    let metrics = w.metrics.clone();
    let (stop_tx, stop) = watch::channel(false);
    let job = tokio::spawn(async move { w.run(stop, false).await });
    let total = (POSTERS * CALLS_PER_POSTER * PER_CALL) as u64;
    let start = Instant::now();
    post_all(&ingest, 0).await;
    while metrics.events.get() < total {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let _ = job.await;
    rate
}

async fn event_to_visible() {
    let dir = tempfile::tempdir().unwrap();
    let (log, ingest) = log_and_ingest(dir.path(), 100_000);
    let store = Arc::new(MemoryStore::default());
    let w = worker(log.clone(), store.clone(), StreamConfig::live(WindowConfig::default()));
    let (stop_tx, stop) = watch::channel(false);
    let job = tokio::spawn(async move { w.run(stop, false).await });
    let rate = 200.0;
    let n = 2_000u64;
    let mut hist = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    let pending: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen = Arc::new(AtomicU64::new(0));
    let checker = {
        let (pending, store, seen) = (pending.clone(), store.clone(), seen.clone());
        tokio::spawn(async move {
            let mut lat = Vec::new();
            while seen.load(Ordering::SeqCst) < n {
                let users: Vec<(String, Instant)> =
                    pending.lock().unwrap().iter().map(|(u, t)| (u.clone(), *t)).collect();
                for (user, posted) in users {
                    if store.get(&Key::User(user.clone()).redis_key()).await.unwrap().is_some() {
                        lat.push(posted.elapsed());
                        pending.lock().unwrap().remove(&user);
                        seen.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            lat
        })
    };
    let start = Instant::now();
    for i in 0..n {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let user = format!("visible-{i}");
        pending.lock().unwrap().insert(user.clone(), Instant::now());
        ingest
            .post(&[raw(i, &user, &format!("i{}", i % 100), "click", now_ms())])
            .await
            .unwrap();
    }
    let lat = tokio::time::timeout(Duration::from_secs(30), checker)
        .await
        .unwrap()
        .unwrap();
    let _ = stop_tx.send(true);
    let _ = job.await;
    for d in &lat {
        hist.record(d.as_micros() as u64).unwrap();
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1_000.0;
    println!(
        "\n### Event to visible ({n} clicks at {rate:.0}/s through ingest; until the user's feature value lists the item)\n"
    );
    println!("| p50 | p99 | max |\n|---:|---:|---:|");
    println!(
        "| {:.1} ms | {:.1} ms | {:.1} ms |",
        ms(0.5),
        ms(0.99),
        hist.max() as f64 / 1_000.0
    );
    println!(
        "\nThe feature service adds up to its L1 TTL (1 s) on the read side: the 2 s target is \
         this plus that."
    );
}

/// Counts window writes per 50 ms slot into `slots`.
fn counting(slots: Arc<Mutex<Vec<u64>>>) -> common::Gated<MemoryStore> {
    let start = Instant::now();
    common::Gated::new(Arc::new(MemoryStore::default()), move |windows| {
        let slot = (start.elapsed().as_millis() / 50) as usize;
        let mut s = slots.lock().unwrap();
        if s.len() <= slot {
            s.resize(slot + 1, 0);
        }
        s[slot] += windows.len() as u64;
        windows.len()
    })
}

/// Peak and mean writes per 50 ms slot, over the slots from the first write to the last.
async fn smoothness(limited: bool) -> (u64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = FileLog::open(dir.path(), 2).unwrap();
    let log = Arc::new(log);
    let window = WindowConfig {
        size_ms: 1_000,
        delay_ms: 100,
    };
    let slots = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::new(counting(slots.clone()));
    let config = StreamConfig {
        limiter: limited.then(|| LimiterConfig {
            min_rate: 50.0,
            max_rate: 1_000_000.0,
            ..LimiterConfig::for_window(window.size_ms)
        }),
        ..StreamConfig::live(window)
    };
    let w = worker(log.clone(), sink.clone(), config);
    let (stop_tx, stop) = watch::channel(false);
    let job = tokio::spawn(async move { w.run(stop, false).await });
    // Six seconds of impressions: 2,000 items touched in every 1 s window.
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(6) {
        let ts = now_ms();
        let records = (0..400)
            .map(|i| {
                n += 1;
                let e = raw(n, "u", &format!("i{}", (n + i) % 2_000), "impression", ts)
                    .validate("e", ts)
                    .unwrap();
                (e.key().to_string(), e.encode())
            })
            .collect();
        log.append(records).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let _ = stop_tx.send(true);
    let _ = job.await;
    let slots = slots.lock().unwrap().clone();
    let first = slots.iter().position(|&s| s > 0).unwrap_or(0);
    let last = slots.iter().rposition(|&s| s > 0).unwrap_or(0);
    let busy = &slots[first..=last];
    let total: u64 = busy.iter().sum();
    let peak = busy.iter().copied().max().unwrap_or(0);
    let mean = total as f64 / busy.len() as f64;
    (total, peak as f64, mean)
}

async fn flush_all(cluster: &common::RedisCluster) {
    for port in &cluster.ports {
        let mut node = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: () = redis::cmd("FLUSHALL").query_async(&mut node).await.unwrap();
    }
}

/// Ingest → Kafka, then Kafka → stream job → Redis Cluster with 1 and 2 replicas.
async fn at_cluster_scale() {
    let kafka = common::Kafka::start();
    let cluster = common::RedisCluster::start();
    let log = Arc::new(
        KafkaLog::connect(
            std::slice::from_ref(&kafka.addr),
            "bench-events",
            &TopicSettings::single_broker(4),
        )
        .await
        .unwrap(),
    );
    let ingest = Arc::new(Ingest::new(
        log.clone(),
        SeenLink::None,
        2_000_000,
        Duration::from_secs(600),
    ));
    let total = (POSTERS * CALLS_PER_POSTER * PER_CALL) as f64;
    let start = Instant::now();
    post_all(&ingest, 240_000).await;
    let ingest_rate = total / start.elapsed().as_secs_f64();
    let mut rows = vec![(
        "ingest → Kafka (acks=all, idempotent producer)".to_string(),
        ingest_rate,
    )];
    // A first round warms the broker's JVM and caches (not reported); then the two settings
    // alternate, twice each.
    for (round, replicas) in [1u32, 1, 2, 1, 2].into_iter().enumerate() {
        // A fresh store and consumer group each round: every round does the same work.
        flush_all(&cluster).await;
        let sink = Arc::new(RedisStore::connect(&cluster.url, Duration::from_secs(2)).await.unwrap());
        let group = format!("bench-cluster-{round}");
        let workers: Vec<_> = (0..replicas)
            .map(|r| {
                let config = StreamConfig {
                    group: group.clone(),
                    assignment: Assignment::new(r, replicas).unwrap(),
                    ..replay_config()
                };
                worker(log.clone(), sink.clone(), config)
            })
            .collect();
        let start = Instant::now();
        let runs: Vec<_> = workers
            .into_iter()
            .map(|w| {
                tokio::spawn(async move {
                    w.run(watch::channel(false).1, true)
                        .await
                        .map(|()| w.metrics.events.get())
                })
            })
            .collect();
        let mut read = 0;
        for r in runs {
            read += r.await.unwrap().unwrap();
        }
        assert_eq!(read as f64, total, "every event read once over the replicas");
        if round == 0 {
            continue;
        }
        rows.push((
            format!(
                "Kafka → stream job ({replicas} replica{}) → Redis Cluster (3 masters)",
                if replicas == 1 { "" } else { "s" }
            ),
            total / start.elapsed().as_secs_f64(),
        ));
    }
    println!(
        "\n### At cluster scale ({total} events; Apache Kafka 4.4, one broker, 4 partitions; Redis Cluster, 3 masters; all on this machine)\n"
    );
    println!("| step | events/s |\n|---|---:|");
    for (step, rate) in &rows {
        println!("| {step} | {rate:.0} |");
    }
    let best = |n: &str| {
        rows.iter()
            .filter(|(s, _)| s.contains(n))
            .map(|(_, r)| *r)
            .fold(0.0, f64::max)
    };
    println!(
        "\nscaling, best of each: 2 replicas / 1 replica = {:.2}×",
        best("(2 replicas)") / best("(1 replica)")
    );
}

/// Events of the Flink-beside-built-in comparison (written straight to the topic).
const FLINK_EVENTS: u64 = 400_000;

/// The two engines on the same topic, each to Redis Cluster: the built-in stream job (one
/// replica), and the Flink engine — its job in a local mini-cluster (the operator's SQL through
/// the job image's SQL runner, parallelism 2), then one stream replica applying the job's
/// output. The job's fixed start-up (JVM, mini-cluster, planning) is measured on an empty topic
/// and shown apart.
async fn flink_beside_builtin() {
    let kafka = common::Kafka::start();
    let cluster = common::RedisCluster::start();
    let brokers = std::slice::from_ref(&kafka.addr);
    let settings = TopicSettings::single_broker(4);
    let log = Arc::new(KafkaLog::connect(brokers, "flink-bench", &settings).await.unwrap());
    for topic in ["flink-bench-aggregates", "flink-empty", "flink-empty-aggregates"] {
        KafkaLog::connect(brokers, topic, &settings).await.unwrap();
    }
    // 400,000 events over 20 minutes of event time, in order: 2,000 items, 5,000 users,
    // 3 impressions : 1 click : 1 play.
    let t0 = now_ms() - 20 * 60_000;
    let mut batch = Vec::with_capacity(10_000);
    for n in 0..FLINK_EVENTS {
        let kind = [
            EventKind::Impression,
            EventKind::Impression,
            EventKind::Impression,
            EventKind::Click,
            EventKind::Play,
        ][(n % 5) as usize];
        let e = Event {
            event_id: format!("e{n}"),
            user_id: format!("u{}", n % 5_000),
            item_id: format!("i{}", n % 2_000),
            kind,
            ts_ms: t0 + (n * 1_200_000 / FLINK_EVENTS) as i64,
            request_id: None,
        };
        batch.push((e.key().to_string(), e.encode()));
        if batch.len() == 10_000 {
            log.append(std::mem::take(&mut batch)).await.unwrap();
        }
    }
    let total = FLINK_EVENTS as f64;
    // One round: a second run of the job would read the topic again (the job commits its
    // offsets only on checkpoints) and append its windows a second time.
    let mut rows = Vec::new();
    for round in 0..1 {
        flush_all(&cluster).await;
        let sink = Arc::new(RedisStore::connect(&cluster.url, Duration::from_secs(2)).await.unwrap());
        let builtin = worker(
            log.clone(),
            sink,
            StreamConfig {
                group: format!("flink-bench-builtin-{round}"),
                ..replay_config()
            },
        );
        let start = Instant::now();
        builtin.run(watch::channel(false).1, true).await.unwrap();
        let builtin_s = start.elapsed().as_secs_f64();

        let sql = |topic: &str| recstack_operator::render::aggregation_sql(&kafka.addr, topic, "1m");
        let startup = common::flink_job(&sql("flink-empty"), 2);
        let job = common::flink_job(&sql("flink-bench"), 2);
        let output = Arc::new(
            KafkaLog::connect(brokers, &aggregates_topic("flink-bench"), &settings)
                .await
                .unwrap(),
        );
        // From an empty store: the built-in engine's windows would refuse the job's as stale.
        flush_all(&cluster).await;
        let sink = Arc::new(RedisStore::connect(&cluster.url, Duration::from_secs(2)).await.unwrap());
        let apply = worker(
            output,
            sink,
            StreamConfig {
                input: Input::Aggregates,
                group: format!("flink-bench-apply-{round}"),
                ..replay_config()
            },
        );
        let start = Instant::now();
        apply.run(watch::channel(false).1, true).await.unwrap();
        let apply_s = start.elapsed().as_secs_f64();
        let net = (job - startup).max(1e-3);
        rows.push((
            builtin_s,
            startup,
            job,
            apply_s,
            total / builtin_s,
            total / (net + apply_s),
        ));
    }
    println!(
        "\n### The Flink engine beside the built-in one ({total} events on one topic, 4 partitions; to Redis Cluster, 3 masters)\n"
    );
    println!(
        "| round | built-in: stream job | Flink job start-up (empty topic) | Flink job | apply its output | built-in events/s | Flink engine events/s (no start-up) | Flink / built-in |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (n, (b, startup, job, apply, builtin_rate, flink_rate)) in rows.iter().enumerate() {
        println!(
            "| {} | {b:.1} s | {startup:.1} s | {job:.1} s | {apply:.1} s | {builtin_rate:.0} | {flink_rate:.0} | {:.2}× |",
            n + 1,
            flink_rate / builtin_rate
        );
    }
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo bench --bench events -- flink`: the engines side by side only.
    if std::env::args().any(|a| a == "flink") {
        flink_beside_builtin().await;
        return;
    }
    at_cluster_scale().await;
    flink_beside_builtin().await;
    throughput().await;
    event_to_visible().await;
    println!("\n### Window writes per 50 ms slot (1 s windows, 2,000 items each, 6 s of events)\n");
    println!("| | windows written | peak per slot | mean per slot | peak / mean |\n|---|---:|---:|---:|---:|");
    for limited in [false, true] {
        let (total, peak, mean) = smoothness(limited).await;
        println!(
            "| {} | {total} | {peak:.0} | {mean:.1} | {:.1}× |",
            if limited { "adaptive limiter" } else { "no limiter" },
            peak / mean
        );
    }
}
