//! The offline build on the bundled MovieTweetings data, and recall over its artifacts.

use std::collections::HashSet;
use std::sync::OnceLock;

use recstack_core::recall::{self, Channel};
use recstack_offline::build::{self, Artifacts, BuildParams, Progress};
use recstack_offline::dataset::{self, Dataset};
use recstack_offline::eval;

fn data() -> &'static Dataset {
    static DS: OnceLock<Dataset> = OnceLock::new();
    DS.get_or_init(|| Dataset::load_movietweetings(&dataset::bundled_dir()).expect("bundled data loads"))
}

fn artifacts() -> &'static Artifacts {
    static A: OnceLock<Artifacts> = OnceLock::new();
    A.get_or_init(|| build::build(data(), &BuildParams::default(), &Progress::new(true)).expect("build"))
}

#[test]
fn bundled_data_is_movietweetings_100k() {
    let ds = data();
    assert_eq!(ds.ratings.len(), 100_000);
    assert_eq!(ds.n_users(), 16_554);
    assert!(ds.n_items() >= 10_506);
    let pulp = ds.items.iter().find(|i| i.id == "0110912").expect("Pulp Fiction");
    assert_eq!((pulp.title.as_str(), pulp.year), ("Pulp Fiction", Some(1994)));
    assert!(ds.ratings.iter().all(|r| r.rating <= 10));
}

#[test]
fn holdout_is_never_trained_on() {
    let a = artifacts();
    assert!(!a.holdout.is_empty());
    for r in &a.holdout {
        assert!(
            !a.history[r.user as usize].contains(&r.item),
            "held-out rating of user {} is in training",
            r.user
        );
    }
    let train: usize = a.history.iter().map(Vec::len).sum();
    assert_eq!(train + a.holdout.len(), 100_000);
}

#[test]
fn history_times_are_the_ratings_times_most_recent_first() {
    let (a, ds) = (artifacts(), data());
    let mut when: std::collections::HashMap<(u32, u32), i64> = Default::default();
    for r in &ds.ratings {
        when.insert((r.user, r.item), r.ts);
    }
    assert_eq!(a.history_times.len(), a.history.len());
    for (u, (items, times)) in a.history.iter().zip(&a.history_times).enumerate() {
        assert_eq!(items.len(), times.len(), "user {u}");
        assert!(times.windows(2).all(|w| w[0] >= w[1]), "user {u}: most recent first");
        for (i, t) in items.iter().zip(times) {
            assert_eq!(when[&(u as u32, *i)], *t, "user {u}, item {i}");
        }
    }
    // Every held-out rating is later than (or as late as) the user's training history.
    for r in &a.holdout {
        let newest = a.history_times[r.user as usize].first().copied().unwrap_or(i64::MIN);
        assert!(
            r.ts >= newest,
            "user {}: held out {} before trained {newest}",
            r.user,
            r.ts
        );
    }
}

#[test]
fn every_channel_recalls_unseen_items_for_a_held_out_user() {
    let a = artifacts();
    let user = active_user(a);
    let seen: HashSet<u32> = a.history[user as usize].iter().copied().collect();
    for c in Channel::ALL {
        let list = recall::channel(a, c, user, 200);
        assert!(!list.items.is_empty(), "{} returned nothing", c.name());
        assert!(list.items.len() <= 200);
        assert!(
            list.items.iter().all(|(i, _)| !seen.contains(i)),
            "{} returned a seen item",
            c.name()
        );
        assert!(
            list.items.windows(2).all(|w| w[0].1 >= w[1].1),
            "{} is not sorted by score",
            c.name()
        );
    }
    let merged = recall::recall(a, &recall::UserHistory::new(a, user), 200, 1000);
    assert!(
        merged.len() >= 500 && merged.len() <= 1000,
        "{} candidates",
        merged.len()
    );
    let unique: HashSet<u32> = merged.iter().map(|c| c.item).collect();
    assert_eq!(unique.len(), merged.len(), "merged candidates are deduplicated");
    assert!(merged.iter().all(|c| !c.sources.is_empty()));
    assert!(
        merged.iter().any(|c| c.sources.len() >= 3),
        "some items come from several channels"
    );
}

