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
    assert_eq!(
        m.forward(&batch, &mut w1, &exec).unwrap(),
        back.forward(&batch, &mut w2, &exec).unwrap()
    );
    // no temp files left behind by the atomic writes
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
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
    let views: Vec<(String, TensorView<'_>)> = t
        .iter()
        .map(|(k, (d, s, b))| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
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
        t.insert(
            "emb_l.1.weight".into(),
            (Dtype::F32, vec![2, 4], vec![0; 32]),
        );
    });
    assert!(
        e.contains("`emb_l.1.weight`: shape [2, 4], expected [1, 4]"),
        "{e}"
    );
    let e = load_err(|t| {
        t.insert(
            "bot_l.2.weight".into(),
            (Dtype::F64, vec![4, 8], vec![0; 256]),
        );
    });
    assert!(
        e.contains("`bot_l.2.weight`: dtype F64, expected F32"),
        "{e}"
    );
    let e = load_err(|t| {
        t.insert("bot_l.4.weight".into(), (Dtype::F32, vec![1], vec![0; 4]));
    });
    assert!(
        e.contains("`bot_l.4.weight`: not part of the architecture"),
        "{e}"
    );
}

#[test]
fn broken_files_are_clean_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_with(dir.path(), |_| {});
    let path = dir.path().join("model.safetensors");
    let good = std::fs::read(&path).unwrap();
    Model::load(dir.path()).unwrap();
    for cut in [0, 7, 8, 100, good.len() / 2, good.len() - 1] {
        replace(&path, &good[..cut]);
        let e = Model::load(dir.path())
            .err()
            .expect("truncated file loaded")
            .to_string();
        assert!(e.contains("model.safetensors"), "cut at {cut}: {e}");
    }
    std::fs::remove_file(&path).unwrap();
    assert!(
        Model::load(dir.path())
            .err()
            .unwrap()
            .to_string()
            .contains("model.safetensors")
    );
    std::fs::write(dir.path().join("config.json"), "{\"arch_mlp_bot\": 1}").unwrap();
    let e = Model::load(dir.path()).err().unwrap().to_string();
    assert!(
        e.contains("config.json") && e.contains("arch_mlp_bot"),
        "{e}"
    );
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
    assert!(
        m.convert_tables(RowFormat::F16, &[3])
            .unwrap_err()
            .to_string()
            .contains("table 3 does not exist")
    );
    m.save(dir.path()).unwrap();
    let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    assert!(text.contains(r#""dlrs_embedding_dtype": ["#), "{text}");
    let back = Model::load(dir.path()).unwrap();
    assert_eq!(
        back.config.table_formats,
        vec![RowFormat::Int8, RowFormat::Int4, RowFormat::F16]
    );
    for (a, b) in m.weights.tables.iter().zip(&back.weights.tables) {
        assert_eq!(a.bytes(), b.bytes());
    }
    let batch = synth_batch(&m.config, 50, 3, IdDist::Uniform, 8).unwrap();
    let exec = Executor::new(1).unwrap();
    let (mut w1, mut w2, mut w3) = (
        Workspace::default(),
        Workspace::default(),
        Workspace::default(),
    );
    let q = m.forward(&batch, &mut w1, &exec).unwrap().to_vec();
    assert_eq!(q, back.forward(&batch, &mut w2, &exec).unwrap());
    let f = fp32.forward(&batch, &mut w3, &exec).unwrap();
    let max = q
        .iter()
        .zip(f)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
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
    assert!(
        e.contains("`emb_l.0.weight`: dtype U8, expected F32"),
        "{e}"
    );
}

fn small_cfg() -> DlrmConfig {
    DlrmConfig::from_json_str(
        r#"{"arch_mlp_bot":"3-8-4","arch_mlp_top":"5-1","arch_embedding_size":"10-1-300",
            "arch_sparse_feature_size":4,"arch_interaction_op":"dot","arch_interaction_itself":true}"#,
    )
    .unwrap()
}

/// Replaces a file the way every dlrs writer does: a new file renamed over the old one. (A
/// mapped model file rewritten in place, truncated, would fault its readers with SIGBUS:
/// dlrs never does that, and neither may anyone else while a model is being served.)
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Loading `dir` must fail in RAM mode, and in mmap mode fail at load or at verification.
fn assert_rejected(dir: &Path, what: &str) {
    use dlrs_model::TableMode;
    assert!(
        Model::load_with(dir, TableMode::Ram).is_err(),
        "{what}: loaded in RAM mode"
    );
    if let Ok(m) = Model::load_with(dir, TableMode::Mmap) {
        assert!(m.verify_tables().is_err(), "{what}: mapped model verified");
    }
}

#[test]
fn every_bit_flip_and_truncation_ends_in_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Model::random(small_cfg(), 5).unwrap();
    m.convert_tables(dlrs_model::RowFormat::Int8, &[0]).unwrap();
    m.convert_tables(dlrs_model::RowFormat::Int4, &[2]).unwrap();
    m.save(dir.path()).unwrap();
    let path = dir.path().join("model.safetensors");
    let good = std::fs::read(&path).unwrap();
    Model::load_with(dir.path(), dlrs_model::TableMode::Ram).unwrap();
    Model::load(dir.path()).unwrap().verify_tables().unwrap();
    for pos in 0..good.len() {
        let mut bad = good.clone();
        bad[pos] ^= 1 << (pos % 8);
        replace(&path, &bad);
        assert_rejected(
            dir.path(),
            &format!("bit {} of byte {pos} flipped", pos % 8),
        );
    }
    for cut in 0..good.len() {
        replace(&path, &good[..cut]);
        assert_rejected(dir.path(), &format!("truncated to {cut} bytes"));
    }
}

