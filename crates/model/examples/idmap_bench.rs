//! The embedding stage through id maps against `index` tables: RMC1 shape (8 fp32 tables of
//! 4M rows, D = 32, 80 ids per bag), batch 256, 2 threads (each pools half the batch over
//! every table, as the forward splits a batch), uniform ids, every id present in its map.
//!
//! - `index`: `bag_sum` over the rows.
//! - `hash`: each raw id hashed to its row (`H_t(x) mod rows`), then `bag_sum`.
//! - `collisionless`: each raw id looked up in the table's map (`CollisionlessMap::lookup`,
//!   prefetched) and the bags rebuilt without misses (`CollisionlessMap::resolve`), then
//!   `bag_sum`.
//!
//! ```sh
//! cargo run --release -p dlrs-model --example idmap_bench [ROWS_PER_TABLE] [ROUNDS]
//! ```

use std::time::Instant;

use dlrs_kernels::gather::{Bags, Pooled};
use dlrs_model::Model;
use dlrs_model::tables::idmap::collisionless::MISS;
use dlrs_model::tables::idmap::{CollisionlessMap, CollisionlessSpec, RawId, hash_row};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

const BATCH: usize = 256;
const BATCHES: usize = 32;

fn key(t: usize, i: usize) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(&(i as u64).to_le_bytes(), 1000 + t as u64)
}

/// `CAPACITY=N`: one map of N ids (admit 1), filled, saved to `DIR` (default /tmp) and
/// loaded back: bytes per id, fill, save and load times.
fn capacity(n: usize) {
    let dir = std::env::var("DIR").unwrap_or_else(|_| "/tmp".into());
    let dir = std::path::Path::new(&dir);
    let t0 = Instant::now();
    let mut m = CollisionlessMap::new(CollisionlessSpec::default(), n);
    let (mut out, mut fresh) = (Vec::new(), Vec::new());
    let chunk = 1 << 20;
    for c in 0..n.div_ceil(chunk) {
        let keys: Vec<u64> = (c * chunk..((c + 1) * chunk).min(n))
            .map(|i| key(0, i))
            .collect();
        m.train_step(&keys, 1, &mut out, &mut fresh);
    }
    assert_eq!(m.len(), n);
    println!(
        "capacity {n}: filled in {:.1} s, {:.2} bytes per id",
        t0.elapsed().as_secs_f64(),
        m.bytes() as f64 / n as f64
    );
    let t0 = Instant::now();
    dlrs_model::tables::idmap::file::save(dir, 0, &m).unwrap();
    println!("saved in {:.1} s", t0.elapsed().as_secs_f64());
    drop(m);
    let t0 = Instant::now();
    let back =
        dlrs_model::tables::idmap::file::load(dir, 0, CollisionlessSpec::default(), n).unwrap();
    println!(
        "loaded (checksum, checks, rebuild) in {:.1} s: {} ids",
        t0.elapsed().as_secs_f64(),
        back.len()
    );
    let _ = std::fs::remove_file(dlrs_model::tables::idmap::file::path(dir, 0));
}

