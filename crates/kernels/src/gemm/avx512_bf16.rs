//! The AVX512-BF16 kernels: bf16 weights and inputs through `vdpbf16ps`, which adds to each
//! f32 lane of an accumulator the two products of one pair of bf16 lanes:
//!
//! ```text
//! acc[c] += x[2q] * w[c, 2q] + x[2q + 1] * w[c, 2q + 1]      (x's pair broadcast to all lanes)
//! ```
//!
//! 12 x 32 tiles (and 12 x 16 for narrow layers, `Kernel::Bf16Avx512Bf16Narrow`): 24 zmm
//! accumulators, 2 registers of weight pairs and 1 broadcast input pair
//! per pair of inputs (the broadcast folds into `vdpbf16ps`' memory operand), as in the f32
//! zmm kernel. On Zen 4 a zmm `vdpbf16ps` issues at the rate of a zmm FMA, one per cycle, for
//! 64 flops instead of 32.
//!
//! `vdpbf16ps` does not consult MXCSR: it treats bf16 subnormal inputs as zero, flushes
//! subnormal results to zero and rounds to nearest even. The inputs are rounded by
//! `vcvtne2ps2bf16`, which also reads f32 subnormals as zero: the products are those of the
//! other kernels but for these.

use std::arch::x86_64::*;

use super::x86::{self, PREFETCH_K, Zmm};
use super::{Dot, Micro, RoundBlock, Tile, TileFn, round_rows, tiles};

const MR: usize = 12;
const NV: usize = 2;
const MR_16: usize = 12;

pub(super) static MICRO: Micro<u16, u16> = Micro {
    mr: MR,
    nr: NV * 16,
    kc: super::KC,
    mc: super::MC,
    tiles: tiles!(tile; 1 2 3 4 5 6 7 8 9 10 11 12),
    gemv: gemv as TileFn<u16, u16>,
    dot,
    round: Some(round),
};

pub(super) static MICRO_16: Micro<u16, u16> = Micro {
    mr: MR_16,
    nr: 16,
    kc: super::KC,
    mc: super::MC,
    tiles: tiles!(tile_16; 1 2 3 4 5 6 7 8 9 10 11 12),
    gemv: gemv_16 as TileFn<u16, u16>,
    dot,
    round: Some(round),
};

/// 32 bf16 values, as `vdpbf16ps` takes them.
///
/// # Safety
/// AVX-512F.
#[inline(always)]
unsafe fn bh(v: __m512i) -> __m512bh {
    // SAFETY: both are 64-byte vectors, and any bits are 32 bf16 values.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// The pair of inputs at `p` in all 16 lanes.
///
/// # Safety
/// AVX-512F; 2 readable values at `p`.
#[inline(always)]
unsafe fn splat_pair(p: *const u16) -> __m512bh {
    // SAFETY: the caller's contract; an unaligned 4-byte read.
    unsafe { bh(_mm512_set1_epi32(p.cast::<i32>().read_unaligned())) }
}

/// 16 weight pairs at `p`.
///
/// # Safety
/// AVX-512F; 32 readable values at `p`.
#[inline(always)]
unsafe fn load_pairs(p: *const u16) -> __m512bh {
    // SAFETY: the caller's contract.
    unsafe { bh(_mm512_loadu_si512(p.cast())) }
}

/// The [`Tile`] contract for `M` rows of `NV_` zmm registers over bf16 pairs.
///
/// # Safety
/// As [`TileFn`], inside a function with AVX-512F and AVX512-BF16.
#[inline(always)]
unsafe fn tile_dp<const NV_: usize, const M: usize>(t: &Tile<u16, u16>) {
    let nr = NV_ * 16;
    // SAFETY: the instruction set is the caller's; every address below is one the Tile
    // contract names: a[i * lda + kk] for i < M, kk < kc rounded up to even, and the pairs
    // b[q * 2 NR .. q * 2 NR + 2 NR] for q < kc.div_ceil(2).
    unsafe {
        // the tile of y is read (or written) after the k loop: start bringing it in now
        for i in 0..M {
            let c = t.c.add(i * t.ldc);
            _mm_prefetch::<_MM_HINT_T0>(c.cast());
            _mm_prefetch::<_MM_HINT_T0>(c.add(nr - 1).cast());
        }
        let mut acc = [[_mm512_setzero_ps(); NV_]; M];
        let (mut a, mut b) = (t.a, t.b);
        for _ in 0..t.kc.div_ceil(2) {
            if t.prefetch {
                for l in 0..2 * nr / 32 {
                    // a hint: any address may be prefetched, so past the panel's end too
                    let ahead = b.wrapping_add(PREFETCH_K * 2 * nr + l * 32);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                }
            }
            let bv: [__m512bh; NV_] = std::array::from_fn(|v| load_pairs(b.add(v * 32)));
            for (i, acc) in acc.iter_mut().enumerate() {
                let av = splat_pair(a.add(i * t.lda));
                for v in 0..NV_ {
                    acc[v] = _mm512_dpbf16_ps(acc[v], av, bv[v]);
                }
            }
            a = a.add(2);
            b = b.add(2 * nr);
        }
        x86::store::<Zmm, NV_, M, _, _>(t, &acc);
    }
}

/// One row over a whole panel: as [`tile_dp`] with `M = 1`, with four independent sums per
/// register so that the latency of `vdpbf16ps` does not bound it.
///
/// # Safety
/// As [`tile_dp`] with `M = 1`.
#[inline(always)]
unsafe fn gemv_dp<const NV_: usize>(t: &Tile<u16, u16>) {
    const U: usize = 4;
    let nr = NV_ * 16;
    let pairs = t.kc.div_ceil(2);
    // SAFETY: as in `tile_dp`.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); NV_]; U];
        let (a, b) = (t.a, t.b);
        let mut q = 0;
        while q + U <= pairs {
            for (u, acc) in acc.iter_mut().enumerate() {
                let av = splat_pair(a.add(2 * (q + u)));
                for (v, s) in acc.iter_mut().enumerate() {
                    *s = _mm512_dpbf16_ps(*s, av, load_pairs(b.add((q + u) * 2 * nr + v * 32)));
                }
            }
            q += U;
        }
        while q < pairs {
            let av = splat_pair(a.add(2 * q));
            for (v, s) in acc[0].iter_mut().enumerate() {
                *s = _mm512_dpbf16_ps(*s, av, load_pairs(b.add(q * 2 * nr + v * 32)));
            }
            q += 1;
        }
        let sum: [__m512; NV_] = std::array::from_fn(|v| {
            _mm512_add_ps(
                _mm512_add_ps(acc[0][v], acc[1][v]),
                _mm512_add_ps(acc[2][v], acc[3][v]),
            )
        });
        x86::store::<Zmm, NV_, 1, _, _>(t, &[sum]);
    }
}

