//! What-if replays and comparisons on a real local stack: a stored request replayed with an
//! item blocked, items forced in, another degradation level, a model that is not loaded, and
//! the user's seen items now or as recorded;
//! each replay's trace records what it changed, and the query API's comparison names, for
//! every item, how it moved and the stage that made it.

mod common;

use std::collections::HashSet;

use recstack_services::serve;
use recstack_trace_store::Trace;
use recstack_trace_store::access::DEBUG_TOKEN_HEADER;
use recstack_trace_store::compare::{Change, Comparison};
use serde_json::{Value, json};

/// `POST /v1/recommend` with `body` as a trusted caller: status and JSON.
async fn post(gateway: String, body: Value) -> (u16, Value) {
    tokio::task::spawn_blocking(move || {
        let headers = [(DEBUG_TOKEN_HEADER, common::TEST_DEBUG)];
        let (status, _, text) = common::http_with(&gateway, "POST", "/v1/recommend", &headers, &body.to_string());
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    })
    .await
    .unwrap()
}

/// A replay as a trusted caller: its answer (asserted a 200) and its stored trace.
async fn replayed(gateway: &str, api: &str, body: Value) -> (Value, Trace) {
    let (status, r) = post(gateway.to_string(), body).await;
    assert_eq!(status, 200, "{r}");
    let t = common::stored_trace(api, r["request_id"].as_str().unwrap()).await;
    (r, t)
}

