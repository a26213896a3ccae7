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
    if itself { f * (f + 1) / 2 } else { f * f.saturating_sub(1) / 2 }
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
        assert!(s.t_stride >= s.features * s.dim && s.out_stride >= pairs, "strides too small: {s:?}");
        if s.batch > 0 {
            assert!(t.len() >= (s.batch - 1) * s.t_stride + s.features * s.dim, "t too short for {s:?}");
            assert!(out.len() >= (s.batch - 1) * s.out_stride + pairs, "out too short for {s:?}");
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
    if crate::cpu::isa() == crate::cpu::Isa::Avx2 {
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
    let DotShape { batch, features: f, dim, itself, t_stride, out_stride } = shape;
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
                    let col: &[f32; 8] = tt[c * fp + j0..c * fp + j0 + 8].try_into().expect("8 lanes");
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
    let DotShape { batch, features: f, dim, itself, t_stride, out_stride } = shape;
    let off = usize::from(itself);
    let li: Vec<usize> = (0..f).flat_map(|i| (0..i + off).map(move |_| i)).collect();
    let lj: Vec<usize> = (0..f).flat_map(|i| 0..i + off).collect();
    for b in 0..batch {
        let tb = &t[b * t_stride..];
        let mut z = vec![0.0f64; f * f];
        for i in 0..f {
            for j in 0..f {
                z[i * f + j] = (0..dim).map(|c| tb[i * dim + c] as f64 * tb[j * dim + c] as f64).sum();
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
    if shape.dim % 16 == 0 && crate::cpu::has_avx512() {
        // SAFETY: AVX-512F is present, D is a multiple of 16; `shape.check` validated the
        // slices.
        return unsafe { dot_avx512::backward(t, g, dt, shape) };
    }
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::isa() == crate::cpu::Isa::Avx2 {
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
    let DotShape { batch, features: f, dim: d, itself, t_stride, out_stride } = shape;
    let madd = |x: f32, y: f32, acc: f32| if FMA { x.mul_add(y, acc) } else { x * y + acc };
    let d8 = d / 8 * 8;
    for b in 0..batch {
        let tb = &t[b * t_stride..b * t_stride + f * d];
        let gb = &g[b * out_stride..];
        let db = &mut dt[b * t_stride..b * t_stride + f * d];
        db.fill(0.0);
        for i in 0..f {
            // pairs before row i: (r, 0..r) [and (r, r)] for every r < i
            let p0 = if itself { i * (i + 1) / 2 } else { i * i.saturating_sub(1) / 2 };
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

    use super::DotShape;

    /// Lanes `0 .. n` (n <= 16).
    #[inline(always)]
    fn lanes(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// [`super::dot_interaction`]'s lower triangle, sixteen pairs at a time: each sample's `T`
    /// is transposed into a `[D, F]` scratch padded to 16-feature blocks, row `i`'s products
    /// with rows `j0 .. j0 + 16` are one vector `sum_c T[i][c] * T^T[c][j0 ..]`, and row `i`'s
    /// pairs, contiguous in `out`, are stored with a mask.
    ///
    /// # Safety
    /// AVX-512F present; `shape.check(t, out)` passed.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn forward(t: &[f32], out: &mut [f32], shape: DotShape) {
        let DotShape { batch, features: f, dim: d, itself, t_stride, out_stride } = shape;
        let extra = usize::from(itself);
        let fp = f.div_ceil(16) * 16;
        let mut tt = vec![0.0f32; d * fp];
        let tt = tt.as_mut_ptr();
        for b in 0..batch {
            // SAFETY (whole loop body): by `shape.check`, sample b's `f * d` features start at
            // `b * t_stride` inside `t` and its `pair_count` outputs at `b * out_stride` inside
            // `out`; `tt` holds `d * fp` floats and is indexed by `c < d`, `j < fp`; the
            // stores write lanes `j0 .. n` of row i's `n` pairs only.
            unsafe {
                let tb = t.as_ptr().add(b * t_stride);
                for j in 0..f {
                    for c in 0..d {
                        *tt.add(c * fp + j) = *tb.add(j * d + c);
                    }
                }
                let ob = out.as_mut_ptr().add(b * out_stride);
                let mut p = 0;
                for i in 0..f {
                    let n = i + extra;
                    let ti = tb.add(i * d);
                    let mut j0 = 0;
                    while j0 < n {
                        // up to two column blocks share each broadcast; two chains over c
                        // (even, odd) per block, so the FMAs' latency overlaps
                        let two = j0 + 16 < n;
                        let col = tt.add(j0);
                        let z = _mm512_setzero_ps();
                        let (mut a0, mut a1, mut b0, mut b1) = (z, z, z, z);
                        let mut c = 0;
                        while c < d {
                            let odd = c + 1 < d;
                            let x0 = _mm512_set1_ps(*ti.add(c));
                            a0 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(col.add(c * fp)), a0);
                            if two {
                                b0 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(col.add(c * fp + 16)), b0);
                            }
                            if odd {
                                let x1 = _mm512_set1_ps(*ti.add(c + 1));
                                a1 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(col.add((c + 1) * fp)), a1);
                                if two {
                                    b1 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(col.add((c + 1) * fp + 16)), b1);
                                }
                            }
                            c += 2;
                        }
                        _mm512_mask_storeu_ps(ob.add(p + j0), lanes((n - j0).min(16)), _mm512_add_ps(a0, a1));
                        if two {
                            _mm512_mask_storeu_ps(ob.add(p + j0 + 16), lanes((n - j0 - 16).min(16)), _mm512_add_ps(b0, b1));
                        }
                        j0 += 32;
                    }
                    p += n;
                }
            }
        }
    }

    /// [`super::dot_interaction_backward`] for D a multiple of 16: row `i`'s gradient stays in
    /// a register across its pairs `(i, j)`, row `j`'s is updated in place (in L1).
    ///
    /// # Safety
    /// AVX-512F present; `d % 16 == 0`; `shape.check(t, g)` and `shape.check(dt, g)` passed.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn backward(t: &[f32], g: &[f32], dt: &mut [f32], shape: DotShape) {
        let DotShape { batch, features: f, dim: d, itself, t_stride, out_stride } = shape;
        for b in 0..batch {
            // SAFETY (whole loop body): by the checks, sample b's `f * d` features lie at
            // `b * t_stride` in `t` and `dt`, its pair gradients at `b * out_stride` in `g`;
            // `c0 + 16 <= d` as d is a multiple of 16; pair indices stay below
            // `pair_count(f, itself)`.
            unsafe {
                let tb = t.as_ptr().add(b * t_stride);
                let gb = g.as_ptr().add(b * out_stride);
                let db = dt.as_mut_ptr().add(b * t_stride);
                std::ptr::write_bytes(db, 0, f * d);
                for i in 0..f {
                    let p0 = if itself { i * (i + 1) / 2 } else { i * i.saturating_sub(1) / 2 };
                    for c0 in (0..d).step_by(16) {
                        let ti = _mm512_loadu_ps(tb.add(i * d + c0));
                        // two chains over j (even, odd), so the FMAs' latency overlaps
                        let (mut a0, mut a1) = (_mm512_loadu_ps(db.add(i * d + c0)), _mm512_setzero_ps());
                        let mut j = 0;
                        while j + 2 <= i {
                            let (g0, g1) = (_mm512_set1_ps(*gb.add(p0 + j)), _mm512_set1_ps(*gb.add(p0 + j + 1)));
                            let (d0, d1) = (db.add(j * d + c0), db.add((j + 1) * d + c0));
                            a0 = _mm512_fmadd_ps(g0, _mm512_loadu_ps(tb.add(j * d + c0)), a0);
                            a1 = _mm512_fmadd_ps(g1, _mm512_loadu_ps(tb.add((j + 1) * d + c0)), a1);
                            _mm512_storeu_ps(d0, _mm512_fmadd_ps(g0, ti, _mm512_loadu_ps(d0)));
                            _mm512_storeu_ps(d1, _mm512_fmadd_ps(g1, ti, _mm512_loadu_ps(d1)));
                            j += 2;
                        }
                        if j < i {
                            let g0 = _mm512_set1_ps(*gb.add(p0 + j));
                            let d0 = db.add(j * d + c0);
                            a0 = _mm512_fmadd_ps(g0, _mm512_loadu_ps(tb.add(j * d + c0)), a0);
                            _mm512_storeu_ps(d0, _mm512_fmadd_ps(g0, ti, _mm512_loadu_ps(d0)));
                        }
                        if itself {
                            let g2 = _mm512_set1_ps(2.0 * *gb.add(p0 + i));
                            a1 = _mm512_fmadd_ps(g2, ti, a1);
                        }
                        let sum = _mm512_add_ps(a0, a1);
                        _mm512_storeu_ps(db.add(i * d + c0), sum);
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
    let DotShape { batch, features: f, dim, itself, t_stride, out_stride } = shape;
    let off = usize::from(itself);
    let pairs: Vec<(usize, usize)> = (0..f).flat_map(|i| (0..i + off).map(move |j| (i, j))).collect();
    for b in 0..batch {
        let tb = &t[b * t_stride..];
        let mut dz = vec![0.0f64; f * f];
        for (p, &(i, j)) in pairs.iter().enumerate() {
            dz[i * f + j] += g[b * out_stride + p] as f64;
        }
        for i in 0..f {
            for c in 0..dim {
                let s: f64 = (0..f).map(|j| (dz[i * f + j] + dz[j * f + i]) * tb[j * dim + c] as f64).sum();
                dt[b * t_stride + i * dim + c] = s as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A shape with padded strides and features of small varied values.
    fn case(batch: usize, features: usize, dim: usize, itself: bool, pad_t: usize, pad_o: usize) -> (DotShape, Vec<f32>) {
        let shape = DotShape {
            batch,
            features,
            dim,
            itself,
            t_stride: features * dim + pad_t,
            out_stride: pair_count(features, itself) + pad_o,
        };
        let t = (0..batch * shape.t_stride).map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0).collect();
        (shape, t)
    }

    proptest! {
        #[test]
        fn fast_matches_reference(batch in 0usize..6, features in 1usize..30, dim in 1usize..40,
                                  itself: bool, pad_t in 0usize..4, pad_o in 0usize..4) {
            let (shape, t) = case(batch, features, dim, itself, pad_t, pad_o);
            let mut want = vec![-9.0; batch * shape.out_stride];
            let mut got = want.clone();
            dot_interaction_ref(&t, &mut want, shape);
            dot_interaction(&t, &mut got, shape);
            for (g, w) in got.iter().zip(&want) {
                prop_assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{} vs {}", g, w);
            }
        }
    }

    proptest! {
        #[test]
        fn backward_matches_reference(batch in 0usize..5, features in 1usize..30, dim in 1usize..40,
                                      itself: bool, pad_t in 0usize..4, pad_o in 0usize..4) {
            let (shape, t) = case(batch, features, dim, itself, pad_t, pad_o);
            let g: Vec<f32> = (0..batch * shape.out_stride).map(|i| ((i * 7) % 13) as f32 / 6.0 - 1.0).collect();
            let mut want = vec![-9.0; batch * shape.t_stride];
            let mut got = want.clone();
            dot_interaction_backward_ref(&t, &g, &mut want, shape);
            dot_interaction_backward(&t, &g, &mut got, shape);
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                if k % shape.t_stride >= features * dim {
                    prop_assert_eq!(*g, -9.0, "padding written at {}", k);
                } else {
                    prop_assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "at {}: {} vs {}", k, g, w);
                }
            }
        }
    }

    proptest! {
        /// D a multiple of 16 and up to 64 features: the AVX-512 paths' shapes (their ragged
        /// ends are the feature counts), forward and backward.
        #[test]
        fn wide_rows_match_reference(batch in 1usize..4, features in 1usize..64, dim16 in 1usize..4,
                                     itself: bool, pad_t in 0usize..3, pad_o in 0usize..3) {
            let (shape, t) = case(batch, features, dim16 * 16, itself, pad_t, pad_o);
            let mut want = vec![-9.0; batch * shape.out_stride];
            let mut got = want.clone();
            dot_interaction_ref(&t, &mut want, shape);
            dot_interaction(&t, &mut got, shape);
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                prop_assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "forward at {}: {} vs {}", k, g, w);
            }
            let g: Vec<f32> = (0..batch * shape.out_stride).map(|i| ((i * 7) % 13) as f32 / 6.0 - 1.0).collect();
            let mut want = vec![-9.0; batch * shape.t_stride];
            let mut got = want.clone();
            dot_interaction_backward_ref(&t, &g, &mut want, shape);
            dot_interaction_backward(&t, &g, &mut got, shape);
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                prop_assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "backward at {}: {} vs {}", k, g, w);
            }
        }
    }

    #[test]
    fn backward_of_a_known_sample() {
        // F = 2, D = 1, T = [2, 3]; pairs (1,0) [, (0,0), (1,1) with itself]
        let t = [2.0, 3.0];
        let s = DotShape { batch: 1, features: 2, dim: 1, itself: false, t_stride: 2, out_stride: 1 };
        let mut dt = [0.0; 2];
        dot_interaction_backward(&t, &[5.0], &mut dt, s);
        assert_eq!(dt, [15.0, 10.0]); // d(t0 t1)/dt0 = t1, /dt1 = t0
        // itself: pairs (0,0) (1,0) (1,1), Z = t0^2, t0 t1, t1^2
        let s = DotShape { itself: true, out_stride: 3, ..s };
        dot_interaction_backward(&t, &[1.0, 5.0, 2.0], &mut dt, s);
        assert_eq!(dt, [2.0 * 2.0 + 15.0, 10.0 + 2.0 * 2.0 * 3.0]);
    }

    #[test]
    fn pair_order_is_row_major_lower_triangle() {
        // F = 3, D = 1: T = [1, 2, 3] -> Z[i][j] = t_i t_j
        let t = [1.0, 2.0, 3.0];
        let mut out = [0.0; 6];
        let s = DotShape { batch: 1, features: 3, dim: 1, itself: false, t_stride: 3, out_stride: 3 };
        dot_interaction(&t, &mut out, s);
        assert_eq!(&out[..3], &[2.0, 3.0, 6.0]); // (1,0) (2,0) (2,1)
        let s = DotShape { itself: true, out_stride: 6, ..s };
        dot_interaction(&t, &mut out, s);
        assert_eq!(out, [1.0, 2.0, 4.0, 3.0, 6.0, 9.0]); // (0,0) (1,0) (1,1) (2,0) (2,1) (2,2)
    }
}
