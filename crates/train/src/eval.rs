//! `dlrs eval`, and the evaluation the training loop runs: a model scored on labelled data
//! through the inference path of `predict`.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use dlrs_model::{Executor, Model, Workspace};
use serde_json::json;

use crate::config::EvalConfig;
use crate::data::{BatchStream, DataFormat, StreamOptions};
use crate::error::{Result, TrainError};
use crate::metrics::EvalMetrics;

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
    while let Some(mut lb) = stream.next_batch()? {
        // collisionless tables: look the ids up (no admission while evaluating)
        model.resolve_keys(&mut lb.batch, &lb.keys)?;
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

/// `dlrs eval`, printing to stdout.
pub fn eval(cfg: EvalConfig) -> Result<()> {
    let stdout = std::io::stdout();
    run_eval(&cfg, &mut stdout.lock())?;
    Ok(())
}

/// `dlrs eval`, printing to `log`.
pub fn run_eval(cfg: &EvalConfig, log: &mut dyn Write) -> Result<EvalMetrics> {
    let model = Model::load(&cfg.model).map_err(|err| TrainError::Load {
        dir: cfg.model.clone(),
        err,
    })?;
    let exec = Executor::new(cfg.threads)?;
    let (m, skipped) = evaluate(
        &model,
        &cfg.data,
        cfg.format,
        cfg.skip_bad,
        cfg.batch,
        &exec,
    )?;
    if cfg.json {
        let mut v = m.to_json();
        v["skipped"] = json!(skipped);
        writeln!(log, "{v}").map_err(TrainError::Output)?;
    } else {
        writeln!(log, "{}", m.summary()).map_err(TrainError::Output)?;
        if skipped > 0 {
            writeln!(log, "{skipped} bad lines skipped").map_err(TrainError::Output)?;
        }
    }
    Ok(m)
}
