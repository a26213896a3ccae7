//! Overload and failure: a full queue answers 503 at once, an expired deadline 504 (and the
//! request is never computed), a panicking batch 500 while the server keeps serving.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dlrs_model::Batch;

#[test]
fn full_queue_is_503_with_retry_after_at_once() {
    let md = ModelDir::new(1);
    let gate = Gate::new();
    let mut args = md.args();
    args.queue.max_queue = 2;
    args.queue.max_queue_delay_us = 0;
    args.hooks = gate.hook();
    // one compute instance: the batch held at the gate holds every batch behind it
    args.instances = Some(1);
    let srv = Server::start(args);
    let mut rng = Lcg(1);
    let (a, b, c) = (
        samples(&mut rng, 1),
        samples(&mut rng, 2),
        samples(&mut rng, 1),
    );
    std::thread::scope(|sc| {
        // A is taken into a batch and held at the gate: the queue is empty again
        let ta = sc.spawn(|| srv.infer(&a));
        gate.wait_entered(1);
        // B fills the queue (2 samples of 2)
        let tb = sc.spawn(|| srv.infer(&b));
        eventually("B queued", || {
            metric(&srv.metrics(), "dlrs_queue_depth_samples", "") == Some(2.0)
        });
        // C does not fit: 503 at once, with Retry-After
        let t0 = Instant::now();
        let r = srv.infer(&c);
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "503 took {:?}",
            t0.elapsed()
        );
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.retry_after.as_deref(), Some("1"));
        assert!(
            r.error().contains("queue full: 2 of 2 samples waiting"),
            "{}",
            r.body
        );
        // a binary request is refused from its JSON header: the 503 comes before the binary
        // data is sent; that data (ids of -1 that a parse would answer 400) is then read and
        // dropped, and the connection serves the next request
        let (status, head) = binary_refused_early_then_reused(&srv, 1);
        assert_eq!(status, 503, "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        // so is a small JSON request, from its declared batch size before it is parsed:
        // its ids of -1 (which a parse would answer 400) are never looked at
        let mut req = v2_request(&c, None);
        let n_ids = req["inputs"][2]["data"].as_array().unwrap().len();
        req["inputs"][2]["data"] = serde_json::json!(vec![-1; n_ids]);
        let r = srv.post("/v2/models/tiny/infer", &req.to_string());
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(r.error().contains("queue full"), "{}", r.body);
        // a request larger than the whole queue can never fit: 413
        let r = srv.infer(&samples(&mut Lcg(9), 3));
        assert_eq!(r.status, 413, "{}", r.body);
        assert!(r.error().contains("at most 2 (--max-queue)"), "{}", r.body);
        gate.open();
        assert_close(&ta.join().unwrap().scores(), &reference(&md.model, &a));
        assert_close(&tb.join().unwrap().scores(), &reference(&md.model, &b));
    });
    // room again
    assert_close(&srv.infer(&c).scores(), &reference(&md.model, &c));
    let m = srv.metrics();
    assert_eq!(
        metric(&m, "dlrs_requests_total", r#"status="503""#),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "dlrs_queue_depth_samples", ""),
        Some(0.0),
        "no room stays held: {m}"
    );
    srv.stop().unwrap();
}

