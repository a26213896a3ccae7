//! Property tests over the inference endpoints (`POST /v2/models/{name}/infer` with JSON and
//! binary tensor data, `POST /v1/models/{name}/predict`) of an in-process server: random
//! bytes, random JSON, and valid requests mutated (shapes, datatypes, lengths, ids out of
//! range, non-finite values, binary sizes and header lengths, truncated and padded bodies).
//! Every answer is a 200 (with one score per sample) or a 4xx whose JSON error names the
//! field, tensor or header at fault; never a 5xx, never a hang (every request has a 10 s
//! timeout); and the server still computes a good request right afterwards.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};

/// Cases per property (each a request of a few hundred bytes: ~1 s per property).
const CASES: u32 = 1500;

/// What an error message must contain one of: each names the field, tensor or header.
const NAMED: &[&str] = &[
    "inputs",
    "outputs",
    "parameters",
    "samples",
    "missing input",
    "id: ",
    "request body",
    "binary data after the last binary input",
    "header Inference-Header-Content-Length",
    "malformed JSON",
];

#[derive(Clone, Copy, Debug)]
enum Endpoint {
    V2,
    V2Versioned,
    V1,
}

impl Endpoint {
    fn path(self) -> String {
        match self {
            Endpoint::V2 => format!("/v2/models/{NAME}/infer"),
            Endpoint::V2Versioned => format!("/v2/models/{NAME}/versions/1/infer"),
            Endpoint::V1 => format!("/v1/models/{NAME}/predict"),
        }
    }
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    prop_oneof![
        Just(Endpoint::V2),
        Just(Endpoint::V2Versioned),
        Just(Endpoint::V1)
    ]
}

/// One request as sent.
#[derive(Debug)]
struct Req {
    endpoint: Endpoint,
    body: Vec<u8>,
    /// the `Inference-Header-Content-Length` header
    header_len: Option<String>,
}

struct Fuzz {
    md: ModelDir,
    srv: Server,
    agent: ureq::Agent,
    /// answers of the current property: (200s, 4xx)
    seen: std::cell::Cell<(u32, u32)>,
}

impl Fuzz {
    fn start() -> Fuzz {
        let md = ModelDir::new(7);
        let srv = Server::start(md.args());
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Fuzz {
            md,
            srv,
            agent,
            seen: Default::default(),
        }
    }

