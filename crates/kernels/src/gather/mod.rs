//! The gather family: sum-pooled embedding bags over tables of every [`RowFormat`].
//!
//! One entry point, [`bag_sum`], serves every row format (fp32 included); [`bag_sum_with`]
//! runs a given instruction set and [`bag_sum_ref`] is the scalar reference (the oracle of
//! the fast paths and their fallback). The arguments come in three groups:
//!
//! - [`Rows`]: the table, `rows` rows of `stride` bytes in `format`, `dim` values each;
//! - [`Bags`]: `offsets` (`B + 1` entries, non-decreasing, `offsets[B] <= ids.len()`) into
//!   `ids` (row indices);
//! - [`Pooled`]: where bag `b`'s pooled vector goes, `out[b * stride ..][..dim]`.
//!
//! The contract (in the style of FBGEMM's `EmbeddingSpMDM`):
//!
//! ```text
//! for b in 0..B:
//!     acc[0..D] = 0
//!     for i in offsets[b]..offsets[b + 1]:
//!         acc[c] += value(table[ids[i] * stride ..], c)     for c in 0..D   (format::value)
//!     out[b * out_stride .. b * out_stride + D] = acc       // an empty bag writes zeros
//! ```
//!
//! - `offsets[0]` need not be 0: a caller splitting a batch across threads passes a window
//!   of the offsets and the whole id array.
//! - The output stride lets the pooled vectors land straight in the interaction input
//!   `[B, F * D]`; nothing between two output rows is written.
//! - Ids are validated where a batch is built; here an id `>= rows`, malformed offsets or a
//!   short output are a caller bug and panic (one compare per id, lost in the cost of the
//!   gather). Nothing is ever clamped or remapped.
//! - The fast kernels sum a quantized bag as `sum(scale * q) + sum(bias)` (FBGEMM's order),
//!   so they agree with the reference to rounding, not bit for bit; fp32 and fp16 bags are
//!   summed in id order on every path.
//!
//! Blocking (the AVX2 kernel): a row of up to 64 values is one column block, pooled in one
//! pass over all bags with the accumulators in registers and rows prefetched
//! [`crate::prefetch::distance`] ids ahead. A wider row is pooled bag by bag, one 64-column
//! block after the other, so that a bag's rows stay in L1 between its blocks. For fp32 at
//! D = 128 this measured at least as fast as pooling each column block over all bags (the
//! former fp32-only kernel), and at D <= 64 the two are the same loop.
//!
//! ```
//! use dlrs_kernels::gather::{Bags, Pooled, RowFormat, Rows, bag_sum, quantize_row};
//! // fp32: a table of 3 rows, D = 2; two bags: {0, 2} and {} (empty pools to zeros)
//! let table = [1.0, 2.0, 10.0, 20.0, 100.0, 200.0];
//! let mut out = [f32::NAN; 4];
//! bag_sum(Rows::f32(&table, 2), Bags::new(&[0, 2, 2], &[0, 2]), Pooled::new(&mut out, 2));
//! assert_eq!(out, [101.0, 202.0, 0.0, 0.0]);
//!
//! // int8 rows, stored at the padded stride dlrs uses
//! let (fmt, dim) = (RowFormat::Int8, 4);
//! let stride = fmt.row_stride(dim); // 12 payload bytes, stored 16 apart
//! let mut table = vec![0u8; 2 * stride];
//! quantize_row(fmt, &[0.0, 1.0, 2.0, 255.0], &mut table[..fmt.row_bytes(dim)]);
//! quantize_row(fmt, &[-1.0; 4], &mut table[stride..stride + fmt.row_bytes(dim)]);
//! let mut out = [f32::NAN; 8];
//! let rows = Rows::new(fmt, &table, stride, dim);
//! bag_sum(rows, Bags::new(&[0, 2, 2], &[0, 1]), Pooled::new(&mut out, 4));
//! assert_eq!(out, [-1.0, 0.0, 1.0, 254.0, 0.0, 0.0, 0.0, 0.0]);
//! ```