#[test]
fn a_corrupt_shard_is_never_served_from_a_mapped_table() {
    let dir = tempfile::tempdir().unwrap();
    let m = Model::random(small_cfg(), 5).unwrap();
    m.save(dir.path()).unwrap();
    let path = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    // flip a bit inside table 2's rows (its tensor is the largest; find it from the header)
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let (start, _) = meta.tensors()["emb_l.2.weight"].data_offsets;
    bytes[8 + n + start + 100] ^= 0x10;
    replace(&path, &bytes);
    let mapped = Model::load(dir.path()).unwrap();
    let exec = Executor::new(1).unwrap();
    let mut ws = Workspace::default();
    let ok = synth_batch(&mapped.config, 4, 2, IdDist::Uniform, 1).unwrap();
    let e = mapped.forward(&ok, &mut ws, &exec).unwrap_err().to_string();
    assert!(e.contains("emb_l.2.weight") && e.contains("shard 0"), "{e}");
    let e = Model::load_with(dir.path(), dlrs_model::TableMode::Ram)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("emb_l.2.weight") && e.contains("checksum"),
        "{e}"
    );
}

#[test]
fn plain_pytorch_files_load_and_gain_a_manifest() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/parity/dot-odd");
    let m = Model::load(&src).unwrap();
    assert!(!m.weights.has_manifest, "fixtures are PyTorch's own files");
    let dir = tempfile::tempdir().unwrap();
    m.save(dir.path()).unwrap();
    let back = Model::load(dir.path()).unwrap();
    assert!(back.weights.has_manifest);
    back.verify_tables().unwrap();
}

#[test]
fn streamed_random_model_equals_the_in_memory_one() {
    use dlrs_model::RowFormat;
    let mut c = small_cfg();
    c.tables = vec![10, 5000, 300];
    c.table_formats = vec![RowFormat::Int4, RowFormat::F32, RowFormat::Int8];
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut written = 0;
    Model::write_random(&c, 11, a.path(), |n| written += n).unwrap();
    Model::random(c.clone(), 11)
        .unwrap()
        .save(b.path())
        .unwrap();
    for f in ["config.json", "model.safetensors"] {
        let (x, y) = (
            std::fs::read(a.path().join(f)).unwrap(),
            std::fs::read(b.path().join(f)).unwrap(),
        );
        let first = x.iter().zip(&y).position(|(p, q)| p != q);
        let show = |v: &[u8]| String::from_utf8_lossy(&v[..200.min(v.len())]).into_owned();
        assert!(
            x == y,
            "{f} differs: lengths {} {}, first difference at {first:?}\n{}\n{}",
            x.len(),
            y.len(),
            show(&x),
            show(&y)
        );
    }
    let table_bytes: usize = Model::load(a.path())
        .unwrap()
        .weights
        .tables
        .iter()
        .map(|t| t.size_bytes())
        .sum();
    assert_eq!(written, table_bytes as u64);
}

#[test]
fn bf16_mlps_round_trip_as_bf16_tensors_and_stay_close_to_fp32() {
    use dlrs_kernels::gemm::Dtype as WeightDtype;
    use dlrs_model::MlpDtype;
    let dir = tempfile::tempdir().unwrap();
    let fp32 = Model::random(cfg(), 5).unwrap();
    let bf16 = Model::random(cfg().with_mlp_dtype(MlpDtype::Bf16), 5).unwrap();
    // the same draw, rounded: a bf16 model is the fp32 one's weights as bfloat16
    for (a, b) in fp32.weights.bot.iter().zip(&bf16.weights.bot) {
        for (x, y) in a.weight().iter().zip(b.weight()) {
            assert_eq!(dlrs_kernels::gemm::bf16::round(*x), *y);
        }
        assert_eq!(a.bias(), b.bias(), "biases stay f32");
        assert_eq!(b.packed().unwrap().dtype(), WeightDtype::Bf16);
    }
    bf16.save(dir.path()).unwrap();
    let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    assert!(text.contains("\"dlrs_mlp_dtype\": \"bf16\""), "{text}");
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.tensors()["bot_l.0.weight"].dtype, Dtype::BF16);
    assert_eq!(meta.tensors()["bot_l.0.bias"].dtype, Dtype::F32);
    let back = Model::load(dir.path()).unwrap();
    assert_eq!(back.config.mlp_dtype, MlpDtype::Bf16);
    for (a, b) in bf16.weights.top.iter().zip(&back.weights.top) {
        assert_eq!(a.weight(), b.weight(), "bf16 widens exactly");
    }
    let batch = synth_batch(&bf16.config, 40, 3, IdDist::Zipf(1.1), 7).unwrap();
    let exec = Executor::new(2).unwrap();
    let (mut w1, mut w2, mut w3) = (
        Workspace::default(),
        Workspace::default(),
        Workspace::default(),
    );
    let want = fp32.forward(&batch, &mut w1, &exec).unwrap().to_vec();
    let got = back.forward(&batch, &mut w2, &exec).unwrap().to_vec();
    assert_eq!(got, bf16.forward(&batch, &mut w3, &exec).unwrap());
    let drift = want
        .iter()
        .zip(&got)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(drift > 0.0 && drift < 2e-2, "bf16 drift {drift}");
    // converting the fp32 model gives the same model
    let mut conv = Model::random(cfg(), 5).unwrap();
    let (max, mean) = conv.convert_mlp(MlpDtype::Bf16);
    assert!(max > 0.0 && mean > 0.0 && max < 1e-2, "{max} {mean}");
    let mut w4 = Workspace::default();
    assert_eq!(
        conv.forward(&batch, &mut w4, &exec).unwrap(),
        got.as_slice()
    );
}
