//! The DLRM forward pass: one routine for serving and training.
//!
//! Per sample (B/F/D notation, F = tables + 1):
//!
//! ```text
//! x        = bottom_mlp(dense)                        // [B, D], ReLU after every layer
//! e_t      = sum of table_t rows of bag t             // [B, D] each, written beside x
//! features = [x, e_1, .., e_k]                        // [B, F * D]: the `cat` top input
//! dot:   R = [x, Z[i][j] for i > j], Z = T T^T         // [B, D + F(F-1)/2]
//! score    = sigmoid(top_mlp(R))                      // [B, 1], ReLU between top layers
//! ```
//!
//! A batch is split into contiguous row ranges, one per thread ([`row_ranges`]); each thread
//! runs all four stages for its rows ([`forward_range`]) with no barrier in between
//! (embedding gathers of one thread overlap the GEMMs of the other), writing into its own
//! [`Activations`]. A batch too small to split runs on one thread, and its GEMMs may use
//! all threads instead ([`run_split`]).
//!
//! Serving ([`Model::forward`]) keeps only what the next layer needs. Training
//! (`dlrs-train`) runs the same [`forward_range`] with [`Activations::keep`] set, so every
//! layer's output stays for the backward pass: the tape is the activations, not a second
//! forward.

use std::ops::Range;
use std::time::Instant;

use dlrs_kernels::gather::{Bags, Pooled};
use dlrs_kernels::gemm::linear_packed;
use dlrs_kernels::interaction::{DotShape, dot_interaction};
use dlrs_kernels::mlp::{Activation, LinearShape, linear};
use rayon::prelude::*;

use crate::batch::Batch;
use crate::config::{DlrmConfig, Interaction};
use crate::error::{ModelError, Result};
use crate::model::Model;
use crate::tables::{PoolScratch, RowError, RowSource, Staging, TableView};
use crate::weights::Layer;

/// Seconds spent per stage (for a batch: mean over the threads that worked on it).
#[derive(Clone, Copy, Debug, Default)]
pub struct StageTimes {
    pub embedding: f64,
    pub bottom_mlp: f64,
    pub interaction: f64,
    pub top_mlp: f64,
}

impl StageTimes {
    fn add(&mut self, o: &StageTimes, scale: f64) {
        self.embedding += o.embedding * scale;
        self.bottom_mlp += o.bottom_mlp * scale;
        self.interaction += o.interaction * scale;
        self.top_mlp += o.top_mlp * scale;
    }
    pub fn accumulate(&mut self, o: &StageTimes) {
        self.add(o, 1.0)
    }
    pub fn total(&self) -> f64 {
        self.embedding + self.bottom_mlp + self.interaction + self.top_mlp
    }
}

/// Where a forward pass runs: the calling thread alone, or a pool of `threads`.
pub struct Executor {
    threads: usize,
    pool: Option<rayon::ThreadPool>,
}

impl Executor {
    pub fn new(threads: usize) -> Result<Self> {
        Self::with_nice(threads, 0)
    }

    /// An executor whose pool threads (if any) run at nice value `nice` (see
    /// [`crate::sys::set_thread_nice`]; 0 leaves them as the process is).
    pub fn with_nice(threads: usize, nice: i32) -> Result<Self> {
        let threads = threads.max(1);
        let pool = if threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("dlrs-worker-{i}"))
                    .start_handler(move |_| {
                        if nice != 0 {
                            crate::sys::set_thread_nice(nice)
                        }
                    })
                    .build()
                    .map_err(|e| {
                        ModelError::io("<thread pool>", std::io::Error::other(e.to_string()))
                    })?,
            )
        } else {
            None
        };
        Ok(Executor { threads, pool })
    }
    pub fn threads(&self) -> usize {
        self.threads
    }
    /// Runs `f` on the pool (so nested rayon work uses it), or inline.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }
}

/// Keeps the calling thread busy until `done()` or `until`, yielding its core to any other
/// runnable thread between checks (OpenMP's active wait policy, `KMP_BLOCKTIME`). A batch
/// that arrives at an idle VM pays for its core to wake: on a 2-vCPU Zen 4 VM, RMC1's
/// 165-sample batch on 2 threads took 3.2-3.5 ms after 10-30 ms of idle sleep and 1.7-2.0 ms
/// after as long a spin of both cores (1.4-1.5 ms back to back). Only the calling thread
/// spins: with a pool's threads spinning too, the threads that queue requests (HTTP, the
/// twin's dispatcher) waited for a core, and the p99 grew.
pub fn spin_until(until: Instant, done: &dyn Fn() -> bool) {
    let mut i = 0u32;
    while !done() {
        std::hint::spin_loop();
        i = i.wrapping_add(1);
        if i.is_multiple_of(64) {
            if Instant::now() >= until {
                return;
            }
            std::thread::yield_now();
        }
    }
}

