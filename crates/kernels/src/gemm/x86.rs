//! The x86-64 microkernel bodies, generic over the vector register ([`Ymm`], [`Zmm`]).
//!
//! They are `#[inline(always)]` and have no target features of their own: each kernel
//! family (`avx2.rs`, `avx512.rs`) instantiates them inside its `#[target_feature]` functions,
//! where the intrinsics inline and the register allocator sees 16 or 32 registers.

use std::arch::x86_64::*;

use super::{Dot, Tile};

/// One vector register of f32 lanes and the operations the kernels use. The methods are
/// `unsafe` because each needs the register's instruction set (AVX2 + FMA for [`Ymm`],
/// AVX-512F for [`Zmm`]) in the function it is inlined into.
pub(super) trait Simd {
    type R: Copy;
    const LANES: usize;
    /// # Safety
    /// The instruction set.
    unsafe fn zero() -> Self::R;
    /// # Safety
    /// The instruction set; `LANES` readable floats at `p`.
    unsafe fn load(p: *const f32) -> Self::R;
    /// `*p` in every lane.
    ///
    /// # Safety
    /// The instruction set; a readable float at `p`.
    unsafe fn splat(p: *const f32) -> Self::R;
    /// `a * b + c`, rounded once.
    ///
    /// # Safety
    /// The instruction set.
    unsafe fn fma(a: Self::R, b: Self::R, c: Self::R) -> Self::R;
    /// # Safety
    /// The instruction set.
    unsafe fn add(a: Self::R, b: Self::R) -> Self::R;
    /// `max(a, 0)` per lane.
    ///
    /// # Safety
    /// The instruction set.
    unsafe fn relu(a: Self::R) -> Self::R;
    /// # Safety
    /// The instruction set; `LANES` writable floats at `p`.
    unsafe fn store(p: *mut f32, a: Self::R);
    /// The sum of the lanes.
    ///
    /// # Safety
    /// The instruction set.
    unsafe fn sum(a: Self::R) -> f32;
}

/// 8 lanes (AVX2 + FMA; with AVX-512VL enabled the compiler may use ymm16-31 and embedded
/// broadcasts).
pub(super) struct Ymm;

/// 16 lanes (AVX-512F).
pub(super) struct Zmm;

