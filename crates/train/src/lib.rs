//! dlrs train: DLRM training on CPU.
//!
//! - [`net`]: forward with saved activations, BCE loss, backward (dense and sparse gradients).
//! - [`optim`]: SGD / Adagrad / row-wise Adagrad for tables, SGD / Adagrad / Adam for MLPs.
//! - [`data`]: streaming JSON Lines and Criteo TSV readers (gzip/zstd), batches, shuffle.
//! - [`metrics`]: AUC, log loss, normalized entropy, calibration.
//! - [`synth`]: labelled samples from a random teacher DLRM.
//! - [`checkpoint`]: atomic checkpoints with optimizer state; resume.
//!
//! The `dlrs` binary wires [`TrainArgs`] / [`EvalArgs`] / [`SynthArgs`] to [`train`],
//! [`eval`] and [`synth`].

pub mod checkpoint;
pub mod data;
pub mod error;
pub mod metrics;
pub mod net;
pub mod optim;
pub mod synth;

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::ArgGroup;
use dlrs_model::synth::IdDist;
use dlrs_model::{Batch, DlrmConfig, Executor, Model, TableMode, Workspace, presets};
use serde_json::{Value, json};

pub use crate::error::{SettingChange, TrainError};

use crate::checkpoint::{DataIdentity, Settings, TrainState};
use crate::data::{BatchStream, DataFormat, StreamOptions};
use crate::metrics::EvalMetrics;
use crate::net::{TrainWorkspace, check_trainable};
use crate::optim::{DenseOptimizer, Optimizer, SparseOptimizer};

/// `dlrs train`: train a DLRM on labelled data.
#[derive(clap::Args, Clone, Debug)]
#[command(group(ArgGroup::new("start").required(true).args(["model", "preset", "resume"])))]
pub struct TrainArgs {
    /// initial model directory (its weights are used exactly; tables must be fp32)
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// start from a preset with random weights (seeded by --seed)
    #[arg(long)]
    pub preset: Option<String>,
    /// with --preset: cap every table at this many rows
    #[arg(long)]
    pub rows_cap: Option<usize>,
    /// continue the run whose checkpoint is this directory (usually the same as --out); the
    /// settings and the --train data must be the checkpoint's (see --new-data)
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// with --resume: train the checkpoint on --train data other than the data it was
    /// trained on; the epoch count and the position in the data start again from 0, the
    /// weights, optimizer state and step are kept
    #[arg(long, requires = "resume")]
    pub new_data: bool,
    /// training data: JSON Lines with labels, or Criteo TSV; gzip/zstd accepted
    #[arg(long)]
    pub train: PathBuf,
    /// evaluation data, scored after every epoch (and every --eval-every steps)
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// output directory: the trained model (config.json, model.safetensors), the optimizer
    /// state and the training state; replaced atomically at every checkpoint
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub epochs: u64,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// learning rate of the tables and the MLPs (--sparse-lr, --dense-lr override it)
    #[arg(long, default_value_t = 0.01)]
    pub lr: f32,
    /// learning rate of the embedding tables (default: --lr)
    #[arg(long)]
    pub sparse_lr: Option<f32>,
    /// learning rate of the MLPs (default: --lr)
    #[arg(long)]
    pub dense_lr: Option<f32>,
    /// optimizer of the embedding tables
    #[arg(long, value_enum, default_value_t = SparseOptimizer::Sgd)]
    pub optimizer: SparseOptimizer,
    /// optimizer of the MLPs
    #[arg(long, value_enum, default_value_t = DenseOptimizer::Sgd)]
    pub dense_optimizer: DenseOptimizer,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// seeds the preset's weights and the shuffle
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// one JSON object per eval and a final one on stdout
    #[arg(long)]
    pub json: bool,
    /// shuffle samples within a window (buffered, bounded memory); default: file order
    #[arg(long)]
    pub shuffle: bool,
    /// samples held by the shuffle window
    #[arg(long, default_value_t = 1 << 16)]
    pub shuffle_window: usize,
    /// skip (and count) bad input lines instead of stopping at the first
    #[arg(long)]
    pub skip_bad: bool,
    /// input format
    #[arg(long, value_enum, default_value_t = DataFormat::Auto)]
    pub format: DataFormat,
    /// also checkpoint every N steps (always at the end of each epoch)
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// also evaluate every N steps (always at the end of each epoch)
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// stop (with a checkpoint) once the run has taken this many steps in all
    #[arg(long)]
    pub max_steps: Option<u64>,
}

