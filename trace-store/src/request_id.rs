//! Request ids: `{issued:012x}-{seq:06x}`, where `issued` is the time the gateway issued the
//! id in units of 2¹⁶ ns (~66 µs) since the epoch and `seq` the gateway's request counter.
//! Sortable by time, unique per gateway replica and counter, and — what the query API needs
//! for read-your-trace — they say when their request was served, so a trace not yet written
//! can be told from one that will never come.

/// A new request id for the gateway's `seq`th request, issued now.
pub fn new(seq: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format_id(nanos, seq)
}

/// The id [`new`] would have made for request `seq` issued at `ms` (ms since the epoch).
pub fn issued_at(ms: i64, seq: u64) -> String {
    format_id(u128::try_from(ms).unwrap_or(0) * 1_000_000, seq)
}

fn format_id(nanos: u128, seq: u64) -> String {
    format!(
        "{:012x}-{:06x}",
        (nanos >> 16) as u64 & 0xffff_ffff_ffff,
        seq & 0xff_ffff
    )
}

/// When the request with this id was served (ms since the epoch), for ids [`new`] made;
/// `None` for any other id.
pub fn issued_ms(request_id: &str) -> Option<i64> {
    let (issued, seq) = request_id.split_once('-')?;
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(issued, 12) || !hex(seq, 6) {
        return None;
    }
    let units = u64::from_str_radix(issued, 16).ok()?;
    i64::try_from((u128::from(units) << 16) / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_says_when_it_was_issued() {
        let nanos = 1_795_000_000_123_456_789u128;
        let id = format_id(nanos, 42);
        assert_eq!(id.len(), 19);
        assert!(id.ends_with("-00002a"), "{id}");
        let ms = issued_ms(&id).unwrap();
        assert!((1_795_000_000_123 - ms).abs() <= 1, "{ms}");
        let now = new(7);
        let issued = issued_ms(&now).unwrap();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!((now_ms - issued).abs() < 5_000, "{issued}");
    }

    #[test]
    fn other_ids_have_no_time() {
        for id in [
            "",
            "req-00000001",
            "0123456789ab-00002",
            "0123456789ab-00002g",
            "0123456789ab_000002",
        ] {
            assert_eq!(issued_ms(id), None, "{id}");
        }
        assert!(issued_ms("0123456789ab-00002a").is_some());
    }
}
