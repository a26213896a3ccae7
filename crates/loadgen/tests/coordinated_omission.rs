//! Latency counts from the scheduled send time: when the server (or the twin's compute)
//! stalls, every query that arrived during the stall carries its wait. A generator that
//! measured from the actual send (coordinated omission) would see one slow query.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use dlrs_loadgen::dist::QuerySize;
use dlrs_loadgen::driver::Measure;
use dlrs_loadgen::http::Endpoint;
use dlrs_loadgen::payload::{Protocol, Workload};
use dlrs_loadgen::stats::Report;
use dlrs_loadgen::twin::{self, Batching};
use dlrs_model::synth::IdDist;
use serde_json::{Value, json};

const STALL_AFTER: Duration = Duration::from_millis(300);
const STALL: Duration = Duration::from_millis(500);

/// Answers the first request that comes `STALL_AFTER` after `t0` only after `STALL`;
/// every other request at once.
#[derive(Clone)]
struct Fake {
    t0: Arc<Mutex<Option<Instant>>>,
    stalled: Arc<Mutex<bool>>,
}

impl Fake {
    fn should_stall(&self) -> bool {
        let t0 = *self.t0.lock().unwrap();
        let mut s = self.stalled.lock().unwrap();
        if !*s && t0.is_some_and(|t| t.elapsed() >= STALL_AFTER) {
            *s = true;
            return true;
        }
        false
    }
}

async fn metadata() -> axum::Json<Value> {
    axum::Json(json!({
        "name": "fake", "versions": ["1"], "platform": "dlrs",
        "inputs": [
            {"name": "dense", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "lengths", "datatype": "INT32", "shape": [-1, 3]},
            {"name": "indices", "datatype": "INT64", "shape": [-1]},
        ],
        "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1, 1]}],
    }))
}

async fn infer(State(f): State<Fake>, body: axum::body::Bytes) -> axum::Json<Value> {
    let req: Value = serde_json::from_slice(&body).unwrap();
    let b = req["inputs"][0]["shape"][0].as_u64().unwrap() as usize;
    if f.should_stall() {
        tokio::time::sleep(STALL).await;
    }
    axum::Json(
        json!({"model_name": "fake", "outputs": [{"name": "score", "datatype": "FP32", "shape": [b, 1], "data": vec![0.5f32; b]}]}),
    )
}

fn workload() -> Workload {
    Workload {
        query_size: QuerySize::Fixed(4),
        dist: IdDist::Uniform,
        ids_per_table: 2,
        pool: 64,
        seed: 3,
    }
}

/// What every stalled run must show: the queries that arrived during the stall waited.
fn assert_stall_is_measured(r: &Report, qps: f64) {
    assert_eq!(r.errors.total, 0, "{r:?}");
    let l = &r.latency_ms;
    let max = l.max.unwrap();
    // the first query behind the stall waited about STALL
    assert!(
        max >= 0.8 * STALL.as_secs_f64() * 1e3,
        "max latency {max} ms; the {} ms stall is hidden",
        STALL.as_millis()
    );
    // about STALL * qps queries arrived during the stall (~100 of ~300): the queries
    // arriving in its first 60% waited at least 40% of it, more than 5% of all queries
    let p95 = l.p95.unwrap();
    assert!(
        p95 >= 0.3 * STALL.as_secs_f64() * 1e3,
        "p95 {p95} ms: the queries queued behind the stall are not counted"
    );
    assert!(r.queries as f64 > 0.5 * qps * 1.5, "{} queries", r.queries);
}

#[test]
fn http_latency_counts_the_wait_behind_a_stalled_connection() {
    let fake = Fake {
        t0: Arc::new(Mutex::new(None)),
        stalled: Arc::new(Mutex::new(false)),
    };
    let app = Router::new()
        .route("/v2/models/fake", get(metadata))
        .route("/v2/models/fake/infer", post(infer))
        .with_state(fake.clone());
    let (rt, addr) = common::serve_app(app, 2);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        common::config().to_json_string(),
    )
    .unwrap();
    let ep = Arc::new(
        rt.block_on(Endpoint::resolve(
            &format!("http://{addr}"),
            "fake",
            Protocol::V2,
        ))
        .unwrap(),
    );
    let cfg = rt.block_on(ep.model_config(Some(dir.path()))).unwrap();
    let bodies = Arc::new(workload().bodies(&cfg, Protocol::V2, false).unwrap());

    *fake.t0.lock().unwrap() = Some(Instant::now());
    let qps = 200.0;
    // one connection: while it is stalled, nothing else can be sent
    let r = dlrs_loadgen::http::measure(
        &rt,
        &ep,
        1,
        &bodies,
        &Measure {
            qps,
            duration_s: 1.5,
            drain_s: 5.0,
            seed: 1,
            slice: Duration::ZERO,
            step: None,
        },
    )
    .unwrap();
    assert!(
        *fake.stalled.lock().unwrap(),
        "the fake server never stalled"
    );
    assert_stall_is_measured(&r, qps);
}

