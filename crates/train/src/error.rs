//! The errors of training, evaluation and synthetic data: each variant names the offending
//! thing (the flag, the data file and line, the checkpoint file, the path of a failed I/O).
//!
//! Every message is whole in its `Display`: a nested error (an OS error, a
//! [`ModelError`]) is part of the message and never also the error's `source()`, so that a
//! chain printer (anyhow's `{:#}`) says each thing once, and `to_string()` alone says it all.

use std::path::PathBuf;

use dlrs_model::ModelError;

/// What went wrong in `dlrs train`, `dlrs eval` or `dlrs synth`.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A setting is out of range: `--batch must be positive`.
    #[error("--{flag} {msg}")]
    Setting { flag: &'static str, msg: String },

    /// Not exactly one flag of a group that needs exactly one: `--model`, `--preset` or
    /// `--resume` for `train`, `--preset` or `--model` for `synth`. (The CLI's parser
    /// refuses these first; a library caller meets them here.)
    #[error("{}", flag_group_message(group, given))]
    FlagGroup {
        /// the group's flags, without the `--`
        group: &'static [&'static str],
        /// the ones given
        given: Vec<&'static str>,
    },

    /// A resume with settings other than the checkpoint's.
    #[error(
        "a resumed run must use the settings it was started with: {}",
        join(changed, ", ")
    )]
    SettingsChanged { changed: Vec<SettingChange> },

    /// A resume on data other than the checkpoint's (its size or the hash of its head
    /// differ), without `--new-data`.
    #[error(
        "--train {given} is not the data this checkpoint was trained on ({}): the checkpoint \
         stopped at sample {sample} of epoch {epoch} of {trained_on}, and a resume continues \
         there in the same data. To train the checkpoint on other data, add --new-data (the \
         epoch count and the position start again at the new data's first sample; weights, \
         optimizer state and step are kept)",
        join(differences, "; ")
    )]
    OtherData {
        /// the `--train` data (canonical path)
        given: String,
        /// the data the checkpoint records
        trained_on: String,
        /// what differs: the size, the hash of the first
        /// [`DATA_HEAD_BYTES`](crate::checkpoint::DATA_HEAD_BYTES) bytes
        differences: Vec<String>,
        /// samples of the epoch the checkpoint had trained on
        sample: u64,
        /// the epoch it stopped in, 1-based
        epoch: u64,
    },

    /// A resume reading a pipe, whose data cannot be checked against the checkpoint's.
    #[error(
        "--train {}: the checkpoint was trained on {trained_on}, and a pipe cannot be checked \
         to be the same data; pass that file, or add --new-data",
        given.display()
    )]
    UncheckableData { given: PathBuf, trained_on: String },

    /// A resumed epoch starts after more samples than the data holds.
    #[error(
        "{}: holds {held} samples, but the resumed epoch starts after sample {skip} (not the \
         data the checkpoint was trained on?)",
        path.display()
    )]
    DataTooShort { path: PathBuf, held: u64, skip: u64 },

    /// A bad line of a data file: `FILE: line N: column C (...): what`.
    #[error("{}: line {line}: {}", path.display(), field_message(field, msg))]
    BadLine {
        path: PathBuf,
        /// 1-based
        line: usize,
        /// where in the line: `column 2 (dense 0)`, ``field `label` ``; empty for the line
        /// as a whole (a wrong column count)
        field: String,
        msg: String,
    },

    /// A validated sample did not fit its batch (a bug if ever seen).
    #[error("{}: {err}", path.display())]
    Batch { path: PathBuf, err: ModelError },

    /// `--out` holds a checkpoint and the run is not a resume.
    #[error(
        "{} holds a training checkpoint: pass --resume {} to continue it, or choose another --out",
        out.display(),
        out.display()
    )]
    OutHoldsCheckpoint { out: PathBuf },

    /// `--out` is a directory with files that is not a model directory.
    #[error("{} exists and is not a model directory: refusing to replace it", out.display())]
    OutNotModel { out: PathBuf },

    /// A model that cannot be trained: `table 1 is int8: training needs fp32 tables ...`.
    #[error("table {table} {msg}")]
    NotTrainable { table: usize, msg: String },

    /// A checkpoint file (or directory) that is malformed, or that disagrees with the rest
    /// of its checkpoint: `OUT/train_state.json: field `step` missing or not an integer`.
    #[error("{}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },

    /// A model directory that does not load.
    #[error("loading {}: {err}", dir.display())]
    Load { dir: PathBuf, err: ModelError },

    /// The teacher of `dlrs synth` could not be written.
    #[error("writing the teacher to {}: {err}", dir.display())]
    SaveTeacher { dir: PathBuf, err: ModelError },

    /// A model error without a path of ours to add (an unknown preset, a bad `--dist`, a
    /// forward that failed).
    #[error(transparent)]
    Model(#[from] ModelError),

    /// A file or directory operation failed: `opening data.tsv: No such file or directory`.
    #[error("{op} {}: {err}", path.display())]
    Io {
        /// what was being done: `opening`, `reading`, `removing`, ...
        op: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },

    /// A rename of a checkpoint directory failed.
    #[error("renaming {} to {}: {err}", from.display(), to.display())]
    Rename {
        from: PathBuf,
        to: PathBuf,
        err: std::io::Error,
    },

    /// The atomic exchange of a new checkpoint with the previous one failed.
    #[error("replacing {} with {}: {err}", out.display(), tmp.display())]
    Exchange {
        out: PathBuf,
        tmp: PathBuf,
        err: std::io::Error,
    },

    /// Writing a command's output (the report lines, the samples) failed.
    #[error("writing the output: {0}")]
    Output(std::io::Error),

    /// The thread pool of the training steps could not be built.
    #[error("building the thread pool: {0}")]
    ThreadPool(rayon::ThreadPoolBuildError),

    /// The data reader thread could not be started.
    #[error("starting the reader thread: {0}")]
    SpawnReader(std::io::Error),

    /// The data reader thread panicked.
    #[error("the reader thread panicked")]
    ReaderPanicked,
}

