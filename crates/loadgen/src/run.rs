//! The entry points and their runs: `dlrs loadgen` ([`run`], [`loadgen_json`]) sets up the
//! HTTP load, `dlrs twin` ([`run_twin`], [`twin_json`]) the in-process one (and, with
//! `--versus-url`, the HTTP load beside it); `drive` then takes the measurement or the
//! search either asks for, `drive_paired` the two searches in turn.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dlrs_model::{Batch, Model, TableMode};
use serde_json::{Map, Value, json};

use crate::config::{HttpTarget, LoadConfig, LoadgenConfig, TwinConfig};
use crate::driver::{self, Measure};
use crate::error::LoadgenError;
use crate::report::{self, Out};
use crate::shm::{SharedMemory, ShmPool};
use crate::stats::Report;
use crate::{http, payload, plot, search, twin};

/// `dlrs loadgen`: open-loop Poisson load against a `dlrs serve` over HTTP (see the crate
/// docs); with a target p99, the latency-bounded throughput search. With `json` the result
/// object goes to stdout.
pub fn run(config: LoadgenConfig) -> Result<(), LoadgenError> {
    let json = config.load.json;
    report::emit(json, loadgen_json(config))
}

/// `dlrs twin`: the same load as `dlrs loadgen` against the model in process, batched like
/// `dlrs serve` (see the crate docs). With `json` the result object goes to stdout.
pub fn run_twin(config: TwinConfig) -> Result<(), LoadgenError> {
    let json = config.load.json;
    report::emit(json, twin_json(config))
}

/// [`run`] without printing the JSON object: returns it (the report for people is printed,
/// to the log with `json`).
pub fn loadgen_json(config: LoadgenConfig) -> Result<Value, LoadgenError> {
    config.load.check()?;
    let http = HttpLoad::new(&config.target(), &config.load)?;
    let load = &config.load;
    let mut measure = |qps, duration_s, seed| http.measure(&load.at(qps, duration_s, seed));
    drive(
        load,
        http.header.clone(),
        &http.title,
        &http.plot_title,
        &mut measure,
    )
}

