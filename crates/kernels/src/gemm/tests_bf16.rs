//! The bf16 kernels against [`linear_bf16_ref`], and the rounding itself.

use proptest::prelude::*;

use super::bf16::{bf16_to_f32, f32_to_bf16, linear_bf16_ref, round};
use super::*;
use crate::testutil::{SENTINEL, rng};

const ACTS: [Activation; 3] = [Activation::None, Activation::Relu, Activation::Sigmoid];

/// Values in [-1, 1).
fn vals(len: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    (0..len).map(|_| 2.0 * r() - 1.0).collect()
}

/// The bf16 kernels this CPU runs (all four on an AVX512-BF16 CPU: the converting ones too).
fn bf16_kernels() -> Vec<Kernel> {
    Kernel::available()
        .into_iter()
        .filter(|k| k.dtype() == Dtype::Bf16)
        .collect()
}

/// The error allowed against the f64 reference: `y` is a sum of `k + 1` terms rounded in
/// f32 (each product is exact), so `EPS * sqrt(k + 1)` of the sum of their magnitudes,
/// with `EPS` = 8 f32 ulps of 1 (2^-21). A term lost or counted twice is ~1/k of the
/// magnitude, far above it (4e-4 against 2.4e-5 at k = 2560).
const EPS: f64 = 1.0 / (1u64 << 21) as f64;

/// `|bias[j]| + sum_kk |round(x[i, kk]) * round(w[j, kk])|`.
fn magnitude(x: &[f32], w: &[f32], bias: &[f32], s: LinearShape, i: usize, j: usize) -> f64 {
    let xi = &x[i * s.ldx..i * s.ldx + s.k];
    let wj = &w[j * s.k..j * s.k + s.k];
    let dot: f64 = xi
        .iter()
        .zip(wj)
        .map(|(a, b)| (f64::from(round(*a)) * f64::from(round(*b))).abs())
        .sum();
    dot + f64::from(bias[j]).abs()
}

