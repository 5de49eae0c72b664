//! Why-not for every exit, on real requests: the local stack's gateway serves debug requests
//! (full traces, recall explaining its cuts), the traces go through the writer into the
//! embedded store, and the query API answers why-not — each exit's stage and numbers checked
//! against the artifacts the stack serves, not against the trace alone.

mod common;

use std::collections::HashSet;
use std::path::Path;

use recstack_core::degrade::LevelPlan;
use recstack_core::recall::{self, Channel, DEFAULT_QUOTA};
use recstack_services::gateway::Recommendation;
use recstack_services::recall::EXPLAIN_DEPTH;
use recstack_services::serve::{self, LocalStack};
use recstack_trace_store::explain::{FellOut, WhyNot};
use recstack_trace_store::{Trace, cut, outcome};

/// The stack: the full level leaves the tag channel off (so an item only it ranks shows the
/// switched-off exit) and asks recall for [`CANDIDATES`] (fewer than the six channels' quotas
/// hold, so the merge cuts); rerank blocks `blocked`.
async fn start(trace_file: &Path, blocked: &[String]) -> LocalStack {
    let mut opts = common::traced_stack(trace_file, None);
    let mut full = LevelPlan::full();
    full.quotas.insert("tag".into(), 0);
    full.candidates = CANDIDATES;
    opts.gateway.full = full;
    opts.rerank.blocked = blocked.iter().cloned().collect();
    serve::start_local(common::artifact_root(), opts).await.unwrap()
}

const CANDIDATES: u32 = 600;