/// Rows below which a batch is not split across threads: a smaller range costs more in
/// per-call overhead and weight traffic than the second thread gives.
pub const MIN_ROWS_PER_THREAD: usize = 8;

/// The contiguous row ranges a batch of `b` rows runs as on `threads` threads: one per
/// thread, of near-equal sizes, none smaller than [`MIN_ROWS_PER_THREAD`] (a smaller batch
/// is one range). Serving and training split alike.
pub fn row_ranges(b: usize, threads: usize) -> Vec<Range<usize>> {
    let n = threads.max(1).min(b / MIN_ROWS_PER_THREAD).max(1);
    (0..n).map(|i| b * i / n..b * (i + 1) / n).collect()
}

/// Runs `f(job, gemm_threads)` for each job (one per row range) on the current rayon pool:
/// several jobs in parallel, each with single-threaded GEMMs; a lone job inline, its GEMMs
/// on all `threads`.
pub fn run_split<J: Send>(jobs: Vec<J>, threads: usize, f: impl Fn(J, usize) + Sync + Send) {
    if jobs.len() == 1 {
        jobs.into_iter().for_each(|j| f(j, threads.max(1)));
    } else {
        jobs.into_par_iter().for_each(|j| f(j, 1));
    }
}

/// What one row range of the forward pass writes, reused across calls (the hot path
/// allocates nothing once warm).
#[derive(Default)]
pub struct Activations {
    /// keep every layer's output (the backward pass reads them); off: only what the next
    /// layer needs, two buffers in turn per MLP
    pub keep: bool,
    /// `[m, F * D]`: x (the bottom MLP's output) then the pooled embeddings
    pub features: Vec<f32>,
    /// `[m, interaction width]`: the top MLP's input (dot only)
    pub interaction: Vec<f32>,
    /// outputs of the bottom layers but the last (which writes x into `features`), with
    /// `keep`; else two scratch buffers
    pub bottom: Vec<Vec<f32>>,
    /// outputs of the top layers but the last (which writes the scores), likewise
    pub top: Vec<Vec<f32>>,
    /// this range's stage times of its last call
    pub times: StageTimes,
    /// the row sources' per-thread scratch
    pub pool_scratch: PoolScratch,
}

impl Activations {
    /// Activations for training: every layer's output is kept.
    pub fn for_training() -> Self {
        Activations {
            keep: true,
            ..Default::default()
        }
    }
}

/// Scratch memory for [`Model::forward`]; keep one per serving thread.
#[derive(Default)]
pub struct Workspace {
    ranges: Vec<Activations>,
    staging: Vec<Staging>,
    scores: Vec<f32>,
    /// stage times of the last batch
    pub times: StageTimes,
}

impl Workspace {
    /// Row-cache hits and lookups through caches, over every batch run with this workspace.
    pub fn cache_counts(&self) -> (u64, u64) {
        self.ranges.iter().fold((0, 0), |(h, l), r| {
            (
                h + r.pool_scratch.cache_hits,
                l + r.pool_scratch.cache_lookups,
            )
        })
    }
}

/// Makes every table's rows of `batch` readable ([`RowSource::prepare`]), staging them in
/// `staging` (one per table); errors name the table and its corrupt shard, or the remote
/// tier that could not deliver its rows.
pub fn prepare_tables(
    model: &Model,
    tables: &[TableView],
    batch: &Batch,
    staging: &mut Vec<Staging>,
) -> Result<()> {
    staging.resize_with(tables.len(), Staging::default);
    let unavailable = |t: usize, e: RowError| match e {
        RowError::Corrupt { shard } => model.corrupt(t, shard),
        RowError::Unavailable { tier, msg } => ModelError::Unavailable {
            tier,
            table: t,
            msg,
        },
    };
    if let Some(remote) = &model.remote {
        // every table in one go: one round trip per node per batch
        let ids: Vec<&[u32]> = batch.bags().iter().map(|b| &b.ids[..]).collect();
        return remote
            .prepare_all(&ids, staging)
            .map_err(|(t, e)| unavailable(t, e));
    }
    for (t, ((table, bags), st)) in tables.iter().zip(batch.bags()).zip(staging).enumerate() {
        table
            .prepare(&bags.ids, st)
            .map_err(|e| unavailable(t, e))?;
    }
    Ok(())
}

