//! `dlrs train`: the training loop.
//!
//! A [`TrainLoop`] is one run. [`TrainLoop::new`] chooses the starting point: a model
//! directory or a preset (a new run), or a checkpoint (`resume`: the settings, the optimizer
//! step and the identity of the data must be the checkpoint's, unless `new_data`).
//! [`TrainLoop::run`] then trains epoch by epoch from the state's position, a step per
//! batch, checkpointing and evaluating at the end of every epoch (and every
//! `checkpoint_every` / `eval_every` steps), stops at `max_steps`, runs the final eval and
//! writes the report. Eval lines and the report go to the caller's output (`log`); warnings
//! (divergence, skipped lines, an unchecked resume) are `tracing` events.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use dlrs_model::{Executor, Model, TableMode};
use serde_json::{Value, json};

use crate::Trainer;
use crate::checkpoint::{self, DataIdentity, Settings, TrainState};
use crate::config::{TrainConfig, exactly_one, preset_config};
use crate::data::{BatchStream, LabelledBatch, StreamOptions};
use crate::error::{Result, TrainError};
use crate::eval::evaluate;
use crate::metrics::{self, EvalMetrics};
use crate::net::check_trainable;
use crate::optim::Optimizer;

/// Samples per batch of the evals.
const EVAL_BATCH: usize = 1024;

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
    /// stopped by `max_steps` before the last epoch ended
    pub stopped_early: bool,
    /// raw ids of collisionless tables that got no row while training (not yet admitted,
    /// or no room)
    pub id_misses: u64,
}

/// `dlrs train`, printing to stdout.
pub fn train(cfg: TrainConfig) -> Result<()> {
    let stdout = std::io::stdout();
    TrainLoop::new(cfg)?.run(&mut stdout.lock())?;
    Ok(())
}

/// `dlrs train`, printing progress lines (or JSON objects with `json`) to `log`.
pub fn run_train(cfg: &TrainConfig, log: &mut dyn Write) -> Result<TrainReport> {
    TrainLoop::new(cfg.clone())?.run(log)
}

/// Where a run starts.
enum Start<'a> {
    Model(&'a Path),
    Preset(&'a str),
    Resume(&'a Path),
}

/// The training since the last eval (or the start): what an eval line reports as the
/// training loss and speed, and what the final divergence check judges.
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    /// sum of the batch losses times their sizes
    loss: f64,
    samples: u64,
    /// training seconds of the run when the window opened
    start: f64,
}

impl Window {
    fn mean_loss(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.loss / self.samples as f64)
    }
}

/// One training run (see the module doc): a [`Trainer`] and where it is in the data, the
/// counters of the report, and the clock of the training time (evals and checkpoints not
/// counted).
pub struct TrainLoop {
    cfg: TrainConfig,
    trainer: Trainer,
    /// the evals' executor
    exec: Executor,
    state: TrainState,
    report: TrainReport,
    /// loss sum over the samples of this invocation
    loss_sum: f64,
    /// seconds spent training so far
    train_secs: f64,
    /// when the running stretch of training began
    lap: Instant,
    window: Window,
    max_steps: u64,
}

