//! End to end through the command functions: synth -> train -> eval, metrics, resume.

use std::path::{Path, PathBuf};

use dlrs_model::{DlrmConfig, Model, TableMode};
use dlrs_train::metrics::EvalMetrics;
use dlrs_train::optim::{DenseOptimizer, SparseOptimizer};
use dlrs_train::{EvalConfig, SynthConfig, TrainConfig, run_eval, run_synth, run_train};

const TINY: &str = r#"{"arch_mlp_bot":"4-16-8","arch_mlp_top":"16-1","arch_embedding_size":"200-50-1000",
    "arch_sparse_feature_size":8,"arch_interaction_op":"dot"}"#;

fn write_model(dir: &Path, cfg: &str, seed: u64) -> PathBuf {
    let m = Model::random(DlrmConfig::from_json_str(cfg).unwrap(), seed).unwrap();
    m.save(dir).unwrap();
    dir.to_path_buf()
}

fn synth_args(model: &Path, teacher: u64, rows: u64, out: &Path, dist: &str) -> SynthConfig {
    SynthConfig {
        preset: None,
        rows_cap: None,
        model: Some(model.to_path_buf()),
        use_weights: false,
        teacher,
        seed: None,
        rows,
        out: out.to_path_buf(),
        dist: dist.into(),
        ids_per_table: Some(2),
        threads: 1,
        save_teacher: None,
        emb_scale: 1.0,
        logit_scale: 2.0,
        ctr: 0.25,
        raw_ids: false,
        drift: 0.0,
    }
}

fn train_args(model: &Path, train: &Path, out: &Path) -> TrainConfig {
    TrainConfig {
        model: Some(model.to_path_buf()),
        preset: None,
        rows_cap: None,
        id_maps: Vec::new(),
        resume: None,
        new_data: false,
        train: train.to_path_buf(),
        eval: None,
        out: out.to_path_buf(),
        epochs: 1,
        batch: 64,
        lr: 0.1,
        sparse_lr: None,
        dense_lr: None,
        optimizer: SparseOptimizer::Sgd,
        dense_optimizer: DenseOptimizer::Sgd,
        threads: 1,
        seed: 0,
        json: true,
        shuffle: false,
        shuffle_window: 1 << 16,
        skip_bad: false,
        format: dlrs_train::data::DataFormat::Auto,
        checkpoint_every: None,
        eval_every: None,
        max_steps: None,
    }
}

fn eval_args(model: &Path, data: &Path) -> EvalConfig {
    EvalConfig {
        model: model.to_path_buf(),
        data: data.to_path_buf(),
        batch: 512,
        threads: 1,
        format: dlrs_train::data::DataFormat::Auto,
        skip_bad: false,
        json: true,
    }
}

#[test]
fn metrics_against_hand_computed_values() {
    let m = EvalMetrics::compute(&[0.9, 0.2, 0.6, 0.4], &[1.0, 0.0, 0.0, 1.0], 2.0);
    // positives {0.9, 0.4} over negatives {0.2, 0.6}: 3 of 4 pairs ordered
    assert_eq!(m.auc, Some(0.75));
    // -(ln 0.9 + ln 0.8 + ln 0.4 + ln 0.4) / 4
    assert!((m.log_loss - 0.540_271_4).abs() < 1e-6, "{}", m.log_loss);
    // base rate 0.5: entropy ln 2
    assert!((m.ne.unwrap() - 0.540_271_4 / std::f64::consts::LN_2).abs() < 1e-6);
    assert!((m.calibration.unwrap() - 1.05).abs() < 1e-6);
    assert_eq!(m.samples_per_s, 2.0);
    assert_eq!(m.ctr, 0.5);
    // all one class: no AUC, no NE
    let one = EvalMetrics::compute(&[0.3, 0.7], &[1.0, 1.0], 1.0);
    assert_eq!((one.auc, one.ne), (None, None));
    assert!((one.calibration.unwrap() - 0.5).abs() < 1e-12);
    let none = EvalMetrics::compute(&[0.3, 0.7], &[0.0, 0.0], 1.0);
    assert_eq!(none.calibration, None);
    // a saturated wrong prediction costs 100 (torch's clamp), not infinity
    let sat = EvalMetrics::compute(&[1.0, 0.0], &[0.0, 0.0], 1.0);
    assert_eq!(sat.log_loss, 50.0);
}

