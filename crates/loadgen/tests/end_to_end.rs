//! End to end: `dlrs serve` on 127.0.0.1:0 with a tiny model, the load generator against it
//! over both protocols; the twin on the same model; the search on the twin with a plot.

mod common;

use common::{ModelDir, NAME, Server, serve_args};
use dlrs_loadgen::dist::QuerySize;
use dlrs_loadgen::payload::Protocol;
use dlrs_loadgen::shm::SharedMemory;
use dlrs_loadgen::{LoadConfig, LoadgenConfig, TwinConfig, VersusConfig};
use dlrs_model::synth::IdDist;
use serde_json::Value;

/// `--query-size s`.
fn size(s: &str) -> QuerySize {
    QuerySize::parse(s).unwrap()
}

const RUN_KEYS: [&str; 10] = [
    "offered_qps",
    "duration_s",
    "queries",
    "ok",
    "ok_samples",
    "achieved_qps",
    "samples_per_s",
    "mean_query_size",
    "latency_ms",
    "errors",
];

/// The checks every clean single measurement passes.
fn assert_clean_run(v: &Value, qps: f64, secs: f64) {
    for k in RUN_KEYS.iter().chain(&[
        "query_size",
        "dist",
        "ids_per_table",
        "seed",
        "pool",
        "mode",
    ]) {
        assert!(v.get(k).is_some(), "no key {k} in {v}");
    }
    for k in ["p50", "p95", "p99", "p999", "max", "mean"] {
        assert!(
            v["latency_ms"][k].is_number(),
            "latency_ms.{k} missing in {v}"
        );
    }
    for k in [
        "by_status",
        "bad_response",
        "transport",
        "timeout",
        "failed",
        "total",
    ] {
        assert!(v["errors"].get(k).is_some(), "errors.{k} missing in {v}");
    }
    assert_eq!(v["errors"]["total"], 0, "errors: {}", v["errors"]);
    let queries = v["queries"].as_u64().unwrap();
    assert_eq!(v["ok"].as_u64().unwrap(), queries);
    // a Poisson count of mean qps * secs: far from 0, not wildly above
    let want = qps * secs;
    assert!(
        queries as f64 > want * 0.4 && (queries as f64) < want * 2.0,
        "{queries} queries, expected about {want}"
    );
    let l = |k: &str| v["latency_ms"][k].as_f64().unwrap();
    assert!(
        l("p50") > 0.0
            && l("p50") <= l("p95")
            && l("p95") <= l("p99")
            && l("p99") <= l("p999")
            && l("p999") <= l("max"),
        "{v}"
    );
    assert!(
        l("max") < 2000.0,
        "a tiny model at low QPS answers within 2 s: {v}"
    );
    let achieved = v["achieved_qps"].as_f64().unwrap();
    assert!(
        achieved > 0.3 * qps && achieved < 2.0 * qps,
        "achieved {achieved} of {qps}"
    );
    let mean_size = v["mean_query_size"].as_f64().unwrap();
    let sps = v["samples_per_s"].as_f64().unwrap();
    assert!(
        (sps / achieved - mean_size).abs() < 0.2 * mean_size + 1.0,
        "{sps} samples/s at {achieved} QPS, mean size {mean_size}"
    );
}

