//! The converting bf16 kernels, for CPUs without AVX512-BF16 (and `DLRS_ISA=avx512|avx2`):
//! each 32-bit lane of a weight load holds two inputs' bf16 weights of one column, widened
//! to f32 by a 16-bit shift (the even input) and a mask (the odd one) and fed to the f32
//! FMAs with the inputs, rounded to bf16 and held as f32.
//!
//! - AVX2 + FMA: 5 x 16 tiles: 10 accumulators, 4 widened weight registers (both halves of
//!   two loads) and 1 broadcast, of the 16 registers (6 x 16 spilled: 0.5x the f32 AVX2
//!   kernel on Zen 4; 4 x 16: 0.9x; 5 x 16: 1.0x);
//! - AVX-512F: 12 x 32 tiles, as the f32 zmm kernel (24 accumulators, 4 weight registers).
//!
//! Per pair of inputs they do the f32 kernel's two k-steps of FMAs plus one shift and one
//! mask per weight register, on half the weight bytes: on Zen 4 (`DLRS_ISA=avx512|avx2`)
//! they ran at 0.9-1.0x the f32 kernels on the RMC3 layers.

use std::arch::x86_64::*;

use super::bf16;
use super::x86::{self, PREFETCH_K, Simd, Ymm, Zmm};
use super::{Dot, Micro, RoundBlock, Tile, TileFn, round_rows, tiles};

const MR_Y: usize = 5;
const NV_Y: usize = 2;
const MR_Z: usize = 12;
const NV_Z: usize = 2;

pub(super) static MICRO_AVX2: Micro<f32, u16> = Micro {
    mr: MR_Y,
    nr: NV_Y * 8,
    kc: super::KC,
    mc: super::MC,
    tiles: tiles!(tile_avx2; 1 2 3 4 5),
    gemv: gemv_avx2 as TileFn<f32, u16>,
    dot: dot_avx2,
    round: Some(round_avx2),
};

pub(super) static MICRO_AVX512: Micro<f32, u16> = Micro {
    mr: MR_Z,
    nr: NV_Z * 16,
    kc: super::KC,
    mc: super::MC,
    tiles: tiles!(tile_avx512; 1 2 3 4 5 6 7 8 9 10 11 12),
    gemv: gemv_avx512 as TileFn<f32, u16>,
    dot: dot_avx512,
    round: Some(round_avx512),
};

/// Widening bf16 to the f32 lanes of a register.
trait Widen: Simd {
    /// The low (even-input) halves of `LANES` pairs at `p`, as f32.
    ///
    /// # Safety
    /// The instruction set; `2 * LANES` readable values at `p`.
    unsafe fn lo(p: *const u16) -> Self::R;
    /// The high (odd-input) halves of `LANES` pairs at `p`, as f32.
    ///
    /// # Safety
    /// As [`Widen::lo`].
    unsafe fn hi(p: *const u16) -> Self::R;
    /// `LANES` consecutive bf16 values at `p`, as f32.
    ///
    /// # Safety
    /// The instruction set; `LANES` readable values at `p`.
    unsafe fn load_bf16(p: *const u16) -> Self::R;
    /// Each lane rounded to bf16 as [`bf16::round`] (NaN to the quiet NaN `0x7FC0_0000`).
    ///
    /// # Safety
    /// The instruction set.
    unsafe fn round(v: Self::R) -> Self::R;
}

/// `bf16::round(NaN)`.
const QNAN: f32 = f32::from_bits(0x7FC0_0000);

impl Widen for Ymm {
    #[inline(always)]
    unsafe fn lo(p: *const u16) -> __m256 {
        // SAFETY: 32 readable bytes, AVX2 (the trait contract).
        unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_loadu_si256(p.cast()))) }
    }
    #[inline(always)]
    unsafe fn hi(p: *const u16) -> __m256 {
        // SAFETY: 32 readable bytes, AVX2 (the trait contract).
        unsafe {
            let v = _mm256_loadu_si256(p.cast());
            _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(-65536)))
        }
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> __m256 {
        // SAFETY: 16 readable bytes, AVX2 (the trait contract).
        unsafe {
            let v = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v))
        }
    }
    #[inline(always)]
    unsafe fn round(v: __m256) -> __m256 {
        // SAFETY: AVX2 (the trait contract).
        unsafe {
            let u = _mm256_castps_si256(v);
            let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(u), _mm256_set1_epi32(1));
            let r = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), odd);
            let r = _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32(-65536)));
            let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v);
            _mm256_blendv_ps(r, _mm256_set1_ps(QNAN), nan)
        }
    }
}

