//! Good traffic: scores equal the model's own forward pass, over /v2 (flat, nested, binary)
//! and /v1, alone, split and batched across concurrent clients.

mod common;

use common::*;
use serde_json::json;

#[test]
fn v2_and_v1_scores_equal_forward() {
    let md = ModelDir::new(1);
    let srv = Server::start(md.args());
    let mut rng = Lcg(7);
    let s = samples(&mut rng, 5);
    let want = reference(&md.model, &s);

    let r = srv.post(
        &format!("/v2/models/{NAME}/infer"),
        &v2_request(&s, Some("req-42")).to_string(),
    );
    let got = r.scores();
    assert_close(&got, &want);
    let v = r.json();
    assert_eq!(v["id"], "req-42");
    assert_eq!(v["model_name"], NAME);
    assert_eq!(v["model_version"], "1");
    assert_eq!(v["outputs"][0]["shape"], json!([5, 1]));

    // nested data, inputs in another order, no "outputs", versioned route
    let cfg = config();
    let flat = v2_request(&s, None);
    let nest = |key: usize, width: usize| -> Vec<serde_json::Value> {
        flat["inputs"][key]["data"]
            .as_array()
            .unwrap()
            .chunks(width)
            .map(|c| json!(c))
            .collect()
    };
    let nested = json!({"inputs": [
        flat["inputs"][2],
        {"name": "lengths", "datatype": "INT32", "shape": [5, cfg.n_tables()], "data": nest(1, cfg.n_tables())},
        {"name": "dense", "datatype": "FP32", "shape": [5, cfg.n_dense()], "data": nest(0, cfg.n_dense())},
    ]});
    let r = srv.post(
        &format!("/v2/models/{NAME}/versions/1/infer"),
        &nested.to_string(),
    );
    assert_close(&r.scores(), &want);
    assert!(r.json().get("id").is_none());

    // /v1
    let r = srv.post(
        &format!("/v1/models/{NAME}/predict"),
        &v1_request(&s).to_string(),
    );
    assert_close(&r.v1_scores(), &want);

    // an empty request is answered without computing
    let r = srv.post(&format!("/v1/models/{NAME}/predict"), r#"{"samples": []}"#);
    assert_eq!(r.json(), json!({"scores": []}));
    srv.stop().unwrap();
}

#[test]
fn health_metadata_and_metrics_endpoints() {
    let md = ModelDir::new(1);
    let srv = Server::start(md.args());
    assert_eq!(srv.get("/v2/health/live"), (200, r#"{"live":true}"#.into()));
    assert_eq!(
        srv.get("/v2/health/ready"),
        (200, r#"{"ready":true}"#.into())
    );
    let (s, body) = srv.get(&format!("/v2/models/{NAME}/ready"));
    assert_eq!(s, 200, "{body}");
    let (s, body) = srv.get(&format!("/v2/models/{NAME}"));
    assert_eq!(s, 200);
    let meta: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        meta,
        json!({
            "name": NAME, "versions": ["1"], "platform": "dlrs",
            "inputs": [
                {"name": "dense", "datatype": "FP32", "shape": [-1, 4]},
                {"name": "lengths", "datatype": "INT32", "shape": [-1, 3]},
                {"name": "indices", "datatype": "INT64", "shape": [-1]},
            ],
            "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1, 1]}],
            "parameters": {"n_dense": 4, "embedding_dim": 4, "table_rows": "10-20-5"},
        })
    );
    assert_eq!(srv.get(&format!("/v2/models/{NAME}/versions/7")).0, 404);
    assert_eq!(srv.get("/v2/models/other/ready").0, 404);
    let (s, body) = srv.get("/v2");
    assert_eq!(s, 200);
    assert!(body.contains("binary_tensor_data"), "{body}");

    let mut rng = Lcg(3);
    srv.infer(&samples(&mut rng, 2)).scores();
    let m = srv.metrics();
    assert_eq!(
        metric(
            &m,
            "dlrs_requests_total",
            r#"endpoint="/v2/models/{name}/infer",status="200""#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "dlrs_batch_size_count", ""), Some(1.0), "{m}");
    assert_eq!(metric(&m, "dlrs_batch_size_sum", ""), Some(2.0), "{m}");
    assert_eq!(metric(&m, "dlrs_queue_depth_samples", ""), Some(0.0), "{m}");
    for h in [
        "dlrs_queue_wait_seconds_bucket",
        "dlrs_compute_seconds_bucket",
        "dlrs_request_duration_seconds_bucket",
    ] {
        assert!(m.contains(h), "{h} missing from\n{m}");
    }
    srv.stop().unwrap();
}

#[test]
fn concurrent_requests_get_their_own_scores_and_are_batched() {
    let md = ModelDir::new(2);
    let mut args = md.args();
    args.queue.max_queue_delay_us = 3000;
    let srv = Server::start(args);
    let model = &md.model;
    std::thread::scope(|sc| {
        for t in 0..6u64 {
            let srv = &srv;
            sc.spawn(move || {
                let mut rng = Lcg(100 + t);
                for i in 0..25 {
                    let n = 1 + rng.below(5) as usize;
                    let s = samples(&mut rng, n);
                    let want = reference(model, &s);
                    if i % 2 == 0 {
                        assert_close(&srv.infer(&s).scores(), &want);
                    } else {
                        let r = srv.post(
                            &format!("/v1/models/{NAME}/predict"),
                            &v1_request(&s).to_string(),
                        );
                        assert_close(&r.v1_scores(), &want);
                    }
                }
            });
        }
    });
    let m = srv.metrics();
    let batches = metric(&m, "dlrs_batch_size_count", "").unwrap();
    let samples_total = metric(&m, "dlrs_batch_size_sum", "").unwrap();
    let single = metric(&m, "dlrs_batch_size_bucket", r#"le="1""#).unwrap();
    // some batch merged requests: fewer batches than requests, and a batch of more than one
    // sample beyond what single requests explain is visible as batches above le="1"
    assert!(
        batches < 150.0,
        "no batching: {batches} batches for 150 requests\n{m}"
    );
    assert!(single < batches, "every batch had one sample\n{m}");
    assert!(samples_total >= 150.0, "{m}");
    srv.stop().unwrap();
}

#[test]
fn requests_larger_than_max_batch_are_split() {
    let md = ModelDir::new(3);
    let mut args = md.args();
    args.queue.max_batch = 4;
    let srv = Server::start(args);
    let mut rng = Lcg(11);
    let s = samples(&mut rng, 11);
    assert_close(&srv.infer(&s).scores(), &reference(&md.model, &s));
    let m = srv.metrics();
    assert_eq!(metric(&m, "dlrs_batch_size_count", ""), Some(3.0), "{m}");
    assert_eq!(
        metric(&m, "dlrs_batch_size_bucket", r#"le="4""#),
        Some(3.0),
        "{m}"
    );
    srv.stop().unwrap();
}

/// A binary-extension answer: the length of its JSON header (from
/// `Inference-Header-Content-Length`) and the whole body.
fn binary_answer(r: &mut ureq::http::Response<ureq::Body>) -> (usize, Vec<u8>) {
    let json_len = r
        .headers()
        .get("inference-header-content-length")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    (json_len, r.body_mut().read_to_vec().unwrap())
}

/// Little-endian f32s.
fn le_f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn binary_tensor_data_extension() {
    let md = ModelDir::new(4);
    let srv = Server::start(md.args());
    let mut rng = Lcg(5);
    let s = samples(&mut rng, 3);
    let want = reference(&md.model, &s);
    let cfg = config();
    let dense: Vec<u8> = s
        .iter()
        .flat_map(|x| x.dense.iter().flat_map(|v| v.to_le_bytes()))
        .collect();
    let lengths: Vec<u8> = s
        .iter()
        .flat_map(|x| x.sparse.iter().flat_map(|b| (b.len() as i32).to_le_bytes()))
        .collect();
    let ids: Vec<i64> = s
        .iter()
        .flat_map(|x| x.sparse.iter().flatten().map(|&i| i as i64))
        .collect();
    let header = json!({
        "inputs": [
            {"name": "dense", "datatype": "FP32", "shape": [3, cfg.n_dense()], "parameters": {"binary_data_size": dense.len()}},
            {"name": "lengths", "datatype": "INT32", "shape": [3, cfg.n_tables()], "parameters": {"binary_data_size": lengths.len()}},
            {"name": "indices", "datatype": "INT64", "shape": [ids.len()], "data": ids},
        ],
        "outputs": [{"name": "score", "parameters": {"binary_data": true}}],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(&dense);
    body.extend(&lengths);
    let mut r = srv
        .agent
        .post(srv.url(&format!("/v2/models/{NAME}/infer")))
        .header("Inference-Header-Content-Length", header.len().to_string())
        .header("Content-Type", "application/octet-stream")
        .send(&body[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (json_len, bytes) = binary_answer(&mut r);
    let head: serde_json::Value = serde_json::from_slice(&bytes[..json_len]).unwrap();
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 12);
    assert!(head["outputs"][0].get("data").is_none());
    let got = le_f32s(&bytes[json_len..]);
    assert_close(&got, &want);

    // as tritonclient asks when no outputs are named: JSON inputs, binary output
    let mut req = v2_request(&s, Some("t"));
    req.as_object_mut().unwrap().remove("outputs");
    req["parameters"] = json!({"binary_data_output": true});
    let mut r = srv
        .agent
        .post(srv.url(&format!("/v2/models/{NAME}/infer")))
        .send(&req.to_string())
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (json_len, bytes) = binary_answer(&mut r);
    assert_eq!(bytes.len(), json_len + 12);
    let got = le_f32s(&bytes[json_len..]);
    assert_close(&got, &want);
    srv.stop().unwrap();
}

#[test]
fn a_large_body_is_parsed_split_and_answered() {
    let md = ModelDir::new(5);
    let srv = Server::start(md.args());
    let mut rng = Lcg(12);
    let cfg = config();
    let s: Vec<dlrs_model::Sample> = (0..4000)
        .map(|_| dlrs_model::Sample {
            dense: (0..cfg.n_dense())
                .map(|_| rng.below(1000) as f32 / 100.0)
                .collect(),
            sparse: cfg
                .tables
                .iter()
                .map(|&rows| {
                    (0..rng.below(300))
                        .map(|_| rng.below(rows as u64) as u32)
                        .collect()
                })
                .collect(),
            label: None,
        })
        .collect();
    let body = v2_request(&s, None).to_string();
    assert!(
        body.len() > 3 << 20,
        "{} bytes: not larger than axum's default 2 MB limit",
        body.len()
    );
    let r = srv.post(&format!("/v2/models/{NAME}/infer"), &body);
    // the same batch composition as the server's: chunks of --max-batch, on --threads threads
    let exec = dlrs_model::Executor::new(2).unwrap();
    let want: Vec<f32> = s
        .chunks(256)
        .flat_map(|c| {
            let mut b = dlrs_model::Batch::empty(&cfg);
            c.iter().for_each(|x| b.push(&cfg, x).unwrap());
            md.model
                .forward(&b, &mut dlrs_model::Workspace::default(), &exec)
                .unwrap()
                .to_vec()
        })
        .collect();
    assert_close(&r.scores(), &want);
    let m = srv.metrics();
    assert_eq!(
        metric(&m, "dlrs_batch_size_count", ""),
        Some(16.0),
        "4000 samples in batches of 256\n{m}"
    );
    srv.stop().unwrap();
}

#[test]
fn with_a_target_the_scheduler_serves_right_answers_and_shows_its_settings() {
    let md = ModelDir::new(6);
    let mut args = md.args();
    args.threads = 2;
    args.control = Some(dlrs_serve::ControlConfig {
        period: std::time::Duration::from_millis(5),
        pin_max_batch: Some(64),
        ..dlrs_serve::ControlConfig::new(20.0)
    });
    let srv = Server::start(args);
    let mut rng = Lcg(9);
    // enough requests for both layouts to be measured
    eventually("the scheduler to try one thread per batch", || {
        for n in [1, 7, 30] {
            let s = samples(&mut rng, n);
            assert_close(&srv.infer(&s).scores(), &reference(&md.model, &s));
        }
        metric(
            &srv.metrics(),
            "dlrs_control_seconds_per_sample",
            r#"threads="1""#,
        )
        .is_some()
    });
    let m = srv.metrics();
    assert_eq!(
        metric(&m, "dlrs_control_target_seconds", ""),
        Some(0.02),
        "{m}"
    );
    assert_eq!(
        metric(&m, "dlrs_control_max_batch", ""),
        Some(64.0),
        "pinned: {m}"
    );
    let (p, i) = (
        metric(&m, "dlrs_control_threads_per_batch", "").unwrap(),
        metric(&m, "dlrs_control_instances", "").unwrap(),
    );
    assert_eq!(p * i, 2.0, "the layout uses the two threads: {m}");
    assert!(
        metric(&m, "dlrs_control_wait_bound_seconds", "").unwrap() > 0.0,
        "{m}"
    );
    srv.stop().unwrap();
}
