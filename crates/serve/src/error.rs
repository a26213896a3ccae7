//! The server's errors: [`ServeError`], why the server could not start or keep serving, and
//! [`ApiError`], why one request failed, with the HTTP status each maps to (see the crate
//! docs' table).

use std::path::PathBuf;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dlrs_model::ModelError;

/// Why the server could not start, or stopped serving. An OS or model error is the
/// `source()`, never part of the message, so that a chain printer (anyhow's `{:#}`) says it
/// once.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A setting is out of range or does not fit another; `flag` is its command-line name.
    #[error("{flag} {msg}")]
    Flag { flag: &'static str, msg: String },
    /// The model directory did not load.
    #[error("loading the model from {}", dir.display())]
    Load {
        dir: PathBuf,
        #[source]
        source: ModelError,
    },
    /// The thread loading the model panicked.
    #[error("loading the model")]
    LoadPanicked(#[source] tokio::task::JoinError),
    /// `--keep-reload-memory`: the memory for a second copy of the tables was refused.
    #[error("reserving memory for reloads (--keep-reload-memory)")]
    ReserveReloadMemory(#[source] std::io::Error),
    /// The compute instances' threads could not be started.
    #[error("starting the compute threads")]
    ComputeThreads(#[source] std::io::Error),
    /// The HTTP side's tokio runtime could not be started.
    #[error("starting the tokio runtime")]
    Runtime(#[source] std::io::Error),
    /// The listening socket could not be bound.
    #[error("listening on {addr}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The listener's own address could not be read.
    #[error("reading the listener's address")]
    ListenerAddress(#[source] std::io::Error),
    /// Serving connections failed.
    #[error("serving HTTP")]
    Http(#[source] std::io::Error),
}

impl ServeError {
    pub(crate) fn flag(flag: &'static str, msg: impl Into<String>) -> Self {
        ServeError::Flag {
            flag,
            msg: msg.into(),
        }
    }
}

/// A request's failure; the message names the offending field, tensor or header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiError {
    /// 400: the request is malformed or does not fit the model.
    BadRequest(String),
    /// 403: a feature this server was not started with (e.g. `--allow-client-shm`).
    Forbidden(String),
    /// 404: unknown model, model version or path.
    NotFound(String),
    /// 405: known path, wrong method.
    MethodNotAllowed(String),
    /// 408: the body did not arrive in time.
    BodyTimeout(String),
    /// 413: the body or the request is larger than the server takes.
    TooLarge(String),
    /// 500: the computation of the request's batch failed or panicked.
    Internal(String),
    /// 500: a reload was refused; the old version keeps serving.
    ReloadFailed(String),
    /// 503 with `Retry-After: 1`: the queue, or the memory for request bodies, is full.
    Overloaded(String),
    /// 503 with `Retry-After: 1`: the server is shutting down.
    ShuttingDown(String),
    /// 503 with `Retry-After: 1`: a remote table tier (a Redis Cluster) did not deliver the
    /// batch's rows in time; the message names the tier and table.
    TierUnavailable(String),
    /// 504: the deadline passed before the request was computed.
    DeadlineExceeded(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::ReloadFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::ShuttingDown(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TierUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Seconds a client should wait before retrying, for the statuses that have one.
    fn retry_after(&self) -> Option<u32> {
        match self {
            ApiError::Overloaded(_) | ApiError::ShuttingDown(_) | ApiError::TierUnavailable(_) => {
                Some(1)
            }
            ApiError::BadRequest(_)
            | ApiError::Forbidden(_)
            | ApiError::NotFound(_)
            | ApiError::MethodNotAllowed(_)
            | ApiError::BodyTimeout(_)
            | ApiError::TooLarge(_)
            | ApiError::Internal(_)
            | ApiError::ReloadFailed(_)
            | ApiError::DeadlineExceeded(_) => None,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            ApiError::BadRequest(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::MethodNotAllowed(m)
            | ApiError::BodyTimeout(m)
            | ApiError::TooLarge(m)
            | ApiError::Internal(m)
            | ApiError::ReloadFailed(m)
            | ApiError::Overloaded(m)
            | ApiError::ShuttingDown(m)
            | ApiError::TierUnavailable(m)
            | ApiError::DeadlineExceeded(m) => m,
        }
    }

    /// An error of the request's input (its batch failed validation).
    pub fn from_input(e: ModelError) -> Self {
        match &e {
            ModelError::Input { .. } => ApiError::BadRequest(e.to_string()),
            ModelError::Config { .. }
            | ModelError::Tensor { .. }
            | ModelError::Corrupt { .. }
            | ModelError::Format { .. }
            | ModelError::Io { .. }
            | ModelError::Unavailable { .. }
            | ModelError::Tier { .. }
            | ModelError::UnknownPreset(_) => ApiError::Internal(e.to_string()),
        }
    }

    /// An error of a batch's forward pass (its input was validated already, so every kind
    /// is the server's fault: e.g. table rows failing their checksum).
    pub fn from_compute(e: ModelError) -> Self {
        match &e {
            ModelError::Unavailable { .. } => {
                ApiError::TierUnavailable(format!("computing the batch failed: {e}"))
            }
            ModelError::Corrupt { .. }
            | ModelError::Tier { .. }
            | ModelError::Input { .. }
            | ModelError::Config { .. }
            | ModelError::Tensor { .. }
            | ModelError::Format { .. }
            | ModelError::Io { .. }
            | ModelError::UnknownPreset(_) => {
                ApiError::Internal(format!("computing the batch failed: {e}"))
            }
        }
    }

    /// An error loading a new model version.
    pub fn from_load(e: ModelError, still_serving: u64) -> Self {
        let why = match &e {
            ModelError::Config { .. } => "its config.json is invalid",
            ModelError::Tensor { .. } => {
                "a tensor of its model.safetensors does not fit the config"
            }
            ModelError::Corrupt { .. } => "its model.safetensors is corrupt",
            ModelError::Format { .. } => "its model.safetensors is not a safetensors file",
            ModelError::Io { .. } => "its files cannot be read",
            ModelError::Unavailable { .. } => "its remote table tier is unavailable",
            ModelError::Tier { .. } => "its remote table tier refused its tables",
            ModelError::Input { .. } | ModelError::UnknownPreset(_) => "it failed",
        };
        ApiError::ReloadFailed(format!(
            "new version refused because {why}: {e}; still serving version {still_serving}"
        ))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status().as_u16(), self.message())
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message() });
        let mut resp = (self.status(), axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