#[test]
fn loadgen_against_dlrs_serve() {
    let m = ModelDir::new(1);
    let server = Server::start(serve_args(&m));
    let url = server.url();
    let dir = m.dir();
    let dir = dir.to_str().unwrap();

    // v2 with JSON tensors, the default
    let v = dlrs_loadgen::loadgen_json(LoadgenConfig {
        model_dir: Some(dir.into()),
        connections: 4,
        load: LoadConfig {
            qps: 40.0,
            duration: 1.0,
            query_size: size("normal:20,4"),
            json: true,
            warmup: 0.0,
            ..LoadConfig::default()
        },
        ..LoadgenConfig::new(&url, NAME)
    })
    .unwrap();
    assert_clean_run(&v, 40.0, 1.0);
    assert_eq!(v["mode"], "http");
    assert_eq!(v["protocol"], "v2");
    assert_eq!(v["url"], url.as_str());
    assert_eq!(v["connections"], 4);
    assert_eq!(v["query_size"], "normal:20,4");
    let mean = v["mean_query_size"].as_f64().unwrap();
    assert!((mean - 20.0).abs() < 3.0, "mean query size {mean}");

    // v2 binary tensors, zipf ids, several ids per bag; no --model-dir: the tables' row
    // counts come from the server's metadata (an id out of range would be a 400)
    let v = dlrs_loadgen::loadgen_json(LoadgenConfig {
        binary: true,
        load: LoadConfig {
            qps: 40.0,
            duration: 0.7,
            dist: IdDist::Zipf(1.1),
            ids_per_table: 3,
            json: true,
            warmup: 0.2,
            query_size: size("fixed:1024"),
            ..LoadConfig::default()
        },
        ..LoadgenConfig::new(&url, NAME)
    })
    .unwrap();
    assert_clean_run(&v, 40.0, 0.7);
    assert_eq!(v["binary"], true);
    assert!(v["model_dir"].is_null(), "{v}");
    assert_eq!(
        v["mean_query_size"], 1024.0,
        "a query larger than --max-batch is split by the server and still answered"
    );

    // v1 predict
    let v = dlrs_loadgen::loadgen_json(LoadgenConfig {
        model_dir: Some(dir.into()),
        protocol: Protocol::V1,
        load: LoadConfig {
            qps: 40.0,
            duration: 0.7,
            json: true,
            warmup: 0.0,
            query_size: size("fixed:3"),
            ..LoadConfig::default()
        },
        ..LoadgenConfig::new(&url, NAME)
    })
    .unwrap();
    assert_clean_run(&v, 40.0, 0.7);
    assert_eq!(v["protocol"], "v1");
    assert_eq!(
        v["ok_samples"].as_u64().unwrap(),
        3 * v["ok"].as_u64().unwrap()
    );

    // a wrong model name: the metadata request already gets 404, and the error says so
    let e = dlrs_loadgen::loadgen_json(LoadgenConfig {
        model_dir: Some(dir.into()),
        load: LoadConfig {
            duration: 0.2,
            warmup: 0.0,
            ..LoadConfig::default()
        },
        ..LoadgenConfig::new(&url, "nope")
    })
    .unwrap_err();
    assert!(format!("{e:#}").contains("404"), "{e:#}");

    // a --model-dir whose tables differ from the served model's: refused before any load
    let other = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(m.dir().join("config.json")).unwrap();
    let text = text.replace("10-20-5", "10-20-6");
    assert!(text.contains("10-20-6"), "{text}");
    std::fs::write(other.path().join("config.json"), text).unwrap();
    let e = dlrs_loadgen::loadgen_json(LoadgenConfig {
        model_dir: Some(other.path().into()),
        load: LoadConfig {
            duration: 0.2,
            ..LoadConfig::default()
        },
        ..LoadgenConfig::new(&url, NAME)
    })
    .unwrap_err();
    assert!(
        format!("{e:#}")
            .contains("has tables of [10, 20, 6] rows; the served model \"tiny\" has [10, 20, 5]"),
        "{e:#}"
    );
}

/// This process's shared memory objects in /dev/shm (those the load generator makes).
fn loadgen_shm_objects() -> Vec<String> {
    let prefix = format!("dlrs-loadgen-{}-", std::process::id());
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// `GET path` of the server at `url`: the status and the body.
fn get(url: &str, path: &str) -> (u16, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ep =
            dlrs_loadgen::http::Endpoint::resolve(url, NAME, dlrs_loadgen::payload::Protocol::V2)
                .await
                .unwrap();
        let (status, body) = ep.get(path).await.unwrap();
        (status, body.to_vec())
    })
}

