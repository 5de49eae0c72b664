//! The deployed shape, run for real: a stack applied to a real control plane, the operator
//! (its own process, its ServiceAccount's token) writes the objects, and every Deployment's pod
//! template runs as local processes with exactly what the objects say — each pod in its own
//! network and mount namespace with its own address, a chroot laid out like the services image
//! (read-only root, non-root user), the ConfigMap and Secrets at their mount paths, the same
//! command, args and env — with the rendered NetworkPolicies enforced by nftables in each pod
//! and Service names resolving to the ready pods behind them. The stores are real servers
//! outside the cluster: an S3 server (versitygw) holding the artifacts and the model, a
//! three-master Redis Cluster, an Apache Kafka broker (KRaft, from Maven Central) and an
//! Elasticsearch-API store (osmem).
//!
//! `scripts/e2e` runs it (root: namespaces, mounts, nftables) after the cluster suite, against a
//! fresh control plane; it ends with "N passed, N failed". Without the control plane's
//! variables it fails under `CI` and otherwise says why it skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use recstack_e2e::netns::{Image, Network, Pod, http, http_get, http_with};
use recstack_e2e::pods::{self, Objects, PodAddr};
use recstack_e2e::{Cluster, Operator, repo, wait_until};
use serde_json::{Value, json};

const NS: &str = "shop";
const STACK: &str = "shop";
/// The version an older release published, `current` when the stack is applied (an upgrade).
const OLDER_VERSION: &str = "v-0000000004aa";

/// Stores outside the cluster listen here (the node is .0.1).
const STORES: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
const ACCESS_KEY: &str = "e2e-access";
const SECRET_KEY: &str = "e2e-secret-key-1234";
const BUCKET: &str = "recstack";
/// The Redis Cluster's three masters, on the stores' address.
const REDIS_PORTS: [u16; 3] = [6379, 6380, 6381];
const REDIS_NODES: [&str; 3] = ["redis-0", "redis-1", "redis-2"];

/// The stack's feature store: the Redis Cluster, its nodes named by `host`.
fn redis_url(host: &str) -> String {
    let nodes: Vec<String> = REDIS_PORTS.iter().map(|p| format!("{host}:{p}")).collect();
    format!("redis+cluster://{}", nodes.join(","))
}

/// A store process, killed on drop.
struct Proc {
    name: &'static str,
    child: Child,
}

/// A pod's `/metrics`, parsed: each series (name and labels) → its value.
type Metrics = BTreeMap<String, f64>;

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Load against the gateway: answered requests, failures (with the first few reasons),
/// degraded answers.
#[derive(Default, Debug)]
struct LoadStats {
    ok: u64,
    errors: u64,
    degraded: u64,
    reasons: Vec<String>,
    artifact_versions: BTreeMap<String, u64>,
}

struct Deployed {
    cluster: Cluster,
    operator_bin: PathBuf,
    recstack: PathBuf,
    versitygw: PathBuf,
    venv: PathBuf,
    dir: PathBuf,
    net: Option<Network>,
    stores: Vec<Proc>,
    operator: Option<Operator>,
    objects: Vec<Value>,
    pods: Arc<Mutex<Vec<Pod>>>,
    services: Vec<Value>,
    policies: Vec<Value>,
    endpoints_stop: Arc<AtomicBool>,
    users: Vec<String>,
}

type Scenario = fn(&mut Deployed) -> anyhow::Result<()>;

fn main() {
    let vars = [
        "RECSTACK_E2E_KUBECONFIG",
        "RECSTACK_OPERATOR_BIN",
        "RECSTACK_BIN",
        "RECSTACK_VERSITYGW_BIN",
    ];
    let values: Vec<Option<std::ffi::OsString>> = vars.iter().map(std::env::var_os).collect();
    if values.iter().any(Option::is_none) {
        if std::env::var_os("CI").is_some() {
            eprintln!(
                "deployed e2e: {} must be set under CI; run it through scripts/e2e",
                vars.join(", ")
            );
            eprintln!("0 passed, 1 failed");
            std::process::exit(1);
        }
        eprintln!("deployed e2e skipped: run scripts/e2e (it starts the control plane and builds what this needs)");
        return;
    }
    let v: Vec<PathBuf> = values
        .into_iter()
        .map(|v| PathBuf::from(v.unwrap_or_default()))
        .collect();
    let dir = std::env::var_os("RECSTACK_E2E_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("recstack-e2e-deployed"));
    // scripts/e2e empties the directory (and writes its suite.log there); this run replaces
    // only what it makes.
    for owned in ["s3", "pods", "image-artifacts"] {
        let _ = std::fs::remove_dir_all(dir.join(owned));
    }
    std::fs::create_dir_all(&dir).expect("e2e scratch directory");
    let mut d = Deployed {
        cluster: Cluster {
            admin: v[0].clone(),
            dir: dir.clone(),
        },
        operator_bin: v[1].clone(),
        recstack: v[2].clone(),
        versitygw: v[3].clone(),
        venv: std::env::var_os("RECSTACK_VENV").map_or_else(|| repo().join(".venv"), PathBuf::from),
        dir,
        net: None,
        stores: Vec::new(),
        operator: None,
        objects: Vec::new(),
        pods: Arc::new(Mutex::new(Vec::new())),
        services: Vec::new(),
        policies: Vec::new(),
        endpoints_stop: Arc::new(AtomicBool::new(false)),
        users: Vec::new(),
    };
    let scenarios: &[(&str, Scenario)] = &[
        (
            "the stores outside the cluster start (S3, a three-master Redis Cluster, Apache Kafka, Elasticsearch API)",
            stores,
        ),
        (
            "the model and the ratings are uploaded to S3, as training and data pipelines would",
            publish,
        ),
        ("the operator writes the stack's objects to the API server", apply),
        (
            "every pod starts from exactly what the operator wrote: the build Job publishes the artifacts to S3, the services wait for them and turn ready",
            start_pods,
        ),
        (
            "recommendations through the gateway's Service for held-out users",
            recommend,
        ),
        ("the rendered NetworkPolicies hold between pods", network_policies),
        (
            "impressions posted to ingest reach every recall replica's seen filter",
            impressions,
        ),
        ("each request's trace is in the trace store", traces),
        (
            "trace access: the operator's access Secret guards the trace service and debug requests; a debug trace is readable the moment its response arrives, explains a missing item, and a what-if replay compares against it",
            trace_access,
        ),
        (
            "the dashboard shows the stack's status from the API server and a request's trace from the trace service",
            dashboard,
        ),
        (
            "events posted to ingest change what the user is served within 10 s, and reach the item's window and the trending list through Kafka, the stream pods and Redis",
            freshness,
        ),
        (
            "a stream replica killed mid-stream and restarted: its partitions resume from their checkpoints, every item's totals exact",
            stream_replica_killed,
        ),
        (
            "business rules and an experiment changed on the stack reach rerank without a restart",
            business_rules,
        ),
        (
            "a new artifact version is picked up under load without a failed request",
            new_version,
        ),
        (
            "a recall pod sent SIGTERM under load drains with 0 errors",
            recall_sigterm,
        ),
        (
            "ranking pods killed under load: degraded answers, 0 errors",
            ranking_killed,
        ),
        (
            "the Redis Cluster stopped under load: stale features, 0 errors",
            redis_stopped,
        ),
    ];
    // RECSTACK_E2E_BENCH=1: the stack with the gateway's production defaults (latency objective,
    // 1 % full traces), up to the first recommendations, then held (RECSTACK_E2E_HOLD) for
    // `recstack bench` against it (BENCHMARKS.md, "the deployed shape").
    let scenarios = if bench_mode() { &scenarios[..5] } else { scenarios };
    let (mut passed, mut failed) = (0, 0);
    for (name, scenario) in scenarios {
        let start = Instant::now();
        match scenario(&mut d) {
            Ok(()) => {
                passed += 1;
                println!("ok    {name} ({:.1} s)", start.elapsed().as_secs_f64());
            }
            Err(e) => {
                failed += 1;
                println!("FAIL  {name} ({:.1} s): {e:#}", start.elapsed().as_secs_f64());
                if passed < 4 {
                    // Nothing after a failed start can pass: stop here.
                    break;
                }
            }
        }
    }
    if let Some(hold) = std::env::var("RECSTACK_E2E_HOLD").ok().and_then(|s| s.parse().ok()) {
        // Debugging and benches: the pods stay up this many seconds (their logs:
        // <dir>/pods/*/pod.log; name, process id and address of each, for per-pod CPU:
        // <dir>/pods/pids.tsv, read by scripts/bench-deployed).
        if let Ok(pods) = d.pods.lock() {
            let pids: String = pods
                .iter()
                .filter_map(|p| p.pid().map(|pid| format!("{}\t{pid}\t{}\n", p.plan.name, p.ip)))
                .collect();
            let _ = std::fs::write(d.dir.join("pods/pids.tsv"), pids);
        }
        println!("holding the deployed stack for {hold} s");
        std::thread::sleep(Duration::from_secs(hold));
    }
    d.endpoints_stop.store(true, Ordering::Relaxed);
    if let Ok(mut pods) = d.pods.lock() {
        pods.clear();
    }
    drop(d.operator.take());
    d.stores.clear();
    drop(d.net.take());
    println!("{passed} passed, {failed} failed");
    let skipped = scenarios.len() - passed - failed;
    if skipped > 0 {
        println!("({skipped} scenarios not run after an earlier failure)");
    }
    if failed > 0 || skipped > 0 {
        std::process::exit(1);
    }
}

fn bench_mode() -> bool {
    std::env::var_os("RECSTACK_E2E_BENCH").is_some()
}

impl Deployed {
    fn k(&self, args: &[&str]) -> anyhow::Result<String> {
        self.cluster.kubectl(args)
    }

    fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut full = args.to_vec();
        full.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.k(&full)?)?)
    }

    fn s3_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", format!("http://{STORES}:7070")),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    fn start_store(&mut self, name: &'static str, mut cmd: Command, port: u16) -> anyhow::Result<()> {
        let addr = SocketAddr::from((STORES, port));
        ensure!(
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err(),
            "{addr} is taken before {name} starts: a process left from an earlier run?"
        );
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.stores.push(Proc { name, child });
        wait_until(&format!("{name} on {STORES}:{port}"), Duration::from_secs(30), || {
            Ok(
                std::net::TcpStream::connect_timeout(&SocketAddr::from((STORES, port)), Duration::from_millis(200))
                    .ok()
                    .map(|_| ()),
            )
        })
    }

    /// A running pod's HTTP address for `component` (the Service as a node-local client
    /// resolves it).
    fn http_of(&self, component: &str) -> anyhow::Result<SocketAddr> {
        let mut pods = self.pods.lock().map_err(|_| anyhow::anyhow!("pods lock"))?;
        for pod in pods.iter_mut() {
            if pod.plan.workload == format!("{STACK}-{component}") && pod.running() {
                return Ok(SocketAddr::from((pod.ip, pod.port("http")?)));
            }
        }
        bail!("no {component} pod running")
    }

    /// Each running pod of `components` → the gRPC requests it has answered
    /// (`recstack_<component>_requests_total`).
    fn replica_requests(&self, components: &[&str]) -> anyhow::Result<BTreeMap<String, f64>> {
        self.replica_sums(components, |c| format!("recstack_{c}_requests_total"), &[])
    }

    /// Each running pod of `components` → the sum of its `metric(component)` series that carry
    /// every one of `labels` (`name="value"`), read from the pod's `/metrics`.
    fn replica_sums(
        &self,
        components: &[&str],
        metric: impl Fn(&str) -> String,
        labels: &[&str],
    ) -> anyhow::Result<BTreeMap<String, f64>> {
        Ok(self
            .replica_metrics(components)?
            .into_iter()
            .map(|(pod, component, metrics)| {
                let sum = recstack_e2e::sum_series(&metrics, &metric(&component), labels);
                (pod, sum)
            })
            .collect())
    }

    /// Each running pod of `components`: its name, its component and its parsed `/metrics`.
    fn replica_metrics(&self, components: &[&str]) -> anyhow::Result<Vec<(String, String, Metrics)>> {
        let targets: Vec<(String, String, SocketAddr)> = {
            let mut pods = self.pods.lock().map_err(|_| anyhow::anyhow!("pods lock"))?;
            let mut targets = Vec::new();
            for pod in pods.iter_mut() {
                for c in components {
                    if pod.plan.workload == format!("{STACK}-{c}") && pod.running() {
                        targets.push((
                            pod.plan.name.clone(),
                            c.to_string(),
                            SocketAddr::from((pod.ip, pod.port("http")?)),
                        ));
                    }
                }
            }
            targets
        };
        let mut out = Vec::new();
        for (pod, component, addr) in targets {
            let (_, body) = http(addr, "GET", "/metrics", None, Duration::from_secs(5))?;
            out.push((pod, component, recstack_e2e::parse_metrics(&body)));
        }
        Ok(out)
    }

    /// How many of `component`'s pods pass their readiness probe.
    fn ready_replicas(&self, component: &str) -> anyhow::Result<usize> {
        let mut pods = self.pods.lock().map_err(|_| anyhow::anyhow!("pods lock"))?;
        let workload = format!("{STACK}-{component}");
        Ok(pods
            .iter_mut()
            .filter_map(|p| (p.plan.workload == workload && p.running() && p.probe_ready()).then_some(()))
            .count())
    }

    fn gateway(&self) -> anyhow::Result<SocketAddr> {
        self.http_of("gateway")
    }

    /// A key of the access Secret the operator created for the stack (random tokens).
    fn access_token(&self, key: &str) -> anyhow::Result<String> {
        let secret = self.json(&["-n", NS, "get", "secret", &format!("{STACK}-access")])?;
        let encoded = secret["data"][key]
            .as_str()
            .with_context(|| format!("the access Secret has no {key}"))?;
        Ok(String::from_utf8(pods::base64_decode(encoded)?)?)
    }

    fn with_pod<T>(&self, name: &str, f: impl FnOnce(&mut Pod) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let mut pods = self.pods.lock().map_err(|_| anyhow::anyhow!("pods lock"))?;
        let pod = pods
            .iter_mut()
            .find(|p| p.plan.name == name)
            .with_context(|| format!("no pod {name}"))?;
        f(pod)
    }
}

