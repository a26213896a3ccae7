//! The DLRM `dot` feature interaction.
//!
//! Contract, for each sample `b` with features `T_b: [F, D]` (the bottom-MLP output and
//! the F - 1 pooled embeddings, stored row-major at `t[b * t_stride ..]`):
//!
//! ```text
//! Z = T_b T_b^T                                   // [F, F]
//! out[b * out_stride + p] = Z[i][j]  for (i, j) in row-major order of
//!                                    i > j   (itself = false, F(F-1)/2 pairs)
//!                                    i >= j  (itself = true,  F(F+1)/2 pairs)
//! ```
//!
//! This is the reference DLRM's `Z[:, li, lj]` with `li, lj` its index lists. The `cat`
//! interaction needs no kernel: bottom output and pooled embeddings are written side by
//! side into one buffer by the stages that produce them.

/// Number of interaction outputs for `f` features.
pub fn pair_count(f: usize, itself: bool) -> usize {
    if itself {
        f * (f + 1) / 2
    } else {
        f * f.saturating_sub(1) / 2
    }
}

/// Shapes of one interaction call.
#[derive(Clone, Copy, Debug)]
pub struct DotShape {
    pub batch: usize,
    pub features: usize,
    pub dim: usize,
    pub itself: bool,
    /// row stride of `t` per sample (>= features * dim)
    pub t_stride: usize,
    /// row stride of `out` per sample (>= pair_count)
    pub out_stride: usize,
}

impl DotShape {
    fn check(&self, t: &[f32], out: &[f32]) {
        let s = self;
        let pairs = pair_count(s.features, s.itself);
        assert!(
            s.t_stride >= s.features * s.dim && s.out_stride >= pairs,
            "strides too small: {s:?}"
        );
        if s.batch > 0 {
            assert!(
                t.len() >= (s.batch - 1) * s.t_stride + s.features * s.dim,
                "t too short for {s:?}"
            );
            assert!(
                out.len() >= (s.batch - 1) * s.out_stride + pairs,
                "out too short for {s:?}"
            );
        }
    }
}

/// The fast path: the lower triangle of `T T^T` only, eight pairs at a time with no
/// horizontal sums. Each sample's `T` is first transposed into a `[D, F]` scratch (padded to
/// a multiple of 8 features), so the products of row `i` with rows `j .. j + 8` are eight
/// lanes: `acc[l] += T[i][c] * T^T[c][j + l]` over `c`. Compiled twice: with AVX2+FMA, picked
/// at run time, and for baseline x86-64 (where `mul_add` would be a libm call) with plain
/// multiply-adds.
pub fn dot_interaction(t: &[f32], out: &mut [f32], shape: DotShape) {
    shape.check(t, out);
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_avx512() {
        // SAFETY: AVX-512F is present; `shape.check` validated the slices.
        return unsafe { dot_avx512::forward(t, out, shape) };
    }
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::isa() >= crate::cpu::Isa::Avx2 {
        // SAFETY: `isa()` found AVX2 and FMA on this CPU; `shape.check` validated the slices.
        return unsafe { dot_interaction_avx2(t, out, shape) };
    }
    dot_interaction_body::<false>(t, out, shape)
}

/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_interaction_avx2(t: &[f32], out: &mut [f32], shape: DotShape) {
    dot_interaction_body::<true>(t, out, shape)
}

