//! Fully connected layers in PyTorch's `nn.Linear` layout, with the activation fused.
//!
//! Contract, for `x: [m, k]` (row stride `ldx`), `w: [n, k]` row-major (as
//! `nn.Linear.weight` stores it), `bias: [n]`, `y: [m, n]` (row stride `ldy`):
//!
//! ```text
//! y[i, j] = act(bias[j] + sum_kk x[i, kk] * w[j, kk])
//! ```
//!
//! The fast path writes the bias into `y`, lets the `gemm` crate (run-time AVX2/FMA/AVX-512
//! dispatch, packing, register blocking) accumulate `x w^T` onto it, then applies the
//! activation while the rows are still in cache. [`linear_ref`] is the scalar oracle.

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
        LinearShape { m, k, n, ldx: k, ldy: n }
    }

    fn check(&self, x: &[f32], w: &[f32], bias: &[f32], y: &[f32]) {
        let s = self;
        assert!(s.ldx >= s.k && s.ldy >= s.n, "row strides smaller than widths: {s:?}");
        assert_eq!(w.len(), s.n * s.k, "weight must be [n, k] = [{}, {}]", s.n, s.k);
        assert_eq!(bias.len(), s.n, "bias must be [n] = [{}]", s.n);
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
pub fn linear(x: &[f32], w: &[f32], bias: &[f32], y: &mut [f32], shape: LinearShape, act: Activation, threads: usize) {
    shape.check(x, w, bias, y);
    let LinearShape { m, k, n, ldx, ldy } = shape;
    if m == 0 || n == 0 {
        return;
    }
    for i in 0..m {
        y[i * ldy..i * ldy + n].copy_from_slice(bias);
    }
    if k > 0 {
        let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
        // SAFETY: `shape.check` proved every (row, column) the strides below address lies
        // inside its slice: x is m x k with row stride ldx, w^T is k x n read from the
        // [n, k] row-major weight (row step 1, column step k), y is m x n with row stride
        // ldy. `y` is exclusively borrowed and does not alias x or w.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                y.as_mut_ptr(),
                1,
                ldy as isize,
                true,
                x.as_ptr(),
                1,
                ldx as isize,
                w.as_ptr(),
                k as isize,
                1,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                par,
            );
        }
    }
    if act != Activation::None {
        for i in 0..m {
            act.apply(&mut y[i * ldy..i * ldy + n]);
        }
    }
}

/// The scalar reference layer (f64 accumulation, so it also bounds the fast path's
/// rounding error in tests).
pub fn linear_ref(x: &[f32], w: &[f32], bias: &[f32], y: &mut [f32], shape: LinearShape, act: Activation) {
    shape.check(x, w, bias, y);
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vals(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i + seed) * 2654435761usize) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    proptest! {
        #[test]
        fn gemm_layer_matches_reference(m in 0usize..40, k in 0usize..300, n in 1usize..70,
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
            for i in 0..m * shape.ldy {
                if i % shape.ldy >= n {
                    prop_assert_eq!(got[i], 7.0, "padding written at {}", i);
                } else {
                    prop_assert!((got[i] - want[i]).abs() <= 1e-5 * (1.0 + k as f32).sqrt(), "{} vs {}", got[i], want[i]);
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
}
