//! Fixtures shared by the services' integration tests.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use recstack_core::stream::window::{ItemState, ItemWindow};
use recstack_offline::build::Artifacts;
use recstack_services::features::{Key, Value, encode_for_l2};
use recstack_services::stream::sink::{FeatureSink, RecentLists, SinkError};

/// The user with the longest training history among those with held-out ratings.
pub fn active_user(a: &Artifacts) -> u32 {
    a.holdout
        .iter()
        .map(|r| r.user)
        .max_by_key(|&u| (a.history[u as usize].len(), u))
        .expect("some ratings are held out")
}

/// The least popular item (last of the build's hot list) `user` has not rated: one no channel
/// would recall for them as hot.
pub fn long_tail_item(a: &Artifacts, user: u32) -> u32 {
    let history: std::collections::HashSet<u32> = a.history[user as usize].iter().copied().collect();
    a.hot
        .iter()
        .rev()
        .map(|(i, _)| *i)
        .find(|i| !history.contains(i))
        .expect("an item the user has not rated")
}

/// A loopback port nothing listens on now (for a server the test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `redis-server` on loopback `port`, in memory only (no snapshots, no append-only file).
fn redis_server(port: u16) -> Command {
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    cmd
}

/// A redis-server on a free port, killed on drop.
pub struct Redis {
    child: Child,
    pub url: String,
}

impl Redis {
    pub fn start() -> Redis {
        let port = free_port();
        let child = redis_server(port)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/setup installs it)");
        // Owned from here on: Drop kills and reaps it, even if the test panics below.
        let redis = Redis {
            child,
            url: format!("redis://127.0.0.1:{port}/"),
        };
        let client = redis::Client::open(redis.url.as_str()).unwrap();
        for _ in 0..100 {
            if let Ok(mut c) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on {port}");
    }

    pub fn set(&self, key: &Key, value: &Value) {
        let mut c = redis::Client::open(self.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        redis::cmd("SET")
            .arg(key.redis_key())
            .arg(encode_for_l2(value))
            .query::<()>(&mut c)
            .unwrap();
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Artifacts built once per test binary from the bundled data (seed 42, as `recstack build`).
pub fn artifact_root() -> &'static std::path::PathBuf {
    use recstack_offline::build::{self, BuildParams, Progress};
    use recstack_offline::dataset;
    static ROOT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        // One directory per test process (a static is never dropped, so it cannot clean up
        // after itself): remove those of processes that have ended first.
        let prefix = "recstack-test-artifacts-";
        for entry in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix(prefix)
                && !std::path::Path::new("/proc").join(pid).exists()
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let root = std::env::temp_dir().join(format!("{prefix}{}", std::process::id()));
        build::build_dir(
            &dataset::bundled_dir(),
            &root,
            &BuildParams::default(),
            Some(&build::seq::bundled_dir()),
            &Progress::new(true),
        )
        .unwrap();
        root
    })
}

/// The artifacts of [`artifact_root`], loaded once per test binary with the vector channel's
/// user tower attached, as recall serves them.
pub fn artifacts() -> &'static recstack_offline::build::Artifacts {
    static A: std::sync::OnceLock<recstack_offline::build::Artifacts> = std::sync::OnceLock::new();
    A.get_or_init(|| {
        let (_, mut a) = recstack_offline::build::load(artifact_root(), None).unwrap();
        recstack_services::recall::tower::attach(&mut a).unwrap();
        a
    })
}

/// The value of `series` (its name and labels, as printed) in Prometheus text `metrics`;
/// panics naming it, with the text, when it is not there.
pub fn metric_value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

/// A plain HTTP/1.1 POST (no client library needed): the status code and the body.
pub fn http_post(addr: &str, path: &str, body: &str) -> (u16, String) {
    http(addr, "POST", path, body)
}

/// A plain HTTP/1.1 GET: the status code and the body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    http(addr, "GET", path, "")
}

fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let (status, _, body) = http_with(addr, method, path, &[], body);
    (status, body)
}

