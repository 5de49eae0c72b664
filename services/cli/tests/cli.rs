//! `recstack up` and `recstack query` as a user runs them: the services start on the bundled
//! data (building artifacts first), answer a query, and stop cleanly on Ctrl-C.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "../../tests/common/mod.rs"]
mod common;

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn recstack(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recstack"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn query_without_services_says_what_to_do() {
    let (r, f) = (free_addr(), free_addr());
    let out = recstack(&["query", "--user", "1", "--recall-addr", &r, "--features-addr", &f]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("start it with `recstack up`"), "{err}");
}

/// A bad latency target is refused when the flags are read, naming the flag, before `up`
/// builds anything.
#[test]
fn a_bad_latency_target_is_refused_before_anything_is_built() {
    let artifacts = std::env::temp_dir().join(format!("recstack-bad-target-{}", std::process::id()));
    for bad in ["-1", "NaN", "inf", "soon"] {
        let out = recstack(&[
            "up",
            "--artifacts",
            artifacts.to_str().unwrap(),
            "--latency-target-ms",
            bad,
        ]);
        assert!(!out.status.success(), "{bad} was taken");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--latency-target-ms") && err.contains("is not a number of milliseconds"),
            "{bad}: {err}"
        );
        assert!(!artifacts.exists(), "{bad}: up started building");
    }
    let out = recstack(&["serve", "gateway", "--latency-target-ms", "-5"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("-5 is not a number of milliseconds"));
}

/// The address printed after `label` on a banner line.
fn address_after(banner: &str, label: &str) -> String {
    let line = banner
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label} line in {banner}"));
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("grpc://") || w.starts_with("http://"))
        .unwrap();
    url.split("://").nth(1).unwrap().split('/').next().unwrap().to_string()
}

