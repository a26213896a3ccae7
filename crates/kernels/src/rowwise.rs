//! Embedding bags with sum pooling over row-wise stored tables in FBGEMM's fused layouts:
//! fp32, fp16, and 8-bit / 4-bit row-wise quantized rows that carry their own scale and bias.
//!
//! A table is `rows` rows of `stride` bytes; a row of `D` values starts with
//! [`RowFormat::row_bytes`]`(D)` payload bytes (little-endian), padding fills it up to the
//! stride (dlrs stores tables with [`RowFormat::row_stride`]):
//!
//! ```text
//! fp32  [f32; D]                                  4 D bytes
//! fp16  [f16; D]                                  2 D bytes
//! int8  [u8; D]           [scale f32][bias f32]   D + 8 bytes          (FBGEMM Fused8BitRowwise, SBFloat)
//! int4  [u8; ceil(D / 2)] [scale f16][bias f16]   ceil(D / 2) + 4 bytes (FBGEMM FusedNBitRowwise, bit rate 4, SBHalf)
//!       value 2k is the low nibble of byte k, value 2k + 1 its high nibble
//!
//! value(row, c) = row.f32[c] | f32(row.f16[c]) | scale * q[c] + bias
//!
//! for b in 0..B:
//!     acc[0..D] = 0
//!     for i in offsets[b]..offsets[b + 1]:
//!         acc[c] += value(table[ids[i] * stride ..], c)     for c in 0..D
//!     out[b * out_stride .. b * out_stride + D] = acc       // an empty bag writes zeros
//! ```
//!
//! The offsets / ids / output contract is the one of [`crate::embedding`]: `offsets[0]` may
//! be > 0, an id `>= rows` or malformed offsets are a caller bug and panic, and nothing is
//! ever clamped or remapped. The fast kernels sum a quantized bag as
//! `sum(scale * q) + sum(bias)` (FBGEMM's order), so they agree with the reference to
//! rounding, not bit for bit.
//!
//! ```
//! use dlrs_kernels::rowwise::{RowFormat, bag_sum_rows, quantize_row};
//! let (fmt, dim) = (RowFormat::Int8, 4);
//! let stride = fmt.row_stride(dim); // 12 payload bytes, stored 16 apart
//! let mut table = vec![0u8; 2 * stride];
//! quantize_row(fmt, &[0.0, 1.0, 2.0, 255.0], &mut table[..fmt.row_bytes(dim)]);
//! quantize_row(fmt, &[-1.0; 4], &mut table[stride..stride + fmt.row_bytes(dim)]);
//! let mut out = [f32::NAN; 8];
//! bag_sum_rows(fmt, &table, stride, dim, &[0, 2, 2], &[0, 1], &mut out, 4);
//! assert_eq!(out, [-1.0, 0.0, 1.0, 254.0, 0.0, 0.0, 0.0, 0.0]);
//! ```

use crate::cpu::{Isa, isa};

/// Row formats, with stable codes (a code is never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowFormat {
    /// `D` little-endian f32.
    F32 = 0,
    /// `D` little-endian IEEE half floats.
    F16 = 1,
    /// `D` u8, then f32 scale and f32 bias.
    Int8 = 2,
    /// `ceil(D / 2)` bytes of nibbles (low nibble first), then f16 scale and f16 bias.
    Int4 = 3,
}

impl RowFormat {
    /// Every format, in code order.
    pub const ALL: [RowFormat; 4] = [
        RowFormat::F32,
        RowFormat::F16,
        RowFormat::Int8,
        RowFormat::Int4,
    ];

    /// The stable code of this format (what a file stores).
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The format of a code, `None` for an unknown code.
    pub fn from_code(c: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.code() == c)
    }

    /// `"fp32"`, `"fp16"`, `"int8"` or `"int4"`.
    pub fn name(self) -> &'static str {
        match self {
            RowFormat::F32 => "fp32",
            RowFormat::F16 => "fp16",
            RowFormat::Int8 => "int8",
            RowFormat::Int4 => "int4",
        }
    }

    /// The inverse of [`RowFormat::name`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == s)
    }

    /// Payload bytes of one row of `dim` values, unpadded: fp32 `4 dim`, fp16 `2 dim`,
    /// int8 `dim + 8`, int4 `ceil(dim / 2) + 4`.
    pub fn row_bytes(self, dim: usize) -> usize {
        match self {
            RowFormat::F32 => 4 * dim,
            RowFormat::F16 => 2 * dim,
            RowFormat::Int8 => dim + 8,
            RowFormat::Int4 => dim.div_ceil(2) + 4,
        }
    }

    /// The row stride dlrs stores tables with: `row_bytes` rounded up to a multiple of 4; then,
    /// if that is <= 64, rounded up to the next power of two (so a row never straddles a
    /// 64-byte cache line when the table starts 64-byte aligned); if > 64, rounded up to a
    /// multiple of 64 when the padding added is at most 25% of the (4-rounded) row, else left.
    pub fn row_stride(self, dim: usize) -> usize {
        let r = self.row_bytes(dim).next_multiple_of(4);
        if r == 0 {
            0
        } else if r <= 64 {
            r.next_power_of_two()
        } else {
            let up = r.next_multiple_of(64);
            if 4 * (up - r) <= r { up } else { r }
        }
    }
}

