//! `dlrs loadgen` and its in-process twin: open-loop load for latency-bounded throughput.
//!
//! # The load
//!
//! Queries arrive as a Poisson process of rate `--qps` (exponential inter-arrival times drawn
//! from `--seed`) for `--duration` seconds. A dispatcher thread releases each query at its
//! scheduled instant, whatever happened to earlier ones (open loop), and **latency counts from
//! the scheduled instant**: a query that waits for a free connection, or is released late
//! because the client fell behind, carries that wait in its latency, so coordinated omission
//! cannot hide a stall. After the last arrival the run waits at most `--drain` seconds
//! (default 5) for answers; queries still unanswered then count as timeouts.
//!
//! Each query carries a number of samples drawn from `--query-size` (`fixed:N`,
//! `normal:MU,SIGMA` (default `normal:165,16`, DeepRecSys' production-like size),
//! `lognormal:MU,SIGMA` (of the size's logarithm) or `file:PATH` (one `N` or `N WEIGHT` per
//! line)), rounded and clamped to `1..=1024` as DeepRecSys caps it. Samples are synthetic:
//! standard-normal dense features and `--ids-per-table` ids per bag drawn by `--dist`
//! (`uniform` or `zipf:S`, [`dlrs_model::synth`]). A pool of `--pool` distinct queries
//! (default 2048; fewer if their batches would take over 256 MB) is generated and encoded before the
//! clock starts; query `i` is pool entry `i mod pool`, so generation never sits on the send
//! path. The HTTP load and the twin draw
//! the same pool and the same arrivals from the same seed.
//!
//! # HTTP (`dlrs loadgen`)
//!
//! `--url http://HOST:PORT` (only the address given is contacted), `--model NAME`. The model's
//! dense and table counts come from its KServe v2 metadata (`GET /v2/models/{name}`: `dense`
//! `[-1, n_dense]`, `lengths` `[-1, n_tables]`), the tables' row counts (the range of the ids
//! drawn) from its `parameters.table_rows`, which `dlrs serve` publishes. For a server that
//! does not, `--model-dir DIR` gives them (`DIR/config.json`, checked against the metadata).
//! Queries go as
//! `POST /v2/models/{name}/infer` with `dense`/`lengths`/`indices` (`--protocol v2`, the
//! default; JSON tensor data, or with `--binary` the binary tensor data extension) or as
//! `POST /v1/models/{name}/predict` (`--protocol v1`), over `--connections` keep-alive
//! HTTP/1.1 connections (default 64) opened before the clock starts. A 200 answer counts as ok
//! when it carries one score per sample.
//!
//! With `--shared-memory system` (Triton's system shared memory extension, as perf_analyzer
//! calls it) the pool's input tensors are written once into one POSIX shared memory object
//! (`/dev/shm/dlrs-loadgen-PID-N`), registered with the server as one region; each request
//! is then a small JSON body naming its tensors' offsets there (scores still come back in the
//! answer). The object is unlinked once the server has mapped it, and the region is
//! unregistered when the run ends, fails or is interrupted. The server must run on the same
//! machine, started with `--allow-client-shm`; `--binary` then changes nothing.
//!
//! # Twin (`dlrs twin`)
//!
//! The same arrivals and queries against the model in process (`--model DIR`, tables in RAM),
//! submitted straight into `dlrs serve`'s own queue and compute instances (the same code:
//! batching up to `--max-batch` samples within `--max-queue-delay-us`, `--max-queue`
//! admission with 503, `--deadline-ms` expiry with 504, `--instances` over `--threads`).
//! HTTP's share of the latency ("serving overhead") is the difference between the two at the
//! same target.
//!
//! # Output
//!
//! Offered and achieved QPS, samples/s, latency p50/p95/p99/p99.9/max/mean in ms of the
//! queries answered ok, and failures: by HTTP status, bad answers, transport errors,
//! timeouts. With `--json`, exactly one JSON object on stdout (progress goes to stderr):
//!
//! - always: `mode` (`"http"` or `"twin"`), `query_size`, `dist`, `ids_per_table`, `seed`,
//!   `pool` (the pool's actual size), `warmup_s`, `drain_s`; HTTP: `url`, `model`, `model_dir`, `protocol`, `binary`,
//!   `shared_memory` (`none` or `system`), `transport` (`json`, `binary` or
//!   `system_shared_memory`), `connections`; twin: `model_dir`, `threads`, `instances`, `max_batch`,
//!   `max_queue_delay_us`, `max_queue`, `max_queue_burst`, `burst_cooldown_ms`,
//!   `max_queue_wait_ms`, `deadline_ms`;
//! - one measurement: `offered_qps`, `duration_s`, `queries`, `ok`, `ok_samples`,
//!   `achieved_qps`, `samples_per_s`, `mean_query_size`, `latency_ms.{p50, p95, p99, p999,
//!   max, mean}` (null without ok answers), `errors.{by_status, bad_response, transport,
//!   timeout, failed, total}`, `error_latency_ms` (by status), `slowest_at_s` (when the
//!   slowest ok query was due, seconds from the start), `failures_by_second` (failed queries
//!   by the whole second they were due in);
//! - a search (`--target-p99-ms X`): `target_p99_ms`, `step_duration_s`, `points` (each a
//!   measurement as above plus `step` and `meets_target`), `latency_bounded` (`offered_qps`,
//!   `achieved_qps`, `samples_per_s`, `p50_ms`, `p99_ms` of the best point, or null), `plot`.
//!
//! # Search (`--target-p99-ms X`)
//!
//! Latency-bounded throughput: starting at `--qps`, the rate doubles while the target holds
//! (halves while it does not), then bisects between the best passing and the lowest failing
//! rate until they are within 5% or `--max-steps` (default 12) measurements of `--duration`
//! seconds each were taken. A point meets the target when no query failed and its p99 <= X.
//! Every point is printed; `--plot FILE.svg|FILE.png` draws p99 and p50 against the offered
//! rate with the target as a horizontal line.