#[inline(always)]
fn dot_interaction_body<const FMA: bool>(t: &[f32], out: &mut [f32], shape: DotShape) {
    let DotShape {
        batch,
        features: f,
        dim,
        itself,
        t_stride,
        out_stride,
    } = shape;
    let madd = |x: f32, y: f32, acc: f32| if FMA { x.mul_add(y, acc) } else { x * y + acc };
    let extra = usize::from(itself);
    let fp = f.div_ceil(8) * 8;
    let mut tt = vec![0.0f32; dim * fp];
    for b in 0..batch {
        let tb = &t[b * t_stride..b * t_stride + f * dim];
        for (j, row) in tb.chunks_exact(dim).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                tt[c * fp + j] = v;
            }
        }
        let ob = &mut out[b * out_stride..];
        let mut p = 0;
        for i in 0..f {
            let ti = &tb[i * dim..i * dim + dim];
            let n = i + extra;
            for j0 in (0..n).step_by(8) {
                let mut acc = [0.0f32; 8];
                for (c, &x) in ti.iter().enumerate() {
                    let col: &[f32; 8] = tt[c * fp + j0..c * fp + j0 + 8]
                        .try_into()
                        .expect("8 lanes");
                    for l in 0..8 {
                        acc[l] = madd(x, col[l], acc[l]);
                    }
                }
                let w = (n - j0).min(8);
                ob[p + j0..p + j0 + w].copy_from_slice(&acc[..w]);
            }
            p += n;
        }
    }
}

/// The scalar reference (f64 accumulation): builds the full `Z` and gathers with the
/// reference DLRM's index lists, exactly as written in the contract.
pub fn dot_interaction_ref(t: &[f32], out: &mut [f32], shape: DotShape) {
    shape.check(t, out);
    let DotShape {
        batch,
        features: f,
        dim,
        itself,
        t_stride,
        out_stride,
    } = shape;
    let off = usize::from(itself);
    let li: Vec<usize> = (0..f).flat_map(|i| (0..i + off).map(move |_| i)).collect();
    let lj: Vec<usize> = (0..f).flat_map(|i| 0..i + off).collect();
    for b in 0..batch {
        let tb = &t[b * t_stride..];
        let mut z = vec![0.0f64; f * f];
        for i in 0..f {
            for j in 0..f {
                z[i * f + j] = (0..dim)
                    .map(|c| tb[i * dim + c] as f64 * tb[j * dim + c] as f64)
                    .sum();
            }
        }
        for (p, (&i, &j)) in li.iter().zip(&lj).enumerate() {
            out[b * out_stride + p] = z[i * f + j] as f32;
        }
    }
}

/// The backward of [`dot_interaction`]: from `g`, the gradients of the pair outputs (laid out
/// as `out`: `g[b * out_stride + p]`), writes each sample's feature gradients
/// `dt[b * t_stride ..][.. F * D]` (overwritten; the stride padding is left alone):
///
/// ```text
/// dT_i = sum over pairs p = (i, j), i != j, of g_p T_j  +  sum over p = (j, i) of g_p T_j
///        + 2 g_p T_i for the pair (i, i) (itself = true)
/// ```
///
/// Each pair touches two rows, so the fast path is the same loop compiled with AVX2+FMA
/// (picked at run time): the rows of one sample stay in L1 and the D-wide updates vectorize.
pub fn dot_interaction_backward(t: &[f32], g: &[f32], dt: &mut [f32], shape: DotShape) {
    shape.check(t, g);
    shape.check(dt, g);
    #[cfg(target_arch = "x86_64")]
    if shape.dim.is_multiple_of(16) && crate::cpu::has_avx512() {
        // SAFETY: AVX-512F is present, D is a multiple of 16; `shape.check` validated the
        // slices.
        return unsafe { dot_avx512::backward(t, g, dt, shape) };
    }
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::isa() >= crate::cpu::Isa::Avx2 {
        // SAFETY: `isa()` found AVX2 and FMA on this CPU; `shape.check` validated the slices.
        return unsafe { dot_backward_avx2(t, g, dt, shape) };
    }
    dot_backward_body::<false>(t, g, dt, shape)
}

/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_backward_avx2(t: &[f32], g: &[f32], dt: &mut [f32], shape: DotShape) {
    dot_backward_body::<true>(t, g, dt, shape)
}

