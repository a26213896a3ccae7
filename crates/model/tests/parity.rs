//! Parity with the reference PyTorch DLRM: every fixture in tests/fixtures/parity was
//! written by `scripts/make-fixtures.sh` (../shared/peer/torch_dlrm.py export): a model
//! directory, inputs.jsonl, and the reference's expected.txt.

use std::path::{Path, PathBuf};

use dlrs_model::batch::parse_sample;
use dlrs_model::{Batch, Executor, Model, Workspace};

fn fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/parity");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").exists())
        .collect();
    v.sort();
    assert!(
        v.len() >= 9,
        "parity fixtures missing under {}",
        root.display()
    );
    v
}

fn load(dir: &Path) -> (Model, Vec<Batch>, Vec<f32>) {
    let model = Model::load(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let inputs = std::fs::read_to_string(dir.join("inputs.jsonl")).unwrap();
    let samples: Vec<_> = inputs
        .lines()
        .map(|l| parse_sample(l, &model.config).unwrap())
        .collect();
    let expected: Vec<f32> = std::fs::read_to_string(dir.join("expected.txt"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(samples.len(), expected.len());
    // the same samples cut three ways: one batch, batches of 7, batches of 1
    let mut batches = Vec::new();
    for size in [samples.len(), 7, 1] {
        for chunk in samples.chunks(size) {
            let mut b = Batch::empty(&model.config);
            for s in chunk {
                b.push(&model.config, s).unwrap();
            }
            batches.push(b);
        }
    }
    (model, batches, expected)
}

#[test]
fn matches_reference_pytorch_within_1e5() {
    for dir in fixtures() {
        let (model, batches, expected) = load(&dir);
        let has_empty_bag = batches[0]
            .bags()
            .iter()
            .any(|b| b.offsets.windows(2).any(|w| w[0] == w[1]));
        for threads in [1, 2] {
            let exec = Executor::new(threads).unwrap();
            let mut ws = Workspace::default();
            let mut got = Vec::new();
            for b in &batches {
                got.extend_from_slice(model.forward(b, &mut ws, &exec).unwrap());
            }
            assert_eq!(got.len(), 3 * expected.len());
            for (i, (g, w)) in got.iter().zip(expected.iter().cycle()).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5,
                    "{}: sample {i} ({threads} threads): {g} vs reference {w}",
                    dir.display()
                );
            }
        }
        if dir.ends_with("dot-odd") {
            assert!(has_empty_bag, "the fixtures should exercise empty bags");
        }
    }
}
