//! The three commands as a stand-alone binary (the `dlrs` binary wires the same functions):
//! `cargo run --release -p dlrs-train --example cli -- train --preset criteo-kaggle --train day_0.tsv.gz --out m`

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a DLRM on labelled data.
    Train(dlrs_train::TrainArgs),
    /// Metrics of a model on labelled data.
    Eval(dlrs_train::EvalArgs),
    /// Labelled samples from a random teacher DLRM.
    Synth(dlrs_train::SynthArgs),
}

fn main() {
    let r = match Cli::parse().cmd {
        Cmd::Train(a) => dlrs_train::train(a),
        Cmd::Eval(a) => dlrs_train::eval(a),
        Cmd::Synth(a) => dlrs_train::synth(a),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
