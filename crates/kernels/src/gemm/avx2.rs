//! AVX2 + FMA microkernels: 6 x 16 tiles (12 ymm accumulators, 2 for the weights, 1 for a
//! broadcast input: 15 of the 16 registers).

use super::x86::{self, Ymm};
use super::{Dot, Micro, Tile, TileFn, tiles};

const MR: usize = 6;
const NV: usize = 2;

pub(super) static MICRO: Micro = Micro {
    mr: MR,
    nr: NV * 8,
    kc: super::KC,
    mc: super::MC,
    tiles: tiles!(tile; 1 2 3 4 5 6),
    gemv: gemv as TileFn,
    dot,
    round: None,
};

/// # Safety
/// As [`TileFn`], on a CPU with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const M: usize>(t: &Tile) {
    // SAFETY: forwarded; this function has the features `Ymm` needs.
    unsafe { x86::tile::<Ymm, NV, M>(t) }
}

/// # Safety
/// As [`TileFn`] with one row, on a CPU with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv(t: &Tile) {
    // SAFETY: forwarded; this function has the features `Ymm` needs.
    unsafe { x86::gemv::<Ymm, NV>(t) }
}

/// # Safety
/// As [`super::DotFn`], on a CPU with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot(d: &Dot) {
    // SAFETY: forwarded; this function has the features `Ymm` needs.
    unsafe { x86::dot::<Ymm>(d) }
}
