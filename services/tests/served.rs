//! What `recstack eval` scores as "served": the local stack forced to a level, asked through
//! the gateway for held-out users (`serve::served`), then scored like recall's lists.

mod common;

use std::collections::HashSet;

use recstack_offline::build;
use recstack_offline::eval::{self, Catalogue, Truth};
use recstack_services::ranking::service::ModelSources;
use recstack_services::serve::served::{Setting, serve_lists};

fn model() -> ModelSources {
    ModelSources::cpu(recstack_core::source_file("models/gbdt/model.onnx"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_setting_serves_its_level_and_the_lists_score_like_recalls() {
    let root = common::artifact_root();
    let (_, a) = build::load(root, None).unwrap();
    let truth = Truth::of(&a);
    // 40 held-out users, spread over the id range.
    let picked: Vec<usize> = (0..truth.len()).step_by(truth.len() / 40).take(40).collect();
    let users: Vec<String> = picked
        .iter()
        .map(|&k| a.users[truth.users[k] as usize].clone())
        .collect();
    let sub = Truth {
        users: picked.iter().map(|&k| truth.users[k]).collect(),
        items: picked.iter().map(|&k| truth.items[k].clone()).collect(),
    };
    let index = eval::item_index(&a);
    let hot: Vec<u32> = a.hot.iter().map(|h| h.0).collect();

    let names: Vec<String> = Setting::standard().iter().map(|s| s.name.clone()).collect();
    assert_eq!(
        names,
        [
            "full",
            "full, no MMR",
            "reduced",
            "popular",
            "popular, no MMR",
            "fallback"
        ]
    );
    for setting in [Setting::at("full"), Setting::at("popular").without_mmr()] {
        let done = std::sync::atomic::AtomicUsize::new(0);
        let answers = serve_lists(root, model(), &setting, &users, 20, |k| {
            done.store(k, std::sync::atomic::Ordering::Relaxed)
        })
        .await
        .unwrap();
        assert_eq!(done.into_inner(), users.len(), "progress reached every user");
        assert_eq!(answers.len(), users.len());
        let mut lists = Vec::new();
        for (answer, &user) in answers.iter().zip(&sub.users) {
            assert_eq!(answer.level, setting.level, "{}: {answer:?}", setting.name);
            assert_eq!(answer.items.len(), 20, "{answer:?}");
            let ids: Vec<u32> = answer.items.iter().map(|i| index[i.as_str()]).collect();
            let history: HashSet<u32> = a.history[user as usize].iter().copied().collect();
            let distinct: HashSet<u32> = ids.iter().copied().collect();
            assert_eq!(distinct.len(), 20, "no item twice: {answer:?}");
            if setting.level == "popular" {
                // The hot list minus the user's recent items (rerank's genre scatter may swap
                // neighbours, so: the same head, and nothing from far down the list).
                let recent: HashSet<u32> = a.user_features[user as usize].recent_items.iter().copied().collect();
                let expected: Vec<u32> = hot.iter().copied().filter(|i| !recent.contains(i)).take(40).collect();
                assert_eq!(ids[0], expected[0], "user {user}");
                assert!(
                    ids.iter().all(|i| expected.contains(i)),
                    "user {user}: {ids:?} against {expected:?}"
                );
            } else {
                assert!(
                    ids.iter().all(|i| !history.contains(i)),
                    "nothing the user rated: {answer:?}"
                );
            }
            lists.push(ids);
        }
        let scored = eval::score(&setting.name, &lists, &sub, &Catalogue::of(&a));
        assert_eq!(scored.ndcg_20.len(), users.len());
        assert!(scored.recall_200.is_none(), "served lists are 20 long");
        let hits: usize = lists
            .iter()
            .zip(&sub.items)
            .map(|(l, t)| l.iter().filter(|i| t.contains(i)).count())
            .sum();
        assert!(
            hits > 0,
            "{}: no held-out item among {} users' lists",
            setting.name,
            users.len()
        );
    }
}

/// A scatter setting reaches rerank: with at most one item of a genre in any three slots, the
/// served lists break that rule far less often than the same level without scatter (rerank
/// still fills a slot when nothing fits, so not never).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scatter_setting_spreads_genres_in_what_is_served() {
    use recstack_services::serve::served::Scatter;
    let root = common::artifact_root();
    let (_, a) = build::load(root, None).unwrap();
    let truth = Truth::of(&a);
    let users: Vec<String> = (0..truth.len())
        .step_by(truth.len() / 20)
        .take(20)
        .map(|k| a.users[truth.users[k] as usize].clone())
        .collect();
    let index = eval::item_index(&a);
    // Windows of three consecutive served items in which some genre appears twice or more.
    let crowded = |lists: &[Vec<String>]| -> usize {
        lists
            .iter()
            .flat_map(|l| l.windows(3))
            .filter(|w| {
                let mut genres: Vec<&str> = w
                    .iter()
                    .flat_map(|id| a.items[index[id.as_str()] as usize].genres.iter().map(String::as_str))
                    .collect();
                let all = genres.len();
                genres.sort_unstable();
                genres.dedup();
                genres.len() < all
            })
            .count()
    };
    let mut counts = Vec::new();
    for scatter in [Scatter::OFF, Scatter { max: 1, window: 3 }] {
        let setting = Setting::at("full").with_scatter(scatter);
        let answers = serve_lists(root, model(), &setting, &users, 20, |_| ()).await.unwrap();
        let lists: Vec<Vec<String>> = answers.into_iter().map(|s| s.items).collect();
        assert!(lists.iter().all(|l| l.len() == 20), "{}: 20 items each", setting.name);
        counts.push(crowded(&lists));
    }
    let (off, strict) = (counts[0], counts[1]);
    assert!(off > 40, "without scatter, genres crowd: {off} of 360 windows");
    assert!(
        strict * 2 < off,
        "scatter 1 in 3: {strict} crowded windows against {off} without"
    );
}

/// `recstack eval --replay`: users play the earlier half of their held-out ratings through
/// ingest and the stream job; what the full level serves after is computed on those events
/// (no replayed item comes back, and lists change), while what it served before did not know
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_serves_before_and_after_the_users_events() {
    use recstack_services::serve::served::serve_replay;
    let root = common::artifact_root();
    let (_, a) = build::load(root, None).unwrap();
    let replay = eval::Replay::of(&a.holdout);
    let picked: Vec<usize> = (0..replay.truth.len())
        .step_by(replay.truth.len() / 24)
        .take(24)
        .collect();
    let users: Vec<String> = picked
        .iter()
        .map(|&k| a.users[replay.truth.users[k] as usize].clone())
        .collect();
    let events: Vec<Vec<String>> = picked
        .iter()
        .map(|&k| {
            replay.events[k]
                .iter()
                .map(|&i| a.items[i as usize].id.clone())
                .collect()
        })
        .collect();
    let log = tempfile::tempdir().unwrap();
    let phases = std::sync::Mutex::new(Vec::<String>::new());
    let served = serve_replay(
        root,
        model(),
        &Setting::at("full"),
        log.path(),
        &users,
        &events,
        20,
        |phase, _| {
            let mut p = phases.lock().unwrap();
            if p.last().map(String::as_str) != Some(phase) {
                p.push(phase.to_string());
            }
        },
    )
    .await
    .unwrap();
    let phases = phases.into_inner().unwrap();
    assert_eq!(phases.first().map(String::as_str), Some("before"), "{phases:?}");
    assert_eq!(phases.last().map(String::as_str), Some("after"), "{phases:?}");
    assert!(phases.iter().any(|p| p == "written"), "{phases:?}");
    assert_eq!((served.before.len(), served.after.len()), (users.len(), users.len()));

    let mut changed = 0;
    for (k, ((before, after), replayed)) in served.before.iter().zip(&served.after).zip(&events).enumerate() {
        let user = &users[k];
        assert_eq!(
            (before.level.as_str(), after.level.as_str()),
            ("full", "full"),
            "{user}"
        );
        // Before: long enough to drop the replayed items and keep 20.
        assert_eq!(before.items.len(), (20 + replayed.len()).min(100), "{user}: {before:?}");
        assert_eq!(after.items.len(), 20, "{user}: {after:?}");
        let history: HashSet<&str> = a.history[replay.truth.users[picked[k]] as usize]
            .iter()
            .map(|&i| a.items[i as usize].id.as_str())
            .collect();
        for item in &after.items {
            assert!(
                !replayed.contains(item),
                "{user} played {item}, and it was served back: {after:?}"
            );
            assert!(!history.contains(item.as_str()), "{user} rated {item} before the build");
        }
        let kept: Vec<&String> = before.items.iter().filter(|i| !replayed.contains(i)).take(20).collect();
        if kept != after.items.iter().collect::<Vec<_>>() {
            changed += 1;
        }
    }
    // The events reach recall (history-seeded channels) and the ranker's user features: nearly
    // every user's list changes (24 of 24 when written).
    eprintln!("{changed} of {} users' lists changed after their events", users.len());
    assert!(
        changed * 4 >= users.len() * 3,
        "only {changed} of {} users' lists changed after their events",
        users.len()
    );
}
