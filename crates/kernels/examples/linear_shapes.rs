//! `linear` through the gemm crate (which packs the weight on every call) against the
//! no-packing `linear_nt`, one thread, at the shapes where `linear` picks one or the other:
//! `cargo run --release -p dlrs-kernels --example linear_shapes`

use std::time::Instant;

use dlrs_kernels::mlp::{Activation, LinearShape, linear_nt};

/// GFLOP/s of the gemm path (`nt = false`: `linear`'s own body for shapes it does not route)
/// or of `linear_nt`.
fn gflops(m: usize, k: usize, n: usize, nt: bool) -> f64 {
    let x: Vec<f32> = (0..m * k).map(|i| (i % 5) as f32 * 0.1).collect();
    let w: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let b = vec![0f32; n];
    let mut y = vec![0f32; m * n];
    let shape = LinearShape::dense(m, k, n);
    let reps = 400_000_000 / (m * k * n) + 10;
    let t = Instant::now();
    for _ in 0..reps {
        if nt {
            linear_nt(&x, &w, &b, &mut y, shape, Activation::Relu, 1);
        } else {
            dlrs_kernels::mlp::linear_gemm_only(&x, &w, &b, &mut y, shape, Activation::Relu, 1);
        }
    }
    2.0 * (m * k * n * reps) as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn main() {
    for (m, k, n) in [
        (1, 2560, 512),
        (8, 2560, 512),
        (64, 512, 256),
        (64, 256, 64),
        (128, 512, 256),
        (128, 256, 128),
        (1024, 512, 256),
    ] {
        let (a, b) = (gflops(m, k, n, false), gflops(m, k, n, true));
        println!(
            "m {m} k {k} n {n}: gemm {a:.0} GFLOP/s, no packing {b:.0} GFLOP/s ({:.2}x)",
            b / a
        );
    }
}
