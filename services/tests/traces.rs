//! Traces end to end: the local stack's gateway writes every request's trace through the
//! writer queue into the embedded store, and the query API answers search, why and why-not
//! about real requests.

mod common;

use std::path::Path;

use recstack_services::serve::{self, LocalStack};
use recstack_trace_store::explain::{FellOut, Why, WhyNot};
use recstack_trace_store::query::{Aggregates, Page};
use recstack_trace_store::{Detail, outcome};
use serde_json::Value;

async fn start(trace_file: &Path) -> LocalStack {
    let opts = common::traced_stack(trace_file, None);
    serve::start_local(common::artifact_root(), opts).await.unwrap()
}

async fn get(addr: String, path: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || common::http_get(&addr, &path))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_query_api_explains_real_requests() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(&dir.path().join("traces.sqlite")).await;
    let api = stack.get("traces").http.to_string();
    // A user with more candidates than the ranking cut, so every stage has leavers.
    let mut found = None;
    for user in (1..200).map(|u| u.to_string()) {
        let debug = common::recommend(&stack, &user, true).await;
        let full = common::stored_trace(&api, &debug.request_id).await;
        if full.candidates.len() > 500 {
            found = Some((user, debug, full));
            break;
        }
    }
    let (user, debug, full) = found.expect("a user with over 500 candidates");
    let user = user.as_str();
    let plain = common::recommend(&stack, user, false).await;
    // A user not tried above.
    let other = common::recommend(&stack, &(user.parse::<u64>().unwrap() + 1).to_string(), false).await;
    assert_eq!(debug.level, "full", "{:?}", debug.degraded);

    // The stored trace is the served list with its lineage.
    assert_eq!(full.detail, Detail::Full);
    let recalled = full.stages.iter().find(|s| s.name == "recall").unwrap().items_out;
    assert_eq!(full.candidates.len(), recalled as usize);
    let served: Vec<&str> = debug.items.iter().map(|i| i.item_id.as_str()).collect();
    let traced: Vec<&str> = full.items.iter().map(|i| i.item_id.as_str()).collect();
    assert_eq!(traced, served);
    assert!(!full.channels.is_empty());
    let channel_total: u32 = full.channels.iter().map(|c| c.candidates).sum();
    let sources_total: usize = full.candidates.iter().map(|c| c.sources.len()).sum();
    assert_eq!(
        channel_total as usize, sources_total,
        "channel counts match the candidates' sources"
    );
    assert!(
        full.items.iter().all(|i| i.filters_passed == ["seen", "block_list"]),
        "{:?}",
        full.items[0]
    );
    let summary = common::stored_trace(&api, &plain.request_id).await;
    assert_eq!(summary.detail, Detail::Summary);
    assert!(summary.candidates.is_empty());
    common::stored_trace(&api, &other.request_id).await;

    // Search by user, newest first; by a served item.
    let (status, body) = get(api.clone(), format!("/v1/traces?user={user}")).await;
    assert_eq!(status, 200, "{body}");
    let page: Page = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = page.hits.iter().map(|h| h.request_id.as_str()).collect();
    assert_eq!(ids, [plain.request_id.as_str(), debug.request_id.as_str()]);
    assert_eq!((page.total, page.hits[1].served), (2, 10));
    let requests = user.parse::<u64>().unwrap() + 2; // a debug request per user tried, then two
    let (_, body) = get(api.clone(), format!("/v1/traces?item={}&size=50", served[0])).await;
    let page: Page = serde_json::from_str(&body).unwrap();
    assert!(page.hits.iter().any(|h| h.request_id == debug.request_id), "{body}");
    assert!(
        page.hits
            .iter()
            .all(|h| h.request_id != other.request_id || other.items.iter().any(|i| i.item_id == served[0]))
    );

    // Why: the lineage of a served item.
    let (status, body) = get(
        api.clone(),
        format!("/v1/traces/{}/why/{}", debug.request_id, served[0]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let why: Why = serde_json::from_str(&body).unwrap();
    let channel = &debug.items[0].sources[0].channel;
    assert!(why.steps[0].contains(channel.name()), "{:?}", why.steps);
    assert!(
        why.steps.iter().any(|s| s.contains("by gbdt-2, ranked")),
        "{:?}",
        why.steps
    );
    let (status, body) = get(api.clone(), format!("/v1/traces/{}/why/nope", debug.request_id)).await;
    assert_eq!(status, 404);
    assert!(body.contains("why-not"), "{body}");

    // Why not: each stage the full trace can name, on real candidates.
    let why_not = |item: String| {
        let (api, id) = (api.clone(), debug.request_id.clone());
        async move {
            let (status, body) = get(api, format!("/v1/traces/{id}/why-not/{item}")).await;
            assert_eq!(status, 200, "{body}");
            serde_json::from_str::<WhyNot>(&body).unwrap()
        }
    };
    let by_outcome = |o: &str| {
        full.candidates
            .iter()
            .find(|c| c.outcome.starts_with(o))
            .unwrap_or_else(|| panic!("a candidate with outcome {o}"))
            .item_id
            .clone()
    };
    assert_eq!(
        why_not(by_outcome(outcome::RANKED_BELOW_CUT)).await.stage,
        Some(FellOut::RankedBelowCut)
    );
    assert_eq!(
        why_not(by_outcome(outcome::BELOW_RERANK_POOL)).await.stage,
        Some(FellOut::RankedBelowCut)
    );
    assert_eq!(why_not(by_outcome("rerank:mmr")).await.stage, Some(FellOut::Diversity));
    assert_eq!(why_not("no-such-item".into()).await.stage, Some(FellOut::NotInIndex));
    assert_eq!(why_not(served[3].to_string()).await.stage, Some(FellOut::Served));
    if let Some(seen) = full.filtered_seen.first() {
        assert_eq!(why_not(seen.clone()).await.stage, Some(FellOut::FilteredSeen));
    }
    // Titles of the served items, as the gateway gave them; unknown ids left out.
    let ids: Vec<&str> = debug.items.iter().map(|i| i.item_id.as_str()).collect();
    let (status, body) = get(api.clone(), format!("/v1/items?ids={},no-such-item", ids.join(","))).await;
    assert_eq!(status, 200, "{body}");
    let titles: Value = serde_json::from_str(&body).unwrap();
    for it in &debug.items {
        assert!(!it.title.is_empty());
        assert_eq!(titles["titles"][&it.item_id], it.title.as_str(), "{body}");
    }
    assert_eq!(titles["titles"].as_object().unwrap().len(), debug.items.len(), "{body}");
    // A summary trace says plainly that it cannot tell.
    let below = by_outcome(outcome::RANKED_BELOW_CUT);
    if !plain.items.iter().any(|i| i.item_id == below) {
        let (_, body) = get(api.clone(), format!("/v1/traces/{}/why-not/{below}", plain.request_id)).await;
        let answer: WhyNot = serde_json::from_str(&body).unwrap();
        assert_eq!(answer.stage, None);
        assert!(answer.explanation.contains("summary trace"), "{}", answer.explanation);
    }

    // Aggregates over the last hour.
    let (status, body) = get(api.clone(), "/v1/aggregates?interval=1m".into()).await;
    assert_eq!(status, 200, "{body}");
    let agg: Aggregates = serde_json::from_str(&body).unwrap();
    assert_eq!(agg.requests, requests);
    let per_level: u64 = agg.levels_over_time.iter().flat_map(|b| b.levels.values()).sum();
    assert_eq!(per_level, requests);
    assert!(agg.channels.contains_key(channel.name()), "{:?}", agg.channels);
    assert_eq!(agg.stages["rerank"].count, requests);

    // Bad parameters name the field; unknown requests are 404s.
    let (status, body) = get(api.clone(), "/v1/traces?size=1000".into()).await;
    assert_eq!(status, 400);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["field"], "size");
    let (status, _) = get(api.clone(), "/v1/traces/no-such-request".into()).await;
    assert_eq!(status, 404);

    // Metrics: the writer's in the gateway, the API's in the query service.
    let (_, metrics) = get(stack.get("gateway").http.to_string(), "/metrics".into()).await;
    assert!(
        metrics.contains(&format!("recstack_gateway_trace_writer_written_total {requests}")),
        "{metrics}"
    );
    // What writing the traces cost the gateway's process (the embedded store's writer thread).
    let store_cpu = common::metric_value(&metrics, "recstack_gateway_trace_writer_store_cpu_seconds_total");
    assert!(store_cpu > 0.0 && store_cpu < 60.0, "{store_cpu}");
    let (_, metrics) = get(api.clone(), "/metrics".into()).await;
    assert!(
        metrics.contains("recstack_trace_api_requests_total{status=\"400\"} 1"),
        "{metrics}"
    );
    stack.stop().await.unwrap();
}

