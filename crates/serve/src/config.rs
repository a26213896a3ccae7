//! The server's settings: [`ServeConfig`] and the batching and admission rules
//! [`QueueConfig`] (shared with the in-process twin), with the defaults of `dlrs serve`'s
//! flags. The flags themselves are defined by the `dlrs` binary; every field here is named
//! after its flag (`max_batch` is `--max-batch`) and in its unit.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dlrs_model::{Batch, TableMode};

use crate::error::ServeError;

/// What `dlrs serve` runs with. [`ServeConfig::new`] gives the defaults of the flags.
#[derive(Clone, Debug, PartialEq)]
pub struct ServeConfig {
    /// `--model`: the model directory (config.json + model.safetensors)
    pub model: PathBuf,
    /// `--name`: the model's name in URLs (`None`: the directory's file name)
    pub name: Option<String>,
    /// `--addr`: the address [`crate::run`] listens on
    pub addr: String,
    /// the batching and admission rules
    pub queue: QueueConfig,
    /// `--threads`: threads of the forward pass, over all instances
    pub threads: usize,
    /// `--instances`: compute instances (`None`: one per thread, or the controller's choice
    /// with `control`)
    pub instances: Option<usize>,
    /// `--target-p99-ms` and the settings its flags pin: the live scheduler tunes the
    /// layout, batching and admission towards the target (`None`: the flags' static
    /// settings)
    pub control: Option<crate::control::ControlConfig>,
    /// `--http-threads`: tokio worker threads of the HTTP side
    pub http_threads: usize,
    /// `--compute-nice`: nice value of the compute instances' threads (0-19)
    pub compute_nice: i32,
    /// `--http-slice-us`: time slice the HTTP threads ask for, in microseconds (0: the
    /// kernel's)
    pub http_slice_us: u64,
    /// `--tables`: how the tables are held (mapped, or copied into RAM)
    pub tables: TableMode,
    /// `--keep-reload-memory`: hold memory for a second copy of the tables from the start
    pub keep_reload_memory: bool,
    /// `--default-deadline-ms`: deadline of requests without an `x-dlrs-deadline-ms` header
    pub default_deadline_ms: u64,
    /// `--max-body-bytes`: largest request body (413 beyond)
    pub max_body_bytes: usize,
    /// `--body-timeout-ms`: time allowed to receive a request body (408 beyond)
    pub body_timeout_ms: u64,
    /// `--watch-interval-ms`: how often the model files are checked for a new version (0:
    /// never)
    pub watch_interval_ms: u64,
    /// `--drain-timeout-ms`: the longest shutdown waits for requests and connections
    pub drain_timeout_ms: u64,
    /// `--reload-timeout-ms`: the longest a reload may take to load the new version
    pub reload_timeout_ms: u64,
    /// `--max-connections`: most open connections (503 beyond)
    pub max_connections: usize,
    /// `--header-timeout-ms`: time allowed to receive a request's headers
    pub header_timeout_ms: u64,
    /// `--idle-timeout-ms`: the longest a keep-alive connection waits for its next request
    pub idle_timeout_ms: u64,
    /// `--write-timeout-ms`: time allowed to write a response
    pub write_timeout_ms: u64,
    /// `--max-body-memory-bytes`: most request-body bytes held in memory by all requests
    /// together (503 beyond)
    pub max_body_memory_bytes: usize,
    /// `--allow-client-shm`: let local clients register system shared memory regions
    pub allow_client_shm: bool,
    /// `--tables redis://...`: the tables are read from a Redis Cluster (`tables` is then
    /// `Mmap`: the model file is mapped for its MLPs, its tables never read)
    pub redis: Option<dlrs_redis::TierOptions>,
    /// test hooks (not a command-line option)
    #[doc(hidden)]
    pub hooks: Hooks,
}

