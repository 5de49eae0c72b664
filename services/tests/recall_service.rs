//! The recall service over real gRPC, on artifacts built from the bundled data.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use recstack_core::recall::seen::{SeenConfig, SeenFilter};
use recstack_services::recall::proto::CutReason;
use recstack_services::recall::proto::recall_client::RecallClient;
use recstack_services::recall::proto::recall_server::RecallServer;
use recstack_services::recall::proto::{self, ImpressionsRequest, RecallRequest, RecallResponse};
use recstack_services::recall::{
    ArtifactSlot, CacheLabels, DEFAULT_QUOTA, Loaded, MemorySeenStore, RecallMetrics, RecallService, RedisSeenStore,
    SeenStore, item_key,
};
use recstack_services::stream::sink::{FeatureSink, MemoryStore, StreamStore, Trending};
use tonic::transport::{Channel, Server};

use common::artifact_root;

struct Running {
    client: RecallClient<Channel>,
    slot: Arc<ArtifactSlot>,
    metrics: Arc<RecallMetrics>,
}

async fn start() -> Running {
    start_with(MemorySeenStore::default()).await
}

async fn start_with(seen: impl SeenStore) -> Running {
    serve(Loaded::from_dir(artifact_root()).unwrap(), seen).await
}

async fn serve(loaded: Loaded, seen: impl SeenStore) -> Running {
    serve_with(loaded, seen, StreamStore::None).await
}

/// Recall reading the stream job's output in `stream`.
async fn serve_with(loaded: Loaded, seen: impl SeenStore, stream: StreamStore) -> Running {
    let slot = Arc::new(ArtifactSlot::new(loaded));
    let metrics = Arc::new(RecallMetrics::default());
    let service = RecallService::new(slot.clone(), seen, SeenConfig::default(), metrics.clone()).with_stream(stream);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(RecallServer::new(service))
            .serve_with_incoming(recstack_services::ops::grpc_incoming(listener)),
    );
    let client = RecallClient::connect(format!("http://{addr}")).await.unwrap();
    Running { client, slot, metrics }
}

/// A user with a long training history and held-out ratings.
fn active_user(loaded: &Loaded) -> (String, HashSet<String>) {
    let a = &loaded.artifacts;
    let u = common::active_user(a);
    let seen = a.history[u as usize]
        .iter()
        .map(|&i| a.items[i as usize].id.clone())
        .collect();
    (a.users[u as usize].clone(), seen)
}

fn request(user: &str, n: u32, quotas: &[(&str, u32)]) -> RecallRequest {
    RecallRequest {
        user_id: user.into(),
        n,
        channel_quotas: quotas.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ..Default::default()
    }
}

/// The list cache's (hits, misses).
fn counts(m: &RecallMetrics) -> (u64, u64) {
    let get = |result| m.list_cache.get_or_create(&CacheLabels { result }).get();
    (get("hit"), get("miss"))
}

fn channels_of(resp: &RecallResponse) -> HashSet<String> {
    resp.candidates
        .iter()
        .flat_map(|c| c.sources.iter().map(|s| s.channel_name().to_string()))
        .collect()
}