    /// Sends `req`: a 200 with one score per sample, or a 4xx with a JSON error naming the field.
    fn check(&self, req: &Req) -> Result<(), TestCaseError> {
        let t0 = Instant::now();
        let mut r = self.agent.post(self.srv.url(&req.endpoint.path()));
        if let Some(h) = &req.header_len {
            r = r.header("Inference-Header-Content-Length", h);
        }
        let mut resp = r
            .send(&req.body[..])
            .map_err(|e| TestCaseError::fail(format!("no answer after {:?}: {e}", t0.elapsed())))?;
        let status = resp.status().as_u16();
        let json_len = resp
            .headers()
            .get("inference-header-content-length")
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = resp
            .body_mut()
            .read_to_vec()
            .map_err(|e| TestCaseError::fail(format!("reading the answer: {e}")))?;
        let text = String::from_utf8_lossy(&bytes);
        prop_assert!(
            status == 200 || (400..500).contains(&status),
            "HTTP {status}: {text}"
        );
        if status == 200 {
            let head = match &json_len {
                Some(n) => &bytes[..n.parse::<usize>().unwrap()],
                None => &bytes[..],
            };
            let v: Value = serde_json::from_slice(head)
                .map_err(|e| TestCaseError::fail(format!("200, not JSON ({e}): {text}")))?;
            let n = match req.endpoint {
                Endpoint::V1 => v["scores"].as_array().map(Vec::len),
                _ => v["outputs"][0]["shape"][0].as_u64().map(|b| b as usize),
            };
            prop_assert!(n.is_some(), "200 without scores: {text}");
            self.seen.set((self.seen.get().0 + 1, self.seen.get().1));
            return Ok(());
        }
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| TestCaseError::fail(format!("HTTP {status}, not JSON ({e}): {text}")))?;
        let msg = v["error"].as_str().unwrap_or_default();
        prop_assert!(
            NAMED.iter().any(|n| msg.contains(n)),
            "HTTP {status}: the error names no field: {text}"
        );
        self.seen.set((self.seen.get().0, self.seen.get().1 + 1));
        Ok(())
    }

    /// The server still computes a good request right.
    fn still_serves(&self) {
        let s = samples(&mut Lcg(99), 3);
        assert_close(&self.srv.infer(&s).scores(), &reference(&self.md.model, &s));
    }

    /// Runs [`CASES`] of `strategy` through [`Fuzz::check`]; the numbers of 200s and 4xx.
    fn run<S: Strategy>(
        &self,
        what: &str,
        strategy: S,
        to_req: impl Fn(S::Value) -> Req,
    ) -> (u32, u32) {
        let t0 = Instant::now();
        self.seen.set((0, 0));
        let config = Config {
            cases: CASES,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        if let Err(e) = runner.run(&strategy, |input| self.check(&to_req(input))) {
            panic!("{what}: {e}");
        }
        self.still_serves();
        let (ok, refused) = self.seen.get();
        eprintln!(
            "{what}: {CASES} cases in {:?}: {ok} answered 200, {refused} refused 4xx",
            t0.elapsed()
        );
        (ok, refused)
    }

    /// Ends a mutation test: both outcomes were seen (the mutations test something), no
    /// request got a 5xx, and the server stops cleanly.
    fn finish_mutations(self, ok: u32, refused: u32) {
        assert!(
            ok > 0 && refused > 0,
            "{ok} answered, {refused} refused: the mutations test too little"
        );
        self.assert_no_5xx();
        self.srv.stop().unwrap();
    }

    fn assert_no_5xx(&self) {
        let m = self.srv.metrics();
        for line in m.lines().filter(|l| l.starts_with("dlrs_requests_total")) {
            assert!(!line.contains(r#"status="5"#), "{line}\n{m}");
        }
    }
}

/// A JSON value biased towards the request's vocabulary.
fn arb_json() -> impl Strategy<Value = Value> {
    let word = prop::sample::select(vec![
        "NaN", "Infinity", "FP32", "INT32", "INT64", "BYTES", "dense", "lengths", "indices",
        "score", "",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-3i64..30).prop_map(Value::from),
        (-1e3f64..1e3).prop_map(Value::from),
        prop::sample::select(vec![1e39, -1e39, 1e308, f64::MIN_POSITIVE, 0.5])
            .prop_map(Value::from),
        "[a-z_]{0,8}".prop_map(Value::from),
        word.prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    let known = prop::sample::select(vec![
        "inputs",
        "outputs",
        "name",
        "shape",
        "datatype",
        "data",
        "parameters",
        "samples",
        "dense",
        "sparse",
        "id",
        "binary_data_size",
        "binary_data",
        "binary_data_output",
        "timeout",
        "shared_memory_region",
        "shared_memory_byte_size",
        "shared_memory_offset",
    ]);
    prop_oneof![3 => known.prop_map(String::from), 1 => "[a-z]{1,6}"]
}

fn huge_or_small_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        -3i64..12,
        prop::sample::select(vec![
            i64::MAX,
            i64::MIN,
            1 << 31,
            1 << 32,
            1 << 40,
            -(1 << 40),
            i32::MAX as i64
        ]),
        any::<i64>(),
    ]
}

/// A valid /v2 request of 0 to 3 samples.
fn base_samples() -> impl Strategy<Value = Vec<dlrs_model::Sample>> {
    (any::<u64>(), 0usize..4).prop_map(|(seed, n)| samples(&mut Lcg(seed), n))
}

/// A change to a /v2 JSON request.
#[derive(Clone, Debug)]
enum V2Change {
    Shape(usize, Vec<i64>),
    Datatype(usize, String),
    Data(usize, Value),
    Lengths(Vec<i64>),
    Id(usize, i64),
    Dense(usize, Value),
    Remove(usize, &'static str),
    Rename(usize, String),
    DropInput(usize),
    DupInput(usize),
    InputField(usize, String, Value),
    InputParams(usize, Value),
    Top(String, Value),
}

fn v2_change() -> impl Strategy<Value = V2Change> {
    let i = 0usize..3;
    prop_oneof![
        (i.clone(), prop::collection::vec(huge_or_small_i64(), 0..4))
            .prop_map(|(i, s)| V2Change::Shape(i, s)),
        (
            i.clone(),
            prop::sample::select(vec!["FP32", "INT32", "INT64", "FP64", "BYTES", "fp32", ""])
        )
            .prop_map(|(i, d)| V2Change::Datatype(i, d.into())),
        (i.clone(), arb_json()).prop_map(|(i, v)| V2Change::Data(i, v)),
        prop::collection::vec(prop_oneof![-2i64..4, huge_or_small_i64()], 0..10)
            .prop_map(V2Change::Lengths),
        (any::<usize>(), huge_or_small_i64()).prop_map(|(p, v)| V2Change::Id(p, v)),
        (
            any::<usize>(),
            prop_oneof![
                arb_json(),
                Just(json!("NaN")),
                Just(json!(1e39)),
                Just(json!(-1e300))
            ]
        )
            .prop_map(|(p, v)| V2Change::Dense(p, v)),
        (
            i.clone(),
            prop::sample::select(vec!["name", "shape", "datatype", "data"])
        )
            .prop_map(|(i, f)| V2Change::Remove(i, f)),
        (
            i.clone(),
            prop_oneof![
                "[a-z]{0,7}",
                Just("dense".to_string()),
                Just("indices".to_string())
            ]
        )
            .prop_map(|(i, n)| V2Change::Rename(i, n)),
        i.clone().prop_map(V2Change::DropInput),
        i.clone().prop_map(V2Change::DupInput),
        (i.clone(), key(), arb_json()).prop_map(|(i, k, v)| V2Change::InputField(i, k, v)),
        (i, arb_json()).prop_map(|(i, v)| V2Change::InputParams(i, v)),
        (key(), arb_json()).prop_map(|(k, v)| V2Change::Top(k, v)),
    ]
}

/// The `data` array of the input called `name`, if there is one.
fn data_of<'a>(inputs: &'a mut [Value], name: &str) -> Option<&'a mut Vec<Value>> {
    inputs
        .iter_mut()
        .find(|x| x["name"] == name)?
        .get_mut("data")?
        .as_array_mut()
}

