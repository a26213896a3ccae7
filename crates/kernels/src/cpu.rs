//! Run-time CPU feature detection, done once and kept.
//!
//! `DLRS_ISA` forces a path (read once, at the first kernel call):
//!
//! | `DLRS_ISA`   | [`isa`]          | [`avx512_width`] | [`avx512_bf16`] |
//! |--------------|------------------|------------------|-----------------|
//! | (unset)      | per CPU          | per CPU          | per CPU         |
//! | `scalar`     | [`Isa::Scalar`]  |                  | no              |
//! | `avx2`       | [`Isa::Avx2`]    |                  | no              |
//! | `avx512`     | [`Isa::Avx512`]  | per CPU          | no              |
//! | `avx512-256` | [`Isa::Avx512`]  | 256 bits         | no              |
//! | `avx512-512` | [`Isa::Avx512`]  | 512 bits         | no              |
//! | `avx512bf16` | [`Isa::Avx512`]  | per CPU          | per CPU         |
//!
//! A forced path the CPU lacks falls back to the best one below it. `DLRS_FORCE_SCALAR=1` is
//! an alias of `DLRS_ISA=scalar` (and wins over it). AVX512-BF16 (`vdpbf16ps`) is an
//! extension of [`Isa::Avx512`] that only the bf16 GEMM kernels use: naming any path but
//! `avx512bf16` turns it off, so that `DLRS_ISA=avx512` (or `avx2`) runs bf16 weights on the
//! converting kernels.

use std::sync::OnceLock;

/// The instruction sets the kernels dispatch on, each including the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust: the reference kernels.
    Scalar,
    /// x86-64 with AVX2 and FMA (and F16C).
    Avx2,
    /// [`Isa::Avx2`] plus AVX-512F and AVX-512VL (32 vector registers at 256 or 512 bits).
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2+fma",
            Isa::Avx512 => "avx512",
        }
    }
}

/// The register width the AVX-512 kernels that have both forms use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Avx512Width {
    /// ymm registers with AVX-512VL: 32 of them.
    Bits256,
    /// zmm registers (Intel since Skylake-SP, AMD Zen 5).
    Bits512,
}

/// What `DLRS_ISA` (or `DLRS_FORCE_SCALAR`) asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Request {
    isa: Isa,
    width: Option<Avx512Width>,
    /// AVX512-BF16 allowed (when the CPU has it)
    bf16: bool,
}

/// Parses the environment; `None` when nothing is forced.
fn request() -> Option<Request> {
    if std::env::var_os("DLRS_FORCE_SCALAR").is_some_and(|v| v == "1") {
        return Some(Request {
            isa: Isa::Scalar,
            width: None,
            bf16: false,
        });
    }
    let v = std::env::var("DLRS_ISA").ok()?;
    let r = parse_request(&v);
    if r.is_none() {
        tracing::warn!(
            "ignoring DLRS_ISA={v:?} \
             (expected scalar, avx2, avx512, avx512-256, avx512-512 or avx512bf16)"
        );
    }
    r
}

fn parse_request(v: &str) -> Option<Request> {
    let (isa, width, bf16) = match v.trim().to_ascii_lowercase().as_str() {
        "scalar" => (Isa::Scalar, None, false),
        "avx2" => (Isa::Avx2, None, false),
        "avx512" => (Isa::Avx512, None, false),
        "avx512-256" => (Isa::Avx512, Some(Avx512Width::Bits256), false),
        "avx512-512" => (Isa::Avx512, Some(Avx512Width::Bits512), false),
        "avx512bf16" => (Isa::Avx512, None, true),
        _ => return None,
    };
    Some(Request { isa, width, bf16 })
}

/// The best instruction set of the CPU, ignoring the environment.
pub fn detected() -> Isa {
    static DET: OnceLock<Isa> = OnceLock::new();
    *DET.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") {
                    return Isa::Avx512;
                }
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    })
}

/// The instruction set the kernels use: the best of this CPU, or what `DLRS_ISA` forces
/// (see the module doc; `DLRS_FORCE_SCALAR=1` forces the reference kernels).
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| match request() {
        Some(r) => r.isa.min(detected()),
        None => detected(),
    })
}

