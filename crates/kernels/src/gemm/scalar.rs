//! The plain-Rust microkernels: the fallback on CPUs without AVX2, 4 x 16 tiles.

use super::{Dot, Micro, Tile, TileFn, tiles};

const MR: usize = 4;
pub(super) const NR: usize = 16;

pub(super) static MICRO: Micro = Micro {
    mr: MR,
    nr: NR,
    kc: super::KC,
    mc: super::MC,
    tiles: tiles!(tile; 1 2 3 4),
    gemv: tile::<1> as TileFn,
    dot,
    round: None,
};

/// The [`Tile`] contract for `M` rows.
///
/// # Safety
/// As [`TileFn`].
unsafe fn tile<const M: usize>(t: &Tile) {
    let mut acc = [[0.0f32; NR]; M];
    for kk in 0..t.kc {
        // SAFETY: kk < kc: a row of the kc x NR slice of the panel.
        let b = unsafe { std::slice::from_raw_parts(t.b.add(kk * NR), NR) };
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: a[i * lda + kk] for i < M, kk < kc (the Tile contract).
            let a = unsafe { *t.a.add(i * t.lda + kk) };
            for (s, w) in acc.iter_mut().zip(b) {
                *s += a * w;
            }
        }
    }
    // SAFETY: forwarded.
    unsafe { store(t, &acc) }
}

/// The epilogue of a tile of `NR` columns: `c = relu?(acc + (bias or c))`.
///
/// # Safety
/// As [`TileFn`]: `M` rows of `NR` writable floats at `c`, `NR` bias values when `first`.
pub(super) unsafe fn store<const M: usize, X, W>(t: &Tile<X, W>, acc: &[[f32; NR]; M]) {
    for (i, acc) in acc.iter().enumerate() {
        // SAFETY: row i < M of the tile, NR floats, writable and aliasing no input.
        let c = unsafe { std::slice::from_raw_parts_mut(t.c.add(i * t.ldc), NR) };
        let base = if t.first {
            // SAFETY: NR bias values when `first`.
            Some(unsafe { std::slice::from_raw_parts(t.bias, NR) })
        } else {
            None
        };
        for (j, (v, s)) in c.iter_mut().zip(acc).enumerate() {
            let mut r = s + base.map_or(*v, |b| b[j]);
            if t.relu {
                r = r.max(0.0);
            }
            *v = r;
        }
    }
}

/// The [`Dot`] contract.
///
/// # Safety
/// As [`super::DotFn`].
unsafe fn dot(d: &Dot) {
    for i in 0..d.m {
        // SAFETY: row i < m of x, k floats.
        let x = unsafe { std::slice::from_raw_parts(d.x.add(i * d.ldx), d.k) };
        for j in 0..d.n {
            // SAFETY: row j < n of w, k floats; bias[j].
            let (w, b) = unsafe {
                (
                    std::slice::from_raw_parts(d.w.add(j * d.ldw), d.k),
                    *d.bias.add(j),
                )
            };
            let s: f32 = x.iter().zip(w).map(|(a, b)| a * b).sum();
            // SAFETY: y[i, j], i < m, j < n.
            unsafe { *d.y.add(i * d.ldy + j) = b + s };
        }
    }
}