impl Widen for Zmm {
    #[inline(always)]
    unsafe fn lo(p: *const u16) -> __m512 {
        // SAFETY: 64 readable bytes, AVX-512F (the trait contract).
        unsafe { _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_loadu_si512(p.cast()))) }
    }
    #[inline(always)]
    unsafe fn hi(p: *const u16) -> __m512 {
        // SAFETY: 64 readable bytes, AVX-512F (the trait contract).
        unsafe {
            let v = _mm512_loadu_si512(p.cast());
            _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(-65536)))
        }
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> __m512 {
        // SAFETY: 32 readable bytes, AVX-512F (the trait contract).
        unsafe {
            let v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()));
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v))
        }
    }
    #[inline(always)]
    unsafe fn round(v: __m512) -> __m512 {
        // SAFETY: AVX-512F (the trait contract).
        unsafe {
            let u = _mm512_castps_si512(v);
            let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(u), _mm512_set1_epi32(1));
            let r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), odd);
            let r = _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32(-65536)));
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
            _mm512_mask_blend_ps(nan, r, _mm512_set1_ps(QNAN))
        }
    }
}

/// The [`Tile`] contract for `M` rows of `NV` registers over bf16 pairs.
///
/// # Safety
/// As [`TileFn`], inside a function with `V`'s instruction set.
#[inline(always)]
unsafe fn tile<V: Widen, const NV: usize, const M: usize>(t: &Tile<f32, u16>) {
    let nr = NV * V::LANES;
    // SAFETY: the instruction set is the caller's; every address below is one the Tile
    // contract names: a[i * lda + kk] for i < M, kk < kc rounded up to even, and the pairs
    // b[q * 2 NR .. q * 2 NR + 2 NR] for q < kc.div_ceil(2).
    unsafe {
        for i in 0..M {
            let c = t.c.add(i * t.ldc);
            _mm_prefetch::<_MM_HINT_T0>(c.cast());
            _mm_prefetch::<_MM_HINT_T0>(c.add(nr - 1).cast());
        }
        let mut acc = [[V::zero(); NV]; M];
        let (mut a, mut b) = (t.a, t.b);
        for _ in 0..t.kc.div_ceil(2) {
            if t.prefetch {
                for l in 0..2 * nr / 32 {
                    // a hint: any address may be prefetched, so past the panel's end too
                    let ahead = b.wrapping_add(PREFETCH_K * 2 * nr + l * 32);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                }
            }
            // both halves of the weights first, then each row's pair of inputs: the
            // broadcasts stay next to their FMAs (loading the odd inputs' broadcasts after
            // all even ones let the compiler hoist them all, spilling the accumulators)
            let lo: [V::R; NV] = std::array::from_fn(|v| V::lo(b.add(v * 2 * V::LANES)));
            let hi: [V::R; NV] = std::array::from_fn(|v| V::hi(b.add(v * 2 * V::LANES)));
            for (i, acc) in acc.iter_mut().enumerate() {
                let a0 = V::splat(a.add(i * t.lda));
                for v in 0..NV {
                    acc[v] = V::fma(a0, lo[v], acc[v]);
                }
                let a1 = V::splat(a.add(i * t.lda + 1));
                for v in 0..NV {
                    acc[v] = V::fma(a1, hi[v], acc[v]);
                }
            }
            a = a.add(2);
            b = b.add(2 * nr);
        }
        x86::store::<V, NV, M, _, _>(t, &acc);
    }
}

/// One row over a whole panel: as [`tile`] with `M = 1`, with four independent sums per
/// register.
///
/// # Safety
/// As [`tile`] with `M = 1`.
#[inline(always)]
unsafe fn gemv<V: Widen, const NV: usize>(t: &Tile<f32, u16>) {
    const U: usize = 4;
    let nr = NV * V::LANES;
    let pairs = t.kc.div_ceil(2);
    // SAFETY: as in `tile`.
    unsafe {
        let mut acc = [[V::zero(); NV]; U];
        let (a, b) = (t.a, t.b);
        let mut q = 0;
        while q + U <= pairs {
            for (u, acc) in acc.iter_mut().enumerate() {
                pair::<V, NV>(acc, a.add(2 * (q + u)), b.add((q + u) * 2 * nr));
            }
            q += U;
        }
        while q < pairs {
            pair::<V, NV>(&mut acc[0], a.add(2 * q), b.add(q * 2 * nr));
            q += 1;
        }
        let sum: [V::R; NV] = std::array::from_fn(|v| {
            V::add(V::add(acc[0][v], acc[1][v]), V::add(acc[2][v], acc[3][v]))
        });
        x86::store::<V, NV, 1, _, _>(t, &[sum]);
    }
}

/// One pair of inputs `a[0], a[1]` times the `NV` registers of weight pairs at `b`, into
/// `acc`.
///
/// # Safety
/// The instruction set; 2 readable inputs at `a`, `2 NV LANES` weights at `b`.
#[inline(always)]
unsafe fn pair<V: Widen, const NV: usize>(acc: &mut [V::R; NV], a: *const f32, b: *const u16) {
    // SAFETY: the caller's contract.
    unsafe {
        let (a0, a1) = (V::splat(a), V::splat(a.add(1)));
        for (v, s) in acc.iter_mut().enumerate() {
            *s = V::fma(a0, V::lo(b.add(v * 2 * V::LANES)), *s);
            *s = V::fma(a1, V::hi(b.add(v * 2 * V::LANES)), *s);
        }
    }
}

