//! Merging the channels' lists: per-channel quota, dedup with full lineage, fused ranking.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// A recall channel. In JSON (responses, traces) by its [`Channel::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    ItemCf,
    UserCf,
    Hot,
    Als,
    Vector,
    Tag,
    Cooc,
}

impl Channel {
    pub const ALL: [Channel; 7] = [
        Channel::ItemCf,
        Channel::UserCf,
        Channel::Hot,
        Channel::Als,
        Channel::Vector,
        Channel::Tag,
        Channel::Cooc,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Channel::ItemCf => "item_cf",
            Channel::UserCf => "user_cf",
            Channel::Hot => "hot",
            Channel::Als => "als",
            Channel::Vector => "vector",
            Channel::Tag => "tag",
            Channel::Cooc => "cooc",
        }
    }

    /// The channel's weight in the fusion of recall's lists, tuned on the validation world
    /// (`recstack tune`: coordinate ascent on the merged list's NDCG@20; docs/recall.md).
    pub fn fusion_weight(self) -> f32 {
        match self {
            Channel::ItemCf => 0.25,
            Channel::UserCf => 0.0,
            Channel::Hot => 0.5,
            Channel::Als => 0.25,
            Channel::Vector => 1.0,
            Channel::Tag => 0.25,
            Channel::Cooc => 1.5,
        }
    }

    /// Whether the channel is seeded by the user's history (newest items first), so the
    /// user's real-time items change its list: item-CF, co-occurrence and the vector channel's
    /// query. The others read what the build learnt of the user (neighbours, factors, genres)
    /// or nothing of the user at all.
    pub fn follows_history(self) -> bool {
        matches!(self, Channel::ItemCf | Channel::Cooc | Channel::Vector)
    }

    /// Its place in [`Channel::ALL`] (the declaration order).
    pub const fn index(self) -> usize {
        self as usize
    }

    pub fn parse(name: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// One channel's ranked list, best first.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelList {
    pub channel: Channel,
    pub items: Vec<(u32, f32)>,
}

/// Where a candidate came from: one channel's vote, the lineage carried from recall's merge
/// through the gateway's response to the trace.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub channel: Channel,
    pub score: f32,
    /// 1-based rank within the channel's list.
    pub rank: u32,
}

/// A merged candidate.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub item: u32,
    /// Every channel that produced the item (within its quota), in channel order; most items
    /// come from one or two, held inline.
    pub sources: SmallVec<[Source; 2]>,
    /// Weighted score fusion: Σ over sources of the channel's weight times its score scaled by
    /// the channel list's best ([`fusion_term`]).
    pub fused: f32,
}

