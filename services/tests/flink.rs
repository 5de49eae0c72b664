//! The Flink engine computes what the built-in engine does: the operator's Flink SQL (the
//! query its FlinkDeployment runs) over a file of events in a local Flink mini-cluster (PyPI
//! `apache-flink`, Java 17), and the built-in aggregator over the same events, compared
//! window for window.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use recstack_core::stream::window::{Aggregator, Counts, WindowConfig, smoothed_ctr};
use recstack_services::events::{Event, EventKind};

const MIN: i64 = 60_000;
const T0: i64 = 1_790_000_040_000 - 1_790_000_040_000 % MIN;

/// 20,000 events over about 33 minutes for 300 items, out of order by less than the 5 s the
/// watermark allows (so no event is late in either engine), skewed towards a few items.
fn events() -> Vec<Event> {
    (0..20_000u64)
        .map(|i| {
            let h = recstack_core::stable_hash(&i.to_le_bytes());
            let item = (h % 1_000).pow(2) / 3_334; // 0..300, skewed
            Event {
                event_id: format!("e{i}"),
                user_id: format!("u{}", (h >> 20) % 500),
                item_id: format!("i{item}"),
                kind: EventKind::ALL[[0, 0, 0, 0, 1, 1, 2, 3][((h >> 40) % 8) as usize]],
                ts_ms: T0 + i as i64 * 100 - ((h >> 50) % 4_000) as i64,
                request_id: (i % 3 == 0).then(|| format!("r{}", i / 3)),
            }
        })
        .collect()
}

type Windows = BTreeMap<(String, i64), (Counts, f64)>;

fn builtin(events: &[Event]) -> Windows {
    let mut agg = Aggregator::new(WindowConfig::default());
    for (offset, e) in events.iter().enumerate() {
        agg.push(e, offset as u64);
    }
    assert_eq!(agg.late, 0, "the comparison data has no late events");
    let mut fired = agg.fire();
    fired.extend(agg.flush());
    fired
        .into_iter()
        .map(|w| {
            let ctr = w.ctr();
            ((w.item_id, w.window_end_ms), (w.counts, ctr))
        })
        .collect()
}

fn python() -> PathBuf {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
    let venv = std::env::var("RECSTACK_VENV")
        .map(PathBuf::from)
        .unwrap_or(root.join(".venv"));
    venv.join("bin/python")
}

fn flink(events: &[Event], window: &str) -> Windows {
    let dir = tempfile::tempdir().unwrap();
    let events_path = dir.path().join("events.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&events_path).unwrap());
    for e in events {
        f.write_all(&e.encode()).unwrap();
        f.write_all(b"\n").unwrap();
    }
    f.flush().unwrap();
    drop(f);
    let out = dir.path().join("windows.jsonl");
    let spec = serde_json::json!({
        "columns": recstack_operator::render::EVENT_COLUMNS,
        "query": recstack_operator::render::window_query(window),
        "events": events_path,
        "out": out,
    });
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let script = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../scripts/flink/aggregate.py");
    let status = Command::new(python())
        .arg(script)
        .arg(&spec_path)
        .status()
        .expect("the project venv's python (scripts/setup installs apache-flink there)");
    assert!(status.success(), "the Flink job failed: {status}");
    std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let n = |k: &str| v[k].as_u64().unwrap();
            let counts = Counts {
                impressions: n("impressions"),
                clicks: n("clicks"),
                plays: n("plays"),
                likes: n("likes"),
            };
            let key = (
                v["item_id"].as_str().unwrap().to_string(),
                v["window_end_ms"].as_i64().unwrap(),
            );
            (key, (counts, v["ctr"].as_f64().unwrap()))
        })
        .collect()
}

#[test]
fn flink_sql_and_the_builtin_engine_agree_window_for_window() {
    let events = events();
    let ours = builtin(&events);
    let theirs = flink(&events, "1m");
    assert!(ours.len() > 3_000, "enough windows to compare: {}", ours.len());
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "the same (item, window) pairs"
    );
    for (key, (counts, ctr)) in &ours {
        let (f_counts, f_ctr) = &theirs[key];
        assert_eq!(counts, f_counts, "counts of {key:?}");
        assert!((ctr - f_ctr).abs() < 1e-12, "ctr of {key:?}: {ctr} vs {f_ctr}");
        assert_eq!(*ctr, smoothed_ctr(counts.clicks, counts.impressions));
    }
    let total: u64 = ours.values().map(|(c, _)| c.impressions + c.engagement()).sum();
    assert_eq!(total, events.len() as u64);
}