/// One setting a resume gives differently from the checkpoint:
/// `--batch 32 (the checkpoint has 64)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingChange {
    /// without the `--`
    pub flag: &'static str,
    pub given: String,
    pub checkpoint: String,
}

impl std::fmt::Display for SettingChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--{} {} (the checkpoint has {})",
            self.flag, self.given, self.checkpoint
        )
    }
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

impl TrainError {
    pub(crate) fn setting(flag: &'static str, msg: impl Into<String>) -> Self {
        TrainError::Setting {
            flag,
            msg: msg.into(),
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |err| TrainError::Io { op, path, err }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        TrainError::Checkpoint {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

fn join<T: std::fmt::Display>(items: &[T], sep: &str) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

fn field_message(field: &str, msg: &str) -> String {
    if field.is_empty() {
        msg.to_string()
    } else {
        format!("{field}: {msg}")
    }
}

fn flag_group_message(group: &[&str], given: &[&str]) -> String {
    let flags = |f: &[&str]| f.iter().map(|f| format!("--{f}")).collect::<Vec<_>>();
    if given.is_empty() {
        let mut all = flags(group);
        let last = all.pop().unwrap_or_default();
        if all.is_empty() {
            format!("{last} is required")
        } else {
            format!("one of {} or {last} is required", all.join(", "))
        }
    } else {
        format!(
            "{} cannot be used together: give one",
            flags(given).join(" and ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_flags() {
        let e = TrainError::FlagGroup {
            group: &["model", "preset", "resume"],
            given: vec![],
        };
        assert_eq!(
            e.to_string(),
            "one of --model, --preset or --resume is required"
        );
        let e = TrainError::FlagGroup {
            group: &["model", "preset", "resume"],
            given: vec!["model", "resume"],
        };
        assert_eq!(
            e.to_string(),
            "--model and --resume cannot be used together: give one"
        );
        let e = TrainError::SettingsChanged {
            changed: vec![
                SettingChange {
                    flag: "batch",
                    given: "32".into(),
                    checkpoint: "64".into(),
                },
                SettingChange {
                    flag: "lr",
                    given: "0.2".into(),
                    checkpoint: "0.1".into(),
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "a resumed run must use the settings it was started with: --batch 32 (the \
             checkpoint has 64), --lr 0.2 (the checkpoint has 0.1)"
        );
        let e = TrainError::BadLine {
            path: "d.tsv".into(),
            line: 4,
            field: String::new(),
            msg: "3 columns, expected 40".into(),
        };
        assert_eq!(e.to_string(), "d.tsv: line 4: 3 columns, expected 40");
    }

    #[test]
    fn an_os_error_is_said_once() {
        let e = TrainError::io("opening", "x.tsv")(std::io::Error::from_raw_os_error(2));
        assert_eq!(
            e.to_string(),
            "opening x.tsv: No such file or directory (os error 2)"
        );
        assert!(std::error::Error::source(&e).is_none());
    }
}
