//! Bad input: each a 4xx with a JSON body naming the field, and the server keeps answering.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn good() -> Value {
    // 2 samples; tables of 10, 20, 5 rows; lengths sum to 4
    json!({"inputs": [
        {"name": "dense", "datatype": "FP32", "shape": [2, 4], "data": [0.1, 0.2, 0.3, 0.4, 1, 2, 3, 4]},
        {"name": "lengths", "datatype": "INT32", "shape": [2, 3], "data": [1, 0, 1, 2, 0, 0]},
        {"name": "indices", "datatype": "INT64", "shape": [4], "data": [9, 4, 0, 3]},
    ]})
}

fn with(f: impl FnOnce(&mut Value)) -> String {
    let mut v = good();
    f(&mut v);
    v.to_string()
}

#[test]
fn each_bad_input_is_a_4xx_naming_the_field() {
    let md = ModelDir::new(1);
    let srv = Server::start(md.args());
    let infer = format!("/v2/models/{NAME}/infer");
    let predict = format!("/v1/models/{NAME}/predict");
    let cases: Vec<(&str, String, String, u16, &str)> = vec![
        ("malformed JSON", infer.clone(), r#"{"inputs": [{"name": "dense""#.into(), 400, "malformed JSON"),
        ("not JSON at all", infer.clone(), "hello".into(), 400, "malformed JSON"),
        (
            "wrong datatype",
            infer.clone(),
            with(|v| v["inputs"][0]["datatype"] = json!("INT32")),
            400,
            r#"inputs[0] "dense": datatype INT32, expected FP32"#,
        ),
        (
            "wrong indices datatype",
            infer.clone(),
            with(|v| v["inputs"][2]["datatype"] = json!("INT32")),
            400,
            r#"inputs[2] "indices": datatype INT32, expected INT64"#,
        ),
        (
            "wrong dense shape",
            infer.clone(),
            with(|v| v["inputs"][0]["shape"] = json!([2, 3])),
            400,
            r#"inputs[0] "dense": shape [2, 3] does not match [B, 4]"#,
        ),
        (
            "lengths batch differs from dense",
            infer.clone(),
            with(|v| v["inputs"][1]["shape"] = json!([3, 2])),
            400,
            r#"inputs[1] "lengths": shape [3, 2] does not match [2, 3]"#,
        ),
        (
            "data count differs from shape",
            infer.clone(),
            with(|v| v["inputs"][0]["data"] = json!([1, 2, 3, 4, 5, 6, 7])),
            400,
            r#"inputs[0] "dense": 7 values in "data" for shape [2, 4] (8 expected)"#,
        ),
        (
            "lengths not summing to the indices",
            infer.clone(),
            with(|v| {
                v["inputs"][2]["shape"] = json!([5]);
                v["inputs"][2]["data"] = json!([9, 4, 0, 3, 1]);
            }),
            400,
            r#"inputs[2] "indices": 5 values but lengths sum to 4"#,
        ),
        (
            "negative length",
            infer.clone(),
            with(|v| v["inputs"][1]["data"] = json!([1, 0, 1, 2, 0, -1])),
            400,
            r#"inputs[1] "lengths": lengths[1][2] = -1 is negative"#,
        ),
        (
            "id out of range",
            infer.clone(),
            with(|v| v["inputs"][2]["data"] = json!([9, 4, 10, 3])),
            400,
            r#"inputs[2] "indices": indices[2] = 10 (sample 1, table 0): out of range for table 0 with 10 rows"#,
        ),
        (
            "negative id",
            infer.clone(),
            with(|v| v["inputs"][2]["data"] = json!([9, -4, 0, 3])),
            400,
            "indices[1] = -4 (sample 0, table 2): out of range for table 2 with 5 rows",
        ),
        (
            "value beyond f32 (not finite)",
            infer.clone(),
            with(|v| v["inputs"][0]["data"][6] = json!(1e39)),
            400,
            r#"inputs[0] "dense": field `dense[1][2]`: not a finite number"#,
        ),
        (
            "NaN as a string",
            infer.clone(),
            with(|v| v["inputs"][0]["data"][1] = json!("NaN")),
            400,
            r#"inputs[0] "dense": data element 1: "NaN" is not a number"#,
        ),
        (
            "fractional id",
            infer.clone(),
            with(|v| v["inputs"][2]["data"][0] = json!(1.5)),
            400,
            r#"inputs[2] "indices": data element 0: 1.5 is not an INT64 integer"#,
        ),
        (
            "unknown input name",
            infer.clone(),
            with(|v| {
                v["inputs"].as_array_mut().unwrap().push(json!({"name": "foo", "datatype": "FP32", "shape": [1], "data": [1]}))
            }),
            400,
            r#"inputs[3]: unknown input "foo""#,
        ),
        (
            "missing input",
            infer.clone(),
            with(|v| {
                v["inputs"].as_array_mut().unwrap().pop();
            }),
            400,
            r#"missing input "indices""#,
        ),
        (
            "duplicate input",
            infer.clone(),
            with(|v| {
                let d = v["inputs"][0].clone();
                v["inputs"].as_array_mut().unwrap().push(d);
            }),
            400,
            r#"inputs[3]: duplicate input "dense""#,
        ),
        (
            "missing shape",
            infer.clone(),
            with(|v| {
                v["inputs"][1].as_object_mut().unwrap().remove("shape");
            }),
            400,
            "inputs[1]: missing field `shape`",
        ),
        (
            "unknown output",
            infer.clone(),
            with(|v| v["outputs"] = json!([{"name": "prob"}])),
            400,
            r#"outputs[0]: unknown output "prob""#,
        ),
        (
            "unknown top-level field",
            infer.clone(),
            with(|v| v["inptus"] = json!([])),
            400,
            "unknown field `inptus`",
        ),
        (
            "inputs of the wrong type",
            infer.clone(),
            with(|v| v["inputs"] = json!(null)),
            400,
            "inputs: invalid type: null, expected a sequence",
        ),
        (
            "an input field of the wrong type",
            infer.clone(),
            with(|v| v["inputs"][1]["shape"] = json!("2x3")),
            400,
            "inputs[1].shape: invalid type: string",
        ),
        ("an array, not a request", infer.clone(), "[[], []]".into(), 400, "request body: expected a JSON object"),
        ("not an object", infer.clone(), "7".into(), 400, "request body: invalid type: integer `7`"),
        ("v1 malformed JSON", predict.clone(), "{\"samples\": [".into(), 400, "malformed JSON"),
        (
            "v1 id out of range",
            predict.clone(),
            json!({"samples": [{"dense": [1, 2, 3, 4], "sparse": [[], [], []]}, {"dense": [1, 2, 3, 4], "sparse": [[10], [], []]}]})
                .to_string(),
            400,
            "samples[1]: field `sparse[0][0]`: id 10 out of range for table 0 with 10 rows",
        ),
        (
            "v1 negative id",
            predict.clone(),
            json!({"samples": [{"dense": [1, 2, 3, 4], "sparse": [[], [-1], []]}]}).to_string(),
            400,
            "samples[0]: field `sparse[1][0]`: `-1` is not a non-negative integer id",
        ),
        (
            "v1 wrong dense count",
            predict.clone(),
            json!({"samples": [{"dense": [1, 2, 3], "sparse": [[], [], []]}]}).to_string(),
            400,
            "samples[0]: field `dense`: 3 values, the model takes 4",
        ),
        (
            "v1 huge dense",
            predict.clone(),
            r#"{"samples": [{"dense": [1, 2, 1e39, 4], "sparse": [[], [], []]}]}"#.into(),
            400,
            "samples[0]: field `dense[2]`",
        ),
        ("v1 unknown field", predict.clone(), r#"{"sample": []}"#.into(), 400, "unknown field `sample`"),
        ("unknown model", "/v2/models/nope/infer".into(), good().to_string(), 404, r#"unknown model "nope""#),
        ("unknown model v1", "/v1/models/nope/predict".into(), "{}".into(), 404, r#"unknown model "nope""#),
        ("unknown version", format!("/v2/models/{NAME}/versions/9/infer"), good().to_string(), 404, "no version \"9\""),
        ("unknown path", "/v3/whatever".into(), "{}".into(), 404, "no route for POST /v3/whatever"),
        ("load of an unknown model", "/v2/repository/models/nope/load".into(), "".into(), 404, "unknown model"),
    ];
    for (what, path, body, status, needle) in &cases {
        let r = srv.post(path, body);
        assert_eq!(r.status, *status, "{what}: {}", r.body);
        let err = r.error();
        assert!(
            err.contains(needle),
            "{what}: error `{err}` does not contain `{needle}`"
        );
    }
    let r = srv.post_with(
        &infer,
        &good().to_string(),
        &[("x-dlrs-deadline-ms", "soon")],
    );
    assert_eq!(r.status, 400);
    assert!(
        r.error().contains("header x-dlrs-deadline-ms: `soon`"),
        "{}",
        r.body
    );
    // wrong method: 405 with a JSON body
    let mut resp = srv.agent.get(srv.url(&infer)).call().unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert!(
        resp.body_mut()
            .read_to_string()
            .unwrap()
            .contains("\"error\"")
    );

    // the server still answers, and answers right
    let r = srv.post(&infer, &good().to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.scores().len(), 2);
    let m = srv.metrics();
    assert!(
        metric(
            &m,
            "dlrs_requests_total",
            r#"endpoint="/v2/models/{name}/infer",status="400""#
        )
        .unwrap()
            >= 18.0
    );
    srv.stop().unwrap();
}

/// Sends raw bytes and reads the whole answer (the server closes the connection).
fn raw(srv: &Server, parts: &[&[u8]]) -> (String, Duration) {
    let mut c = TcpStream::connect(srv.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let t0 = Instant::now();
    for p in parts {
        c.write_all(p).unwrap();
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if response_complete(&out) {
                    break;
                }
            }
            Err(e) => panic!(
                "reading the answer: {e} (got {:?})",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), t0.elapsed())
}

fn response_complete(out: &[u8]) -> bool {
    let text = String::from_utf8_lossy(out);
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    let len = text[..end].lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().parse::<usize>().unwrap())
    });
    len.is_some_and(|n| out.len() >= end + 4 + n)
}

#[test]
fn oversized_body_is_413_before_it_is_read() {
    let md = ModelDir::new(1);
    let mut args = md.args();
    args.max_body_bytes = 4096;
    let srv = Server::start(args);
    let path = format!("/v2/models/{NAME}/infer");

    // declared too large: refused from the headers alone (no body is ever sent)
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
    );
    let (resp, took) = raw(&srv, &[head.as_bytes()]);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(
        resp.contains(
            r#""error":"request body of 100000000 bytes is over the limit of 4096 bytes"#
        ),
        "{resp}"
    );
    assert!(took < Duration::from_secs(5));

    // streamed (chunked) past the limit: refused as soon as it crosses it
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    let chunk = format!("3e8\r\n{}\r\n", " ".repeat(1000));
    let mut parts: Vec<&[u8]> = vec![head.as_bytes()];
    parts.extend(std::iter::repeat_n(chunk.as_bytes(), 5));
    let (resp, _) = raw(&srv, &parts);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("over the limit of 4096 bytes"), "{resp}");

    // under the limit works
    let r = srv.post(&path, &good().to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    srv.stop().unwrap();
}