impl Simd for Ymm {
    type R = __m256;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        // SAFETY: AVX (the trait contract).
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: 8 readable floats, AVX (the trait contract).
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> __m256 {
        // SAFETY: one readable float, AVX (the trait contract).
        unsafe { _mm256_broadcast_ss(&*p) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: FMA (the trait contract).
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX (the trait contract).
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn relu(a: __m256) -> __m256 {
        // SAFETY: AVX (the trait contract). `max(NaN, 0)` is 0, as `f32::max` gives.
        unsafe { _mm256_max_ps(a, _mm256_setzero_ps()) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, a: __m256) {
        // SAFETY: 8 writable floats, AVX (the trait contract).
        unsafe { _mm256_storeu_ps(p, a) }
    }
    #[inline(always)]
    unsafe fn sum(a: __m256) -> f32 {
        // SAFETY: AVX (the trait contract).
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }
}

impl Simd for Zmm {
    type R = __m512;
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        // SAFETY: AVX-512F (the trait contract).
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: 16 readable floats, AVX-512F (the trait contract).
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> __m512 {
        // SAFETY: one readable float, AVX-512F (the trait contract).
        unsafe { _mm512_set1_ps(*p) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: AVX-512F (the trait contract).
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F (the trait contract).
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn relu(a: __m512) -> __m512 {
        // SAFETY: AVX-512F (the trait contract). `max(NaN, 0)` is 0, as `f32::max` gives.
        unsafe { _mm512_max_ps(a, _mm512_setzero_ps()) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, a: __m512) {
        // SAFETY: 16 writable floats, AVX-512F (the trait contract).
        unsafe { _mm512_storeu_ps(p, a) }
    }
    #[inline(always)]
    unsafe fn sum(a: __m512) -> f32 {
        // SAFETY: AVX-512F (the trait contract).
        unsafe { _mm512_reduce_add_ps(a) }
    }
}

/// How many k-steps ahead a tile prefetches its panel when asked to (2 KiB at NR = 32). For
/// the first tile over a panel, which reads it from L2 or L3: the AVX2 kernel gained 10-15%
/// at k = 2560 on Zen 4, the AVX-512 ones within noise.
pub(super) const PREFETCH_K: usize = 16;

/// The [`Tile`] contract for `M` rows of `NV` registers (`NR = NV * V::LANES`).
///
/// # Safety
/// As [`super::TileFn`], inside a function with `V`'s instruction set.
#[inline(always)]
pub(super) unsafe fn tile<V: Simd, const NV: usize, const M: usize>(t: &Tile) {
    let nr = NV * V::LANES;
    // SAFETY: the instruction set is the caller's; every address below is one the Tile
    // contract names: a[i * lda + kk] for i < M, kk < kc, and b[kk * NR .. kk * NR + NR].
    unsafe {
        // the tile of y is read (or written) after the k loop: start bringing it in now
        for i in 0..M {
            let c = t.c.add(i * t.ldc);
            _mm_prefetch::<_MM_HINT_T0>(c.cast());
            _mm_prefetch::<_MM_HINT_T0>(c.add(nr - 1).cast());
        }
        let mut acc = [[V::zero(); NV]; M];
        let (mut a, mut b) = (t.a, t.b);
        for _ in 0..t.kc {
            if t.prefetch {
                for l in 0..nr / 16 {
                    // a hint: any address may be prefetched, so past the panel's end too
                    let ahead = b.wrapping_add(PREFETCH_K * nr + l * 16);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                }
            }
            let bv: [V::R; NV] = std::array::from_fn(|v| V::load(b.add(v * V::LANES)));
            for (i, acc) in acc.iter_mut().enumerate() {
                let av = V::splat(a.add(i * t.lda));
                for v in 0..NV {
                    acc[v] = V::fma(av, bv[v], acc[v]);
                }
            }
            a = a.add(1);
            b = b.add(nr);
        }
        store::<V, NV, M, _, _>(t, &acc);
    }
}

/// The epilogue of a tile: `c = relu?(acc + (bias or c))`.
///
/// # Safety
/// As [`tile`].
#[inline(always)]
pub(super) unsafe fn store<V: Simd, const NV: usize, const M: usize, X, W>(
    t: &Tile<X, W>,
    acc: &[[V::R; NV]; M],
) {
    // SAFETY: rows i < M of the tile, NR floats each; NR bias values when `first`.
    unsafe {
        for (i, row) in acc.iter().enumerate() {
            let c = t.c.add(i * t.ldc);
            for (v, acc) in row.iter().enumerate() {
                let p = c.add(v * V::LANES);
                let base = if t.first {
                    V::load(t.bias.add(v * V::LANES))
                } else {
                    V::load(p)
                };
                let mut r = V::add(*acc, base);
                if t.relu {
                    r = V::relu(r);
                }
                V::store(p, r);
            }
        }
    }
}

/// One row over `kc` inputs (the GEMV of batch 1): as [`tile`] with `M = 1`, with four
/// independent sums per register so that the FMA latency does not bound it.
///
/// # Safety
/// As [`tile`] with `M = 1`.
#[inline(always)]
pub(super) unsafe fn gemv<V: Simd, const NV: usize>(t: &Tile) {
    const U: usize = 4;
    let nr = NV * V::LANES;
    // SAFETY: as in `tile`: x[kk] for kk < kc, and b[kk * NR ..][..NR].
    unsafe {
        let mut acc = [[V::zero(); NV]; U];
        let (a, b) = (t.a, t.b);
        let mut kk = 0;
        while kk + U <= t.kc {
            for (u, acc) in acc.iter_mut().enumerate() {
                let av = V::splat(a.add(kk + u));
                for (v, s) in acc.iter_mut().enumerate() {
                    *s = V::fma(av, V::load(b.add((kk + u) * nr + v * V::LANES)), *s);
                }
            }
            kk += U;
        }
        while kk < t.kc {
            let av = V::splat(a.add(kk));
            for (v, s) in acc[0].iter_mut().enumerate() {
                *s = V::fma(av, V::load(b.add(kk * nr + v * V::LANES)), *s);
            }
            kk += 1;
        }
        let sum: [V::R; NV] = std::array::from_fn(|v| {
            V::add(V::add(acc[0][v], acc[1][v]), V::add(acc[2][v], acc[3][v]))
        });
        store::<V, NV, 1, _, _>(t, &[sum]);
    }
}

/// The [`Dot`] contract: four rows at a time, two sums per row, one output at a time.
///
/// # Safety
/// As [`super::DotFn`], inside a function with `V`'s instruction set.
#[inline(always)]
pub(super) unsafe fn dot<V: Simd>(d: &Dot) {
    const R: usize = 4;
    let l = V::LANES;
    let kv = d.k / (2 * l) * (2 * l);
    // SAFETY: rows i < m of x and y, rows j < n of w, k floats each, bias[j].
    unsafe {
        for i0 in (0..d.m).step_by(R) {
            let rows = R.min(d.m - i0);
            // rows past m repeat the last: computed, never stored
            let xr: [*const f32; R] =
                std::array::from_fn(|r| d.x.add((i0 + r.min(rows - 1)) * d.ldx));
            for j in 0..d.n {
                let w = d.w.add(j * d.ldw);
                let mut acc = [[V::zero(); 2]; R];
                let mut kk = 0;
                while kk < kv {
                    let w0 = V::load(w.add(kk));
                    let w1 = V::load(w.add(kk + l));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        acc[0] = V::fma(V::load(xr[r].add(kk)), w0, acc[0]);
                        acc[1] = V::fma(V::load(xr[r].add(kk + l)), w1, acc[1]);
                    }
                    kk += 2 * l;
                }
                for (r, acc) in acc.iter().enumerate().take(rows) {
                    let mut s = V::sum(V::add(acc[0], acc[1]));
                    for kk in kv..d.k {
                        s += *xr[r].add(kk) * *w.add(kk);
                    }
                    *d.y.add((i0 + r) * d.ldy + j) = *d.bias.add(j) + s;
                }
            }
        }
    }
}