/// The CPU has AVX512-BF16 (`vdpbf16ps`, with AVX-512F, VL and BW), ignoring the
/// environment.
pub fn detected_avx512_bf16() -> bool {
    static DET: OnceLock<bool> = OnceLock::new();
    *DET.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            detected() == Isa::Avx512
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// AVX512-BF16 in use by the bf16 GEMM kernels: the CPU has it and `DLRS_ISA` is unset or
/// `avx512bf16` (see the module doc).
pub fn avx512_bf16() -> bool {
    static BF16: OnceLock<bool> = OnceLock::new();
    *BF16.get_or_init(|| {
        detected_avx512_bf16() && request().is_none_or(|r| r.bf16 && r.isa == Isa::Avx512)
    })
}

/// AVX-512F and VL in use ([`isa`] is [`Isa::Avx512`]), so `DLRS_ISA=avx2` or
/// `DLRS_FORCE_SCALAR=1` turns it off.
#[cfg(target_arch = "x86_64")]
pub fn has_avx512() -> bool {
    isa() == Isa::Avx512
}

/// The register width for AVX-512 kernels: `DLRS_ISA=avx512-256|avx512-512` when set, else
/// 512 bits. Zen 4 (AMD family 19h) executes a 512-bit FMA as two 256-bit halves, so 256-bit
/// kernels with AVX-512VL's 32 registers could be expected to match there; measured on one
/// (model 11h), the 512-bit GEMM kernel was 0-15% faster at the MLP layers of the presets
/// (half the instructions for the same flops), and Zen 5 and Intel's AVX-512 cores have
/// 512-bit datapaths. A CPU found to prefer 256 bits would be told apart here by
/// [`vendor_family_model`].
pub fn avx512_width() -> Avx512Width {
    static W: OnceLock<Avx512Width> = OnceLock::new();
    *W.get_or_init(|| {
        if let Some(Request { width: Some(w), .. }) = request() {
            return w;
        }
        Avx512Width::Bits512
    })
}

/// CPU vendors, for tuning by model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    Amd,
    Intel,
    Other,
}

/// The vendor, display family and display model (CPUID leaf 1 with the extended fields
/// folded in, as `/proc/cpuinfo` shows them); `None` off x86-64.
pub fn vendor_family_model() -> Option<(Vendor, u32, u32)> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        let l0 = __cpuid(0);
        let mut id = [0u8; 12];
        id[..4].copy_from_slice(&l0.ebx.to_le_bytes());
        id[4..8].copy_from_slice(&l0.edx.to_le_bytes());
        id[8..].copy_from_slice(&l0.ecx.to_le_bytes());
        let vendor = match &id {
            b"AuthenticAMD" => Vendor::Amd,
            b"GenuineIntel" => Vendor::Intel,
            _ => Vendor::Other,
        };
        if l0.eax < 1 {
            return Some((vendor, 0, 0));
        }
        // leaf 1 is at most the highest basic leaf (eax of leaf 0), checked above
        let eax = __cpuid(1).eax;
        let (base_fam, base_model) = ((eax >> 8) & 0xF, (eax >> 4) & 0xF);
        let (ext_fam, ext_model) = ((eax >> 20) & 0xFF, (eax >> 16) & 0xF);
        let family = if base_fam == 0xF {
            base_fam + ext_fam
        } else {
            base_fam
        };
        let model = if base_fam == 0x6 || base_fam == 0xF {
            (ext_model << 4) | base_model
        } else {
            base_model
        };
        Some((vendor, family, model))
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        assert_eq!(parse_request("scalar").unwrap().isa, Isa::Scalar);
        assert_eq!(parse_request("AVX2").unwrap().isa, Isa::Avx2);
        let r = parse_request("avx512").unwrap();
        assert_eq!((r.isa, r.width), (Isa::Avx512, None));
        let r = parse_request("avx512-256").unwrap();
        assert_eq!((r.isa, r.width), (Isa::Avx512, Some(Avx512Width::Bits256)));
        let r = parse_request("avx512-512").unwrap();
        assert_eq!((r.isa, r.width), (Isa::Avx512, Some(Avx512Width::Bits512)));
        assert!(!r.bf16 && !parse_request("avx512").unwrap().bf16);
        let r = parse_request("avx512bf16").unwrap();
        assert_eq!((r.isa, r.width, r.bf16), (Isa::Avx512, None, true));
        assert!(parse_request("sse").is_none());
        assert!(Isa::Scalar < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
    }

    #[test]
    fn family_model_of_this_cpu() {
        #[cfg(target_arch = "x86_64")]
        {
            let (_, family, _) = vendor_family_model().unwrap();
            assert!(family >= 6, "family {family}");
        }
    }
}