/// Row `i`'s pairs `(i, j)`, `j < i`, column block by column block: row `i`'s gradient block
/// stays in registers across `j` (8 lanes at a time), row `j`'s is updated in place.
#[inline(always)]
fn dot_backward_body<const FMA: bool>(t: &[f32], g: &[f32], dt: &mut [f32], shape: DotShape) {
    let DotShape {
        batch,
        features: f,
        dim: d,
        itself,
        t_stride,
        out_stride,
    } = shape;
    let madd = |x: f32, y: f32, acc: f32| if FMA { x.mul_add(y, acc) } else { x * y + acc };
    let d8 = d / 8 * 8;
    for b in 0..batch {
        let tb = &t[b * t_stride..b * t_stride + f * d];
        let gb = &g[b * out_stride..];
        let db = &mut dt[b * t_stride..b * t_stride + f * d];
        db.fill(0.0);
        for i in 0..f {
            // pairs before row i: (r, 0..r) [and (r, r)] for every r < i
            let p0 = pair_count(i, itself);
            let gi = &gb[p0..p0 + i];
            let (lo, hi) = db.split_at_mut(i * d);
            let di = &mut hi[..d];
            let ti = &tb[i * d..i * d + d];
            for c0 in (0..d8).step_by(8) {
                let ti8: [f32; 8] = ti[c0..c0 + 8].try_into().expect("8 columns");
                let mut acc: [f32; 8] = di[c0..c0 + 8].try_into().expect("8 columns");
                for (j, &gp) in gi.iter().enumerate() {
                    let tj = &tb[j * d + c0..j * d + c0 + 8];
                    let dj = &mut lo[j * d + c0..j * d + c0 + 8];
                    for l in 0..8 {
                        acc[l] = madd(gp, tj[l], acc[l]);
                        dj[l] = madd(gp, ti8[l], dj[l]);
                    }
                }
                di[c0..c0 + 8].copy_from_slice(&acc);
            }
            for c in d8..d {
                for (j, &gp) in gi.iter().enumerate() {
                    di[c] = madd(gp, tb[j * d + c], di[c]);
                    lo[j * d + c] = madd(gp, ti[c], lo[j * d + c]);
                }
            }
            if itself {
                let g2 = 2.0 * gb[p0 + i];
                for c in 0..d {
                    di[c] = madd(g2, ti[c], di[c]);
                }
            }
        }
    }
}

/// The AVX-512 paths: 16 lanes, intrinsics with explicit masks for the ragged ends, no
/// bounds checks in the inner loops (the callers' `shape.check` bounds every access).
#[cfg(target_arch = "x86_64")]
mod dot_avx512 {
    use std::arch::x86_64::*;

    use super::{DotShape, pair_count};

