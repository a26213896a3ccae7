//! Helpers of the server tests: a tiny model in a tempdir, a server on 127.0.0.1:0 driven by a
//! oneshot shutdown, a blocking HTTP client, request builders and the reference forward pass.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use dlrs_model::{Batch, DlrmConfig, Executor, Model, Sample, Workspace};
use dlrs_serve::ServeConfig;
use serde_json::{Value, json};

pub const NAME: &str = "tiny";

pub fn config() -> DlrmConfig {
    DlrmConfig::from_json_str(
        r#"{"arch_mlp_bot": "4-8-4", "arch_mlp_top": "6-1", "arch_embedding_size": "10-20-5",
            "arch_sparse_feature_size": 4, "arch_interaction_op": "dot"}"#,
    )
    .unwrap()
}

/// A tempdir holding `<tmp>/tiny` with a random model of `seed`.
pub struct ModelDir {
    pub tmp: tempfile::TempDir,
    pub model: Model,
}

impl ModelDir {
    pub fn new(seed: u64) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let model = Model::random(config(), seed).unwrap();
        model.save(&tmp.path().join(NAME)).unwrap();
        ModelDir { tmp, model }
    }
    pub fn dir(&self) -> std::path::PathBuf {
        self.tmp.path().join(NAME)
    }
    pub fn args(&self) -> ServeConfig {
        let mut a = ServeConfig::new(self.dir());
        a.watch_interval_ms = 0;
        a
    }
}

/// Replaces the model files in `dir` (each atomically, by rename) with a random model of `seed`.
pub fn replace_model(dir: &Path, seed: u64) -> Model {
    let m = Model::random(config(), seed).unwrap();
    m.save(dir).unwrap();
    m
}

/// Writes `text` to `dir/file` by an atomic rename.
pub fn atomic_write(dir: &Path, file: &str, text: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

/// A server running on its own thread and tokio runtime.
pub struct Server {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), dlrs_serve::ServeError>>>,
    pub agent: ureq::Agent,
}

impl Server {
    pub fn start(args: ServeConfig) -> Server {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            // the server's own runtime (its HTTP threads' names and slices)
            let rt = dlrs_serve::http_runtime(&args).unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                dlrs_serve::serve(args, listener, async move {
                    let _ = rx.await;
                })
                .await
            })
        });
        let addr = addr_rx.recv().unwrap();
        let s = Server {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
            agent: agent(),
        };
        // wait until the model is loaded and the server answers
        let t0 = Instant::now();
        while s.get("/v2/health/live").0 != 200 {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "server did not come up"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        match self.agent.get(self.url(path)).call() {
            Ok(mut r) => (r.status().as_u16(), r.body_mut().read_to_string().unwrap()),
            Err(_) => (0, String::new()),
        }
    }

    pub fn post(&self, path: &str, body: &str) -> Resp {
        self.post_with(path, body, &[])
    }

    pub fn post_with(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> Resp {
        let mut req = self.agent.post(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut r = req.send(body).expect("request failed");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let retry_after = header("retry-after");
        let request_id = header("x-request-id");
        let status = r.status().as_u16();
        let body = r.body_mut().read_to_string().unwrap();
        Resp {
            status,
            retry_after,
            request_id,
            body,
        }
    }

    pub fn infer(&self, samples: &[Sample]) -> Resp {
        self.post(
            &format!("/v2/models/{NAME}/infer"),
            &v2_request(samples, None).to_string(),
        )
    }

    pub fn metrics(&self) -> String {
        let (s, body) = self.get("/metrics");
        assert_eq!(s, 200);
        body
    }

    /// Triggers shutdown without waiting.
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Triggers shutdown and waits for `serve` to return.
    pub fn stop(mut self) -> Result<(), dlrs_serve::ServeError> {
        self.trigger_shutdown();
        self.thread.take().unwrap().join().unwrap()
    }

    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.trigger_shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub retry_after: Option<String>,
    /// the `x-request-id` header
    pub request_id: Option<String>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no \"error\" in {}", self.body))
            .to_string()
    }
    /// The scores of a /v2 answer.
    pub fn scores(&self) -> Vec<f32> {
        assert_eq!(self.status, 200, "{}", self.body);
        let v = self.json();
        let out = &v["outputs"][0];
        assert_eq!(out["name"], "score");
        assert_eq!(out["datatype"], "FP32");
        f32s(&out["data"])
    }
    /// The scores of a /v1 answer.
    pub fn v1_scores(&self) -> Vec<f32> {
        assert_eq!(self.status, 200, "{}", self.body);
        f32s(&self.json()["scores"])
    }
}