/// The [`Dot`] contract over bf16 weight rows: `R` rows and all `n <= DOT_MAX_N` outputs
/// at a time, `x` rounded to bf16 in registers.
///
/// # Safety
/// As [`super::DotFn`], inside a function with `V`'s instruction set.
#[inline(always)]
unsafe fn dot<V: Widen, const R: usize>(d: &Dot<u16>) {
    // SAFETY: forwarded.
    unsafe {
        match d.n {
            1 => dot_n::<V, R, 1>(d),
            2 => dot_n::<V, R, 2>(d),
            3 => dot_n::<V, R, 3>(d),
            _ => dot_n::<V, R, { super::DOT_MAX_N }>(d),
        }
    }
}

/// [`dot`] for `N = n` outputs.
///
/// # Safety
/// As [`dot`], with `d.n == N`.
#[inline(always)]
unsafe fn dot_n<V: Widen, const R: usize, const N: usize>(d: &Dot<u16>) {
    let l = V::LANES;
    let kv = d.k / l * l;
    // SAFETY: rows i < m of x and y, rows j < n of w, k values each, bias[j].
    unsafe {
        let w: [*const u16; N] = std::array::from_fn(|j| d.w.add(j * d.ldw));
        for i0 in (0..d.m).step_by(R) {
            let rows = R.min(d.m - i0);
            // rows past m repeat the last: computed, never stored
            let xr: [*const f32; R] =
                std::array::from_fn(|r| d.x.add((i0 + r.min(rows - 1)) * d.ldx));
            let mut acc = [[V::zero(); N]; R];
            let mut kk = 0;
            while kk < kv {
                let xv: [V::R; R] = std::array::from_fn(|r| V::round(V::load(xr[r].add(kk))));
                for (j, w) in w.iter().enumerate() {
                    let wv = V::load_bf16(w.add(kk));
                    for (acc, xv) in acc.iter_mut().zip(&xv) {
                        acc[j] = V::fma(*xv, wv, acc[j]);
                    }
                }
                kk += l;
            }
            for (r, acc) in acc.iter().enumerate().take(rows) {
                for (j, (acc, w)) in acc.iter().zip(&w).enumerate() {
                    let mut s = V::sum(*acc);
                    for kk in kv..d.k {
                        s += bf16::round(*xr[r].add(kk)) * bf16::bf16_to_f32(*w.add(kk));
                    }
                    *d.y.add((i0 + r) * d.ldy + j) = *d.bias.add(j) + s;
                }
            }
        }
    }
}

/// # Safety
/// As [`TileFn`], on a CPU with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const M: usize>(t: &Tile<f32, u16>) {
    // SAFETY: forwarded; this function has the features `Ymm` needs.
    unsafe { tile::<Ymm, NV_Y, M>(t) }
}

/// # Safety
/// As [`TileFn`] with one row, on a CPU with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_avx2(t: &Tile<f32, u16>) {
    // SAFETY: forwarded; this function has the features `Ymm` needs.
    unsafe { gemv::<Ymm, NV_Y>(t) }
}

/// # Safety
/// As [`super::DotFn`], on a CPU with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(d: &Dot<u16>) {
    // SAFETY: forwarded; this function has the features `Ymm` needs.
    unsafe { dot::<Ymm, 2>(d) }
}

/// The [`RoundBlock`] contract, [`bf16::round_f32`] vectorized with AVX2.
///
/// # Safety
/// As [`super::RoundFn`], on a CPU with AVX2.
#[target_feature(enable = "avx2,fma")]
unsafe fn round_avx2(b: &RoundBlock<f32>) {
    // SAFETY: forwarded.
    unsafe { round_rows(b, bf16::round_f32) }
}

/// # Safety
/// As [`TileFn`], on a CPU with AVX-512F.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn tile_avx512<const M: usize>(t: &Tile<f32, u16>) {
    // SAFETY: forwarded; this function has the features `Zmm` needs.
    unsafe { tile::<Zmm, NV_Z, M>(t) }
}

/// # Safety
/// As [`TileFn`] with one row, on a CPU with AVX-512F.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn gemv_avx512(t: &Tile<f32, u16>) {
    // SAFETY: forwarded; this function has the features `Zmm` needs.
    unsafe { gemv::<Zmm, NV_Z>(t) }
}

/// # Safety
/// As [`super::DotFn`], on a CPU with AVX-512F.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn dot_avx512(d: &Dot<u16>) {
    // SAFETY: forwarded; this function has the features `Zmm` needs.
    unsafe { dot::<Zmm, 4>(d) }
}

/// The [`RoundBlock`] contract, [`bf16::round_f32`] vectorized with AVX-512F.
///
/// # Safety
/// As [`super::RoundFn`], on a CPU with AVX-512F and VL.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn round_avx512(b: &RoundBlock<f32>) {
    // SAFETY: forwarded.
    unsafe { round_rows(b, bf16::round_f32) }
}
