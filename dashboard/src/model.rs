//! What the pages compute from traces and aggregates: funnel steps, waterfall bars, chart
//! geometry, candidate pages, and the time filters people type. Pure functions, no I/O, so
//! the browser and the server compute the same thing and the tests below pin it down.

use std::collections::BTreeMap;

use recstack_trace_store::explain::{Evidence, FellOut};
use recstack_trace_store::query::{Aggregates, LevelBucket};
use recstack_trace_store::{CandidateFate, StageRecord, Trace};
use serde::{Deserialize, Serialize};

/// Degradation levels, best first; the order charts stack them in.
pub use recstack_trace_store::LEVELS;

/// One bar of the request funnel.
#[derive(Clone, Debug, PartialEq)]
pub struct FunnelStep {
    /// A stable key for tests and styling: `channel:<name>`, `merged`, `filtered`, `ranking_in`,
    /// `ranked`, `rerank_in`, `served`.
    pub key: String,
    pub label: String,
    pub count: u32,
    /// Why the step is shown the way it is (a failed stage, items the seen filter removed).
    pub note: Option<String>,
}

/// The candidates per stage of one request: each recall channel, then merged → filtered as
/// seen → sent to ranking → scored → rerank pool → served. Stages the request skipped (a
/// degraded level) are left out; a failed stage says so in its note.
pub fn funnel(t: &Trace) -> Vec<FunnelStep> {
    let stage = |name: &str| t.stages.iter().find(|s| s.name == name);
    let failed = |s: &StageRecord| (s.outcome != "ok").then(|| s.outcome.clone());
    let mut steps: Vec<FunnelStep> = t
        .channels
        .iter()
        .map(|c| FunnelStep {
            key: format!("channel:{}", c.channel),
            label: format!("recall: {}", c.channel),
            count: c.candidates,
            // Skipped, failed or empty: a channel that said "no" differs from one that never ran.
            note: (!c.outcome.is_empty() && c.outcome != "ok").then(|| c.outcome.clone()),
        })
        .collect();
    if let Some(recall) = stage("recall") {
        let seen = t.filtered_seen.len() as u32;
        steps.push(FunnelStep {
            key: "merged".into(),
            label: "merged".into(),
            count: recall.items_out + seen,
            note: failed(recall),
        });
        steps.push(FunnelStep {
            key: "filtered".into(),
            label: "after the seen filter".into(),
            count: recall.items_out,
            note: (seen > 0).then(|| format!("{seen} seen before")),
        });
    }
    if let Some(ranking) = stage("ranking") {
        steps.push(FunnelStep {
            key: "ranking_in".into(),
            label: "sent to ranking".into(),
            count: ranking.items_in,
            note: None,
        });
        steps.push(FunnelStep {
            key: "ranked".into(),
            label: "scored".into(),
            count: ranking.items_out,
            note: failed(ranking),
        });
    }
    if let Some(rerank) = stage("rerank") {
        steps.push(FunnelStep {
            key: "rerank_in".into(),
            label: "rerank pool".into(),
            count: rerank.items_in,
            note: failed(rerank),
        });
    }
    steps.push(FunnelStep {
        key: "served".into(),
        label: "served".into(),
        count: t.items.len() as u32,
        note: None,
    });
    steps
}

/// Width of a bar as a percent of the widest, at least a sliver so a non-zero count shows.
pub fn bar_percent(count: u64, max: u64) -> f64 {
    if max == 0 || count == 0 {
        0.0
    } else {
        (count as f64 / max as f64 * 100.0).max(0.5)
    }
}

/// One stage on the latency waterfall.
#[derive(Clone, Debug, PartialEq)]
pub struct WaterfallBar {
    pub name: String,
    pub start_us: u64,
    pub latency_us: u64,
    /// Left edge and width, percent of the request's latency.
    pub left: f64,
    pub width: f64,
    pub outcome: String,
}