/// `dlrs eval`: metrics of a model on labelled data.
#[derive(clap::Args, Clone, Debug)]
pub struct EvalArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// labelled data: JSON Lines or Criteo TSV; gzip/zstd accepted
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value_t = 1024)]
    pub batch: usize,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    #[arg(long, value_enum, default_value_t = DataFormat::Auto)]
    pub format: DataFormat,
    #[arg(long)]
    pub skip_bad: bool,
    /// print one JSON object
    #[arg(long)]
    pub json: bool,
}

/// `dlrs synth`: labelled samples (JSON Lines) from a random teacher DLRM.
#[derive(clap::Args, Clone, Debug)]
#[command(group(ArgGroup::new("arch").required(true).args(["preset", "model"])))]
pub struct SynthArgs {
    /// the teacher's architecture; its weights are random, seeded by --teacher
    #[arg(long)]
    pub preset: Option<String>,
    /// with --preset: cap every table at this many rows
    #[arg(long)]
    pub rows_cap: Option<usize>,
    /// a model directory whose architecture the teacher takes (weights random from
    /// --teacher; with --use-weights, the directory's own weights are the teacher)
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long)]
    pub use_weights: bool,
    /// seed of the teacher's weights (with --use-weights: unused), and of the samples
    /// unless --seed is given
    #[arg(long, default_value_t = 0)]
    pub teacher: u64,
    /// seed of the samples only (default: --teacher): `--teacher 7 --seed 1` and
    /// `--teacher 7 --seed 2` are a train set and a held-out set from one teacher
    #[arg(long)]
    pub seed: Option<u64>,
    /// number of samples
    #[arg(long)]
    pub rows: u64,
    /// output file (`.gz` is gzip-compressed); `-` for stdout
    #[arg(long)]
    pub out: PathBuf,
    /// id distribution: uniform or zipf:S
    #[arg(long, default_value = "uniform")]
    pub dist: String,
    /// ids per bag (default: the preset's, 1 for --model)
    #[arg(long)]
    pub ids_per_table: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// also write the teacher as a model directory (its AUC on the samples is the ceiling
    /// a student can reach)
    #[arg(long)]
    pub save_teacher: Option<PathBuf>,
    /// random teacher: table values U(±S)
    #[arg(long, default_value_t = 1.0)]
    pub emb_scale: f32,
    /// random teacher: final layer scaled by S (higher: sharper probabilities, higher AUC)
    #[arg(long, default_value_t = 2.0)]
    pub logit_scale: f32,
    /// random teacher: mean click probability (its final bias is set for it)
    #[arg(long, default_value_t = 0.25)]
    pub ctr: f64,
}

/// A model, its optimizer and the step buffers: one [`step`](Trainer::step) per batch.
pub struct Trainer {
    pub model: Model,
    pub opt: Optimizer,
    pub ws: TrainWorkspace,
    threads: usize,
    pool: rayon::ThreadPool,
}

