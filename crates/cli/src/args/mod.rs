//! The flags of the subcommands that run a library's command: clap definitions here,
//! converted into the libraries' plain config structs.

pub mod train;