pub mod dist;
pub mod driver;
pub mod http;
pub mod payload;
pub mod plot;
pub mod search;
pub mod shm;
pub mod stats;
pub mod twin;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use dlrs_model::synth::IdDist;
use dlrs_model::{Batch, Model, TableMode};
use serde_json::{Map, Value, json};

use crate::dist::QuerySize;
use crate::driver::Measure;
use crate::payload::{Protocol, Workload};
use crate::search::{Point, SearchPlan};
use crate::shm::{SharedMemory, ShmPool};
use crate::stats::{Report, ms};

fn parse_dist(s: &str) -> Result<IdDist, String> {
    IdDist::parse(s).map_err(|e| e.to_string())
}

/// The load's options, shared by `dlrs loadgen` and `dlrs twin`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Poisson arrival rate, queries per second (with --target-p99-ms: the first rate tried)
    #[arg(long, default_value_t = 100.0)]
    pub qps: f64,
    /// seconds of arrivals (with --target-p99-ms: of each step)
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// samples per query: fixed:N, normal:MU,SIGMA, lognormal:MU,SIGMA (of ln size) or
    /// file:PATH (`N` or `N WEIGHT` per line); capped at 1024
    #[arg(long, default_value = "normal:165,16", value_parser = QuerySize::parse)]
    pub query_size: QuerySize,
    /// how ids are drawn over a table's rows: uniform or zipf:S
    #[arg(long, default_value = "uniform", value_parser = parse_dist)]
    pub dist: IdDist,
    /// ids per bag (every sample, every table)
    #[arg(long, default_value_t = 1)]
    pub ids_per_table: usize,
    /// search for the highest QPS whose p99 stays at or under this many milliseconds
    #[arg(long)]
    pub target_p99_ms: Option<f64>,
    /// most measurements of a search
    #[arg(long, default_value_t = 12)]
    pub max_steps: usize,
    /// share of a search step's queries that may fail (e.g. a few 503s when a Poisson burst
    /// overflows --max-queue) with the step still meeting the target; the p99 is that of the
    /// answered queries. 0: any failure is a miss
    #[arg(long, default_value_t = 0.0)]
    pub max_error_rate: f64,
    /// print exactly one JSON object on stdout
    #[arg(long)]
    pub json: bool,
    /// draw the search's curve to FILE.svg or FILE.png (needs --target-p99-ms)
    #[arg(long, requires = "target_p99_ms")]
    pub plot: Option<PathBuf>,
    /// seed of the arrivals, query sizes and samples
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// seconds of load at --qps before measuring, not reported (0: none)
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// longest wait for answers after the last arrival, seconds; then they time out
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// distinct queries generated before the run (query i is pool entry i mod pool)
    #[arg(long, default_value_t = 2048)]
    pub pool: usize,
    /// time slice the threads that send queries and take answers ask the scheduler for, in
    /// microseconds (Linux 6.12+; 0, the default: the kernel's), as serve's --http-slice-us:
    /// on cores shared with the server's compute they then run when they wake instead of
    /// after a batch's slice, so less of the latency measured is the client's own wait
    #[arg(long, default_value_t = 0)]
    pub slice_us: u64,
}

