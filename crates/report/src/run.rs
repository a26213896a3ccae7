//! Measuring a report: the machine, then each model in turn (its breakdown and batching
//! sweep, its co-location, its latency-bounded searches, its row formats), then the mixes.
//! One model's full-size tables are in memory at a time, besides the two kept for the mix.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use dlrs_loadgen::{LoadConfig, search, twin};
use dlrs_model::bench::{
    BenchModel, Build, RowFootprint, Timing, build_model, pool_batches, synth_pool, time_forward,
};
use dlrs_model::synth::IdDist;
use dlrs_model::{Executor, Model, RowFormat, TableMode, Workspace};
use dlrs_serve::{QueueConfig, Version};

use crate::error::ReportError;
use crate::plan::{CROSSING_TARGETS_MS, PROBE_ROW_BYTES, Plan};
use crate::schema::*;

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    /// preset names or model directories
    pub models: Vec<String>,
    pub size: Size,
}

/// Told how the run goes, for a progress bar: the estimated seconds of the whole run, the
/// name of each step as it starts, and each step's estimate as it ends.
pub trait Progress {
    fn start(&mut self, _total_est_s: f64) {}
    fn step(&mut self, _label: &str) {}
    fn advance(&mut self, _est_s: f64) {}
}

/// No progress shown.
impl Progress for () {}

/// A model being measured.
struct Subject {
    spec: String,
    name: String,
    ids: usize,
    rows_cap: Option<usize>,
    version: Arc<Version>,
}

impl Subject {
    fn model(&self) -> &Model {
        &self.version.model
    }
}

