//! The event path end to end in the local stack: events posted over HTTP and gRPC → the
//! embedded log → the stream job → the feature service and recall.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use recstack_core::rerank::RerankConfig;
use recstack_core::stream::window::WindowConfig;
use recstack_offline::build::Artifacts;
use recstack_services::events::ingest::proto::ingest_client::IngestClient;
use recstack_services::events::ingest::proto::{Event as ProtoEvent, PostEventsRequest};
use recstack_services::features::proto::GetItemsRequest;
use recstack_services::features::proto::GetUserRequest;
use recstack_services::features::proto::features_client::FeaturesClient;
use recstack_services::gateway::GatewayConfig;
use recstack_services::ranking::service::ModelSources;
use recstack_services::recall::proto::RecallRequest;
use recstack_services::recall::proto::recall_client::RecallClient;
use recstack_services::rerank::Experiment;
use recstack_services::serve::{self, LocalAddrs, LocalEvents, LocalOptions, LocalStack, LocalTraces};
use serde_json::{Value, json};

fn artifacts() -> &'static Artifacts {
    common::artifacts()
}

async fn stack(log_dir: &std::path::Path) -> LocalStack {
    let manifest_dir = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    stack_with(log_dir, manifest_dir.join("models/deepfm/model.onnx"), LocalTraces::Off).await
}

async fn stack_with(log_dir: &std::path::Path, model: std::path::PathBuf, traces: LocalTraces) -> LocalStack {
    let opts = LocalOptions {
        direct_links: true,
        addrs: LocalAddrs::ephemeral(),
        model: ModelSources::cpu(model),
        redis_url: None,
        gateway: GatewayConfig::default(),
        rerank: RerankConfig::default(),
        experiment: Experiment::default(),
        traces,
        dashboard: None,
        // One-second windows so a test sees several close.
        events: Some(LocalEvents {
            log_dir: log_dir.to_path_buf(),
            partitions: 2,
            window: WindowConfig {
                size_ms: 1_000,
                delay_ms: 200,
            },
        }),
    };
    serve::start_local(common::artifact_root(), opts).await.unwrap()
}

