//! The flags of the subcommands that run a library's command: clap definitions (the help
//! text is their doc comments), each converted into its library's plain config
//! (`ServeArgs` into [`dlrs_serve::ServeConfig`], `LoadgenArgs` into
//! [`dlrs_loadgen::LoadgenConfig`], `TwinArgs` into [`dlrs_loadgen::TwinConfig`], the
//! training commands' into `dlrs_train`'s `TrainConfig`, `EvalConfig` and `SynthConfig`).
//! The tests check that the flags' defaults are the libraries' defaults.

pub mod loadgen;
pub mod redis;
pub mod serve;
pub mod train;

pub use loadgen::{LoadgenArgs, TwinArgs};
pub use serve::ServeArgs;
