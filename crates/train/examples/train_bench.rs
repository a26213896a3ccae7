//! Training throughput on synthetic batches held in memory (no parsing):
//! `cargo run --release -p dlrs-train --example train_bench -- PRESET BATCH THREADS [SECONDS] [DIST] [ROWS_CAP]`
//! prints one JSON object: samples/s and the mean time per step.

use std::time::Instant;

use dlrs_model::synth::{IdDist, synth_batch};
use dlrs_model::{Model, presets};
use dlrs_train::Trainer;
use dlrs_train::optim::{DenseOptimizer, Optimizer, SparseOptimizer};
use rand::{Rng, SeedableRng};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let name = a.get(1).map_or("criteo-kaggle", String::as_str);
    let batch: usize = a.get(2).map_or(128, |s| s.parse().unwrap());
    let threads: usize = a.get(3).map_or(2, |s| s.parse().unwrap());
    let seconds: f64 = a.get(4).map_or(10.0, |s| s.parse().unwrap());
    let dist = IdDist::parse(a.get(5).map_or("uniform", String::as_str)).unwrap();
    let p = presets::preset(name).unwrap();
    let mut cfg = p.config.clone();
    if let Some(cap) = a.get(6) {
        let cap: usize = cap.parse().unwrap();
        cfg.tables.iter_mut().for_each(|r| *r = (*r).min(cap));
    }
    let t0 = Instant::now();
    let model = Model::random(cfg.clone(), 0).unwrap();
    let built = t0.elapsed().as_secs_f64();
    let opt = Optimizer::new(&model, SparseOptimizer::Sgd, DenseOptimizer::Sgd, 0.01);
    let mut tr = Trainer::new(model, opt, threads).unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    // a pool spanning many rows, so gathers and updates are not served from cache
    let pool: Vec<_> = (0..16)
        .map(|i| {
            let b = synth_batch(&cfg, batch, p.ids_per_table, dist, 100 + i).unwrap();
            let l: Vec<f32> = (0..batch)
                .map(|_| f32::from(rng.random::<f32>() < 0.25))
                .collect();
            (b, l)
        })
        .collect();
    for (b, l) in pool.iter().take(3) {
        tr.step(b, l);
    }
    let t = Instant::now();
    let mut steps = 0usize;
    while t.elapsed().as_secs_f64() < seconds || steps < 5 {
        let (b, l) = &pool[steps % pool.len()];
        tr.step(b, l);
        steps += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "preset": name, "batch": batch, "threads": threads, "dist": dist.name(),
            "build_s": built, "steps": steps,
            "samples_per_s": (steps * batch) as f64 / secs,
            "ms_per_step": secs * 1e3 / steps as f64,
        })
    );
}