#[test]
fn up_serves_recommendations_on_the_bundled_data_and_stops_on_ctrl_c() {
    use std::io::BufRead;
    let artifacts = std::env::temp_dir().join(format!("recstack-up-{}", std::process::id()));
    let mut up = Command::new(env!("CARGO_BIN_EXE_recstack"))
        .args(["up", "--ephemeral-ports", "--artifacts", artifacts.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // It builds the artifacts first, then prints the banner once every service listens.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = up.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut banner = String::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            banner.push_str(&line);
            banner.push('\n');
            if line.starts_with("Ctrl-C stops") {
                let _ = tx.send(banner.clone());
            }
        }
    });
    let banner = match rx.recv_timeout(Duration::from_secs(300)) {
        Ok(b) => b,
        Err(_) => {
            let _ = up.kill();
            panic!("recstack up did not come up");
        }
    };
    assert!(artifacts.join("current").exists(), "artifacts were built");
    assert!(banner.contains("curl -s http://"), "{banner}");

    // The README's curl: a full-level list from every stage.
    let gateway = address_after(&banner, "gateway");
    let (status, body) = common::http_post(&gateway, "/v1/recommend", r#"{"user_id": "1", "n": 10}"#);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["level"], "full", "{body}");
    assert_eq!(v["items"].as_array().unwrap().len(), 10, "{body}");
    assert_eq!(v["model_version"], "gbdt-2", "{body}");

    // Its trace reaches the embedded store and the query API the banner names.
    let traces = address_after(&banner, "traces");
    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        let (status, body) = common::http_get(&traces, "/v1/traces?user=1");
        assert_eq!(status, 200, "{body}");
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        if page["total"] == 1 {
            break page;
        }
        assert!(Instant::now() < deadline, "no trace: {body}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(page["hits"][0]["request_id"], v["request_id"], "{page}");

    // `recstack replay`: the request again with its first item blocked, side by side.
    let first = v["items"][0]["item_id"].as_str().unwrap().to_string();
    let request_id = v["request_id"].as_str().unwrap().to_string();
    let out = recstack(&[
        "replay",
        &request_id,
        "--block",
        &first,
        "--gateway",
        &format!("http://{gateway}"),
        "--traces",
        &format!("http://{traces}"),
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with(&format!("A: {request_id} · user 1 · level full")),
        "{text}"
    );
    assert!(
        lines[1].contains(&format!("replay of {request_id} (block {first})")),
        "{text}"
    );
    let row = lines.iter().find(|l| l.contains(&format!(" {first} "))).unwrap();
    assert!(
        row.starts_with("  1   -  left") && row.contains("business_rule"),
        "{text}"
    );
    assert!(text.lines().last().unwrap().starts_with("replayed in "), "{text}");
    // `recstack compare` of the two, as JSON: B is the replay.
    let replayed = lines[1].split_whitespace().nth(1).unwrap().to_string();
    let out = recstack(&[
        "compare",
        &request_id,
        &replayed,
        "--traces",
        &format!("http://{traces}"),
        "--json",
    ]);
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["b"]["what_if"]["block"][0], first.as_str(), "{c}");
    assert_eq!(c["totals"]["left"], c["totals"]["entered"], "{c}");
    // A request that was never stored: the API's message, and a failure.
    let out = recstack(&["compare", &request_id, "nope", "--traces", &format!("http://{traces}")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no trace for request \"nope\""),
        "{out:?}"
    );

    let (recall, features) = (address_after(&banner, "recall"), address_after(&banner, "features"));
    let out = recstack(&[
        "query",
        "--user",
        "1",
        "--n",
        "10",
        "--recall-addr",
        &recall,
        "--features-addr",
        &features,
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("user 1: "), "{text}");
    assert!(text.contains("10 candidates from artifact version v-"), "{text}");

    // Ctrl-C: every server stops and the process exits cleanly.
    let pid = up.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = up.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "recstack up did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    assert!(
        artifacts.join("traces/traces.sqlite").is_file(),
        "the trace store is beside the artifacts"
    );
    std::fs::remove_dir_all(&artifacts).ok();
}

/// An int64 `.npy` file's values.
fn read_i64s(path: &std::path::Path) -> Vec<i64> {
    let bytes = std::fs::read(path).unwrap();
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert!(std::str::from_utf8(&bytes[10..10 + len]).unwrap().contains("'<i8'"));
    bytes[10 + len..]
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// The lengths of the runs 0, 1, 2, … in `positions` (each user's candidate list); panics on a
/// run that skips a position.
fn list_lengths(positions: &[i64]) -> Vec<usize> {
    let mut lists = Vec::new();
    for (k, &p) in positions.iter().enumerate() {
        if p == 0 {
            lists.push(0);
        }
        let last = lists.last_mut().expect("a list starts at position 0");
        assert_eq!(p, *last as i64, "row {k}: position {p}");
        *last += 1;
    }
    lists
}

/// A `.npy` file's shape and, for float32 arrays, its values.
fn read_npy(path: &std::path::Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00", "{}", path.display());
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    let shape = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape: Vec<usize> = shape
        .split(',')
        .filter(|d| !d.trim().is_empty())
        .map(|d| d.trim().parse().unwrap())
        .collect();
    let values = if header.contains("'<f4'") {
        bytes[10 + len..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else {
        Vec::new()
    };
    (shape, values)
}

/// `recstack export-ranking` writes what `scripts/train-ranker` reads: three candidate splits
/// whose files agree on their rows, with positives in each, every judged user's whole candidate
/// list, and the features the service computes. Data other than the artifacts' is refused,
/// naming `--data`, and nothing is written.
#[test]
fn export_ranking_writes_the_candidate_splits_and_refuses_other_data() {
    let tmp = tempfile::tempdir().unwrap();
    let root = common::artifact_root().to_str().unwrap().to_string();
    let out_dir = tmp.path().join("ranking-data");
    let out = recstack(&[
        "export-ranking",
        "--artifacts",
        &root,
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let features: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("features.json")).unwrap()).unwrap();
    let (sparse, dense) = (
        features["sparse"].as_array().unwrap().len(),
        features["dense"].as_array().unwrap().len(),
    );
    assert!(
        features["dense"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "recall_position")
    );
    for split in ["train", "valid", "test"] {
        let file = |array: &str| out_dir.join(format!("{split}_{array}.npy"));
        let (shape, labels) = read_npy(&file("label"));
        let n = shape[0];
        assert!(n > 10_000, "{split}: {n} rows");
        let positives = labels.iter().filter(|&&l| l == 1.0).count();
        assert!(positives > 100, "{split}: {positives} positives");
        assert_eq!(labels.iter().filter(|&&l| l == 0.0).count() + positives, n);
        assert_eq!(read_npy(&file("sparse")).0, [n, sparse], "{split}");
        assert_eq!(read_npy(&file("dense")).0, [n, dense], "{split}");
        for array in ["group", "position", "relevant"] {
            assert_eq!(read_npy(&file(array)).0, [n], "{split}_{array}");
        }
        if split != "train" {
            // Each judged user's whole list, in recall's order: positions 0, 1, … per user, at
            // most 500, and 98 % of the rows full lists would have (a user whose channels
            // overlap much has fewer than 500 distinct candidates: 57 of 701 in `valid`).
            let lists = list_lengths(&read_i64s(&file("position")));
            assert!(lists.iter().all(|&k| (1..=500).contains(&k)), "{split}: {lists:?}");
            assert!(
                n * 100 >= lists.len() * 500 * 98,
                "{split}: {n} rows for {} lists",
                lists.len()
            );
        }
    }

    // The same file names with other ratings: not what the artifacts were built from.
    let data = tmp.path().join("other-data");
    std::fs::create_dir(&data).unwrap();
    let bundled = recstack_offline::dataset::bundled_dir();
    std::fs::copy(bundled.join("movies.dat"), data.join("movies.dat")).unwrap();
    let ratings = std::fs::read_to_string(bundled.join("ratings.dat")).unwrap();
    let fewer: Vec<&str> = ratings.lines().skip(1).collect();
    std::fs::write(data.join("ratings.dat"), fewer.join("\n")).unwrap();
    let refused_dir = tmp.path().join("refused");
    let out = recstack(&[
        "export-ranking",
        "--artifacts",
        &root,
        "--data",
        data.to_str().unwrap(),
        "--out",
        refused_dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--data") && err.contains("not the data artifacts"),
        "{err}"
    );
    assert!(!refused_dir.exists(), "nothing written");
}

/// `recstack export-sequences` writes what `scripts/train-seq` reads: every user's training
/// items in both worlds, the validation world inside the real training split. `recstack
/// build --seq-model` with a model of other data (it knows none of these items) is refused
/// before anything is built, naming the flag.
#[test]
fn export_sequences_writes_both_worlds_and_build_refuses_a_model_of_other_data() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("sequences");
    let out = recstack(&["export-sequences", "--out", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(out_dir.join("sequences.json")).unwrap()).unwrap();
    let count = |world: &str, part: &str| -> usize {
        s[world][part]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_array().unwrap().len())
            .sum()
    };
    let ratings = std::fs::read_to_string(recstack_offline::dataset::bundled_dir().join("ratings.dat")).unwrap();
    assert_eq!(
        count("test", "train") + count("test", "holdout"),
        ratings.lines().count()
    );
    assert_eq!(
        count("validation", "train") + count("validation", "holdout"),
        count("test", "train")
    );
    assert!(count("validation", "holdout") > 10_000);
    assert_eq!(s["items"].as_array().unwrap().len(), 10_506);

    let model = tmp.path().join("other-model");
    std::fs::create_dir(&model).unwrap();
    let bundled = recstack_offline::build::seq::bundled_dir();
    for f in ["items.f32", "tower.onnx"] {
        std::fs::copy(bundled.join(f), model.join(f)).unwrap();
    }
    let mut card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundled.join("model.json")).unwrap()).unwrap();
    let n = card["items"].as_array().unwrap().len();
    card["items"] = (0..n).map(|i| format!("other-{i}")).collect();
    std::fs::write(model.join("model.json"), card.to_string()).unwrap();
    let artifacts = tmp.path().join("artifacts");
    let out = recstack(&[
        "build",
        "--quiet",
        "--seq-model",
        model.to_str().unwrap(),
        "--out",
        artifacts.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--seq-model") && err.contains("under half"), "{err}");
    assert!(!artifacts.exists(), "nothing written");
}
