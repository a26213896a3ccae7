//! What can go wrong making or comparing a report.

use std::path::PathBuf;

/// A report's failure, naming the model, file or option at fault.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// An option is out of range or the models are not given right.
    #[error("{option}: {msg}")]
    Option { option: &'static str, msg: String },

    /// A model could not be built, loaded or run.
    #[error("model {model}")]
    Model {
        model: String,
        #[source]
        source: dlrs_model::ModelError,
    },

    /// Probing the machine failed.
    #[error("probing the machine")]
    Probe(#[source] std::io::Error),

    /// The in-process serving twin failed.
    #[error("the serving twin for model {model}")]
    Twin {
        model: String,
        #[source]
        source: Box<dlrs_loadgen::LoadgenError>,
    },

    /// A chart could not be drawn or written.
    #[error("chart {id}")]
    Chart {
        id: String,
        #[source]
        source: Box<dlrs_loadgen::LoadgenError>,
    },

    /// A co-located instance's thread panicked or could not start.
    #[error("co-location: {0}")]
    Thread(String),

    /// A file could not be read or written.
    #[error("{what} {}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A report.json given to `--compare` is not one.
    #[error("{}: not a dlrs report: {msg}", path.display())]
    NotAReport { path: PathBuf, msg: String },

    /// A report.json given to `--compare` has another schema version.
    #[error(
        "{}: schema_version {found}, but this dlrs reads version {expected}; make both reports with the same dlrs",
        path.display()
    )]
    Schema {
        path: PathBuf,
        found: u64,
        expected: u32,
    },
}

impl ReportError {
    pub(crate) fn option(option: &'static str, msg: impl Into<String>) -> Self {
        ReportError::Option {
            option,
            msg: msg.into(),
        }
    }

    pub(crate) fn model(model: &str) -> impl FnOnce(dlrs_model::ModelError) -> Self + '_ {
        move |source| ReportError::Model {
            model: model.to_string(),
            source,
        }
    }
}
