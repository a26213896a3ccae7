//! The backward pass against central finite differences of an independent f64 reference
//! forward (plain loops written from the DLRM definition), on tiny models: every MLP
//! weight and bias and every embedding value, for dot, dot with itself, and cat.

use dlrs_model::{Batch, DlrmConfig, Executor, Model, Sample, Workspace};
use dlrs_train::Trainer;
use dlrs_train::optim::{DenseOptimizer, Optimizer, SparseOptimizer};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(Clone)]
struct P {
    tables: Vec<Vec<f64>>,
    bot: Vec<(Vec<f64>, Vec<f64>, usize, usize)>,
    top: Vec<(Vec<f64>, Vec<f64>, usize, usize)>,
}

fn params(m: &Model) -> P {
    let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    P {
        tables: m.weights.tables.iter().map(|t| f(t.data())).collect(),
        bot: m
            .weights
            .bot
            .iter()
            .map(|l| (f(l.weight()), f(l.bias()), l.in_w, l.out_w))
            .collect(),
        top: m
            .weights
            .top
            .iter()
            .map(|l| (f(l.weight()), f(l.bias()), l.in_w, l.out_w))
            .collect(),
    }
}

fn layer(l: &(Vec<f64>, Vec<f64>, usize, usize), a: &[f64]) -> Vec<f64> {
    let (w, b, i, o) = l;
    (0..*o)
        .map(|j| b[j] + (0..*i).map(|k| w[j * i + k] * a[k]).sum::<f64>())
        .collect()
}

fn relu(v: Vec<f64>) -> Vec<f64> {
    v.into_iter().map(|x| x.max(0.0)).collect()
}

/// Mean BCE of the reference DLRM, in f64.
fn ref_loss(p: &P, cfg: &DlrmConfig, samples: &[Sample]) -> f64 {
    let d = cfg.dim;
    let mut total = 0.0;
    for s in samples {
        let mut a: Vec<f64> = s.dense.iter().map(|&x| x as f64).collect();
        for l in &p.bot {
            a = relu(layer(l, &a));
        }
        let mut t = vec![a.clone()];
        for (tab, ids) in p.tables.iter().zip(&s.sparse) {
            let mut e = vec![0.0; d];
            for &id in ids {
                for c in 0..d {
                    e[c] += tab[id as usize * d + c];
                }
            }
            t.push(e);
        }
        let mut r = a.clone();
        match cfg.interaction {
            dlrs_model::Interaction::Cat => t[1..].iter().for_each(|e| r.extend_from_slice(e)),
            dlrs_model::Interaction::Dot => {
                for i in 0..t.len() {
                    for j in 0..i + usize::from(cfg.interaction_itself) {
                        r.push((0..d).map(|c| t[i][c] * t[j][c]).sum());
                    }
                }
            }
        }
        let n = p.top.len();
        for (k, l) in p.top.iter().enumerate() {
            r = layer(l, &r);
            if k + 1 < n {
                r = relu(r);
            }
        }
        let prob = 1.0 / (1.0 + (-r[0]).exp());
        let y = s.label.unwrap() as f64;
        total += -(y * prob.ln() + (1.0 - y) * (1.0 - prob).ln());
    }
    total / samples.len() as f64
}

fn samples(cfg: &DlrmConfig, n: usize, seed: u64) -> Vec<Sample> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n)
        .map(|i| Sample {
            dense: (0..cfg.n_dense())
                .map(|_| rng.random::<f32>() * 2.0 - 0.5)
                .collect(),
            // 0..3 ids per bag: empty bags, and duplicates within and across samples
            sparse: cfg
                .tables
                .iter()
                .map(|&r| {
                    (0..rng.random_range(0..4))
                        .map(|_| rng.random_range(0..r as u32))
                        .collect()
                })
                .collect(),
            label: Some((i % 2) as f32),
        })
        .collect()
}