impl Trainer {
    pub fn new(model: Model, opt: Optimizer, threads: usize) -> Result<Self> {
        check_trainable(&model)?;
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("dlrs-train-{i}"))
            .build()
            .context("building the thread pool")?;
        Ok(Trainer {
            model,
            opt,
            ws: TrainWorkspace::new(),
            threads,
            pool,
        })
    }

    /// Forward, backward and one optimizer step on a batch; returns the batch's mean loss
    /// (before the update).
    pub fn step(&mut self, batch: &Batch, labels: &[f32]) -> f64 {
        let Trainer {
            model,
            opt,
            ws,
            threads,
            pool,
        } = self;
        let threads = *threads;
        pool.install(|| {
            if opt.sparse == SparseOptimizer::Sgd {
                // SGD moves each id by its bag's gradient: no coalesced gradient needed
                let loss = ws.forward_backward_mlps(model, batch, labels, threads);
                opt.step_pooled(model, &ws.grads, batch, ws.pooled_grads());
                loss
            } else {
                let loss = ws.forward_backward(model, batch, labels, threads);
                opt.step(model, &ws.grads);
                loss
            }
        })
    }

    /// Forward and backward only (the gradients land in `self.ws.grads`); returns the loss.
    pub fn gradients(&mut self, batch: &Batch, labels: &[f32]) -> f64 {
        let Trainer {
            model,
            ws,
            threads,
            pool,
            ..
        } = self;
        let threads = *threads;
        pool.install(|| ws.forward_backward(model, batch, labels, threads))
    }

    pub fn threads(&self) -> usize {
        self.threads
    }
}

