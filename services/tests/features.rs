//! The feature service against a real Redis (Debian `redis-server`, started here on a free
//! loopback port), including Redis dying mid-test.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Redis;
use recstack_services::features::proto::features_client::FeaturesClient;
use recstack_services::features::proto::features_server::FeaturesServer;
use recstack_services::features::proto::{GetItemsRequest, GetUserRequest};
use recstack_services::features::{
    CachePolicy, FeatureMetrics, FeatureService, FeatureStore, ItemFeatures, Key, NoL2, RedisL2, Snapshot,
    UserFeatures, Value, realtime_part,
};

fn user(id: &str, ratings: u32) -> UserFeatures {
    UserFeatures {
        user_id: id.into(),
        ratings,
        mean_rating: 7.5,
        ..Default::default()
    }
}

fn item(id: &str, ratings: u32) -> ItemFeatures {
    ItemFeatures {
        item_id: id.into(),
        ratings,
        genres: vec!["Drama".into()],
        ..Default::default()
    }
}

fn snapshot() -> Arc<Snapshot> {
    Arc::new(Snapshot::from_parts(
        vec![user("u1", 5), user("u2", 6)],
        vec![item("i1", 10), item("i2", 20)],
    ))
}

async fn store(redis: &Redis, policy: CachePolicy) -> FeatureStore<RedisL2> {
    let l2 = RedisL2::connect(&redis.url, Duration::from_millis(200)).await.unwrap();
    FeatureStore::new(l2, snapshot(), policy, Arc::new(FeatureMetrics::default()))
}

fn ratings(v: Option<Arc<Value>>) -> Option<u32> {
    match v.as_deref() {
        Some(Value::User(u)) => Some(u.ratings),
        Some(Value::Item(i)) => Some(i.ratings),
        None => None,
    }
}

fn metric(store: &FeatureStore<impl recstack_services::features::L2>, line: &str) -> u64 {
    let text = store.metrics.encode();
    text.lines()
        .find_map(|l| l.strip_prefix(line).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0)
}

#[tokio::test]
async fn redis_overrides_the_snapshot_and_l1_caches_it() {
    let redis = Redis::start();
    redis.set(&Key::User("u1".into()), &Value::User(user("u1", 99)));
    let s = store(&redis, CachePolicy::default()).await;
    assert_eq!(
        ratings(s.get(&Key::User("u1".into())).await),
        Some(99),
        "Redis holds the real-time value"
    );
    assert_eq!(ratings(s.get(&Key::User("u1".into())).await), Some(99));
    assert_eq!(
        metric(&s, "recstack_features_l2_reads_total"),
        1,
        "the second read is an L1 hit"
    );
    assert_eq!(metric(&s, "recstack_features_served_total{source=\"l1\"}"), 1);
    // Not in Redis: the snapshot answers; nowhere: None.
    assert_eq!(ratings(s.get(&Key::User("u2".into())).await), Some(6));
    assert_eq!(ratings(s.get(&Key::Item("i2".into())).await), Some(20));
    assert_eq!(s.get(&Key::Item("nope".into())).await, None);
}

/// A batch read answers what a read per key would, in order — Redis, snapshot, nothing — and
/// reads Redis only for keys not fresh in L1: a second batch is all L1 hits, and a value
/// written to Redis is seen once its L1 entry goes stale.
#[tokio::test]
async fn a_batch_read_answers_as_reads_per_key_and_asks_redis_only_for_misses() {
    let redis = Redis::start();
    redis.set(&Key::Item("i1".into()), &Value::Item(item("i1", 77)));
    let policy = CachePolicy {
        ttl: Duration::from_millis(300),
        ..CachePolicy::default()
    };
    let s = store(&redis, policy).await;
    let keys = [
        Key::Item("i1".into()),
        Key::Item("nope".into()),
        Key::Item("i2".into()),
        Key::User("u2".into()),
        Key::Item("i1".into()),
    ];
    let read = |v: Vec<Option<Arc<Value>>>| v.into_iter().map(ratings).collect::<Vec<_>>();
    assert_eq!(
        read(s.get_many(&keys).await),
        [Some(77), None, Some(20), Some(6), Some(77)]
    );
    let l2_reads = metric(&s, "recstack_features_l2_reads_total");
    assert!(
        (4..=5).contains(&l2_reads),
        "one per distinct key (the repeat may share): {l2_reads}"
    );
    // Warm: nothing more from Redis, every key an L1 hit (the unknown one caches its absence).
    let l1 = || metric(&s, "recstack_features_served_total{source=\"l1\"}");
    let l1_before = l1();
    assert_eq!(
        read(s.get_many(&keys).await),
        [Some(77), None, Some(20), Some(6), Some(77)]
    );
    assert_eq!(metric(&s, "recstack_features_l2_reads_total"), l2_reads);
    assert_eq!(l1() - l1_before, 5);
    // Redis changes; once the L1 entries are stale the batch reads them again.
    redis.set(&Key::Item("i2".into()), &Value::Item(item("i2", 21)));
    tokio::time::sleep(Duration::from_millis(350)).await;
    let fresh = read(s.get_many(&keys).await);
    let one_by_one: Vec<Option<u32>> = {
        let mut v = Vec::new();
        for k in &keys {
            v.push(ratings(s.get(k).await));
        }
        v
    };
    assert_eq!(fresh, [Some(77), None, Some(21), Some(6), Some(77)]);
    assert_eq!(fresh, one_by_one);
}