#[test]
fn loadgen_with_system_shared_memory() {
    let m = ModelDir::new(3);
    let mut sa = serve_args(&m);
    sa.allow_client_shm = true;
    let server = Server::start(sa);
    let url = server.url();
    let argv = |url: &str| LoadgenConfig {
        shared_memory: SharedMemory::System,
        connections: 4,
        load: LoadConfig {
            qps: 40.0,
            duration: 1.0,
            query_size: size("normal:20,4"),
            ids_per_table: 3,
            dist: IdDist::Zipf(1.1),
            json: true,
            warmup: 0.0,
            ..LoadConfig::default()
        },
        ..LoadgenConfig::new(url, NAME)
    };
    let v = dlrs_loadgen::loadgen_json(argv(&url)).unwrap();
    assert_clean_run(&v, 40.0, 1.0);
    assert_eq!(v["shared_memory"], "system");
    assert_eq!(v["transport"], "system_shared_memory");
    // every input of every query came from shared memory
    let metrics = String::from_utf8(get(&url, "/metrics").1).unwrap();
    let shm_inputs = metrics
        .lines()
        .find(|l| l.starts_with("dlrs_shm_inputs_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
    assert_eq!(
        shm_inputs,
        Some(3 * v["queries"].as_u64().unwrap()),
        "{metrics}"
    );
    // nothing left behind: no object in /dev/shm, no region on the server
    assert_eq!(loadgen_shm_objects(), Vec::<String>::new());
    assert_eq!(
        get(&url, "/v2/systemsharedmemory/status"),
        (200, b"[]".to_vec())
    );

    // a server that does not allow it: a clear error, and nothing left behind either
    let closed = Server::start(serve_args(&m));
    let e = dlrs_loadgen::loadgen_json(argv(&closed.url())).unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("HTTP 403") && e.contains("--allow-client-shm"),
        "{e}"
    );
    assert_eq!(loadgen_shm_objects(), Vec::<String>::new());

    // v1 has no shared memory
    let mut a = argv(&url);
    a.protocol = Protocol::V1;
    let e = dlrs_loadgen::loadgen_json(a).unwrap_err();
    assert!(
        format!("{e:#}").contains("--shared-memory system needs --protocol v2"),
        "{e:#}"
    );
}

#[test]
fn without_model_dir_a_server_that_publishes_no_row_counts_is_a_clear_error() {
    // a KServe v2 server whose metadata has the tensors but no parameters.table_rows
    let app = axum::Router::new().route(
        "/v2/models/other",
        axum::routing::get(|| async {
            axum::Json(serde_json::json!({
                "name": "other", "versions": ["1"], "platform": "x",
                "inputs": [
                    {"name": "dense", "datatype": "FP32", "shape": [-1, 4]},
                    {"name": "lengths", "datatype": "INT32", "shape": [-1, 3]},
                    {"name": "indices", "datatype": "INT64", "shape": [-1]},
                ],
                "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1, 1]}],
            }))
        }),
    );
    let (_rt, addr) = common::serve_app(app, 1);
    let url = format!("http://{addr}");
    let e = dlrs_loadgen::loadgen_json(LoadgenConfig {
        load: LoadConfig {
            duration: 0.2,
            ..LoadConfig::default()
        },
        ..LoadgenConfig::new(&url, "other")
    })
    .unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("4 dense features and 3 tables but not the tables' row counts")
            && e.contains("no parameters.table_rows")
            && e.contains("pass --model-dir DIR"),
        "{e}"
    );
}