/// Scores every labelled sample of `path` with `model` (the inference path of `predict`).
/// Returns the metrics and the number of skipped lines.
pub fn evaluate(
    model: &Model,
    path: &Path,
    format: DataFormat,
    skip_bad: bool,
    batch: usize,
    exec: &Executor,
) -> Result<(EvalMetrics, u64)> {
    let opts = StreamOptions {
        batch: batch.max(1),
        format,
        skip_bad,
        shuffle: None,
        skip_samples: 0,
    };
    let mut stream = BatchStream::open(path, &model.config, opts)?;
    let mut ws = Workspace::default();
    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    let t0 = Instant::now();
    while let Some(lb) = stream.next_batch()? {
        let s = model.forward(&lb.batch, &mut ws, exec)?;
        scores.extend_from_slice(s);
        labels.extend_from_slice(&lb.labels);
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok((
        EvalMetrics::compute(&scores, &labels, secs),
        stream.skipped(),
    ))
}

/// A preset's config, tables capped at `rows_cap`.
fn preset_config(name: &str, rows_cap: Option<usize>) -> Result<(DlrmConfig, usize)> {
    let mut p = presets::preset(name)?;
    if let Some(cap) = rows_cap {
        if cap == 0 {
            bail!("--rows-cap must be positive");
        }
        p.config.tables.iter_mut().for_each(|r| *r = (*r).min(cap));
    }
    Ok((p.config, p.ids_per_table))
}

fn shuffle_seed(seed: u64, epoch: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(&epoch.to_le_bytes(), seed)
}

/// What a training run ended with.
#[derive(Clone, Debug)]
pub struct TrainReport {
    pub steps: u64,
    pub epochs: u64,
    pub samples: u64,
    /// mean training loss over the samples of this invocation
    pub train_loss: f64,
    pub train_samples_per_s: f64,
    pub skipped: u64,
    pub eval: Option<EvalMetrics>,
    /// stopped by --max-steps before the last epoch ended
    pub stopped_early: bool,
}

/// `dlrs train`, printing to stdout.
pub fn train(args: TrainArgs) -> Result<()> {
    let stdout = std::io::stdout();
    run_train(&args, &mut stdout.lock())?;
    Ok(())
}

/// `dlrs train`, printing progress lines (or JSON objects with `--json`) to `log`.
pub fn run_train(args: &TrainArgs, log: &mut dyn Write) -> Result<TrainReport> {
    if args.batch == 0 {
        bail!("--batch must be positive");
    }
    let rate = |flag: &str, v: f32| {
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(anyhow::anyhow!(
                "--{flag} must be a positive number, got {v}"
            ))
        }
    };
    rate("lr", args.lr)?;
    let sparse_lr = rate("sparse-lr", args.sparse_lr.unwrap_or(args.lr))?;
    let dense_lr = rate("dense-lr", args.dense_lr.unwrap_or(args.lr))?;
    let settings = Settings {
        batch: args.batch,
        sparse_lr,
        dense_lr,
        optimizer: args.optimizer.name().into(),
        dense_optimizer: args.dense_optimizer.name().into(),
        seed: args.seed,
        shuffle: args.shuffle,
        shuffle_window: args.shuffle_window,
    };
    let data = DataIdentity::of(&args.train)?;
    // the starting point
    let (model, opt, mut state) = if let Some(dir) = &args.resume {
        let dir = checkpoint::resolve_resume(dir)?;
        let mut st = checkpoint::read_state(&dir)?;
        settings.check_same(&st.settings)?;
        match (&st.data, &data) {
            _ if args.new_data => {
                st.epoch = 0;
                st.samples_in_epoch = 0;
                st.data = data.clone();
            }
            (Some(was), Some(now)) => was.check_same(now, &st)?,
            (None, _) => eprintln!(
                "warning: {} records no training data (written by an older dlrs, or trained \
                 from a pipe): cannot check that --train is the same data; resuming at sample {} \
                 of epoch {}",
                dir.display(),
                st.samples_in_epoch,
                st.epoch + 1
            ),
            (Some(was), None) => bail!(
                "--train {}: the checkpoint was trained on {}, and a pipe cannot be checked to \
                 be the same data; pass that file, or add --new-data",
                args.train.display(),
                was.path
            ),
        }
        let model = Model::load_with(&dir, TableMode::Ram)
            .with_context(|| format!("loading {}", dir.display()))?;
        check_trainable(&model)?;
        let opt = Optimizer::load(
            &model,
            &dir.join(checkpoint::OPTIMIZER_FILE),
            args.optimizer,
            args.dense_optimizer,
            sparse_lr,
            dense_lr,
        )?;
        if opt.step != st.step {
            bail!(
                "{}: optimizer state is at step {} but the training state at {}",
                dir.display(),
                opt.step,
                st.step
            );
        }
        (model, opt, st)
    } else {
        if args.out.exists() && args.out.join(checkpoint::STATE_FILE).exists() {
            bail!(
                "{} holds a training checkpoint: pass --resume {} to continue it, or choose another --out",
                args.out.display(),
                args.out.display()
            );
        }
        if args.out.is_dir()
            && std::fs::read_dir(&args.out)?.next().is_some()
            && !args.out.join(dlrs_model::forward::CONFIG_FILE).exists()
        {
            bail!(
                "{} exists and is not a model directory: refusing to replace it",
                args.out.display()
            );
        }
        let model = if let Some(dir) = &args.model {
            Model::load_with(dir, TableMode::Ram)
                .with_context(|| format!("loading {}", dir.display()))?
        } else {
            let name = args
                .preset
                .as_deref()
                .expect("clap requires --model, --preset or --resume");
            let (cfg, _) = preset_config(name, args.rows_cap)?;
            Model::random(cfg, args.seed)?
        };
        check_trainable(&model)?;
        let opt = Optimizer::with_rates(
            &model,
            args.optimizer,
            args.dense_optimizer,
            sparse_lr,
            dense_lr,
        );
        let st = TrainState {
            epoch: 0,
            samples_in_epoch: 0,
            step: 0,
            samples_total: 0,
            settings: settings.clone(),
            data: data.clone(),
        };
        (model, opt, st)
    };
    checkpoint::clean_stale(&args.out);
    let mut trainer = Trainer::new(model, opt, args.threads)?;
    let exec = Executor::new(args.threads)?;

    let mut report = TrainReport {
        steps: state.step,
        epochs: state.epoch,
        samples: 0,
        train_loss: 0.0,
        train_samples_per_s: 0.0,
        skipped: 0,
        eval: None,
        stopped_early: false,
    };
    let (mut loss_sum, mut train_secs) = (0.0f64, 0.0f64);
    let (mut window_loss, mut window_n, mut window_start) = (0.0f64, 0u64, 0.0f64);
    let max_steps = args.max_steps.unwrap_or(u64::MAX);
    // one eval: `window` = (loss sum, samples, seconds) of the training since the last one
    let do_eval = |trainer: &Trainer,
                   state: &TrainState,
                   window: (f64, u64, f64),
                   log: &mut dyn Write|
     -> Result<Option<EvalMetrics>> {
        let Some(p) = &args.eval else { return Ok(None) };
        let (m, skipped) = evaluate(&trainer.model, p, args.format, args.skip_bad, 1024, &exec)?;
        let train_loss = if window.1 > 0 {
            Some(window.0 / window.1 as f64)
        } else {
            None
        };
        let train_rate = if window.2 > 0.0 {
            Some(window.1 as f64 / window.2)
        } else {
            None
        };
        let warning = divergence_warning(train_loss, Some(&m), None, &trainer.opt);
        if let Some(w) = &warning {
            eprintln!("warning: epoch {} step {}: {w}", state.epoch, state.step);
        }
        if args.json {
            let mut v = json!({"event": "eval", "epoch": state.epoch, "step": state.step, "train_loss": train_loss,
                               "train_samples_per_s": train_rate});
            merge(&mut v, m.to_json());
            v["eval_skipped"] = json!(skipped);
            if let Some(w) = warning {
                v["warnings"] = json!([w]);
            }
            writeln!(log, "{v}")?;
        } else {
            let tl = train_loss.map_or_else(|| "n/a".into(), |l| format!("{l:.5}"));
            let tr = train_rate.map_or_else(String::new, |r| format!(" ({r:.0} samples/s)"));
            writeln!(
                log,
                "epoch {} step {}: train loss {tl}{tr}; eval {}",
                state.epoch,
                state.step,
                m.summary()
            )?;
        }
        log.flush()?;
        Ok(Some(m))
    };

    'epochs: while state.epoch < args.epochs && state.step < max_steps {
        let shuffle = args
            .shuffle
            .then(|| (shuffle_seed(args.seed, state.epoch), args.shuffle_window));
        let opts = StreamOptions {
            batch: args.batch,
            format: args.format,
            skip_bad: args.skip_bad,
            shuffle,
            skip_samples: state.samples_in_epoch,
        };
        let mut stream = BatchStream::open(&args.train, &trainer.model.config, opts)?;
        let bar = progress_bar(stream.file_bytes, args.json);
        let mut t = Instant::now();
        while let Some(lb) = stream.next_batch()? {
            let n = lb.labels.len() as u64;
            let loss = trainer.step(&lb.batch, &lb.labels);
            loss_sum += loss * n as f64;
            window_loss += loss * n as f64;
            window_n += n;
            report.samples += n;
            state.step += 1;
            state.samples_in_epoch += n;
            state.samples_total += n;
            if let Some(b) = &bar {
                b.set_position(stream.stats.bytes.load(Ordering::Relaxed));
                if state.step % 16 == 0 {
                    b.set_message(format!(
                        "epoch {} step {} loss {:.4}",
                        state.epoch + 1,
                        state.step,
                        window_loss / window_n as f64
                    ));
                }
            }
            let stop = state.step >= max_steps;
            let ckpt = args
                .checkpoint_every
                .is_some_and(|k| k > 0 && state.step % k == 0);
            let ev = args
                .eval_every
                .is_some_and(|k| k > 0 && state.step % k == 0);
            if stop || ckpt || ev {
                train_secs += t.elapsed().as_secs_f64();
                if ckpt || stop {
                    checkpoint::write(&args.out, &trainer.model, &trainer.opt, &state)?;
                }
                if ev && !stop {
                    report.eval = do_eval(
                        &trainer,
                        &state,
                        (window_loss, window_n, train_secs - window_start),
                        log,
                    )?;
                    (window_loss, window_n, window_start) = (0.0, 0, train_secs);
                }
                t = Instant::now();
            }
            if stop {
                report.stopped_early = true;
                report.skipped += stream.skipped();
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
                break 'epochs;
            }
        }
        train_secs += t.elapsed().as_secs_f64();
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        report.skipped += stream.skipped();
        for e in &stream.skipped_examples {
            eprintln!("skipped: {e}");
        }
        state.epoch += 1;
        state.samples_in_epoch = 0;
        checkpoint::write(&args.out, &trainer.model, &trainer.opt, &state)?;
        if state.epoch < args.epochs {
            report.eval = do_eval(
                &trainer,
                &state,
                (window_loss, window_n, train_secs - window_start),
                log,
            )?;
            (window_loss, window_n, window_start) = (0.0, 0, train_secs);
        }
    }
    if !args.out.join(checkpoint::STATE_FILE).exists() {
        // nothing to train (no epochs, or no data): still leave a complete output
        checkpoint::write(&args.out, &trainer.model, &trainer.opt, &state)?;
    }
    // the final evaluation
    if let Some(p) = &args.eval {
        report.eval = Some(evaluate(&trainer.model, p, args.format, args.skip_bad, 1024, &exec)?.0);
    }
    // judged on the training since the last eval, the final eval, or without --eval the
    // predictions of the last training batch
    let last_batch = (report.eval.is_none() && report.samples > 0)
        .then(|| metrics::saturated_fraction(trainer.ws.scores()));
    let warning = divergence_warning(
        (window_n > 0).then(|| window_loss / window_n as f64),
        report.eval.as_ref(),
        last_batch,
        &trainer.opt,
    );
    if let Some(w) = &warning {
        eprintln!("warning: at the end (step {}): {w}", state.step);
    }
    report.steps = state.step;
    report.epochs = state.epoch;
    report.train_loss = if report.samples > 0 {
        loss_sum / report.samples as f64
    } else {
        0.0
    };
    report.train_samples_per_s = if train_secs > 0.0 {
        report.samples as f64 / train_secs
    } else {
        0.0
    };
    let mut v = json!({
        "event": "final",
        "epochs": report.epochs,
        "steps": report.steps,
        "samples": report.samples,
        "train_loss": report.train_loss,
        "train_samples_per_s": report.train_samples_per_s,
        "skipped": report.skipped,
        "stopped_early": report.stopped_early,
        "out": args.out.display().to_string(),
    });
    if let Some(m) = &report.eval {
        v["eval"] = m.to_json();
    }
    if let Some(w) = warning {
        v["warnings"] = json!([w]);
    }
    if args.json {
        writeln!(log, "{v}")?;
    } else {
        writeln!(
            log,
            "done: {} epochs, {} steps, {} samples, train loss {:.5}, {:.0} samples/s{}; model in {}",
            report.epochs,
            report.steps,
            report.samples,
            report.train_loss,
            report.train_samples_per_s,
            if report.skipped > 0 {
                format!(", {} bad lines skipped", report.skipped)
            } else {
                String::new()
            },
            args.out.display()
        )?;
        if let Some(m) = &report.eval {
            writeln!(log, "eval: {}", m.summary())?;
        }
    }
    log.flush()?;
    Ok(report)
}