/// Sets field `k` of `v` when `v` is an object.
fn set(v: &mut Value, k: &str, x: Value) {
    if let Some(o) = v.as_object_mut() {
        o.insert(k.to_string(), x);
    }
}

/// The array in field `k` of `v`, if there is one.
fn array<'a>(v: &'a mut Value, k: &str) -> Option<&'a mut Vec<Value>> {
    v.get_mut(k)?.as_array_mut()
}

/// Sets element `p` (modulo the length) of `data`, if it has any.
fn set_elem(data: Option<&mut Vec<Value>>, p: usize, v: Value) {
    if let Some(d) = data.filter(|d| !d.is_empty()) {
        let k = p % d.len();
        d[k] = v;
    }
}

impl V2Change {
    fn apply(&self, req: &mut Value) {
        if let V2Change::Top(k, v) = self {
            set(req, k, v.clone());
            return;
        }
        let Some(inputs) = array(req, "inputs") else {
            return;
        };
        if inputs.is_empty() {
            return;
        }
        let n = inputs.len();
        match self {
            V2Change::Shape(i, s) => set(&mut inputs[i % n], "shape", json!(s)),
            V2Change::Datatype(i, d) => set(&mut inputs[i % n], "datatype", json!(d)),
            V2Change::Data(i, v) => set(&mut inputs[i % n], "data", v.clone()),
            V2Change::Lengths(l) => {
                if let Some(x) = inputs.iter_mut().find(|x| x["name"] == "lengths") {
                    set(x, "data", json!(l));
                }
            }
            V2Change::Id(p, v) => set_elem(data_of(inputs, "indices"), *p, json!(v)),
            V2Change::Dense(p, v) => set_elem(data_of(inputs, "dense"), *p, v.clone()),
            V2Change::Remove(i, f) => {
                if let Some(o) = inputs[i % n].as_object_mut() {
                    o.remove(*f);
                }
            }
            V2Change::Rename(i, name) => set(&mut inputs[i % n], "name", json!(name)),
            V2Change::DropInput(i) => {
                inputs.remove(i % n);
            }
            V2Change::DupInput(i) => {
                let x = inputs[i % n].clone();
                inputs.push(x);
            }
            V2Change::InputField(i, k, v) => set(&mut inputs[i % n], k, v.clone()),
            V2Change::InputParams(i, v) => set(&mut inputs[i % n], "parameters", v.clone()),
            V2Change::Top(..) => unreachable!("handled above"),
        }
    }
}

