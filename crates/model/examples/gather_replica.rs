//! membench.c's gather loop, transliterated, over a dlrs table: tells the kernel's overhead
//! apart from the machine's. `gather_replica [pf] [zero]`
use std::arch::x86_64::*;
use std::time::Instant;

use dlrs_model::table::EmbeddingTable;
use rand::{Rng, SeedableRng, rngs::SmallRng};

#[target_feature(enable = "avx2,fma")]
unsafe fn gather32(t: &[f32], ids: &[u32], pool: usize, pf: usize, out: &mut [f32], seq: bool) {
    let mut k = 0;
    let n = ids.len();
    for b in 0..n / pool {
        let mut acc = [_mm256_setzero_ps(); 4];
        for _ in 0..pool {
            if pf > 0 && k + pf < n {
                let q = unsafe { t.as_ptr().add(ids[k + pf] as usize * 32) } as *const i8;
                _mm_prefetch::<_MM_HINT_T0>(q);
                _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(64));
            }
            let row = unsafe { t.as_ptr().add(ids[k] as usize * 32) };
            for v in 0..4 {
                acc[v] = _mm256_add_ps(acc[v], unsafe { _mm256_loadu_ps(row.add(8 * v)) });
            }
            k += 1;
        }
        let o = &mut out[if seq { b * 32 } else { (b & 63) * 32 }..];
        for v in 0..4 {
            unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(8 * v), acc[v]) };
        }
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let pf: usize = a.get(1).map_or(16, |v| v.parse().unwrap());
    let zero = a.get(2).is_some();
    let rows = (4usize << 30) / 128;
    let mut t = if zero { EmbeddingTable::zeroed(rows, 32).unwrap() } else { EmbeddingTable::random(rows, 32, 1).unwrap() };
    if zero {
        let d = t.data_mut();
        for i in (0..d.len()).step_by(97) {
            d[i] = 1.0;
        }
    }
    let n = (1usize << 22) / 80 * 80;
    let mut rng = SmallRng::seed_from_u64(5);
    let ids: Vec<u32> = (0..n).map(|_| rng.random_range(0..rows as u32)).collect();
    let seq = std::env::var_os("SEQ").is_some();
    let mut out = vec![0.0f32; n / 80 * 32];
    for rep in 0..5 {
        let s = Instant::now();
        unsafe { gather32(t.data(), &ids, 80, pf, &mut out, seq) };
        println!("rep {rep}: {:.1} M rows/s", n as f64 / s.elapsed().as_secs_f64() / 1e6);
    }
}
