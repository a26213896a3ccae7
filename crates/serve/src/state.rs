//! The server's shared state: the model being served (swapped atomically on reload), the
//! queue, readiness, the directory watcher and the shutdown sequence.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dlrs_model::{CONFIG_FILE, WEIGHTS_FILE};
use dlrs_model::{Model, TableMode};
use tokio::task::JoinHandle;

use crate::batcher::{self, Queue};
use crate::config::ServeConfig;
use crate::error::{ApiError, ServeError};
use crate::metrics::Metrics;
use crate::shm::Registry;

/// One loaded version of the model.
pub struct Version {
    pub model: Model,
    /// 1 for the version loaded at start, +1 per successful reload
    pub number: u64,
}

/// What identifies the files of a model directory on disk: per file (device, inode, size,
/// mtime, ctime), symlinks followed. `None` while a file is missing.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint(Vec<(u64, u64, u64, i64, i64, i64, i64)>);

fn fingerprint(dir: &Path) -> Option<Fingerprint> {
    let mut v = Vec::new();
    for f in [CONFIG_FILE, WEIGHTS_FILE] {
        let m = std::fs::metadata(dir.join(f)).ok()?;
        v.push((
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        ));
    }
    Some(Fingerprint(v))
}

/// Most reloads left running after `--reload-timeout-ms` at once; beyond it reloads are
/// refused until one ends.
const MAX_ABANDONED_RELOADS: usize = 4;

struct ReloadState {
    /// the files the serving version was loaded from
    loaded: Option<Fingerprint>,
    /// the files of the last version that failed to load (not retried by the watcher)
    failed: Option<Fingerprint>,
    next_number: u64,
}

pub struct AppState {
    pub name: String,
    pub dir: PathBuf,
    pub config: ServeConfig,
    mode: TableMode,
    current: RwLock<Arc<Version>>,
    reload: tokio::sync::Mutex<ReloadState>,
    pub queue: Arc<Queue>,
    pub metrics: Arc<Metrics>,
    /// registered system shared memory regions
    pub shm: Registry,
    draining: AtomicBool,
    inflight: AtomicUsize,
    /// reload threads that outlived `--reload-timeout-ms` and have not ended yet
    abandoned_reloads: Arc<AtomicUsize>,
    batchers: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// Counts an inference request in flight while it lives.
pub struct InflightGuard(Arc<AppState>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
        self.0.metrics.inflight.decrement(1.0);
    }
}

impl AppState {
    /// Loads the model and starts the batcher thread.
    pub async fn start(config: ServeConfig) -> Result<Arc<Self>, ServeError> {
        let dir = config.model.clone();
        let mode = config.tables;
        let redis = config.redis.clone();
        let fp = fingerprint(&dir);
        let keep = config.keep_reload_memory;
        let model = {
            let d = dir.clone();
            tokio::task::spawn_blocking(move || -> Result<Model, ServeError> {
                let model = load(&d, mode, redis.as_ref()).map_err(|source| ServeError::Load {
                    dir: d.clone(),
                    source,
                })?;
                if keep {
                    dlrs_model::tables::reserve_spare_table_memory(&model.weights.tables)
                        .map_err(ServeError::ReserveReloadMemory)?;
                }
                Ok(model)
            })
            .await
            .map_err(ServeError::LoadPanicked)??
        };
        let metrics = Arc::new(Metrics::new());
        metrics.model_version.set(1.0);
        let (instances, threads) = config.compute_layout()?;
        let (queue, batchers) = match &config.control {
            Some(control) => {
                control.check()?;
                let controller =
                    batcher::Controller::new(control.clone(), config.threads, &config.queue);
                let queue = Arc::new(Queue::controlled(
                    config.queue.clone(),
                    Arc::clone(&metrics),
                    controller,
                ));
                let batchers =
                    batcher::spawn_controlled(&queue, config.compute_nice, &config.hooks);
                (queue, batchers)
            }
            None => {
                let queue = Arc::new(Queue::new(config.queue.clone(), Arc::clone(&metrics)));
                let batchers = batcher::spawn(
                    &queue,
                    instances,
                    threads,
                    config.compute_nice,
                    &config.hooks,
                );
                (queue, batchers)
            }
        };
        let batchers = batchers.map_err(ServeError::ComputeThreads)?;
        Ok(Arc::new(AppState {
            name: config.model_name(),
            dir,
            mode,
            current: RwLock::new(Arc::new(Version { model, number: 1 })),
            reload: tokio::sync::Mutex::new(ReloadState {
                loaded: fp,
                failed: None,
                next_number: 2,
            }),
            queue,
            metrics,
            shm: Registry::new(config.allow_client_shm),
            draining: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            abandoned_reloads: Arc::new(AtomicUsize::new(0)),
            batchers: std::sync::Mutex::new(batchers),
            config,
        }))
    }

