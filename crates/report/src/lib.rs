//! dlrs report: the architectural characterization of recommendation inference (Gupta et
//! al., HPCA 2020; DeepRecSys, ISCA 2020) measured on the machine it runs on, as fractions
//! of that machine's own limits.
//!
//! [`measure`] runs the sections: (1) the machine and its limits (`dlrs_machine`'s probe);
//! (2) the operator breakdown per model and batch size and (3) batching, both from one sweep
//! timed with [`dlrs_model::bench`] (the routine `dlrs bench` uses); (4) co-location, N
//! instances side by side; (5) latency-bounded throughput, the twin's search
//! (`dlrs_loadgen`) against `dlrs serve`'s own batcher; (6) row formats. [`write`] then draws
//! the charts (SVG and PNG, with `dlrs_loadgen::plot`'s backends) and writes `report.json`
//! and `report.html`; [`write_comparison`] puts two reports side by side (7).
//!
//! ```no_run
//! use dlrs_report::{Options, Size, measure, write};
//! let opts = Options { models: vec!["rmc1".into()], size: Size::Quick };
//! let mut report = measure(&opts, &mut ())?;
//! write(&mut report, std::path::Path::new("out"))?;
//! # Ok::<(), dlrs_report::ReportError>(())
//! ```

pub mod charts;
pub mod compare;
pub mod error;
pub mod figures;
pub mod html;
pub mod plan;
pub mod run;
pub mod schema;

use std::path::Path;

pub use error::ReportError;
pub use run::{Options, Progress, measure};
pub use schema::{Report, SCHEMA_VERSION, Size};

use dlrs_loadgen::plot::{png_bytes, svg_string};

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    std::fs::write(path, bytes).map_err(|source| ReportError::File {
        what: "writing",
        path: path.to_path_buf(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::File {
        what: "creating",
        path: dir.to_path_buf(),
        source,
    })
}

/// The SVG and PNG of a chart, written as `dir/<id>.svg` and `dir/<id>.png`.
fn draw<F: dlrs_loadgen::plot::Figure>(
    dir: &Path,
    id: &str,
    fig: &F,
) -> Result<String, ReportError> {
    let chart = |source| ReportError::Chart {
        id: id.to_string(),
        source: Box::new(source),
    };
    let svg = svg_string(fig).map_err(chart)?;
    write_file(&dir.join(format!("{id}.svg")), svg.as_bytes())?;
    write_file(
        &dir.join(format!("{id}.png")),
        &png_bytes(fig).map_err(chart)?,
    )?;
    Ok(svg)
}

/// Draws the charts of `report` (recording them in `report.plots`) and writes
/// `dir/report.json`, `dir/report.html` and every chart as `dir/<id>.svg` and `.png`.
pub fn write(report: &mut Report, dir: &Path) -> Result<(), ReportError> {
    create_dir(dir)?;
    let figs = figures::figures(report);
    let mut svgs = Vec::new();
    report.plots.clear();
    for f in &figs {
        let svg = match &f.chart {
            figures::Chart::Bars(b) => draw(dir, &f.id, b)?,
            figures::Chart::Lines(l) => draw(dir, &f.id, l)?,
        };
        report.plots.push(schema::Plot {
            id: f.id.clone(),
            section: f.section.to_string(),
            title: f.title().to_string(),
            caption: f.caption.clone(),
            svg: format!("{}.svg", f.id),
            png: format!("{}.png", f.id),
        });
        svgs.push(svg);
    }
    let inline: Vec<html::Inline> = report
        .plots
        .iter()
        .zip(svgs)
        .map(|(plot, svg)| html::Inline { plot, svg })
        .collect();
    let page = html::page(report, &inline);
    let json = serde_json::to_string_pretty(report).expect("a report serializes");
    write_file(&dir.join("report.json"), json.as_bytes())?;
    write_file(&dir.join("report.html"), page.as_bytes())
}

/// Reads two `report.json` files and writes `dir/compare.html`, `dir/compare.json` and the
/// comparison's chart.
pub fn write_comparison(
    a: &Path,
    b: &Path,
    dir: &Path,
) -> Result<compare::Comparison, ReportError> {
    let (ra, rb) = (compare::load(a)?, compare::load(b)?);
    create_dir(dir)?;
    let c = compare::compare(&ra, &rb, &a.display().to_string(), &b.display().to_string());
    let chart = compare::chart(&ra, &rb);
    let plot = schema::Plot {
        id: "compare-throughput".into(),
        section: "compare".into(),
        title: chart.title.clone(),
        caption: "Samples per second of one thread for each model at batch sizes 64 and up, on machine A and on machine B.".into(),
        svg: "compare-throughput.svg".into(),
        png: "compare-throughput.png".into(),
    };
    let svg = draw(dir, &plot.id, &chart)?;
    let page = compare::page(&c, &ra, &rb, &html::Inline { plot: &plot, svg });
    write_file(
        &dir.join("compare.json"),
        serde_json::to_string_pretty(&c)
            .expect("a comparison serializes")
            .as_bytes(),
    )?;
    write_file(&dir.join("compare.html"), page.as_bytes())?;
    Ok(c)
}
