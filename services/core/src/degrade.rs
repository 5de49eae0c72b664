//! Degradation decisions and circuit breakers: pure state, the clock passed in.
//!
//! Four levels, each cheaper than the last:
//! 1. **full**: every recall channel (1,000 candidates), the model ranks 500, rerank.
//! 2. **reduced**: three cheap channels (300 candidates), the model ranks only the top 100 by
//!    recall's fused score, rerank. Also what a request falls to when ranking, rerank or the
//!    feature service fails (recall's order stands in for the model's).
//! 3. **popular**: the gateway's own hot list without the user's recent items; no recall, no
//!    model. What a request falls to when recall fails.
//! 4. **fallback**: a precomputed list, no downstream call at all: the answer under extreme
//!    load.
//!
//! A request starts at the level load and downstream health allow and can only fall further.

use std::time::{Duration, Instant};

/// How much of the pipeline serves a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Full,
    Reduced,
    Popular,
    Fallback,
}

impl Level {
    pub const ALL: [Level; 4] = [Level::Full, Level::Reduced, Level::Popular, Level::Fallback];

    /// The level named `name` (`full`, `reduced`, `popular`, `fallback`).
    pub fn from_name(name: &str) -> Option<Level> {
        Self::ALL.into_iter().find(|l| l.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Full => "full",
            Level::Reduced => "reduced",
            Level::Popular => "popular",
            Level::Fallback => "fallback",
        }
    }
}

/// In-flight request counts at which the gateway starts requests at a lower level.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadThresholds {
    pub reduced: usize,
    pub popular: usize,
    pub fallback: usize,
}

impl Default for LoadThresholds {
    fn default() -> Self {
        Self {
            reduced: 64,
            popular: 256,
            fallback: 1024,
        }
    }
}

/// How much of the pipeline one level runs.
#[derive(Clone, Debug, PartialEq)]
pub struct LevelPlan {
    pub candidates: u32,
    /// Channel quotas sent to recall (empty: recall's defaults, every channel).
    pub quotas: std::collections::HashMap<String, u32>,
    /// Candidates (by recall's order) the model scores.
    pub rank_limit: usize,
}

impl LevelPlan {
    /// The full level: every channel, 1,000 candidates, the model ranks 500.
    pub fn full() -> Self {
        Self {
            candidates: 1000,
            quotas: Default::default(),
            rank_limit: 500,
        }
    }

    /// The reduced level: three cheap channels (co-occurrence, hot, item-CF: lookups, no scan),
    /// 300 candidates, the model ranks 100.
    pub fn reduced() -> Self {
        let quotas = [
            ("cooc", 100),
            ("hot", 100),
            ("item_cf", 100),
            ("als", 0),
            ("user_cf", 0),
            ("vector", 0),
            ("tag", 0),
        ];
        Self {
            candidates: 300,
            quotas: quotas.iter().map(|(c, q)| (c.to_string(), *q)).collect(),
            rank_limit: 100,
        }
    }
}

/// Which downstreams can be called now (their breakers allow it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    pub recall: bool,
    pub ranking: bool,
    pub rerank: bool,
    pub features: bool,
}

impl Health {
    pub const ALL_UP: Health = Health {
        recall: true,
        ranking: true,
        rerank: true,
        features: true,
    };
}

/// The level a request starts at, and why it is below full.
pub fn plan(in_flight: usize, load: &LoadThresholds, health: Health) -> (Level, Vec<String>) {
    let mut level = Level::Full;
    let mut why = Vec::new();
    let by_load = if in_flight >= load.fallback {
        Level::Fallback
    } else if in_flight >= load.popular {
        Level::Popular
    } else if in_flight >= load.reduced {
        Level::Reduced
    } else {
        Level::Full
    };
    if by_load > Level::Full {
        why.push(format!("load: {in_flight} requests in flight"));
        level = by_load;
    }
    let down = |name: &str, why: &mut Vec<String>| why.push(format!("{name}: circuit open"));
    if !health.recall {
        down("recall", &mut why);
        level = level.max(Level::Popular);
    }
    for (name, up) in [
        ("ranking", health.ranking),
        ("rerank", health.rerank),
        ("features", health.features),
    ] {
        if !up {
            down(name, &mut why);
            level = level.max(Level::Reduced);
        }
    }
    (level, why)
}