/// Options of `dlrs loadgen`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadgenArgs {
    /// the server, http://HOST:PORT (e.g. http://127.0.0.1:8000)
    #[arg(long)]
    pub url: String,
    /// the model's name on the server
    #[arg(long)]
    pub model: String,
    /// the served model's directory; its config.json gives the tables' row counts when the
    /// server's metadata does not (dlrs serve publishes them as parameters.table_rows)
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// v2: KServe v2 infer (dense/lengths/indices); v1: /v1/models/{name}/predict
    #[arg(long, default_value = "v2", value_parser = Protocol::parse)]
    pub protocol: Protocol,
    /// send v2 tensors with the binary tensor data extension instead of JSON
    #[arg(long)]
    pub binary: bool,
    /// none: tensors in the request bodies; system: the pool's tensors in one POSIX shared
    /// memory object registered with the server once, each request naming its offsets
    /// (Triton's system shared memory extension, as perf_analyzer's --shared-memory system;
    /// the server runs on this machine with --allow-client-shm). Needs --protocol v2
    #[arg(long, default_value = "none", value_parser = SharedMemory::parse)]
    pub shared_memory: SharedMemory,
    /// keep-alive connections (a query waits while all are busy; the wait counts)
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// Options of `dlrs twin`.
#[derive(clap::Args, Debug, Clone)]
pub struct TwinArgs {
    /// model directory (config.json + model.safetensors), tables loaded into RAM
    #[arg(long)]
    pub model: PathBuf,
    /// threads of the forward pass, over all instances
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// compute instances, as `dlrs serve --instances` (default: one per thread)
    #[arg(long)]
    pub instances: Option<usize>,
    /// batching and admission, with `dlrs serve`'s options and defaults
    #[command(flatten)]
    pub queue: dlrs_serve::QueueArgs,
    /// a query not computed this many milliseconds after it was queued gets 504, as
    /// `dlrs serve --default-deadline-ms`
    #[arg(long, default_value_t = 1000)]
    pub deadline_ms: u64,
    #[command(flatten)]
    pub versus: VersusArgs,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// `dlrs twin --versus-url`: the same load over HTTP against a running `dlrs serve`, in turn
/// with the twin's, so that both figures come from the same stretch of time.
#[derive(clap::Args, Debug, Clone)]
pub struct VersusArgs {
    /// also load a `dlrs serve` at this URL (started with the same batching options), a
    /// step of each in turn (HTTP, twin; twin, HTTP; ...), each step after --warmup seconds
    /// at its rate, and report HTTP / twin: a machine whose speed drifts then slows both
    /// searches alike instead of whichever ran during the slow minutes
    #[arg(long)]
    pub versus_url: Option<String>,
    /// the model's name on that server
    #[arg(long, requires = "versus_url")]
    pub versus_model: Option<String>,
    /// send the HTTP load's tensors as `dlrs loadgen --binary` does
    #[arg(long, requires = "versus_url")]
    pub versus_binary: bool,
    /// put the HTTP load's tensors in shared memory, as `dlrs loadgen --shared-memory`
    #[arg(long, default_value = "none", value_parser = SharedMemory::parse, requires = "versus_url")]
    pub versus_shared_memory: SharedMemory,
    /// keep-alive connections of the HTTP load, as `dlrs loadgen --connections`
    #[arg(long, default_value_t = 64, requires = "versus_url")]
    pub versus_connections: usize,
}

impl LoadArgs {
    /// `--slice-us` as a duration.
    fn slice(&self) -> Duration {
        Duration::from_micros(self.slice_us)
    }