/// Runs `linear_packed` with every available bf16 kernel (packed from f32, and for the
/// default kernel also from bf16 bits) and `threads` against `linear_bf16_ref`, with
/// sentinels between the rows of `y` and after its last row. Returns the largest error
/// seen, relative to the magnitude sum.
fn check_layer(
    shape: LinearShape,
    act: Activation,
    threads: usize,
    seed: u64,
) -> Result<f64, String> {
    let LinearShape { m, k, n, ldx, ldy } = shape;
    let x = vals(m.max(1) * ldx, seed);
    let w = vals(n * k, seed + 1);
    let bias = vals(n, seed + 2);
    let len = m * ldy + 7;
    let mut want = vec![SENTINEL; len];
    linear_bf16_ref(&x, &w, &bias, &mut want, shape, act);
    let tol = EPS * (1.0 + k as f64).sqrt();
    let bits: Vec<u16> = w.iter().map(|v| f32_to_bf16(*v)).collect();
    let mut packs: Vec<PackedWeights> = bf16_kernels()
        .into_iter()
        .map(|kern| PackedWeights::with_kernel(kern, &w, n, k))
        .collect();
    packs.push(PackedWeights::from_bf16_bits(&bits, n, k));
    let mut worst = 0.0f64;
    for packed in &packs {
        let mut got = vec![SENTINEL; len];
        linear_packed(&x, packed, &bias, &mut got, shape, act, threads);
        for (at, (g, r)) in got.iter().zip(&want).enumerate() {
            let (i, j) = (at / ldy, at % ldy);
            let inside = at < m * ldy && j < n;
            let ok = if inside {
                let mag = magnitude(&x, &w, &bias, shape, i, j);
                let err = f64::from(*g - *r).abs() / mag.max(1e-30);
                worst = worst.max(err);
                err <= tol
            } else {
                *g == SENTINEL
            };
            if !ok {
                return Err(format!(
                    "{} {shape:?} {act:?} threads {threads}: y[{i}, {j}] = {g}, want {r}",
                    packed.kernel().name(),
                ));
            }
        }
    }
    Ok(worst)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    /// Every bf16 kernel this CPU runs against the reference: shapes around the tile, pair
    /// and block edges (odd k), padded strides, every activation, one and two threads.
    #[test]
    fn bf16_layer_matches_reference(
        m in prop_oneof![4 => 0usize..40, 2 => 64usize..200, 1 => Just(1usize)],
        k in prop_oneof![6 => 1usize..300, 2 => 500usize..700, 1 => Just(2560usize)],
        n in prop_oneof![6 => 1usize..80, 1 => 120usize..140, 1 => Just(256usize)],
        padx in 0usize..5, pady in 0usize..5, act in 0usize..3, threads in 1usize..3,
        seed in any::<u64>(),
    ) {
        let shape = LinearShape { m, k, n, ldx: k + padx, ldy: n + pady };
        check_layer(shape, ACTS[act], threads, seed).map_err(TestCaseError::fail)?;
    }

    /// Packing keeps every weight's bf16 rounding: the panels unpack to `round(w)`, and
    /// packing the bits gives the same bytes.
    #[test]
    fn bf16_pack_round_trips(n in 1usize..70, k in 0usize..41, seed in any::<u64>()) {
        let w = vals(n * k, seed);
        let rounded: Vec<f32> = w.iter().map(|v| round(*v)).collect();
        let bits: Vec<u16> = w.iter().map(|v| f32_to_bf16(*v)).collect();
        for kernel in bf16_kernels() {
            let p = PackedWeights::with_kernel(kernel, &w, n, k);
            prop_assert_eq!(p.dtype(), Dtype::Bf16);
            prop_assert_eq!(p.unpack(), rounded.clone(), "{}", kernel.name());
            let q = PackedWeights::with_kernel_bf16_bits(kernel, &bits, n, k);
            prop_assert_eq!(lines_as::<u16>(&p.data), lines_as::<u16>(&q.data));
            prop_assert!(p.bytes() >= 2 * n * k);
            let kp = k.next_multiple_of(2);
            prop_assert!(p.bytes() <= 2 * n.next_multiple_of(kernel.nr()) * kp + 64);
        }
    }
}

/// The layers of the presets at the batch sizes that matter, one and two threads; prints
/// the worst error relative to the magnitude sum (`--nocapture`).
#[test]
fn bf16_preset_layers_match_reference() {
    let layers = [
        (13, 512),
        (288, 256),
        (2112, 128),
        (2560, 1024),
        (1024, 256),
        (256, 32),
        (352, 512),
        (512, 256),
        (256, 1),
        (64, 16),
    ];
    let mut worst = 0.0f64;
    for (l, &(k, n)) in layers.iter().enumerate() {
        for m in [1, 16, 64, 300] {
            if m * k * n > 64 << 20 {
                continue;
            }
            for threads in [1, 2] {
                let shape = LinearShape::dense(m, k, n);
                let e = check_layer(shape, Activation::Relu, threads, l as u64).unwrap();
                worst = worst.max(e);
            }
        }
    }
    eprintln!("bf16 preset layers: worst |y - ref| / magnitude sum = {worst:.3e}");
}

/// Integers small enough that every sum is exact in f32: every bf16 kernel, whatever its
/// order of summation, must give the reference bit for bit (this checks the pair layout
/// and the odd-k padding without a tolerance).
#[test]
fn bf16_exact_sums_match_bit_for_bit() {
    for (m, k, n) in [
        (13, 1, 37),
        (5, 7, 33),
        (30, 301, 70),
        (1, 699, 40),
        (3, 5, 3),
    ] {
        let mut r = rng(k as u64);
        let mut int = |len: usize| -> Vec<f32> {
            (0..len).map(|_| ((r() * 17.0) as i32 - 8) as f32).collect()
        };
        let (x, w, bias) = (int(m * (k + 1)), int(n * k), int(n));
        let shape = LinearShape {
            m,
            k,
            n,
            ldx: k + 1,
            ldy: n,
        };
        let mut want = vec![0.0; m * n];
        linear_bf16_ref(&x, &w, &bias, &mut want, shape, Activation::None);
        for kernel in bf16_kernels() {
            let packed = PackedWeights::with_kernel(kernel, &w, n, k);
            let mut got = vec![0.0; m * n];
            linear_packed(&x, &packed, &bias, &mut got, shape, Activation::None, 1);
            assert_eq!(got, want, "{} m {m} k {k} n {n}", kernel.name());
        }
    }
}