fn check(cfg_json: &str, seed: u64, n: usize, threads: usize) {
    let cfg = DlrmConfig::from_json_str(cfg_json).unwrap();
    let model = Model::random(cfg.clone(), seed).unwrap();
    // embeddings of the reference init are tiny for these tables; make them matter
    let mut model = model;
    for t in &mut model.weights.tables {
        let v = dlrs_train::optim::table_f32_mut(t);
        v.iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = *x * 2.0 + ((i * 37 % 11) as f32 - 5.0) / 10.0);
    }
    let ss = samples(&cfg, n, seed + 100);
    let mut batch = Batch::empty(&cfg);
    for s in &ss {
        batch.push(&cfg, s).unwrap();
    }
    let labels: Vec<f32> = ss.iter().map(|s| s.label.unwrap()).collect();
    let p0 = params(&model);

    // the training forward agrees with the inference forward of dlrs-model
    let mut ws = Workspace::default();
    let inference = model
        .forward(&batch, &mut ws, &Executor::new(1).unwrap())
        .unwrap()
        .to_vec();
    let opt = Optimizer::new(&model, SparseOptimizer::Sgd, DenseOptimizer::Sgd, 0.1);
    let mut tr = Trainer::new(model, opt, threads).unwrap();
    let loss = tr.gradients(&batch, &labels);
    for (a, b) in tr.ws.scores().iter().zip(&inference) {
        assert!(
            (a - b).abs() <= 1e-6,
            "training forward {a} vs inference {b}"
        );
    }
    let ref0 = ref_loss(&p0, &cfg, &ss);
    assert!(
        (loss - ref0).abs() <= 1e-5,
        "loss {loss} vs f64 reference {ref0}"
    );

    let h = 1e-6;
    let fd = |mutate: &dyn Fn(&mut P, f64)| {
        let mut a = p0.clone();
        mutate(&mut a, h);
        let mut b = p0.clone();
        mutate(&mut b, -h);
        (ref_loss(&a, &cfg, &ss) - ref_loss(&b, &cfg, &ss)) / (2.0 * h)
    };
    let close = |what: String, got: f32, want: f64| {
        assert!(
            (got as f64 - want).abs() <= 2e-5 + 1e-3 * want.abs(),
            "{what}: backward {got} vs finite difference {want}"
        );
    };
    let g = &tr.ws.grads;
    let mut nonzero = 0;
    for (name, layers, grads) in [("bot", &p0.bot, &g.bot), ("top", &p0.top, &g.top)] {
        for (l, (lp, lg)) in layers.iter().zip(grads.iter()).enumerate() {
            for k in 0..lp.0.len() {
                let want = fd(&|p: &mut P, e| {
                    if name == "bot" {
                        p.bot[l].0[k] += e
                    } else {
                        p.top[l].0[k] += e
                    }
                });
                close(format!("{name}[{l}].weight[{k}]"), lg.dw[k], want);
                nonzero += usize::from(want.abs() > 1e-6);
            }
            for k in 0..lp.1.len() {
                let want = fd(&|p: &mut P, e| {
                    if name == "bot" {
                        p.bot[l].1[k] += e
                    } else {
                        p.top[l].1[k] += e
                    }
                });
                close(format!("{name}[{l}].bias[{k}]"), lg.db[k], want);
            }
        }
    }
    let d = cfg.dim;
    for (t, tab) in p0.tables.iter().enumerate() {
        let sg = &g.emb[t];
        assert!(
            sg.ids.windows(2).all(|w| w[0] < w[1]),
            "coalesced ids are distinct and sorted"
        );
        for k in 0..tab.len() {
            let (row, c) = (k / d, k % d);
            let got = sg
                .ids
                .iter()
                .position(|&id| id as usize == row)
                .map_or(0.0, |j| sg.values[j * d + c]);
            let want = fd(&|p: &mut P, e| p.tables[t][k] += e);
            close(format!("emb[{t}][{row}][{c}]"), got, want);
            nonzero += usize::from(want.abs() > 1e-6);
        }
    }
    assert!(
        nonzero > 20,
        "too few non-zero gradients to mean anything ({nonzero})"
    );
}

#[test]
fn backward_matches_finite_differences_dot() {
    check(
        r#"{"arch_mlp_bot":"3-5-4","arch_mlp_top":"6-1","arch_embedding_size":"7-5-3",
            "arch_sparse_feature_size":4,"arch_interaction_op":"dot"}"#,
        1,
        7,
        1,
    );
}

#[test]
fn backward_matches_finite_differences_dot_itself() {
    check(
        r#"{"arch_mlp_bot":"2-4","arch_mlp_top":"5-3-1","arch_embedding_size":"4-6",
            "arch_sparse_feature_size":4,"arch_interaction_op":"dot","arch_interaction_itself":true}"#,
        2,
        7,
        1,
    );
}

#[test]
fn backward_matches_finite_differences_cat() {
    check(
        r#"{"arch_mlp_bot":"4-6-3","arch_mlp_top":"5-4-1","arch_embedding_size":"5-1-8",
            "arch_sparse_feature_size":3,"arch_interaction_op":"cat"}"#,
        3,
        7,
        1,
    );
}

/// A batch split across two threads, each in several micro-batches whose weight gradients
/// accumulate (the path large batches take).
#[test]
fn backward_matches_finite_differences_threads_and_micro_batches() {
    let n = 2 * dlrs_train::net::MICRO_BATCH + 77;
    check(
        r#"{"arch_mlp_bot":"3-5-4","arch_mlp_top":"6-1","arch_embedding_size":"7-5-3",
            "arch_sparse_feature_size":4,"arch_interaction_op":"dot"}"#,
        4,
        n,
        2,
    );
    check(
        r#"{"arch_mlp_bot":"4-6-3","arch_mlp_top":"5-4-1","arch_embedding_size":"5-1-8",
            "arch_sparse_feature_size":3,"arch_interaction_op":"cat"}"#,
        5,
        n,
        3,
    );
}