#[test]
fn synth_is_deterministic_and_carries_the_teachers_signal() {
    let dir = tempfile::tempdir().unwrap();
    let arch = write_model(&dir.path().join("arch"), TINY, 5);
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl.gz");
    let teacher = dir.path().join("teacher");
    let mut sa = synth_args(&arch, 7, 3000, &a, "zipf:1.1");
    sa.save_teacher = Some(teacher.clone());
    run_synth(&sa, &mut Vec::new()).unwrap();
    run_synth(&synth_args(&arch, 7, 3000, &b, "zipf:1.1"), &mut Vec::new()).unwrap();
    let text = std::fs::read_to_string(&a).unwrap();
    assert_eq!(text.lines().count(), 3000);
    // zipf: the hottest row of table 2 (1000 rows) is far above uniform's 1/1000
    let hot = text
        .lines()
        .filter(|l| {
            l.contains("\"sparse\":[[")
                && l.split("],[")
                    .nth(2)
                    .is_some_and(|s| s.starts_with("0,") || s.starts_with("0]"))
        })
        .count();
    assert!(hot > 300, "rank-1 id in {hot} of 3000 samples");
    // the gzip file decodes to the same samples (eval reads both)
    let mut out = Vec::new();
    let ma = run_eval(&eval_args(&teacher, &a), &mut out).unwrap();
    let mb = run_eval(&eval_args(&teacher, &b), &mut out).unwrap();
    assert_eq!(ma.samples, 3000);
    assert_eq!((ma.auc, ma.log_loss), (mb.auc, mb.log_loss));
    // the teacher scores its own labels well above chance, and is calibrated
    assert!(ma.auc.unwrap() > 0.65, "teacher AUC {:?}", ma.auc);
    assert!(
        (ma.calibration.unwrap() - 1.0).abs() < 0.1,
        "teacher calibration {:?}",
        ma.calibration
    );
    let line = String::from_utf8(out).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(v["samples"], 3000);
}

#[test]
fn training_on_synth_data_learns_the_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let arch = write_model(&dir.path().join("arch"), TINY, 5);
    let train = dir.path().join("train.jsonl");
    let eval = dir.path().join("eval.jsonl");
    let teacher = dir.path().join("teacher");
    let mut ta = synth_args(&arch, 11, 40_000, &train, "zipf:1.05");
    ta.save_teacher = Some(teacher.clone());
    run_synth(&ta, &mut Vec::new()).unwrap();
    // eval samples: the same teacher, other draws
    let mut ea = synth_args(&teacher, 11, 5_000, &eval, "zipf:1.05");
    ea.use_weights = true;
    ea.teacher = 12;
    run_synth(&ea, &mut Vec::new()).unwrap();

    let before = run_eval(&eval_args(&arch, &eval), &mut Vec::new()).unwrap();
    let best = run_eval(&eval_args(&teacher, &eval), &mut Vec::new()).unwrap();
    let out = dir.path().join("out");
    let mut args = train_args(&arch, &train, &out);
    args.eval = Some(eval.clone());
    args.epochs = 2;
    args.optimizer = SparseOptimizer::RowwiseAdagrad;
    args.dense_optimizer = DenseOptimizer::Adam;
    args.lr = 0.01;
    args.threads = 2;
    let mut log = Vec::new();
    let rep = run_train(&args, &mut log).unwrap();
    let after = rep.eval.clone().unwrap();
    eprintln!(
        "AUC before {:?}, after {:?}, teacher {:?}; log loss {} -> {} (teacher {})",
        before.auc, after.auc, best.auc, before.log_loss, after.log_loss, best.log_loss
    );
    assert!(
        after.auc.unwrap() > 0.6,
        "AUC after training {:?}",
        after.auc
    );
    assert!(after.auc.unwrap() > before.auc.unwrap() + 0.05);
    assert!(after.log_loss < before.log_loss);
    // one JSON object per eval (after epoch 1) and a final one
    let text = String::from_utf8(log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["event"], "eval");
    assert!(lines[0]["auc"].as_f64().is_some() && lines[0]["ne"].as_f64().is_some());
    assert_eq!(lines[1]["event"], "final");
    assert_eq!(lines[1]["steps"], 2 * 40_000u64.div_ceil(64));
    // the output is a model directory the inference path loads, with the same eval metrics
    let again = run_eval(&eval_args(&out, &eval), &mut Vec::new()).unwrap();
    assert_eq!(again.auc, after.auc);
    assert!(Model::load(&out).is_ok());
}