#[test]
fn http_errors_are_counted_by_status() {
    // a server whose queue holds 2 samples: queries of 3 samples are refused (413) every time
    let m = ModelDir::new(2);
    let mut sa = serve_args(&m);
    sa.queue.max_queue = 2;
    let server = Server::start(sa);
    let v = dlrs_loadgen::loadgen_json(LoadgenConfig {
        model_dir: Some(m.dir()),
        load: LoadConfig {
            qps: 30.0,
            duration: 0.5,
            query_size: size("fixed:3"),
            warmup: 0.0,
            json: true,
            ..LoadConfig::default()
        },
        ..LoadgenConfig::new(server.url(), NAME)
    })
    .unwrap();
    let q = v["queries"].as_u64().unwrap();
    assert!(q > 0);
    assert_eq!(v["errors"]["by_status"]["413"].as_u64(), Some(q), "{v}");
    assert_eq!(v["errors"]["total"].as_u64(), Some(q));
    assert_eq!(v["ok"], 0);
    assert!(
        v["latency_ms"]["p99"].is_null(),
        "no ok answer, no percentile: {v}"
    );
}

#[test]
fn twin_on_the_same_model() {
    let m = ModelDir::new(1);
    let mut twin = TwinConfig {
        threads: 1,
        load: LoadConfig {
            qps: 60.0,
            duration: 1.0,
            query_size: size("normal:20,4"),
            json: true,
            warmup: 0.2,
            ..LoadConfig::default()
        },
        ..TwinConfig::new(m.dir())
    };
    twin.queue.max_batch = 64;
    twin.queue.max_queue_delay_us = 200;
    let v = dlrs_loadgen::twin_json(twin).unwrap();
    assert_clean_run(&v, 60.0, 1.0);
    assert_eq!(v["mode"], "twin");
    assert_eq!(
        (
            v["threads"].as_u64(),
            v["max_batch"].as_u64(),
            v["max_queue_delay_us"].as_u64()
        ),
        (Some(1), Some(64), Some(200))
    );
}

/// A search a tiny model passes at every step: 8-sample queries from 20 QPS, p99 <= 250 ms.
fn tiny_search() -> LoadConfig {
    LoadConfig {
        qps: 20.0,
        duration: 0.5,
        query_size: size("fixed:8"),
        target_p99_ms: Some(250.0),
        ..LoadConfig::default()
    }
}

#[test]
fn search_on_the_twin_finds_a_rate_under_a_generous_target_and_plots_it() {
    let m = ModelDir::new(1);
    let out = tempfile::tempdir().unwrap();
    for ext in ["svg", "png"] {
        let plot = out.path().join(format!("curve.{ext}"));
        let v = dlrs_loadgen::twin_json(TwinConfig {
            threads: 1,
            load: LoadConfig {
                max_steps: 4,
                json: true,
                warmup: 0.0,
                plot: Some(plot.clone()),
                ..tiny_search()
            },
            ..TwinConfig::new(m.dir())
        })
        .unwrap();
        let points = v["points"].as_array().unwrap();
        assert!(!points.is_empty() && points.len() <= 4, "{v}");
        for p in points {
            for k in RUN_KEYS.iter().chain(&["step", "meets_target"]) {
                assert!(p.get(k).is_some(), "no key {k} in point {p}");
            }
        }
        assert_eq!(v["target_p99_ms"], 250.0);
        let best = &v["latency_bounded"];
        assert!(
            best.is_object(),
            "a tiny model meets 250 ms at 20+ QPS: {v}"
        );
        let p99 = best["p99_ms"].as_f64().unwrap();
        assert!(p99 <= 250.0, "{p99}");
        assert!(best["offered_qps"].as_f64().unwrap() >= 20.0);
        assert!(points.iter().any(|p| p["meets_target"] == true));
        assert_eq!(v["plot"], plot.to_str().unwrap());
        let bytes = std::fs::read(&plot).unwrap();
        if ext == "svg" {
            let text = String::from_utf8(bytes).unwrap();
            assert!(
                text.contains("<svg") && text.contains("p99") && text.contains("target p99 250 ms"),
                "{}",
                &text[..200.min(text.len())]
            );
        } else {
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
            assert!(bytes.len() > 2000, "an empty PNG? {} bytes", bytes.len());
        }
    }
}