/// Runs every section and returns the report (the charts are drawn by [`crate::write`]).
pub fn measure(opts: &Options, progress: &mut dyn Progress) -> Result<Report, ReportError> {
    if opts.models.is_empty() {
        return Err(ReportError::option("--models", "name at least one model"));
    }
    let t0 = Instant::now();
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let load_at_start = load_average();
    let host = dlrs_machine::Host::detect();
    let llc = host.caches.iter().map(|c| c.bytes).max().unwrap_or(0);
    let plan = Plan::new(opts.size, llc);
    let cpus = host.cpus.max(1) as usize;

    // the shapes first (a bad name fails before anything is measured), for the estimate
    let shapes: Vec<(String, usize, usize, Option<usize>)> = opts
        .models
        .iter()
        .map(|spec| shape(spec, &plan))
        .collect::<Result<_, _>>()?;
    let total_est = plan.est_machine_s()
        + shapes
            .iter()
            .map(|(_, bytes, _, _)| model_est_s(&plan, *bytes))
            .sum::<f64>()
        + if shapes.len() > 1 {
            2.0 * (plan.coloc_s + 1.0)
        } else {
            0.0
        }
        + 3.0;
    progress.start(total_est);

    // section 1: the machine; the gather rate also at every model's fp32 row stride
    progress.step("probing the machine");
    let mut row_bytes: Vec<usize> = PROBE_ROW_BYTES.to_vec();
    row_bytes.extend(shapes.iter().map(|s| s.2).filter(|b| *b >= 4 && b % 4 == 0));
    row_bytes.sort_unstable();
    row_bytes.dedup();
    let mut threads = vec![1, cpus];
    threads.dedup();
    let limits =
        dlrs_machine::measure_with(&plan.probe, &row_bytes, &threads, &plan.probe_huge_pages)
            .map_err(ReportError::Probe)?;
    progress.advance(plan.est_machine_s());
    let mut machine = Machine {
        cpu_line: host.cpu_line(),
        host,
        limits,
        load_average: [load_at_start, 0.0],
    };

    let mut models = Vec::new();
    let mut points = Vec::new();
    let mut batching = Vec::new();
    let mut scenarios = Vec::new();
    let mut alone: Vec<(String, Instance)> = Vec::new();
    let mut bounded = Vec::new();
    let mut formats = Vec::new();
    let mut kept: Vec<Subject> = Vec::new();
    let n_models = opts.models.len();
    let (instances, inst_threads) = dlrs_serve::compute_layout(cpus, None)
        .map_err(|e| ReportError::option("threads", e.to_string()))?;

    for (i, (spec, (_, bytes, _, rows_cap))) in opts.models.iter().zip(&shapes).enumerate() {
        progress.step(&format!("building {spec}"));
        let s = subject(spec, *rows_cap, None)?;
        progress.advance(Plan::est_build_s(*bytes));
        models.push(model_info(&s));

        // sections 2 and 3: the sweep over batch sizes
        let mut mine = Vec::new();
        for &b in &plan.batches {
            progress.step(&format!("{}: batch {b}", s.name));
            mine.push(point(&s, b, 1, &plan, &machine.limits)?);
            progress.advance(plan.est_point_s());
        }
        let top_target = CROSSING_TARGETS_MS[CROSSING_TARGETS_MS.len() - 1];
        let mut b = plan.batches.last().copied().unwrap_or(1) * 2;
        while b <= plan.extend_batches_to
            && mine
                .last()
                .is_some_and(|p: &Point| p.latency_ms.p99 < top_target)
        {
            progress.step(&format!("{}: batch {b}", s.name));
            mine.push(point(&s, b, 1, &plan, &machine.limits)?);
            b *= 2;
        }
        batching.push(batching_of(&s.name, &mine));
        points.extend(mine);

        // section 4: N instances of this model
        for &n in &plan.coloc_instances {
            progress.step(&format!("{}: {n} instance(s) side by side", s.name));
            let members: Vec<&Subject> = (0..n).map(|_| &s).collect();
            let timings = side_by_side(&members, &plan)?;
            // 1 instance comes first: it is "alone" for the others
            let sc = scenario(&format!("{} x{n}", s.name), &members, &timings, &alone);
            if n == 1 {
                alone.push((s.name.clone(), sc.instances[0].clone()));
            }
            scenarios.push(sc);
            progress.advance(plan.coloc_s + 0.5);
        }
        // section 5: latency-bounded throughput
        let cap = points
            .iter()
            .rev()
            .find(|p| p.model == s.name && p.batch == 256)
            .map_or(1000.0, |p| p.samples_per_s);
        let (default_batch, default_delay) = plan.bounded_settings[0];
        let mut searches: Vec<(f64, usize, u64)> = plan
            .bounded_targets_ms
            .iter()
            .map(|&t| (t, default_batch, default_delay))
            .collect();
        searches.extend(
            plan.bounded_settings[1..]
                .iter()
                .map(|&(b, d)| (plan.bounded_settings_target_ms, b, d)),
        );
        for (target, max_batch, delay) in searches {
            progress.step(&format!(
                "{}: latency-bounded search, p99 <= {target} ms, max batch {max_batch}, delay {delay} us",
                s.name
            ));
            bounded.push(search_bounded(
                &s,
                &plan,
                (instances, inst_threads),
                cap * cpus as f64,
                target,
                max_batch,
                delay,
            )?);
            progress.advance(plan.est_search_s());
        }

        // section 6: row formats
        for f in [
            RowFormat::F32,
            RowFormat::F16,
            RowFormat::Int8,
            RowFormat::Int4,
        ] {
            progress.step(&format!("{}: {} rows", s.name, f.name()));
            let other;
            let sub = if f == RowFormat::F32 {
                &s
            } else {
                other = subject(spec, *rows_cap, Some(f))?;
                &other
            };
            formats.push(format_point(sub, f, &plan)?);
            progress.advance(
                plan.est_point_s()
                    + if f == RowFormat::F32 {
                        0.0
                    } else {
                        Plan::est_build_s(*bytes / 2)
                    },
            );
        }
        let fp32 = formats
            .iter()
            .find(|p: &&FormatPoint| p.model == s.name && p.format == "fp32")
            .map_or(1.0, |p| p.samples_per_s);
        for p in formats.iter_mut().filter(|p| p.model == s.name) {
            p.vs_fp32 = p.samples_per_s / fp32;
        }
        if n_models > 1 && (i == 0 || i == n_models - 1) {
            kept.push(s);
        }
    }

    // section 4, the mixes: the first and the last model side by side
    if let [a, b] = &kept[..] {
        for n in plan
            .coloc_instances
            .iter()
            .filter(|&&n| n >= 2 && n % 2 == 0)
        {
            let each = n / 2;
            let name = if each == 1 {
                format!("{} + {}", a.name, b.name)
            } else {
                format!("{each} {} + {each} {}", a.name, b.name)
            };
            progress.step(&format!("mix: {name}"));
            let members: Vec<&Subject> = (0..each).flat_map(|_| [a, b]).collect();
            let timings = side_by_side(&members, &plan)?;
            scenarios.push(scenario(&name, &members, &timings, &alone));
            progress.advance(plan.coloc_s + 1.0);
        }
    }
    drop(kept);
    // an MLP that ran faster than the FMA peak means the probe ran while the machine was
    // busy: probe the peak again and keep the higher (as dlrs bench does with its cache)
    let fastest = points
        .iter()
        .flat_map(|p| [p.bottom_mlp_gflop_per_s, p.top_mlp_gflop_per_s])
        .fold(0.0, f64::max);
    if fastest > machine.limits.fma.per_core_gflops {
        progress.step("probing the FMA peak again");
        let again = dlrs_machine::probe::fma_peak(cpus, plan.probe.reps);
        if again.per_core_gflops > machine.limits.fma.per_core_gflops {
            machine.limits.fma = again;
            for p in &mut points {
                p.of_limit = of_limit(p, &machine.limits);
            }
        }
    }
    machine.load_average[1] = load_average();

    let report = Report {
        schema_version: SCHEMA_VERSION,
        dlrs_version: env!("CARGO_PKG_VERSION").to_string(),
        size: plan.size,
        capped: models.iter().any(|m| m.rows_cap.is_some()),
        started_unix_s,
        wall_s: t0.elapsed().as_secs_f64(),
        machine,
        models,
        breakdown: Breakdown {
            threads: 1,
            batches: plan.batches.clone(),
            seconds_per_point: plan.point_s,
            min_batches: plan.min_batches,
            points,
        },
        batching,
        colocation: Colocation {
            batch: plan.coloc_batch,
            threads_per_instance: 1,
            seconds: plan.coloc_s,
            cpus: cpus as u32,
            shared_weights: true,
            scenarios,
        },
        latency_bounded: LatencyBounded {
            threads: cpus,
            instances,
            query_size: LoadConfig::default().query_size.name(),
            step_s: plan.step_s,
            max_steps: plan.max_steps,
            targets_ms: plan.bounded_targets_ms.clone(),
            default_max_batch: plan.bounded_settings[0].0,
            default_max_queue_delay_us: plan.bounded_settings[0].1,
            results: bounded,
        },
        row_formats: RowFormats {
            batch: plan.formats_batch,
            threads: 1,
            points: formats,
        },
        plots: Vec::new(),
    };
    Ok(report)
}

