//! The DLRM forward pass.
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
//! Threads split the batch into contiguous row ranges; each thread runs all four stages
//! for its rows with no barrier in between (embedding gathers of one thread overlap the
//! GEMMs of the other), writing into buffers owned by that range. A batch too small to
//! split runs on the calling thread, and its GEMMs may use the pool instead.

use std::path::{Path, PathBuf};
use std::time::Instant;

use dlrs_kernels::interaction::{DotShape, dot_interaction};
use dlrs_kernels::mlp::{Activation, LinearShape, linear};
use rayon::prelude::*;

use crate::batch::Batch;
use crate::cache::{CacheScratch, RowCache, TrafficCounter, build_caches};
use crate::config::{DlrmConfig, Interaction, RowFormat};
use crate::error::{ModelError, Result};
use crate::presets::{Preset, preset};
use crate::weights::{Layer, TableMode, Weights, atomic_write_bytes};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// A DLRM ready to run: a validated config and weights that fit it.
pub struct Model {
    pub config: DlrmConfig,
    pub weights: Weights,
    /// the directory it was loaded from, if any (named in errors)
    pub dir: Option<PathBuf>,
    /// hot-row caches, one slot per table (see [`Model::build_row_caches`])
    pub row_caches: Vec<Option<RowCache>>,
}

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

/// Rows below which a batch is not split across threads.
const MIN_ROWS_PER_THREAD: usize = 8;

/// Buffers for one row range, reused across calls: the hot path allocates nothing once warm.
#[derive(Default)]
struct RangeBuffers {
    features: Vec<f32>,
    interaction: Vec<f32>,
    hidden: [Vec<f32>; 2],
    scores: Vec<f32>,
    cache_scratch: CacheScratch,
    times: StageTimes,
}

/// Scratch memory for [`Model::forward`]; keep one per serving thread.
#[derive(Default)]
pub struct Workspace {
    ranges: Vec<RangeBuffers>,
    scores: Vec<f32>,
    /// stage times of the last batch
    pub times: StageTimes,
}

impl Workspace {
    /// Row-cache hits and lookups through caches, over every batch run with this workspace.
    pub fn cache_counts(&self) -> (u64, u64) {
        self.ranges.iter().fold((0, 0), |(h, l), r| {
            (h + r.cache_scratch.hits, l + r.cache_scratch.lookups)
        })
    }
}

