//! The harness of the cluster e2e suite (`tests/cluster.rs`): a control plane started by
//! `scripts/cluster up`, `kubectl` as a platform team runs it, and the operator binary run as
//! its own process under its ServiceAccount's token — so RBAC is what the suite tests, not
//! admin rights.
#![forbid(unsafe_code)]

pub mod netns;
pub mod pods;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ sits in the repository")
        .to_path_buf()
}

/// A running control plane: the admin kubeconfig and a directory for the suite's files.
pub struct Cluster {
    pub admin: PathBuf,
    pub dir: PathBuf,
}

impl Cluster {
    /// Runs kubectl as the cluster admin; the error carries kubectl's stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_as(&self.admin, args, None)
    }

    /// Runs kubectl with `stdin` piped in (`apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> anyhow::Result<String> {
        self.kubectl_as(&self.admin, args, Some(stdin))
    }

    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let mut cmd = Command::new("kubectl");
        cmd.args(args)
            .env("KUBECONFIG", kubeconfig)
            .current_dir(repo())
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("running kubectl (scripts/setup installs it)")?;
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .context("kubectl stdin")?
                .write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Installs `manifests/install` as a platform team does and waits for the CRD; the
    /// install's own operator Deployment is scaled to 0, since the binary under test runs
    /// outside the cluster as the same ServiceAccount.
    pub fn install(&self) -> anyhow::Result<()> {
        self.kubectl(&["apply", "--server-side", "-k", "manifests/install"])?;
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/recommenderstacks.recstack.io",
            "--timeout=60s",
        ])?;
        self.kubectl(&[
            "-n",
            "recstack-system",
            "scale",
            "deployment/recstack-operator",
            "--replicas=0",
        ])?;
        Ok(())
    }

    /// A kubeconfig holding a fresh token of `namespace/service_account`.
    pub fn service_account_kubeconfig(&self, namespace: &str, service_account: &str) -> anyhow::Result<PathBuf> {
        let token = self.kubectl(&["-n", namespace, "create", "token", service_account, "--duration=2h"])?;
        let server = self.kubectl(&[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ])?;
        let ca = self.kubectl(&[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority}",
        ])?;
        let path = self.dir.join(format!("{service_account}.kubeconfig"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {service_account}\n  user:\n    token: {}\ncontexts:\n- name: e2e\n  context: {{cluster: e2e, user: {service_account}, namespace: {namespace}}}\ncurrent-context: e2e\n",
                token.trim()
            ),
        )?;
        Ok(path)
    }
}

/// One operator process (`recstack-operator run`), stopped with SIGTERM on drop.
pub struct Operator {
    pub identity: String,
    pub metrics: u16,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Operator {
    /// Starts the operator binary with `kubeconfig` (its ServiceAccount's) and waits for its
    /// `/readyz`.
    pub fn start(bin: &Path, kubeconfig: &Path, identity: &str, dir: &Path) -> anyhow::Result<Self> {
        let metrics = free_port()?;
        let log = dir.join(format!("operator-{identity}.log"));
        let out = File::create(&log)?;
        let child = Command::new(bin)
            .args(["run", "--metrics-addr", &format!("127.0.0.1:{metrics}")])
            .args(["--lease-namespace", "recstack-system", "--identity", identity])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube_runtime=warn")
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut op = Self {
            identity: identity.to_string(),
            metrics,
            log,
            child: Some(child),
        };
        wait_until(&format!("operator {identity} /readyz"), Duration::from_secs(30), || {
            op.ensure_running()?;
            Ok(http_get(metrics, "/readyz")
                .is_ok_and(|(code, _)| code == 200)
                .then_some(()))
        })?;
        Ok(op)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            bail!(
                "operator {} exited ({status}); log:\n{}",
                self.identity,
                self.log_tail(30)
            );
        }
        Ok(())
    }

    /// Parsed `/metrics`: `name{labels}` → value.
    pub fn metrics(&self) -> anyhow::Result<BTreeMap<String, f64>> {
        let (code, body) = http_get(self.metrics, "/metrics")?;
        ensure!(code == 200, "/metrics answered {code}");
        Ok(parse_metrics(&body))
    }

    /// Sum of every series of `name` whose labels contain each of `labels` (`kind="Deployment"`).
    pub fn metric_sum(&self, name: &str, labels: &[&str]) -> anyhow::Result<f64> {
        Ok(sum_series(&self.metrics()?, name, labels))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, as the kubelet stops a pod; waits for the exit and returns its status.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        signal(child.id(), "TERM")?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                bail!("operator {} did not stop within 30 s of SIGTERM", self.identity);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: a crash, mid-whatever it was doing.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = signal(child.id(), "TERM");
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -{sig} {pid} failed");
    Ok(())
}

/// A free loopback port.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    netns::http_get(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        path,
        Duration::from_secs(5),
    )
}

/// Prometheus text format → `name{labels}` → value (comments skipped).
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Sum of every series of `name` in parsed `/metrics` whose labels contain each of `labels`.
pub fn sum_series(metrics: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    metrics
        .iter()
        .filter(|(k, _)| k.split('{').next() == Some(name) && labels.iter().all(|l| k.contains(l)))
        .map(|(_, v)| v)
        // Not `sum()`: an f64 sum of no series is -0.0, which prints as "-0".
        .fold(0.0, |total, v| total + v)
}

/// Polls `check` every 250 ms until it returns `Some`, or fails after `timeout` naming `what`.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let mut last_error = None;
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if start.elapsed() >= timeout {
            match last_error {
                Some(e) => bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_series_adds_the_series_with_every_label_and_is_zero_without_one() {
        let metrics = parse_metrics(
            "# HELP x_total A counter.\n\
             x_total{path=\"idle\",pod=\"a\"} 5\n\
             x_total{path=\"worker\",pod=\"a\"} 2\n\
             x_total{path=\"idle\",pod=\"b\"} 3\n\
             x_total_other{path=\"idle\"} 100\n",
        );
        assert_eq!(sum_series(&metrics, "x_total", &["path=\"idle\""]), 8.0);
        assert_eq!(sum_series(&metrics, "x_total", &["path=\"idle\"", "pod=\"b\""]), 3.0);
        assert_eq!(sum_series(&metrics, "x_total", &[]), 10.0);
        // No series: a plain zero, as it prints in the suites' lines.
        assert_eq!(format!("{}", sum_series(&metrics, "x_total", &["path=\"gpu\""])), "0");
        assert_eq!(format!("{}", sum_series(&metrics, "absent", &[])), "0");
    }
}
