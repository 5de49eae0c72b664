//! The operator against the real control plane with many stacks: prints a table of reconcile
//! latency (p50/p99), API requests per reconcile, writes on a no-op pass and the operator's
//! memory. The in-memory figures (`cargo bench -p recstack-operator --bench reconcile`) sit
//! beside these in BENCHMARKS.md.
//!
//! ```sh
//! scripts/bench-cluster                # starts a control plane, runs this, stops it
//! scripts/bench-cluster --stacks 200    # another size
//! ```
//!
//! Each stack is the GPU-ranking sample (39 children at fixed replicas) with a distinct name in one of ten
//! namespaces, every component at 0 replicas and streaming at 1 (kwok still runs one pod per
//! stack): the operator's work per stack is the sample's, without ten thousand simulated pods
//! loading the 2-core machine the control plane shares.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use recstack_e2e::{Cluster, Operator, sum_series, wait_until};
use serde_json::Value;

fn main() -> anyhow::Result<()> {
    let stacks: usize = std::env::args()
        .skip_while(|a| a != "--stacks")
        .nth(1)
        .map(|n| n.parse())
        .transpose()
        .context("--stacks N")?
        .unwrap_or(1000);
    let cluster = Cluster {
        admin: PathBuf::from(std::env::var_os("RECSTACK_E2E_KUBECONFIG").context("RECSTACK_E2E_KUBECONFIG")?),
        dir: PathBuf::from(std::env::var_os("RECSTACK_E2E_DIR").context("RECSTACK_E2E_DIR")?),
    };
    let bin = PathBuf::from(std::env::var_os("RECSTACK_OPERATOR_BIN").context("RECSTACK_OPERATOR_BIN")?);
    std::fs::create_dir_all(&cluster.dir)?;

    eprintln!("installing");
    cluster.install()?;
    for t in 0..10 {
        let ns = format!("team-{t}");
        if cluster.kubectl(&["get", "namespace", &ns]).is_err() {
            cluster.kubectl(&["create", "namespace", &ns])?;
        }
    }
    let kubeconfig = cluster.service_account_kubeconfig("recstack-system", "recstack-operator")?;
    let op = Operator::start(&bin, &kubeconfig, "scale", &cluster.dir)?;
    let pid = op.pid().context("operator pid")?;

    // Create every stack, 100 to a kubectl call, and time until each is Ready at generation 1.
    let sample = std::fs::read_to_string("manifests/samples/gpu-ranking.yaml")?;
    let start = Instant::now();
    for batch in (0..stacks).collect::<Vec<_>>().chunks(100) {
        let items: Vec<Value> = batch.iter().map(|&i| stack_doc(&sample, i)).collect();
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        cluster.kubectl_stdin(&["apply", "-f", "-"], &list.to_string())?;
        eprintln!("created {} / {stacks} stacks", batch.last().map_or(0, |l| l + 1));
    }
    let created = start.elapsed();
    // Polled every 5 s: listing every stack is itself load on the shared machine.
    loop {
        let ready = ready_count(&cluster)?;
        eprintln!("ready {ready} / {stacks} ({:.0} s)", start.elapsed().as_secs_f64());
        if ready == stacks {
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(3600),
            "not every stack Ready within an hour"
        );
        std::thread::sleep(Duration::from_secs(5));
    }
    let converged = start.elapsed();
    let create_metrics = op.metrics()?;
    let create_latency = quantiles(&create_metrics, "recstack_operator_reconcile_duration_seconds");
    let create_reconciles = sum(&create_metrics, "recstack_operator_reconciles_total");

    // The no-op pass: wake every stack with an annotation (no spec change) and count.
    std::thread::sleep(Duration::from_secs(5));
    let before = op.metrics()?;
    cluster.kubectl(&["annotate", "rstack", "--all", "-A", "bench/poke=1", "--overwrite"])?;
    let target = sum(&before, "recstack_operator_reconciles_total") + stacks as f64;
    wait_until("the no-op pass", Duration::from_secs(600), || {
        Ok((op.metric_sum("recstack_operator_reconciles_total", &[])? >= target).then_some(()))
    })?;
    std::thread::sleep(Duration::from_secs(3));
    let after = op.metrics()?;
    let noop_reconciles =
        sum(&after, "recstack_operator_reconciles_total") - sum(&before, "recstack_operator_reconciles_total");
    let noop_writes = sum(&after, "recstack_operator_child_writes_total")
        - sum(&before, "recstack_operator_child_writes_total")
        + sum(&after, "recstack_operator_status_writes_total")
        - sum(&before, "recstack_operator_status_writes_total");
    let requests = |m: &std::collections::BTreeMap<String, f64>, kind: &str| {
        sum_series(
            m,
            "recstack_operator_api_requests_total",
            &[&format!("kind=\"{kind}\"")],
        )
    };
    // Every request but the watches: reads, the dry runs before writes, and the writes.
    let made = |m: &std::collections::BTreeMap<String, f64>| {
        requests(m, "read") + requests(m, "dry_run") + requests(m, "write")
    };
    let noop_requests = made(&after) - made(&before);
    let create_requests = made(&before);
    let (rss, peak) = memory(pid)?;
    ensure!(noop_writes == 0.0, "the no-op pass wrote {noop_writes} objects");

    println!("\nOperator against the real control plane: {stacks} stacks (GPU-ranking sample, 39 children each)\n");
    println!("| pass | reconciles | p50 | p99 | API requests / reconcile | writes |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| create (until every stack Ready: {:.1} s; kubectl apply {:.1} s) | {create_reconciles:.0} | {} | {} | {:.1} | {:.0} |",
        converged.as_secs_f64(),
        created.as_secs_f64(),
        ms(create_latency.0),
        ms(create_latency.1),
        create_requests / create_reconciles.max(1.0),
        sum(&before, "recstack_operator_child_writes_total") + sum(&before, "recstack_operator_status_writes_total"),
    );
    let noop_latency = quantiles_between(&before, &after, "recstack_operator_reconcile_duration_seconds");
    println!(
        "| no-op (annotation on every stack) | {noop_reconciles:.0} | {} | {} | {:.2} | {noop_writes:.0} |",
        ms(noop_latency.0),
        ms(noop_latency.1),
        noop_requests / noop_reconciles.max(1.0),
    );
    println!(
        "\nOperator RSS: {rss:.1} MiB now, {peak:.1} MiB peak; watch requests made: {:.0}",
        requests(&after, "watch")
    );
    Ok(())
}

