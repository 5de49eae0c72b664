//! What an app sends the gateway and what it gets back: the request (HTTP JSON or gRPC), its
//! checks (each error names the field), and the recommendation with every item's lineage.

use std::collections::BTreeMap;
use std::time::Duration;

use recstack_core::recall::Source;
use serde::{Deserialize, Serialize};

use crate::json::FieldError;

pub const DEFAULT_N: u32 = 20;
pub const MAX_N: u32 = 100;
pub const MIN_TIMEOUT_MS: u32 = 10;
pub const MAX_TIMEOUT_MS: u32 = 10_000;

/// The body of `POST /v1/recommend` (and the fields of the gRPC request).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecommendRequest {
    pub user_id: String,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub scene: Option<String>,
    #[serde(default)]
    pub context: BTreeMap<String, String>,
    #[serde(default)]
    pub timeout_ms: Option<u32>,
    #[serde(default)]
    pub debug: bool,
    /// Replay a stored request with changes (a what-if): traced in full, like `debug`.
    #[serde(default)]
    pub what_if: Option<WhatIfRequest>,
}

/// The changes of a what-if replay (`what_if` in the request body).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhatIfRequest {
    /// The stored request this replays (its trace records it).
    pub replay_of: String,
    /// Start at this degradation level: `full`, `reduced`, `popular` or `fallback`.
    #[serde(default)]
    pub level: Option<String>,
    /// Items put among the candidates before ranking (served only if they earn it).
    #[serde(default)]
    pub force_items: Vec<String>,
    /// Items blocked for this request, beside the stack's block list.
    #[serde(default)]
    pub block: Vec<String>,
    /// The ranking model: `primary` or `canary`.
    #[serde(default)]
    pub model: Option<String>,
    /// The user's seen items as recorded (the replayed request's `filtered_seen`): filtered
    /// instead of the user's seen filter now. Absent: the seen filter as it is now.
    #[serde(default)]
    pub seen: Option<Vec<String>>,
    /// The user's real-time items as recorded (the replayed request's `realtime_history`,
    /// newest first): put ahead of the build's history instead of those in the stream's store
    /// now. Absent: as they are now.
    #[serde(default)]
    pub realtime_history: Option<Vec<String>>,
    /// Rerank's MMR trade-off, 0.0 (diversity) to 1.0 (score).
    #[serde(default)]
    pub mmr_lambda: Option<f32>,
    /// Items served at a 0-based position: `[{"item_id": "…", "position": 0}]`.
    #[serde(default)]
    pub pins: Vec<recstack_trace_store::PinRecord>,
}

/// Most items a what-if may force in, and block.
pub const MAX_FORCED: usize = 50;
pub const MAX_BLOCKED: usize = 500;
pub const MAX_SEEN: usize = 5_000;
pub const MAX_PINS: usize = 20;

