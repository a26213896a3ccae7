//! `dlrs`: DLRM inference from the command line. A thin shell over `dlrs-model`.

mod args;
mod bench;
mod logs;
mod probe;
mod report;

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use args::redis::Tables;
use clap::{Parser, Subcommand};
use dlrs_model::metrics::auc;
use dlrs_model::{
    Batch, DlrmConfig, Executor, MlpDtype, Model, RowFormat, Sample, TableMode, Verified,
    WEIGHTS_FILE, Workspace, presets,
};

#[derive(Parser)]
#[command(
    name = "dlrs",
    version,
    about = "Deep-learning recommendation model (DLRM) engine"
)]
struct Cli {
    /// log lines (stderr) as text or as one JSON object per line; levels from RUST_LOG
    #[arg(long, global = true, value_enum, default_value_t = logs::LogFormat::Text)]
    log_format: logs::LogFormat,
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
        /// row format of the tables: fp32, fp16, int8 or int4
        #[arg(long, default_value = "fp32", value_parser = parse_format)]
        dtype: RowFormat,
        /// type of the MLP weights: fp32, or bf16 (f32 accumulation)
        #[arg(long, default_value = "fp32", value_parser = parse_mlp_dtype)]
        mlp_dtype: MlpDtype,
        /// the id map of all tables, or of the listed ones (`0,3-5=SPEC`); repeatable, later
        /// flags override. SPEC: index, hash, or
        /// collisionless[:admit=K,ttl=N|Ns,evict=lfu|lru,miss=zero|default] (docs/id-maps.md)
        #[arg(long = "id-map", value_name = "[TABLES=]SPEC")]
        id_maps: Vec<String>,
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
        /// mmap: map the model file (instant start, page cache); ram: copy tables into huge
        /// pages; redis://HOST:PORT[,HOST:PORT...]: rows from a Redis Cluster (`dlrs push`),
        /// the MLPs from the directory
        #[arg(long, default_value = "mmap", value_parser = args::redis::parse_tables)]
        tables: Tables,
        #[command(flatten)]
        redis: args::redis::RedisArgs,
    },
    /// Measure throughput, latency and per-stage time on synthetic inputs.
    Bench(bench::BenchArgs),
    /// The host and its measured limits: FMA peak per core, random row-gather rate per row
    /// size, DRAM latency, sequential bandwidth.
    Probe(probe::ProbeArgs),
    /// The characterization of recommendation inference on this machine: its limits, the
    /// operator breakdown per model and batch size, batching, co-location, latency-bounded
    /// throughput and row formats, as report.html, report.json and charts (SVG, PNG).
    Report(report::ReportArgs),
    /// Convert a model's tables to another row format and/or its MLP weights to bf16; prints
    /// each converted table's row error and the MLP weights' error.
    #[command(group(clap::ArgGroup::new("to").required(true).multiple(true).args(["dtype", "mlp_dtype"])))]
    Quantize {
        #[arg(long)]
        model: PathBuf,
        /// the tables' new row format: fp16, int8, int4 (or fp32)
        #[arg(long, value_parser = parse_format)]
        dtype: Option<RowFormat>,
        /// the MLP weights' new type: bf16 (or fp32)
        #[arg(long, value_parser = parse_mlp_dtype)]
        mlp_dtype: Option<MlpDtype>,
        /// only these tables (comma-separated indices); default all
        #[arg(long, value_delimiter = ',')]
        tables: Vec<usize>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Score the same samples with two models: max/mean absolute score difference, and the
    /// AUC of each when the samples carry "label".
    Compare {
        /// two model directories: --model A --model B
        #[arg(long, num_args = 1, required = true)]
        model: Vec<PathBuf>,
        #[arg(long)]
        input: PathBuf,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long)]
        json: bool,
    },
    /// Serve a model over HTTP (KServe v2 / Open Inference Protocol, and plain JSON) with
    /// dynamic batching, deadlines, metrics and hot reload.
    Serve(args::ServeArgs),
    /// Open-loop Poisson load against a `dlrs serve` endpoint: latency percentiles from the
    /// scheduled send time, errors by status; with --target-p99-ms, the latency-bounded
    /// throughput search and its curve.
    Loadgen(args::LoadgenArgs),
    /// The same load in-process (batching queue + forward, no HTTP): the serving overhead
    /// becomes a number.
    Twin(args::TwinArgs),
    /// Train a DLRM on CPU (sparse embedding updates; sgd, adagrad, row-wise Adagrad, adam),
    /// streaming JSON Lines or Criteo TSV, with evals and resumable checkpoints.
    Train(args::train::TrainArgs),
    /// AUC, log loss, normalized entropy and calibration of a model on labelled data.
    Eval(args::train::EvalArgs),
    /// Labelled samples from a random teacher DLRM (power-law ids): a learnable signal
    /// without a download.
    Synth(args::train::SynthArgs),
    /// Push a model's tables, in their row formats, into a Redis Cluster (streamed,
    /// resumable; servers see them once complete): then serve, predict or bench with
    /// --tables redis://HOST:PORT[,...].
    Push(args::redis::PushArgs),
    /// Check every checksum of a model directory (exit status 1 on any mismatch). A model
    /// with no checksum manifest (e.g. exported from PyTorch) has its tensors checked for
    /// name, shape and dtype only, says so, and exits 0 unless --require-manifest.
    Verify {
        #[arg(long)]
        model: PathBuf,
        /// exit 1 when the model has no checksum manifest
        #[arg(long)]
        require_manifest: bool,
    },
    /// Add (or renew) the checksum manifest of a model directory, e.g. one exported from
    /// PyTorch. An existing manifest is verified first.
    Manifest {
        #[arg(long)]
        model: PathBuf,
    },
}

