//! Recall: seven channels over the built artifacts, merged with per-channel quotas, with the
//! items a user already saw filtered out.
//!
//! Channels never return items in the user's training history. Each is a pure function of the
//! artifacts and the user, so they can run in parallel (the recall service does) and be
//! evaluated offline (`recstack eval`).

pub mod merge;
pub mod seen;

use std::borrow::Cow;
use std::cell::RefCell;

use crate::artifacts::Artifacts;
use crate::artifacts::ann::UnitVec;
use crate::topk::{top_k, top_k_where};
pub use merge::{Candidate, Channel, ChannelList, CutReason, QuotaCut, Source, merge, merge_weighted, past_quota};

/// Candidates when the request does not say.
pub const DEFAULT_N: usize = 1000;
/// Most candidates one request may ask for.
pub const MAX_N: usize = 5000;
/// Per-channel quota when the request does not name the channel.
pub const DEFAULT_QUOTA: usize = 200;

/// How many recent history items seed item-CF.
const ITEM_CF_SEEDS: usize = 20;
/// How many recent history items seed the co-occurrence channel, and how much less each older
/// one weighs than the one after it (docs/recall.md).
const COOC_SEEDS: usize = 5;
const COOC_DECAY: f32 = 0.7;
/// How many recent history items make the vector channel's query.
const VECTOR_SEEDS: usize = 10;
/// Up to this many items the vector channel scans every item's factors instead of walking
/// the HNSW graph: a SIMD scan of 10.5K × 32 floats costs less than the graph walk for 200+
/// neighbours, and is exact.
pub const EXACT_SCAN_MAX_ITEMS: usize = 50_000;

/// A user's history, looked up once per request and shared by every channel: the build's,
/// or the build's with the user's real-time items ahead of it ([`UserHistory::live`]).
pub struct UserHistory<'a> {
    pub user: u32,
    /// Most recent first; empty for unknown and cold users.
    pub items: Cow<'a, [u32]>,
    pub seen: ItemSet,
}

impl<'a> UserHistory<'a> {
    pub fn new(a: &'a Artifacts, user: u32) -> Self {
        let items = built_history(a, user);
        Self {
            user,
            seen: items.iter().copied().collect(),
            items: Cow::Borrowed(items),
        }
    }

    /// The build's history with `recent` ahead of it ([`live_history`]); `None` when that is
    /// the build's history as it is.
    pub fn live(a: &'a Artifacts, user: u32, recent: &[u32]) -> Option<Self> {
        let items = live_history(a, user, recent)?;
        Some(Self {
            user,
            seen: items.iter().copied().collect(),
            items: Cow::Owned(items),
        })
    }
}

/// The user's history in the build, most recent first (empty for unknown and cold users).
fn built_history(a: &Artifacts, user: u32) -> &[u32] {
    a.history.get(user as usize).map(Vec::as_slice).unwrap_or_default()
}

/// The build's history of `user` with `recent` (the user's real-time items, newest first, as
/// dense ids) ahead of it: each once, at its newest place. `None` when that is the build's
/// history as it is (no recent item, or each already where the build has it), so the channels'
/// lists for the build's history still hold.
pub fn live_history(a: &Artifacts, user: u32, recent: &[u32]) -> Option<Vec<u32>> {
    let built = built_history(a, user);
    let items = with_recent_first(built, recent);
    (items != built).then_some(items)
}

/// `history` (newest first) with `recent` (newer still, newest first) ahead of it, each item
/// once at its newest place.
pub fn with_recent_first(history: &[u32], recent: &[u32]) -> Vec<u32> {
    let mut seen = ItemSet::default();
    recent
        .iter()
        .chain(history)
        .copied()
        .filter(|&i| seen.insert(i))
        .collect()
}

/// A set of dense item ids, one bit per id: the catalogue-wide scans test every item against
/// the user's history, where a bit test is a load and a mask and a hash lookup would cost more
/// than the scoring.
#[derive(Clone, Debug, Default)]
pub struct ItemSet {
    bits: Vec<u64>,
    len: usize,
}

