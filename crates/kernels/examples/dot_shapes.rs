//! The `dot` interaction forward and backward on one thread at training's shape (criteo-kaggle:
//! 27 features of D = 16, 1024 rows, the strides `dlrs-train` uses):
//! `cargo run --release -p dlrs-kernels --example dot_shapes [-- FEATURES DIM ROWS]`

use std::time::Instant;

use dlrs_kernels::interaction::{DotShape, dot_interaction, dot_interaction_backward, pair_count};

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("a number"))
        .collect();
    let (f, d, m) = (
        a.first().copied().unwrap_or(27),
        a.get(1).copied().unwrap_or(16),
        a.get(2).copied().unwrap_or(1024),
    );
    let pairs = pair_count(f, false);
    let shape = DotShape {
        batch: m,
        features: f,
        dim: d,
        itself: false,
        t_stride: f * d,
        out_stride: pairs + d,
    };
    let t: Vec<f32> = (0..m * f * d)
        .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
        .collect();
    let mut out = vec![0f32; m * shape.out_stride];
    let mut dt = vec![0f32; m * f * d];
    let reps = 200;
    let time = |run: &mut dyn FnMut()| {
        run();
        let t0 = Instant::now();
        for _ in 0..reps {
            run();
        }
        t0.elapsed().as_secs_f64() / (reps * m) as f64 * 1e9
    };
    let fwd = time(&mut || dot_interaction(&t, &mut out, shape));
    let g = out.clone();
    let bwd = time(&mut || dot_interaction_backward(&t, &g, &mut dt, shape));
    println!("F {f} D {d} rows {m}: forward {fwd:.0} ns/row, backward {bwd:.0} ns/row");
}
