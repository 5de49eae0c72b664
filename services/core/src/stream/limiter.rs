//! The adaptive write limiter: when a window fires, its writes are spread over the next
//! `spread` instead of hitting the feature store at once (the once-a-minute spike), and the
//! pace backs off when the store reports errors. Pure: time comes in as milliseconds.

/// Limiter settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LimiterConfig {
    /// Spread each backlog over this long (a window's writes over most of the next window).
    pub spread_ms: f64,
    /// Never slower than this (writes per second), so a small backlog finishes promptly.
    pub min_rate: f64,
    /// Never faster than this: what the store is sized for.
    pub max_rate: f64,
}

impl LimiterConfig {
    /// Spreads over 80 % of a window of `window_ms`, so a window's writes finish before the
    /// next window fires.
    pub fn for_window(window_ms: i64) -> Self {
        Self {
            spread_ms: window_ms as f64 * 0.8,
            min_rate: 50.0,
            max_rate: 50_000.0,
        }
    }
}

/// A token bucket whose rate follows the backlog: `rate = backlog / spread`, clamped.
#[derive(Clone, Debug)]
pub struct WriteLimiter {
    config: LimiterConfig,
    backlog: u64,
    rate: f64,
    tokens: f64,
    last_ms: Option<f64>,
    /// Multiplier from store feedback: halves on an error, recovers ×1.25 per success.
    health: f64,
}

impl WriteLimiter {
    pub fn new(config: LimiterConfig) -> Self {
        Self {
            config,
            backlog: 0,
            rate: config.min_rate,
            tokens: 0.0,
            last_ms: None,
            health: 1.0,
        }
    }

    /// Writes waiting.
    pub fn backlog(&self) -> u64 {
        self.backlog
    }

    /// Current pace, writes per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    fn refill(&mut self, now_ms: f64) {
        if let Some(last) = self.last_ms {
            let dt = ((now_ms - last) / 1_000.0).max(0.0);
            // At most a tenth of a second's burst stored up.
            self.tokens = (self.tokens + dt * self.rate).min(self.rate * 0.1 + 1.0);
        }
        self.last_ms = Some(now_ms);
    }

    fn retune(&mut self) {
        let wanted = self.backlog as f64 / (self.config.spread_ms / 1_000.0).max(0.001);
        self.rate = (wanted * self.health).clamp(self.config.min_rate * self.health.min(1.0), self.config.max_rate);
    }

    /// `n` more writes are waiting (a window fired).
    pub fn add(&mut self, n: u64, now_ms: f64) {
        self.refill(now_ms);
        self.backlog += n;
        self.retune();
    }

    /// How many writes may go now; the caller writes them and reports with [`Self::done`].
    pub fn take(&mut self, now_ms: f64) -> u64 {
        self.refill(now_ms);
        let n = (self.tokens.floor() as u64).min(self.backlog);
        self.tokens -= n as f64;
        self.backlog -= n;
        n
    }

    /// Milliseconds until at least one write may go (0 when one may now; `None` when idle).
    pub fn wait_ms(&self) -> Option<f64> {
        if self.backlog == 0 {
            return None;
        }
        let missing = (1.0 - self.tokens).max(0.0);
        Some(missing / self.rate * 1_000.0)
    }

    /// Store feedback for a batch: failures (given back to the backlog) slow the pace,
    /// successes restore it.
    pub fn done(&mut self, failed: u64) {
        if failed > 0 {
            self.backlog += failed;
            self.health = (self.health * 0.5).max(0.05);
        } else {
            self.health = (self.health * 1.25).min(1.0);
        }
        self.retune();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LimiterConfig {
        LimiterConfig {
            spread_ms: 10_000.0,
            min_rate: 10.0,
            max_rate: 1_000.0,
        }
    }

    /// Drives the limiter in 10 ms steps; returns writes per second.
    fn drain(l: &mut WriteLimiter, from_ms: f64, until_ms: f64) -> Vec<u64> {
        let mut per_second = vec![0; ((until_ms - from_ms) / 1_000.0).ceil() as usize];
        let mut t = from_ms;
        while t < until_ms {
            let n = l.take(t);
            per_second[((t - from_ms) / 1_000.0) as usize] += n;
            t += 10.0;
        }
        per_second
    }

    #[test]
    fn a_backlog_is_spread_evenly_over_the_spread() {
        let mut l = WriteLimiter::new(config());
        l.add(3_000, 0.0);
        assert_eq!(l.rate(), 300.0);
        let per_second = drain(&mut l, 0.0, 12_000.0);
        assert_eq!(per_second.iter().sum::<u64>(), 3_000);
        // Done within the spread, at an even pace (no second above 300 + the burst).
        assert_eq!(l.backlog(), 0);
        assert!(
            per_second[..10].iter().all(|&n| (280..=331).contains(&n)),
            "{per_second:?}"
        );
        assert!(per_second[10] <= 3 && per_second[11] == 0, "{per_second:?}");
    }

    #[test]
    fn the_rate_is_clamped_both_ways() {
        let mut l = WriteLimiter::new(config());
        l.add(5, 0.0);
        assert_eq!(l.rate(), 10.0);
        l.add(1_000_000, 0.0);
        assert_eq!(l.rate(), 1_000.0);
    }

    #[test]
    fn errors_slow_it_down_and_successes_recover() {
        let mut l = WriteLimiter::new(config());
        l.add(3_000, 0.0);
        l.done(10);
        assert_eq!(l.backlog(), 3_010);
        assert!((l.rate() - 150.5).abs() < 1e-9, "{}", l.rate());
        l.done(0);
        l.done(0);
        l.done(0);
        l.done(0);
        assert!((l.rate() - 301.0).abs() < 1e-9, "{}", l.rate());
    }

    #[test]
    fn waiting_time_follows_the_rate() {
        let mut l = WriteLimiter::new(config());
        assert_eq!(l.wait_ms(), None);
        l.add(100, 0.0);
        assert_eq!(l.take(0.0), 0);
        assert_eq!(l.wait_ms(), Some(100.0));
        assert_eq!(l.take(100.0), 1);
    }
}