/// The [`Tile`] contract, 12 x 32.
///
/// # Safety
/// As [`TileFn`], on a CPU with AVX-512F, VL, BW and AVX512-BF16.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512bf16,avx2,fma")]
unsafe fn tile<const M: usize>(t: &Tile<u16, u16>) {
    // SAFETY: forwarded; this function has the features `tile_dp` needs.
    unsafe { tile_dp::<NV, M>(t) }
}

/// # Safety
/// As [`TileFn`] with one row, on a CPU with AVX-512F, VL, BW and AVX512-BF16.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512bf16,avx2,fma")]
unsafe fn gemv(t: &Tile<u16, u16>) {
    // SAFETY: forwarded; this function has the features `gemv_dp` needs.
    unsafe { gemv_dp::<NV>(t) }
}

/// The [`Tile`] contract, up to 12 x 16.
///
/// # Safety
/// As [`TileFn`], on a CPU with AVX-512F, VL, BW and AVX512-BF16.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512bf16,avx2,fma")]
unsafe fn tile_16<const M: usize>(t: &Tile<u16, u16>) {
    // SAFETY: forwarded; this function has the features `tile_dp` needs.
    unsafe { tile_dp::<1, M>(t) }
}

/// # Safety
/// As [`TileFn`] with one row, on a CPU with AVX-512F, VL, BW and AVX512-BF16.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512bf16,avx2,fma")]
unsafe fn gemv_16(t: &Tile<u16, u16>) {
    // SAFETY: forwarded; this function has the features `gemv_dp` needs.
    unsafe { gemv_dp::<1>(t) }
}

/// The [`Dot`] contract over bf16 weight rows: four rows and all `n <= DOT_MAX_N` outputs
/// at a time, 32 inputs per `vdpbf16ps`, `x` rounded by `vcvtne2ps2bf16` in registers (the
/// last inputs through masked loads).
///
/// # Safety
/// As [`super::DotFn`], on a CPU with AVX-512F, VL, BW and AVX512-BF16.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512bf16,avx2,fma")]
unsafe fn dot(d: &Dot<u16>) {
    // SAFETY: forwarded.
    unsafe {
        match d.n {
            1 => dot_n::<1>(d),
            2 => dot_n::<2>(d),
            3 => dot_n::<3>(d),
            _ => dot_n::<{ super::DOT_MAX_N }>(d),
        }
    }
}

/// 32 inputs at `p` rounded to bf16; with `rest < 32`, only the first `rest` are read and
/// the others are zero.
///
/// # Safety
/// AVX-512F, BW, AVX512-BF16; `rest` (at most 32) readable floats at `p`.
#[inline(always)]
unsafe fn round32(p: *const f32, rest: usize) -> __m512bh {
    // SAFETY: the caller's contract; masked-off lanes are not read.
    unsafe {
        if rest >= 32 {
            _mm512_cvtne2ps_pbh(_mm512_loadu_ps(p.add(16)), _mm512_loadu_ps(p))
        } else {
            let m_lo = ((1u32 << rest.min(16)) - 1) as __mmask16;
            let m_hi = ((1u32 << rest.saturating_sub(16)) - 1) as __mmask16;
            _mm512_cvtne2ps_pbh(
                _mm512_maskz_loadu_ps(m_hi, p.add(16)),
                _mm512_maskz_loadu_ps(m_lo, p),
            )
        }
    }
}