/// The 1-minute load average (`/proc/loadavg`; 0 where there is none).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A model's name, fp32 table bytes (after the cap), fp32 row stride and row cap, from its
/// preset or its directory's config, without building it.
fn shape(spec: &str, plan: &Plan) -> Result<(String, usize, usize, Option<usize>), ReportError> {
    let dir = std::path::Path::new(spec);
    let cfg = if dir.is_dir() {
        dlrs_model::DlrmConfig::load(&dir.join(dlrs_model::CONFIG_FILE))
            .map_err(ReportError::model(spec))?
    } else {
        dlrs_model::presets::preset(spec)
            .map_err(ReportError::model(spec))?
            .config
    };
    let cap = if dir.is_dir() {
        None
    } else {
        plan.rows_cap(cfg.dim)
            .filter(|c| cfg.tables.iter().any(|r| r > c))
    };
    let rows: usize = cfg
        .tables
        .iter()
        .map(|&r| cap.map_or(r, |c| r.min(c)))
        .sum();
    Ok((spec.to_string(), rows * cfg.dim * 4, cfg.dim * 4, cap))
}

/// Estimated seconds of one model's sections.
fn model_est_s(plan: &Plan, bytes: usize) -> f64 {
    Plan::est_build_s(bytes) * 2.5
        + plan.batches.len() as f64 * plan.est_point_s()
        + plan.coloc_instances.len() as f64 * (plan.coloc_s + 0.5)
        + plan.searches() as f64 * plan.est_search_s()
        + 4.0 * plan.est_point_s()
}