/// A checked what-if; errors name the field (`what_if.level`, `what_if.force_items[2]`, …).
fn what_if(w: WhatIfRequest) -> Result<recstack_trace_store::WhatIf, FieldError> {
    let replay_of = w.replay_of.trim();
    if replay_of.is_empty() || replay_of.len() > 128 {
        return Err(FieldError::new("what_if.replay_of", "must be 1 to 128 characters"));
    }
    if let Some(level) = &w.level
        && recstack_core::degrade::Level::from_name(level).is_none()
    {
        return Err(FieldError::new(
            "what_if.level",
            format!("{level:?}: one of full, reduced, popular, fallback"),
        ));
    }
    if let Some(model) = &w.model
        && model != "primary"
        && model != "canary"
    {
        return Err(FieldError::new(
            "what_if.model",
            format!("{model:?}: primary or canary"),
        ));
    }
    let ids = |field: &str, ids: Vec<String>, max: usize| -> Result<Vec<String>, FieldError> {
        if ids.len() > max {
            return Err(FieldError::new(
                &format!("what_if.{field}"),
                format!("has {} items; at most {max}", ids.len()),
            ));
        }
        let mut out: Vec<String> = Vec::with_capacity(ids.len());
        // Up to 5,000 seen items: a set, not a scan of `out` per id.
        let mut kept = std::collections::HashSet::with_capacity(ids.len());
        for (i, id) in ids.into_iter().enumerate() {
            let id = id.trim().to_string();
            if id.is_empty() || id.len() > 256 {
                return Err(FieldError::new(
                    &format!("what_if.{field}[{i}]"),
                    "must be 1 to 256 characters",
                ));
            }
            if kept.insert(id.clone()) {
                out.push(id);
            }
        }
        Ok(out)
    };
    if let Some(l) = w.mmr_lambda
        && !(0.0..=1.0).contains(&l)
    {
        return Err(FieldError::new("what_if.mmr_lambda", format!("is {l}; 0.0 to 1.0")));
    }
    if w.pins.len() > MAX_PINS {
        return Err(FieldError::new(
            "what_if.pins",
            format!("has {} items; at most {MAX_PINS}", w.pins.len()),
        ));
    }
    for (i, p) in w.pins.iter().enumerate() {
        if p.item_id.trim().is_empty() || p.item_id.len() > 256 {
            return Err(FieldError::new(
                &format!("what_if.pins[{i}].item_id"),
                "must be 1 to 256 characters",
            ));
        }
        if p.position >= MAX_N {
            return Err(FieldError::new(
                &format!("what_if.pins[{i}].position"),
                format!("is {}; below {MAX_N}", p.position),
            ));
        }
    }
    Ok(recstack_trace_store::WhatIf {
        replay_of: replay_of.to_string(),
        level: w.level,
        force_items: ids("force_items", w.force_items, MAX_FORCED)?,
        block: ids("block", w.block, MAX_BLOCKED)?,
        model: w.model,
        seen: w.seen.map(|seen| ids("seen", seen, MAX_SEEN)).transpose()?,
        realtime_history: w
            .realtime_history
            .map(|recent| ids("realtime_history", recent, crate::recall::REALTIME_SEEDS))
            .transpose()?,
        mmr_lambda: w.mmr_lambda,
        pins: w.pins,
    })
}

/// A checked request.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    pub user_id: String,
    pub n: u32,
    pub scene: String,
    pub context: BTreeMap<String, String>,
    /// `None`: the gateway's default.
    pub timeout: Option<Duration>,
    pub debug: bool,
    /// A what-if replay's changes (then `debug` is set too).
    pub what_if: Option<recstack_trace_store::WhatIf>,
}

/// Checks a request; the error names the field.
pub fn validate(req: RecommendRequest) -> Result<Query, FieldError> {
    let user_id = req.user_id.trim();
    if user_id.is_empty() {
        return Err(FieldError::new("user_id", "is required"));
    }
    if user_id.len() > 256 {
        return Err(FieldError::new("user_id", "is longer than 256 bytes"));
    }
    let n = match req.n {
        None | Some(0) => DEFAULT_N,
        Some(n) if n > MAX_N => return Err(FieldError::new("n", format!("is {n}; at most {MAX_N}"))),
        Some(n) => n,
    };
    // An empty scene is the default one, as over gRPC (where a string cannot be absent).
    let scene = req.scene.filter(|s| !s.is_empty()).unwrap_or_else(|| "default".into());
    if scene.len() > 64 || !scene.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(FieldError::new(
            "scene",
            "must be at most 64 characters of A-Z a-z 0-9 - _ .",
        ));
    }
    if req.context.len() > 32 {
        return Err(FieldError::new("context", "has more than 32 entries"));
    }
    if let Some((k, _)) = req.context.iter().find(|(k, v)| k.len() > 64 || v.len() > 256) {
        return Err(FieldError::new(
            &format!("context.{k}"),
            "key over 64 or value over 256 bytes",
        ));
    }
    let timeout = match req.timeout_ms {
        None | Some(0) => None,
        Some(ms) if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&ms) => {
            return Err(FieldError::new(
                "timeout_ms",
                format!("is {ms}; between {MIN_TIMEOUT_MS} and {MAX_TIMEOUT_MS}"),
            ));
        }
        Some(ms) => Some(Duration::from_millis(u64::from(ms))),
    };
    let what_if = req.what_if.map(what_if).transpose()?;
    Ok(Query {
        user_id: user_id.to_string(),
        n,
        scene,
        context: req.context,
        timeout,
        debug: req.debug || what_if.is_some(),
        what_if,
    })
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServedItem {
    pub item_id: String,
    pub title: String,
    /// What the list is ordered by: the model's score, or recall's fused score when ranking
    /// was skipped, or the hot score at the popular and fallback levels.
    pub score: f32,
    pub sources: Vec<Source>,
    /// 0-based position before rerank.
    pub ranked_position: Option<u32>,
    pub rerank_rule: Option<String>,
}