impl Model {
    /// Loads a model directory (`config.json` + `model.safetensors`) with its tables
    /// memory-mapped ([`TableMode::Mmap`]).
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_with(dir, TableMode::Mmap)
    }

    /// Loads a model directory, holding the tables as `mode` says. Mapped tables with a
    /// manifest are verified shard by shard the first time a batch touches a shard (rows of
    /// a shard that fails are never served: `forward` returns an error naming it); see
    /// [`Model::verify_in_background`] to verify them all ahead of traffic.
    pub fn load_with(dir: &Path, mode: TableMode) -> Result<Self> {
        let config = DlrmConfig::load(&dir.join(CONFIG_FILE))?;
        let weights = Weights::load_safetensors(&dir.join(WEIGHTS_FILE), &config, mode)?;
        Ok(Model {
            config,
            weights,
            dir: Some(dir.to_path_buf()),
            row_caches: Vec::new(),
        })
    }

    /// Starts a thread that verifies every shard of every mapped table (reading the whole
    /// file once), so corruption is found before traffic reaches it. A server calls this
    /// after loading; a one-shot `predict` does not, to keep start-up independent of size.
    pub fn verify_in_background(&self) -> Result<()> {
        let jobs: Vec<_> = self
            .weights
            .tables
            .iter()
            .filter_map(|t| t.background_verifier())
            .collect();
        if !jobs.is_empty() {
            std::thread::Builder::new()
                .name("dlrs-verify".into())
                .spawn(move || {
                    crate::sys::lower_thread_priority();
                    jobs.into_iter().for_each(|j| j())
                })
                .map_err(|e| ModelError::io("<verify thread>", e))?;
        }
        Ok(())
    }

    /// Fills hot-row caches (rows plus index within `budget_bytes`) from observed traffic;
    /// returns the share of the observed lookups the cached rows serve. A budget of 0
    /// removes the caches.
    pub fn build_row_caches(
        &mut self,
        traffic: &TrafficCounter,
        budget_bytes: usize,
    ) -> Result<f64> {
        if budget_bytes == 0 {
            self.row_caches.clear();
            return Ok(0.0);
        }
        let (caches, share) = build_caches(&self.weights.tables, traffic, budget_bytes)
            .map_err(|e| ModelError::io("<row cache>", e))?;
        self.row_caches = caches;
        Ok(share)
    }

    /// Bytes the row caches take.
    pub fn row_cache_bytes(&self) -> usize {
        self.row_caches.iter().flatten().map(|c| c.bytes()).sum()
    }

    /// Verifies every shard of every checked table now; errors name the first bad one.
    pub fn verify_tables(&self) -> Result<()> {
        for t in 0..self.weights.tables.len() {
            self.weights.tables[t]
                .verify_all()
                .map_err(|k| self.corrupt(t, k))?;
        }
        Ok(())
    }

    fn corrupt(&self, t: usize, shard: usize) -> ModelError {
        ModelError::Corrupt {
            path: self
                .dir
                .as_ref()
                .map_or_else(|| PathBuf::from("<model>"), |d| d.join(WEIGHTS_FILE)),
            tensor: format!("emb_l.{t}.weight"),
            msg: format!("shard {shard} does not match its checksum"),
        }
    }

    /// A preset with random weights (tables built in parallel on the current rayon pool).
    pub fn from_preset(name: &str, seed: u64) -> Result<(Self, Preset)> {
        let p = preset(name)?;
        Ok((Self::random(p.config.clone(), seed)?, p))
    }

    pub fn random(config: DlrmConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let weights = Weights::random(&config, seed)?;
        Ok(Model {
            config,
            weights,
            dir: None,
            row_caches: Vec::new(),
        })
    }

    /// Writes the model directory of [`Model::random`]`(config, seed)` without building its
    /// tables in memory (see [`Weights::write_random`]); each file atomically.
    pub fn write_random(
        config: &DlrmConfig,
        seed: u64,
        dir: &Path,
        progress: impl FnMut(u64),
    ) -> Result<()> {
        config.validate()?;
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        Weights::write_random(&dir.join(WEIGHTS_FILE), config, seed, progress)?;
        atomic_write_bytes(&dir.join(CONFIG_FILE), config.to_json_string().as_bytes())
    }

    /// Writes the model directory; each file atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        self.weights
            .save_safetensors(&dir.join(WEIGHTS_FILE), &self.config)?;
        atomic_write_bytes(
            &dir.join(CONFIG_FILE),
            self.config.to_json_string().as_bytes(),
        )
    }

    /// Converts tables to `format` (all when `tables` is empty), returning per converted
    /// table `(index, max abs error, mean abs error)` of the new values against the old.
    pub fn convert_tables(
        &mut self,
        format: RowFormat,
        tables: &[usize],
    ) -> Result<Vec<(usize, f64, f64)>> {
        let n = self.config.n_tables();
        if let Some(t) = tables.iter().find(|&&t| t >= n) {
            return Err(ModelError::input(
                "tables",
                format!("table {t} does not exist (the model has {n})"),
            ));
        }
        let chosen: Vec<usize> = if tables.is_empty() {
            (0..n).collect()
        } else {
            tables.to_vec()
        };
        let mut report = Vec::new();
        for t in chosen {
            let old = &self.weights.tables[t];
            let new = old
                .convert(format)
                .map_err(|e| ModelError::io(format!("<table {t}>"), e))?;
            let dim = old.dim();
            let (max, sum) = (0..old.rows())
                .into_par_iter()
                .fold(
                    || (0.0f64, 0.0f64, vec![0.0f32; dim], vec![0.0f32; dim]),
                    |(mx, sm, mut a, mut b), r| {
                        old.row_f32(r, &mut a);
                        new.row_f32(r, &mut b);
                        let (m2, s2) = a.iter().zip(&b).fold((mx, sm), |(m, s), (x, y)| {
                            let d = (x - y).abs() as f64;
                            (m.max(d), s + d)
                        });
                        (m2, s2, a, b)
                    },
                )
                .map(|(m, s, _, _)| (m, s))
                .reduce(|| (0.0, 0.0), |x, y| (x.0.max(y.0), x.1 + y.1));
            report.push((t, max, sum / (old.rows() * dim) as f64));
            self.weights.tables[t] = new;
            self.config.table_formats[t] = format;
        }
        Ok(report)
    }

    /// Click probabilities `[B]` for a validated batch. Fails only when the batch touches a
    /// table shard whose checksum does not match (rows of a corrupt file are never served).
    pub fn forward<'w>(
        &self,
        batch: &Batch,
        ws: &'w mut Workspace,
        exec: &Executor,
    ) -> Result<&'w [f32]> {
        for (t, (table, bags)) in self.weights.tables.iter().zip(batch.bags()).enumerate() {
            table
                .verify_rows(&bags.ids)
                .map_err(|k| self.corrupt(t, k))?;
        }
        let b = batch.size();
        let n_ranges = exec.threads.min(b / MIN_ROWS_PER_THREAD).max(1);
        if ws.ranges.len() < n_ranges {
            ws.ranges.resize_with(n_ranges, RangeBuffers::default);
        }
        let bounds: Vec<(usize, usize)> = (0..n_ranges)
            .map(|i| (b * i / n_ranges, b * (i + 1) / n_ranges))
            .collect();
        let ranges = &mut ws.ranges[..n_ranges];
        if n_ranges == 1 {
            let gemm_threads = exec.threads;
            exec.install(|| self.forward_rows(batch, 0, b, &mut ranges[0], gemm_threads));
        } else {
            exec.install(|| {
                ranges
                    .par_iter_mut()
                    .zip(&bounds)
                    .for_each(|(buf, &(r0, r1))| self.forward_rows(batch, r0, r1, buf, 1))
            });
        }
        ws.scores.clear();
        ws.times = StageTimes::default();
        for r in ranges.iter() {
            ws.scores.extend_from_slice(&r.scores);
            ws.times.add(&r.times, 1.0 / n_ranges as f64);
        }
        Ok(&ws.scores)
    }

    /// All four stages for rows `r0..r1` of the batch.
    fn forward_rows(
        &self,
        batch: &Batch,
        r0: usize,
        r1: usize,
        buf: &mut RangeBuffers,
        gemm_threads: usize,
    ) {
        let cfg = &self.config;
        let m = r1 - r0;
        let d = cfg.dim;
        let fw = cfg.features_width();
        buf.features.resize(m * fw, 0.0);
        buf.scores.resize(m, 0.0);
        let t0 = Instant::now();

        // embedding bags, pooled straight into their column of `features`
        for (t, (table, bags)) in self.weights.tables.iter().zip(batch.bags()).enumerate() {
            let (offsets, out) = (&bags.offsets[r0..=r1], &mut buf.features[(t + 1) * d..]);
            match self.row_caches.get(t) {
                Some(Some(cache)) => {
                    cache.bag_sum(table, offsets, &bags.ids, out, fw, &mut buf.cache_scratch)
                }
                _ => table.bag_sum(offsets, &bags.ids, out, fw),
            }
        }
        let t1 = Instant::now();

        // bottom MLP: dense [m, n_dense] -> x, the first D columns of `features`
        let nd = cfg.n_dense();
        let dense = &batch.dense()[r0 * nd..r1 * nd];
        run_mlp(
            &self.weights.bot,
            dense,
            nd,
            m,
            &mut buf.features,
            fw,
            Activation::Relu,
            &mut buf.hidden,
            gemm_threads,
        );
        let t2 = Instant::now();

        // interaction
        let (top_in, ld_in): (&[f32], usize) = match cfg.interaction {
            Interaction::Cat => (&buf.features, fw),
            Interaction::Dot => {
                let iw = cfg.interaction_width();
                buf.interaction.resize(m * iw, 0.0);
                dot_top_input(cfg, &buf.features, m, &mut buf.interaction);
                (&buf.interaction, iw)
            }
        };
        let t3 = Instant::now();

        // top MLP -> sigmoid
        run_mlp(
            &self.weights.top,
            top_in,
            ld_in,
            m,
            &mut buf.scores,
            1,
            Activation::Sigmoid,
            &mut buf.hidden,
            gemm_threads,
        );
        let t4 = Instant::now();
        buf.times = StageTimes {
            embedding: (t1 - t0).as_secs_f64(),
            bottom_mlp: (t2 - t1).as_secs_f64(),
            interaction: (t3 - t2).as_secs_f64(),
            top_mlp: (t4 - t3).as_secs_f64(),
        };
    }
}

