//! The load generator's typed error. Every variant names what was wrong: the flag, the file,
//! the server's address or URL path. An OS, HTTP or model error is the `source()`, never
//! part of the message, so that a chain printer (anyhow's `{:#}`) says it once.

use std::net::SocketAddr;
use std::path::PathBuf;

use dlrs_model::ModelError;

/// Any error a `source` may be (an HTTP client's, a plot backend's, ...).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// A setting is out of range, malformed, or needs another; `flag` is its command-line
    /// name (e.g. `--qps`, `--query-size`).
    #[error("{flag} {msg}")]
    Flag { flag: &'static str, msg: String },

    /// `--url` is not a URL at all.
    #[error("--url `{url}` is not a URL")]
    Url {
        url: String,
        #[source]
        source: hyper::http::uri::InvalidUri,
    },

    /// One measurement would schedule more queries than it may hold.
    #[error("{qps} QPS for {duration_s} s is {expected:.0} queries; at most {max} per measurement")]
    TooManyQueries {
        qps: f64,
        duration_s: f64,
        expected: f64,
        max: usize,
    },

    /// A `--query-size file:PATH` cannot be read.
    #[error("reading query sizes from {}", path.display())]
    ReadSizes {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A `--query-size file:PATH` has a bad line (`line`) or no sizes at all.
    #[error("{}", sizes_message(path, *line, msg))]
    Sizes {
        path: PathBuf,
        line: Option<usize>,
        msg: String,
    },

    /// The server's host name does not resolve.
    #[error("resolving {host}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },

    /// The server's host name resolves to no address.
    #[error("{host} has no address")]
    NoAddress { host: String },

    /// A connection to the server could not be opened.
    #[error("connecting to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// A connection to the server was not opened within 5 s.
    #[error("connecting to {addr} timed out")]
    ConnectTimeout {
        addr: SocketAddr,
        #[source]
        source: tokio::time::error::Elapsed,
    },

    /// The HTTP/1.1 handshake on a new connection failed.
    #[error("HTTP handshake with {addr}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },

    /// A control request (metadata, shared memory registration) could not be sent, or
    /// failed.
    #[error("{method} {path}")]
    Request {
        method: String,
        path: String,
        #[source]
        source: BoxError,
    },

    /// A control request was not answered within 10 s.
    #[error("{method} {path} timed out")]
    RequestTimeout {
        method: String,
        path: String,
        #[source]
        source: tokio::time::error::Elapsed,
    },

    /// A control request's answer could not be read.
    #[error("reading {method} {path}")]
    ReadAnswer {
        method: String,
        path: String,
        #[source]
        source: hyper::Error,
    },

    /// The model's metadata (`GET path`) is missing or does not describe a model queries can
    /// be made for.
    #[error("GET {path}: {msg}")]
    Metadata {
        path: String,
        msg: String,
        #[source]
        source: Option<BoxError>,
    },

    /// `--model-dir`'s config.json (`file`) does not describe the served model.
    #[error("{} {msg}", file.display())]
    ModelDirMismatch { file: PathBuf, msg: String },

    /// The model (a `--model-dir`'s config.json, the twin's model) did not load.
    #[error(transparent)]
    Model(#[from] ModelError),

    /// The twin's model directory did not load.
    #[error("loading the model from {}", dir.display())]
    LoadModel {
        dir: PathBuf,
        #[source]
        source: ModelError,
    },

    /// A synthetic query could not be generated for the model.
    #[error("generating a synthetic query")]
    Synth(#[source] ModelError),

    /// There are no queries to use: to "send", to "write to shared memory".
    #[error("no queries to {0}")]
    NoQueries(&'static str),

    /// The serving settings of the twin (instances and threads) do not fit.
    #[error(transparent)]
    Serve(#[from] dlrs_serve::ServeError),

    /// A runtime or the compute threads could not be started (`what`).
    #[error("starting {what}")]
    Start {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The shared memory object `path` could not be created.
    #[error("creating the shared memory object {}", path.display())]
    ShmCreate {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The queries could not be written to the shared memory object `path`.
    #[error("writing the queries to {}", path.display())]
    ShmWrite {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The shared memory object `path` could not be removed once registered.
    #[error("removing {} after registering it", path.display())]
    ShmRemove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The server refused to register the shared memory region.
    #[error("registering shared memory region \"{region}\" (POST {path}): HTTP {status}: {answer}")]
    Register {
        region: String,
        path: String,
        status: u16,
        answer: String,
    },

    /// The plot could not be drawn.
    #[error("drawing the plot: {0}")]
    Draw(String),

    /// The plot file `path` could not be created or written (`what`).
    #[error("{what} {}", path.display())]
    PlotFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: BoxError,
    },

    /// The JSON object could not be written to stdout.
    #[error("writing the report to stdout")]
    Stdout(#[source] std::io::Error),
}

impl LoadgenError {
    pub(crate) fn flag(flag: &'static str, msg: impl Into<String>) -> Self {
        LoadgenError::Flag {
            flag,
            msg: msg.into(),
        }
    }

    pub(crate) fn metadata(path: &str, msg: impl Into<String>) -> Self {
        LoadgenError::Metadata {
            path: path.to_string(),
            msg: msg.into(),
            source: None,
        }
    }
}

fn sizes_message(path: &std::path::Path, line: Option<usize>, msg: &str) -> String {
    match line {
        Some(l) => format!("{}: line {l}: {msg}", path.display()),
        None => format!("{}: {msg}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_flag_file_and_request() {
        assert_eq!(
            LoadgenError::flag("--qps", "must be positive").to_string(),
            "--qps must be positive"
        );
        let e = LoadgenError::Sizes {
            path: "sizes.txt".into(),
            line: Some(3),
            msg: "`x` is not a weight".into(),
        };
        assert_eq!(e.to_string(), "sizes.txt: line 3: `x` is not a weight");
        let e = LoadgenError::Request {
            method: "POST".into(),
            path: "/v2/systemsharedmemory/region/r/register".into(),
            source: "connection closed".into(),
        };
        assert_eq!(
            e.to_string(),
            "POST /v2/systemsharedmemory/region/r/register"
        );
        assert_eq!(
            std::error::Error::source(&e).unwrap().to_string(),
            "connection closed"
        );
    }
}
