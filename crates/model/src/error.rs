//! The typed errors of the model crate. Every variant names what was wrong: the config
//! field, the tensor, or the input line and field.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// config.json is missing a field, has an unknown one, or its values disagree.
    #[error("config: field `{field}`: {msg}")]
    Config { field: String, msg: String },

    /// A tensor of model.safetensors is missing, unexpected, or has the wrong shape/dtype.
    #[error("{path}: tensor `{tensor}`: {msg}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        msg: String,
    },

    /// A tensor's bytes do not match the checksum its manifest recorded.
    #[error("{path}: tensor `{tensor}`: {msg} (the file is corrupt; its rows are not served)")]
    Corrupt {
        path: PathBuf,
        tensor: String,
        msg: String,
    },

    /// The file is not a readable safetensors file.
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },

    /// An input sample is malformed.
    #[error("{}", input_message(line, field, msg))]
    Input {
        line: Option<usize>,
        field: String,
        msg: String,
    },

    /// A file cannot be read. The OS error is part of the message and deliberately not the
    /// error's `source()`, so that a chain printer (anyhow's `{:#}`) says it once.
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },

    /// A remote table tier (a Redis Cluster) could not deliver table `table`'s rows of a
    /// batch in time: the batch fails (a server answers 503 naming the tier).
    #[error("table {table}: the {tier} tier is unavailable: {msg}")]
    Unavailable {
        tier: &'static str,
        table: usize,
        msg: String,
    },

    /// A remote table tier (a Redis Cluster) refused to serve the model's tables at load:
    /// unreachable, or it holds no complete push of them.
    #[error("the {tier} tier: {msg}")]
    Tier { tier: &'static str, msg: String },

    #[error("unknown preset `{0}` (known: {known})", known = crate::presets::names().join(", "))]
    UnknownPreset(String),
}

fn input_message(line: &Option<usize>, field: &str, msg: &str) -> String {
    match (line, field.is_empty()) {
        (Some(l), false) => format!("line {l}: field `{field}`: {msg}"),
        (Some(l), true) => format!("line {l}: {msg}"),
        (None, false) => format!("field `{field}`: {msg}"),
        (None, true) => msg.to_string(),
    }
}

impl ModelError {
    pub(crate) fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        ModelError::Config {
            field: field.into(),
            msg: msg.into(),
        }
    }
    /// An input error about `field` (see [`ModelError::Input`]).
    pub fn input(field: impl Into<String>, msg: impl Into<String>) -> Self {
        ModelError::Input {
            line: None,
            field: field.into(),
            msg: msg.into(),
        }
    }
    pub(crate) fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            err,
        }
    }
    /// Attaches a 1-based input line number to an input error.
    pub fn at_line(self, line: usize) -> Self {
        match self {
            ModelError::Input { field, msg, .. } => ModelError::Input {
                line: Some(line),
                field,
                msg,
            },
            other => other,
        }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
