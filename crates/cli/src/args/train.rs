//! `dlrs train`, `dlrs eval` and `dlrs synth`: the flags, parsed into
//! [`TrainConfig`], [`EvalConfig`] and [`SynthConfig`].

use std::path::PathBuf;

use clap::ArgGroup;
use dlrs_train::data::DataFormat;
use dlrs_train::optim::{DenseOptimizer, SparseOptimizer};
use dlrs_train::{EvalConfig, SynthConfig, TrainConfig};

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
    /// with --preset: the id map of all tables, or of the listed ones (`0,3-5=SPEC`);
    /// repeatable, later flags override. SPEC: index, hash, or
    /// collisionless[:admit=K,ttl=N|Ns,evict=lfu|lru,miss=zero|default] (docs/id-maps.md)
    #[arg(long = "id-map", value_name = "[TABLES=]SPEC", requires = "preset")]
    pub id_maps: Vec<String>,
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
    #[arg(long, value_enum, default_value_t = SparseOptimizerArg::Sgd)]
    pub optimizer: SparseOptimizerArg,
    /// optimizer of the MLPs
    #[arg(long, value_enum, default_value_t = DenseOptimizerArg::Sgd)]
    pub dense_optimizer: DenseOptimizerArg,
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
    #[arg(long, value_enum, default_value_t = DataFormatArg::Auto)]
    pub format: DataFormatArg,
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
    #[arg(long, value_enum, default_value_t = DataFormatArg::Auto)]
    pub format: DataFormatArg,
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
    /// write raw 64-bit ids (one random-looking id per table row: the row count is the
    /// vocabulary) instead of rows, for tables with hash or collisionless id maps
    #[arg(long)]
    pub raw_ids: bool,
    /// vocabulary drift: ids move by DRIFT * rows rows over the file (new ids become hot)
    #[arg(long, default_value_t = 0.0)]
    pub drift: f64,
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

/// The optimizer of the embedding tables (`--optimizer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SparseOptimizerArg {
    Sgd,
    Adagrad,
    RowwiseAdagrad,
}

/// The optimizer of the MLPs (`--dense-optimizer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DenseOptimizerArg {
    Sgd,
    Adagrad,
    Adam,
}

/// The input format (`--format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DataFormatArg {
    /// by content: JSON Lines when the first byte is `{`, else Criteo TSV
    Auto,
    Jsonl,
    Criteo,
}

impl From<SparseOptimizerArg> for SparseOptimizer {
    fn from(o: SparseOptimizerArg) -> Self {
        match o {
            SparseOptimizerArg::Sgd => SparseOptimizer::Sgd,
            SparseOptimizerArg::Adagrad => SparseOptimizer::Adagrad,
            SparseOptimizerArg::RowwiseAdagrad => SparseOptimizer::RowwiseAdagrad,
        }
    }
}

impl From<DenseOptimizerArg> for DenseOptimizer {
    fn from(o: DenseOptimizerArg) -> Self {
        match o {
            DenseOptimizerArg::Sgd => DenseOptimizer::Sgd,
            DenseOptimizerArg::Adagrad => DenseOptimizer::Adagrad,
            DenseOptimizerArg::Adam => DenseOptimizer::Adam,
        }
    }
}

impl From<DataFormatArg> for DataFormat {
    fn from(f: DataFormatArg) -> Self {
        match f {
            DataFormatArg::Auto => DataFormat::Auto,
            DataFormatArg::Jsonl => DataFormat::Jsonl,
            DataFormatArg::Criteo => DataFormat::Criteo,
        }
    }
}

impl From<TrainArgs> for TrainConfig {
    fn from(a: TrainArgs) -> Self {
        TrainConfig {
            model: a.model,
            preset: a.preset,
            rows_cap: a.rows_cap,
            id_maps: a.id_maps,
            resume: a.resume,
            new_data: a.new_data,
            train: a.train,
            eval: a.eval,
            out: a.out,
            epochs: a.epochs,
            batch: a.batch,
            lr: a.lr,
            sparse_lr: a.sparse_lr,
            dense_lr: a.dense_lr,
            optimizer: a.optimizer.into(),
            dense_optimizer: a.dense_optimizer.into(),
            threads: a.threads,
            seed: a.seed,
            json: a.json,
            shuffle: a.shuffle,
            shuffle_window: a.shuffle_window,
            skip_bad: a.skip_bad,
            format: a.format.into(),
            checkpoint_every: a.checkpoint_every,
            eval_every: a.eval_every,
            max_steps: a.max_steps,
        }
    }
}