/// The level a stage's failure forces on the rest of the request.
pub fn after_failure(stage: Stage) -> Level {
    match stage {
        Stage::Recall => Level::Popular,
        Stage::Features | Stage::Ranking | Stage::Rerank => Level::Reduced,
    }
}

/// The downstream stages of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    Features,
    Recall,
    Ranking,
    Rerank,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::Features, Stage::Recall, Stage::Ranking, Stage::Rerank];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Features => "features",
            Stage::Recall => "recall",
            Stage::Ranking => "ranking",
            Stage::Rerank => "rerank",
        }
    }
}

/// Each stage's share of the request's deadline: it must finish by `start + share × timeout`.
pub fn stage_end(stage: Stage, start: Instant, timeout: Duration) -> Instant {
    let share = match stage {
        Stage::Features | Stage::Recall => 0.45,
        Stage::Ranking => 0.80,
        Stage::Rerank => 0.95,
    };
    start + timeout.mul_f64(share)
}

// === latency objective ===

/// The latency the gateway keeps by shedding quality: `quantile` of its requests answered
/// within `target` (its own time, from taking a request to answering it).
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyObjective {
    pub target: Duration,
    pub quantile: f64,
    /// How often the share of shed requests is adjusted.
    pub interval: Duration,
    /// An interval with fewer answers is not judged (too few to tell a quantile).
    pub min_requests: u32,
    /// Added to the share after an interval that missed the objective.
    pub step_up: f64,
    /// Taken from it after one that met it, or a quiet one.
    pub step_down: f64,
}

impl LatencyObjective {
    /// The binaries' target (and the CRD's `gateway.latencyTargetMs` default): at 1,000 req/s
    /// on two cores the gateway's own p99 is 1–4 ms in a calm hour (BENCHMARKS.md).
    pub const DEFAULT_TARGET: Duration = Duration::from_millis(5);

    /// p99 within `target`, adjusted every 200 ms (200 requests at 1,000 req/s): up by 10 % of
    /// requests at a miss, down by 2 % at a hit, so shedding starts fast and ends gently.
    pub fn p99_within(target: Duration) -> Self {
        Self {
            target,
            quantile: 0.99,
            interval: Duration::from_millis(200),
            min_requests: 20,
            step_up: 0.10,
            step_down: 0.02,
        }
    }
}

/// Sheds quality when latency misses its objective: the share of requests that start at
/// `reduced` instead of `full` rises after each interval in which more than `1 − quantile` of
/// the answers took longer than the target, and falls after each that met it. Load thresholds
/// (in-flight counts) catch a flood; this catches a machine that has become slower for the same
/// work (a noisy neighbour, a throttled CPU), where the queue stays short but every request is
/// late. Pure state, the clock passed in.
#[derive(Clone, Debug)]
pub struct Shedder {
    pub objective: LatencyObjective,
    interval_start: Instant,
    answered: u32,
    late: u32,
    share: f64,
}

impl Shedder {
    pub fn new(objective: LatencyObjective, now: Instant) -> Self {
        Self {
            objective,
            interval_start: now,
            answered: 0,
            late: 0,
            share: 0.0,
        }
    }

    /// Counts an answered request that took `latency`, first closing the intervals that have
    /// ended by `now`.
    pub fn record(&mut self, now: Instant, latency: Duration) {
        self.close_intervals(now);
        self.answered += 1;
        self.late += u32::from(latency > self.objective.target);
    }

