//! dlrs model: a DLRM as the reference PyTorch implementation defines it.
//!
//! - [`config`]: `config.json` with the reference's flag names, validated.
//! - [`weights`]: parameters and `model.safetensors` with the reference state-dict keys.
//! - [`table`]: fp32 embedding tables on transparent huge pages.
//! - [`batch`]: validated jagged batches and the JSON Lines sample format.
//! - [`forward`]: the compiled forward pass, threads splitting the batch.
//! - [`presets`] and [`synth`]: RMC1/2/3 and Criteo Kaggle shapes, synthetic inputs.
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
pub mod cache;
pub mod config;
pub mod error;
pub mod files;
pub mod format;
pub mod forward;
pub mod metrics;
pub mod presets;
pub mod synth;
pub mod sys;
pub mod table;
pub mod weights;

pub use batch::{Bags, Batch, Sample};
pub use config::{DlrmConfig, Interaction, RowFormat};
pub use error::ModelError;
pub use forward::{Executor, Model, StageTimes, Workspace};
pub use weights::TableMode;

