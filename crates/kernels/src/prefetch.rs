//! Software prefetch of embedding rows, shared by the gather kernels.
//!
//! Random row gathers are bound by memory latency, so the kernels ask for rows well before
//! they sum them: row `ids[i + distance]` while summing row `ids[i]`, and, before the first
//! row of a call, the rows of its first `distance` ids (so a short call, such as one
//! batch-1 bag, still has all its rows in flight at once).

/// How many ids ahead the kernels prefetch rows by default. Measured on the 2-core EPYC
/// (Zen 4) machines here with `dlrs bench` at batch 256, 2 threads: 48 -> 128 rows gave
/// +6% on RMC1 fp32, +10% on RMC2 fp32 and +30-40% on 1-line int8/int4 rows.
pub const DEFAULT_DISTANCE: usize = 128;

/// The prefetch distance in use: [`DEFAULT_DISTANCE`], or `DLRS_PREFETCH` (read once) for
/// tuning on another machine.
pub fn distance() -> usize {
    static PF: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PF.get_or_init(|| {
        std::env::var("DLRS_PREFETCH")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_DISTANCE)
    })
}

/// Prefetches (to L1) every cache line of the `row_bytes`-byte row at `base + id * stride`:
/// its first and last line (all of a row of <= 128 bytes), then any lines between.
///
/// A prefetch never faults and dereferences nothing; the address is formed with wrapping
/// arithmetic, so an id that later fails its bounds check is harmless here.
#[inline(always)]
pub fn row(base: *const u8, id: usize, stride: usize, row_bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let first = base.wrapping_add(id.wrapping_mul(stride)) as *const i8;
        // SAFETY: SSE is part of the x86_64 baseline, and a prefetch reads no memory.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(first);
            _mm_prefetch::<_MM_HINT_T0>(first.wrapping_add(row_bytes - 1));
            if row_bytes > 128 {
                let mut off = 64;
                while off < row_bytes - 1 {
                    _mm_prefetch::<_MM_HINT_T0>(first.wrapping_add(off));
                    off += 64;
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (base, id, stride, row_bytes);
}

/// Prefetches the rows of `ids[..distance]`: the start of a call, before its loop takes over.
#[inline]
pub fn prologue(base: *const u8, stride: usize, row_bytes: usize, ids: &[u32], distance: usize) {
    for &id in &ids[..distance.min(ids.len())] {
        row(base, id as usize, stride, row_bytes);
    }
}
