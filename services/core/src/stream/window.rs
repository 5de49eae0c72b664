//! Window math with no I/O: tumbling event-time windows per item, a watermark, smoothed CTR,
//! versions compared before a write, and each user's recent items.
//!
//! The semantics are Flink's, so the built-in engine and the Flink SQL job agree window for
//! window: a window `[start, end)` fires when the watermark (`max event time − delay`) reaches
//! `end − 1`; an event whose window has fired is late and dropped (counted).

use std::collections::{BTreeMap, HashMap};

use crate::events::{Event, EventKind};

/// Window settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowConfig {
    /// Window length in milliseconds.
    pub size_ms: i64,
    /// How far behind the newest event time the watermark trails (out-of-orderness allowed).
    pub delay_ms: i64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            size_ms: 60_000,
            delay_ms: 5_000,
        }
    }
}

/// Parses a window length as the CRD writes it: `30s`, `1m`, `1h`.
pub fn parse_window(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit (s, m, h), e.g. 1m"))?;
    let ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{s:?}: the unit must be s, m or h")),
    };
    if n <= 0 {
        return Err(format!("{s:?}: must be positive"));
    }
    Ok(n * ms)
}

/// The start of the window holding `ts_ms`.
pub fn window_start(ts_ms: i64, size_ms: i64) -> i64 {
    ts_ms.div_euclid(size_ms) * size_ms
}

/// Event counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub impressions: u64,
    pub clicks: u64,
    pub plays: u64,
    pub likes: u64,
}

impl Counts {
    pub fn add(&mut self, kind: EventKind) {
        match kind {
            EventKind::Impression => self.impressions += 1,
            EventKind::Click => self.clicks += 1,
            EventKind::Play => self.plays += 1,
            EventKind::Like => self.likes += 1,
        }
    }

    pub fn plus(self, o: Counts) -> Counts {
        Counts {
            impressions: self.impressions + o.impressions,
            clicks: self.clicks + o.clicks,
            plays: self.plays + o.plays,
            likes: self.likes + o.likes,
        }
    }

    /// Engagement: what makes an item hot.
    pub fn engagement(self) -> u64 {
        self.clicks + self.plays + self.likes
    }
}

/// Laplace-smoothed click-through rate, `(clicks + 1) / (impressions + 2)`: ½ with no data,
/// never 0 or 1 from a handful of events. The Flink SQL job computes the same expression.
pub fn smoothed_ctr(clicks: u64, impressions: u64) -> f64 {
    (clicks as f64 + 1.0) / (impressions as f64 + 2.0)
}

/// The version of a write: the window's end, then the log offset of the newest event in it.
/// A write goes through only with a version greater than the stored one, so replaying the log
/// from an old offset, or a duplicate delivery, changes nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub window_end_ms: i64,
    pub offset: u64,
}

/// One closed window of one item.
#[derive(Clone, Debug, PartialEq)]
pub struct ItemWindow {
    pub item_id: String,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub counts: Counts,
    pub version: Version,
}

impl ItemWindow {
    pub fn ctr(&self) -> f64 {
        smoothed_ctr(self.counts.clicks, self.counts.impressions)
    }
}

/// What happened to one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Counted in its window.
    Counted,
    /// Its window had fired: dropped, as Flink drops it.
    Late,
}

#[derive(Default)]
struct OpenItem {
    counts: Counts,
    /// Newest offset in this window for this item (the version's second half).
    last_offset: u64,
}

#[derive(Default)]
struct OpenWindow {
    items: HashMap<String, OpenItem>,
    /// Oldest offset that contributed to this window: the log must be replayed from here if
    /// the window is lost before it is written.
    first_offset: u64,
}

/// Tumbling windows over one partition of the log (an item's events are all in one).
pub struct Aggregator {
    config: WindowConfig,
    open: BTreeMap<i64, OpenWindow>,
    max_ts: Option<i64>,
    watermark: i64,
    /// Offset after the newest event pushed.
    next_offset: u64,
    pub late: u64,
}