fn file_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A temporary directory with the TINY model (`arch`) and `rows` samples drawn from teacher 3
/// (`train.jsonl`).
fn tiny_train_set(rows: u64, dist: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let arch = write_model(&dir.path().join("arch"), TINY, 5);
    let train = dir.path().join("train.jsonl");
    run_synth(&synth_args(&arch, 3, rows, &train, dist), &mut Vec::new()).unwrap();
    (dir, arch, train)
}

#[test]
fn resumed_run_ends_with_the_same_bytes_as_an_uninterrupted_one() {
    let (dir, arch, train) = tiny_train_set(2_000, "zipf:1.05");
    for (opt, dense, shuffle) in [
        (SparseOptimizer::RowwiseAdagrad, DenseOptimizer::Adam, true),
        (SparseOptimizer::Adagrad, DenseOptimizer::Adagrad, false),
        (SparseOptimizer::Sgd, DenseOptimizer::Sgd, false),
    ] {
        let straight = dir.path().join(format!("straight-{}", opt.name()));
        let mut a = train_args(&arch, &train, &straight);
        a.epochs = 2;
        a.batch = 50;
        a.optimizer = opt;
        a.dense_optimizer = dense;
        a.shuffle = shuffle;
        a.shuffle_window = 300;
        a.seed = 4;
        a.threads = 2;
        a.lr = 0.05;
        let rep = run_train(&a, &mut Vec::new()).unwrap();
        assert_eq!(rep.steps, 80);

        // killed at step 55 (mid second epoch; a checkpoint every 5 steps): the last
        // checkpoint is step 55, then resumed
        let split = dir.path().join(format!("split-{}", opt.name()));
        let mut b = a.clone();
        b.out = split.clone();
        b.max_steps = Some(55);
        b.checkpoint_every = Some(5);
        let rep = run_train(&b, &mut Vec::new()).unwrap();
        assert!(rep.stopped_early);
        assert_eq!(rep.steps, 55);
        let mid = file_bytes(&split.join("model.safetensors"));
        let mut c = a.clone();
        c.model = None;
        c.resume = Some(split.clone());
        c.out = split.clone();
        let rep = run_train(&c, &mut Vec::new()).unwrap();
        assert_eq!(rep.steps, 80);
        assert_eq!(
            rep.samples,
            2 * 2000 - 55 * 50,
            "the resumed run trains only what was left"
        );
        for f in ["model.safetensors", "optimizer.safetensors", "config.json"] {
            assert!(
                file_bytes(&straight.join(f)) == file_bytes(&split.join(f)),
                "{}: {f} differs",
                opt.name()
            );
        }
        assert!(mid != file_bytes(&split.join("model.safetensors")));
        // no temp directories left beside the output
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.file_name())
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

#[test]
fn resume_refuses_changed_settings_and_out_guards() {
    let (dir, arch, train) = tiny_train_set(300, "uniform");
    let out = dir.path().join("out");
    let a = train_args(&arch, &train, &out);
    run_train(&a, &mut Vec::new()).unwrap();
    // starting again over a checkpoint without --resume is refused
    let err = run_train(&a, &mut Vec::new()).unwrap_err().to_string();
    assert!(err.contains("--resume"), "{err}");
    let mut r = a.clone();
    r.model = None;
    r.resume = Some(out.clone());
    r.lr = 0.2;
    r.batch = 32;
    let err = run_train(&r, &mut Vec::new()).unwrap_err().to_string();
    assert!(
        err.contains("--batch 32 (the checkpoint has 64)") && err.contains("--lr 0.2"),
        "{err}"
    );
    // a directory that is not a model is never replaced
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "keep").unwrap();
    let err = run_train(&train_args(&arch, &train, &other), &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a model directory"), "{err}");
    assert!(other.join("notes.txt").exists());
    // quantized tables are refused with a clear message
    let q = dir.path().join("q");
    let mut m = Model::load_with(&arch, TableMode::Ram).unwrap();
    m.convert_tables(dlrs_model::RowFormat::Int8, &[1]).unwrap();
    m.save(&q).unwrap();
    let err = run_train(
        &train_args(&q, &train, &dir.path().join("qout")),
        &mut Vec::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("table 1 is int8: training needs fp32 tables"),
        "{err}"
    );
}

/// A Criteo-format file (with a bad line) trains a capped criteo-kaggle preset; the bad line
/// stops the run with its line number, or is skipped and counted with --skip-bad; eval reads
/// the same data gzip-compressed.
#[test]
fn criteo_tsv_trains_with_skip_bad() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let tsv = dir.path().join("day_0.tsv");
    let mut text = String::new();
    for i in 0..600u64 {
        if i == 250 {
            text += "1\t2\t3\n";
            continue;
        }
        // clicks follow categorical 0 and dense 0: a learnable signal
        let c0 = i % 4;
        let label = u64::from(c0 == 0 || (c0 == 1 && i % 3 == 0));
        let mut f = vec![label.to_string(), (c0 * 10).to_string()];
        f.extend((1..13).map(|j| {
            if (i + j) % 4 == 0 {
                String::new()
            } else {
                ((i * j) % 50).to_string()
            }
        }));
        f.push(format!("{:08x}", 0xabc0 + c0));
        f.extend((1..26).map(|t| {
            if (i + t) % 9 == 0 {
                String::new()
            } else {
                format!("{:x}", (i * 31 + t * 7) % 200)
            }
        }));
        text += &(f.join("\t") + "\n");
    }
    std::fs::write(&tsv, &text).unwrap();
    let gz = dir.path().join("day_0.tsv.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();

    let out = dir.path().join("out");
    let mut a = train_args(Path::new("unused"), &tsv, &out);
    a.model = None;
    a.preset = Some("criteo-kaggle".into());
    a.rows_cap = Some(1000);
    a.batch = 32;
    a.epochs = 3;
    a.optimizer = SparseOptimizer::RowwiseAdagrad;
    a.dense_optimizer = DenseOptimizer::Adam;
    a.lr = 0.01;
    let err = run_train(&a, &mut Vec::new()).unwrap_err().to_string();
    assert!(
        err.contains("day_0.tsv: line 251: 3 columns, expected 40"),
        "{err}"
    );
    a.skip_bad = true;
    a.eval = Some(gz.clone());
    let rep = run_train(&a, &mut Vec::new()).unwrap();
    assert_eq!(rep.skipped, 3, "one bad line per epoch");
    assert_eq!(rep.samples, 3 * 599);
    let m = rep.eval.unwrap();
    assert_eq!(m.samples, 599);
    assert!(m.auc.unwrap() > 0.9, "{:?}", m.auc);
    let mut e = eval_args(&out, &gz);
    e.skip_bad = true;
    let mut log = Vec::new();
    let again = run_eval(&e, &mut log).unwrap();
    assert_eq!(again.auc, m.auc);
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8(log).unwrap().trim()).unwrap();
    assert_eq!(v["skipped"], 1);
}