#[tokio::test]
async fn a_burst_on_a_cold_key_reads_redis_once() {
    let redis = Redis::start();
    redis.set(&Key::Item("i1".into()), &Value::Item(item("i1", 77)));
    let s = Arc::new(store(&redis, CachePolicy::default()).await);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { ratings(s.get(&Key::Item("i1".into())).await) })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Some(77));
    }
    assert_eq!(metric(&s, "recstack_features_l2_reads_total"), 1, "single flight");
}

#[tokio::test]
async fn redis_stopped_mid_test_serves_stale_values_without_errors() {
    let mut redis = Redis::start();
    redis.set(&Key::User("u1".into()), &Value::User(user("u1", 99)));
    let policy = CachePolicy {
        ttl: Duration::from_millis(50),
        stale_extension: Duration::from_secs(5),
        max_entries: 1000,
    };
    let s = store(&redis, policy).await;
    assert_eq!(ratings(s.get(&Key::User("u1".into())).await), Some(99));

    redis.stop();
    tokio::time::sleep(Duration::from_millis(100)).await; // the entry is stale now
    let started = std::time::Instant::now();
    assert_eq!(
        ratings(s.get(&Key::User("u1".into())).await),
        Some(99),
        "the stale value, not the snapshot's 5"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a dead Redis costs at most its timeout"
    );
    assert!(metric(&s, "recstack_features_l2_errors_total") >= 1);
    assert_eq!(metric(&s, "recstack_features_served_total{source=\"stale\"}"), 1);
    // The stale value was extended: served from L1 without another Redis attempt.
    let errors = metric(&s, "recstack_features_l2_errors_total");
    assert_eq!(ratings(s.get(&Key::User("u1".into())).await), Some(99));
    assert_eq!(metric(&s, "recstack_features_l2_errors_total"), errors);
    // Never cached and Redis down: the snapshot answers.
    assert_eq!(ratings(s.get(&Key::User("u2".into())).await), Some(6));
    assert_eq!(ratings(s.get(&Key::Item("i1".into())).await), Some(10));
}

#[tokio::test]
async fn warm_restart_from_a_dump() {
    let redis = Redis::start();
    redis.set(&Key::User("u1".into()), &Value::User(user("u1", 99)));
    let s = store(&redis, CachePolicy::default()).await;
    s.get(&Key::User("u1".into())).await;
    s.get(&Key::Item("i2".into())).await;
    let path = std::env::temp_dir().join(format!("recstack-l1-{}.dump", std::process::id()));
    assert_eq!(s.dump(&path).await.unwrap(), 2);

    // A restarted service with no Redis and an empty snapshot still knows both.
    let restarted = FeatureStore::new(
        NoL2,
        Arc::new(Snapshot::default()),
        CachePolicy::default(),
        Arc::new(FeatureMetrics::default()),
    );
    assert_eq!(restarted.warm(&path).await.unwrap(), 2);
    assert_eq!(ratings(restarted.get(&Key::User("u1".into())).await), Some(99));
    assert_eq!(ratings(restarted.get(&Key::Item("i2".into())).await), Some(20));
    assert_eq!(metric(&restarted, "recstack_features_served_total{source=\"l1\"}"), 2);
    assert_eq!(metric(&restarted, "recstack_features_l2_reads_total"), 0);
    std::fs::remove_file(&path).ok();
    assert_eq!(
        restarted.warm(&path).await.unwrap(),
        0,
        "a missing dump is an empty one"
    );
}

