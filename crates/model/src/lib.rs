//! dlrs model: a DLRM as the reference PyTorch implementation defines it.
//!
//! - [`config`]: `config.json` with the reference's flag names, validated.
//! - [`model`]: [`Model`], loaded from and saved to a model directory.
//! - [`weights`] and [`format`]: parameters, and `model.safetensors` with the reference
//!   state-dict keys and dlrs's checksum manifest.
//! - [`tables`]: embedding tables behind the row-source contract (ids in, pooled vectors
//!   out): in RAM on huge pages, memory-mapped with checksums, row caches.
//! - [`batch`]: validated jagged batches and the JSON Lines sample format.
//! - [`forward`]: the one forward pass, threads splitting the batch; training runs it with
//!   its activations kept.
//! - [`presets`] and [`synth`]: RMC1/2/3 and Criteo shapes, synthetic inputs; [`bench`]:
//!   timing the forward pass on them (`dlrs bench`, `dlrs report`).
//! - [`files`]: reading files safely (regular files only, size bounds); [`sys`]: thread
//!   scheduling.
//!
//! ```no_run
//! use dlrs_model::{Batch, Executor, Model, Workspace, batch::parse_sample};
//! let model = Model::load(std::path::Path::new("my-model"))?;
//! let mut batch = Batch::empty(&model.config);
//! let s = parse_sample(r#"{"dense": [0.5, 1.0], "sparse": [[3, 7], []]}"#, &model.config)?;
//! batch.push(&model.config, &s)?;
//! let scores = model.forward(&batch, &mut Workspace::default(), &Executor::new(1)?)?;
//! # Ok::<(), dlrs_model::ModelError>(())
//! ```

pub mod batch;
pub mod bench;
pub mod config;
pub mod error;
pub mod files;
pub mod format;
pub mod forward;
pub mod metrics;
pub mod model;
pub mod presets;
pub mod synth;
pub mod sys;
pub mod tables;
pub mod weights;

pub use batch::{Bags, Batch, Sample, Values};
pub use config::{DlrmConfig, Interaction, MlpDtype, RowFormat};
pub use error::ModelError;
pub use forward::{Activations, Executor, StageTimes, Workspace};
pub use model::{CONFIG_FILE, Model, Quantized, Verified, WEIGHTS_FILE};
pub use weights::TableMode;