    /// Lanes `0 .. n` (n <= 16).
    #[inline(always)]
    fn lanes(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// The transpose of a 16 x 16 tile held as 16 row vectors: column `q` comes back as
    /// vector `q`. Four rounds of in-lane unpacks and 128-bit lane shuffles.
    #[inline(always)]
    fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        // SAFETY: register-only shuffles; AVX-512F is enabled in every caller.
        unsafe {
            // per 128-bit lane L: t[2i] = rows 2i, 2i+1 interleaved at columns 4L, 4L+1; t[2i+1]
            // at columns 4L+2, 4L+3
            let t: [__m512; 16] = std::array::from_fn(|k| {
                let (a, b) = (r[k & !1], r[k | 1]);
                if k % 2 == 0 {
                    _mm512_unpacklo_ps(a, b)
                } else {
                    _mm512_unpackhi_ps(a, b)
                }
            });
            // u[4g + q], lane L: column 4L + q of rows 4g .. 4g + 4
            let u: [__m512; 16] = std::array::from_fn(|k| {
                let (g, q) = (k / 4, k % 4);
                let (a, b) = (
                    _mm512_castps_pd(t[4 * g + q / 2]),
                    _mm512_castps_pd(t[4 * g + 2 + q / 2]),
                );
                _mm512_castpd_ps(if q % 2 == 0 {
                    _mm512_unpacklo_pd(a, b)
                } else {
                    _mm512_unpackhi_pd(a, b)
                })
            });
            // v[q] = [col q, col 8+q] of rows 0-3, then of rows 4-7; v[4+q]: cols 4+q, 12+q;
            // v[8..16]: the same for rows 8-15
            let v: [__m512; 16] = std::array::from_fn(|k| {
                let (h, q) = (k / 4, k % 4);
                let (a, b) = (u[(h / 2) * 8 + q], u[(h / 2) * 8 + 4 + q]);
                if h % 2 == 0 {
                    _mm512_shuffle_f32x4::<0x88>(a, b)
                } else {
                    _mm512_shuffle_f32x4::<0xdd>(a, b)
                }
            });
            std::array::from_fn(|c| {
                let q = c % 4;
                match c / 4 {
                    0 => _mm512_shuffle_f32x4::<0x88>(v[q], v[8 + q]),
                    1 => _mm512_shuffle_f32x4::<0x88>(v[4 + q], v[12 + q]),
                    2 => _mm512_shuffle_f32x4::<0xdd>(v[q], v[8 + q]),
                    _ => _mm512_shuffle_f32x4::<0xdd>(v[4 + q], v[12 + q]),
                }
            })
        }
    }