#[test]
fn the_exact_vector_scan_finds_what_the_hnsw_index_finds_or_closer() {
    // The vector channel scans every item on this catalogue (it is below the exact-scan limit);
    // the HNSW index serves larger ones. Both must rank the same neighbourhood.
    let a = artifacts();
    assert!(a.factors.n_items() <= recall::EXACT_SCAN_MAX_ITEMS);
    let (mut users, mut overlap, mut total) = (0, 0usize, 0usize);
    for user in (0..a.users.len() as u32)
        .filter(|&u| !a.history[u as usize].is_empty())
        .take(300)
    {
        let exact = recall::channel(a, Channel::Vector, user, 50).items;
        let query = recall::vector_query(a, user).expect("a user with history has a query");
        let seen: std::collections::HashSet<u32> = a.history[user as usize].iter().copied().collect();
        let hnsw: Vec<(u32, f32)> = a
            .ann
            .search(&query, 50 + seen.len())
            .into_iter()
            .filter(|(i, _)| !seen.contains(i))
            .take(50)
            .collect();
        assert_eq!(exact.len(), 50, "user {user}");
        assert!(exact.iter().all(|(i, _)| !seen.contains(i)));
        assert!(exact.windows(2).all(|w| w[0].1 >= w[1].1), "best first");
        // Exact top-k is optimal: its i-th score is at least the index's i-th.
        for (e, h) in exact.iter().zip(&hnsw) {
            assert!(e.1 >= h.1 - 1e-4, "user {user}: exact {e:?} below hnsw {h:?}");
        }
        let ids: std::collections::HashSet<u32> = exact.iter().map(|e| e.0).collect();
        overlap += hnsw.iter().filter(|h| ids.contains(&h.0)).count();
        total += hnsw.len();
        users += 1;
    }
    assert!(users >= 100);
    let agreement = overlap as f64 / total as f64;
    assert!(agreement > 0.8, "HNSW found {agreement:.3} of the exact neighbours");
}

#[test]
fn feature_snapshot_uses_external_ids() {
    let a = artifacts();
    let snapshot = recstack_core::features::Snapshot::from_artifacts(a);
    let user = a.holdout[0].user as usize;
    let features = snapshot.user(&a.users[user]).expect("a known user has features");
    assert_eq!(features.ratings as usize, a.history[user].len());
    let catalogue: HashSet<&str> = a.items.iter().map(|i| i.id.as_str()).collect();
    assert!(!features.recent_items.is_empty());
    assert!(features.recent_items.iter().all(|id| catalogue.contains(id.as_str())));
    assert_eq!(
        features.recent_items[0], a.items[a.history[user][0] as usize].id,
        "most recent first"
    );
    let pulp = snapshot.item("0110912").expect("Pulp Fiction");
    assert!(pulp.ratings > 0 && pulp.genres.contains(&"Crime".to_string()));
}

#[test]
fn unknown_and_cold_users_get_only_what_makes_sense() {
    let a = artifacts();
    let cold = (0..a.users.len() as u32).find(|&u| a.history[u as usize].is_empty());
    if let Some(u) = cold {
        assert!(recall::channel(a, Channel::ItemCf, u, 50).items.is_empty());
        assert!(recall::channel(a, Channel::Als, u, 50).items.is_empty());
        assert_eq!(
            recall::channel(a, Channel::Hot, u, 50).items.len(),
            50,
            "cold users still get hot items"
        );
    }
    let unknown = a.users.len() as u32 + 10;
    for c in Channel::ALL {
        let list = recall::channel(a, c, unknown, 50);
        if c == Channel::Hot {
            assert_eq!(list.items.len(), 50);
        } else {
            assert!(list.items.is_empty(), "{} for an unknown user", c.name());
        }
    }
}

