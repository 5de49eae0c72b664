//! The seen-item filter: a rolling, sharded Bloom filter per user.
//!
//! New ids go into the newest shard; when it holds `ids_per_shard` ids a fresh shard starts,
//! and beyond `shards` shards the oldest is dropped — so old impressions age out and memory
//! stays bounded (the K-song design: 5 shards × 1,000 ids at 0.1 % false positives). Each shard
//! is sized for its own false-positive rate, so a lookup over all shards errs at most
//! `shards × fp_rate`. Each shard remembers when its first and last impressions were recorded,
//! so a hit can say when the item was seen (to within its shard). The whole filter serializes
//! to a few KB of bytes, to live in Redis.

use std::collections::VecDeque;

/// Shape of a filter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SeenConfig {
    pub shards: usize,
    pub ids_per_shard: usize,
    /// Target false-positive rate of one full shard.
    pub fp_rate: f64,
}

impl Default for SeenConfig {
    fn default() -> Self {
        Self {
            shards: 5,
            ids_per_shard: 1000,
            fp_rate: 0.001,
        }
    }
}

impl SeenConfig {
    /// Bits per shard: m = −n·ln p / (ln 2)².
    fn bits(&self) -> usize {
        let n = self.ids_per_shard.max(1) as f64;
        let m = -n * self.fp_rate.clamp(1e-9, 0.5).ln() / std::f64::consts::LN_2.powi(2);
        (m.ceil() as usize).div_ceil(64) * 64
    }

    /// Hash functions: k = m/n · ln 2.
    fn hashes(&self) -> u32 {
        let k = self.bits() as f64 / self.ids_per_shard.max(1) as f64 * std::f64::consts::LN_2;
        (k.round() as u32).clamp(1, 32)
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Shard {
    bits: Vec<u64>,
    count: u32,
    /// When the shard's first and last impressions were recorded (ms since the epoch; 0 when
    /// unknown: written before times were kept).
    first_ms: i64,
    last_ms: i64,
}

/// When a seen item was recorded: between the first and the last impression of the shard
/// that holds it (ms since the epoch; 0 when the filter predates recorded times).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenWindow {
    pub first_ms: i64,
    pub last_ms: i64,
}

/// Why bytes could not be read back into a filter.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum SeenDecodeError {
    #[error("not a seen filter (bad magic or version)")]
    Magic,
    #[error("truncated seen filter")]
    Truncated,
    #[error("the seen filter's shape differs from the configured one")]
    Shape,
}

/// A user's seen items.
#[derive(Clone, Debug, PartialEq)]
pub struct SeenFilter {
    config: SeenConfig,
    /// Bits per shard and hashes per id, derived from `config` once (they involve logarithms).
    bits: usize,
    hashes: u32,
    shards: VecDeque<Shard>,
}

/// The current encoding (shard times); [`MAGIC_V1`] (no times) is still read.
const MAGIC: &[u8; 4] = b"RSB2";
const MAGIC_V1: &[u8; 4] = b"RSB1";

impl SeenFilter {
    pub fn new(config: SeenConfig) -> Self {
        Self {
            config,
            bits: config.bits(),
            hashes: config.hashes(),
            shards: VecDeque::new(),
        }
    }

    /// Records an impression of `id`, made at `at_ms` (ms since the epoch).
    pub fn insert(&mut self, id: u64, at_ms: i64) {
        let words = self.bits / 64;
        let full = self
            .shards
            .back()
            .is_none_or(|s| s.count as usize >= self.config.ids_per_shard);
        if full {
            self.shards.push_back(Shard {
                bits: vec![0; words],
                count: 0,
                first_ms: at_ms,
                last_ms: at_ms,
            });
            while self.shards.len() > self.config.shards.max(1) {
                self.shards.pop_front();
            }
        }
        let (k, m) = (self.hashes, self.bits);
        if let Some(shard) = self.shards.back_mut() {
            for pos in positions(id, k, m) {
                shard.bits[pos / 64] |= 1 << (pos % 64);
            }
            shard.count += 1;
            shard.first_ms = shard.first_ms.min(at_ms);
            shard.last_ms = shard.last_ms.max(at_ms);
        }
    }

    /// Whether `id` was (probably) seen. Never false for an id still in a live shard.
    pub fn contains(&self, id: u64) -> bool {
        self.newest_holding(id).is_some()
    }

    /// When `id` was (probably) seen: the time range of the newest shard holding it.
    pub fn when(&self, id: u64) -> Option<SeenWindow> {
        self.newest_holding(id).map(|s| SeenWindow {
            first_ms: s.first_ms,
            last_ms: s.last_ms,
        })
    }