    fn check(&self) -> anyhow::Result<()> {
        ensure!(
            self.qps.is_finite() && self.qps > 0.0,
            "--qps must be positive"
        );
        ensure!(
            self.duration.is_finite() && self.duration > 0.0,
            "--duration must be positive"
        );
        ensure!(
            self.warmup.is_finite() && self.warmup >= 0.0,
            "--warmup must be >= 0"
        );
        ensure!(
            self.drain.is_finite() && self.drain >= 0.0,
            "--drain must be >= 0"
        );
        ensure!(self.pool >= 1, "--pool must be at least 1");
        ensure!(self.max_steps >= 1, "--max-steps must be at least 1");
        ensure!(
            (0.0..1.0).contains(&self.max_error_rate),
            "--max-error-rate must be at least 0 and below 1"
        );
        if let Some(t) = self.target_p99_ms {
            ensure!(t.is_finite() && t > 0.0, "--target-p99-ms must be positive");
        }
        Ok(())
    }

    /// One measurement at `qps` for `duration_s` seconds of arrivals drawn with `seed`.
    fn at(&self, qps: f64, duration_s: f64, seed: u64) -> Measure {
        Measure {
            qps,
            duration_s,
            drain_s: self.drain,
            seed,
            slice: self.slice(),
        }
    }

    fn plan(&self, target_p99_ms: f64) -> SearchPlan {
        SearchPlan {
            max_error_rate: self.max_error_rate,
            ..SearchPlan::new(target_p99_ms, self.qps, self.max_steps)
        }
    }

    fn workload(&self) -> Workload {
        Workload {
            query_size: self.query_size.clone(),
            dist: self.dist,
            ids_per_table: self.ids_per_table,
            pool: self.pool,
            seed: self.seed,
        }
    }

