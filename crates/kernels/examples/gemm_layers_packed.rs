//! `linear_packed` (weights packed once) against `linear` (the gemm crate, which packs the
//! weight in every call) for every MLP layer of the presets, in GFLOP/s (2 flops per
//! multiply-add), with the measured FMA peak of one core to compare against; bf16 weights
//! beside f32 ones, against the measured `vdpbf16ps` peak:
//!
//! `cargo run --release -p dlrs-kernels --example gemm_layers_packed -- [options]`
//!
//! - `--threads 1,2`: thread counts (a rayon pool of that size; default 1 and 2);
//! - `--m 1,16,64,256,1024`: batch sizes;
//! - `--kernels auto,auto-bf16,avx2,avx512-256,avx512-512,bf16-avx512bf16,...`: packed
//!   kernels to time (default `auto,auto-bf16`: what `PackedWeights::new` and
//!   `PackedWeights::new_bf16` pick for the layer; any name of `Kernel::name`);
//! - `--layers rmc3`: only the layers of presets whose name contains this;
//! - `--reps 7`: timed repetitions per figure (the median is printed; each repetition runs
//!   the layer for at least 10 ms);
//! - `--stat best`: print the best repetition instead of the median.
//!
//! One-thread figures (and the peak) are timed on the thread's CPU time, so that a machine
//! shared with other work slows them less; two-thread figures on the wall clock. Pin it for
//! steadier figures: `taskset -c 1` for one thread.

use std::time::Instant;

use dlrs_kernels::gemm::{Dtype, Kernel, PackedWeights, linear_packed};
use dlrs_kernels::mlp::{Activation, LinearShape, linear};

/// (preset, part, [widths]): layers widths[i] -> widths[i + 1].
const PRESETS: [(&str, &str, &[usize]); 8] = [
    ("rmc1", "bottom", &[128, 64, 32]),
    ("rmc1", "top", &[288, 256, 64, 1]),
    ("rmc2", "bottom", &[256, 128, 64]),
    ("rmc2", "top", &[2112, 128, 64, 1]),
    ("rmc3", "bottom", &[2560, 1024, 256, 32]),
    ("rmc3", "top", &[352, 512, 256, 1]),
    ("criteo-kaggle", "bottom", &[13, 512, 256, 64, 16]),
    ("criteo-kaggle", "top", &[367, 512, 256, 1]),
];

/// A packed kernel to time: a named one, or what the library picks for the layer.
#[derive(Clone, Copy)]
enum Pick {
    Auto(Dtype),
    Named(Kernel),
}

impl Pick {
    fn name(self) -> &'static str {
        match self {
            Pick::Auto(Dtype::F32) => "auto",
            Pick::Auto(Dtype::Bf16) => "auto-bf16",
            Pick::Named(k) => k.name(),
        }
    }

    fn dtype(self) -> Dtype {
        match self {
            Pick::Auto(d) => d,
            Pick::Named(k) => k.dtype(),
        }
    }

    fn pack(self, w: &[f32], n: usize, k: usize) -> PackedWeights {
        match self {
            Pick::Auto(Dtype::F32) => PackedWeights::new(w, n, k),
            Pick::Auto(Dtype::Bf16) => PackedWeights::new_bf16(w, n, k),
            Pick::Named(kern) => PackedWeights::with_kernel(kern, w, n, k),
        }
    }
}

struct Opts {
    threads: Vec<usize>,
    ms: Vec<usize>,
    kernels: Vec<Pick>,
    layers: String,
    reps: usize,
    best: bool,
}

fn list(s: &str) -> Vec<usize> {
    s.split(',')
        .map(|v| v.trim().parse().expect("a number"))
        .collect()
}

fn opts() -> Opts {
    let mut o = Opts {
        threads: vec![1, 2],
        ms: vec![1, 16, 64, 256, 1024],
        kernels: vec![Pick::Auto(Dtype::F32), Pick::Auto(Dtype::Bf16)],
        layers: String::new(),
        reps: 7,
        best: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let v = pair.get(1).map(String::as_str).unwrap_or_default();
        match pair[0].as_str() {
            "--threads" => o.threads = list(v),
            "--m" => o.ms = list(v),
            "--reps" => o.reps = v.parse().expect("a number"),
            "--layers" => o.layers = v.to_string(),
            "--stat" => o.best = v == "best",
            "--kernels" => {
                o.kernels = v
                    .split(',')
                    .map(|name| match name {
                        "auto" => Pick::Auto(Dtype::F32),
                        "auto-bf16" => Pick::Auto(Dtype::Bf16),
                        _ => Pick::Named(
                            *Kernel::available()
                                .iter()
                                .find(|k| k.name() == name)
                                .unwrap_or_else(|| panic!("kernel {name} not available here")),
                        ),
                    })
                    .collect()
            }
            other => panic!("unknown option {other}"),
        }
    }
    o
}