/// A JSON array of numbers as f32s.
fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// A deterministic pseudo-random generator (tests need no rand).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `n` random samples for `config()` (some bags empty).
pub fn samples(rng: &mut Lcg, n: usize) -> Vec<Sample> {
    let cfg = config();
    (0..n)
        .map(|_| Sample {
            dense: (0..cfg.n_dense())
                .map(|_| rng.below(2000) as f32 / 1000.0 - 1.0)
                .collect(),
            sparse: cfg
                .tables
                .iter()
                .map(|&rows| {
                    (0..rng.below(4))
                        .map(|_| rng.below(rows as u64) as u32)
                        .collect()
                })
                .collect(),
            label: None,
        })
        .collect()
}

/// The reference: `model.forward` on exactly these samples as one batch.
pub fn reference(model: &Model, samples: &[Sample]) -> Vec<f32> {
    let mut b = Batch::empty(&model.config);
    for s in samples {
        b.push(&model.config, s).unwrap();
    }
    model
        .forward(&b, &mut Workspace::default(), &Executor::new(1).unwrap())
        .unwrap()
        .to_vec()
}

pub fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-6,
            "score {i}: got {g}, want {w} (all: {got:?} vs {want:?})"
        );
    }
}

/// The KServe v2 request for `samples`, flat data.
pub fn v2_request(samples: &[Sample], id: Option<&str>) -> Value {
    let cfg = config();
    let b = samples.len();
    let dense: Vec<f32> = samples
        .iter()
        .flat_map(|s| s.dense.iter().copied())
        .collect();
    let lengths: Vec<i32> = samples
        .iter()
        .flat_map(|s| s.sparse.iter().map(|bag| bag.len() as i32))
        .collect();
    let indices: Vec<i64> = samples
        .iter()
        .flat_map(|s| s.sparse.iter().flatten().map(|&i| i as i64))
        .collect();
    let mut req = json!({
        "inputs": [
            {"name": "dense", "datatype": "FP32", "shape": [b, cfg.n_dense()], "data": dense},
            {"name": "lengths", "datatype": "INT32", "shape": [b, cfg.n_tables()], "data": lengths},
            {"name": "indices", "datatype": "INT64", "shape": [indices.len()], "data": indices},
        ],
        "outputs": [{"name": "score"}],
    });
    if let Some(id) = id {
        req["id"] = json!(id);
    }
    req
}

/// The /v1 predict request for `samples`.
pub fn v1_request(samples: &[Sample]) -> Value {
    json!({"samples": samples.iter().map(|s| json!({"dense": s.dense, "sparse": s.sparse})).collect::<Vec<_>>()})
}

/// A value of a metric line `name{labels} value` (labels matched as a substring).
pub fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A test hook that holds every batch at a gate until it is opened, counting arrivals and
/// keeping each batch's dense values.
#[derive(Default)]
pub struct Gate {
    state: Mutex<GateState>,
    cv: Condvar,
}

#[derive(Default)]
struct GateState {
    open: bool,
    entered: usize,
    seen: Vec<Vec<f32>>,
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate::default())
    }
    pub fn hook(self: &Arc<Self>) -> dlrs_serve::Hooks {
        let g = Arc::clone(self);
        dlrs_serve::Hooks {
            before_forward: Some(Arc::new(move |b: &Batch| {
                let mut st = g.state.lock().unwrap();
                st.entered += 1;
                st.seen.push(b.dense().to_vec());
                g.cv.notify_all();
                while !st.open {
                    st = g.cv.wait(st).unwrap();
                }
            })),
            ..Default::default()
        }
    }
    pub fn wait_entered(&self, n: usize) {
        let mut st = self.state.lock().unwrap();
        let t0 = Instant::now();
        while st.entered < n {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no batch reached the gate"
            );
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(50))
                .unwrap()
                .0;
        }
    }
    pub fn open(&self) {
        self.state.lock().unwrap().open = true;
        self.cv.notify_all();
    }
    pub fn seen(&self) -> Vec<Vec<f32>> {
        self.state.lock().unwrap().seen.clone()
    }
}

/// Polls `f` until it is true (at most 10 s).
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The three input tensors of `samples` as the binary tensor data extension (and system
/// shared memory) carries them: dense FP32, lengths INT32, indices INT64, little-endian.
pub fn le_tensors(samples: &[Sample]) -> [Vec<u8>; 3] {
    let dense = samples
        .iter()
        .flat_map(|s| s.dense.iter().flat_map(|v| v.to_le_bytes()))
        .collect();
    let lengths = samples
        .iter()
        .flat_map(|s| s.sparse.iter().flat_map(|b| (b.len() as i32).to_le_bytes()))
        .collect();
    let indices = samples
        .iter()
        .flat_map(|s| {
            s.sparse
                .iter()
                .flatten()
                .flat_map(|&i| (i as i64).to_le_bytes())
        })
        .collect();
    [dense, lengths, indices]
}
