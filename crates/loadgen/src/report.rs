//! The reports: the lines for people (progress, each measurement, each search step, the
//! best rate) and the JSON object (`--json`) whose fields the crate docs list and scripts
//! read (`scripts/serve-checks.py`, `scripts/cpu-per-query.sh`).

use std::io::Write;
use std::path::Path;

use serde_json::{Map, Value, json};

use crate::config::{HttpTarget, LoadConfig, TwinConfig};
use crate::error::LoadgenError;
use crate::search::{Point, Search};
use crate::stats::{Report, ms};

/// Where the lines for people go: stdout, or, when stdout carries the JSON object, the log
/// (stderr in the `dlrs` binary, at level info).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Out {
    pub json: bool,
}

impl Out {
    pub fn line(&self, s: &str) {
        if self.json {
            for l in s.lines() {
                tracing::info!("{l}");
            }
        } else {
            println!("{s}");
        }
    }
}

/// Prints `v` as the one JSON object on stdout when `json`.
pub(crate) fn emit(json: bool, v: Result<Value, LoadgenError>) -> Result<(), LoadgenError> {
    let v = v?;
    if json {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{v}").map_err(LoadgenError::Stdout)?;
        stdout.flush().map_err(LoadgenError::Stdout)?;
    }
    Ok(())
}

/// One measurement's report for people.
pub(crate) fn report_lines(r: &Report) -> Vec<String> {
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
    for s in &r.timeline {
        lines.push(format!(
            "  t {:>3} s: {:>5} due, {:>5} ok, p99 {:>8} ms{}",
            s.t,
            s.queries,
            s.ok,
            ms(s.p99_ms),
            s.scheduler
                .as_ref()
                .map_or(String::new(), |d| format!("; scheduler: {d}"))
        ));
    }
    lines
}

/// One search step's line.
pub(crate) fn point_line(p: &Point) -> String {
    let r = &p.report;
    let line = format!(
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
    );
    match &r.scheduler {
        Some(s) => format!("{line}; scheduler: {s}"),
        None => line,
    }
}

/// What a search looks for, as its first line says.
pub(crate) fn search_line(load: &LoadConfig, target: f64) -> String {
    format!(
        "search: highest QPS with p99 <= {target} ms and at most {}% failed, from {} QPS, {} s per step, at most {} steps",
        load.max_error_rate * 100.0,
        load.qps,
        load.duration,
        load.max_steps
    )
}