    /// The newest shard whose bits all hold `id`.
    fn newest_holding(&self, id: u64) -> Option<&Shard> {
        if self.shards.is_empty() {
            return None;
        }
        // Hash once; test the positions against each shard, newest first (recent impressions
        // are the likeliest hits).
        let mut pos = [0usize; 32];
        let k = self.hashes as usize;
        for (slot, p) in pos.iter_mut().zip(positions(id, self.hashes, self.bits)) {
            *slot = p;
        }
        let pos = &pos[..k];
        self.shards
            .iter()
            .rev()
            .find(|s| pos.iter().all(|&p| s.bits[p / 64] & (1 << (p % 64)) != 0))
    }

    /// Number of live shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// `RSB2`, shard count (u8), then per shard: count (u32 LE), first and last impression
    /// times (i64 LE, ms) and the bit words (u64 LE). (`RSB1` had no times.)
    pub fn to_bytes(&self) -> Vec<u8> {
        let words = self.bits / 64;
        let mut out = Vec::with_capacity(5 + self.shards.len() * (20 + words * 8));
        out.extend_from_slice(MAGIC);
        out.push(self.shards.len() as u8);
        for s in &self.shards {
            out.extend_from_slice(&s.count.to_le_bytes());
            out.extend_from_slice(&s.first_ms.to_le_bytes());
            out.extend_from_slice(&s.last_ms.to_le_bytes());
            for w in &s.bits {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
        out
    }

    /// Reads bytes written by [`to_bytes`](Self::to_bytes) with the same config (or by the
    /// `RSB1` encoding before it: times then read as 0, unknown).
    pub fn from_bytes(config: SeenConfig, bytes: &[u8]) -> Result<Self, SeenDecodeError> {
        let timed = match bytes.get(..4) {
            Some(m) if bytes.len() >= 5 && m == MAGIC => true,
            Some(m) if bytes.len() >= 5 && m == MAGIC_V1 => false,
            _ => return Err(SeenDecodeError::Magic),
        };
        let n = bytes[4] as usize;
        if n > config.shards.max(1) {
            return Err(SeenDecodeError::Shape);
        }
        let words = config.bits() / 64;
        let head = if timed { 20 } else { 4 };
        let shard_len = head + words * 8;
        let body = &bytes[5..];
        if body.len() != n * shard_len {
            return Err(if body.len() < n * shard_len {
                SeenDecodeError::Truncated
            } else {
                SeenDecodeError::Shape
            });
        }
        let shards = body
            .chunks_exact(shard_len)
            .map(|chunk| {
                let word = |w: &[u8]| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
                let count = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                let (first_ms, last_ms) = if timed {
                    (word(&chunk[4..12]) as i64, word(&chunk[12..20]) as i64)
                } else {
                    (0, 0)
                };
                let bits = chunk[head..].chunks_exact(8).map(word).collect();
                Shard {
                    bits,
                    count,
                    first_ms,
                    last_ms,
                }
            })
            .collect();
        Ok(Self {
            shards,
            ..Self::new(config)
        })
    }
}

/// k bit positions by double hashing two independent 64-bit mixes of the id, mapped onto
/// `0..m` with a multiply-shift (Lemire) instead of a division.
fn positions(id: u64, k: u32, m: usize) -> impl Iterator<Item = usize> {
    let h1 = splitmix64(id);
    let h2 = splitmix64(h1 ^ 0x9e37_79b9_7f4a_7c15) | 1;
    (0..u64::from(k)).map(move |i| {
        let h = h1.wrapping_add(i.wrapping_mul(h2));
        ((u128::from(h) * m as u128) >> 64) as usize
    })
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn sizing_matches_the_formula() {
        let c = SeenConfig::default();
        // 1,000 ids at 0.1 %: 14,378 bits → 14,400 (whole words), 10 hashes.
        assert_eq!(c.bits(), 14_400);
        assert_eq!(c.hashes(), 10);
    }

    #[test]
    fn inserted_ids_are_always_found() {
        let mut f = SeenFilter::new(SeenConfig::default());
        for id in 0..3000u64 {
            f.insert(id * 7919, 0);
        }
        assert!((0..3000u64).all(|id| f.contains(id * 7919)));
        assert_eq!(f.shard_count(), 3);
    }

    #[test]
    fn false_positive_rate_is_near_the_target() {
        let config = SeenConfig {
            shards: 1,
            ids_per_shard: 1000,
            fp_rate: 0.001,
        };
        let mut f = SeenFilter::new(config);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let inserted: Vec<u64> = (0..1000).map(|_| rng.r#gen::<u64>() | 1).collect();
        for &id in &inserted {
            f.insert(id, 0);
        }
        // Even ids were never inserted (all inserted ids are odd).
        let trials = 200_000;
        let false_positives = (0..trials).filter(|_| f.contains(rng.r#gen::<u64>() & !1)).count();
        let rate = false_positives as f64 / trials as f64;
        assert!(rate < 0.002, "measured false-positive rate {rate}");
        assert!(
            rate > 0.0002,
            "suspiciously low {rate}: is the filter sized as configured?"
        );
    }

    #[test]
    fn oldest_shard_is_evicted() {
        let config = SeenConfig {
            shards: 5,
            ids_per_shard: 1000,
            fp_rate: 0.001,
        };
        let mut f = SeenFilter::new(config);
        for id in 0..6000u64 {
            f.insert(id, 0);
        }
        assert_eq!(f.shard_count(), 5);
        assert!(
            (1000..6000u64).all(|id| f.contains(id)),
            "the newest 5,000 are all kept"
        );
        let still_there = (0..1000u64).filter(|&id| f.contains(id)).count();
        assert!(
            still_there < 20,
            "the first 1,000 aged out; {still_there} false positives is ~ 5 × 0.1 %"
        );
    }

    #[test]
    fn bytes_round_trip_and_reject_garbage() {
        let config = SeenConfig {
            shards: 3,
            ids_per_shard: 100,
            fp_rate: 0.01,
        };
        let mut f = SeenFilter::new(config);
        for id in 0..250u64 {
            f.insert(id, 0);
        }
        let bytes = f.to_bytes();
        assert_eq!(bytes.len(), 5 + 3 * (20 + config.bits() / 8));
        assert_eq!(SeenFilter::from_bytes(config, &bytes).unwrap(), f);
        assert_eq!(SeenFilter::from_bytes(config, b"nope"), Err(SeenDecodeError::Magic));
        assert_eq!(
            SeenFilter::from_bytes(config, &bytes[..bytes.len() - 1]),
            Err(SeenDecodeError::Truncated)
        );
        let other = SeenConfig {
            shards: 3,
            ids_per_shard: 1000,
            fp_rate: 0.01,
        };
        assert!(
            SeenFilter::from_bytes(other, &bytes).is_err(),
            "a different shape is not misread"
        );
        assert_eq!(
            SeenFilter::from_bytes(config, &SeenFilter::new(config).to_bytes())
                .unwrap()
                .shard_count(),
            0
        );
    }

    #[test]
    fn a_hit_says_when_its_shard_was_written() {
        let config = SeenConfig {
            shards: 3,
            ids_per_shard: 10,
            fp_rate: 0.001,
        };
        let mut f = SeenFilter::new(config);
        // Shard 1: ids 0..10 at 1,000..1,009 ms; shard 2: ids 10..20 at 2,000..2,009 ms.
        for id in 0..20u64 {
            f.insert(id, 1_000 * (1 + id as i64 / 10) + id as i64 % 10);
        }
        let w = |first_ms, last_ms| Some(SeenWindow { first_ms, last_ms });
        assert_eq!(f.when(3), w(1_000, 1_009));
        assert_eq!(f.when(15), w(2_000, 2_009));
        assert_eq!(f.when(999), None);
        // Seen again later: the newest shard holding it answers.
        f.insert(3, 3_000);
        assert_eq!(f.when(3), w(3_000, 3_000));
        // Out-of-order times widen the range.
        f.insert(40, 2_500);
        assert_eq!(f.when(40), w(2_500, 3_000));
        let back = SeenFilter::from_bytes(config, &f.to_bytes()).unwrap();
        assert_eq!(back.when(15), w(2_000, 2_009));
        assert_eq!(back, f);
    }

    #[test]
    fn the_untimed_encoding_still_reads() {
        let config = SeenConfig {
            shards: 2,
            ids_per_shard: 10,
            fp_rate: 0.01,
        };
        let mut f = SeenFilter::new(config);
        for id in 0..12u64 {
            f.insert(id, 5_000);
        }
        // RSB1: the same shards without the 16 bytes of times.
        let v2 = f.to_bytes();
        let words = config.bits() / 8;
        let mut v1 = b"RSB1".to_vec();
        v1.push(v2[4]);
        for shard in v2[5..].chunks_exact(20 + words) {
            v1.extend_from_slice(&shard[..4]);
            v1.extend_from_slice(&shard[20..]);
        }
        let old = SeenFilter::from_bytes(config, &v1).unwrap();
        assert!((0..12u64).all(|id| old.contains(id)));
        assert_eq!(
            old.when(11),
            Some(SeenWindow {
                first_ms: 0,
                last_ms: 0
            })
        );
        assert_eq!(
            SeenFilter::from_bytes(config, &v1[..v1.len() - 1]),
            Err(SeenDecodeError::Truncated)
        );
    }
}