/// The tiny model as a served version, and the workload's queries.
fn twin_setup() -> (Arc<dlrs_serve::Version>, Arc<Vec<Arc<dlrs_model::Batch>>>) {
    let cfg = common::config();
    let queries = workload()
        .batches(&cfg)
        .unwrap()
        .into_iter()
        .map(Arc::new)
        .collect();
    let model = dlrs_model::Model::random(cfg, 3).unwrap();
    (
        Arc::new(dlrs_serve::Version { model, number: 1 }),
        Arc::new(queries),
    )
}

/// Batches of one query on one instance: a stall is one forward pass that takes long.
fn one_query_batches() -> Batching {
    Batching {
        queue: dlrs_serve::QueueConfig {
            max_batch: 4,
            max_queue_delay_us: 0,
            max_queue: 1 << 20,
            max_queue_burst: 0,
            burst_cooldown_ms: 100,
            max_queue_wait_ms: 0,
            idle_spin_us: 0,
        },
        deadline: Duration::from_secs(60),
        instances: 1,
        threads: 1,
        controller: None,
    }
}

/// Hooks that sleep `stall` in the first forward pass that starts `after` the start.
fn stall_once(after: Duration, stall: Duration) -> dlrs_serve::Hooks {
    let t0 = Instant::now();
    let once = std::sync::atomic::AtomicBool::new(false);
    dlrs_serve::Hooks {
        before_forward: Some(Arc::new(move |_: &dlrs_model::Batch| {
            if t0.elapsed() >= after && !once.swap(true, std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(stall);
            }
        })),
        ..Default::default()
    }
}

#[test]
fn twin_latency_counts_the_wait_behind_a_stalled_batch() {
    let (version, queries) = twin_setup();
    let qps = 200.0;
    let r = twin::measure(
        &version,
        &queries,
        &one_query_batches(),
        &stall_once(STALL_AFTER, STALL),
        &Measure {
            qps,
            duration_s: 1.5,
            drain_s: 5.0,
            seed: 1,
            slice: Duration::ZERO,
            step: None,
        },
    )
    .unwrap();
    assert_stall_is_measured(&r, qps);
}

#[test]
fn unanswered_queries_time_out_after_the_drain() {
    let (version, queries) = twin_setup();
    // compute hangs for 3 s once, the drain is 0.5 s: the queries behind it time out
    let started = Instant::now();
    let r = twin::measure(
        &version,
        &queries,
        &one_query_batches(),
        &stall_once(Duration::from_millis(100), Duration::from_secs(3)),
        &Measure {
            qps: 100.0,
            duration_s: 1.0,
            drain_s: 0.5,
            seed: 2,
            slice: Duration::ZERO,
            step: None,
        },
    )
    .unwrap();
    let took = started.elapsed();
    assert!(r.errors.timeout > 0, "{r:?}");
    assert_eq!(r.errors.timeout + r.ok, r.queries);
    // bounded: the drain ends the run, the hung batch is only waited for, not its backlog
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

/// The twin answers like the server: 503 when the queue is full, 504 past the deadline.
#[test]
fn twin_refuses_over_the_queue_bound_and_expires_past_the_deadline() {
    let (version, queries) = twin_setup();
    let mut b = one_query_batches();
    b.queue.max_queue = 8;
    b.deadline = Duration::from_millis(200);
    let r = twin::measure(
        &version,
        &queries,
        &b,
        &stall_once(Duration::from_millis(100), Duration::from_millis(600)),
        &Measure {
            qps: 200.0,
            duration_s: 1.0,
            drain_s: 2.0,
            seed: 3,
            slice: Duration::ZERO,
            step: None,
        },
    )
    .unwrap();
    let by = &r.errors.by_status;
    assert!(by.get("503").copied().unwrap_or(0) > 0, "{r:?}");
    assert!(by.get("504").copied().unwrap_or(0) > 0, "{r:?}");
    assert!(r.ok > 0, "{r:?}");
}
