//! Timing the forward pass on synthetic inputs: the one routine behind `dlrs bench` and
//! every measured point of `dlrs report`, so the two give the same figures.
//!
//! A model is built from a preset (random weights, tables optionally capped) or loaded from a
//! directory ([`build_model`]); a pool of distinct synthetic batches is drawn ([`synth_pool`],
//! enough of them that their rows span [`COLD_POOL_BYTES`], so a small batch is not served
//! from cache); [`time_forward`] then runs the batches in turn after a warm-up and keeps every
//! batch's latency and the per-stage times.
//!
//! ```no_run
//! use dlrs_model::bench::{Build, build_model, synth_pool, pool_batches, time_forward};
//! use dlrs_model::{Executor, Workspace, synth::IdDist};
//! let exec = Executor::new(1)?;
//! let m = build_model("rmc1", &Build { rows_cap: Some(100_000), ..Build::default() }, &exec)?;
//! let n = pool_batches(&m.model.config, 256, m.ids_per_table);
//! let pool = synth_pool(&m.model.config, 256, m.ids_per_table, IdDist::Uniform, n, 1)?;
//! let t = time_forward(&m.model, &pool, &mut Workspace::default(), &exec, 1.0, 10)?;
//! println!("{:.0} samples/s, p99 {:.2} ms", t.samples_per_s(), t.percentile(99.0) * 1e3);
//! # Ok::<(), dlrs_model::ModelError>(())
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use crate::batch::Batch;
use crate::config::{DlrmConfig, MlpDtype, RowFormat};
use crate::error::Result;
use crate::forward::{Executor, StageTimes, Workspace};
use crate::model::Model;
use crate::presets;
use crate::synth::{IdDist, synth_batch};
use crate::weights::TableMode;

/// Bytes of embedding rows the default pool of batches spans: well past the last-level cache.
pub const COLD_POOL_BYTES: usize = 256 << 20;

/// How to build the model of a benchmark.
#[derive(Clone, Copy, Debug, Default)]
pub struct Build {
    /// cap every table of a preset at this many rows (ignored for a model directory)
    pub rows_cap: Option<usize>,
    /// the tables' row format (a preset is built in it; a directory's tables are converted)
    pub format: Option<RowFormat>,
    /// the MLP weights' type (a preset is built in it; a directory's are converted)
    pub mlp_dtype: Option<MlpDtype>,
    /// how a model directory's tables are held
    pub mode: TableMode,
}

/// A model ready to time, its name and the ids per table per sample of its inputs.
pub struct BenchModel {
    pub model: Model,
    /// the preset's name, or the directory as given
    pub name: String,
    /// the preset's ids per table per sample; 1 for a model directory
    pub ids_per_table: usize,
}

/// `spec` is a model directory when one exists at that path, else a preset name.
pub fn build_model(spec: &str, b: &Build, exec: &Executor) -> Result<BenchModel> {
    if Path::new(spec).is_dir() {
        let mut m = Model::load_with(Path::new(spec), b.mode)?;
        if let Some(f) = b.format {
            exec.install(|| m.convert_tables(f, &[]))?;
        }
        if let Some(d) = b.mlp_dtype {
            m.convert_mlp(d);
        }
        return Ok(BenchModel {
            model: m,
            name: spec.to_string(),
            ids_per_table: 1,
        });
    }
    let mut p = presets::preset(spec)?;
    if let Some(cap) = b.rows_cap {
        p.config
            .tables
            .iter_mut()
            .for_each(|r| *r = (*r).min(cap.max(1)));
    }
    let cfg = p
        .config
        .clone()
        .with_format(b.format.unwrap_or(RowFormat::F32))
        .with_mlp_dtype(b.mlp_dtype.unwrap_or_default());
    Ok(BenchModel {
        model: exec.install(|| Model::random(cfg, 0))?,
        name: p.name.to_string(),
        ids_per_table: p.ids_per_table,
    })
}

/// The default number of distinct batches of `batch` samples: enough that their fp32 rows
/// span [`COLD_POOL_BYTES`], between 8 and 4096.
pub fn pool_batches(cfg: &DlrmConfig, batch: usize, ids_per_table: usize) -> usize {
    let batch_bytes = batch * ids_per_table * cfg.n_tables() * cfg.dim * 4;
    COLD_POOL_BYTES.div_ceil(batch_bytes.max(1)).clamp(8, 4096)
}

/// `n` synthetic batches of `batch` samples, batch `i` drawn with seed `seed + i`.
pub fn synth_pool(
    cfg: &DlrmConfig,
    batch: usize,
    ids_per_table: usize,
    dist: IdDist,
    n: usize,
    seed: u64,
) -> Result<Vec<Batch>> {
    (0..n.max(1))
        .map(|i| synth_batch(cfg, batch, ids_per_table, dist, seed + i as u64))
        .collect()
}

/// What [`time_forward`] measured.
#[derive(Clone, Debug, Default)]
pub struct Timing {
    /// samples per batch
    pub batch: usize,
    /// every timed batch's latency in seconds, sorted
    pub latencies_s: Vec<f64>,
    /// the per-stage seconds summed over the timed batches
    pub stages: StageTimes,
    /// the sum of the first score of every timed batch (keeps the work observable)
    pub checksum: f64,
}

impl Timing {
    /// Timed batches.
    pub fn batches(&self) -> usize {
        self.latencies_s.len()
    }

    /// Seconds of the timed batches.
    pub fn total_s(&self) -> f64 {
        self.latencies_s.iter().sum()
    }