#[test]
fn build_is_deterministic_and_round_trips_through_disk() {
    let a = artifacts();
    let again = build::build(data(), &BuildParams::default(), &Progress::new(true)).unwrap();
    let bytes = |x: &Artifacts| postcard::to_stdvec(x).unwrap();
    assert!(
        bytes(a) == bytes(&again),
        "same data, parameters and seed give identical artifacts"
    );

    let root = std::env::temp_dir().join(format!("recstack-artifacts-{}", std::process::id()));
    let inputs = build::hash_inputs(&dataset::bundled_dir(), &["movies.dat", "ratings.dat"]).unwrap();
    let manifest = build::write(
        &root,
        &again,
        "movietweetings-100k",
        inputs.clone(),
        &BuildParams::default(),
    )
    .unwrap();
    assert_eq!(manifest.inputs, inputs);
    assert_eq!(manifest.counts["holdout_ratings"], a.holdout.len());
    let (loaded_manifest, loaded) = build::load(&root, None).unwrap();
    assert_eq!(loaded_manifest.version, manifest.version);
    assert!(bytes(&loaded) == bytes(a));

    // A corrupted artifact file is refused, not half-loaded.
    let file = root.join(&manifest.version).join("artifacts.bin");
    let mut corrupted = std::fs::read(&file).unwrap();
    corrupted[100] ^= 0xff;
    std::fs::write(&file, corrupted).unwrap();
    let err = build::load(&root, None).err().expect("corruption detected").to_string();
    assert!(err.contains("does not match its manifest hash"), "{err}");
    // Artifacts of another format are refused by name before their bytes are read: a manifest
    // without the field (format 4 or before) and one of a later format.
    let manifest_file = root.join(&manifest.version).join("manifest.json");
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_file).unwrap()).unwrap();
    assert_eq!(json["format"], recstack_core::artifacts::ARTIFACT_FORMAT);
    json.as_object_mut().unwrap().remove("format");
    std::fs::write(&manifest_file, json.to_string()).unwrap();
    let err = build::load(&root, None).err().expect("an older format").to_string();
    assert!(
        err.contains("older format") && err.contains("run `recstack build`"),
        "{err}"
    );
    json["format"] = serde_json::json!(recstack_core::artifacts::ARTIFACT_FORMAT + 1);
    std::fs::write(&manifest_file, json.to_string()).unwrap();
    let err = build::load(&root, None).err().expect("a later format").to_string();
    assert!(
        err.contains(&format!("format {}", recstack_core::artifacts::ARTIFACT_FORMAT + 1)),
        "{err}"
    );
    std::fs::remove_dir_all(&root).ok();

    let other_seed = BuildParams {
        seed: 7,
        ..BuildParams::default()
    };
    let other = build::build(data(), &other_seed, &Progress::new(true)).unwrap();
    assert!(bytes(&other) != bytes(a), "the seed matters");
}

#[test]
fn channels_beat_chance_and_merging_beats_popularity() {
    let (rows, users) = eval::evaluate(artifacts(), false);
    assert!(users > 1000, "{users} users evaluated");
    let n_items = artifacts().items.len() as f64;
    let chance_200 = 200.0 / n_items;
    let row = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no row {name}: {rows:?}"))
    };
    for r in &rows {
        let r200 = r.recall_200.expect("recall's lists are 200 long");
        assert!(
            (0.0..=1.0).contains(&r.recall_20.mean) && r.recall_20.mean <= r200.mean,
            "{}: {r:?}",
            r.name
        );
        assert!(
            r.ndcg_20.low <= r.ndcg_20.mean && r.ndcg_20.mean <= r.ndcg_20.high,
            "{r:?}"
        );
        assert!(
            r200.mean > 3.0 * chance_200,
            "{} is no better than chance: {r:?}",
            r.name
        );
        assert!(r.coverage > 0.0 && r.coverage <= 1.0 && r.novelty > 0.0, "{r:?}");
    }
    let baseline = &rows[0];
    assert!(
        baseline.name.starts_with("baseline: recency-weighted popularity"),
        "{baseline:?}"
    );
    assert_eq!(baseline.ndcg_vs_baseline.mean, 1.0);
    // The hot channel is the baseline's list.
    assert_eq!(row("channel: hot").ndcg_20, baseline.ndcg_20);
    let merged = row("merged (every channel)");
    let popular = row("all-time popularity");
    assert!(
        merged.recall_200.unwrap().mean > popular.recall_200.unwrap().mean,
        "merged {merged:?} vs popularity {popular:?}"
    );
    // Recency matters on this data: the tuned hot list beats all-time counts, beyond noise.
    assert!(baseline.ndcg_20.above(&popular.ndcg_20), "{baseline:?} vs {popular:?}");
    // What people rate next finds more of what the user rates next than the trending list.
    let cooc = row("channel: cooc");
    assert!(cooc.ndcg_vs_baseline.low > 1.0, "{cooc:?}");
    assert!(row("channel: als").recall_200.unwrap().mean > 10.0 * chance_200);
    assert!(merged.coverage > baseline.coverage, "{merged:?}");
}

/// The user with the longest training history among those with held-out ratings.
fn active_user(a: &Artifacts) -> u32 {
    a.holdout
        .iter()
        .map(|r| r.user)
        .max_by_key(|&u| (a.history[u as usize].len(), u))
        .expect("some ratings are held out")
}
