//! Stable hashing: the same value gives the same hash in every build, process and platform
//! (unlike `std`'s randomly keyed hasher), for what is stored or compared across them — Bloom
//! keys of item ids, event log partitions, A/B buckets, validation users.

/// 64-bit FNV-1a.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A stable A/B bucket in `0..buckets` for (user, experiment): the same user always lands in
/// the same bucket of an experiment, independently across experiments.
pub fn ab_bucket(user: &str, experiment: &str, buckets: u32) -> u32 {
    let h = stable_hash(format!("{experiment}\u{1f}{user}").as_bytes());
    // Finalize (the low bits of FNV are weak) and reduce by multiply-shift.
    let mut x = h ^ (h >> 33);
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    ((u128::from(x) * u128::from(buckets.max(1))) >> 64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(ab_bucket("u1", "exp", 10), ab_bucket("u1", "exp", 10));
        let mut counts = [0u32; 4];
        for u in 0..10_000 {
            counts[ab_bucket(&format!("user-{u}"), "ranker-v2", 4) as usize] += 1;
        }
        assert!(counts.iter().all(|&n| (2300..2700).contains(&n)), "{counts:?}");
        let same = (0..1000)
            .filter(|u| ab_bucket(&format!("{u}"), "a", 2) == ab_bucket(&format!("{u}"), "b", 2))
            .count();
        assert!((400..600).contains(&same), "experiments are independent: {same}");
    }
}