/// [`dot`] for `N = n` outputs.
///
/// # Safety
/// As [`dot`], with `d.n == N`.
#[inline(always)]
unsafe fn dot_n<const N: usize>(d: &Dot<u16>) {
    const R: usize = 4;
    let kv = d.k / 32 * 32;
    let rest = d.k - kv;
    let m_w = ((1u64 << rest) - 1) as __mmask32;
    // SAFETY: rows i < m of x and y, rows j < n of w, k values each, bias[j].
    unsafe {
        let w: [*const u16; N] = std::array::from_fn(|j| d.w.add(j * d.ldw));
        for i0 in (0..d.m).step_by(R) {
            let rows = R.min(d.m - i0);
            // rows past m repeat the last: computed, never stored
            let xr: [*const f32; R] =
                std::array::from_fn(|r| d.x.add((i0 + r.min(rows - 1)) * d.ldx));
            let mut acc = [[_mm512_setzero_ps(); N]; R];
            let mut kk = 0;
            while kk < kv {
                let xv: [__m512bh; R] = std::array::from_fn(|r| round32(xr[r].add(kk), 32));
                for (j, w) in w.iter().enumerate() {
                    let wv = load_pairs(w.add(kk));
                    for (acc, xv) in acc.iter_mut().zip(&xv) {
                        acc[j] = _mm512_dpbf16_ps(acc[j], *xv, wv);
                    }
                }
                kk += 32;
            }
            if rest > 0 {
                let xv: [__m512bh; R] = std::array::from_fn(|r| round32(xr[r].add(kv), rest));
                for (j, w) in w.iter().enumerate() {
                    // only the rest: past it, the next row's weights (times a zero input
                    // they would still turn an infinity into a NaN)
                    let wv = bh(_mm512_maskz_loadu_epi16(m_w, w.add(kv).cast()));
                    for (acc, xv) in acc.iter_mut().zip(&xv) {
                        acc[j] = _mm512_dpbf16_ps(acc[j], *xv, wv);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate().take(rows) {
                for (j, acc) in acc.iter().enumerate() {
                    *d.y.add((i0 + r) * d.ldy + j) = *d.bias.add(j) + _mm512_reduce_add_ps(*acc);
                }
            }
        }
    }
}

/// The [`RoundBlock`] contract with `vcvtne2ps2bf16` (32 inputs per instruction;
/// vectorized, [`super::bf16::f32_to_bf16`] takes 9 instructions per 16): to nearest even as
/// that, but f32 subnormals become zeros of their sign (which `vdpbf16ps` would read as zero
/// anyway) and a NaN stays a NaN of its sign and payload.
///
/// # Safety
/// As [`super::RoundFn`], on a CPU with AVX-512F, BW and AVX512-BF16.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512bf16,avx2,fma")]
unsafe fn round(b: &RoundBlock<u16>) {
    // SAFETY: forwarded; `round_row` needs this function's features.
    unsafe { round_rows(b, |src, dst| round_row(src, dst)) }
}

/// One row of [`round`].
///
/// # Safety
/// AVX-512F, BW and AVX512-BF16.
#[inline(always)]
unsafe fn round_row(src: &[f32], dst: &mut [u16]) {
    let len = src.len();
    assert!(dst.len() >= len);
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    // SAFETY: i + 32 <= len: 32 floats of src and 32 values of dst.
    unsafe {
        while i + 32 <= len {
            let lo = _mm512_loadu_ps(s.add(i));
            let hi = _mm512_loadu_ps(s.add(i + 16));
            let v = _mm512_cvtne2ps_pbh(hi, lo);
            _mm512_storeu_si512(d.add(i).cast(), std::mem::transmute::<__m512bh, __m512i>(v));
            i += 32;
        }
    }
    let r = len - i;
    if r > 0 {
        let m_lo: __mmask16 = ((1u32 << r.min(16)) - 1) as u16;
        let m_hi: __mmask16 = ((1u32 << r.saturating_sub(16)) - 1) as u16;
        let m: __mmask32 = ((1u64 << r) - 1) as u32;
        // SAFETY: the masks cover the r < 32 values left, at i in src and dst; masked-off
        // lanes are neither read nor written.
        unsafe {
            let lo = _mm512_maskz_loadu_ps(m_lo, s.add(i));
            let hi = _mm512_maskz_loadu_ps(m_hi, s.add(i + 16));
            let v = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_mask_storeu_epi16(d.add(i).cast(), m, v);
        }
    }
}