/// Nanoseconds this thread has run on a CPU (`CLOCK_THREAD_CPUTIME_ID`), so that time the
/// scheduler gave to other processes on a shared machine does not count.
fn thread_cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// A clock: this thread's CPU time (one-thread figures) or the wall clock.
struct Clock {
    cpu: bool,
    wall: Instant,
    ns: u64,
}

impl Clock {
    fn start(cpu: bool) -> Self {
        let cpu = cpu && thread_cpu_ns().is_some();
        Clock {
            cpu,
            wall: Instant::now(),
            ns: if cpu { thread_cpu_ns().unwrap_or(0) } else { 0 },
        }
    }

    fn secs(&self) -> f64 {
        if self.cpu {
            thread_cpu_ns().unwrap_or(0).saturating_sub(self.ns) as f64 * 1e-9
        } else {
            self.wall.elapsed().as_secs_f64()
        }
    }
}

/// The median (or with `best`, the highest) GFLOP/s of `reps` timings of `f` (each over
/// enough calls for 10 ms; on this thread's CPU time when `cpu`), and the spread
/// (max / min) of those timings.
fn gflops(flops: f64, reps: usize, best: bool, cpu: bool, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let t = Instant::now();
    f();
    let once = t.elapsed().as_secs_f64().max(1e-7);
    let calls = ((0.01 / once) as usize).max(1);
    let mut rates: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Clock::start(cpu);
            for _ in 0..calls {
                f();
            }
            flops * calls as f64 / t.secs().max(1e-9) / 1e9
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    let pick = if best {
        rates[reps - 1]
    } else {
        rates[reps / 2]
    };
    (pick, rates[reps - 1] / rates[0])
}

#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::x86_64::*;

    const ITERS: usize = 20_000_000;

    /// 12 independent chains of 256-bit FMAs: flops per call.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn ymm(seed: f32) -> (f64, f32) {
        let mut acc = [_mm256_set1_ps(seed); 12];
        let (a, b) = std::hint::black_box((_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7)));
        for _ in 0..ITERS {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        let s: f32 = acc.iter().map(|v| _mm256_cvtss_f32(*v)).sum();
        ((ITERS * 12 * 8 * 2) as f64, s)
    }

    /// 12 independent chains of 512-bit FMAs: flops per call.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn zmm(seed: f32) -> (f64, f32) {
        let mut acc = [_mm512_set1_ps(seed); 12];
        let (a, b) = std::hint::black_box((_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7)));
        for _ in 0..ITERS {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        let s: f32 = acc.iter().map(|v| _mm512_cvtss_f32(*v)).sum();
        ((ITERS * 12 * 16 * 2) as f64, s)
    }

    /// 12 independent chains of 512-bit `vdpbf16ps` (32 bf16 multiply-adds each): flops
    /// per call.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, VL, BW and AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512bf16")]
    pub unsafe fn bf16(seed: f32) -> (f64, f32) {
        let mut acc = [_mm512_set1_ps(seed); 12];
        let (a, b) = std::hint::black_box((_mm512_set1_epi16(0x3F80), _mm512_set1_epi16(0x33D6)));
        // SAFETY: both are 64-byte vectors; any bits are 32 bf16 values (1.0 and 1e-7).
        let (a, b) = unsafe {
            (
                std::mem::transmute::<__m512i, __m512bh>(a),
                std::mem::transmute::<__m512i, __m512bh>(b),
            )
        };
        for _ in 0..ITERS {
            for v in acc.iter_mut() {
                *v = _mm512_dpbf16_ps(*v, a, b);
            }
        }
        let s: f32 = acc.iter().map(|v| _mm512_cvtss_f32(*v)).sum();
        ((ITERS * 12 * 32 * 2) as f64, s)
    }
}