/// One source's share of a candidate's fused score: the channel's weight times its score
/// scaled by the list's best (0–1, so channels with different score scales add up).
pub fn fusion_term(weight: f32, score: f32, top: f32) -> f32 {
    if top > 0.0 {
        weight * (score / top).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// [`merge_weighted`] with each channel's [`Channel::fusion_weight`].
pub fn merge(lists: &[ChannelList], quota: impl Fn(Channel) -> usize, total: usize) -> Vec<Candidate> {
    merge_weighted(lists, quota, Channel::fusion_weight, total)
}

/// Takes at most `quota(channel)` items from each list, merges duplicates into one candidate
/// with every source, ranks by fused score — Σ `weight(channel) × score / list's best score`
/// ([`fusion_term`]) — (ties: more sources, then lower item id), and keeps `total`.
/// (Scores, not ranks: on the validation world the tuned score fusion's merged NDCG@20 beat
/// tuned reciprocal-rank fusion's, 0.1699 against 0.1670; docs/recall.md.)
pub fn merge_weighted(
    lists: &[ChannelList],
    quota: impl Fn(Channel) -> usize,
    weight: impl Fn(Channel) -> f32,
    total: usize,
) -> Vec<Candidate> {
    let most: usize = lists.iter().map(|l| l.items.len().min(quota(l.channel))).sum();
    let mut merged: Vec<Candidate> = Vec::with_capacity(most);
    let mut ordered: Vec<&ChannelList> = lists.iter().collect();
    ordered.sort_by_key(|l| l.channel);
    MERGED_AT.with_borrow_mut(|at| {
        for list in ordered {
            let w = weight(list.channel);
            let top = list.items.first().map_or(1.0, |x| x.1);
            for (rank0, &(item, score)) in list.items.iter().take(quota(list.channel)).enumerate() {
                if item as usize >= at.len() {
                    at.resize(item as usize + 1, NOT_MERGED);
                }
                let slot = &mut at[item as usize];
                if *slot == NOT_MERGED {
                    *slot = merged.len() as u32;
                    merged.push(Candidate {
                        item,
                        sources: SmallVec::new(),
                        fused: 0.0,
                    });
                }
                let c = &mut merged[*slot as usize];
                // A channel listing an item twice counts once, at its best rank.
                if c.sources.iter().any(|s| s.channel == list.channel) {
                    continue;
                }
                c.sources.push(Source {
                    channel: list.channel,
                    score,
                    rank: rank0 as u32 + 1,
                });
                c.fused += fusion_term(w, score, top);
            }
        }
        for c in &merged {
            at[c.item as usize] = NOT_MERGED;
        }
    });
    in_fused_order(merged, total)
}

thread_local! {
    /// Each thread's index from item (a dense id) to its place in the merge being built,
    /// [`NOT_MERGED`] between merges: a thousand lookups cost a thousand array reads, where a
    /// hash map hashed and probed for each (BENCHMARKS.md, "Scoring the catalogue"). Four
    /// bytes per catalogue item, like the channels' score vector.
    static MERGED_AT: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

const NOT_MERGED: u32 = u32::MAX;

/// The best `total` of `merged` in the merged order: higher fused score first, then more
/// sources, then the lower item id. Sorts 16-byte keys rather than the
/// candidates (each ~48 bytes, moved at every swap), then moves each kept candidate once.
fn in_fused_order(merged: Vec<Candidate>, total: usize) -> Vec<Candidate> {
    // That order as one integer: the score's total order reversed, more sources first,
    // the lower id first; the low 32 bits say where the candidate is.
    let mut keys: Vec<u128> = merged
        .iter()
        .enumerate()
        .map(|(at, c)| {
            let bits = c.fused.to_bits();
            // `f32::total_cmp`'s order as an unsigned integer, then reversed.
            let score = !(if bits >> 31 == 1 { !bits } else { bits | 1 << 31 });
            let fewer_sources = u32::MAX - c.sources.len() as u32;
            (u128::from(score) << 96) | (u128::from(fewer_sources) << 64) | (u128::from(c.item) << 32) | at as u128
        })
        .collect();
    if keys.len() > total {
        keys.select_nth_unstable(total);
        keys.truncate(total);
    }
    keys.sort_unstable();
    let mut merged: Vec<Option<Candidate>> = merged.into_iter().map(Some).collect();
    keys.into_iter()
        .filter_map(|k| merged[k as u32 as usize].take())
        .collect()
}

/// Why an item a channel ranked did not enter the merge (explained requests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CutReason {
    /// Ranked past its channel's quota.
    Quota,
    /// Returned only by channels the request switched off (quota 0).
    ChannelOff,
}

/// An item some channel ranked that no channel let into the merge.
#[derive(Clone, Debug, PartialEq)]
pub struct QuotaCut {
    pub item: u32,
    /// `Quota` when some channel that ran ranked it past its quota; `ChannelOff` when only
    /// switched-off channels ranked it.
    pub reason: CutReason,
    /// Every channel that ranked it, at the rank it had there (in channel order).
    pub sources: SmallVec<[Source; 2]>,
}

/// The items `lists` (computed deeper than the quotas, for explaining) ranked past their
/// channel's quota — or at all, for a channel with quota 0 — that are not in `merged` through
/// another channel. Best rank first (then the item id).
pub fn past_quota(lists: &[ChannelList], quota: impl Fn(Channel) -> usize, merged: &[Candidate]) -> Vec<QuotaCut> {
    let inside: rustc_hash::FxHashSet<u32> = merged.iter().map(|c| c.item).collect();
    let mut cuts: FxHashMap<u32, QuotaCut> = FxHashMap::default();
    let mut ordered: Vec<&ChannelList> = lists.iter().collect();
    ordered.sort_by_key(|l| l.channel);
    for list in ordered {
        let q = quota(list.channel);
        for (rank0, &(item, score)) in list.items.iter().enumerate().skip(q) {
            if inside.contains(&item) {
                continue;
            }
            let cut = cuts.entry(item).or_insert_with(|| QuotaCut {
                item,
                reason: CutReason::ChannelOff,
                sources: SmallVec::new(),
            });
            if cut.sources.iter().any(|s| s.channel == list.channel) {
                continue;
            }
            if q > 0 {
                cut.reason = CutReason::Quota;
            }
            cut.sources.push(Source {
                channel: list.channel,
                score,
                rank: rank0 as u32 + 1,
            });
        }
    }
    let mut cuts: Vec<QuotaCut> = cuts.into_values().collect();
    let best = |c: &QuotaCut| c.sources.iter().map(|s| s.rank).min().unwrap_or(u32::MAX);
    cuts.sort_unstable_by(|a, b| best(a).cmp(&best(b)).then(a.item.cmp(&b.item)));
    cuts
}

/// The merged order: higher fused score first, then more sources, then the lower item id
/// (what [`in_fused_order`] sorts by, as one integer key; the tests check one against the
/// other).
#[cfg(test)]
fn fused_order(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.fused
        .total_cmp(&a.fused)
        .then(b.sources.len().cmp(&a.sources.len()))
        .then(a.item.cmp(&b.item))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(channel: Channel, items: &[u32]) -> ChannelList {
        ChannelList {
            channel,
            items: items
                .iter()
                .enumerate()
                .map(|(r, &i)| (i, 1.0 - r as f32 * 0.1))
                .collect(),
        }
    }

    #[test]
    fn dedup_keeps_every_source() {
        let merged = merge(
            &[list(Channel::Hot, &[1, 2, 3]), list(Channel::ItemCf, &[3, 4])],
            |_| 10,
            100,
        );
        assert_eq!(merged.len(), 4);
        let three = merged.iter().find(|c| c.item == 3).unwrap();
        assert_eq!(three.sources.len(), 2);
        assert_eq!(three.sources[0].channel, Channel::ItemCf);
        assert_eq!((three.sources[0].rank, three.sources[1].rank), (1, 3));
        assert_eq!(merged[0].item, 3, "found by two channels, it ranks first");
        let items: Vec<u32> = merged.iter().map(|c| c.item).collect();
        let mut unique = items.clone();
        unique.dedup();
        assert_eq!(items.len(), unique.len());
    }

    #[test]
    fn weights_and_scaled_scores_make_the_fused_score() {
        let als = ChannelList {
            channel: Channel::Als,
            items: vec![(1, 10.0), (2, 5.0), (3, -1.0)],
        };
        let cooc = ChannelList {
            channel: Channel::Cooc,
            items: vec![(2, 0.2), (4, 0.1)],
        };
        let weight = |c: Channel| if c == Channel::Cooc { 3.0 } else { 1.0 };
        let merged = merge_weighted(&[als, cooc], |_| 10, weight, 10);
        let fused: Vec<(u32, f32)> = merged.iter().map(|c| (c.item, c.fused)).collect();
        // 2: 5/10 + 3 × 1; 4: 3 × 0.5; 1: 1; 3: a negative score adds nothing.
        assert_eq!(fused, [(2, 3.5), (4, 1.5), (1, 1.0), (3, 0.0)]);
        assert_eq!(fusion_term(2.0, 1.0, 0.0), 0.0, "an all-zero list adds nothing");
        assert_eq!(fusion_term(2.0, 3.0, 1.0), 2.0, "at most the weight");
    }

    #[test]
    fn quota_limits_each_channel() {
        let merged = merge(
            &[list(Channel::Hot, &[1, 2, 3, 4, 5]), list(Channel::Als, &[6, 7, 8])],
            |c| if c == Channel::Hot { 2 } else { 10 },
            100,
        );
        let hot: Vec<u32> = merged
            .iter()
            .filter(|c| c.sources.iter().any(|s| s.channel == Channel::Hot))
            .map(|c| c.item)
            .collect();
        assert_eq!(hot.len(), 2);
        assert!(
            hot.contains(&1) && hot.contains(&2),
            "the quota keeps each channel's best"
        );
        assert_eq!(merged.len(), 5);
    }

    #[test]
    fn total_truncates_and_order_is_deterministic() {
        let lists = [list(Channel::Hot, &[1, 2, 3]), list(Channel::Tag, &[4, 5, 6])];
        let merged = merge_weighted(&lists, |_| 10, |_| 1.0, 4);
        assert_eq!(merged.len(), 4);
        // Equal fused scores: lower item id first.
        assert_eq!(merged.iter().map(|c| c.item).collect::<Vec<_>>(), [1, 4, 2, 5]);
        let mut reversed = lists.to_vec();
        reversed.reverse();
        assert_eq!(
            merge(&reversed, |_| 10, 4),
            merge(&lists, |_| 10, 4),
            "input order does not matter"
        );
    }

    #[test]
    fn a_tie_in_fused_score_goes_to_more_sources() {
        // Item 2 at half the best score in two channels of weight 1: 0.5 + 0.5, exactly item 1's
        // score at the top of one channel.
        let hot = ChannelList {
            channel: Channel::Hot,
            items: vec![(1, 4.0), (2, 2.0)],
        };
        let tag = ChannelList {
            channel: Channel::Tag,
            items: vec![(3, 0.5), (2, 0.25)],
        };
        let merged = merge_weighted(&[hot, tag], |_| 100, |_| 1.0, 100);
        let at = |item: u32| merged.iter().position(|c| c.item == item).unwrap();
        assert_eq!(merged[at(2)].fused, merged[at(1)].fused);
        assert!(at(2) < at(1), "two sources before one at the same score");
        assert!(at(1) < at(3), "then the lower item id");
    }

    #[test]
    fn duplicate_within_a_channel_counts_once() {
        let merged = merge(&[list(Channel::Hot, &[1, 1, 2])], |_| 10, 10);
        assert_eq!(merged.iter().find(|c| c.item == 1).unwrap().sources.len(), 1);
    }

    /// The merge's dedup, quotas, lineage and fused scores written the plain way (an ordered
    /// map, a stable sort in [`fused_order`], whose ties the tests above pin down).
    fn reference(lists: &[ChannelList], quota: impl Fn(Channel) -> usize, total: usize) -> Vec<Candidate> {
        let mut by_item: std::collections::BTreeMap<u32, Candidate> = Default::default();
        let mut ordered = lists.to_vec();
        ordered.sort_by_key(|l| l.channel);
        for list in &ordered {
            let top = list.items.first().map_or(1.0, |x| x.1);
            for (rank0, &(item, score)) in list.items.iter().take(quota(list.channel)).enumerate() {
                let c = by_item.entry(item).or_insert_with(|| Candidate {
                    item,
                    sources: SmallVec::new(),
                    fused: 0.0,
                });
                if c.sources.iter().all(|s| s.channel != list.channel) {
                    c.sources.push(Source {
                        channel: list.channel,
                        score,
                        rank: rank0 as u32 + 1,
                    });
                    c.fused += list.channel.fusion_weight() * (score / top).clamp(0.0, 1.0);
                }
            }
        }
        let mut all: Vec<Candidate> = by_item.into_values().collect();
        all.sort_by(fused_order);
        all.truncate(total);
        all
    }

    #[test]
    fn the_fused_order_holds_for_every_score() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let scores = [
            f32::NEG_INFINITY,
            -2.5,
            -1e-30,
            -0.0,
            0.0,
            1e-30,
            0.5,
            2.5,
            f32::INFINITY,
            f32::NAN,
            -f32::NAN,
        ];
        let source = Source {
            channel: Channel::Hot,
            score: 1.0,
            rank: 1,
        };
        for round in 0..200 {
            let all: Vec<Candidate> = (0..rng.gen_range(0..60))
                .map(|_| Candidate {
                    item: rng.gen_range(0..40),
                    sources: (0..rng.gen_range(0..4)).map(|_| source).collect(),
                    fused: scores[rng.gen_range(0..scores.len())],
                })
                .collect();
            let total = rng.gen_range(0..70);
            let mut want = all.clone();
            want.sort_by(fused_order);
            want.truncate(total);
            let got = in_fused_order(all, total);
            let key = |c: &Candidate| (c.item, c.sources.len(), c.fused.to_bits());
            assert_eq!(
                got.iter().map(key).collect::<Vec<_>>(),
                want.iter().map(key).collect::<Vec<_>>(),
                "round {round}"
            );
        }
    }

    #[test]
    fn merge_equals_the_plain_reference_on_random_lists() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for round in 0..300 {
            // Few distinct items, so channels overlap (and repeat items) often.
            let universe = rng.gen_range(1..60u32);
            let mut lists = Vec::new();
            for channel in Channel::ALL {
                if rng.gen_bool(0.8) {
                    let len = rng.gen_range(0..40);
                    let items = (0..len)
                        .map(|_| (rng.gen_range(0..universe), rng.gen_range(0.0..1.0)))
                        .collect();
                    lists.push(ChannelList { channel, items });
                }
            }
            let quotas: Vec<usize> = (0..Channel::ALL.len()).map(|_| rng.gen_range(0..30)).collect();
            let quota = |c: Channel| quotas[c as usize];
            let total = rng.gen_range(0..80);
            assert_eq!(
                merge(&lists, quota, total),
                reference(&lists, quota, total),
                "round {round}"
            );
        }
    }

    #[test]
    fn past_quota_names_each_cut_with_its_rank() {
        // Hot (quota 2): 1 2 | 3 4; ALS (quota 2): 3 5 | 6; tag (off): 7 4.
        let lists = [
            list(Channel::Hot, &[1, 2, 3, 4]),
            list(Channel::Als, &[3, 5, 6]),
            list(Channel::Tag, &[7, 4]),
        ];
        let quota = |c: Channel| if c == Channel::Tag { 0 } else { 2 };
        let merged = merge(&lists, quota, 100);
        let cuts = past_quota(&lists, quota, &merged);
        type Summary = (u32, CutReason, Vec<(Channel, u32)>);
        let summary: Vec<Summary> = cuts
            .iter()
            .map(|c| {
                (
                    c.item,
                    c.reason,
                    c.sources.iter().map(|s| (s.channel, s.rank)).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                // 3 is past hot's quota but ALS let it in: not a cut.
                (7, CutReason::ChannelOff, vec![(Channel::Tag, 1)]),
                (4, CutReason::Quota, vec![(Channel::Hot, 4), (Channel::Tag, 2)]),
                (6, CutReason::Quota, vec![(Channel::Als, 3)]),
            ]
        );
        assert!(past_quota(&lists, |_| 10, &merge(&lists, |_| 10, 100)).is_empty());
    }

    #[test]
    fn empty_inputs() {
        assert!(merge(&[], |_| 10, 10).is_empty());
        assert!(merge(&[list(Channel::Hot, &[1])], |_| 0, 10).is_empty());
        assert!(merge(&[list(Channel::Hot, &[1])], |_| 10, 0).is_empty());
    }

    #[test]
    fn channel_names_round_trip() {
        for c in Channel::ALL {
            assert_eq!(Channel::parse(c.name()), Some(c));
        }
        assert_eq!(Channel::parse("nope"), None);
    }
}