    fn header(&self) -> Map<String, Value> {
        let v = json!({
            "query_size": self.query_size.name(),
            "dist": self.dist.name(),
            "ids_per_table": self.ids_per_table,
            "seed": self.seed,
            "pool": self.pool,
            "warmup_s": self.warmup,
            "drain_s": self.drain,
            "slice_us": self.slice_us,
        });
        match v {
            Value::Object(m) => m,
            _ => unreachable!("an object"),
        }
    }
}

/// Where progress lines go: stdout, or stderr when stdout carries the JSON object.
struct Out {
    json: bool,
}

impl Out {
    fn line(&self, s: &str) {
        if self.json {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    }
}

fn report_lines(r: &Report) -> Vec<String> {
    let l = &r.latency_ms;
    let mut lines = vec![
        format!(
            "  offered   {:.1} QPS for {} s: {} queries, {} ok; errors: {}",
            r.offered_qps,
            r.duration_s,
            r.queries,
            r.ok,
            r.errors_line()
        ),
        format!(
            "  achieved  {:.1} QPS, {:.0} samples/s (mean {:.1} samples per query)",
            r.achieved_qps, r.samples_per_s, r.mean_query_size
        ),
        format!(
            "  latency   p50 {} ms, p95 {} ms, p99 {} ms, p99.9 {} ms, max {} ms{}",
            ms(l.p50),
            ms(l.p95),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
            r.slowest_at_s
                .map_or(String::new(), |t| format!(" (due at {t:.1} s)"))
        ),
    ];
    if !r.failures_by_second.is_empty() && r.failures_by_second.len() <= 20 {
        let at: Vec<String> = r
            .failures_by_second
            .iter()
            .map(|(s, n)| format!("{n} at {s} s"))
            .collect();
        lines.push(format!("  failed    {}", at.join(", ")));
    }
    for (status, l) in &r.error_latency_ms {
        lines.push(format!(
            "  HTTP {status} answered in p50 {} ms, p99 {} ms, max {} ms",
            ms(l.p50),
            ms(l.p99),
            ms(l.max)
        ));
    }
    lines
}

fn point_line(p: &Point) -> String {
    let r = &p.report;
    format!(
        "step {:>2}: {:>9.1} QPS offered, {:>9.1} achieved, {:>9.0} samples/s, p50 {:>8} ms, p99 {:>8} ms, errors: {} -> {}",
        p.step,
        r.offered_qps,
        r.achieved_qps,
        r.samples_per_s,
        ms(r.latency_ms.p50),
        ms(r.latency_ms.p99),
        r.errors_line(),
        if p.meets_target {
            "meets the target"
        } else {
            "misses the target"
        }
    )
}

fn merge(mut header: Map<String, Value>, v: Value) -> Value {
    if let Value::Object(m) = v {
        header.extend(m);
    }
    Value::Object(header)
}

/// One measurement of a load: `measure(qps, seconds, seed)`.
type MeasureFn<'a> = dyn FnMut(f64, f64, u64) -> anyhow::Result<Report> + 'a;

/// Runs the measurement(s) `load` asks for with `measure`, prints the report for people
/// (to stderr with `--json`), draws the plot and returns the JSON object.
fn drive(
    load: &LoadArgs,
    header: Map<String, Value>,
    title: &str,
    plot_title: &str,
    measure: &mut MeasureFn,
) -> anyhow::Result<Value> {
    let out = Out { json: load.json };
    out.line(title);
    if load.warmup > 0.0 {
        let r = measure(load.qps, load.warmup, load.seed.wrapping_add(1_000_003))?;
        out.line(&format!(
            "warmup: {} s at {} QPS ({} queries, {} errors), not reported",
            load.warmup, load.qps, r.queries, r.errors.total
        ));
    }
    let Some(target) = load.target_p99_ms else {
        let r = measure(load.qps, load.duration, load.seed)?;
        for l in report_lines(&r) {
            out.line(&l);
        }
        return Ok(merge(header, serde_json::to_value(&r)?));
    };
    out.line(&search_line(load, target));
    let s = search::search(
        load.plan(target),
        |step, qps| measure(qps, load.duration, load.seed.wrapping_add(step as u64)),
        |p| out.line(&point_line(p)),
    )?;
    out.line(&best_line("", &s));
    if let Some(path) = &load.plot {
        plot::plot(path, &s, plot_title)?;
        out.line(&format!("plot: {}", path.display()));
    }
    Ok(merge(header, search_json(load, &s, load.plot.as_deref())))
}

/// The two loads of a paired search, each with its JSON header and plot title.
struct Side<'a> {
    name: &'static str,
    header: Map<String, Value>,
    plot_title: String,
    measure: &'a mut MeasureFn<'a>,
}

/// [`drive`] for two loads searched in turn for the highest rate with p99 <= `target` ms
/// ([`search::search_paired`]): each step runs after `--warmup` seconds at its own rate (the
/// other side's load just ended). The JSON object holds both searches, keyed by side name,
/// and the ratio of their latency-bounded throughputs (samples per second), the first
/// side's over the second's (`null` when either found no rate).
fn drive_paired(
    load: &LoadArgs,
    target: f64,
    title: &str,
    mut sides: [Side; 2],
) -> anyhow::Result<Value> {
    let out = Out { json: load.json };
    out.line(title);
    out.line(&format!(
        "{}, a step of {} and of {} in turn",
        search_line(load, target),
        sides[0].name,
        sides[1].name
    ));
    let names = [sides[0].name, sides[1].name];
    let searches = search::search_paired(
        [load.plan(target), load.plan(target)],
        |side, step, qps| {
            let m = &mut sides[side].measure;
            if load.warmup > 0.0 {
                m(
                    qps,
                    load.warmup,
                    load.seed.wrapping_add(1_000_003 + step as u64),
                )?;
            }
            m(qps, load.duration, load.seed.wrapping_add(step as u64))
        },
        |side, p| out.line(&format!("{:<5}{}", names[side], point_line(p))),
    )?;
    let mut v = Map::new();
    for (side, s) in sides.into_iter().zip(&searches) {
        out.line(&best_line(&format!("{}: ", side.name), s));
        let plot = load.plot.as_ref().map(|p| paired_plot_path(p, side.name));
        if let Some(path) = &plot {
            plot::plot(path, s, &side.plot_title)?;
            out.line(&format!("plot: {}", path.display()));
        }
        v.insert(
            side.name.into(),
            merge(side.header, search_json(load, s, plot.as_deref())),
        );
    }
    let ratio = match (searches[0].best(), searches[1].best()) {
        (Some(a), Some(b)) => Some(a.report.samples_per_s / b.report.samples_per_s),
        _ => None,
    };
    if let Some(r) = ratio {
        out.line(&format!(
            "{} / {} = {r:.3} (latency-bounded samples per second)",
            names[0], names[1]
        ));
    }
    v.insert(format!("{}_over_{}", names[0], names[1]), json!(ratio));
    Ok(Value::Object(v))
}

/// `dir/name.svg` for side `side` of a paired search: `dir/name-side.svg`.
fn paired_plot_path(path: &std::path::Path, side: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let ext = path
        .extension()
        .map_or_else(String::new, |e| format!(".{}", e.to_string_lossy()));
    path.with_file_name(format!("{stem}-{side}{ext}"))
}

fn search_line(load: &LoadArgs, target: f64) -> String {
    format!(
        "search: highest QPS with p99 <= {target} ms and at most {}% failed, from {} QPS, {} s per step, at most {} steps",
        load.max_error_rate * 100.0,
        load.qps,
        load.duration,
        load.max_steps
    )
}

fn best_line(prefix: &str, s: &search::Search) -> String {
    let target = s.target_p99_ms;
    match s.best() {
        Some(b) => format!(
            "{prefix}latency-bounded throughput (p99 <= {target} ms): {:.1} QPS, {:.0} samples/s (offered {:.1} QPS; p50 {} ms, p99 {} ms)",
            b.report.achieved_qps,
            b.report.samples_per_s,
            b.report.offered_qps,
            ms(b.report.latency_ms.p50),
            ms(b.report.latency_ms.p99)
        ),
        None => format!(
            "{prefix}latency-bounded throughput (p99 <= {target} ms): none; no rate tried met the target"
        ),
    }
}

/// A search's figures as JSON: its points, the best one, the plot drawn.
fn search_json(load: &LoadArgs, s: &search::Search, plot: Option<&std::path::Path>) -> Value {
    json!({
        "target_p99_ms": s.target_p99_ms,
        "max_error_rate": load.max_error_rate,
        "step_duration_s": load.duration,
        "points": s.points,
        "latency_bounded": s.best().map(|b| json!({
            "offered_qps": b.report.offered_qps,
            "achieved_qps": b.report.achieved_qps,
            "samples_per_s": b.report.samples_per_s,
            "p50_ms": b.report.latency_ms.p50,
            "p99_ms": b.report.latency_ms.p99,
        })),
        "plot": plot.map(|p| p.display().to_string()),
    })
}

/// Prints `v` as the one JSON object on stdout when `json`.
fn emit(json: bool, v: anyhow::Result<Value>) -> anyhow::Result<()> {
    let v = v?;
    if json {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{v}")?;
        stdout.flush()?;
    }
    Ok(())
}

/// `dlrs loadgen`: open-loop Poisson load against a `dlrs serve` over HTTP (see the crate
/// docs); with `--target-p99-ms`, the latency-bounded throughput search. With `--json` the
/// result object goes to stdout.
pub fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    let json = args.load.json;
    emit(json, loadgen_json(args))
}

