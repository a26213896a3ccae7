//! The `dlrs` binary end to end.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn dlrs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dlrs"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/parity")
        .join(name)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn check_predict(dir: &Path, extra: &[&str], env: Option<(&str, &str)>) {
    let model = dir.to_str().unwrap();
    let input = dir.join("inputs.jsonl");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dlrs"));
    cmd.args([
        "predict",
        "--model",
        model,
        "--input",
        input.to_str().unwrap(),
    ])
    .args(extra);
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let want: Vec<f32> = std::fs::read_to_string(dir.join("expected.txt"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let got: Vec<f32> = stdout(&o).lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5,
            "{} line {}: {g} vs {w}",
            dir.display(),
            i + 1
        );
    }
}

#[test]
fn predict_matches_reference_on_every_path() {
    for name in [
        "criteo-kaggle-cap1000",
        "dot-itself-odd",
        "cat-odd",
        "rmc1-cap500",
    ] {
        check_predict(&fixture(name), &[], None);
        check_predict(&fixture(name), &["--threads", "2", "--batch", "5"], None);
        check_predict(
            &fixture(name),
            &["--batch", "1"],
            Some(("DLRS_FORCE_SCALAR", "1")),
        );
    }
}

#[test]
fn predict_bad_input_names_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("cat-odd");
    let good = std::fs::read_to_string(model.join("inputs.jsonl")).unwrap();
    let first = good.lines().next().unwrap();
    let cases = [
        (
            r#"{"dense": [1, 2, 3], "sparse": [[0], [0], [0], [40]]}"#,
            "line 2: field `sparse[3][0]`: id 40 out of range for table 3 with 40 rows",
        ),
        (
            r#"{"dense": [1, 2], "sparse": [[0], [0], [0], [0]]}"#,
            "line 2: field `dense`: 2 values, the model takes 3",
        ),
        (
            r#"{"dense": [1, 2, 3], "sparse": [[0], [0], [0]]}"#,
            "line 2: field `sparse`: 3 tables, the model has 4",
        ),
        (
            r#"{"dense": [1, 2, 3e40], "sparse": [[0], [0], [0], [0]]}"#,
            "line 2: field `dense[2]`",
        ),
        (
            r#"{"dense": [1, 2, 3], "sparse": [[0], [0], [0], [-3]]}"#,
            "line 2: field `sparse[3][0]`",
        ),
        (
            r#"{"dense": [1, 2, 3], "sparse": [[0], [0], [0], [0]"#,
            "line 2: malformed JSON",
        ),
        ("", "line 2: empty line"),
    ];
    for (bad, want) in cases {
        let f = dir.path().join("in.jsonl");
        std::fs::write(&f, format!("{first}\n{bad}\n{first}\n")).unwrap();
        let o = dlrs(&[
            "predict",
            "--model",
            model.to_str().unwrap(),
            "--input",
            f.to_str().unwrap(),
        ]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{bad}: {err}");
        assert!(err.contains(want), "{bad}: got {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let o = dlrs(&["predict", "--model", "/nonexistent-dlrs", "--input", "x"]);
    assert!(
        stderr(&o).contains("/nonexistent-dlrs/config.json"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn init_then_predict_and_bench_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ck");
    let o = dlrs(&[
        "init",
        "--preset",
        "criteo-kaggle",
        "--rows-cap",
        "50",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(
        cfg.contains("\"arch_interaction_op\": \"dot\"")
            && cfg.contains("\"arch_mlp_top\": \"512-256-1\""),
        "{cfg}"
    );
    let o = dlrs(&[
        "bench",
        "--model",
        out.to_str().unwrap(),
        "--batch",
        "4",
        "--seconds",
        "0.05",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert_eq!(text.lines().count(), 1, "exactly one JSON object: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in [
        "model",
        "batch",
        "threads",
        "dist",
        "samples_per_s",
        "embedding_gb_per_s",
        "rss_bytes",
    ] {
        assert!(!v[key].is_null(), "missing {key} in {text}");
    }
    for key in ["p50", "p99"] {
        assert!(v["latency_ms"][key].as_f64().unwrap() > 0.0, "{text}");
    }
    for key in ["embedding", "bottom_mlp", "interaction", "top_mlp"] {
        assert!(v["breakdown_ms"][key].as_f64().unwrap() >= 0.0, "{text}");
    }
    assert_eq!(v["batch"], 4);
}

#[test]
fn bench_preset_small_and_errors() {
    let o = dlrs(&[
        "bench",
        "--model",
        "rmc2",
        "--rows-cap",
        "1000",
        "--batch",
        "16",
        "--threads",
        "2",
        "--dist",
        "zipf:1.05",
        "--seconds",
        "0.05",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["model"], "rmc2");
    assert_eq!(v["dist"], "zipf:1.05");
    assert_eq!(v["ids_per_table"], 120);
    assert!(v["samples_per_s"].as_f64().unwrap() > 0.0);

    let o = dlrs(&["bench", "--model", "rmc7"]);
    assert!(
        stderr(&o).contains("unknown preset `rmc7`"),
        "{}",
        stderr(&o)
    );
    let o = dlrs(&["bench", "--model", "rmc1", "--dist", "zipf:-1"]);
    assert!(stderr(&o).contains("zipf:S"), "{}", stderr(&o));
}

#[test]
fn quantize_compare_and_bench_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("criteo-kaggle-cap1000");
    let out = dir.path().join("int8");
    let o = dlrs(&[
        "quantize",
        "--model",
        src.to_str().unwrap(),
        "--dtype",
        "int8",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = stdout(&o);
    assert_eq!(
        report.lines().count(),
        27,
        "a header and one line per table: {report}"
    );
    assert!(
        report
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("0\t1000\tint8\t"),
        "{report}"
    );
    // labelled samples: the fixture's inputs with alternating labels
    let inputs = std::fs::read_to_string(src.join("inputs.jsonl")).unwrap();
    let labelled: String = inputs
        .lines()
        .enumerate()
        .map(|(i, l)| format!("{}, \"label\": {}}}\n", &l[..l.len() - 1], i % 2))
        .collect();
    let f = dir.path().join("labelled.jsonl");
    std::fs::write(&f, labelled).unwrap();
    let o = dlrs(&[
        "compare",
        "--model",
        src.to_str().unwrap(),
        "--model",
        out.to_str().unwrap(),
        "--input",
        f.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let max = v["max_abs_diff"].as_f64().unwrap();
    assert!(max > 0.0 && max < 1e-2, "int8 drift {max}");
    assert_eq!(v["samples"], 64);
    assert!(
        v["auc_a"].as_f64().is_some() && v["auc_b"].as_f64().is_some(),
        "{v}"
    );
    // the quantized model predicts
    let o = dlrs(&[
        "predict",
        "--model",
        out.to_str().unwrap(),
        "--input",
        src.join("inputs.jsonl").to_str().unwrap(),
    ]);
    assert!(
        o.status.success() && stdout(&o).lines().count() == 64,
        "{}",
        stderr(&o)
    );
    // partial quantization keeps the other tables fp32
    let part = dir.path().join("part");
    let o = dlrs(&[
        "quantize",
        "--model",
        src.to_str().unwrap(),
        "--dtype",
        "int4",
        "--tables",
        "2,11",
        "--out",
        part.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg = std::fs::read_to_string(part.join("config.json")).unwrap();
    assert!(
        cfg.contains("\"int4\"") && cfg.contains("\"fp32\""),
        "{cfg}"
    );
    let o = dlrs(&[
        "quantize",
        "--model",
        src.to_str().unwrap(),
        "--dtype",
        "int3",
        "--out",
        "x",
    ]);
    assert!(stderr(&o).contains("not a row format"), "{}", stderr(&o));

    for dtype in ["fp16", "int8", "int4"] {
        let o = dlrs(&[
            "bench",
            "--model",
            "rmc1",
            "--rows-cap",
            "2000",
            "--batch",
            "8",
            "--dtype",
            dtype,
            "--seconds",
            "0.05",
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v["dtype"], dtype);
        assert_eq!(v["cache_lines_per_row"], 1.0, "{v}");
    }
}

#[test]
fn verify_manifest_and_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    std::fs::create_dir(&m).unwrap();
    let src = fixture("cat-odd");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), m.join(f)).unwrap();
    }
    let ms = m.to_str().unwrap();
    // a model exported from PyTorch has no manifest: checked for shapes and dtypes, exit 0;
    // --require-manifest makes that an error
    let o = dlrs(&["verify", "--model", ms]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let want = format!(
        "{}: no manifest: 12 tensors checked for shape and dtype only; run `dlrs manifest --model {ms}` to add checksums",
        m.join("model.safetensors").display()
    );
    assert_eq!(stdout(&o).trim(), want);
    let o = dlrs(&["verify", "--model", ms, "--require-manifest"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o).trim(),
        format!("error: {want} (--require-manifest)")
    );
    let o = dlrs(&["manifest", "--model", ms]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = dlrs(&["verify", "--model", ms]);
    assert!(
        o.status.success() && stdout(&o).contains(": ok"),
        "{}",
        stderr(&o)
    );
    // the model still predicts what the reference did
    check_predict_dir(&m, &src);

    // one flipped bit in the last table's rows
    let path = m.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let (start, _) = meta.tensors()["emb_l.3.weight"].data_offsets;
    bytes[8 + n + start + 5] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let o = dlrs(&["verify", "--model", ms]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("`emb_l.3.weight`") && stderr(&o).contains("checksum"),
        "{}",
        stderr(&o)
    );
    let input = src.join("inputs.jsonl");
    for mode in ["mmap", "ram"] {
        let o = dlrs(&[
            "predict",
            "--model",
            ms,
            "--input",
            input.to_str().unwrap(),
            "--tables",
            mode,
        ]);
        assert_eq!(o.status.code(), Some(1), "{mode}");
        let err = stderr(&o);
        assert!(
            err.contains("`emb_l.3.weight`") && !err.contains("panicked"),
            "{mode}: {err}"
        );
    }
}

fn check_predict_dir(model: &Path, fixture_dir: &Path) {
    let input = fixture_dir.join("inputs.jsonl");
    let o = dlrs(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--tables",
        "ram",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want: Vec<f32> = std::fs::read_to_string(fixture_dir.join("expected.txt"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let got: Vec<f32> = stdout(&o).lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(got.len(), want.len());
    assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() <= 1e-5));
}

#[test]
fn serve_answers_then_drains_on_sigterm() {
    let model = fixture("criteo-kaggle-cap1000");
    let (mut child, url) =
        common::spawn_serve(&["--model", model.to_str().unwrap(), "--name", "ck"]);
    let sample = std::fs::read_to_string(model.join("inputs.jsonl"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    let want: f32 = std::fs::read_to_string(model.join("expected.txt"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let body = format!("{{\"samples\": [{sample}]}}");
    let mut resp = ureq::post(&format!("{url}/v1/models/ck/predict"))
        .header("content-type", "application/json")
        .send(body.as_bytes())
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    let got = v["scores"][0].as_f64().unwrap() as f32;
    assert!((got - want).abs() <= 1e-5, "{got} vs {want}");
    // SIGTERM: the server drains and exits 0
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed().as_secs() < 30,
            "server did not exit after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

/// Runs `dlrs args` and returns its output with its wall time and peak RSS in bytes
/// (wait4's rusage of the child alone).
fn dlrs_measured(args: &[&str]) -> (Output, std::time::Duration, u64) {
    use std::os::unix::process::ExitStatusExt;
    let t0 = std::time::Instant::now();
    // waited for below with wait4, which also gives its rusage
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_dlrs"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    // the outputs are small: read them after the child ends
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 writes the exit status and the child's rusage into the two valid
    // out-pointers; `pid` is our own child, not yet waited for.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid);
    let took = t0.elapsed();
    let read = |mut p: Box<dyn std::io::Read>| {
        let mut v = Vec::new();
        p.read_to_end(&mut v).unwrap();
        v
    };
    let stdout = read(Box::new(child.stdout.unwrap()));
    let stderr = read(Box::new(child.stderr.unwrap()));
    let out = Output {
        status: std::process::ExitStatus::from_raw(status),
        stdout,
        stderr,
    };
    (out, took, ru.ru_maxrss as u64 * 1024)
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo reads a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn devices_fifos_and_huge_files_as_model_files_fail_fast_in_bounded_memory() {
    // regression: /dev/zero as config.json grew without end (5.9 GB in 6 s), a 4 GiB sparse
    // config.json took 4.2 GB and 17 s, a FIFO blocked forever, and a directory or device as
    // model.safetensors said "No such device (os error 19)"
    let src = fixture("cat-odd");
    let input = src.join("inputs.jsonl");
    let dir = tempfile::tempdir().unwrap();
    type Breaker<'a> = (&'a str, &'a dyn Fn(&Path), &'a str);
    let kinds: [Breaker; 5] = [
        (
            "/dev/zero",
            &|p| std::os::unix::fs::symlink("/dev/zero", p).unwrap(),
            "not a regular file (a character device)",
        ),
        (
            "/dev/urandom",
            &|p| std::os::unix::fs::symlink("/dev/urandom", p).unwrap(),
            "not a regular file (a character device)",
        ),
        (
            "/dev/null",
            &|p| std::os::unix::fs::symlink("/dev/null", p).unwrap(),
            "not a regular file (a character device)",
        ),
        ("a FIFO", &|p| mkfifo(p), "not a regular file (a FIFO)"),
        (
            "a directory",
            &|p| std::fs::create_dir(p).unwrap(),
            "not a regular file (a directory)",
        ),
    ];
    let mut n = 0;
    for file in ["config.json", "model.safetensors"] {
        let sparse: &dyn Fn(&Path) =
            &|p| std::fs::File::create(p).unwrap().set_len(4 << 30).unwrap();
        let sparse_err = if file == "config.json" {
            "4294967296 bytes: larger than the 1 MiB a config.json may have"
        } else {
            "not a valid safetensors file"
        };
        for (what, make, want) in
            kinds
                .iter()
                .copied()
                .chain([("a 4 GiB sparse file", sparse, sparse_err)])
        {
            n += 1;
            let m = dir.path().join(format!("m{n}"));
            std::fs::create_dir(&m).unwrap();
            for f in ["config.json", "model.safetensors"] {
                if f != file {
                    std::fs::copy(src.join(f), m.join(f)).unwrap();
                }
            }
            make(&m.join(file));
            let ms = m.to_str().unwrap();
            for cmd in [
                vec!["predict", "--model", ms, "--input", input.to_str().unwrap()],
                vec!["verify", "--model", ms],
            ] {
                let (o, took, rss) = dlrs_measured(&cmd);
                let err = stderr(&o);
                let ctx = format!("{what} as {file}, dlrs {}: {err}", cmd[0]);
                assert_eq!(o.status.code(), Some(1), "{ctx}");
                assert!(
                    err.contains(want) && err.contains(&format!("{ms}/{file}")),
                    "{ctx}"
                );
                assert_eq!(err.lines().count(), 1, "{ctx}");
                assert!(!err.contains("os error"), "{ctx}");
                assert!(
                    took < std::time::Duration::from_secs(1),
                    "{ctx}: took {took:?}"
                );
                assert!(rss < 100 << 20, "{ctx}: peak RSS {} MB", rss >> 20);
            }
        }
    }
}

#[test]
fn os_errors_are_said_once() {
    let o = dlrs(&["predict", "--model", "/nonexistent-dlrs", "--input", "x"]);
    assert_eq!(
        stderr(&o).trim(),
        "error: /nonexistent-dlrs/config.json: No such file or directory (os error 2)"
    );
}

#[test]
fn bf16_mlps_from_quantize_predict_close_to_the_reference_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("rmc1-cap500");
    let out = dir.path().join("bf16");
    let o = dlrs(&[
        "quantize",
        "--model",
        src.to_str().unwrap(),
        "--mlp-dtype",
        "bf16",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("mlp weights\tbf16\tmax_abs_error "),
        "{}",
        stdout(&o)
    );
    // a manifest covers the BF16 tensors as the others
    let o = dlrs(&["verify", "--model", out.to_str().unwrap()]);
    assert!(
        o.status.success() && stdout(&o).contains(": ok"),
        "{}",
        stderr(&o)
    );
    let input = src.join("inputs.jsonl");
    let o = dlrs(&[
        "predict",
        "--model",
        out.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want: Vec<f32> = std::fs::read_to_string(src.join("expected.txt"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let got: Vec<f32> = stdout(&o).lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(got.len(), want.len());
    let drift = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    // bf16 weights and activations: close to PyTorch's fp32 scores, not equal
    assert!(
        drift > 0.0 && drift < 1e-2,
        "max |bf16 - fp32 reference| = {drift}"
    );
    // compare takes the fp32 model and its bf16 conversion (the MLP dtype may differ),
    // and refuses two different architectures, naming what may differ
    let o = dlrs(&[
        "compare",
        "--model",
        src.to_str().unwrap(),
        "--model",
        out.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let max = v["max_abs_diff"].as_f64().unwrap();
    assert!(
        (max - drift as f64).abs() < 2e-5,
        "compare {max} vs predict {drift}"
    );
    let o = dlrs(&[
        "compare",
        "--model",
        src.to_str().unwrap(),
        "--model",
        fixture("criteo-kaggle-cap1000").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("only row formats and the MLP dtype may differ"),
        "{}",
        stderr(&o)
    );
    // the same scores on every path the host has, the converting fallback included
    let o2 = Command::new(env!("CARGO_BIN_EXE_dlrs"))
        .args([
            "predict",
            "--model",
            out.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ])
        .env("DLRS_ISA", "avx2")
        .output()
        .unwrap();
    let got2: Vec<f32> = stdout(&o2).lines().map(|l| l.parse().unwrap()).collect();
    for (a, b) in got.iter().zip(&got2) {
        assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
    }
    // training needs fp32 MLPs
    let o = dlrs(&[
        "train",
        "--model",
        out.to_str().unwrap(),
        "--train",
        input.to_str().unwrap(),
        "--out",
        dir.path().join("t").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("bf16 MLP weights: training needs fp32"),
        "{}",
        stderr(&o)
    );
    // quantize needs something to convert
    let o = dlrs(&[
        "quantize",
        "--model",
        src.to_str().unwrap(),
        "--out",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
