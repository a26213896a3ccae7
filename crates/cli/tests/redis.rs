//! `dlrs push`, and `predict` and `serve` with `--tables redis://...`, against a Redis
//! Cluster on loopback ports (the harness of crates/redis-tier/tests; skipped, saying so,
//! only where redis-server is missing: scripts/install-redis.sh installs it).

mod common;
#[path = "../../redis-tier/tests/common/mod.rs"]
mod redis_common;

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use redis_common::{Cluster, have_redis};

fn dlrs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dlrs"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// A JSON Lines file of `n` RMC1-shaped samples (128 dense, 8 tables of `rows` rows).
fn samples(path: &Path, n: usize, rows: u32) {
    let mut text = String::new();
    for i in 0..n as u32 {
        let sparse: Vec<String> = (0..8u32)
            .map(|t| {
                format!(
                    "[{}, {}]",
                    (i * 7919 + t * 13) % rows,
                    (i * 104_729 + t) % rows
                )
            })
            .collect();
        let dense: Vec<String> = (0..128).map(|j| format!("{}", (i + j) % 5)).collect();
        text.push_str(&format!(
            "{{\"dense\": [{}], \"sparse\": [{}]}}\n",
            dense.join(", "),
            sparse.join(", ")
        ));
    }
    std::fs::write(path, text).unwrap();
}

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let all: Vec<&str> = args.iter().copied().chain(["--name", "m"]).collect();
        let (child, url) = common::spawn_serve(&all);
        Server { child, url }
    }

    /// `(status, body)` of a predict request of `body`.
    fn predict(&self, body: &str) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut r = agent
            .post(&format!("{}/v1/models/m/predict", self.url))
            .header("content-type", "application/json")
            .send(body.as_bytes())
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    }

    fn metrics(&self) -> String {
        ureq::get(&format!("{}/metrics", self.url))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn push_then_predict_and_serve_from_redis_match_the_model_dir() {
    if !have_redis() {
        return;
    }
    let mut c = Cluster::start(3, 0);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let d = dir.to_str().unwrap();
    ok(dlrs(&[
        "init",
        "--preset",
        "rmc1",
        "--rows-cap",
        "3000",
        "--dtype",
        "fp16",
        "--out",
        d,
    ]));
    let url = c.url();
    let out = ok(dlrs(&[
        "push",
        "--model",
        d,
        "--redis",
        &url,
        "--namespace",
        "cli",
        "--window-bytes",
        "64K",
    ]));
    assert!(out.contains("pushed (24000 rows"), "{out}");
    let input = tmp.path().join("in.jsonl");
    samples(&input, 300, 3000);
    let inp = input.to_str().unwrap();
    let local = ok(dlrs(&["predict", "--model", d, "--input", inp]));
    let t0 = Instant::now();
    let remote = ok(dlrs(&[
        "predict",
        "--model",
        d,
        "--input",
        inp,
        "--tables",
        &url,
        "--namespace",
        "cli",
    ]));
    eprintln!("predict from redis: {:?}", t0.elapsed());
    assert_eq!(
        remote, local,
        "scores from redis differ from the model dir's"
    );

    // a namespace without the model: a clear error naming the fix
    let o = dlrs(&[
        "predict",
        "--model",
        d,
        "--input",
        inp,
        "--tables",
        &url,
        "--namespace",
        "other",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("holds no complete push") && err.contains("dlrs push"),
        "{err}"
    );

    // two servers share the cluster; one fails batches it cannot fetch, one pools zeros
    let common = ["--model", d, "--tables", &url, "--namespace", "cli"];
    let strict = Server::start(
        &[
            &common[..],
            &["--redis-cache", "0", "--redis-timeout-ms", "300"],
        ]
        .concat(),
    );
    let lenient = Server::start(
        &[
            &common[..],
            &[
                "--redis-cache",
                "0",
                "--redis-timeout-ms",
                "300",
                "--on-miss",
                "zero",
            ],
        ]
        .concat(),
    );
    let all = std::fs::read_to_string(&input).unwrap();
    let lines: Vec<&str> = all.lines().take(8).collect();
    let body = format!("{{\"samples\": [{}]}}", lines.join(","));
    let (status, text) = strict.predict(&body);
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let want: Vec<f32> = local.lines().take(8).map(|l| l.parse().unwrap()).collect();
    let got: Vec<f32> = v["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    for (g, w) in got.iter().zip(&want) {
        // JSON carries the shortest decimal that round-trips through f32
        assert_eq!(g.to_bits(), w.to_bits(), "{got:?} vs {want:?}");
    }
    assert!(metric(&strict.metrics(), "dlrs_redis_rows_fetched_total") > 0);

    // a master dies: 503 naming the tier (in bounded time), or zero rows counted
    c.nodes[0].kill();
    let t0 = Instant::now();
    let (status, text) = strict.predict(&body);
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("redis"), "{text}");
    let (status, text) = lenient.predict(&body);
    assert_eq!(status, 200, "{text}");
    assert!(metric(&lenient.metrics(), "dlrs_redis_zero_rows_total") > 0);
    // the servers stay up
    let (status, _) = strict.predict(&body);
    assert_eq!(status, 503);
}