/// The median of 5 timings of a peak probe, in GFLOP/s; prints it under `name`.
fn probe(name: &str, run: impl Fn() -> (f64, f32)) -> f64 {
    let mut r: Vec<f64> = (0..5)
        .map(|_| {
            let t = Clock::start(true);
            let (flops, s) = run();
            std::hint::black_box(s);
            flops / t.secs() / 1e9
        })
        .collect();
    r.sort_by(f64::total_cmp);
    println!(
        "{name}: {:.1} GFLOP/s (median of 5, spread {:.2}x)",
        r[2],
        r[4] / r[0]
    );
    r[2]
}

/// The f32 FMA peak of one core in GFLOP/s on the widest registers there are, and the
/// `vdpbf16ps` peak where the CPU has AVX512-BF16 (else NaN).
fn peaks() -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let mut best = f64::NAN;
        if has!("avx2") && has!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked).
            best = probe("FMA peak, ymm", || unsafe { peak::ymm(1.0) });
        }
        if has!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked).
            best = best.max(probe("FMA peak, zmm", || unsafe { peak::zmm(1.0) }));
        }
        let mut bf16 = f64::NAN;
        if has!("avx512f") && has!("avx512vl") && has!("avx512bw") && has!("avx512bf16") {
            // SAFETY: the CPU has the features (checked).
            bf16 = probe("vdpbf16ps peak, zmm", || unsafe { peak::bf16(1.0) });
        }
        (best, bf16)
    }
    #[cfg(not(target_arch = "x86_64"))]
    (f64::NAN, f64::NAN)
}

fn main() {
    let o = opts();
    let (peak, peak_bf16) = peaks();
    println!(
        "cpu (vendor, family, model): {:?}; auto kernels: {}, {}; GFLOP/s; x = against \
         linear (f32 kernels) or the first f32 kernel (bf16 kernels); %peak = of the FMA \
         (f32) or vdpbf16ps (bf16) peak times threads",
        dlrs_kernels::cpu::vendor_family_model(),
        Kernel::detect().name(),
        Kernel::detect_bf16().name(),
    );
    print!(
        "{:<30} {:>5} {:>3} {:>7}",
        "layer (k -> n)", "m", "thr", "linear"
    );
    for k in &o.kernels {
        print!(" {:>18} {:>5}", k.name(), "%peak");
    }
    println!(" {:>6}", "spread");
    for (preset, part, widths) in PRESETS {
        for (l, io) in widths.windows(2).enumerate() {
            let (k, n) = (io[0], io[1]);
            let name = format!("{preset} {part} {k}->{n}");
            if !o.layers.split(',').any(|f| name.contains(f)) {
                continue;
            }
            let last_top = part == "top" && l + 2 == widths.len();
            let act = if last_top {
                Activation::Sigmoid
            } else {
                Activation::Relu
            };
            let w: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
            let b = vec![0.01f32; n];
            let packed: Vec<PackedWeights> = o.kernels.iter().map(|p| p.pack(&w, n, k)).collect();
            for &m in &o.ms {
                let x: Vec<f32> = (0..m * k).map(|i| (i % 5) as f32 * 0.1).collect();
                let mut y = vec![0f32; m * n];
                let shape = LinearShape::dense(m, k, n);
                let flops = 2.0 * (m * k * n) as f64;
                for &threads in &o.threads {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .expect("a thread pool");
                    pool.install(|| {
                        let (base, mut spread) =
                            gflops(flops, o.reps, o.best, threads == 1, || {
                                linear(&x, &w, &b, &mut y, shape, act, threads)
                            });
                        print!("{name:<30} {m:>5} {threads:>3} {base:>7.1}");
                        let mut first_f32 = None;
                        for (pick, p) in o.kernels.iter().zip(&packed) {
                            let (g, s) = gflops(flops, o.reps, o.best, threads == 1, || {
                                linear_packed(&x, p, &b, &mut y, shape, act, threads)
                            });
                            spread = spread.max(s);
                            let (against, peak) = match pick.dtype() {
                                Dtype::F32 => {
                                    first_f32.get_or_insert(g);
                                    (base, peak)
                                }
                                Dtype::Bf16 => (first_f32.unwrap_or(base), peak_bf16),
                            };
                            print!(
                                " {g:>11.1} {:>5.2}x {:>4.0}%",
                                g / against,
                                100.0 * g / (peak * threads as f64)
                            );
                        }
                        println!(" {spread:>5.2}x");
                    });
                }
            }
        }
    }
}