    /// The version serving now.
    pub fn current(&self) -> Arc<Version> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// 404 unless `name` (and `version`, when given) is what this server serves.
    pub fn check_model(&self, name: &str, version: Option<&str>) -> Result<Arc<Version>, ApiError> {
        if name != self.name {
            return Err(ApiError::NotFound(format!(
                "unknown model \"{name}\" (this server serves \"{}\")",
                self.name
            )));
        }
        let v = self.current();
        if let Some(ver) = version
            && ver != v.number.to_string()
        {
            return Err(ApiError::NotFound(format!(
                "model \"{name}\" has no version \"{ver}\" (serving version {})",
                v.number
            )));
        }
        Ok(v)
    }

    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::SeqCst)
    }

    /// Registers an inference request in flight; refused once shutting down.
    pub fn enter(self: &Arc<Self>) -> Result<InflightGuard, ApiError> {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        self.metrics.inflight.increment(1.0);
        let guard = InflightGuard(Arc::clone(self));
        if self.draining.load(Ordering::SeqCst) {
            return Err(ApiError::ShuttingDown("the server is shutting down".into()));
        }
        Ok(guard)
    }

    /// Loads the directory again and swaps the new version in. With `only_if_changed`, does
    /// nothing when the files are those of the serving version or of the last failure.
    pub async fn reload(&self, only_if_changed: bool) -> Result<u64, ApiError> {
        let mut rs = self.reload.lock().await;
        let fp = fingerprint(&self.dir);
        if only_if_changed && (fp.is_none() || fp == rs.loaded || fp == rs.failed) {
            return Ok(self.current().number);
        }
        let serving = self.current().number;
        let abandoned = self.abandoned_reloads.load(Ordering::SeqCst);
        if abandoned >= MAX_ABANDONED_RELOADS {
            // each holds a thread (and may hold a model's memory when it ends): bounded
            return Err(ApiError::ReloadFailed(format!(
                "{abandoned} earlier reloads timed out and have not ended yet (their threads \
                 are still waiting on the model files); refusing more until one ends; still \
                 serving version {serving}"
            )));
        }
        let (dir, mode) = (self.dir.clone(), self.mode);
        let redis = self.config.redis.clone();
        let before_load = self.config.hooks.before_load.clone();
        // a reload runs beside the serving version: on its own thread at the lowest CPU
        // priority, so that reading and copying gigabytes of tables does not take the cores
        // from the compute instances (requests would queue up and get 503)
        let (tx, rx) = tokio::sync::oneshot::channel();
        let running = Arc::clone(&self.abandoned_reloads);
        // counted as abandoned from the start; a reload that ends in time is uncounted below
        running.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name("dlrs-reload".into())
            .spawn(move || {
                dlrs_model::sys::lower_thread_priority();
                if let Some(h) = before_load {
                    h();
                }
                let loaded = match reload_pool() {
                    Some(pool) => pool.install(|| load(&dir, mode, redis.as_ref())),
                    // no threads to be had: load on the global pool, as at start-up
                    None => load(&dir, mode, redis.as_ref()),
                };
                // a receiver that timed out is gone: the version is dropped here
                if tx.send(loaded).is_err() {
                    running.fetch_sub(1, Ordering::SeqCst);
                }
            });
        if let Err(e) = spawned {
            self.abandoned_reloads.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::ReloadFailed(format!(
                "starting the reload thread: {e}"
            )));
        }
        let timeout = Duration::from_millis(self.config.reload_timeout_ms);
        let loaded = match tokio::time::timeout(timeout, rx).await {
            Ok(loaded) => {
                self.abandoned_reloads.fetch_sub(1, Ordering::SeqCst);
                loaded
            }
            Err(_) => {
                // the thread is left to end on its own (a file that never answers may hold it
                // forever); the reload path is free for the next reload
                rs.failed = fp;
                self.metrics.reload(false);
                let err = ApiError::ReloadFailed(format!(
                    "loading the new version took longer than --reload-timeout-ms {} and was \
                     abandoned; still serving version {serving}",
                    self.config.reload_timeout_ms
                ));
                tracing::error!("model \"{}\": reload failed: {}", self.name, err.message());
                return Err(err);
            }
        };
        match loaded {
            Ok(Ok(model)) => {
                let number = rs.next_number;
                rs.next_number += 1;
                rs.loaded = fp;
                rs.failed = None;
                let old = std::mem::replace(
                    &mut *self.current.write().unwrap_or_else(|p| p.into_inner()),
                    Arc::new(Version { model, number }),
                );
                retire(old);
                self.metrics.reload(true);
                self.metrics.model_version.set(number as f64);
                tracing::info!(
                    "model \"{}\": now serving version {number} from {}",
                    self.name,
                    self.dir.display()
                );
                Ok(number)
            }
            Ok(Err(e)) => {
                rs.failed = fp;
                self.metrics.reload(false);
                let err = ApiError::from_load(e, serving);
                tracing::error!("model \"{}\": reload failed: {}", self.name, err.message());
                Err(err)
            }
            Err(join) => {
                rs.failed = fp;
                self.metrics.reload(false);
                Err(ApiError::ReloadFailed(format!(
                    "loading the new version panicked ({join}); still serving version {serving}"
                )))
            }
        }
    }

    /// Starts the directory watcher and the metrics upkeep.
    pub fn spawn_background(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        let every = self.config.watch_interval_ms;
        if every > 0 {
            let st = Arc::clone(self);
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(every));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let _ = st.reload(true).await;
                }
            }));
        }
        let st = Arc::clone(self);
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                st.metrics.upkeep();
            }
        }));
        tasks
    }

    /// Shutdown, first half: readiness false, new requests refused, wait for those in
    /// flight (at most until `until`, the drain deadline).
    pub async fn drain(&self, until: Instant) {
        self.draining.store(true, Ordering::SeqCst);
        let n = self.inflight.load(Ordering::SeqCst);
        tracing::info!("shutting down; waiting for {n} requests in flight");
        while self.inflight.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= until {
                tracing::warn!(
                    "{} requests still in flight after --drain-timeout-ms; stopping anyway",
                    self.inflight.load(Ordering::SeqCst)
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Shutdown, second half: closes the queue and waits for the compute instances to finish.
    pub async fn stop(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.queue.close();
        let handles = std::mem::take(&mut *self.batchers.lock().unwrap_or_else(|p| p.into_inner()));
        let _ =
            tokio::task::spawn_blocking(move || handles.into_iter().for_each(|h| drop(h.join())))
                .await;
    }
}

/// Frees a replaced version off the serving threads: a thread at the lowest priority waits
/// until the requests still running on it are done (each holds a reference; deadlines bound
/// the wait), then unmaps its tables, which for gigabytes of tables takes long enough to
/// stall a compute instance that happened to drop the last reference.
fn retire(old: Arc<Version>) {
    let spawned = std::thread::Builder::new()
        .name("dlrs-retire".into())
        .spawn(move || {
            dlrs_model::sys::lower_thread_priority();
            while Arc::strong_count(&old) > 1 {
                std::thread::sleep(Duration::from_millis(10));
            }
            drop(old);
        });
    if let Err(e) = spawned {
        tracing::warn!(
            "could not start a thread to free the replaced model version ({e}); freeing it here"
        );
    }
}

/// The threads a reload copies and checks tables on: named `dlrs-reload-N` and at the
/// lowest priority like the reload thread itself. (Loading splits its work with rayon; on
/// rayon's global pool that work ran at normal priority on threads named after whichever
/// thread first used the pool, `dlrs-http`, and took the cores from the compute instances:
/// 43-107 requests refused (503) per reload at 480 QPS.)
fn reload_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .thread_name(|i| format!("dlrs-reload-{i}"))
            .start_handler(|_| dlrs_model::sys::lower_thread_priority())
            .build()
            .ok()
    })
    .as_ref()
}

