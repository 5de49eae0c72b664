//! Behaviour events: what apps post (impressions, clicks, plays, likes), how they are checked,
//! and how they are written to the event log.
//!
//! The log, its Kafka twin and the ingest service that writes to it are in the services crate
//! (`recstack_services::events`).
//!
//! On the log an event is one JSON object, keyed by its item id (so one item's events stay in
//! one partition, and its windows can be aggregated without a shuffle). The JSON is the shape
//! the Flink SQL job reads (`format = 'json'`): `ts` is a SQL timestamp in UTC with
//! milliseconds.

use serde::{Deserialize, Serialize};

/// Longest id (event, user, item, request) accepted, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Impression,
    Click,
    Play,
    Like,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::Impression,
        EventKind::Click,
        EventKind::Play,
        EventKind::Like,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventKind::Impression => "impression",
            EventKind::Click => "click",
            EventKind::Play => "play",
            EventKind::Like => "like",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Whether the event says the user engaged with the item (it enters their recent items).
    pub fn engaged(self) -> bool {
        !matches!(self, EventKind::Impression)
    }
}

/// One validated event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub event_id: String,
    pub user_id: String,
    pub item_id: String,
    pub kind: EventKind,
    /// Event time, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The recommendation request that showed the item, when known.
    pub request_id: Option<String>,
}

/// An event as posted (JSON over HTTP) or decoded from the log.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvent {
    #[serde(default)]
    pub event_id: String,
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub item_id: String,
    #[serde(default)]
    pub kind: String,
    /// Milliseconds since the epoch (number) or RFC 3339 (string). Omitted: now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// An event time as posted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Timestamp {
    Millis(i64),
    Text(String),
}

/// Why an event was refused; the message names the field (`events[3].kind: …`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct EventError {
    pub field: String,
    pub message: String,
}

/// How far from `now` an event time may be: a week back (late uploads from devices), a minute
/// ahead (clock skew).
pub const MAX_AGE_MS: i64 = 7 * 24 * 3_600_000;
pub const MAX_AHEAD_MS: i64 = 60_000;

impl RawEvent {
    /// Checks every field; `at` is the event's path in the request (`events[3]`), `now_ms` the
    /// receive time (also the time of events that carry none).
    pub fn validate(&self, at: &str, now_ms: i64) -> Result<Event, EventError> {
        let err = |field: &str, message: String| EventError {
            field: format!("{at}.{field}"),
            message,
        };
        let id = |field: &str, value: &str| -> Result<String, EventError> {
            let v = value.trim();
            if v.is_empty() {
                return Err(err(field, "is required".into()));
            }
            if v.len() > MAX_ID_LEN {
                return Err(err(field, format!("is longer than {MAX_ID_LEN} bytes")));
            }
            if v.chars().any(char::is_control) {
                return Err(err(field, "contains control characters".into()));
            }
            Ok(v.to_string())
        };
        let event_id = id("event_id", &self.event_id)?;
        let user_id = id("user_id", &self.user_id)?;
        let item_id = id("item_id", &self.item_id)?;
        let kind = EventKind::parse(self.kind.trim()).ok_or_else(|| {
            let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
            err("kind", format!("{:?} is not one of {}", self.kind, known.join(", ")))
        })?;
        let ts_ms = match &self.ts {
            None => now_ms,
            Some(Timestamp::Millis(ms)) => *ms,
            Some(Timestamp::Text(s)) => parse_time(s).ok_or_else(|| {
                err(
                    "ts",
                    format!("{s:?} is neither epoch milliseconds nor an RFC 3339 time"),
                )
            })?,
        };
        if ts_ms < now_ms - MAX_AGE_MS {
            return Err(err("ts", "is more than 7 days in the past".into()));
        }
        if ts_ms > now_ms + MAX_AHEAD_MS {
            return Err(err("ts", "is more than a minute in the future".into()));
        }
        let request_id = match self.request_id.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(r) => Some(id("request_id", r)?),
        };
        Ok(Event {
            event_id,
            user_id,
            item_id,
            kind,
            ts_ms,
            request_id,
        })
    }
}

fn parse_time(s: &str) -> Option<i64> {
    let ts: jiff::Timestamp = s.trim().parse().ok()?;
    Some(ts.as_millisecond())
}

/// The JSON an event has on the log (and in the Flink SQL job's `events` table).
#[derive(Debug, Serialize, Deserialize)]
struct LogEvent<'a> {
    event_id: std::borrow::Cow<'a, str>,
    user_id: std::borrow::Cow<'a, str>,
    item_id: std::borrow::Cow<'a, str>,
    kind: EventKind,
    /// `YYYY-MM-DD HH:MM:SS.mmm`, UTC (Flink's SQL timestamp format).
    ts: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_id: Option<std::borrow::Cow<'a, str>>,
}

/// Why a log record is not an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("log record is not an event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("log record has an unreadable ts {0:?}")]
    Time(String),
}

