//! Triton's system shared memory extension: regions registered, listed and unregistered;
//! inputs read from and the output written to shared memory give the scores the same query
//! gets in the body; every bad request is a 400 naming the field, and the server keeps
//! serving; a region unregistered while a request uses it stays mapped until it is answered.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use serde_json::{Value, json};

/// A POSIX shared memory object (`/dev/shm/NAME`, key `/NAME`) made by the test, removed on
/// drop.
struct ShmObject {
    name: String,
    path: PathBuf,
    file: File,
}

impl ShmObject {
    fn new(size: usize) -> ShmObject {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "dlrs-serve-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let path = PathBuf::from("/dev/shm").join(&name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        file.set_len(size as u64).unwrap();
        ShmObject { name, path, file }
    }
    fn key(&self) -> String {
        format!("/{}", self.name)
    }
    fn write(&self, offset: usize, bytes: &[u8]) {
        self.file.write_all_at(bytes, offset as u64).unwrap();
    }
    fn read(&self, offset: usize, len: usize) -> Vec<u8> {
        let mut b = vec![0; len];
        self.file.read_exact_at(&mut b, offset as u64).unwrap();
        b
    }
}

impl Drop for ShmObject {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn shm_args(md: &ModelDir) -> dlrs_serve::ServeConfig {
    let mut a = md.args();
    a.allow_client_shm = true;
    a
}

fn register(srv: &Server, region: &str, key: &str, offset: usize, byte_size: usize) -> Resp {
    srv.post(
        &format!("/v2/systemsharedmemory/region/{region}/register"),
        &json!({"key": key, "offset": offset, "byte_size": byte_size}).to_string(),
    )
}

fn status(srv: &Server, region: Option<&str>) -> (u16, Value) {
    let path = match region {
        Some(r) => format!("/v2/systemsharedmemory/region/{r}/status"),
        None => "/v2/systemsharedmemory/status".to_string(),
    };
    let (s, body) = srv.get(&path);
    (s, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The `error` of a JSON error body.
fn error_of(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {body}"))
        .to_string()
}

fn infer_path() -> String {
    format!("/v2/models/{NAME}/infer")
}

/// Shm parameters: a range of `region`.
fn at(region: &str, offset: usize, size: usize) -> Value {
    json!({"shared_memory_region": region, "shared_memory_offset": offset, "shared_memory_byte_size": size})
}

/// The request for `samples` whose three inputs are at `offs` of `region` (sizes from the
/// tensors), with `output` as its requested outputs.
fn shm_request(
    samples: &[dlrs_model::Sample],
    region: &str,
    offs: [usize; 3],
    output: Value,
) -> Value {
    let cfg = config();
    let t = le_tensors(samples);
    let b = samples.len();
    json!({
        "inputs": [
            {"name": "dense", "datatype": "FP32", "shape": [b, cfg.n_dense()], "parameters": at(region, offs[0], t[0].len())},
            {"name": "lengths", "datatype": "INT32", "shape": [b, cfg.n_tables()], "parameters": at(region, offs[1], t[1].len())},
            {"name": "indices", "datatype": "INT64", "shape": [t[2].len() / 8], "parameters": at(region, offs[2], t[2].len())},
        ],
        "outputs": output,
    })
}

/// Writes the three tensors of `samples` into `obj` from `base`, 8-byte aligned with a gap;
/// their offsets from `base`.
fn write_tensors(obj: &ShmObject, base: usize, samples: &[dlrs_model::Sample]) -> [usize; 3] {
    let t = le_tensors(samples);
    let mut offs = [0; 3];
    let mut at = 16;
    for (k, bytes) in t.iter().enumerate() {
        offs[k] = at;
        obj.write(base + at, bytes);
        at = (at + bytes.len() + 8).next_multiple_of(8);
    }
    offs
}

fn le_f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The scores of `samples` sent with the binary tensor data extension.
fn binary_scores(srv: &Server, samples: &[dlrs_model::Sample]) -> Vec<f32> {
    let cfg = config();
    let t = le_tensors(samples);
    let b = samples.len();
    let header = json!({
        "inputs": [
            {"name": "dense", "datatype": "FP32", "shape": [b, cfg.n_dense()], "parameters": {"binary_data_size": t[0].len()}},
            {"name": "lengths", "datatype": "INT32", "shape": [b, cfg.n_tables()], "parameters": {"binary_data_size": t[1].len()}},
            {"name": "indices", "datatype": "INT64", "shape": [t[2].len() / 8], "parameters": {"binary_data_size": t[2].len()}},
        ],
        "outputs": [{"name": "score"}],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    t.iter().for_each(|x| body.extend(x));
    let mut r = srv
        .agent
        .post(srv.url(&infer_path()))
        .header("Inference-Header-Content-Length", header.len().to_string())
        .send(&body[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    v["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn register_status_unregister_round_trip() {
    let md = ModelDir::new(1);
    let srv = Server::start(shm_args(&md));
    let obj = ShmObject::new(4096);
    let (s, v) = status(&srv, None);
    assert_eq!((s, v), (200, json!([])));
    let (s, meta) = srv.get("/v2");
    assert_eq!(s, 200);
    assert!(meta.contains("system_shared_memory"), "{meta}");

    let r = register(&srv, "whole", &obj.key(), 0, 4096);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = register(&srv, "tail", &obj.key(), 1024, 1000);
    assert_eq!(r.status, 200, "{}", r.body);
    let whole = json!({"name": "whole", "key": obj.key(), "offset": 0, "byte_size": 4096});
    let tail = json!({"name": "tail", "key": obj.key(), "offset": 1024, "byte_size": 1000});
    let (s, v) = status(&srv, None);
    assert_eq!(s, 200);
    let mut all = v.as_array().unwrap().clone();
    all.sort_by_key(|r| r["name"].as_str().unwrap().to_string());
    assert_eq!(all, vec![tail.clone(), whole.clone()]);
    assert_eq!(status(&srv, Some("tail")), (200, json!([tail])));

    let r = srv.post("/v2/systemsharedmemory/region/whole/unregister", "");
    assert_eq!(r.status, 200, "{}", r.body);
    let (s, body) = srv.get("/v2/systemsharedmemory/region/whole/status");
    assert_eq!(s, 404, "{body}");
    assert!(error_of(&body).contains("\"whole\""), "{body}");
    assert_eq!(status(&srv, None).1.as_array().unwrap().len(), 1);
    // the name is free again
    assert_eq!(register(&srv, "whole", &obj.key(), 0, 8).status, 200);

    let r = srv.post("/v2/systemsharedmemory/unregister", "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(status(&srv, None), (200, json!([])));
    srv.stop().unwrap();
}

#[test]
fn without_allow_client_shm_registering_is_refused() {
    let md = ModelDir::new(1);
    let srv = Server::start(md.args());
    let obj = ShmObject::new(64);
    let r = register(&srv, "r", &obj.key(), 0, 64);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.error().contains("--allow-client-shm"), "{}", r.body);
    assert_eq!(status(&srv, None), (200, json!([])));
    let (_, meta) = srv.get("/v2");
    assert!(!meta.contains("system_shared_memory"), "{meta}");
    srv.stop().unwrap();
}

#[test]
fn inputs_from_shared_memory_score_as_the_binary_request() {
    let md = ModelDir::new(2);
    let srv = Server::start(shm_args(&md));
    let mut rng = Lcg(21);
    let s = samples(&mut rng, 7);
    let want = reference(&md.model, &s);
    let obj = ShmObject::new(1 << 16);
    // the region starts 512 bytes into the object, the tensors further in the region
    let offs = write_tensors(&obj, 512, &s);
    assert_eq!(register(&srv, "in", &obj.key(), 512, 8192).status, 200);

    let req = shm_request(&s, "in", offs, json!([{"name": "score"}]));
    let r = srv.post(&infer_path(), &req.to_string());
    let got = r.scores();
    assert_close(&got, &want);
    // the same batch in the body: the same numbers, bit for bit
    assert_eq!(got, binary_scores(&srv, &s));
    let m = srv.metrics();
    assert_eq!(metric(&m, "dlrs_shm_inputs_total", ""), Some(3.0), "{m}");

    // one input from shared memory, the others in JSON, offset omitted (0)
    let t = le_tensors(&s);
    obj.write(512, &t[2]);
    let mut req = v2_request(&s, None);
    req["inputs"][2]
        .as_object_mut()
        .unwrap()
        .remove("data")
        .unwrap();
    req["inputs"][2]["parameters"] =
        json!({"shared_memory_region": "in", "shared_memory_byte_size": t[2].len()});
    assert_close(&srv.post(&infer_path(), &req.to_string()).scores(), &want);

    // the client rewrites the region between requests: the next request sees the new data
    let s2 = samples(&mut rng, 7);
    let offs2 = write_tensors(&obj, 512, &s2);
    let req = shm_request(&s2, "in", offs2, json!([{"name": "score"}]));
    assert_close(
        &srv.post(&infer_path(), &req.to_string()).scores(),
        &reference(&md.model, &s2),
    );
    srv.stop().unwrap();
}

#[test]
fn the_output_is_written_to_shared_memory() {
    let md = ModelDir::new(3);
    let srv = Server::start(shm_args(&md));
    let mut rng = Lcg(5);
    let s = samples(&mut rng, 5);
    let want = reference(&md.model, &s);
    let obj = ShmObject::new(4096);
    let offs = write_tensors(&obj, 0, &s);
    assert_eq!(register(&srv, "io", &obj.key(), 0, 4096).status, 200);

    for (k, binary) in [false, true].into_iter().enumerate() {
        let out_at = 3000 + 100 * k;
        // room for more than the 5 scores
        let output = json!([{"name": "score", "parameters": {"binary_data": binary,
            "shared_memory_region": "io", "shared_memory_offset": out_at, "shared_memory_byte_size": 64}}]);
        let r = srv.post(
            &infer_path(),
            &shm_request(&s, "io", offs, output).to_string(),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        let out = &v["outputs"][0];
        assert_eq!(out["name"], "score");
        assert_eq!(out["datatype"], "FP32");
        assert_eq!(out["shape"], json!([5, 1]));
        assert!(out.get("data").is_none(), "{v}");
        assert_eq!(
            out["parameters"],
            json!({"shared_memory_region": "io", "shared_memory_offset": out_at, "shared_memory_byte_size": 64})
        );
        assert_close(&le_f32s(&obj.read(out_at, 20)), &want);
    }
    srv.stop().unwrap();
}

/// Posts `req` and checks it is a 400 whose error contains every one of `names`.
fn assert_400(srv: &Server, path: &str, req: &str, names: &[&str]) {
    let r = srv.post(path, req);
    assert_eq!(r.status, 400, "{req}: {}", r.body);
    let e = r.error();
    for n in names {
        assert!(e.contains(n), "error for {req} does not name {n}: {e}");
    }
}

#[test]
fn bad_registrations_and_requests_are_400s_naming_the_field() {
    let md = ModelDir::new(4);
    let srv = Server::start(shm_args(&md));
    let mut rng = Lcg(9);
    let s = samples(&mut rng, 3);
    let want = reference(&md.model, &s);
    let t = le_tensors(&s);
    let obj = ShmObject::new(1024);
    let offs = write_tensors(&obj, 0, &s);
    let reg = |key: &str, offset: usize, size: usize| {
        json!({"key": key, "offset": offset, "byte_size": size}).to_string()
    };
    let reg_path = |r: &str| format!("/v2/systemsharedmemory/region/{r}/register");

    // registration
    let missing = format!("/dlrs-serve-test-{}-missing", std::process::id());
    assert_400(
        &srv,
        &reg_path("a"),
        &reg(&missing, 0, 8),
        &["\"a\"", &missing, "no such"],
    );
    for key in ["no-slash", "/a/b", "/../etc/passwd", "/..", "/"] {
        assert_400(
            &srv,
            &reg_path("a"),
            &reg(key, 0, 8),
            &["\"a\"", "key", "/NAME"],
        );
    }
    assert_400(
        &srv,
        &reg_path("a"),
        &reg(&obj.key(), 1000, 25),
        &["\"a\"", "offset 1000", "byte_size 25", "1024 bytes"],
    );
    assert_400(
        &srv,
        &reg_path("a"),
        &reg(&obj.key(), 0, 0),
        &["\"a\"", "byte_size"],
    );
    assert_400(&srv, &reg_path("a"), r#"{"key": "/x"}"#, &["byte_size"]);
    assert_400(
        &srv,
        &reg_path("a"),
        r#"{"key": "/x", "byte_size": 8, "bytes": 1}"#,
        &["bytes"],
    );
    // a symbolic link in /dev/shm is not followed
    let link = PathBuf::from("/dev/shm").join(format!("{}-link", obj.name));
    std::os::unix::fs::symlink(&obj.path, &link).unwrap();
    let link_key = format!("/{}-link", obj.name);
    let r = srv.post(&reg_path("a"), &reg(&link_key, 0, 8));
    std::fs::remove_file(&link).unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().contains("symbolic link"), "{}", r.body);
    // a duplicate name
    assert_eq!(register(&srv, "r", &obj.key(), 0, 1024).status, 200);
    assert_400(
        &srv,
        &reg_path("r"),
        &reg(&obj.key(), 0, 8),
        &["\"r\"", "already registered"],
    );
    assert_eq!(status(&srv, None).1.as_array().unwrap().len(), 1);
    // unknown names: status is 404 naming it; unregistering one is a no-op (as in Triton)
    let (st, body) = srv.get("/v2/systemsharedmemory/region/nope/status");
    assert_eq!(st, 404, "{body}");
    assert!(error_of(&body).contains("\"nope\""), "{body}");
    let r = srv.post("/v2/systemsharedmemory/region/nope/unregister", "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(status(&srv, None).1.as_array().unwrap().len(), 1);

    // inference
    let ok = shm_request(&s, "r", offs, json!([{"name": "score"}]));
    assert_close(&srv.post(&infer_path(), &ok.to_string()).scores(), &want);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = ok.clone();
        f(&mut v);
        v.to_string()
    };
    let p = infer_path();
    // unknown region
    let req = with(&|v| v["inputs"][0]["parameters"]["shared_memory_region"] = json!("nope"));
    assert_400(
        &srv,
        &p,
        &req,
        &[
            "inputs[0] \"dense\"",
            "\"shared_memory_region\"",
            "\"nope\"",
        ],
    );
    // range past the region's end
    let req = with(&|v| v["inputs"][1]["parameters"]["shared_memory_offset"] = json!(1020));
    assert_400(
        &srv,
        &p,
        &req,
        &[
            "inputs[1] \"lengths\"",
            "\"shared_memory_offset\" 1020",
            "\"shared_memory_byte_size\"",
            "1024 bytes",
        ],
    );
    let req = with(&|v| v["inputs"][1]["parameters"]["shared_memory_offset"] = json!(u64::MAX));
    assert_400(
        &srv,
        &p,
        &req,
        &["inputs[1] \"lengths\"", "\"shared_memory_offset\""],
    );
    // a byte size not matching the shape
    let req =
        with(&|v| v["inputs"][2]["parameters"]["shared_memory_byte_size"] = json!(t[2].len() - 8));
    assert_400(
        &srv,
        &p,
        &req,
        &[
            "inputs[2] \"indices\"",
            "shared_memory_byte_size",
            "bytes expected",
        ],
    );
    let req = with(&|v| v["inputs"][0]["shape"] = json!([3, 5]));
    assert_400(&srv, &p, &req, &["inputs[0] \"dense\"", "shape"]);
    // data and a region both
    let req = with(&|v| v["inputs"][0]["data"] = json!([1.0]));
    assert_400(
        &srv,
        &p,
        &req,
        &[
            "inputs[0] \"dense\"",
            "\"data\"",
            "\"shared_memory_region\"",
        ],
    );
    let req = with(&|v| v["inputs"][0]["parameters"]["binary_data_size"] = json!(4));
    assert_400(
        &srv,
        &p,
        &req,
        &[
            "inputs[0] \"dense\"",
            "\"binary_data_size\"",
            "\"shared_memory_region\"",
        ],
    );
    // a region without a size, a size without a region, mistyped parameters
    let req = with(&|v| {
        v["inputs"][0]["parameters"]
            .as_object_mut()
            .unwrap()
            .remove("shared_memory_byte_size");
    });
    assert_400(
        &srv,
        &p,
        &req,
        &["inputs[0] \"dense\"", "\"shared_memory_byte_size\""],
    );
    let req = with(&|v| {
        v["inputs"][2]["parameters"]
            .as_object_mut()
            .unwrap()
            .remove("shared_memory_region");
    });
    assert_400(
        &srv,
        &p,
        &req,
        &["inputs[2] \"indices\"", "without \"shared_memory_region\""],
    );
    let req = with(&|v| v["inputs"][0]["parameters"]["shared_memory_region"] = json!(7));
    assert_400(
        &srv,
        &p,
        &req,
        &["inputs[0] \"dense\"", "\"shared_memory_region\"", "string"],
    );
    let req = with(&|v| v["inputs"][0]["parameters"]["shared_memory_offset"] = json!(-1));
    assert_400(
        &srv,
        &p,
        &req,
        &[
            "inputs[0] \"dense\"",
            "\"shared_memory_offset\"",
            "non-negative",
        ],
    );
    // an output range too small for the scores, or past the region
    let req = with(&|v| v["outputs"][0]["parameters"] = at("r", 0, 8));
    assert_400(
        &srv,
        &p,
        &req,
        &[
            "outputs[0] \"score\"",
            "\"shared_memory_byte_size\" 8",
            "12 bytes",
        ],
    );
    let req = with(&|v| v["outputs"][0]["parameters"] = at("r", 1020, 12));
    assert_400(
        &srv,
        &p,
        &req,
        &["outputs[0] \"score\"", "\"shared_memory_offset\" 1020"],
    );

    // the data in shared memory is checked like binary data: ids in range, dense finite,
    // lengths summing to the ids
    let mut bad_ids = t[2].clone();
    bad_ids[..8].copy_from_slice(&1_000_000i64.to_le_bytes());
    obj.write(offs[2], &bad_ids);
    assert_400(
        &srv,
        &p,
        &ok.to_string(),
        &[
            "inputs[2] \"indices\"",
            "indices[0] = 1000000",
            "out of range",
        ],
    );
    // the last id, in a later bag: one past its table's last row
    let cfg = config();
    let j = t[2].len() / 8 - 1;
    let (sample, table) = (0..s.len())
        .flat_map(|i| (0..cfg.n_tables()).map(move |k| (i, k)))
        .rfind(|&(i, k)| !s[i].sparse[k].is_empty())
        .unwrap();
    assert!(sample > 0 || table > 0, "the last id is in the first bag");
    let rows = cfg.tables[table];
    let mut bad_ids = t[2].clone();
    bad_ids[8 * j..].copy_from_slice(&(rows as i64).to_le_bytes());
    obj.write(offs[2], &bad_ids);
    assert_400(
        &srv,
        &p,
        &ok.to_string(),
        &[&format!(
            "inputs[2] \"indices\": indices[{j}] = {rows} (sample {sample}, table {table}): out of range for table {table} with {rows} rows"
        )],
    );
    obj.write(offs[2], &t[2]);
    obj.write(offs[0], &f32::NAN.to_le_bytes());
    assert_400(
        &srv,
        &p,
        &ok.to_string(),
        &["inputs[0] \"dense\"", "not a finite number"],
    );
    obj.write(offs[0], &t[0]);
    let mut lengths = t[1].clone();
    let first = i32::from_le_bytes(lengths[..4].try_into().unwrap());
    lengths[..4].copy_from_slice(&(first + 1).to_le_bytes());
    obj.write(offs[1], &lengths);
    assert_400(
        &srv,
        &p,
        &ok.to_string(),
        &["inputs[2] \"indices\"", "lengths sum to"],
    );
    obj.write(offs[1], &t[1]);

    // still serving, from the same region
    assert_close(&srv.post(&infer_path(), &ok.to_string()).scores(), &want);
    assert_close(&srv.infer(&s).scores(), &want);
    srv.stop().unwrap();
}

#[test]
fn at_most_64_regions() {
    let md = ModelDir::new(5);
    let srv = Server::start(shm_args(&md));
    let obj = ShmObject::new(4096);
    for i in 0..64 {
        let r = register(&srv, &format!("r{i}"), &obj.key(), i * 8, 8);
        assert_eq!(r.status, 200, "{i}: {}", r.body);
    }
    let r = register(&srv, "r64", &obj.key(), 0, 8);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.error().contains("\"r64\"") && r.error().contains("64 regions"),
        "{}",
        r.body
    );
    assert_eq!(
        srv.post("/v2/systemsharedmemory/region/r3/unregister", "")
            .status,
        200
    );
    assert_eq!(register(&srv, "r64", &obj.key(), 0, 8).status, 200);
    srv.stop().unwrap();
}

#[test]
fn a_region_unregistered_and_unlinked_mid_flight_stays_mapped_until_answered() {
    let md = ModelDir::new(6);
    let gate = Gate::new();
    let mut args = shm_args(&md);
    args.hooks = gate.hook();
    let srv = Server::start(args);
    let mut rng = Lcg(8);
    let s = samples(&mut rng, 4);
    let want = reference(&md.model, &s);
    let obj = ShmObject::new(2048);
    let offs = write_tensors(&obj, 0, &s);
    assert_eq!(register(&srv, "r", &obj.key(), 0, 2048).status, 200);
    let output = json!([{"name": "score", "parameters": at("r", 1024, 16)}]);
    let req = shm_request(&s, "r", offs, output).to_string();
    std::thread::scope(|sc| {
        let pending = sc.spawn(|| srv.post(&infer_path(), &req));
        // the request is parsed and its batch held before the forward pass
        gate.wait_entered(1);
        assert_eq!(
            srv.post("/v2/systemsharedmemory/unregister", "").status,
            200
        );
        std::fs::remove_file(&obj.path).unwrap();
        assert_eq!(status(&srv, None), (200, json!([])));
        gate.open();
        let r = pending.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        // written through the server's mapping, still alive, into the (unlinked) object
        assert_close(&le_f32s(&obj.read(1024, 16)), &want);
    });
    // the region is gone for new requests; the server keeps serving
    assert_400(
        &srv,
        &infer_path(),
        &req,
        &["no system shared memory region \"r\""],
    );
    assert_close(&srv.infer(&s).scores(), &want);
    srv.stop().unwrap();
}