/// `dlrs twin`: the same load as `dlrs loadgen` against the model in process, batched like
/// `dlrs serve` (see the crate docs). With `--json` the result object goes to stdout.
pub fn run_twin(args: TwinArgs) -> anyhow::Result<()> {
    let json = args.load.json;
    emit(json, twin_json(args))
}

/// [`run`] without printing the JSON object: returns it (the report for people is printed,
/// to stderr with `--json`).
pub fn loadgen_json(args: LoadgenArgs) -> anyhow::Result<Value> {
    args.load.check()?;
    let target = HttpTarget {
        url: &args.url,
        model: &args.model,
        model_dir: args.model_dir.as_deref(),
        protocol: args.protocol,
        binary: args.binary,
        shared_memory: args.shared_memory,
        connections: args.connections,
    };
    let http = HttpLoad::new(&target, &args.load)?;
    let mut measure = |qps, duration_s, seed| http.measure(&args.load.at(qps, duration_s, seed));
    drive(
        &args.load,
        http.header.clone(),
        &http.title,
        &http.plot_title,
        &mut measure,
    )
}

/// Where the HTTP load goes and how: `dlrs loadgen`'s options or `dlrs twin --versus-*`.
struct HttpTarget<'a> {
    url: &'a str,
    model: &'a str,
    model_dir: Option<&'a std::path::Path>,
    protocol: Protocol,
    binary: bool,
    shared_memory: SharedMemory,
    connections: usize,
}