/// Loads a model version; mapped tables with checksums are then verified on a background
/// thread ahead of traffic (first touch verifies them anyway: a bad shard is never served).
/// With `redis`, the tables are read from the Redis Cluster (which must hold a complete push
/// of this version's tables), and the file's tables are never read.
fn load(
    dir: &std::path::Path,
    mode: dlrs_model::TableMode,
    redis: Option<&dlrs_redis::TierOptions>,
) -> Result<Model, dlrs_model::ModelError> {
    if let Some(opts) = redis {
        return Ok(dlrs_redis::load_model(dir, opts)?);
    }
    let model = Model::load_with(dir, mode)?;
    model.verify_in_background()?;
    Ok(model)
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn reload_work_runs_on_named_lowest_priority_threads() {
        let pool = super::reload_pool().expect("a reload pool");
        let seen: Vec<(Option<String>, i32, i32)> = pool.broadcast(|_| {
            // SAFETY: gettid, getpriority and sched_getscheduler take and return plain
            // integers.
            let (nice, policy) = unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                (
                    libc::getpriority(libc::PRIO_PROCESS, tid),
                    libc::sched_getscheduler(tid as libc::pid_t),
                )
            };
            (
                std::thread::current().name().map(str::to_string),
                nice,
                policy,
            )
        });
        assert!(!seen.is_empty());
        for (name, nice, policy) in seen {
            assert!(
                name.as_deref()
                    .is_some_and(|n| n.starts_with("dlrs-reload-")),
                "{name:?}"
            );
            assert_eq!(nice, 19, "{name:?} runs at nice {nice}");
            assert_eq!(
                policy,
                libc::SCHED_IDLE,
                "{name:?} runs under policy {policy}"
            );
        }
    }
}
