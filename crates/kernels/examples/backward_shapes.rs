//! Training's three GEMMs per layer, one thread, in GFLOP/s (2 flops per multiply-add): the
//! forward `linear_packed`, the input gradient `grad_input` (gemm crate) against
//! `linear_packed` on a packed `w^T` (packing timed apart), and the weight gradient
//! `grad_weight`; for the layers of criteo-kaggle and the RMC presets:
//!
//! `cargo run --release -p dlrs-kernels --example backward_shapes -- [M ...]` (default 64 256)

use std::time::Instant;

use dlrs_kernels::gemm::{PackedWeights, linear_packed};
use dlrs_kernels::mlp::{Activation, LinearShape, grad_input, grad_weight};

const LAYERS: [(&str, &[usize]); 4] = [
    ("criteo-kaggle bottom", &[13, 512, 256, 64, 16]),
    ("criteo-kaggle top", &[367, 512, 256, 1]),
    ("rmc1 top", &[288, 256, 64, 1]),
    ("rmc3 bottom", &[2560, 1024, 256, 32]),
];

/// Seconds per call: the median of 5 repetitions of at least 20 ms each.
fn time(mut f: impl FnMut()) -> f64 {
    let mut reps = Vec::new();
    for _ in 0..5 {
        let (t, mut n) = (Instant::now(), 0u32);
        while t.elapsed().as_secs_f64() < 0.02 {
            f();
            n += 1;
        }
        reps.push(t.elapsed().as_secs_f64() / n as f64);
    }
    reps.sort_by(f64::total_cmp);
    reps[2]
}

fn main() {
    let ms: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let ms = if ms.is_empty() { vec![64, 256] } else { ms };
    for (name, widths) in LAYERS {
        for l in widths.windows(2) {
            let (k, n) = (l[0], l[1]);
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919) % 113) as f32 / 113.0 - 0.5)
                .collect();
            let mut wt = vec![0.0; n * k];
            for j in 0..n {
                for i in 0..k {
                    wt[i * n + j] = w[j * k + i];
                }
            }
            let bias = vec![0.0; n];
            let zero_k = vec![0.0; k];
            let pw = PackedWeights::new(&w, n, k);
            let pwt = PackedWeights::new(&wt, k, n);
            let pack = time(|| drop(std::hint::black_box(PackedWeights::new(&wt, k, n))));
            for &m in &ms {
                let x = vec![0.25f32; m * k];
                let dz = vec![0.5f32; m * n];
                let (mut y, mut dx, mut dw) =
                    (vec![0.0; m * n], vec![0.0; m * k], vec![0.0; n * k]);
                let f = 2.0 * (m * n * k) as f64 / 1e9;
                let fwd = time(|| {
                    linear_packed(
                        &x,
                        &pw,
                        &bias,
                        &mut y,
                        LinearShape::dense(m, k, n),
                        Activation::None,
                        1,
                    )
                });
                let gi = time(|| grad_input(&dz, &w, &mut dx, LinearShape::dense(m, k, n), 1));
                let gip = time(|| {
                    linear_packed(
                        &dz,
                        &pwt,
                        &zero_k,
                        &mut dx,
                        LinearShape::dense(m, n, k),
                        Activation::None,
                        1,
                    )
                });
                let gw =
                    time(|| grad_weight(&dz, &x, &mut dw, LinearShape::dense(m, k, n), false, 1));
                println!(
                    "{name:22} {k:5}->{n:5} m {m:5}: forward {:4.0}  grad_input {:4.0} (packed w^T {:4.0}, pack {:6.1} us)  grad_weight {:4.0} GFLOP/s",
                    f / fwd,
                    f / gi,
                    f / gip,
                    pack * 1e6,
                    f / gw
                );
            }
        }
    }
}