/// The defaults of the settings are the documented ones (the `dlrs` binary's flags take
/// theirs from here, which crates/cli checks, with the values the flags refuse).
#[test]
fn settings_have_the_documented_defaults() {
    let a = LoadgenConfig::new("http://127.0.0.1:1", "m");
    assert_eq!(a.connections, 64);
    assert_eq!(a.protocol, Protocol::V2);
    assert_eq!(
        a.load.query_size,
        QuerySize::Normal {
            mu: 165.0,
            sigma: 16.0
        }
    );
    assert_eq!(a.load.ids_per_table, 1);
    assert!(a.load.target_p99_ms.is_none() && !a.load.json);
    assert_eq!(a.shared_memory, SharedMemory::None);
    assert!(QuerySize::parse("gamma:1").is_err());
    assert!(IdDist::parse("zipf:0").is_err());
    assert!(Protocol::parse("v3").is_err());
    assert!(SharedMemory::parse("cuda").is_err());
    let t = TwinConfig::new("/x");
    assert_eq!(
        (t.threads, t.queue.max_batch, t.queue.max_queue_delay_us),
        (2, 256, 500)
    );
    assert_eq!(t.versus, VersusConfig::default());
    assert!(t.versus.url.is_none());
}

#[test]
fn twin_versus_http_searches_both_in_turn_and_reports_their_ratio() {
    let m = ModelDir::new(1);
    let server = Server::start(serve_args(&m));
    let url = server.url();
    let out = tempfile::tempdir().unwrap();
    let plot = out.path().join("pair.svg");
    let common = TwinConfig {
        threads: 1,
        versus: VersusConfig {
            url: Some(url.clone()),
            ..VersusConfig::default()
        },
        load: LoadConfig {
            max_steps: 3,
            warmup: 0.2,
            json: true,
            ..tiny_search()
        },
        ..TwinConfig::new(m.dir())
    };
    let mut argv = common.clone();
    argv.versus.model = Some(NAME.into());
    argv.versus.binary = true;
    argv.load.plot = Some(plot);
    let v = dlrs_loadgen::twin_json(argv).unwrap();

    for (side, mode, path) in [
        ("http", "http", "pair-http.svg"),
        ("twin", "twin", "pair-twin.svg"),
    ] {
        let s = &v[side];
        assert_eq!(s["mode"], mode, "{v}");
        let points = s["points"].as_array().unwrap();
        assert_eq!(
            points.len(),
            3,
            "a tiny model meets 250 ms at every step: {s}"
        );
        let rates: Vec<f64> = points
            .iter()
            .map(|p| p["offered_qps"].as_f64().unwrap())
            .collect();
        assert_eq!(rates, [20.0, 40.0, 80.0], "the same ramp on both sides");
        assert!(
            points
                .iter()
                .all(|p| p["meets_target"] == true && p["ok"].as_u64() > Some(0))
        );
        let plot = out.path().join(path);
        assert_eq!(s["plot"], plot.to_str().unwrap());
        assert!(std::fs::read_to_string(&plot).unwrap().contains("<svg"));
    }
    assert_eq!(v["http"]["transport"], "binary");
    let rate = |s: &str| v[s]["latency_bounded"]["samples_per_s"].as_f64().unwrap();
    let ratio = v["http_over_twin"].as_f64().unwrap();
    assert!((ratio - rate("http") / rate("twin")).abs() < 1e-12, "{v}");

    // the comparison needs a search and the server's name for the model
    let mut no_target = common.clone();
    no_target.load.target_p99_ms = None;
    no_target.versus.model = Some(NAME.into());
    let e = dlrs_loadgen::twin_json(no_target).unwrap_err();
    assert!(format!("{e:#}").contains("--target-p99-ms"), "{e:#}");
    let e = dlrs_loadgen::twin_json(common).unwrap_err();
    assert!(format!("{e:#}").contains("--versus-model"), "{e:#}");
}