/// A plain HTTP/1.1 request with extra `headers`: the status code, the response's header
/// block (lower-cased names) and the body.
pub fn http_with(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((out.as_str(), ""));
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// The local stack for the trace and dashboard tests: direct links, loopback ports picked by
/// the OS, the bundled model, traces into the embedded store at `trace_file` (full traces only
/// for debug requests), and the dashboard `dashboard` makes, if any.
pub fn traced_stack(
    trace_file: &std::path::Path,
    dashboard: Option<recstack_services::serve::MakeDashboard>,
) -> recstack_services::serve::LocalOptions {
    use recstack_services::gateway::GatewayConfig;
    use recstack_services::ranking::service::ModelSources;
    use recstack_services::serve::{LocalAddrs, LocalOptions, LocalTraces};
    LocalOptions {
        direct_links: true,
        addrs: LocalAddrs::ephemeral(),
        model: ModelSources::cpu(recstack_core::source_file("models/gbdt/model.onnx")),
        redis_url: None,
        gateway: GatewayConfig {
            full_trace_sample: 0.0,
            ..GatewayConfig::default()
        },
        rerank: recstack_core::rerank::RerankConfig::default(),
        experiment: recstack_services::rerank::Experiment::default(),
        traces: LocalTraces::Embedded(trace_file.to_path_buf()),
        dashboard,
        events: None,
    }
}

/// The admin and debug tokens of [`test_access`]; stacks without tokens ignore them.
pub const TEST_ADMIN: &str = "admin-token-of-the-test-stack";
pub const TEST_DEBUG: &str = "debug-token-of-the-test-stack";
pub const TEST_READER: &str = "reader-token-of-the-test-stack";

/// Tokens for a test stack that checks them (the helpers here always send the admin and debug
/// ones, so they work against a stack with or without these).
pub fn test_access() -> recstack_trace_store::access::Access {
    use recstack_trace_store::access::{Access, Token};
    Access {
        reader: Some(Token::new(TEST_READER).unwrap()),
        admin: Some(Token::new(TEST_ADMIN).unwrap()),
        debug: Some(Token::new(TEST_DEBUG).unwrap()),
        pseudonym_key: None,
    }
}

/// `POST /v1/recommend` to the stack's gateway for `user` (10 items), as a trusted caller (the
/// debug token of [`test_access`]); asserts a 200.
pub async fn recommend(
    stack: &recstack_services::serve::LocalStack,
    user: &str,
    debug: bool,
) -> recstack_services::gateway::Recommendation {
    let addr = stack.get("gateway").http.to_string();
    let body = format!(r#"{{"user_id": "{user}", "n": 10, "debug": {debug}}}"#);
    let (status, _, body) = tokio::task::spawn_blocking(move || {
        let headers = [(recstack_trace_store::access::DEBUG_TOKEN_HEADER, TEST_DEBUG)];
        http_with(&addr, "POST", "/v1/recommend", &headers, &body)
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Records through the stack's recall service that `user` was shown `items` (what ingest does
/// for impression events); the impressions recorded.
pub async fn record_impressions(stack: &recstack_services::serve::LocalStack, user: &str, items: Vec<String>) -> u32 {
    use recstack_services::recall::proto::ImpressionsRequest;
    use recstack_services::recall::proto::recall_client::RecallClient;
    let mut recall = RecallClient::connect(stack.get("recall").grpc_url()).await.unwrap();
    recall
        .record_impressions(ImpressionsRequest {
            user_id: user.to_string(),
            item_ids: items,
        })
        .await
        .unwrap()
        .into_inner()
        .recorded
}

/// The trace of `request_id` from the query API at `api` (as [`test_access`]'s admin), polling
/// until the writer has flushed it (it batches for up to 200 ms).
pub async fn stored_trace(api: &str, request_id: &str) -> recstack_trace_store::Trace {
    for _ in 0..100 {
        let (addr, path) = (api.to_string(), format!("/v1/traces/{request_id}"));
        let (status, _, body) = tokio::task::spawn_blocking(move || {
            let bearer = format!("Bearer {TEST_ADMIN}");
            http_with(&addr, "GET", &path, &[("Authorization", &bearer)], "")
        })
        .await
        .unwrap();
        if status == 200 {
            return serde_json::from_str(&body).unwrap();
        }
        assert_eq!(status, 404, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("trace {request_id} never arrived");
}

/// An Apache Kafka broker (KRaft, one node) on free loopback ports, started by
/// `scripts/kafka-broker` from the jars `scripts/setup` resolved; killed on drop.
pub struct Kafka {
    child: Child,
    _dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`, the bootstrap address.
    pub addr: String,
}

impl Kafka {
    /// Starts a broker; when another test took one of its free ports before the JVM bound it
    /// (a race between picking a port and binding it), starts again on new ports.
    pub fn start() -> Kafka {
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start() {
                Ok(kafka) => return kafka,
                Err(log) if log.contains("Address already in use") => last = log,
                Err(log) => panic!("the Kafka broker did not start:\n{log}"),
            }
        }
        panic!("the Kafka broker found no free ports in 5 tries:\n{last}");
    }

    /// One start on fresh ports: the broker, or its log if it exited or did not start in 60 s.
    fn try_start() -> Result<Kafka, String> {
        // The broker takes PORT and PORT + 1 (its controller): find two free in a row.
        let port = (0..50)
            .map(|_| free_port())
            .find(|p| *p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok())
            .expect("two adjacent free ports");
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("broker.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka-broker");
        let child = Command::new(script)
            .arg(dir.path().join("data"))
            .args(["127.0.0.1", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("scripts/kafka-broker runs");
        // Owned from here on: Drop kills and reaps it, even if the test panics below.
        let mut kafka = Kafka {
            child,
            _dir: dir,
            addr: format!("127.0.0.1:{port}"),
        };
        for _ in 0..600 {
            let out = std::fs::read_to_string(&log_path).unwrap_or_default();
            if out.contains("Kafka Server started") {
                return Ok(kafka);
            }
            if let Ok(Some(status)) = kafka.child.try_wait() {
                return Err(format!("exited ({status}):\n{out}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "not started in 60 s:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        ))
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis Cluster of three masters (`redis-server --cluster-enabled yes` on free loopback
/// ports, slots assigned by `redis-cli --cluster create`), killed on drop.
pub struct RedisCluster {
    nodes: Vec<Child>,
    _dir: tempfile::TempDir,
    pub ports: Vec<u16>,
    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`
    pub url: String,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        // Each node also takes PORT + 10000 (the cluster bus).
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 3 {
            let p = free_port();
            if p < 55_000 && !ports.contains(&p) && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
                ports.push(p);
            }
        }
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            url: format!(
                "redis+cluster://{}",
                ports
                    .iter()
                    .map(|p| format!("127.0.0.1:{p}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            ports: ports.clone(),
            _dir: dir,
        };
        for &port in &ports {
            let node_dir = cluster._dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let child = redis_server(port)
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server is installed (scripts/setup installs it)");
            cluster.nodes.push(child);
        }
        for &port in &ports {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
            let up = (0..100).any(|_| {
                let ok = client
                    .get_connection()
                    .is_ok_and(|mut c| redis::cmd("PING").query::<String>(&mut c).is_ok());
                if !ok {
                    std::thread::sleep(Duration::from_millis(50));
                }
                ok
            });
            assert!(up, "cluster node {port} did not start");
        }
        let create = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli is installed (with redis-server)");
        assert!(
            create.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&create.stdout)
        );
        // Every node must see every slot served before the cluster takes writes.
        for &port in &ports {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
            let ok = (0..200).any(|_| {
                let info: String = client
                    .get_connection()
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query(&mut c))
                    .unwrap_or_default();
                let ok = info.contains("cluster_state:ok");
                if !ok {
                    std::thread::sleep(Duration::from_millis(50));
                }
                ok
            });
            assert!(ok, "cluster node {port} never reported cluster_state:ok");
        }
        cluster
    }

    /// The node that holds `key`'s slot, as the cluster says (`CLUSTER KEYSLOT`, `CLUSTER
    /// SLOTS`): tests read back through it.
    pub fn slot_of(&self, key: &str) -> u16 {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.ports[0])).unwrap();
        let mut c = client.get_connection().unwrap();
        redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query(&mut c).unwrap()
    }

    /// How many keys each node holds.
    pub fn keys_per_node(&self) -> Vec<u64> {
        self.ports
            .iter()
            .map(|p| {
                let client = redis::Client::open(format!("redis://127.0.0.1:{p}/")).unwrap();
                let mut c = client.get_connection().unwrap();
                redis::cmd("DBSIZE").query(&mut c).unwrap()
            })
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.kill();
            let _ = n.wait();
        }
    }
}

fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Kafka SQL connector `scripts/setup` resolved (`scripts/flink/pom.xml`).
fn flink_connector() -> std::path::PathBuf {
    let pom = std::fs::read_to_string(repo_root().join("scripts/flink/pom.xml")).unwrap();
    let version = pom
        .split("<kafka.connector.version>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap();
    let home = std::env::var("HOME").unwrap();
    let jar = std::path::PathBuf::from(home).join(format!(
        ".cache/recstack/flink/{version}/lib/flink-sql-connector-kafka-{version}.jar"
    ));
    assert!(jar.is_file(), "{} (scripts/setup resolves it)", jar.display());
    jar
}

/// Runs the Flink engine's job — `sql`, the operator's (`render::aggregation_sql`), through the
/// job image's SQL runner (`services/flink/sql_runner.py`) — in a local Flink mini-cluster (the
/// venv's PyFlink on Java 17), the events table bounded at the offsets it finds so the job ends
/// (its final watermark closing the last windows). Its output topic must exist. Returns the
/// seconds it ran, start-up included.
pub fn flink_job(sql: &str, parallelism: u32) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("recstack-aggregate.sql");
    std::fs::write(&path, sql).unwrap();
    let sql = path;
    let venv = std::env::var("RECSTACK_VENV").map_or(repo_root().join(".venv"), std::path::PathBuf::from);
    let started = std::time::Instant::now();
    let status = Command::new(venv.join("bin/python"))
        .arg(repo_root().join("services/flink/sql_runner.py"))
        .arg(&sql)
        .args([
            "--bounded",
            "events",
            "--parallelism",
            &parallelism.to_string(),
            "--jars",
        ])
        .arg(flink_connector())
        .stdout(Stdio::null())
        .status()
        .expect("the project venv's python (scripts/setup installs apache-flink there)");
    assert!(status.success(), "the Flink job failed: {status}");
    started.elapsed().as_secs_f64()
}

/// A feature sink whose window writes pass `gate` first: it sees each batch and says how many of
/// its windows to write. Fewer than all writes that many and then fails, as a store dying
/// mid-batch would. Everything else goes straight to `inner`. (Recording, counting or failing
/// writes in tests and benches.)
pub struct Gated<S> {
    pub inner: std::sync::Arc<S>,
    pub gate: Box<Gate>,
}

/// Sees a batch of window writes; says how many of them to write.
pub type Gate = dyn Fn(&[ItemWindow]) -> usize + Send + Sync;

impl<S> Gated<S> {
    pub fn new(inner: std::sync::Arc<S>, gate: impl Fn(&[ItemWindow]) -> usize + Send + Sync + 'static) -> Self {
        Self {
            inner,
            gate: Box::new(gate),
        }
    }
}

impl<S: FeatureSink> FeatureSink for Gated<S> {
    async fn apply_windows(&self, windows: &[ItemWindow]) -> Result<Vec<(bool, ItemState)>, SinkError> {
        let pass = (self.gate)(windows).min(windows.len());
        if pass == windows.len() {
            return self.inner.apply_windows(windows).await;
        }
        self.inner.apply_windows(&windows[..pass]).await?;
        Err(SinkError("store went away".into()))
    }
    async fn add_recent(&self, engagements: &[(String, String, i64)]) -> Result<RecentLists, SinkError> {
        self.inner.add_recent(engagements).await
    }
    async fn put_items(&self, values: Vec<(String, Vec<u8>)>) -> Result<(), SinkError> {
        self.inner.put_items(values).await
    }
    async fn put_users(&self, values: Vec<(String, u64, Vec<u8>)>) -> Result<(), SinkError> {
        self.inner.put_users(values).await
    }
    async fn put_trending(&self, ranks: Vec<(String, f64)>) -> Result<(), SinkError> {
        self.inner.put_trending(ranks).await
    }
    async fn trending(&self, n: usize) -> Result<Vec<String>, SinkError> {
        self.inner.trending(n).await
    }
}
