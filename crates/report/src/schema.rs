//! `report.json`: every figure of the page, with its unit in its name. A field's meaning
//! never changes within one [`SCHEMA_VERSION`]; `--compare` refuses reports of another.

use serde::{Deserialize, Serialize};

/// The version of [`Report`]'s JSON.
pub const SCHEMA_VERSION: u32 = 1;

/// How thorough a run was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    /// full-size presets, about 15 minutes on 2 cores
    Full,
    /// tables capped, short measurements: under 5 minutes on 2 cores
    Quick,
    /// tiny tables and measurements, for tests: the figures mean little
    Tiny,
}

impl Size {
    pub fn name(self) -> &'static str {
        match self {
            Size::Full => "full",
            Size::Quick => "quick",
            Size::Tiny => "tiny",
        }
    }
}

/// The whole report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    /// the dlrs version that made it
    pub dlrs_version: String,
    pub size: Size,
    /// whether any table was capped below its preset's size (`--quick`)
    pub capped: bool,
    /// seconds since the Unix epoch when the run started
    pub started_unix_s: u64,
    /// seconds the run took
    pub wall_s: f64,
    pub machine: Machine,
    pub models: Vec<ModelInfo>,
    pub breakdown: Breakdown,
    pub batching: Vec<Batching>,
    pub colocation: Colocation,
    pub latency_bounded: LatencyBounded,
    pub row_formats: RowFormats,
    pub plots: Vec<Plot>,
}

/// Section 1: the host and its measured limits.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    /// [`dlrs_machine::Host::cpu_line`]
    pub cpu_line: String,
    pub host: dlrs_machine::Host,
    pub limits: dlrs_machine::Limits,
    /// the 1-minute load average when the run started and when it ended: well above 0
    /// means other work shared the CPUs and every figure is lower than an idle machine's
    pub load_average: [f64; 2],
}

/// A model measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelInfo {
    /// the preset's name or the directory as given
    pub name: String,
    /// `preset` or `directory`
    pub source: String,
    /// every table capped at this many rows (`None`: the preset's or directory's sizes)
    pub rows_cap: Option<usize>,
    pub tables: usize,
    pub total_rows: usize,
    pub dim: usize,
    pub ids_per_table: usize,
    pub embedding_bytes: usize,
    pub bottom_mlp: Vec<usize>,
    pub top_mlp: Vec<usize>,
    pub mlp_flops_per_sample: f64,
    /// bytes between rows of the fp32 tables
    pub row_stride: usize,
}

/// Per-stage figures: milliseconds, shares or fractions, per the field holding them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stages {
    pub embedding: f64,
    pub bottom_mlp: f64,
    pub interaction: f64,
    pub top_mlp: f64,
}

impl Stages {
    pub fn sum(&self) -> f64 {
        self.embedding + self.bottom_mlp + self.interaction + self.top_mlp
    }

    /// The stages with their names, in forward order.
    pub fn named(&self) -> [(&'static str, f64); 4] {
        [
            ("embedding", self.embedding),
            ("bottom MLP", self.bottom_mlp),
            ("interaction", self.interaction),
            ("top MLP", self.top_mlp),
        ]
    }
}

/// Latency of a forward pass (one batch), milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p99: f64,
    pub mean: f64,
}

/// A stage's rate as a fraction of the machine's limit: the embedding stage's rows per
/// second over the gather rate at the tables' row stride (1 thread, huge pages), each MLP's
/// FLOP/s over the FMA peak of the threads it ran on. `None` when no limit applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OfLimit {
    pub embedding: Option<f64>,
    pub bottom_mlp: Option<f64>,
    pub top_mlp: Option<f64>,
}

/// One model at one batch size: what `dlrs bench` measures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Point {
    pub model: String,
    pub batch: usize,
    pub threads: usize,
    pub batches_timed: usize,
    pub samples_per_s: f64,
    pub latency_ms: LatencyMs,
    /// mean milliseconds a batch spends in each stage
    pub stages_ms: Stages,
    /// each stage's share of the mean batch time
    pub share: Stages,
    /// `share.sum()`: 1 when the stages account for the whole batch time
    pub stages_over_batch: f64,
    pub of_limit: OfLimit,
    pub embedding_rows_per_s: f64,
    pub bottom_mlp_gflop_per_s: f64,
    pub top_mlp_gflop_per_s: f64,
    /// the stage with the largest share
    pub dominant: String,
    /// the `dlrs bench` command that measures the same point
    pub bench_command: String,
    /// bytes between rows of the tables (the gather rate it is set against is this size's)
    pub row_stride: usize,
}