/// Formats epoch milliseconds as Flink's SQL timestamp (`2026-11-22 10:00:00.123`, UTC).
pub fn sql_timestamp(ts_ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ts_ms) {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S%.3f").to_string(),
        Err(_) => "1970-01-01 00:00:00.000".into(),
    }
}

/// Parses Flink's SQL timestamp (`2026-11-22 10:00:00.123`, UTC) into epoch milliseconds.
pub fn parse_sql_timestamp(s: &str) -> Option<i64> {
    let civil: jiff::civil::DateTime = s.replacen(' ', "T", 1).parse().ok()?;
    Some(
        civil
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()?
            .timestamp()
            .as_millisecond(),
    )
}

impl Event {
    /// The log key: the item, so an item's events share a partition.
    pub fn key(&self) -> &str {
        &self.item_id
    }

    /// The event as one log record (JSON).
    pub fn encode(&self) -> Vec<u8> {
        let e = LogEvent {
            event_id: self.event_id.as_str().into(),
            user_id: self.user_id.as_str().into(),
            item_id: self.item_id.as_str().into(),
            kind: self.kind,
            ts: sql_timestamp(self.ts_ms),
            request_id: self.request_id.as_deref().map(Into::into),
        };
        serde_json::to_vec(&e).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
        let e: LogEvent = serde_json::from_slice(bytes)?;
        let ts_ms = parse_sql_timestamp(&e.ts).ok_or_else(|| DecodeError::Time(e.ts.clone()))?;
        Ok(Event {
            event_id: e.event_id.into_owned(),
            user_id: e.user_id.into_owned(),
            item_id: e.item_id.into_owned(),
            kind: e.kind,
            ts_ms,
            request_id: e.request_id.map(|r| r.into_owned()),
        })
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_790_000_000_000;

    fn raw(kind: &str) -> RawEvent {
        RawEvent {
            event_id: "e1".into(),
            user_id: "u1".into(),
            item_id: "0110912".into(),
            kind: kind.into(),
            ts: Some(Timestamp::Millis(NOW - 1_000)),
            request_id: Some("r1".into()),
        }
    }

    #[test]
    fn validation_names_the_field() {
        let err = |r: RawEvent| r.validate("events[2]", NOW).unwrap_err().to_string();
        assert_eq!(
            err(RawEvent {
                user_id: " ".into(),
                ..raw("click")
            }),
            "events[2].user_id: is required"
        );
        assert!(err(raw("view")).starts_with("events[2].kind: \"view\" is not one of impression, click"));
        assert_eq!(
            err(RawEvent {
                ts: Some(Timestamp::Text("yesterday".into())),
                ..raw("click")
            }),
            "events[2].ts: \"yesterday\" is neither epoch milliseconds nor an RFC 3339 time"
        );
        assert_eq!(
            err(RawEvent {
                ts: Some(Timestamp::Millis(NOW + 120_000)),
                ..raw("click")
            }),
            "events[2].ts: is more than a minute in the future"
        );
        assert_eq!(
            err(RawEvent {
                ts: Some(Timestamp::Millis(NOW - MAX_AGE_MS - 1)),
                ..raw("click")
            }),
            "events[2].ts: is more than 7 days in the past"
        );
        assert_eq!(
            err(RawEvent {
                item_id: "x".repeat(300),
                ..raw("click")
            }),
            "events[2].item_id: is longer than 256 bytes"
        );
        assert_eq!(
            err(RawEvent {
                event_id: "a\nb".into(),
                ..raw("click")
            }),
            "events[2].event_id: contains control characters"
        );
    }

    #[test]
    fn valid_events_are_trimmed_and_timed() {
        let e = RawEvent {
            user_id: " u1 ".into(),
            ts: None,
            request_id: Some(" ".into()),
            ..raw("play")
        }
        .validate("events[0]", NOW)
        .unwrap();
        assert_eq!(
            (e.user_id.as_str(), e.kind, e.ts_ms, e.request_id),
            ("u1", EventKind::Play, NOW, None)
        );
        let e = RawEvent {
            ts: Some(Timestamp::Text("2026-09-21T14:13:20.5Z".into())),
            ..raw("like")
        }
        .validate("e", NOW)
        .unwrap();
        assert_eq!(e.ts_ms, 1_790_000_000_500);
    }

    #[test]
    fn log_records_round_trip_in_flinks_format() {
        let e = raw("click").validate("e", NOW).unwrap();
        let bytes = e.encode();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["ts"], "2026-09-21 14:13:19.000");
        assert_eq!(json["kind"], "click");
        assert_eq!(Event::decode(&bytes).unwrap(), e);
        assert!(Event::decode(b"{\"x\":1}").is_err());
        assert_eq!(sql_timestamp(1_790_000_000_123), "2026-09-21 14:13:20.123");
    }

    #[test]
    fn unknown_fields_are_refused_when_parsing() {
        let r: Result<RawEvent, _> = serde_json::from_str(r#"{"event_id":"e","colour":"red"}"#);
        assert!(r.unwrap_err().to_string().contains("unknown field `colour`"));
    }
}
