//! Embedding bags with sum pooling over fp32 tables.
//!
//! Contract (in the style of FBGEMM's `EmbeddingSpMDM`), for a table of `rows x D` f32
//! stored row-major, `offsets` of length `B + 1` (non-decreasing, `offsets[B] <= ids.len()`)
//! and ids that are row indices:
//!
//! ```text
//! for b in 0..B:
//!     acc[0..D] = 0
//!     for i in offsets[b]..offsets[b + 1]:
//!         acc += table[ids[i] * D .. ids[i] * D + D]
//!     out[b * out_stride .. b * out_stride + D] = acc      // an empty bag writes zeros
//! ```
//!
//! `offsets[0]` need not be 0: a caller splitting a batch across threads passes a
//! sub-slice of the offsets and the whole id array. The output row stride lets the
//! pooled vectors land straight in the interaction input `[B, F, D]`.
//!
//! Ids are validated where a batch is built; here an id `>= rows` or malformed offsets
//! are a caller bug and panic (one compare per id, lost in the cost of the gather).
//! Nothing is ever clamped or remapped.

use crate::cpu::{Isa, isa};

/// Sum-pooled embedding bags: the run-time dispatched entry point (AVX2/FMA with
/// software prefetch where the CPU has it, [`bag_sum_f32_ref`] otherwise).
pub fn bag_sum_f32(
    table: &[f32],
    dim: usize,
    offsets: &[u32],
    ids: &[u32],
    out: &mut [f32],
    out_stride: usize,
) {
    bag_sum_f32_with(isa(), table, dim, offsets, ids, out, out_stride)
}