/// The answer to a recommendation request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    pub request_id: String,
    pub trace_id: String,
    pub items: Vec<ServedItem>,
    pub level: String,
    pub degraded: Vec<String>,
    pub model_version: Option<String>,
    pub artifact_version: String,
    pub experiment: Option<String>,
    pub bucket: Option<u32>,
    pub variant: Option<String>,
    pub latency_us: u64,
}

/// The trace id of a W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn parse_traceparent(header: &str) -> Option<String> {
    caller_context(header).map(|(trace, _)| trace)
}

/// The caller's trace id and span id (lower-case hex) from a W3C `traceparent` header, if it
/// is well formed.
pub fn caller_context(header: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = header.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    match parts.as_slice() {
        [v, t, p, f] if hex(v, 2) && hex(t, 32) && hex(p, 16) && hex(f, 2) && *t != "0".repeat(32) => {
            Some((t.to_ascii_lowercase(), p.to_ascii_lowercase()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(user: &str) -> RecommendRequest {
        RecommendRequest {
            user_id: user.into(),
            ..Default::default()
        }
    }

    #[test]
    fn validation_names_the_field() {
        let cases = [
            (req(""), "user_id"),
            (req("   "), "user_id"),
            (req(&"u".repeat(300)), "user_id"),
            (
                RecommendRequest {
                    n: Some(500),
                    ..req("u")
                },
                "n",
            ),
            (
                RecommendRequest {
                    timeout_ms: Some(5),
                    ..req("u")
                },
                "timeout_ms",
            ),
            (
                RecommendRequest {
                    scene: Some("home page!".into()),
                    ..req("u")
                },
                "scene",
            ),
            (
                RecommendRequest {
                    context: [("k".repeat(100), "v".into())].into_iter().collect(),
                    ..req("u")
                },
                "context.",
            ),
        ];
        for (r, field) in cases {
            let e = validate(r).unwrap_err();
            assert!(e.field.starts_with(field), "{e:?} should name {field}");
        }
    }

    #[test]
    fn validation_fills_defaults() {
        let q = validate(req(" 42 ")).unwrap();
        assert_eq!(q.user_id, "42");
        assert_eq!(q.n, DEFAULT_N);
        assert_eq!(q.scene, "default");
        assert_eq!(q.timeout, None);
        let q = validate(RecommendRequest {
            scene: Some(String::new()),
            ..req("u")
        })
        .unwrap();
        assert_eq!(q.scene, "default", "an empty scene is the default, as over gRPC");
        let q = validate(RecommendRequest {
            n: Some(5),
            timeout_ms: Some(250),
            ..req("42")
        })
        .unwrap();
        assert_eq!((q.n, q.timeout), (5, Some(Duration::from_millis(250))));
    }

    #[test]
    fn traceparent_gives_the_callers_trace_id() {
        assert_eq!(
            parse_traceparent("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01").as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        assert_eq!(
            caller_context("00-0af7651916cd43dd8448eb211c80319c-B7AD6B7169203331-01"),
            Some((
                "0af7651916cd43dd8448eb211c80319c".to_string(),
                "b7ad6b7169203331".to_string()
            ))
        );
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-xyz-b7ad6b7169203331-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }
}