    /// Mean seconds a batch.
    pub fn mean_s(&self) -> f64 {
        self.total_s() / self.batches().max(1) as f64
    }

    /// The latency at percentile `p` (0..=100), seconds: the sorted latency at index
    /// `round((n - 1) * p / 100)`.
    pub fn percentile(&self, p: f64) -> f64 {
        let n = self.latencies_s.len();
        if n == 0 {
            return 0.0;
        }
        self.latencies_s[((n - 1) as f64 * p / 100.0).round() as usize]
    }

    pub fn samples_per_s(&self) -> f64 {
        self.batch as f64 * self.batches() as f64 / self.total_s().max(f64::MIN_POSITIVE)
    }

    /// Mean seconds a batch spent in each stage.
    pub fn stages_mean(&self) -> StageTimes {
        let n = self.batches().max(1) as f64;
        StageTimes {
            embedding: self.stages.embedding / n,
            bottom_mlp: self.stages.bottom_mlp / n,
            interaction: self.stages.interaction / n,
            top_mlp: self.stages.top_mlp / n,
        }
    }
}

/// Runs the first 3 batches of `pool` untimed, then the pool's batches in turn for
/// `seconds` (and at least `min_batches` of them), timing each forward pass.
pub fn time_forward(
    model: &Model,
    pool: &[Batch],
    ws: &mut Workspace,
    exec: &Executor,
    seconds: f64,
    min_batches: usize,
) -> Result<Timing> {
    for b in pool.iter().take(3) {
        model.forward(b, ws, exec)?;
    }
    let mut t = Timing {
        batch: pool.first().map_or(0, Batch::size),
        ..Timing::default()
    };
    let end = Instant::now() + Duration::from_secs_f64(seconds.max(0.0));
    let mut i = 0;
    while !pool.is_empty() && (Instant::now() < end || t.latencies_s.len() < min_batches) {
        let b = &pool[i % pool.len()];
        let s = Instant::now();
        let scores = model.forward(b, ws, exec)?;
        t.latencies_s.push(s.elapsed().as_secs_f64());
        t.checksum += scores[0] as f64;
        t.stages.accumulate(&ws.times);
        i += 1;
    }
    t.latencies_s.sort_by(f64::total_cmp);
    Ok(t)
}

/// Mean 64-byte cache lines a row of `row_bytes` touches when rows sit `stride` bytes apart
/// from a 64-byte aligned start.
pub fn lines_per_row(stride: usize, row_bytes: usize) -> f64 {
    // the pattern of row starts modulo 64 repeats every 64 / gcd(stride, 64) rows
    let period = 64 / gcd(stride.max(1), 64);
    let total: usize = (0..period)
        .map(|r| (r * stride % 64 + row_bytes).div_ceil(64))
        .sum();
    total as f64 / period as f64
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A model's bytes a lookup reads and the cache lines it touches, averaged over its tables,
/// and its widest row stride.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowFootprint {
    pub row_bytes: f64,
    pub cache_lines_per_row: f64,
    pub row_stride: usize,
}

impl RowFootprint {
    pub fn of(model: &Model) -> Self {
        let tables = &model.weights.tables;
        let n = tables.len().max(1) as f64;
        let dim = model.config.dim;
        RowFootprint {
            row_bytes: tables
                .iter()
                .map(|t| t.format().row_bytes(dim))
                .sum::<usize>() as f64
                / n,
            cache_lines_per_row: tables
                .iter()
                .map(|t| lines_per_row(t.stride(), t.format().row_bytes(dim)))
                .sum::<f64>()
                / n,
            row_stride: tables.iter().map(|t| t.stride()).max().unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_lines_per_row_follow_alignment() {
        assert_eq!(lines_per_row(128, 128), 2.0);
        assert_eq!(lines_per_row(64, 64), 1.0);
        // 72-byte rows (int8 D=64 + scale and bias) always span two lines
        assert_eq!(lines_per_row(72, 72), 2.0);
        // 40-byte rows 40 bytes apart span two lines every other time
        assert_eq!(lines_per_row(40, 40), 1.5);
        assert_eq!(lines_per_row(16, 16), 1.0);
    }

    #[test]
    fn times_a_small_model_and_its_stages_add_up() {
        let exec = Executor::new(1).unwrap();
        let b = Build {
            rows_cap: Some(1000),
            ..Build::default()
        };
        let m = build_model("rmc1", &b, &exec).unwrap();
        assert_eq!((m.name.as_str(), m.ids_per_table), ("rmc1", 80));
        assert!(m.model.config.tables.iter().all(|&r| r == 1000));
        let pool = synth_pool(&m.model.config, 16, 80, IdDist::Uniform, 4, 1).unwrap();
        let t = time_forward(&m.model, &pool, &mut Workspace::default(), &exec, 0.0, 12).unwrap();
        assert_eq!((t.batches(), t.batch), (12, 16));
        assert!(t.latencies_s.windows(2).all(|w| w[0] <= w[1]));
        assert!(t.percentile(0.0) <= t.percentile(99.0));
        let s = t.stages_mean();
        let sum = s.embedding + s.bottom_mlp + s.interaction + s.top_mlp;
        assert!(
            sum > 0.0 && sum <= t.mean_s() * 1.001,
            "{sum} {}",
            t.mean_s()
        );
        let f = RowFootprint::of(&m.model);
        assert_eq!((f.row_bytes, f.row_stride), (128.0, 128));
    }
}
