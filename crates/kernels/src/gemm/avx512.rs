//! AVX-512 microkernels in two register widths, 32 registers each:
//!
//! - 512-bit: 12 x 32 tiles, 24 zmm accumulators, 2 registers of weights and 1 broadcast
//!   input per k-step: 14 loads for 24 FMAs. The default (see `cpu::avx512_width`).
//! - 256-bit (AVX-512VL): 6 x 32 tiles, 24 ymm accumulators, four per row of the tile so
//!   that each broadcast feeds four FMAs, as in the 512-bit tile. Zen 4's FMA units are 256
//!   bits wide, so this form issues twice the instructions for the same flops; on one it ran
//!   at 90-100% of the 512-bit kernel.

use super::x86::{self, Ymm, Zmm};
use super::{Dot, Micro, Tile, TileFn, tiles};

const MR_Y: usize = 6;
const NV_Y: usize = 4;
const MR_Z: usize = 12;
const NV_Z: usize = 2;

pub(super) static MICRO_YMM: Micro = Micro {
    mr: MR_Y,
    nr: NV_Y * 8,
    kc: super::KC,
    mc: super::MC,
    tiles: tiles!(ymm; 1 2 3 4 5 6),
    gemv: gemv_ymm as TileFn,
    dot: dot_ymm,
    round: None,
};

pub(super) static MICRO_ZMM: Micro = Micro {
    mr: MR_Z,
    nr: NV_Z * 16,
    kc: super::KC,
    mc: super::MC,
    tiles: tiles!(zmm; 1 2 3 4 5 6 7 8 9 10 11 12),
    gemv: gemv_zmm as TileFn,
    dot: dot_zmm,
    round: None,
};

/// # Safety
/// As [`TileFn`], on a CPU with AVX-512F and VL.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn ymm<const M: usize>(t: &Tile) {
    // SAFETY: forwarded; this function has the features `Ymm` needs.
    unsafe { x86::tile::<Ymm, NV_Y, M>(t) }
}

/// # Safety
/// As [`TileFn`] with one row, on a CPU with AVX-512F and VL.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn gemv_ymm(t: &Tile) {
    // SAFETY: forwarded; this function has the features `Ymm` needs.
    unsafe { x86::gemv::<Ymm, NV_Y>(t) }
}

/// # Safety
/// As [`super::DotFn`], on a CPU with AVX-512F and VL.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn dot_ymm(d: &Dot) {
    // SAFETY: forwarded; this function has the features `Ymm` needs.
    unsafe { x86::dot::<Ymm>(d) }
}

/// # Safety
/// As [`TileFn`], on a CPU with AVX-512F.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn zmm<const M: usize>(t: &Tile) {
    // SAFETY: forwarded; this function has the features `Zmm` needs.
    unsafe { x86::tile::<Zmm, NV_Z, M>(t) }
}

/// # Safety
/// As [`TileFn`] with one row, on a CPU with AVX-512F.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn gemv_zmm(t: &Tile) {
    // SAFETY: forwarded; this function has the features `Zmm` needs.
    unsafe { x86::gemv::<Zmm, NV_Z>(t) }
}

/// # Safety
/// As [`super::DotFn`], on a CPU with AVX-512F.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn dot_zmm(d: &Dot) {
    // SAFETY: forwarded; this function has the features `Zmm` needs.
    unsafe { x86::dot::<Zmm>(d) }
}