fn subject(
    spec: &str,
    rows_cap: Option<usize>,
    format: Option<RowFormat>,
) -> Result<Subject, ReportError> {
    let exec = Executor::new(1).map_err(ReportError::model(spec))?;
    let b = Build {
        rows_cap,
        format,
        mlp_dtype: None,
        mode: TableMode::Ram,
    };
    let BenchModel {
        model,
        name,
        ids_per_table,
    } = build_model(spec, &b, &exec).map_err(ReportError::model(spec))?;
    // a directory is named by its last component (the bench command keeps the path)
    let name = match std::path::Path::new(spec).file_name() {
        Some(n) if std::path::Path::new(spec).is_dir() => n.to_string_lossy().into_owned(),
        _ => name,
    };
    Ok(Subject {
        spec: spec.to_string(),
        name,
        ids: ids_per_table,
        rows_cap,
        version: Arc::new(Version { model, number: 1 }),
    })
}

fn model_info(s: &Subject) -> ModelInfo {
    let c = &s.model().config;
    ModelInfo {
        name: s.name.clone(),
        source: if std::path::Path::new(&s.spec).is_dir() {
            "directory"
        } else {
            "preset"
        }
        .into(),
        rows_cap: s.rows_cap,
        tables: c.n_tables(),
        total_rows: c.tables.iter().sum(),
        dim: c.dim,
        ids_per_table: s.ids,
        embedding_bytes: s
            .model()
            .weights
            .tables
            .iter()
            .map(|t| t.size_bytes())
            .sum(),
        bottom_mlp: c.bot.clone(),
        top_mlp: c.top.clone(),
        mlp_flops_per_sample: c.mlp_flops_per_sample(),
        row_stride: RowFootprint::of(s.model()).row_stride,
    }
}

/// Times `s` at `batch` on `threads` threads, as `dlrs bench` does.
fn time_point(
    s: &Subject,
    batch: usize,
    threads: usize,
    plan: &Plan,
) -> Result<Timing, ReportError> {
    let cfg = &s.model().config;
    let exec = Executor::new(threads).map_err(ReportError::model(&s.name))?;
    let pool = synth_pool(
        cfg,
        batch,
        s.ids,
        IdDist::Uniform,
        pool_batches(cfg, batch, s.ids),
        1,
    )
    .map_err(ReportError::model(&s.name))?;
    time_forward(
        s.model(),
        &pool,
        &mut Workspace::default(),
        &exec,
        plan.point_s,
        plan.min_batches,
    )
    .map_err(ReportError::model(&s.name))
}