/// Above this fraction of saturated predictions (see [`metrics::saturated_fraction`]) a run
/// is taken to have diverged.
pub const SATURATED_LIMIT: f64 = 0.99;

/// The warning for a run that looks diverged, or `None`: the training loss (since the last
/// eval) or the eval log loss is not finite, or more than [`SATURATED_LIMIT`] of the eval's
/// predictions (without an eval: of the last training batch's, `train_saturated`) are
/// saturated. It names the optimizers and their learning rates and suggests rates ten times
/// lower.
pub fn divergence_warning(
    train_loss: Option<f64>,
    eval: Option<&EvalMetrics>,
    train_saturated: Option<f64>,
    opt: &Optimizer,
) -> Option<String> {
    let mut signs = Vec::new();
    if let Some(l) = train_loss.filter(|l| !l.is_finite()) {
        signs.push(format!("the training loss is {l}"));
    }
    if let Some(m) = eval.filter(|m| !m.log_loss.is_finite()) {
        signs.push(format!("the eval log loss is {}", m.log_loss));
    }
    let saturated = match eval {
        Some(m) => Some((m.saturated, "eval predictions")),
        None => train_saturated.map(|f| (f, "predictions of the last training batch")),
    };
    if let Some((f, of)) = saturated.filter(|(f, _)| *f > SATURATED_LIMIT) {
        signs.push(format!(
            "{:.1}% of the {of} are saturated (below {:e} or above 1 - {:e}, or NaN)",
            100.0 * f,
            metrics::SATURATION_EPS,
            metrics::SATURATION_EPS
        ));
    }
    if signs.is_empty() {
        return None;
    }
    let tenth = |lr: f32| -> String {
        // three significant digits, shown without an exponent where short
        let v: f64 = format!("{:.2e}", lr as f64 / 10.0).parse().unwrap_or(0.0);
        v.to_string()
    };
    Some(format!(
        "training looks diverged: {}; tables: {} at lr {}, MLPs: {} at lr {}; \
         try lower learning rates, e.g. --sparse-lr {} --dense-lr {}",
        signs.join("; "),
        opt.sparse.name(),
        opt.sparse_lr,
        opt.dense.name(),
        opt.dense_lr,
        tenth(opt.sparse_lr),
        tenth(opt.dense_lr)
    ))
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, from) {
        a.extend(b);
    }
}

