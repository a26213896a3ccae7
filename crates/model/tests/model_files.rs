//! Model directories: round trips, and every way a model file can disagree with its config.

use std::collections::HashMap;
use std::path::Path;

use dlrs_model::synth::{IdDist, synth_batch};
use dlrs_model::weights::expected_tensors;
use dlrs_model::{DlrmConfig, Executor, Model, Workspace};
use safetensors::tensor::{Dtype, TensorView, serialize_to_file};

fn cfg() -> DlrmConfig {
    DlrmConfig::from_json_str(
        r#"{"arch_mlp_bot":"3-8-4","arch_mlp_top":"5-1","arch_embedding_size":"10-1-3000000",
            "arch_sparse_feature_size":4,"arch_interaction_op":"dot","arch_interaction_itself":true}"#,
    )
    .unwrap()
}

#[test]
fn save_load_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let m = Model::random(cfg(), 9).unwrap();
    m.save(dir.path()).unwrap();
    let back = Model::load(dir.path()).unwrap();
    assert_eq!(back.config, m.config);
    for (a, b) in m.weights.tables.iter().zip(&back.weights.tables) {
        assert_eq!(a.data(), b.data());
    }
    let batch = synth_batch(&m.config, 33, 4, IdDist::Zipf(1.1), 2).unwrap();
    let exec = Executor::new(2).unwrap();
    let (mut w1, mut w2) = (Workspace::default(), Workspace::default());
    assert_eq!(m.forward(&batch, &mut w1, &exec), back.forward(&batch, &mut w2, &exec));
    // no temp files left behind by the atomic writes
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

/// Writes a model directory whose tensors are the expected ones, edited by `edit`.
fn write_with(dir: &Path, edit: impl FnOnce(&mut HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>)) {
    let c = cfg();
    std::fs::write(dir.join("config.json"), c.to_json_string()).unwrap();
    let mut t: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> = expected_tensors(&c)
        .into_iter()
        .map(|(k, shape, _)| {
            let n: usize = shape.iter().product();
            (k, (Dtype::F32, shape, vec![0u8; n * 4]))
        })
        .collect();
    edit(&mut t);
    let views: Vec<(String, TensorView<'_>)> =
        t.iter().map(|(k, (d, s, b))| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

fn load_err(edit: impl FnOnce(&mut HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>)) -> String {
    let dir = tempfile::tempdir().unwrap();
    write_with(dir.path(), edit);
    match Model::load(dir.path()) {
        Ok(_) => panic!("loaded a bad model"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn tensor_errors_name_the_tensor() {
    let e = load_err(|t| {
        t.remove("top_l.0.bias");
    });
    assert!(e.contains("tensor `top_l.0.bias`: missing"), "{e}");
    let e = load_err(|t| {
        t.insert("emb_l.1.weight".into(), (Dtype::F32, vec![2, 4], vec![0; 32]));
    });
    assert!(e.contains("`emb_l.1.weight`: shape [2, 4], expected [1, 4]"), "{e}");
    let e = load_err(|t| {
        t.insert("bot_l.2.weight".into(), (Dtype::F64, vec![4, 8], vec![0; 256]));
    });
    assert!(e.contains("`bot_l.2.weight`: dtype F64, expected F32"), "{e}");
    let e = load_err(|t| {
        t.insert("bot_l.4.weight".into(), (Dtype::F32, vec![1], vec![0; 4]));
    });
    assert!(e.contains("`bot_l.4.weight`: not part of the architecture"), "{e}");
}

#[test]
fn broken_files_are_clean_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_with(dir.path(), |_| {});
    let path = dir.path().join("model.safetensors");
    let good = std::fs::read(&path).unwrap();
    Model::load(dir.path()).unwrap();
    for cut in [0, 7, 8, 100, good.len() / 2, good.len() - 1] {
        std::fs::write(&path, &good[..cut]).unwrap();
        let e = Model::load(dir.path()).err().expect("truncated file loaded").to_string();
        assert!(e.contains("model.safetensors"), "cut at {cut}: {e}");
    }
    std::fs::remove_file(&path).unwrap();
    assert!(Model::load(dir.path()).err().unwrap().to_string().contains("model.safetensors"));
    std::fs::write(dir.path().join("config.json"), "{\"arch_mlp_bot\": 1}").unwrap();
    let e = Model::load(dir.path()).err().unwrap().to_string();
    assert!(e.contains("config.json") && e.contains("arch_mlp_bot"), "{e}");
}

#[test]
fn mixed_row_formats_round_trip_and_stay_close_to_fp32() {
    use dlrs_model::RowFormat;
    let dir = tempfile::tempdir().unwrap();
    let fp32 = Model::random(cfg(), 4).unwrap();
    let mut m = Model::random(cfg(), 4).unwrap();
    let report = m.convert_tables(RowFormat::Int8, &[0]).unwrap();
    assert_eq!(report.len(), 1);
    m.convert_tables(RowFormat::Int4, &[1]).unwrap();
    m.convert_tables(RowFormat::F16, &[2]).unwrap();
    assert!(m.convert_tables(RowFormat::F16, &[3]).unwrap_err().to_string().contains("table 3 does not exist"));
    m.save(dir.path()).unwrap();
    let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    assert!(text.contains(r#""dlrs_embedding_dtype": ["#), "{text}");
    let back = Model::load(dir.path()).unwrap();
    assert_eq!(back.config.table_formats, vec![RowFormat::Int8, RowFormat::Int4, RowFormat::F16]);
    for (a, b) in m.weights.tables.iter().zip(&back.weights.tables) {
        assert_eq!(a.bytes(), b.bytes());
    }
    let batch = synth_batch(&m.config, 50, 3, IdDist::Uniform, 8).unwrap();
    let exec = Executor::new(1).unwrap();
    let (mut w1, mut w2, mut w3) = (Workspace::default(), Workspace::default(), Workspace::default());
    let q = m.forward(&batch, &mut w1, &exec).to_vec();
    assert_eq!(q, back.forward(&batch, &mut w2, &exec));
    let f = fp32.forward(&batch, &mut w3, &exec);
    let max = q.iter().zip(f).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(max > 0.0 && max < 2e-2, "quantized scores drift by {max}");
}

#[test]
fn quantized_table_with_wrong_dtype_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Model::random(cfg(), 4).unwrap();
    m.convert_tables(dlrs_model::RowFormat::Int8, &[0]).unwrap();
    m.save(dir.path()).unwrap();
    // a config that says fp32 over a file holding int8 rows
    let fp32_cfg = m.config.clone().with_format(dlrs_model::RowFormat::F32);
    std::fs::write(dir.path().join("config.json"), fp32_cfg.to_json_string()).unwrap();
    let e = Model::load(dir.path()).err().unwrap().to_string();
    assert!(e.contains("`emb_l.0.weight`: dtype U8, expected F32"), "{e}");
}