/// One point of the breakdown: timed, split into stages, each against the machine's limit.
fn point(
    s: &Subject,
    batch: usize,
    threads: usize,
    plan: &Plan,
    limits: &dlrs_machine::Limits,
) -> Result<Point, ReportError> {
    let t = time_point(s, batch, threads, plan)?;
    let cfg = &s.model().config;
    let st = t.stages_mean();
    let ms = Stages {
        embedding: st.embedding * 1e3,
        bottom_mlp: st.bottom_mlp * 1e3,
        interaction: st.interaction * 1e3,
        top_mlp: st.top_mlp * 1e3,
    };
    let mean_ms = t.mean_s() * 1e3;
    let share = Stages {
        embedding: ms.embedding / mean_ms,
        bottom_mlp: ms.bottom_mlp / mean_ms,
        interaction: ms.interaction / mean_ms,
        top_mlp: ms.top_mlp / mean_ms,
    };
    let rows = (batch * s.ids * cfg.n_tables()) as f64;
    let rows_per_s = rows / st.embedding.max(1e-12);
    let gflops = |flops: f64, secs: f64| flops * batch as f64 / secs.max(1e-12) / 1e9;
    let bottom = gflops(cfg.bottom_mlp_flops_per_sample(), st.bottom_mlp);
    let top = gflops(cfg.top_mlp_flops_per_sample(), st.top_mlp);
    let dominant = share
        .named()
        .into_iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or("", |x| x.0)
        .to_string();
    let cap = s
        .rows_cap
        .map_or(String::new(), |c| format!(" --rows-cap {c}"));
    let tables = if std::path::Path::new(&s.spec).is_dir() {
        " --tables ram"
    } else {
        ""
    };
    let mut p = Point {
        model: s.name.clone(),
        batch,
        threads,
        batches_timed: t.batches(),
        samples_per_s: t.samples_per_s(),
        latency_ms: LatencyMs {
            p50: t.percentile(50.0) * 1e3,
            p99: t.percentile(99.0) * 1e3,
            mean: mean_ms,
        },
        stages_ms: ms,
        stages_over_batch: share.sum(),
        share,
        of_limit: OfLimit::default(),
        embedding_rows_per_s: rows_per_s,
        bottom_mlp_gflop_per_s: bottom,
        top_mlp_gflop_per_s: top,
        dominant,
        bench_command: format!(
            "dlrs bench --model {} --batch {batch} --threads {threads} --seconds {}{cap}{tables} --json",
            s.spec,
            plan.point_s.max(0.1)
        ),
        row_stride: RowFootprint::of(s.model()).row_stride,
    };
    p.of_limit = of_limit(&p, limits);
    Ok(p)
}

/// A point's stages against the machine's limits: the embedding stage's rows per second
/// over the gather rate at its row stride on as many threads (huge pages), each MLP's FLOP/s
/// over the FMA peak of as many cores.
fn of_limit(p: &Point, limits: &dlrs_machine::Limits) -> OfLimit {
    let peak = limits.fma.per_core_gflops * p.threads as f64;
    let gather = limits
        .gather_at(p.row_stride, p.threads)
        .map(|g| g.rows_per_s);
    OfLimit {
        embedding: gather.map(|g| p.embedding_rows_per_s / g),
        bottom_mlp: (peak > 0.0).then(|| p.bottom_mlp_gflop_per_s / peak),
        top_mlp: (peak > 0.0).then(|| p.top_mlp_gflop_per_s / peak),
    }
}

/// The batch at which the p99 of `pts` (sorted by batch) crosses `target` ms.
pub fn crossing(pts: &[BatchPoint], target: f64) -> Crossing {
    let (batch, note) = match pts.first() {
        None => (None, "nothing measured".to_string()),
        Some(p) if p.p99_ms > target => (
            None,
            format!("above {target} ms already at batch {}", p.batch),
        ),
        Some(_) => match pts.windows(2).find(|w| w[1].p99_ms > target) {
            Some(w) => {
                let (x0, x1) = ((w[0].batch as f64).ln(), (w[1].batch as f64).ln());
                let f = (target - w[0].p99_ms) / (w[1].p99_ms - w[0].p99_ms);
                (
                    Some((x0 + f * (x1 - x0)).exp()),
                    format!("between batch {} and {}", w[0].batch, w[1].batch),
                )
            }
            None => (
                None,
                format!(
                    "not crossed up to batch {}",
                    pts.last().map_or(0, |p| p.batch)
                ),
            ),
        },
    };
    Crossing {
        target_ms: target,
        batch,
        note,
    }
}