async fn why_not(api: &str, request_id: &str, item: &str) -> WhyNot {
    let (addr, path) = (api.to_string(), format!("/v1/traces/{request_id}/why-not/{item}"));
    let (status, body) = tokio::task::spawn_blocking(move || common::http_get(&addr, &path))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A debug request and its stored (full) trace.
async fn traced(stack: &LocalStack, user: &str) -> (Recommendation, Trace) {
    let r = common::recommend(stack, user, true).await;
    let t = common::stored_trace(&stack.get("traces").http.to_string(), &r.request_id).await;
    (r, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn why_not_names_every_exit_with_its_numbers() {
    let loaded = serve::load_artifacts(common::artifact_root()).unwrap();
    let a = &loaded.artifacts;
    let u = common::active_user(a);
    let user = a.users[u as usize].clone();
    let dir = tempfile::tempdir().unwrap();

    // A first stack only to learn what this user is served: its second item is blocked in
    // the stack the rest runs on (the same artifacts and model give it the same scores).
    let first = start(&dir.path().join("first.sqlite"), &[]).await;
    let (r0, _) = traced(&first, &user).await;
    first.stop().await.unwrap();
    let blocked = r0.items[1].item_id.clone();
    let mut stack = start(&dir.path().join("traces.sqlite"), std::slice::from_ref(&blocked)).await;
    let api = stack.get("traces").http.to_string();

    // The user is shown the first item; the next request filters it as seen.
    let shown = r0.items[0].item_id.clone();
    let before = recstack_core::events::now_ms();
    assert_eq!(common::record_impressions(&stack, &user, vec![shown.clone()]).await, 1);
    let after = recstack_core::events::now_ms();
    let (r, t) = traced(&stack, &user).await;
    assert_eq!(r.level, "full", "{:?}", r.degraded);
    assert_eq!(t.artifact_version.as_deref(), Some(stack.artifact_version.as_str()));
    assert_eq!(t.seen_filter.as_deref(), Some("applied"));
    let ask = |item: String| {
        let (api, id) = (api.clone(), r.request_id.clone());
        async move { why_not(&api, &id, &item).await }
    };

    // Served, and not in the catalogue.
    let w = ask(r.items[4].item_id.clone()).await;
    assert_eq!((w.stage, w.evidence.rank), (Some(FellOut::Served), Some(5)));
    assert_eq!(ask("no-such-item".into()).await.stage, Some(FellOut::NotInIndex));

    // Already consumed: when, from the build's history.
    let (item, ts) = (a.history[u as usize][3], a.history_times[u as usize][3]);
    let w = ask(a.items[item as usize].id.clone()).await;
    assert_eq!(w.stage, Some(FellOut::Consumed), "{}", w.explanation);
    assert_eq!(w.evidence.at_ms, Some(ts * 1000));
    assert_eq!(t.consumed_total, Some(a.history[u as usize].len() as u32));

    // Seen: within the time the impression was recorded.
    let w = ask(shown.clone()).await;
    assert_eq!(w.stage, Some(FellOut::FilteredSeen), "{}", w.explanation);
    let (since, at) = (w.evidence.since_ms.unwrap(), w.evidence.at_ms.unwrap());
    assert!(
        before <= since && since <= at && at <= after,
        "{since}..{at} not in {before}..{after}"
    );

    // Past a channel's quota: the rank the channel really gives it.
    let depth = DEFAULT_QUOTA + EXPLAIN_DEPTH;
    let rank_in = |channel: &str, item: &str| {
        let list = recall::channel(a, Channel::parse(channel).unwrap(), u, depth);
        list.items
            .iter()
            .position(|(i, _)| a.items[*i as usize].id == item)
            .map(|p| p as u32 + 1)
    };
    let quota_cut = t.cuts.iter().find(|c| c.reason == cut::QUOTA).expect("a quota cut");
    let w = ask(quota_cut.item_id.clone()).await;
    assert_eq!(w.stage, Some(FellOut::QuotaCut), "{}", w.explanation);
    let channel = w.evidence.channel.clone().unwrap();
    let rank = w.evidence.rank.unwrap();
    assert_eq!(w.evidence.cut, Some(DEFAULT_QUOTA as u32));
    assert!(rank > DEFAULT_QUOTA as u32, "{rank}");
    assert_eq!(rank_in(&channel, &quota_cut.item_id), Some(rank));

    // Switched off at this level: the rank the tag channel would have given it.
    let off = t
        .cuts
        .iter()
        .find(|c| c.reason == cut::CHANNEL_OFF)
        .expect("a tag-only item");
    let w = ask(off.item_id.clone()).await;
    assert_eq!(w.stage, Some(FellOut::ChannelSkipped), "{}", w.explanation);
    assert_eq!(w.evidence.channel.as_deref(), Some("tag"));
    assert_eq!(rank_in("tag", &off.item_id), w.evidence.rank);
    assert!(
        w.explanation.contains("switched off at the full level"),
        "{}",
        w.explanation
    );
    let tag = t.channels.iter().find(|c| c.channel == "tag").unwrap();
    assert_eq!(
        (tag.quota, tag.outcome.as_str()),
        (Some(0), "skipped: switched off at the full level")
    );

    // Past the merge's cut: recall answers CANDIDATES.
    let merge_cut = t.cuts.iter().find(|c| c.reason == cut::MERGE).expect("a merge cut");
    let w = ask(merge_cut.item_id.clone()).await;
    assert_eq!(w.stage, Some(FellOut::MergeCut), "{}", w.explanation);
    assert_eq!(w.evidence.cut, Some(CANDIDATES));
    assert!(w.evidence.rank.unwrap() > CANDIDATES, "{:?}", w.evidence);
    assert_eq!(t.funnel.as_ref().map(|f| f.candidates), Some(CANDIDATES));

    // Not recalled: no channel that ran ranks it, even past its quota.
    let traced_ids: HashSet<&str> = t
        .candidates
        .iter()
        .map(|c| c.item_id.as_str())
        .chain(t.cuts.iter().map(|c| c.item_id.as_str()))
        .chain(t.consumed.iter().map(|c| c.item_id.as_str()))
        .chain(t.filtered_seen.iter().map(String::as_str))
        .collect();
    let absent = a.items.iter().find(|i| !traced_ids.contains(i.id.as_str())).unwrap();
    let w = ask(absent.id.clone()).await;
    assert_eq!(w.stage, Some(FellOut::NotRecalled), "{}", w.explanation);
    for c in ["item_cf", "user_cf", "hot", "als", "vector"] {
        assert_eq!(rank_in(c, &absent.id), None, "{c} ranks {}", absent.id);
    }

    // Ranked below each cut, with its score against the cut's.
    let fate = |o: &str| t.candidates.iter().find(|c| c.outcome == o).unwrap().item_id.clone();
    let w = ask(fate(outcome::RANKED_BELOW_CUT)).await;
    assert_eq!(w.stage, Some(FellOut::RankedBelowCut));
    assert_eq!(w.evidence.cut, Some(500));
    assert!(w.evidence.rank.unwrap() > 500, "{:?}", w.evidence);
    assert!(
        w.evidence.score.unwrap() <= w.evidence.cut_score.unwrap(),
        "{:?}",
        w.evidence
    );
    let w = ask(fate(outcome::BELOW_RERANK_POOL)).await;
    assert_eq!((w.stage, w.evidence.cut), (Some(FellOut::RankedBelowCut), Some(200)));
    assert!(w.evidence.rank.unwrap() > 200, "{:?}", w.evidence);
    assert!(
        w.evidence.score.unwrap() <= w.evidence.cut_score.unwrap(),
        "{:?}",
        w.evidence
    );
    if t.candidates.iter().any(|c| c.outcome == outcome::NOT_SERVED) {
        let w = ask(fate(outcome::NOT_SERVED)).await;
        assert_eq!((w.stage, w.evidence.cut), (Some(FellOut::RankedBelowCut), Some(10)));
        assert!(
            w.evidence.score.unwrap() <= w.evidence.cut_score.unwrap(),
            "{:?}",
            w.evidence
        );
    }

    // The business rule, by name.
    let w = ask(blocked.clone()).await;
    assert_eq!(w.stage, Some(FellOut::BusinessRule), "{}", w.explanation);
    assert_eq!(w.evidence.rule.as_deref(), Some("block_list"));

    // Diversity: the rule, and a served item that took its place.
    let dropped = t
        .candidates
        .iter()
        .find(|c| c.outcome == "rerank:mmr" || c.outcome == "rerank:category_scatter")
        .expect("a diversity removal");
    let w = ask(dropped.item_id.clone()).await;
    assert_eq!(w.stage, Some(FellOut::Diversity), "{}", w.explanation);
    let instead = w.evidence.displaced_by.clone().expect("what displaced it");
    assert!(r.items.iter().any(|i| i.item_id == instead), "{instead} was served");

    // Every stage ran, in order, with its counts.
    let names: Vec<&str> = t.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["features", "recall", "ranking", "rerank"]);
    assert!(t.stages.iter().all(|s| s.outcome == "ok"), "{:?}", t.stages);

    // Recall down: its stage failed, each channel says so, ranking says why it was skipped,
    // and why-not names the failed stage.
    stack.stop_one("recall").await.unwrap();
    let (r, t) = traced(&stack, &user).await;
    assert_eq!(r.level, "popular", "{:?}", r.degraded);
    let stage = |name: &str| t.stages.iter().find(|s| s.name == name).unwrap().clone();
    assert!(stage("recall").outcome.starts_with("failed: "), "{:?}", t.stages);
    assert_eq!(stage("popular").outcome, "ok");
    assert_eq!(stage("popular").items_out, t.candidates.len() as u32);
    assert_eq!(
        stage("ranking").outcome,
        "skipped: the popular level orders the hot list by hot score"
    );
    assert_eq!(stage("rerank").outcome, "ok");
    let failed: Vec<&str> = t
        .channels
        .iter()
        .filter(|c| c.outcome.starts_with("failed: recall "))
        .map(|c| c.channel.as_str())
        .collect();
    assert_eq!(
        failed,
        ["item_cf", "user_cf", "hot", "als", "vector", "cooc"],
        "{:?}",
        t.channels
    );
    let considered: HashSet<&str> = t
        .candidates
        .iter()
        .map(|c| c.item_id.as_str())
        .chain(t.consumed.iter().map(|c| c.item_id.as_str()))
        .collect();
    let elsewhere = a.items.iter().find(|i| !considered.contains(i.id.as_str())).unwrap();
    let w = why_not(&api, &r.request_id, &elsewhere.id).await;
    assert_eq!(w.stage, Some(FellOut::ChannelSkipped), "{}", w.explanation);
    assert_eq!(w.evidence.stage.as_deref(), Some("recall"));
    assert!(w.evidence.outcome.unwrap().starts_with("failed: "));
    stack.stop().await.unwrap();
}