impl Aggregator {
    pub fn new(config: WindowConfig) -> Self {
        Self {
            config,
            open: BTreeMap::new(),
            max_ts: None,
            watermark: i64::MIN,
            next_offset: 0,
            late: 0,
        }
    }

    pub fn config(&self) -> WindowConfig {
        self.config
    }

    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Counts `event`, read at `offset`, in its window unless that window has fired.
    pub fn push(&mut self, event: &Event, offset: u64) -> Accepted {
        self.next_offset = self.next_offset.max(offset + 1);
        let start = window_start(event.ts_ms, self.config.size_ms);
        let end = start + self.config.size_ms;
        if self.watermark >= end - 1 {
            self.late += 1;
            return Accepted::Late;
        }
        let window = self.open.entry(start).or_insert_with(|| OpenWindow {
            items: HashMap::new(),
            first_offset: offset,
        });
        window.first_offset = window.first_offset.min(offset);
        let item = window.items.entry(event.item_id.clone()).or_default();
        item.counts.add(event.kind);
        item.last_offset = item.last_offset.max(offset);
        self.max_ts = Some(self.max_ts.map_or(event.ts_ms, |m| m.max(event.ts_ms)));
        self.watermark = self.watermark.max(event.ts_ms - self.config.delay_ms);
        Accepted::Counted
    }

    /// Moves the watermark to at least `watermark` (a caught-up partition follows the clock,
    /// so its last window closes without newer events).
    pub fn advance_to(&mut self, watermark: i64) {
        self.watermark = self.watermark.max(watermark);
    }

    /// The windows the watermark has passed, oldest first, items in id order.
    pub fn fire(&mut self) -> Vec<ItemWindow> {
        let mut out = Vec::new();
        while let Some((&start, _)) = self.open.first_key_value() {
            let end = start + self.config.size_ms;
            if self.watermark < end - 1 {
                break;
            }
            let (_, window) = self.open.pop_first().unwrap_or_default();
            out.extend(Self::closed(start, end, window));
        }
        out
    }

    /// Every open window, as at the end of a bounded input (Flink's final watermark).
    pub fn flush(&mut self) -> Vec<ItemWindow> {
        self.advance_to(i64::MAX);
        self.fire()
    }

    fn closed(start: i64, end: i64, window: OpenWindow) -> Vec<ItemWindow> {
        let mut items: Vec<ItemWindow> = window
            .items
            .into_iter()
            .map(|(item_id, o)| ItemWindow {
                item_id,
                window_start_ms: start,
                window_end_ms: end,
                counts: o.counts,
                version: Version {
                    window_end_ms: end,
                    offset: o.last_offset,
                },
            })
            .collect();
        items.sort_by(|a, b| a.item_id.cmp(&b.item_id));
        items
    }

    /// The offset from which a restart must read so that no open window loses an event: the
    /// oldest offset in an open window, else the offset after the newest event. Committing
    /// it after the fired windows are written loses and double counts nothing.
    pub fn safe_offset(&self) -> u64 {
        self.open
            .values()
            .map(|w| w.first_offset)
            .min()
            .unwrap_or(self.next_offset)
    }

    /// Events counted in open windows.
    pub fn pending_events(&self) -> u64 {
        self.open
            .values()
            .flat_map(|w| w.items.values())
            .map(|i| i.counts.impressions + i.counts.clicks + i.counts.plays + i.counts.likes)
            .sum()
    }
}

/// What the feature store keeps per item: totals over every written window, the last
/// window, a decayed hot score, and the version of the last write.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ItemState {
    pub totals: Counts,
    pub last: Counts,
    pub last_window_end_ms: i64,
    pub hot: f64,
    pub version: Version,
}

/// Half-life of the hot score: engagement ten minutes ago counts half.
pub const HOT_HALF_LIFE_MS: f64 = 600_000.0;

