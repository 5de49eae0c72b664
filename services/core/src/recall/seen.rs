//! The seen-item filter: a rolling, sharded Bloom filter per user.
//!
//! New ids go into the newest shard; when it holds `ids_per_shard` ids a fresh shard starts,
//! and beyond `shards` shards the oldest is dropped — so old impressions age out and memory
//! stays bounded (the K-song design: 5 shards × 1,000 ids at 0.1 % false positives). Each shard
//! is sized for its own false-positive rate, so a lookup over all shards errs at most
//! `shards × fp_rate`. Each shard remembers when its first and last impressions were recorded,
//! so a hit can say when the item was seen (to within its shard). The whole filter serializes
//! to about 10 KB, to live in Redis.
//!
//! A shard is a *split-block* Bloom filter (the layout of Parquet's and Impala's filters): an id
//! picks one 256-bit block and sets one bit in each of its eight 32-bit words, so a lookup reads
//! one block per shard and tests it with four and-nots — no early exit, no scattered loads.
//! It needs about 17 % more bits than a classic filter for the same false-positive rate. Shards
//! of the classic layout (k bits anywhere in the shard), which filters written before the
//! split-block layout hold, are still read, looked up and added to until they age out.

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

/// Bits in a split block, and the 32-bit words it is split into (one bit set per word per id).
const BLOCK_BITS: usize = 256;
const BLOCK_WORDS: usize = BLOCK_BITS / 32;
/// A block held as four u64s (two 32-bit words each, the lower word in the low half), so a
/// test is four and-nots; in little-endian bytes it is the eight u32 words in order.
type Block = [u64; BLOCK_BITS / 64];

impl SeenConfig {
    /// Bits per classic shard: m = −n·ln p / (ln 2)².
    fn classic_bits(&self) -> usize {
        let n = self.ids_per_shard.max(1) as f64;
        let m = -n * self.target_fp().ln() / std::f64::consts::LN_2.powi(2);
        (m.ceil() as usize).div_ceil(64) * 64
    }

    /// Hash functions per classic shard: k = m/n · ln 2.
    fn classic_hashes(&self) -> u32 {
        let k = self.classic_bits() as f64 / self.ids_per_shard.max(1) as f64 * std::f64::consts::LN_2;
        (k.round() as u32).clamp(1, 32)
    }

    fn target_fp(&self) -> f64 {
        self.fp_rate.clamp(1e-9, 0.5)
    }

    /// Blocks per split-block shard: the fewest whose expected false-positive rate with
    /// `ids_per_shard` ids is at most `fp_rate` ([`split_block_fp`] is decreasing in blocks).
    fn blocks(&self) -> usize {
        let (n, target) = (self.ids_per_shard.max(1), self.target_fp());
        // A split-block shard needs more bits than a classic one: start there, double past
        // the target, then bisect (fp(lo) > target throughout; 0 blocks cannot hold an id).
        let (mut lo, mut hi) = (0, self.classic_bits().div_ceil(BLOCK_BITS).max(1));
        while split_block_fp(n, hi) > target {
            (lo, hi) = (hi, hi * 2);
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if split_block_fp(n, mid) > target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        hi
    }
}

/// The expected false-positive rate of a split-block filter of `blocks` blocks holding `n` ids:
/// a block holds l ids with probability Poisson(l; n/blocks), and an id not among them finds
/// each of its eight bits set with probability 1 − (31/32)^l.
pub fn split_block_fp(n: usize, blocks: usize) -> f64 {
    let lambda = n as f64 / blocks.max(1) as f64;
    let miss = 1.0 - 1.0 / 32.0;
    // Sum the Poisson terms out to where they no longer count.
    let last = (lambda + 12.0 * lambda.sqrt() + 30.0).ceil() as u32;
    // The Poisson weights in logs: e^−λ underflows for a crowded block.
    let (mut ln_p, mut miss_l, mut fp) = (-lambda, 1.0f64, 0.0);
    for l in 0..=last {
        if l > 0 {
            ln_p += (lambda / f64::from(l)).ln();
            miss_l *= miss;
        }
        fp += ln_p.exp() * (1.0 - miss_l).powi(BLOCK_WORDS as i32);
    }
    fp
}

/// How a filter lays out the shards it starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeenLayout {
    /// One 256-bit block per id per shard (the default, and what every new shard gets).
    #[default]
    SplitBlock,
    /// k bits anywhere in the shard: the layout before split blocks, kept to read old filters
    /// (and as the benchmark's baseline).
    Classic,
}

