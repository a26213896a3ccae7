//! bf16 for the GEMM: the rounding, the layouts of bf16 weights, and the scalar reference.
//!
//! A bf16 value is the top 16 bits of an f32 (sign, 8 exponent bits, 7 mantissa bits), so
//! widening is exact (`bits << 16`) and rounding drops 16 bits. A product of two bf16 values
//! has at most 16 significant bits and is exact in f32: the kernels differ from
//! [`linear_bf16_ref`] only in how they round the sums.

use crate::mlp::{Activation, LinearShape, linear_ref};

/// f32 to bf16 bits, rounding to nearest, ties to even, as `torch.Tensor.bfloat16()` does
/// (c10's `round_to_nearest_even`):
///
/// ```text
/// NaN      -> 0x7FC0 (the quiet NaN; sign and payload are not kept)
/// else     -> (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
/// ```
///
/// so values past the largest bf16 (3.3895e38) by half an ulp or more round to infinity,
/// infinities stay, and subnormals round like normals (nothing is flushed to zero).
///
/// ```
/// use dlrs_kernels::gemm::bf16::{bf16_to_f32, f32_to_bf16};
/// assert_eq!(f32_to_bf16(1.0), 0x3F80);
/// assert_eq!(bf16_to_f32(f32_to_bf16(1.0 + 1.0 / 256.0)), 1.0); // a tie: to even
/// ```
#[inline(always)]
pub fn f32_to_bf16(v: f32) -> u16 {
    if v.is_nan() {
        return 0x7FC0;
    }
    let u = v.to_bits();
    // no overflow: the largest non-NaN pattern is 0xFF80_0000 (-inf)
    ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) as u16
}

/// bf16 bits to f32 (exact).
#[inline(always)]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// `v` rounded to bf16 and back: the f32 a bf16 kernel computes with.
#[inline(always)]
pub fn round(v: f32) -> f32 {
    bf16_to_f32(f32_to_bf16(v))
}

/// `dst[i] = round(src[i])` for `i < src.len()`. `#[inline(always)]`: the kernels
/// instantiate it where their instruction set is enabled, for the compiler to vectorize.
#[inline(always)]
pub(super) fn round_f32(src: &[f32], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = round(*s);
    }
}

/// The weight `[n, k]` in bf16 bits.
pub(super) fn to_bits(w: &[f32]) -> Vec<u16> {
    w.iter().map(|v| f32_to_bf16(*v)).collect()
}

/// Inputs rounded up to pairs: the length of a packed row of `k` bf16 inputs.
#[inline]
pub(super) fn kpad(k: usize) -> usize {
    k.next_multiple_of(2)
}

/// Packs `w: [n, k]` (bf16 bits, row-major) into panels of `nr` columns with k in pairs, so
/// that each 32-bit lane holds two consecutive inputs of one column (`kp = k.div_ceil(2)`):
///
/// ```text
/// dst[p * kp * 2 nr + (kk / 2) * 2 nr + 2 c + kk % 2] = w[(p * nr + c) * k + kk]
/// ```
///
/// and zero where `p * nr + c >= n` or `kk >= k` (the pad of an odd `k`).
///
/// # Panics
/// If `dst` is shorter than `n.div_ceil(nr) * nr * kpad(k)`.
pub(super) fn panels(w: &[u16], n: usize, k: usize, nr: usize, dst: &mut [u16]) {
    let panels = n.div_ceil(nr);
    let len = nr * kpad(k);
    let dst = &mut dst[..panels * len];
    dst.fill(0);
    if len == 0 {
        return;
    }
    for (p, panel) in dst.chunks_exact_mut(len).enumerate() {
        for c in 0..nr.min(n - p * nr) {
            let row = &w[(p * nr + c) * k..(p * nr + c + 1) * k];
            for (kk, v) in row.iter().enumerate() {
                panel[(kk / 2) * 2 * nr + 2 * c + kk % 2] = *v;
            }
        }
    }
}

/// The inverse of [`panels`]: `w: [n, k]` in bf16 bits.
pub(super) fn unpanel(src: &[u16], n: usize, k: usize, nr: usize) -> Vec<u16> {
    let mut w = vec![0; n * k];
    for j in 0..n {
        let (p, c) = (j / nr, j % nr);
        for kk in 0..k {
            w[j * k + kk] = src[p * nr * kpad(k) + (kk / 2) * 2 * nr + 2 * c + kk % 2];
        }
    }
    w
}

/// The rows layout of a narrow layer: `dst[j * kpad(k) + kk] = w[j * k + kk]`, zero at
/// `kk = k` when `k` is odd.
pub(super) fn rows(w: &[u16], n: usize, k: usize, dst: &mut [u16]) {
    let ld = kpad(k);
    let dst = &mut dst[..n * ld];
    dst.fill(0);
    for j in 0..n {
        dst[j * ld..j * ld + k].copy_from_slice(&w[j * k..j * k + k]);
    }
}

/// The inverse of [`rows`].
pub(super) fn unrows(src: &[u16], n: usize, k: usize) -> Vec<u16> {
    let ld = kpad(k);
    (0..n)
        .flat_map(|j| src[j * ld..j * ld + k].iter().copied())
        .collect()
}

/// The reference of a layer over bf16 weights: [`crate::mlp::linear_ref`] (products and
/// sums in f64, the bias added in f64, one rounding to f32, the activation in f32) on `x`
/// and `w` rounded to bf16 by [`f32_to_bf16`]:
///
/// ```text
/// s = bias[j] + sum_kk f64(round(x[i * ldx + kk])) * f64(round(w[j * k + kk]))   (in f64)
/// y[i * ldy + j] = act(f32(s))
/// ```
///
/// It allocates copies of `x` and `w`: a test oracle, not a kernel.
///
/// # Panics
/// As [`crate::mlp::linear_ref`].
pub fn linear_bf16_ref(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    y: &mut [f32],
    shape: LinearShape,
    act: Activation,
) {
    let xr: Vec<f32> = x.iter().map(|v| round(*v)).collect();
    let wr: Vec<f32> = w.iter().map(|v| round(*v)).collect();
    linear_ref(&xr, &wr, bias, y, shape, act);
}