#[tokio::test]
async fn recall_returns_deduplicated_candidates_with_lineage() {
    let mut r = start().await;
    let (user, history) = active_user(&r.slot.get());
    let resp = r.client.recall(request(&user, 0, &[])).await.unwrap().into_inner();
    assert!(
        (500..=1000).contains(&resp.candidates.len()),
        "{} candidates",
        resp.candidates.len()
    );
    assert_eq!(resp.artifact_version, r.slot.get().manifest.version);
    let ids: HashSet<&str> = resp.candidates.iter().map(|c| c.item_id.as_str()).collect();
    assert_eq!(ids.len(), resp.candidates.len(), "deduplicated");
    assert!(
        ids.iter().all(|id| !history.contains(*id)),
        "no item from the user's history"
    );
    assert_eq!(channels_of(&resp).len(), 7, "all seven channels contribute");
    for c in &resp.candidates {
        assert!(!c.sources.is_empty());
        assert!(c.sources.iter().all(|s| s.rank >= 1 && s.rank <= 200), "{c:?}");
    }
    assert!(
        resp.candidates.windows(2).all(|w| w[0].fused_score >= w[1].fused_score),
        "ranked by fused score"
    );
    assert_eq!(resp.channels.len(), 7);
    assert!(resp.channels.iter().all(|s| s.returned > 0), "{:?}", resp.channels);
    let metrics = r.metrics.encode();
    assert!(
        metrics.contains("recstack_recall_requests_total{rpc=\"recall\",code=\"ok\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn columns_answer_what_messages_do() {
    let mut r = start().await;
    let (active, _) = active_user(&r.slot.get());
    let quiet = r.slot.get().artifacts.users[0].clone();
    let cases = [
        request(&active, 0, &[]),
        request(&active, 37, &[("hot", 0), ("tag", 10)]),
        request(&quiet, 300, &[]),
        request("nobody-knows-this-user", 100, &[]),
        RecallRequest {
            explain: true,
            ..request(&active, 120, &[("item_cf", 5)])
        },
    ];
    for req in cases {
        let messages = r.client.recall(req.clone()).await.unwrap().into_inner();
        let columns = r
            .client
            .recall(RecallRequest {
                packed: true,
                ..req.clone()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!messages.candidates.is_empty(), "{req:?}");
        assert!(
            columns.candidates.is_empty() && messages.packed.is_none(),
            "one form or the other"
        );
        let unpacked = recstack_services::recall::packed::to_messages(columns.packed.as_ref().unwrap()).unwrap();
        assert_eq!(unpacked, messages.candidates, "{req:?}");
        // Everything else is the same too.
        assert_eq!(
            (
                &columns.filtered_seen,
                &columns.seen_filter,
                &columns.cuts,
                &columns.consumed
            ),
            (
                &messages.filtered_seen,
                &messages.seen_filter,
                &messages.cuts,
                &messages.consumed
            )
        );
    }
}

#[tokio::test]
async fn quotas_shape_the_channel_mix() {
    let mut r = start().await;
    let (user, _) = active_user(&r.slot.get());
    let resp = r
        .client
        .recall(request(&user, 100, &[("hot", 0), ("item_cf", 5)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.candidates.len(), 100);
    assert!(!channels_of(&resp).contains("hot"), "hot is off");
    let item_cf = resp
        .candidates
        .iter()
        .filter(|c| c.sources.iter().any(|s| s.channel_name() == "item_cf"))
        .count();
    assert!(item_cf <= 5, "{item_cf} item_cf candidates");
    let hot = resp.channels.iter().find(|s| s.channel == "hot").unwrap();
    assert_eq!((hot.quota, hot.returned), (0, 0), "off, and said so");
    let item_cf = resp.channels.iter().find(|s| s.channel == "item_cf").unwrap();
    assert_eq!((item_cf.quota, item_cf.returned), (5, 5));
}

#[tokio::test]
async fn explaining_reports_the_cuts_and_history_without_changing_the_answer() {
    let mut r = start().await;
    let (user, history) = active_user(&r.slot.get());
    let quotas = [("hot", 0), ("item_cf", 50), ("als", 50)];
    let plain = r.client.recall(request(&user, 80, &quotas)).await.unwrap().into_inner();
    let mut explained = request(&user, 80, &quotas);
    explained.explain = true;
    let explained = r.client.recall(explained).await.unwrap().into_inner();
    assert_eq!(
        explained.candidates, plain.candidates,
        "explaining changes nothing served"
    );
    assert!(plain.cuts.is_empty() && plain.consumed.is_empty());
    assert_eq!(plain.consumed_total as usize, history.len());

    // The history, most recent first, with times.
    let consumed: HashSet<String> = explained.consumed.iter().map(|c| c.item_id.clone()).collect();
    assert_eq!(consumed, history);
    assert!(explained.consumed.windows(2).all(|w| w[0].at_ms >= w[1].at_ms));
    // Every cut, and nothing answered among them: past quota (rank > 50), past the merge
    // (position ≥ 80), or only from the switched-off hot channel.
    let answered: HashSet<&str> = explained.candidates.iter().map(|c| c.item_id.as_str()).collect();
    let mut reasons = HashSet::new();
    for c in &explained.cuts {
        assert!(!answered.contains(c.item_id.as_str()), "{} was answered", c.item_id);
        assert!(!consumed.contains(&c.item_id), "channels never rank the history");
        match c.reason() {
            CutReason::Quota => assert!(c.sources.iter().any(|s| s.rank > 50), "{c:?}"),
            CutReason::Merge => assert!(c.position >= 80 && c.cut == 80, "{c:?}"),
            CutReason::ChannelOff => {
                assert!(c.sources.iter().all(|s| s.channel_name() == "hot"), "{c:?}")
            }
            CutReason::Unspecified => panic!("{c:?}"),
        }
        reasons.insert(c.reason());
    }
    assert_eq!(reasons.len(), 3, "quota, merge and channel-off cuts: {reasons:?}");
    assert_eq!(explained.seen_filter, "empty");
}

#[tokio::test]
async fn a_warmed_version_answers_its_sampled_users_from_the_cache_unchanged() {
    let loaded = Loaded::from_dir(artifact_root()).unwrap();
    // Every channel for 8 users and for an unknown one.
    assert_eq!(loaded.warm(8), 9 * 7);
    let user = loaded.artifacts.users[0].clone();
    let mut warm = serve(loaded, MemorySeenStore::default()).await;
    let mut cold = start().await;
    let answer = warm.client.recall(request(&user, 0, &[])).await.unwrap().into_inner();
    assert_eq!(counts(&warm.metrics), (7, 0), "every channel from the warmed cache");
    let computed = cold.client.recall(request(&user, 0, &[])).await.unwrap().into_inner();
    assert_eq!(counts(&cold.metrics), (0, 7));
    assert!(!answer.candidates.is_empty());
    assert_eq!(answer.candidates, computed.candidates);
    // A user the build has not seen is warmed too.
    warm.client
        .recall(request("nobody-the-build-saw", 0, &[]))
        .await
        .unwrap();
    assert_eq!(counts(&warm.metrics), (14, 0));
}

#[tokio::test]
async fn repeated_recalls_are_served_from_the_version_cache_unchanged() {
    let mut r = start().await;
    let loaded = r.slot.get();
    let (user, _) = active_user(&loaded);
    let first = r.client.recall(request(&user, 0, &[])).await.unwrap().into_inner();
    assert_eq!(counts(&r.metrics), (0, 7), "every channel computed once");
    let second = r.client.recall(request(&user, 0, &[])).await.unwrap().into_inner();
    assert_eq!(counts(&r.metrics), (7, 7), "every channel from the cache");
    assert_eq!(first.candidates, second.candidates);
    assert!(second.channels.iter().all(|c| c.latency_us == 0 && c.returned > 0));
    // The channel latency histogram times computations only.
    let metrics = r.metrics.encode();
    assert!(
        metrics.contains("recstack_recall_channel_latency_seconds_count{channel=\"als\"} 1\n"),
        "{metrics}"
    );

    // Both equal the lists computed directly from the artifacts.
    let a = &loaded.artifacts;
    let u = a.users.iter().position(|x| *x == user).unwrap() as u32;
    let direct = recstack_core::recall::recall(
        a,
        &recstack_core::recall::UserHistory::new(a, u),
        DEFAULT_QUOTA,
        7 * DEFAULT_QUOTA,
    );
    let ids = |c: &[proto::Candidate]| c.iter().map(|c| c.item_id.clone()).collect::<Vec<_>>();
    let direct_ids: Vec<String> = direct
        .iter()
        .take(1000)
        .map(|c| a.items[c.item as usize].id.clone())
        .collect();
    assert_eq!(ids(&second.candidates), direct_ids);

    // Another quota is another list; a new version starts with an empty cache.
    r.client.recall(request(&user, 0, &[("als", 50)])).await.unwrap();
    assert_eq!(counts(&r.metrics), (13, 8));
    r.slot.swap(Loaded::from_dir(artifact_root()).unwrap());
    let third = r.client.recall(request(&user, 0, &[])).await.unwrap().into_inner();
    assert_eq!(counts(&r.metrics), (13, 15));
    assert_eq!(third.candidates, second.candidates);
}

#[tokio::test]
async fn unknown_users_get_hot_items() {
    let mut r = start().await;
    let resp = r
        .client
        .recall(request("no-such-user", 50, &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.candidates.len(), 50);
    assert_eq!(channels_of(&resp), HashSet::from(["hot".to_string()]));
}

/// Each channel's items in `resp` at their rank there, by channel name.
fn lineage(resp: &RecallResponse) -> std::collections::BTreeMap<String, Vec<(u32, String)>> {
    let mut by = std::collections::BTreeMap::<String, Vec<(u32, String)>>::new();
    for c in &resp.candidates {
        for s in &c.sources {
            by.entry(s.channel_name().to_string())
                .or_default()
                .push((s.rank, c.item_id.clone()));
        }
    }
    by.values_mut().for_each(|v| v.sort());
    by
}

#[tokio::test]
async fn real_time_items_seed_the_history_channels_and_are_not_recalled_back() {
    use recstack_core::recall::{self, UserHistory};
    let loaded = Loaded::from_dir(artifact_root()).unwrap();
    let a = &loaded.artifacts;
    let (user, history) = active_user(&loaded);
    let u = a.users.iter().position(|x| *x == user).unwrap() as u32;
    // Two items the user never rated, each with neighbours and successors to seed from.
    let picks: Vec<u32> = (0..a.items.len() as u32)
        .filter(|&i| {
            !history.contains(&a.items[i as usize].id)
                && a.item_neighbours[i as usize].len() > 20
                && a.next_items[i as usize].len() > 20
        })
        .step_by(97)
        .take(2)
        .collect();
    let ids: Vec<String> = picks.iter().map(|&i| a.items[i as usize].id.clone()).collect();
    // What the channels rank with the newer of the two first, ahead of the build's history.
    let live = UserHistory::live(a, u, &[picks[1], picks[0]]).unwrap();
    let want = |c| {
        recall::channel_for(a, &live, c, DEFAULT_QUOTA)
            .items
            .iter()
            .enumerate()
            .map(|(rank0, (i, _))| (rank0 as u32 + 1, a.items[*i as usize].id.clone()))
            .collect::<HashSet<_>>()
    };
    let (want_cf, want_cooc) = (
        want(recstack_core::recall::Channel::ItemCf),
        want(recstack_core::recall::Channel::Cooc),
    );
    let built = UserHistory::new(a, u);
    let built_als: HashSet<(u32, String)> =
        recall::channel_for(a, &built, recstack_core::recall::Channel::Als, DEFAULT_QUOTA)
            .items
            .iter()
            .enumerate()
            .map(|(rank0, (i, _))| (rank0 as u32 + 1, a.items[*i as usize].id.clone()))
            .collect();

    let store = Arc::new(MemoryStore::default());
    let mut r = serve_with(loaded, MemorySeenStore::default(), StreamStore::Memory(store.clone())).await;
    let ask = request(&user, 1000, &[]);
    let before = r.client.recall(ask.clone()).await.unwrap().into_inner();
    assert_eq!(r.metrics.live_histories.get(), 0, "no real-time items yet");
    let now = recstack_core::events::now_ms();
    store
        .add_recent(&[
            (user.clone(), ids[0].clone(), now - 1_000),
            (user.clone(), ids[1].clone(), now),
        ])
        .await
        .unwrap();
    let (_, misses) = counts(&r.metrics);
    let after = r.client.recall(ask.clone()).await.unwrap().into_inner();
    assert_eq!(r.metrics.live_histories.get(), 1);
    assert_eq!(
        counts(&r.metrics).1,
        misses + 3,
        "item_cf, cooc and vector computed on the live history"
    );
    // Until the user engages again, those lists come from the cache, the same.
    let (hits, misses) = counts(&r.metrics);
    let again = r.client.recall(ask.clone()).await.unwrap().into_inner();
    assert_eq!(again.candidates, after.candidates);
    assert_eq!(counts(&r.metrics), (hits + 7, misses));

    let (was, is) = (lineage(&before), lineage(&after));
    for channel in ["item_cf", "cooc"] {
        assert_ne!(was[channel], is[channel], "{channel} follows the real-time items");
    }
    // Every answered rank is the live history's: the channels ran on it.
    for (rank, id) in &is["item_cf"] {
        assert!(want_cf.contains(&(*rank, id.clone())), "item_cf #{rank} {id}");
    }
    for (rank, id) in &is["cooc"] {
        assert!(want_cooc.contains(&(*rank, id.clone())), "cooc #{rank} {id}");
    }
    // A channel of what the build learnt of the user reads its cached list as before.
    for (rank, id) in &is["als"] {
        assert!(built_als.contains(&(*rank, id.clone())), "als #{rank} {id}");
    }
    // What the user engaged with is consumed: not recalled back, and first in the history.
    let answered: HashSet<&str> = after.candidates.iter().map(|c| c.item_id.as_str()).collect();
    assert!(ids.iter().all(|id| !answered.contains(id.as_str())), "{ids:?}");
    assert_eq!(after.consumed_total as usize, history.len() + 2);
    let mut explained = ask.clone();
    explained.explain = true;
    let explained = r.client.recall(explained).await.unwrap().into_inner();
    assert_eq!(
        explained.candidates, after.candidates,
        "explaining changes nothing served"
    );
    let head: Vec<(&str, i64)> = explained
        .consumed
        .iter()
        .take(2)
        .map(|c| (c.item_id.as_str(), c.at_ms))
        .collect();
    assert_eq!(head, [(ids[1].as_str(), now), (ids[0].as_str(), now - 1_000)]);
    assert!(explained.cuts.iter().all(|c| !ids.contains(&c.item_id)));

    // A user the build has never seen: the hot channel alone, until they engage — with a
    // catalogue item, and a new one the stream job has trending.
    store.put_trending(vec![("brand-new-item".into(), 1e9)]).await.unwrap();
    // (Recall reads the trending list at most every `Trending::FRESH`.)
    tokio::time::sleep(Trending::FRESH + std::time::Duration::from_millis(50)).await;
    let stranger = request("someone-new", 200, &[]);
    let cold = r.client.recall(stranger.clone()).await.unwrap().into_inner();
    assert_eq!(channels_of(&cold), HashSet::from(["hot".to_string()]));
    assert!(cold.candidates.iter().any(|c| c.item_id == "brand-new-item"));
    store
        .add_recent(&[
            ("someone-new".into(), ids[0].clone(), now),
            ("someone-new".into(), "brand-new-item".into(), now),
        ])
        .await
        .unwrap();
    let warm = r.client.recall(stranger).await.unwrap().into_inner();
    assert!(
        warm.candidates.iter().all(|c| c.item_id != "brand-new-item"),
        "consumed"
    );
    let channels = channels_of(&warm);
    assert!(
        channels.contains("item_cf") && channels.contains("cooc"),
        "seeded by their one item: {channels:?}"
    );
    assert!(warm.candidates.iter().all(|c| c.item_id != ids[0]));
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let mut r = start().await;
    let err = r.client.recall(request("", 10, &[])).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (tonic::Code::InvalidArgument, "user_id is required")
    );
    let err = r.client.recall(request("1", 10, &[("trending", 5)])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with("channel_quotas.trending: unknown channel"),
        "{}",
        err.message()
    );
    let err = r.client.recall(request("1", 100_000, &[])).await.unwrap_err();
    assert!(err.message().starts_with("n is 100000"), "{}", err.message());
    let metrics = r.metrics.encode();
    assert!(metrics.contains("code=\"invalid_argument\"} 3"), "{metrics}");
}

#[tokio::test]
async fn impressions_are_filtered_from_later_recalls() {
    let mut r = start().await;
    let (user, _) = active_user(&r.slot.get());
    let first = r.client.recall(request(&user, 50, &[])).await.unwrap().into_inner();
    let shown: Vec<String> = first.candidates.iter().take(10).map(|c| c.item_id.clone()).collect();
    let ack = r
        .client
        .record_impressions(ImpressionsRequest {
            user_id: user.clone(),
            item_ids: shown.iter().cloned().chain(["not-an-item".to_string()]).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.recorded, 10);
    assert_eq!(ack.unknown_items, ["not-an-item"]);

    let second = r.client.recall(request(&user, 50, &[])).await.unwrap().into_inner();
    assert_eq!(second.candidates.len(), 50, "still a full list");
    let ids: HashSet<&str> = second.candidates.iter().map(|c| c.item_id.as_str()).collect();
    assert!(
        shown.iter().all(|s| !ids.contains(s.as_str())),
        "shown items are not recalled again"
    );
    let filtered: HashSet<&String> = second.filtered_seen.iter().collect();
    assert!(
        shown.iter().all(|s| filtered.contains(s)),
        "the response reports what it filtered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_swap_under_load_fails_no_request() {
    let r = start().await;
    let (user, _) = active_user(&r.slot.get());
    let v1 = r.slot.get().manifest.version.clone();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut client = r.client.clone();
        let user = user.clone();
        clients.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for _ in 0..40 {
                let resp = client
                    .recall(request(&user, 200, &[]))
                    .await
                    .expect("no failed request during swaps");
                assert_eq!(resp.get_ref().candidates.len(), 200);
                versions.push(resp.into_inner().artifact_version);
            }
            versions
        }));
    }
    // Swap between two loaded versions while the clients run; a request right after each
    // swap is served by the new version.
    let mut probe = r.client.clone();
    for round in 0..6 {
        let mut loaded = Loaded::from_dir(artifact_root()).unwrap();
        let version = if round % 2 == 0 {
            "v-next".to_string()
        } else {
            v1.clone()
        };
        loaded.manifest.version = version.clone();
        r.slot.swap(loaded);
        let resp = probe.recall(request(&user, 200, &[])).await.unwrap().into_inner();
        assert_eq!(resp.artifact_version, version, "round {round}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut seen_versions = HashSet::new();
    for c in clients {
        seen_versions.extend(c.await.unwrap());
    }
    assert!(
        seen_versions.is_subset(&HashSet::from([v1.clone(), "v-next".to_string()])),
        "{seen_versions:?}"
    );
}

/// A recall replica's view of the seen filters in the Redis at `url`.
async fn redis_seen_store(url: &str) -> RedisSeenStore {
    RedisSeenStore::connect(
        url,
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(3600),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn replicas_share_seen_filters_through_redis_and_survive_its_loss() {
    let mut redis = common::Redis::start();
    let mut a = start_with(redis_seen_store(&redis.url).await).await;
    let mut b = start_with(redis_seen_store(&redis.url).await).await;
    let (user, _) = active_user(&a.slot.get());
    let shown: Vec<String> = a
        .client
        .recall(request(&user, 5, &[]))
        .await
        .unwrap()
        .into_inner()
        .candidates
        .into_iter()
        .map(|c| c.item_id)
        .collect();
    let ack = a
        .client
        .record_impressions(ImpressionsRequest {
            user_id: user.clone(),
            item_ids: shown.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.recorded, 5);

    // Replica b sees replica a's impressions.
    let resp = b.client.recall(request(&user, 50, &[])).await.unwrap().into_inner();
    assert!(
        shown.iter().all(|s| resp.filtered_seen.contains(s)),
        "{:?}",
        resp.filtered_seen
    );
    assert!(resp.candidates.iter().all(|c| !shown.contains(&c.item_id)));
    assert_eq!(resp.seen_filter, "applied");
    assert_eq!(resp.filtered_seen_when.len(), resp.filtered_seen.len());
    assert!(
        resp.filtered_seen_when
            .iter()
            .all(|w| w.first_ms > 0 && w.first_ms <= w.last_ms)
    );

    // Redis goes away: recall still answers, unfiltered, says so, and counts the failure.
    redis.stop();
    let resp = b
        .client
        .recall(request(&user, 50, &[]))
        .await
        .expect("recall without its seen store");
    assert_eq!(resp.get_ref().candidates.len(), 50);
    assert!(
        resp.get_ref().seen_filter.starts_with("unavailable: "),
        "{}",
        resp.get_ref().seen_filter
    );
    assert!(resp.get_ref().filtered_seen.is_empty());
    assert!(
        b.metrics.encode().contains("recstack_recall_seen_errors_total 1"),
        "{}",
        b.metrics.encode()
    );
    let err = a
        .client
        .record_impressions(ImpressionsRequest {
            user_id: user,
            item_ids: shown,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::Unavailable,
        "an impression that cannot be stored is not acknowledged"
    );
}

/// Both stores write only over the value the writer read.
#[tokio::test]
async fn seen_stores_compare_and_set() {
    let redis = common::Redis::start();
    let redis_store = redis_seen_store(&redis.url).await;
    async fn check(store: impl SeenStore) {
        assert!(store.put_if("u", None, b"one".to_vec()).await.unwrap());
        assert!(
            !store.put_if("u", None, b"lost".to_vec()).await.unwrap(),
            "a value exists"
        );
        assert!(!store.put_if("u", Some(b"stale"), b"lost".to_vec()).await.unwrap());
        assert!(store.put_if("u", Some(b"one"), b"two".to_vec()).await.unwrap());
        assert_eq!(store.get("u").await.unwrap().as_deref(), Some(&b"two"[..]));
    }
    check(MemorySeenStore::default()).await;
    check(redis_store).await;
    // And on a Redis Cluster (one key per user: any slot).
    let cluster = common::RedisCluster::start();
    check(redis_seen_store(&cluster.url).await).await;
}

/// Impressions for one user arriving at two replicas at once: every one lands in the shared
/// filter (a plain read-modify-write would keep only the last writer's).
#[tokio::test]
async fn concurrent_impressions_on_two_replicas_lose_nothing() {
    let redis = common::Redis::start();
    let a = start_with(redis_seen_store(&redis.url).await).await;
    let b = start_with(redis_seen_store(&redis.url).await).await;
    let items: Vec<String> = a
        .slot
        .get()
        .artifacts
        .items
        .iter()
        .take(60)
        .map(|i| i.id.clone())
        .collect();
    let calls = items.iter().enumerate().map(|(i, item)| {
        let mut client = if i % 2 == 0 { a.client.clone() } else { b.client.clone() };
        let item = item.clone();
        async move {
            client
                .record_impressions(ImpressionsRequest {
                    user_id: "concurrent-user".into(),
                    item_ids: vec![item],
                })
                .await
                .unwrap()
                .into_inner()
                .recorded
        }
    });
    let recorded: u32 = futures::future::join_all(calls).await.into_iter().sum();
    assert_eq!(recorded as usize, items.len());
    let bytes = redis_seen_store(&redis.url)
        .await
        .get("concurrent-user")
        .await
        .unwrap()
        .unwrap();
    let filter = SeenFilter::from_bytes(SeenConfig::default(), &bytes).unwrap();
    let missing: Vec<&String> = items.iter().filter(|i| !filter.contains(item_key(i))).collect();
    assert!(missing.is_empty(), "impressions lost: {missing:?}");
    let conflicts = a.metrics.seen_conflicts.get() + b.metrics.seen_conflicts.get();
    eprintln!(
        "{} impressions over two replicas, {conflicts} write conflicts retried",
        items.len()
    );
}

#[tokio::test]
async fn a_user_tower_that_does_not_load_empties_the_vector_channel_and_recall_serves_on() {
    let (manifest, mut a) = recstack_offline::build::load(artifact_root(), None).unwrap();
    let seq = a.seq.as_mut().expect("the bundled build carries the sequence model");
    // A torn graph (a half-written file): the tower cannot load.
    seq.tower_onnx.truncate(seq.tower_onnx.len() / 2);
    let loaded = Loaded::new(manifest, a);
    assert!(
        loaded.artifacts.seq.as_ref().is_some_and(|s| s.tower.is_none()),
        "no runner attached"
    );
    let mut r = serve(loaded, MemorySeenStore::default()).await;
    let (user, history) = active_user(&r.slot.get());
    let resp = r.client.recall(request(&user, 0, &[])).await.unwrap().into_inner();
    let returned = |name: &str| {
        resp.channels
            .iter()
            .find(|s| s.channel == name)
            .map(|s| s.returned)
            .unwrap_or_else(|| panic!("no stats for {name}: {:?}", resp.channels))
    };
    assert_eq!(
        returned("vector"),
        0,
        "the channel answers nothing, not another space's items"
    );
    for c in recstack_core::recall::Channel::ALL {
        if c.name() != "vector" {
            assert!(returned(c.name()) > 0, "{} still serves: {:?}", c.name(), resp.channels);
        }
    }
    assert!(resp.candidates.len() >= 500, "{} candidates", resp.candidates.len());
    assert!(
        !channels_of(&resp).contains("vector"),
        "no candidate claims the vector channel"
    );
    assert!(resp.candidates.iter().all(|c| !history.contains(&c.item_id)));
}
