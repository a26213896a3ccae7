//! Sparse optimizers against scalar references written from their definitions, with
//! duplicate ids in a batch (their gradients are summed before the update), and SGD applied
//! straight from the bags against SGD on the coalesced gradient.

use std::collections::BTreeMap;

use dlrs_train::net::SparseGrad;
use dlrs_train::optim::{ADAGRAD_EPS, ROWWISE_EPS, SparseOptimizer, sgd_from_bags, sparse_update};

const D: usize = 3;
const ROWS: usize = 6;

/// Occurrences (id, gradient row) of two steps, with repeated ids.
fn steps() -> Vec<Vec<(u32, [f32; D])>> {
    vec![
        vec![
            (2, [0.5, -1.0, 0.25]),
            (4, [1.0, 1.0, 1.0]),
            (2, [0.25, 0.5, -0.75]),
            (0, [-2.0, 0.0, 3.0]),
            (2, [0.1, 0.1, 0.1]),
        ],
        vec![
            (4, [-0.5, 0.5, 2.0]),
            (5, [0.3, -0.2, 0.1]),
            (0, [1.0, 1.0, -1.0]),
            (5, [0.3, -0.2, 0.1]),
        ],
    ]
}

fn init_table() -> Vec<f32> {
    (0..ROWS * D).map(|i| (i as f32 * 0.37).sin()).collect()
}

/// dlrs: coalesce (each occurrence its own bag of one id) and update.
fn run_dlrs(opt: SparseOptimizer, lr: f32) -> (Vec<f32>, Vec<f32>) {
    let mut table = init_table();
    let mut state = match opt {
        SparseOptimizer::Sgd => vec![],
        SparseOptimizer::Adagrad => vec![0.0; ROWS * D],
        SparseOptimizer::RowwiseAdagrad => vec![0.0; ROWS],
    };
    let mut g = SparseGrad::default();
    for occ in steps() {
        let offsets: Vec<u32> = (0..=occ.len() as u32).collect();
        let ids: Vec<u32> = occ.iter().map(|o| o.0).collect();
        let pooled: Vec<f32> = occ.iter().flat_map(|o| o.1).collect();
        g.coalesce(&offsets, &ids, &pooled, D, D);
        sparse_update(opt, lr, D, &mut table, &g, &mut state);
    }
    (table, state)
}

/// The scalar reference (f64): sum each id's gradients, then apply the rule per row.
fn run_ref(opt: SparseOptimizer, lr: f64, coalesce: bool) -> (Vec<f64>, Vec<f64>) {
    let mut w: Vec<f64> = init_table().iter().map(|&x| x as f64).collect();
    let mut acc = vec![0.0f64; ROWS * D];
    let mut row_acc = vec![0.0f64; ROWS];
    for occ in steps() {
        let groups: Vec<(u32, [f64; D])> = if coalesce {
            let mut m: BTreeMap<u32, [f64; D]> = BTreeMap::new();
            for (id, g) in &occ {
                let e = m.entry(*id).or_insert([0.0; D]);
                for c in 0..D {
                    e[c] += g[c] as f64;
                }
            }
            m.into_iter().collect()
        } else {
            occ.iter()
                .map(|(id, g)| (*id, g.map(|x| x as f64)))
                .collect()
        };
        for (id, g) in groups {
            let r = id as usize;
            match opt {
                SparseOptimizer::Sgd => (0..D).for_each(|c| w[r * D + c] -= lr * g[c]),
                SparseOptimizer::Adagrad => {
                    for c in 0..D {
                        acc[r * D + c] += g[c] * g[c];
                        w[r * D + c] -= lr * g[c] / (acc[r * D + c].sqrt() + ADAGRAD_EPS as f64);
                    }
                }
                SparseOptimizer::RowwiseAdagrad => {
                    row_acc[r] += g.iter().map(|x| x * x).sum::<f64>() / D as f64;
                    let mult = lr / (row_acc[r].sqrt() + ROWWISE_EPS as f64);
                    (0..D).for_each(|c| w[r * D + c] -= mult * g[c]);
                }
            }
        }
    }
    let state = match opt {
        SparseOptimizer::Sgd => vec![],
        SparseOptimizer::Adagrad => acc,
        SparseOptimizer::RowwiseAdagrad => row_acc,
    };
    (w, state)
}

fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn sparse_optimizers_match_scalar_references() {
    for opt in [
        SparseOptimizer::Sgd,
        SparseOptimizer::Adagrad,
        SparseOptimizer::RowwiseAdagrad,
    ] {
        let (w, s) = run_dlrs(opt, 0.1);
        let (rw, rs) = run_ref(opt, 0.1, true);
        assert!(
            max_diff(&w, &rw) < 1e-6,
            "{opt:?}: weights differ by {}",
            max_diff(&w, &rw)
        );
        assert!(
            max_diff(&s, &rs) < 1e-5,
            "{opt:?}: state differs by {}",
            max_diff(&s, &rs)
        );
        // rows not in any batch are untouched, bit for bit
        let init = init_table();
        for r in [1usize, 3] {
            assert_eq!(
                &w[r * D..r * D + D],
                &init[r * D..r * D + D],
                "{opt:?}: row {r} moved"
            );
        }
        // the reference distinguishes coalesced from per-occurrence updates (the test can fail)
        if opt != SparseOptimizer::Sgd {
            let (uw, _) = run_ref(opt, 0.1, false);
            assert!(
                max_diff(&w, &uw) > 1e-3,
                "{opt:?}: duplicates not distinguishable"
            );
        }
    }
}

#[test]
fn rowwise_adagrad_keeps_one_accumulator_per_row() {
    let (_, s) = run_dlrs(SparseOptimizer::RowwiseAdagrad, 0.1);
    assert_eq!(s.len(), ROWS);
    // row 2 in step 1 only: (sum of its three gradients)^2 averaged over D
    let g = [0.5f64 + 0.25 + 0.1, -1.0 + 0.5 + 0.1, 0.25 - 0.75 + 0.1];
    let want = g.iter().map(|x| x * x).sum::<f64>() / 3.0;
    assert!((s[2] as f64 - want).abs() < 1e-6, "{} vs {want}", s[2]);
    assert_eq!(s[1], 0.0);
    assert_eq!(s[3], 0.0);
}

proptest::proptest! {
    /// SGD straight from the bags (`sgd_from_bags`, what `Trainer::step` runs for SGD tables)
    /// against coalescing then updating, on multi-hot bags with repeats, empty bags and a
    /// pooled stride wider than D; and bit for bit against one `w -= lr * g` per occurrence in
    /// bag order (PyTorch's `index_add_` of an uncoalesced sparse gradient).
    #[test]
    fn sgd_from_bags_matches_coalesced_sgd(
        bags in proptest::collection::vec(proptest::collection::vec(0u32..9, 0..5), 1..40),
        d in 1usize..20,
        pad in 0usize..3,
        seed in 0u32..1000,
    ) {
        const ROWS: usize = 9;
        let stride = d + pad;
        let lr = 0.05f32;
        let offsets: Vec<u32> = std::iter::once(0)
            .chain(bags.iter().scan(0u32, |o, b| { *o += b.len() as u32; Some(*o) }))
            .collect();
        let ids: Vec<u32> = bags.concat();
        let pooled: Vec<f32> = (0..bags.len() * stride)
            .map(|i| (((i as u32 * 2654435761u32) ^ seed) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        let init: Vec<f32> = (0..ROWS * d).map(|i| (i as f32 * 0.37).sin()).collect();

        let mut fused = init.clone();
        sgd_from_bags(lr, d, &mut fused, &offsets, &ids, &pooled, stride);

        let mut coalesced = init.clone();
        let mut g = SparseGrad::default();
        g.coalesce(&offsets, &ids, &pooled, stride, d);
        sparse_update(SparseOptimizer::Sgd, lr, d, &mut coalesced, &g, &mut []);

        let mut exact = init.clone();
        for (s, bag) in bags.iter().enumerate() {
            for &id in bag {
                let r = id as usize;
                for c in 0..d {
                    exact[r * d + c] -= lr * pooled[s * stride + c];
                }
            }
        }
        proptest::prop_assert_eq!(&fused, &exact);
        for (i, (a, b)) in fused.iter().zip(&coalesced).enumerate() {
            proptest::prop_assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "element {}: {} vs {}", i, a, b);
        }
        // rows in no bag are untouched
        for r in 0..ROWS {
            if !ids.contains(&(r as u32)) {
                proptest::prop_assert_eq!(&fused[r * d..r * d + d], &init[r * d..r * d + d]);
            }
        }
    }
}
