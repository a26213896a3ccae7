//! The page: one self-contained HTML file, its charts inlined as SVG, each under its section
//! with the tables of figures beside it, and a small script that marks the page when every
//! chart has rendered (`data-plots-ok="yes"` on `<body>`; the browser test reads it back).

use std::fmt::Write;

use crate::charts::short;
use crate::figures::dominance;
use crate::schema::*;

/// `s` with `& < > "` escaped.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub(crate) const STYLE: &str = r#"
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em; color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2.2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
figure.plot { margin: 1.2em 0; }
figure.plot svg { width: 100%; height: auto; display: block; border: 1px solid #eee; }
figcaption { font-size: 0.95em; color: #333; margin-top: 0.4em; }
.note { background: #fff6dd; border: 1px solid #e8d48b; padding: 0.5em 0.8em; }
code { background: #f4f4f4; padding: 0 0.2em; }
"#;

pub(crate) const CHECK_SCRIPT: &str = r#"
<script>
window.addEventListener('load', function () {
  var figs = document.querySelectorAll('figure.plot');
  var bad = [];
  figs.forEach(function (f) {
    var g = f.querySelector('svg');
    var r = g ? g.getBoundingClientRect() : null;
    if (!r || r.width < 100 || r.height < 50) { bad.push(f.id); }
  });
  document.body.setAttribute('data-plots', String(figs.length));
  document.body.setAttribute('data-plots-ok', (figs.length > 0 && bad.length === 0) ? 'yes' : 'no ' + bad.join(' '));
  if (bad.length > 0) { console.error('plots not visible: ' + bad.join(' ')); }
});
</script>
"#;

/// A chart as it goes in the page: its SVG, without the XML prologue.
pub struct Inline<'a> {
    pub plot: &'a Plot,
    pub svg: String,
}

fn figure(out: &mut String, f: &Inline) {
    let svg = f.svg.find("<svg").map_or(&f.svg[..], |i| &f.svg[i..]);
    let _ = write!(
        out,
        "<figure class=\"plot\" id=\"{}\">\n{svg}\n<figcaption>{}</figcaption>\n</figure>\n",
        esc(&f.plot.id),
        esc(&f.plot.caption)
    );
}

fn figures_of(out: &mut String, figs: &[Inline], section: &str) {
    for f in figs.iter().filter(|f| f.plot.section == section) {
        figure(out, f);
    }
}

fn table(out: &mut String, head: &[&str], rows: &[Vec<String>]) {
    out.push_str("<table>\n<tr>");
    for h in head {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr>\n");
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            let _ = write!(out, "<td>{}</td>", esc(c));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn opt_pct(x: Option<f64>) -> String {
    x.map_or("-".into(), pct)
}

/// The page's head and opening.
pub(crate) fn head(out: &mut String, title: &str) {
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        esc(title)
    );
}

/// The whole page of `r`, with its charts.
pub fn page(r: &Report, figs: &[Inline]) -> String {
    let mut o = String::new();
    let h = &r.machine.host;
    head(&mut o, &format!("dlrs report: {}", r.machine.cpu_line));
    let _ = write!(
        o,
        "<h1>Recommendation inference on this machine</h1>\n<p>{} &middot; dlrs {} &middot; a {} run of {:.0} s &middot; schema version {}</p>\n",
        esc(&r.machine.cpu_line),
        esc(&r.dlrs_version),
        r.size.name(),
        r.wall_s,
        r.schema_version
    );
    if r.capped {
        let caps: Vec<String> = r
            .models
            .iter()
            .filter_map(|m| {
                m.rows_cap
                    .map(|c| format!("{} at {c} rows a table", m.name))
            })
            .collect();
        let _ = writeln!(
            o,
            "<p class=\"note\"><b>Capped tables.</b> This {} run capped the tables ({}): each is still larger than the caches, but full-size tables spread the same lookups over more rows, so the DRAM-bound figures can differ. Run without <code>--quick</code> for full-size presets.</p>",
            r.size.name(),
            esc(&caps.join(", "))
        );
    }
    let busy = r.machine.load_average.iter().copied().fold(0.0, f64::max);
    if busy > 0.5 * h.cpus.max(1) as f64 {
        let _ = writeln!(
            o,
            "<p class=\"note\"><b>A busy machine.</b> The load average reached {busy:.1} on {} CPUs during the run: other work shared the CPUs, so throughput is lower and latency higher than this machine gives when idle, and the figures are noisier.</p>",
            h.cpus
        );
    }
    o.push_str("<p>The questions of Gupta et al., <i>The Architectural Implications of Facebook's DNN-based Personalized Recommendation</i> (HPCA 2020) and DeepRecSys (ISCA 2020), answered for this machine: where the time goes per model class and batch size, how batching trades latency for throughput, what co-location costs, and how much each model serves within a latency target. Every figure is in <code>report.json</code>.</p>\n");

    // models
    o.push_str("<h2>Models</h2>\n");
    let rows: Vec<Vec<String>> = r
        .models
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.source.clone(),
                format!(
                    "{} x {} rows{}",
                    m.tables,
                    short((m.total_rows / m.tables.max(1)) as f64),
                    m.rows_cap.map_or(String::new(), |_| " (capped)".into())
                ),
                m.dim.to_string(),
                m.ids_per_table.to_string(),
                format!("{:.2} GB", m.embedding_bytes as f64 / 1e9),
                format!("{:?} / {:?}", m.bottom_mlp, m.top_mlp),
                format!("{:.2} M", m.mlp_flops_per_sample / 1e6),
            ]
        })
        .collect();
    table(
        &mut o,
        &[
            "model",
            "source",
            "tables",
            "dim",
            "ids per table",
            "embeddings",
            "bottom / top MLP",
            "MLP FLOP per sample",
        ],
        &rows,
    );

    // 1. machine
    o.push_str("<h2>1. The machine</h2>\n");
    let l = &r.machine.limits;
    let seq: Vec<String> = l
        .seq_read
        .iter()
        .map(|s| format!("{:.1} GB/s on {} thread(s)", s.gb_per_s, s.threads))
        .collect();
    table(
        &mut o,
        &["", "this machine"],
        &[
            vec!["CPU".into(), h.model_name.clone()],
            vec![
                "vendor, family, model".into(),
                format!(
                    "{} family {} model {}{}",
                    h.vendor,
                    h.family,
                    h.model,
                    if h.microarchitecture.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", h.microarchitecture)
                    }
                ),
            ],
            vec!["ISA".into(), h.isa.join(" ")],
            vec!["logical CPUs".into(), h.cpus.to_string()],
            vec!["caches".into(), h.caches_line()],
            vec!["NUMA nodes".into(), h.numa_nodes.to_string()],
            vec!["transparent huge pages".into(), h.thp.clone()],
            vec!["kernel".into(), h.kernel.clone()],
            vec![
                "FMA peak (fp32)".into(),
                format!(
                    "{:.1} GFLOP/s per core, {:.1} on {} threads ({}-bit)",
                    l.fma.per_core_gflops,
                    l.fma.all_threads_gflops,
                    l.fma.threads,
                    l.fma.width_bits
                ),
            ],
            vec![
                "DRAM latency".into(),
                l.dram_latency_ns
                    .map_or("-".into(), |n| format!("{n:.0} ns a dependent load")),
            ],
            vec!["sequential read".into(), seq.join(", ")],
            vec![
                "load average (start, end)".into(),
                format!(
                    "{:.2}, {:.2}",
                    r.machine.load_average[0], r.machine.load_average[1]
                ),
            ],
        ],
    );
    let rows: Vec<Vec<String>> = l
        .gather
        .iter()
        .map(|g| {
            vec![
                format!("{} B", g.row_bytes),
                g.threads.to_string(),
                if g.huge_pages {
                    "huge (2 MiB)".into()
                } else {
                    "4 KiB".into()
                },
                format!("{:.1} M", g.rows_per_s / 1e6),
                format!("{:.2}", g.gb_per_s),
            ]
        })
        .collect();
    table(
        &mut o,
        &["row", "threads", "pages", "rows/s", "GB/s"],
        &rows,
    );
    figures_of(&mut o, figs, "machine");

    // 2. breakdown
    o.push_str("<h2>2. Operator breakdown</h2>\n");
    let _ = writeln!(
        o,
        "<p>Each model's forward pass on {} thread, batch by batch, with each stage timed. The embedding stage is set against the random row-gather rate at the tables' row size (1 thread, huge pages), each MLP against the FMA peak of one core; the interaction has no such limit. A gather fraction above 100% means some rows came from the caches: a large batch reads some rows again, the more so in a small table. Each point is what <code>dlrs bench</code> measures: the exact command is in <code>report.json</code> (<code>bench_command</code>).</p>",
        r.breakdown.threads
    );
    figures_of(&mut o, figs, "breakdown");
    let rows: Vec<Vec<String>> = r
        .breakdown
        .points
        .iter()
        .filter(|p| r.breakdown.batches.contains(&p.batch))
        .map(|p| {
            vec![
                p.model.clone(),
                p.batch.to_string(),
                format!("{:.3}", p.latency_ms.mean),
                format!("{:.3}", p.stages_ms.embedding),
                format!("{:.3}", p.stages_ms.bottom_mlp),
                format!("{:.3}", p.stages_ms.interaction),
                format!("{:.3}", p.stages_ms.top_mlp),
                pct(p.stages_over_batch),
                opt_pct(p.of_limit.embedding),
                opt_pct(p.of_limit.bottom_mlp),
                opt_pct(p.of_limit.top_mlp),
            ]
        })
        .collect();
    table(
        &mut o,
        &[
            "model",
            "batch",
            "batch ms",
            "embedding ms",
            "bottom MLP ms",
            "interaction ms",
            "top MLP ms",
            "stages / batch",
            "gathers of limit",
            "bottom MLP of peak",
            "top MLP of peak",
        ],
        &rows,
    );
    o.push_str("<ul>\n");
    for m in &r.models {
        let pts: Vec<&Point> = r
            .breakdown
            .points
            .iter()
            .filter(|p| p.model == m.name && r.breakdown.batches.contains(&p.batch))
            .collect();
        let _ = writeln!(
            o,
            "<li><b>{}</b>: the largest stage is {}.</li>",
            esc(&m.name),
            esc(&dominance(&pts))
        );
    }
    o.push_str("</ul>\n");

    // 3. batching
    o.push_str("<h2>3. Batching</h2>\n<p>Larger batches amortize the MLPs' weights and the per-batch overhead, so throughput rises, until each batch simply takes longer: latency grows with the batch while throughput flattens.</p>\n");
    figures_of(&mut o, figs, "batching");
    let rows: Vec<Vec<String>> = r
        .batching
        .iter()
        .map(|b| {
            let mut row = vec![
                b.model.clone(),
                b.saturation_batch.to_string(),
                short(b.best_samples_per_s),
            ];
            row.extend(b.crossings.iter().map(|c| match c.batch {
                Some(x) => format!("~{x:.0} ({})", c.note),
                None => c.note.clone(),
            }));
            row
        })
        .collect();
    let mut head_b = vec!["model", "batching stops paying at", "best samples/s"];
    let labels: Vec<String> = crate::plan::CROSSING_TARGETS_MS
        .iter()
        .map(|t| format!("p99 crosses {t} ms at batch"))
        .collect();
    head_b.extend(labels.iter().map(String::as_str));
    table(&mut o, &head_b, &rows);

    // 4. co-location
    let c = &r.colocation;
    o.push_str("<h2>4. Co-location</h2>\n");
    let _ = writeln!(
        o,
        "<p>N instances side by side, each on its own thread with its own stream of batches of {} samples, for {} s; instances of one model share its weights, as <code>dlrs serve --instances</code> does. With more instances than the machine's {} CPUs they also share cores: that cost is in the figures too.</p>",
        c.batch, c.seconds, c.cpus
    );
    figures_of(&mut o, figs, "colocation");
    let mut rows = Vec::new();
    for s in &c.scenarios {
        for (k, i) in s.instances.iter().enumerate() {
            rows.push(vec![
                if k == 0 {
                    s.name.clone()
                } else {
                    String::new()
                },
                i.model.clone(),
                short(i.samples_per_s),
                format!("{:.2}x", i.throughput_vs_alone),
                format!("{:.2}", i.p99_ms),
                format!("{:.2}x", i.p99_vs_alone),
                if k == 0 {
                    short(s.total_samples_per_s)
                } else {
                    String::new()
                },
            ]);
        }
    }
    table(
        &mut o,
        &[
            "scenario",
            "instance",
            "samples/s",
            "vs alone",
            "p99 ms",
            "p99 vs alone",
            "total samples/s",
        ],
        &rows,
    );

    // 5. latency-bounded
    let lb = &r.latency_bounded;
    o.push_str("<h2>5. Latency-bounded throughput</h2>\n");
    let _ = writeln!(
        o,
        "<p>The twin's search, in process: Poisson arrivals of queries of <code>{}</code> samples go into <code>dlrs serve</code>'s own batching queue and {} compute instance(s) on {} threads; the rate doubles while the p99 (from each query's scheduled arrival) stays within the target, then bisects, {} s a step and at most {} steps. A step with any refused or late query misses.</p>",
        esc(&lb.query_size),
        lb.instances,
        lb.threads,
        lb.step_s,
        lb.max_steps
    );
    figures_of(&mut o, figs, "bounded");
    let rows: Vec<Vec<String>> = lb
        .results
        .iter()
        .map(|b| {
            vec![
                b.model.clone(),
                format!("{}", b.target_p99_ms),
                b.max_batch.to_string(),
                b.max_queue_delay_us.to_string(),
                b.samples_per_s.map_or("none met it".into(), short),
                b.achieved_qps.map_or("-".into(), |q| format!("{q:.1}")),
                b.p99_ms.map_or("-".into(), |p| format!("{p:.2}")),
                b.steps.to_string(),
            ]
        })
        .collect();
    table(
        &mut o,
        &[
            "model",
            "p99 target ms",
            "max batch",
            "queue delay us",
            "samples/s",
            "queries/s",
            "p99 ms",
            "steps",
        ],
        &rows,
    );

    // 6. formats
    let rf = &r.row_formats;
    o.push_str("<h2>6. Row formats</h2>\n");
    let _ = writeln!(
        o,
        "<p>The tables in fp32, fp16, int8 and int4 (the quantized rows carry their scale and bias), one thread, batch {}.</p>",
        rf.batch
    );
    figures_of(&mut o, figs, "formats");
    let rows: Vec<Vec<String>> = rf
        .points
        .iter()
        .map(|p| {
            vec![
                p.model.clone(),
                p.format.clone(),
                short(p.samples_per_s),
                format!("{:.2}x", p.vs_fp32),
                format!("{:.0}", p.row_bytes),
                p.row_stride.to_string(),
                format!("{:.2}", p.cache_lines_per_row),
                pct(p.embedding_share),
                format!("{:.2} GB", p.embedding_bytes as f64 / 1e9),
            ]
        })
        .collect();
    table(
        &mut o,
        &[
            "model",
            "format",
            "samples/s",
            "vs fp32",
            "bytes per row",
            "row stride",
            "cache lines per row",
            "embedding share",
            "table bytes",
        ],
        &rows,
    );

    o.push_str("<h2>7. Against other machines</h2>\n<p>Put two machines' reports side by side with <code>dlrs report --compare A/report.json B/report.json --out DIR</code>.</p>\n");
    o.push_str(CHECK_SCRIPT);
    o.push_str("</body>\n</html>\n");
    o
}