    /// Judges every interval that has ended by `now`: the current one by its answers, any after
    /// it (no answers at all) as quiet.
    fn close_intervals(&mut self, now: Instant) {
        let interval = self.objective.interval.max(Duration::from_millis(1));
        let elapsed = now.saturating_duration_since(self.interval_start);
        let ended = (elapsed.as_nanos() / interval.as_nanos()).min(u128::from(u32::MAX)) as u32;
        if ended == 0 {
            return;
        }
        let allowed = (1.0 - self.objective.quantile) * f64::from(self.answered);
        let missed = self.answered >= self.objective.min_requests && f64::from(self.late) > allowed;
        let down = |share: f64, times: u32| (share - self.objective.step_down * f64::from(times)).max(0.0);
        self.share = if missed {
            down((self.share + self.objective.step_up).min(1.0), ended - 1)
        } else {
            down(self.share, ended)
        };
        self.interval_start += interval * ended;
        self.answered = 0;
        self.late = 0;
    }

    /// The share of requests now started at `reduced` (0 to 1).
    pub fn share(&self) -> f64 {
        self.share
    }

    /// Whether the request numbered `seq` is shed: `share` of any run of sequence numbers,
    /// spread evenly (a multiplicative hash, no shared random state).
    pub fn sheds(&self, seq: u64) -> bool {
        let spread = (seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
        spread < self.share
    }
}

// === circuit breaker ===

#[derive(Clone, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub failures: u32,
    /// How long it stays open before one probe is let through.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            open_for: Duration::from_millis(500),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow; failures are counted.
    Closed { failures: u32 },
    /// Calls are refused until `until`.
    Open { until: Instant },
    /// One probe call, started at `probe`, is in flight; its outcome closes or reopens the
    /// circuit. A probe that never reports (its request was cancelled) is replaced by a new
    /// one after `open_for`, so a lost probe cannot wedge the circuit.
    HalfOpen { probe: Instant },
}