/// Quantizes one f32 row into `out` (`out.len() == fmt.row_bytes(src.len())`), with FBGEMM's
/// semantics:
///
/// - fp32: a little-endian copy; fp16: each value rounded to the nearest f16 (ties to even).
/// - int8 (`FloatToFused8BitRowwiseQuantizedSBFloat`): `bias = min`, `range = max - min`,
///   `scale = range / 255`, `q = round_half_even((x - min) * (255 / (range + 1e-8)))`
///   clamped to `0..=255`.
/// - int4 (`FloatToFusedNBitRowwiseQuantizedSBHalf`, bit rate 4): `min` is rounded to f16 and
///   used as such (it is the bias), `range = max - min`, `scale = range / 15` (1 when the
///   range is 0) rounded to f16, and 1 instead if that f16 is 0 or its inverse is infinite;
///   `q = round_half_even((x - min) * (1 / scale))` clamped to `0..=15`. An odd `D` leaves
///   the last byte's high nibble 0.
///
/// Non-finite inputs give unspecified (but memory-safe) rows.
///
/// # Panics
/// If `src` is empty or `out` has the wrong length.
pub fn quantize_row(fmt: RowFormat, src: &[f32], out: &mut [u8]) {
    let dim = src.len();
    assert!(dim > 0, "cannot quantize an empty row");
    assert_eq!(
        out.len(),
        fmt.row_bytes(dim),
        "{} row of D = {dim} needs {} bytes",
        fmt.name(),
        fmt.row_bytes(dim)
    );
    match fmt {
        RowFormat::F32 => {
            for (o, x) in out.chunks_exact_mut(4).zip(src) {
                o.copy_from_slice(&x.to_le_bytes());
            }
        }
        RowFormat::F16 => {
            for (o, &x) in out.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&f32_to_f16(x).to_le_bytes());
            }
        }
        RowFormat::Int8 => {
            let (min, max) = min_max(src);
            let range = max - min;
            let scale = range / 255.0;
            let inverse_scale = 255.0 / (range + 1e-8);
            for (o, &x) in out[..dim].iter_mut().zip(src) {
                *o = ((x - min) * inverse_scale)
                    .round_ties_even()
                    .clamp(0.0, 255.0) as u8;
            }
            out[dim..dim + 4].copy_from_slice(&scale.to_le_bytes());
            out[dim + 4..].copy_from_slice(&min.to_le_bytes());
        }
        RowFormat::Int4 => {
            let (min, max) = min_max(src);
            let bias = f32_to_f16(min);
            let min = f16_to_f32(bias);
            let range = max - min;
            let mut scale = f16_to_f32(f32_to_f16(if range == 0.0 { 1.0 } else { range / 15.0 }));
            if scale == 0.0 {
                scale = 1.0;
            }
            let mut inverse_scale = 1.0 / scale;
            if inverse_scale.is_infinite() {
                scale = 1.0;
                inverse_scale = 1.0;
            }
            let n = dim.div_ceil(2);
            out[..n].fill(0);
            for (c, &x) in src.iter().enumerate() {
                let q = ((x - min) * inverse_scale)
                    .round_ties_even()
                    .clamp(0.0, 15.0) as u8;
                out[c / 2] |= q << (4 * (c % 2));
            }
            out[n..n + 2].copy_from_slice(&f32_to_f16(scale).to_le_bytes());
            out[n + 2..].copy_from_slice(&bias.to_le_bytes());
        }
    }
}

