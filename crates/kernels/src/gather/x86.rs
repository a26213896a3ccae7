//! The AVX2 + FMA + F16C gather kernel over every row format (see the module doc of
//! [`super`] for the contract and the blocking).

use std::arch::x86_64::*;

use super::{Bags, Pooled, RowFormat, Rows};
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

/// [`super::bag_sum`] with AVX2, FMA and F16C.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C, and the arguments must satisfy `check_args`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn bag_sum_avx2(rows: Rows, bags: Bags, out: Pooled) {
    let (fmt, dim, stride) = (rows.format, rows.dim, rows.stride);
    let (offsets, ids) = (bags.offsets, bags.ids);
    let pf = prefetch::distance();
    let end = offsets[offsets.len() - 1] as usize;
    prefetch::prologue(
        rows.bytes.as_ptr(),
        stride,
        fmt.row_bytes(dim),
        bags.all_ids(),
        pf,
    );
    let g = Gather {
        base: rows.bytes.as_ptr(),
        rows: rows.count(),
        stride,
        dim,
        row_bytes: fmt.row_bytes(dim),
        ids,
        pf,
        pf_end: end.saturating_sub(pf),
    };
    let (out, out_stride) = (out.out, out.stride);
    // SAFETY: (all arms) forwarded from this function's contract.
    unsafe {
        match fmt {
            RowFormat::F32 => bags_of::<F32>(&g, offsets, out, out_stride),
            RowFormat::F16 => bags_of::<F16>(&g, offsets, out, out_stride),
            RowFormat::Int8 => bags_of::<INT8>(&g, offsets, out, out_stride),
            RowFormat::Int4 => bags_of::<INT4>(&g, offsets, out, out_stride),
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
unsafe fn bags_of<const FMT: u8>(g: &Gather, offsets: &[u32], out: &mut [f32], out_stride: usize) {
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
                            acc_t = _mm256_add_ps(acc_t, _mm256_maskload_ps(p.add(8 * NV), mask));
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
                        let scale = _mm256_set1_ps((row.add(dim) as *const f32).read_unaligned());
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
                            *a = _mm256_fmadd_ps(nibbles(p.add(4 * v), shifts, low4), scale, *a);
                        }
                        if tail > 0 {
                            // bytes (dim - tail) / 2 .. (dim - tail) / 2 + 4 <= ceil(dim / 2) + 4 = row_bytes
                            acc_t =
                                _mm256_fmadd_ps(nibbles(p.add(4 * NV), shifts, low4), scale, acc_t);
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
