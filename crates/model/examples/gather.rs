//! Embedding-bag kernel alone on one big table, like ../shared/peer/membench.c's gather
//! test: `cargo run --release --example gather -- [GiB] [dim] [pool]`.
use std::time::Instant;

use dlrs_kernels::embedding::bag_sum_f32;
use dlrs_model::table::EmbeddingTable;
use rand::{Rng, SeedableRng, rngs::SmallRng};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let gib: f64 = args.get(1).map_or(4.0, |v| v.parse().unwrap());
    let dim: usize = args.get(2).map_or(32, |v| v.parse().unwrap());
    let pool: usize = args.get(3).map_or(80, |v| v.parse().unwrap());
    let rows = (gib * (1u64 << 30) as f64) as usize / (dim * 4);
    let t = EmbeddingTable::random(rows, dim, 1).unwrap();
    let n = (1usize << 22) / pool * pool;
    let mut rng = SmallRng::seed_from_u64(5);
    let ids: Vec<u32> = (0..n).map(|_| rng.random_range(0..rows as u32)).collect();
    let bags = n / pool;
    let offsets: Vec<u32> = (0..=bags).map(|b| (b * pool) as u32).collect();
    let mut out = vec![0.0f32; bags * dim];
    for rep in 0..5 {
        let s = Instant::now();
        bag_sum_f32(t.data(), dim, &offsets, &ids, &mut out, dim);
        let e = s.elapsed().as_secs_f64();
        println!("rep {rep}: {:.1} M rows/s", n as f64 / e / 1e6);
    }
}