/// [`bag_sum_f32`] on a given instruction set (tests run every path on one CPU).
///
/// # Panics
/// If `isa` is not supported by this CPU, on malformed offsets, an id out of range, or
/// an output slice too short.
pub fn bag_sum_f32_with(
    isa: Isa,
    table: &[f32],
    dim: usize,
    offsets: &[u32],
    ids: &[u32],
    out: &mut [f32],
    out_stride: usize,
) {
    check_args(table, dim, offsets, ids, out, out_stride);
    match isa {
        Isa::Scalar => bag_sum_f32_ref(table, dim, offsets, ids, out, out_stride),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            assert!(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"));
            // SAFETY: the CPU has AVX2 and FMA (asserted above); the arguments were checked
            // by `check_args` and every id is bounds-checked in the kernel before its load.
            unsafe { x86::bag_sum_f32_avx2(table, dim, offsets, ids, out, out_stride) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 => panic!("AVX2 kernels exist only on x86_64"),
    }
}

fn check_args(
    table: &[f32],
    dim: usize,
    offsets: &[u32],
    ids: &[u32],
    out: &[f32],
    out_stride: usize,
) {
    assert!(dim > 0, "embedding dim must be positive");
    assert!(
        table.len().is_multiple_of(dim),
        "table length {} is not a multiple of D = {dim}",
        table.len()
    );
    check_bags(dim, offsets, ids, out, out_stride);
}

/// The bag half of every gather kernel's argument check: offsets well formed and inside the
/// ids, and an output long enough for `B` rows of `dim` at `out_stride`.
pub(crate) fn check_bags(dim: usize, offsets: &[u32], ids: &[u32], out: &[f32], out_stride: usize) {
    assert!(!offsets.is_empty(), "offsets need B + 1 entries");
    let bags = offsets.len() - 1;
    assert!(
        offsets.windows(2).all(|w| w[0] <= w[1]),
        "offsets must be non-decreasing"
    );
    assert!(
        offsets[bags] as usize <= ids.len(),
        "offsets run past the ids"
    );
    if bags > 0 {
        assert!(out_stride >= dim, "output stride {out_stride} < D = {dim}");
        assert!(
            out.len() >= (bags - 1) * out_stride + dim,
            "output too short for {bags} bags"
        );
    }
}

/// The scalar reference: the oracle for every fast path, and the fallback.
pub fn bag_sum_f32_ref(
    table: &[f32],
    dim: usize,
    offsets: &[u32],
    ids: &[u32],
    out: &mut [f32],
    out_stride: usize,
) {
    check_args(table, dim, offsets, ids, out, out_stride);
    let rows = table.len() / dim;
    for (b, w) in offsets.windows(2).enumerate() {
        let acc = &mut out[b * out_stride..b * out_stride + dim];
        acc.fill(0.0);
        for &id in &ids[w[0] as usize..w[1] as usize] {
            let id = id as usize;
            assert!(id < rows, "id {id} out of range for a table of {rows} rows");
            let row = &table[id * dim..id * dim + dim];
            for (a, v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::prefetch;

    /// Column blocks of up to 8 vectors (64 floats) keep the accumulators in registers.
    const BLOCK_VECS: usize = 8;

    /// # Safety
    /// The CPU must have AVX2 and FMA, and the arguments must satisfy `check_args`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn bag_sum_f32_avx2(
        table: &[f32],
        dim: usize,
        offsets: &[u32],
        ids: &[u32],
        out: &mut [f32],
        out_stride: usize,
    ) {
        let start = offsets[0] as usize;
        let end = offsets[offsets.len() - 1] as usize;
        prefetch::prologue(
            table.as_ptr() as *const u8,
            dim * 4,
            dim * 4,
            &ids[start..end],
            prefetch::distance(),
        );
        let mut c0 = 0;
        while c0 < dim {
            let width = (dim - c0).min(BLOCK_VECS * 8);
            let do_prefetch = c0 == 0;
            // SAFETY: (all arms) forwarded from this function's contract; `c0 + width <= dim`.
            unsafe {
                match width / 8 {
                    0 => block::<0>(
                        table,
                        dim,
                        c0,
                        width,
                        do_prefetch,
                        offsets,
                        ids,
                        out,
                        out_stride,
                    ),
                    1 => block::<1>(
                        table,
                        dim,
                        c0,
                        width,
                        do_prefetch,
                        offsets,
                        ids,
                        out,
                        out_stride,
                    ),
                    2 => block::<2>(
                        table,
                        dim,
                        c0,
                        width,
                        do_prefetch,
                        offsets,
                        ids,
                        out,
                        out_stride,
                    ),
                    3 => block::<3>(
                        table,
                        dim,
                        c0,
                        width,
                        do_prefetch,
                        offsets,
                        ids,
                        out,
                        out_stride,
                    ),
                    4 => block::<4>(
                        table,
                        dim,
                        c0,
                        width,
                        do_prefetch,
                        offsets,
                        ids,
                        out,
                        out_stride,
                    ),
                    5 => block::<5>(
                        table,
                        dim,
                        c0,
                        width,
                        do_prefetch,
                        offsets,
                        ids,
                        out,
                        out_stride,
                    ),
                    6 => block::<6>(
                        table,
                        dim,
                        c0,
                        width,
                        do_prefetch,
                        offsets,
                        ids,
                        out,
                        out_stride,
                    ),
                    7 => block::<7>(
                        table,
                        dim,
                        c0,
                        width,
                        do_prefetch,
                        offsets,
                        ids,
                        out,
                        out_stride,
                    ),
                    _ => block::<8>(
                        table,
                        dim,
                        c0,
                        width,
                        do_prefetch,
                        offsets,
                        ids,
                        out,
                        out_stride,
                    ),
                }
            }
            c0 += width;
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn tail_mask(n: usize) -> __m256i {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes)
    }

    /// Pools columns `c0 .. c0 + width` (`width = 8 * NV + tail`, tail < 8) of every bag.
    ///
    /// # Safety
    /// AVX2+FMA present; arguments satisfy `check_args`; `c0 + width <= dim`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const NV: usize>(
        table: &[f32],
        dim: usize,
        c0: usize,
        width: usize,
        do_prefetch: bool,
        offsets: &[u32],
        ids: &[u32],
        out: &mut [f32],
        out_stride: usize,
    ) {
        let rows = table.len() / dim;
        let tail = width - NV * 8;
        let mask = tail_mask(tail);
        let base = table.as_ptr();
        let row_bytes = dim * 4;
        let end_all = offsets[offsets.len() - 1] as usize;
        let pf = prefetch::distance();
        // ids[i + pf] exists for i < pf_end
        let pf_end = if do_prefetch {
            end_all.saturating_sub(pf)
        } else {
            0
        };
        for (b, w) in offsets.windows(2).enumerate() {
            let mut acc = [_mm256_setzero_ps(); NV];
            let mut acc_t = _mm256_setzero_ps();
            for i in w[0] as usize..w[1] as usize {
                if i < pf_end {
                    // SAFETY: i + pf < end_all <= ids.len() (checked by `check_args`).
                    let pid = unsafe { *ids.get_unchecked(i + pf) } as usize;
                    prefetch::row(base as *const u8, pid, row_bytes, row_bytes);
                }
                // SAFETY: i < offsets[B] <= ids.len() (checked by `check_args`).
                let id = unsafe { *ids.get_unchecked(i) } as usize;
                assert!(id < rows, "id {id} out of range for a table of {rows} rows");
                // SAFETY: id < rows and c0 + width <= dim, so every lane read (the masked
                // tail reads only `tail` lanes) lies inside the table.
                unsafe {
                    let row = base.add(id * dim + c0);
                    for (v, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_add_ps(*a, _mm256_loadu_ps(row.add(8 * v)));
                    }
                    if tail > 0 {
                        acc_t = _mm256_add_ps(acc_t, _mm256_maskload_ps(row.add(8 * NV), mask));
                    }
                }
            }
            let o = &mut out[b * out_stride + c0..b * out_stride + c0 + width];
            // SAFETY: `o` holds exactly `width = 8 * NV + tail` floats.
            unsafe {
                for (v, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(o.as_mut_ptr().add(8 * v), *a);
                }
                if tail > 0 {
                    _mm256_maskstore_ps(o.as_mut_ptr().add(8 * NV), mask, acc_t);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::testutil::{SENTINEL, paths};

    fn case() -> impl Strategy<Value = (usize, usize, Vec<Vec<u32>>, usize)> {
        (1usize..150, 1usize..40).prop_flat_map(|(dim, rows)| {
            let bags = prop::collection::vec(prop::collection::vec(0..rows as u32, 0..25), 0..12);
            (Just(dim), Just(rows), bags, 0usize..9)
        })
    }

    proptest! {
        #[test]
        fn fast_paths_match_reference((dim, rows, bags, pad) in case(), lead in 0usize..5) {
            let table: Vec<f32> = (0..rows * dim).map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0).collect();
            // `lead` unused ids before the first bag: offsets[0] > 0, as a thread's sub-range sees.
            let mut ids: Vec<u32> = (0..lead).map(|i| (i % rows) as u32).collect();
            let mut offsets = vec![ids.len() as u32];
            for b in &bags {
                ids.extend_from_slice(b);
                offsets.push(ids.len() as u32);
            }
            let stride = dim + pad;
            let n_out = bags.len() * stride + 8;
            let mut want = vec![SENTINEL; n_out];
            bag_sum_f32_ref(&table, dim, &offsets, &ids, &mut want, stride);
            // the scalar oracle itself against a plain f64 sum
            for (b, bag) in bags.iter().enumerate() {
                for c in 0..dim {
                    let s: f64 = bag.iter().map(|&id| table[id as usize * dim + c] as f64).sum();
                    prop_assert!((want[b * stride + c] as f64 - s).abs() <= 1e-3 * (1.0 + s.abs()));
                }
            }
            for isa in paths() {
                let mut got = vec![SENTINEL; n_out];
                bag_sum_f32_with(isa, &table, dim, &offsets, &ids, &mut got, stride);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    let in_bag = i < bags.len() * stride && i % stride < dim;
                    if in_bag {
                        prop_assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{isa:?} at {i}: {g} vs {w}");
                    } else {
                        prop_assert_eq!(*g, SENTINEL, "{:?} wrote padding at {}", isa, i);
                    }
                }
            }
        }
    }

    #[test]
    fn last_row_and_single_row_table() {
        for isa in paths() {
            for dim in [1, 7, 8, 16, 33, 64, 65, 128, 129] {
                let table: Vec<f32> = (0..dim).map(|i| i as f32).collect();
                let mut out = vec![SENTINEL; dim + 1];
                bag_sum_f32_with(isa, &table, dim, &[0, 3], &[0, 0, 0], &mut out, dim);
                for (c, v) in out[..dim].iter().enumerate() {
                    assert_eq!(*v, 3.0 * c as f32);
                }
                assert_eq!(out[dim], SENTINEL);
            }
        }
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn out_of_range_id_panics_on_reference() {
        let mut out = [0.0; 2];
        bag_sum_f32_with(Isa::Scalar, &[1.0, 2.0], 2, &[0, 1], &[1], &mut out, 2);
    }

    #[test]
    fn out_of_range_id_panics_on_every_path() {
        for isa in paths() {
            let r = std::panic::catch_unwind(|| {
                let mut out = [0.0; 2];
                bag_sum_f32_with(isa, &[1.0, 2.0, 3.0, 4.0], 2, &[0, 1], &[2], &mut out, 2);
            });
            assert!(r.is_err(), "{isa:?} accepted an out-of-range id");
        }
    }

    #[test]
    #[should_panic(expected = "non-decreasing")]
    fn decreasing_offsets_panic() {
        let mut out = [0.0; 4];
        bag_sum_f32(&[1.0, 2.0], 2, &[1, 0, 1], &[0], &mut out, 2);
    }
}