impl TrainLoop {
    /// Checks the settings and chooses the starting point: a new run from `model` or
    /// `preset` (refusing an `out` that holds a checkpoint, or files that are not a model),
    /// or a resume from the checkpoint in `resume`.
    pub fn new(cfg: TrainConfig) -> Result<Self> {
        let start = start_point(&cfg)?;
        if cfg.new_data && !matches!(start, Start::Resume(_)) {
            return Err(TrainError::Setting {
                flag: "new-data",
                msg: "only goes with --resume (a new run starts on its data anyway)".into(),
            });
        }
        if !cfg.id_maps.is_empty() && !matches!(start, Start::Preset(_)) {
            return Err(TrainError::Setting {
                flag: "id-map",
                msg: "only goes with --preset (a model directory's config.json sets its id maps; `dlrs init --id-map` writes one)".into(),
            });
        }
        let settings = settings(&cfg)?;
        let data = DataIdentity::of(&cfg.train)?;
        let (model, opt, state) = match start {
            Start::Resume(dir) => resume(&cfg, dir, settings, data)?,
            Start::Model(dir) => {
                check_out(&cfg.out)?;
                let model =
                    Model::load_with(dir, TableMode::Ram).map_err(|err| TrainError::Load {
                        dir: dir.to_path_buf(),
                        err,
                    })?;
                fresh(&cfg, model, settings, data)?
            }
            Start::Preset(name) => {
                check_out(&cfg.out)?;
                let (c, _) = preset_config(name, cfg.rows_cap)?;
                let c = dlrs_model::tables::idmap::apply_id_map_flags(c, &cfg.id_maps)?;
                fresh(&cfg, Model::random(c, cfg.seed)?, settings, data)?
            }
        };
        checkpoint::clean_stale(&cfg.out);
        let trainer = Trainer::new(model, opt, cfg.threads)?;
        let exec = Executor::new(cfg.threads)?;
        let report = TrainReport {
            steps: state.step,
            epochs: state.epoch,
            samples: 0,
            train_loss: 0.0,
            train_samples_per_s: 0.0,
            skipped: 0,
            eval: None,
            stopped_early: false,
            id_misses: 0,
        };
        Ok(TrainLoop {
            max_steps: cfg.max_steps.unwrap_or(u64::MAX),
            cfg,
            trainer,
            exec,
            state,
            report,
            loss_sum: 0.0,
            train_secs: 0.0,
            lap: Instant::now(),
            window: Window::default(),
        })
    }