fn batching_of(model: &str, pts: &[Point]) -> Batching {
    let mut bp: Vec<BatchPoint> = pts
        .iter()
        .map(|p| BatchPoint {
            batch: p.batch,
            samples_per_s: p.samples_per_s,
            p50_ms: p.latency_ms.p50,
            p99_ms: p.latency_ms.p99,
        })
        .collect();
    bp.sort_by_key(|p| p.batch);
    let best = bp.iter().map(|p| p.samples_per_s).fold(0.0, f64::max);
    Batching {
        model: model.to_string(),
        crossings: CROSSING_TARGETS_MS
            .iter()
            .map(|&t| crossing(&bp, t))
            .collect(),
        saturation_batch: bp
            .iter()
            .find(|p| p.samples_per_s >= 0.9 * best)
            .map_or(0, |p| p.batch),
        best_samples_per_s: best,
        points: bp,
    }
}

/// Runs each of `members` on its own thread (one thread each, its own pool of batches) at
/// the same time, for the plan's co-location seconds.
fn side_by_side(members: &[&Subject], plan: &Plan) -> Result<Vec<Timing>, ReportError> {
    let pools = members
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let cfg = &s.model().config;
            synth_pool(
                cfg,
                plan.coloc_batch,
                s.ids,
                IdDist::Uniform,
                pool_batches(cfg, plan.coloc_batch, s.ids),
                1 + 100_000 * i as u64,
            )
            .map_err(ReportError::model(&s.name))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let barrier = Barrier::new(members.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = members
            .iter()
            .zip(&pools)
            .map(|(s, pool)| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let exec = Executor::new(1).map_err(ReportError::model(&s.name))?;
                    let mut ws = Workspace::default();
                    barrier.wait();
                    time_forward(
                        s.model(),
                        pool,
                        &mut ws,
                        &exec,
                        plan.coloc_s,
                        plan.min_batches,
                    )
                    .map_err(ReportError::model(&s.name))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| ReportError::Thread("an instance panicked".into()))?
            })
            .collect()
    })
}

fn fill_alone(inst: &mut Instance, alone: &[(String, Instance)]) {
    if let Some((_, a)) = alone.iter().find(|(m, _)| *m == inst.model) {
        inst.alone_samples_per_s = a.samples_per_s;
        inst.alone_p99_ms = a.p99_ms;
        inst.throughput_vs_alone = inst.samples_per_s / a.samples_per_s;
        inst.p99_vs_alone = inst.p99_ms / a.p99_ms;
        inst.p50_vs_alone = inst.p50_ms / a.p50_ms;
    }
}

fn scenario(
    name: &str,
    members: &[&Subject],
    timings: &[Timing],
    alone: &[(String, Instance)],
) -> Scenario {
    let instances: Vec<Instance> = members
        .iter()
        .zip(timings)
        .map(|(s, t)| {
            let mut inst = Instance {
                model: s.name.clone(),
                samples_per_s: t.samples_per_s(),
                p50_ms: t.percentile(50.0) * 1e3,
                p99_ms: t.percentile(99.0) * 1e3,
                alone_samples_per_s: t.samples_per_s(),
                alone_p99_ms: t.percentile(99.0) * 1e3,
                throughput_vs_alone: 1.0,
                p99_vs_alone: 1.0,
                p50_vs_alone: 1.0,
            };
            fill_alone(&mut inst, alone);
            inst
        })
        .collect();
    Scenario {
        name: name.to_string(),
        total_samples_per_s: instances.iter().map(|i| i.samples_per_s).sum(),
        instances,
    }
}

