//! dlrs machine: the host dlrs runs on and its measured limits.
//!
//! A figure means little without its host: these CPUs differ by 2x in FLOPs per core and 3x
//! in random-gather rate from one machine to the next. [`Host`] says what the CPU is;
//! [`probe`] measures what it can do (the FMA peak per core, the row-gather rate per row
//! size, DRAM latency, sequential bandwidth), so that `dlrs bench` can report each stage as
//! a fraction of its limit and `dlrs probe` can print the machine's own figures.
//!
//! ```no_run
//! let host = dlrs_machine::Host::detect();
//! println!("{}", host.cpu_line());
//! let limits = dlrs_machine::measure(&dlrs_machine::ProbeOptions::quick(), &[128], &[1, 2])?;
//! println!("{:.0} GFLOP/s per core", limits.fma.per_core_gflops);
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod host;
pub mod probe;

pub use host::Host;
pub use probe::{FmaPeak, GatherRate, ProbeOptions};

use serde::{Deserialize, Serialize};

/// The version of [`Report`]'s JSON; a field's meaning never changes within one.
pub const SCHEMA_VERSION: u32 = 1;

/// Sequential read bandwidth with a number of threads.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeqRead {
    pub threads: usize,
    pub gb_per_s: f64,
}

/// The measured limits of a host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub options: ProbeOptions,
    pub fma: FmaPeak,
    pub gather: Vec<GatherRate>,
    pub dram_latency_ns: Option<f64>,
    pub seq_read: Vec<SeqRead>,
}

impl Limits {
    /// The gather rate measured at `row_bytes` with `threads` threads on huge pages.
    pub fn gather_at(&self, row_bytes: usize, threads: usize) -> Option<&GatherRate> {
        self.gather
            .iter()
            .find(|g| g.row_bytes == row_bytes && g.threads == threads && g.huge_pages)
    }
}

/// A host and its limits: what `dlrs probe --json` prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: u32,
    pub host: Host,
    pub limits: Limits,
}

/// The FMA peak (1 and the most of `threads`), the gather rate for each row size and thread
/// count on huge pages, the DRAM latency and the sequential bandwidth (1 and the most
/// threads).
pub fn measure(
    opts: &ProbeOptions,
    row_bytes: &[usize],
    threads: &[usize],
) -> std::io::Result<Limits> {
    measure_with(opts, row_bytes, threads, &[true])
}