fn min_max(src: &[f32]) -> (f32, f32) {
    src.iter()
        .fold((src[0], src[0]), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

/// Decodes one row: `out[c] = scale * q[c] + bias` (int8, int4), the f16 value as f32 (fp16),
/// the f32 (fp32): exactly the values the kernels sum. `src` may be longer than
/// `fmt.row_bytes(dim)` (a padded row); only `out[..dim]` is written.
///
/// # Panics
/// If `src` is shorter than `fmt.row_bytes(dim)` or `out` shorter than `dim`.
pub fn dequantize_row(fmt: RowFormat, src: &[u8], dim: usize, out: &mut [f32]) {
    assert!(
        src.len() >= fmt.row_bytes(dim),
        "{} row of D = {dim} needs {} bytes",
        fmt.name(),
        fmt.row_bytes(dim)
    );
    assert!(out.len() >= dim, "output shorter than D = {dim}");
    decode(fmt, src, &mut out[..dim], |o, v| *o = v);
}

/// `op(&mut out[c], value(row, c))` for `c` in `0..out.len()` (`out.len() == D`, `row` holds
/// at least `row_bytes(D)` bytes), as zipped loops the compiler can vectorize.
#[inline(always)]
fn decode(fmt: RowFormat, row: &[u8], out: &mut [f32], op: impl Fn(&mut f32, f32)) {
    let dim = out.len();
    let le32 = |b: &[u8]| f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let le16 = |b: &[u8]| f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    match fmt {
        RowFormat::F32 => out
            .iter_mut()
            .zip(row[..4 * dim].chunks_exact(4))
            .for_each(|(o, b)| op(o, le32(b))),
        RowFormat::F16 => out
            .iter_mut()
            .zip(row[..2 * dim].chunks_exact(2))
            .for_each(|(o, b)| op(o, le16(b))),
        RowFormat::Int8 => {
            let (scale, bias) = (le32(&row[dim..]), le32(&row[dim + 4..]));
            out.iter_mut()
                .zip(&row[..dim])
                .for_each(|(o, &q)| op(o, scale * q as f32 + bias));
        }
        RowFormat::Int4 => {
            let n = dim.div_ceil(2);
            let (scale, bias) = (le16(&row[n..]), le16(&row[n + 2..]));
            let mut pairs = out.chunks_exact_mut(2);
            for (o, &q) in (&mut pairs).zip(&row[..n]) {
                op(&mut o[0], scale * (q & 15) as f32 + bias);
                op(&mut o[1], scale * (q >> 4) as f32 + bias);
            }
            if let [o] = pairs.into_remainder() {
                op(o, scale * (row[n - 1] & 15) as f32 + bias);
            }
        }
    }
}

/// f32 to IEEE half, rounding to nearest, ties to even (as F16C's `vcvtps2ph` with
/// round-to-nearest: overflow gives infinity, a NaN stays a quiet NaN with its top payload bits).
fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return sign
            | 0x7c00
            | if man != 0 {
                0x200 | (man >> 13) as u16
            } else {
                0
            };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    let (kept, rem, half) = if e <= 0 {
        // an f16 subnormal (or zero): units of 2^-24
        if e < -10 {
            return sign; // below half the smallest subnormal
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        (m >> shift, m & ((1 << shift) - 1), 1 << (shift - 1))
    } else {
        (((e as u32) << 10) | (man >> 13), man & 0x1fff, 0x1000)
    };
    // a carry out of the mantissa bumps the exponent, up to infinity: still correct
    let rounded = if rem > half || (rem == half && kept & 1 == 1) {
        kept + 1
    } else {
        kept
    };
    sign | rounded as u16
}

/// IEEE half to f32 (exact; a NaN keeps its payload and is quieted, as F16C's `vcvtph2ps`).
/// Branch-free, so loops over it vectorize.
fn f16_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    // exponent and mantissa moved to their f32 places, then rebiased by 2^(127 - 15): exact
    // for normals and subnormals alike (an f16 subnormal is an f32 subnormal scaled up)
    let finite = (f32::from_bits(em << 13) * f32::from_bits(0x7780_0000)).to_bits();
    let special = 0x7f80_0000 | (em << 13) | if em > 0x7c00 { 0x40_0000 } else { 0 };
    f32::from_bits(sign | if em >= 0x7c00 { special } else { finite })
}

/// Sum-pooled embedding bags over a row-wise table: the run-time dispatched entry point
/// (AVX2 + FMA + F16C with software prefetch where the CPU has them, [`bag_sum_rows_ref`]
/// otherwise). `table` holds `table.len() / stride` rows of `stride >= fmt.row_bytes(dim)`
/// bytes; the offsets / ids / output contract is [`crate::embedding::bag_sum_f32`]'s.
#[allow(clippy::too_many_arguments)]
pub fn bag_sum_rows(
    fmt: RowFormat,
    table: &[u8],
    stride: usize,
    dim: usize,
    offsets: &[u32],
    ids: &[u32],
    out: &mut [f32],
    out_stride: usize,
) {
    bag_sum_rows_with(
        isa(),
        fmt,
        table,
        stride,
        dim,
        offsets,
        ids,
        out,
        out_stride,
    )
}

/// [`bag_sum_rows`] on a given instruction set (tests run every path on one CPU).
///
/// # Panics
/// If `isa` is not supported by this CPU, on a stride shorter than a row or not dividing the
/// table, malformed offsets, an id out of range, or an output slice too short.
#[allow(clippy::too_many_arguments)]
pub fn bag_sum_rows_with(
    isa: Isa,
    fmt: RowFormat,
    table: &[u8],
    stride: usize,
    dim: usize,
    offsets: &[u32],
    ids: &[u32],
    out: &mut [f32],
    out_stride: usize,
) {
    check_args(fmt, table, stride, dim, offsets, ids, out, out_stride);
    match isa {
        Isa::Scalar => bag_sum_rows_ref(fmt, table, stride, dim, offsets, ids, out, out_stride),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            assert!(
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            );
            // SAFETY: the CPU has AVX2, FMA and F16C (asserted above); the arguments were
            // checked by `check_args` and every id is bounds-checked in the kernel before its load.
            unsafe {
                x86::bag_sum_rows_avx2(fmt, table, stride, dim, offsets, ids, out, out_stride)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 => panic!("AVX2 kernels exist only on x86_64"),
    }
}

#[allow(clippy::too_many_arguments)]
fn check_args(
    fmt: RowFormat,
    table: &[u8],
    stride: usize,
    dim: usize,
    offsets: &[u32],
    ids: &[u32],
    out: &[f32],
    out_stride: usize,
) {
    assert!(dim > 0, "embedding dim must be positive");
    let row_bytes = fmt.row_bytes(dim);
    assert!(
        stride >= row_bytes,
        "row stride {stride} < {row_bytes} bytes of an {} row of D = {dim}",
        fmt.name()
    );
    assert!(
        table.len().is_multiple_of(stride),
        "table length {} is not a multiple of the row stride {stride}",
        table.len()
    );
    crate::embedding::check_bags(dim, offsets, ids, out, out_stride);
}

/// The scalar reference: the oracle for every fast path, and the fallback. Sums
/// [`dequantize_row`]'s values in id order.
#[allow(clippy::too_many_arguments)]
pub fn bag_sum_rows_ref(
    fmt: RowFormat,
    table: &[u8],
    stride: usize,
    dim: usize,
    offsets: &[u32],
    ids: &[u32],
    out: &mut [f32],
    out_stride: usize,
) {
    check_args(fmt, table, stride, dim, offsets, ids, out, out_stride);
    let rows = table.len() / stride;
    let row_bytes = fmt.row_bytes(dim);
    for (b, w) in offsets.windows(2).enumerate() {
        let acc = &mut out[b * out_stride..b * out_stride + dim];
        acc.fill(0.0);
        for &id in &ids[w[0] as usize..w[1] as usize] {
            let id = id as usize;
            assert!(id < rows, "id {id} out of range for a table of {rows} rows");
            let row = &table[id * stride..id * stride + row_bytes];
            decode(fmt, row, acc, |a, v| *a += v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::RowFormat;
    use crate::prefetch;

    /// Column blocks of up to 8 vectors (64 floats) keep the accumulators in registers.
    const BLOCK_VECS: usize = 8;

    const F32: u8 = RowFormat::F32 as u8;
    const F16: u8 = RowFormat::F16 as u8;
    const INT8: u8 = RowFormat::Int8 as u8;
    const INT4: u8 = RowFormat::Int4 as u8;

    /// What every block of one call shares.
    struct Gather<'a> {
        base: *const u8,
        rows: usize,
        stride: usize,
        dim: usize,
        row_bytes: usize,
        ids: &'a [u32],
        pf: usize,
        /// `ids[i + pf]` exists for `i < pf_end`
        pf_end: usize,
    }

    /// # Safety
    /// The CPU must have AVX2, FMA and F16C, and the arguments must satisfy `check_args`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn bag_sum_rows_avx2(
        fmt: RowFormat,
        table: &[u8],
        stride: usize,
        dim: usize,
        offsets: &[u32],
        ids: &[u32],
        out: &mut [f32],
        out_stride: usize,
    ) {
        let pf = prefetch::distance();
        let (start, end) = (offsets[0] as usize, offsets[offsets.len() - 1] as usize);
        prefetch::prologue(
            table.as_ptr(),
            stride,
            fmt.row_bytes(dim),
            &ids[start..end],
            pf,
        );
        let g = Gather {
            base: table.as_ptr(),
            rows: table.len() / stride,
            stride,
            dim,
            row_bytes: fmt.row_bytes(dim),
            ids,
            pf,
            pf_end: (offsets[offsets.len() - 1] as usize).saturating_sub(pf),
        };
        // SAFETY: (all arms) forwarded from this function's contract.
        unsafe {
            match fmt {
                RowFormat::F32 => bags::<F32>(&g, offsets, out, out_stride),
                RowFormat::F16 => bags::<F16>(&g, offsets, out, out_stride),
                RowFormat::Int8 => bags::<INT8>(&g, offsets, out, out_stride),
                RowFormat::Int4 => bags::<INT4>(&g, offsets, out, out_stride),
            }
        }
    }

    /// A row of <= 64 values is one column block: one pass over all bags. A wider row is
    /// pooled bag by bag, one column block after the other, so a bag's rows stay in L1/L2
    /// between its blocks; the first block of each bag prefetches.
    ///
    /// # Safety
    /// AVX2+FMA+F16C present; `g` built from arguments that satisfy `check_args`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn bags<const FMT: u8>(g: &Gather, offsets: &[u32], out: &mut [f32], out_stride: usize) {
        let dim = g.dim;
        if dim <= BLOCK_VECS * 8 {
            // SAFETY: forwarded from this function's contract; one block covers columns 0 .. dim.
            unsafe { columns::<FMT>(g, 0, dim, offsets, out, out_stride) };
            return;
        }
        for b in 0..offsets.len() - 1 {
            let mut c0 = 0;
            while c0 < dim {
                let width = (dim - c0).min(BLOCK_VECS * 8);
                // SAFETY: forwarded from this function's contract; bag b's offsets and output
                // row, columns c0 .. c0 + width <= dim.
                unsafe {
                    columns::<FMT>(
                        g,
                        c0,
                        width,
                        &offsets[b..b + 2],
                        &mut out[b * out_stride..],
                        out_stride,
                    )
                };
                c0 += width;
            }
        }
    }

    /// Columns `c0 .. c0 + width` (`width <= 64`) of the bags of `offsets` (the output of
    /// bag `k` of `offsets` at `out[k * out_stride + c0 ..]`).
    ///
    /// # Safety
    /// As [`block`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn columns<const FMT: u8>(
        g: &Gather,
        c0: usize,
        width: usize,
        offsets: &[u32],
        out: &mut [f32],
        out_stride: usize,
    ) {
        // SAFETY: (all arms) forwarded from this function's contract.
        unsafe {
            match width / 8 {
                0 => block::<FMT, 0>(g, c0, width, offsets, out, out_stride),
                1 => block::<FMT, 1>(g, c0, width, offsets, out, out_stride),
                2 => block::<FMT, 2>(g, c0, width, offsets, out, out_stride),
                3 => block::<FMT, 3>(g, c0, width, offsets, out, out_stride),
                4 => block::<FMT, 4>(g, c0, width, offsets, out, out_stride),
                5 => block::<FMT, 5>(g, c0, width, offsets, out, out_stride),
                6 => block::<FMT, 6>(g, c0, width, offsets, out, out_stride),
                7 => block::<FMT, 7>(g, c0, width, offsets, out, out_stride),
                _ => block::<FMT, 8>(g, c0, width, offsets, out, out_stride),
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn tail_mask(n: usize) -> __m256i {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes)
    }

    /// 8 int4 values from the 4 bytes at `p` (value 2k = low nibble of byte k), as f32.
    ///
    /// # Safety
    /// `p .. p + 4` must be readable.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn nibbles(p: *const u8, shifts: __m256i, low4: __m256i) -> __m256 {
        // SAFETY: the caller guarantees 4 readable bytes; the read is unaligned.
        let w = unsafe { (p as *const i32).read_unaligned() };
        _mm256_cvtepi32_ps(_mm256_and_si256(
            _mm256_srlv_epi32(_mm256_set1_epi32(w), shifts),
            low4,
        ))
    }

    /// 8 int8 values from the 8 bytes at `p`, as f32.
    ///
    /// # Safety
    /// `p .. p + 8` must be readable.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn bytes8(p: *const u8) -> __m256 {
        // SAFETY: the caller guarantees 8 readable bytes; `_mm_loadl_epi64` needs no alignment.
        let v = unsafe { _mm_loadl_epi64(p as *const __m128i) };
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
    }

    /// 8 f16 values from the 16 bytes at `p`, as f32.
    ///
    /// # Safety
    /// `p .. p + 16` must be readable.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn halves8(p: *const u8) -> __m256 {
        // SAFETY: the caller guarantees 16 readable bytes; the load is unaligned.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p as *const __m128i) })
    }

    /// Pools columns `c0 .. c0 + width` (`width = 8 * NV + tail`, tail < 8) of every bag of
    /// `offsets` into `out[k * out_stride + c0 ..]`; the first column block (`c0 == 0`)
    /// prefetches rows `pf` ids ahead.
    ///
    /// A tail (`tail > 0`) only occurs in the last block of a row, so its columns are the
    /// row's last `tail` values. Loads read only inside the row's `row_bytes` payload: an
    /// int8 tail's 8-byte load runs into the scale/bias bytes and an int4 tail's 4-byte load
    /// into the scale/bias halves (lanes >= tail are garbage and never stored); an fp16 tail
    /// loads the row's last 8 values and rotates them down (a row of < 8 values is copied).
    ///
    /// # Safety
    /// AVX2+FMA+F16C present; `g` built from arguments that satisfy `check_args`;
    /// `c0 + width <= dim`, a multiple-of-64 `c0`, `offsets` a window of the checked offsets
    /// (non-empty, non-decreasing, ending at or before `ids.len()`), `out` long enough for
    /// its bags at `out_stride >= dim`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block<const FMT: u8, const NV: usize>(
        g: &Gather,
        c0: usize,
        width: usize,
        offsets: &[u32],
        out: &mut [f32],
        out_stride: usize,
    ) {
        let (base, rows, stride, dim, row_bytes) = (g.base, g.rows, g.stride, g.dim, g.row_bytes);
        let tail = width - NV * 8;
        let mask = tail_mask(tail);
        // fp16 tail: lane l takes lane l + 8 - tail of the row's last 8 values
        let rot = _mm256_and_si256(
            _mm256_add_epi32(
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                _mm256_set1_epi32(8 - tail as i32),
            ),
            _mm256_set1_epi32(7),
        );
        let shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
        let low4 = _mm256_set1_epi32(15);
        let int4_sb = dim.div_ceil(2); // int4 scale/bias offset
        let pf_end = if c0 == 0 { g.pf_end } else { 0 };
        for (b, w) in offsets.windows(2).enumerate() {
            let mut acc = [_mm256_setzero_ps(); NV];
            let mut acc_t = _mm256_setzero_ps();
            let mut bias8 = 0.0f32; // int8: the bag's sum of row biases
            let mut sb4 = _mm_setzero_ps(); // int4: lane 1 sums the row biases
            for i in w[0] as usize..w[1] as usize {
                if i < pf_end {
                    // SAFETY: i + pf < offsets[B] <= ids.len() (checked by `check_args`).
                    let pid = unsafe { *g.ids.get_unchecked(i + g.pf) } as usize;
                    prefetch::row(base, pid, stride, row_bytes);
                }
                // SAFETY: i < w[1] <= offsets[B] <= ids.len() (checked by `check_args`).
                let id = unsafe { *g.ids.get_unchecked(i) } as usize;
                assert!(id < rows, "id {id} out of range for a table of {rows} rows");
                // SAFETY: id < rows, so `row .. row + row_bytes` (row_bytes <= stride) lies inside
                // the table. Every load below stays inside those `row_bytes` bytes: vector v of
                // the block covers values c0 + 8v .. c0 + 8v + 8 <= dim, and the tail loads are
                // bounded as described in this function's doc comment.
                unsafe {
                    let row = base.add(id * stride);
                    match FMT {
                        F32 => {
                            let p = row.add(4 * c0) as *const f32;
                            for (v, a) in acc.iter_mut().enumerate() {
                                *a = _mm256_add_ps(*a, _mm256_loadu_ps(p.add(8 * v)));
                            }
                            if tail > 0 {
                                acc_t =
                                    _mm256_add_ps(acc_t, _mm256_maskload_ps(p.add(8 * NV), mask));
                            }
                        }
                        F16 => {
                            let p = row.add(2 * c0);
                            for (v, a) in acc.iter_mut().enumerate() {
                                *a = _mm256_add_ps(*a, halves8(p.add(16 * v)));
                            }
                            if tail > 0 {
                                let t = if dim >= 8 {
                                    // values dim - 8 .. dim: 16 bytes ending at the row's end
                                    _mm256_permutevar8x32_ps(halves8(row.add(2 * (dim - 8))), rot)
                                } else {
                                    let mut buf = [0u16; 8];
                                    for (j, h) in buf[..tail].iter_mut().enumerate() {
                                        *h = (row.add(2 * j) as *const u16).read_unaligned();
                                    }
                                    halves8(buf.as_ptr() as *const u8)
                                };
                                acc_t = _mm256_add_ps(acc_t, t);
                            }
                        }
                        INT8 => {
                            let scale =
                                _mm256_set1_ps((row.add(dim) as *const f32).read_unaligned());
                            bias8 += (row.add(dim + 4) as *const f32).read_unaligned();
                            let p = row.add(c0);
                            for (v, a) in acc.iter_mut().enumerate() {
                                *a = _mm256_fmadd_ps(bytes8(p.add(8 * v)), scale, *a);
                            }
                            if tail > 0 {
                                // bytes dim - tail .. dim - tail + 8 <= dim + 8 = row_bytes
                                acc_t = _mm256_fmadd_ps(bytes8(p.add(8 * NV)), scale, acc_t);
                            }
                        }
                        _ => {
                            // INT4: [scale, bias, ..] from the two halves after the nibbles
                            let sb = _mm_cvtph_ps(_mm_cvtsi32_si128(
                                (row.add(int4_sb) as *const i32).read_unaligned(),
                            ));
                            let scale = _mm256_broadcastss_ps(sb);
                            sb4 = _mm_add_ps(sb4, sb);
                            let p = row.add(c0 / 2);
                            for (v, a) in acc.iter_mut().enumerate() {
                                *a =
                                    _mm256_fmadd_ps(nibbles(p.add(4 * v), shifts, low4), scale, *a);
                            }
                            if tail > 0 {
                                // bytes (dim - tail) / 2 .. (dim - tail) / 2 + 4 <= ceil(dim / 2) + 4 = row_bytes
                                acc_t = _mm256_fmadd_ps(
                                    nibbles(p.add(4 * NV), shifts, low4),
                                    scale,
                                    acc_t,
                                );
                            }
                        }
                    }
                }
            }
            if FMT == INT8 || FMT == INT4 {
                let bias = if FMT == INT8 {
                    _mm256_set1_ps(bias8)
                } else {
                    _mm256_broadcastss_ps(_mm_movehdup_ps(sb4))
                };
                for a in acc.iter_mut() {
                    *a = _mm256_add_ps(*a, bias);
                }
                acc_t = _mm256_add_ps(acc_t, bias);
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

    /// splitmix64: deterministic test data from one seed.
    fn rng(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed;
        move || {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 // [0, 1)
        }
    }

    /// A row of `dim` values in `[lo, lo + span)`; `span == 0` gives a constant row.
    fn row_values(dim: usize, lo: f32, span: f32, seed: u64) -> Vec<f32> {
        let mut r = rng(seed);
        (0..dim).map(|_| lo + span * r()).collect()
    }

    fn fmt_strategy() -> impl Strategy<Value = RowFormat> {
        prop::sample::select(RowFormat::ALL.to_vec())
    }

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
            let table = &buf[shift..];
            // `lead` unused ids before the first bag: offsets[0] > 0, as a thread's sub-range sees.
            let mut ids: Vec<u32> = (0..lead).map(|i| (i % rows) as u32).collect();
            let mut offsets = vec![ids.len() as u32];
            for b in &bags {
                ids.extend_from_slice(b);
                offsets.push(ids.len() as u32);
            }
            let out_stride = dim + pad;
            let n_out = bags.len() * out_stride + 8;
            let mut want = vec![SENTINEL; n_out];
            bag_sum_rows_ref(fmt, table, stride, dim, &offsets, &ids, &mut want, out_stride);

            // the reference itself against dequantize_row and an f64 sum
            let deq: Vec<Vec<f32>> = (0..rows)
                .map(|r| {
                    let mut v = vec![0.0; dim];
                    dequantize_row(fmt, &table[r * stride..(r + 1) * stride], dim, &mut v);
                    v
                })
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
                bag_sum_rows_with(isa, fmt, table, stride, dim, &offsets, &ids, &mut got, out_stride);
                let mut dispatched = vec![SENTINEL; n_out];
                bag_sum_rows(fmt, table, stride, dim, &offsets, &ids, &mut dispatched, out_stride);
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

        #[test]
        fn round_trip_error_bounds(
            fmt in fmt_strategy(),
            dim in 1usize..=150,
            lo in -100.0f32..100.0,
            span_exp in -8i32..3,
            constant in prop::bool::weighted(0.1),
            seed in any::<u64>(),
        ) {
            let span = if constant { 0.0 } else { 10f32.powi(span_exp) };
            let x = row_values(dim, lo, span, seed);
            let mut q = vec![0u8; fmt.row_bytes(dim)];
            quantize_row(fmt, &x, &mut q);
            let mut y = vec![0.0; dim];
            dequantize_row(fmt, &q, dim, &mut y);
            let (min, max) = min_max(&x);
            match fmt {
                RowFormat::F32 => prop_assert_eq!(&x, &y),
                RowFormat::F16 => for (a, b) in x.iter().zip(&y) {
                    // half an f16 ulp (2^-11 relative for normals, 2^-25 for subnormals)
                    prop_assert!((a - b).abs() <= (a.abs() * 2f32.powi(-11)).max(2f32.powi(-25)), "{a} -> {b}");
                },
                RowFormat::Int8 => {
                    let scale = f32::from_le_bytes(q[dim..dim + 4].try_into().unwrap());
                    let bias = f32::from_le_bytes(q[dim + 4..].try_into().unwrap());
                    prop_assert_eq!(bias, min);
                    prop_assert_eq!(scale, (max - min) / 255.0);
                    for (a, b) in x.iter().zip(&y) {
                        prop_assert!((a - b).abs() <= scale / 2.0 + 1e-6 * (1.0 + a.abs()), "{a} -> {b}, scale {scale}");
                    }
                    if min == max {
                        prop_assert_eq!(&x, &y);
                    }
                }
                RowFormat::Int4 => {
                    let n = dim.div_ceil(2);
                    let scale = f16_to_f32(u16::from_le_bytes([q[n], q[n + 1]]));
                    let bias = f16_to_f32(u16::from_le_bytes([q[n + 2], q[n + 3]]));
                    prop_assert_eq!(bias, f16_to_f32(f32_to_f16(min)));
                    if dim % 2 == 1 {
                        prop_assert_eq!(q[n - 1] >> 4, 0, "odd D: high nibble of the last byte");
                    }
                    // half a step, plus what the f16 rounding of the bias (values below it clamp
                    // to q = 0) and of the scale (the top value may clamp to q = 15) add
                    let range = max - bias;
                    let bound = scale.abs() / 2.0 + (min - bias).abs() + (range - 15.0 * scale).abs() + 1e-6 * (1.0 + max.abs());
                    for (a, b) in x.iter().zip(&y) {
                        prop_assert!((a - b).abs() <= bound, "{a} -> {b}, scale {scale} bias {bias}");
                    }
                }
            }
        }
    }

    fn quantized(fmt: RowFormat, x: &[f32]) -> Vec<u8> {
        let mut q = vec![0u8; fmt.row_bytes(x.len())];
        quantize_row(fmt, x, &mut q);
        q
    }

    fn dequantized(fmt: RowFormat, q: &[u8], dim: usize) -> Vec<f32> {
        let mut y = vec![0.0; dim];
        dequantize_row(fmt, q, dim, &mut y);
        y
    }

    #[test]
    fn int8_known_rows() {
        // FBGEMM: [0, 1, .., 255] has scale 1, bias 0 and q = value
        let x: Vec<f32> = (0..256).map(|i| i as f32).collect();
        let q = quantized(RowFormat::Int8, &x);
        assert!(q[..256].iter().enumerate().all(|(i, &v)| v as usize == i));
        assert_eq!(f32::from_le_bytes(q[256..260].try_into().unwrap()), 1.0);
        assert_eq!(f32::from_le_bytes(q[260..264].try_into().unwrap()), 0.0);
        assert_eq!(dequantized(RowFormat::Int8, &q, 256), x);
        // min maps to 0, max to 255, ties round to even: (x - min) * 255 / 2 for x = 1/255 ..
        let q = quantized(RowFormat::Int8, &[-1.0, 1.0, 0.0]);
        assert_eq!(&q[..3], &[0, 255, 128]); // 127.5 rounds to even 128
        assert_eq!(f32::from_le_bytes(q[3..7].try_into().unwrap()), 2.0 / 255.0);
        assert_eq!(f32::from_le_bytes(q[7..11].try_into().unwrap()), -1.0);
        // ties to even (lrintf), not away from zero
        let q = quantized(RowFormat::Int8, &[0.0, 255.0, 0.5, 2.5, 3.5, 254.5]);
        assert_eq!(&q[..6], &[0, 255, 0, 2, 4, 254]);
    }

    #[test]
    fn int4_known_rows() {
        let x: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let q = quantized(RowFormat::Int4, &x);
        assert_eq!(&q[..8], &[0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]); // low nibble first
        assert_eq!(&q[8..], &[0x00, 0x3c, 0x00, 0x00]); // f16 scale 1.0, f16 bias 0.0
        assert_eq!(dequantized(RowFormat::Int4, &q, 16), x);
        // scale 1.5 (exact in f16), bias -3, odd D: the last high nibble stays 0
        let x: Vec<f32> = [0, 15, 7, 8, 1]
            .iter()
            .map(|&k| -3.0 + 1.5 * k as f32)
            .collect();
        let q = quantized(RowFormat::Int4, &x);
        assert_eq!(&q[..3], &[0xF0, 0x87, 0x01]);
        assert_eq!(f16_to_f32(u16::from_le_bytes([q[3], q[4]])), 1.5);
        assert_eq!(f16_to_f32(u16::from_le_bytes([q[5], q[6]])), -3.0);
        assert_eq!(dequantized(RowFormat::Int4, &q, 5), x);
        // ties to even (lrintf), not away from zero
        let q = quantized(RowFormat::Int4, &[0.0, 15.0, 0.5, 2.5, 3.5, 14.5]);
        assert_eq!(&q[..3], &[0xF0, 0x20, 0xE4]); // q = 0, 15, 0, 2, 4, 14
    }

    #[test]
    fn constant_rows_round_trip() {
        for v in [0.0f32, 1.0, -7.25, 0.3, 1e-3, -123.456, 3e4] {
            for dim in [1, 2, 7, 32, 33] {
                let x = vec![v; dim];
                for fmt in RowFormat::ALL {
                    let y = dequantized(fmt, &quantized(fmt, &x), dim);
                    let f16v = f16_to_f32(f32_to_f16(v));
                    match fmt {
                        RowFormat::F32 | RowFormat::Int8 => assert_eq!(y, x, "{fmt:?} {v}"),
                        RowFormat::F16 => assert!(y.iter().all(|&u| u == f16v), "{fmt:?} {v}"),
                        RowFormat::Int4 if f16v == v => assert_eq!(y, x, "{fmt:?} {v}"),
                        // the bias is f16(v); one step of the tiny range gets back to within 1e-6
                        RowFormat::Int4 => {
                            assert!(
                                y.iter().all(|&u| (u - v).abs() <= 1e-6 * (1.0 + v.abs())),
                                "{fmt:?} {v}: {y:?}"
                            )
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn f16_conversion_known_values() {
        let cases: [(f32, u16); 14] = [
            (0.0, 0x0000),
            (-0.0, 0x8000),
            (1.0, 0x3c00),
            (-2.0, 0xc000),
            (65504.0, 0x7bff),
            (65519.99, 0x7bff),
            (65520.0, 0x7c00), // rounds to infinity
            (f32::INFINITY, 0x7c00),
            (2f32.powi(-24), 0x0001),
            (2f32.powi(-25), 0x0000),             // tie to even: 0
            (3.0 * 2f32.powi(-25), 0x0002),       // tie to even: 2
            (1.0 + 2f32.powi(-11), 0x3c00),       // tie to even
            (1.0 + 3.0 * 2f32.powi(-11), 0x3c02), // tie to even (up)
            (2f32.powi(-14) * (1.0 - 2f32.powi(-11)), 0x0400), // rounds up to the smallest normal
        ];
        for (x, h) in cases {
            assert_eq!(f32_to_f16(x), h, "{x:e}");
        }
        for h in [
            0x0000u16, 0x8000, 0x3c00, 0xc000, 0x7bff, 0x0001, 0x03ff, 0x0400, 0x7c00, 0xfc00,
        ] {
            assert_eq!(f32_to_f16(f16_to_f32(h)), h, "{h:#x}");
        }
        assert!(f16_to_f32(0x7e00).is_nan() && f32_to_f16(f32::NAN) & 0x7c00 == 0x7c00);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn f16_conversion_matches_f16c() {
        use std::arch::x86_64::*;
        if !is_x86_feature_detected!("f16c") {
            return;
        }
        #[target_feature(enable = "f16c")]
        fn hw_to_f16(x: f32) -> u16 {
            _mm_extract_epi16::<0>(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(x))) as u16
        }
        #[target_feature(enable = "f16c")]
        fn hw_to_f32(h: u16) -> f32 {
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
        }
        // SAFETY: (every call below) the CPU has F16C (checked above).
        for h in 0..=u16::MAX {
            assert_eq!(
                f16_to_f32(h).to_bits(),
                unsafe { hw_to_f32(h) }.to_bits(),
                "{h:#x}"
            );
            // around every f16 value and the midpoints to its neighbours
            let b = f16_to_f32(h).to_bits();
            for d in [
                -(1 << 12) - 1,
                -(1 << 12),
                -(1 << 12) + 1,
                -1,
                0,
                1,
                (1 << 12) - 1,
                1 << 12,
                (1 << 12) + 1,
            ] {
                let x = f32::from_bits(b.wrapping_add_signed(d));
                assert_eq!(
                    f32_to_f16(x),
                    unsafe { hw_to_f16(x) },
                    "{x:e} ({:#x})",
                    x.to_bits()
                );
            }
        }
        for bits in (0..=u32::MAX).step_by(65521) {
            let x = f32::from_bits(bits);
            assert_eq!(f32_to_f16(x), unsafe { hw_to_f16(x) }, "{x:e} ({bits:#x})");
        }
    }

    #[test]
    fn row_bytes_and_stride_table() {
        use RowFormat::*;
        // (format, dim, row_bytes, row_stride)
        let table = [
            (F32, 16, 64, 64),
            (F32, 32, 128, 128),
            (F32, 64, 256, 256),
            (F32, 128, 512, 512),
            (F32, 13, 52, 64),
            (F16, 16, 32, 32),
            (F16, 32, 64, 64),
            (F16, 64, 128, 128),
            (F16, 128, 256, 256),
            (F16, 13, 26, 32),
            (Int8, 16, 24, 32),
            (Int8, 32, 40, 64),
            (Int8, 64, 72, 72),    // 128 would pad 56 bytes
            (Int8, 128, 136, 136), // 192 would pad 56
            (Int8, 13, 21, 32),
            (Int4, 16, 12, 16),
            (Int4, 32, 20, 32),
            (Int4, 64, 36, 64),
            (Int4, 128, 68, 68),
            (Int4, 13, 11, 16),
            // the 25% rule around 64-byte multiples
            (Int8, 170, 178, 192), // 180 -> 192 pads 12 <= 45
            (Int8, 130, 138, 140), // 140 -> 192 would pad 52 > 35
            (F32, 17, 68, 68),     // 68 -> 128 would pad 60 > 17
            (F32, 25, 100, 100),   // 100 -> 128 would pad 28 > 25
            (F32, 26, 104, 128),   // 104 -> 128 pads 24 <= 26
        ];
        for (fmt, dim, bytes, stride) in table {
            assert_eq!(fmt.row_bytes(dim), bytes, "{fmt:?} D = {dim}");
            assert_eq!(fmt.row_stride(dim), stride, "{fmt:?} D = {dim}");
        }
        // a row never straddles a cache line when its stride is <= 64
        for fmt in RowFormat::ALL {
            for dim in 1..=300 {
                let (b, s) = (fmt.row_bytes(dim), fmt.row_stride(dim));
                assert!(s >= b && s % 4 == 0, "{fmt:?} D = {dim}");
                if s <= 64 {
                    assert!(64 % s == 0, "{fmt:?} D = {dim}");
                }
            }
        }
    }

    #[test]
    fn format_codes_and_names() {
        for (i, fmt) in RowFormat::ALL.into_iter().enumerate() {
            assert_eq!(fmt.code() as usize, i);
            assert_eq!(RowFormat::from_code(fmt.code()), Some(fmt));
            assert_eq!(RowFormat::parse(fmt.name()), Some(fmt));
        }
        assert_eq!(
            RowFormat::ALL.map(|f| (f.code(), f.name())),
            [(0, "fp32"), (1, "fp16"), (2, "int8"), (3, "int4")]
        );
        assert_eq!(RowFormat::from_code(4), None);
        assert_eq!(RowFormat::parse("int2"), None);
        assert_eq!(RowFormat::parse("FP32"), None);
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
                        bag_sum_rows_with(
                            isa,
                            fmt,
                            &buf,
                            stride,
                            dim,
                            &[0, 2],
                            &[2, 2],
                            &mut out,
                            dim,
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
        bag_sum_rows_ref(RowFormat::Int8, &[0; 10], 10, 2, &[0, 1], &[1], &mut out, 2);
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
                            bag_sum_rows_with(
                                isa,
                                fmt,
                                &table,
                                stride,
                                dim,
                                &[0, 2],
                                &ids,
                                &mut out,
                                dim,
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
        bag_sum_rows(RowFormat::Int8, &[0; 22], 11, 4, &[0, 1], &[0], &mut out, 4);
    }

    #[test]
    #[should_panic(expected = "not a multiple")]
    fn table_not_a_multiple_of_the_stride_panics() {
        let mut out = [0.0; 4];
        bag_sum_rows(RowFormat::Int8, &[0; 20], 12, 4, &[0, 1], &[0], &mut out, 4);
    }

    #[test]
    #[should_panic(expected = "non-decreasing")]
    fn decreasing_offsets_panic() {
        let mut out = [0.0; 4];
        bag_sum_rows(RowFormat::F16, &[0; 8], 8, 4, &[1, 0, 1], &[0], &mut out, 4);
    }
}
