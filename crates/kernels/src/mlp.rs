//! Fully connected layers in PyTorch's `nn.Linear` layout, with the activation fused.
//!
//! Contract, for `x: [m, k]` (row stride `ldx`), `w: [n, k]` row-major (as
//! `nn.Linear.weight` stores it), `bias: [n]`, `y: [m, n]` (row stride `ldy`):
//!
//! ```text
//! y[i, j] = act(bias[j] + sum_kk x[i, kk] * w[j, kk])
//! ```
//!
//! The backward of a layer, for the output gradient `dz: [m, n]` (row stride `ldy`):
//!
//! ```text
//! dw[j, kk] (+)= sum_i dz[i, j] * x[i, kk]          grad_weight: dz^T x, [n, k]
//! dx[i, kk]    = sum_j dz[i, j] * w[j, kk]          grad_input:  dz w,   [m, k] (row stride ldx)
//! ```
//!
//! The fast path writes the bias into `y`, lets the `gemm` crate (run-time AVX2/FMA/AVX-512
//! dispatch, packing, register blocking) accumulate `x w^T` onto it, then applies the
//! activation while the rows are still in cache. [`linear_ref`] is the scalar oracle.
//!
//! The forward of a loaded model runs on weights packed once ([`crate::gemm`]); the
//! backward stays on the gemm crate. Measured one thread at a time on a Zen 4 core (FMA peak
//! ~116 GFLOP/s; `cargo run --release -p dlrs-kernels --example backward_shapes -- 64 1024`),
//! [`grad_input`] and [`grad_weight`] run the criteo-kaggle, RMC1 and RMC3 layers of 64 or
//! more inputs at 89-115 GFLOP/s, within 10% of the packed forward. `grad_input` on a packed
//! `w^T` was no faster (84-113), and packing `w^T` after every optimizer step would cost
//! 66-132 us per 256-1024 k-wide layer on top. `grad_weight` reduces over the batch, so its
//! "weight" would be the activations, packed anew every call: what the gemm crate does.

/// What follows a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu,
    Sigmoid,
}

impl Activation {
    #[inline]
    pub fn apply(self, v: &mut [f32]) {
        match self {
            Activation::None => {}
            Activation::Relu => v.iter_mut().for_each(|x| *x = x.max(0.0)),
            Activation::Sigmoid => v.iter_mut().for_each(|x| *x = sigmoid(*x)),
        }
    }
}

/// The logistic function, as `torch.sigmoid` computes it in f32.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Shapes of one layer call.
#[derive(Clone, Copy, Debug)]
pub struct LinearShape {
    /// rows of `x` and `y` (the batch)
    pub m: usize,
    /// input width
    pub k: usize,
    /// output width
    pub n: usize,
    /// row stride of `x` (>= k)
    pub ldx: usize,
    /// row stride of `y` (>= n)
    pub ldy: usize,
}

impl LinearShape {
    /// Dense rows: `ldx = k`, `ldy = n`.
    pub fn dense(m: usize, k: usize, n: usize) -> Self {
        LinearShape {
            m,
            k,
            n,
            ldx: k,
            ldy: n,
        }
    }

    /// The checks of a layer call: `x` holds `m` rows of `k` at stride `ldx`, `y` `m` rows of
    /// `n` at stride `ldy`, `w` is `[n, k]`, `bias` (when given) `[n]`. The backward passes
    /// check the same with `dz` as `y` and `dx` as `x`.
    fn check(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &[f32]) {
        let s = self;
        assert!(
            s.ldx >= s.k && s.ldy >= s.n,
            "row strides smaller than widths: {s:?}"
        );
        assert_eq!(
            w.len(),
            s.n * s.k,
            "weight must be [n, k] = [{}, {}]",
            s.n,
            s.k
        );
        if let Some(bias) = bias {
            assert_eq!(bias.len(), s.n, "bias must be [n] = [{}]", s.n);
        }
        if s.m > 0 {
            assert!(x.len() >= (s.m - 1) * s.ldx + s.k, "x too short for {s:?}");
            assert!(y.len() >= (s.m - 1) * s.ldy + s.n, "y too short for {s:?}");
        }
    }
}

