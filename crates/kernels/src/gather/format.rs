//! Row formats of embedding tables, FBGEMM's fused row-wise layouts: fp32, fp16, and 8-bit /
//! 4-bit row-wise quantized rows that carry their own scale and bias.
//!
//! A row of `D` values is [`RowFormat::row_bytes`]`(D)` payload bytes (little-endian), padded
//! to a stride (dlrs stores tables with [`RowFormat::row_stride`]):
//!
//! ```text
//! fp32  [f32; D]                                  4 D bytes
//! fp16  [f16; D]                                  2 D bytes
//! int8  [u8; D]           [scale f32][bias f32]   D + 8 bytes          (FBGEMM Fused8BitRowwise, SBFloat)
//! int4  [u8; ceil(D / 2)] [scale f16][bias f16]   ceil(D / 2) + 4 bytes (FBGEMM FusedNBitRowwise, bit rate 4, SBHalf)
//!       value 2k is the low nibble of byte k, value 2k + 1 its high nibble
//!
//! value(row, c) = row.f32[c] | f32(row.f16[c]) | scale * q[c] + bias
//! ```
//!
//! [`quantize_row`] and [`dequantize_row`] convert one row; the gather kernels
//! ([`super::bag_sum`]) sum `value(row, c)` over bags.

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
pub(super) fn decode(fmt: RowFormat, row: &[u8], out: &mut [f32], op: impl Fn(&mut f32, f32)) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::testutil::{fmt_strategy, row_values};

    proptest! {
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
        for h in 0..=u16::MAX {
            assert_eq!(
                f16_to_f32(h).to_bits(),
                // SAFETY: the CPU has F16C (checked above).
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
                    // SAFETY: the CPU has F16C (checked above).
                    unsafe { hw_to_f16(x) },
                    "{x:e} ({:#x})",
                    x.to_bits()
                );
            }
        }
        for bits in (0..=u32::MAX).step_by(65521) {
            let x = f32::from_bits(bits);
            // SAFETY: the CPU has F16C (checked above).
            let hw = unsafe { hw_to_f16(x) };
            assert_eq!(f32_to_f16(x), hw, "{x:e} ({bits:#x})");
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
}
