use proptest::prelude::*;

use super::*;
use crate::mlp::linear_ref;
use crate::testutil::{SENTINEL, rng};

const ACTS: [Activation; 3] = [Activation::None, Activation::Relu, Activation::Sigmoid];

/// Values in [-1, 1).
fn vals(len: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    (0..len).map(|_| 2.0 * r() - 1.0).collect()
}

/// The f32 kernels this CPU runs.
fn f32_kernels() -> Vec<Kernel> {
    Kernel::available()
        .into_iter()
        .filter(|k| k.dtype() == Dtype::F32)
        .collect()
}

/// Runs `linear_packed` with every available f32 kernel and `threads` against `linear_ref`, with
/// sentinels between the rows of `y` (`ldy > n`) and after its last row.
fn check_layer(
    shape: LinearShape,
    act: Activation,
    threads: usize,
    seed: u64,
) -> Result<(), String> {
    let LinearShape { m, k, n, ldx, ldy } = shape;
    let x = vals(m.max(1) * ldx, seed);
    let w = vals(n * k, seed + 1);
    let bias = vals(n, seed + 2);
    let len = m * ldy + 7;
    let mut want = vec![SENTINEL; len];
    linear_ref(&x, &w, &bias, &mut want, shape, act);
    let tol = 1e-5 * (1.0 + k as f32).sqrt();
    for kernel in f32_kernels() {
        let packed = PackedWeights::with_kernel(kernel, &w, n, k);
        let mut got = vec![SENTINEL; len];
        linear_packed(&x, &packed, &bias, &mut got, shape, act, threads);
        for (at, (g, r)) in got.iter().zip(&want).enumerate() {
            let inside = at < m * ldy && at % ldy < n;
            let ok = if inside {
                (g - r).abs() <= tol
            } else {
                *g == SENTINEL
            };
            if !ok {
                return Err(format!(
                    "{} {shape:?} {act:?} threads {threads}: y[{}, {}] = {g}, want {r}",
                    kernel.name(),
                    at / ldy,
                    at % ldy
                ));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    /// Every kernel this CPU runs against the reference: shapes around the tile and block
    /// edges, padded strides, every activation, one and two threads.
    #[test]
    fn packed_layer_matches_reference(
        m in prop_oneof![4 => 0usize..40, 2 => 64usize..200, 1 => Just(1usize)],
        k in prop_oneof![6 => 1usize..300, 2 => 500usize..700, 1 => Just(2560usize)],
        n in prop_oneof![6 => 1usize..80, 1 => 120usize..140, 1 => Just(256usize)],
        padx in 0usize..5, pady in 0usize..5, act in 0usize..3, threads in 1usize..3,
        seed in any::<u64>(),
    ) {
        let shape = LinearShape { m, k, n, ldx: k + padx, ldy: n + pady };
        check_layer(shape, ACTS[act], threads, seed).map_err(TestCaseError::fail)?;
    }

    /// Packing keeps every weight: the panels unpack to `w`.
    #[test]
    fn pack_round_trips(n in 1usize..70, k in 0usize..40, seed in any::<u64>()) {
        let w = vals(n * k, seed);
        for kernel in f32_kernels() {
            let p = PackedWeights::with_kernel(kernel, &w, n, k);
            prop_assert_eq!(p.unpack(), w.clone(), "{}", kernel.name());
            prop_assert!(p.bytes() >= 4 * n * k);
            prop_assert!(p.bytes() <= 4 * n.next_multiple_of(kernel.nr()) * k + 64);
        }
    }
}

/// The layers of the presets, at the batch sizes that matter, one and two threads.
#[test]
fn preset_layers_match_reference() {
    let layers = [
        (13, 512),
        (288, 256),
        (2112, 128),
        (2560, 1024),
        (352, 512),
        (256, 1),
    ];
    for (l, &(k, n)) in layers.iter().enumerate() {
        for m in [1, 16, 64, 300] {
            if m * k * n > 64 << 20 {
                continue;
            }
            for threads in [1, 2] {
                let shape = LinearShape::dense(m, k, n);
                check_layer(shape, Activation::Relu, threads, l as u64).unwrap();
            }
        }
    }
}

/// Both ways of splitting over two threads, and an uneven split.
#[test]
fn thread_splits_match_reference() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| {
        // by panels (more panels than row tiles), by rows, rows not a multiple of the tile,
        // batch 1, and the unpacked layout of n <= DOT_MAX_N
        for (m, k, n) in [
            (20, 600, 300),
            (300, 200, 64),
            (77, 300, 70),
            (1, 4000, 300),
            (600, 2000, 1),
            (150, 3000, 3),
        ] {
            assert!(2 * m * k * n >= PAR_MIN_FLOPS);
            for threads in [2, 3] {
                let shape = LinearShape {
                    m,
                    k,
                    n,
                    ldx: k + 1,
                    ldy: n + 3,
                };
                check_layer(shape, Activation::None, threads, 9).unwrap();
            }
        }
    });
}

#[test]
fn empty_shapes() {
    for kernel in Kernel::available() {
        // k = 0: the bias through the activation
        let p = PackedWeights::with_kernel(kernel, &[], 3, 0);
        let mut y = [SENTINEL; 7];
        let shape = LinearShape {
            m: 2,
            k: 0,
            n: 3,
            ldx: 0,
            ldy: 4,
        };
        linear_packed(
            &[],
            &p,
            &[1.0, -2.0, 0.5],
            &mut y,
            shape,
            Activation::Relu,
            1,
        );
        assert_eq!(y, [1.0, 0.0, 0.5, SENTINEL, 1.0, 0.0, 0.5]);
        // m = 0 and n = 0 write nothing
        let p = PackedWeights::with_kernel(kernel, &[1.0; 6], 2, 3);
        let mut y = [SENTINEL; 2];
        linear_packed(
            &[],
            &p,
            &[0.0; 2],
            &mut y,
            LinearShape::dense(0, 3, 2),
            Activation::None,
            1,
        );
        assert_eq!(y, [SENTINEL; 2]);
        let p = PackedWeights::with_kernel(kernel, &[], 0, 3);
        linear_packed(
            &[1.0; 3],
            &p,
            &[],
            &mut y,
            LinearShape::dense(1, 3, 0),
            Activation::None,
            1,
        );
        assert_eq!(y, [SENTINEL; 2]);
    }
}

#[test]
#[should_panic(expected = "does not match the packed weight")]
fn shape_must_match_weight() {
    let p = PackedWeights::new(&[0.0; 6], 2, 3);
    let mut y = [0.0; 3];
    linear_packed(
        &[0.0; 3],
        &p,
        &[0.0; 3],
        &mut y,
        LinearShape::dense(1, 3, 3),
        Activation::None,
        1,
    );
}

#[test]
fn detect_is_available() {
    assert!(Kernel::available().contains(&Kernel::detect()));
    assert!(Kernel::available().contains(&Kernel::detect_bf16()));
    assert_eq!(Kernel::detect().dtype(), Dtype::F32);
    assert_eq!(Kernel::detect_bf16().dtype(), Dtype::Bf16);
    assert_eq!(Kernel::available()[0], Kernel::Scalar);
    assert!(Kernel::available().iter().all(|k| k.runs_here()));
}

/// Row strides of 4 KiB multiples (tiles capped at 6 rows) and of 2 KiB (not capped).
#[test]
fn aliasing_strides_match_reference() {
    assert_eq!(tile_rows(1024 * 4, 12), 6);
    assert_eq!(tile_rows(2048 * 4, 12), 6);
    assert_eq!(tile_rows(512 * 4, 12), 12);
    assert_eq!(tile_rows(1040 * 4, 12), 12);
    assert_eq!(tile_rows(1024 * 4, 4), 4);
    for (k, ldx) in [(1024, 1024), (1000, 1024), (2048, 2048), (512, 512)] {
        for m in [7, 30] {
            let shape = LinearShape {
                m,
                k,
                n: 40,
                ldx,
                ldy: 41,
            };
            check_layer(shape, Activation::Relu, 1, 3).unwrap();
        }
    }
}

/// Inputs longer than a k-block: the later blocks add to the partial sums in `y`.
#[test]
fn k_blocks_match_reference() {
    for (m, k) in [(13, KC + 300), (1, KC + 5), (2, 2 * KC + 9)] {
        for act in ACTS {
            let shape = LinearShape {
                m,
                k,
                n: 37,
                ldx: k + 2,
                ldy: 40,
            };
            check_layer(shape, act, 2, 4).unwrap();
        }
    }
}

/// The kernel for a layer: 16-column panels where 32 would be mostly padding.
#[test]
fn kernel_for_narrow_layers() {
    let best = Kernel::detect();
    if best.nr() == 32 {
        assert_eq!(Kernel::for_layer(16), Kernel::Avx2);
        assert_eq!(Kernel::for_layer(80), Kernel::Avx2);
        assert_eq!(Kernel::for_layer(64), best);
        assert_eq!(Kernel::for_layer(1000), best);
    } else {
        assert_eq!(Kernel::for_layer(16), best);
    }
}