/// The fast layer. `threads > 1` lets the GEMM split its work on the current rayon pool.
///
/// # Panics
/// On slices that do not fit `shape`.
pub fn linear(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    y: &mut [f32],
    shape: LinearShape,
    act: Activation,
    threads: usize,
) {
    shape.check(x, w, Some(bias), y);
    #[cfg(target_arch = "x86_64")]
    if let LinearShape {
        m: m @ 2..=128,
        k: k @ 512..,
        n,
        ..
    } = shape
        && (m <= 16 || n * k * 4 <= NT_WEIGHT_BYTES)
        && crate::cpu::has_avx512()
    {
        // few rows, long rows: the gemm crate's packing of w costs more than the product
        // (one Zen 5 core: m = 64, k = 512, n = 256: 85-107 GFLOP/s there, 198-210 here;
        // m = 8, k = 2560, n = 512: 18 against 122). This path reads w once per 4 rows, so
        // beyond a few rows w must stay in L2 (RMC3's 5 MB bottom layer at m = 128 ran 22%
        // slower here). At m = 1 gemm's GEMV path is faster, and at k = 256 or m >= 256 its
        // packed microkernel is (0.7-0.9x here).
        // SAFETY: AVX-512F is present; `shape.check` validated the slices.
        return unsafe { nt_layer(x, w, bias, y, shape, act) };
    }
    linear_gemm_only(x, w, bias, y, shape, act, threads)
}

/// [`linear`] always through the gemm crate (for comparisons; `linear` picks per shape).
#[doc(hidden)]
pub fn linear_gemm_only(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    y: &mut [f32],
    shape: LinearShape,
    act: Activation,
    threads: usize,
) {
    shape.check(x, w, Some(bias), y);
    let LinearShape { m, k, n, ldx, ldy } = shape;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            y[i * ldy..i * ldy + n].copy_from_slice(bias);
        }
    } else {
        let par = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        if k < SHORT_K && m >= 64 {
            // a short input: the gemm crate would pack `w [n, k]` with a strided gather (one
            // float at a time) in every call, which at k = 13 took longer than the product
            // (m = 1024, n = 512: 230-300 us against 120 us given w^T). Transposing it once
            // here is n * k < 64 n moves.
            SHORT_WT.with_borrow_mut(|wt| {
                wt.clear();
                wt.extend((0..k * n).map(|i| w[(i % n) * k + i / n]));
                // SAFETY: wt is w^T, [k, n] row-major: element (kk, j) at kk * n + j.
                unsafe { gemm_xw(x, ldx, wt, 1, n, y, shape, par) }
            });
        } else {
            // SAFETY: w is [n, k] row-major: element (kk, j) of w^T at j * k + kk.
            unsafe { gemm_xw(x, ldx, w, k, 1, y, shape, par) }
        }
    }
    bias_act(y, ldy, m, bias, act, k > 0);
}

/// `y[i, j] = act(y[i, j] + bias[j])` over `m` rows, or `act(y[i, j])` when `!add` (rows
/// that already include their bias: a bias pre-fill, or the no-packing product): the bias
/// and activation in one pass after the GEMM, instead of a bias pre-fill the GEMM reads back
/// plus an activation pass. AVX-512 where present.
fn bias_act(y: &mut [f32], ldy: usize, m: usize, bias: &[f32], act: Activation, add: bool) {
    #[inline(always)]
    fn body(y: &mut [f32], ldy: usize, m: usize, bias: &[f32], act: Activation, add: bool) {
        let n = bias.len();
        for i in 0..m {
            let row = &mut y[i * ldy..i * ldy + n];
            if add {
                match act {
                    Activation::None => row.iter_mut().zip(bias).for_each(|(v, b)| *v += b),
                    Activation::Relu => row
                        .iter_mut()
                        .zip(bias)
                        .for_each(|(v, b)| *v = (*v + b).max(0.0)),
                    Activation::Sigmoid => row
                        .iter_mut()
                        .zip(bias)
                        .for_each(|(v, b)| *v = sigmoid(*v + b)),
                }
            } else {
                act.apply(row);
            }
        }
    }
    /// # Safety
    /// The CPU must have AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn body_avx512(
        y: &mut [f32],
        ldy: usize,
        m: usize,
        bias: &[f32],
        act: Activation,
        add: bool,
    ) {
        body(y, ldy, m, bias, act, add)
    }
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_avx512() {
        // SAFETY: AVX-512F is present.
        return unsafe { body_avx512(y, ldy, m, bias, act, add) };
    }
    body(y, ldy, m, bias, act, add)
}

/// Inputs narrower than this go to gemm with a transposed copy of the weight.
const SHORT_K: usize = 64;

