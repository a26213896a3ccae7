//! `dlrs report` end to end on tiny tables (`--tiny`, seconds not minutes): every section in
//! report.json, the breakdown adding up, the charts written, `--compare` and its errors, and
//! the page in headless Chromium (every chart visible, nothing on the console).
//! No figure's value is asserted: performance is never tested by timing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

fn dlrs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dlrs"))
        .args(args)
        .output()
        .expect("dlrs runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One tiny report for every test of this file: rmc1 (a capped preset) and a tiny rmc2
/// model directory, so that the mix of co-location runs too.
fn report_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = tempfile::tempdir().unwrap().keep();
        let model = root.join("small-rmc2");
        let m = model.to_str().unwrap();
        let o = dlrs(&["init", "--preset", "rmc2", "--rows-cap", "2000", "--out", m]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = root.join("report");
        let o = dlrs(&[
            "report",
            "--tiny",
            "--models",
            &format!("rmc1,{m}"),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        out
    })
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// One test, so that the tiny report is made once (nextest runs each test in a process of
/// its own).
#[test]
fn report_end_to_end() {
    every_section_is_in_the_json_and_the_page();
    compare_puts_two_reports_side_by_side_and_refuses_bad_input();
    the_page_renders_in_headless_chromium();
}

fn every_section_is_in_the_json_and_the_page() {
    let dir = report_dir();
    let r = json(&dir.join("report.json"));
    assert_eq!(r["schema_version"], 1);
    assert_eq!(r["size"], "tiny");
    assert_eq!(r["capped"], true, "rmc1 was capped");
    let models = ["rmc1", "small-rmc2"];

    // 1. the machine: 3 row sizes x 1 and all threads x huge and 4 KiB pages
    let m = &r["machine"];
    assert!(m["cpu_line"].as_str().unwrap().contains("family"));
    for k in ["caches", "numa_nodes", "thp", "kernel", "isa"] {
        assert!(!m["host"][k].is_null(), "host.{k}");
    }
    let g = m["limits"]["gather"].as_array().unwrap();
    for rb in [64, 128, 256] {
        for huge in [true, false] {
            assert!(
                g.iter()
                    .any(|x| x["row_bytes"] == rb && x["huge_pages"] == huge && x["threads"] == 1),
                "gather {rb} B huge {huge}"
            );
        }
    }
    assert!(f(&m["limits"]["fma"]["per_core_gflops"]) > 0.0);
    assert!(f(&m["limits"]["dram_latency_ns"]) > 0.0);
    assert!(!m["limits"]["seq_read"].as_array().unwrap().is_empty());

    // 2. the breakdown: every model at every batch size; the stages add up to the batch
    let pts = r["breakdown"]["points"].as_array().unwrap();
    for model in models {
        for b in [1, 16, 64, 256, 1024] {
            let p = pts
                .iter()
                .find(|p| p["model"] == model && p["batch"] == b)
                .unwrap_or_else(|| panic!("{model} at batch {b}"));
            let ms = &p["stages_ms"];
            let sum: f64 = ["embedding", "bottom_mlp", "interaction", "top_mlp"]
                .iter()
                .map(|k| f(&ms[k]))
                .sum();
            let share = sum / f(&p["latency_ms"]["mean"]);
            assert!((share - f(&p["stages_over_batch"])).abs() < 1e-9);
            // a tiny table's batch of 1 takes microseconds, where the forward's fixed cost
            // outside the stages shows; from 16 samples on, within 5%
            let bound = if b == 1 { 0.85 } else { 0.95 };
            assert!(
                share > bound && share <= 1.0 + 1e-9,
                "{model} batch {b}: the stages are {share} of the batch"
            );
            assert!(p["of_limit"]["embedding"].as_f64().is_some(), "{p}");
            let cmd = p["bench_command"].as_str().unwrap();
            assert!(
                cmd.starts_with("dlrs bench --model ") && cmd.contains(&format!("--batch {b}"))
            );
        }
    }

    // 3. batching: crossings of 10, 25 and 60 ms
    let bt = r["batching"].as_array().unwrap();
    assert_eq!(bt.len(), 2);
    for b in bt {
        let c = b["crossings"].as_array().unwrap();
        assert_eq!(
            c.iter().map(|x| f(&x["target_ms"])).collect::<Vec<_>>(),
            [10.0, 25.0, 60.0]
        );
        assert!(b["saturation_batch"].as_u64().unwrap() >= 1);
    }

    // 4. co-location: 1, 2 and 4 instances of each model, and the mix
    let sc: Vec<String> = r["colocation"]["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    for want in [
        "rmc1 x1",
        "rmc1 x2",
        "rmc1 x4",
        "small-rmc2 x4",
        "rmc1 + small-rmc2",
        "2 rmc1 + 2 small-rmc2",
    ] {
        assert!(sc.iter().any(|s| s == want), "{want} in {sc:?}");
    }
    let four = &r["colocation"]["scenarios"].as_array().unwrap()[2];
    assert_eq!(four["instances"].as_array().unwrap().len(), 4);

    // 5. latency-bounded: each model at each target and batcher setting
    let lb = r["latency_bounded"]["results"].as_array().unwrap();
    assert_eq!(
        lb.len(),
        2 * 2,
        "1 target + 1 other batcher setting, 2 models"
    );
    assert!(lb.iter().all(|x| x["steps"].as_u64().unwrap() >= 1));

    // 6. row formats
    let rf = r["row_formats"]["points"].as_array().unwrap();
    for model in models {
        for fmt in ["fp32", "fp16", "int8", "int4"] {
            let p = rf
                .iter()
                .find(|p| p["model"] == model && p["format"] == fmt)
                .unwrap_or_else(|| panic!("{model} {fmt}"));
            assert!(f(&p["cache_lines_per_row"]) >= 1.0);
        }
    }

    // the charts: each as SVG and PNG, each in the page with its caption
    let page = std::fs::read_to_string(dir.join("report.html")).unwrap();
    let plots = r["plots"].as_array().unwrap();
    assert!(plots.len() >= 10, "{}", plots.len());
    for p in plots {
        for k in ["svg", "png"] {
            let file = dir.join(p[k].as_str().unwrap());
            assert!(
                std::fs::metadata(&file).unwrap().len() > 1000,
                "{}",
                file.display()
            );
        }
        assert!(page.contains(&format!("id=\"{}\"", p["id"].as_str().unwrap())));
        assert!(!p["caption"].as_str().unwrap().is_empty());
    }
    for h in [
        "1. The machine",
        "2. Operator breakdown",
        "3. Batching",
        "4. Co-location",
        "5. Latency-bounded throughput",
        "6. Row formats",
        "7. Against other machines",
        "Capped tables",
    ] {
        assert!(page.contains(h), "{h}");
    }
}

fn compare_puts_two_reports_side_by_side_and_refuses_bad_input() {
    let dir = report_dir();
    let a = dir.join("report.json");
    let a = a.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cmp");
    let o = dlrs(&["report", "--compare", a, a, "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c = json(&out.join("compare.json"));
    assert_eq!(c["schema_version"], 1);
    let figs = c["figures"].as_array().unwrap();
    assert!(figs.len() > 20);
    assert!(
        figs.iter()
            .filter(|x| !x["b_over_a"].is_null())
            .all(|x| f(&x["b_over_a"]) == 1.0)
    );
    assert!(
        std::fs::read_to_string(out.join("compare.html"))
            .unwrap()
            .contains("B / A")
    );
    assert!(out.join("compare-throughput.png").exists());

    // a missing file, another schema version, something else
    let missing = tmp.path().join("nope.json");
    let o = dlrs(&[
        "report",
        "--compare",
        a,
        missing.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("reading") && stderr(&o).contains("nope.json"),
        "{}",
        stderr(&o)
    );
    let mut v = json(Path::new(a));
    v["schema_version"] = 99.into();
    let old = tmp.path().join("old.json");
    std::fs::write(&old, v.to_string()).unwrap();
    let o = dlrs(&[
        "report",
        "--compare",
        old.to_str().unwrap(),
        a,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("schema_version 99"), "{}", stderr(&o));
    let other = tmp.path().join("other.json");
    std::fs::write(&other, "{\"hello\": 1}").unwrap();
    let o = dlrs(&[
        "report",
        "--compare",
        a,
        other.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not a dlrs report: no schema_version"),
        "{}",
        stderr(&o)
    );

    // a model that is neither a preset nor a directory fails before anything is measured
    let o = dlrs(&[
        "report",
        "--tiny",
        "--models",
        "rmc9",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("rmc9"), "{}", stderr(&o));
}

const CHROMIUM: &str = "/usr/bin/chromium";

/// Chromium on `page` with the flags known to work in a container: `mode` is `--dump-dom`
/// or `--screenshot=FILE`; returns stdout and stderr.
fn chromium(page: &Path, mode: &str) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let o = Command::new("timeout")
        .arg("120")
        .arg(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1280,2000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(mode)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs");
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The page's console messages (Chromium logs each as `...:CONSOLE:LINE] "message"`).
fn console(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(":CONSOLE")).collect()
}

fn check_in_browser(page: &Path, plots: usize) {
    let (dom, err) = chromium(page, "--dump-dom");
    assert!(
        console(&err).is_empty(),
        "{}: console: {:?}",
        page.display(),
        console(&err)
    );
    assert!(
        dom.contains("data-plots-ok=\"yes\"") && dom.contains(&format!("data-plots=\"{plots}\"")),
        "{}: not every chart rendered: {}",
        page.display(),
        dom.lines()
            .find(|l| l.contains("<body"))
            .unwrap_or("no <body>")
    );
    let shot = page.with_extension("screenshot.png");
    let (_, err) = chromium(page, &format!("--screenshot={}", shot.display()));
    assert!(console(&err).is_empty(), "console: {:?}", console(&err));
    assert!(
        std::fs::metadata(&shot).map_or(0, |m| m.len()) > 10_000,
        "no screenshot"
    );
}

fn the_page_renders_in_headless_chromium() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/install-chromium.sh (as root), as scripts/test.sh does"
    );
    // the check itself: a page with an error on its console does not pass
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.html");
    std::fs::write(
        &bad,
        "<html><body><script>console.error('boom'); nope();</script></body></html>",
    )
    .unwrap();
    let (_, err) = chromium(&bad, "--dump-dom");
    assert_eq!(console(&err).len(), 2, "{err}");

    let dir = report_dir();
    let r = json(&dir.join("report.json"));
    check_in_browser(
        &dir.join("report.html"),
        r["plots"].as_array().unwrap().len(),
    );
    let out = tmp.path().join("cmp");
    let a = dir.join("report.json");
    let o = dlrs(&[
        "report",
        "--compare",
        a.to_str().unwrap(),
        a.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    check_in_browser(&out.join("compare.html"), 1);
}