fn dir_files_equal(a: &Path, b: &Path) -> bool {
    ["config.json", "model.safetensors"]
        .iter()
        .all(|f| file_bytes(&a.join(f)) == file_bytes(&b.join(f)))
}

/// `--seed` draws other samples from the same teacher: a train set and a held-out set.
#[test]
fn synth_seed_draws_other_samples_from_the_same_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let arch = write_model(&dir.path().join("arch"), TINY, 5);
    let run = |teacher: u64, seed: Option<u64>, name: &str, save: bool| {
        let out = dir.path().join(format!("{name}.jsonl"));
        let mut a = synth_args(&arch, teacher, 3000, &out, "zipf:1.05");
        a.seed = seed;
        if save {
            a.save_teacher = Some(dir.path().join(format!("{name}-teacher")));
        }
        run_synth(&a, &mut Vec::new()).unwrap();
        out
    };
    let train = run(7, Some(1), "train", true);
    let held_out = run(7, Some(2), "eval", true);
    let again = run(7, Some(1), "again", false);
    run(8, Some(2), "other", true);
    let t = |name: &str| dir.path().join(format!("{name}-teacher"));
    // one teacher, whatever the sample seed; another --teacher is another teacher
    assert!(dir_files_equal(&t("train"), &t("eval")));
    assert!(!dir_files_equal(&t("train"), &t("other")));
    // other samples; the same seed reproduces the same bytes
    assert!(file_bytes(&train) != file_bytes(&held_out));
    assert!(file_bytes(&train) == file_bytes(&again));
    // the held-out labels come from teacher 7: it ranks them well, teacher 8 does not
    let by_7 = run_eval(&eval_args(&t("train"), &held_out), &mut Vec::new()).unwrap();
    let by_8 = run_eval(&eval_args(&t("other"), &held_out), &mut Vec::new()).unwrap();
    assert!(
        by_7.auc.unwrap() > 0.65,
        "teacher 7 on its samples: {:?}",
        by_7.auc
    );
    assert!(
        (by_8.auc.unwrap() - 0.5).abs() < 0.05,
        "teacher 8 on teacher 7's samples: {:?}",
        by_8.auc
    );
    // without --seed the samples are seeded by --teacher, as before --seed existed
    let default = file_bytes(&run(7, None, "default", false));
    assert!(default == file_bytes(&run(7, Some(7), "seven", false)));
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn mlp_values(m: &Model) -> Vec<f32> {
    let w = &m.weights;
    w.bot
        .iter()
        .chain(&w.top)
        .flat_map(|l| l.weight().iter().chain(l.bias()).copied())
        .collect()
}

