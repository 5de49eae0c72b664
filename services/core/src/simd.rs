//! Hot loops compiled for the widest vector instructions the CPU has (today: the ranking
//! service's tree scoring).
//!
//! The workspace builds for the x86-64 baseline (SSE2: four `f32` a vector), so that one binary
//! runs on every node. [`widest`] runs a closure through [`pulp::Arch::dispatch`], which
//! compiles it twice more, with AVX2 and FMA enabled (eight `f32` a vector) and with AVX-512
//! (sixteen, in 32 registers), and picks the widest copy the CPU can run; other CPUs, and
//! other architectures, run the baseline copy. The closure's loops are the same code in every
//! copy: only the instructions the compiler may choose differ. No float operation is fused or
//! reordered (the compiler does neither without being told), so every copy computes the same
//! bits (the tests check it under each instruction set the CPU has).
//!
//! What runs inside must be inlined into the closure (`#[inline(always)]` on the closure and
//! on the functions it calls): a call out of it runs the baseline copy of the callee.
//!
//! `RECSTACK_SIMD=baseline` in a process's environment makes it run the baseline copies only
//! (the benches compare the two that way, one binary run each way; an operator can rule out
//! the wide copies the same way). Any other value, or none, picks by the CPU.

use std::sync::LazyLock;

/// The instruction set [`widest`] compiles for, picked once.
static ARCH: LazyLock<pulp::Arch> = LazyLock::new(|| match std::env::var("RECSTACK_SIMD").as_deref() {
    Ok("baseline") => pulp::Arch::Scalar,
    _ => pulp::Arch::new(),
});

/// Runs `f` compiled for the widest vector instructions this CPU has.
#[inline(always)]
pub fn widest<R>(f: impl FnOnce() -> R) -> R {
    ARCH.dispatch(f)
}

/// The instruction set [`widest`] runs here: `avx512`, `avx2` or `baseline` (for the benches'
/// tables).
pub fn level() -> &'static str {
    match *ARCH {
        #[cfg(target_arch = "x86_64")]
        pulp::Arch::V4(_) => "avx512",
        #[cfg(target_arch = "x86_64")]
        pulp::Arch::V3(_) => "avx2",
        _ => "baseline",
    }
}

/// `f` run once under each instruction set this CPU has, the baseline first, with its name:
/// the tests check that the copies [`widest`] picks from compute the same bits.
#[cfg(test)]
pub(crate) fn each_level<R>(f: impl Fn() -> R) -> Vec<(&'static str, R)> {
    let mut runs = vec![("baseline", pulp::Arch::Scalar.dispatch(&f))];
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(v3) = pulp::x86::V3::try_new() {
            runs.push(("avx2", pulp::Arch::V3(v3).dispatch(&f)));
        }
        if let Some(v4) = pulp::x86::V4::try_new() {
            runs.push(("avx512", pulp::Arch::V4(v4).dispatch(&f)));
        }
    }
    runs
}
