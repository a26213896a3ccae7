//! Embedding-bag kernel alone on one big table, like ../shared/peer/membench.c's gather
//! test: `cargo run --release --example gather -- [GiB] [dim] [pool] [threads]`.
use std::time::Instant;

use dlrs_kernels::gather::{Bags, Pooled};
use dlrs_model::tables::EmbeddingTable;
use rand::{Rng, SeedableRng, rngs::SmallRng};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let gib: f64 = args.get(1).map_or(4.0, |v| v.parse().unwrap());
    let dim: usize = args.get(2).map_or(32, |v| v.parse().unwrap());
    let pool: usize = args.get(3).map_or(80, |v| v.parse().unwrap());
    let threads: usize = args.get(4).map_or(1, |v| v.parse().unwrap());
    let rows = (gib * (1u64 << 30) as f64) as usize / (dim * 4);
    let t = EmbeddingTable::random(rows, dim, dlrs_model::RowFormat::F32, 1).unwrap();
    let n = (1usize << 22) / pool * pool;
    let mut rng = SmallRng::seed_from_u64(5);
    let ids: Vec<u32> = (0..n).map(|_| rng.random_range(0..rows as u32)).collect();
    let bags = n / pool;
    let offsets: Vec<u32> = (0..=bags).map(|b| (b * pool) as u32).collect();
    let mut outs = vec![vec![0.0f32; bags * dim]; threads];
    // each thread gathers its own rotation of the ids
    let per_thread: Vec<Vec<u32>> = (0..threads)
        .map(|k| {
            ids.iter()
                .map(|&i| ((i as usize + k * 7919) % rows) as u32)
                .collect()
        })
        .collect();
    for rep in 0..5 {
        let s = Instant::now();
        std::thread::scope(|sc| {
            for (out, ids) in outs.iter_mut().zip(&per_thread) {
                let (t, offsets) = (&t, &offsets);
                sc.spawn(move || t.bag_sum(Bags::new(offsets, ids), Pooled::new(out, dim)));
            }
        });
        let e = s.elapsed().as_secs_f64();
        let huge = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
        let huge = huge
            .lines()
            .find(|l| l.starts_with("AnonHugePages"))
            .unwrap_or("")
            .to_string();
        println!(
            "rep {rep}: {:.1} M rows/s ({huge})",
            (n * threads) as f64 / e / 1e6
        );
    }
}
