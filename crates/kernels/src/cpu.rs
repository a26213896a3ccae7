//! Run-time CPU feature detection, done once and kept.

use std::sync::OnceLock;

/// The instruction sets the kernels dispatch on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust: the reference kernels.
    Scalar,
    /// x86-64 with AVX2 and FMA (and F16C).
    Avx2,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2+fma",
        }
    }
}

fn detect() -> Isa {
    if std::env::var_os("DLRS_FORCE_SCALAR").is_some_and(|v| v == "1") {
        return Isa::Scalar;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return Isa::Avx2;
        }
    }
    Isa::Scalar
}

/// The best instruction set of this CPU (set `DLRS_FORCE_SCALAR=1` to force the
/// reference kernels, e.g. to compare results).
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(detect)
}

/// AVX-512F on this CPU, on top of [`Isa::Avx2`] (so `DLRS_FORCE_SCALAR=1` turns it off too).
#[cfg(target_arch = "x86_64")]
pub fn has_avx512() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| isa() == Isa::Avx2 && is_x86_feature_detected!("avx512f"))
}