fn recommend_once(gateway: SocketAddr, user: &str, n: usize) -> anyhow::Result<Value> {
    let body = json!({ "user_id": user, "n": n }).to_string();
    let (code, text) = http(gateway, "POST", "/v1/recommend", Some(&body), Duration::from_secs(5))?;
    ensure!(code == 200, "recommend for {user}: HTTP {code}: {text}");
    Ok(serde_json::from_str(&text)?)
}

fn item_ids(response: &Value) -> Vec<String> {
    response["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["item_id"].as_str().map(String::from))
        .collect()
}

// === scenarios ===

fn stores(d: &mut Deployed) -> anyhow::Result<()> {
    let net = Network::create("rsbr0", [10, 88])?;
    // The stores' own address on the node, outside every pod.
    Command::new("ip")
        .args(["addr", "add", &format!("{STORES}/16"), "dev", &net.bridge])
        .status()?;
    d.net = Some(net);
    let root = d.dir.join("s3");
    std::fs::create_dir_all(root.join(BUCKET))?;
    let mut s3 = Command::new(&d.versitygw);
    s3.args(["--port", &format!("{STORES}:7070"), "posix"])
        .arg(&root)
        .env("ROOT_ACCESS_KEY", ACCESS_KEY)
        .env("ROOT_SECRET_KEY", SECRET_KEY);
    d.start_store("versitygw", s3, 7070)?;
    // A Redis Cluster of three masters (slots split by `redis-cli --cluster create`), as a
    // cluster would run one: every node on the stores' address, announcing it.
    for (n, port) in REDIS_PORTS.into_iter().enumerate() {
        let dir = d.dir.join(format!("redis-{n}"));
        std::fs::create_dir_all(&dir)?;
        let mut redis = Command::new("redis-server");
        redis
            .args(["--bind", &STORES.to_string(), "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
            // The node's own address: the bus connections it makes leave from the bridge's
            // first address, which its peers would otherwise take for it.
            .args(["--cluster-announce-ip", &STORES.to_string()])
            .arg("--dir")
            .arg(&dir);
        d.start_store(REDIS_NODES[n], redis, port)?;
    }
    // Bounded: a cluster whose nodes cannot meet would keep `create` waiting.
    let create = Command::new("timeout")
        .args(["60", "redis-cli", "--cluster", "create"])
        .args(REDIS_PORTS.map(|p| format!("{STORES}:{p}")))
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()?;
    ensure!(
        create.status.success(),
        "redis-cli --cluster create: {}",
        String::from_utf8_lossy(&create.stdout)
    );
    for port in REDIS_PORTS {
        wait_until(
            &format!("redis {port} serving every slot"),
            Duration::from_secs(30),
            || {
                let info = Command::new("redis-cli")
                    .args(["-h", &STORES.to_string(), "-p", &port.to_string(), "cluster", "info"])
                    .output()?;
                Ok(String::from_utf8_lossy(&info.stdout)
                    .contains("cluster_state:ok")
                    .then_some(()))
            },
        )?;
    }
    let site = d.venv.join("lib/python3.11/site-packages");
    // Apache Kafka (KRaft, one broker) from the jars scripts/setup resolved.
    let mut kafka = Command::new(repo().join("scripts/kafka-broker"));
    kafka
        .arg(d.dir.join("kafka"))
        .args([&STORES.to_string(), "9092", "kafka.infra.svc:9092"]);
    d.start_store("kafka", kafka, 9092)?;
    let mut es = Command::new(site.join("osmem_server/bin/osmem-server"));
    es.args(["-addr", &format!("{STORES}:9200"), "-no-stdin-watch"]);
    d.start_store("osmem", es, 9200)?;
    Ok(())
}

fn publish(d: &mut Deployed) -> anyhow::Result<()> {
    let models = repo().join("services/models/gbdt");
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        use object_store::{ObjectStoreExt, PutPayload};
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_endpoint(format!("http://{STORES}:7070"))
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .build()?;
        // The model and its card, as a training job would upload them; the ratings, as a data
        // pipeline would (a later build reads them from here).
        let data = repo().join("services/data/movietweetings-100k");
        let uploads = [
            (models.as_path(), "models/gbdt"),
            (data.as_path(), "data/movietweetings"),
        ];
        // What an upgraded stack finds: `current` naming a version a release before the
        // artifact format field wrote (its manifest names no format). The services of this
        // release cannot read it and must wait for their own build rather than crash-loop.
        let older = format!("{STACK}/artifacts/{OLDER_VERSION}");
        let manifest = serde_json::json!({
            "version": OLDER_VERSION,
            "created": "2026-11-01T00:00:00Z",
            "dataset": "movietweetings",
            "inputs": {},
            "params": {},
            "files": {},
            "counts": {},
        });
        for (path, bytes) in [
            (format!("{older}/artifacts.bin"), b"an older release's layout".to_vec()),
            (format!("{older}/manifest.json"), manifest.to_string().into_bytes()),
            (
                format!("{STACK}/artifacts/current"),
                format!("{OLDER_VERSION}\n").into_bytes(),
            ),
        ] {
            store
                .put(&object_store::path::Path::from(path), PutPayload::from(bytes))
                .await?;
        }
        for (dir, prefix) in uploads {
            for entry in std::fs::read_dir(dir)? {
                let path = entry?.path();
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string();
                let bytes = std::fs::read(&path)?;
                store
                    .put(
                        &object_store::path::Path::from(format!("{prefix}/{name}")),
                        PutPayload::from(bytes),
                    )
                    .await?;
            }
        }
        anyhow::Ok(())
    })?;
    ensure!(
        d.dir.join(format!("s3/{BUCKET}/models/gbdt/model.onnx")).exists(),
        "model uploaded"
    );
    // Held-out users: a spread of the dataset's users, and one it has never seen.
    let ratings = std::fs::read_to_string(repo().join("services/data/movietweetings-100k/ratings.dat"))?;
    let mut users: BTreeSet<String> = BTreeSet::new();
    for line in ratings.lines().step_by(4_999) {
        if let Some(user) = line.split("::").next() {
            users.insert(user.to_string());
        }
    }
    d.users = users.into_iter().take(15).collect();
    d.users.push("e2e-new-user".into());
    Ok(())
}

fn apply(d: &mut Deployed) -> anyhow::Result<()> {
    d.cluster.install()?;
    let kubeconfig = d
        .cluster
        .service_account_kubeconfig("recstack-system", "recstack-operator")?;
    d.operator = Some(Operator::start(&d.operator_bin, &kubeconfig, "deployed", &d.dir)?);
    d.k(&["create", "namespace", NS])?;
    let mut secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "store-credentials", "namespace": NS },
        "stringData": {},
    });
    for (k, v) in d.s3_env() {
        // The endpoint comes from the stack's spec (its port opens the NetworkPolicy).
        if k != "AWS_ENDPOINT_URL" && k != "AWS_ALLOW_HTTP" {
            secret["stringData"][k] = json!(v);
        }
    }
    d.cluster.kubectl_stdin(&["apply", "-f", "-"], &secret.to_string())?;
    let stack = format!(
        r#"apiVersion: recstack.io/v1alpha1
kind: RecommenderStack
metadata: {{name: {STACK}, namespace: {NS}}}
spec:
  image: registry.example/recstack:e2e
  artifacts:
    uri: s3://{BUCKET}/{STACK}/artifacts
    endpoint: http://s3.infra.svc:7070
    credentialsSecretRef: {{name: store-credentials}}
    pollSeconds: 5
  build: {{}}
  recall: {{replicas: 2}}
  ranking:
    replicas: 2
    model: {{uri: "s3://{BUCKET}/models/gbdt/model.onnx", version: gbdt-2}}
  rerank: {{replicas: 1}}
  feature: {{replicas: 1, redisUrl: "{redis}"}}
  ingest: {{replicas: 1}}
  gateway: {{replicas: 1, latencyTargetMs: {latency}}}
  eventLog: {{bootstrapServers: ["kafka.infra.svc:9092"], partitions: 4, replicationFactor: 1, minInsyncReplicas: 1}}
  stream: {{window: 3s, parallelism: 2}}
{traces}"#,
        // The checks want every request full and traced in the shared store; the bench, the
        // gateway's defaults with traces in its embedded store, as `recstack up` keeps them
        // (the Elasticsearch-API test server takes a core at these rates).
        // RECSTACK_E2E_LATENCY_TARGET_MS overrides the bench's objective (0: off, to measure
        // the full level under load).
        latency = if bench_mode() {
            std::env::var("RECSTACK_E2E_LATENCY_TARGET_MS")
                .ok()
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(5)
        } else {
            0
        },
        redis = redis_url("redis.infra.svc"),
        traces = if bench_mode() {
            ""
        } else {
            "  traceStore: {elasticsearchUrl: \"http://es.infra.svc:9200\", sampling: 1.0}\n  dashboard: {}\n"
        },
    );
    d.cluster.kubectl_stdin(&["apply", "-f", "-"], &stack)?;
    let mut want = vec!["gateway", "recall", "ranking", "rerank", "feature", "ingest", "stream"];
    if !bench_mode() {
        want.extend(["traces", "dashboard"]);
    }
    let selector = format!("recstack.io/stack={STACK}");
    let deployments = wait_until(
        "the operator's Deployments and StatefulSet",
        Duration::from_secs(60),
        || {
            let list = d.json(&["-n", NS, "get", "deployments,statefulsets", "-l", &selector])?;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            Ok((items.len() == want.len()).then_some(items))
        },
    )?;
    // The offline build (spec.build): one Job, named after a hash of its spec.
    let jobs = wait_until("the operator's build Job", Duration::from_secs(60), || {
        let list = d.json(&["-n", NS, "get", "jobs", "-l", &selector])?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        Ok((items.len() == 1).then_some(items))
    })?;
    let job = &jobs[0];
    let args = strings(&job["spec"]["template"]["spec"]["containers"][0]["args"]);
    ensure!(
        args.first() == Some(&"build") && args.contains(&format!("s3://{BUCKET}/{STACK}/artifacts").as_str()),
        "the build Job publishes to the stack's artifacts: {args:?}"
    );
    d.objects = deployments;
    d.objects.extend(jobs);
    d.services = d.json(&["-n", NS, "get", "services"])?["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    d.policies = d.json(&["-n", NS, "get", "networkpolicies"])?["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        d.services.len() == want.len(),
        "{} Services (one per component; the stream job's is its StatefulSet's headless one)",
        d.services.len()
    );
    ensure!(d.policies.len() >= 10, "{} NetworkPolicies", d.policies.len());
    Ok(())
}