fn progress_bar(total: Option<u64>, quiet: bool) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n).with_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        ),
        None => indicatif::ProgressBar::new_spinner(),
    };
    Some(bar)
}

/// `dlrs eval`, printing to stdout.
pub fn eval(args: EvalArgs) -> Result<()> {
    let stdout = std::io::stdout();
    run_eval(&args, &mut stdout.lock())?;
    Ok(())
}

/// `dlrs eval`, printing to `log`.
pub fn run_eval(args: &EvalArgs, log: &mut dyn Write) -> Result<EvalMetrics> {
    let model =
        Model::load(&args.model).with_context(|| format!("loading {}", args.model.display()))?;
    let exec = Executor::new(args.threads)?;
    let (m, skipped) = evaluate(
        &model,
        &args.data,
        args.format,
        args.skip_bad,
        args.batch,
        &exec,
    )?;
    if args.json {
        let mut v = m.to_json();
        v["skipped"] = json!(skipped);
        writeln!(log, "{v}")?;
    } else {
        writeln!(log, "{}", m.summary())?;
        if skipped > 0 {
            writeln!(log, "{skipped} bad lines skipped")?;
        }
    }
    Ok(m)
}

/// `dlrs synth`.
pub fn synth(args: SynthArgs) -> Result<()> {
    let stdout = std::io::stdout();
    run_synth(&args, &mut stdout.lock())
}

