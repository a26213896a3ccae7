//! `dlrs`: DLRM inference from the command line. A thin shell over `dlrs-model`.

mod bench;

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use dlrs_model::batch::parse_sample;
use dlrs_model::{Batch, Executor, Model, Workspace, presets};

#[derive(Parser)]
#[command(name = "dlrs", version, about = "Deep-learning recommendation model (DLRM) engine")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a preset (random weights, full-size tables) as a model directory.
    Init {
        /// rmc1, rmc2, rmc3 or criteo-kaggle
        #[arg(long)]
        preset: String,
        /// output directory (config.json + model.safetensors)
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// cap every table at this many rows (small test models of a preset's shape)
        #[arg(long)]
        rows_cap: Option<usize>,
    },
    /// Print one click probability per input line, in input order.
    Predict {
        /// model directory (config.json + model.safetensors)
        #[arg(long)]
        model: PathBuf,
        /// JSON Lines samples: {"dense": [..], "sparse": [[ids of table 0], ..]}; `-` for stdin
        #[arg(long)]
        input: PathBuf,
        /// samples per forward pass
        #[arg(long, default_value_t = 256)]
        batch: usize,
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Measure throughput, latency and per-stage time on synthetic inputs.
    Bench(bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Init { preset, out, seed, rows_cap } => init(&preset, &out, seed, rows_cap),
        Cmd::Predict { model, input, batch, threads } => predict(&model, &input, batch, threads),
        Cmd::Bench(a) => bench::run(a),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn init(name: &str, out: &Path, seed: u64, rows_cap: Option<usize>) -> Result<()> {
    let mut p = presets::preset(name)?;
    if let Some(cap) = rows_cap {
        if cap == 0 {
            bail!("--rows-cap must be positive");
        }
        p.config.tables.iter_mut().for_each(|r| *r = (*r).min(cap));
    }
    let t0 = Instant::now();
    let model = Model::random(p.config, seed)?;
    let built = t0.elapsed();
    model.save(out).with_context(|| format!("writing {}", out.display()))?;
    let bytes: usize = model.weights.tables.iter().map(|t| t.bytes()).sum();
    eprintln!(
        "wrote {}: preset {name}, {} tables, {:.2} GB of embeddings (built in {:.2} s, written in {:.2} s)",
        out.display(),
        model.config.n_tables(),
        bytes as f64 / 1e9,
        built.as_secs_f64(),
        (t0.elapsed() - built).as_secs_f64()
    );
    Ok(())
}

fn predict(dir: &Path, input: &Path, batch_size: usize, threads: usize) -> Result<()> {
    if batch_size == 0 {
        bail!("--batch must be positive");
    }
    let model = Model::load(dir)?;
    let exec = Executor::new(threads)?;
    let reader: Box<dyn BufRead> = if input.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut ws = Workspace::default();
    let mut batch = Batch::empty(&model.config);
    let flush = |batch: &mut Batch, ws: &mut Workspace, out: &mut BufWriter<_>| -> Result<()> {
        for s in model.forward(batch, ws, &exec) {
            writeln!(out, "{s}")?;
        }
        batch.clear();
        Ok(())
    };
    for (i, line) in reader.lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("{}: line {n}", input.display()))?;
        if line.trim().is_empty() {
            bail!("{}: line {n}: empty line (one JSON sample per line)", input.display());
        }
        let sample = parse_sample(&line, &model.config).map_err(|e| e.at_line(n))
            .with_context(|| input.display().to_string())?;
        batch.push(&model.config, &sample).map_err(|e| e.at_line(n))?;
        if batch.size() == batch_size {
            flush(&mut batch, &mut ws, &mut out)?;
        }
    }
    if batch.size() > 0 {
        flush(&mut batch, &mut ws, &mut out)?;
    }
    out.flush()?;
    Ok(())
}