/// Applies a closed window to an item's state if its version is newer; returns whether it
/// did. The Redis script in `sink` does exactly this.
pub fn apply_window(state: &mut ItemState, w: &ItemWindow) -> bool {
    if w.version <= state.version {
        return false;
    }
    let elapsed = (w.window_end_ms - state.last_window_end_ms).max(0) as f64;
    let decay = if state.last_window_end_ms == 0 {
        0.0
    } else {
        0.5_f64.powf(elapsed / HOT_HALF_LIFE_MS)
    };
    state.hot = state.hot * decay + w.counts.engagement() as f64;
    state.totals = state.totals.plus(w.counts);
    state.last = w.counts;
    state.last_window_end_ms = w.window_end_ms;
    state.version = w.version;
    true
}

/// Most recent items kept per user.
pub const RECENT_ITEMS: usize = 50;

/// Adds an engagement to a user's recent items (newest first, one entry per item at its
/// newest time, at most `cap`). Idempotent and order-independent: applying the same events
/// again, or in another order, gives the same list — so the fast path needs no version.
pub fn add_recent(recent: &mut Vec<(String, i64)>, item: &str, ts_ms: i64, cap: usize) {
    if let Some(pos) = recent.iter().position(|(i, _)| i == item) {
        if recent[pos].1 >= ts_ms {
            return;
        }
        recent.remove(pos);
    }
    let at = recent
        .iter()
        .position(|(i, t)| (*t, i.as_str()) < (ts_ms, item))
        .unwrap_or(recent.len());
    recent.insert(at, (item.to_string(), ts_ms));
    recent.truncate(cap);
}

