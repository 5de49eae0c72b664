//! The bench process's own CPU time, for CPU-per-request columns (shared by the benches).

use std::time::Duration;

/// Reads the process's CPU time (all threads, live and ended: `/proc/self/stat`'s utime and
/// stime) in clock ticks of `1 / ticks_per_s`.
pub struct ProcessCpu {
    ticks_per_s: f64,
}

impl ProcessCpu {
    /// Asks `getconf CLK_TCK` once (100 on Linux when it cannot be asked).
    pub fn new() -> Self {
        let ticks_per_s = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0);
        Self { ticks_per_s }
    }

    /// The process's CPU time so far.
    pub fn now(&self) -> Duration {
        let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
        // Fields after the command name (which may hold spaces), from field 3: utime is 14, stime 15.
        let rest = &stat[stat.rfind(')').expect("stat") + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let ticks: f64 = fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
        Duration::from_secs_f64(ticks / self.ticks_per_s)
    }
}
