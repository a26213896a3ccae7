//! The flags of `dlrs serve`, `dlrs loadgen` and `dlrs twin`: clap definitions (the help
//! text is their doc comments), each converted into its library's plain config
//! (`ServeArgs` into [`dlrs_serve::ServeConfig`], `LoadgenArgs` into
//! [`dlrs_loadgen::LoadgenConfig`], `TwinArgs` into [`dlrs_loadgen::TwinConfig`]). The tests
//! check that the flags' defaults are the libraries' defaults.

pub mod loadgen;
pub mod serve;

pub use loadgen::{LoadgenArgs, TwinArgs};
pub use serve::ServeArgs;