/// What a search found, after `prefix`.
pub(crate) fn best_line(prefix: &str, s: &Search) -> String {
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
pub(crate) fn search_json(load: &LoadConfig, s: &Search, plot: Option<&Path>) -> Value {
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

/// One measurement's figures as JSON.
pub(crate) fn report_json(r: &Report) -> Value {
    serde_json::to_value(r).expect("a report serializes")
}

/// `header`'s fields, then the object `v`'s.
pub(crate) fn merge(mut header: Map<String, Value>, v: Value) -> Value {
    if let Value::Object(m) = v {
        header.extend(m);
    }
    Value::Object(header)
}

/// The load's settings, in every JSON object. `pool` is the pool's actual size (smaller
/// than `--pool` when its batches would take too much memory).
fn load_header(load: &LoadConfig, pool: usize) -> Map<String, Value> {
    let mut h = Map::new();
    h.insert("query_size".into(), json!(load.query_size.name()));
    h.insert("dist".into(), json!(load.dist.name()));
    h.insert("ids_per_table".into(), json!(load.ids_per_table));
    h.insert("seed".into(), json!(load.seed));
    h.insert("pool".into(), json!(pool));
    h.insert("warmup_s".into(), json!(load.warmup));
    h.insert("drain_s".into(), json!(load.drain));
    h.insert("slice_us".into(), json!(load.slice_us));
    h
}

/// The JSON object's fields saying what the HTTP load was (`"mode": "http"`).
pub(crate) fn http_header(t: &HttpTarget, load: &LoadConfig, pool: usize) -> Map<String, Value> {
    let mut h = Map::new();
    h.insert("mode".into(), json!("http"));
    h.insert("url".into(), json!(t.url));
    h.insert("model".into(), json!(t.model));
    h.insert(
        "model_dir".into(),
        json!(t.model_dir.map(|p| p.display().to_string())),
    );
    h.insert("protocol".into(), json!(t.protocol.name()));
    h.insert("binary".into(), json!(t.binary));
    h.insert("shared_memory".into(), json!(t.shared_memory.name()));
    h.insert("transport".into(), json!(t.transport()));
    h.insert("connections".into(), json!(t.connections));
    h.extend(load_header(load, pool));
    h
}

/// The JSON object's fields saying what the twin was (`"mode": "twin"`).
pub(crate) fn twin_header(c: &TwinConfig, instances: usize, pool: usize) -> Map<String, Value> {
    let mut h = Map::new();
    h.insert("mode".into(), json!("twin"));
    h.insert("model_dir".into(), json!(c.model.display().to_string()));
    h.insert("threads".into(), json!(c.threads));
    h.insert("instances".into(), json!(instances));
    let q = &c.queue;
    h.insert("max_batch".into(), json!(q.max_batch));
    h.insert("max_queue_delay_us".into(), json!(q.max_queue_delay_us));
    h.insert("max_queue".into(), json!(q.max_queue));
    h.insert("max_queue_burst".into(), json!(q.max_queue_burst));
    h.insert("burst_cooldown_ms".into(), json!(q.burst_cooldown_ms));
    h.insert("max_queue_wait_ms".into(), json!(q.max_queue_wait_ms));
    h.insert("deadline_ms".into(), json!(c.deadline_ms));
    h.extend(load_header(&c.load, pool));
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::Protocol;
    use crate::shm::SharedMemory;
    use crate::stats::{Outcome, Status};

    /// 4 queries over 2 s: two ok (2 and 4 ms), a 503 and a timeout, due in seconds 1.
    fn measurement() -> Report {
        let ok = |ms: f64| Outcome {
            status: Status::Ok,
            latency_s: ms / 1e3,
        };
        let outcomes = [
            ok(2.0),
            ok(4.0),
            Outcome {
                status: Status::Http(503),
                latency_s: 0.0005,
            },
            Outcome {
                status: Status::Timeout,
                latency_s: 5.0,
            },
        ];
        let mut r = Report::new(100.0, 2.0, &outcomes, &[10, 20, 30, 40], 1.9);
        r.locate(&outcomes, &[0.1, 0.6, 1.2, 1.7]);
        r
    }

    fn target() -> HttpTarget<'static> {
        HttpTarget {
            url: "http://127.0.0.1:8000",
            model: "rmc1",
            model_dir: None,
            protocol: Protocol::V2,
            binary: true,
            shared_memory: SharedMemory::None,
            connections: 8,
        }
    }

    /// The fields of one measurement that README.md documents and scripts/serve-checks.py
    /// and scripts/cpu-per-query.sh read.
    #[test]
    fn a_measurement_json_has_the_fields_the_scripts_read() {
        let load = LoadConfig::default();
        let v = merge(
            http_header(&target(), &load, 7),
            report_json(&measurement()),
        );
        for k in [
            "mode",
            "url",
            "model",
            "model_dir",
            "protocol",
            "binary",
            "shared_memory",
            "transport",
            "connections",
            "query_size",
            "dist",
            "ids_per_table",
            "seed",
            "pool",
            "warmup_s",
            "drain_s",
            "offered_qps",
            "duration_s",
            "queries",
            "ok",
            "ok_samples",
            "achieved_qps",
            "samples_per_s",
            "mean_query_size",
            "latency_ms",
            "errors",
            "error_latency_ms",
            "slowest_at_s",
            "failures_by_second",
        ] {
            assert!(v.get(k).is_some(), "no {k} in {v}");
        }
        assert_eq!(v["mode"], "http");
        assert_eq!(v["transport"], "binary");
        assert_eq!(v["pool"], 7, "the pool's actual size, not --pool");
        assert_eq!(v["query_size"], "normal:165,16");
        assert_eq!(
            (v["queries"].as_u64(), v["ok"].as_u64()),
            (Some(4), Some(2))
        );
        assert_eq!(v["ok_samples"], 30);
        assert_eq!(v["achieved_qps"], 1.0);
        assert_eq!(v["samples_per_s"], 15.0);
        for k in ["p50", "p95", "p99", "p999", "max", "mean"] {
            assert!(v["latency_ms"][k].is_number(), "latency_ms.{k} in {v}");
        }
        assert_eq!(v["latency_ms"]["p99"], 4.0);
        assert_eq!(v["latency_ms"]["max"], 4.0);
        let e = &v["errors"];
        assert_eq!(e["by_status"]["503"], 1);
        assert_eq!(
            (e["timeout"].as_u64(), e["total"].as_u64()),
            (Some(1), Some(2))
        );
        for k in ["bad_response", "transport", "failed"] {
            assert_eq!(e[k], 0, "errors.{k}");
        }
        for k in ["p50", "p99", "max"] {
            assert_eq!(v["error_latency_ms"]["503"][k], 0.5, "{k}");
        }
        assert_eq!(v["failures_by_second"], json!({"1": 2}));
        assert_eq!(v["slowest_at_s"], 0.6);
    }

    #[test]
    fn a_search_json_has_its_points_and_the_best_rate() {
        let load = LoadConfig {
            duration: 3.0,
            max_error_rate: 0.01,
            ..LoadConfig::default()
        };
        let point = |step, meets_target, qps| {
            let mut report = measurement();
            report.offered_qps = qps;
            Point {
                step,
                meets_target,
                report,
            }
        };
        let s = Search {
            target_p99_ms: 5.0,
            points: vec![
                point(1, true, 100.0),
                point(2, false, 200.0),
                point(3, true, 150.0),
            ],
        };
        let v = search_json(&load, &s, Some(Path::new("c.svg")));
        assert_eq!(v["target_p99_ms"], 5.0);
        assert_eq!(v["max_error_rate"], 0.01);
        assert_eq!(v["step_duration_s"], 3.0);
        assert_eq!(v["plot"], "c.svg");
        let points = v["points"].as_array().unwrap();
        assert_eq!(points.len(), 3);
        assert_eq!(
            (&points[1]["step"], &points[1]["meets_target"]),
            (&json!(2), &json!(false))
        );
        assert_eq!(
            points[2]["offered_qps"], 150.0,
            "a point carries its measurement"
        );
        let best = &v["latency_bounded"];
        assert_eq!(
            best["offered_qps"], 150.0,
            "the highest rate that met the target"
        );
        for k in ["achieved_qps", "samples_per_s", "p50_ms", "p99_ms"] {
            assert!(best[k].is_number(), "latency_bounded.{k} in {v}");
        }
        let none = Search {
            target_p99_ms: 5.0,
            points: vec![point(1, false, 100.0)],
        };
        let v = search_json(&load, &none, None);
        assert!(v["latency_bounded"].is_null() && v["plot"].is_null(), "{v}");
        assert_eq!(
            best_line("", &none),
            "latency-bounded throughput (p99 <= 5 ms): none; no rate tried met the target"
        );
    }

    #[test]
    fn a_twin_json_says_how_it_batched() {
        let mut c = TwinConfig::new("/models/rmc1");
        c.queue.max_queue_wait_ms = 7;
        c.deadline_ms = 250;
        let v = Value::Object(twin_header(&c, 2, 9));
        assert_eq!(v["mode"], "twin");
        assert_eq!(v["model_dir"], "/models/rmc1");
        assert_eq!(
            (v["threads"].as_u64(), v["instances"].as_u64()),
            (Some(2), Some(2))
        );
        assert_eq!(v["max_batch"], 256);
        assert_eq!(v["max_queue_delay_us"], 500);
        assert_eq!(v["max_queue"], 4096);
        assert_eq!(v["max_queue_burst"], 0);
        assert_eq!(v["burst_cooldown_ms"], 100);
        assert_eq!(v["max_queue_wait_ms"], 7);
        assert_eq!(v["deadline_ms"], 250);
        assert_eq!(v["pool"], 9);
        assert_eq!(v["slice_us"], 0);
    }

    #[test]
    fn the_lines_for_people_say_what_failed_and_when() {
        let lines = report_lines(&measurement()).join("\n");
        assert!(
            lines.contains("100.0 QPS for 2 s: 4 queries, 2 ok; errors: HTTP 503: 1, timeout: 1"),
            "{lines}"
        );
        assert!(lines.contains("p99 4.000 ms"), "{lines}");
        assert!(lines.contains("(due at 0.6 s)"), "{lines}");
        assert!(lines.contains("failed    2 at 1 s"), "{lines}");
        assert!(
            lines.contains("HTTP 503 answered in p50 0.500 ms, p99 0.500 ms, max 0.500 ms"),
            "{lines}"
        );
        let p = Point {
            step: 3,
            meets_target: false,
            report: measurement(),
        };
        let line = point_line(&p);
        assert!(
            line.starts_with("step  3:") && line.ends_with("-> misses the target"),
            "{line}"
        );
    }
}
