//! The report's charts, built from its figures: which chart shows what, its title, axis
//! labels with units, and the sentence under it.

use crate::charts::{Bars, Lines, PALETTE, Series, short};
use crate::schema::*;

/// A chart of either kind.
pub enum Chart {
    Bars(Bars),
    Lines(Lines),
}

/// A chart and where it goes.
pub struct Figure {
    pub id: String,
    pub section: &'static str,
    pub caption: String,
    pub chart: Chart,
}

impl Figure {
    pub fn title(&self) -> &str {
        match &self.chart {
            Chart::Bars(b) => &b.title,
            Chart::Lines(l) => &l.title,
        }
    }
}

/// The colours of the four stages and of the time no stage accounts for.
const STAGE_COLORS: [plotters::style::RGBColor; 5] =
    [PALETTE[0], PALETTE[1], PALETTE[2], PALETTE[3], PALETTE[7]];

/// The models in report order.
pub fn model_names(r: &Report) -> Vec<String> {
    r.models.iter().map(|m| m.name.clone()).collect()
}

fn color(i: usize) -> plotters::style::RGBColor {
    PALETTE[i % (PALETTE.len() - 1)]
}

/// Ranges of batch sizes where each stage dominates, in words: `embedding at batch 1-256,
/// top MLP at 1024`.
pub fn dominance(points: &[&Point]) -> String {
    let mut parts: Vec<(String, usize, usize)> = Vec::new();
    for p in points {
        match parts.last_mut() {
            Some((d, _, last)) if *d == p.dominant => *last = p.batch,
            _ => parts.push((p.dominant.clone(), p.batch, p.batch)),
        }
    }
    parts
        .iter()
        .map(|(d, a, b)| {
            if a == b {
                format!("{d} at batch {a}")
            } else {
                format!("{d} at batch {a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn figures(r: &Report) -> Vec<Figure> {
    let mut out = Vec::new();
    let models = model_names(r);

    // 1. gather rates
    let l = &r.machine.limits;
    let mut sizes: Vec<usize> = l.gather.iter().map(|g| g.row_bytes).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut combos: Vec<(usize, bool)> =
        l.gather.iter().map(|g| (g.threads, g.huge_pages)).collect();
    combos.sort_by_key(|&(t, h)| (!h, t));
    combos.dedup();
    let series = combos
        .iter()
        .enumerate()
        .map(|(i, &(t, h))| Series {
            name: format!(
                "{t} thread{}, {}",
                if t == 1 { "" } else { "s" },
                if h { "huge pages" } else { "4 KiB pages" }
            ),
            color: color(i),
            values: sizes
                .iter()
                .map(|&s| {
                    l.gather
                        .iter()
                        .find(|g| g.row_bytes == s && g.threads == t && g.huge_pages == h)
                        .map(|g| g.rows_per_s)
                })
                .collect(),
        })
        .collect();
    let best = l.gather.iter().map(|g| g.rows_per_s).fold(0.0, f64::max);
    out.push(Figure {
        id: "machine-gather".into(),
        section: "machine",
        caption: format!(
            "Random rows gathered per second from a {} MiB table with dlrs's own gather kernel, by row size, thread count and page size; the best is {} rows/s. This is the ceiling of the embedding stage.",
            l.options.table_bytes >> 20,
            short(best)
        ),
        chart: Chart::Bars(Bars {
            title: "Random row-gather rate".into(),
            categories: sizes.iter().map(|s| format!("{s} B")).collect(),
            category_label: "row size, bytes".into(),
            value_label: "rows gathered per second".into(),
            series,
            stacked: false,
            lying: false,
            reference: None,
            value_max: None,
        }),
    });

    // 2. breakdown, one stacked chart per model
    for m in &models {
        let pts: Vec<&Point> = r
            .breakdown
            .points
            .iter()
            .filter(|p| p.model == *m && r.breakdown.batches.contains(&p.batch))
            .collect();
        if pts.is_empty() {
            continue;
        }
        let stage = |f: fn(&Stages) -> f64| -> Vec<Option<f64>> {
            pts.iter().map(|p| Some(100.0 * f(&p.share))).collect()
        };
        let other: Vec<Option<f64>> = pts
            .iter()
            .map(|p| Some((100.0 * (1.0 - p.stages_over_batch)).max(0.0)))
            .collect();
        let names = ["embedding", "bottom MLP", "interaction", "top MLP"];
        let getters: [fn(&Stages) -> f64; 4] = [
            |s| s.embedding,
            |s| s.bottom_mlp,
            |s| s.interaction,
            |s| s.top_mlp,
        ];
        let mut series: Vec<Series> = names
            .iter()
            .zip(getters)
            .enumerate()
            .map(|(i, (n, g))| Series {
                name: n.to_string(),
                color: STAGE_COLORS[i],
                values: stage(g),
            })
            .collect();
        series.push(Series {
            name: "other (outside the stages)".into(),
            color: STAGE_COLORS[4],
            values: other,
        });
        out.push(Figure {
            id: format!("breakdown-{}", slug(m)),
            section: "breakdown",
            caption: format!(
                "Where a batch's time goes in {m} on one thread, by batch size. The largest stage: {}.",
                dominance(&pts)
            ),
            chart: Chart::Bars(Bars {
                title: format!("{m}: time per stage"),
                categories: pts.iter().map(|p| p.batch.to_string()).collect(),
                category_label: "batch size, samples".into(),
                value_label: "share of batch time, %".into(),
                series,
                stacked: true,
                lying: false,
                reference: None,
                value_max: Some(100.0),
            }),
        });
    }

    // 3. batching
    let mut xs: Vec<usize> = r
        .batching
        .iter()
        .flat_map(|b| b.points.iter().map(|p| p.batch))
        .collect();
    xs.sort_unstable();
    xs.dedup();
    let per_model = |f: fn(&BatchPoint) -> f64| -> Vec<Series> {
        r.batching
            .iter()
            .enumerate()
            .map(|(i, b)| Series {
                name: b.model.clone(),
                color: color(i),
                values: xs
                    .iter()
                    .map(|x| b.points.iter().find(|p| p.batch == *x).map(f))
                    .collect(),
            })
            .collect()
    };
    let sat: Vec<String> = r
        .batching
        .iter()
        .map(|b| format!("{} at batch {}", b.model, b.saturation_batch))
        .collect();
    out.push(Figure {
        id: "batching-throughput".into(),
        section: "batching",
        caption: format!(
            "Samples per second of one thread against batch size. Batching stops paying (90% of the best throughput reached) for {}.",
            sat.join(", ")
        ),
        chart: Chart::Lines(Lines {
            title: "Throughput against batch size".into(),
            xs: xs.iter().map(|&x| x as f64).collect(),
            x_label: "batch size, samples (log scale)".into(),
            y_label: "samples per second (log scale)".into(),
            y_log: true,
            series: per_model(|p| p.samples_per_s),
            references: Vec::new(),
        }),
    });
    out.push(Figure {
        id: "batching-latency".into(),
        section: "batching",
        caption: "The p99 latency of one batch's forward pass against batch size, with the 10, 25 and 60 ms targets as grey lines: where a line crosses one is the largest batch that target allows.".into(),
        chart: Chart::Lines(Lines {
            title: "p99 latency of a batch against batch size".into(),
            xs: xs.iter().map(|&x| x as f64).collect(),
            x_label: "batch size, samples (log scale)".into(),
            y_label: "p99 latency, ms (log scale)".into(),
            y_log: true,
            series: per_model(|p| p.p99_ms),
            references: crate::plan::CROSSING_TARGETS_MS
                .iter()
                .map(|&t| (t, format!("{t} ms target")))
                .collect(),
        }),
    });

    // 4. co-location
    let c = &r.colocation;
    if !c.scenarios.is_empty() {
        let most = c
            .scenarios
            .iter()
            .map(|s| s.instances.len())
            .max()
            .unwrap_or(1);
        let inst_series = |f: fn(&Instance) -> f64| -> Vec<Series> {
            (0..most)
                .map(|k| Series {
                    name: format!("instance {}", k + 1),
                    color: color(k),
                    values: c
                        .scenarios
                        .iter()
                        .map(|s| s.instances.get(k).map(f))
                        .collect(),
                })
                .collect()
        };
        let worst = c
            .scenarios
            .iter()
            .flat_map(|s| s.instances.iter().map(move |i| (s, i)))
            .max_by(|a, b| a.1.p99_vs_alone.total_cmp(&b.1.p99_vs_alone));
        out.push(Figure {
            id: "colocation-latency".into(),
            section: "colocation",
            caption: format!(
                "Each instance's p99 batch latency over its model's p99 running alone (1.0 = no slowdown), batch {}, one thread per instance on {} CPUs.{}",
                c.batch,
                c.cpus,
                worst.map_or(String::new(), |(s, i)| format!(
                    " The worst: {} in \"{}\", {:.2}x.",
                    i.model, s.name, i.p99_vs_alone
                ))
            ),
            chart: Chart::Bars(Bars {
                title: "Co-location: p99 latency against running alone".into(),
                categories: c.scenarios.iter().map(|s| s.name.clone()).collect(),
                category_label: "instances side by side".into(),
                value_label: "p99 latency / alone".into(),
                series: inst_series(|i| i.p99_vs_alone),
                stacked: false,
                lying: true,
                reference: Some((1.0, "alone".into())),
                value_max: None,
            }),
        });
        out.push(Figure {
            id: "colocation-throughput".into(),
            section: "colocation",
            caption: "Samples per second of each instance, stacked: the bar's length is the machine's total throughput with that many instances side by side.".into(),
            chart: Chart::Bars(Bars {
                title: "Co-location: throughput of the instances".into(),
                categories: c.scenarios.iter().map(|s| s.name.clone()).collect(),
                category_label: "instances side by side".into(),
                value_label: "samples per second".into(),
                series: inst_series(|i| i.samples_per_s),
                stacked: true,
                lying: true,
                reference: None,
                value_max: None,
            }),
        });
    }

    // 5. latency-bounded throughput
    let lb = &r.latency_bounded;
    let target_series: Vec<Series> = lb
        .targets_ms
        .iter()
        .enumerate()
        .map(|(i, &t)| Series {
            name: format!("p99 <= {t} ms"),
            color: color(i),
            values: models
                .iter()
                .map(|m| {
                    lb.results
                        .iter()
                        .find(|b| {
                            b.model == *m
                                && b.target_p99_ms == t
                                && b.max_batch == lb.default_max_batch
                                && b.max_queue_delay_us == lb.default_max_queue_delay_us
                        })
                        .and_then(|b| b.samples_per_s)
                })
                .collect(),
        })
        .collect();
    out.push(Figure {
        id: "bounded-targets".into(),
        section: "bounded",
        caption: format!(
            "The most samples per second each model serves with its p99 within each target: Poisson arrivals of {}-sample queries into dlrs serve's batcher (max batch {}, queue delay {} us) in process, {} threads. A missing bar: no rate met the target.",
            lb.query_size, lb.default_max_batch, lb.default_max_queue_delay_us, lb.threads
        ),
        chart: Chart::Bars(Bars {
            title: "Latency-bounded throughput by p99 target".into(),
            categories: models.clone(),
            category_label: "model".into(),
            value_label: "samples per second".into(),
            series: target_series,
            stacked: false,
            lying: false,
            reference: None,
            value_max: None,
        }),
    });
    let mut settings: Vec<(usize, u64, f64)> = lb
        .results
        .iter()
        .map(|b| (b.max_batch, b.max_queue_delay_us, b.target_p99_ms))
        .collect();
    settings.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then(a.2.total_cmp(&b.2)));
    settings.dedup();
    let setting_target = lb
        .results
        .iter()
        .find(|b| {
            b.max_batch != lb.default_max_batch
                || b.max_queue_delay_us != lb.default_max_queue_delay_us
        })
        .map(|b| b.target_p99_ms);
    if let Some(t) = setting_target {
        let mine: Vec<(usize, u64)> = settings
            .iter()
            .filter(|s| s.2 == t)
            .map(|s| (s.0, s.1))
            .collect();
        out.push(Figure {
            id: "bounded-batcher".into(),
            section: "bounded",
            caption: format!(
                "The same search at p99 <= {t} ms under other settings of the dynamic batcher: the largest batch it forms and how long the oldest query waits for others."
            ),
            chart: Chart::Bars(Bars {
                title: format!("Batcher settings at p99 <= {t} ms"),
                categories: models.clone(),
                category_label: "model".into(),
                value_label: "samples per second".into(),
                series: mine
                    .iter()
                    .enumerate()
                    .map(|(i, &(b, d))| Series {
                        name: format!("max batch {b}, delay {d} us"),
                        color: color(i),
                        values: models
                            .iter()
                            .map(|m| {
                                lb.results
                                    .iter()
                                    .find(|x| {
                                        x.model == *m
                                            && x.max_batch == b
                                            && x.max_queue_delay_us == d
                                            && x.target_p99_ms == t
                                    })
                                    .and_then(|x| x.samples_per_s)
                            })
                            .collect(),
                    })
                    .collect(),
                stacked: false,
                lying: false,
                reference: None,
                value_max: None,
            }),
        });
    }

    // 6. row formats
    let rf = &r.row_formats;
    let fmts = ["fp32", "fp16", "int8", "int4"];
    out.push(Figure {
        id: "formats".into(),
        section: "formats",
        caption: format!(
            "Samples per second of one thread at batch {} with the tables in each row format (the MLPs stay fp32); fewer bytes and cache lines per row make the gathers cheaper, dequantizing costs a little.",
            rf.batch
        ),
        chart: Chart::Bars(Bars {
            title: "Throughput by row format".into(),
            categories: models.clone(),
            category_label: "model".into(),
            value_label: "samples per second".into(),
            series: fmts
                .iter()
                .enumerate()
                .map(|(i, f)| Series {
                    name: f.to_string(),
                    color: color(i),
                    values: models
                        .iter()
                        .map(|m| {
                            rf.points
                                .iter()
                                .find(|p| p.model == *m && p.format == *f)
                                .map(|p| p.samples_per_s)
                        })
                        .collect(),
                })
                .collect(),
            stacked: false,
            lying: false,
            reference: None,
            value_max: None,
        }),
    });
    out
}

/// A name fit for a file name: letters, digits and `-`.
pub fn slug(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    t.trim_matches('-').to_string()
}