/// The HTTP load, set up: the client's runtime, the server's endpoint and the pool's
/// requests (with `--shared-memory system`, their region, registered while this lives).
struct HttpLoad {
    // fields drop in order: the region is unregistered before the runtime shuts down
    _pool: Option<ShmPool>,
    rt: tokio::runtime::Runtime,
    ep: Arc<http::Endpoint>,
    bodies: Arc<Vec<payload::Body>>,
    connections: usize,
    header: Map<String, Value>,
    title: String,
    plot_title: String,
}

impl HttpLoad {
    fn new(t: &HttpTarget, load: &LoadArgs) -> anyhow::Result<Self> {
        ensure!(t.connections >= 1, "--connections must be at least 1");
        ensure!(
            !(t.binary && t.protocol == Protocol::V1),
            "--binary needs --protocol v2"
        );
        let shm = t.shared_memory == SharedMemory::System;
        ensure!(
            !(shm && t.protocol == Protocol::V1),
            "--shared-memory system needs --protocol v2"
        );
        let slice = load.slice();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("dlrs-loadgen")
            .on_thread_start(move || driver::ask_for_slice(slice))
            .build()
            .context("starting the tokio runtime")?;
        let ep = Arc::new(rt.block_on(http::Endpoint::resolve(t.url, t.model, t.protocol))?);
        let cfg = rt.block_on(ep.model_config(t.model_dir))?;

        let t0 = Instant::now();
        let workload = load.workload();
        let (pool, bodies) = if shm {
            let (pool, bodies) = ShmPool::create(&rt, &ep, &workload, &cfg)?;
            (Some(pool), bodies)
        } else {
            (None, workload.bodies(&cfg, t.protocol, t.binary)?)
        };
        let bytes: usize = bodies.iter().map(|b| b.bytes.len()).sum();
        let in_shm = pool.as_ref().map_or(String::new(), |p| {
            format!(
                ", {:.1} MB of tensors in shared memory region \"{}\" (key {})",
                p.byte_size as f64 / 1e6,
                p.region,
                p.key
            )
        });
        Out { json: load.json }.line(&format!(
            "generated {} queries ({:.1} MB of request bodies{in_shm}) in {:.2} s",
            bodies.len(),
            bytes as f64 / 1e6,
            t0.elapsed().as_secs_f64()
        ));

        let transport = match (t.shared_memory, t.binary) {
            (SharedMemory::System, _) => "system_shared_memory",
            (SharedMemory::None, true) => "binary",
            (SharedMemory::None, false) => "json",
        };
        let mut header = Map::new();
        header.insert("mode".into(), json!("http"));
        header.insert("url".into(), json!(t.url));
        header.insert("model".into(), json!(t.model));
        header.insert(
            "model_dir".into(),
            json!(t.model_dir.map(|p| p.display().to_string())),
        );
        header.insert("protocol".into(), json!(t.protocol.name()));
        header.insert("binary".into(), json!(t.binary));
        header.insert("shared_memory".into(), json!(t.shared_memory.name()));
        header.insert("transport".into(), json!(transport));
        header.insert("connections".into(), json!(t.connections));
        header.extend(load.header());
        header.insert("pool".into(), json!(bodies.len()));
        let title = format!(
            "dlrs loadgen: {} model \"{}\" ({} {transport}, {} connections), query size {}, ids {} x{}",
            t.url,
            t.model,
            t.protocol.name(),
            t.connections,
            load.query_size.name(),
            load.dist.name(),
            load.ids_per_table
        );
        let plot_title = format!(
            "HTTP {} \"{}\" ({}): p99 / p50 vs QPS",
            t.url,
            t.model,
            t.protocol.name()
        );
        Ok(HttpLoad {
            _pool: pool,
            rt,
            ep,
            bodies: Arc::new(bodies),
            connections: t.connections,
            header,
            title,
            plot_title,
        })
    }

    fn measure(&self, m: &Measure) -> anyhow::Result<Report> {
        http::measure(&self.rt, &self.ep, self.connections, &self.bodies, m)
    }
}

