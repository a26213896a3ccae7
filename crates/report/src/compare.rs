//! `dlrs report --compare A/report.json B/report.json`: two machines side by side, as the
//! paper set three server generations side by side. Every figure both reports hold is
//! shown with the ratio B / A.

use std::fmt::Write;
use std::path::Path;

use serde::Serialize;

use crate::charts::{Bars, PALETTE, Series, short};
use crate::error::ReportError;
use crate::html::{CHECK_SCRIPT, Inline, esc, head};
use crate::schema::*;

/// Reads a report.json, refusing anything that is not a report of this schema version.
pub fn load(path: &Path) -> Result<Report, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReportError::File {
        what: "reading",
        path: path.to_path_buf(),
        source,
    })?;
    let not = |msg: String| ReportError::NotAReport {
        path: path.to_path_buf(),
        msg,
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| not(format!("not JSON ({e})")))?;
    let found = v
        .get("schema_version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| not("no schema_version".into()))?;
    if found != SCHEMA_VERSION as u64 {
        return Err(ReportError::Schema {
            path: path.to_path_buf(),
            found,
            expected: SCHEMA_VERSION,
        });
    }
    serde_json::from_value(v).map_err(|e| not(e.to_string()))
}

/// One figure of both machines.
#[derive(Clone, Debug, Serialize)]
pub struct Pair {
    pub what: String,
    pub unit: String,
    pub a: Option<f64>,
    pub b: Option<f64>,
    /// `b / a`
    pub b_over_a: Option<f64>,
}

/// `compare.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub schema_version: u32,
    pub a: String,
    pub b: String,
    pub a_cpu: String,
    pub b_cpu: String,
    pub figures: Vec<Pair>,
}

fn pair(what: String, unit: &str, a: Option<f64>, b: Option<f64>) -> Pair {
    Pair {
        what,
        unit: unit.into(),
        a,
        b,
        b_over_a: match (a, b) {
            (Some(a), Some(b)) if a != 0.0 => Some(b / a),
            _ => None,
        },
    }
}

/// Every figure both reports hold.
pub fn compare(a: &Report, b: &Report, a_name: &str, b_name: &str) -> Comparison {
    let mut f = Vec::new();
    let (la, lb) = (&a.machine.limits, &b.machine.limits);
    f.push(pair(
        "FMA peak per core".into(),
        "GFLOP/s",
        Some(la.fma.per_core_gflops),
        Some(lb.fma.per_core_gflops),
    ));
    f.push(pair(
        "DRAM latency".into(),
        "ns",
        la.dram_latency_ns,
        lb.dram_latency_ns,
    ));
    for s in &la.seq_read {
        let other = lb.seq_read.iter().find(|x| x.threads == s.threads);
        f.push(pair(
            format!("sequential read, {} thread(s)", s.threads),
            "GB/s",
            Some(s.gb_per_s),
            other.map(|x| x.gb_per_s),
        ));
    }
    for g in &la.gather {
        let other = lb.gather.iter().find(|x| {
            x.row_bytes == g.row_bytes && x.threads == g.threads && x.huge_pages == g.huge_pages
        });
        f.push(pair(
            format!("gather {}", g.describe()),
            "rows/s",
            Some(g.rows_per_s),
            other.map(|x| x.rows_per_s),
        ));
    }
    for p in &a.breakdown.points {
        let Some(q) = b
            .breakdown
            .points
            .iter()
            .find(|q| q.model == p.model && q.batch == p.batch && q.threads == p.threads)
        else {
            continue;
        };
        f.push(pair(
            format!("{} batch {}: throughput", p.model, p.batch),
            "samples/s",
            Some(p.samples_per_s),
            Some(q.samples_per_s),
        ));
        f.push(pair(
            format!("{} batch {}: p99 latency", p.model, p.batch),
            "ms",
            Some(p.latency_ms.p99),
            Some(q.latency_ms.p99),
        ));
        f.push(pair(
            format!("{} batch {}: embedding share", p.model, p.batch),
            "%",
            Some(100.0 * p.share.embedding),
            Some(100.0 * q.share.embedding),
        ));
    }
    for s in &a.colocation.scenarios {
        if let Some(t) = b.colocation.scenarios.iter().find(|t| t.name == s.name) {
            f.push(pair(
                format!("co-location {}: total throughput", s.name),
                "samples/s",
                Some(s.total_samples_per_s),
                Some(t.total_samples_per_s),
            ));
        }
    }
    for x in &a.latency_bounded.results {
        if let Some(y) = b.latency_bounded.results.iter().find(|y| {
            y.model == x.model
                && y.target_p99_ms == x.target_p99_ms
                && y.max_batch == x.max_batch
                && y.max_queue_delay_us == x.max_queue_delay_us
        }) {
            f.push(pair(
                format!(
                    "{} latency-bounded, p99 <= {} ms, max batch {}, delay {} us",
                    x.model, x.target_p99_ms, x.max_batch, x.max_queue_delay_us
                ),
                "samples/s",
                x.samples_per_s,
                y.samples_per_s,
            ));
        }
    }
    for x in &a.row_formats.points {
        if let Some(y) = b
            .row_formats
            .points
            .iter()
            .find(|y| y.model == x.model && y.format == x.format)
        {
            f.push(pair(
                format!("{} {} rows: throughput", x.model, x.format),
                "samples/s",
                Some(x.samples_per_s),
                Some(y.samples_per_s),
            ));
        }
    }
    Comparison {
        schema_version: SCHEMA_VERSION,
        a: a_name.into(),
        b: b_name.into(),
        a_cpu: a.machine.cpu_line.clone(),
        b_cpu: b.machine.cpu_line.clone(),
        figures: f,
    }
}