/// The comparison of two stored requests from the query API.
async fn compare(api: String, a: &str, b: &str) -> Comparison {
    let path = format!("/v1/compare?a={a}&b={b}");
    let (status, text) = tokio::task::spawn_blocking(move || common::http_get(&api, &path))
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn served(t: &Trace) -> Vec<String> {
    let mut items = t.items.clone();
    items.sort_by_key(|i| i.position);
    items.into_iter().map(|i| i.item_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replays_change_one_thing_and_the_comparison_names_what_moved() {
    let dir = tempfile::tempdir().unwrap();
    let opts = common::traced_stack(&dir.path().join("traces.sqlite"), None);
    let stack = serve::start_local(common::artifact_root(), opts).await.unwrap();
    let (gateway, api) = (
        stack.get("gateway").http.to_string(),
        stack.get("traces").http.to_string(),
    );
    let loaded = serve::load_artifacts(common::artifact_root()).unwrap();
    let user = loaded.artifacts.users[common::active_user(&loaded.artifacts) as usize].clone();

    // The original: a debug request, stored in full.
    let original = common::recommend(&stack, &user, true).await;
    let a = common::stored_trace(&api, &original.request_id).await;
    let a_served = served(&a);
    assert_eq!(a_served.len(), 10);
    let replay = |what_if: Value| json!({"user_id": user, "n": 10, "what_if": what_if});

    // 1. Block the first item served: it leaves, by a business rule; the rest move up or stay.
    let blocked = a_served[0].clone();
    let (_, b) = replayed(
        &gateway,
        &api,
        replay(json!({"replay_of": a.request_id, "block": [blocked]})),
    )
    .await;
    let what_if = b.what_if.clone().expect("the replay records what it changed");
    assert_eq!(
        (what_if.replay_of.as_str(), what_if.block.clone()),
        (a.request_id.as_str(), vec![blocked.clone()])
    );
    assert!(b.explained, "a replay is traced in full and explained");
    assert!(!served(&b).contains(&blocked));
    let c = compare(api.clone(), &a.request_id, &b.request_id).await;
    let row = c.rows.iter().find(|m| m.item_id == blocked).unwrap();
    assert_eq!(
        (row.change, row.stage.as_deref()),
        (Change::Left, Some("business_rule")),
        "{}",
        row.explanation
    );
    assert_eq!(
        c.b.what_if.as_ref().map(|w| w.replay_of.as_str()),
        Some(a.request_id.as_str())
    );
    // Every row agrees with the two lists.
    let b_served = served(&b);
    for m in &c.rows {
        let pa = a_served.iter().position(|i| *i == m.item_id).map(|p| p as u32);
        let pb = b_served.iter().position(|i| *i == m.item_id).map(|p| p as u32);
        assert_eq!((m.a, m.b), (pa, pb), "{}", m.item_id);
        if let (Some(x), Some(y)) = (pa, pb) {
            assert_eq!(m.by, i64::from(x) - i64::from(y));
        }
        if m.change != Change::Same {
            assert!(m.stage.is_some(), "{m:?}");
        }
    }
    let union: HashSet<&String> = a_served.iter().chain(&b_served).collect();
    assert_eq!(c.rows.len(), union.len());
    assert_eq!(c.totals.left + c.totals.overlap, 10);
    assert_eq!(c.totals.entered, c.totals.left, "ten served either way");

    // 2. Force in items recall did not rank within the model's reach: they are ranked (and
    //    served only if they earn it), and the replay's trace says so.
    let below: Vec<String> = a
        .candidates
        .iter()
        .filter(|c| c.outcome == recstack_trace_store::outcome::RANKED_BELOW_CUT)
        .take(3)
        .map(|c| c.item_id.clone())
        .collect();
    assert_eq!(below.len(), 3, "candidates below the model's cut");
    let (_, f) = replayed(
        &gateway,
        &api,
        replay(json!({"replay_of": a.request_id, "force_items": below})),
    )
    .await;
    let stage = f
        .stages
        .iter()
        .find(|s| s.name == "what_if")
        .expect("the what_if stage");
    assert_eq!((stage.items_in, stage.outcome.as_str()), (3, "ok"));
    for id in &below {
        let fate = f.candidates.iter().find(|c| &c.item_id == id).unwrap();
        assert!(fate.rank_score.is_some(), "{id} was ranked: {fate:?}");
        assert_ne!(fate.outcome, recstack_trace_store::outcome::RANKED_BELOW_CUT, "{id}");
    }
    let c = compare(api.clone(), &a.request_id, &f.request_id).await;
    for m in c.rows.iter().filter(|m| m.change == Change::Entered) {
        assert!(m.stage.is_some(), "{m:?}");
    }

    // 3. The popular level: recall skipped and said so; every item that left is explained by
    //    the replay's trace (where it fell out there).
    let (r, p) = replayed(
        &gateway,
        &api,
        replay(json!({"replay_of": a.request_id, "level": "popular"})),
    )
    .await;
    assert_eq!(r["level"], "popular");
    assert!(
        p.degraded.iter().any(|d| d == "what-if: started at the popular level"),
        "{:?}",
        p.degraded
    );
    assert!(
        p.stages
            .iter()
            .any(|s| s.name == "recall" && s.outcome.starts_with("skipped"))
    );
    let c = compare(api.clone(), &a.request_id, &p.request_id).await;
    assert_eq!(c.b.level, "popular");
    for m in c.rows.iter().filter(|m| m.change == Change::Left) {
        assert!(m.stage.is_some(), "{m:?}");
    }

    // 4. A model that is not loaded: ranking fails and says why; the list still comes.
    let (_, m) = replayed(
        &gateway,
        &api,
        replay(json!({"replay_of": a.request_id, "model": "canary"})),
    )
    .await;
    let ranking = m.stages.iter().find(|s| s.name == "ranking").unwrap();
    assert!(
        ranking.outcome.starts_with("failed") && ranking.outcome.contains("no canary model is loaded"),
        "{}",
        ranking.outcome
    );
    assert_eq!(m.items.len(), 10);

    // 5. Another rule set: an item A ranked but did not serve pinned to the top, and MMR's
    //    trade-off at pure score (1.0): it is served first by the pin, and MMR moves nothing
    //    into the list.
    let pinned = a
        .candidates
        .iter()
        .find(|c| c.rank_score.is_some() && c.outcome != recstack_trace_store::outcome::SERVED)
        .map(|c| c.item_id.clone())
        .expect("a ranked candidate not served");
    let (_, p) = replayed(
        &gateway,
        &api,
        replay(json!({"replay_of": a.request_id, "mmr_lambda": 1.0,
            "pins": [{"item_id": pinned, "position": 0}]})),
    )
    .await;
    let top = p.items.iter().find(|i| i.position == 0).unwrap();
    assert_eq!(
        (top.item_id.as_str(), top.rerank_rule.as_deref()),
        (pinned.as_str(), Some("pin"))
    );
    assert!(
        p.items.iter().all(|i| i.rerank_rule.as_deref() != Some("mmr")),
        "λ = 1: MMR serves nothing out of score order"
    );
    let c = compare(api.clone(), &a.request_id, &p.request_id).await;
    let row = c.rows.iter().find(|m| m.item_id == pinned).unwrap();
    assert_eq!((row.change, row.b), (Change::Entered, Some(0)));
    assert!(row.stage.is_some(), "{}", row.explanation);
    assert!(
        c.b.what_if
            .as_ref()
            .unwrap()
            .changes()
            .contains(&format!("pin {pinned} at 1"))
    );

    // 6. The user's state now or as recorded: after the original, the user is shown its first
    //    item (an impression in the seen filter). Replayed now, the seen filter removes it;
    //    replayed with the seen items as recorded (A's, which lack it), it is not filtered.
    let shown = a_served[0].clone();
    assert_eq!(common::record_impressions(&stack, &user, vec![shown.clone()]).await, 1);
    let (_, now) = replayed(&gateway, &api, replay(json!({"replay_of": a.request_id}))).await;
    assert!(now.filtered_seen.contains(&shown), "the seen filter now holds {shown}");
    let c = compare(api.clone(), &a.request_id, &now.request_id).await;
    let row = c.rows.iter().find(|m| m.item_id == shown).unwrap();
    assert_eq!(
        (row.change, row.stage.as_deref()),
        (Change::Left, Some("filtered_seen")),
        "{}",
        row.explanation
    );
    let (_, then) = replayed(
        &gateway,
        &api,
        replay(json!({"replay_of": a.request_id, "seen": a.filtered_seen})),
    )
    .await;
    assert_eq!(
        then.seen_filter.as_deref(),
        Some(format!("as recorded: {} items", a.filtered_seen.len()).as_str())
    );
    assert!(!then.filtered_seen.contains(&shown));
    assert_eq!(
        then.what_if.as_ref().and_then(|w| w.seen.clone()),
        Some(a.filtered_seen.clone())
    );
    assert!(served(&then).contains(&shown), "as recorded, {shown} is served again");

    // Bad what-ifs: 400 naming the field.
    for (what_if, field) in [
        (json!({"replay_of": a.request_id, "level": "fastest"}), "what_if.level"),
        (json!({"replay_of": ""}), "what_if.replay_of"),
        (json!({"replay_of": a.request_id, "model": "newest"}), "what_if.model"),
        (
            json!({"replay_of": a.request_id, "force_items": ["ok", ""]}),
            "what_if.force_items[1]",
        ),
        (
            json!({"replay_of": a.request_id, "force_items": vec!["x"; 51]}),
            "what_if.force_items",
        ),
        (json!({"replay_of": a.request_id, "forced": ["x"]}), "what_if.forced"),
        (
            json!({"replay_of": a.request_id, "mmr_lambda": 1.5}),
            "what_if.mmr_lambda",
        ),
        (
            json!({"replay_of": a.request_id, "pins": [{"item_id": "x", "position": 100}]}),
            "what_if.pins[0].position",
        ),
        (
            json!({"replay_of": a.request_id, "pins": [{"item_id": "", "position": 0}]}),
            "what_if.pins[0].item_id",
        ),
    ] {
        let (status, body) = post(gateway.clone(), replay(what_if.clone())).await;
        assert_eq!(status, 400, "{what_if}: {body}");
        assert!(
            body["field"].as_str().unwrap_or_default().starts_with(field),
            "{what_if}: {body}"
        );
    }
    stack.stop().await.unwrap();
}

/// The user's real-time items now or as recorded: a request's trace records the items recall
/// read from the stream's store; after the user plays the request's first served item, a
/// replay now consumes it (not served), and a replay with the real-time items as recorded puts
/// back the history the request had, so that item is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_reads_the_real_time_items_now_or_as_recorded() {
    use recstack_core::stream::window::WindowConfig;
    use recstack_services::serve::LocalEvents;
    let dir = tempfile::tempdir().unwrap();
    let mut opts = common::traced_stack(&dir.path().join("traces.sqlite"), None);
    opts.events = Some(LocalEvents {
        log_dir: dir.path().join("log"),
        partitions: 1,
        window: WindowConfig::default(),
    });
    let stack = serve::start_local(common::artifact_root(), opts).await.unwrap();
    let (gateway, api, ingest) = (
        stack.get("gateway").http.to_string(),
        stack.get("traces").http.to_string(),
        stack.get("ingest").http.to_string(),
    );
    let loaded = serve::load_artifacts(common::artifact_root()).unwrap();
    let a = &loaded.artifacts;
    let user_ix = common::active_user(a);
    let user = a.users[user_ix as usize].clone();
    // Plays `item` and waits until a debug request's trace reads it first among the user's
    // real-time items; returns that trace.
    let play = |item: String, id: &'static str| {
        let (gateway, api, ingest, user) = (gateway.clone(), api.clone(), ingest.clone(), user.clone());
        async move {
            let body = json!({"events": [{"event_id": id, "user_id": user, "item_id": item, "kind": "play"}]});
            let (status, text) =
                tokio::task::spawn_blocking(move || common::http_post(&ingest, "/v1/events", &body.to_string()))
                    .await
                    .unwrap();
            assert_eq!(status, 200, "{text}");
            for _ in 0..200 {
                let (_, t) = replayed(&gateway, &api, json!({"user_id": user, "n": 10, "debug": true})).await;
                if t.realtime_history.first() == Some(&item) {
                    return t;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            panic!("{item} never reached recall's real-time read");
        }
    };

    // A long-tail item the user has not rated: played before the original request.
    let first = a.items[common::long_tail_item(a, user_ix) as usize].id.clone();
    let original = play(first.clone(), "rt-1").await;
    assert_eq!(original.realtime_history, vec![first.clone()], "recorded in the trace");
    assert!(!served(&original).contains(&first), "a played item is not served back");

    // Then the user plays the original's first served item.
    let top = served(&original)[0].clone();
    let later = play(top.clone(), "rt-2").await;
    assert_eq!(later.realtime_history, vec![top.clone(), first.clone()], "newest first");
    assert!(!served(&later).contains(&top));

    let replay = |what_if: Value| json!({"user_id": user, "n": 10, "what_if": what_if});
    // Now: both plays are read, and the later one is consumed.
    let (_, now) = replayed(&gateway, &api, replay(json!({"replay_of": original.request_id}))).await;
    assert_eq!(now.realtime_history, vec![top.clone(), first.clone()]);
    assert!(!served(&now).contains(&top), "played since: consumed now");
    assert_eq!(now.what_if.as_ref().unwrap().realtime_history, None);
    // As recorded: the original's real-time items only, so its first item is served again.
    let (_, then) = replayed(
        &gateway,
        &api,
        replay(json!({"replay_of": original.request_id, "realtime_history": original.realtime_history})),
    )
    .await;
    assert_eq!(
        then.realtime_history,
        vec![first.clone()],
        "what recall used, as recorded"
    );
    assert!(!served(&then).contains(&first), "the recorded play is still consumed");
    // Explained, each lists its real-time items first in the history: now with the plays'
    // times, as recorded without (a trace keeps the ids only).
    let head = |t: &Trace| t.consumed.first().map(|c| (c.item_id.clone(), c.at_ms.is_some()));
    assert_eq!(head(&now), Some((top.clone(), true)));
    assert_eq!(head(&then), Some((first.clone(), false)));
    assert!(
        served(&then).contains(&top),
        "as recorded, {top} is served again: {:?}",
        served(&then)
    );
    let what_if = then.what_if.as_ref().unwrap();
    assert_eq!(what_if.realtime_history, Some(vec![first.clone()]));
    assert!(
        what_if.changes().contains("real-time items as recorded (1)"),
        "{}",
        what_if.changes()
    );
    let c = compare(api.clone(), &now.request_id, &then.request_id).await;
    let row = c.rows.iter().find(|m| m.item_id == top).unwrap();
    assert_eq!(row.change, Change::Entered, "{}", row.explanation);

    // Bad real-time items: 400 naming the field.
    for (items, field) in [
        (json!(vec!["x"; 51]), "what_if.realtime_history"),
        (json!(["ok", " "]), "what_if.realtime_history[1]"),
    ] {
        let (status, r) = post(
            gateway.clone(),
            replay(json!({"replay_of": original.request_id, "realtime_history": items})),
        )
        .await;
        assert_eq!((status, r["field"].as_str()), (400, Some(field)), "{r}");
    }
    stack.stop().await.unwrap();
}