/// The twin's search for the highest Poisson rate whose p99 stays within `target` ms, with
/// `dlrs serve`'s batcher at `max_batch` and `delay_us`, starting from half the rate
/// `capacity` samples per second would carry.
fn search_bounded(
    s: &Subject,
    plan: &Plan,
    (instances, threads): (usize, usize),
    capacity: f64,
    target: f64,
    max_batch: usize,
    delay_us: u64,
) -> Result<Bounded, ReportError> {
    let twin_err = |source| ReportError::Twin {
        model: s.name.clone(),
        source: Box::new(source),
    };
    let base = LoadConfig::default();
    let mean_query = 165.0;
    let load = LoadConfig {
        qps: (0.5 * capacity / mean_query).max(1.0),
        duration: plan.step_s,
        ids_per_table: s.ids,
        pool: plan.query_pool,
        warmup: plan.warmup_s,
        drain: plan.drain_s,
        max_steps: plan.max_steps,
        json: true,
        ..base
    };
    let queries = Arc::new(
        load.workload()
            .batches(&s.model().config)
            .map_err(twin_err)?
            .into_iter()
            .map(Arc::new)
            .collect::<Vec<_>>(),
    );
    let batching = twin::Batching {
        queue: QueueConfig {
            max_batch,
            max_queue_delay_us: delay_us,
            ..QueueConfig::default()
        },
        deadline: Duration::from_millis(1000),
        instances,
        threads,
        controller: None,
    };
    let hooks = dlrs_serve::Hooks::default();
    let found = search::search(
        load.plan(target),
        |step, qps| {
            let seed = load.seed.wrapping_add(step as u64);
            if load.warmup > 0.0 {
                twin::measure(
                    &s.version,
                    &queries,
                    &batching,
                    &hooks,
                    &load.at(qps, load.warmup, seed.wrapping_add(1_000_003)),
                )?;
            }
            twin::measure(
                &s.version,
                &queries,
                &batching,
                &hooks,
                &load.at(qps, load.duration, seed),
            )
        },
        |_| {},
    )
    .map_err(twin_err)?;
    let best = found.best();
    Ok(Bounded {
        model: s.name.clone(),
        target_p99_ms: target,
        max_batch,
        max_queue_delay_us: delay_us,
        samples_per_s: best.map(|p| p.report.samples_per_s),
        achieved_qps: best.map(|p| p.report.achieved_qps),
        p50_ms: best.and_then(|p| p.report.latency_ms.p50),
        p99_ms: best.and_then(|p| p.report.latency_ms.p99),
        steps: found.points.len(),
    })
}

fn format_point(s: &Subject, f: RowFormat, plan: &Plan) -> Result<FormatPoint, ReportError> {
    let t = time_point(s, plan.formats_batch, 1, plan)?;
    let fp = RowFootprint::of(s.model());
    Ok(FormatPoint {
        model: s.name.clone(),
        format: f.name().to_string(),
        samples_per_s: t.samples_per_s(),
        vs_fp32: 1.0,
        row_bytes: fp.row_bytes,
        row_stride: fp.row_stride,
        cache_lines_per_row: fp.cache_lines_per_row,
        embedding_bytes: s
            .model()
            .weights
            .tables
            .iter()
            .map(|t| t.size_bytes())
            .sum(),
        embedding_share: t.stages_mean().embedding / t.mean_s(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bp(batch: usize, p99_ms: f64) -> BatchPoint {
        BatchPoint {
            batch,
            samples_per_s: 1.0,
            p50_ms: p99_ms / 2.0,
            p99_ms,
        }
    }

    #[test]
    fn crossings_interpolate_on_log_batch() {
        let pts = [bp(1, 1.0), bp(16, 5.0), bp(256, 15.0), bp(1024, 40.0)];
        let c = crossing(&pts, 10.0);
        // halfway from 5 to 15 ms: halfway from log 16 to log 256, i.e. batch 64
        assert!((c.batch.unwrap() - 64.0).abs() < 1e-9, "{c:?}");
        assert_eq!(c.note, "between batch 16 and 256");
        let c = crossing(&pts, 60.0);
        assert_eq!(
            (c.batch, c.note.as_str()),
            (None, "not crossed up to batch 1024")
        );
        let c = crossing(&pts, 0.5);
        assert_eq!(c.batch, None);
        assert!(c.note.contains("already at batch 1"), "{c:?}");
    }
}
