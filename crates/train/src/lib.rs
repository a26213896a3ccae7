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

use dlrs_model::tables::idmap::KeyBags;
use dlrs_model::tables::idmap::collisionless::bags_of;
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

    /// Turns the keys of the collisionless tables of a training batch into rows (`keys`:
    /// one [`KeyBags`] per table, as [`data::LabelledBatch::keys`]) at step `step`: ids are
    /// counted, admitted, inserted and expired or evicted by each map's policy (see
    /// `dlrs_model::tables::idmap::collisionless`), and every row given to a new id is
    /// reset first: its weights to a fresh draw of the tables' initial distribution,
    /// U(±sqrt(1/rows)) seeded by the table, row and step, and its optimizer state to zero.
    /// Returns the misses (ids not admitted, or no room).
    pub fn resolve_train(
        &mut self,
        batch: &mut Batch,
        keys: &[KeyBags],
        step: u64,
    ) -> Result<usize> {
        let mut misses = 0;
        let (mut rows, mut fresh) = (Vec::new(), Vec::new());
        let dim = self.model.config.dim;
        for (t, k) in keys.iter().enumerate() {
            let Some(Some(map)) = self.model.id_maps.get_mut(t) else {
                continue;
            };
            let now = if map.clock_in_seconds() {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs().min(u32::MAX as u64) as u32)
            } else {
                step.min(u32::MAX as u64) as u32
            };
            fresh.clear();
            map.train_step(&k.keys, now, &mut rows, &mut fresh);
            let r = bags_of(&k.offsets, &rows, map.default_row());
            misses += r.misses;
            let table_rows = self.model.config.tables[t];
            let w = optim::table_f32_mut(&mut self.model.weights.tables[t]);
            let bound = (1.0 / table_rows as f64).sqrt() as f32;
            for &row in &fresh {
                let seed = xxhash_rust::xxh3::xxh3_64_with_seed(
                    &[(row as u64).to_le_bytes(), step.to_le_bytes()].concat(),
                    t as u64,
                );
                let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(seed);
                for v in &mut w[row as usize * dim..][..dim] {
                    *v = rand::Rng::random_range(&mut rng, -bound..bound);
                }
            }
            self.opt.reset_rows(t, &fresh);
            batch
                .set_bags(&self.model.config, t, r.bags)
                .map_err(TrainError::Model)?;
        }
        Ok(misses)
    }

    /// [`Trainer::step`], leaving every shared default row (`miss=default`) as it was:
    /// misses get no gradient.
    pub fn step_keyed(&mut self, batch: &Batch, labels: &[f32]) -> f64 {
        let dim = self.model.config.dim;
        let defaults: Vec<(usize, u32)> = self
            .model
            .id_maps
            .iter()
            .enumerate()
            .filter_map(|(t, m)| Some((t, m.as_ref()?.default_row()?)))
            .collect();
        let saved: Vec<(Vec<f32>, Vec<f32>)> = defaults
            .iter()
            .map(|&(t, r)| {
                let w = optim::table_f32_mut(&mut self.model.weights.tables[t]);
                (
                    w[r as usize * dim..][..dim].to_vec(),
                    self.opt.row_state(t, r),
                )
            })
            .collect();
        let loss = self.step(batch, labels);
        for (&(t, r), (w0, s0)) in defaults.iter().zip(saved) {
            let w = optim::table_f32_mut(&mut self.model.weights.tables[t]);
            w[r as usize * dim..][..dim].copy_from_slice(&w0);
            self.opt.set_row_state(t, r, &s0);
        }
        loss
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