    /// Four rows `i0 ..` of `Z` against columns `j0 .. j0 + 16` (and `j0 + 16 ..` when `TWO`):
    /// each `T^T` load feeds four multiply-adds, eight independent chains with `TWO`. Rows past
    /// `f` repeat row `f - 1` (computed, not stored); only each row's own pairs are stored.
    ///
    /// # Safety
    /// AVX-512F; `tb` a sample's `f * d` features, `tt` its `[d, fp]` transpose with
    /// `j0 + 16 (* 2 with TWO) <= fp`, `ob` its outputs.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows4<const TWO: bool>(
        tb: *const f32,
        tt: *const f32,
        ob: *mut f32,
        f: usize,
        d: usize,
        fp: usize,
        i0: usize,
        j0: usize,
        itself: bool,
    ) {
        // SAFETY: by the contract; rows are clamped below f, columns below fp, stores masked
        // to each row's pairs.
        unsafe {
            let extra = usize::from(itself);
            let rows: [*const f32; 4] = std::array::from_fn(|r| tb.add((i0 + r).min(f - 1) * d));
            let z = _mm512_setzero_ps();
            let (mut a, mut b) = ([z; 4], [z; 4]);
            for c in 0..d {
                let v0 = _mm512_loadu_ps(tt.add(c * fp + j0));
                let v1 = if TWO {
                    _mm512_loadu_ps(tt.add(c * fp + j0 + 16))
                } else {
                    z
                };
                for r in 0..4 {
                    let x = _mm512_set1_ps(*rows[r].add(c));
                    a[r] = _mm512_fmadd_ps(x, v0, a[r]);
                    if TWO {
                        b[r] = _mm512_fmadd_ps(x, v1, b[r]);
                    }
                }
            }
            for r in 0..4 {
                let i = i0 + r;
                let n = i + extra;
                if i >= f || j0 >= n {
                    continue;
                }
                // row i's pairs follow those of rows 0 .. i
                let o = ob.add(pair_count(i, itself) + j0);
                _mm512_mask_storeu_ps(o, lanes((n - j0).min(16)), a[r]);
                if TWO && j0 + 16 < n {
                    _mm512_mask_storeu_ps(o.add(16), lanes((n - j0 - 16).min(16)), b[r]);
                }
            }
        }
    }

    /// [`super::dot_interaction`]'s lower triangle, sixteen pairs at a time: each sample's `T`
    /// is transposed into a `[D, F]` scratch padded to 32-feature blocks (16 x 16 tiles through
    /// registers when D is a multiple of 16), and four rows `i` at a time get their products
    /// with rows `j0 .. j0 + 16` (and `+ 32`) as vectors `sum_c T[i][c] * T^T[c][j0 ..]`
    /// ([`rows4`]); row `i`'s pairs, contiguous in `out`, are stored with a mask.
    ///
    /// # Safety
    /// AVX-512F present; `shape.check(t, out)` passed.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn forward(t: &[f32], out: &mut [f32], shape: DotShape) {
        let DotShape {
            batch,
            features: f,
            dim: d,
            itself,
            t_stride,
            out_stride,
        } = shape;
        if f == 0 {
            return;
        }
        let extra = usize::from(itself);
        let fp = f.div_ceil(32) * 32;
        let mut tt = vec![0.0f32; d * fp];
        let tt = tt.as_mut_ptr();
        for b in 0..batch {
            // SAFETY: (whole loop body) by `shape.check`, sample b's `f * d` features start at
            // `b * t_stride` inside `t` and its `pair_count` outputs at `b * out_stride` inside
            // `out`; `tt` is `[d, fp]` with fp a multiple of 32, so both blocks of a pair
            // starting at a multiple of 32 are inside a row; tiles read rows below f only.
            unsafe {
                let tb = t.as_ptr().add(b * t_stride);
                if d.is_multiple_of(16) {
                    // 16 x 16 tiles through registers (the padding rows stay zero)
                    for j0 in (0..f).step_by(16) {
                        for c0 in (0..d).step_by(16) {
                            let rows: [__m512; 16] = std::array::from_fn(|r| {
                                if j0 + r < f {
                                    _mm512_loadu_ps(tb.add((j0 + r) * d + c0))
                                } else {
                                    _mm512_setzero_ps()
                                }
                            });
                            for (q, col) in transpose16(rows).iter().enumerate() {
                                _mm512_storeu_ps(tt.add((c0 + q) * fp + j0), *col);
                            }
                        }
                    }
                } else {
                    for j in 0..f {
                        for c in 0..d {
                            *tt.add(c * fp + j) = *tb.add(j * d + c);
                        }
                    }
                }
                let ob = out.as_mut_ptr().add(b * out_stride);
                for i0 in (0..f).step_by(4) {
                    let nmax = ((i0 + 3).min(f - 1) + extra).max(1);
                    let mut j0 = 0;
                    while j0 < nmax {
                        if j0 + 16 < nmax {
                            rows4::<true>(tb, tt, ob, f, d, fp, i0, j0, itself);
                        } else {
                            rows4::<false>(tb, tt, ob, f, d, fp, i0, j0, itself);
                        }
                        j0 += 32;
                    }
                }
            }
        }
    }

    /// [`super::dot_interaction_backward`] for D a multiple of 16, as `dT = G T` with `G` the pair gradients made symmetric in a `[F, F]`
    /// scratch (the diagonal `2 g_ii` with `itself`): four rows of `dT` at a time, each `T_j`
    /// load feeding four multiply-adds, and no read-modify-write of other rows.
    ///
    /// # Safety
    /// AVX-512F present; `d % 16 == 0`; `shape.check(t, g)` and `shape.check(dt, g)` passed.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn backward(t: &[f32], g: &[f32], dt: &mut [f32], shape: DotShape) {
        let DotShape {
            batch,
            features: f,
            dim: d,
            itself,
            t_stride,
            out_stride,
        } = shape;
        let mut gs = vec![0.0f32; f * f];
        for b in 0..batch {
            // SAFETY: (whole loop body) by the checks, sample b's `f * d` features lie at
            // `b * t_stride` in `t` and `dt`, its pair gradients at `b * out_stride` in `g`
            // (indices below `pair_count(f, itself)`); `c0 + 16 <= d` as d is a multiple of
            // 16; `gs` is `[f, f]` indexed below f.
            unsafe {
                let tb = t.as_ptr().add(b * t_stride);
                let gb = g.as_ptr().add(b * out_stride);
                let db = dt.as_mut_ptr().add(b * t_stride);
                let gsp = gs.as_mut_ptr();
                let mut p = 0;
                for i in 0..f {
                    for j in 0..i {
                        let v = *gb.add(p + j);
                        *gsp.add(i * f + j) = v;
                        *gsp.add(j * f + i) = v;
                    }
                    p += i;
                    *gsp.add(i * f + i) = if itself {
                        p += 1;
                        2.0 * *gb.add(p - 1)
                    } else {
                        0.0
                    };
                }
                for i0 in (0..f).step_by(4) {
                    let gr: [*const f32; 4] =
                        std::array::from_fn(|r| gsp.add((i0 + r).min(f - 1) * f).cast_const());
                    for c0 in (0..d).step_by(16) {
                        let mut acc = [_mm512_setzero_ps(); 4];
                        for j in 0..f {
                            let tj = _mm512_loadu_ps(tb.add(j * d + c0));
                            for r in 0..4 {
                                acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(*gr[r].add(j)), tj, acc[r]);
                            }
                        }
                        for (r, a) in acc.iter().enumerate().take(f - i0) {
                            _mm512_storeu_ps(db.add((i0 + r) * d + c0), *a);
                        }
                    }
                }
            }
        }
    }
}