impl Model {
    /// Click probabilities `[B]` for a validated batch. Fails only when the batch touches a
    /// table shard whose checksum does not match (rows of a corrupt file are never served),
    /// or a remote tier cannot deliver its rows in time ([`ModelError::Unavailable`]).
    pub fn forward<'w>(
        &self,
        batch: &Batch,
        ws: &'w mut Workspace,
        exec: &Executor,
    ) -> Result<&'w [f32]> {
        self.forward_on(batch, ws, exec, exec.threads())
    }

    /// [`forward`](Self::forward) on `threads` of `exec`'s threads (clamped to 1..=all of
    /// them). On one thread the batch runs on the calling thread, outside the pool: the
    /// server's live-tuned layout gives an instance all of its executor's threads at low
    /// load and one while another instance computes beside it.
    pub fn forward_on<'w>(
        &self,
        batch: &Batch,
        ws: &'w mut Workspace,
        exec: &Executor,
        threads: usize,
    ) -> Result<&'w [f32]> {
        let threads = threads.clamp(1, exec.threads());
        let tables = self.table_views();
        prepare_tables(self, &tables, batch, &mut ws.staging)?;
        let b = batch.size();
        let ranges = row_ranges(b, threads);
        let n = ranges.len();
        if ws.ranges.len() < n {
            ws.ranges.resize_with(n, Activations::default);
        }
        ws.scores.resize(b, 0.0);
        let mut jobs = Vec::with_capacity(n);
        let mut scores = &mut ws.scores[..];
        for (r, acts) in ranges.into_iter().zip(&mut ws.ranges) {
            let (mine, rest) = std::mem::take(&mut scores).split_at_mut(r.len());
            jobs.push((r, acts, mine));
            scores = rest;
        }
        let staging = &ws.staging;
        let run = || {
            run_split(jobs, threads, |(r, acts, scores), gemm_threads| {
                forward_range(self, &tables, staging, batch, r, acts, scores, gemm_threads)
            })
        };
        if threads == 1 {
            run();
        } else {
            exec.install(run);
        }
        ws.times = StageTimes::default();
        for r in &ws.ranges[..n] {
            ws.times.add(&r.times, 1.0 / n as f64);
        }
        Ok(&ws.scores)
    }
}

/// All four stages for `rows` of `batch`, on the calling thread: the activations into
/// `acts`, the click probabilities into `scores` (`rows.len()` of them). The tables must
/// have been prepared for the batch ([`prepare_tables`]) with `staging`; GEMMs may use
/// `gemm_threads` threads of the current pool.
#[allow(clippy::too_many_arguments)]
pub fn forward_range(
    model: &Model,
    tables: &[TableView],
    staging: &[Staging],
    batch: &Batch,
    rows: Range<usize>,
    acts: &mut Activations,
    scores: &mut [f32],
    gemm_threads: usize,
) {
    let cfg = &model.config;
    let w = &model.weights;
    let (r0, r1) = (rows.start, rows.end);
    let m = r1 - r0;
    assert_eq!(scores.len(), m, "one score per row");
    let d = cfg.dim;
    let fw = cfg.features_width();
    if acts.features.len() < m * fw {
        acts.features.resize(m * fw, 0.0);
    }
    let t0 = Instant::now();

    // embedding bags, pooled straight into their column of `features`
    for (t, ((table, bags), st)) in tables.iter().zip(batch.bags()).zip(staging).enumerate() {
        table.pool(
            Bags::new(&bags.offsets[r0..=r1], &bags.ids),
            Pooled::new(&mut acts.features[(t + 1) * d..], fw),
            st,
            &mut acts.pool_scratch,
        );
    }
    let t1 = Instant::now();

    // bottom MLP: dense [m, n_dense] -> x, the first D columns of `features`
    let nd = cfg.n_dense();
    let dense = &batch.dense()[r0 * nd..r1 * nd];
    let bottom = Mlp {
        layers: &w.bot,
        last: Activation::Relu,
        keep: acts.keep,
    };
    bottom.run(
        (dense, nd),
        m,
        (&mut acts.features, fw),
        &mut acts.bottom,
        gemm_threads,
    );
    let t2 = Instant::now();

    // interaction
    let top_in: (&[f32], usize) = match cfg.interaction {
        Interaction::Cat => (&acts.features, fw),
        Interaction::Dot => {
            let iw = cfg.interaction_width();
            if acts.interaction.len() < m * iw {
                acts.interaction.resize(m * iw, 0.0);
            }
            dot_top_input(cfg, &acts.features, m, &mut acts.interaction);
            (&acts.interaction, iw)
        }
    };
    let t3 = Instant::now();

    // top MLP -> sigmoid
    let top = Mlp {
        layers: &w.top,
        last: Activation::Sigmoid,
        keep: acts.keep,
    };
    top.run(top_in, m, (scores, 1), &mut acts.top, gemm_threads);
    let t4 = Instant::now();
    acts.times = StageTimes {
        embedding: (t1 - t0).as_secs_f64(),
        bottom_mlp: (t2 - t1).as_secs_f64(),
        interaction: (t3 - t2).as_secs_f64(),
        top_mlp: (t4 - t3).as_secs_f64(),
    };
}