    /// Where the run is: at the start, the checkpoint's position (or zero).
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// The model, its optimizer and the step buffers.
    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }

    /// Trains to the end (`epochs` epochs, or `max_steps` steps in all), then runs the
    /// final eval and writes the report to `log`.
    pub fn run(mut self, log: &mut dyn Write) -> Result<TrainReport> {
        while self.state.epoch < self.cfg.epochs && self.state.step < self.max_steps {
            if self.epoch(log)? {
                break;
            }
        }
        self.finish(log)
    }

    /// The rest of the current epoch, from the state's position in it; `true` when
    /// `max_steps` stopped it.
    fn epoch(&mut self, log: &mut dyn Write) -> Result<bool> {
        let cfg = &self.cfg;
        let opts = StreamOptions {
            batch: cfg.batch,
            format: cfg.format,
            skip_bad: cfg.skip_bad,
            shuffle: cfg
                .shuffle
                .then(|| (shuffle_seed(cfg.seed, self.state.epoch), cfg.shuffle_window)),
            skip_samples: self.state.samples_in_epoch,
        };
        let mut stream = BatchStream::open(&cfg.train, &self.trainer.model.config, opts)?;
        let progress = Progress::new(stream.file_bytes, cfg.json);
        self.lap = Instant::now();
        while let Some(mut lb) = stream.next_batch()? {
            self.step(&mut lb)?;
            progress.update(&stream, &self.state, &self.window);
            if self.after_step(log)? {
                self.report.stopped_early = true;
                self.report.skipped += stream.skipped();
                progress.finish();
                return Ok(true);
            }
        }
        self.clock();
        progress.finish();
        self.report.skipped += stream.skipped();
        for e in &stream.skipped_examples {
            tracing::warn!("skipped: {e}");
        }
        self.state.epoch += 1;
        self.state.samples_in_epoch = 0;
        self.checkpoint()?;
        if self.state.epoch < self.cfg.epochs {
            self.eval(log)?;
        }
        Ok(false)
    }

    /// One optimizer step on a batch, counted.
    fn step(&mut self, lb: &mut LabelledBatch) -> Result<()> {
        let n = lb.labels.len() as u64;
        let loss = if lb.keys.is_empty() {
            self.trainer.step(&lb.batch, &lb.labels)
        } else {
            let misses =
                self.trainer
                    .resolve_train(&mut lb.batch, &lb.keys, self.state.step + 1)?;
            self.report.id_misses += misses as u64;
            self.trainer.step_keyed(&lb.batch, &lb.labels)
        };
        self.loss_sum += loss * n as f64;
        self.window.loss += loss * n as f64;
        self.window.samples += n;
        self.report.samples += n;
        self.state.step += 1;
        self.state.samples_in_epoch += n;
        self.state.samples_total += n;
        Ok(())
    }

    /// The checkpoint and the eval due after a step (every `checkpoint_every` and
    /// `eval_every` steps; a checkpoint and no eval at `max_steps`); `true` at `max_steps`.
    fn after_step(&mut self, log: &mut dyn Write) -> Result<bool> {
        let step = self.state.step;
        let every = |k: Option<u64>| k.is_some_and(|k| k > 0 && step.is_multiple_of(k));
        let stop = step >= self.max_steps;
        let ckpt = every(self.cfg.checkpoint_every);
        let ev = every(self.cfg.eval_every);
        if stop || ckpt || ev {
            self.clock();
            if ckpt || stop {
                self.checkpoint()?;
            }
            if ev && !stop {
                self.eval(log)?;
            }
            self.lap = Instant::now();
        }
        Ok(stop)
    }

    /// Adds the running stretch to the training time.
    fn clock(&mut self) {
        self.train_secs += self.lap.elapsed().as_secs_f64();
    }

    /// Writes the model, the optimizer and the state to `out` (atomically).
    fn checkpoint(&self) -> Result<()> {
        checkpoint::write(
            &self.cfg.out,
            &self.trainer.model,
            &self.trainer.opt,
            &self.state,
        )
    }

    /// The eval of an epoch's end or of `eval_every` (nothing without `eval` data), then a
    /// new window.
    fn eval(&mut self, log: &mut dyn Write) -> Result<()> {
        let m = match &self.cfg.eval {
            Some(p) => Some(self.eval_on(p, log)?),
            None => None,
        };
        self.report.eval = m;
        self.window = Window {
            start: self.train_secs,
            ..Window::default()
        };
        Ok(())
    }

    /// Scores the model on `path` and writes the eval line (or JSON object) to `log`, with
    /// the training loss and speed of the window, and a divergence warning when due.
    fn eval_on(&self, path: &Path, log: &mut dyn Write) -> Result<EvalMetrics> {
        let cfg = &self.cfg;
        let (m, skipped) = evaluate(
            &self.trainer.model,
            path,
            cfg.format,
            cfg.skip_bad,
            EVAL_BATCH,
            &self.exec,
        )?;
        let train_loss = self.window.mean_loss();
        let secs = self.train_secs - self.window.start;
        let train_rate = (secs > 0.0).then(|| self.window.samples as f64 / secs);
        let (epoch, step) = (self.state.epoch, self.state.step);
        let warning = divergence_warning(train_loss, Some(&m), None, &self.trainer.opt);
        if let Some(w) = &warning {
            tracing::warn!(epoch, step, "{w}");
        }
        if cfg.json {
            let mut v = json!({"event": "eval", "epoch": epoch, "step": step, "train_loss": train_loss,
                               "train_samples_per_s": train_rate});
            merge(&mut v, m.to_json());
            v["eval_skipped"] = json!(skipped);
            if let Some(w) = warning {
                v["warnings"] = json!([w]);
            }
            writeln!(log, "{v}").map_err(TrainError::Output)?;
        } else {
            let tl = train_loss.map_or_else(|| "n/a".into(), |l| format!("{l:.5}"));
            let tr = train_rate.map_or_else(String::new, |r| format!(" ({r:.0} samples/s)"));
            writeln!(
                log,
                "epoch {epoch} step {step}: train loss {tl}{tr}; eval {}",
                m.summary()
            )
            .map_err(TrainError::Output)?;
        }
        log.flush().map_err(TrainError::Output)?;
        Ok(m)
    }

    /// The end: a checkpoint if none was written (no epochs, or no data), the final eval,
    /// the divergence check, and the report.
    fn finish(mut self, log: &mut dyn Write) -> Result<TrainReport> {
        if !self.cfg.out.join(checkpoint::STATE_FILE).exists() {
            self.checkpoint()?;
        }
        if let Some(p) = &self.cfg.eval {
            let (m, _) = evaluate(
                &self.trainer.model,
                p,
                self.cfg.format,
                self.cfg.skip_bad,
                EVAL_BATCH,
                &self.exec,
            )?;
            self.report.eval = Some(m);
        }
        // judged on the training since the last eval, the final eval, or without an eval the
        // predictions of the last training batch
        let last_batch = (self.report.eval.is_none() && self.report.samples > 0)
            .then(|| metrics::saturated_fraction(self.trainer.ws.scores()));
        let warning = divergence_warning(
            self.window.mean_loss(),
            self.report.eval.as_ref(),
            last_batch,
            &self.trainer.opt,
        );
        if let Some(w) = &warning {
            tracing::warn!(step = self.state.step, "at the end: {w}");
        }
        let report = &mut self.report;
        report.steps = self.state.step;
        report.epochs = self.state.epoch;
        report.train_loss = if report.samples > 0 {
            self.loss_sum / report.samples as f64
        } else {
            0.0
        };
        report.train_samples_per_s = if self.train_secs > 0.0 {
            report.samples as f64 / self.train_secs
        } else {
            0.0
        };
        write_report(&self.report, &self.cfg, warning, log)?;
        Ok(self.report)
    }
}

