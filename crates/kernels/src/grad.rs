//! Elementwise pieces of an MLP's backward pass: the ReLU's gradient mask and the bias
//! gradient (column sums of the output gradient), apart or in one pass.
//!
//! Both are memory-bound passes over `[m, n]` activations. The fast paths are the same loops
//! compiled with AVX-512F (picked at run time; the baseline x86-64 build vectorizes them with
//! 4-lane SSE only), and they sum in the reference's order, so results are bit-identical to
//! the `*_ref` versions.

/// `dz[i] = if a[i] > 0 { da[i] } else { 0 }` for `i < n`: the gradient through a ReLU whose
/// output was `a`.
///
/// # Panics
/// If a slice is shorter than `n`.
pub fn relu_backward(dz: &mut [f32], da: &[f32], a: &[f32], n: usize) {
    let (dz, da, a) = (&mut dz[..n], &da[..n], &a[..n]);
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_avx512() {
        // SAFETY: AVX-512F is present.
        return unsafe { relu_backward_avx512(dz, da, a) };
    }
    relu_backward_body(dz, da, a)
}

/// The scalar reference of [`relu_backward`].
pub fn relu_backward_ref(dz: &mut [f32], da: &[f32], a: &[f32], n: usize) {
    for i in 0..n {
        dz[i] = if a[i] > 0.0 { da[i] } else { 0.0 };
    }
}

#[inline(always)]
fn relu_backward_body(dz: &mut [f32], da: &[f32], a: &[f32]) {
    for ((dz, &da), &a) in dz.iter_mut().zip(da).zip(a) {
        *dz = if a > 0.0 { da } else { 0.0 };
    }
}

/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn relu_backward_avx512(dz: &mut [f32], da: &[f32], a: &[f32]) {
    relu_backward_body(dz, da, a)
}

/// [`relu_backward`] of `m` rows of `n = sums.len()` values, then [`column_sums`] of its
/// result into `sums`, in one pass over the rows (the layer below's bias gradient comes out
/// of its ReLU's mask without reading `dz` again). Bit-identical to the two calls.
///
/// # Panics
/// If a slice is shorter than `m * n`.
pub fn relu_backward_sums(
    dz: &mut [f32],
    da: &[f32],
    a: &[f32],
    m: usize,
    sums: &mut [f32],
    accumulate: bool,
) {
    let n = sums.len();
    let len = m * n;
    let (dz, da, a) = (&mut dz[..len], &da[..len], &a[..len]);
    if !accumulate {
        sums.fill(0.0);
    }
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_avx512() {
        // SAFETY: AVX-512F is present.
        return unsafe { relu_backward_sums_avx512(dz, da, a, m, sums) };
    }
    relu_backward_sums_body(dz, da, a, m, sums)
}

/// Row by row, streaming like [`relu_backward`]; the sums (one row's worth) stay in L1. (64
/// columns at a time down all rows, as [`column_sums_body`] does, was slower: three arrays
/// walked at a row stride.)
#[inline(always)]
fn relu_backward_sums_body(dz: &mut [f32], da: &[f32], a: &[f32], m: usize, sums: &mut [f32]) {
    let n = sums.len();
    for r in 0..m {
        let at = r * n;
        for (((s, o), &g), &x) in sums
            .iter_mut()
            .zip(&mut dz[at..at + n])
            .zip(&da[at..at + n])
            .zip(&a[at..at + n])
        {
            *o = if x > 0.0 { g } else { 0.0 };
            *s += *o;
        }
    }
}

/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn relu_backward_sums_avx512(
    dz: &mut [f32],
    da: &[f32],
    a: &[f32],
    m: usize,
    sums: &mut [f32],
) {
    relu_backward_sums_body(dz, da, a, m, sums)
}

/// `sums[j] (+)= x[0, j] + x[1, j] + ... + x[m - 1, j]` for `j < sums.len()`, rows of `x`
/// `ld` apart, added in row order; `accumulate = false` starts from zero. The bias gradient
/// of a layer from its output gradient.
///
/// # Panics
/// If `ld < sums.len()` or `x` is shorter than `m` rows.
pub fn column_sums(x: &[f32], ld: usize, m: usize, sums: &mut [f32], accumulate: bool) {
    let n = sums.len();
    assert!(ld >= n, "row stride {ld} below width {n}");
    if m > 0 {
        assert!(
            x.len() >= (m - 1) * ld + n,
            "x too short for {m} rows of {ld}"
        );
    }
    if !accumulate {
        sums.fill(0.0);
    }
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_avx512() {
        // SAFETY: AVX-512F is present.
        return unsafe { column_sums_avx512(x, ld, m, sums) };
    }
    column_sums_body(x, ld, m, sums)
}