thread_local! {
    /// The transposed weight of a short-input layer ([`SHORT_K`]), reused across calls.
    static SHORT_WT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `y = x w^T` through the gemm crate, where w^T's element (kk, j) is at
/// `wt[kk * rs + j * cs]`.
///
/// # Safety
/// `shape.check(x, _, _, y)` passed, `ldx == shape.ldx`, and every `kk * rs + j * cs` with
/// `kk < k`, `j < n` is inside `wt`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_xw(
    x: &[f32],
    ldx: usize,
    wt: &[f32],
    cs: usize,
    rs: usize,
    y: &mut [f32],
    shape: LinearShape,
    par: gemm::Parallelism,
) {
    let LinearShape { m, k, n, ldy, .. } = shape;
    debug_assert!((k - 1) * rs + (n - 1) * cs < wt.len());
    // SAFETY: by the contract: x is m x k with row stride ldx, y is m x n with row stride
    // ldy (both proved by `shape.check`), w^T as described. `y` is exclusively borrowed and
    // aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            y.as_mut_ptr(),
            1,
            ldy as isize,
            false,
            x.as_ptr(),
            1,
            ldx as isize,
            wt.as_ptr(),
            cs as isize,
            rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
}

/// The layer without packing: both `x [m, k]` and `w [n, k]` are read along k, 4 rows by 4
/// outputs at a time in 16 vector accumulators, each reduced once at the end. The gemm crate
/// packs `w` (transposing it one float at a time) on every call, which for a few rows of a
/// long input costs more than the multiply-adds; [`linear`] picks this path for those shapes.
/// Uses AVX-512 where the CPU has it, else it is [`linear`].
///
/// # Panics
/// On slices that do not fit `shape`.
pub fn linear_nt(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    y: &mut [f32],
    shape: LinearShape,
    act: Activation,
    threads: usize,
) {
    shape.check(x, w, Some(bias), y);
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_avx512() {
        // SAFETY: AVX-512F is present; `shape.check` validated the slices.
        return unsafe { nt_layer(x, w, bias, y, shape, act) };
    }
    linear(x, w, bias, y, shape, act, threads)
}

/// The no-packing product (bias included), then the activation on each output row.
///
/// # Safety
/// AVX-512F present; `shape.check` passed for the slices.
#[cfg(target_arch = "x86_64")]
unsafe fn nt_layer(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    y: &mut [f32],
    shape: LinearShape,
    act: Activation,
) {
    // SAFETY: forwarded from this function's contract.
    unsafe { nt_avx512::linear_nt(x, w, bias, y, shape) };
    bias_act(y, shape.ldy, shape.m, bias, act, false);
}

/// The largest weight the no-packing path takes for more than 16 rows: half of a Zen 4/5
/// core's 1 MiB L2, since it reads the weight once per 4 rows.
#[cfg(target_arch = "x86_64")]
const NT_WEIGHT_BYTES: usize = 512 << 10;

#[cfg(target_arch = "x86_64")]
mod nt_avx512 {
    use std::arch::x86_64::*;

    use super::LinearShape;

    /// `y[i, j] = bias[j] + x[i, ..] . w[j, ..]` (no activation).
    ///
    /// # Safety
    /// AVX-512F present; `shape.check` passed for the slices.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn linear_nt(
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        y: &mut [f32],
        shape: LinearShape,
    ) {
        let LinearShape { m, k, n, ldx, ldy } = shape;
        if m == 0 || n == 0 {
            return;
        }
        let k16 = k / 16 * 16;
        let tail: __mmask16 = ((1u32 << (k - k16)) - 1) as __mmask16;
        for i0 in (0..m).step_by(4) {
            // rows past the end repeat the last row: computed, never stored
            let xr: [*const f32; 4] = std::array::from_fn(|a| {
                // SAFETY: row min(i0 + a, m - 1) < m starts inside x (shape.check).
                unsafe { x.as_ptr().add((i0 + a).min(m - 1) * ldx) }
            });
            for j0 in (0..n).step_by(4) {
                let wr: [*const f32; 4] = std::array::from_fn(|b| {
                    // SAFETY: row min(j0 + b, n - 1) < n starts inside w ([n, k]).
                    unsafe { w.as_ptr().add((j0 + b).min(n - 1) * k) }
                });
                let mut acc = [[_mm512_setzero_ps(); 4]; 4];
                let mut kk = 0;
                while kk < k16 {
                    // SAFETY: kk + 16 <= k: inside each row's k values.
                    unsafe {
                        let xv: [__m512; 4] =
                            std::array::from_fn(|a| _mm512_loadu_ps(xr[a].add(kk)));
                        let wv: [__m512; 4] =
                            std::array::from_fn(|b| _mm512_loadu_ps(wr[b].add(kk)));
                        for a in 0..4 {
                            for b in 0..4 {
                                acc[a][b] = _mm512_fmadd_ps(xv[a], wv[b], acc[a][b]);
                            }
                        }
                    }
                    kk += 16;
                }
                if k16 < k {
                    // SAFETY: the masked loads read only lanes k16 .. k of each row.
                    unsafe {
                        let xv: [__m512; 4] =
                            std::array::from_fn(|a| _mm512_maskz_loadu_ps(tail, xr[a].add(k16)));
                        let wv: [__m512; 4] =
                            std::array::from_fn(|b| _mm512_maskz_loadu_ps(tail, wr[b].add(k16)));
                        for a in 0..4 {
                            for b in 0..4 {
                                acc[a][b] = _mm512_fmadd_ps(xv[a], wv[b], acc[a][b]);
                            }
                        }
                    }
                }
                for (a, row) in acc.iter().enumerate().take(m - i0) {
                    for (b, v) in row.iter().enumerate().take(n - j0) {
                        y[(i0 + a) * ldy + j0 + b] = bias[j0 + b] + _mm512_reduce_add_ps(*v);
                    }
                }
            }
        }
    }
}