impl ItemSet {
    pub fn contains(&self, item: &u32) -> bool {
        let (word, bit) = (*item as usize / 64, *item % 64);
        self.bits.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    /// Adds `item`; false if it was there already.
    pub fn insert(&mut self, item: u32) -> bool {
        let (word, bit) = (item as usize / 64, item % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        let fresh = self.bits[word] & (1 << bit) == 0;
        self.bits[word] |= 1 << bit;
        self.len += usize::from(fresh);
        fresh
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl FromIterator<u32> for ItemSet {
    fn from_iter<I: IntoIterator<Item = u32>>(items: I) -> Self {
        let mut set = Self::default();
        for i in items {
            set.insert(i);
        }
        set
    }
}

/// One channel's top `n` for `user` (dense id), excluding the user's history.
pub fn channel(a: &Artifacts, channel: Channel, user: u32, n: usize) -> ChannelList {
    channel_for(a, &UserHistory::new(a, user), channel, n)
}

/// One channel's top `n` for a user whose history is already looked up.
pub fn channel_for(a: &Artifacts, h: &UserHistory, channel: Channel, n: usize) -> ChannelList {
    let (user, seen) = (h.user, &h.seen);
    let items = match channel {
        Channel::ItemCf => item_cf(a, &h.items, seen, n),
        Channel::UserCf => user_cf(a, user, seen, n),
        Channel::Hot => ranked_list(&a.hot, seen, n),
        Channel::Als => als(a, user, seen, n),
        Channel::Vector => vector(a, &h.items, seen, n),
        Channel::Tag => tag(a, user, seen, n),
        Channel::Cooc => cooc(a, &h.items, seen, n),
    };
    ChannelList { channel, items }
}

/// The all-time popularity list, excluding the history (the evaluation baseline).
pub fn popular(a: &Artifacts, h: &UserHistory, n: usize) -> Vec<(u32, f32)> {
    ranked_list(&a.popular, &h.seen, n)
}

fn ranked_list(list: &[(u32, f32)], seen: &ItemSet, n: usize) -> Vec<(u32, f32)> {
    list.iter()
        .filter(|(i, _)| !seen.contains(i))
        .take(n)
        .copied()
        .collect()
}

thread_local! {
    /// Each thread's dense score vector, all zeros between uses: a channel touches a few
    /// hundred of the catalogue's slots, so clearing those beats zeroing a fresh vector.
    static SCORE_BUFFER: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Each thread's buffer for a catalogue-wide scan's scores (one per item).
    static SCAN_BUFFER: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Accumulates scores in a dense vector and returns the top `n` unseen.
struct Scores {
    score: Vec<f32>,
    touched: Vec<u32>,
}

impl Scores {
    fn new(n_items: usize) -> Self {
        let mut score = SCORE_BUFFER.with_borrow_mut(std::mem::take);
        if score.len() < n_items {
            score.resize(n_items, 0.0);
        }
        Self {
            score,
            touched: Vec::new(),
        }
    }
    fn add(&mut self, item: u32, s: f32) {
        let slot = &mut self.score[item as usize];
        if *slot == 0.0 {
            self.touched.push(item);
        }
        *slot += s;
    }
    fn top(self, seen: &ItemSet, n: usize) -> Vec<(u32, f32)> {
        let mut v: Vec<(u32, f32)> = self
            .touched
            .iter()
            .filter(|i| !seen.contains(i))
            .map(|&i| (i, self.score[i as usize]))
            .filter(|(_, s)| *s > 0.0)
            .collect();
        top_k(&mut v, n);
        let Self { mut score, touched } = self;
        for i in touched {
            score[i as usize] = 0.0;
        }
        SCORE_BUFFER.with_borrow_mut(|b| *b = score);
        v
    }
}

/// Neighbours of the user's recent items, recent ones weighted more.
fn item_cf(a: &Artifacts, history: &[u32], seen: &ItemSet, n: usize) -> Vec<(u32, f32)> {
    let mut scores = Scores::new(a.items.len());
    for (pos, &i) in history.iter().take(ITEM_CF_SEEDS).enumerate() {
        let recency = 1.0 / (1.0 + 0.1 * pos as f32);
        for &(j, s) in &a.item_neighbours[i as usize] {
            scores.add(j, s * recency);
        }
    }
    scores.top(seen, n)
}

/// What others rated soon after the user's most recent items (sequential co-occurrence), the
/// newest seed weighted most.
fn cooc(a: &Artifacts, history: &[u32], seen: &ItemSet, n: usize) -> Vec<(u32, f32)> {
    let mut scores = Scores::new(a.items.len());
    let mut recency = 1.0;
    for &i in history.iter().take(COOC_SEEDS) {
        for &(j, s) in a.next_items.get(i as usize).map(Vec::as_slice).unwrap_or_default() {
            scores.add(j, s * recency);
        }
        recency *= COOC_DECAY;
    }
    scores.top(seen, n)
}

/// What similar users interacted with.
fn user_cf(a: &Artifacts, user: u32, seen: &ItemSet, n: usize) -> Vec<(u32, f32)> {
    let Some(neighbours) = a.user_neighbours.get(user as usize) else {
        return Vec::new();
    };
    let mut scores = Scores::new(a.items.len());
    for &(v, s) in neighbours {
        for &i in &a.history[v as usize] {
            scores.add(i, s);
        }
    }
    scores.top(seen, n)
}

fn user_vector(a: &Artifacts, user: u32) -> Option<&[f32]> {
    let dim = a.factors.dim;
    let u = user as usize;
    if dim == 0 || (u + 1) * dim > a.factors.users.len() || a.history[u].is_empty() {
        return None;
    }
    Some(a.factors.user(user))
}

/// Exact inner product against every item's factors ([`Factors::scan_into`]); the history is
/// skipped inside the cut (a bit test per item that gets past the floor), so it keeps just
/// `n`.
///
/// [`Factors::scan_into`]: crate::artifacts::factors::Factors::scan_into
fn als(a: &Artifacts, user: u32, seen: &ItemSet, n: usize) -> Vec<(u32, f32)> {
    let Some(u) = user_vector(a, user) else {
        return Vec::new();
    };
    SCAN_BUFFER.with_borrow_mut(|scores| {
        a.factors.scan_into(u, scores);
        let scores = scores.iter().enumerate().map(|(i, &s)| (i as u32, s));
        top_k_where(scores, n, |(i, s)| *s > 0.0 && !seen.contains(i))
    })
}

/// Items nearest (cosine) to the user's query vector ([`vector_query`]) in the vector
/// space ([`vector_space`]): with a sequence model, the user tower's reading of the user's
/// recent items against the model's item rows; without one, the mean of the recent items' ALS
/// vectors ("more like what you just watched"). Catalogues up to [`EXACT_SCAN_MAX_ITEMS`] are
/// scanned exactly — faster than the HNSW walk at that size and with no recall loss
/// (BENCHMARKS.md, "ANN") —, larger ones go through the HNSW index, built over the same space.
fn vector(a: &Artifacts, history: &[u32], seen: &ItemSet, n: usize) -> Vec<(u32, f32)> {
    let Some(query) = history_query(a, history) else {
        return Vec::new();
    };
    let space = vector_space(a);
    let exact = || {
        SCAN_BUFFER.with_borrow_mut(|scores| {
            space.scan_into(&query.0, scores);
            let scores = scores.iter().zip(space.inverse_norms()).enumerate();
            let scores = scores.map(|(i, (&s, &inverse_norm))| (i as u32, s * inverse_norm));
            top_k_where(scores, n, |(i, _)| !seen.contains(i))
        })
    };
    if space.n_items() <= EXACT_SCAN_MAX_ITEMS {
        return exact();
    }
    // The graph cannot skip the history; ask for enough to drop it afterwards.
    let wanted = n + seen.len();
    let mut best = a.ann.search(&query, wanted);
    if ann_ran_out(best.len(), wanted, a.ann.len()) {
        // More than the graph's ef_search: a short list would not be the best n (slower, exact).
        return exact();
    }
    best.retain(|(i, _)| !seen.contains(i));
    best.truncate(n);
    best
}

/// The item vectors the vector channel searches (and [`Artifacts::ann`] indexes): the
/// sequence model's item rows when the artifacts carry one, else the ALS item factors.
pub fn vector_space(a: &Artifacts) -> &crate::artifacts::factors::Factors {
    a.seq.as_ref().map_or(&a.factors, |s| &s.rows)
}

/// Whether an HNSW answer of `returned` items to a request for `wanted` stopped at the graph's
/// ef_search rather than at the `indexed` items there are.
pub fn ann_ran_out(returned: usize, wanted: usize, indexed: usize) -> bool {
    returned < wanted.min(indexed)
}

/// The vector channel's query, unit length: with a sequence model, its user tower run on the
/// user's recent items (`None` until a runner is attached: the channel never answers from a
/// space its query was not made for); otherwise the mean of the recent items' ALS unit
/// vectors. `None` for users without history.
pub fn vector_query(a: &Artifacts, user: u32) -> Option<UnitVec> {
    history_query(a, built_history(a, user))
}

/// [`vector_query`] for a history (newest first).
fn history_query(a: &Artifacts, recent: &[u32]) -> Option<UnitVec> {
    if let Some(seq) = &a.seq {
        return seq.query(recent).map(|v| UnitVec::new(&v));
    }
    let dim = a.factors.dim;
    if dim == 0 || recent.is_empty() {
        return None;
    }
    let mut query = vec![0f32; dim];
    for &i in recent.iter().take(VECTOR_SEEDS) {
        for (q, x) in query.iter_mut().zip(UnitVec::new(a.factors.item(i)).0) {
            *q += x;
        }
    }
    Some(UnitVec::new(&query))
}

/// Items of the user's favourite genres, in proportion to how much the user likes each.
fn tag(a: &Artifacts, user: u32, seen: &ItemSet, n: usize) -> Vec<(u32, f32)> {
    let Some(features) = a.user_features.get(user as usize) else {
        return Vec::new();
    };
    let mut scores = Scores::new(a.items.len());
    for (genre, share) in &features.top_genres {
        let Some(items) = a.tags.get(genre) else { continue };
        for (rank, &i) in items.iter().filter(|i| !seen.contains(i)).take(n).enumerate() {
            scores.add(i, share / (1.0 + rank as f32));
        }
    }
    scores.top(seen, n)
}

/// Every channel, merged: `quota` items per channel at most, `total` in all.
pub fn recall(a: &Artifacts, h: &UserHistory, quota: usize, total: usize) -> Vec<Candidate> {
    let lists: Vec<ChannelList> = Channel::ALL.iter().map(|&c| channel_for(a, h, c, quota)).collect();
    merge_weighted(&lists, |_| quota, fusion_weights(a), total)
}

/// The vector channel's fusion weight when the artifacts carry no sequence model and it
/// searches the ALS space: tuned to 0 there (its items join the candidates but not the order).
pub const ALS_SPACE_VECTOR_WEIGHT: f32 = 0.0;

/// Each channel's fusion weight for these artifacts: [`Channel::fusion_weight`] (tuned with
/// the sequence model in the vector channel), but [`ALS_SPACE_VECTOR_WEIGHT`] for a vector
/// channel without one.
pub fn fusion_weights(a: &Artifacts) -> impl Fn(Channel) -> f32 + use<> {
    let als_space = a.seq.is_none();
    move |c| match c {
        Channel::Vector if als_space => ALS_SPACE_VECTOR_WEIGHT,
        c => c.fusion_weight(),
    }
}

/// The hot channel with real-time trending items first (scored above the build's list, in
/// trending order), then the build's hot items not already there; history left out.
pub fn lead_with(trending: &[u32], built: &[(u32, f32)], seen: &ItemSet, n: usize) -> Vec<(u32, f32)> {
    let top = built.first().map_or(1.0, |(_, s)| *s);
    let mut out: Vec<(u32, f32)> = Vec::with_capacity(n);
    let mut taken = std::collections::HashSet::new();
    let fresh = trending
        .iter()
        .filter(|i| !seen.contains(i))
        .copied()
        .collect::<Vec<_>>();
    let k = fresh.len();
    for (rank, i) in fresh.into_iter().enumerate() {
        if taken.insert(i) {
            out.push((i, top * (1.0 + (k - rank) as f32 / k as f32)));
        }
    }
    out.extend(built.iter().filter(|(i, _)| !taken.contains(i)).copied());
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hnsw_answer_short_of_what_was_asked_ran_out_unless_the_graph_is_smaller() {
        use crate::artifacts::ann::{ItemIndex, UnitVec};
        // A graph built with ef_search 16 answers 16 of 50 asked: it ran out.
        let points: Vec<(u32, UnitVec)> = (0..200u32)
            .map(|i| (i, UnitVec::new(&[(i as f32 / 100.0).cos(), (i as f32 / 100.0).sin()])))
            .collect();
        let index = ItemIndex::build(points, 1, 100, 16);
        let answer = index.search(&UnitVec::new(&[1.0, 0.0]), 50);
        assert_eq!((answer.len(), index.len()), (16, 200));
        assert!(ann_ran_out(answer.len(), 50, index.len()));
        // Everything asked for, or everything there is: not short.
        assert!(!ann_ran_out(16, 16, 200));
        assert!(!ann_ran_out(200, 500, 200));
        assert!(!ann_ran_out(0, 0, 0));
        assert!(ann_ran_out(199, 500, 200));
    }

    #[test]
    fn an_item_set_holds_exactly_what_a_hash_set_holds() {
        let ids: Vec<u32> = (0..500u32)
            .map(|i| (i * 7919) % 3000)
            .chain([0, 63, 64, 65, 2999, 0])
            .collect();
        let set: ItemSet = ids.iter().copied().collect();
        let want: std::collections::HashSet<u32> = ids.iter().copied().collect();
        assert_eq!(set.len(), want.len());
        for i in 0..3100 {
            assert_eq!(set.contains(&i), want.contains(&i), "{i}");
        }
        assert!(!set.contains(&u32::MAX), "beyond the bits is absent");
        let mut set = set;
        assert!(!set.insert(63) && set.insert(3001));
        assert_eq!(set.len(), want.len() + 1);
        assert!(ItemSet::default().is_empty());
    }

    #[test]
    fn recent_items_go_ahead_of_the_history_each_once_at_its_newest_place() {
        assert_eq!(with_recent_first(&[5, 4, 3], &[]), vec![5, 4, 3]);
        assert_eq!(with_recent_first(&[], &[9, 8]), vec![9, 8]);
        assert_eq!(with_recent_first(&[5, 4, 3], &[9]), vec![9, 5, 4, 3]);
        // Engaged again: moves up from the history, and a repeat in `recent` counts once.
        assert_eq!(with_recent_first(&[5, 4, 3], &[3, 9, 3]), vec![3, 9, 5, 4]);
        // Already the newest of the history: the same history (what `live` turns into `None`).
        assert_eq!(with_recent_first(&[5, 4, 3], &[5]), vec![5, 4, 3]);
        assert_eq!(with_recent_first(&[5, 4, 3], &[5, 4]), vec![5, 4, 3]);
        // Every item of both, once: the length is that of their union.
        for recent in [&[1u32, 2][..], &[2, 7], &[7, 7, 7], &[]] {
            let h = [4u32, 2, 9, 1];
            let out = with_recent_first(&h, recent);
            let union: std::collections::BTreeSet<u32> = h.iter().chain(recent).copied().collect();
            assert_eq!(out.len(), union.len(), "{recent:?}");
            assert_eq!(out.iter().copied().collect::<std::collections::BTreeSet<_>>(), union);
        }
    }

    #[test]
    fn the_channels_the_history_seeds_are_item_cf_cooc_and_vector() {
        let follows: Vec<&str> = Channel::ALL
            .into_iter()
            .filter(|c| c.follows_history())
            .map(Channel::name)
            .collect();
        assert_eq!(follows, ["item_cf", "vector", "cooc"]);
    }

    #[test]
    fn trending_items_lead_the_hot_channel() {
        let built = vec![(1, 10.0), (2, 8.0), (3, 5.0)];
        let seen: ItemSet = [7].into_iter().collect();
        let out = lead_with(&[3, 7, 9], &built, &seen, 4);
        assert_eq!(out.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![3, 9, 1, 2]);
        assert!(out[0].1 > out[1].1 && out[1].1 > out[2].1, "{out:?}");
        assert_eq!(lead_with(&[], &built, &seen, 3), built);
    }
}