/// Both ways of splitting over two threads, rows not a multiple of the tile, batch 1, the
/// rows layout, and inputs longer than a k-block.
#[test]
fn bf16_thread_splits_and_k_blocks_match_reference() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| {
        for (m, k, n) in [
            (20, 601, 300),
            (300, 200, 64),
            (77, 301, 70),
            (1, 4001, 300),
            (600, 2001, 1),
            (150, 3001, 3),
            (13, KC + 301, 37),
            (2, 2 * KC + 9, 37),
        ] {
            for threads in [2, 3] {
                let shape = LinearShape {
                    m,
                    k,
                    n,
                    ldx: k + 1,
                    ldy: n + 3,
                };
                for act in ACTS {
                    check_layer(shape, act, threads, 9).unwrap();
                }
            }
        }
    });
}

/// Row strides of 4 KiB multiples: the rounded rows get their own stride.
#[test]
fn bf16_aliasing_strides_match_reference() {
    for (k, ldx) in [(1024, 1024), (2048, 2048), (2047, 2048), (512, 512)] {
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
    assert_eq!(rounded_stride::<u16>(2048), 2048 + 32);
    assert_eq!(rounded_stride::<f32>(1024), 1024 + 16);
    assert_eq!(rounded_stride::<u16>(2047), 2048 + 32);
    assert_eq!(rounded_stride::<u16>(2560), 2560);
    assert_eq!(rounded_stride::<f32>(3), 16);
}

/// The rounding against known bit patterns: ties to even, NaN, infinities, overflow,
/// subnormals.
#[test]
fn bf16_rounding_known_values() {
    let cases: [(u32, u16); 26] = [
        (0x3F80_0000, 0x3F80), // 1
        (0x3F80_7FFF, 0x3F80), // below the tie
        (0x3F80_8000, 0x3F80), // 1 + 2^-8: a tie, to even (down)
        (0x3F80_8001, 0x3F81), // above the tie
        (0x3F81_8000, 0x3F82), // a tie, to even (up)
        (0xBF81_8000, 0xBF82), // the same, negative
        (0x3DCC_CCCD, 0x3DCD), // 0.1 -> 0.10009765625, as torch
        (0x4049_0FDB, 0x4049), // pi -> 3.140625
        (0x0000_0000, 0x0000), // +0
        (0x8000_0000, 0x8000), // -0
        (0x7F80_0000, 0x7F80), // +inf
        (0xFF80_0000, 0xFF80), // -inf
        (0x7FC0_0000, 0x7FC0), // quiet NaN
        (0xFFC0_0001, 0x7FC0), // negative NaN with payload
        (0x7F80_0001, 0x7FC0), // signalling NaN: not infinity
        (0x7F7F_7FFF, 0x7F7F), // just below the largest bf16's tie: stays finite
        (0x7F7F_8000, 0x7F80), // the tie above the largest bf16 (odd): overflows to inf
        (0x7F7F_FFFF, 0x7F80), // f32::MAX overflows to inf
        (0xFF7F_FFFF, 0xFF80), // f32::MIN to -inf
        (0x0000_0001, 0x0000), // the smallest subnormal: to zero
        (0x0000_8000, 0x0000), // a subnormal tie, to even (zero)
        (0x0000_8001, 0x0001), // rounds up to the smallest bf16 subnormal
        (0x0001_8000, 0x0002), // a subnormal tie, to even (up)
        (0x8000_8001, 0x8001), // negative subnormal
        (0x007F_FFFF, 0x0080), // the largest subnormal rounds up to the smallest normal
        (0x0080_0000, 0x0080), // the smallest normal
    ];
    for (f, b) in cases {
        let v = f32::from_bits(f);
        assert_eq!(f32_to_bf16(v), b, "{f:#010x}");
        if !v.is_nan() {
            assert_eq!(round(v).to_bits(), u32::from(b) << 16, "{f:#010x}");
        }
    }
    assert!(bf16_to_f32(0x7FC0).is_nan());
    assert_eq!(bf16_to_f32(0x0001), f32::from_bits(0x0001_0000));
    assert_eq!(bf16_to_f32(0x3F80), 1.0);
    // every bf16 value widens and rounds back to itself (NaNs to the quiet NaN)
    for b in 0..=u16::MAX {
        let want = if bf16_to_f32(b).is_nan() { 0x7FC0 } else { b };
        assert_eq!(f32_to_bf16(bf16_to_f32(b)), want, "{b:#06x}");
    }
}

/// The rounding of the inputs each kernel does (vectorized in its instruction set) is the
/// scalar one, bit for bit, on special values and on a sweep of bit patterns; but for the
/// AVX512-BF16 kernel's `vcvtne2ps2bf16`, which reads f32 subnormals as zero (as
/// `vdpbf16ps` does) and keeps a NaN's sign and payload.
#[test]
fn bf16_kernels_round_inputs_as_the_scalar() {
    let mut src: Vec<f32> = [
        0x3F80_8000u32,
        0x3F81_8000,
        0x7FC0_0000,
        0xFFC0_0001,
        0x7F80_0001,
        0x7F7F_FFFF,
        0x0000_8001,
        0x0000_8000,
        0x8000_0000,
        0xFF80_0000,
        0x007F_FFFF,
    ]
    .into_iter()
    .map(f32::from_bits)
    .collect();
    src.extend((0..100_003u32).map(|i| f32::from_bits(i.wrapping_mul(0x9E37_79B1))));
    for kernel in bf16_kernels() {
        // every length up to 70 (the tails), then the whole sweep
        let lens = (0..70).chain([src.len()]);
        for len in lens {
            let src = &src[src.len() - len..];
            match kernel.family() {
                Family::Widen(micro) => {
                    let dst = round_block(micro.round.unwrap(), src, f32::NAN);
                    for (s, d) in src.iter().zip(&dst) {
                        assert_eq!(d.to_bits(), round(*s).to_bits(), "{}", kernel.name());
                    }
                }
                Family::Dp(micro) => {
                    let dst = round_block(micro.round.unwrap(), src, 0xDEAD);
                    for (s, d) in src.iter().zip(&dst) {
                        let b = s.to_bits();
                        let want = if s.is_nan() {
                            (b >> 16) as u16 | 0x40
                        } else if s.is_subnormal() {
                            (b >> 16) as u16 & 0x8000
                        } else {
                            f32_to_bf16(*s)
                        };
                        assert_eq!(*d, want, "{} {b:#010x}", kernel.name());
                    }
                }
                Family::F32(_) => unreachable!("a bf16 kernel"),
            }
        }
    }
}

/// Rounds `src` as the second of two rows of a block (the first a copy), with padded
/// strides and `sentinel` everywhere else; checks the pad after an odd length, that the
/// rows agree and that nothing else was written. Returns the second row.
fn round_block<X: Elem + PartialEq + std::fmt::Debug>(
    f: RoundFn<X>,
    src: &[f32],
    sentinel: X,
) -> Vec<X> {
    let kc = src.len();
    let (lds, ldd) = (kc + 3, bf16::kpad(kc) + 5);
    let mut s = vec![0.0f32; lds + kc];
    s[..kc].copy_from_slice(src);
    s[lds..].copy_from_slice(src);
    let mut d = vec![sentinel; ldd + bf16::kpad(kc) + 4];
    let blk = RoundBlock {
        src: s.as_ptr(),
        lds,
        rows: 2,
        kc,
        dst: d.as_mut_ptr(),
        ldd,
    };
    // SAFETY: this CPU runs the kernel (available); 2 rows of kc at lds in s, of kpad(kc) at
    // ldd in d.
    unsafe { f(&blk) };
    for (at, v) in d.iter().enumerate() {
        let (r, c) = (at / ldd, at % ldd);
        let bits_equal = |a: &X, b: &X| format!("{a:?}") == format!("{b:?}");
        if r < 2 && c < kc {
            assert!(bits_equal(v, &d[(1 - r) * ldd + c]), "rows differ at {c}");
        } else if r < 2 && c == kc && kc % 2 == 1 {
            assert_eq!(*v, X::ZERO, "the pad of an odd length");
        } else {
            assert!(bits_equal(v, &sentinel), "written at {r}, {c}");
        }
    }
    d[ldd..ldd + kc].to_vec()
}

/// The kernel choice: `vdpbf16ps` where the CPU has it and `DLRS_ISA` allows it, a
/// converting kernel otherwise; an f32 kernel given bf16 bits widens them.
#[test]
fn bf16_kernel_choice() {
    let k = Kernel::detect_bf16();
    assert_eq!(k == Kernel::Bf16Avx512Bf16, cpu::avx512_bf16());
    assert_eq!(PackedWeights::new_bf16(&[0.0; 128], 64, 2).kernel(), k);
    // 16-column panels where 32-column ones would be mostly padding
    let narrow = match k {
        Kernel::Bf16Avx512Bf16 => Kernel::Bf16Avx512Bf16Narrow,
        Kernel::Bf16Avx512 => Kernel::Bf16Avx2,
        other => other,
    };
    assert_eq!(Kernel::for_layer_bf16(16), narrow);
    assert_eq!(Kernel::for_layer_bf16(80), narrow);
    assert_eq!(Kernel::for_layer_bf16(64), k);
    assert_eq!(Kernel::for_layer_bf16(1024), k);
    assert_eq!(Kernel::for_layer_bf16(16).nr(), 16);
    let bits = [0x3F80u16, 0x4000, 0xC040, 0x0000];
    let p = PackedWeights::with_kernel_bf16_bits(Kernel::Scalar, &bits, 2, 2);
    assert_eq!(p.dtype(), Dtype::F32);
    assert_eq!(p.unpack(), [1.0, 2.0, -3.0, 0.0]);
}

/// The zero after an odd `k` in the rounded inputs is written on every call: a NaN left in
/// the thread's buffer by a previous layer (there, the fourth input) must not leak into
/// `0 * pad` (NaN times the zero weight pad is NaN).
#[test]
fn bf16_odd_k_pad_ignores_stale_nan() {
    for kernel in bf16_kernels() {
        let (m, n) = (3, 40);
        let even = PackedWeights::with_kernel(kernel, &vals(n * 4, 1), n, 4);
        let x = [1.0, 1.0, 1.0, f32::NAN].repeat(m);
        let mut y = vec![0.0; m * n];
        let shape = LinearShape::dense(m, 4, n);
        linear_packed(&x, &even, &[0.0; 40], &mut y, shape, Activation::None, 1);
        assert!(y.iter().all(|v| v.is_nan()));
        let odd = PackedWeights::with_kernel(kernel, &vals(n * 3, 2), n, 3);
        let shape = LinearShape::dense(m, 3, n);
        linear_packed(
            &[1.0; 9],
            &odd,
            &[0.0; 40],
            &mut y,
            shape,
            Activation::None,
            1,
        );
        assert!(y.iter().all(|v| v.is_finite()), "{}", kernel.name());
    }
}
