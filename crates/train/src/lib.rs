//! dlrs train: DLRM training on CPU.
//!
//! - [`net`]: forward with saved activations, BCE loss, backward (dense and sparse gradients).
//! - [`optim`]: SGD / Adagrad / row-wise Adagrad for tables, SGD / Adagrad / Adam for MLPs.
//! - [`data`]: streaming JSON Lines and Criteo TSV readers (gzip/zstd), batches, shuffle.
//! - [`metrics`]: AUC, log loss, normalized entropy, calibration.
//! - [`synth`](mod@synth): labelled samples from a random teacher DLRM; `dlrs synth`.
//! - [`checkpoint`]: atomic checkpoints with optimizer state; resume.
//! - [`train_loop`]: the [`TrainLoop`] of `dlrs train`; [`eval`](mod@eval): `dlrs eval`.
//! - [`config`]: what the commands are asked to do; [`error`]: what went wrong.
//!
//! The commands are [`train`], [`eval()`] and [`synth()`], configured by [`TrainConfig`],
//! [`EvalConfig`] and [`SynthConfig`] (the `dlrs` binary parses its flags into them).
//!
//! ```no_run
//! use dlrs_train::{TrainConfig, run_train};
//!
//! let cfg = TrainConfig {
//!     preset: Some("criteo-kaggle".into()),
//!     rows_cap: Some(100_000),
//!     epochs: 2,
//!     ..TrainConfig::new("day_0.tsv.gz", "out")
//! };
//! let report = run_train(&cfg, &mut std::io::stdout())?;
//! println!("{} steps", report.steps);
//! # Ok::<(), dlrs_train::TrainError>(())
//! ```

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod metrics;
pub mod net;
pub mod optim;
pub mod synth;
pub mod train_loop;

use dlrs_model::{Batch, Model};

pub use crate::config::{EvalConfig, SynthConfig, TrainConfig};
pub use crate::error::{Result, SettingChange, TrainError};
pub use crate::eval::{eval, evaluate, run_eval};
pub use crate::synth::{run_synth, synth};
pub use crate::train_loop::{
    SATURATED_LIMIT, TrainLoop, TrainReport, divergence_warning, run_train, start_fresh, train,
};

use crate::net::{TrainWorkspace, check_trainable};
use crate::optim::{Optimizer, SparseOptimizer};

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
            .map_err(TrainError::ThreadPool)?;
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
