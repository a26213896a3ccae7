//! The host's measured limits, for judging dlrs's own figures against them: the FMA peak
//! per core, the random row-gather rate at a row size (what an embedding bag can reach),
//! the DRAM latency and the sequential read bandwidth. The idea of `membench.c`, built in.
//!
//! Every measure is repeated (these hosts are noisy): the rates that are limits (the FMA
//! peak, the gather rate) keep the best repetition, as other work on the machine can only
//! lower them; latency and bandwidth keep the median. The gather rate
//! is measured with dlrs's own gather kernel (`dlrs_kernels::gather`, prefetching as it does
//! when serving) over a table far larger than the last-level cache, with uniform random ids
//! in bags of 80, so it is the ceiling of the embedding stage.

use std::time::Instant;

use dlrs_kernels::gather::{Bags, Pooled, Rows, bag_sum};
use memmap2::{MmapMut, MmapOptions};
use serde::{Deserialize, Serialize};

/// How thoroughly to probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeOptions {
    /// bytes of the gather table (and of the latency and bandwidth buffers)
    pub table_bytes: usize,
    /// lookups per thread per repetition of a gather measure
    pub lookups: usize,
    /// repetitions of each measure (the median is kept)
    pub reps: usize,
}

impl ProbeOptions {
    /// A few seconds: 1 GiB, 2M lookups a thread, 3 repetitions.
    pub fn quick() -> Self {
        ProbeOptions {
            table_bytes: 1 << 30,
            lookups: 2 << 20,
            reps: 3,
        }
    }
    /// About a minute: 4 GiB (as membench.c), 4M lookups a thread, 5 repetitions.
    pub fn full() -> Self {
        ProbeOptions {
            table_bytes: 4 << 30,
            lookups: 4 << 20,
            reps: 5,
        }
    }
}

/// The FMA peak of one core and of all threads, in GFLOP/s (fp32, 2 flops per FMA lane).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FmaPeak {
    pub per_core_gflops: f64,
    pub threads: usize,
    pub all_threads_gflops: f64,
    /// the register width that gave the peak: 512 (AVX-512), 256 (AVX2 + FMA) or 32 (scalar)
    pub width_bits: u32,
}

/// The random row-gather rate at one row size.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GatherRate {
    pub row_bytes: usize,
    pub threads: usize,
    /// the table was on transparent huge pages (`MADV_HUGEPAGE`), else on 4 KiB pages
    pub huge_pages: bool,
    pub rows_per_s: f64,
    /// `rows_per_s * row_bytes`
    pub gb_per_s: f64,
}

impl GatherRate {
    /// What was measured, as the probe and the report name it: `128 B rows, 2 thread(s),
    /// huge pages`.
    pub fn describe(&self) -> String {
        format!(
            "{} B rows, {} thread(s), {}",
            self.row_bytes,
            self.threads,
            if self.huge_pages {
                "huge pages"
            } else {
                "4 KiB pages"
            }
        )
    }
}

/// Median of `reps` runs of `f` (each returning a measure).
fn median(reps: usize, mut f: impl FnMut() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..reps.max(1)).map(|_| f()).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The best of `reps` runs of `f`: for a limit (a peak rate), which other work on the
/// machine can only lower.
fn best(reps: usize, mut f: impl FnMut() -> f64) -> f64 {
    (0..reps.max(1)).map(|_| f()).fold(0.0, f64::max)
}

/// Runs `f(i)` on `threads` threads at once; the wall seconds from start to the last end.
fn timed_parallel(threads: usize, f: impl Fn(usize) + Sync) -> f64 {
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for i in 0..threads {
            let f = &f;
            s.spawn(move || f(i));
        }
    });
    t0.elapsed().as_secs_f64()
}

/// Anonymous memory of `bytes`, on huge pages or explicitly not, every page touched.
fn buffer(bytes: usize, huge: bool) -> std::io::Result<MmapMut> {
    let mut map = MmapOptions::new().len(bytes.max(1)).map_anon()?;
    let advice = if huge {
        libc::MADV_HUGEPAGE
    } else {
        libc::MADV_NOHUGEPAGE
    };
    // SAFETY: madvise only advises on this mapping's own range; a refusal only costs speed.
    unsafe {
        libc::madvise(map.as_mut_ptr().cast(), map.len(), advice);
    }
    for at in (0..map.len()).step_by(4096) {
        map[at] = 1;
    }
    Ok(map)
}

