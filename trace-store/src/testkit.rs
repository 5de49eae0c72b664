//! The Elasticsearch-compatible test server (`osmem-server`, from the PyPI wheel that
//! `scripts/setup` installs into `.venv`), started on a loopback port for tests and benchmarks.
//! It keeps everything in memory, so a restart starts empty.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running `osmem-server`; stopped on drop.
pub struct TestServer {
    child: Option<Child>,
    addr: String,
}

/// Where the server binary is: `$OSMEM_SERVER`, else `.venv` (or `$RECSTACK_VENV`) in the
/// current directory or one of its ancestors, else `osmem-server` on `PATH`.
pub fn find_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OSMEM_SERVER") {
        return Some(PathBuf::from(p));
    }
    let in_venv = |venv: &Path| -> Option<PathBuf> {
        std::fs::read_dir(venv.join("lib"))
            .ok()?
            .flatten()
            .map(|e| e.path().join("site-packages/osmem_server/bin/osmem-server"))
            .find(|p| p.is_file())
    };
    if let Some(v) = std::env::var_os("RECSTACK_VENV").and_then(|v| in_venv(Path::new(&v))) {
        return Some(v);
    }
    let cwd = std::env::current_dir().ok()?;
    if let Some(p) = cwd.ancestors().find_map(|d| in_venv(&d.join(".venv"))) {
        return Some(p);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("osmem-server"))
            .find(|p| p.is_file())
    })
}

impl TestServer {
    /// Starts a server on a free port.
    pub fn start() -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0")
    }

    /// Starts a server on `addr` (`host:port`), e.g. again on the port of a stopped one.
    pub fn start_on(addr: &str) -> std::io::Result<Self> {
        let bin = find_binary().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "osmem-server not found: run scripts/setup (it installs it into .venv) or set OSMEM_SERVER",
            )
        })?;
        let mut child = Command::new(&bin)
            .args([
                "-addr",
                addr,
                "-no-stdin-watch",
                "-parent-pid",
                &std::process::id().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        // The first line says where it listens: {"url":"http://127.0.0.1:PORT", ...}.
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        let url = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v["url"].as_str().map(str::to_string));
        match url {
            Some(url) => Ok(Self {
                child: Some(child),
                addr: url.trim_start_matches("http://").to_string(),
            }),
            None => {
                let _ = child.kill();
                Err(std::io::Error::other(format!("osmem-server did not start: {line:?}")))
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}