/// Polls every pod's readiness probe and rewrites every pod's hosts file when the set of ready
/// pods changes (the endpoints controller and cluster DNS), until stopped.
fn endpoints_loop(
    pods: Arc<Mutex<Vec<Pod>>>,
    services: Vec<Value>,
    extra: Vec<(String, Ipv4Addr)>,
    stop: Arc<AtomicBool>,
) {
    let mut last = String::new();
    while !stop.load(Ordering::Relaxed) {
        if let Ok(mut pods) = pods.lock() {
            let addrs: Vec<PodAddr> = pods
                .iter_mut()
                .map(|p| PodAddr {
                    ready: p.probe_ready(),
                    name: p.plan.name.clone(),
                    namespace: p.plan.namespace.clone(),
                    labels: p.plan.labels.clone(),
                    ip: p.ip,
                    ports: p.plan.ports.clone(),
                })
                .collect();
            let hosts = pods::hosts_file(&services, &addrs, &extra);
            if hosts != last {
                for p in pods.iter() {
                    let _ = p.write_hosts(&hosts);
                }
                last = hosts;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn start_pods(d: &mut Deployed) -> anyhow::Result<()> {
    let mut objects = Objects::default();
    for cm in d.json(&["-n", NS, "get", "configmaps"])?["items"]
        .as_array()
        .into_iter()
        .flatten()
    {
        objects
            .config_maps
            .insert(cm["metadata"]["name"].as_str().unwrap_or_default().into(), cm.clone());
    }
    for s in d.json(&["-n", NS, "get", "secrets"])?["items"]
        .as_array()
        .into_iter()
        .flatten()
    {
        objects
            .secrets
            .insert(s["metadata"]["name"].as_str().unwrap_or_default().into(), s.clone());
    }
    objects.api_access = Some(api_access(d)?);
    let mut plans = Vec::new();
    for deployment in &d.objects {
        plans.extend(pods::plan_workload(deployment, &objects)?);
    }
    // The services image (services/Dockerfile): the binary, ONNX Runtime, the bundled model and
    // artifacts at the paths its COPY lines give, and its ENV.
    let dockerfile = std::fs::read_to_string(repo().join("services/Dockerfile"))?;
    let ort = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .or_else(|| find_onnxruntime(&d.venv))
        .context("no libonnxruntime.so (scripts/setup installs the onnxruntime wheel into .venv)")?;
    let bundled = d.dir.join("image-artifacts");
    let out = Command::new(&d.recstack)
        .args(["build", "--quiet", "--out"])
        .arg(&bundled)
        .current_dir(repo())
        .output()?;
    ensure!(
        out.status.success(),
        "building the image's bundled artifacts: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut image = Image {
        files: vec![
            (d.recstack.clone(), "/usr/local/bin/recstack".into()),
            (ort, "/opt/onnxruntime/lib/libonnxruntime.so".into()),
            (repo().join("services/models"), "/usr/share/recstack/models".into()),
            (
                repo().join("services/data/movietweetings-100k"),
                "/usr/share/recstack/data/movietweetings-100k".into(),
            ),
            (bundled, "/usr/share/recstack/artifacts".into()),
        ],
        env: pods::dockerfile_env(&dockerfile),
    };
    // The dashboard's browser build (scripts/build-dashboard; .ci/run makes it before the
    // e2e). Without it the dashboard serves its pages unhydrated, as the image would.
    let site = repo().join("dashboard/site");
    if site.join("pkg").is_dir() {
        image.files.push((site, "/usr/share/recstack/dashboard".into()));
    }
    ensure!(
        image
            .env
            .iter()
            .any(|(k, v)| k == "ORT_DYLIB_PATH" && v == "/opt/onnxruntime/lib/libonnxruntime.so"),
        "services/Dockerfile sets ORT_DYLIB_PATH to where it copies the library: {:?}",
        image.env
    );
    let net = d.net.as_mut().context("no network")?;
    let ips: Vec<Ipv4Addr> = plans.iter().map(|_| net.allocate()).collect();
    let addrs: Vec<PodAddr> = plans
        .iter()
        .zip(&ips)
        .map(|(p, ip)| PodAddr {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            labels: p.labels.clone(),
            ip: *ip,
            ports: p.ports.clone(),
            ready: false,
        })
        .collect();
    let mut extra: Vec<(String, Ipv4Addr)> = ["s3.infra.svc", "redis.infra.svc", "kafka.infra.svc", "es.infra.svc"]
        .into_iter()
        .map(|n| (n.to_string(), STORES))
        .collect();
    // The `kubernetes` Service: the node, where api_access's proxy listens.
    extra.push((API_HOST.to_string(), net.node));
    let hosts = pods::hosts_file(&d.services, &addrs, &extra);
    let node = net.node;
    let net = d.net.as_ref().context("no network")?;
    let pods_dir = d.dir.join("pods");
    let mut started = Vec::new();
    for (plan, addr) in plans.into_iter().zip(&addrs) {
        // The pod's policies are in place before its process starts (it begins by fetching
        // from S3, which its policy must allow).
        let ruleset = pods::nft_ruleset(&pods::pod_policy(&d.policies, addr, &addrs), node);
        started.push(Pod::start(net, plan, addr.ip, &image, &pods_dir, &hosts, &ruleset)?);
    }
    *d.pods.lock().map_err(|_| anyhow::anyhow!("pods lock"))? = started;
    let (pods, services, stop) = (d.pods.clone(), d.services.clone(), d.endpoints_stop.clone());
    std::thread::spawn(move || endpoints_loop(pods, services, extra, stop));
    // The services start before anything is published and wait for it; the build Job's pod
    // publishes and exits 0.
    let result = wait_until("every pod ready, the build complete", Duration::from_secs(240), || {
        let mut pods = d.pods.lock().map_err(|_| anyhow::anyhow!("pods lock"))?;
        let mut done = true;
        for p in pods.iter_mut() {
            if p.plan.completes {
                match p.exit_status() {
                    Some(status) if status.success() => {}
                    Some(status) => bail!("{} failed ({status}):\n{}", p.plan.name, p.log_tail(15)),
                    None => done = false,
                }
            } else if !p.running() {
                bail!("{} exited:\n{}", p.plan.name, p.log_tail(15));
            } else if !p.probe_ready() {
                done = false;
            }
        }
        Ok(done.then_some(()))
    });
    if let Err(e) = result {
        let mut pods = d.pods.lock().map_err(|_| anyhow::anyhow!("pods lock"))?;
        let unready: Vec<String> = pods
            .iter_mut()
            .filter_map(|p| (!p.probe_ready()).then(|| format!("{}:\n{}", p.plan.name, p.log_tail(8))))
            .collect();
        bail!("{e:#}\nnot ready:\n{}", unready.join("\n"));
    }
    // The store's credentials reached every pod as files, none as environment.
    for pod in d.pods.lock().map_err(|_| anyhow::anyhow!("pods lock"))?.iter() {
        ensure!(
            !pod.plan.env.iter().any(|(k, _)| k == "AWS_SECRET_ACCESS_KEY"),
            "{}: a credential in the environment",
            pod.plan.name
        );
    }
    // Each service's runtime has the threads its CPU request gives (the operator's
    // `resourceFieldRef`, resolved as a kubelet does), not one per core of this machine.
    let want: BTreeMap<String, String> = d
        .pods
        .lock()
        .map_err(|_| anyhow::anyhow!("pods lock"))?
        .iter()
        .filter(|p| !p.plan.completes)
        .map(|p| {
            let threads = p.plan.env.iter().find(|(k, _)| k == "RECSTACK_WORKER_THREADS");
            (p.plan.name.clone(), threads.map(|(_, v)| v.clone()).unwrap_or_default())
        })
        .collect();
    let online = ["gateway", "recall", "ranking", "rerank", "feature", "ingest", "stream"];
    let running = d.replica_metrics(&online)?;
    ensure!(
        running.len() >= online.len(),
        "{} online pods answered /metrics",
        running.len()
    );
    for (pod, _, metrics) in running {
        let threads = metrics.get("recstack_runtime_worker_threads").copied();
        ensure!(
            want[&pod] == "1" && threads == Some(1.0),
            "{pod}: runtime worker threads {threads:?} for RECSTACK_WORKER_THREADS={:?} (the default \
             requests are at most 1 core)",
            want[&pod]
        );
    }
    // Every artifact reader found `current` naming an older release's version, waited (none
    // exited: checked above), then fetched the build's.
    for component in ["recall", "ranking", "rerank", "feature", "gateway"] {
        let log = d.with_pod(&format!("{STACK}-{component}-0"), |p| {
            Ok(std::fs::read_to_string(&p.log)?)
        })?;
        let fetched = log
            .lines()
            .find(|l| l.contains("fetched artifacts"))
            .unwrap_or_default();
        ensure!(
            log.contains(&format!("{OLDER_VERSION} was written in an older format"))
                && log.contains("waiting for a build in this release's format")
                && fetched.contains("version=v-")
                && !fetched.contains(OLDER_VERSION),
            "{component} waited out the older release's artifacts, then fetched the build's from S3:\n{log}"
        );
    }
    let log = d.with_pod(&format!("{STACK}-recall-0"), |p| Ok(std::fs::read_to_string(&p.log)?))?;
    ensure!(
        !log.contains("user tower did not load"),
        "recall runs the sequence model's user tower (ONNX Runtime):\n{log}"
    );
    let job = d.objects.iter().find(|o| o["kind"] == "Job").context("no Job")?;
    let job = job["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let log = d.with_pod(&format!("{job}-0"), |p| Ok(std::fs::read_to_string(&p.log)?))?;
    ensure!(
        log.contains(&format!("s3://{BUCKET}/{STACK}/artifacts/current names v-")),
        "the build published a version:\n{log}"
    );
    ensure!(
        log.contains("build: sequence model seq-"),
        "the build put the bundled sequence model into the artifacts:\n{log}"
    );
    ensure!(
        d.dir.join(format!("s3/{BUCKET}/{STACK}/artifacts/current")).exists(),
        "`current` is in the bucket"
    );
    // The operator reports the Job in the stack's status (the control plane's pods are kwok's,
    // which never finish, so its state there is Pending or Running).
    let status = wait_until("status.build", Duration::from_secs(30), || {
        let stack = d.json(&["-n", NS, "get", "recommenderstack", STACK])?;
        Ok((stack["status"]["build"]["job"] == job.as_str()).then(|| stack["status"]["build"].clone()))
    })?;
    ensure!(
        matches!(status["state"].as_str(), Some("Pending" | "Running")),
        "{status}"
    );
    Ok(())
}

/// The API server's name as pods see it (the `kubernetes` Service; one of the names its
/// certificate carries).
const API_HOST: &str = "kubernetes.default.svc";

/// What the kubelet gives pods that mount a ServiceAccount token, and the `kubernetes`
/// Service: a proxy on the node's address, port 443, to the API server (which listens on
/// loopback).
fn api_access(d: &Deployed) -> anyhow::Result<pods::ApiAccess> {
    let view = |path: &str| {
        d.k(&[
            "config",
            "view",
            "--minify",
            "-o",
            &format!("jsonpath={{.clusters[0].cluster.{path}}}"),
        ])
    };
    let ca_crt = std::fs::read(view("certificate-authority")?.trim())?;
    let server = view("server")?;
    let upstream: SocketAddr = server
        .trim()
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("the API server's address in {server:?}"))?;
    let mut tokens = BTreeMap::new();
    for workload in &d.objects {
        let pod = &workload["spec"]["template"]["spec"];
        if pod["automountServiceAccountToken"] == true
            && let Some(account) = pod["serviceAccountName"].as_str()
        {
            let token = d.k(&["-n", NS, "create", "token", account, "--duration=2h"])?;
            tokens.insert(account.to_string(), token.trim().to_string());
        }
    }
    let node = d.net.as_ref().context("no network")?.node;
    let listener = std::net::TcpListener::bind((node, 443))?;
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = std::net::TcpStream::connect(upstream) else {
                continue;
            };
            let pairs = [
                (client.try_clone(), server.try_clone()),
                (server.try_clone(), client.try_clone()),
            ];
            for (from, to) in pairs {
                let (Ok(mut from), Ok(mut to)) = (from, to) else {
                    continue;
                };
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    Ok(pods::ApiAccess {
        host: API_HOST.into(),
        port: 443,
        ca_crt,
        tokens,
    })
}

fn find_onnxruntime(venv: &Path) -> Option<PathBuf> {
    let dir = venv.join("lib/python3.11/site-packages/onnxruntime/capi");
    let mut libs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        })
        .collect();
    libs.sort();
    libs.pop()
}

fn recommend(d: &mut Deployed) -> anyhow::Result<()> {
    let gateway = d.gateway()?;
    // No warm-up request: every replica warms itself before it turns ready, so once the
    // gateway's links reach each downstream (its names resolve every 2 s) the very first
    // request is answered in full.
    let seen = wait_until(
        "the gateway's links to reach every ready replica of each downstream",
        Duration::from_secs(20),
        || {
            let (_, body) = http(gateway, "GET", "/metrics", None, Duration::from_secs(5))?;
            let metrics = recstack_e2e::parse_metrics(&body);
            let mut seen = Vec::new();
            // (the gateway's name for the link, the component's)
            for (downstream, component) in [
                ("recall", "recall"),
                ("features", "feature"),
                ("ranking", "ranking"),
                ("rerank", "rerank"),
            ] {
                let ready = d.ready_replicas(component)?;
                let label = format!("downstream=\"{downstream}\"");
                let addresses = recstack_e2e::sum_series(&metrics, "recstack_gateway_downstream_addresses", &[&label]);
                ensure!(
                    ready > 0 && addresses == ready as f64,
                    "{downstream}: the gateway balances over {addresses} addresses, {ready} {component} pods are ready"
                );
                seen.push(format!("{downstream} {addresses}/{ready}"));
            }
            Ok(Some(seen))
        },
    )?;
    println!("      gateway's addresses / ready pods: {}", seen.join(", "));
    let before = d.replica_requests(&["recall", "ranking"])?;
    let ranking_paths = |path: &str| {
        let label = format!("path=\"{path}\"");
        d.replica_sums(
            &["ranking"],
            |_| "recstack_ranking_scored_requests_total".into(),
            &[&label],
        )
    };
    let idle_before = ranking_paths("idle")?;
    // Items the vector channel found among the served ones: that channel answers only when the
    // recall pod runs the sequence model's user tower (ONNX Runtime) from the artifacts.
    let mut from_vector = 0;
    for user in &d.users {
        let r = recommend_once(gateway, user, 10)?;
        from_vector += r["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|item| {
                item["sources"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["channel"] == "vector"))
            })
            .count();
        let items = item_ids(&r);
        ensure!(items.len() == 10, "{user}: {} items: {r}", items.len());
        ensure!(
            items.iter().collect::<BTreeSet<_>>().len() == 10,
            "{user}: duplicates: {items:?}"
        );
        // The level first: below full, items have no lineage, and the reasons say why.
        ensure!(
            r["level"] == "full",
            "{user}: served at level {} ({})",
            r["level"],
            r["degraded"]
        );
        for item in r["items"].as_array().into_iter().flatten() {
            ensure!(
                item["sources"].as_array().is_some_and(|s| !s.is_empty()),
                "{user}: an item without lineage: {item}"
            );
        }
        ensure!(
            r["model_version"] == "gbdt-2",
            "{user}: scored by {}",
            r["model_version"]
        );
        ensure!(
            r["artifact_version"].as_str().is_some_and(|v| v.starts_with("v-")),
            "{r}"
        );
    }
    ensure!(
        from_vector > 0,
        "no served item came from the vector channel: the recall pods did not run the user tower"
    );
    // Each ranking pod reports its model's age against the data it serves: the build Job built
    // the data the bundled model was trained on (its card's `training.data_as_of`), so 0.
    // And how it scores it: the card's trees, by the service itself (not ONNX Runtime's graph).
    let age = "recstack_ranking_model_data_age_seconds{model_version=\"gbdt-2\"}";
    let scorer = "recstack_ranking_model_info{model_version=\"gbdt-2\",scorer=\"trees\"}";
    for (pod, _, metrics) in d.replica_metrics(&["ranking"])? {
        ensure!(metrics.get(age) == Some(&0.0), "{pod}: {age} is {:?}", metrics.get(age));
        let info: Vec<_> = metrics
            .keys()
            .filter(|k| k.starts_with("recstack_ranking_model_info"))
            .collect();
        ensure!(
            metrics.get(scorer) == Some(&1.0) && info.len() == 1,
            "{pod}: {scorer} is {:?} (model_info: {info:?})",
            metrics.get(scorer)
        );
    }
    println!("      served items the vector channel found: {from_vector}");
    // The gateway spreads its calls over every replica: each recall and ranking pod answered
    // some of these requests (a pod left out would take none of the load it was scaled for).
    let after = d.replica_requests(&["recall", "ranking"])?;
    let served: Vec<String> = after
        .iter()
        .map(|(pod, n)| format!("{pod} {}", n - before.get(pod).copied().unwrap_or(0.0)))
        .collect();
    println!("      requests per replica: {}", served.join(", "));
    ensure!(
        after.len() >= 4
            && after
                .iter()
                .all(|(pod, n)| *n > before.get(pod).copied().unwrap_or(0.0)),
        "a replica took none of {} requests: {}",
        d.users.len(),
        served.join(", ")
    );
    // One request at a time: each ranking call found its pod's model free and nothing queued,
    // so every one was scored on its own thread (the batcher's idle path, on for CPU models),
    // none handed to the batcher's worker.
    let idle_after = ranking_paths("idle")?;
    let worker = ranking_paths("worker")?;
    for (pod, idle) in &idle_after {
        let calls = after.get(pod).copied().unwrap_or(0.0) - before.get(pod).copied().unwrap_or(0.0);
        let idle = idle - idle_before.get(pod).copied().unwrap_or(0.0);
        println!(
            "      {pod}: {idle} of {calls} calls on the idle path ({} through the worker since it started)",
            worker.get(pod).copied().unwrap_or(0.0)
        );
        ensure!(
            calls > 0.0 && idle == calls,
            "{pod}: {idle} of {calls} sequential ranking calls took the idle path"
        );
    }
    // A malformed request is refused with the field named, through the same path.
    let (code, body) = http(
        gateway,
        "POST",
        "/v1/recommend",
        Some(r#"{"user_id": ""}"#),
        Duration::from_secs(5),
    )?;
    ensure!(code == 400 && body.contains("user_id"), "{code} {body}");
    Ok(())
}

fn network_policies(d: &mut Deployed) -> anyhow::Result<()> {
    let addr = |d: &Deployed, deployment: &str, port: &str| -> anyhow::Result<SocketAddr> {
        let pods = d.pods.lock().map_err(|_| anyhow::anyhow!("pods lock"))?;
        let p = pods
            .iter()
            .find(|p| p.plan.workload == format!("{STACK}-{deployment}"))
            .with_context(|| format!("no {deployment} pod"))?;
        Ok(SocketAddr::from((p.ip, p.port(port)?)))
    };
    let cases = [
        ("gateway", "ranking", "grpc", true),
        ("gateway", "recall", "grpc", true),
        ("ingest", "recall", "grpc", true),
        ("ingest", "ranking", "grpc", false),
        // Real-time item features, for a model whose card names them.
        ("ranking", "feature", "grpc", true),
        ("recall", "feature", "grpc", false),
        ("recall", "ranking", "grpc", false),
        ("stream", "feature", "grpc", false),
        ("rerank", "recall", "http", false),
    ];
    let mut wrong = Vec::new();
    for (from, to, port, allowed) in cases {
        let target = addr(d, to, port)?;
        let connected = d.with_pod(&format!("{STACK}-{from}-0"), |p| Ok(p.can_connect(target)))?;
        if connected != allowed {
            wrong.push(format!(
                "{from} → {to}:{port}: connected={connected}, policy says {allowed}"
            ));
        }
    }
    ensure!(wrong.is_empty(), "{}", wrong.join("; "));
    Ok(())
}

fn impressions(d: &mut Deployed) -> anyhow::Result<()> {
    let gateway = d.gateway()?;
    let ingest = d.http_of("ingest")?;
    let user = d.users[0].clone();
    let before = item_ids(&recommend_once(gateway, &user, 10)?);
    let events: Vec<Value> = before
        .iter()
        .enumerate()
        .map(|(i, item)| json!({ "event_id": format!("e2e-imp-{i}"), "user_id": user, "item_id": item, "kind": "impression" }))
        .collect();
    let (code, body) = http(
        ingest,
        "POST",
        "/v1/events",
        Some(&json!({ "events": events }).to_string()),
        Duration::from_secs(5),
    )?;
    ensure!(code == 200 && body.contains("\"accepted\":10"), "{code} {body}");
    // Several answers in a row: the gateway spreads them over both recall replicas; none may
    // serve what the user was just shown.
    wait_until("impressions filtered on every replica", Duration::from_secs(15), || {
        let mut shown_again = BTreeSet::new();
        for _ in 0..8 {
            for item in item_ids(&recommend_once(gateway, &user, 10)?) {
                if before.contains(&item) {
                    shown_again.insert(item);
                }
            }
        }
        Ok(shown_again.is_empty().then_some(()))
    })
}

/// How soon a user's own events must change what they are served.
const FRESHNESS: Duration = Duration::from_secs(10);

/// A pod's gRPC address, as `http://ip:port`.
fn grpc_url(d: &Deployed, pod: &str) -> anyhow::Result<String> {
    d.with_pod(&format!("{STACK}-{pod}"), |p| {
        Ok(format!("http://{}:{}", p.ip, p.port("grpc")?))
    })
}

/// Whether the feature service lists `item` first among `user`'s recent items.
async fn lists_first(
    features: &mut recstack_services::features::proto::features_client::FeaturesClient<tonic::transport::Channel>,
    user: &str,
    item: &str,
) -> anyhow::Result<bool> {
    use recstack_services::features::proto::GetUserRequest;
    let f = features
        .get_user(GetUserRequest {
            user_id: user.to_string(),
        })
        .await?
        .into_inner()
        .features;
    Ok(f.is_some_and(|f| f.recent_items.first().map(String::as_str) == Some(item)))
}

/// The strings of a JSON array (none when it is not one).
fn strings(v: &Value) -> Vec<&str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str).collect()
}

