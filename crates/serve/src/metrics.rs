//! Prometheus metrics, kept in a recorder owned by the server (not the process-global one,
//! so several servers in one process, as in tests, keep separate counts).

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

static META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Seconds. Finer between 0.5 and 25 ms, where a recommendation model's batches and p99
/// targets lie (RMC1: ~1 ms a batch, a 10 ms target): a tail that moves from 5 to 10 ms
/// shows in the buckets.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.000_75, 0.001, 0.001_5, 0.002, 0.003, 0.004, 0.005,
    0.007_5, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    pub queue_depth: Gauge,
    pub inflight: Gauge,
    pub batch_size: Histogram,
    pub queue_wait: Histogram,
    pub compute: Histogram,
    pub expired: Counter,
    pub model_version: Gauge,
    pub connections: Gauge,
    pub connections_refused: Counter,
    pub shm_inputs: Counter,
    /// moves of the live scheduler between parallelisms
    pub control_moves: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut b = PrometheusBuilder::new();
        for (name, buckets) in [
            ("dlrs_batch_size", BATCH_BUCKETS),
            ("dlrs_queue_wait_seconds", LATENCY_BUCKETS),
            ("dlrs_compute_seconds", LATENCY_BUCKETS),
            ("dlrs_request_duration_seconds", LATENCY_BUCKETS),
        ] {
            b = b
                .set_buckets_for_metric(Matcher::Full(name.into()), buckets)
                .expect("non-empty buckets");
        }
        let recorder = b.build_recorder();
        let handle = recorder.handle();
        let describe = [
            (
                "dlrs_requests_total",
                None,
                "HTTP requests answered, by endpoint (route) and status",
            ),
            (
                "dlrs_request_duration_seconds",
                Some(Unit::Seconds),
                "HTTP request duration by endpoint",
            ),
            (
                "dlrs_queue_depth_samples",
                None,
                "samples admitted and waiting to be computed",
            ),
            (
                "dlrs_inflight_requests",
                None,
                "inference requests being handled",
            ),
            ("dlrs_batch_size", None, "samples per computed batch"),
            (
                "dlrs_queue_wait_seconds",
                Some(Unit::Seconds),
                "time from admission to the start of computation",
            ),
            (
                "dlrs_compute_seconds",
                Some(Unit::Seconds),
                "forward pass time per batch",
            ),
            (
                "dlrs_expired_requests_total",
                None,
                "requests dropped unanswered by their deadline or client",
            ),
            ("dlrs_model_reloads_total", None, "model reloads by result"),
            (
                "dlrs_model_version",
                None,
                "version of the model being served",
            ),
            ("dlrs_connections", None, "open HTTP connections"),
            (
                "dlrs_connections_refused_total",
                None,
                "connections answered 503 at once (over --max-connections)",
            ),
            (
                "dlrs_shm_inputs_total",
                None,
                "inference inputs read from system shared memory",
            ),
            (
                "dlrs_control_moves_total",
                None,
                "changes of threads per batch by the --target-p99-ms scheduler",
            ),
            (
                "dlrs_connections_timed_out_total",
                None,
                "connections closed by a timeout, by phase (header: --header-timeout-ms, idle: --idle-timeout-ms)",
            ),
        ];
        for (name, unit, help) in describe {
            recorder.describe_counter(name.into(), unit, help.into());
        }
        let gauge = |n: &'static str| recorder.register_gauge(&Key::from_static_name(n), &META);
        let hist = |n: &'static str| recorder.register_histogram(&Key::from_static_name(n), &META);
        Metrics {
            queue_depth: gauge("dlrs_queue_depth_samples"),
            inflight: gauge("dlrs_inflight_requests"),
            batch_size: hist("dlrs_batch_size"),
            queue_wait: hist("dlrs_queue_wait_seconds"),
            compute: hist("dlrs_compute_seconds"),
            expired: recorder
                .register_counter(&Key::from_static_name("dlrs_expired_requests_total"), &META),
            model_version: gauge("dlrs_model_version"),
            connections: gauge("dlrs_connections"),
            connections_refused: recorder.register_counter(
                &Key::from_static_name("dlrs_connections_refused_total"),
                &META,
            ),
            shm_inputs: recorder
                .register_counter(&Key::from_static_name("dlrs_shm_inputs_total"), &META),
            control_moves: recorder
                .register_counter(&Key::from_static_name("dlrs_control_moves_total"), &META),
            recorder,
            handle,
        }
    }

    /// Counts one answered request.
    pub fn request(&self, endpoint: &str, status: u16, took: Duration) {
        let ep = Label::new("endpoint", endpoint.to_string());
        let key = Key::from_parts(
            "dlrs_requests_total",
            vec![ep.clone(), Label::new("status", status.to_string())],
        );
        self.recorder.register_counter(&key, &META).increment(1);
        let key = Key::from_parts("dlrs_request_duration_seconds", vec![ep]);
        self.recorder
            .register_histogram(&key, &META)
            .record(took.as_secs_f64());
    }

    pub fn reload(&self, ok: bool) {
        let key = Key::from_parts(
            "dlrs_model_reloads_total",
            vec![Label::new("result", if ok { "ok" } else { "error" })],
        );
        self.recorder.register_counter(&key, &META).increment(1);
    }

    /// Counts a connection closed by its `phase`'s timeout (`header` or `idle`).
    pub fn connection_timed_out(&self, phase: &'static str) {
        let key = Key::from_parts(
            "dlrs_connections_timed_out_total",
            vec![Label::new("phase", phase)],
        );
        self.recorder.register_counter(&key, &META).increment(1);
    }

    /// Publishes the live scheduler's settings and view (`dlrs_control_*` gauges).
    pub fn control(
        &self,
        cfg: &crate::control::ControlConfig,
        view: &crate::control::View,
        mem: &crate::control::Memory,
    ) {
        let set = |name: &'static str, labels: Vec<Label>, v: f64| {
            let key = Key::from_parts(name, labels);
            self.recorder.register_gauge(&key, &META).set(v);
        };
        let s = &mem.settings;
        set("dlrs_control_target_seconds", vec![], cfg.target());
        set(
            "dlrs_control_threads_per_batch",
            vec![],
            s.threads_per_batch as f64,
        );
        set("dlrs_control_instances", vec![], s.instances as f64);
        set("dlrs_control_max_batch", vec![], s.max_batch as f64);
        set(
            "dlrs_control_delay_seconds",
            vec![],
            s.delay_us as f64 / 1e6,
        );
        set(
            "dlrs_control_wait_bound_seconds",
            vec![],
            s.max_wait.map_or(0.0, |w| w.as_secs_f64()),
        );
        set("dlrs_control_arrivals_per_second", vec![], view.qps);
        set("dlrs_control_query_samples_mean", vec![], view.size_mean);
        if let Some(l) = view.latency_q {
            set("dlrs_control_latency_seconds", vec![], l);
            set("dlrs_control_headroom_seconds", vec![], cfg.target() - l);
        }
        for (i, sv) in view.service.iter().enumerate() {
            let Some(sv) = sv else { continue };
            let p = || vec![Label::new("threads", (i + 1).to_string())];
            set("dlrs_control_seconds_per_sample", p(), sv.per_sample);
            set("dlrs_control_batch_overhead_seconds", p(), sv.overhead);
            set("dlrs_control_correction", p(), mem.correction[i]);
        }
        for pr in &mem.predictions {
            let p = vec![Label::new("threads", pr.threads_per_batch.to_string())];
            let latency = if pr.latency.is_finite() {
                pr.latency
            } else {
                f64::MAX
            };
            set("dlrs_control_predicted_latency_seconds", p.clone(), latency);
            set("dlrs_control_utilization", p, pr.utilization);
        }
    }

    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds recorded histogram samples into their buckets (bounded memory between scrapes).
    pub fn upkeep(&self) {
        self.handle.run_upkeep()
    }
}