/// splitmix64.
fn splitmix(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The FMA peak: independent multiply-add chains on the widest registers the CPU has,
/// one thread, then `threads` threads at once.
pub fn fma_peak(threads: usize, reps: usize) -> FmaPeak {
    let iters = 20_000_000u64;
    let (width_bits, run): (u32, fn(u64) -> f64) = fma_kernel();
    let flops =
        |t: usize| iters as f64 * FMA_CHAINS as f64 * (width_bits / 32) as f64 * 2.0 * t as f64;
    // warm the core up (clocks, the AVX-512 license where there is one)
    run(iters / 4);
    let one = best(reps, || {
        flops(1)
            / timed_parallel(1, |_| {
                std::hint::black_box(run(iters));
            })
            / 1e9
    });
    let threads = threads.max(1);
    let all = best(reps, || {
        flops(threads)
            / timed_parallel(threads, |_| {
                std::hint::black_box(run(iters));
            })
            / 1e9
    });
    FmaPeak {
        per_core_gflops: one,
        threads,
        all_threads_gflops: all,
        width_bits,
    }
}

/// Independent FMA chains per loop: more than latency x FMA pipes (4 x 2 on Zen 4/5).
const FMA_CHAINS: usize = 12;

/// The widest FMA loop this CPU runs, and its register width in bits.
fn fma_kernel() -> (u32, fn(u64) -> f64) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return (512, |n| {
                // SAFETY: AVX-512F is present (checked above).
                unsafe { x86::fma512(n) }
            });
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return (256, |n| {
                // SAFETY: AVX2 and FMA are present (checked above).
                unsafe { x86::fma256(n) }
            });
        }
    }
    (32, |n| {
        let mut acc = [1.0f32; FMA_CHAINS];
        let (a, b) = (
            std::hint::black_box(0.999_999f32),
            std::hint::black_box(1e-7f32),
        );
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = x.mul_add(a, b);
            }
        }
        acc.iter().map(|&x| x as f64).sum()
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::FMA_CHAINS;

    /// `n` rounds of [`FMA_CHAINS`] independent 512-bit FMAs.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fma512(n: u64) -> f64 {
        let a = _mm512_set1_ps(std::hint::black_box(0.999_999));
        let b = _mm512_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); FMA_CHAINS];
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        acc.iter().map(|&x| _mm512_reduce_add_ps(x) as f64).sum()
    }

    /// `n` rounds of [`FMA_CHAINS`] independent 256-bit FMAs.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fma256(n: u64) -> f64 {
        let a = _mm256_set1_ps(std::hint::black_box(0.999_999));
        let b = _mm256_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); FMA_CHAINS];
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut lanes = [0.0f32; 8];
        let mut sum = 0.0;
        for x in acc {
            // SAFETY: `lanes` holds 8 floats; the store is unaligned.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), x) };
            sum += lanes.iter().map(|&v| v as f64).sum::<f64>();
        }
        sum
    }
}

/// Rows per bag in the gather probe (RMC1's 80 ids per table).
pub const GATHER_BAG: usize = 80;

/// The random row-gather rate for each of `row_bytes` (multiples of 4), each of `threads`,
/// on huge pages or not: fp32 rows gathered with dlrs's own kernel from one table of
/// `opts.table_bytes` with uniform random ids, in bags of [`GATHER_BAG`].
pub fn gather_rates(
    row_bytes: &[usize],
    threads: &[usize],
    huge_pages: &[bool],
    opts: &ProbeOptions,
) -> std::io::Result<Vec<GatherRate>> {
    let mut out = Vec::new();
    for &huge in huge_pages {
        let table = buffer(opts.table_bytes, huge)?;
        for &rb in row_bytes {
            assert!(rb >= 4 && rb % 4 == 0, "row bytes must be a multiple of 4");
            let dim = rb / 4;
            let n_rows = opts.table_bytes / rb;
            let rows = Rows::f32(as_f32(&table[..n_rows * rb]), dim);
            let lookups = opts.lookups / GATHER_BAG * GATHER_BAG;
            let max_threads = threads.iter().copied().max().unwrap_or(1);
            let ids: Vec<Vec<u32>> = (0..max_threads)
                .map(|t| {
                    let mut s = 0x1234_5678 + t as u64 * 7777 + rb as u64;
                    (0..lookups)
                        .map(|_| (((splitmix(&mut s) >> 32) * n_rows as u64) >> 32) as u32)
                        .collect()
                })
                .collect();
            let offsets: Vec<u32> = (0..=lookups / GATHER_BAG)
                .map(|b| (b * GATHER_BAG) as u32)
                .collect();
            for &t in threads {
                let gather = |i: usize| {
                    let mut acc = vec![0.0f32; (lookups / GATHER_BAG) * dim];
                    bag_sum(
                        rows,
                        Bags::new(&offsets, &ids[i]),
                        Pooled::new(&mut acc, dim),
                    );
                    std::hint::black_box(&acc);
                };
                timed_parallel(t, gather); // warm-up: TLB, caches of the id arrays
                let rows_per_s = best(opts.reps, || {
                    (lookups * t) as f64 / timed_parallel(t, gather)
                });
                out.push(GatherRate {
                    row_bytes: rb,
                    threads: t,
                    huge_pages: huge,
                    rows_per_s,
                    gb_per_s: rows_per_s * rb as f64 / 1e9,
                });
            }
        }
    }
    Ok(out)
}