fn table_values(m: &Model) -> Vec<f32> {
    let mut v = vec![0.0; m.config.dim];
    let mut out = Vec::new();
    for t in &m.weights.tables {
        for r in 0..t.rows() {
            t.row_f32(r, &mut v);
            out.extend_from_slice(&v);
        }
    }
    out
}

/// --sparse-lr and --dense-lr override --lr for one side; bad rates are refused naming the
/// flag; a resume must use the rates it was started with.
#[test]
fn sparse_and_dense_learning_rates() {
    let (dir, arch, train) = tiny_train_set(2_000, "zipf:1.05");
    let out = dir.path().join("out");
    for (flag, sparse, dense) in [
        ("--sparse-lr", Some(0.0), None),
        ("--dense-lr", None, Some(-1.0)),
        ("--sparse-lr", Some(f32::NAN), None),
        ("--dense-lr", None, Some(f32::INFINITY)),
    ] {
        let mut a = train_args(&arch, &train, &out);
        a.sparse_lr = sparse;
        a.dense_lr = dense;
        let err = run_train(&a, &mut Vec::new()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{flag} must be a positive number")),
            "{err}"
        );
        assert!(!out.exists());
    }

    // a tiny dense rate: the MLPs barely move while the tables train
    let start = Model::load(&arch).unwrap();
    let mut a = train_args(&arch, &train, &out);
    a.dense_lr = Some(1e-9);
    a.lr = 0.5;
    run_train(&a, &mut Vec::new()).unwrap();
    let end = Model::load(&out).unwrap();
    let mlp = max_abs_diff(&mlp_values(&start), &mlp_values(&end));
    let tables = max_abs_diff(&table_values(&start), &table_values(&end));
    assert!(mlp < 1e-6, "MLPs moved by {mlp}");
    assert!(tables > 1e-3, "tables moved by {tables}");
    // and the other way round
    let out2 = dir.path().join("out2");
    let mut b = train_args(&arch, &train, &out2);
    b.sparse_lr = Some(1e-9);
    b.lr = 0.5;
    run_train(&b, &mut Vec::new()).unwrap();
    let end = Model::load(&out2).unwrap();
    let mlp = max_abs_diff(&mlp_values(&start), &mlp_values(&end));
    let tables = max_abs_diff(&table_values(&start), &table_values(&end));
    assert!(tables < 1e-6, "tables moved by {tables}");
    assert!(mlp > 1e-3, "MLPs moved by {mlp}");

    // the checkpoint holds both rates; a resume must repeat them
    let st = dlrs_train::checkpoint::read_state(&out).unwrap();
    assert_eq!((st.settings.sparse_lr, st.settings.dense_lr), (0.5, 1e-9));
    let mut r = a.clone();
    r.model = None;
    r.resume = Some(out.clone());
    r.epochs = 2;
    r.dense_lr = Some(1e-8);
    let err = run_train(&r, &mut Vec::new()).unwrap_err().to_string();
    assert!(
        err.contains("--dense-lr 0.00000001 (the checkpoint has 0.000000001)")
            && !err.contains("--sparse-lr"),
        "{err}"
    );
    // the same rates given another way (--lr 0.5 --dense-lr 1e-9 == --sparse-lr 0.5
    // --dense-lr 1e-9) resume
    r.lr = 0.01;
    r.sparse_lr = Some(0.5);
    r.dense_lr = Some(1e-9);
    let rep = run_train(&r, &mut Vec::new()).unwrap();
    assert_eq!(rep.epochs, 2);
}

