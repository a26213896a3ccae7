//! Sparse optimizers against scalar references written from their definitions, with
//! duplicate ids in a batch (their gradients are summed before the update).

use std::collections::BTreeMap;

use dlrs_train::net::SparseGrad;
use dlrs_train::optim::{ADAGRAD_EPS, ROWWISE_EPS, SparseOptimizer, sparse_update};

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
