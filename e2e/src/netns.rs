//! Running pod plans ([`crate::pods`]) as a kubelet and a CNI would, with what Linux gives a
//! root process: each pod in its own network namespace (a veth on one bridge, its own
//! address), its own mount namespace and a chroot built like the image (the host's `/usr`
//! read-only, the image's files at their paths, the root read-only when the pod asks), its
//! volumes mounted at their paths, run as the pod's user, with only its env. NetworkPolicies
//! are nftables rulesets inside each pod's namespace; Service names are each pod's
//! `/etc/hosts`, rewritten as pods turn ready or go (the endpoints controller's job).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use crate::pods::{Mount, PodPlan, VolumeSource};

fn run(argv: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", argv[0]))?;
    ensure!(
        out.status.success(),
        "{}: {}",
        argv.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Single-quotes `s` for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The pods' network: one bridge; the node (this process's side) is its first address.
pub struct Network {
    pub bridge: String,
    pub node: Ipv4Addr,
    prefix: [u8; 2],
    next: u16,
}

impl Network {
    /// A fresh bridge `name` with the node at `<a>.<b>.0.1/16` (a stale one is removed first).
    pub fn create(name: &str, prefix: [u8; 2]) -> anyhow::Result<Self> {
        let _ = run(&["ip", "link", "del", name]);
        let node = Ipv4Addr::new(prefix[0], prefix[1], 0, 1);
        run(&["ip", "link", "add", name, "type", "bridge"])?;
        // A fixed address: a bridge otherwise takes the lowest of its ports' and changes it as
        // pods join, leaving earlier pods' ARP entries for the node and the stores pointing
        // at a MAC that no longer answers until they expire.
        run(&["ip", "link", "set", name, "address", "02:00:00:00:00:01"])?;
        run(&["ip", "addr", "add", &format!("{node}/16"), "dev", name])?;
        run(&["ip", "link", "set", name, "up"])?;
        Ok(Self {
            bridge: name.to_string(),
            node,
            prefix,
            next: 1,
        })
    }

    /// The next free pod address.
    pub fn allocate(&mut self) -> Ipv4Addr {
        let n = self.next;
        self.next += 1;
        Ipv4Addr::new(self.prefix[0], self.prefix[1], 1 + (n >> 8) as u8, n as u8)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = run(&["ip", "link", "del", &self.bridge]);
    }
}

/// What the image holds: files and directories at their paths, and its `ENV`.
pub struct Image {
    /// (host path, path in the image).
    pub files: Vec<(PathBuf, String)>,
    pub env: Vec<(String, String)>,
}

/// A running pod.
pub struct Pod {
    pub plan: PodPlan,
    pub ip: Ipv4Addr,
    pub netns: String,
    pub log: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
}

/// Host directories every pod sees read-only (the base image's userland and libraries).
const HOST_RO: &[&str] = &["usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc/ssl"];

impl Pod {
    /// Creates the pod's namespaces, root and volumes, loads `ruleset` (its NetworkPolicies,
    /// in place before the process sends anything, as a CNI does), and starts its process.
    pub fn start(
        net: &Network,
        plan: PodPlan,
        ip: Ipv4Addr,
        image: &Image,
        dir: &Path,
        hosts: &str,
        ruleset: &str,
    ) -> anyhow::Result<Self> {
        let short = format!("{:08x}", u32::from(ip));
        let netns = format!("rs-{short}");
        let veth = format!("rsv{short}");
        // Leftovers of an interrupted run.
        let _ = run(&["ip", "netns", "del", &netns]);
        let _ = run(&["ip", "link", "del", &veth]);
        run(&["ip", "netns", "add", &netns])?;
        run(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ])?;
        run(&["ip", "link", "set", &veth, "master", &net.bridge, "up"])?;
        run(&["ip", "-n", &netns, "addr", "add", &format!("{ip}/16"), "dev", "eth0"])?;
        run(&["ip", "-n", &netns, "link", "set", "eth0", "up"])?;
        run(&["ip", "-n", &netns, "link", "set", "lo", "up"])?;
        run(&[
            "ip",
            "-n",
            &netns,
            "route",
            "add",
            "default",
            "via",
            &net.node.to_string(),
        ])?;

        let dir = dir.join(&plan.name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        load_ruleset(&netns, &dir, ruleset)?;
        let root = dir.join("root");
        let (uid, gid) = plan.run_as.unwrap_or((0, 0));
        for d in ["usr/local/bin", "proc", "dev", "tmp", "etc", "var", "opt"]
            .iter()
            .chain(HOST_RO)
        {
            std::fs::create_dir_all(root.join(d))?;
        }
        for (link, target) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            std::os::unix::fs::symlink(target, root.join(link))?;
        }
        std::fs::write(root.join("etc/hosts"), hosts)?;
        // Cluster DNS answers a headless Service's name with every ready pod; from a hosts
        // file glibc returns only the first line naming it unless `multi on` (its default is
        // off: without this file the gateway balanced over one of two replicas).
        std::fs::write(root.join("etc/host.conf"), "multi on\n")?;
        std::fs::write(
            root.join("etc/nsswitch.conf"),
            "hosts: files\npasswd: files\ngroup: files\n",
        )?;
        std::fs::write(root.join("etc/resolv.conf"), "")?;
        std::fs::write(
            root.join("etc/passwd"),
            format!("root:x:0:0::/root:/sbin/nologin\nnonroot:x:{uid}:{gid}::/home/nonroot:/sbin/nologin\n"),
        )?;
        std::fs::write(root.join("etc/group"), format!("root:x:0:\nnonroot:x:{gid}:\n"))?;

        let mut script = String::from("set -e\nmount --make-rprivate /\n");
        let r = root.display().to_string();
        script.push_str(&format!("mount --bind {0} {0}\n", quote(&r)));
        for d in HOST_RO {
            let target = format!("{r}/{d}");
            script.push_str(&format!(
                "mount --bind /{d} {0}\nmount -o remount,bind,ro {0}\n",
                quote(&target)
            ));
        }
        let mount_point = |target: &str, is_dir: bool| -> anyhow::Result<String> {
            let path = root.join(target.trim_start_matches('/'));
            if is_dir {
                std::fs::create_dir_all(&path)?;
            } else {
                std::fs::create_dir_all(path.parent().context("a file at /")?)?;
                std::fs::write(&path, b"")?;
            }
            Ok(path.display().to_string())
        };
        for (host, target) in &image.files {
            let at = mount_point(target, host.is_dir())?;
            script.push_str(&format!(
                "mount --bind {0} {1}\nmount -o remount,bind,ro {1}\n",
                quote(&host.display().to_string()),
                quote(&at)
            ));
        }
        script.push_str(&format!(
            "mount --rbind /dev {0}/dev\nmount -t proc proc {0}/proc\n",
            quote(&r)
        ));
        for Mount {
            volume,
            source,
            path,
            read_only,
        } in &plan.mounts
        {
            let host = dir.join("volumes").join(volume);
            std::fs::create_dir_all(&host)?;
            if let VolumeSource::Files(files) = source {
                for (name, bytes) in files {
                    std::fs::write(host.join(name), bytes)?;
                }
            }
            // fsGroup: the pod's user owns its volumes.
            run(&["chown", "-R", &format!("{uid}:{gid}"), &host.display().to_string()])?;
            let at = mount_point(path, true)?;
            script.push_str(&format!(
                "mount --bind {} {}\n",
                quote(&host.display().to_string()),
                quote(&at)
            ));
            if *read_only {
                script.push_str(&format!("mount -o remount,bind,ro {}\n", quote(&at)));
            }
        }
        if plan.read_only_root {
            script.push_str(&format!("mount -o remount,bind,ro {}\n", quote(&r)));
        }
        let mut env: Vec<(String, String)> = image.env.clone();
        for (k, v) in &plan.env {
            env.retain(|(key, _)| key != k);
            env.push((k.clone(), v.clone()));
        }
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
        }
        env.push(("HOSTNAME".into(), plan.name.clone()));
        let env_args: Vec<String> = env.iter().map(|(k, v)| quote(&format!("{k}={v}"))).collect();
        let argv: Vec<String> = plan.argv.iter().map(|a| quote(a)).collect();
        let user = match plan.run_as {
            Some((u, g)) => format!("/usr/bin/setpriv --reuid={u} --regid={g} --clear-groups --no-new-privs "),
            None => String::new(),
        };
        script.push_str(&format!(
            "cd {0}\nexec chroot {0} {user}/usr/bin/env -i {1} {2}\n",
            quote(&r),
            env_args.join(" "),
            argv.join(" ")
        ));
        std::fs::write(dir.join("start.sh"), &script)?;
        let log = dir.join("pod.log");
        std::fs::File::create(&log)?;
        let child = spawn(&netns, &dir, &log)?;
        Ok(Self {
            plan,
            ip,
            netns,
            log,
            dir,
            child: Some(child),
        })
    }

    /// What the kubelet does when a container of a `restartPolicy: Always` pod exits: the
    /// same process started again in the same pod (network, volumes), its output appended to
    /// the pod's log. The old process must have ended.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        ensure!(!self.running(), "{} still runs", self.plan.name);
        self.child = Some(spawn(&self.netns, &self.dir, &self.log)?);
        Ok(())
    }

    /// Replaces the pod's `/etc/hosts` (renamed into place: a reader never sees half of it).
    pub fn write_hosts(&self, hosts: &str) -> anyhow::Result<()> {
        let tmp = self.dir.join("root/etc/.hosts.tmp");
        std::fs::write(&tmp, hosts)?;
        std::fs::rename(&tmp, self.dir.join("root/etc/hosts"))?;
        Ok(())
    }

    /// What the kubelet does when a mounted ConfigMap or Secret changes: the volume's files
    /// replaced in place (each renamed into place), the process left running.
    pub fn sync_volume(&self, volume: &str, files: &std::collections::BTreeMap<String, Vec<u8>>) -> anyhow::Result<()> {
        let dir = self.dir.join("volumes").join(volume);
        ensure!(dir.is_dir(), "{} has no volume {volume}", self.plan.name);
        for (name, bytes) in files {
            let tmp = dir.join(format!(".{name}.sync"));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, dir.join(name))?;
        }
        Ok(())
    }

    /// The pod's process id (its `start.sh` execs the container's command, so this is the
    /// service itself once it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// How the process ended, once it has.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// The readiness probe, from the node: 200 on its path.
    pub fn probe_ready(&mut self) -> bool {
        let Some((path, port)) = self.plan.readiness.clone() else {
            return self.running();
        };
        self.running()
            && http_get(SocketAddr::from((self.ip, port)), &path, Duration::from_secs(1))
                .is_ok_and(|(code, _)| code == 200)
    }

    /// The container port named `name`.
    pub fn port(&self, name: &str) -> anyhow::Result<u16> {
        self.plan
            .ports
            .get(name)
            .copied()
            .with_context(|| format!("{} has no port {name}", self.plan.name))
    }

    /// Sends `signal` (`TERM`, `KILL`) to the pod's process.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.child.as_ref().context("not running")?.id();
        run(&["kill", &format!("-{signal}"), &pid.to_string()])?;
        Ok(())
    }

    /// Waits up to `timeout` for the process to end.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let child = self.child.as_mut().context("not running")?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > timeout {
                bail!("{} still running after {timeout:?}", self.plan.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `argv` in the pod's network namespace (as root, from the host's filesystem).
    pub fn exec(&self, argv: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["ip", "netns", "exec", self.netns.as_str()];
        full.extend_from_slice(argv);
        run(&full)
    }

    /// Whether a TCP connection from inside this pod to `addr` opens within a second.
    pub fn can_connect(&self, addr: SocketAddr) -> bool {
        let cmd = format!("exec 3<>/dev/tcp/{}/{}", addr.ip(), addr.port());
        self.exec(&["timeout", "1", "bash", "-c", &cmd]).is_ok()
    }

    /// The last `lines` of the pod's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = run(&["ip", "netns", "del", &self.netns]);
    }
}

/// Loads an nftables ruleset into a network namespace (replacing the last one).
fn load_ruleset(netns: &str, dir: &Path, ruleset: &str) -> anyhow::Result<()> {
    let file = dir.join("netpol.nft");
    std::fs::write(&file, format!("flush ruleset\n{ruleset}"))?;
    run(&["ip", "netns", "exec", netns, "nft", "-f", &file.display().to_string()])?;
    Ok(())
}

/// A plain HTTP/1.0 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    http(addr, "GET", path, None, timeout)
}

/// A plain HTTP/1.0 request with an optional JSON body: (status, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    http_with(addr, method, path, &[], json, timeout)
}

/// A plain HTTP/1.0 request with extra `headers` and an optional JSON body: (status, body).
pub fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    json: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    match json {
        Some(body) => write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?,
        None => write!(stream, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{extra}\r\n")?,
    }
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status line")?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Ok((code, body))
}

/// Starts a pod's `start.sh` in its network namespace and a private mount namespace, its
/// output appended to `log`.
fn spawn(netns: &str, dir: &Path, log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new().append(true).open(log)?;
    Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
        ])
        .arg(dir.join("start.sh"))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting a pod")
}