/// The charts of a comparison: throughput per model and batch size, A against B.
pub fn chart(a: &Report, b: &Report) -> Bars {
    let cats: Vec<(String, usize)> = a
        .breakdown
        .points
        .iter()
        .filter(|p| a.breakdown.batches.contains(&p.batch) && p.batch >= 64)
        .filter(|p| {
            b.breakdown
                .points
                .iter()
                .any(|q| q.model == p.model && q.batch == p.batch)
        })
        .map(|p| (p.model.clone(), p.batch))
        .collect();
    let of = |r: &Report| -> Vec<Option<f64>> {
        cats.iter()
            .map(|(m, bt)| {
                r.breakdown
                    .points
                    .iter()
                    .find(|p| p.model == *m && p.batch == *bt)
                    .map(|p| p.samples_per_s)
            })
            .collect()
    };
    Bars {
        title: "Throughput on one thread, machine A against B".into(),
        categories: cats.iter().map(|(m, b)| format!("{m} @ {b}")).collect(),
        category_label: "model @ batch size".into(),
        value_label: "samples per second".into(),
        series: vec![
            Series {
                name: "A".into(),
                color: PALETTE[0],
                values: of(a),
            },
            Series {
                name: "B".into(),
                color: PALETTE[1],
                values: of(b),
            },
        ],
        stacked: false,
        lying: true,
        reference: None,
        value_max: None,
    }
}

/// The comparison page.
pub fn page(c: &Comparison, a: &Report, b: &Report, fig: &Inline) -> String {
    let mut o = String::new();
    head(&mut o, "dlrs report: two machines");
    o.push_str("<h1>Two machines side by side</h1>\n");
    let cap = |r: &Report| {
        if r.capped {
            format!(" ({} run, capped tables)", r.size.name())
        } else {
            format!(" ({} run)", r.size.name())
        }
    };
    let _ = writeln!(
        o,
        "<p><b>A</b>: {} &mdash; {}{}<br><b>B</b>: {} &mdash; {}{}</p>",
        esc(&c.a),
        esc(&c.a_cpu),
        esc(&cap(a)),
        esc(&c.b),
        esc(&c.b_cpu),
        esc(&cap(b))
    );
    if a.size != b.size || a.capped != b.capped {
        o.push_str("<p class=\"note\">The two runs differ in size or table caps: their DRAM-bound figures are not like for like.</p>\n");
    }
    let svg = fig.svg.find("<svg").map_or(&fig.svg[..], |i| &fig.svg[i..]);
    let _ = write!(
        o,
        "<figure class=\"plot\" id=\"{}\">\n{svg}\n<figcaption>{}</figcaption>\n</figure>\n",
        esc(&fig.plot.id),
        esc(&fig.plot.caption)
    );
    o.push_str(
        "<table>\n<tr><th>figure</th><th>unit</th><th>A</th><th>B</th><th>B / A</th></tr>\n",
    );
    for p in &c.figures {
        let v = |x: Option<f64>| x.map_or("-".into(), short);
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.what),
            esc(&p.unit),
            v(p.a),
            v(p.b),
            p.b_over_a.map_or("-".into(), |r| format!("{r:.2}x"))
        );
    }
    o.push_str("</table>\n");
    o.push_str(CHECK_SCRIPT);
    o.push_str("</body>\n</html>\n");
    o
}
