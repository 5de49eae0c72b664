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
//! the wide copies the same way); `auto`, empty or unset picks by the CPU. A serving process
//! checks the value when it starts ([`wide_allowed`]) and stops on any other.

use std::sync::LazyLock;

/// The variable that can rule out the wide copies.
pub const VAR: &str = "RECSTACK_SIMD";

/// A value of [`VAR`] that is not one of its values.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error(
    "{VAR} is {0:?}: `auto` (or unset) picks the widest instructions the CPU has, `baseline` only the x86-64 baseline's"
)]
pub struct UnknownLevel(pub String);

/// Whether a value of [`VAR`] lets [`widest`] pick wide copies: unset, empty or `auto` yes,
/// `baseline` no.
pub fn wide_allowed(value: Option<&str>) -> Result<bool, UnknownLevel> {
    match value.map(str::trim) {
        None | Some("" | "auto") => Ok(true),
        Some("baseline") => Ok(false),
        Some(other) => Err(UnknownLevel(other.to_string())),
    }
}

/// The instruction set [`widest`] compiles for, picked once (a value of [`VAR`] that is not
/// one picks by the CPU, as unset does; serving processes have refused it already).
static ARCH: LazyLock<pulp::Arch> = LazyLock::new(|| {
    if wide_allowed(std::env::var(VAR).ok().as_deref()).unwrap_or(true) {
        pulp::Arch::new()
    } else {
        pulp::Arch::Scalar
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_takes_auto_or_baseline_and_names_itself_otherwise() {
        for auto in [None, Some(""), Some("auto"), Some(" auto ")] {
            assert_eq!(wide_allowed(auto), Ok(true), "{auto:?}");
        }
        assert_eq!(wide_allowed(Some("baseline")), Ok(false));
        let e = wide_allowed(Some("avx9")).unwrap_err().to_string();
        assert!(e.starts_with("RECSTACK_SIMD is \"avx9\""), "{e}");
    }
}