/// [`run_twin`] without printing the JSON object: returns it. With `--versus-url`, the
/// object holds the two searches, `http` and `twin`, and `http_over_twin`.
pub fn twin_json(args: TwinArgs) -> anyhow::Result<Value> {
    args.load.check()?;
    ensure!(args.queue.max_batch >= 1, "--max-batch must be at least 1");
    // (checked before the model is loaded)
    let versus = match &args.versus.versus_url {
        None => None,
        Some(url) => Some((
            url.as_str(),
            args.versus
                .versus_model
                .as_deref()
                .context("--versus-url needs --versus-model (the model's name on that server)")?,
            args.load
                .target_p99_ms
                .context("--versus-url needs --target-p99-ms (it compares two searches)")?,
        )),
    };
    let (instances, threads) = dlrs_serve::compute_layout(args.threads, args.instances)?;
    let model = Model::load_with(&args.model, TableMode::Ram)
        .with_context(|| format!("loading the model from {}", args.model.display()))?;
    let t0 = Instant::now();
    let queries: Arc<Vec<Arc<Batch>>> = Arc::new(
        args.load
            .workload()
            .batches(&model.config)?
            .into_iter()
            .map(Arc::new)
            .collect(),
    );
    let version = Arc::new(dlrs_serve::Version { model, number: 1 });
    let out = Out {
        json: args.load.json,
    };
    out.line(&format!(
        "generated {} queries in {:.2} s",
        queries.len(),
        t0.elapsed().as_secs_f64()
    ));

    let mut header = Map::new();
    header.insert("mode".into(), json!("twin"));
    header.insert("model_dir".into(), json!(args.model.display().to_string()));
    header.insert("threads".into(), json!(args.threads));
    header.insert("instances".into(), json!(instances));
    let q = &args.queue;
    header.insert("max_batch".into(), json!(q.max_batch));
    header.insert("max_queue_delay_us".into(), json!(q.max_queue_delay_us));
    header.insert("max_queue".into(), json!(q.max_queue));
    header.insert("max_queue_burst".into(), json!(q.max_queue_burst));
    header.insert("burst_cooldown_ms".into(), json!(q.burst_cooldown_ms));
    header.insert("max_queue_wait_ms".into(), json!(q.max_queue_wait_ms));
    header.insert("deadline_ms".into(), json!(args.deadline_ms));
    header.extend(args.load.header());
    header.insert("pool".into(), json!(queries.len()));
    let title = format!(
        "dlrs twin: {} in process ({} threads in {instances} instances, max batch {}, max queue delay {} us), query size {}, ids {} x{}",
        args.model.display(),
        args.threads,
        args.queue.max_batch,
        args.queue.max_queue_delay_us,
        args.load.query_size.name(),
        args.load.dist.name(),
        args.load.ids_per_table
    );
    let batching = twin::Batching {
        queue: args.queue.config(),
        deadline: Duration::from_millis(args.deadline_ms),
        instances,
        threads,
    };
    let hooks = dlrs_serve::Hooks::default();
    let mut measure = |qps, duration_s, seed| {
        twin::measure(
            &version,
            &queries,
            &batching,
            &hooks,
            &args.load.at(qps, duration_s, seed),
        )
    };
    let name = args.model.file_name().map_or_else(
        || args.model.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let plot_title = format!(
        "twin {name} ({} thr / {instances} inst, batch {}, delay {} us): p99 / p50 vs QPS",
        args.threads, args.queue.max_batch, args.queue.max_queue_delay_us
    );
    let Some((url, model_name, target)) = versus else {
        return drive(&args.load, header, &title, &plot_title, &mut measure);
    };
    let v = &args.versus;
    let http = HttpLoad::new(
        &HttpTarget {
            url,
            model: model_name,
            model_dir: None,
            protocol: Protocol::V2,
            binary: v.versus_binary,
            shared_memory: v.versus_shared_memory,
            connections: v.versus_connections,
        },
        &args.load,
    )?;
    let mut measure_http =
        |qps, duration_s, seed| http.measure(&args.load.at(qps, duration_s, seed));
    drive_paired(
        &args.load,
        target,
        &format!("{}\n{title}", http.title),
        [
            Side {
                name: "http",
                header: http.header.clone(),
                plot_title: http.plot_title.clone(),
                measure: &mut measure_http,
            },
            Side {
                name: "twin",
                header,
                plot_title,
                measure: &mut measure,
            },
        ],
    )
}