#[derive(Clone, Debug, PartialEq)]
enum Bits {
    Blocks(Vec<Block>),
    Classic { words: Vec<u64>, hashes: u32 },
}

#[derive(Clone, Debug, PartialEq)]
struct Shard {
    bits: Bits,
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
    #[error("seen filter shard {shard}: unknown layout {layout}")]
    Layout { shard: usize, layout: u8 },
}

/// A user's seen items.
#[derive(Clone, Debug, PartialEq)]
pub struct SeenFilter {
    config: SeenConfig,
    layout: SeenLayout,
    shards: VecDeque<Shard>,
}

/// The current encoding (each shard says its layout and size); [`MAGIC_V2`] (classic shards
/// with times) and [`MAGIC_V1`] (classic shards without times) are still read.
const MAGIC: &[u8; 4] = b"RSB3";
const MAGIC_V2: &[u8; 4] = b"RSB2";
const MAGIC_V1: &[u8; 4] = b"RSB1";
const LAYOUT_CLASSIC: u8 = 0;
const LAYOUT_SPLIT_BLOCK: u8 = 1;

impl SeenFilter {
    pub fn new(config: SeenConfig) -> Self {
        Self::with_layout(config, SeenLayout::default())
    }

    /// A filter that starts its shards in `layout`.
    pub fn with_layout(config: SeenConfig, layout: SeenLayout) -> Self {
        Self {
            config,
            layout,
            shards: VecDeque::new(),
        }
    }

    fn empty_shard(&self, at_ms: i64) -> Shard {
        let bits = match self.layout {
            SeenLayout::SplitBlock => Bits::Blocks(vec![[0; BLOCK_BITS / 64]; self.config.blocks()]),
            SeenLayout::Classic => Bits::Classic {
                words: vec![0; self.config.classic_bits() / 64],
                hashes: self.config.classic_hashes(),
            },
        };
        Shard {
            bits,
            count: 0,
            first_ms: at_ms,
            last_ms: at_ms,
        }
    }

