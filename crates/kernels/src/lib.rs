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
//! ```
//! use dlrs_kernels::embedding::bag_sum_f32;
//! // a table of 3 rows, D = 2; two bags: {0, 2} and {} (empty pools to zeros)
//! let table = [1.0, 2.0, 10.0, 20.0, 100.0, 200.0];
//! let mut out = [f32::NAN; 4];
//! bag_sum_f32(&table, 2, &[0, 2, 2], &[0, 2], &mut out, 2);
//! assert_eq!(out, [101.0, 202.0, 0.0, 0.0]);
//! ```

pub mod cpu;
pub mod embedding;
pub mod grad;
pub mod ids;
pub mod interaction;
pub mod mlp;
pub mod prefetch;
pub mod rowwise;

#[cfg(test)]
pub(crate) mod testutil {
    use crate::cpu::{Isa, isa};

    /// Every dispatch path this CPU can run: the reference, and AVX2 where present.
    pub fn paths() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        if isa() == Isa::Avx2 {
            v.push(Isa::Avx2);
        }
        v
    }

    /// Written past the end of output rows; a kernel that overruns changes it.
    pub const SENTINEL: f32 = -12345.5;
}