/// The scalar reference of [`dot_interaction_backward`] (f64 accumulation), from the pair
/// lists as in [`dot_interaction_ref`]: `dZ` scattered back to a full `[F, F]` gradient, then
/// `dT = (dZ + dZ^T) T`.
pub fn dot_interaction_backward_ref(t: &[f32], g: &[f32], dt: &mut [f32], shape: DotShape) {
    shape.check(t, g);
    shape.check(dt, g);
    let DotShape {
        batch,
        features: f,
        dim,
        itself,
        t_stride,
        out_stride,
    } = shape;
    let off = usize::from(itself);
    let pairs: Vec<(usize, usize)> = (0..f)
        .flat_map(|i| (0..i + off).map(move |j| (i, j)))
        .collect();
    for b in 0..batch {
        let tb = &t[b * t_stride..];
        let mut dz = vec![0.0f64; f * f];
        for (p, &(i, j)) in pairs.iter().enumerate() {
            dz[i * f + j] += g[b * out_stride + p] as f64;
        }
        for i in 0..f {
            for c in 0..dim {
                let s: f64 = (0..f)
                    .map(|j| (dz[i * f + j] + dz[j * f + i]) * tb[j * dim + c] as f64)
                    .sum();
                dt[b * t_stride + i * dim + c] = s as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    /// A shape with padded strides and features of small varied values.
    fn case(
        batch: usize,
        features: usize,
        dim: usize,
        itself: bool,
        pad_t: usize,
        pad_o: usize,
    ) -> (DotShape, Vec<f32>) {
        let shape = DotShape {
            batch,
            features,
            dim,
            itself,
            t_stride: features * dim + pad_t,
            out_stride: pair_count(features, itself) + pad_o,
        };
        let t = (0..batch * shape.t_stride)
            .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
            .collect();
        (shape, t)
    }

    /// The fast forward against the reference on `t`: within 1e-5, padding untouched.
    fn forward_close(shape: DotShape, t: &[f32]) -> Result<(), TestCaseError> {
        let mut want = vec![-9.0; shape.batch * shape.out_stride];
        let mut got = want.clone();
        dot_interaction_ref(t, &mut want, shape);
        dot_interaction(t, &mut got, shape);
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            prop_assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "forward at {}: {} vs {}",
                k,
                g,
                w
            );
        }
        Ok(())
    }

    /// The fast backward against the reference on `t` and fixed pair gradients: within 1e-4,
    /// the stride padding of `dt` untouched.
    fn backward_close(shape: DotShape, t: &[f32]) -> Result<(), TestCaseError> {
        let g: Vec<f32> = (0..shape.batch * shape.out_stride)
            .map(|i| ((i * 7) % 13) as f32 / 6.0 - 1.0)
            .collect();
        let mut want = vec![-9.0; shape.batch * shape.t_stride];
        let mut got = want.clone();
        dot_interaction_backward_ref(t, &g, &mut want, shape);
        dot_interaction_backward(t, &g, &mut got, shape);
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            if k % shape.t_stride >= shape.features * shape.dim {
                prop_assert_eq!(*g, -9.0, "padding written at {}", k);
            } else {
                prop_assert!(
                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "backward at {}: {} vs {}",
                    k,
                    g,
                    w
                );
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn fast_matches_reference(batch in 0usize..6, features in 1usize..30, dim in 1usize..40,
                                  itself: bool, pad_t in 0usize..4, pad_o in 0usize..4) {
            let (shape, t) = case(batch, features, dim, itself, pad_t, pad_o);
            forward_close(shape, &t)?;
        }

        #[test]
        fn backward_matches_reference(batch in 0usize..5, features in 1usize..30, dim in 1usize..40,
                                      itself: bool, pad_t in 0usize..4, pad_o in 0usize..4) {
            let (shape, t) = case(batch, features, dim, itself, pad_t, pad_o);
            backward_close(shape, &t)?;
        }

        /// D a multiple of 16 and up to 64 features: the AVX-512 paths' shapes (their ragged
        /// ends are the feature counts), forward and backward.
        #[test]
        fn wide_rows_match_reference(batch in 1usize..4, features in 1usize..64, dim16 in 1usize..4,
                                     itself: bool, pad_t in 0usize..3, pad_o in 0usize..3) {
            let (shape, t) = case(batch, features, dim16 * 16, itself, pad_t, pad_o);
            forward_close(shape, &t)?;
            backward_close(shape, &t)?;
        }
    }

    #[test]
    fn backward_of_a_known_sample() {
        // F = 2, D = 1, T = [2, 3]; pairs (1,0) [, (0,0), (1,1) with itself]
        let t = [2.0, 3.0];
        let s = DotShape {
            batch: 1,
            features: 2,
            dim: 1,
            itself: false,
            t_stride: 2,
            out_stride: 1,
        };
        let mut dt = [0.0; 2];
        dot_interaction_backward(&t, &[5.0], &mut dt, s);
        assert_eq!(dt, [15.0, 10.0]); // d(t0 t1)/dt0 = t1, /dt1 = t0
        // itself: pairs (0,0) (1,0) (1,1), Z = t0^2, t0 t1, t1^2
        let s = DotShape {
            itself: true,
            out_stride: 3,
            ..s
        };
        dot_interaction_backward(&t, &[1.0, 5.0, 2.0], &mut dt, s);
        assert_eq!(dt, [2.0 * 2.0 + 15.0, 10.0 + 2.0 * 2.0 * 3.0]);
    }

    #[test]
    fn pair_order_is_row_major_lower_triangle() {
        // F = 3, D = 1: T = [1, 2, 3] -> Z[i][j] = t_i t_j
        let t = [1.0, 2.0, 3.0];
        let mut out = [0.0; 6];
        let s = DotShape {
            batch: 1,
            features: 3,
            dim: 1,
            itself: false,
            t_stride: 3,
            out_stride: 3,
        };
        dot_interaction(&t, &mut out, s);
        assert_eq!(&out[..3], &[2.0, 3.0, 6.0]); // (1,0) (2,0) (2,1)
        let s = DotShape {
            itself: true,
            out_stride: 6,
            ..s
        };
        dot_interaction(&t, &mut out, s);
        assert_eq!(out, [1.0, 2.0, 4.0, 3.0, 6.0, 9.0]); // (0,0) (1,0) (1,1) (2,0) (2,1) (2,2)
    }
}