pub mod format;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use format::{RowFormat, dequantize_row, quantize_row};

use crate::cpu::{Isa, isa};

/// A table as the gather kernels read it: `bytes.len() / stride` rows of `stride` bytes, each
/// starting with a `format` row of `dim` values.
#[derive(Clone, Copy, Debug)]
pub struct Rows<'a> {
    pub format: RowFormat,
    pub bytes: &'a [u8],
    /// bytes from one row to the next, at least `format.row_bytes(dim)`
    pub stride: usize,
    pub dim: usize,
}

impl<'a> Rows<'a> {
    pub fn new(format: RowFormat, bytes: &'a [u8], stride: usize, dim: usize) -> Self {
        Rows {
            format,
            bytes,
            stride,
            dim,
        }
    }

    /// fp32 rows stored unpadded, as PyTorch's `[rows, dim]` tensor: `values.len() / dim` rows.
    pub fn f32(values: &'a [f32], dim: usize) -> Self {
        // SAFETY: any initialised f32 slice is also a valid byte slice of 4x its length, at
        // the same address, living as long.
        let bytes = unsafe {
            std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
        };
        Rows::new(RowFormat::F32, bytes, 4 * dim, dim)
    }

    /// The number of rows.
    pub fn count(&self) -> usize {
        self.bytes.len() / self.stride
    }
}

/// Bags of ids: bag `b` is `ids[offsets[b] .. offsets[b + 1]]`.
#[derive(Clone, Copy, Debug)]
pub struct Bags<'a> {
    /// `B + 1` entries, non-decreasing, the last at most `ids.len()`
    pub offsets: &'a [u32],
    pub ids: &'a [u32],
}

impl<'a> Bags<'a> {
    pub fn new(offsets: &'a [u32], ids: &'a [u32]) -> Self {
        Bags { offsets, ids }
    }

    /// The number of bags, `B`.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids of all the bags, `ids[offsets[0] .. offsets[B]]`.
    pub fn all_ids(&self) -> &'a [u32] {
        let (s, e) = (self.offsets[0] as usize, self.offsets[self.len()] as usize);
        &self.ids[s..e]
    }
}

/// Where pooled vectors go: bag `b` at `out[b * stride ..][..D]`.
#[derive(Debug)]
pub struct Pooled<'a> {
    pub out: &'a mut [f32],
    /// floats from one bag's output row to the next, at least D
    pub stride: usize,
}

impl<'a> Pooled<'a> {
    pub fn new(out: &'a mut [f32], stride: usize) -> Self {
        Pooled { out, stride }
    }

    /// The same output, reborrowed (for a caller that pools into it more than once).
    pub fn reborrow(&mut self) -> Pooled<'_> {
        Pooled::new(self.out, self.stride)
    }
}

/// Sum-pooled embedding bags: the run-time dispatched entry point (AVX2 + FMA + F16C with
/// software prefetch where the CPU has them, [`bag_sum_ref`] otherwise). See the module doc
/// for the contract.
pub fn bag_sum(rows: Rows, bags: Bags, out: Pooled) {
    bag_sum_with(isa(), rows, bags, out)
}

