//! Raw ids through id maps, end to end: synth --raw-ids -> train with collisionless and
//! hash maps -> eval and predict; row resets on admission and eviction; default rows get
//! no gradient; maps persist in checkpoints.

use std::path::Path;

use dlrs_model::tables::idmap::{IdMapSpec, KeyBags, apply_id_map_flags};
use dlrs_model::{Batch, DlrmConfig, Executor, Model, Sample};
use dlrs_train::data::DataFormat;
use dlrs_train::optim::{DenseOptimizer, Optimizer, SparseOptimizer, table_f32_mut};
use dlrs_train::{SynthConfig, TrainConfig, Trainer, evaluate, run_synth, run_train};

const VOCAB: usize = 100;

fn synth(rows: u64, seed: u64, raw: bool, out: &Path) {
    let args = SynthConfig {
        preset: Some("criteo-kaggle".into()),
        rows_cap: Some(VOCAB),
        teacher: 7,
        seed: Some(seed),
        dist: "zipf:1.05".into(),
        threads: 2,
        logit_scale: 8.0,
        raw_ids: raw,
        ..SynthConfig::new(rows, out)
    };
    run_synth(&args, &mut Vec::new()).unwrap();
}

fn train(data: &Path, out: &Path, rows_cap: usize, maps: &[&str]) -> Model {
    let args = TrainConfig {
        preset: Some("criteo-kaggle".into()),
        rows_cap: Some(rows_cap),
        id_maps: maps.iter().map(|s| s.to_string()).collect(),
        lr: 0.01,
        sparse_lr: Some(0.1),
        dense_lr: Some(0.001),
        optimizer: SparseOptimizer::RowwiseAdagrad,
        dense_optimizer: DenseOptimizer::Adam,
        threads: 2,
        json: true,
        batch: 128,
        ..TrainConfig::new(data, out)
    };
    run_train(&args, &mut Vec::new()).unwrap();
    Model::load(out).unwrap()
}

fn auc(model: &Model, data: &Path) -> f64 {
    let exec = Executor::new(2).unwrap();
    evaluate(model, data, DataFormat::Auto, false, 1024, &exec)
        .unwrap()
        .0
        .auc
        .unwrap()
}

#[test]
fn collisionless_from_raw_ids_matches_index_and_hash_at_10_percent_loses() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    synth(200_000, 1, false, &p("train_idx.jsonl"));
    synth(200_000, 1, true, &p("train_raw.jsonl"));
    synth(30_000, 2, false, &p("eval_idx.jsonl"));
    synth(30_000, 2, true, &p("eval_raw.jsonl"));
    let index = train(&p("train_idx.jsonl"), &p("index"), VOCAB, &[]);
    let cl = train(&p("train_raw.jsonl"), &p("cl"), VOCAB, &["collisionless"]);
    let h10 = train(&p("train_raw.jsonl"), &p("h10"), VOCAB / 10, &["hash"]);
    let (a_index, a_cl, a_h10) = (
        auc(&index, &p("eval_idx.jsonl")),
        auc(&cl, &p("eval_raw.jsonl")),
        auc(&h10, &p("eval_raw.jsonl")),
    );
    eprintln!("eval AUC: index {a_index}, collisionless {a_cl}, hash at 10% {a_h10}");
    assert!(
        (a_index - a_cl).abs() < 0.005,
        "index {a_index} collisionless {a_cl}"
    );
    assert!(
        a_h10 < a_index - 0.01,
        "index {a_index} hash at 10% {a_h10}"
    );
    // the maps were saved and loaded with the model: every id of the vocabulary seen
    // in training holds a row
    for m in cl.id_maps.iter() {
        let m = m.as_ref().unwrap();
        assert!(!m.is_empty() && m.len() <= VOCAB);
    }
    // predict through the model's maps gives the scores eval gives
    let line = std::fs::read_to_string(p("eval_raw.jsonl")).unwrap();
    let line = line.lines().next().unwrap();
    let s = cl.parse_sample(line).unwrap();
    let mut b = Batch::empty(&cl.config);
    b.push(&cl.config, &s).unwrap();
    let exec = Executor::new(1).unwrap();
    let score = cl
        .forward(&b, &mut Default::default(), &exec)
        .unwrap()
        .to_vec();
    assert!(score[0] > 0.0 && score[0] < 1.0);
}

fn tiny(map: &str) -> DlrmConfig {
    let c = DlrmConfig::from_json_str(
        r#"{"arch_mlp_bot":"2-4","arch_mlp_top":"3-1","arch_embedding_size":"4-3",
            "arch_sparse_feature_size":4,"arch_interaction_op":"cat"}"#,
    )
    .unwrap();
    apply_id_map_flags(c, &[map.into()]).unwrap()
}