/// A new run's trainer on `model`, as `dlrs train --model DIR` starts one: `cfg`'s
/// optimizers and learning rates (checked as the command checks them), fresh optimizer
/// state, `cfg.threads` threads; and the run's state at step 0 (its data unrecorded). Its
/// steps are the command's when fed the same batches in the same order.
pub fn start_fresh(cfg: &TrainConfig, model: Model) -> Result<(Trainer, TrainState)> {
    let (model, opt, state) = fresh(cfg, model, settings(cfg)?, None)?;
    Ok((Trainer::new(model, opt, cfg.threads)?, state))
}

/// The one starting point of `cfg`.
fn start_point(cfg: &TrainConfig) -> Result<Start<'_>> {
    exactly_one(
        &["model", "preset", "resume"],
        [
            cfg.model.as_deref().map(Start::Model),
            cfg.preset.as_deref().map(Start::Preset),
            cfg.resume.as_deref().map(Start::Resume),
        ],
    )
}

/// The settings a checkpoint records (and a resume must repeat): `batch` positive, each
/// learning rate finite and positive.
fn settings(cfg: &TrainConfig) -> Result<Settings> {
    if cfg.batch == 0 {
        return Err(TrainError::setting("batch", "must be positive"));
    }
    let rate = |flag: &'static str, v: f32| {
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(TrainError::setting(
                flag,
                format!("must be a positive number, got {v}"),
            ))
        }
    };
    rate("lr", cfg.lr)?;
    Ok(Settings {
        batch: cfg.batch,
        sparse_lr: rate("sparse-lr", cfg.sparse_lr.unwrap_or(cfg.lr))?,
        dense_lr: rate("dense-lr", cfg.dense_lr.unwrap_or(cfg.lr))?,
        optimizer: cfg.optimizer.name().into(),
        dense_optimizer: cfg.dense_optimizer.name().into(),
        seed: cfg.seed,
        shuffle: cfg.shuffle,
        shuffle_window: cfg.shuffle_window,
    })
}

/// A new run's `out`: refused when it holds a checkpoint (that is a `--resume`) or files
/// that are not a model directory (they would be replaced).
fn check_out(out: &Path) -> Result<()> {
    if out.exists() && out.join(checkpoint::STATE_FILE).exists() {
        return Err(TrainError::OutHoldsCheckpoint {
            out: out.to_path_buf(),
        });
    }
    if out.is_dir()
        && std::fs::read_dir(out)
            .map_err(TrainError::io("reading", out))?
            .next()
            .is_some()
        && !out.join(dlrs_model::CONFIG_FILE).exists()
    {
        return Err(TrainError::OutNotModel {
            out: out.to_path_buf(),
        });
    }
    Ok(())
}

/// A new run from `model`: a fresh optimizer, step 0.
fn fresh(
    cfg: &TrainConfig,
    model: Model,
    settings: Settings,
    data: Option<DataIdentity>,
) -> Result<(Model, Optimizer, TrainState)> {
    check_trainable(&model)?;
    let opt = Optimizer::with_rates(
        &model,
        cfg.optimizer,
        cfg.dense_optimizer,
        settings.sparse_lr,
        settings.dense_lr,
    );
    let state = TrainState {
        epoch: 0,
        samples_in_epoch: 0,
        step: 0,
        samples_total: 0,
        settings,
        data,
    };
    Ok((model, opt, state))
}