pub(crate) fn parse_mlp_dtype(s: &str) -> Result<MlpDtype, String> {
    MlpDtype::parse(s).ok_or_else(|| format!("`{s}`: expected fp32 or bf16"))
}

pub(crate) fn parse_format(s: &str) -> Result<RowFormat, String> {
    RowFormat::parse(s).ok_or_else(|| format!("`{s}` is not a row format (fp32, fp16, int8, int4)"))
}

fn main() {
    let cli = Cli::parse();
    logs::init(cli.log_format);
    let res = match cli.cmd {
        Cmd::Init {
            preset,
            out,
            seed,
            rows_cap,
            dtype,
            mlp_dtype,
            id_maps,
        } => init(&preset, &out, seed, rows_cap, dtype, mlp_dtype, &id_maps),
        Cmd::Predict {
            model,
            input,
            batch,
            threads,
            tables,
            redis,
        } => predict(&model, &input, batch, threads, &tables, &redis),
        Cmd::Push(a) => push(&a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Probe(a) => probe::run(a),
        Cmd::Report(a) => report::run(a),
        Cmd::Quantize {
            model,
            dtype,
            mlp_dtype,
            tables,
            out,
        } => quantize(&model, dtype, mlp_dtype, &tables, &out),
        Cmd::Compare {
            model,
            input,
            threads,
            json,
        } => compare(&model, &input, threads, json),
        Cmd::Serve(a) => dlrs_serve::run(a.into()).map_err(Into::into),
        Cmd::Train(a) => dlrs_train::train(a.into()).map_err(Into::into),
        Cmd::Eval(a) => dlrs_train::eval(a.into()).map_err(Into::into),
        Cmd::Synth(a) => dlrs_train::synth(a.into()).map_err(Into::into),
        Cmd::Loadgen(a) => dlrs_loadgen::run(a.into()).map_err(Into::into),
        Cmd::Twin(a) => dlrs_loadgen::run_twin(a.into()).map_err(Into::into),
        Cmd::Verify {
            model,
            require_manifest,
        } => verify(&model, require_manifest),
        Cmd::Manifest { model } => manifest(&model),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn init(
    name: &str,
    out: &Path,
    seed: u64,
    rows_cap: Option<usize>,
    dtype: RowFormat,
    mlp_dtype: MlpDtype,
    id_maps: &[String],
) -> Result<()> {
    let mut p = presets::preset(name)?;
    if let Some(cap) = rows_cap {
        if cap == 0 {
            bail!("--rows-cap must be positive");
        }
        p.config.tables.iter_mut().for_each(|r| *r = (*r).min(cap));
    }
    let t0 = Instant::now();
    let config = dlrs_model::tables::idmap::apply_id_map_flags(
        p.config.with_format(dtype).with_mlp_dtype(mlp_dtype),
        id_maps,
    )?;
    let bytes: usize = config
        .tables
        .iter()
        .map(|&r| r * dlrs_model::tables::EmbeddingTable::stride_for(dtype, config.dim))
        .sum();
    let bar = indicatif::ProgressBar::new(bytes as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!(
        "init {name} {} (MLPs {})",
        dtype.name(),
        mlp_dtype.name()
    ));
    // streamed: rows go from the generator to the file a window at a time (bounded memory)
    Model::write_random(&config, seed, out, |n| bar.inc(n))
        .with_context(|| format!("writing {}", out.display()))?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {}: preset {name}, {} {} tables, {} MLPs, {:.2} GB of embeddings in {:.1} s",
        out.display(),
        config.n_tables(),
        dtype.name(),
        mlp_dtype.name(),
        bytes as f64 / 1e9,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn quantize(
    dir: &Path,
    dtype: Option<RowFormat>,
    mlp_dtype: Option<MlpDtype>,
    tables: &[usize],
    out: &Path,
) -> Result<()> {
    let q = Model::quantize_dir(dir, dtype, mlp_dtype, tables, out)?;
    if let Some(f) = dtype {
        println!("table\trows\tdtype\tstride_bytes\tmax_abs_error\tmean_abs_error");
        for &(t, max, mean) in &q.tables {
            let tb = &q.model.weights.tables[t];
            println!(
                "{t}\t{}\t{}\t{}\t{max:.3e}\t{mean:.3e}",
                tb.rows(),
                f.name(),
                tb.stride()
            );
        }
    }
    if let (Some(d), Some((max, mean))) = (mlp_dtype, q.mlp) {
        println!(
            "mlp weights\t{}\tmax_abs_error {max:.3e}\tmean_abs_error {mean:.3e}",
            d.name()
        );
    }
    Ok(())
}

/// Streams a JSON Lines file (`-`: stdin) in batches of up to `batch_size` samples (errors
/// name the line and field); the file is never held whole.
fn for_each_batch(
    path: &Path,
    model: &Model,
    batch_size: usize,
    mut f: impl FnMut(&Batch, &[Sample]) -> Result<()>,
) -> Result<()> {
    if batch_size == 0 {
        bail!("--batch must be positive");
    }
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut samples = Vec::with_capacity(batch_size);
    let mut batch = Batch::empty(&model.config);
    for (i, line) in reader.lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("{}: line {n}", path.display()))?;
        if line.trim().is_empty() {
            bail!(
                "{}: line {n}: empty line (one JSON sample per line)",
                path.display()
            );
        }
        // collisionless tables' raw ids go through the model's maps
        let s = model
            .parse_sample(&line)
            .map_err(|e| e.at_line(n))
            .with_context(|| path.display().to_string())?;
        batch
            .push(&model.config, &s)
            .map_err(|e| e.at_line(n))
            .with_context(|| path.display().to_string())?;
        samples.push(s);
        if samples.len() == batch_size {
            f(&batch, &samples)?;
            samples.clear();
            batch.clear();
        }
    }
    if !samples.is_empty() {
        f(&batch, &samples)?;
    }
    Ok(())
}

fn compare(dirs: &[PathBuf], input: &Path, threads: usize, json: bool) -> Result<()> {
    if dirs.len() != 2 {
        bail!(
            "compare takes exactly two --model directories, got {}",
            dirs.len()
        );
    }
    let a = Model::load(&dirs[0])?;
    let b = Model::load(&dirs[1])?;
    // the same architecture: only the row formats and the MLP weights' type may differ
    let same = |c: &DlrmConfig| DlrmConfig {
        mlp_dtype: MlpDtype::F32,
        ..c.clone().with_format(RowFormat::F32)
    };
    if same(&a.config) != same(&b.config) {
        bail!(
            "the two models have different architectures (only row formats and the MLP \
             dtype may differ)"
        );
    }
    let exec = Executor::new(threads)?;
    let (mut sa, mut sb, mut labels) = (Vec::new(), Vec::new(), Some(Vec::new()));
    let (mut wa, mut wb) = (Workspace::default(), Workspace::default());
    for_each_batch(input, &a, 256, |batch, samples| {
        sa.extend_from_slice(a.forward(batch, &mut wa, &exec)?);
        sb.extend_from_slice(b.forward(batch, &mut wb, &exec)?);
        labels = labels.take().and_then(|mut l: Vec<f32>| {
            samples
                .iter()
                .try_for_each(|s| s.label.map(|x| l.push(x)))?;
            Some(l)
        });
        Ok(())
    })?;
    let diffs: Vec<f64> = sa
        .iter()
        .zip(&sb)
        .map(|(x, y)| (x - y).abs() as f64)
        .collect();
    let max = diffs.iter().cloned().fold(0.0, f64::max);
    let mean = diffs.iter().sum::<f64>() / diffs.len().max(1) as f64;
    let aucs = labels.as_ref().map(|l| (auc(&sa, l), auc(&sb, l)));
    if json {
        let v = serde_json::json!({
            "samples": sa.len(), "max_abs_diff": max, "mean_abs_diff": mean,
            "auc_a": aucs.and_then(|x| x.0), "auc_b": aucs.and_then(|x| x.1),
        });
        println!("{v}");
    } else {
        println!(
            "samples {}  max |a-b| {max:.3e}  mean |a-b| {mean:.3e}",
            sa.len()
        );
        match aucs {
            Some((Some(x), Some(y))) => println!("AUC a {x:.6}  b {y:.6}  (b - a {:+.6})", y - x),
            Some(_) => println!("AUC undefined: the labels hold one class only"),
            None => println!("AUC: not every sample carries a label"),
        }
    }
    Ok(())
}

fn verify(dir: &Path, require_manifest: bool) -> Result<()> {
    let t0 = Instant::now();
    // (without a manifest the library's error would not name the flag: checked here)
    match Model::verify_dir(dir, false)? {
        Verified::NoManifest { tensors } => {
            let what = format!(
                "{}: no manifest: {tensors} tensors checked for shape and dtype only; run `dlrs manifest --model {}` to add checksums",
                dir.join(WEIGHTS_FILE).display(),
                dir.display()
            );
            if require_manifest {
                bail!("{what} (--require-manifest)");
            }
            println!("{what}");
        }
        Verified::Checksums { tables, bytes } => println!(
            "{}: ok ({tables} tables, {:.2} GB verified in {:.2} s)",
            dir.display(),
            bytes as f64 / 1e9,
            t0.elapsed().as_secs_f64()
        ),
    }
    // the collisionless tables' id maps were checked as the model loaded (checksum, then
    // contents): a bad one failed verify_dir above
    let config = dlrs_model::DlrmConfig::load(&dir.join(dlrs_model::CONFIG_FILE))?;
    let maps: Vec<usize> = (0..config.n_tables())
        .filter(|&t| config.id_map(t).collisionless().is_some())
        .collect();
    if !maps.is_empty() {
        let present = maps
            .iter()
            .filter(|&&t| dlrs_model::tables::idmap::file::path(dir, t).exists())
            .count();
        println!(
            "{}: id maps ok ({present} of {} collisionless tables have a map file, checksum and contents verified; the others start empty)",
            dir.display(),
            maps.len()
        );
    }
    Ok(())
}

fn manifest(dir: &Path) -> Result<()> {
    let model = Model::load_with(dir, TableMode::Mmap)?;
    model.verify_tables()?;
    // the new file is written beside the old and renamed over it; the mapping keeps the old
    model
        .save(dir)
        .with_context(|| format!("writing {}", dir.display()))?;
    println!("{}: manifest written", dir.display());
    Ok(())
}

/// Loads a model directory with its tables as `--tables` says: held locally, or read from
/// a Redis Cluster (the MLPs from the directory).
pub(crate) fn load_model(
    dir: &Path,
    tables: &Tables,
    redis: &args::redis::RedisArgs,
) -> Result<Model> {
    Ok(match tables {
        Tables::Local(mode) => Model::load_with(dir, *mode)?,
        Tables::Redis(nodes) => dlrs_redis::load_model(dir, &redis.options(nodes.clone()))?,
    })
}

fn push(a: &args::redis::PushArgs) -> Result<()> {
    let opts = a.options()?;
    let t0 = Instant::now();
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("push {} -> {}", a.model.display(), opts.namespace));
    let r = dlrs_redis::push(&a.model, &opts, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .with_context(|| format!("pushing {} to {}", a.model.display(), a.redis))?;
    bar.finish_and_clear();
    if r.already {
        println!(
            "namespace `{}`: tables {} were pushed completely already; `current` points at them",
            opts.namespace, r.digest
        );
    } else {
        println!(
            "namespace `{}`: tables {} pushed ({} rows, {:.3} GB in {:.1} s; {} partitions per table{})",
            opts.namespace,
            r.digest,
            r.rows,
            r.bytes as f64 / 1e9,
            t0.elapsed().as_secs_f64(),
            r.partitions,
            if r.resumed_rows > 0 {
                format!("; resumed after {} rows", r.resumed_rows)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

fn predict(
    dir: &Path,
    input: &Path,
    batch_size: usize,
    threads: usize,
    tables: &Tables,
    redis: &args::redis::RedisArgs,
) -> Result<()> {
    let model = load_model(dir, tables, redis)?;
    let exec = Executor::new(threads)?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut ws = Workspace::default();
    for_each_batch(input, &model, batch_size, |batch, _| {
        for s in model.forward(batch, &mut ws, &exec)? {
            writeln!(out, "{s}")?;
        }
        Ok(())
    })?;
    out.flush()?;
    Ok(())
}