/// [`measure`], with the gather rate also on 4 KiB pages when `huge_pages` holds `false`.
pub fn measure_with(
    opts: &ProbeOptions,
    row_bytes: &[usize],
    threads: &[usize],
    huge_pages: &[bool],
) -> std::io::Result<Limits> {
    let most = threads.iter().copied().max().unwrap_or(1);
    let side = opts.table_bytes.min(512 << 20);
    Ok(Limits {
        options: *opts,
        fma: probe::fma_peak(most, opts.reps),
        gather: probe::gather_rates(row_bytes, threads, huge_pages, opts)?,
        dram_latency_ns: Some(probe::dram_latency_ns(side, opts.reps)?),
        seq_read: [1, most]
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|t| {
                Ok(SeqRead {
                    threads: t,
                    gb_per_s: probe::seq_read_gb_per_s(opts.table_bytes, t, opts.reps)?,
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?,
    })
}

/// The FMA peak and the gather rate at `row_bytes` with `threads`, from this boot's cache of
/// quick probes (`$XDG_CACHE_HOME/dlrs/limits.json`, else `~/.cache/dlrs/limits.json`), or
/// measured now with [`ProbeOptions::quick`] and added to it. The cache is keyed by the
/// kernel's boot id and the CPU line, so a new machine or a reboot probes again; `dlrs
/// probe` always measures afresh.
pub fn quick_limits_cached(
    row_bytes: usize,
    threads: usize,
) -> std::io::Result<(FmaPeak, GatherRate)> {
    quick_limits_cached_checked(row_bytes, threads, 0.0, 0.0)
}

/// [`quick_limits_cached`], measuring a limit again (and keeping the higher figure) when a
/// kernel just beat the cached one on this host: the FMA peak when it is below
/// `measured_gflops_per_core`, the gather rate when it is below `measured_rows_per_s` (0 for
/// either checks nothing). A cached limit taken while the machine was busy would otherwise
/// stay too low all boot.
pub fn quick_limits_cached_checked(
    row_bytes: usize,
    threads: usize,
    measured_gflops_per_core: f64,
    measured_rows_per_s: f64,
) -> std::io::Result<(FmaPeak, GatherRate)> {
    let key = cache_key();
    let path = cache_path();
    let mut cache: Cache = path
        .as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|c: &Cache| c.key == key && c.schema == SCHEMA_VERSION)
        .unwrap_or(Cache {
            schema: SCHEMA_VERSION,
            key,
            fma: None,
            gather: Vec::new(),
        });
    let opts = ProbeOptions::quick();
    let fma = refreshed(
        cache.fma.filter(|f| f.threads >= threads),
        measured_gflops_per_core,
        |f| f.per_core_gflops,
        || Ok(probe::fma_peak(threads, opts.reps)),
    )?;
    let slot = cache
        .gather
        .iter()
        .position(|g| g.row_bytes == row_bytes && g.threads == threads);
    let gather = refreshed(
        slot.map(|i| cache.gather[i]),
        measured_rows_per_s,
        |g| g.rows_per_s,
        || Ok(probe::gather_rates(&[row_bytes], &[threads], &[true], &opts)?[0]),
    )?;
    cache.fma = Some(fma);
    match slot {
        Some(i) => cache.gather[i] = gather,
        None => cache.gather.push(gather),
    }
    if let Some(p) = path {
        // best effort: a cache that cannot be written is probed again next time
        let _ = write_atomically(&p, &serde_json::to_vec(&cache).unwrap_or_default());
    }
    Ok((fma, gather))
}

/// A cached limit, unless a kernel just ran faster than it (`rate` of it below `beaten`):
/// then the higher of it and a new `probe`; a new `probe` when nothing is cached.
fn refreshed<T: Copy>(
    cached: Option<T>,
    beaten: f64,
    rate: impl Fn(&T) -> f64,
    probe: impl FnOnce() -> std::io::Result<T>,
) -> std::io::Result<T> {
    match cached {
        Some(c) if rate(&c) >= beaten => Ok(c),
        Some(c) => {
            let again = probe()?;
            Ok(if rate(&again) > rate(&c) { again } else { c })
        }
        None => probe(),
    }
}

#[derive(Serialize, Deserialize)]
struct Cache {
    schema: u32,
    key: String,
    fma: Option<FmaPeak>,
    gather: Vec<GatherRate>,
}

/// What a cached probe is valid for: this boot of this CPU.
fn cache_key() -> String {
    format!(
        "{} {}",
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap_or_default()
            .trim(),
        Host::detect().cpu_line()
    )
}

fn cache_path() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))?;
    Some(base.join("dlrs").join("limits.json"))
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".limits.json.{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips_through_json() {
        let opts = ProbeOptions {
            table_bytes: 4 << 20,
            lookups: 8_000,
            reps: 1,
        };
        let limits = measure(&opts, &[128], &[1]).unwrap();
        assert!(limits.gather_at(128, 1).is_some());
        assert!(limits.gather_at(64, 1).is_none());
        let r = Report {
            schema: SCHEMA_VERSION,
            host: Host::detect(),
            limits,
        };
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        // serde_json's float parsing may move the last digit once; then it is a fixed point
        assert_eq!(back.host, r.host);
        assert_eq!(back.limits.options, r.limits.options);
        let rel = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(b.abs());
        assert!(rel(
            back.limits.fma.per_core_gflops,
            r.limits.fma.per_core_gflops
        ));
        assert!(rel(
            back.limits.gather[0].rows_per_s,
            r.limits.gather[0].rows_per_s
        ));
        let again: Report = serde_json::from_str(&serde_json::to_string(&back).unwrap()).unwrap();
        assert_eq!(again, back);
    }

    #[test]
    fn quick_limits_are_cached_per_boot() {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: no other thread of this test binary reads or writes XDG_CACHE_HOME (the
        // other test does not use the cache).
        unsafe { std::env::set_var("XDG_CACHE_HOME", dir.path()) };
        let p = cache_path().unwrap();
        assert!(!p.exists());
        // seed the cache with figures no probe would measure: a second call must reuse them
        let key = cache_key();
        let fake = GatherRate {
            row_bytes: 128,
            threads: 1,
            huge_pages: true,
            rows_per_s: 12345.0,
            gb_per_s: 12345.0 * 128.0 / 1e9,
        };
        let fma = FmaPeak {
            per_core_gflops: 7.0,
            threads: 1,
            all_threads_gflops: 7.0,
            width_bits: 256,
        };
        let seeded = Cache {
            schema: SCHEMA_VERSION,
            key,
            fma: Some(fma),
            gather: vec![fake],
        };
        write_atomically(&p, &serde_json::to_vec(&seeded).unwrap()).unwrap();
        assert_eq!(quick_limits_cached(128, 1).unwrap(), (fma, fake));
        // a kernel that just ran faster than the cached peak makes it measure the peak again
        let (f, g) = quick_limits_cached_checked(128, 1, 8.0, 0.0).unwrap();
        assert!(f.per_core_gflops > 8.0, "{f:?}");
        assert_eq!(g, fake);
        // and a gather that just beat the cached rate makes it measure the rate again, and
        // the cache keeps one entry per row size and thread count, the higher
        let (_, g) = quick_limits_cached_checked(128, 1, 0.0, 20000.0).unwrap();
        assert!(g.rows_per_s > 20000.0, "{g:?}");
        let cached: Cache = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(cached.gather, vec![g]);
        // another key (a reboot, another CPU) is not trusted
        let mut other = seeded;
        other.key.push('x');
        write_atomically(&p, &serde_json::to_vec(&other).unwrap()).unwrap();
        let (f, g) = quick_limits_cached(128, 1).unwrap();
        assert_ne!(g.rows_per_s, 12345.0);
        assert_ne!(f.per_core_gflops, 7.0);
    }
}
