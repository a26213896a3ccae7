//! `dlrs loadgen` and `dlrs twin` before they are wired into the `dlrs` binary:
//! `cargo run --release -p dlrs-loadgen --example loadgen -- loadgen --url ... | twin --model ...`

use clap::Parser;

#[derive(Parser)]
enum Cli {
    /// open-loop Poisson load against a dlrs serve over HTTP
    Loadgen(dlrs_loadgen::LoadgenArgs),
    /// the same load against the model in process (no HTTP)
    Twin(dlrs_loadgen::TwinArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse() {
        Cli::Loadgen(a) => dlrs_loadgen::run(a),
        Cli::Twin(a) => dlrs_loadgen::run_twin(a),
    }
}