/// The stages laid out in time. Traces record when each stage began; older ones did not, and
/// then the gateway's order stands in: features and recall together from the start, each
/// later stage after everything before it ended.
pub fn waterfall(stages: &[StageRecord], request_us: u64) -> Vec<WaterfallBar> {
    let mut end_so_far = 0u64;
    let placed: Vec<(u64, &StageRecord)> = stages
        .iter()
        .map(|s| {
            let start = s.start_us.unwrap_or(match s.name.as_str() {
                "features" | "recall" => 0,
                _ => end_so_far,
            });
            end_so_far = end_so_far.max(start + s.latency_us);
            (start, s)
        })
        .collect();
    let span = request_us.max(end_so_far).max(1) as f64;
    placed
        .into_iter()
        .map(|(start, s)| WaterfallBar {
            name: s.name.clone(),
            start_us: start,
            latency_us: s.latency_us,
            left: start as f64 / span * 100.0,
            width: (s.latency_us as f64 / span * 100.0).max(0.5),
            outcome: s.outcome.clone(),
        })
        .collect()
}

/// Candidates shown per page on the request view.
pub const CANDIDATES_PER_PAGE: usize = 50;

/// One page of a full trace's candidates, with how many ended each way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CandidatePage {
    /// 1-based.
    pub page: usize,
    pub pages: usize,
    pub total: usize,
    pub rows: Vec<CandidateFate>,
    /// (outcome, count), most common first.
    pub outcomes: Vec<(String, u32)>,
}

/// Page `page` (1-based, clamped into range) of `candidates`.
pub fn candidate_page(candidates: &[CandidateFate], page: usize, per_page: usize) -> CandidatePage {
    let per_page = per_page.max(1);
    let pages = candidates.len().div_ceil(per_page).max(1);
    let page = page.clamp(1, pages);
    let rows = candidates
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .cloned()
        .collect();
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for c in candidates {
        *counts.entry(c.outcome.as_str()).or_default() += 1;
    }
    let mut outcomes: Vec<(String, u32)> = counts.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    outcomes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    CandidatePage {
        page,
        pages,
        total: candidates.len(),
        rows,
        outcomes,
    }
}

/// A served item's move through rerank, e.g. `#12 → #3 (mmr)`.
pub fn rerank_move(ranked_position: Option<u32>, position: u32, rule: Option<&str>) -> String {
    let to = format!("#{}", position + 1);
    let moved = match ranked_position {
        Some(from) => format!("#{} → {to}", from + 1),
        None => to,
    };
    match rule {
        Some(rule) => format!("{moved} ({rule})"),
        None => moved,
    }
}

/// The stage an item fell out at, for people.
pub fn fell_out_label(stage: Option<FellOut>) -> &'static str {
    match stage {
        None => "cannot tell from this trace",
        Some(FellOut::Served) => "served",
        Some(FellOut::NotInIndex) => "not in the catalogue",
        Some(FellOut::Consumed) => "already consumed",
        Some(FellOut::QuotaCut) => "past a channel's quota",
        Some(FellOut::MergeCut) => "past recall's cut",
        Some(FellOut::FilteredSeen) => "filtered as seen",
        Some(FellOut::ChannelSkipped) => "channel skipped or failed",
        Some(FellOut::NotRecalled) => "not recalled",
        Some(FellOut::RankedBelowCut) => "ranked below the cut",
        Some(FellOut::BusinessRule) => "business rule",
        Some(FellOut::Diversity) => "diversity",
    }
}

/// The numbers behind a why-not answer, as (label, value) rows, in funnel order; only those
/// set.
pub fn evidence_rows(e: &Evidence) -> Vec<(&'static str, String)> {
    let score = |s: Option<f32>| s.map(|s| format!("{s:.4}"));
    [
        ("stage", e.stage.clone()),
        ("outcome", e.outcome.clone()),
        ("channel", e.channel.clone()),
        ("rank", e.rank.map(|r| r.to_string())),
        ("cut", e.cut.map(|c| c.to_string())),
        ("score", score(e.score)),
        ("score at the cut", score(e.cut_score)),
        ("rule", e.rule.clone()),
        ("served instead", e.displaced_by.clone()),
        ("since", e.since_ms.map(format_time)),
        ("at", e.at_ms.map(format_time)),
    ]
    .into_iter()
    .filter_map(|(label, value)| value.map(|v| (label, v)))
    .collect()
}

