//! What `dlrs train`, `dlrs eval` and `dlrs synth` are asked to do: plain structs with the
//! commands' defaults (the `dlrs` binary parses its flags into them). Field names follow the
//! flags (`sparse_lr` is `--sparse-lr`), and errors about a field name its flag.

use std::path::PathBuf;

use dlrs_model::{DlrmConfig, presets};

use crate::data::DataFormat;
use crate::error::{Result, TrainError};
use crate::optim::{DenseOptimizer, SparseOptimizer};

/// `dlrs train`: train a DLRM on labelled data. Exactly one of `model`, `preset` and
/// `resume` says where the run starts.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// initial model directory (its weights are used exactly; tables must be fp32)
    pub model: Option<PathBuf>,
    /// start from a preset with random weights (seeded by `seed`)
    pub preset: Option<String>,
    /// with `preset`: cap every table at this many rows
    pub rows_cap: Option<usize>,
    /// with `preset`: id maps, `[TABLES=]SPEC` each, applied in order (see
    /// `dlrs_model::tables::idmap::parse_id_map_flag`); default: every table `index`
    pub id_maps: Vec<String>,
    /// continue the run whose checkpoint is this directory (usually the same as `out`); the
    /// settings and the `train` data must be the checkpoint's (see `new_data`)
    pub resume: Option<PathBuf>,
    /// with `resume`: train the checkpoint on `train` data other than the data it was
    /// trained on; the epoch count and the position in the data start again from 0, the
    /// weights, optimizer state and step are kept (without `resume`: an error)
    pub new_data: bool,
    /// training data: JSON Lines with labels, or Criteo TSV; gzip/zstd accepted; `-` for
    /// stdin
    pub train: PathBuf,
    /// evaluation data, scored after every epoch (and every `eval_every` steps)
    pub eval: Option<PathBuf>,
    /// output directory: the trained model (config.json, model.safetensors), the optimizer
    /// state and the training state; replaced atomically at every checkpoint
    pub out: PathBuf,
    /// default 1
    pub epochs: u64,
    /// default 128
    pub batch: usize,
    /// learning rate of the tables and the MLPs (`sparse_lr`, `dense_lr` override it);
    /// default 0.01
    pub lr: f32,
    /// learning rate of the embedding tables (default: `lr`)
    pub sparse_lr: Option<f32>,
    /// learning rate of the MLPs (default: `lr`)
    pub dense_lr: Option<f32>,
    /// optimizer of the embedding tables; default sgd
    pub optimizer: SparseOptimizer,
    /// optimizer of the MLPs; default sgd
    pub dense_optimizer: DenseOptimizer,
    /// default 1
    pub threads: usize,
    /// seeds the preset's weights and the shuffle; default 0
    pub seed: u64,
    /// one JSON object per eval and a final one on the output
    pub json: bool,
    /// shuffle samples within a window (buffered, bounded memory); default: file order
    pub shuffle: bool,
    /// samples held by the shuffle window; default 65536
    pub shuffle_window: usize,
    /// skip (and count) bad input lines instead of stopping at the first
    pub skip_bad: bool,
    /// input format; default by content
    pub format: DataFormat,
    /// also checkpoint every N steps (always at the end of each epoch)
    pub checkpoint_every: Option<u64>,
    /// also evaluate every N steps (always at the end of each epoch)
    pub eval_every: Option<u64>,
    /// stop (with a checkpoint) once the run has taken this many steps in all
    pub max_steps: Option<u64>,
}

impl TrainConfig {
    /// The defaults of `dlrs train`, training on `train` into `out`; the starting point
    /// (`model`, `preset` or `resume`) is still to be set.
    pub fn new(train: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        TrainConfig {
            model: None,
            preset: None,
            rows_cap: None,
            id_maps: Vec::new(),
            resume: None,
            new_data: false,
            train: train.into(),
            eval: None,
            out: out.into(),
            epochs: 1,
            batch: 128,
            lr: 0.01,
            sparse_lr: None,
            dense_lr: None,
            optimizer: SparseOptimizer::Sgd,
            dense_optimizer: DenseOptimizer::Sgd,
            threads: 1,
            seed: 0,
            json: false,
            shuffle: false,
            shuffle_window: 1 << 16,
            skip_bad: false,
            format: DataFormat::Auto,
            checkpoint_every: None,
            eval_every: None,
            max_steps: None,
        }
    }
}

/// `dlrs eval`: metrics of a model on labelled data.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalConfig {
    pub model: PathBuf,
    /// labelled data: JSON Lines or Criteo TSV; gzip/zstd accepted
    pub data: PathBuf,
    /// default 1024
    pub batch: usize,
    /// default 1
    pub threads: usize,
    /// default by content
    pub format: DataFormat,
    pub skip_bad: bool,
    /// print one JSON object
    pub json: bool,
}

