//! dlrs-redis: a model's embedding tables in a Redis Cluster, behind a local row cache.
//!
//! - [`push`]: `dlrs push` writes a model's tables, in their row formats, into the cluster:
//!   streamed a window at a time, pipelined, resumable, visible only once complete.
//! - [`RedisTables`]: the tables as a [`dlrs_model::tables::RemoteTables`] tier; set as
//!   [`dlrs_model::Model::remote`] (see [`load_model`]), the forward fetches each batch's
//!   missing rows with one round trip per node and pools them with the table kernels.
//! - [`layout`]: the keys, values and version record (docs/redis.md).
//!
//! ```no_run
//! use dlrs_redis::{TierOptions, load_model, parse_nodes};
//! let opts = TierOptions::new(parse_nodes("redis://127.0.0.1:7000")?);
//! let model = load_model(std::path::Path::new("my-model"), &opts)?;
//! # Ok::<(), dlrs_redis::TierError>(())
//! ```

pub mod cache;
mod conn;
pub mod error;
pub mod layout;
pub mod push;
pub mod source;

pub use conn::parse_nodes;
pub use error::TierError;
pub use push::{PushOptions, PushReport, push};
pub use source::{OnMiss, RedisTables, TIER, TierOptions, load_model};