/// The scalar reference of [`column_sums`].
pub fn column_sums_ref(x: &[f32], ld: usize, m: usize, sums: &mut [f32], accumulate: bool) {
    if !accumulate {
        sums.fill(0.0);
    }
    for r in 0..m {
        for (j, s) in sums.iter_mut().enumerate() {
            *s += x[r * ld + j];
        }
    }
}

/// Blocks of 64 columns kept in registers down all rows (one load per 16 values), then the
/// tail block.
#[inline(always)]
fn column_sums_body(x: &[f32], ld: usize, m: usize, sums: &mut [f32]) {
    const W: usize = 64;
    let n = sums.len();
    let mut j0 = 0;
    while j0 + W <= n {
        let acc: &mut [f32; W] = (&mut sums[j0..j0 + W]).try_into().expect("64 columns");
        let mut a = *acc;
        for r in 0..m {
            let row: &[f32; W] = x[r * ld + j0..r * ld + j0 + W]
                .try_into()
                .expect("64 columns");
            for l in 0..W {
                a[l] += row[l];
            }
        }
        *acc = a;
        j0 += W;
    }
    if j0 < n {
        let tail = &mut sums[j0..];
        for r in 0..m {
            for (s, v) in tail.iter_mut().zip(&x[r * ld + j0..r * ld + n]) {
                *s += v;
            }
        }
    }
}

/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn column_sums_avx512(x: &[f32], ld: usize, m: usize, sums: &mut [f32]) {
    column_sums_body(x, ld, m, sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn relu_backward_matches_reference(n in 0usize..300, seed in 0u64..1000) {
            let v = |i: usize, k: u64| (((i as u64 * 2654435761 + seed * k) % 97) as f32 - 48.0) / 7.0;
            let a: Vec<f32> = (0..n + 3).map(|i| if i % 5 == 0 { 0.0 } else { v(i, 3) }).collect();
            let da: Vec<f32> = (0..n + 3).map(|i| v(i, 11)).collect();
            let (mut got, mut want) = (vec![7.5f32; n + 3], vec![7.5f32; n + 3]);
            relu_backward(&mut got, &da, &a, n);
            relu_backward_ref(&mut want, &da, &a, n);
            prop_assert_eq!(got, want);
        }

        #[test]
        fn column_sums_match_reference(m in 0usize..40, n in 1usize..200, pad in 0usize..5,
                                       accumulate: bool, seed in 0u64..1000) {
            let ld = n + pad;
            let x: Vec<f32> = (0..m * ld).map(|i| (((i as u64 * 40503 + seed) % 101) as f32 - 50.0) / 3.0).collect();
            let start: Vec<f32> = (0..n + 2).map(|j| j as f32 * 0.25).collect();
            let (mut got, mut want) = (start.clone(), start);
            column_sums(&x, ld, m, &mut got[..n], accumulate);
            column_sums_ref(&x, ld, m, &mut want[..n], accumulate);
            // same order of additions: bit-identical, and the columns past n untouched
            prop_assert_eq!(got, want);
        }

        #[test]
        fn relu_backward_sums_match_the_two_references(m in 0usize..40, n in 1usize..200,
                                                       accumulate: bool, seed in 0u64..1000) {
            let v = |i: usize, k: u64| (((i as u64 * 2654435761 + seed * k) % 97) as f32 - 48.0) / 7.0;
            let a: Vec<f32> = (0..m * n + 3).map(|i| if i % 5 == 0 { 0.0 } else { v(i, 3) }).collect();
            let da: Vec<f32> = (0..m * n + 3).map(|i| v(i, 11)).collect();
            let (mut dz, mut want_dz) = (vec![7.5f32; m * n + 3], vec![7.5f32; m * n + 3]);
            let start: Vec<f32> = (0..n + 2).map(|j| j as f32 * 0.25).collect();
            let (mut sums, mut want_sums) = (start.clone(), start);
            relu_backward_sums(&mut dz, &da, &a, m, &mut sums[..n], accumulate);
            relu_backward_ref(&mut want_dz, &da, &a, m * n);
            column_sums_ref(&want_dz, n, m, &mut want_sums[..n], accumulate);
            // bit-identical, nothing written past m * n values or n sums
            prop_assert_eq!(dz, want_dz);
            prop_assert_eq!(sums, want_sums);
        }
    }
}