impl EvalConfig {
    /// The defaults of `dlrs eval`, scoring `model` on `data`.
    pub fn new(model: impl Into<PathBuf>, data: impl Into<PathBuf>) -> Self {
        EvalConfig {
            model: model.into(),
            data: data.into(),
            batch: 1024,
            threads: 1,
            format: DataFormat::Auto,
            skip_bad: false,
            json: false,
        }
    }
}

/// `dlrs synth`: labelled samples (JSON Lines) from a random teacher DLRM. Exactly one of
/// `preset` and `model` gives the teacher's architecture.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthConfig {
    /// the teacher's architecture; its weights are random, seeded by `teacher`
    pub preset: Option<String>,
    /// with `preset`: cap every table at this many rows
    pub rows_cap: Option<usize>,
    /// a model directory whose architecture the teacher takes (weights random from
    /// `teacher`; with `use_weights`, the directory's own weights are the teacher)
    pub model: Option<PathBuf>,
    pub use_weights: bool,
    /// seed of the teacher's weights (with `use_weights`: unused), and of the samples
    /// unless `seed` is given; default 0
    pub teacher: u64,
    /// seed of the samples only (default: `teacher`): teacher 7 with seed 1 and teacher 7
    /// with seed 2 are a train set and a held-out set from one teacher
    pub seed: Option<u64>,
    /// number of samples
    pub rows: u64,
    /// output file (`.gz` is gzip-compressed); `-` for stdout
    pub out: PathBuf,
    /// id distribution: `uniform` (the default) or `zipf:S`
    pub dist: String,
    /// ids per bag (default: the preset's, 1 for `model`)
    pub ids_per_table: Option<usize>,
    /// default 1
    pub threads: usize,
    /// also write the teacher as a model directory (its AUC on the samples is the ceiling
    /// a student can reach)
    pub save_teacher: Option<PathBuf>,
    /// random teacher: table values U(±S); default 1
    pub emb_scale: f32,
    /// random teacher: final layer scaled by S (higher: sharper probabilities, higher AUC);
    /// default 2
    pub logit_scale: f32,
    /// random teacher: mean click probability (its final bias is set for it); default 0.25
    pub ctr: f64,
    /// write raw 64-bit ids instead of rows: row `j` of table `t` (the teacher's embedding
    /// of that id) is written as [`synth_raw_id`](crate::synth::synth_raw_id)`(teacher, t,
    /// j)`, one random-looking id per row, so the table's row count is the vocabulary
    pub raw_ids: bool,
    /// vocabulary drift: over the file every id drawn moves by `drift * rows` rows (row `j`
    /// of a sample a fraction `f` into the file becomes `(j + floor(f * drift * rows)) mod
    /// rows`, labels from the moved rows), so the hot ids of the end are new ones; default 0
    pub drift: f64,
}

impl SynthConfig {
    /// The defaults of `dlrs synth`, writing `rows` samples to `out`; the architecture
    /// (`preset` or `model`) is still to be set.
    pub fn new(rows: u64, out: impl Into<PathBuf>) -> Self {
        let shape = crate::synth::TeacherShape::default();
        SynthConfig {
            preset: None,
            rows_cap: None,
            model: None,
            use_weights: false,
            teacher: 0,
            seed: None,
            rows,
            out: out.into(),
            dist: "uniform".into(),
            ids_per_table: None,
            threads: 1,
            save_teacher: None,
            emb_scale: shape.emb_scale,
            logit_scale: shape.logit_scale,
            ctr: shape.ctr,
            raw_ids: false,
            drift: 0.0,
        }
    }
}

/// The value of the one flag of `group` that is given (`options[i]` is the value of
/// `group[i]`), or an error naming the group (none given) or the flags given together.
pub(crate) fn exactly_one<T>(
    group: &'static [&'static str],
    options: impl IntoIterator<Item = Option<T>>,
) -> Result<T> {
    let mut given: Vec<(&'static str, T)> = group
        .iter()
        .copied()
        .zip(options)
        .filter_map(|(flag, o)| o.map(|v| (flag, v)))
        .collect();
    if given.len() == 1
        && let Some((_, v)) = given.pop()
    {
        return Ok(v);
    }
    Err(TrainError::FlagGroup {
        group,
        given: given.into_iter().map(|(flag, _)| flag).collect(),
    })
}

/// A preset's config, tables capped at `rows_cap`, and the preset's ids per bag.
pub(crate) fn preset_config(name: &str, rows_cap: Option<usize>) -> Result<(DlrmConfig, usize)> {
    let mut p = presets::preset(name)?;
    if let Some(cap) = rows_cap {
        if cap == 0 {
            return Err(TrainError::setting("rows-cap", "must be positive"));
        }
        p.config.tables.iter_mut().for_each(|r| *r = (*r).min(cap));
    }
    Ok((p.config, p.ids_per_table))
}
