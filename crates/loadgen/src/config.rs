//! The settings of `dlrs loadgen` ([`LoadgenConfig`]) and `dlrs twin` ([`TwinConfig`]), and
//! of the load both send ([`LoadConfig`]), with the defaults of their flags. The flags
//! themselves are defined by the `dlrs` binary; every field here is named after its flag
//! (`ids_per_table` is `--ids-per-table`) and in its unit.

use std::path::PathBuf;
use std::time::Duration;

use dlrs_model::synth::IdDist;
use dlrs_serve::QueueConfig;

use crate::dist::QuerySize;
use crate::driver::Measure;
use crate::error::LoadgenError;
use crate::payload::{Protocol, Workload};
use crate::search::SearchPlan;
use crate::shm::SharedMemory;

/// The load, the same for `dlrs loadgen` and `dlrs twin`. [`LoadConfig::default`] gives the
/// flags' defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadConfig {
    /// `--qps`: Poisson arrival rate, queries per second (with a target: the first rate
    /// tried)
    pub qps: f64,
    /// `--duration`: seconds of arrivals (with a target: of each step)
    pub duration: f64,
    /// `--query-size`: samples per query
    pub query_size: QuerySize,
    /// `--dist`: how ids are drawn over a table's rows
    pub dist: IdDist,
    /// `--ids-per-table`: ids per bag (every sample, every table)
    pub ids_per_table: usize,
    /// `--target-p99-ms`: search for the highest rate whose p99 stays at or under this
    /// (`None`: one measurement at `qps`)
    pub target_p99_ms: Option<f64>,
    /// `--max-steps`: most measurements of a search
    pub max_steps: usize,
    /// `--max-error-rate`: share of a search step's queries that may fail with the step
    /// still meeting the target
    pub max_error_rate: f64,
    /// `--json`: the result as one JSON object on stdout
    pub json: bool,
    /// `--plot`: where to draw the search's curve (`.svg` or `.png`)
    pub plot: Option<PathBuf>,
    /// `--seed`: seed of the arrivals, query sizes and samples
    pub seed: u64,
    /// `--warmup`: seconds of load at `qps` before measuring, not reported
    pub warmup: f64,
    /// `--drain`: longest wait for answers after the last arrival, seconds
    pub drain: f64,
    /// `--pool`: distinct queries generated before the run
    pub pool: usize,
    /// `--step`: the rate changes for a while in each measurement (`None`: constant)
    pub step: Option<crate::dist::LoadStep>,
    /// `--slice-us`: time slice the sending and answering threads ask for, in microseconds
    /// (0: the kernel's)
    pub slice_us: u64,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            qps: 100.0,
            duration: 10.0,
            query_size: QuerySize::Normal {
                mu: 165.0,
                sigma: 16.0,
            },
            dist: IdDist::Uniform,
            ids_per_table: 1,
            target_p99_ms: None,
            max_steps: 12,
            max_error_rate: 0.0,
            json: false,
            plot: None,
            seed: 1,
            warmup: 1.0,
            drain: 5.0,
            pool: 2048,
            step: None,
            slice_us: 0,
        }
    }
}

impl LoadConfig {
    /// `slice_us` as a duration.
    pub fn slice(&self) -> Duration {
        Duration::from_micros(self.slice_us)
    }

    /// Checks the settings before anything is set up.
    pub fn check(&self) -> Result<(), LoadgenError> {
        let bad = |flag, msg: &str| Err(LoadgenError::flag(flag, msg));
        if !(self.qps.is_finite() && self.qps > 0.0) {
            return bad("--qps", "must be positive");
        }
        if !(self.duration.is_finite() && self.duration > 0.0) {
            return bad("--duration", "must be positive");
        }
        if !(self.warmup.is_finite() && self.warmup >= 0.0) {
            return bad("--warmup", "must be >= 0");
        }
        if !(self.drain.is_finite() && self.drain >= 0.0) {
            return bad("--drain", "must be >= 0");
        }
        if self.pool < 1 {
            return bad("--pool", "must be at least 1");
        }
        if self.max_steps < 1 {
            return bad("--max-steps", "must be at least 1");
        }
        if !(0.0..1.0).contains(&self.max_error_rate) {
            return bad("--max-error-rate", "must be at least 0 and below 1");
        }
        if let Some(t) = self.target_p99_ms
            && !(t.is_finite() && t > 0.0)
        {
            return bad("--target-p99-ms", "must be positive");
        }
        Ok(())
    }