/// The scalar reference layer (f64 accumulation, so it also bounds the fast path's
/// rounding error in tests).
pub fn linear_ref(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    y: &mut [f32],
    shape: LinearShape,
    act: Activation,
) {
    shape.check(x, w, Some(bias), y);
    let LinearShape { m, k, n, ldx, ldy } = shape;
    for i in 0..m {
        let xi = &x[i * ldx..i * ldx + k];
        for j in 0..n {
            let wj = &w[j * k..j * k + k];
            let s: f64 = xi.iter().zip(wj).map(|(a, b)| *a as f64 * *b as f64).sum();
            y[i * ldy + j] = (s + bias[j] as f64) as f32;
        }
        act.apply(&mut y[i * ldy..i * ldy + n]);
    }
}

fn gemm_par(threads: usize) -> gemm::Parallelism {
    if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// Layer inputs narrower than this get their weight gradient as `dw^T` ([`grad_weight`]).
const NARROW_IN: usize = 64;

thread_local! {
    /// `dw^T` of a narrow-input layer, reused across calls.
    static NARROW_DWT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The weight gradient of a layer of `shape`: `dw [n, k] (+)= dz^T x`, with `dz: [m, n]`
/// (row stride `shape.ldy`) and `x: [m, k]` the layer's input (row stride `shape.ldx`);
/// `accumulate` adds to `dw` instead of overwriting it. `threads > 1` lets the GEMM split
/// on the current rayon pool.
///
/// # Panics
/// On slices that do not fit `shape`.
pub fn grad_weight(
    dz: &[f32],
    x: &[f32],
    dw: &mut [f32],
    shape: LinearShape,
    accumulate: bool,
    threads: usize,
) {
    shape.check(x, dw, None, dz);
    let LinearShape {
        m,
        k: inp,
        n: out,
        ldx: lda,
        ldy: ldz,
    } = shape;
    if m == 0 || inp == 0 || out == 0 {
        if !accumulate {
            dw.fill(0.0);
        }
        return;
    }
    if inp < NARROW_IN && out >= 64 && m >= 64 {
        // a narrow input (the 13 dense features): as `dw [out, in]`, gemm's vector lanes run
        // along `in` (one 16-lane tile, 13 used) and it packs all of dz; as `dw^T [in, out]`
        // they run along `out`, unit stride in dz (m = 1024, out = 512: 187-227 us -> 108 us)
        NARROW_DWT.with_borrow_mut(|dwt| {
            dwt.resize(inp * out, 0.0);
            // SAFETY: by `shape.check`: lhs = dz^T as out x m with element (o, b) at
            // dz[b * ldz + o] (row step 1, column step ldz); rhs = x as m x in with element
            // (b, j) at x[b * lda + j] (row step lda, column step 1); dst = dwt as out x in
            // with element (o, j) at dwt[j * out + o] (row step 1, column step out), inside
            // its inp * out floats. dwt is a thread-local buffer aliasing neither input.
            unsafe {
                gemm::gemm(
                    out,
                    inp,
                    m,
                    dwt.as_mut_ptr(),
                    out as isize,
                    1,
                    false,
                    dz.as_ptr(),
                    ldz as isize,
                    1,
                    x.as_ptr(),
                    1,
                    lda as isize,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm_par(threads),
                );
            }
            for (o, row) in dw.chunks_exact_mut(inp).enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    let g = dwt[j * out + o];
                    *v = if accumulate { *v + g } else { g };
                }
            }
        });
        return;
    }
    // SAFETY: `shape.check` proves every element addressed lies inside its slice: lhs =
    // dz^T is out x m, element (o, b) at dz[b * ldz + o] (row step 1, column step ldz); rhs =
    // x is m x in, element (b, j) at x[b * lda + j] (row step lda, column step 1); dst = dw
    // is out x in row-major. dw is exclusively borrowed and aliases neither input.
    // read_dst = accumulate: dw = 1 * dw + dz^T x, or dw = dz^T x.
    unsafe {
        gemm::gemm(
            out,
            inp,
            m,
            dw.as_mut_ptr(),
            1,
            inp as isize,
            accumulate,
            dz.as_ptr(),
            ldz as isize,
            1,
            x.as_ptr(),
            1,
            lda as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm_par(threads),
        );
    }
}

