//! `dlrs report`: the characterization of recommendation inference on this machine, as an
//! HTML page, a JSON file and charts (see `dlrs_report` and docs/report.md), with a progress
//! bar; `--compare` puts two reports side by side.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use dlrs_report::{Options, Progress, Size};

#[derive(Args)]
pub struct ReportArgs {
    /// models to characterize: presets (rmc1, rmc2, rmc3, criteo-kaggle) or model directories
    #[arg(long, value_delimiter = ',', default_value = "rmc1,rmc2,rmc3")]
    models: Vec<String>,
    /// under 5 minutes on 2 cores: each table capped at 64 MiB or twice the largest cache
    /// (marked as such in the page and the JSON), shorter measurements; without it,
    /// full-size presets (under 30 minutes)
    #[arg(long)]
    quick: bool,
    /// tiny tables and measurements, for tests (the figures mean little)
    #[arg(long, hide = true, conflicts_with = "quick")]
    tiny: bool,
    /// put two machines' reports side by side: --compare A/report.json B/report.json
    #[arg(long, num_args = 2, value_names = ["A", "B"], conflicts_with_all = ["quick", "tiny"])]
    compare: Vec<PathBuf>,
    /// the output directory (report.html, report.json and the charts as SVG and PNG; with
    /// --compare, compare.html and compare.json)
    #[arg(long)]
    out: PathBuf,
}

/// An indicatif bar over the run's estimated seconds.
struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn start(&mut self, total_est_s: f64) {
        self.0.set_length((total_est_s * 1000.0) as u64);
    }
    fn step(&mut self, label: &str) {
        self.0.set_message(label.to_string());
        tracing::debug!("report: {label}");
    }
    fn advance(&mut self, est_s: f64) {
        let len = self.0.length().unwrap_or(0);
        // an estimate that ran short keeps the bar just below its end
        let pos = (self.0.position() + (est_s * 1000.0) as u64).min(len.saturating_sub(1));
        self.0.set_position(pos);
    }
}

pub fn run(a: ReportArgs) -> Result<()> {
    if !a.compare.is_empty() {
        let c = dlrs_report::write_comparison(&a.compare[0], &a.compare[1], &a.out)?;
        eprintln!(
            "wrote {}: {} figures of A ({}) and B ({}) side by side",
            a.out.join("compare.html").display(),
            c.figures.len(),
            c.a_cpu,
            c.b_cpu
        );
        return Ok(());
    }
    if a.models.iter().any(|m| m.trim().is_empty()) {
        bail!("--models: an empty model name");
    }
    let size = if a.tiny {
        Size::Tiny
    } else if a.quick {
        Size::Quick
    } else {
        Size::Full
    };
    let bar = indicatif::ProgressBar::new(1).with_style(
        indicatif::ProgressStyle::with_template(
            "report [{bar:30}] {percent:>3}% {elapsed} elapsed, ~{eta} left  {wide_msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let mut progress = Bar(bar);
    let mut report = dlrs_report::measure(
        &Options {
            models: a.models.clone(),
            size,
        },
        &mut progress,
    )?;
    progress.0.set_message("drawing the charts");
    dlrs_report::write(&mut report, &a.out)?;
    progress.0.finish_and_clear();
    eprintln!(
        "wrote {} ({} charts, report.json, SVG and PNG) in {:.0} s on {}",
        a.out.join("report.html").display(),
        report.plots.len(),
        report.wall_s,
        report.machine.cpu_line
    );
    Ok(())
}