/// [`bag_sum`] on a given instruction set (tests run every path on one CPU).
///
/// # Panics
/// If `isa` is not supported by this CPU, on a stride shorter than a row or not dividing the
/// table, malformed offsets, an id out of range, or an output slice too short.
pub fn bag_sum_with(isa: Isa, rows: Rows, bags: Bags, out: Pooled) {
    check_args(&rows, &bags, &out);
    match isa {
        Isa::Scalar => bag_sum_ref(rows, bags, out),
        // the gather is an AVX2 kernel; an AVX-512 CPU runs it too
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => {
            assert!(
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            );
            // SAFETY: the CPU has AVX2, FMA and F16C (asserted above); the arguments were
            // checked by `check_args` and every id is bounds-checked in the kernel before its load.
            unsafe { x86::bag_sum_avx2(rows, bags, out) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512 => panic!("AVX2 kernels exist only on x86_64"),
    }
}

/// The argument check every path makes before it gathers.
fn check_args(rows: &Rows, bags: &Bags, out: &Pooled) {
    let (fmt, dim, stride) = (rows.format, rows.dim, rows.stride);
    assert!(dim > 0, "embedding dim must be positive");
    let row_bytes = fmt.row_bytes(dim);
    assert!(
        stride >= row_bytes,
        "row stride {stride} < {row_bytes} bytes of an {} row of D = {dim}",
        fmt.name()
    );
    assert!(
        rows.bytes.len().is_multiple_of(stride),
        "table length {} is not a multiple of the row stride {stride}",
        rows.bytes.len()
    );
    let offsets = bags.offsets;
    assert!(!offsets.is_empty(), "offsets need B + 1 entries");
    let n = offsets.len() - 1;
    assert!(
        offsets.windows(2).all(|w| w[0] <= w[1]),
        "offsets must be non-decreasing"
    );
    assert!(
        offsets[n] as usize <= bags.ids.len(),
        "offsets run past the ids"
    );
    if n > 0 {
        assert!(
            out.stride >= dim,
            "output stride {} < D = {dim}",
            out.stride
        );
        assert!(
            out.out.len() >= (n - 1) * out.stride + dim,
            "output too short for {n} bags"
        );
    }
}

/// The scalar reference: the oracle for every fast path, and the fallback. Sums
/// [`dequantize_row`]'s values in id order.
pub fn bag_sum_ref(rows: Rows, bags: Bags, out: Pooled) {
    check_args(&rows, &bags, &out);
    let (n_rows, dim, stride) = (rows.count(), rows.dim, rows.stride);
    let row_bytes = rows.format.row_bytes(dim);
    for (b, w) in bags.offsets.windows(2).enumerate() {
        let acc = &mut out.out[b * out.stride..b * out.stride + dim];
        acc.fill(0.0);
        for &id in &bags.ids[w[0] as usize..w[1] as usize] {
            let id = id as usize;
            assert!(
                id < n_rows,
                "id {id} out of range for a table of {n_rows} rows"
            );
            let row = &rows.bytes[id * stride..id * stride + row_bytes];
            format::decode(rows.format, row, acc, |a, v| *a += v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::testutil::{SENTINEL, fmt_strategy, paths, rng, row_values};

    /// A table of `rows` quantized rows, `stride` apart, padding filled with junk, placed
    /// `shift` bytes into its buffer (so rows are misaligned for shift > 0).
    fn make_table(
        fmt: RowFormat,
        dim: usize,
        rows: usize,
        stride: usize,
        shift: usize,
        seed: u64,
    ) -> (Vec<u8>, usize) {
        let mut buf = vec![0xA5u8; shift + rows * stride];
        let mut r = rng(seed ^ 0x5555);
        for row in 0..rows {
            // varied ranges, a constant row now and then
            let lo = 20.0 * r() - 10.0;
            let span = if row % 7 == 3 { 0.0 } else { 8.0 * r() };
            let v = row_values(dim, lo, span, seed.wrapping_add(row as u64));
            let at = shift + row * stride;
            quantize_row(fmt, &v, &mut buf[at..at + fmt.row_bytes(dim)]);
        }
        (buf, shift)
    }

    fn dequantized(fmt: RowFormat, q: &[u8], dim: usize) -> Vec<f32> {
        let mut y = vec![0.0; dim];
        dequantize_row(fmt, q, dim, &mut y);
        y
    }

    fn case() -> impl Strategy<Value = (RowFormat, usize, usize, Vec<Vec<u32>>, usize)> {
        (fmt_strategy(), 1usize..=150, 1usize..40).prop_flat_map(|(fmt, dim, rows)| {
            let bags = prop::collection::vec(prop::collection::vec(0..rows as u32, 0..25), 0..12);
            (Just(fmt), Just(dim), Just(rows), bags, 0usize..9)
        })
    }

    proptest! {
        #[test]
        fn fast_paths_match_reference(
            (fmt, dim, rows, bags, pad) in case(),
            lead in 0usize..5,
            stored_stride in any::<bool>(),
            extra in 0usize..9,
            shift in 0usize..4,
            seed in any::<u64>(),
        ) {
            let stride = if stored_stride { fmt.row_stride(dim) } else { fmt.row_bytes(dim) + extra };
            let (buf, shift) = make_table(fmt, dim, rows, stride, shift, seed);
            let table = Rows::new(fmt, &buf[shift..], stride, dim);
            // `lead` unused ids before the first bag: offsets[0] > 0, as a thread's sub-range sees.
            let mut ids: Vec<u32> = (0..lead).map(|i| (i % rows) as u32).collect();
            let mut offsets = vec![ids.len() as u32];
            for b in &bags {
                ids.extend_from_slice(b);
                offsets.push(ids.len() as u32);
            }
            let bagged = Bags::new(&offsets, &ids);
            let out_stride = dim + pad;
            let n_out = bags.len() * out_stride + 8;
            let mut want = vec![SENTINEL; n_out];
            bag_sum_ref(table, bagged, Pooled::new(&mut want, out_stride));

            // the reference itself against dequantize_row and an f64 sum
            let deq: Vec<Vec<f32>> = (0..rows)
                .map(|r| dequantized(fmt, &table.bytes[r * stride..(r + 1) * stride], dim))
                .collect();
            // |value| sums: the scale of the rounding error of a sum
            let mut mag = vec![0.0f64; n_out];
            for (b, bag) in bags.iter().enumerate() {
                for c in 0..dim {
                    let s: f64 = bag.iter().map(|&id| deq[id as usize][c] as f64).sum();
                    let m: f64 = bag.iter().map(|&id| deq[id as usize][c].abs() as f64).sum();
                    mag[b * out_stride + c] = m;
                    let w = want[b * out_stride + c] as f64;
                    prop_assert!((w - s).abs() <= 1e-5 * (1.0 + m), "reference at bag {b} col {c}: {w} vs {s}");
                }
            }
            for isa in paths() {
                let mut got = vec![SENTINEL; n_out];
                bag_sum_with(isa, table, bagged, Pooled::new(&mut got, out_stride));
                let mut dispatched = vec![SENTINEL; n_out];
                bag_sum(table, bagged, Pooled::new(&mut dispatched, out_stride));
                for (name, got) in [("with", &got), ("dispatched", &dispatched)] {
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        let in_bag = i < bags.len() * out_stride && i % out_stride < dim;
                        if in_bag {
                            prop_assert!(
                                ((g - w).abs() as f64) <= 1e-4 * (1.0 + mag[i]),
                                "{:?} {} {} at {}: {} vs {}", isa, name, fmt.name(), i, g, w
                            );
                        } else {
                            prop_assert_eq!(*g, SENTINEL, "{:?} {} {} wrote padding at {}", isa, name, fmt.name(), i);
                        }
                    }
                }
            }
        }

        /// fp32 from an f32 slice ([`Rows::f32`]) against an f64 sum, on every path.
        #[test]
        fn f32_slices_pool_exactly_in_id_order(dim in 1usize..150, rows in 1usize..40,
                                               bags in prop::collection::vec(prop::collection::vec(0u32..40, 0..25), 0..12)) {
            let table: Vec<f32> = (0..rows * dim).map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0).collect();
            let mut ids = Vec::new();
            let mut offsets = vec![0u32];
            for b in &bags {
                ids.extend(b.iter().map(|&i| i % rows as u32));
                offsets.push(ids.len() as u32);
            }
            for isa in paths() {
                let mut got = vec![SENTINEL; bags.len() * dim + 1];
                bag_sum_with(isa, Rows::f32(&table, dim), Bags::new(&offsets, &ids), Pooled::new(&mut got, dim));
                for b in 0..bags.len() {
                    for c in 0..dim {
                        let bag = &ids[offsets[b] as usize..offsets[b + 1] as usize];
                        // the same additions in the same order as a plain loop
                        let want = bag.iter().fold(0.0f32, |a, &id| a + table[id as usize * dim + c]);
                        prop_assert_eq!(got[b * dim + c], want, "{:?} bag {} col {}", isa, b, c);
                    }
                }
                prop_assert_eq!(got[bags.len() * dim], SENTINEL);
            }
        }
    }

    #[test]
    fn last_row_on_every_path() {
        for fmt in RowFormat::ALL {
            for dim in [1, 3, 7, 8, 9, 16, 33, 64, 65, 128, 129] {
                for stride in [fmt.row_bytes(dim), fmt.row_stride(dim)] {
                    let rows = 3;
                    let (buf, _) = make_table(fmt, dim, rows, stride, 0, dim as u64);
                    let last = dequantized(fmt, &buf[(rows - 1) * stride..], dim);
                    for isa in paths() {
                        let mut out = vec![SENTINEL; dim + 1];
                        bag_sum_with(
                            isa,
                            Rows::new(fmt, &buf, stride, dim),
                            Bags::new(&[0, 2], &[2, 2]),
                            Pooled::new(&mut out, dim),
                        );
                        for (c, v) in out[..dim].iter().enumerate() {
                            assert!(
                                (v - 2.0 * last[c]).abs() <= 1e-5 * (1.0 + v.abs()),
                                "{isa:?} {fmt:?} D = {dim}"
                            );
                        }
                        assert_eq!(out[dim], SENTINEL);
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn out_of_range_id_panics_on_reference() {
        let mut out = [0.0; 2];
        let rows = Rows::new(RowFormat::Int8, &[0; 10], 10, 2);
        bag_sum_ref(rows, Bags::new(&[0, 1], &[1]), Pooled::new(&mut out, 2));
    }

    #[test]
    fn out_of_range_id_panics_on_every_path() {
        for fmt in RowFormat::ALL {
            for dim in [3, 32, 100] {
                let stride = fmt.row_stride(dim);
                let table = vec![0u8; 2 * stride];
                for isa in paths() {
                    for ids in [[0u32, 2], [2, 0], [u32::MAX, 0]] {
                        let r = std::panic::catch_unwind(|| {
                            let mut out = vec![0.0; dim];
                            bag_sum_with(
                                isa,
                                Rows::new(fmt, &table, stride, dim),
                                Bags::new(&[0, 2], &ids),
                                Pooled::new(&mut out, dim),
                            );
                        });
                        assert!(r.is_err(), "{isa:?} {fmt:?} D = {dim} accepted ids {ids:?}");
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "row stride")]
    fn stride_shorter_than_a_row_panics() {
        let mut out = [0.0; 4];
        let rows = Rows::new(RowFormat::Int8, &[0; 22], 11, 4);
        bag_sum(rows, Bags::new(&[0, 1], &[0]), Pooled::new(&mut out, 4));
    }

    #[test]
    #[should_panic(expected = "not a multiple")]
    fn table_not_a_multiple_of_the_stride_panics() {
        let mut out = [0.0; 4];
        let rows = Rows::new(RowFormat::Int8, &[0; 20], 12, 4);
        bag_sum(rows, Bags::new(&[0, 1], &[0]), Pooled::new(&mut out, 4));
    }

    #[test]
    #[should_panic(expected = "non-decreasing")]
    fn decreasing_offsets_panic() {
        let mut out = [0.0; 4];
        let rows = Rows::new(RowFormat::F16, &[0; 8], 8, 4);
        bag_sum(rows, Bags::new(&[1, 0, 1], &[0]), Pooled::new(&mut out, 4));
    }

    #[test]
    #[should_panic(expected = "output too short")]
    fn short_output_panics() {
        let mut out = [0.0; 5];
        let rows = Rows::new(RowFormat::F32, &[0; 16], 16, 4);
        bag_sum(rows, Bags::new(&[0, 1, 1], &[0]), Pooled::new(&mut out, 4));
    }
}
