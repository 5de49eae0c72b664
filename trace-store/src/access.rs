//! Who may read traces and who may ask for debug ones.
//!
//! The operator wires one Secret (its own `<stack>-access`, or `spec.access.secretRef`) into the
//! trace query API, the dashboard and the gateway, mounted as one file per key:
//!
//! | key | what it is |
//! |---|---|
//! | `reader` | bearer token of the read-only role: search traces, read them, ask why and why-not |
//! | `admin` | bearer token of the admin role: everything a reader may, and searching by a user's own id when ids are pseudonymised |
//! | `debug` | the token a caller sends the gateway (`x-recstack-debug-token`) to get a `debug` (full, explained) trace |
//! | `pseudonym-key` | key of the HMAC that replaces user ids in stored traces (when `pseudonymizeUsers`) |
//!
//! Everything here is pure (no I/O but [`Access::from_dir`]): checking a header against the
//! tokens, the pseudonym of a user id, and the debug rate limit.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The header a trusted caller sends the gateway with `debug: true`.
pub const DEBUG_TOKEN_HEADER: &str = "x-recstack-debug-token";

/// Shortest token accepted from a Secret: a guessable token is no token.
pub const MIN_TOKEN_LEN: usize = 16;

/// A role of the trace API and the dashboard, in increasing power.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Reader,
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Admin => "admin",
        }
    }
}

/// A secret value that never prints.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl Token {
    /// A token from a Secret's file: surrounding whitespace (a trailing newline) is not part of it.
    pub fn new(value: &str) -> Result<Self, AccessError> {
        let v = value.trim();
        if v.len() < MIN_TOKEN_LEN {
            return Err(AccessError::TooShort);
        }
        Ok(Self(v.as_bytes().to_vec()))
    }

    /// The token itself, to present to another service (the dashboard sends the debug token
    /// to the gateway for a replay). Never log it.
    pub fn reveal(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    /// Whether `presented` is this token (constant time in the token's content).
    pub fn matches(&self, presented: &str) -> bool {
        bool::from(self.0.as_slice().ct_eq(presented.trim().as_bytes()))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("a token must be at least {MIN_TOKEN_LEN} characters")]
    TooShort,
    #[error("{key}: {message}")]
    Read { key: String, message: String },
    #[error("the access directory has neither a `reader` nor an `admin` token")]
    NoTokens,
}

/// The tokens and keys of one stack. `Access::open()` (no tokens) lets everyone in as admin:
/// the one-machine stack (`recstack up`) listening on loopback.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub reader: Option<Token>,
    pub admin: Option<Token>,
    pub debug: Option<Token>,
    pub pseudonym_key: Option<Token>,
}

/// Why a caller was turned away; the message says what to send, never what was expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// 401: no credentials.
    #[error(
        "this API needs a token: send `Authorization: Bearer <token>` (the reader or admin token from the stack's access Secret)"
    )]
    Missing,
    /// 401: credentials that are no token of this stack.
    #[error("the token is not valid for this stack")]
    Invalid,
    /// 403: a valid token whose role is not enough.
    #[error("the {have} role may not do this: it needs the {need} role")]
    Forbidden { have: &'static str, need: &'static str },
}

impl Denied {
    /// The HTTP status: 401 for no or a bad token, 403 for too little power.
    pub fn status(&self) -> u16 {
        match self {
            Denied::Missing | Denied::Invalid => 401,
            Denied::Forbidden { .. } => 403,
        }
    }
}

impl Access {
    /// No tokens: every caller is admin and may debug.
    pub fn open() -> Self {
        Self::default()
    }

    /// Whether any token is required.
    pub fn is_open(&self) -> bool {
        self.reader.is_none() && self.admin.is_none()
    }

    /// The tokens in `dir`, one file per key (a mounted Secret). A missing file is a key not
    /// set; a present but too short one is an error naming it.
    pub fn from_dir(dir: &Path) -> Result<Self, AccessError> {
        let read = |key: &str| -> Result<Option<Token>, AccessError> {
            match std::fs::read_to_string(dir.join(key)) {
                Ok(v) => Token::new(&v).map(Some).map_err(|e| AccessError::Read {
                    key: key.to_string(),
                    message: e.to_string(),
                }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(AccessError::Read {
                    key: key.to_string(),
                    message: e.to_string(),
                }),
            }
        };
        let access = Self {
            reader: read("reader")?,
            admin: read("admin")?,
            debug: read("debug")?,
            pseudonym_key: read("pseudonym-key")?,
        };
        if access.is_open() {
            return Err(AccessError::NoTokens);
        }
        Ok(access)
    }

    /// The role of a caller presenting `authorization` (an `Authorization` header's value, or a
    /// bare token), if it may act as `need`.
    pub fn authorize(&self, authorization: Option<&str>, need: Role) -> Result<Role, Denied> {
        if self.is_open() {
            return Ok(Role::Admin);
        }
        let presented = authorization
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(Denied::Missing)?;
        let token = match presented.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => presented,
        };
        let have = if self.admin.as_ref().is_some_and(|t| t.matches(token)) {
            Role::Admin
        } else if self.reader.as_ref().is_some_and(|t| t.matches(token)) {
            Role::Reader
        } else {
            return Err(Denied::Invalid);
        };
        if have < need {
            return Err(Denied::Forbidden {
                have: have.name(),
                need: need.name(),
            });
        }
        Ok(have)
    }