/// `dlrs synth`, with the summary line to `log` (stderr when the samples go to stdout).
pub fn run_synth(args: &SynthArgs, log: &mut dyn Write) -> Result<()> {
    let dist = IdDist::parse(&args.dist)?;
    let exec = Executor::new(args.threads)?;
    if !(args.ctr > 0.0 && args.ctr < 1.0) {
        bail!("--ctr must be between 0 and 1");
    }
    let shape = synth::TeacherShape {
        emb_scale: args.emb_scale,
        logit_scale: args.logit_scale,
        ctr: args.ctr,
    };
    let (random, default_ids) = if let Some(name) = &args.preset {
        let (cfg, ids) = preset_config(name, args.rows_cap)?;
        (Some(cfg), ids)
    } else {
        (None, 1)
    };
    let ids = args.ids_per_table.unwrap_or(default_ids);
    let seed = args.seed.unwrap_or(args.teacher);
    let teacher = match random {
        Some(cfg) => {
            let m = exec.install(|| Model::random(cfg, args.teacher))?;
            synth::make_teacher(m, shape, ids, dist, args.teacher, &exec)?
        }
        None => {
            let dir = args
                .model
                .as_ref()
                .expect("clap requires --preset or --model");
            if args.use_weights {
                Model::load(dir).with_context(|| format!("loading {}", dir.display()))?
            } else {
                let m = Model::load(dir).with_context(|| format!("loading {}", dir.display()))?;
                let m = exec.install(|| Model::random(m.config.clone(), args.teacher))?;
                synth::make_teacher(m, shape, ids, dist, args.teacher, &exec)?
            }
        }
    };
    if let Some(dir) = &args.save_teacher {
        teacher
            .save(dir)
            .with_context(|| format!("writing the teacher to {}", dir.display()))?;
    }
    let to_stdout = args.out.as_os_str() == "-";
    let t0 = Instant::now();
    let clicks = if to_stdout {
        let stdout = std::io::stdout();
        let mut w = BufWriter::new(stdout.lock());
        let c = synth::write_samples(&teacher, args.rows, ids, dist, seed, &exec, &mut w)?;
        w.flush()?;
        c
    } else {
        let mut clicks = 0;
        dlrs_model::weights::atomic_write(&args.out, |tmp| {
            let f = BufWriter::with_capacity(1 << 20, std::fs::File::create(tmp)?);
            let write = |w: &mut dyn Write| {
                synth::write_samples(&teacher, args.rows, ids, dist, seed, &exec, w)
                    .map_err(std::io::Error::other)
            };
            if args.out.extension().is_some_and(|e| e == "gz") {
                let mut enc = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
                clicks = write(&mut enc)?;
                enc.finish()?.flush()?;
            } else {
                let mut f = f;
                clicks = write(&mut f)?;
                f.flush()?;
            }
            Ok(())
        })?;
        clicks
    };
    let msg = format!(
        "wrote {} samples ({} clicks, ctr {:.4}) to {} in {:.1}s",
        args.rows,
        clicks,
        clicks as f64 / args.rows.max(1) as f64,
        args.out.display(),
        t0.elapsed().as_secs_f64()
    );
    if to_stdout {
        eprintln!("{msg}");
    } else {
        writeln!(log, "{msg}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{DenseOptimizer, SparseOptimizer};

    fn opt() -> Optimizer {
        let cfg = DlrmConfig::from_json_str(
            r#"{"arch_mlp_bot":"4-8","arch_mlp_top":"16-1","arch_embedding_size":"10-10",
                "arch_sparse_feature_size":8,"arch_interaction_op":"dot"}"#,
        )
        .unwrap();
        let m = Model::random(cfg, 0).unwrap();
        Optimizer::with_rates(
            &m,
            SparseOptimizer::Adagrad,
            DenseOptimizer::Adam,
            0.05,
            0.003,
        )
    }

    #[test]
    fn divergence_warning_conditions() {
        let o = opt();
        let scores = |sat: usize| -> Vec<f32> {
            (0..1000)
                .map(|i| match i {
                    i if i < sat / 2 => 0.0,
                    i if i < sat => 1.0,
                    _ => 0.3,
                })
                .collect()
        };
        let labels: Vec<f32> = (0..1000).map(|i| (i % 3 == 0) as u8 as f32).collect();
        let m = |sat| EvalMetrics::compute(&scores(sat), &labels, 1.0);
        // healthy, and at the limit (99.0% is not above 99%)
        assert_eq!(divergence_warning(Some(0.5), Some(&m(0)), None, &o), None);
        assert_eq!(divergence_warning(Some(0.5), Some(&m(990)), None, &o), None);
        let w = divergence_warning(Some(0.5), Some(&m(995)), None, &o).unwrap();
        assert!(
            w.contains("99.5% of the eval predictions are saturated"),
            "{w}"
        );
        assert!(
            w.contains("tables: adagrad at lr 0.05, MLPs: adam at lr 0.003")
                && w.contains("--sparse-lr 0.005 --dense-lr 0.0003"),
            "{w}"
        );
        // NaN predictions count as saturated
        let mut nan = scores(0);
        nan.iter_mut().take(995).for_each(|p| *p = f32::NAN);
        let mn = EvalMetrics::compute(&nan, &labels, 1.0);
        assert!(divergence_warning(None, Some(&mn), None, &o).is_some());
        // a loss that is not finite
        let w = divergence_warning(Some(f64::NAN), Some(&m(0)), None, &o).unwrap();
        assert!(w.contains("the training loss is NaN"), "{w}");
        let mut inf = m(0);
        inf.log_loss = f64::INFINITY;
        assert!(
            divergence_warning(None, Some(&inf), None, &o)
                .unwrap()
                .contains("eval log loss is inf")
        );
        // without an eval: the last training batch's predictions
        let w = divergence_warning(Some(0.7), None, Some(1.0), &o).unwrap();
        assert!(
            w.contains("100.0% of the predictions of the last training batch"),
            "{w}"
        );
        assert_eq!(divergence_warning(Some(0.7), None, Some(0.5), &o), None);
    }
}