impl From<EvalArgs> for EvalConfig {
    fn from(a: EvalArgs) -> Self {
        EvalConfig {
            model: a.model,
            data: a.data,
            batch: a.batch,
            threads: a.threads,
            format: a.format.into(),
            skip_bad: a.skip_bad,
            json: a.json,
        }
    }
}

impl From<SynthArgs> for SynthConfig {
    fn from(a: SynthArgs) -> Self {
        SynthConfig {
            preset: a.preset,
            rows_cap: a.rows_cap,
            model: a.model,
            use_weights: a.use_weights,
            teacher: a.teacher,
            seed: a.seed,
            rows: a.rows,
            out: a.out,
            dist: a.dist,
            ids_per_table: a.ids_per_table,
            threads: a.threads,
            save_teacher: a.save_teacher,
            emb_scale: a.emb_scale,
            logit_scale: a.logit_scale,
            ctr: a.ctr,
            raw_ids: a.raw_ids,
            drift: a.drift,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{Parser, ValueEnum};

    use super::*;

    #[derive(Parser)]
    enum Cmd {
        Train(TrainArgs),
        Eval(EvalArgs),
        Synth(SynthArgs),
    }

    fn parse(args: &[&str]) -> Cmd {
        Cmd::try_parse_from(std::iter::once("dlrs").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// What the flags leave unsaid is what the library's defaults say.
    #[test]
    fn parsed_defaults_are_the_library_defaults() {
        let Cmd::Train(a) = parse(&["train", "--model", "m", "--train", "t", "--out", "o"]) else {
            panic!("not train")
        };
        let want = TrainConfig {
            model: Some("m".into()),
            ..TrainConfig::new("t", "o")
        };
        assert_eq!(TrainConfig::from(a), want);

        let Cmd::Eval(a) = parse(&["eval", "--model", "m", "--data", "d"]) else {
            panic!("not eval")
        };
        assert_eq!(EvalConfig::from(a), EvalConfig::new("m", "d"));

        let Cmd::Synth(a) = parse(&["synth", "--preset", "rmc1", "--rows", "7", "--out", "o"])
        else {
            panic!("not synth")
        };
        let want = SynthConfig {
            preset: Some("rmc1".into()),
            ..SynthConfig::new(7, "o")
        };
        assert_eq!(SynthConfig::from(a), want);
    }

    /// Every flag reaches its field.
    #[test]
    fn every_train_flag_is_converted() {
        let Cmd::Train(a) = parse(&[
            "train",
            "--resume",
            "r",
            "--new-data",
            "--train",
            "t",
            "--eval",
            "e",
            "--out",
            "o",
            "--epochs",
            "3",
            "--batch",
            "7",
            "--lr",
            "0.5",
            "--sparse-lr",
            "0.25",
            "--dense-lr",
            "0.125",
            "--optimizer",
            "rowwise-adagrad",
            "--dense-optimizer",
            "adam",
            "--threads",
            "2",
            "--seed",
            "9",
            "--json",
            "--shuffle",
            "--shuffle-window",
            "11",
            "--skip-bad",
            "--format",
            "criteo",
            "--checkpoint-every",
            "5",
            "--eval-every",
            "6",
            "--max-steps",
            "13",
        ]) else {
            panic!("not train")
        };
        let want = TrainConfig {
            resume: Some("r".into()),
            new_data: true,
            eval: Some("e".into()),
            epochs: 3,
            batch: 7,
            lr: 0.5,
            sparse_lr: Some(0.25),
            dense_lr: Some(0.125),
            optimizer: SparseOptimizer::RowwiseAdagrad,
            dense_optimizer: DenseOptimizer::Adam,
            threads: 2,
            seed: 9,
            json: true,
            shuffle: true,
            shuffle_window: 11,
            skip_bad: true,
            format: DataFormat::Criteo,
            checkpoint_every: Some(5),
            eval_every: Some(6),
            max_steps: Some(13),
            ..TrainConfig::new("t", "o")
        };
        assert_eq!(TrainConfig::from(a), want);
    }

    /// The flags' values are the names the library gives its optimizers (and writes in
    /// checkpoints).
    #[test]
    fn optimizer_values_are_the_library_names() {
        for v in SparseOptimizerArg::value_variants() {
            let name = v.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(SparseOptimizer::from(*v).name(), name);
            assert_eq!(SparseOptimizer::parse(&name), Some((*v).into()));
        }
        for v in DenseOptimizerArg::value_variants() {
            let name = v.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(DenseOptimizer::from(*v).name(), name);
            assert_eq!(DenseOptimizer::parse(&name), Some((*v).into()));
        }
    }
}