    /// Records an impression of `id`, made at `at_ms` (ms since the epoch).
    pub fn insert(&mut self, id: u64, at_ms: i64) {
        let full = self
            .shards
            .back()
            .is_none_or(|s| s.count as usize >= self.config.ids_per_shard);
        if full {
            let shard = self.empty_shard(at_ms);
            self.shards.push_back(shard);
            while self.shards.len() > self.config.shards.max(1) {
                self.shards.pop_front();
            }
        }
        if let Some(shard) = self.shards.back_mut() {
            match &mut shard.bits {
                Bits::Blocks(blocks) => {
                    let h = splitmix64(id);
                    let at = block_index(h, blocks.len());
                    let block = &mut blocks[at];
                    for (word, bit) in block.iter_mut().zip(block_mask(h)) {
                        *word |= bit;
                    }
                }
                Bits::Classic { words, hashes } => {
                    for pos in positions(id, *hashes, words.len() * 64) {
                        words[pos / 64] |= 1 << (pos % 64);
                    }
                }
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

    /// The newest shard whose bits all hold `id` (recent impressions are the likeliest hits).
    fn newest_holding(&self, id: u64) -> Option<&Shard> {
        // Hash once: the block mask is the same in every shard, only the block differs.
        let h = splitmix64(id);
        let mask = block_mask(h);
        for s in self.shards.iter().rev() {
            let held = match &s.bits {
                Bits::Blocks(blocks) => holds(&blocks[block_index(h, blocks.len())], &mask),
                // Hashed again per classic shard: most ids fail at their first probe or two,
                // so working out all k positions once costs more than it saves.
                Bits::Classic { words, hashes } => {
                    positions(id, *hashes, words.len() * 64).all(|p| words[p / 64] & (1 << (p % 64)) != 0)
                }
            };
            if held {
                return Some(s);
            }
        }
        None
    }

    /// Number of live shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// `RSB3`, shard count (u8), then per shard: count (u32 LE), first and last impression
    /// times (i64 LE, ms), its layout (u8) and bits — split blocks (1): the block count (u32 LE)
    /// and eight u32 LE words per block; classic (0): hashes (u8), the word count (u32 LE) and
    /// the words (u64 LE). Each shard says its own size, so a filter written under another
    /// configuration is read as it was written.
    pub fn to_bytes(&self) -> Vec<u8> {
        let bytes: usize = self
            .shards
            .iter()
            .map(|s| {
                21 + match &s.bits {
                    Bits::Blocks(b) => 4 + b.len() * BLOCK_BITS / 8,
                    Bits::Classic { words, .. } => 5 + words.len() * 8,
                }
            })
            .sum();
        let mut out = Vec::with_capacity(5 + bytes);
        out.extend_from_slice(MAGIC);
        out.push(self.shards.len() as u8);
        for s in &self.shards {
            out.extend_from_slice(&s.count.to_le_bytes());
            out.extend_from_slice(&s.first_ms.to_le_bytes());
            out.extend_from_slice(&s.last_ms.to_le_bytes());
            match &s.bits {
                Bits::Blocks(blocks) => {
                    out.push(LAYOUT_SPLIT_BLOCK);
                    out.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
                    for w in blocks.iter().flatten() {
                        out.extend_from_slice(&w.to_le_bytes());
                    }
                }
                Bits::Classic { words, hashes } => {
                    out.push(LAYOUT_CLASSIC);
                    out.push(*hashes as u8);
                    out.extend_from_slice(&(words.len() as u32).to_le_bytes());
                    for w in words {
                        out.extend_from_slice(&w.to_le_bytes());
                    }
                }
            }
        }
        out
    }

    /// Reads bytes written by [`to_bytes`](Self::to_bytes), or by the encodings before it
    /// (`RSB2`, `RSB1`: classic shards sized by `config`; `RSB1`'s times read as 0, unknown).
    /// A filter with more shards than `config` allows keeps its newest. New shards are split
    /// blocks.
    pub fn from_bytes(config: SeenConfig, bytes: &[u8]) -> Result<Self, SeenDecodeError> {
        let magic = bytes
            .get(..4)
            .filter(|_| bytes.len() >= 5)
            .ok_or(SeenDecodeError::Magic)?;
        let n = bytes[4] as usize;
        let mut r = Reader(&bytes[5..]);
        let mut shards = VecDeque::with_capacity(n);
        if magic == MAGIC {
            for shard in 0..n {
                let (count, first_ms, last_ms) = (r.u32()?, r.u64()? as i64, r.u64()? as i64);
                let bits = match r.u8()? {
                    LAYOUT_SPLIT_BLOCK => {
                        let blocks = r.u32()? as usize;
                        let body = r.take(blocks.checked_mul(BLOCK_BITS / 8).ok_or(SeenDecodeError::Truncated)?)?;
                        if blocks == 0 {
                            return Err(SeenDecodeError::Shape);
                        }
                        Bits::Blocks(
                            body.chunks_exact(BLOCK_BITS / 8)
                                .map(|b| std::array::from_fn(|i| le_u64(&b[i * 8..])))
                                .collect(),
                        )
                    }
                    LAYOUT_CLASSIC => {
                        let hashes = u32::from(r.u8()?);
                        let words = r.u32()? as usize;
                        let body = r.take(words.checked_mul(8).ok_or(SeenDecodeError::Truncated)?)?;
                        if words == 0 || !(1..=32).contains(&hashes) {
                            return Err(SeenDecodeError::Shape);
                        }
                        Bits::Classic {
                            words: body.chunks_exact(8).map(le_u64).collect(),
                            hashes,
                        }
                    }
                    layout => return Err(SeenDecodeError::Layout { shard, layout }),
                };
                shards.push_back(Shard {
                    bits,
                    count,
                    first_ms,
                    last_ms,
                });
            }
        } else if magic == MAGIC_V2 || magic == MAGIC_V1 {
            let timed = magic == MAGIC_V2;
            let (words, hashes) = (config.classic_bits() / 64, config.classic_hashes());
            let shard_len = if timed { 20 } else { 4 } + words * 8;
            // The legacy encodings are sized by the configuration: a different one is refused
            // rather than misread.
            if r.0.len() != n * shard_len {
                return Err(if r.0.len() < n * shard_len {
                    SeenDecodeError::Truncated
                } else {
                    SeenDecodeError::Shape
                });
            }
            for _ in 0..n {
                let count = r.u32()?;
                let (first_ms, last_ms) = if timed {
                    (r.u64()? as i64, r.u64()? as i64)
                } else {
                    (0, 0)
                };
                let words = r.take(words * 8)?.chunks_exact(8).map(le_u64).collect();
                shards.push_back(Shard {
                    bits: Bits::Classic { words, hashes },
                    count,
                    first_ms,
                    last_ms,
                });
            }
        } else {
            return Err(SeenDecodeError::Magic);
        }
        if !r.0.is_empty() {
            return Err(SeenDecodeError::Shape);
        }
        while shards.len() > config.shards.max(1) {
            shards.pop_front();
        }
        Ok(Self {
            shards,
            ..Self::new(config)
        })
    }
}

/// Reads a byte slice front to back; running out is [`SeenDecodeError::Truncated`].
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SeenDecodeError> {
        if self.0.len() < n {
            return Err(SeenDecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, SeenDecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, SeenDecodeError> {
        self.take(4).map(le_u32)
    }
    fn u64(&mut self) -> Result<u64, SeenDecodeError> {
        self.take(8).map(le_u64)
    }
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// The block an id's hash picks in a shard of `blocks` blocks: the hash's high half mapped
/// onto `0..blocks` by multiply-shift.
fn block_index(h: u64, blocks: usize) -> usize {
    (((h >> 32) * blocks as u64) >> 32) as usize
}

/// The bit an id sets in each word of its block: eight 5-bit fields of a second mix of its
/// hash (independent of the high half that picked the block).
fn block_mask(h: u64) -> Block {
    let g = splitmix64(h ^ 0x5851_f42d_4c95_7f2d);
    let bit = |word: usize| 1u64 << ((g >> (5 * word)) & 31);
    std::array::from_fn(|i| bit(2 * i) | bit(2 * i + 1) << 32)
}

/// Whether a block has every bit of `mask` set: four and-nots, no branch.
#[inline]
fn holds(block: &Block, mask: &Block) -> bool {
    let mut missing = 0;
    for (word, bit) in block.iter().zip(mask) {
        missing |= bit & !word;
    }
    missing == 0
}

/// k bit positions by double hashing two independent 64-bit mixes of the id, mapped onto
/// `0..m` with a multiply-shift (Lemire) instead of a division (the classic layout).
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

    const LAYOUTS: [SeenLayout; 2] = [SeenLayout::SplitBlock, SeenLayout::Classic];

    /// The `RSB2` encoding of a classic filter, as filters were written before `RSB3`.
    fn rsb2(f: &SeenFilter) -> Vec<u8> {
        let mut out = b"RSB2".to_vec();
        out.push(f.shards.len() as u8);
        for s in &f.shards {
            out.extend_from_slice(&s.count.to_le_bytes());
            out.extend_from_slice(&s.first_ms.to_le_bytes());
            out.extend_from_slice(&s.last_ms.to_le_bytes());
            let Bits::Classic { words, .. } = &s.bits else {
                panic!("RSB2 holds classic shards only")
            };
            for w in words {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
        out
    }

    #[test]
    fn sizing_matches_the_formula() {
        let c = SeenConfig::default();
        // Classic: 1,000 ids at 0.1 %: 14,378 bits → 14,400 (whole words), 10 hashes.
        assert_eq!(c.classic_bits(), 14_400);
        assert_eq!(c.classic_hashes(), 10);
        // Split blocks: the fewest blocks at or under 0.1 %, and more bits than classic.
        let blocks = c.blocks();
        assert!(split_block_fp(1000, blocks) <= 0.001);
        assert!(split_block_fp(1000, blocks - 1) > 0.001);
        assert_eq!(blocks, 66);
        assert!(blocks * BLOCK_BITS > c.classic_bits());
        // The rate falls as blocks are added, and extreme settings still size.
        assert!((1..200).all(|b| split_block_fp(1000, b + 1) <= split_block_fp(1000, b)));
        assert!(split_block_fp(1000, 1) > 0.999, "one block of 1,000 ids is all ones");
        for (ids_per_shard, fp_rate) in [(1, 0.5), (1, 1e-12), (100_000, 1e-6), (0, 0.0)] {
            let c = SeenConfig {
                shards: 1,
                ids_per_shard,
                fp_rate,
            };
            assert!(split_block_fp(ids_per_shard.max(1), c.blocks()) <= c.target_fp());
        }
    }

    #[test]
    fn inserted_ids_are_always_found() {
        for layout in LAYOUTS {
            let mut f = SeenFilter::with_layout(SeenConfig::default(), layout);
            for id in 0..3000u64 {
                f.insert(id * 7919, 0);
            }
            assert!((0..3000u64).all(|id| f.contains(id * 7919)), "{layout:?}");
            assert_eq!(f.shard_count(), 3);
        }
    }

    #[test]
    fn false_positive_rate_is_near_the_target() {
        let config = SeenConfig {
            shards: 1,
            ids_per_shard: 1000,
            fp_rate: 0.001,
        };
        for layout in LAYOUTS {
            let mut f = SeenFilter::with_layout(config, layout);
            let mut rng = ChaCha8Rng::seed_from_u64(11);
            let inserted: Vec<u64> = (0..1000).map(|_| rng.r#gen::<u64>() | 1).collect();
            for &id in &inserted {
                f.insert(id, 0);
            }
            // Even ids were never inserted (all inserted ids are odd).
            let trials = 400_000;
            let false_positives = (0..trials).filter(|_| f.contains(rng.r#gen::<u64>() & !1)).count();
            let rate = false_positives as f64 / trials as f64;
            assert!(rate < 0.0015, "{layout:?}: measured false-positive rate {rate}");
            assert!(
                rate > 0.0003,
                "{layout:?}: suspiciously low {rate}: is the filter sized as configured?"
            );
        }
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
        assert_eq!(bytes.len(), 5 + 3 * (25 + config.blocks() * 32));
        assert_eq!(SeenFilter::from_bytes(config, &bytes).unwrap(), f);
        assert_eq!(SeenFilter::from_bytes(config, b"nope"), Err(SeenDecodeError::Magic));
        assert_eq!(SeenFilter::from_bytes(config, b"RSB9\0"), Err(SeenDecodeError::Magic));
        assert_eq!(
            SeenFilter::from_bytes(config, &bytes[..bytes.len() - 1]),
            Err(SeenDecodeError::Truncated)
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(SeenFilter::from_bytes(config, &longer), Err(SeenDecodeError::Shape));
        let mut unknown = bytes.clone();
        unknown[5 + 20] = 7; // the first shard's layout byte
        assert_eq!(
            SeenFilter::from_bytes(config, &unknown),
            Err(SeenDecodeError::Layout { shard: 0, layout: 7 })
        );
        // Shards say their own size: a filter read under another configuration is read as it
        // was written, and its later shards take the new size.
        let other = SeenConfig {
            shards: 3,
            ids_per_shard: 1000,
            fp_rate: 0.001,
        };
        let mut read = SeenFilter::from_bytes(other, &bytes).unwrap();
        assert!((0..250u64).all(|id| read.contains(id)));
        for id in 1000..1100u64 {
            read.insert(id, 0);
        }
        let read = SeenFilter::from_bytes(other, &read.to_bytes()).unwrap();
        assert!((50..250u64).chain(1000..1100).all(|id| read.contains(id)));
        assert_eq!(
            SeenFilter::from_bytes(config, &SeenFilter::new(config).to_bytes())
                .unwrap()
                .shard_count(),
            0
        );
    }

    #[test]
    fn no_bytes_make_the_reader_panic() {
        let config = SeenConfig {
            shards: 2,
            ids_per_shard: 10,
            fp_rate: 0.01,
        };
        let mut f = SeenFilter::new(config);
        let mut classic = SeenFilter::with_layout(config, SeenLayout::Classic);
        for id in 0..15u64 {
            f.insert(id, 1);
            classic.insert(id, 1);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for good in [f.to_bytes(), classic.to_bytes(), rsb2(&classic)] {
            for cut in 0..good.len() {
                assert!(SeenFilter::from_bytes(config, &good[..cut]).is_err(), "cut at {cut}");
            }
            for _ in 0..2_000 {
                let mut bad = good.clone();
                let at = rng.gen_range(4..bad.len());
                bad[at] = rng.r#gen();
                if let Ok(read) = SeenFilter::from_bytes(config, &bad) {
                    // Whatever reads, looks up and writes without panicking.
                    let _ = read.contains(3);
                    let _ = read.to_bytes();
                }
            }
        }
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
    fn filters_written_before_split_blocks_still_read_and_grow() {
        let config = SeenConfig {
            shards: 3,
            ids_per_shard: 10,
            fp_rate: 0.01,
        };
        let mut old = SeenFilter::with_layout(config, SeenLayout::Classic);
        for id in 0..15u64 {
            old.insert(id, 5_000);
        }
        let v2 = rsb2(&old);
        let mut read = SeenFilter::from_bytes(config, &v2).unwrap();
        assert!((0..15u64).all(|id| read.contains(id)));
        assert_eq!(
            read.when(12),
            Some(SeenWindow {
                first_ms: 5_000,
                last_ms: 5_000
            })
        );
        // The half-full classic shard takes five more; the next ten start a split-block shard.
        for id in 100..115u64 {
            read.insert(id, 6_000);
        }
        assert_eq!(read.shard_count(), 3);
        assert!(matches!(read.shards[1].bits, Bits::Classic { .. }));
        assert!(matches!(read.shards[2].bits, Bits::Blocks(_)));
        let again = SeenFilter::from_bytes(config, &read.to_bytes()).unwrap();
        assert_eq!(again, read);
        assert!((0..15u64).chain(100..115).all(|id| again.contains(id)));
        assert_eq!(
            again.when(114),
            Some(SeenWindow {
                first_ms: 6_000,
                last_ms: 6_000
            })
        );
        // The legacy encoding is sized by the configuration: another one is refused.
        let other = SeenConfig {
            ids_per_shard: 1000,
            ..config
        };
        assert!(SeenFilter::from_bytes(other, &v2).is_err());
        assert_eq!(
            SeenFilter::from_bytes(config, &v2[..v2.len() - 1]),
            Err(SeenDecodeError::Truncated)
        );

        // RSB1: the same shards without the 16 bytes of times.
        let words = config.classic_bits() / 8;
        let mut v1 = b"RSB1".to_vec();
        v1.push(v2[4]);
        for shard in v2[5..].chunks_exact(20 + words) {
            v1.extend_from_slice(&shard[..4]);
            v1.extend_from_slice(&shard[20..]);
        }
        let untimed = SeenFilter::from_bytes(config, &v1).unwrap();
        assert!((0..15u64).all(|id| untimed.contains(id)));
        assert_eq!(
            untimed.when(11),
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

    #[test]
    fn a_filter_with_more_shards_than_configured_keeps_its_newest() {
        let wide = SeenConfig {
            shards: 4,
            ids_per_shard: 10,
            fp_rate: 0.01,
        };
        let mut f = SeenFilter::new(wide);
        for id in 0..40u64 {
            f.insert(id, id as i64);
        }
        let narrow = SeenConfig { shards: 2, ..wide };
        let read = SeenFilter::from_bytes(narrow, &f.to_bytes()).unwrap();
        assert_eq!(read.shard_count(), 2);
        assert!((20..40u64).all(|id| read.contains(id)));
        assert_eq!(
            read.when(25),
            Some(SeenWindow {
                first_ms: 20,
                last_ms: 29
            })
        );
    }
}
