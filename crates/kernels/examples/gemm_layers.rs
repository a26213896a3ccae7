//! One thread's GEMMs of a criteo-kaggle training step at 1024 rows, layer by layer: the
//! forward (`linear`), the weight gradient and the input gradient, each with its GFLOP/s,
//! plus two alternatives for comparison (the forward given w^T, the weight gradient as dw^T):
//! `cargo run --release -p dlrs-kernels --example gemm_layers`

use dlrs_kernels::mlp::{Activation, LinearShape, grad_input, grad_weight, linear};
use std::time::Instant;

fn main() {
    let m = 1024;
    let layers = [
        (13, 512),
        (512, 256),
        (256, 64),
        (64, 16),
        (367, 512),
        (512, 256),
        (256, 1),
    ];
    let mut tot = [0.0f64; 3];
    for &(k, n) in &layers {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 5) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b = vec![0f32; n];
        let mut y = vec![0f32; m * n];
        let mut dw = vec![0f32; n * k];
        let mut dx = vec![0f32; m * k];
        let reps = 20;
        let t = Instant::now();
        for _ in 0..reps {
            linear(
                &x,
                &w,
                &b,
                &mut y,
                LinearShape::dense(m, k, n),
                Activation::Relu,
                1,
            );
        }
        let f = t.elapsed().as_secs_f64() / reps as f64;
        let t = Instant::now();
        for _ in 0..reps {
            grad_weight(&y, &x, &mut dw, LinearShape::dense(m, k, n), true, 1);
        }
        let g = t.elapsed().as_secs_f64() / reps as f64;
        let t = Instant::now();
        for _ in 0..reps {
            grad_input(&y, &w, &mut dx, LinearShape::dense(m, k, n), 1);
        }
        let h = t.elapsed().as_secs_f64() / reps as f64;
        let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
        let t = Instant::now();
        for _ in 0..reps {
            for i in 0..m {
                y[i * n..i * n + n].copy_from_slice(&b);
            }
            // SAFETY: y is m x n row-major (m * n floats), x is m x k row-major, wt is k x n
            // row-major; every addressed element is inside its vector and y aliases neither.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    y.as_mut_ptr(),
                    1,
                    n as isize,
                    true,
                    x.as_ptr(),
                    1,
                    k as isize,
                    wt.as_ptr(),
                    1,
                    n as isize,
                    1.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            for v in y.iter_mut() {
                *v = v.max(0.0);
            }
        }
        let ft = t.elapsed().as_secs_f64() / reps as f64;
        let mut dwt = vec![0f32; n * k];
        let t = Instant::now();
        for _ in 0..reps {
            // dW^T [k, n]: m' = n (out, unit stride in dz), n' = k, depth = batch
            // SAFETY: dwt holds n * k floats (column step n), y is m x n and x is m x k
            // row-major; every addressed element is inside its vector and dwt aliases neither.
            unsafe {
                gemm::gemm(
                    n,
                    k,
                    m,
                    dwt.as_mut_ptr(),
                    n as isize,
                    1,
                    false,
                    y.as_ptr(),
                    n as isize,
                    1,
                    x.as_ptr(),
                    1,
                    k as isize,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            for o in 0..n {
                for j in 0..k {
                    dw[o * k + j] += dwt[j * n + o];
                }
            }
        }
        let gt = t.elapsed().as_secs_f64() / reps as f64;
        let fl = 2.0 * (m * k * n) as f64;
        println!(
            "           dW via dW^T {:6.1} us ({:4.0} GF/s)",
            gt * 1e6,
            fl / gt / 1e9
        );
        println!(
            "           fwd with w^T {:6.1} us ({:4.0} GF/s)",
            ft * 1e6,
            fl / ft / 1e9
        );
        println!(
            "{k:4} -> {n:4}: fwd {:6.1} us ({:4.0} GF/s)  dW {:6.1} us ({:4.0})  dX {:6.1} us ({:4.0})",
            f * 1e6,
            fl / f / 1e9,
            g * 1e6,
            fl / g / 1e9,
            h * 1e6,
            fl / h / 1e9
        );
        tot[0] += f;
        tot[1] += g;
        tot[2] += h;
    }
    println!(
        "total fwd {:.0} us dW {:.0} us dX {:.0} us = {:.0} us per 1024 rows",
        tot[0] * 1e6,
        tot[1] * 1e6,
        tot[2] * 1e6,
        (tot[0] + tot[1] + tot[2]) * 1e6
    );
}
