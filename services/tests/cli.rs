//! `recstack up` and `recstack query` as a user runs them: the services start on the bundled
//! data (building artifacts first), answer a query, and stop cleanly on Ctrl-C.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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

#[test]
fn up_serves_the_bundled_data_and_stops_on_ctrl_c() {
    let artifacts = std::env::temp_dir().join(format!("recstack-up-{}", std::process::id()));
    let (recall, recall_http, features, features_http) = (free_addr(), free_addr(), free_addr(), free_addr());
    let mut up = Command::new(env!("CARGO_BIN_EXE_recstack"))
        .args(["up", "--artifacts", artifacts.to_str().unwrap()])
        .args(["--recall-addr", &recall, "--recall-http-addr", &recall_http])
        .args(["--features-addr", &features, "--features-http-addr", &features_http])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // It builds the artifacts first; poll until both services answer.
    let start = Instant::now();
    let out = loop {
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
        if out.status.success() {
            break out;
        }
        if start.elapsed() > Duration::from_secs(300) || up.try_wait().unwrap().is_some() {
            let _ = up.kill();
            panic!("recstack up did not come up: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("user 1: "), "{text}");
    assert!(text.contains("10 candidates from artifact version v-"), "{text}");
    assert!(text.contains("   1. ") && text.contains("from "), "{text}");
    assert!(artifacts.join("current").exists(), "artifacts were built");

    // Ctrl-C: both servers stop and the process exits cleanly.
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
    let mut banner = String::new();
    std::io::Read::read_to_string(&mut up.stdout.take().unwrap(), &mut banner).unwrap();
    assert!(banner.contains(&format!("recall    grpc://{recall}")), "{banner}");
    std::fs::remove_dir_all(&artifacts).ok();
}