/// Regression: a checkpoint at step 20 of a 3000-sample file, resumed against another or a
/// shorter file, said "done: 1 epochs, 20 steps, 0 samples" and exited 0. A resume now checks
/// the data's size and head hash, and `--new-data` trains the checkpoint on other data.
#[test]
fn resume_refuses_other_data_unless_new_data() {
    let (dir, arch, train) = tiny_train_set(3_000, "uniform");
    let out = dir.path().join("out");
    let mut a = train_args(&arch, &train, &out);
    a.max_steps = Some(20);
    let rep = run_train(&a, &mut Vec::new()).unwrap();
    assert_eq!(rep.steps, 20);
    let mut r = a.clone();
    r.model = None;
    r.resume = Some(out.clone());
    r.max_steps = None;

    // another file (same size range, other samples): refused, naming both
    let other = dir.path().join("other.jsonl");
    run_synth(
        &synth_args(&arch, 9, 300, &other, "uniform"),
        &mut Vec::new(),
    )
    .unwrap();
    let mut o = r.clone();
    o.train = other.clone();
    let err = run_train(&o, &mut Vec::new()).unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "--train {}",
            other.canonicalize().unwrap().display()
        )) && err.contains("is not the data this checkpoint was trained on")
            && err.contains("bytes, the checkpoint's had")
            && err.contains(&train.canonicalize().unwrap().display().to_string())
            && err.contains("stopped at sample 1280 of epoch 1")
            && err.contains("--new-data"),
        "{err}"
    );
    // a shorter file with the same head: its size gives it away
    let text = std::fs::read_to_string(&train).unwrap();
    let short = dir.path().join("short.jsonl");
    let half: String = text.lines().take(1000).map(|l| format!("{l}\n")).collect();
    std::fs::write(&short, &half).unwrap();
    let mut o = r.clone();
    o.train = short.clone();
    let err = run_train(&o, &mut Vec::new()).unwrap_err().to_string();
    assert!(err.contains("is not the data"), "{err}");
    // the same bytes copied elsewhere resume
    let copy = dir.path().join("copy.jsonl");
    std::fs::copy(&train, &copy).unwrap();
    let mut o = r.clone();
    o.train = copy;
    o.out = dir.path().join("out-copy");
    o.resume = Some(out.clone());
    let rep = run_train(&o, &mut Vec::new()).unwrap();
    assert_eq!(rep.samples, 3000 - 20 * 64);

    // --new-data without --resume is refused
    let mut n = a.clone();
    n.new_data = true;
    n.out = dir.path().join("out-nd");
    let err = run_train(&n, &mut Vec::new()).unwrap_err().to_string();
    assert!(
        err.contains("--new-data") && err.contains("--resume"),
        "{err}"
    );
    // --new-data: the position restarts at the new data's first sample, the step goes on
    let mut o = r.clone();
    o.train = short;
    o.new_data = true;
    let rep = run_train(&o, &mut Vec::new()).unwrap();
    assert_eq!(rep.samples, 1000);
    assert_eq!(rep.steps, 20 + 1000_u64.div_ceil(64));

    // a checkpoint that records no data (an older dlrs) resumes with a warning; data
    // shorter than its position is an error, not an empty run
    let old = dir.path().join("old");
    let mut b = a.clone();
    b.out = old.clone();
    b.max_steps = Some(20);
    run_train(&b, &mut Vec::new()).unwrap();
    let state = old.join("train_state.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("data");
    std::fs::write(&state, v.to_string()).unwrap();
    let mut o = r.clone();
    o.resume = Some(old.clone());
    o.out = old.clone();
    o.train = dir.path().join("short.jsonl");
    let half: String = text.lines().take(1000).map(|l| format!("{l}\n")).collect();
    std::fs::write(&o.train, half).unwrap();
    let err = format!("{:#}", run_train(&o, &mut Vec::new()).unwrap_err());
    assert!(
        err.contains("holds 1000 samples, but the resumed epoch starts after sample 1280"),
        "{err}"
    );
}