/// Stopping the stack flushes the writer: every trace offered is in the store afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopping_the_stack_flushes_the_traces() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("traces.sqlite");
    let stack = start(&file).await;
    let mut ids = Vec::new();
    for user in ["1", "2", "3", "4", "5"] {
        ids.push(common::recommend(&stack, user, false).await.request_id);
    }
    stack.stop().await.unwrap();
    let store = recstack_trace_store::embedded::EmbeddedStore::open(&file).unwrap();
    use recstack_trace_store::store::TraceStore;
    for id in ids {
        assert!(store.get(&id).await.unwrap().is_some(), "{id} lost at shutdown");
    }
}

/// Read-your-trace: a trace asked for the moment its response arrives is answered (the
/// query API waits for a trace this young instead of a 404), summary and full alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trace_is_readable_as_soon_as_its_response_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(&dir.path().join("traces.sqlite")).await;
    let api = stack.get("traces").http.to_string();
    for (k, user) in (1..=12).map(|u| u.to_string()).enumerate() {
        let debug = k % 3 == 0;
        let r = common::recommend(&stack, &user, debug).await;
        let (status, body) = get(api.clone(), format!("/v1/traces/{}", r.request_id)).await;
        assert_eq!(status, 200, "{user}: {body}");
        let t: recstack_trace_store::Trace = serde_json::from_str(&body).unwrap();
        assert_eq!(t.request_id, r.request_id);
        assert_eq!(t.detail, if debug { Detail::Full } else { Detail::Summary });
        let served: Vec<&str> = r.items.iter().map(|i| i.item_id.as_str()).collect();
        let traced: Vec<&str> = t.items.iter().map(|i| i.item_id.as_str()).collect();
        assert_eq!(traced, served);
    }
    // An id the gateway never issued is still a 404.
    let (status, _) = get(api.clone(), "/v1/traces/000000000000-000001".into()).await;
    assert_eq!(status, 404);
    stack.stop().await.unwrap();
}