/// A per-downstream circuit breaker: after `failures` consecutive failures, calls are skipped
/// for `open_for` (the request degrades at once instead of spending its budget on a dead
/// service); then one probe decides.
#[derive(Clone, Debug)]
pub struct Breaker {
    pub config: BreakerConfig,
    pub state: BreakerState,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed { failures: 0 },
        }
    }

    /// Whether a call may go out now. An open circuit past its time lets exactly one probe
    /// through (half-open) and refuses the rest until the probe reports.
    pub fn allow(&mut self, now: Instant) -> bool {
        if self.is_available(now) {
            if !matches!(self.state, BreakerState::Closed { .. }) {
                self.state = BreakerState::HalfOpen { probe: now };
            }
            true
        } else {
            false
        }
    }

    /// Whether calls would be allowed now, without taking the probe.
    pub fn is_available(&self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } => now >= until,
            BreakerState::HalfOpen { probe } => now >= probe + self.config.open_for,
        }
    }

    pub fn success(&mut self) {
        self.state = BreakerState::Closed { failures: 0 };
    }

    pub fn failure(&mut self, now: Instant) {
        self.state = match self.state {
            BreakerState::Closed { failures } if failures + 1 < self.config.failures => {
                BreakerState::Closed { failures: failures + 1 }
            }
            _ => BreakerState::Open {
                until: now + self.config.open_for,
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thresholds() -> LoadThresholds {
        LoadThresholds {
            reduced: 10,
            popular: 20,
            fallback: 30,
        }
    }

    #[test]
    fn load_picks_the_starting_level() {
        let t = thresholds();
        for (in_flight, level) in [
            (0, Level::Full),
            (9, Level::Full),
            (10, Level::Reduced),
            (19, Level::Reduced),
            (20, Level::Popular),
            (30, Level::Fallback),
            (1000, Level::Fallback),
        ] {
            let (got, why) = plan(in_flight, &t, Health::ALL_UP);
            assert_eq!(got, level, "{in_flight} in flight");
            assert_eq!(why.is_empty(), level == Level::Full, "{why:?}");
        }
    }

    #[test]
    fn downstream_health_lowers_the_level_and_says_why() {
        let t = thresholds();
        let no_recall = Health {
            recall: false,
            ..Health::ALL_UP
        };
        assert_eq!(
            plan(0, &t, no_recall),
            (Level::Popular, vec!["recall: circuit open".to_string()])
        );
        let no_ranking = Health {
            ranking: false,
            ..Health::ALL_UP
        };
        assert_eq!(
            plan(0, &t, no_ranking),
            (Level::Reduced, vec!["ranking: circuit open".to_string()])
        );
        for h in [
            Health {
                rerank: false,
                ..Health::ALL_UP
            },
            Health {
                features: false,
                ..Health::ALL_UP
            },
        ] {
            assert_eq!(plan(0, &t, h).0, Level::Reduced);
        }
        // The worse of load and health wins; both reasons are given.
        let (level, why) = plan(35, &t, no_ranking);
        assert_eq!(level, Level::Fallback);
        assert_eq!(why.len(), 2, "{why:?}");
    }

    #[test]
    fn a_failed_stage_forces_its_level() {
        assert_eq!(after_failure(Stage::Recall), Level::Popular);
        for s in [Stage::Features, Stage::Ranking, Stage::Rerank] {
            assert_eq!(after_failure(s), Level::Reduced);
        }
        assert!(Level::Full < Level::Reduced && Level::Reduced < Level::Popular && Level::Popular < Level::Fallback);
    }

    #[test]
    fn stages_end_in_order_within_the_deadline() {
        let start = Instant::now();
        let timeout = Duration::from_millis(100);
        let ends: Vec<Instant> = [Stage::Recall, Stage::Ranking, Stage::Rerank]
            .iter()
            .map(|&s| stage_end(s, start, timeout))
            .collect();
        assert!(ends.windows(2).all(|w| w[0] < w[1]));
        assert!(ends[2] < start + timeout);
        assert_eq!(stage_end(Stage::Features, start, timeout), ends[0]);
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig {
            failures: 3,
            open_for: Duration::from_millis(100),
        });
        b.failure(t0);
        b.failure(t0);
        b.success();
        b.failure(t0);
        b.failure(t0);
        assert!(b.allow(t0), "2 consecutive failures keep it closed");
        b.failure(t0);
        assert_eq!(
            b.state,
            BreakerState::Open {
                until: t0 + Duration::from_millis(100)
            }
        );
        assert!(!b.allow(t0 + Duration::from_millis(99)));
        assert!(!b.is_available(t0 + Duration::from_millis(99)));
    }

    #[test]
    fn a_lost_probe_does_not_wedge_the_circuit() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig {
            failures: 1,
            open_for: Duration::from_millis(100),
        });
        b.failure(t0);
        let probe = t0 + Duration::from_millis(100);
        assert!(b.allow(probe));
        // The probe's request is cancelled: neither success nor failure is reported.
        assert!(!b.allow(probe + Duration::from_millis(99)));
        let retry = probe + Duration::from_millis(100);
        assert!(b.is_available(retry));
        assert!(b.allow(retry), "a new probe replaces the lost one");
        assert_eq!(b.state, BreakerState::HalfOpen { probe: retry });
    }

    #[test]
    fn half_open_lets_one_probe_through_which_closes_or_reopens() {
        let t0 = Instant::now();
        let cfg = BreakerConfig {
            failures: 1,
            open_for: Duration::from_millis(100),
        };
        let mut b = Breaker::new(cfg.clone());
        b.failure(t0);
        let later = t0 + Duration::from_millis(100);
        assert!(b.is_available(later));
        assert!(b.allow(later), "the probe");
        assert_eq!(b.state, BreakerState::HalfOpen { probe: later });
        assert!(!b.allow(later), "only one probe at a time");
        b.success();
        assert_eq!(b.state, BreakerState::Closed { failures: 0 });

        let mut b = Breaker::new(cfg);
        b.failure(t0);
        assert!(b.allow(later));
        b.failure(later);
        assert_eq!(
            b.state,
            BreakerState::Open {
                until: later + Duration::from_millis(100)
            }
        );
    }

    // === shedding by latency ===

    const MS: Duration = Duration::from_millis(1);

    /// Plays intervals of 200 ms from `t0`: each `(answers, late)` spread over its interval
    /// (late ones take 6 ms against a 5 ms target, the rest 1 ms); returns the share after
    /// each, read once the next interval has begun.
    fn play(shedder: &mut Shedder, t0: Instant, intervals: &[(u32, u32)]) -> Vec<f64> {
        let mut shares = Vec::new();
        for (k, &(answers, late)) in intervals.iter().enumerate() {
            let start = t0 + 200 * MS * k as u32;
            for i in 0..answers {
                let at = start + (200 * MS * i) / answers.max(1);
                shedder.record(at, if i < late { 6 * MS } else { MS });
            }
            shedder.close_intervals(start + 200 * MS);
            shares.push(shedder.share());
        }
        shares
    }

    fn shedder(t0: Instant) -> Shedder {
        Shedder::new(LatencyObjective::p99_within(5 * MS), t0)
    }

    fn near(got: &[f64], want: &[f64]) -> bool {
        got.len() == want.len() && got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-9)
    }

    #[test]
    fn an_interval_over_the_quantile_raises_the_share_and_one_within_it_lowers_it() {
        let t0 = Instant::now();
        let mut s = shedder(t0);
        // 200 answers: two late are within p99 (1 %), three are not.
        let got = play(
            &mut s,
            t0,
            &[(200, 0), (200, 2), (200, 3), (200, 3), (200, 2), (200, 0)],
        );
        assert!(near(&got, &[0.0, 0.0, 0.1, 0.2, 0.18, 0.16]), "{got:?}");
    }

    #[test]
    fn too_few_answers_are_not_judged() {
        let t0 = Instant::now();
        let mut s = shedder(t0);
        let got = play(&mut s, t0, &[(19, 19), (20, 20), (19, 19)]);
        assert!(near(&got, &[0.0, 0.1, 0.08]), "{got:?}");
    }

    #[test]
    fn the_share_stays_within_zero_and_one() {
        let t0 = Instant::now();
        let mut s = shedder(t0);
        let got = play(&mut s, t0, &[(100, 100); 12]);
        assert!(near(&got[9..], &[1.0, 1.0, 1.0]), "{got:?}");
        let got = play(&mut s, t0 + 12 * 200 * MS, &[(100, 0); 60]);
        assert!(near(&got[48..50], &[0.02, 0.0]), "{got:?}");
        assert!(got[50..].iter().all(|&x| x == 0.0), "{got:?}");
    }

    #[test]
    fn quiet_intervals_lower_the_share_and_a_late_one_after_a_gap_counts_once() {
        let t0 = Instant::now();
        let mut s = shedder(t0);
        play(&mut s, t0, &[(100, 100); 5]);
        assert!((s.share() - 0.5).abs() < 1e-9);
        // A second with no answers: five quiet intervals.
        s.record(t0 + 2000 * MS, MS);
        assert!((s.share() - 0.4).abs() < 1e-9, "{}", s.share());
        // A late interval, then 400 ms of nothing: one miss, then two quiet intervals.
        let mut s = shedder(t0);
        for i in 0..50 {
            s.record(t0 + i * MS, 9 * MS);
        }
        s.record(t0 + 600 * MS, MS);
        assert!((s.share() - 0.06).abs() < 1e-9, "{}", s.share());
    }

    #[test]
    fn sheds_spreads_the_share_evenly_over_sequence_numbers() {
        let t0 = Instant::now();
        let mut s = shedder(t0);
        assert!((0..10_000).all(|q| !s.sheds(q)), "no share, nothing shed");
        play(&mut s, t0, &[(100, 100); 3]);
        // Any 1,000 consecutive requests: 30 % give or take a few.
        for from in [0u64, 12_345, u64::MAX - 1_000] {
            let shed = (from..from + 1_000).filter(|&q| s.sheds(q)).count();
            assert!((270..=330).contains(&shed), "{shed} of 1,000 from {from}");
        }
        play(&mut s, t0 + 600 * MS, &[(100, 100); 10]);
        assert!((0..10_000).all(|q| s.sheds(q)), "a share of 1 sheds everything");
    }
}