async fn post(stack: &LocalStack, body: Value) -> (u16, Value) {
    let addr = stack.get("ingest").http.to_string();
    let body = body.to_string();
    let (status, text) = tokio::task::spawn_blocking(move || common::http_post(&addr, "/v1/events", &body))
        .await
        .unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn event(id: &str, user: &str, item: &str, kind: &str) -> Value {
    json!({"event_id": id, "user_id": user, "item_id": item, "kind": kind})
}

/// Polls `check` until it returns `Some`, for at most `limit`.
async fn eventually<T, F: Future<Output = Option<T>>>(limit: Duration, what: &str, mut check: impl FnMut() -> F) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The item's features once its written windows hold at least `n` clicks.
async fn clicks_at_least(
    features: &FeaturesClient<tonic::transport::Channel>,
    item: &str,
    n: u64,
    what: &str,
) -> recstack_services::features::ItemFeatures {
    eventually(Duration::from_secs(10), what, || {
        let mut c = features.clone();
        let item = item.to_string();
        async move {
            let r = c
                .get_items(GetItemsRequest {
                    item_ids: vec![item],
                    realtime_only: false,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            r.items.into_iter().find(|f| f.clicks >= n)
        }
    })
    .await
}

#[tokio::test]
async fn posted_events_reach_features_and_recall() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(dir.path()).await;
    let a = artifacts();
    let user_ix = common::active_user(a);
    let user = a.users[user_ix as usize].clone();
    let history: std::collections::HashSet<u32> = a.history[user_ix as usize].iter().copied().collect();
    // A long-tail item nobody would recall as hot, and the user has not rated.
    let item_ix = common::long_tail_item(a, user_ix);
    let item = a.items[item_ix as usize].id.clone();
    // The build's top hot item the user has not rated: recalled by the hot channel.
    let shown_ix = a.hot.iter().map(|(i, _)| *i).find(|i| !history.contains(i)).unwrap();
    let shown = a.items[shown_ix as usize].id.clone();

    let mut events: Vec<Value> = (0..5)
        .map(|i| event(&format!("c{i}"), &format!("other-{i}"), &item, "click"))
        .collect();
    events.push(event("c-user", &user, &item, "click"));
    // An item the build has never seen.
    let new_item = "brand-new-item";
    events.extend((0..3).map(|i| event(&format!("n{i}"), &format!("other-{i}"), new_item, "play")));
    events.push(event("imp-user", &user, &shown, "impression"));
    let (status, body) = post(&stack, json!({ "events": events })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 10);
    assert_eq!(body["duplicates"], json!([]));
    let posted = Instant::now();

    // The fast path: the user's recent items lead with the clicked item.
    let features = FeaturesClient::connect(stack.get("features").grpc_url()).await.unwrap();
    let genres = a.item_features[item_ix as usize].genres.clone();
    let user_features = eventually(Duration::from_secs(10), "the click in the user's features", || {
        let (mut c, user) = (features.clone(), user.clone());
        let item = item.clone();
        async move {
            let f = c
                .get_user(GetUserRequest { user_id: user })
                .await
                .unwrap()
                .into_inner()
                .features?;
            (f.recent_items.first() == Some(&item)).then_some(f)
        }
    })
    .await;
    eprintln!("click visible in the user's features after {:?}", posted.elapsed());
    if let Some(g) = genres.first() {
        assert!(
            user_features.top_genres.iter().any(|s| &s.genre == g),
            "the clicked item's genre {g} is among {:?}",
            user_features.top_genres
        );
    }
    // The impression is not an engagement: it is not a recent item.
    assert!(!user_features.recent_items.iter().take(1).any(|i| i == &shown));

    // The window closes: six clicks, and the item leads the hot channel for anyone.
    let counted = clicks_at_least(&features, &item, 1, "the item's window written").await;
    assert_eq!(counted.clicks, 6);
    assert_eq!(counted.impressions, 0);
    assert!(
        (counted.ctr - 7.0 / 2.0).abs() < 1e-6,
        "smoothed (6 + 1) / (0 + 2): {}",
        counted.ctr
    );
    assert!(counted.window_end_ms > 0 && counted.trend >= 6.0);
    // What ranking asks for: only the counted item, with the same window fields.
    let untouched = a
        .items
        .iter()
        .map(|i| i.id.clone())
        .find(|id| *id != item && *id != shown)
        .unwrap();
    let realtime = features
        .clone()
        .get_items(GetItemsRequest {
            item_ids: vec![untouched, item.clone()],
            realtime_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(realtime.items.len(), 1, "{realtime:?}");
    let part = &realtime.items[0];
    assert_eq!(
        (
            part.item_id.as_str(),
            part.clicks,
            part.window_end_ms,
            part.genres.len()
        ),
        (item.as_str(), counted.clicks, counted.window_end_ms, 0)
    );

    let recall = RecallClient::connect(stack.get("recall").grpc_url()).await.unwrap();
    let hot_only = |user: &str| RecallRequest {
        user_id: user.to_string(),
        n: 50,
        channel_quotas: [("hot", 50)]
            .into_iter()
            .chain(["item_cf", "user_cf", "als", "vector", "tag", "cooc"].map(|c| (c, 0)))
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        ..Default::default()
    };
    let first = recall
        .clone()
        .recall(hot_only("a-new-user"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.candidates[0].item_id, item, "trending leads the hot channel");
    assert_eq!(first.candidates[0].sources[0].channel_name(), "hot");
    // The new item is recallable through the hot channel, and the gateway serves a list with
    // it among the candidates (ranked with default features, nothing fails).
    let fresh = first
        .candidates
        .iter()
        .find(|c| c.item_id == new_item)
        .expect("the new item is recalled");
    assert_eq!((fresh.sources[0].channel_name(), fresh.sources[0].rank), ("hot", 2));
    // As columns (what the gateway asks for), the same list, the new item included.
    let packed = recall
        .clone()
        .recall(RecallRequest {
            packed: true,
            ..hot_only("a-new-user")
        })
        .await
        .unwrap()
        .into_inner();
    assert!(packed.candidates.is_empty());
    let unpacked = recstack_services::recall::packed::to_messages(packed.packed.as_ref().unwrap()).unwrap();
    assert_eq!(unpacked, first.candidates);
    let gateway = stack.get("gateway").http.to_string();
    let (status, answer) = tokio::task::spawn_blocking(move || {
        common::http_post(
            &gateway,
            "/v1/recommend",
            r#"{"user_id": "a-new-user", "n": 10, "debug": true}"#,
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["items"].as_array().unwrap().len(), 10, "{answer}");
    // The impression went into the user's seen filter: recall filters the item out.
    let mine = recall.clone().recall(hot_only(&user)).await.unwrap().into_inner();
    assert!(mine.filtered_seen.contains(&shown), "{:?}", mine.filtered_seen);
    assert!(!mine.candidates.iter().any(|c| c.item_id == shown));

    // A retry of the same events is recorded once.
    let (status, body) = post(&stack, json!({ "events": events })).await;
    assert_eq!(status, 200);
    assert_eq!(body["accepted"], 0);
    assert_eq!(body["duplicates"].as_array().unwrap().len(), 10);
    // One bad event refuses the call whole, naming the field; the good one was not recorded.
    let good = event("late-good", "other-9", &item, "click");
    let (status, body) = post(&stack, json!({"events": [good, event("bad", "u", &item, "view")]})).await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "events[1].kind");
    assert!(body["error"].as_str().unwrap().contains("\"view\" is not one of"));
    let (status, body) = post(&stack, json!({ "events": [good] })).await;
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(1)), "{body}");
    // Malformed bodies name what is wrong.
    for (body, field) in [
        (
            json!({"events": [{"event_id": "x", "colour": "red"}]}),
            "events[0].colour",
        ),
        (json!({"events": "no"}), "events"),
        (json!({}), "events"),
        (json!({"events": []}), "events"),
    ] {
        let (status, answer) = post(&stack, body.clone()).await;
        assert_eq!(
            (status, answer["field"].as_str()),
            (400, Some(field)),
            "{body} → {answer}"
        );
    }
    // After the next window: seven clicks, not fourteen.
    let seven = clicks_at_least(&features, &item, 7, "the retry not counted twice").await;
    assert_eq!(seven.clicks, 7);
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn grpc_post_events_validates_and_dedups() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(dir.path()).await;
    let mut client = IngestClient::connect(stack.get("ingest").grpc_url()).await.unwrap();
    let e = |id: &str, user: &str, kind: &str| ProtoEvent {
        event_id: id.into(),
        user_id: user.into(),
        item_id: "0110912".into(),
        kind: kind.into(),
        ..Default::default()
    };
    let err = client
        .post_events(PostEventsRequest {
            events: vec![e("g1", "u1", "play"), e("g2", "", "play")],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "events[1].user_id: is required");
    let ok = client
        .post_events(PostEventsRequest {
            events: vec![e("g1", "u1", "play"), e("g1", "u1", "play"), e("g3", "u2", "like")],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ok.accepted, ok.duplicates), (2, vec!["g1".to_string()]));
    // Metrics count by kind.
    let addr = stack.get("ingest").http.to_string();
    let (_, metrics) = tokio::task::spawn_blocking(move || common::http_get(&addr, "/metrics"))
        .await
        .unwrap();
    let by_kind: HashMap<&str, &str> = metrics
        .lines()
        .filter(|l| l.starts_with("recstack_ingest_events_total{"))
        .filter_map(|l| l.split_once(' '))
        .collect();
    assert_eq!(
        by_kind.get("recstack_ingest_events_total{kind=\"play\"}"),
        Some(&"1"),
        "{metrics}"
    );
    assert_eq!(by_kind.get("recstack_ingest_events_total{kind=\"like\"}"), Some(&"1"));
    stack.stop().await.unwrap();

    // A restarted ingest still refuses the ids in the log (dedup reloaded from its tail).
    let stack = self::stack(dir.path()).await;
    let mut client = IngestClient::connect(stack.get("ingest").grpc_url()).await.unwrap();
    let again = client
        .post_events(PostEventsRequest {
            events: vec![e("g3", "u2", "like"), e("g4", "u2", "like")],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.accepted, again.duplicates), (1, vec!["g3".to_string()]));
    stack.stop().await.unwrap();
}

/// A model reading a real-time item feature, in the whole local stack: clicks posted to ingest
/// close a window, the feature service serves the item's new values, ranking reads them for the
/// next request, and the request's trace records what ranking read and how fresh it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_trace_records_the_real_time_features_ranking_read() {
    use recstack_services::ranking::model::ModelCard;
    let dir = tempfile::tempdir().unwrap();
    // The bundled model with its hot-score column read from the stream job's trend.
    let bundled = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/deepfm");
    let models = dir.path().join("model");
    std::fs::create_dir_all(&models).unwrap();
    for entry in std::fs::read_dir(&bundled).unwrap() {
        let from = entry.unwrap().path();
        std::fs::copy(&from, models.join(from.file_name().unwrap())).unwrap();
    }
    let model = models.join("model.onnx");
    let mut card = ModelCard::read(&model).unwrap();
    let column = card.features.dense.iter().position(|n| n == "item_log_hot").unwrap();
    card.features.dense[column] = "item_rt_trend".into();
    std::fs::write(model.with_extension("json"), serde_json::to_vec(&card).unwrap()).unwrap();
    let stack = stack_with(
        &dir.path().join("events"),
        model,
        LocalTraces::Embedded(dir.path().join("traces.sqlite")),
    )
    .await;

    // Clicks on the build's hottest items, by other users: their windows close within a second.
    let a = artifacts();
    let user = a.users[common::active_user(a) as usize].clone();
    let items: Vec<String> = a
        .hot
        .iter()
        .take(30)
        .map(|(i, _)| a.items[*i as usize].id.clone())
        .collect();
    let events: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(n, item)| event(&format!("rt-{n}"), &format!("clicker-{n}"), item, "click"))
        .collect();
    let (status, body) = post(&stack, json!({ "events": events })).await;
    assert_eq!(status, 200, "{body}");
    let features = FeaturesClient::connect(stack.get("features").grpc_url()).await.unwrap();
    clicks_at_least(&features, &items[0], 1, "the first item's window written").await;

    let api = stack.get("traces").http.to_string();
    let trace = eventually(Duration::from_secs(10), "a trace with a real-time read", || {
        let (stack, api, user) = (&stack, api.clone(), user.clone());
        async move {
            let served = common::recommend(stack, &user, false).await;
            let trace = common::stored_trace(&api, &served.request_id).await;
            trace.realtime.as_ref().is_some_and(|r| r.items > 0).then_some(trace)
        }
    })
    .await;
    let realtime = trace.realtime.unwrap();
    assert_eq!(realtime.status, "read");
    assert!(realtime.items as usize <= items.len(), "{realtime:?}");
    // Windows that closed after the clicks, before the request.
    assert!(realtime.oldest_window_end_ms > 0 && realtime.oldest_window_end_ms <= realtime.newest_window_end_ms);
    assert!(realtime.newest_window_end_ms <= trace.timestamp_ms, "{realtime:?}");
    assert!(
        trace.timestamp_ms - realtime.newest_window_end_ms < 60_000,
        "fresh: {realtime:?}"
    );
    stack.stop().await.unwrap();
}