/// Sends the head and JSON header of a binary-extension request of `b` samples (one id per
/// table, every id -1), reads the answer (which must come within 2 s, before the binary data
/// is sent), then sends the binary data and a GET of the model's readiness on the same
/// connection, which must be answered 200. Returns the status and head of the first answer.
fn binary_refused_early_then_reused(srv: &Server, b: usize) -> (u16, String) {
    use std::io::{Read, Write};
    let cfg = config();
    let (nd, nt) = (cfg.n_dense(), cfg.n_tables());
    let json = serde_json::json!({"inputs": [
        {"name": "dense", "datatype": "FP32", "shape": [b, nd], "parameters": {"binary_data_size": b * nd * 4}},
        {"name": "lengths", "datatype": "INT32", "shape": [b, nt], "parameters": {"binary_data_size": b * nt * 4}},
        {"name": "indices", "datatype": "INT64", "shape": [b * nt], "parameters": {"binary_data_size": b * nt * 8}},
    ]})
    .to_string();
    let mut binary = Vec::new();
    binary.extend(std::iter::repeat_n(0.5f32.to_le_bytes(), b * nd).flatten());
    binary.extend(std::iter::repeat_n(1i32.to_le_bytes(), b * nt).flatten());
    binary.extend(std::iter::repeat_n((-1i64).to_le_bytes(), b * nt).flatten());
    let mut c = std::net::TcpStream::connect(srv.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let head = format!(
        "POST /v2/models/{NAME}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\nInference-Header-Content-Length: {}\r\n\r\n{json}",
        json.len() + binary.len(),
        json.len()
    );
    c.write_all(head.as_bytes()).unwrap();
    let read_head = |c: &mut std::net::TcpStream| {
        let mut out = Vec::new();
        let mut byte = [0u8; 1];
        while !out.ends_with(b"\r\n\r\n") {
            let n = c.read(&mut byte).expect("an answer in time");
            assert!(n > 0, "closed without an answer");
            out.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&out).into_owned();
        let len: usize = text
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        c.read_exact(&mut body).unwrap();
        (text[9..12].parse::<u16>().unwrap(), text)
    };
    let first = read_head(&mut c);
    c.write_all(&binary).unwrap();
    c.write_all(format!("GET /v2/models/{NAME}/ready HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let (next, next_head) = read_head(&mut c);
    assert_eq!(
        next, 200,
        "the connection serves the next request: {next_head}"
    );
    first
}

#[test]
fn expired_deadline_is_504_and_never_computed() {
    let md = ModelDir::new(1);
    let gate = Gate::new();
    let mut args = md.args();
    args.queue.max_queue_delay_us = 0;
    args.hooks = gate.hook();
    // one compute instance: the batch held at the gate holds every batch behind it
    args.instances = Some(1);
    let srv = Server::start(args);
    let path = format!("/v2/models/{NAME}/infer");
    let mut rng = Lcg(2);
    let (a, mut b) = (samples(&mut rng, 1), samples(&mut rng, 1));
    b[0].dense[0] = 0.123; // marks B's batch
    let marked = |seen: &Vec<Vec<f32>>| seen.iter().any(|d| d.contains(&0.123));

    // a deadline of 0 ms: 504 without queueing
    let r = srv.post_with(
        &path,
        &v2_request(&b, None).to_string(),
        &[("x-dlrs-deadline-ms", "0")],
    );
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(r.error().contains("deadline"), "{}", r.body);
    // Triton's request parameter "timeout" (microseconds) shortens the deadline
    let mut req = v2_request(&b, None);
    req["parameters"] = serde_json::json!({"timeout": 0});
    let r = srv.post(&path, &req.to_string());
    assert_eq!(r.status, 504, "{}", r.body);

    std::thread::scope(|sc| {
        // A is held in its batch; B waits in the queue behind it and expires there
        let ta = sc.spawn(|| srv.infer(&a));
        gate.wait_entered(1);
        let t0 = Instant::now();
        let r = srv.post_with(
            &path,
            &v2_request(&b, None).to_string(),
            &[("x-dlrs-deadline-ms", "150")],
        );
        let took = t0.elapsed();
        assert_eq!(r.status, 504, "{}", r.body);
        assert!(
            took >= Duration::from_millis(140) && took < Duration::from_secs(3),
            "{took:?}"
        );
        gate.open();
        assert_close(&ta.join().unwrap().scores(), &reference(&md.model, &a));
    });
    // a later request is computed; B never was
    assert_close(&srv.infer(&a).scores(), &reference(&md.model, &a));
    let seen = gate.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(!marked(&seen), "the expired request was computed: {seen:?}");
    let m = srv.metrics();
    assert_eq!(
        metric(&m, "dlrs_expired_requests_total", ""),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "dlrs_requests_total", r#"status="504""#),
        Some(3.0),
        "{m}"
    );
    srv.stop().unwrap();
}

#[test]
fn a_panicking_batch_is_500_and_the_server_keeps_serving() {
    let md = ModelDir::new(1);
    let mut args = md.args();
    args.hooks = dlrs_serve::Hooks {
        before_forward: Some(Arc::new(|b: &Batch| {
            if b.dense().contains(&777.0) {
                panic!("poisoned sample");
            }
        })),
        ..Default::default()
    };
    let srv = Server::start(args);
    let mut rng = Lcg(3);
    let mut bad = samples(&mut rng, 2);
    bad[1].dense[3] = 777.0;
    let good = samples(&mut rng, 3);
    for _ in 0..3 {
        let r = srv.infer(&bad);
        assert_eq!(r.status, 500, "{}", r.body);
        assert!(
            r.error().contains("panicked: poisoned sample"),
            "{}",
            r.body
        );
        assert_close(&srv.infer(&good).scores(), &reference(&md.model, &good));
    }
    let r = srv.post(
        &format!("/v1/models/{NAME}/predict"),
        &v1_request(&bad).to_string(),
    );
    assert_eq!(r.status, 500, "{}", r.body);
    assert_close(&srv.infer(&good).scores(), &reference(&md.model, &good));
    assert_eq!(srv.get("/v2/health/ready").0, 200);
    srv.stop().unwrap();
}