/// The `dot` interaction's top-MLP input for `m` rows: row `i` of `out` (stride
/// `cfg.interaction_width()`) is `[x_i, Z_i[j][k] for the config's pairs]`, from row `i` of
/// `features` = `[x, e_1, .., e_k]` (stride `cfg.features_width()`). Training runs the same.
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

/// An MLP over `m` rows: ReLU between layers, `last` after the final one, whose output
/// goes to `out` (row stride `ldo`); intermediate rows ping-pong between `hidden` buffers.
#[allow(clippy::too_many_arguments)]
fn run_mlp(
    layers: &[Layer],
    x: &[f32],
    ldx: usize,
    m: usize,
    out: &mut [f32],
    ldo: usize,
    last: Activation,
    hidden: &mut [Vec<f32>; 2],
    threads: usize,
) {
    let n = layers.len();
    let widest = layers[..n - 1].iter().map(|l| l.out_w).max().unwrap_or(0);
    for h in hidden.iter_mut() {
        if h.len() < m * widest {
            h.resize(m * widest, 0.0);
        }
    }
    let [ha, hb] = hidden;
    for (i, l) in layers.iter().enumerate() {
        // layer i writes hidden[i % 2]; layer i + 1 reads it
        let (prev, next) = if i % 2 == 1 {
            (&ha[..], &mut hb[..])
        } else {
            (&hb[..], &mut ha[..])
        };
        let (src, ld_src) = if i == 0 {
            (x, ldx)
        } else {
            (prev, layers[i - 1].out_w)
        };
        let (dst, ld_dst, act) = if i == n - 1 {
            (&mut *out, ldo, last)
        } else {
            (next, l.out_w, Activation::Relu)
        };
        let shape = LinearShape {
            m,
            k: l.in_w,
            n: l.out_w,
            ldx: ld_src,
            ldy: ld_dst,
        };
        linear(src, &l.weight, &l.bias, dst, shape, act, threads);
    }
}