fn freshness(d: &mut Deployed) -> anyhow::Result<()> {
    use recstack_services::features::proto::GetItemsRequest;
    use recstack_services::features::proto::features_client::FeaturesClient;
    use recstack_services::recall::proto::RecallRequest;
    use recstack_services::recall::proto::recall_client::RecallClient;

    let gateway = d.gateway()?;
    let ingest = d.http_of("ingest")?;
    let user = d.users[3].clone();
    // An item of the catalogue the user was not just shown first.
    let before = item_ids(&recommend_once(gateway, &user, 10)?);
    let item = before.last().cloned().context("no items")?;
    // One event time for all: the clicks fall into one window.
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let mut events: Vec<Value> = (0..8)
        .map(|i| json!({ "event_id": format!("e2e-fresh-{i}"), "user_id": format!("e2e-fresh-other-{i}"), "item_id": item, "kind": "click", "ts": ts }))
        .collect();
    events.push(json!({ "event_id": "e2e-fresh-user", "user_id": user, "item_id": item, "kind": "click", "ts": ts }));
    let body = json!({ "events": events }).to_string();
    let (code, text) = http(ingest, "POST", "/v1/events", Some(&body), Duration::from_secs(5))?;
    ensure!(code == 200 && text.contains("\"accepted\":9"), "{code} {text}");
    let posted = Instant::now();

    let features_url = grpc_url(d, "feature-0")?;
    let recall_url = grpc_url(d, "recall-1")?;
    let runtime = tokio::runtime::Runtime::new()?;
    let (user_after, window_after, trending_after, served_after) = runtime.block_on(async {
        let mut features = FeaturesClient::connect(features_url).await?;
        let mut recall = RecallClient::connect(recall_url).await?;
        let deadline = posted + Duration::from_secs(60);
        let (mut user_after, mut window_after, mut trending_after, mut served_after) = (None, None, None, None);
        while user_after.is_none() || window_after.is_none() || trending_after.is_none() || served_after.is_none() {
            ensure!(
                Instant::now() < deadline,
                "after 60 s: user features {user_after:?}, item window {window_after:?}, trending {trending_after:?}, served {served_after:?}"
            );
            if served_after.is_none() && item_ids(&recommend_once(gateway, &user, 10)?) != before {
                served_after = Some(posted.elapsed());
            }
            if user_after.is_none() && lists_first(&mut features, &user, &item).await? {
                user_after = Some(posted.elapsed());
            }
            if window_after.is_none() {
                let items = features
                    .get_items(GetItemsRequest {
                        item_ids: vec![item.clone()],
                        realtime_only: false,
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .items;
                if items.iter().any(|f| f.clicks >= 9) {
                    window_after = Some(posted.elapsed());
                }
            }
            if trending_after.is_none() {
                let request = RecallRequest {
                    user_id: "e2e-fresh-new-user".into(),
                    n: 20,
                    channel_quotas: [("hot", 20)]
                        .into_iter()
                        .chain(["item_cf", "user_cf", "als", "vector", "tag", "cooc"].map(|c| (c, 0)))
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                    ..Default::default()
                };
                let candidates = recall.recall(request).await?.into_inner().candidates;
                if candidates.first().is_some_and(|c| c.item_id == item) {
                    trending_after = Some(posted.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::Ok((user_after, window_after, trending_after, served_after))
    })?;
    let secs = |d: Option<Duration>| d.unwrap_or_default().as_secs_f64();
    println!(
        "      fresh: the click in the user's features after {:.1} s, a changed list served to the user after {:.1} s, the item's window after {:.1} s, trending on recall after {:.1} s",
        secs(user_after),
        secs(served_after),
        secs(window_after),
        secs(trending_after)
    );
    // The freshness target: what the user is served reflects their click within 10 s (the
    // fast path; windows close every `stream.window`).
    ensure!(
        served_after.is_some_and(|t| t <= FRESHNESS),
        "the user's list changed after {:.1} s, over the {FRESHNESS:?} target",
        secs(served_after)
    );
    // The user's next request's trace (a summary, from the trace service over Elasticsearch)
    // records the click among the real-time items recall read, and why-not says the item was
    // consumed.
    let r = recommend_once(gateway, &user, 10)?;
    let id = r["request_id"].as_str().context("a request id")?.to_string();
    let (api, reader) = (d.http_of("traces")?, d.access_token("reader")?);
    let auth = format!("Bearer {reader}");
    let bearer = [("Authorization", auth.as_str())];
    let path = format!("/v1/traces/{id}");
    let trace: Value = wait_until(
        &format!("trace {id} from the trace service"),
        Duration::from_secs(30),
        || {
            let (code, text) = http_with(api, "GET", &path, &bearer, None, Duration::from_secs(5))?;
            Ok(if code == 200 {
                Some(serde_json::from_str(&text)?)
            } else {
                None
            })
        },
    )?;
    let history = strings(&trace["realtime_history"]);
    ensure!(
        history.contains(&item.as_str()),
        "the trace's real-time history {history:?} lacks the clicked {item}"
    );
    let (code, text) = http_with(
        api,
        "GET",
        &format!("{path}/why-not/{item}"),
        &bearer,
        None,
        Duration::from_secs(10),
    )?;
    let why: Value = serde_json::from_str(&text)?;
    ensure!(
        code == 200 && why["stage"] == "consumed",
        "why-not of the clicked {item}: {code}: {text}"
    );
    // Event to served features over many users: each click posted on its own, timed until the
    // feature service (what the gateway reads for that user) lists it first.
    let features_url = grpc_url(d, "feature-0")?;
    let mut delays: Vec<Duration> = runtime.block_on(async {
        let mut features = FeaturesClient::connect(features_url).await?;
        let mut delays = Vec::new();
        for n in 0..40 {
            let user = format!("e2e-fresh-many-u{n}");
            let item = before[n % before.len()].clone();
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as i64;
            let body = json!({ "events": [{ "event_id": format!("e2e-fresh-many-{n}"), "user_id": user,
                "item_id": item, "kind": "click", "ts": ts }] })
            .to_string();
            let posted = Instant::now();
            let (code, text) = http(ingest, "POST", "/v1/events", Some(&body), Duration::from_secs(5))?;
            ensure!(code == 200 && text.contains("\"accepted\":1"), "{code} {text}");
            loop {
                if lists_first(&mut features, &user, &item).await? {
                    delays.push(posted.elapsed());
                    break;
                }
                ensure!(
                    posted.elapsed() < FRESHNESS,
                    "{user}'s click not visible after {FRESHNESS:?}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        anyhow::Ok(delays)
    })?;
    delays.sort();
    let at = |q: f64| delays[((delays.len() as f64 * q).ceil() as usize).clamp(1, delays.len()) - 1];
    println!(
        "      event to served features over {} users (ingest → Kafka → stream pod → Redis → feature service, polled every 10 ms): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        delays.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        delays.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    Ok(())
}

/// A stream replica killed mid-stream (SIGKILL: no final commit) and restarted by its kubelet
/// while events keep arriving: the two replicas read disjoint partitions, the restarted one
/// resumes its own from their checkpoints, and every item's totals in Redis equal a plain
/// count of the events posted — none lost, none counted twice (windows replayed after the
/// restart are refused by their versions).
fn stream_replica_killed(d: &mut Deployed) -> anyhow::Result<()> {
    use recstack_services::events::log::partition_of;
    use recstack_services::stream::sink::{FeatureSink, RedisStore};
    use recstack_services::stream::window::{Counts, ItemWindow};

    let ingest = d.http_of("ingest")?;
    let replicas = [0, 1].map(|i| format!("{STACK}-stream-{i}"));
    // Each replica reads two of the four partitions (status.stream says which).
    for (i, name) in replicas.iter().enumerate() {
        let addr = d.with_pod(name, |p| Ok(SocketAddr::from((p.ip, p.port("http")?))))?;
        let (_, body) = http(addr, "GET", "/metrics", None, Duration::from_secs(5))?;
        let owned = recstack_e2e::sum_series(&recstack_e2e::parse_metrics(&body), "recstack_stream_partitions", &[]);
        ensure!(owned == 2.0, "{name} reads {owned} partitions, not 2");
        let log = std::fs::read_to_string(d.with_pod(name, |p| Ok(p.log.clone()))?)?;
        ensure!(
            log.contains(&format!("replica {i} of 2")),
            "{name} does not log its assignment"
        );
    }
    let plan = d.json(&["-n", NS, "get", "recommenderstack", STACK])?["status"]["stream"].clone();
    ensure!(
        plan["assignment"]
            == json!([
                {"replica": replicas[0], "partitions": [0, 2]},
                {"replica": replicas[1], "partitions": [1, 3]},
            ]),
        "status.stream {plan}"
    );

    // Items on every partition, so both replicas have work.
    let items: Vec<String> = (0..16).map(|i| format!("e2e-kill-item-{i}")).collect();
    let partitions: std::collections::BTreeSet<u32> = items.iter().map(|i| partition_of(i, 4)).collect();
    ensure!(partitions.len() == 4, "the items cover partitions {partitions:?}");
    let mut want: BTreeMap<String, Counts> = BTreeMap::new();
    let mut post = |batch: usize| -> anyhow::Result<()> {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64;
        let events: Vec<Value> = (0..80)
            .map(|j| {
                let n = batch * 80 + j;
                let item = &items[(n * 7) % items.len()];
                let kind = if n.is_multiple_of(3) { "click" } else { "impression" };
                want.entry(item.clone())
                    .or_default()
                    .add(recstack_services::events::EventKind::parse(kind).expect("a kind"));
                json!({ "event_id": format!("e2e-kill-{n}"), "user_id": format!("e2e-kill-user-{}", n % 9),
                        "item_id": item, "kind": kind, "ts": ts })
            })
            .collect();
        let body = json!({ "events": events }).to_string();
        let (code, text) = http(ingest, "POST", "/v1/events", Some(&body), Duration::from_secs(5))?;
        ensure!(code == 200 && text.contains("\"accepted\":80"), "{code} {text}");
        Ok(())
    };
    for batch in 0..3 {
        post(batch)?;
        std::thread::sleep(Duration::from_millis(700));
    }
    d.with_pod(&replicas[1], |p| {
        p.signal("KILL")?;
        p.wait_exit(Duration::from_secs(10)).map(drop)
    })?;
    for batch in 3..6 {
        post(batch)?;
        std::thread::sleep(Duration::from_millis(700));
    }
    d.with_pod(&replicas[1], |p| p.restart())?;
    for batch in 6..8 {
        post(batch)?;
        std::thread::sleep(Duration::from_millis(700));
    }

    // Every window closes within `stream.window` (3 s) plus the allowed lateness; read each
    // item's totals as the stream job's own versioned write sees them.
    let runtime = tokio::runtime::Runtime::new()?;
    let totals = runtime.block_on(async {
        let store = RedisStore::connect(&redis_url(&STORES.to_string()), Duration::from_secs(2)).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut got = BTreeMap::new();
            for item in want.keys() {
                // An old window is refused and answers with the stored state, changing nothing.
                let probe = ItemWindow {
                    item_id: item.clone(),
                    window_start_ms: 0,
                    window_end_ms: 1,
                    counts: Counts::default(),
                    version: Default::default(),
                };
                let (_, state) = store.apply_windows(&[probe]).await?.remove(0);
                got.insert(item.clone(), state.totals);
            }
            if got == want || Instant::now() > deadline {
                return anyhow::Ok(got);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })?;
    for (item, counts) in &want {
        ensure!(
            totals.get(item) == Some(counts),
            "{item}: totals {:?}, posted {counts:?}",
            totals.get(item)
        );
    }
    let log = std::fs::read_to_string(d.with_pod(&replicas[1], |p| Ok(p.log.clone()))?)?;
    ensure!(
        log.matches("replica 1 of 2").count() == 2,
        "the restarted replica took its own partitions again"
    );
    println!(
        "      {} events over {} items: totals exact after a stream replica was killed and restarted",
        want.values().map(|c| c.impressions + c.clicks).sum::<u64>(),
        want.len()
    );
    Ok(())
}

fn traces(d: &mut Deployed) -> anyhow::Result<()> {
    let gateway = d.gateway()?;
    let es = SocketAddr::from((STORES, 9200));
    let ids: Vec<String> = d.users[..3]
        .iter()
        .map(|u| recommend_once(gateway, u, 5).map(|r| r["request_id"].as_str().unwrap_or_default().to_string()))
        .collect::<anyhow::Result<_>>()?;
    for id in ids {
        wait_until(&format!("trace {id} in the store"), Duration::from_secs(30), || {
            let _ = http(
                es,
                "POST",
                "/recstack-traces/_refresh",
                Some("{}"),
                Duration::from_secs(5),
            );
            let query = json!({ "query": { "term": { "request_id": id } } }).to_string();
            let (code, body) = http(
                es,
                "POST",
                "/recstack-traces/_search",
                Some(&query),
                Duration::from_secs(5),
            )?;
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            Ok((code == 200 && v["hits"]["total"]["value"].as_u64().unwrap_or(0) >= 1).then_some(()))
        })?;
    }
    Ok(())
}

fn dashboard(d: &mut Deployed) -> anyhow::Result<()> {
    // Without a token the dashboard sends the browser to sign in, and shows nothing.
    let (code, body) = http_get(d.http_of("dashboard")?, "/status", Duration::from_secs(10))?;
    ensure!(
        code == 303 && !body.contains(STACK),
        "GET /status without a token: {code}: {body}"
    );
    let bearer = format!("Bearer {}", d.access_token("reader")?);
    let page = |path: &str| -> anyhow::Result<String> {
        let auth = [("Authorization", bearer.as_str())];
        let (code, body) = http_with(
            d.http_of("dashboard")?,
            "GET",
            path,
            &auth,
            None,
            Duration::from_secs(10),
        )?;
        ensure!(code == 200, "GET {path}: {code}: {body}");
        Ok(body)
    };
    // The stack page: what the operator wrote to status, read with the dashboard's own token
    // through the `kubernetes` Service (its Role allows `get` on this stack only).
    let status = wait_until("the stack's status on the dashboard", Duration::from_secs(30), || {
        let body = page("/status")?;
        Ok(body.contains("data-condition=\"Ready\"").then_some(body))
    })?;
    for want in ["data-component=\"recall\"", "data-component=\"gateway\"", STACK] {
        ensure!(status.contains(want), "the status page shows {want}:\n{status}");
    }
    // A request's page: its items, from the trace service over the Elasticsearch store.
    let r = recommend_once(d.gateway()?, &d.users[4], 5)?;
    let id = r["request_id"].as_str().unwrap_or_default().to_string();
    let items = item_ids(&r);
    ensure!(items.len() == 5, "{r}");
    wait_until("the request on the dashboard", Duration::from_secs(30), || {
        let _ = http(
            SocketAddr::from((STORES, 9200)),
            "POST",
            "/recstack-traces/_refresh",
            Some("{}"),
            Duration::from_secs(5),
        );
        let body = page(&format!("/traces/{id}"))?;
        Ok(items.iter().all(|i| body.contains(i.as_str())).then_some(()))
    })
}

fn trace_access(d: &mut Deployed) -> anyhow::Result<()> {
    let (gateway, api) = (d.gateway()?, d.http_of("traces")?);
    let (reader, debug) = (d.access_token("reader")?, d.access_token("debug")?);
    let timeout = Duration::from_secs(10);
    let body = json!({ "user_id": d.users[5], "n": 10, "debug": true }).to_string();
    // Debug from an untrusted caller: 403 naming the field, nothing served.
    let (code, text) = http(gateway, "POST", "/v1/recommend", Some(&body), timeout)?;
    ensure!(
        code == 403 && text.contains("\"field\":\"debug\""),
        "untrusted debug: {code}: {text}"
    );
    // With the debug token: served, and its full trace readable at once from the trace
    // service (another process, over Elasticsearch), without waiting for a refresh.
    let trusted = [("x-recstack-debug-token", debug.as_str())];
    let (code, text) = http_with(gateway, "POST", "/v1/recommend", &trusted, Some(&body), timeout)?;
    ensure!(code == 200, "trusted debug: {code}: {text}");
    let r: Value = serde_json::from_str(&text)?;
    let id = r["request_id"].as_str().context("a request id")?.to_string();
    let path = format!("/v1/traces/{id}");
    let (code, text) = http(api, "GET", &path, None, timeout)?;
    ensure!(
        code == 401 && !text.contains(&id[..8]),
        "trace without a token: {code}: {text}"
    );
    let auth = format!("Bearer {reader}");
    let bearer = [("Authorization", auth.as_str())];
    let (code, text) = http_with(api, "GET", &path, &bearer, None, timeout)?;
    ensure!(code == 200, "trace right after its response: {code}: {text}");
    let trace: Value = serde_json::from_str(&text)?;
    ensure!(
        trace["detail"] == "full" && trace["explained"] == true && trace["user_id"] == d.users[5].as_str(),
        "the debug trace: {}",
        &text[..text.len().min(400)]
    );
    // Why-not of an item recall had but did not serve names its stage and numbers.
    let served = item_ids(&r);
    let missing = trace["candidates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["item_id"].as_str())
        .find(|i| !served.iter().any(|s| s == i))
        .context("a candidate not served")?
        .to_string();
    let (code, text) = http_with(api, "GET", &format!("{path}/why-not/{missing}"), &bearer, None, timeout)?;
    let why: Value = serde_json::from_str(&text)?;
    ensure!(
        code == 200 && why["stage"].as_str().is_some_and(|s| !s.is_empty()) && why["evidence"].is_object(),
        "why-not {missing}: {code}: {text}"
    );
    // What if the first item were blocked: replayed through the gateway (as the dashboard
    // does), compared by the trace service, the item left by a business rule.
    let first = served.first().context("a served item")?.clone();
    let what_if = json!({ "user_id": d.users[5], "n": 10,
        "what_if": { "replay_of": id, "block": [first] } })
    .to_string();
    let (code, text) = http_with(gateway, "POST", "/v1/recommend", &trusted, Some(&what_if), timeout)?;
    ensure!(code == 200, "replay: {code}: {text}");
    let replayed: Value = serde_json::from_str(&text)?;
    let b = replayed["request_id"].as_str().context("the replay's request id")?;
    let (code, text) = http_with(api, "GET", &format!("/v1/compare?a={id}&b={b}"), &bearer, None, timeout)?;
    ensure!(code == 200, "compare: {code}: {text}");
    let c: Value = serde_json::from_str(&text)?;
    let row = c["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["item_id"] == first.as_str())
        .with_context(|| format!("no row for {first}: {text}"))?;
    ensure!(
        row["change"] == "left" && row["stage"] == "business_rule",
        "{first} in the comparison: {row}"
    );
    Ok(())
}

fn business_rules(d: &mut Deployed) -> anyhow::Result<()> {
    let gateway = d.gateway()?;
    let user = d.users[3].clone();
    let before = recommend_once(gateway, &user, 10)?;
    let blocked = item_ids(&before).first().cloned().context("an item to block")?;
    let hash = |d: &Deployed| -> anyhow::Result<Value> {
        let deploy = d.json(&["-n", NS, "get", "deployment", &format!("{STACK}-rerank")])?;
        Ok(deploy["spec"]["template"]["metadata"]["annotations"]["recstack.io/config-hash"].clone())
    };
    let hash_before = hash(d)?;
    let patch = json!({"spec": {
        "businessRules": {"block": [blocked]},
        "experiment": {"name": "e2e-lambda", "trafficPercent": 100, "variants": [
            {"name": "sharp", "mmrLambda": 0.9}, {"name": "broad", "mmrLambda": 0.3}
        ]},
    }});
    d.k(&[
        "-n",
        NS,
        "patch",
        "rstack",
        STACK,
        "--type=merge",
        "-p",
        &patch.to_string(),
    ])?;
    // The operator writes the ConfigMap; the kubelet syncs it into every pod that mounts it.
    let config = wait_until("the ConfigMap with the new rules", Duration::from_secs(30), || {
        let cm = d.json(&["-n", NS, "get", "configmap", &format!("{STACK}-config")])?;
        let yaml = cm["data"]["config.yaml"].as_str().unwrap_or_default().to_string();
        Ok(yaml.contains(&blocked).then_some(yaml))
    })?;
    let files = BTreeMap::from([("config.yaml".to_string(), config.into_bytes())]);
    {
        let pods = d.pods.lock().map_err(|_| anyhow::anyhow!("pods lock"))?;
        for p in pods.iter() {
            if p.plan.mounts.iter().any(|m| m.volume == "config") {
                p.sync_volume("config", &files)?;
            }
        }
    }
    wait_until("rerank applying the new rules", Duration::from_secs(30), || {
        let r = recommend_once(gateway, &user, 10)?;
        Ok((!item_ids(&r).contains(&blocked) && r["experiment"] == "e2e-lambda").then_some(r))
    })?;
    // Nothing rolled: the pod template is the same and the rerank process the same one.
    ensure!(
        hash(d)? == hash_before,
        "the rules changed the pods' config hash: {} → {}",
        hash_before,
        hash(d)?
    );
    d.with_pod(&format!("{STACK}-rerank-0"), |p| {
        ensure!(p.running(), "rerank restarted");
        let log = std::fs::read_to_string(&p.log)?;
        ensure!(log.contains("rerank: new business rules"), "{}", p.log_tail(5));
        Ok(())
    })?;
    // Both variants serve: users are split between them.
    let variants: BTreeSet<String> = d
        .users
        .iter()
        .map(|u| recommend_once(gateway, u, 5).map(|r| r["variant"].as_str().unwrap_or_default().to_string()))
        .collect::<anyhow::Result<_>>()?;
    ensure!(
        variants == BTreeSet::from(["sharp".to_string(), "broad".to_string()]),
        "{variants:?}"
    );
    Ok(())
}

/// Runs `during` while `threads` clients post recommendations to the gateway, then returns
/// what they saw.
fn under_load(d: &Deployed, threads: usize, during: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<LoadStats> {
    let gateway = d.gateway()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Mutex::new(LoadStats::default()));
    let users = d.users.clone();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (stop, stats, users) = (stop.clone(), stats.clone(), users.clone());
            std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let user = &users[i % users.len()];
                    i += threads;
                    let result = recommend_once(gateway, user, 10);
                    let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
                    match result {
                        Ok(r) if item_ids(&r).len() == 10 => {
                            s.ok += 1;
                            if r["level"] != "full" {
                                s.degraded += 1;
                            }
                            let v = r["artifact_version"].as_str().unwrap_or_default().to_string();
                            *s.artifact_versions.entry(v).or_default() += 1;
                        }
                        Ok(r) => {
                            s.errors += 1;
                            if s.reasons.len() < 5 {
                                s.reasons.push(format!("{} items: {r}", item_ids(&r).len()));
                            }
                        }
                        Err(e) => {
                            s.errors += 1;
                            if s.reasons.len() < 5 {
                                s.reasons.push(format!("{e:#}"));
                            }
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let result = during();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    result?;
    let s = std::mem::take(&mut *stats.lock().unwrap_or_else(|p| p.into_inner()));
    println!(
        "      load: {} answered, {} errors, {} degraded, artifact versions {:?}",
        s.ok, s.errors, s.degraded, s.artifact_versions
    );
    ensure!(s.ok > 0, "no request was answered");
    Ok(s)
}

fn new_version(d: &mut Deployed) -> anyhow::Result<()> {
    let first = recommend_once(d.gateway()?, &d.users[1], 5)?["artifact_version"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut second = String::new();
    let stats = under_load(d, 3, || {
        let out = Command::new(&d.recstack)
            // A rebuild from the ratings in the bucket (as the CronJob's runs are).
            .args([
                "build",
                "--quiet",
                "--seed",
                "7",
                "--data",
                &format!("s3://{BUCKET}/data/movietweetings"),
                "--endpoint",
                &format!("http://{STORES}:7070"),
                "--out",
                &format!("s3://{BUCKET}/{STACK}/artifacts"),
            ])
            // The endpoint comes from the flag alone, as in the build Job.
            .envs(
                d.s3_env()
                    .into_iter()
                    .filter(|(k, _)| !matches!(*k, "AWS_ENDPOINT_URL" | "AWS_ALLOW_HTTP")),
            )
            .current_dir(repo())
            .output()?;
        ensure!(
            out.status.success(),
            "recstack build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        second = String::from_utf8_lossy(&out.stdout)
            .trim()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        ensure!(
            second != first && second.starts_with("v-"),
            "a new version: {first} → {second}"
        );
        // Every recall replica serves it (the answers name the version recall served).
        wait_until(
            "the new version on every recall replica",
            Duration::from_secs(60),
            || {
                let mut seen = BTreeSet::new();
                for _ in 0..8 {
                    seen.insert(
                        recommend_once(d.gateway()?, &d.users[1], 5)?["artifact_version"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    );
                }
                Ok((seen.len() == 1 && seen.contains(&second)).then_some(()))
            },
        )?;
        // Every component that reads the artifacts swapped, without a restart.
        let swapped = format!("version={second}");
        for pod in [
            "recall-0",
            "recall-1",
            "rerank-0",
            "ranking-0",
            "ranking-1",
            "feature-0",
            "gateway-0",
        ] {
            wait_until(&format!("{pod} serving {second}"), Duration::from_secs(30), || {
                let log = d.with_pod(&format!("{STACK}-{pod}"), |p| Ok(std::fs::read_to_string(&p.log)?))?;
                Ok(log
                    .lines()
                    .any(|l| l.contains("new artifact version") && l.contains(&swapped))
                    .then_some(()))
            })?;
        }
        Ok(())
    })?;
    ensure!(
        stats.errors == 0,
        "{} failed requests during the swap: {:?}",
        stats.errors,
        stats.reasons
    );
    ensure!(
        stats.artifact_versions.contains_key(&second),
        "{:?}",
        stats.artifact_versions
    );
    Ok(())
}

fn recall_sigterm(d: &mut Deployed) -> anyhow::Result<()> {
    let name = format!("{STACK}-recall-0");
    let stats = under_load(d, 3, || {
        d.with_pod(&name, |p| p.signal("TERM"))?;
        let status = wait_until("recall-0 to drain and exit", Duration::from_secs(30), || {
            d.with_pod(&name, |p| Ok(p.wait_exit(Duration::from_millis(10)).ok()))
        })?;
        ensure!(status.success(), "recall-0 exited with {status}");
        // The survivor carries the load for a while.
        std::thread::sleep(Duration::from_secs(2));
        Ok(())
    })?;
    ensure!(
        stats.errors == 0,
        "{} failed requests: {:?}",
        stats.errors,
        stats.reasons
    );
    let log = d.with_pod(&name, |p| Ok(p.log_tail(5)))?;
    ensure!(log.contains("stopped"), "recall-0's last words:\n{log}");
    Ok(())
}

fn ranking_killed(d: &mut Deployed) -> anyhow::Result<()> {
    let stats = under_load(d, 3, || {
        for i in 0..2 {
            d.with_pod(&format!("{STACK}-ranking-{i}"), |p| p.signal("KILL"))?;
            std::thread::sleep(Duration::from_secs(3));
        }
        Ok(())
    })?;
    ensure!(
        stats.errors == 0,
        "{} failed requests: {:?}",
        stats.errors,
        stats.reasons
    );
    ensure!(stats.degraded > 0, "with no ranking pod left, answers are degraded");
    let r = recommend_once(d.gateway()?, &d.users[2], 10)?;
    ensure!(r["level"] != "full" && item_ids(&r).len() == 10, "{r}");
    Ok(())
}

fn redis_stopped(d: &mut Deployed) -> anyhow::Result<()> {
    let mut nodes: Vec<Proc> = Vec::new();
    while let Some(at) = d.stores.iter().position(|p| REDIS_NODES.contains(&p.name)) {
        nodes.push(d.stores.remove(at));
    }
    ensure!(nodes.len() == REDIS_NODES.len(), "the Redis Cluster's nodes");
    let stats = under_load(d, 3, || {
        // The whole cluster at once: every node's slots gone.
        for node in &mut nodes {
            node.child.kill()?;
        }
        for node in &mut nodes {
            node.child.wait()?;
        }
        std::thread::sleep(Duration::from_secs(4));
        Ok(())
    })?;
    ensure!(
        stats.errors == 0,
        "{} failed requests: {:?}",
        stats.errors,
        stats.reasons
    );
    Ok(())
}