fn keyed_batch(cfg: &DlrmConfig, keys: &[&[u64]]) -> (Batch, Vec<KeyBags>) {
    let mut b = Batch::empty(cfg);
    let mut kb = vec![KeyBags::new(); cfg.n_tables()];
    for (i, k) in keys.iter().enumerate() {
        let s = Sample {
            dense: vec![0.5, -1.0],
            sparse: vec![vec![]; cfg.n_tables()],
            label: Some((i % 2) as f32),
        };
        b.push(cfg, &s).unwrap();
        for kbt in kb.iter_mut() {
            kbt.push(k).unwrap();
        }
    }
    (b, kb)
}

#[test]
fn new_ids_get_reset_rows_and_evicted_rows_are_reset_again() {
    let cfg = tiny("collisionless");
    assert!(matches!(cfg.id_map(0), IdMapSpec::Collisionless(_)));
    let model = Model::random(cfg.clone(), 3).unwrap();
    let opt = Optimizer::new(
        &model,
        SparseOptimizer::RowwiseAdagrad,
        DenseOptimizer::Sgd,
        0.1,
    );
    let mut tr = Trainer::new(model, opt, 1).unwrap();
    // fill table 1 (3 rows) with ids 10, 11, 12
    let (mut b, kb) = keyed_batch(&cfg, &[&[10, 11, 12], &[10, 12]]);
    let misses = tr.resolve_train(&mut b, &kb, 1).unwrap();
    assert_eq!(misses, 0);
    assert_eq!(b.bags()[1].ids, vec![0, 1, 2, 0, 2]);
    tr.step_keyed(&b, &[0.0, 1.0]);
    assert!(tr.opt.table_state(1)[1] > 0.0, "row 1 was trained");
    // poison row 1 (id 11, the least used) and admit id 13: 11 is evicted, 13 gets row 1,
    // reset to the initial distribution with zero optimizer state
    table_f32_mut(&mut tr.model.weights.tables[1])[4..8].fill(99.0);
    let (mut b, kb) = keyed_batch(&cfg, &[&[13]]);
    tr.resolve_train(&mut b, &kb, 2).unwrap();
    assert_eq!(b.bags()[1].ids, vec![1]);
    let row = &table_f32_mut(&mut tr.model.weights.tables[1])[4..8];
    let bound = (1.0f32 / 3.0).sqrt();
    assert!(row.iter().all(|v| v.abs() <= bound), "{row:?}");
    assert_eq!(tr.opt.table_state(1)[1], 0.0);
    let m = tr.model.id_maps[1].as_ref().unwrap();
    assert_eq!((m.get(11), m.get(13)), (None, Some(1)));
}

#[test]
fn misses_read_the_default_row_which_is_never_trained() {
    let cfg = tiny("collisionless:admit=2,miss=default");
    let model = Model::random(cfg.clone(), 3).unwrap();
    let opt = Optimizer::new(&model, SparseOptimizer::Adagrad, DenseOptimizer::Sgd, 0.5);
    let mut tr = Trainer::new(model, opt, 1).unwrap();
    let before: Vec<f32> = table_f32_mut(&mut tr.model.weights.tables[0])[12..16].to_vec();
    // first sight of 5 and 6: not admitted (admit=2), both read the default row 3
    let (mut b, kb) = keyed_batch(&cfg, &[&[5], &[6, 5]]);
    let misses = tr.resolve_train(&mut b, &kb, 1).unwrap();
    // the second 5 reaches admit=2 and gets row 0
    assert_eq!(misses, 2 * 2);
    assert_eq!(b.bags()[0].ids, vec![3, 3, 0]);
    tr.step_keyed(&b, &[1.0, 0.0]);
    let after: Vec<f32> = table_f32_mut(&mut tr.model.weights.tables[0])[12..16].to_vec();
    assert_eq!(before, after, "the default row got no gradient");
    assert!(tr.opt.table_state(0)[12..16].iter().all(|&s| s == 0.0));
}

#[test]
fn id_map_flags_go_with_presets_only() {
    let d = tempfile::tempdir().unwrap();
    let m = Model::random(tiny("hash"), 1).unwrap();
    m.save(&d.path().join("m")).unwrap();
    let args = TrainConfig {
        model: Some(d.path().join("m")),
        id_maps: vec!["hash".into()],
        ..TrainConfig::new(d.path().join("x.jsonl"), d.path().join("out"))
    };
    let e = run_train(&args, &mut Vec::new()).unwrap_err().to_string();
    assert!(e.contains("id-map"), "{e}");
}