/// Section 2: the operator breakdown, per model and batch size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Breakdown {
    pub threads: usize,
    /// the batch sizes drawn
    pub batches: Vec<usize>,
    /// seconds timed per point (at least `min_batches` batches)
    pub seconds_per_point: f64,
    pub min_batches: usize,
    /// every point measured, the batching section's larger batches included
    pub points: Vec<Point>,
}

/// The batch at which a model's p99 crosses a latency target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Crossing {
    pub target_ms: f64,
    /// interpolated on log(batch) between the two measured batches around the target;
    /// `None` when it is not crossed in the range measured
    pub batch: Option<f64>,
    /// in words: `between 256 and 1024`, `above the target already at batch 1`, ...
    pub note: String,
}

/// One batch size of the batching section.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct BatchPoint {
    pub batch: usize,
    pub samples_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Section 3: throughput and latency against batch size, for one model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Batching {
    pub model: String,
    pub points: Vec<BatchPoint>,
    pub crossings: Vec<Crossing>,
    /// the smallest batch reaching 90% of the best throughput measured: where batching
    /// stops paying
    pub saturation_batch: usize,
    pub best_samples_per_s: f64,
}

/// One co-located instance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Instance {
    pub model: String,
    pub samples_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// the model running alone (1 instance), same batch and threads
    pub alone_samples_per_s: f64,
    pub alone_p99_ms: f64,
    /// `samples_per_s / alone_samples_per_s`
    pub throughput_vs_alone: f64,
    /// `p99_ms / alone_p99_ms`
    pub p99_vs_alone: f64,
    pub p50_vs_alone: f64,
}

/// Instances running side by side.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    pub instances: Vec<Instance>,
    pub total_samples_per_s: f64,
}

/// Section 4: co-location.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Colocation {
    pub batch: usize,
    pub threads_per_instance: usize,
    pub seconds: f64,
    pub cpus: u32,
    /// instances of one model share its weights (as `dlrs serve --instances` does)
    pub shared_weights: bool,
    pub scenarios: Vec<Scenario>,
}

/// The latency-bounded throughput of one model at one target under one batcher setting.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Bounded {
    pub model: String,
    pub target_p99_ms: f64,
    pub max_batch: usize,
    pub max_queue_delay_us: u64,
    /// of the highest rate that met the target (`None`: no rate did)
    pub samples_per_s: Option<f64>,
    pub achieved_qps: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// measurements taken by the search
    pub steps: usize,
}

/// Section 5: latency-bounded throughput (the twin's search, in process).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatencyBounded {
    pub threads: usize,
    pub instances: usize,
    pub query_size: String,
    pub step_s: f64,
    pub max_steps: usize,
    pub targets_ms: Vec<f64>,
    /// the batcher setting the targets are searched with
    pub default_max_batch: usize,
    pub default_max_queue_delay_us: u64,
    pub results: Vec<Bounded>,
}

/// One model in one row format.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FormatPoint {
    pub model: String,
    pub format: String,
    pub samples_per_s: f64,
    /// `samples_per_s` over the fp32 tables'
    pub vs_fp32: f64,
    pub row_bytes: f64,
    pub row_stride: usize,
    pub cache_lines_per_row: f64,
    pub embedding_bytes: usize,
    /// the embedding stage's share of the batch time
    pub embedding_share: f64,
}

/// Section 6: row formats.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RowFormats {
    pub batch: usize,
    pub threads: usize,
    pub points: Vec<FormatPoint>,
}

/// A chart, written as `DIR/<id>.svg` and `DIR/<id>.png` and inlined in the page.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plot {
    pub id: String,
    pub section: String,
    pub title: String,
    /// the plain sentence under it
    pub caption: String,
    pub svg: String,
    pub png: String,
}