/// The input gradient of a layer of `shape`: `dx [m, k] = dz w`, with `dz: [m, n]` (row
/// stride `shape.ldy`), `w: [n, k]` row-major, `dx` at row stride `shape.ldx` (overwritten;
/// what lies between its rows is left alone).
///
/// # Panics
/// On slices that do not fit `shape`.
pub fn grad_input(dz: &[f32], w: &[f32], dx: &mut [f32], shape: LinearShape, threads: usize) {
    shape.check(dx, w, None, dz);
    let LinearShape {
        m,
        k: inp,
        n: out,
        ldx: ldda,
        ldy: ldz,
    } = shape;
    if m == 0 || inp == 0 {
        return;
    }
    if out == 0 {
        for r in 0..m {
            dx[r * ldda..r * ldda + inp].fill(0.0);
        }
        return;
    }
    // SAFETY: by `shape.check`, lhs = dz is m x out (row step ldz, column step 1), rhs = w
    // is out x in row-major (row step in, column step 1), dst = dx is m x in (row step ldda);
    // all addressed elements are inside their slices and dx aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            inp,
            out,
            dx.as_mut_ptr(),
            1,
            ldda as isize,
            false,
            dz.as_ptr(),
            1,
            ldz as isize,
            w.as_ptr(),
            1,
            inp as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm_par(threads),
        );
    }
}

/// The scalar reference of [`grad_weight`] (f64 sums).
pub fn grad_weight_ref(
    dz: &[f32],
    x: &[f32],
    dw: &mut [f32],
    shape: LinearShape,
    accumulate: bool,
) {
    shape.check(x, dw, None, dz);
    let LinearShape { m, k, n, ldx, ldy } = shape;
    for o in 0..n {
        for j in 0..k {
            let s: f64 = (0..m)
                .map(|b| dz[b * ldy + o] as f64 * x[b * ldx + j] as f64)
                .sum();
            let v = &mut dw[o * k + j];
            *v = if accumulate {
                (*v as f64 + s) as f32
            } else {
                s as f32
            };
        }
    }
}