    /// One measurement at `qps` for `duration_s` seconds of arrivals drawn with `seed`.
    pub fn at(&self, qps: f64, duration_s: f64, seed: u64) -> Measure {
        Measure {
            qps,
            duration_s,
            drain_s: self.drain,
            seed,
            slice: self.slice(),
            step: self.step,
        }
    }

    /// The search for the highest rate whose p99 is at most `target_p99_ms`.
    pub fn plan(&self, target_p99_ms: f64) -> SearchPlan {
        SearchPlan {
            max_error_rate: self.max_error_rate,
            ..SearchPlan::new(target_p99_ms, self.qps, self.max_steps)
        }
    }

    /// What the queries look like.
    pub fn workload(&self) -> Workload {
        Workload {
            query_size: self.query_size.clone(),
            dist: self.dist,
            ids_per_table: self.ids_per_table,
            pool: self.pool,
            seed: self.seed,
        }
    }
}

/// What `dlrs loadgen` runs with. [`LoadgenConfig::new`] gives the flags' defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadgenConfig {
    /// `--url`: the server, `http://HOST:PORT`
    pub url: String,
    /// `--model`: the model's name on the server
    pub model: String,
    /// `--model-dir`: the served model's directory, whose config.json gives the tables' row
    /// counts when the server's metadata does not
    pub model_dir: Option<PathBuf>,
    /// `--protocol`: KServe v2 inference or `/v1` predict
    pub protocol: Protocol,
    /// `--binary`: v2 tensors as binary data instead of JSON
    pub binary: bool,
    /// `--shared-memory`: the tensors in the bodies, or in one system shared memory region
    pub shared_memory: SharedMemory,
    /// `--connections`: keep-alive connections
    pub connections: usize,
    /// the load
    pub load: LoadConfig,
}

impl LoadgenConfig {
    /// The settings of `dlrs loadgen --url URL --model MODEL`: every other one at its flag's
    /// default.
    pub fn new(url: impl Into<String>, model: impl Into<String>) -> Self {
        LoadgenConfig {
            url: url.into(),
            model: model.into(),
            model_dir: None,
            protocol: Protocol::V2,
            binary: false,
            shared_memory: SharedMemory::None,
            connections: 64,
            load: LoadConfig::default(),
        }
    }
}

/// What `dlrs twin` runs with. [`TwinConfig::new`] gives the flags' defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct TwinConfig {
    /// `--model`: the model directory, its tables loaded into RAM
    pub model: PathBuf,
    /// `--threads`: threads of the forward pass, over all instances
    pub threads: usize,
    /// `--instances`: compute instances (`None`: one per thread)
    pub instances: Option<usize>,
    /// batching and admission, as `dlrs serve`'s
    pub queue: QueueConfig,
    /// the scheduler, as `dlrs serve --target-p99-ms`'s (`None`: the flags' settings; `dlrs
    /// twin --target-p99-ms` without `--static-settings`)
    pub control: Option<dlrs_serve::ControlConfig>,
    /// `--deadline-ms`: a query not computed this many milliseconds after it was queued gets
    /// 504
    pub deadline_ms: u64,
    /// the HTTP load searched in turn with the twin's (`--versus-*`)
    pub versus: VersusConfig,
    /// the load
    pub load: LoadConfig,
}

impl TwinConfig {
    /// The settings of `dlrs twin --model DIR`: every other one at its flag's default.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        TwinConfig {
            model: model.into(),
            threads: 2,
            instances: None,
            queue: QueueConfig::default(),
            control: None,
            deadline_ms: 1000,
            versus: VersusConfig::default(),
            load: LoadConfig::default(),
        }
    }
}

/// `dlrs twin --versus-url`: the same load over HTTP against a running `dlrs serve`, a step
/// of each in turn with the twin's, so that both figures come from the same stretch of
/// time. [`VersusConfig::default`] is off, with the flags' defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct VersusConfig {
    /// `--versus-url`: the server (`None`: no HTTP load)
    pub url: Option<String>,
    /// `--versus-model`: the model's name on that server
    pub model: Option<String>,
    /// `--versus-binary`: the tensors as `dlrs loadgen --binary` sends them
    pub binary: bool,
    /// `--versus-shared-memory`: the tensors as `dlrs loadgen --shared-memory` puts them
    pub shared_memory: SharedMemory,
    /// `--versus-connections`: keep-alive connections of the HTTP load
    pub connections: usize,
}

