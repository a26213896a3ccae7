//! dlrs kernels: the compute of a DLRM forward pass.
//!
//! Shapes use the B/F/D notation: B samples in a batch, F feature vectors per sample
//! (the bottom-MLP output plus one pooled embedding per table), D embedding dimension.
//!
//! Every kernel has a plain scalar version (the `*_ref` functions) that is both the
//! fallback on CPUs without AVX2/FMA and the oracle the fast paths are tested against.
//! The instruction set is detected once at run time ([`cpu::isa`]); nothing here needs
//! `target-cpu=native`.
//!
//! - [`gather`]: embedding bags (sum pooling) over tables of every row format, and the
//!   formats themselves (fp32, fp16, int8, int4 row-wise);
//! - [`mlp`]: `nn.Linear` layers with fused bias and activation; [`grad`]: their backward;
//! - [`gemm`]: the same layers over weights packed once for our own microkernels;
//! - [`interaction`]: the DLRM dot interaction and its backward;
//! - [`ids`]: id range checks and narrowing; [`prefetch`]: row prefetching; [`cpu`]: dispatch.
//!
//! ```
//! use dlrs_kernels::gather::{Bags, Pooled, Rows, bag_sum};
//! // a table of 3 rows, D = 2; two bags: {0, 2} and {} (empty pools to zeros)
//! let table = [1.0, 2.0, 10.0, 20.0, 100.0, 200.0];
//! let mut out = [f32::NAN; 4];
//! bag_sum(Rows::f32(&table, 2), Bags::new(&[0, 2, 2], &[0, 2]), Pooled::new(&mut out, 2));
//! assert_eq!(out, [101.0, 202.0, 0.0, 0.0]);
//! ```

pub mod cpu;
pub mod gather;
pub mod gemm;
pub mod grad;
pub mod ids;
pub mod interaction;
pub mod mlp;
pub mod prefetch;

#[cfg(test)]
pub(crate) mod testutil {
    use crate::cpu::{Isa, isa};

    /// Every dispatch path this CPU can run: the reference, AVX2 and AVX-512 where present
    /// (and not turned off by `DLRS_ISA`).
    pub fn paths() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|&p| p <= isa())
            .collect()
    }

    /// Written past the end of output rows; a kernel that overruns changes it.
    pub const SENTINEL: f32 = -12345.5;

    /// splitmix64: deterministic test data in [0, 1) from one seed.
    pub fn rng(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed;
        move || {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    /// A row of `dim` values in `[lo, lo + span)`; `span == 0` gives a constant row.
    pub fn row_values(dim: usize, lo: f32, span: f32, seed: u64) -> Vec<f32> {
        let mut r = rng(seed);
        (0..dim).map(|_| lo + span * r()).collect()
    }

    /// Any row format.
    pub fn fmt_strategy() -> impl proptest::strategy::Strategy<Value = crate::gather::RowFormat> {
        proptest::sample::select(crate::gather::RowFormat::ALL.to_vec())
    }
}