impl ServeConfig {
    /// The settings of `dlrs serve --model DIR`: every other one at its flag's default.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        ServeConfig {
            model: model.into(),
            name: None,
            addr: "127.0.0.1:8000".into(),
            queue: QueueConfig::default(),
            threads: 2,
            instances: None,
            control: None,
            http_threads: 2,
            compute_nice: 0,
            http_slice_us: 0,
            tables: TableMode::Ram,
            keep_reload_memory: false,
            default_deadline_ms: 1000,
            max_body_bytes: 32 << 20,
            body_timeout_ms: 10_000,
            watch_interval_ms: 1000,
            drain_timeout_ms: 30_000,
            reload_timeout_ms: 600_000,
            max_connections: 1024,
            header_timeout_ms: 5000,
            idle_timeout_ms: 60_000,
            write_timeout_ms: 10_000,
            max_body_memory_bytes: 256 << 20,
            allow_client_shm: false,
            redis: None,
            hooks: Hooks::default(),
        }
    }

    /// `(instances, threads per instance)` from `--instances` and `--threads`.
    pub fn compute_layout(&self) -> Result<(usize, usize), ServeError> {
        compute_layout(self.threads, self.instances)
    }

    /// The model name used in URLs.
    pub fn model_name(&self) -> String {
        // the path's own last component (a symlink's name, not its target's), else the
        // canonical directory's (for `.` and the like)
        let own = self
            .model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        self.name.clone().or(own).unwrap_or_else(|| {
            let dir = std::fs::canonicalize(&self.model).unwrap_or_else(|_| self.model.clone());
            dir.file_name()
                .map_or_else(|| "model".to_string(), |n| n.to_string_lossy().into_owned())
        })
    }
}

/// `(instances, threads per instance)`: `threads` split evenly over `instances` (default: one
/// instance per thread).
pub fn compute_layout(
    threads: usize,
    instances: Option<usize>,
) -> Result<(usize, usize), ServeError> {
    if threads < 1 {
        return Err(ServeError::flag("--threads", "must be at least 1"));
    }
    let instances = instances.unwrap_or(threads);
    if instances < 1 || !threads.is_multiple_of(instances) {
        return Err(ServeError::flag(
            "--instances",
            format!(
                "{instances} must divide --threads {threads} (each instance gets the same number of threads)"
            ),
        ));
    }
    Ok((instances, threads / instances))
}

/// The batching and admission rules, the same for `dlrs serve` and `dlrs twin` so that the
/// twin queues exactly as the server does. [`QueueConfig::default`] gives the flags'
/// defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// `--max-batch`: most samples in one forward pass; larger requests are cut into chunks
    pub max_batch: usize,
    /// `--max-queue-delay-us`: longest the oldest queued request waits for others to join
    /// its batch, in microseconds
    pub max_queue_delay_us: u64,
    /// `--max-queue`: most samples waiting within the burst cooldown of a refusal; beyond it
    /// requests are refused at once
    pub max_queue: usize,
    /// `--max-queue-burst`: most samples waiting when no request was refused for the burst
    /// cooldown: room for a burst (arrivals bunched by a stall on either side) at a load the
    /// server keeps up with, which an overloaded queue (one that refuses) does not get. Like
    /// the controlled-delay queues of "Fail at scale" (Maurer, ACM Queue 2015), a queue is
    /// allowed more while it is not standing. At most `max_queue` (0 included) has no effect.
    pub max_queue_burst: usize,
    /// `--burst-cooldown-ms`: how long after a refusal `max_queue` bounds the queue again
    pub burst_cooldown_ms: u64,
    /// `--max-queue-wait-ms`: longest estimated wait ahead of a new request (the samples
    /// waiting times the measured compute time per sample, over the instances); beyond it
    /// the request is refused at once. 0: no bound by time
    pub max_queue_wait_ms: u64,
    /// `--idle-spin-us`: how long an instance that finds the queue empty keeps its threads
    /// busy waiting for the next request before it sleeps (0: it sleeps at once); see
    /// [`dlrs_model::Executor::spin`]
    pub idle_spin_us: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_batch: 256,
            max_queue_delay_us: 500,
            max_queue: 4096,
            max_queue_burst: 0,
            burst_cooldown_ms: 100,
            max_queue_wait_ms: 0,
            idle_spin_us: 0,
        }
    }
}