/// Genre shares over a user's recent items (each item's genres weigh 1 / their number),
/// highest first, ties by name.
pub fn genre_affinity<'a>(
    recent: &[(String, i64)],
    genres: impl Fn(&str) -> Option<&'a [String]>,
    top: usize,
) -> Vec<(String, f32)> {
    let mut weight: HashMap<&str, f64> = HashMap::new();
    let mut total = 0.0;
    for (item, _) in recent {
        let Some(gs) = genres(item) else { continue };
        if gs.is_empty() {
            continue;
        }
        let w = 1.0 / gs.len() as f64;
        for g in gs {
            *weight.entry(g.as_str()).or_default() += w;
        }
        total += 1.0;
    }
    let mut out: Vec<(String, f32)> = weight
        .into_iter()
        .map(|(g, w)| (g.to_string(), (w / total) as f32))
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out.truncate(top);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const T0: i64 = 1_790_000_040_000 - 1_790_000_040_000 % MIN;

    fn ev(id: u32, item: &str, kind: EventKind, ts: i64) -> Event {
        Event {
            event_id: format!("e{id}"),
            user_id: "u".into(),
            item_id: item.into(),
            kind,
            ts_ms: ts,
            request_id: None,
        }
    }

    fn agg() -> Aggregator {
        Aggregator::new(WindowConfig::default())
    }

    #[test]
    fn windows_parse_like_the_crd() {
        assert_eq!(parse_window("1m"), Ok(60_000));
        assert_eq!(parse_window("30s"), Ok(30_000));
        assert_eq!(parse_window("2h"), Ok(7_200_000));
        assert!(parse_window("1d").unwrap_err().contains("unit"));
        assert!(parse_window("m").unwrap_err().contains("number"));
        assert!(parse_window("0m").unwrap_err().contains("positive"));
    }

    #[test]
    fn window_starts_align_and_handle_negative_times() {
        assert_eq!(window_start(T0 + 59_999, MIN), T0);
        assert_eq!(window_start(T0 + 60_000, MIN), T0 + MIN);
        assert_eq!(window_start(-1, MIN), -MIN);
    }

    #[test]
    fn ctr_is_smoothed() {
        assert_eq!(smoothed_ctr(0, 0), 0.5);
        assert_eq!(smoothed_ctr(1, 8), 0.2);
        assert!(smoothed_ctr(0, 1000) > 0.0);
        assert!(smoothed_ctr(1000, 1000) < 1.0);
    }

    #[test]
    fn a_window_fires_when_the_watermark_passes_its_end() {
        let mut a = agg();
        a.push(&ev(1, "a", EventKind::Impression, T0 + 1_000), 0);
        a.push(&ev(2, "a", EventKind::Click, T0 + 2_000), 1);
        a.push(&ev(3, "b", EventKind::Play, T0 + 3_000), 2);
        // Newest event 4 s into the next window: watermark at end − 1 s, not yet.
        a.push(&ev(4, "a", EventKind::Impression, T0 + MIN + 4_000), 3);
        assert!(a.fire().is_empty());
        assert_eq!(a.safe_offset(), 0);
        // 4.999 s past the end: watermark = end − 1 → fires (Flink's end − 1 rule).
        a.push(&ev(5, "c", EventKind::Impression, T0 + MIN + 4_999), 4);
        let fired = a.fire();
        assert_eq!(fired.len(), 2);
        assert_eq!(fired[0].item_id, "a");
        assert_eq!(
            fired[0].counts,
            Counts {
                impressions: 1,
                clicks: 1,
                ..Counts::default()
            }
        );
        assert_eq!(
            fired[0].version,
            Version {
                window_end_ms: T0 + MIN,
                offset: 1
            }
        );
        assert_eq!((fired[1].item_id.as_str(), fired[1].counts.plays), ("b", 1));
        assert_eq!(fired[0].ctr(), 2.0 / 3.0);
        // The next window's first event is where a restart must begin.
        assert_eq!(a.safe_offset(), 3);
        assert_eq!(a.pending_events(), 2);
    }

    #[test]
    fn late_events_are_dropped_and_counted_out_of_order_ones_are_not() {
        let mut a = agg();
        a.push(&ev(1, "a", EventKind::Click, T0 + MIN + 10_000), 0);
        // 4 s out of order but its window is still open: counted.
        assert_eq!(
            a.push(&ev(2, "a", EventKind::Click, T0 + MIN + 6_000), 1),
            Accepted::Counted
        );
        // The previous window ended 10 s before the newest event: fired, so late.
        assert_eq!(a.push(&ev(3, "a", EventKind::Click, T0 + 59_000), 2), Accepted::Late);
        assert_eq!(a.late, 1);
        let all = a.flush();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].counts.clicks, 2);
        assert_eq!(all[0].window_start_ms, T0 + MIN);
    }

    #[test]
    fn flush_closes_everything_and_safe_offset_moves_past_it() {
        let mut a = agg();
        for (i, t) in [0, MIN, 2 * MIN].into_iter().enumerate() {
            a.push(&ev(i as u32, "a", EventKind::Impression, T0 + t), i as u64 + 10);
        }
        let all = a.flush();
        assert_eq!(
            all.iter().map(|w| w.window_start_ms - T0).collect::<Vec<_>>(),
            vec![0, MIN, 2 * MIN]
        );
        assert_eq!(a.safe_offset(), 13);
        assert_eq!(a.pending_events(), 0);
    }

    #[test]
    fn following_the_clock_closes_an_idle_window() {
        let mut a = agg();
        a.push(&ev(1, "a", EventKind::Click, T0 + 1_000), 7);
        assert!(a.fire().is_empty());
        a.advance_to(T0 + MIN + 5_000 - 1);
        assert_eq!(a.fire().len(), 1);
        // The watermark never goes back.
        a.advance_to(0);
        assert_eq!(a.watermark(), T0 + MIN + 4_999);
    }

    fn window(item: &str, end: i64, offset: u64, clicks: u64, impressions: u64) -> ItemWindow {
        ItemWindow {
            item_id: item.into(),
            window_start_ms: end - MIN,
            window_end_ms: end,
            counts: Counts {
                impressions,
                clicks,
                ..Counts::default()
            },
            version: Version {
                window_end_ms: end,
                offset,
            },
        }
    }

    #[test]
    fn versions_make_replays_and_duplicates_harmless() {
        let mut s = ItemState::default();
        let w1 = window("a", T0 + MIN, 5, 2, 10);
        let w2 = window("a", T0 + 2 * MIN, 9, 1, 4);
        assert!(apply_window(&mut s, &w1));
        assert!(apply_window(&mut s, &w2));
        let after = s.clone();
        // A duplicate of the last write, a replay of an older window: nothing changes.
        assert!(!apply_window(&mut s, &w2));
        assert!(!apply_window(&mut s, &w1));
        assert_eq!(s, after);
        assert_eq!((s.totals.clicks, s.totals.impressions), (3, 14));
        assert_eq!(s.last.clicks, 1);
        // Same window, more of the log read (an update of a window): newer, applies.
        let mut t = ItemState::default();
        assert!(apply_window(&mut t, &w1));
        assert!(apply_window(&mut t, &window("a", T0 + MIN, 6, 2, 10)));
    }

    #[test]
    fn replaying_a_log_from_any_offset_gives_the_same_state() {
        // 300 events over five windows; replay from every offset after a full run.
        let events: Vec<Event> = (0..300)
            .map(|i| {
                let kind = EventKind::ALL[i % 4];
                ev(i as u32, ["a", "b", "c"][i % 3], kind, T0 + i as i64 * 1_000)
            })
            .collect();
        let run = |from: usize, state: &mut HashMap<String, ItemState>| {
            let mut a = agg();
            for (o, e) in events.iter().enumerate().skip(from) {
                a.push(e, o as u64);
            }
            for w in a.flush() {
                apply_window(state.entry(w.item_id.clone()).or_default(), &w);
            }
        };
        let mut once = HashMap::new();
        run(0, &mut once);
        let total: u64 = once
            .values()
            .map(|s| s.totals.impressions + s.totals.engagement())
            .sum();
        assert_eq!(total, 300);
        for from in [0, 1, 59, 60, 61, 150, 299] {
            let mut replayed = once.clone();
            run(from, &mut replayed);
            assert_eq!(replayed, once, "replay from offset {from} changed the state");
        }
    }

    #[test]
    fn the_hot_score_decays_between_windows() {
        let mut s = ItemState::default();
        apply_window(&mut s, &window("a", T0 + MIN, 1, 8, 0));
        assert_eq!(s.hot, 8.0);
        let later = T0 + MIN + HOT_HALF_LIFE_MS as i64;
        apply_window(&mut s, &window("a", later, 2, 2, 0));
        assert!((s.hot - 6.0).abs() < 1e-9, "{}", s.hot);
    }

    #[test]
    fn recent_items_are_idempotent_and_order_independent() {
        let adds = [("a", 5), ("b", 3), ("a", 9), ("c", 9), ("d", 1), ("b", 2)];
        let mut fwd = Vec::new();
        for (i, t) in adds {
            add_recent(&mut fwd, i, t, 3);
        }
        let mut rev = Vec::new();
        for (i, t) in adds.iter().rev() {
            add_recent(&mut rev, i, *t, 3);
        }
        let expect: Vec<(String, i64)> = vec![("c".into(), 9), ("a".into(), 9), ("b".into(), 3)];
        assert_eq!(fwd, expect);
        assert_eq!(rev, expect);
        let again = fwd.clone();
        for (i, t) in adds {
            add_recent(&mut fwd, i, t, 3);
        }
        assert_eq!(fwd, again);
    }

    #[test]
    fn genre_affinity_shares_sum_to_one() {
        let genres: HashMap<&str, Vec<String>> = [
            ("a", vec!["Drama".to_string()]),
            ("b", vec!["Drama".to_string(), "Comedy".to_string()]),
            ("c", vec![]),
        ]
        .into_iter()
        .collect();
        let recent = vec![
            ("a".to_string(), 3),
            ("b".to_string(), 2),
            ("c".to_string(), 1),
            ("z".to_string(), 0),
        ];
        let aff = genre_affinity(&recent, |i| genres.get(i).map(Vec::as_slice), 5);
        assert_eq!(aff, vec![("Drama".to_string(), 0.75), ("Comedy".to_string(), 0.25)]);
        assert!(genre_affinity(&[], |_| None, 5).is_empty());
    }
}
