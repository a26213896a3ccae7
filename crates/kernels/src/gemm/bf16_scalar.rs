//! The plain-Rust bf16 kernels: weights widened to f32, inputs rounded to bf16 and held as
//! f32, 4 x 16 tiles. The fallback on CPUs without AVX2, and what `DLRS_ISA=scalar` runs.

use super::bf16::{self, bf16_to_f32};
use super::scalar::{NR, store};
use super::{Dot, Micro, RoundBlock, Tile, TileFn, round_rows, tiles};

const MR: usize = 4;

pub(super) static MICRO: Micro<f32, u16> = Micro {
    mr: MR,
    nr: NR,
    kc: super::KC,
    mc: super::MC,
    tiles: tiles!(tile; 1 2 3 4),
    gemv: tile::<1> as TileFn<f32, u16>,
    dot,
    round: Some(round),
};

/// The [`Tile`] contract for `M` rows over bf16 pairs.
///
/// # Safety
/// As [`TileFn`].
unsafe fn tile<const M: usize>(t: &Tile<f32, u16>) {
    let mut acc = [[0.0f32; NR]; M];
    for q in 0..t.kc.div_ceil(2) {
        // SAFETY: pair q < kc.div_ceil(2): 2 NR values of the panel (the Tile contract).
        let b = unsafe { std::slice::from_raw_parts(t.b.add(q * 2 * NR), 2 * NR) };
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: a[i * lda + 2q + 1] for i < M is inside the row (kc rounded up to
            // even, the Tile contract).
            let (a0, a1) = unsafe {
                let a = t.a.add(i * t.lda + 2 * q);
                (*a, *a.add(1))
            };
            for (s, w) in acc.iter_mut().zip(b.chunks_exact(2)) {
                *s += a0 * bf16_to_f32(w[0]);
                *s += a1 * bf16_to_f32(w[1]);
            }
        }
    }
    // SAFETY: forwarded.
    unsafe { store(t, &acc) }
}

/// The [`Dot`] contract over bf16 weight rows, `x` rounded to bf16.
///
/// # Safety
/// As [`super::DotFn`].
unsafe fn dot(d: &Dot<u16>) {
    for i in 0..d.m {
        // SAFETY: row i < m of x, k floats.
        let x = unsafe { std::slice::from_raw_parts(d.x.add(i * d.ldx), d.k) };
        for j in 0..d.n {
            // SAFETY: row j < n of w, k values; bias[j].
            let (w, b) = unsafe {
                (
                    std::slice::from_raw_parts(d.w.add(j * d.ldw), d.k),
                    *d.bias.add(j),
                )
            };
            let s: f32 = x
                .iter()
                .zip(w)
                .map(|(a, b)| bf16::round(*a) * bf16_to_f32(*b))
                .sum();
            // SAFETY: y[i, j], i < m, j < n.
            unsafe { *d.y.add(i * d.ldy + j) = b + s };
        }
    }
}

/// The [`RoundBlock`] contract.
///
/// # Safety
/// As [`super::RoundFn`].
unsafe fn round(b: &RoundBlock<f32>) {
    // SAFETY: forwarded.
    unsafe { round_rows(b, bf16::round_f32) }
}