fn main() {
    if let Some(n) = std::env::var("CAPACITY").ok().and_then(|v| v.parse().ok()) {
        return capacity(n);
    }
    let args: Vec<String> = std::env::args().collect();
    let p = dlrs_model::presets::preset("rmc1").unwrap();
    let mut cfg = p.config.clone();
    if let Some(r) = args.get(1).and_then(|s| s.parse::<usize>().ok()) {
        cfg.tables.iter_mut().for_each(|x| *x = r);
    }
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let ids = p.ids_per_table;
    let (nt, d) = (cfg.n_tables(), cfg.dim);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let t0 = Instant::now();
    let model = pool.install(|| Model::random(cfg.clone(), 1)).unwrap();
    eprintln!("tables built in {:.1} s", t0.elapsed().as_secs_f64());
    let t0 = Instant::now();
    let maps: Vec<CollisionlessMap> = pool.install(|| {
        (0..nt)
            .into_par_iter()
            .map(|t| {
                let rows = cfg.tables[t];
                let mut m = CollisionlessMap::new(CollisionlessSpec::default(), rows);
                let keys: Vec<u64> = (0..rows).map(|i| key(t, i)).collect();
                let (mut out, mut fresh) = (Vec::new(), Vec::new());
                m.train_step(&keys, 1, &mut out, &mut fresh);
                assert!(out.iter().all(|&r| r != MISS));
                m
            })
            .collect()
    });
    let map_bytes: usize = maps.iter().map(|m| m.bytes()).sum();
    let n_ids: usize = maps.iter().map(|m| m.len()).sum();
    eprintln!(
        "maps filled in {:.1} s: {n_ids} ids, {:.2} bytes per id",
        t0.elapsed().as_secs_f64(),
        map_bytes as f64 / n_ids as f64
    );
    // per batch, per table, per half: keys, and the rows they hold (the index path's ids)
    let mut rng = SmallRng::seed_from_u64(7);
    let half = BATCH / 2;
    let offsets: Vec<u32> = (0..=half).map(|b| (b * ids) as u32).collect();
    type Half = (Vec<u64>, Vec<u32>, Vec<u32>);
    let batches: Vec<Vec<[Half; 2]>> = (0..BATCHES)
        .map(|_| {
            (0..nt)
                .map(|t| {
                    std::array::from_fn(|_| {
                        let vocab: Vec<usize> = (0..half * ids)
                            .map(|_| rng.random_range(0..cfg.tables[t]))
                            .collect();
                        let keys: Vec<u64> = vocab.iter().map(|&i| key(t, i)).collect();
                        let rows: Vec<u32> =
                            keys.iter().map(|&k| maps[t].get(k).unwrap()).collect();
                        let hashed: Vec<u32> = keys
                            .iter()
                            .map(|&k| hash_row(RawId::Int(k), t, cfg.tables[t]))
                            .collect();
                        (keys, rows, hashed)
                    })
                })
                .collect()
        })
        .collect();
    let run = |mode: &str| -> f64 {
        let t0 = Instant::now();
        for _ in 0..rounds {
            for b in &batches {
                pool.install(|| {
                    (0..2usize).into_par_iter().for_each(|h| {
                        let mut out = vec![0f32; half * d];
                        let mut scratch = Vec::new();
                        for (t, halves) in b.iter().enumerate() {
                            let (keys, rows, hashed) = &halves[h];
                            let table = &model.weights.tables[t];
                            match mode {
                                "index" => table
                                    .bag_sum(Bags::new(&offsets, rows), Pooled::new(&mut out, d)),
                                "hash" => {
                                    // hashed at parse time in dlrs; counted here anyway
                                    scratch.clear();
                                    scratch.extend(
                                        keys.iter()
                                            .map(|&k| hash_row(RawId::Int(k), t, cfg.tables[t])),
                                    );
                                    debug_assert_eq!(&scratch, hashed);
                                    table.bag_sum(
                                        Bags::new(&offsets, &scratch),
                                        Pooled::new(&mut out, d),
                                    )
                                }
                                "lookup" => {
                                    scratch.clear();
                                    scratch.resize(keys.len(), 0);
                                    maps[t].lookup(keys, &mut scratch);
                                    std::hint::black_box(&scratch);
                                }
                                _ => {
                                    let r = maps[t].resolve(&offsets, keys, &mut scratch);
                                    table.bag_sum(
                                        Bags::new(&r.bags.offsets, &r.bags.ids),
                                        Pooled::new(&mut out, d),
                                    )
                                }
                            }
                            std::hint::black_box(&out);
                        }
                    })
                });
            }
        }
        (rounds * BATCHES * BATCH) as f64 / t0.elapsed().as_secs_f64()
    };
    if std::env::var("MICRO").is_ok() {
        // one thread, table 0: lookups alone, and the same number of row gathers alone
        let keys: Vec<u64> = batches
            .iter()
            .flat_map(|b| b[0][0].0.iter().copied())
            .collect();
        let rows: Vec<u32> = batches
            .iter()
            .flat_map(|b| b[0][0].1.iter().copied())
            .collect();
        let mut out = vec![0u32; keys.len()];
        for _ in 0..3 {
            let t0 = Instant::now();
            maps[0].lookup(&keys, &mut out);
            let tl = t0.elapsed().as_secs_f64();
            assert_eq!(out, rows);
            let offs: Vec<u32> = (0..=keys.len()).map(|i| i as u32).collect();
            let mut pooled = vec![0f32; keys.len() * d];
            let t0 = Instant::now();
            model.weights.tables[0].bag_sum(Bags::new(&offs, &rows), Pooled::new(&mut pooled, d));
            let tg = t0.elapsed().as_secs_f64();
            println!(
                "{} keys: lookup {:.1} ns/key, row gather {:.1} ns/row",
                keys.len(),
                tl * 1e9 / keys.len() as f64,
                tg * 1e9 / keys.len() as f64
            );
        }
    }
    run("index"); // warm-up
    if std::env::var("LOOKUP_ONLY").is_ok() {
        println!("lookup only: {:.0} samples/s", run("lookup"));
    }
    let mut best = [0f64; 3];
    for _ in 0..3 {
        for (i, m) in ["index", "hash", "collisionless"].iter().enumerate() {
            best[i] = best[i].max(run(m));
        }
    }
    println!(
        "rmc1 embedding stage, {} rows x {nt} tables, batch {BATCH}, 2 threads, {ids} ids per bag (best of 3 x {rounds} rounds of {BATCHES} batches)",
        cfg.tables[0]
    );
    for (i, m) in ["index", "hash", "collisionless"].iter().enumerate() {
        println!(
            "{m:>14}: {:>9.0} samples/s  {:.3}x index",
            best[i],
            best[i] / best[0]
        );
    }
}
