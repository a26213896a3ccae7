//! The typed errors of the Redis tier.

use std::path::PathBuf;

use dlrs_model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum TierError {
    /// `--redis`/`--tables` is not a list of `redis://HOST:PORT` addresses.
    #[error("`{0}`: expected redis://HOST:PORT[,HOST:PORT...]")]
    Address(String),
    /// The namespace cannot sit inside a hash tag.
    #[error(
        "namespace `{0}`: use 1 to 64 letters, digits, `-`, `_` or `.` (it is part of every key)"
    )]
    Namespace(String),
    /// A setting is out of range.
    #[error("{flag} {msg}")]
    Flag { flag: &'static str, msg: String },
    /// The model has no checksum manifest, so its tables have no identity to push under.
    #[error(
        "{}: the model has no checksum manifest, which identifies its tables in Redis: run `dlrs manifest --model {}` first",
        dir.display(), dir.display()
    )]
    NoManifest { dir: PathBuf },
    /// The model directory did not load.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Redis refused or failed a command, or could not be reached in time.
    #[error("redis: {what}: {msg}")]
    Redis { what: String, msg: String },
    /// The namespace holds no complete push of this model's tables.
    #[error(
        "redis namespace `{ns}` holds no complete push of this model's tables (digest {digest}){current}: run `dlrs push --model DIR --redis ... --namespace {ns}` first"
    )]
    NotPushed {
        ns: String,
        digest: String,
        /// what the namespace serves now, if anything (", it holds ... ")
        current: String,
    },
    /// The version record does not describe this model's tables.
    #[error("redis namespace `{ns}`: the version record of digest {digest} {msg}")]
    Mismatch {
        ns: String,
        digest: String,
        msg: String,
    },
    /// The tier's tokio runtime could not be started.
    #[error("starting the redis tier's runtime: {0}")]
    Runtime(std::io::Error),
}

/// A load through the tier, as the model crate's error (what a server's load reports).
impl From<TierError> for ModelError {
    fn from(e: TierError) -> Self {
        match e {
            TierError::Model(m) => m,
            other => ModelError::Tier {
                tier: crate::TIER,
                msg: other.to_string(),
            },
        }
    }
}

impl TierError {
    pub(crate) fn redis(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        TierError::Redis {
            what: what.into(),
            msg: e.to_string(),
        }
    }
}