/// Milliseconds since the epoch as `2026-11-22 10:00:00.123` (UTC).
pub fn format_time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// Microseconds as milliseconds with two decimals.
pub fn format_ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

/// A time filter as the query API takes it: RFC 3339 and milliseconds pass through; a
/// browser's `datetime-local` value (`2026-11-22T10:00`, no zone) is read as UTC. `None` for
/// an empty field; `Err` names what was wrong.
pub fn normalize_time(s: &str) -> Result<Option<String>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    if s.parse::<i64>().is_ok() || s.parse::<jiff::Timestamp>().is_ok() {
        return Ok(Some(s.to_string()));
    }
    s.parse::<jiff::civil::DateTime>()
        .ok()
        .and_then(|dt| dt.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|z| Some(z.timestamp().to_string()))
        .ok_or_else(|| format!("{s:?} is not a time (use 2026-11-22T10:00 in UTC, RFC 3339 or milliseconds)"))
}

/// One column of the levels-over-time chart: stacked segments, best level at the bottom.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub start_ms: i64,
    pub x: f64,
    pub width: f64,
    pub total: u64,
    pub segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub level: String,
    pub count: u64,
    pub y: f64,
    pub height: f64,
}

/// Geometry of the stacked levels-over-time chart in a `width` × `height` box: one column per
/// bucket of `interval_ms` from `from_ms` (empty buckets leave gaps), heights scaled to the
/// busiest bucket. Levels outside [`LEVELS`] stack after them, by name.
pub fn level_columns(
    buckets: &[LevelBucket],
    from_ms: i64,
    to_ms: i64,
    interval_ms: i64,
    width: f64,
    height: f64,
) -> Vec<Column> {
    let interval_ms = interval_ms.max(1);
    let first = from_ms.div_euclid(interval_ms) * interval_ms;
    let slots = ((to_ms - first) as f64 / interval_ms as f64).ceil().max(1.0);
    let slot = width / slots;
    let max = buckets
        .iter()
        .map(|b| b.levels.values().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    buckets
        .iter()
        .filter(|b| b.start_ms >= first && b.start_ms < to_ms)
        .map(|b| {
            let mut order: Vec<&String> = b.levels.keys().collect();
            order.sort_by_key(|l| {
                (
                    LEVELS.iter().position(|x| x == l).unwrap_or(LEVELS.len()),
                    l.to_string(),
                )
            });
            let mut y = height;
            let segments = order
                .into_iter()
                .map(|level| {
                    let count = b.levels[level];
                    let h = count as f64 / max * height;
                    y -= h;
                    Segment {
                        level: level.clone(),
                        count,
                        y,
                        height: h,
                    }
                })
                .collect();
            Column {
                start_ms: b.start_ms,
                x: (b.start_ms - first) as f64 / interval_ms as f64 * slot,
                width: (slot * 0.8).max(1.0),
                total: b.levels.values().sum(),
                segments,
            }
        })
        .collect()
}

/// Requests per level over the whole range, in [`LEVELS`] order then by name.
pub fn level_totals(a: &Aggregates) -> Vec<(String, u64)> {
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for b in &a.levels_over_time {
        for (l, n) in &b.levels {
            *totals.entry(l.clone()).or_default() += n;
        }
    }
    let mut v: Vec<(String, u64)> = totals.into_iter().collect();
    v.sort_by_key(|(l, _)| (LEVELS.iter().position(|x| x == l).unwrap_or(LEVELS.len()), l.clone()));
    v
}

/// Channel contributions, largest first, with their share of all contributions (percent).
pub fn channel_shares(a: &Aggregates) -> Vec<(String, u64, f64)> {
    let sum: u64 = a.channels.values().sum();
    let mut v: Vec<(String, u64, f64)> = a
        .channels
        .iter()
        .map(|(c, n)| {
            (
                c.clone(),
                *n,
                if sum == 0 { 0.0 } else { *n as f64 / sum as f64 * 100.0 },
            )
        })
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

/// The overview's time ranges: (name, range ms, bucket ms) — about 60 buckets each.
pub const RANGES: [(&str, i64, i64); 4] = [
    ("1h", 3_600_000, 60_000),
    ("6h", 21_600_000, 360_000),
    ("24h", 86_400_000, 1_800_000),
    ("7d", 604_800_000, 10_800_000),
];

/// The range named `name`, or the first (one hour).
pub fn range(name: &str) -> (&'static str, i64, i64) {
    RANGES.iter().copied().find(|r| r.0 == name).unwrap_or(RANGES[0])
}

/// `s` with everything but unreserved URL characters percent-encoded (a path segment or a
/// query value).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `?a=1&b=2` from the non-empty pairs (empty string when none).
pub fn query_string<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let parts: Vec<String> = pairs
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// A what-if replay as asked for: the stored request, and what to change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReplayAsk {
    pub request_id: String,
    /// The user's own id, when the trace keeps a pseudonym (it cannot be replayed without).
    #[serde(default)]
    pub user: String,
    /// Start at this degradation level (empty: as the gateway decides now).
    #[serde(default)]
    pub level: String,
    /// Items to put among the candidates before ranking.
    #[serde(default)]
    pub force_items: Vec<String>,
    /// Items to block for this request.
    #[serde(default)]
    pub block: Vec<String>,
    /// `primary` or `canary` (empty: the canary split decides).
    #[serde(default)]
    pub model: String,
    /// `recorded`: the user's seen items as the stored request recorded them (its seen
    /// removals) instead of the seen filter now; anything else: now.
    #[serde(default)]
    pub state: String,
    /// Rerank's MMR trade-off, `0.0` to `1.0` (empty: the stack's).
    #[serde(default)]
    pub mmr_lambda: String,
    /// Items to pin, as `ITEM@N` (N = 1 is the top).
    #[serde(default)]
    pub pins: Vec<String>,
}

impl ReplayAsk {
    /// Item ids from a form field: separated by commas or whitespace.
    pub fn ids(field: &str) -> Vec<String> {
        field
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// The request page's line for the user's real-time items recall read (newest first): how
/// many, and the first ten; `None` when there were none.
pub fn realtime_summary(items: &[String]) -> Option<String> {
    const SHOWN: usize = 10;
    let (first, more) = (items.iter().take(SHOWN), items.len().saturating_sub(SHOWN));
    let listed = first.cloned().collect::<Vec<_>>().join(", ");
    match (items.len(), more) {
        (0, _) => None,
        (n, 0) => Some(format!("{n} since the build, newest first: {listed}")),
        (n, more) => Some(format!("{n} since the build, newest first: {listed} and {more} more")),
    }
}

/// The gateway request that replays `trace` with `ask`'s changes: the same user, `n`, scene
/// and context as recorded. A trace that keeps a pseudonym needs the user's own id.
pub fn what_if_body(trace: &Trace, ask: &ReplayAsk) -> Result<serde_json::Value, String> {
    let user = match ask.user.trim() {
        "" if trace.user_id.starts_with(recstack_trace_store::PSEUDONYM_PREFIX) => {
            return Err(format!(
                "user: request {} keeps a pseudonym ({}), not the user id: give the user's own id to replay it",
                trace.request_id, trace.user_id
            ));
        }
        "" => trace.user_id.clone(),
        own => own.to_string(),
    };
    let mut what_if = serde_json::json!({ "replay_of": trace.request_id });
    let level = ask.level.trim();
    if !level.is_empty() {
        what_if["level"] = level.into();
    }
    if !ask.force_items.is_empty() {
        what_if["force_items"] = ask.force_items.clone().into();
    }
    if !ask.block.is_empty() {
        what_if["block"] = ask.block.clone().into();
    }
    let model = ask.model.trim();
    if !model.is_empty() {
        what_if["model"] = model.into();
    }
    if ask.state.trim() == "recorded" {
        what_if["seen"] = trace.filtered_seen.clone().into();
        what_if["realtime_history"] = trace.realtime_history.clone().into();
    }
    let lambda = ask.mmr_lambda.trim();
    if !lambda.is_empty() {
        let l: f32 = lambda
            .parse()
            .ok()
            .filter(|l: &f32| (0.0..=1.0).contains(l))
            .ok_or_else(|| format!("mmr_lambda: {lambda:?} is not a number from 0.0 to 1.0"))?;
        what_if["mmr_lambda"] = l.into();
    }
    if !ask.pins.is_empty() {
        let pins = ask
            .pins
            .iter()
            .map(|p| {
                let (item, n) = p.rsplit_once('@').ok_or_else(|| format!("pins: {p:?} is not ITEM@N"))?;
                let n: u32 = n
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| format!("pins: {p:?}: N is a position from 1"))?;
                Ok(serde_json::json!({ "item_id": item, "position": n - 1 }))
            })
            .collect::<Result<Vec<_>, String>>()?;
        what_if["pins"] = pins.into();
    }
    let n = if trace.n > 0 {
        trace.n
    } else {
        trace.items.len().max(1) as u32
    };
    Ok(serde_json::json!({
        "user_id": user,
        "n": n,
        "scene": trace.scene,
        "context": trace.context,
        "what_if": what_if,
    }))
}

#[cfg(test)]
mod tests {
    use recstack_trace_store::sample;
    use recstack_trace_store::{ChannelCount, Detail};

    use super::*;

    #[test]
    fn a_replay_sends_the_recorded_request_with_its_changes() {
        let mut t = recstack_trace_store::sample::summary_trace(3, 0);
        t.user_id = "42".into();
        t.n = 7;
        t.scene = "home".into();
        t.context = [("device".to_string(), "tv".to_string())].into_iter().collect();
        let ask = ReplayAsk {
            request_id: t.request_id.clone(),
            level: "popular".into(),
            force_items: ReplayAsk::ids("a, b  c"),
            ..ReplayAsk::default()
        };
        let body = what_if_body(&t, &ask).unwrap();
        assert_eq!(body["user_id"], "42");
        assert_eq!(body["n"], 7);
        assert_eq!(body["scene"], "home");
        assert_eq!(body["context"]["device"], "tv");
        assert_eq!(body["what_if"]["replay_of"], t.request_id.as_str());
        assert_eq!(body["what_if"]["level"], "popular");
        assert_eq!(body["what_if"]["force_items"], serde_json::json!(["a", "b", "c"]));
        assert!(body["what_if"].get("block").is_none() && body["what_if"].get("model").is_none());
        assert!(
            body["what_if"].get("seen").is_none(),
            "the seen filter now, unless asked"
        );
        assert!(
            body["what_if"].get("realtime_history").is_none(),
            "the real-time items now, unless asked"
        );
        t.filtered_seen = vec!["s1".into(), "s2".into()];
        t.realtime_history = vec!["r2".into(), "r1".into()];
        let recorded = ReplayAsk {
            state: "recorded".into(),
            ..ask.clone()
        };
        let body = what_if_body(&t, &recorded).unwrap();
        assert_eq!(body["what_if"]["seen"], serde_json::json!(["s1", "s2"]));
        assert_eq!(
            body["what_if"]["realtime_history"],
            serde_json::json!(["r2", "r1"]),
            "newest first, as recorded"
        );
        // A trace from before `n` was recorded: as many as it served.
        t.n = 0;
        assert_eq!(what_if_body(&t, &ask).unwrap()["n"], t.items.len() as u64);
        // A pseudonym needs the user's own id.
        t.user_id = "p-0123456789abcdef0123456789abcdef".into();
        let e = what_if_body(&t, &ask).unwrap_err();
        assert!(e.starts_with("user: "), "{e}");
        let own = ReplayAsk {
            user: "42".into(),
            ..ask
        };
        assert_eq!(what_if_body(&t, &own).unwrap()["user_id"], "42");
    }

    #[test]
    fn the_real_time_history_line_lists_the_newest_ten() {
        assert_eq!(realtime_summary(&[]), None);
        let ids = |n: usize| (0..n).map(|k| format!("i{k}")).collect::<Vec<_>>();
        assert_eq!(
            realtime_summary(&ids(2)).as_deref(),
            Some("2 since the build, newest first: i0, i1")
        );
        let line = realtime_summary(&ids(13)).unwrap();
        assert!(line.starts_with("13 since the build, newest first: i0, i1,"), "{line}");
        assert!(line.ends_with("i9 and 3 more"), "{line}");
        assert!(realtime_summary(&ids(10)).unwrap().ends_with("i8, i9"));
    }

    fn stage(name: &str, start: Option<u64>, latency: u64, items_in: u32, items_out: u32) -> StageRecord {
        StageRecord {
            name: name.into(),
            latency_us: latency,
            start_us: start,
            items_in,
            items_out,
            outcome: "ok".into(),
        }
    }

    #[test]
    fn funnel_follows_a_full_trace_stage_by_stage() {
        let t = sample::full_trace(7, 1_000);
        let steps = funnel(&t);
        let keys: Vec<&str> = steps.iter().map(|s| s.key.as_str()).collect();
        let channels: Vec<String> = t.channels.iter().map(|c| format!("channel:{}", c.channel)).collect();
        let mut want: Vec<&str> = channels.iter().map(String::as_str).collect();
        want.extend(["merged", "filtered", "ranking_in", "ranked", "rerank_in", "served"]);
        assert_eq!(keys, want);
        let count = |k: &str| steps.iter().find(|s| s.key == k).unwrap().count;
        let recall = t.stages.iter().find(|s| s.name == "recall").unwrap();
        assert_eq!(count("merged"), recall.items_out + t.filtered_seen.len() as u32);
        assert_eq!(count("filtered"), recall.items_out);
        assert_eq!(count("ranking_in"), t.stages[2].items_in);
        assert_eq!(count("ranked"), t.stages[2].items_out);
        assert_eq!(count("rerank_in"), t.stages[3].items_in);
        assert_eq!(count("served"), t.items.len() as u32);
        for c in &t.channels {
            assert_eq!(count(&format!("channel:{}", c.channel)), c.candidates);
        }
        let filtered = steps.iter().find(|s| s.key == "filtered").unwrap();
        assert_eq!(filtered.note.as_deref(), Some("5 seen before"));
    }

    #[test]
    fn funnel_leaves_out_skipped_stages_and_marks_failed_ones() {
        let mut t = sample::summary_trace(3, 1_000);
        t.stages = vec![
            stage("features", Some(0), 10, 0, 1),
            stage("recall", Some(0), 900, 0, 300),
        ];
        t.stages[1].outcome = "failed: timed out after 40 ms".into();
        t.filtered_seen.clear();
        t.channels = vec![ChannelCount {
            channel: "hot".into(),
            candidates: 300,
            quota: Some(300),
            outcome: "ok".into(),
        }];
        let steps = funnel(&t);
        let keys: Vec<&str> = steps.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["channel:hot", "merged", "filtered", "served"]);
        assert_eq!(steps[1].note.as_deref(), Some("failed: timed out after 40 ms"));
        assert_eq!(steps[2].note, None, "nothing filtered, no note");
        // The fallback level runs no stage at all: only what was served.
        t.stages.clear();
        t.channels.clear();
        assert_eq!(funnel(&t).len(), 1);
    }

    #[test]
    fn waterfall_uses_recorded_starts_and_scales_to_the_request() {
        let stages = [
            stage("features", Some(10), 300, 0, 1),
            stage("recall", Some(10), 2_000, 0, 500),
            stage("ranking", Some(2_100), 1_500, 500, 500),
            stage("rerank", Some(3_700), 300, 200, 20),
        ];
        let bars = waterfall(&stages, 4_000);
        assert_eq!(bars.len(), 4);
        assert_eq!((bars[2].start_us, bars[2].latency_us), (2_100, 1_500));
        assert!((bars[1].left - 0.25).abs() < 1e-9);
        assert!((bars[1].width - 50.0).abs() < 1e-9);
        assert!((bars[3].left - 92.5).abs() < 1e-9);
        // A request shorter than its stages' end (clock skew) still fits the box.
        let bars = waterfall(&stages, 100);
        assert!(bars.iter().all(|b| b.left + b.width <= 100.0 + 1e-9));
    }

    #[test]
    fn waterfall_without_recorded_starts_follows_the_gateway_order() {
        let stages = [
            stage("features", None, 300, 0, 1),
            stage("recall", None, 2_000, 0, 500),
            stage("ranking", None, 1_000, 500, 500),
            stage("rerank", None, 500, 200, 20),
        ];
        let bars = waterfall(&stages, 0);
        let starts: Vec<u64> = bars.iter().map(|b| b.start_us).collect();
        assert_eq!(starts, [0, 0, 2_000, 3_000]);
        assert!(
            (bars[3].left + bars[3].width - 100.0).abs() < 1e-9,
            "the span is the stages' end"
        );
        // A zero-length stage still shows as a sliver.
        assert_eq!(waterfall(&[stage("rerank", None, 0, 0, 0)], 10)[0].width, 0.5);
    }

    #[test]
    fn candidates_are_paged_never_all_at_once() {
        let t = sample::full_trace(1, 0);
        let n = t.candidates.len();
        assert!(n > 2 * CANDIDATES_PER_PAGE, "the fixture is large enough to page");
        let first = candidate_page(&t.candidates, 1, CANDIDATES_PER_PAGE);
        assert_eq!(first.rows.len(), CANDIDATES_PER_PAGE);
        assert_eq!(first.rows[0], t.candidates[0]);
        assert_eq!(first.pages, n.div_ceil(CANDIDATES_PER_PAGE));
        assert_eq!(first.total, n);
        let last = candidate_page(&t.candidates, 10_000, CANDIDATES_PER_PAGE);
        assert_eq!(last.page, last.pages, "clamped to the last page");
        assert_eq!(last.rows.last(), t.candidates.last());
        assert_eq!(candidate_page(&t.candidates, 0, CANDIDATES_PER_PAGE).page, 1);
        let counted: u32 = first.outcomes.iter().map(|o| o.1).sum();
        assert_eq!(counted as usize, n);
        assert!(first.outcomes.windows(2).all(|w| w[0].1 >= w[1].1), "most common first");
        let empty = candidate_page(&[], 3, CANDIDATES_PER_PAGE);
        assert_eq!((empty.page, empty.pages, empty.rows.len()), (1, 1, 0));
    }

    #[test]
    fn urls_escape_what_they_cannot_carry() {
        assert_eq!(percent_encode("r-1.a_b~"), "r-1.a_b~");
        assert_eq!(percent_encode("a/b c"), "a%2Fb%20c");
        assert_eq!(percent_encode("é"), "%C3%A9");
        assert_eq!(
            query_string([("user", "u 1"), ("item", ""), ("after", "5.r-1")]),
            "?user=u%201&after=5.r-1"
        );
        assert_eq!(query_string([("user", "")]), "");
    }

    #[test]
    fn rerank_moves_and_fell_out_labels_read_plainly() {
        assert_eq!(rerank_move(Some(11), 2, Some("mmr")), "#12 → #3 (mmr)");
        assert_eq!(rerank_move(Some(0), 0, None), "#1 → #1");
        assert_eq!(rerank_move(None, 4, None), "#5");
        assert_eq!(fell_out_label(None), "cannot tell from this trace");
        assert_eq!(fell_out_label(Some(FellOut::RankedBelowCut)), "ranked below the cut");
        assert_eq!(fell_out_label(Some(FellOut::FilteredSeen)), "filtered as seen");
        assert_eq!(fell_out_label(Some(FellOut::QuotaCut)), "past a channel's quota");
    }

    #[test]
    fn evidence_rows_keep_only_what_is_set_in_funnel_order() {
        let e = Evidence {
            channel: Some("als".into()),
            rank: Some(204),
            cut: Some(200),
            score: Some(0.123_456),
            at_ms: Some(1_795_000_000_123),
            ..Evidence::default()
        };
        assert_eq!(
            evidence_rows(&e),
            [
                ("channel", "als".to_string()),
                ("rank", "204".into()),
                ("cut", "200".into()),
                ("score", "0.1235".into()),
                ("at", "2026-11-18 11:06:40.123".into()),
            ]
        );
        assert!(evidence_rows(&Evidence::default()).is_empty());
    }

    #[test]
    fn times_format_and_parse() {
        assert_eq!(format_time(1_795_000_000_123), "2026-11-18 11:06:40.123");
        assert_eq!(format_ms(1_234), "1.23 ms");
        assert_eq!(normalize_time(" "), Ok(None));
        assert_eq!(normalize_time("1795000000123"), Ok(Some("1795000000123".into())));
        assert_eq!(
            normalize_time("2026-11-22T10:00:00Z"),
            Ok(Some("2026-11-22T10:00:00Z".into()))
        );
        assert_eq!(
            normalize_time("2026-11-22T10:00"),
            Ok(Some("2026-11-22T10:00:00Z".into()))
        );
        let err = normalize_time("yesterday").unwrap_err();
        assert!(err.contains("\"yesterday\""), "{err}");
    }

    fn buckets(spec: &[(i64, &[(&str, u64)])]) -> Vec<LevelBucket> {
        spec.iter()
            .map(|(start, levels)| LevelBucket {
                start_ms: *start,
                levels: levels.iter().map(|(l, n)| (l.to_string(), *n)).collect(),
            })
            .collect()
    }

    #[test]
    fn level_columns_stack_best_level_at_the_bottom_and_scale_to_the_busiest() {
        let b = buckets(&[
            (60_000, &[("reduced", 2), ("full", 6)]),
            (180_000, &[("full", 4), ("zeta", 1), ("fallback", 1)]),
        ]);
        let cols = level_columns(&b, 60_000, 300_000, 60_000, 400.0, 100.0);
        assert_eq!(cols.len(), 2);
        assert_eq!(cols[0].x, 0.0);
        assert_eq!(cols[1].x, 200.0, "the empty bucket between leaves a gap");
        assert_eq!(cols[0].width, 80.0);
        let levels: Vec<&str> = cols[1].segments.iter().map(|s| s.level.as_str()).collect();
        assert_eq!(levels, ["full", "fallback", "zeta"]);
        let s = &cols[0].segments;
        assert_eq!((s[0].level.as_str(), s[0].height, s[0].y), ("full", 75.0, 25.0));
        assert_eq!((s[1].level.as_str(), s[1].height, s[1].y), ("reduced", 25.0, 0.0));
        assert_eq!(cols[0].total, 8);
        // The bucket holding `from` is drawn; buckets before it are not.
        assert_eq!(level_columns(&b, 200_000, 300_000, 60_000, 400.0, 100.0).len(), 1);
        assert!(level_columns(&b, 240_000, 300_000, 60_000, 400.0, 100.0).is_empty());
    }

    #[test]
    fn totals_and_shares() {
        let a = Aggregates {
            requests: 14,
            levels_over_time: buckets(&[(0, &[("reduced", 2), ("full", 6)]), (60_000, &[("full", 6)])]),
            channels: [("cf".to_string(), 30), ("hot".to_string(), 10), ("als".to_string(), 10)]
                .into_iter()
                .collect(),
            stages: BTreeMap::new(),
        };
        assert_eq!(level_totals(&a), [("full".to_string(), 12), ("reduced".to_string(), 2)]);
        let shares = channel_shares(&a);
        assert_eq!(shares[0], ("cf".to_string(), 30, 60.0));
        assert_eq!(shares[1].0, "als", "ties by name");
        assert_eq!(bar_percent(0, 10), 0.0);
        assert_eq!(bar_percent(1, 1_000), 0.5);
        assert_eq!(bar_percent(5, 10), 50.0);
        assert_eq!(range("6h"), RANGES[1]);
        assert_eq!(range("bogus"), RANGES[0]);
        let _ = Detail::Full;
    }
}