/// The `dot` interaction's top-MLP input for `m` rows: row `i` of `out` (stride
/// `cfg.interaction_width()`) is `[x_i, Z_i[j][k] for the config's pairs]`, from row `i` of
/// `features` = `[x, e_1, .., e_k]` (stride `cfg.features_width()`).
pub fn dot_top_input(cfg: &DlrmConfig, features: &[f32], m: usize, out: &mut [f32]) {
    let (d, fw, iw) = (cfg.dim, cfg.features_width(), cfg.interaction_width());
    for i in 0..m {
        out[i * iw..i * iw + d].copy_from_slice(&features[i * fw..i * fw + d]);
    }
    dot_interaction(features, &mut out[d..], dot_shape(cfg, m));
}

/// The shape of the `dot` interaction of `m` rows of `features` (stride
/// `cfg.features_width()`) into the pair columns of the top-MLP input (stride
/// `cfg.interaction_width()`, after its first D columns): what [`dot_top_input`] and
/// training's backward both use.
pub fn dot_shape(cfg: &DlrmConfig, m: usize) -> DotShape {
    DotShape {
        batch: m,
        features: cfg.n_tables() + 1,
        dim: cfg.dim,
        itself: cfg.interaction_itself,
        t_stride: cfg.features_width(),
        out_stride: cfg.interaction_width(),
    }
}

/// An MLP as the forward runs it: ReLU between layers, `last` after the final one.
struct Mlp<'a> {
    layers: &'a [Layer],
    last: Activation,
    /// keep every hidden layer's output (`hidden[i]` = layer i's); else two buffers in turn
    keep: bool,
}

impl Mlp<'_> {
    /// Runs the MLP over `m` rows of `x` (row stride `ldx`) into `out` (row stride `ldo`);
    /// hidden outputs go to `hidden` (`[m, out_w]` each).
    fn run(
        &self,
        (x, ldx): (&[f32], usize),
        m: usize,
        (out, ldo): (&mut [f32], usize),
        hidden: &mut Vec<Vec<f32>>,
        threads: usize,
    ) {
        let n = self.layers.len();
        let slots = if self.keep { n - 1 } else { 2.min(n - 1) };
        hidden.resize_with(slots.max(hidden.len()), Vec::new);
        let slot = |i: usize| if self.keep { i } else { i % 2 };
        for (i, l) in self.layers.iter().enumerate() {
            if i < n - 1 && hidden[slot(i)].len() < m * l.out_w {
                hidden[slot(i)].resize(m * l.out_w, 0.0);
            }
            // layer i reads layer i - 1's slot and writes its own (never the same one)
            let (src, dst): (&[f32], &mut [f32]) = if i == 0 {
                let dst = if n == 1 {
                    &mut *out
                } else {
                    &mut hidden[slot(0)][..]
                };
                (x, dst)
            } else if i == n - 1 {
                (&hidden[slot(i - 1)], &mut *out)
            } else {
                let (a, b) = (slot(i - 1), slot(i));
                let (lo, hi) = hidden.split_at_mut(a.max(b));
                if a < b {
                    (&lo[a], &mut hi[0])
                } else {
                    (&hi[0], &mut lo[b])
                }
            };
            let ld_src = if i == 0 {
                ldx
            } else {
                self.layers[i - 1].out_w
            };
            let (ld_dst, act) = if i == n - 1 {
                (ldo, self.last)
            } else {
                (l.out_w, Activation::Relu)
            };
            let shape = LinearShape {
                m,
                k: l.in_w,
                n: l.out_w,
                ldx: ld_src,
                ldy: ld_dst,
            };
            match l.packed() {
                Some(packed) => linear_packed(src, packed, l.bias(), dst, shape, act, threads),
                // changed since packing (training, between a step and its repack)
                None => linear(src, l.weight(), l.bias(), dst, shape, act, threads),
            }
        }
    }
}