fn stack_doc(sample: &str, i: usize) -> Value {
    let mut doc: Value = serde_yaml::from_str(sample).expect("the sample is YAML");
    doc["metadata"]["name"] = Value::from(format!("stack-{i:04}"));
    doc["metadata"]["namespace"] = Value::from(format!("team-{}", i % 10));
    for c in ["gateway", "recall", "ranking", "rerank", "feature", "ingest"] {
        match doc["spec"][c].as_object_mut() {
            Some(o) => {
                o.remove("autoscaling");
                o.insert("replicas".into(), Value::from(0));
            }
            None => doc["spec"][c] = serde_json::json!({"replicas": 0}),
        }
    }
    if doc["spec"]["dashboard"].is_object() {
        doc["spec"]["dashboard"]["replicas"] = Value::from(0);
    }
    doc["spec"]["stream"]["parallelism"] = Value::from(1);
    doc
}

fn ready_count(cluster: &Cluster) -> anyhow::Result<usize> {
    let list: Value = serde_json::from_str(&cluster.kubectl(&["get", "rstack", "-A", "-o", "json"])?)?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| {
            s["status"]["observedGeneration"] == s["metadata"]["generation"]
                && s["status"]["conditions"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        })
        .count())
}

fn sum(m: &std::collections::BTreeMap<String, f64>, name: &str) -> f64 {
    sum_series(m, name, &[])
}

/// Cumulative histogram buckets `le → count` of `name`.
fn buckets(m: &std::collections::BTreeMap<String, f64>, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut out: Vec<(f64, f64)> = m
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(&prefix)?.trim_end_matches("\"}");
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, *v))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

fn quantiles(m: &std::collections::BTreeMap<String, f64>, name: &str) -> (f64, f64) {
    let b = buckets(m, name);
    (quantile(&b, 0.5), quantile(&b, 0.99))
}

fn quantiles_between(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
    name: &str,
) -> (f64, f64) {
    let b0 = buckets(before, name);
    let b: Vec<(f64, f64)> = buckets(after, name)
        .into_iter()
        .zip(b0)
        .map(|((le, a), (_, z))| (le, a - z))
        .collect();
    (quantile(&b, 0.5), quantile(&b, 0.99))
}

/// The `q` quantile from cumulative buckets, interpolated linearly inside its bucket.
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            let within = (rank - prev.1) / (count - prev.1).max(1e-9);
            return prev.0 + (le - prev.0) * within;
        }
        prev = (le, count);
    }
    prev.0
}

fn ms(seconds: f64) -> String {
    format!("{:.1} ms", seconds * 1000.0)
}

/// (current, peak) RSS in MiB of process `pid`.
fn memory(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}