/// The checkpoint in `dir` (or the `.DIR.old-*` a crash left), checked: the settings must
/// be the checkpoint's, the data too (see [`resume_data`]), and the optimizer state at the
/// training state's step.
fn resume(
    cfg: &TrainConfig,
    dir: &Path,
    settings: Settings,
    data: Option<DataIdentity>,
) -> Result<(Model, Optimizer, TrainState)> {
    let dir = checkpoint::resolve_resume(dir)?;
    let mut state = checkpoint::read_state(&dir)?;
    settings.check_same(&state.settings)?;
    resume_data(cfg, &dir, &mut state, data)?;
    let model = Model::load_with(&dir, TableMode::Ram).map_err(|err| TrainError::Load {
        dir: dir.clone(),
        err,
    })?;
    check_trainable(&model)?;
    let opt = Optimizer::load(
        &model,
        &dir.join(checkpoint::OPTIMIZER_FILE),
        cfg.optimizer,
        cfg.dense_optimizer,
        settings.sparse_lr,
        settings.dense_lr,
    )?;
    if opt.step != state.step {
        return Err(TrainError::checkpoint(
            &dir,
            format!(
                "optimizer state is at step {} but the training state at {}",
                opt.step, state.step
            ),
        ));
    }
    Ok((model, opt, state))
}

/// The data of a resume: with `new_data`, the new data from its first sample (epoch 0);
/// otherwise the checkpoint's data, checked by size and head hash (a checkpoint that
/// records none resumes with a warning; a pipe cannot be checked and is refused).
fn resume_data(
    cfg: &TrainConfig,
    dir: &Path,
    state: &mut TrainState,
    data: Option<DataIdentity>,
) -> Result<()> {
    if cfg.new_data {
        state.epoch = 0;
        state.samples_in_epoch = 0;
        state.data = data;
        return Ok(());
    }
    match (&state.data, &data) {
        (Some(was), Some(now)) => was.check_same(now, state),
        (None, _) => {
            tracing::warn!(
                "{} records no training data (written by an older dlrs, or trained from a \
                 pipe): cannot check that --train is the same data; resuming at sample {} of \
                 epoch {}",
                dir.display(),
                state.samples_in_epoch,
                state.epoch + 1
            );
            Ok(())
        }
        (Some(was), None) => Err(TrainError::UncheckableData {
            given: cfg.train.clone(),
            trained_on: was.path.clone(),
        }),
    }
}

/// The final report on `log`: a JSON object with `json`, else the `done:` line and the
/// final eval's.
fn write_report(
    report: &TrainReport,
    cfg: &TrainConfig,
    warning: Option<String>,
    log: &mut dyn Write,
) -> Result<()> {
    if cfg.json {
        let mut v = json!({
            "event": "final",
            "epochs": report.epochs,
            "steps": report.steps,
            "samples": report.samples,
            "train_loss": report.train_loss,
            "train_samples_per_s": report.train_samples_per_s,
            "skipped": report.skipped,
            "stopped_early": report.stopped_early,
            "out": cfg.out.display().to_string(),
        });
        if let Some(m) = &report.eval {
            v["eval"] = m.to_json();
        }
        if let Some(w) = warning {
            v["warnings"] = json!([w]);
        }
        writeln!(log, "{v}").map_err(TrainError::Output)?;
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
            cfg.out.display()
        )
        .map_err(TrainError::Output)?;
        if let Some(m) = &report.eval {
            writeln!(log, "eval: {}", m.summary()).map_err(TrainError::Output)?;
        }
    }
    log.flush().map_err(TrainError::Output)
}

fn shuffle_seed(seed: u64, epoch: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(&epoch.to_le_bytes(), seed)
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, from) {
        a.extend(b);
    }
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

/// The progress bar on stderr: bytes of the data read, the epoch, step and loss (on a
/// terminal only, and not with `json`).
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(total: Option<u64>, quiet: bool) -> Self {
        use std::io::IsTerminal;
        if quiet || !std::io::stderr().is_terminal() {
            return Progress(None);
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
        Progress(Some(bar))
    }

    fn update(&self, stream: &BatchStream, state: &TrainState, window: &Window) {
        if let Some(b) = &self.0 {
            b.set_position(stream.stats.bytes.load(Ordering::Relaxed));
            if state.step.is_multiple_of(16) {
                b.set_message(format!(
                    "epoch {} step {} loss {:.4}",
                    state.epoch + 1,
                    state.step,
                    window.loss / window.samples as f64
                ));
            }
        }
    }

    fn finish(self) {
        if let Some(b) = self.0 {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use dlrs_model::DlrmConfig;

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