/// A state written before the rates were split (one `lr`, version 1) still resumes.
#[test]
fn train_state_version_1_reads_one_lr_for_both() {
    let v: serde_json::Value = serde_json::from_str(
        r#"{"format": "dlrs-train-state", "version": 1, "epoch": 1, "samples_in_epoch": 0,
            "step": 10, "samples_total": 640, "settings": {"batch": 64, "lr": "0.05",
            "optimizer": "sgd", "dense_optimizer": "adam", "seed": 0, "shuffle": false,
            "shuffle_window": 65536}}"#,
    )
    .unwrap();
    let st = dlrs_train::checkpoint::TrainState::from_json(&v).unwrap();
    assert_eq!((st.settings.sparse_lr, st.settings.dense_lr), (0.05, 0.05));
    let back = dlrs_train::checkpoint::TrainState::from_json(&st.to_json()).unwrap();
    assert_eq!(back, st);
}

/// Adam at lr 0.1 on small criteo-kaggle-shaped synthetic data saturates every prediction:
/// the eval (and the final report) warn, naming the optimizers and their rates; lr 0.01 does
/// not.
#[test]
fn diverged_run_warns() {
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train.jsonl");
    let eval = dir.path().join("eval.jsonl");
    let synth = |rows: u64, seed: u64, out: &Path| {
        let mut a = synth_args(Path::new("unused"), 7, rows, out, "zipf:1.05");
        a.model = None;
        a.preset = Some("criteo-kaggle".into());
        a.rows_cap = Some(1000);
        a.ids_per_table = None;
        a.seed = Some(seed);
        run_synth(&a, &mut Vec::new()).unwrap();
    };
    synth(10_000, 1, &train);
    synth(1_000, 2, &eval);
    let run = |lr: f32, name: &str| {
        let mut a = train_args(Path::new("unused"), &train, &dir.path().join(name));
        a.model = None;
        a.preset = Some("criteo-kaggle".into());
        a.rows_cap = Some(1000);
        a.eval = Some(eval.clone());
        a.epochs = 2;
        a.batch = 128;
        a.optimizer = SparseOptimizer::RowwiseAdagrad;
        a.dense_optimizer = DenseOptimizer::Adam;
        a.lr = lr;
        a.threads = 2;
        let mut log = Vec::new();
        run_train(&a, &mut log).unwrap();
        String::from_utf8(log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let bad = run(0.1, "bad");
    assert_eq!(bad.len(), 2, "{bad:?}");
    for v in &bad {
        let w = v["warnings"][0]
            .as_str()
            .unwrap_or_else(|| panic!("no warning in {v}"));
        assert!(
            w.contains("of the eval predictions are saturated")
                && w.contains("tables: rowwise-adagrad at lr 0.1, MLPs: adam at lr 0.1")
                && w.contains("--sparse-lr 0.01 --dense-lr 0.01"),
            "{w}"
        );
    }
    let good = run(0.01, "good");
    assert!(good.iter().all(|v| v.get("warnings").is_none()), "{good:?}");
}
