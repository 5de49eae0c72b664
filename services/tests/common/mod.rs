//! Fixtures shared by the services' integration tests.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use recstack_services::build::Artifacts;
use recstack_services::features::{Key, Value, encode_for_l2};

/// The user with the longest training history among those with held-out ratings.
pub fn active_user(a: &Artifacts) -> u32 {
    a.holdout
        .iter()
        .map(|r| r.user)
        .max_by_key(|&u| (a.history[u as usize].len(), u))
        .expect("some ratings are held out")
}

/// A redis-server on a free port, killed on drop.
pub struct Redis {
    child: Child,
    pub url: String,
}

impl Redis {
    pub fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
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