#[test]
fn slow_body_is_408_and_does_not_hold_the_server() {
    let md = ModelDir::new(1);
    let mut args = md.args();
    args.body_timeout_ms = 300;
    let srv = Server::start(args);
    let path = format!("/v2/models/{NAME}/infer");
    std::thread::scope(|sc| {
        let slow = sc.spawn(|| {
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{{\"inputs\": ["
            );
            raw(&srv, &[head.as_bytes()])
        });
        // good traffic alongside is answered while the slow client dawdles
        for _ in 0..5 {
            let r = srv.post(&path, &good().to_string());
            assert_eq!(r.status, 200, "{}", r.body);
        }
        let (resp, took) = slow.join().unwrap();
        assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
        assert!(resp.contains("did not arrive within 300 ms"), "{resp}");
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(5),
            "{took:?}"
        );
    });
    srv.stop().unwrap();
}

/// Posts the tensors `t` (dense, lengths, indices) of `b` samples with the binary tensor
/// data extension.
fn post_binary(srv: &Server, b: usize, t: &[Vec<u8>; 3]) -> Resp {
    let cfg = config();
    let header = json!({
        "inputs": [
            {"name": "dense", "datatype": "FP32", "shape": [b, cfg.n_dense()], "parameters": {"binary_data_size": t[0].len()}},
            {"name": "lengths", "datatype": "INT32", "shape": [b, cfg.n_tables()], "parameters": {"binary_data_size": t[1].len()}},
            {"name": "indices", "datatype": "INT64", "shape": [t[2].len() / 8], "parameters": {"binary_data_size": t[2].len()}},
        ],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    t.iter().for_each(|x| body.extend(x));
    let mut r = srv
        .agent
        .post(srv.url(&format!("/v2/models/{NAME}/infer")))
        .header("Inference-Header-Content-Length", header.len().to_string())
        .send(&body[..])
        .unwrap();
    Resp {
        status: r.status().as_u16(),
        retry_after: None,
        request_id: None,
        body: r.body_mut().read_to_string().unwrap(),
    }
}

#[test]
fn an_id_out_of_range_in_binary_data_names_its_sample_and_table() {
    let md = ModelDir::new(2);
    let srv = Server::start(md.args());
    // tables of 10, 20, 5 rows; empty bags between the full ones
    let sparse = [
        [vec![1, 2], vec![], vec![4]],
        [vec![], vec![19, 0, 7], vec![]],
        [vec![9], vec![3], vec![0, 1]],
        [vec![5, 5, 5], vec![], vec![2]],
    ];
    let s: Vec<dlrs_model::Sample> = sparse
        .iter()
        .enumerate()
        .map(|(i, bags)| dlrs_model::Sample {
            dense: vec![0.25 * i as f32; 4],
            sparse: bags.to_vec(),
            label: None,
        })
        .collect();
    let t = le_tensors(&s);
    let want = reference(&md.model, &s);
    assert_close(&post_binary(&srv, 4, &t).scores(), &want);
    // (index into indices, sample, table, bad id); 2^32 narrows to 0, in range once narrowed
    let cases = [
        (0, 0, 0, 10),
        (4, 1, 1, 20),
        (5, 1, 1, -1),
        (7, 2, 1, 1 << 32),
        (8, 2, 2, i64::MIN),
        (12, 3, 0, i64::MAX),
        (13, 3, 2, 5),
    ];
    let rows = [10, 20, 5];
    for (j, sample, table, bad) in cases {
        let mut t = t.clone();
        t[2][8 * j..8 * j + 8].copy_from_slice(&bad.to_le_bytes());
        let r = post_binary(&srv, 4, &t);
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(
            r.error(),
            format!(
                "inputs[2] \"indices\": indices[{j}] = {bad} (sample {sample}, table {table}): out of range for table {table} with {} rows",
                rows[table]
            )
        );
    }
    // still serving
    assert_close(&post_binary(&srv, 4, &t).scores(), &want);
    srv.stop().unwrap();
}