#[tokio::test]
async fn grpc_get_user_and_items() {
    let redis = Redis::start();
    let s = Arc::new(store(&redis, CachePolicy::default()).await);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(FeaturesServer::new(FeatureService { store: s }))
            .serve_with_incoming(recstack_services::ops::grpc_incoming(listener)),
    );
    let mut client = FeaturesClient::connect(format!("http://{addr}")).await.unwrap();
    let u = client
        .get_user(GetUserRequest { user_id: "u2".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.features.unwrap().ratings, 6);
    let none = client
        .get_user(GetUserRequest {
            user_id: "ghost".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.features.is_none());
    let err = client
        .get_user(GetUserRequest { user_id: " ".into() })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (tonic::Code::InvalidArgument, "user_id is required")
    );

    let items = client
        .get_items(GetItemsRequest {
            item_ids: vec!["i2".into(), "missing".into(), "i1".into()],
            realtime_only: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = items.items.iter().map(|i| i.item_id.as_str()).collect();
    assert_eq!(ids, ["i2", "i1"], "request order");
    assert_eq!(items.missing, ["missing"]);
    // Real-time only: no window has counted these snapshot items, so nothing is answered (and
    // no `missing`); the part kept of a counted item is its id and its window fields.
    let realtime = client
        .get_items(GetItemsRequest {
            item_ids: vec!["i2".into(), "missing".into(), "i1".into()],
            realtime_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(realtime, Default::default());
    let counted = ItemFeatures {
        clicks: 3,
        ctr: 0.4,
        window_end_ms: 1_790_000_000_000,
        trend: 2.0,
        ..item("i3", 7)
    };
    let part = realtime_part(&counted).unwrap();
    assert_eq!(
        (
            part.item_id.as_str(),
            part.clicks,
            part.ctr,
            part.window_end_ms,
            part.trend
        ),
        ("i3", 3, 0.4, 1_790_000_000_000, 2.0)
    );
    assert_eq!((part.ratings, part.genres.len()), (0, 0), "offline fields are left out");
    assert_eq!(realtime_part(&item("i3", 7)), None);
    let err = client
        .get_items(GetItemsRequest {
            item_ids: vec!["i1".into(), "".into()],
            realtime_only: false,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "item_ids[1] is empty");

    // The ids as columns: the same answer, in order, and the answer says it read them. What a
    // service from before the columns reads of such a request (no ids) answers nothing and
    // does not say so: ranking's cue to ask again with item_ids.
    redis.set(
        &Key::Item("i3".into()),
        &Value::Item(ItemFeatures {
            clicks: 3,
            window_end_ms: 1_790_000_000_000,
            ..item("i3", 7)
        }),
    );
    let ids = ["i2", "missing", "i3", "i1"];
    let (packed_ids, packed_id_ends) = recstack_services::id_columns::pack(ids);
    for realtime_only in [false, true] {
        let strings = GetItemsRequest {
            item_ids: ids.iter().map(|id| id.to_string()).collect(),
            realtime_only,
            ..Default::default()
        };
        let columns = GetItemsRequest {
            item_ids: Vec::new(),
            packed_ids: packed_ids.clone(),
            packed_id_ends: packed_id_ends.clone(),
            ..strings.clone()
        };
        let by_strings = client.get_items(strings).await.unwrap().into_inner();
        let by_columns = client.get_items(columns.clone()).await.unwrap().into_inner();
        assert!(by_columns.packed_read && !by_strings.packed_read);
        assert_eq!(by_columns.items, by_strings.items, "realtime_only {realtime_only}");
        assert_eq!(by_columns.missing, by_strings.missing, "realtime_only {realtime_only}");
        let counted: Vec<&str> = by_columns.items.iter().map(|i| i.item_id.as_str()).collect();
        assert_eq!(
            counted,
            if realtime_only {
                vec!["i3"]
            } else {
                vec!["i2", "i3", "i1"]
            }
        );
        let as_old_service_reads = GetItemsRequest {
            packed_ids: Vec::new(),
            packed_id_ends: Vec::new(),
            ..columns
        };
        let old = client.get_items(as_old_service_reads).await.unwrap().into_inner();
        assert!(!old.packed_read && old.items.is_empty());
    }
    let refused = |r: Result<tonic::Response<_>, tonic::Status>| r.unwrap_err().message().to_string();
    let columns = |ids: &[u8], ends: Vec<u32>| GetItemsRequest {
        packed_ids: ids.to_vec(),
        packed_id_ends: ends,
        ..Default::default()
    };
    assert_eq!(
        refused(client.get_items(columns(b"i1i2", vec![2, 2, 4])).await),
        "packed_id_ends[1] is empty"
    );
    assert_eq!(
        refused(client.get_items(columns(b"i1i2", vec![2, 5])).await),
        "packed_id_ends[1] is 5: before the previous end or past the 4 bytes of ids"
    );
    assert_eq!(
        refused(
            client
                .get_items(GetItemsRequest {
                    item_ids: vec!["i1".into()],
                    ..columns(b"i1", vec![2])
                })
                .await
        ),
        "item_ids and packed_ids are both set: send one"
    );
}