impl Default for VersusConfig {
    fn default() -> Self {
        VersusConfig {
            url: None,
            model: None,
            binary: false,
            shared_memory: SharedMemory::None,
            connections: 64,
        }
    }
}

/// Where the HTTP load goes and how: `dlrs loadgen`'s settings, or `dlrs twin --versus-*`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HttpTarget<'a> {
    pub url: &'a str,
    pub model: &'a str,
    pub model_dir: Option<&'a std::path::Path>,
    pub protocol: Protocol,
    pub binary: bool,
    pub shared_memory: SharedMemory,
    pub connections: usize,
}

impl HttpTarget<'_> {
    /// How the tensors travel: `json`, `binary` or `system_shared_memory`.
    pub fn transport(&self) -> &'static str {
        match (self.shared_memory, self.binary) {
            (SharedMemory::System, _) => "system_shared_memory",
            (SharedMemory::None, true) => "binary",
            (SharedMemory::None, false) => "json",
        }
    }
}

impl LoadgenConfig {
    pub(crate) fn target(&self) -> HttpTarget<'_> {
        HttpTarget {
            url: &self.url,
            model: &self.model,
            model_dir: self.model_dir.as_deref(),
            protocol: self.protocol,
            binary: self.binary,
            shared_memory: self.shared_memory,
            connections: self.connections,
        }
    }
}

impl VersusConfig {
    /// The HTTP load against `url` for model `model` (v2, no `--model-dir`).
    pub(crate) fn target<'a>(&self, url: &'a str, model: &'a str) -> HttpTarget<'a> {
        HttpTarget {
            url,
            model,
            model_dir: None,
            protocol: Protocol::V2,
            binary: self.binary,
            shared_memory: self.shared_memory,
            connections: self.connections,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checks_name_the_flag() {
        assert!(LoadConfig::default().check().is_ok());
        let bad = [
            LoadConfig {
                qps: 0.0,
                ..LoadConfig::default()
            },
            LoadConfig {
                duration: f64::NAN,
                ..LoadConfig::default()
            },
            LoadConfig {
                warmup: -1.0,
                ..LoadConfig::default()
            },
            LoadConfig {
                drain: f64::INFINITY,
                ..LoadConfig::default()
            },
            LoadConfig {
                pool: 0,
                ..LoadConfig::default()
            },
            LoadConfig {
                max_steps: 0,
                ..LoadConfig::default()
            },
            LoadConfig {
                max_error_rate: 1.0,
                ..LoadConfig::default()
            },
            LoadConfig {
                target_p99_ms: Some(0.0),
                ..LoadConfig::default()
            },
        ];
        let flags = [
            "--qps must be positive",
            "--duration must be positive",
            "--warmup must be >= 0",
            "--drain must be >= 0",
            "--pool must be at least 1",
            "--max-steps must be at least 1",
            "--max-error-rate must be at least 0 and below 1",
            "--target-p99-ms must be positive",
        ];
        for (c, want) in bad.iter().zip(flags) {
            assert_eq!(c.check().unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn a_measurement_and_a_search_take_the_load_settings() {
        let load = LoadConfig {
            qps: 50.0,
            drain: 2.5,
            slice_us: 300,
            max_steps: 4,
            max_error_rate: 0.01,
            ..LoadConfig::default()
        };
        let m = load.at(80.0, 3.0, 9);
        assert_eq!(
            (m.qps, m.duration_s, m.drain_s, m.seed, m.slice),
            (80.0, 3.0, 2.5, 9, Duration::from_micros(300))
        );
        let p = load.plan(12.0);
        assert_eq!(
            (p.target_p99_ms, p.start_qps, p.max_steps, p.max_error_rate),
            (12.0, 50.0, 4, 0.01)
        );
        let w = load.workload();
        assert_eq!((w.pool, w.seed, w.ids_per_table), (2048, 1, 1));
    }
}