    /// Whether a caller presenting `token` may ask the gateway for a debug trace: with a debug
    /// token configured, only that token (or the admin token) does; an open stack lets anyone.
    pub fn trusts_debug(&self, token: Option<&str>) -> bool {
        if self.debug.is_none() && self.is_open() {
            return true;
        }
        let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
            return false;
        };
        self.debug.as_ref().is_some_and(|t| t.matches(token)) || self.admin.as_ref().is_some_and(|t| t.matches(token))
    }

    /// The user id a trace stores: the id itself, or its pseudonym when a key is set.
    pub fn stored_user<'a>(&self, user: &'a str) -> std::borrow::Cow<'a, str> {
        match &self.pseudonym_key {
            Some(key) => std::borrow::Cow::Owned(pseudonym(key, user)),
            None => std::borrow::Cow::Borrowed(user),
        }
    }
}

/// Prefix of every pseudonym, so an id in a trace says which it is.
pub use crate::PSEUDONYM_PREFIX;

/// A user id's pseudonym: `p-` and the first 16 bytes of HMAC-SHA256(key, id) in hex. The same
/// id always gets the same pseudonym under one key (a user's traces still group), and without
/// the key no one can tell whose it is or check a guess.
pub fn pseudonym(key: &Token, user: &str) -> String {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(&key.0) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(user.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(PSEUDONYM_PREFIX.len() + 32);
    out.push_str(PSEUDONYM_PREFIX);
    for b in &digest[..16] {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A token bucket: `per_second` requests on average, `burst` at once.
#[derive(Debug)]
pub struct RateLimit {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    pub fn new(per_second: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            per_second: per_second.max(0.0),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one request's token at `now`; `Err` carries the seconds until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), f64> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if self.per_second > 0.0 {
            Err((1.0 - self.tokens) / self.per_second)
        } else {
            Err(f64::INFINITY)
        }
    }

    pub fn per_second(&self) -> f64 {
        self.per_second
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn tok(s: &str) -> Token {
        Token::new(s).unwrap()
    }

    fn stack() -> Access {
        Access {
            reader: Some(tok("reader-token-0123456789")),
            admin: Some(tok("admin-token-0123456789")),
            debug: Some(tok("debug-token-0123456789")),
            pseudonym_key: Some(tok("pseudonym-key-0123456789")),
        }
    }

    #[test]
    fn roles_follow_the_token() {
        let a = stack();
        assert_eq!(
            a.authorize(Some("Bearer reader-token-0123456789"), Role::Reader),
            Ok(Role::Reader)
        );
        assert_eq!(
            a.authorize(Some("bearer admin-token-0123456789"), Role::Reader),
            Ok(Role::Admin)
        );
        assert_eq!(
            a.authorize(Some("admin-token-0123456789"), Role::Admin),
            Ok(Role::Admin)
        );
        assert_eq!(
            a.authorize(Some("Bearer reader-token-0123456789"), Role::Admin),
            Err(Denied::Forbidden {
                have: "reader",
                need: "admin"
            })
        );
        assert_eq!(a.authorize(None, Role::Reader), Err(Denied::Missing));
        assert_eq!(a.authorize(Some("  "), Role::Reader), Err(Denied::Missing));
        assert_eq!(
            a.authorize(Some("Bearer reader-token-012345678"), Role::Reader),
            Err(Denied::Invalid)
        );
        assert_eq!(
            a.authorize(Some("Bearer reader-token-01234567890"), Role::Reader),
            Err(Denied::Invalid)
        );
        // The debug token and the pseudonym key are no API tokens.
        assert_eq!(
            a.authorize(Some("Bearer debug-token-0123456789"), Role::Reader),
            Err(Denied::Invalid)
        );
        assert_eq!(
            a.authorize(Some("Bearer pseudonym-key-0123456789"), Role::Reader),
            Err(Denied::Invalid)
        );
        assert_eq!(Denied::Missing.status(), 401);
        assert_eq!(Denied::Invalid.status(), 401);
        assert_eq!(
            Denied::Forbidden {
                have: "reader",
                need: "admin"
            }
            .status(),
            403
        );
    }

    #[test]
    fn messages_do_not_leak_the_tokens() {
        let a = stack();
        for e in [
            a.authorize(Some("Bearer nope-nope-nope-nope"), Role::Reader)
                .unwrap_err(),
            a.authorize(Some("Bearer reader-token-0123456789"), Role::Admin)
                .unwrap_err(),
            a.authorize(None, Role::Reader).unwrap_err(),
        ] {
            let m = e.to_string();
            assert!(!m.contains("0123456789"), "{m}");
        }
        assert_eq!(format!("{:?}", stack().admin.unwrap()), "Token(…)");
    }

    #[test]
    fn an_open_stack_lets_everyone_in() {
        let a = Access::open();
        assert_eq!(a.authorize(None, Role::Admin), Ok(Role::Admin));
        assert!(a.trusts_debug(None));
        assert_eq!(a.stored_user("42"), "42");
    }

    #[test]
    fn debug_needs_the_debug_or_admin_token() {
        let a = stack();
        assert!(a.trusts_debug(Some("debug-token-0123456789")));
        assert!(a.trusts_debug(Some("admin-token-0123456789")));
        assert!(!a.trusts_debug(Some("reader-token-0123456789")));
        assert!(!a.trusts_debug(None));
        assert!(!a.trusts_debug(Some("")));
        // Tokens for the API but none for debug: only the admin may.
        let no_debug = Access { debug: None, ..stack() };
        assert!(no_debug.trusts_debug(Some("admin-token-0123456789")));
        assert!(!no_debug.trusts_debug(Some("debug-token-0123456789")));
        assert!(!no_debug.trusts_debug(None));
    }

    #[test]
    fn pseudonyms_are_stable_keyed_and_distinct() {
        let a = stack();
        let p = a.stored_user("42").into_owned();
        assert!(
            p.starts_with(PSEUDONYM_PREFIX) && p.len() == PSEUDONYM_PREFIX.len() + 32,
            "{p}"
        );
        assert_eq!(a.stored_user("42"), p);
        assert_ne!(a.stored_user("43"), p);
        let other_key = Access {
            pseudonym_key: Some(tok("another-key-0123456789")),
            ..stack()
        };
        assert_ne!(other_key.stored_user("42"), p);
        // RFC 4231 test case 2 checks the HMAC itself: key "Jefe" is too short for a Token, so
        // build it directly.
        let jefe = Token(b"Jefe".to_vec());
        assert_eq!(
            pseudonym(&jefe, "what do ya want for nothing?"),
            "p-5bdcc146bf60754e6a042426089575c7"
        );
    }

    #[test]
    fn short_tokens_are_refused_and_whitespace_trimmed() {
        assert!(matches!(Token::new("short"), Err(AccessError::TooShort)));
        let t = Token::new("  abcdefghijklmnopq\n").unwrap();
        assert!(t.matches("abcdefghijklmnopq"));
        assert!(!t.matches("abcdefghijklmnop"));
    }

    #[test]
    fn tokens_come_from_a_mounted_secret() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(Access::from_dir(dir.path()), Err(AccessError::NoTokens)));
        std::fs::write(dir.path().join("reader"), "reader-token-0123456789\n").unwrap();
        let a = Access::from_dir(dir.path()).unwrap();
        assert!(a.reader.is_some() && a.admin.is_none() && a.debug.is_none() && a.pseudonym_key.is_none());
        std::fs::write(dir.path().join("admin"), "tiny").unwrap();
        let e = Access::from_dir(dir.path()).unwrap_err().to_string();
        assert!(e.starts_with("admin:"), "{e}");
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(2.0, 3, t0);
        assert!(r.take(t0).is_ok());
        assert!(r.take(t0).is_ok());
        assert!(r.take(t0).is_ok());
        let wait = r.take(t0).unwrap_err();
        assert!((wait - 0.5).abs() < 1e-9, "{wait}");
        assert!(r.take(t0 + Duration::from_millis(499)).is_err());
        assert!(r.take(t0 + Duration::from_millis(500)).is_ok());
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(r.take(later).is_ok());
        }
        assert!(r.take(later).is_err());
        // A zero rate lets the burst through and nothing after.
        let mut none = RateLimit::new(0.0, 1, t0);
        assert!(none.take(t0).is_ok());
        assert_eq!(none.take(t0 + Duration::from_secs(3600)), Err(f64::INFINITY));
    }
}