/// Bytes as f32 values (the buffer is page aligned).
fn as_f32(b: &[u8]) -> &[f32] {
    assert_eq!(b.as_ptr() as usize % 4, 0);
    // SAFETY: the start is 4-byte aligned (asserted), the slice covers `len / 4 * 4 <= len`
    // initialised bytes, and every bit pattern is a valid f32.
    unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<f32>(), b.len() / 4) }
}

/// DRAM latency in ns: a chain of dependent loads, one per 64-byte line, in a random cyclic
/// order over `bytes` of huge-page memory (5M loads a repetition, or fewer on a small
/// buffer).
pub fn dram_latency_ns(bytes: usize, reps: usize) -> std::io::Result<f64> {
    let lines = (bytes / 64).max(2);
    let mut map = buffer(lines * 64, true)?;
    // SAFETY: the mapping holds `lines * 64` bytes, page aligned, so `lines * 8` u64 at
    // index `8 * i` are in bounds and aligned; nothing else views the memory meanwhile.
    let slots =
        unsafe { std::slice::from_raw_parts_mut(map.as_mut_ptr().cast::<u64>(), lines * 8) };
    // Sattolo's algorithm: one cycle through every line
    let mut order: Vec<u64> = (0..lines as u64).collect();
    let mut s = 42u64;
    for i in (1..lines).rev() {
        let j = (splitmix(&mut s) % i as u64) as usize;
        order.swap(i, j);
    }
    for i in 0..lines {
        slots[8 * order[i] as usize] = order[(i + 1) % lines];
    }
    let steps = 5_000_000usize.min(lines * 4);
    Ok(median(reps, || {
        let mut at = 0u64;
        let t0 = Instant::now();
        for _ in 0..steps {
            at = slots[8 * at as usize];
        }
        std::hint::black_box(at);
        t0.elapsed().as_secs_f64() * 1e9 / steps as f64
    }))
}

/// Sequential read bandwidth in GB/s over `bytes` of huge-page memory, split among
/// `threads` threads.
pub fn seq_read_gb_per_s(bytes: usize, threads: usize, reps: usize) -> std::io::Result<f64> {
    let map = buffer(bytes, true)?;
    let values = as_f32(&map);
    let threads = threads.max(1);
    let chunk = values.len() / threads;
    Ok(median(reps, || {
        let secs = timed_parallel(threads, |i| {
            let part = &values[i * chunk..(i + 1) * chunk];
            // eight independent sums: the loads, not an add chain, are the limit
            let mut acc = [0.0f32; 8];
            for c in part.chunks_exact(8) {
                for (a, v) in acc.iter_mut().zip(c) {
                    *a += v;
                }
            }
            std::hint::black_box(acc);
        });
        (chunk * threads * 4) as f64 / secs / 1e9
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ProbeOptions {
        ProbeOptions {
            table_bytes: 8 << 20,
            lookups: 16_000,
            reps: 1,
        }
    }

    #[test]
    fn probes_give_plausible_positive_figures() {
        let f = fma_peak(1, 1);
        assert!(
            f.per_core_gflops > 0.1 && f.per_core_gflops < 10_000.0,
            "{f:?}"
        );
        assert!([32, 256, 512].contains(&f.width_bits));
        let g = gather_rates(&[64, 128], &[1, 2], &[true], &tiny()).unwrap();
        assert_eq!(g.len(), 4);
        for r in &g {
            assert!(r.rows_per_s > 1e3, "{r:?}");
            assert!((r.gb_per_s - r.rows_per_s * r.row_bytes as f64 / 1e9).abs() < 1e-9);
        }
        let lat = dram_latency_ns(8 << 20, 1).unwrap();
        assert!(lat > 0.1 && lat < 10_000.0, "{lat}");
        let bw = seq_read_gb_per_s(8 << 20, 2, 1).unwrap();
        assert!(bw > 0.05, "{bw}");
    }

    #[test]
    fn median_is_the_middle_value_and_best_the_largest() {
        let mut v = [5.0, 1.0, 3.0].into_iter();
        assert_eq!(median(3, || v.next().unwrap()), 3.0);
        let mut v = [1.0, 5.0, 3.0].into_iter();
        assert_eq!(best(3, || v.next().unwrap()), 5.0);
    }
}