/// [`run_twin`] without printing the JSON object: returns it. With a `versus` URL, the
/// object holds the two searches, `http` and `twin`, and `http_over_twin`.
pub fn twin_json(config: TwinConfig) -> Result<Value, LoadgenError> {
    let load = &config.load;
    load.check()?;
    if config.queue.max_batch < 1 {
        return Err(LoadgenError::flag("--max-batch", "must be at least 1"));
    }
    // (checked before the model is loaded)
    let versus = match &config.versus.url {
        None => None,
        Some(url) => {
            let model = config.versus.model.as_deref().ok_or_else(|| {
                LoadgenError::flag(
                    "--versus-url",
                    "needs --versus-model (the model's name on that server)",
                )
            })?;
            let target = load.target_p99_ms.ok_or_else(|| {
                LoadgenError::flag(
                    "--versus-url",
                    "needs --target-p99-ms (it compares two searches)",
                )
            })?;
            Some((url.as_str(), model, target))
        }
    };
    let (instances, threads) = dlrs_serve::compute_layout(config.threads, config.instances)?;
    let model = Model::load_with(&config.model, TableMode::Ram).map_err(|source| {
        LoadgenError::LoadModel {
            dir: config.model.clone(),
            source,
        }
    })?;
    let t0 = Instant::now();
    let queries: Arc<Vec<Arc<Batch>>> = Arc::new(
        load.workload()
            .batches(&model.config)?
            .into_iter()
            .map(Arc::new)
            .collect(),
    );
    let version = Arc::new(dlrs_serve::Version { model, number: 1 });
    let out = Out { json: load.json };
    out.line(&format!(
        "generated {} queries in {:.2} s",
        queries.len(),
        t0.elapsed().as_secs_f64()
    ));

    let header = report::twin_header(&config, instances, queries.len());
    let q = &config.queue;
    let title = format!(
        "dlrs twin: {} in process ({} threads in {instances} instances, max batch {}, max queue delay {} us), query size {}, ids {} x{}",
        config.model.display(),
        config.threads,
        q.max_batch,
        q.max_queue_delay_us,
        load.query_size.name(),
        load.dist.name(),
        load.ids_per_table
    );
    let controller = config
        .control
        .clone()
        .map(|c| dlrs_serve::Controller::new(c, config.threads, q));
    if let Some(c) = &controller {
        out.line(&format!(
            "scheduler: towards p{} <= {} ms, starting at {}",
            c.cfg.percentile,
            c.cfg.target_ms,
            c.settings().describe()
        ));
    }
    let batching = twin::Batching {
        queue: q.clone(),
        deadline: Duration::from_millis(config.deadline_ms),
        instances,
        threads,
        controller: controller.clone(),
    };
    let hooks = dlrs_serve::Hooks::default();
    let mut measure = |qps, duration_s, seed| {
        let mut r = twin::measure(
            &version,
            &queries,
            &batching,
            &hooks,
            &load.at(qps, duration_s, seed),
        )?;
        r.scheduler = controller.as_ref().map(|c| c.settings().describe());
        Ok(r)
    };
    let name = config.model.file_name().map_or_else(
        || config.model.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let plot_title = format!(
        "twin {name} ({} thr / {instances} inst, batch {}, delay {} us): p99 / p50 vs QPS",
        config.threads, q.max_batch, q.max_queue_delay_us
    );
    let Some((url, model_name, target)) = versus else {
        return drive(load, header, &title, &plot_title, &mut measure);
    };
    let http = HttpLoad::new(&config.versus.target(url, model_name), load)?;
    let mut measure_http = |qps, duration_s, seed| http.measure(&load.at(qps, duration_s, seed));
    drive_paired(
        load,
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
    fn new(t: &HttpTarget, load: &LoadConfig) -> Result<Self, LoadgenError> {
        if t.connections < 1 {
            return Err(LoadgenError::flag("--connections", "must be at least 1"));
        }
        if t.binary && t.protocol == payload::Protocol::V1 {
            return Err(LoadgenError::flag("--binary", "needs --protocol v2"));
        }
        let shm = t.shared_memory == SharedMemory::System;
        if shm && t.protocol == payload::Protocol::V1 {
            return Err(LoadgenError::flag(
                "--shared-memory",
                "system needs --protocol v2",
            ));
        }
        let slice = load.slice();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("dlrs-loadgen")
            .on_thread_start(move || driver::ask_for_slice(slice))
            .build()
            .map_err(|source| LoadgenError::Start {
                what: "the tokio runtime",
                source,
            })?;
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

        let header = report::http_header(t, load, bodies.len());
        let title = format!(
            "dlrs loadgen: {} model \"{}\" ({} {}, {} connections), query size {}, ids {} x{}",
            t.url,
            t.model,
            t.protocol.name(),
            t.transport(),
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

    fn measure(&self, m: &Measure) -> Result<Report, LoadgenError> {
        let mut r = http::measure(&self.rt, &self.ep, self.connections, &self.bodies, m)?;
        // the server's scheduler settings (`dlrs serve --target-p99-ms`), when it runs one: a
        // server without /metrics or without the scheduler leaves the report as it is
        if let Ok((200, body)) = self.rt.block_on(self.ep.get("/metrics")) {
            r.scheduler = scheduler_of(&String::from_utf8_lossy(&body));
        }
        Ok(r)
    }
}

/// The scheduler settings a `dlrs serve` `/metrics` page shows (its `dlrs_control_*`
/// gauges), in the words of `dlrs_serve::Settings::describe`; `None` without them.
pub(crate) fn scheduler_of(metrics: &str) -> Option<String> {
    let gauge = |name: &str| {
        metrics.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(' ')?;
            rest.trim().parse::<f64>().ok()
        })
    };
    let threads = gauge("dlrs_control_threads_per_batch")?;
    let wait = gauge("dlrs_control_wait_bound_seconds").unwrap_or(0.0);
    Some(format!(
        "{} instance(s) x {} thread(s), max batch {}, delay {} us, wait bound {}",
        gauge("dlrs_control_instances")?,
        threads,
        gauge("dlrs_control_max_batch")?,
        (gauge("dlrs_control_delay_seconds")? * 1e6).round(),
        if wait > 0.0 {
            format!("{:.1} ms", wait * 1e3)
        } else {
            "off".into()
        }
    ))
}

/// One measurement of a load: `measure(qps, seconds, seed)`.
pub(crate) type MeasureFn<'a> = dyn FnMut(f64, f64, u64) -> Result<Report, LoadgenError> + 'a;

/// The seed of the warmup before the measurement of `seed`'s step (the measured arrivals
/// never repeat the warmup's).
fn warmup_seed(seed: u64) -> u64 {
    seed.wrapping_add(1_000_003)
}

/// Runs the measurement(s) `load` asks for with `measure`: a warmup (not reported) unless
/// `load.warmup` is 0, then one measurement at `load.qps`, or the search for the highest rate
/// that meets `load.target_p99_ms`. Prints the report for people (to the log with `--json`),
/// draws the plot and returns the JSON object: `header`'s fields, then the figures.
pub(crate) fn drive(
    load: &LoadConfig,
    header: Map<String, Value>,
    title: &str,
    plot_title: &str,
    measure: &mut MeasureFn,
) -> Result<Value, LoadgenError> {
    let out = Out { json: load.json };
    out.line(title);
    if load.warmup > 0.0 {
        let r = measure(load.qps, load.warmup, warmup_seed(load.seed))?;
        out.line(&format!(
            "warmup: {} s at {} QPS ({} queries, {} errors), not reported",
            load.warmup, load.qps, r.queries, r.errors.total
        ));
    }
    let Some(target) = load.target_p99_ms else {
        let r = measure(load.qps, load.duration, load.seed)?;
        for l in report::report_lines(&r) {
            out.line(&l);
        }
        return Ok(report::merge(header, report::report_json(&r)));
    };
    out.line(&report::search_line(load, target));
    let s = search::search(
        load.plan(target),
        |step, qps| measure(qps, load.duration, load.seed.wrapping_add(step as u64)),
        |p| out.line(&report::point_line(p)),
    )?;
    out.line(&report::best_line("", &s));
    if let Some(path) = &load.plot {
        plot::plot(path, &s, plot_title)?;
        out.line(&format!("plot: {}", path.display()));
    }
    Ok(report::merge(
        header,
        report::search_json(load, &s, load.plot.as_deref()),
    ))
}

/// The two loads of a paired search, each with its JSON header and plot title.
pub(crate) struct Side<'a> {
    pub name: &'static str,
    pub header: Map<String, Value>,
    pub plot_title: String,
    pub measure: &'a mut MeasureFn<'a>,
}

/// [`drive`] for two loads searched in turn for the highest rate with p99 <= `target` ms
/// ([`search::search_paired`]): each step runs after `--warmup` seconds at its own rate (the
/// other side's load just ended). The JSON object holds both searches, keyed by side name,
/// and the ratio of their latency-bounded throughputs (samples per second), the first
/// side's over the second's (`null` when either found no rate).
pub(crate) fn drive_paired(
    load: &LoadConfig,
    target: f64,
    title: &str,
    mut sides: [Side; 2],
) -> Result<Value, LoadgenError> {
    let out = Out { json: load.json };
    out.line(title);
    out.line(&format!(
        "{}, a step of {} and of {} in turn",
        report::search_line(load, target),
        sides[0].name,
        sides[1].name
    ));
    let names = [sides[0].name, sides[1].name];
    let searches = search::search_paired(
        [load.plan(target), load.plan(target)],
        |side, step, qps| {
            let m = &mut sides[side].measure;
            let seed = load.seed.wrapping_add(step as u64);
            if load.warmup > 0.0 {
                m(qps, load.warmup, warmup_seed(seed))?;
            }
            m(qps, load.duration, seed)
        },
        |side, p| out.line(&format!("{:<5}{}", names[side], report::point_line(p))),
    )?;
    let mut v = Map::new();
    for (side, s) in sides.into_iter().zip(&searches) {
        out.line(&report::best_line(&format!("{}: ", side.name), s));
        let plot = load.plot.as_ref().map(|p| paired_plot_path(p, side.name));
        if let Some(path) = &plot {
            plot::plot(path, s, &side.plot_title)?;
            out.line(&format!("plot: {}", path.display()));
        }
        v.insert(
            side.name.into(),
            report::merge(side.header, report::search_json(load, s, plot.as_deref())),
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
fn paired_plot_path(path: &Path, side: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let ext = path
        .extension()
        .map_or_else(String::new, |e| format!(".{}", e.to_string_lossy()));
    path.with_file_name(format!("{stem}-{side}{ext}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Outcome, Status};

    /// A measurement at `qps` whose one query was answered in `p99_ms`.
    fn answered(qps: f64, p99_ms: f64) -> Report {
        let o = [Outcome {
            status: Status::Ok,
            latency_s: p99_ms / 1e3,
        }];
        Report::new(qps, 1.0, &o, &[10], 1.0)
    }

    fn header() -> Map<String, Value> {
        Map::from_iter([("mode".to_string(), json!("test"))])
    }

    #[test]
    fn the_scheduler_settings_are_read_off_the_metrics_page() {
        let page = "# HELP dlrs_control_threads_per_batch x\n\
                    dlrs_control_threads_per_batch 2\n\
                    dlrs_control_instances 1\n\
                    dlrs_control_max_batch 512\n\
                    dlrs_control_delay_seconds 0.00025\n\
                    dlrs_control_wait_bound_seconds 0.0061\n\
                    dlrs_control_seconds_per_sample{threads=\"1\"} 0.00002\n";
        assert_eq!(
            scheduler_of(page).as_deref(),
            Some("1 instance(s) x 2 thread(s), max batch 512, delay 250 us, wait bound 6.1 ms")
        );
        assert_eq!(scheduler_of("dlrs_queue_depth_samples 0\n"), None);
        let off = page.replace("0.0061", "0");
        assert!(scheduler_of(&off).unwrap().ends_with("wait bound off"));
    }

    #[test]
    fn drive_warms_up_then_measures_once() {
        let load = LoadConfig {
            qps: 30.0,
            duration: 2.0,
            warmup: 0.5,
            seed: 7,
            json: true,
            ..LoadConfig::default()
        };
        let mut calls = Vec::new();
        let mut measure = |qps, duration_s, seed| {
            calls.push((qps, duration_s, seed));
            Ok(answered(qps, 1.0))
        };
        let v = drive(&load, header(), "title", "plot", &mut measure).unwrap();
        assert_eq!(calls, [(30.0, 0.5, 1_000_010), (30.0, 2.0, 7)]);
        assert_eq!(v["mode"], "test", "the header comes first");
        assert_eq!(v["offered_qps"], 30.0);
        assert!(v.get("points").is_none(), "one measurement, no search: {v}");

        let mut calls = 0;
        let mut failing = |_, _, _| {
            calls += 1;
            Err(LoadgenError::NoQueries("send"))
        };
        let no_warmup = LoadConfig {
            warmup: 0.0,
            ..load
        };
        assert!(drive(&no_warmup, header(), "t", "p", &mut failing).is_err());
        assert_eq!(calls, 1, "no warmup, and an error ends the run");
    }

    #[test]
    fn drive_searches_with_a_seed_per_step() {
        // p99 = qps / 10 ms: 50 and 100 QPS meet 10 ms, 200 does not
        let load = LoadConfig {
            qps: 50.0,
            duration: 1.0,
            warmup: 0.0,
            seed: 7,
            target_p99_ms: Some(10.0),
            max_steps: 3,
            json: true,
            ..LoadConfig::default()
        };
        let mut calls = Vec::new();
        let mut measure = |qps: f64, duration_s, seed| {
            calls.push((qps, duration_s, seed));
            Ok(answered(qps, qps / 10.0))
        };
        let v = drive(&load, header(), "title", "plot", &mut measure).unwrap();
        assert_eq!(calls, [(50.0, 1.0, 8), (100.0, 1.0, 9), (200.0, 1.0, 10)]);
        assert_eq!(v["mode"], "test");
        assert_eq!(v["points"].as_array().map(Vec::len), Some(3));
        assert_eq!(v["latency_bounded"]["offered_qps"], 100.0);
        assert!(v["plot"].is_null());
    }

    #[test]
    fn a_paired_drive_alternates_the_sides_and_reports_their_ratio() {
        let load = LoadConfig {
            qps: 10.0,
            warmup: 0.25,
            seed: 1,
            target_p99_ms: Some(5.0),
            max_steps: 2,
            json: true,
            ..LoadConfig::default()
        };
        let calls = std::cell::RefCell::new(Vec::new());
        // side a answers twice the samples per second of side b at every rate
        let mut a = |qps: f64, d: f64, seed| {
            calls.borrow_mut().push(("a", d, seed));
            let mut r = answered(qps, 1.0);
            r.samples_per_s *= 2.0;
            Ok(r)
        };
        let mut b = |qps: f64, d: f64, seed| {
            calls.borrow_mut().push(("b", d, seed));
            Ok(answered(qps, 1.0))
        };
        let side = |name, measure| Side {
            name,
            header: header(),
            plot_title: String::new(),
            measure,
        };
        let v = drive_paired(&load, 5.0, "title", [side("a", &mut a), side("b", &mut b)]).unwrap();
        // round 1: a then b, round 2: b then a; each step after its own warmup
        let warm = |s: u64| warmup_seed(s);
        assert_eq!(
            calls.into_inner(),
            [
                ("a", 0.25, warm(2)),
                ("a", 10.0, 2),
                ("b", 0.25, warm(2)),
                ("b", 10.0, 2),
                ("b", 0.25, warm(3)),
                ("b", 10.0, 3),
                ("a", 0.25, warm(3)),
                ("a", 10.0, 3),
            ]
        );
        assert_eq!(v["a"]["mode"], "test");
        assert_eq!(v["a"]["points"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["b"]["latency_bounded"]["offered_qps"], 20.0);
        assert_eq!(v["a_over_b"], 2.0);
    }

    #[test]
    fn paired_plots_are_named_after_their_side() {
        assert_eq!(
            paired_plot_path(Path::new("/d/pair.svg"), "http"),
            Path::new("/d/pair-http.svg")
        );
        assert_eq!(
            paired_plot_path(Path::new("curve"), "twin"),
            Path::new("curve-twin")
        );
    }
}