impl QueueConfig {
    /// `max_queue_delay_us` as a duration.
    pub fn max_delay(&self) -> Duration {
        Duration::from_micros(self.max_queue_delay_us)
    }

    /// `burst_cooldown_ms` as a duration.
    pub fn burst_cooldown(&self) -> Duration {
        Duration::from_millis(self.burst_cooldown_ms)
    }

    /// The bound on the estimated wait (`None`: `max_queue_wait_ms` is 0, no bound by time).
    pub fn max_wait(&self) -> Option<Duration> {
        (self.max_queue_wait_ms > 0).then(|| Duration::from_millis(self.max_queue_wait_ms))
    }

    /// Checks the rules a queue cannot work without.
    pub fn check(&self) -> Result<(), ServeError> {
        if self.max_batch < 1 {
            return Err(ServeError::flag("--max-batch", "must be at least 1"));
        }
        if self.max_queue < 1 {
            return Err(ServeError::flag("--max-queue", "must be at least 1"));
        }
        Ok(())
    }
}

/// Fault-injection points for tests. Not part of the command line.
#[derive(Clone, Default)]
#[doc(hidden)]
pub struct Hooks {
    /// Runs on the batcher thread just before each batch's forward pass, inside the panic
    /// guard (a test can block here to hold a batch, or panic to simulate a crash).
    pub before_forward: Option<BatchHook>,
    /// Runs on the reload thread before a new version is loaded (a test can block here to
    /// wedge a reload).
    pub before_load: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// A function run on a batch (see [`Hooks`]).
#[doc(hidden)]
pub type BatchHook = Arc<dyn Fn(&Batch) + Send + Sync>;

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("before_forward", &self.before_forward.is_some())
            .field("before_load", &self.before_load.is_some())
            .finish()
    }
}

/// Hooks are equal when they are the same functions (or both absent).
impl PartialEq for Hooks {
    fn eq(&self, other: &Self) -> bool {
        fn same<T: ?Sized>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
            match (a, b) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, Some(_)) | (Some(_), None) => false,
            }
        }
        same(&self.before_forward, &other.before_forward)
            && same(&self.before_load, &other.before_load)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_splits_threads_evenly_over_instances() {
        assert_eq!(compute_layout(4, None).unwrap(), (4, 1));
        assert_eq!(compute_layout(4, Some(2)).unwrap(), (2, 2));
        let e = compute_layout(0, None).unwrap_err();
        assert_eq!(e.to_string(), "--threads must be at least 1");
        let e = compute_layout(4, Some(3)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--instances 3 must divide --threads 4 (each instance gets the same number of threads)"
        );
        assert!(compute_layout(4, Some(0)).is_err());
    }

    #[test]
    fn queue_durations_follow_the_flags_units() {
        let q = QueueConfig {
            max_queue_delay_us: 1500,
            burst_cooldown_ms: 7,
            ..QueueConfig::default()
        };
        assert_eq!(q.max_delay(), Duration::from_micros(1500));
        assert_eq!(q.burst_cooldown(), Duration::from_millis(7));
        assert_eq!(q.max_wait(), None, "0 is no bound");
        let q = QueueConfig {
            max_queue_wait_ms: 3,
            ..q
        };
        assert_eq!(q.max_wait(), Some(Duration::from_millis(3)));
        assert!(q.check().is_ok());
        let e = QueueConfig { max_batch: 0, ..q }.check().unwrap_err();
        assert_eq!(e.to_string(), "--max-batch must be at least 1");
    }

    #[test]
    fn model_names_come_from_the_flag_or_the_directory() {
        let mut c = ServeConfig::new("/models/rmc1");
        assert_eq!(c.model_name(), "rmc1");
        c.name = Some("ranker".into());
        assert_eq!(c.model_name(), "ranker");
    }
}
