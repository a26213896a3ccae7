//! The library's commands end to end, configured in code (the `dlrs` binary parses its flags
//! into the same config structs): `synth` a train set and a held-out set from one teacher,
//! `train` a student on the first, `eval` it on the second.
//!
//! `cargo run --release -p dlrs-train --example synth_train_eval -- WORKDIR [ROWS]`

use std::path::PathBuf;

use dlrs_train::optim::{DenseOptimizer, SparseOptimizer};
use dlrs_train::{EvalConfig, SynthConfig, TrainConfig, run_eval, run_synth, run_train};

fn main() -> Result<(), dlrs_train::TrainError> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("usage: synth_train_eval WORKDIR [ROWS]"));
    let rows: u64 = args
        .next()
        .map_or(20_000, |s| s.parse().expect("ROWS: a number"));
    let (train, held_out) = (dir.join("train.jsonl"), dir.join("eval.jsonl"));
    let mut out = std::io::stdout();

    // one teacher (criteo-kaggle-shaped, tables capped at 1000 rows), two sample seeds
    for (seed, rows, path) in [(1, rows, &train), (2, rows / 4, &held_out)] {
        let synth = SynthConfig {
            preset: Some("criteo-kaggle".into()),
            rows_cap: Some(1000),
            teacher: 7,
            seed: Some(seed),
            dist: "zipf:1.05".into(),
            save_teacher: (seed == 1).then(|| dir.join("teacher")),
            ..SynthConfig::new(rows, path)
        };
        run_synth(&synth, &mut out)?;
    }

    let cfg = TrainConfig {
        preset: Some("criteo-kaggle".into()),
        rows_cap: Some(1000),
        eval: Some(held_out.clone()),
        epochs: 2,
        optimizer: SparseOptimizer::RowwiseAdagrad,
        sparse_lr: Some(0.1),
        dense_optimizer: DenseOptimizer::Adam,
        dense_lr: Some(0.001),
        threads: 2,
        ..TrainConfig::new(&train, dir.join("student"))
    };
    let report = run_train(&cfg, &mut out)?;
    println!("{} steps, {} samples", report.steps, report.samples);

    // the ceiling: the teacher on its own held-out samples
    let teacher = run_eval(&EvalConfig::new(dir.join("teacher"), &held_out), &mut out)?;
    println!("teacher AUC {:?}", teacher.auc);
    Ok(())
}