/// W3C trace context: a caller's `traceparent` names the request's trace, and every internal
/// call the request makes carries it over the wire (gRPC links), counted by each service.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_callers_trace_context_reaches_every_internal_call() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = common::traced_stack(&dir.path().join("traces.sqlite"), None);
    opts.direct_links = false;
    let stack = serve::start_local(common::artifact_root(), opts).await.unwrap();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/recommend", stack.get("gateway").http))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .header("content-type", "application/json")
        .body(r#"{"user_id": "1", "n": 10}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let r: recstack_services::gateway::Recommendation = response.json().await.unwrap();
    assert_eq!(
        (r.trace_id.as_str(), r.level.as_str()),
        (trace_id, "full"),
        "{:?}",
        r.degraded
    );
    let t = common::stored_trace(&stack.get("traces").http.to_string(), &r.request_id).await;
    assert_eq!(t.trace_id, trace_id);
    for (service, rpc) in [
        ("features", "get_user"),
        ("recall", "recall"),
        ("ranking", "rank"),
        ("rerank", "rerank"),
    ] {
        let (_, metrics) = get(stack.get(service).http.to_string(), "/metrics".into()).await;
        let line = format!("recstack_{service}_traced_requests_total{{rpc=\"{rpc}\"}} 1");
        assert!(metrics.contains(&line), "{service}: no {line} in\n{metrics}");
    }
    // A request without one still carries the trace the gateway started.
    common::recommend(&stack, "2", false).await;
    let (_, metrics) = get(stack.get("recall").http.to_string(), "/metrics".into()).await;
    assert!(
        metrics.contains("recstack_recall_traced_requests_total{rpc=\"recall\"} 2"),
        "{metrics}"
    );
    stack.stop().await.unwrap();
}