/// The scalar reference of [`grad_input`] (f64 sums).
pub fn grad_input_ref(dz: &[f32], w: &[f32], dx: &mut [f32], shape: LinearShape) {
    shape.check(dx, w, None, dz);
    let LinearShape { m, k, n, ldx, ldy } = shape;
    for b in 0..m {
        for j in 0..k {
            let s: f64 = (0..n)
                .map(|o| dz[b * ldy + o] as f64 * w[o * k + j] as f64)
                .sum();
            dx[b * ldx + j] = s as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vals(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 2654435761usize) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    proptest! {
        #[test]
        fn gemm_layer_matches_reference(m in prop_oneof![0usize..40, 64usize..140], k in prop_oneof![0usize..300, 500usize..700], n in 1usize..70,
                                        padx in 0usize..5, pady in 0usize..5, act in 0usize..3,
                                        threads in 1usize..3) {
            let act = [Activation::None, Activation::Relu, Activation::Sigmoid][act];
            let shape = LinearShape { m, k, n, ldx: k + padx, ldy: n + pady };
            let x = vals(m * shape.ldx, 1);
            let w = vals(n * k, 2);
            let b = vals(n, 3);
            let mut want = vec![7.0; m * shape.ldy];
            let mut got = want.clone();
            linear_ref(&x, &w, &b, &mut want, shape, act);
            linear(&x, &w, &b, &mut got, shape, act, threads);
            let mut got_nt = vec![7.0; m * shape.ldy];
            linear_nt(&x, &w, &b, &mut got_nt, shape, act, threads);
            for (name, got) in [("linear", &got), ("linear_nt", &got_nt)] {
                for i in 0..m * shape.ldy {
                    if i % shape.ldy >= n {
                        prop_assert_eq!(got[i], 7.0, "{} wrote padding at {}", name, i);
                    } else {
                        prop_assert!((got[i] - want[i]).abs() <= 1e-5 * (1.0 + k as f32).sqrt(), "{}: {} vs {}", name, got[i], want[i]);
                    }
                }
            }
        }
    }

    #[test]
    fn batch_one_large_layer() {
        // the RMC3 bottom layer at batch 1 (a GEMV)
        let (k, n) = (2560, 64);
        let shape = LinearShape::dense(1, k, n);
        let (x, w, b) = (vals(k, 5), vals(n * k, 6), vals(n, 7));
        let mut want = vec![0.0; n];
        let mut got = vec![0.0; n];
        linear_ref(&x, &w, &b, &mut want, shape, Activation::Relu);
        linear(&x, &w, &b, &mut got, shape, Activation::Relu, 1);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-3, "{g} vs {w}");
        }
    }

    #[test]
    fn sigmoid_saturates_without_nan() {
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(1000.0), 1.0);
        assert_eq!(sigmoid(0.0), 0.5);
    }

    proptest! {
        /// Both GEMM layouts of the weight gradient (the narrow-input one needs m >= 64 and
        /// out >= 64) and the input gradient against their references, with padded strides
        /// and sentinels between the rows of dx.
        #[test]
        fn layer_gradients_match_reference(m in prop_oneof![0usize..20, 64usize..100],
                                           out in prop_oneof![1usize..20, 64usize..80],
                                           inp in prop_oneof![1usize..20, 60usize..70],
                                           pad in 0usize..3, accumulate: bool, threads in 1usize..3) {
            let shape = LinearShape { m, k: inp, n: out, ldx: inp + pad, ldy: out + pad };
            let dz = vals(m * shape.ldy, 1);
            let x = vals(m * shape.ldx, 2);
            let w = vals(out * inp, 3);
            let start = vals(out * inp, 4);
            let (mut dw, mut want) = (start.clone(), start.clone());
            grad_weight(&dz, &x, &mut dw, shape, accumulate, threads);
            grad_weight_ref(&dz, &x, &mut want, shape, accumulate);
            for (i, (g, r)) in dw.iter().zip(&want).enumerate() {
                prop_assert!((g - r).abs() <= 1e-4 * (1.0 + r.abs()), "dw[{}]: {} vs {}", i, g, r);
            }
            let (mut dx, mut want) = (vec![9.0f32; m * shape.ldx], vec![9.0f32; m * shape.ldx]);
            grad_input(&dz, &w, &mut dx, shape, threads);
            grad_input_ref(&dz, &w, &mut want, shape);
            for (i, (g, r)) in dx.iter().zip(&want).enumerate() {
                if i % shape.ldx >= inp {
                    prop_assert_eq!(*g, 9.0, "padding written at {}", i);
                } else {
                    prop_assert!((g - r).abs() <= 1e-4 * (1.0 + r.abs()), "dx[{}]: {} vs {}", i, g, r);
                }
            }
        }
    }

    /// The references themselves against hand-computed values.
    #[test]
    fn gradient_references_known_values() {
        // x = [[1, 2], [3, 4]], dz = [[1, 0, 2], [0, 1, 1]], w = [[1, 0], [0, 1], [1, 1]]
        let shape = LinearShape::dense(2, 2, 3);
        let (x, dz, w) = (
            [1.0, 2.0, 3.0, 4.0],
            [1.0, 0.0, 2.0, 0.0, 1.0, 1.0],
            [1.0, 0.0, 0.0, 1.0, 1.0, 1.0],
        );
        let mut dw = [0.0; 6];
        grad_weight_ref(&dz, &x, &mut dw, shape, false);
        assert_eq!(dw, [1.0, 2.0, 3.0, 4.0, 5.0, 8.0]);
        grad_weight_ref(&dz, &x, &mut dw, shape, true);
        assert_eq!(dw, [2.0, 4.0, 6.0, 8.0, 10.0, 16.0]);
        let mut dx = [0.0; 4];
        grad_input_ref(&dz, &w, &mut dx, shape);
        assert_eq!(dx, [3.0, 2.0, 1.0, 2.0]);
    }
}