/// Cuts `body` at `at` (modulo its length), when given.
fn truncate(mut body: Vec<u8>, at: Option<usize>) -> Vec<u8> {
    if let Some(at) = at {
        body.truncate(at % (body.len() + 1));
    }
    body
}

/// A change to a binary request's tensors (before they are encoded).
#[derive(Clone, Debug)]
enum TensorChange {
    Dense(usize, f32),
    Length(usize, i32),
    Id(usize, i64),
}

fn tensor_change() -> impl Strategy<Value = TensorChange> {
    let odd_f32 = prop_oneof![
        prop::sample::select(vec![
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            -0.0,
            0.5
        ]),
        any::<u32>().prop_map(f32::from_bits),
    ];
    prop_oneof![
        (any::<usize>(), odd_f32).prop_map(|(p, v)| TensorChange::Dense(p, v)),
        (
            any::<usize>(),
            prop_oneof![-3i32..6, Just(i32::MAX), Just(i32::MIN), any::<i32>()]
        )
            .prop_map(|(p, v)| TensorChange::Length(p, v)),
        (any::<usize>(), huge_or_small_i64()).prop_map(|(p, v)| TensorChange::Id(p, v)),
    ]
}

/// The `Inference-Header-Content-Length` header sent.
#[derive(Clone, Debug)]
enum HeaderLen {
    Right,
    Off(i64),
    Text(&'static str),
    Absent,
}

fn header_len() -> impl Strategy<Value = HeaderLen> {
    prop_oneof![
        6 => Just(HeaderLen::Right),
        2 => (-8i64..8).prop_map(HeaderLen::Off),
        1 => prop::sample::select(vec![
            "-1",
            "abc",
            "18446744073709551615",
            "99999999999999999999999",
            "1e3",
            "0x10",
            "0",
            "4294967296",
        ])
        .prop_map(HeaderLen::Text),
        1 => Just(HeaderLen::Absent),
    ]
}

/// What is done to the assembled binary body.
#[derive(Clone, Debug)]
enum Tail {
    Keep,
    Cut(usize),
    Append(Vec<u8>),
}

fn tail() -> impl Strategy<Value = Tail> {
    prop_oneof![
        6 => Just(Tail::Keep),
        2 => (1usize..40).prop_map(Tail::Cut),
        1 => prop::collection::vec(any::<u8>(), 1..16).prop_map(Tail::Append),
    ]
}

#[derive(Clone, Debug)]
struct BinaryCase {
    samples: Vec<dlrs_model::Sample>,
    /// which inputs (dense, lengths, indices) travel as binary data
    binary: [bool; 3],
    tensors: Vec<TensorChange>,
    header: Vec<V2Change>,
    header_len: HeaderLen,
    tail: Tail,
}

fn binary_case() -> impl Strategy<Value = BinaryCase> {
    (
        base_samples(),
        any::<[bool; 3]>(),
        prop::collection::vec(tensor_change(), 0..3),
        prop::collection::vec(v2_change(), 0..2),
        header_len(),
        tail(),
    )
        .prop_map(
            |(samples, binary, tensors, header, header_len, tail)| BinaryCase {
                samples,
                binary,
                tensors,
                header,
                header_len,
                tail,
            },
        )
}

impl BinaryCase {
    fn request(&self) -> Req {
        let cfg = config();
        let b = self.samples.len();
        let mut dense: Vec<f32> = self
            .samples
            .iter()
            .flat_map(|s| s.dense.iter().copied())
            .collect();
        let mut lengths: Vec<i32> = self
            .samples
            .iter()
            .flat_map(|s| s.sparse.iter().map(|x| x.len() as i32))
            .collect();
        let mut ids: Vec<i64> = self
            .samples
            .iter()
            .flat_map(|s| s.sparse.iter().flatten().map(|&i| i as i64))
            .collect();
        for c in &self.tensors {
            match *c {
                TensorChange::Dense(p, v) if !dense.is_empty() => {
                    let k = p % dense.len();
                    dense[k] = v;
                }
                TensorChange::Length(p, v) if !lengths.is_empty() => {
                    let k = p % lengths.len();
                    lengths[k] = v;
                }
                TensorChange::Id(p, v) if !ids.is_empty() => {
                    let k = p % ids.len();
                    ids[k] = v;
                }
                _ => {}
            }
        }
        let bytes: [Vec<u8>; 3] = [
            dense.iter().flat_map(|v| v.to_le_bytes()).collect(),
            lengths.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ids.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ];
        let data = [json!(dense), json!(lengths), json!(ids)];
        let heads = [
            json!({"name": "dense", "datatype": "FP32", "shape": [b, cfg.n_dense()]}),
            json!({"name": "lengths", "datatype": "INT32", "shape": [b, cfg.n_tables()]}),
            json!({"name": "indices", "datatype": "INT64", "shape": [ids.len()]}),
        ];
        let mut inputs = Vec::new();
        let mut tail = Vec::new();
        for k in 0..3 {
            let mut h = heads[k].clone();
            if self.binary[k] {
                h["parameters"] = json!({"binary_data_size": bytes[k].len()});
                tail.extend_from_slice(&bytes[k]);
            } else {
                h["data"] = data[k].clone();
            }
            inputs.push(h);
        }
        let mut head = json!({"inputs": inputs, "outputs": [{"name": "score", "parameters": {"binary_data": true}}]});
        for c in &self.header {
            c.apply(&mut head);
        }
        let head = head.to_string().into_bytes();
        let json_len = head.len();
        let mut body = head;
        body.extend_from_slice(&tail);
        match &self.tail {
            Tail::Keep => {}
            Tail::Cut(n) => body.truncate(body.len().saturating_sub(*n)),
            Tail::Append(extra) => body.extend_from_slice(extra),
        }
        let header_len = match &self.header_len {
            HeaderLen::Right => Some(json_len.to_string()),
            HeaderLen::Off(d) => Some((json_len as i64 + d).to_string()),
            HeaderLen::Text(t) => Some(t.to_string()),
            HeaderLen::Absent => None,
        };
        Req {
            endpoint: Endpoint::V2,
            body,
            header_len,
        }
    }
}

/// A change to a /v1 predict request.
#[derive(Clone, Debug)]
enum V1Change {
    Dense(usize, Value),
    DenseElem(usize, usize, Value),
    Sparse(usize, Value),
    Bag(usize, usize, Value),
    Id(usize, usize, usize, Value),
    Remove(usize, &'static str),
    Field(usize, String, Value),
    Samples(Value),
    Top(String, Value),
}

fn v1_change() -> impl Strategy<Value = V1Change> {
    let odd = prop_oneof![
        arb_json(),
        Just(json!("NaN")),
        Just(json!(1e39)),
        huge_or_small_i64().prop_map(Value::from),
        Just(json!(1.5))
    ];
    let u = any::<usize>;
    prop_oneof![
        (u(), arb_json()).prop_map(|(s, v)| V1Change::Dense(s, v)),
        (u(), u(), odd.clone()).prop_map(|(s, k, v)| V1Change::DenseElem(s, k, v)),
        (u(), arb_json()).prop_map(|(s, v)| V1Change::Sparse(s, v)),
        (u(), u(), arb_json()).prop_map(|(s, t, v)| V1Change::Bag(s, t, v)),
        (u(), u(), u(), odd).prop_map(|(s, t, k, v)| V1Change::Id(s, t, k, v)),
        (u(), prop::sample::select(vec!["dense", "sparse"]))
            .prop_map(|(s, f)| V1Change::Remove(s, f)),
        (u(), key(), arb_json()).prop_map(|(s, k, v)| V1Change::Field(s, k, v)),
        arb_json().prop_map(V1Change::Samples),
        (key(), arb_json()).prop_map(|(k, v)| V1Change::Top(k, v)),
    ]
}

impl V1Change {
    fn apply(&self, req: &mut Value) {
        match self {
            V1Change::Samples(v) => {
                set(req, "samples", v.clone());
                return;
            }
            V1Change::Top(k, v) => {
                set(req, k, v.clone());
                return;
            }
            _ => {}
        }
        let Some(samples) = array(req, "samples").filter(|s| !s.is_empty()) else {
            return;
        };
        let n = samples.len();
        match self {
            V1Change::Dense(s, v) => set(&mut samples[s % n], "dense", v.clone()),
            V1Change::DenseElem(s, k, v) => {
                set_elem(array(&mut samples[s % n], "dense"), *k, v.clone())
            }
            V1Change::Sparse(s, v) => set(&mut samples[s % n], "sparse", v.clone()),
            V1Change::Bag(s, t, v) => set_elem(array(&mut samples[s % n], "sparse"), *t, v.clone()),
            V1Change::Id(s, t, k, v) => {
                if let Some(bags) = array(&mut samples[s % n], "sparse").filter(|b| !b.is_empty()) {
                    let t = t % bags.len();
                    set_elem(bags[t].as_array_mut(), *k, v.clone());
                }
            }
            V1Change::Remove(s, f) => {
                if let Some(o) = samples[s % n].as_object_mut() {
                    o.remove(*f);
                }
            }
            V1Change::Field(s, k, v) => set(&mut samples[s % n], k, v.clone()),
            V1Change::Samples(_) | V1Change::Top(..) => unreachable!("handled above"),
        }
    }
}

fn cut() -> impl Strategy<Value = Option<usize>> {
    prop::option::weighted(0.1, any::<usize>())
}

#[test]
fn random_bytes_and_random_json_are_4xx_naming_the_field() {
    let f = Fuzz::start();
    let bytes = (
        endpoint(),
        prop::collection::vec(any::<u8>(), 0..300),
        prop::option::of(0usize..400),
    );
    f.run("random bytes", bytes, |(endpoint, body, h)| Req {
        endpoint,
        body,
        header_len: h.map(|h| h.to_string()),
    });
    let values = (endpoint(), arb_json(), cut());
    f.run("random JSON", values, |(endpoint, v, at)| Req {
        endpoint,
        body: truncate(v.to_string().into_bytes(), at),
        header_len: None,
    });
    // random JSON values in the request's shape: top-level and per-input fields
    let shaped = (
        endpoint(),
        prop::collection::vec((key(), arb_json()), 0..4),
        prop::collection::vec(arb_json(), 0..4),
    );
    f.run(
        "request-shaped JSON",
        shaped,
        |(endpoint, fields, inputs)| {
            let mut v = json!({"inputs": inputs, "samples": inputs});
            for (k, x) in fields {
                set(&mut v, &k, x);
            }
            Req {
                endpoint,
                body: v.to_string().into_bytes(),
                header_len: None,
            }
        },
    );
    f.assert_no_5xx();
    f.srv.stop().unwrap();
}

#[test]
fn mutated_v2_json_requests_are_200_or_4xx_naming_the_field() {
    let f = Fuzz::start();
    let cases = (
        base_samples(),
        prop::collection::vec(v2_change(), 1..4),
        cut(),
        any::<bool>(),
    );
    let (ok, refused) = f.run(
        "mutated v2 JSON",
        cases,
        |(samples, changes, at, versioned)| {
            let mut req = v2_request(&samples, Some("fuzz"));
            for c in &changes {
                c.apply(&mut req);
            }
            let endpoint = if versioned {
                Endpoint::V2Versioned
            } else {
                Endpoint::V2
            };
            Req {
                endpoint,
                body: truncate(req.to_string().into_bytes(), at),
                header_len: None,
            }
        },
    );
    f.finish_mutations(ok, refused);
}

#[test]
fn mutated_binary_requests_are_200_or_4xx_naming_the_field() {
    let f = Fuzz::start();
    let (ok, refused) = f.run("mutated v2 binary", binary_case(), |c| c.request());
    f.finish_mutations(ok, refused);
}

#[test]
fn mutated_v1_requests_are_200_or_4xx_naming_the_field() {
    let f = Fuzz::start();
    let cases = (
        base_samples(),
        prop::collection::vec(v1_change(), 1..4),
        cut(),
    );
    let (ok, refused) = f.run("mutated v1", cases, |(samples, changes, at)| {
        let mut req = v1_request(&samples);
        for c in &changes {
            c.apply(&mut req);
        }
        Req {
            endpoint: Endpoint::V1,
            body: truncate(req.to_string().into_bytes(), at),
            header_len: None,
        }
    });
    f.finish_mutations(ok, refused);
}

#[test]
fn garbage_on_the_socket_is_refused_or_closed_never_5xx_or_hung() {
    let f = Fuzz::start();
    let t0 = Instant::now();
    let path = Endpoint::V2.path();
    let garbage = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        // a request head with random bytes in it
        (prop::collection::vec(any::<u8>(), 0..40), any::<usize>()).prop_map(move |(junk, at)| {
            let mut head =
                format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{{}}   ")
                    .into_bytes();
            let at = at % (head.len() + 1);
            head.splice(at..at, junk);
            head
        }),
    ];
    let config = Config {
        cases: CASES / 3,
        failure_persistence: None,
        ..Config::default()
    };
    let addr = f.srv.addr;
    TestRunner::new(config)
        .run(&garbage, |bytes| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = c.write_all(&bytes);
            let _ = c.shutdown(std::net::Shutdown::Write);
            let mut out = Vec::new();
            let t = Instant::now();
            match c.read_to_end(&mut out) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(e) => return Err(TestCaseError::fail(format!("{e} after {:?}", t.elapsed()))),
            }
            let text = String::from_utf8_lossy(&out);
            prop_assert!(!text.starts_with("HTTP/1.1 5"), "{text}");
            prop_assert!(out.is_empty() || text.starts_with("HTTP/1.1 "), "{text}");
            Ok(())
        })
        .unwrap_or_else(|e| panic!("garbage: {e}"));
    f.still_serves();
    f.assert_no_5xx();
    eprintln!("garbage: {} cases in {:?}", CASES / 3, t0.elapsed());
    f.srv.stop().unwrap();
}
