//! The bounded queue and the compute instances: each instance is a thread that takes the next
//! batch from the shared queue (merging queued requests), runs the forward pass behind a panic
//! guard on its own executor and hands each request its scores.
//!
//! Several instances (`--instances`, like Triton's `instance_group.count`) compute different
//! batches at once, each on `--threads / --instances` threads: a batch split across threads
//! waits for its slowest part, so when the HTTP threads preempt one compute thread the other
//! one idles; independent batches do not wait for each other. A request larger than a batch
//! is cut into chunks that may run on different instances; its answer is sent when the last
//! chunk is scored. The in-process twin (`dlrs twin`) runs this same code.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dlrs_model::{Bags, Batch, DlrmConfig, Executor, Workspace};
use tokio::sync::oneshot;

use crate::config::{Hooks, QueueConfig};
use crate::control::{ControlConfig, Memory, Observations, Settings};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::state::Version;

pub type Reply = Result<Vec<f32>, ApiError>;

/// Where a request's answer goes.
pub enum ReplyTo {
    /// an HTTP handler waiting on the channel (a closed channel means the client went away:
    /// its queued samples are dropped, not computed)
    Channel(oneshot::Sender<Reply>),
    /// a function called with the answer on the compute thread (the in-process twin)
    Call(Box<dyn FnOnce(Reply) + Send>),
}

impl ReplyTo {
    fn is_closed(&self) -> bool {
        match self {
            ReplyTo::Channel(tx) => tx.is_closed(),
            ReplyTo::Call(_) => false,
        }
    }
    fn send(self, r: Reply) {
        match self {
            ReplyTo::Channel(tx) => {
                let _ = tx.send(r);
            }
            ReplyTo::Call(f) => f(r),
        }
    }
}

/// One request to admit.
pub struct Job {
    /// the model version its batch was validated against (and will run on)
    pub model: Arc<Version>,
    pub batch: Arc<Batch>,
    pub deadline: Instant,
    pub reply: ReplyTo,
    /// the HTTP request's id (see the crate docs, "Logs"), named when its batch fails
    pub request_id: Option<Arc<str>>,
}

/// An admitted request, shared by the queue and the batches computing its chunks.
struct Entry {
    model: Arc<Version>,
    batch: Arc<Batch>,
    deadline: Instant,
    enqueued: Instant,
    request_id: Option<Arc<str>>,
    out: Mutex<Out>,
}

struct Out {
    /// `None` once answered (scores, error, expiry)
    reply: Option<ReplyTo>,
    scores: Vec<f32>,
    /// samples not scored yet
    left: usize,
}

impl Entry {
    fn len(&self) -> usize {
        self.batch.size()
    }
    fn out(&self) -> MutexGuard<'_, Out> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Stores the scores of rows `r0..` and answers when the request is complete (then
    /// true).
    fn deliver(&self, r0: usize, scores: &[f32]) -> bool {
        let mut o = self.out();
        if o.reply.is_none() {
            return false;
        }
        if o.scores.len() != self.len() {
            o.scores = vec![0.0; self.len()];
        }
        o.scores[r0..r0 + scores.len()].copy_from_slice(scores);
        o.left -= scores.len();
        if o.left == 0 {
            let scores = std::mem::take(&mut o.scores);
            let reply = o.reply.take().expect("checked above");
            drop(o);
            reply.send(Ok(scores));
            return true;
        }
        false
    }
    /// Answers `err` unless already answered.
    fn fail(&self, err: ApiError) {
        let reply = self.out().reply.take();
        if let Some(r) = reply {
            r.send(Err(err));
        }
    }
}

impl Drop for Entry {
    /// A request dropped unanswered (a bug path: a panic outside the forward pass' guard)
    /// still gets an answer.
    fn drop(&mut self) {
        let reply = self
            .out
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .reply
            .take();
        if let Some(r) = reply {
            r.send(Err(ApiError::Internal(
                "the request was dropped by a failed batch".into(),
            )));
        }
    }
}

struct Pending {
    entry: Arc<Entry>,
    /// samples handed to batches so far
    dispatched: usize,
}

/// Room held in the queue for a request whose body is still being read (see
/// [`Queue::reserve`]).
pub struct Reservation {
    queue: Arc<Queue>,
    n: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.n > 0 {
            self.queue.release(&mut self.queue.lock(), self.n);
        }
    }
}

struct State {
    pending: VecDeque<Pending>,
    /// samples admitted and not yet handed to a batch
    waiting: usize,
    /// when a request was last refused for want of room
    refused: Option<Instant>,
    /// no more admissions; instances exit once `pending` is empty
    closed: bool,
    /// compute seconds per sample on one instance: the median of the last [`PER_SAMPLE_WINDOW`]
    /// batches (0 until the first batch)
    per_sample_s: f64,
    /// the last batches' compute seconds per sample, oldest overwritten first
    recent: Vec<f64>,
    /// where the next batch's figure goes in `recent`
    next_recent: usize,
    /// how many instances take batches, on how many threads each, and the batching and
    /// admission settings in force (the flags', or the controller's)
    settings: Settings,
}

/// Batches whose compute time per sample the wait bound takes the median of. A median, not a
/// moving average: one batch slowed by a page fault or a preemption moved an average with
/// weight 0.2 far enough to refuse requests at 35% load (0.85% of the twin's queries at 700
/// QPS on RMC1).
const PER_SAMPLE_WINDOW: usize = 32;

/// The shared queue: admission on one side, batches for the instances on the other.
pub struct Queue {
    state: Mutex<State>,
    ready: Condvar,
    /// bumped when a request is queued, the settings change or the queue closes: what an
    /// instance spinning on an empty queue watches
    epoch: AtomicU64,
    cfg: QueueConfig,
    metrics: Arc<Metrics>,
    /// the live scheduler of `--target-p99-ms`, if any
    controller: Option<Arc<Controller>>,
}

/// The live scheduler's state (see [`crate::control`]): what the queue measured and what the
/// controller decided. It outlives a queue: the twin's search runs one queue per step and
/// keeps what was learned.
pub struct Controller {
    pub cfg: ControlConfig,
    /// compute threads over all instances
    pub threads: usize,
    learned: Mutex<(Observations, Memory)>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("cfg", &self.cfg)
            .field("threads", &self.threads)
            .field("settings", &self.settings())
            .finish()
    }
}

impl Controller {
    /// A controller of `threads` compute threads towards `cfg`'s target, starting from
    /// `queue`'s flags (where pinned) with every thread on one batch.
    pub fn new(cfg: ControlConfig, threads: usize, queue: &QueueConfig) -> Arc<Self> {
        let threads = threads.max(1);
        let p = cfg.pin_instances.map_or(threads, |i| threads / i.max(1));
        let settings = Settings {
            threads_per_batch: p,
            instances: threads / p,
            max_batch: cfg.pin_max_batch.unwrap_or(queue.max_batch),
            delay_us: cfg.pin_delay_us.unwrap_or(0),
            max_wait: cfg
                .pin_wait_ms
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
            spin_us: cfg
                .pin_spin_us
                .unwrap_or(crate::control::DEFAULT_SPIN.as_micros() as u64),
        };
        Arc::new(Controller {
            learned: Mutex::new((Observations::new(threads), Memory::new(threads, settings))),
            cfg,
            threads,
        })
    }

    fn learned(&self) -> MutexGuard<'_, (Observations, Memory)> {
        self.learned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The settings in force.
    pub fn settings(&self) -> Settings {
        self.learned().1.settings
    }

    /// One look: decides, and returns the new settings with the reason when they changed.
    fn look(&self, now: Instant, metrics: &Metrics) -> Option<(Settings, String)> {
        let mut guard = self.learned();
        let (obs, mem) = &mut *guard;
        let view = obs.view(now, self.cfg.quantile());
        let trying = mem.trying;
        let why = crate::control::decide(&self.cfg, self.threads, &view, mem, now);
        if let Some(p) = mem.trying
            && trying != Some(p)
        {
            // tried again because its figures are stale: measure it afresh
            obs.forget(p);
        }
        metrics.control(&self.cfg, &view, mem);
        why.map(|w| (mem.settings, w))
    }
}

/// `(request, first row, end row)`: one request's part of a batch.
type Segment = (Arc<Entry>, usize, usize);

impl Queue {
    pub fn new(cfg: QueueConfig, metrics: Arc<Metrics>) -> Self {
        let settings = Settings {
            threads_per_batch: 1,
            instances: 1,
            max_batch: cfg.max_batch,
            delay_us: cfg.max_queue_delay_us,
            max_wait: cfg.max_wait(),
            spin_us: cfg.idle_spin_us,
        };
        Self::with_settings(cfg, metrics, settings, None)
    }

    /// A queue whose settings the live scheduler `controller` tunes (start its instances
    /// with [`spawn_controlled`]).
    pub fn controlled(
        cfg: QueueConfig,
        metrics: Arc<Metrics>,
        controller: Arc<Controller>,
    ) -> Self {
        let settings = controller.settings();
        Self::with_settings(cfg, metrics, settings, Some(controller))
    }

    fn with_settings(
        cfg: QueueConfig,
        metrics: Arc<Metrics>,
        settings: Settings,
        controller: Option<Arc<Controller>>,
    ) -> Self {
        let state = State {
            pending: VecDeque::new(),
            waiting: 0,
            refused: None,
            closed: false,
            per_sample_s: 0.0,
            recent: Vec::with_capacity(PER_SAMPLE_WINDOW),
            next_recent: 0,
            settings,
        };
        Queue {
            state: Mutex::new(state),
            ready: Condvar::new(),
            epoch: AtomicU64::new(0),
            cfg,
            metrics,
            controller,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> Settings {
        self.lock().settings
    }

    /// Puts `settings` in force (instances that may now take batches are woken).
    fn apply(&self, settings: Settings) {
        self.lock().settings = settings;
        self.wake();
    }

    /// Wakes every instance, spinning or sleeping.
    fn wake(&self) {
        self.epoch.fetch_add(1, Ordering::Release);
        self.ready.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds room for `n` samples ahead of their request (whose body is still being read),
    /// or refuses at once like [`Queue::submit`]. The room is given back when the
    /// reservation drops unused.
    pub fn reserve(self: &Arc<Self>, n: usize) -> Result<Reservation, ApiError> {
        let mut st = self.lock();
        self.admit(&mut st, n)?;
        Ok(Reservation {
            queue: Arc::clone(self),
            n,
        })
    }

    /// Counts `n` more samples waiting, or refuses them (413 larger than the queue, 503
    /// queue full or closed).
    fn admit(&self, st: &mut State, n: usize) -> Result<(), ApiError> {
        let max = self.cfg.max_queue;
        if n > max {
            return Err(ApiError::TooLarge(format!(
                "the request has {n} samples; the server queues at most {max} (--max-queue)"
            )));
        }
        if st.closed {
            return Err(ApiError::ShuttingDown("the server is shutting down".into()));
        }
        let now = Instant::now();
        let capacity = self.capacity(st, now);
        if st.waiting + n > capacity {
            st.refused = Some(now);
            let which = if capacity > max {
                "--max-queue-burst"
            } else {
                "--max-queue"
            };
            return Err(ApiError::Overloaded(format!(
                "queue full: {} of {capacity} samples waiting ({which}), the request has {n}; retry later",
                st.waiting
            )));
        }
        if let Some(max) = st.settings.max_wait {
            let wait = st.waiting as f64 * st.per_sample_s / st.settings.instances.max(1) as f64;
            if wait > max.as_secs_f64() {
                st.refused = Some(now);
                return Err(ApiError::Overloaded(format!(
                    "queue full: {} samples waiting, about {:.1} ms of work, over the {:.1} ms the server queues \
                     ({}); retry later",
                    st.waiting,
                    wait * 1e3,
                    max.as_secs_f64() * 1e3,
                    if self.controller.is_some() {
                        "derived from --target-p99-ms"
                    } else {
                        "--max-queue-wait-ms"
                    }
                )));
            }
        }
        st.waiting += n;
        self.metrics.queue_depth.increment(n as f64);
        Ok(())
    }

    /// The most samples that may wait at `now`: `max_queue` within `burst_cooldown` of a
    /// refusal, else `max_queue_burst` (if larger).
    fn capacity(&self, st: &State, now: Instant) -> usize {
        let cooling = st
            .refused
            .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.burst_cooldown());
        if cooling {
            self.cfg.max_queue
        } else {
            self.cfg.max_queue.max(self.cfg.max_queue_burst)
        }
    }

    /// `n` samples left the queue (handed to a batch, expired, refused after a reservation).
    fn release(&self, st: &mut State, n: usize) {
        st.waiting -= n;
        self.metrics.queue_depth.decrement(n as f64);
    }

    /// Admits a job or refuses it at once (413 larger than the queue, 503 queue full or
    /// closed). A reservation of exactly its size is used instead of new room.
    pub fn submit(&self, job: Job, reserved: Option<Reservation>) -> Result<(), ApiError> {
        let n = job.batch.size();
        let mut st = self.lock();
        match reserved {
            Some(mut r) if r.n == n && !st.closed => r.n = 0, // the room is the job's now
            Some(mut r) => {
                // a reservation of another size is given back first
                self.release(&mut st, std::mem::take(&mut r.n));
                self.admit(&mut st, n)?;
            }
            None => self.admit(&mut st, n)?,
        }
        let out = Mutex::new(Out {
            reply: Some(job.reply),
            scores: Vec::new(),
            left: n,
        });
        let entry = Entry {
            model: job.model,
            batch: job.batch,
            deadline: job.deadline,
            enqueued: Instant::now(),
            request_id: job.request_id,
            out,
        };
        st.pending.push_back(Pending {
            entry: Arc::new(entry),
            dispatched: 0,
        });
        drop(st);
        if let Some(c) = &self.controller {
            c.learned().0.arrival(Instant::now(), n);
        }
        // all: an instance the settings leave idle would take the wakeup and wait again
        self.wake();
        Ok(())
    }

    /// Counts a computed batch of `size` samples that took `took` on `threads` threads into
    /// the compute time per sample that `max_wait` estimates with (and the controller's
    /// figures).
    fn observe(&self, size: usize, took: Duration, threads: usize) {
        if size == 0 {
            return;
        }
        if let Some(c) = &self.controller {
            c.learned().0.batch(Instant::now(), threads, size, took);
        }
        let per = took.as_secs_f64() / size as f64;
        let mut st = self.lock();
        if st.recent.len() < PER_SAMPLE_WINDOW {
            st.recent.push(per);
        } else {
            let at = st.next_recent;
            st.recent[at] = per;
        }
        st.next_recent = (st.next_recent + 1) % PER_SAMPLE_WINDOW;
        let mut sorted = [0.0f64; PER_SAMPLE_WINDOW];
        let n = st.recent.len();
        sorted[..n].copy_from_slice(&st.recent);
        sorted[..n].sort_unstable_by(f64::total_cmp);
        st.per_sample_s = sorted[n / 2];
    }

    /// Closes the queue: what it holds is still computed, then the instances exit.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake();
    }

    /// Closes the queue and answers everything still queued with 503 (nothing more is
    /// computed; batches already computing finish).
    pub fn abort(&self) {
        let dropped: Vec<Pending> = {
            let mut st = self.lock();
            st.closed = true;
            // (room held by reservations is given back when they drop)
            let n: usize = st
                .pending
                .iter()
                .map(|p| p.entry.len() - p.dispatched)
                .sum();
            self.release(&mut st, n);
            st.pending.drain(..).collect()
        };
        self.wake();
        for p in dropped {
            p.entry.fail(ApiError::ShuttingDown(
                "the queue was aborted before the request was computed".into(),
            ));
        }
    }

    /// The next batch for instance `instance` to compute and the threads to compute it on,
    /// waiting for one (and while the settings give the instance no batches); `None` once
    /// the queue is closed and empty.
    fn next_batch(&self, instance: usize) -> Option<(Vec<Segment>, usize)> {
        let mut st = self.lock();
        // spin at most once per batch: a spin that ran out ends in sleep
        let mut spun = false;
        loop {
            self.drop_dead(&mut st);
            if instance >= st.settings.instances && !st.closed {
                st = self.ready.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let Some(first) = st.pending.front() else {
                if st.closed {
                    return None;
                }
                if st.settings.spin_us > 0 && !spun {
                    spun = true;
                    // read under the lock: a request queued after it bumps the epoch
                    let epoch = self.epoch.load(Ordering::Acquire);
                    let until = Instant::now() + Duration::from_micros(st.settings.spin_us);
                    drop(st);
                    dlrs_model::forward::spin_until(until, &|| {
                        self.epoch.load(Ordering::Acquire) != epoch
                    });
                    st = self.lock();
                    continue;
                }
                st = self.ready.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            let window_end = first.entry.enqueued + Duration::from_micros(st.settings.delay_us);
            let (plan, full) = plan_batch(
                st.pending.iter().map(|p| {
                    (
                        p.entry.len(),
                        p.dispatched,
                        Arc::ptr_eq(&p.entry.model, &first.entry.model),
                    )
                }),
                st.settings.max_batch,
            );
            let now = Instant::now();
            if !(full || st.closed || now >= window_end) {
                st = self
                    .ready
                    .wait_timeout(st, window_end - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            let mut size = 0;
            let mut segments = Vec::with_capacity(plan.len());
            for (i, r0, r1) in plan {
                let p = &mut st.pending[i];
                if r0 == 0 {
                    self.metrics.queue_wait.record(
                        now.saturating_duration_since(p.entry.enqueued)
                            .as_secs_f64(),
                    );
                }
                p.dispatched = r1;
                size += r1 - r0;
                segments.push((Arc::clone(&p.entry), r0, r1));
            }
            while st
                .pending
                .front()
                .is_some_and(|p| p.dispatched == p.entry.len())
            {
                st.pending.pop_front();
            }
            self.release(&mut st, size);
            let more = !st.pending.is_empty();
            let threads = st.settings.threads_per_batch;
            drop(st);
            if more {
                // another instance may take the rest (an inactive one waits again)
                self.wake();
            }
            return Some((segments, threads));
        }
    }

    /// Takes out of the queue every request whose deadline passed (answered 504, so that no
    /// computation starts for it), whose client went away, or that a failed chunk answered.
    fn drop_dead(&self, st: &mut State) {
        let now = Instant::now();
        let mut released = 0;
        st.pending.retain(|p| {
            let mut o = p.entry.out();
            let gone = o.reply.as_ref().is_none_or(ReplyTo::is_closed);
            if !gone && p.entry.deadline > now {
                return true;
            }
            released += p.entry.len() - p.dispatched;
            if let Some(reply) = o.reply.take() {
                drop(o);
                self.metrics.expired.increment(1);
                if !reply.is_closed() {
                    reply.send(Err(ApiError::DeadlineExceeded(format!(
                        "deadline passed after {} ms in the queue; the request was not computed",
                        p.entry.enqueued.elapsed().as_millis()
                    ))));
                }
            }
            false
        });
        if released > 0 {
            self.release(st, released);
        }
    }
}

/// Starts `instances` compute threads (`dlrs-batcher-{i}`) on `queue`, each with its own
/// executor of `threads` threads. They run until the queue is closed and drained.
pub fn spawn(
    queue: &Arc<Queue>,
    instances: usize,
    threads: usize,
    nice: i32,
    hooks: &Hooks,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    let instances = instances.max(1);
    {
        let mut st = queue.lock();
        st.settings.instances = instances;
        st.settings.threads_per_batch = threads.max(1);
    }
    (0..instances)
        .map(|i| spawn_instance(queue, i, threads, nice, hooks))
        .collect()
}

/// Starts the compute of a queue made with [`Queue::controlled`]: one instance per thread
/// (instance `i` with an executor of the most threads a setting can give it), of which the
/// controller's settings let `threads / threads_per_batch` take batches; and the controller
/// itself (`dlrs-controller`), which looks every `period` until the queue closes.
pub fn spawn_controlled(
    queue: &Arc<Queue>,
    nice: i32,
    hooks: &Hooks,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    let Some(controller) = queue.controller.clone() else {
        return Err(std::io::Error::other("the queue has no controller"));
    };
    let threads = controller.threads;
    let mut handles = (0..threads)
        .map(|i| {
            let most = crate::control::instance_threads(threads, i);
            spawn_instance(queue, i, most, nice, hooks)
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let q = Arc::clone(queue);
    handles.push(
        std::thread::Builder::new()
            .name("dlrs-controller".into())
            .spawn(move || control_loop(&q, &controller))?,
    );
    Ok(handles)
}

/// The controller's thread: a look every period; a change is put in force and logged.
fn control_loop(queue: &Queue, controller: &Controller) {
    loop {
        std::thread::sleep(controller.cfg.period);
        if queue.lock().closed {
            return;
        }
        if let Some((settings, why)) = controller.look(Instant::now(), &queue.metrics) {
            let before = queue.settings();
            queue.apply(settings);
            if before.threads_per_batch != settings.threads_per_batch {
                queue.metrics.control_moves.increment(1);
            }
            let layout = |s: &Settings| (s.threads_per_batch, s.max_batch, s.delay_us);
            if layout(&before) != layout(&settings) {
                tracing::info!(
                    target: "dlrs_serve::control",
                    "scheduler: {} (was {}): {why}",
                    settings.describe(),
                    before.describe()
                );
            } else {
                tracing::debug!(
                    target: "dlrs_serve::control",
                    "scheduler: {}: {why}",
                    settings.describe()
                );
            }
        }
    }
}

fn spawn_instance(
    queue: &Arc<Queue>,
    i: usize,
    threads: usize,
    nice: i32,
    hooks: &Hooks,
) -> std::io::Result<JoinHandle<()>> {
    let exec =
        Executor::with_nice(threads, nice).map_err(|e| std::io::Error::other(e.to_string()))?;
    let (queue, hooks) = (Arc::clone(queue), hooks.clone());
    std::thread::Builder::new()
        .name(format!("dlrs-batcher-{i}"))
        .spawn(move || {
            if nice != 0 {
                dlrs_model::sys::set_thread_nice(nice);
            }
            run(&queue, i, &exec, &hooks)
        })
}

/// Instance `i`'s body. A panic outside the forward pass' own guard (a bug) restarts the
/// loop with a fresh workspace; the requests of that batch get 500 (see `Entry`'s drop).
fn run(queue: &Queue, i: usize, exec: &Executor, hooks: &Hooks) {
    let mut ws = Workspace::default();
    loop {
        let done = catch_unwind(AssertUnwindSafe(|| {
            while let Some((segments, threads)) = queue.next_batch(i) {
                compute(queue, &segments, &mut ws, exec, threads, hooks);
            }
        }));
        match done {
            Ok(()) => return,
            Err(_) => {
                tracing::error!("a batcher panicked outside a forward pass; restarting it");
                ws = Workspace::default();
            }
        }
    }
}

fn compute(
    queue: &Queue,
    segments: &[Segment],
    ws: &mut Workspace,
    exec: &Executor,
    threads: usize,
    hooks: &Hooks,
) {
    let Some((first, _, _)) = segments.first() else {
        return;
    };
    let start = Instant::now();
    let size: usize = segments.iter().map(|(_, r0, r1)| r1 - r0).sum();
    let model = &first.model.model;
    let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<Vec<f32>, ApiError> {
        let batch = assemble(&model.config, segments)?;
        if let Some(h) = &hooks.before_forward {
            h(&batch);
        }
        let scores = model
            .forward_on(&batch, ws, exec, threads)
            .map_err(ApiError::from_compute)?;
        Ok(scores.to_vec())
    }));
    let took = start.elapsed();
    queue.metrics.compute.record(took.as_secs_f64());
    queue.observe(size, took, threads.min(exec.threads()));
    queue.metrics.batch_size.record(size as f64);
    let result = match outcome {
        Ok(Ok(scores)) if scores.len() == size => Ok(scores),
        Ok(Ok(scores)) => Err(ApiError::Internal(format!(
            "the forward pass returned {} scores for {size} samples",
            scores.len()
        ))),
        Ok(Err(e)) => Err(e),
        Err(panic) => {
            *ws = Workspace::default();
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(
                requests = %request_ids(segments),
                "a batch of {size} samples panicked: {what}; its requests get 500"
            );
            Err(ApiError::Internal(format!(
                "the computation of this request's batch panicked: {what}"
            )))
        }
    };
    match result {
        Ok(scores) => {
            let mut at = 0;
            for (entry, r0, r1) in segments {
                if entry.deliver(*r0, &scores[at..at + r1 - r0])
                    && let Some(c) = &queue.controller
                {
                    c.learned()
                        .0
                        .answered(Instant::now(), entry.enqueued.elapsed());
                }
                at += r1 - r0;
            }
        }
        Err(e) => {
            for (entry, _, _) in segments {
                entry.fail(e.clone());
            }
        }
    }
}

/// The ids of the requests of `segments`, comma-separated (`-` for a request without one).
fn request_ids(segments: &[Segment]) -> String {
    let ids: Vec<&str> = segments
        .iter()
        .map(|(e, _, _)| e.request_id.as_deref().unwrap_or("-"))
        .collect();
    ids.join(",")
}

/// The batch of `segments`: the request's own batch when it is one whole request, else the
/// rows of each segment concatenated. Every segment is of a batch validated for the model
/// `cfg` describes (a batch never mixes versions), so the ids are not range-checked again.
fn assemble<'a>(cfg: &DlrmConfig, segments: &'a [Segment]) -> Result<Cow<'a, Batch>, ApiError> {
    if let [(entry, 0, r1)] = segments
        && *r1 == entry.len()
    {
        return Ok(Cow::Borrowed(&*entry.batch));
    }
    let nd = cfg.n_dense();
    let nt = cfg.n_tables();
    let size: usize = segments.iter().map(|(_, r0, r1)| r1 - r0).sum();
    let mut dense = Vec::with_capacity(size * nd);
    let mut bags: Vec<Bags> = (0..nt)
        .map(|t| Bags {
            offsets: Vec::with_capacity(size + 1).into(),
            ids: Vec::with_capacity(
                segments
                    .iter()
                    .map(|(e, r0, r1)| {
                        let o = &e.batch.bags()[t].offsets;
                        (o[*r1] - o[*r0]) as usize
                    })
                    .sum(),
            )
            .into(),
        })
        .collect();
    for b in &mut bags {
        b.offsets.to_mut().push(0);
    }
    for (entry, r0, r1) in segments {
        let (r0, r1) = (*r0, *r1);
        let src = &entry.batch;
        dense.extend_from_slice(&src.dense()[r0 * nd..r1 * nd]);
        for (dst, s) in bags.iter_mut().zip(src.bags()) {
            let (lo, hi) = (s.offsets[r0] as usize, s.offsets[r1] as usize);
            let base = dst.ids.len();
            if base + (hi - lo) > u32::MAX as usize {
                return Err(ApiError::TooLarge(
                    "more than 2^32 ids of one table in one batch".into(),
                ));
            }
            dst.ids.to_mut().extend_from_slice(&s.ids[lo..hi]);
            dst.offsets.to_mut().extend(
                s.offsets[r0 + 1..=r1]
                    .iter()
                    .map(|&o| (o as usize - lo + base) as u32),
            );
        }
    }
    Batch::from_parts_ids_checked(cfg, size, dense, bags)
        .map(Cow::Owned)
        .map_err(ApiError::from_compute)
}

/// The batching rule: given the queued requests in arrival order as `(samples, samples
/// already dispatched, same model version as the first)`, the next batch as `(request index,
/// first row, end row)` segments (whole requests; a request larger than `max` is cut into
/// `max`-sample chunks; a request of another version ends the batch), and whether the batch
/// is full (nothing more could join).
pub fn plan_batch(
    queued: impl IntoIterator<Item = (usize, usize, bool)>,
    max: usize,
) -> (Vec<(usize, usize, usize)>, bool) {
    let mut segs = Vec::new();
    let mut size = 0;
    for (i, (len, dispatched, same_version)) in queued.into_iter().enumerate() {
        if !same_version {
            return (segs, true);
        }
        let left = len - dispatched;
        let take = if size == 0 {
            left.min(max)
        } else if size + left <= max {
            left
        } else {
            return (segs, true);
        };
        segs.push((i, dispatched, dispatched + take));
        size += take;
        if size >= max {
            return (segs, true);
        }
    }
    (segs, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dlrs_model::{Model, Sample};
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    fn version() -> Arc<Version> {
        let cfg = DlrmConfig::from_json_str(
            r#"{"arch_mlp_bot":"2-4","arch_mlp_top":"3-1","arch_embedding_size":"5-3",
                "arch_sparse_feature_size":4,"arch_interaction_op":"cat"}"#,
        )
        .unwrap();
        Arc::new(Version {
            model: Model::random(cfg, 1).unwrap(),
            number: 1,
        })
    }

    fn sample(i: u32) -> Sample {
        Sample {
            dense: vec![i as f32, 0.5],
            sparse: vec![(0..i % 3).map(|k| (i + k) % 5).collect(), vec![i % 3]],
            label: None,
        }
    }

    fn batch(v: &Version, from: u32, n: u32) -> Batch {
        let cfg = &v.model.config;
        let mut b = Batch::empty(cfg);
        for i in from..from + n {
            b.push(cfg, &sample(i)).unwrap();
        }
        b
    }

    fn entry(v: &Arc<Version>, from: u32, n: u32) -> Arc<Entry> {
        let out = Mutex::new(Out {
            reply: None,
            scores: Vec::new(),
            left: n as usize,
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        Arc::new(Entry {
            model: Arc::clone(v),
            batch: Arc::new(batch(v, from, n)),
            deadline,
            enqueued: Instant::now(),
            request_id: Some(format!("r{from}").into()),
            out,
        })
    }

    fn queue(max_batch: usize, max_delay: Duration, max_queue: usize) -> Arc<Queue> {
        Arc::new(Queue::new(
            QueueConfig {
                max_batch,
                max_queue_delay_us: max_delay.as_micros() as u64,
                max_queue,
                max_queue_burst: 0,
                burst_cooldown_ms: 100,
                max_queue_wait_ms: 0,
                idle_spin_us: 0,
            },
            Arc::new(Metrics::new()),
        ))
    }

    /// Submits `b` and returns the receiver of its answer.
    fn submit(
        q: &Queue,
        v: &Arc<Version>,
        b: Batch,
        deadline: Duration,
    ) -> Result<oneshot::Receiver<Reply>, ApiError> {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            model: Arc::clone(v),
            batch: Arc::new(b),
            deadline: Instant::now() + deadline,
            reply: ReplyTo::Channel(tx),
            request_id: None,
        };
        q.submit(job, None).map(|()| rx)
    }

    #[test]
    fn assembled_segments_equal_the_samples_pushed_in_order() {
        let v = version();
        let (e0, e1, e2) = (entry(&v, 0, 3), entry(&v, 3, 4), entry(&v, 7, 2));
        // the tail of request 0, all of request 1, the head of request 2
        let segs = [(e0, 1, 3), (Arc::clone(&e1), 0, 4), (e2, 0, 1)];
        let got = assemble(&v.model.config, &segs).unwrap();
        assert_eq!(*got, batch(&v, 1, 7));
        assert!(matches!(
            assemble(&v.model.config, &[(e1, 0, 4)]).unwrap(),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn a_failed_batch_names_its_requests() {
        let v = version();
        let (e0, e1) = (entry(&v, 0, 3), entry(&v, 3, 4));
        let anonymous = Arc::new(Entry {
            model: Arc::clone(&v),
            batch: Arc::new(batch(&v, 9, 1)),
            deadline: Instant::now(),
            enqueued: Instant::now(),
            request_id: None,
            out: Mutex::new(Out {
                reply: None,
                scores: Vec::new(),
                left: 1,
            }),
        });
        let segs = [(e0, 1, 3), (e1, 0, 4), (anonymous, 0, 1)];
        assert_eq!(request_ids(&segs), "r0,r3,-");
    }

    #[test]
    fn plan_merges_whole_requests_splits_big_ones_and_never_mixes_versions() {
        let t = |v: &[(usize, usize, bool)]| plan_batch(v.iter().copied(), 4);
        assert_eq!(
            t(&[(1, 0, true), (2, 0, true), (2, 0, true)]),
            (vec![(0, 0, 1), (1, 0, 2)], true),
            "the third does not fit whole"
        );
        assert_eq!(
            t(&[(6, 0, true), (1, 0, true)]),
            (vec![(0, 0, 4)], true),
            "a request larger than a batch is cut"
        );
        assert_eq!(
            t(&[(6, 4, true), (1, 0, true)]),
            (vec![(0, 4, 6), (1, 0, 1)], false),
            "its rest is batched with the next"
        );
        assert_eq!(
            t(&[(1, 0, true), (1, 0, false)]),
            (vec![(0, 0, 1)], true),
            "another version waits for the next batch"
        );
    }

    /// Many concurrent requests of every size, some larger than a batch, on 1 to 3
    /// instances: each gets exactly the scores of its own samples computed alone.
    #[test]
    fn concurrent_requests_get_their_own_scores_on_any_number_of_instances() {
        let v = version();
        for instances in 1..=3 {
            let q = queue(5, Duration::from_micros(200), 10_000);
            let handles = spawn(&q, instances, 1, 0, &Hooks::default()).unwrap();
            let results: Vec<(Vec<f32>, Vec<f32>)> = std::thread::scope(|s| {
                let workers: Vec<_> = (0..4u32)
                    .map(|t| {
                        let (q, v) = (&q, &v);
                        s.spawn(move || {
                            let mut got = Vec::new();
                            for k in 0..25u32 {
                                let (from, n) = (t * 1000 + k * 13, 1 + (k * 7 + t) % 12);
                                let b = batch(v, from, n);
                                let want = v
                                    .model
                                    .forward(
                                        &b,
                                        &mut Workspace::default(),
                                        &Executor::new(1).unwrap(),
                                    )
                                    .unwrap()
                                    .to_vec();
                                let rx = submit(q, v, b, Duration::from_secs(30)).unwrap();
                                got.push((rx.blocking_recv().unwrap().unwrap(), want));
                            }
                            got
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .flat_map(|w| w.join().unwrap())
                    .collect()
            });
            for (got, want) in results {
                assert_eq!(got, want, "{instances} instances");
            }
            q.close();
            for h in handles {
                h.join().unwrap();
            }
        }
    }

    /// Four threads submit requests to a queue on `threads` compute threads while `toggle`
    /// runs beside them; every answer must be the request's own scores.
    fn answers_stay_right_while(
        threads: usize,
        q: &Arc<Queue>,
        toggle: impl Fn(&AtomicBool) + Sync,
    ) {
        let v = version();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| toggle(&stop));
            let workers: Vec<_> = (0..4u32)
                .map(|t| {
                    let v = &v;
                    s.spawn(move || {
                        for k in 0..40u32 {
                            let (from, n) = (t * 1000 + k * 13, 1 + (k * 7 + t) % 40);
                            let b = batch(v, from, n);
                            let want = v
                                .model
                                .forward(&b, &mut Workspace::default(), &Executor::new(1).unwrap())
                                .unwrap()
                                .to_vec();
                            let rx = submit(q, v, b, Duration::from_secs(30)).unwrap();
                            let got = rx.blocking_recv().unwrap().unwrap();
                            assert_eq!(got.len(), want.len());
                            for (g, w) in got.iter().zip(&want) {
                                assert!((g - w).abs() <= 1e-6, "{threads} threads: {g} vs {w}");
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join().unwrap();
            }
            stop.store(true, Ordering::SeqCst);
        });
    }

    #[test]
    fn settings_changed_under_load_lose_no_request_and_mix_no_rows() {
        for threads in [2, 4] {
            let cfg = ControlConfig::new(10.0);
            let controller = Controller::new(cfg, threads, &QueueConfig::default());
            let q = Arc::new(Queue::controlled(
                QueueConfig::default(),
                Arc::new(Metrics::new()),
                controller,
            ));
            // the instances without the controller's thread: the test moves the settings
            let ps = crate::control::parallelisms(threads);
            let handles: Vec<_> = (0..threads)
                .map(|i| {
                    let most = crate::control::instance_threads(threads, i);
                    spawn_instance(&q, i, most, 0, &Hooks::default()).unwrap()
                })
                .collect();
            answers_stay_right_while(threads, &q, |stop| {
                let mut k = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let p = ps[k % ps.len()];
                    q.apply(Settings {
                        threads_per_batch: p,
                        instances: threads / p,
                        max_batch: [3, 16, 40, 64][k % 4],
                        delay_us: [0, 100][k % 2],
                        max_wait: None,
                        spin_us: [0, 300, 0][k % 3],
                    });
                    k += 1;
                    std::thread::sleep(Duration::from_micros(700));
                }
            });
            q.close();
            for h in handles {
                h.join().unwrap();
            }
        }
    }

    #[test]
    fn the_controller_tries_each_layout_on_live_traffic_and_reports_it() {
        let cfg = ControlConfig {
            period: Duration::from_millis(5),
            ..ControlConfig::new(50.0)
        };
        let controller = Controller::new(cfg, 2, &QueueConfig::default());
        let metrics = Arc::new(Metrics::new());
        let q = Arc::new(Queue::controlled(
            QueueConfig::default(),
            Arc::clone(&metrics),
            Arc::clone(&controller),
        ));
        let handles = spawn_controlled(&q, 0, &Hooks::default()).unwrap();
        assert_eq!(handles.len(), 3, "two instances and the controller");
        // load until both parallelisms ran batches (it starts on 2 threads per batch and
        // tries 1 once 2 is measured), however slowly the machine runs
        let both = || {
            let view = controller.learned().0.view(Instant::now(), 0.99);
            view.service
                .iter()
                .all(|s| s.is_some_and(|s| s.batches >= 2))
        };
        let names = [
            "dlrs_control_threads_per_batch",
            "dlrs_control_max_batch",
            "dlrs_control_wait_bound_seconds",
            "dlrs_control_seconds_per_sample{threads=\"1\"}",
            "dlrs_control_predicted_latency_seconds{threads=\"2\"}",
        ];
        // (the gauges are set at the controller's next look)
        let shown = || names.iter().all(|n| metrics.render().contains(n));
        let until = Instant::now() + Duration::from_secs(60);
        while !(both() && shown()) && Instant::now() < until {
            answers_stay_right_while(2, &q, |_| {});
        }
        q.close();
        for h in handles {
            h.join().unwrap();
        }
        assert!(
            both(),
            "{:?}",
            controller.learned().0.view(Instant::now(), 0.99)
        );
        let text = metrics.render();
        for name in names {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }

    #[test]
    fn expired_requests_are_never_computed_and_a_full_queue_refuses_at_once() {
        let v = version();
        let q = queue(4, Duration::ZERO, 6);
        let computed = Arc::new(AtomicUsize::new(0));
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let hold_rx = Mutex::new(hold_rx);
        let c = Arc::clone(&computed);
        let hooks = Hooks {
            before_forward: Some(Arc::new(move |b: &Batch| {
                // the first batch waits until the test lets it go
                if c.fetch_add(b.size(), Ordering::SeqCst) == 0 {
                    let _ = hold_rx.lock().unwrap().recv();
                }
            })),
            ..Default::default()
        };
        let handles = spawn(&q, 1, 1, 0, &hooks).unwrap();
        let first = submit(&q, &v, batch(&v, 0, 2), Duration::from_secs(30)).unwrap();
        while computed.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        let short = submit(&q, &v, batch(&v, 2, 3), Duration::from_millis(1)).unwrap();
        let full = submit(&q, &v, batch(&v, 5, 4), Duration::from_secs(30));
        assert!(
            matches!(full, Err(ApiError::Overloaded(_))),
            "3 + 4 > 6 waiting samples"
        );
        assert!(matches!(
            submit(&q, &v, batch(&v, 0, 7), Duration::from_secs(1)),
            Err(ApiError::TooLarge(_))
        ));
        std::thread::sleep(Duration::from_millis(20));
        hold_tx.send(()).unwrap();
        assert_eq!(first.blocking_recv().unwrap().unwrap().len(), 2);
        assert!(matches!(
            short.blocking_recv().unwrap(),
            Err(ApiError::DeadlineExceeded(_))
        ));
        let after = submit(&q, &v, batch(&v, 0, 4), Duration::from_secs(30)).unwrap();
        assert_eq!(
            after.blocking_recv().unwrap().unwrap().len(),
            4,
            "the expired samples left the queue"
        );
        assert_eq!(
            computed.load(Ordering::SeqCst),
            6,
            "the expired request was not computed"
        );
        q.abort();
        assert!(matches!(
            submit(&q, &v, batch(&v, 0, 1), Duration::from_secs(1)),
            Err(ApiError::ShuttingDown(_))
        ));
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn a_panicking_batch_answers_500_and_the_instance_keeps_serving() {
        let v = version();
        let q = queue(8, Duration::ZERO, 100);
        let hooks = Hooks {
            before_forward: Some(Arc::new(|b: &Batch| assert!(b.size() != 3, "boom"))),
            ..Default::default()
        };
        let handles = spawn(&q, 1, 2, 0, &hooks).unwrap();
        let bad = submit(&q, &v, batch(&v, 0, 3), Duration::from_secs(30)).unwrap();
        assert!(
            matches!(bad.blocking_recv().unwrap(), Err(ApiError::Internal(m)) if m.contains("boom"))
        );
        let good = submit(&q, &v, batch(&v, 0, 2), Duration::from_secs(30)).unwrap();
        assert_eq!(good.blocking_recv().unwrap().unwrap().len(), 2);
        q.close();
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn the_wait_bound_refuses_what_the_measured_compute_time_cannot_start_in_time() {
        let v = version();
        let cfg = QueueConfig {
            max_batch: 4,
            max_queue_delay_us: 0,
            max_queue: 1000,
            max_queue_burst: 0,
            burst_cooldown_ms: 100,
            max_queue_wait_ms: 5,
            idle_spin_us: 0,
        };
        let q = Arc::new(Queue::new(cfg, Arc::new(Metrics::new())));
        // no instance runs: what is admitted stays queued
        assert!(
            submit(&q, &v, batch(&v, 0, 3), Duration::from_secs(30)).is_ok(),
            "no estimate yet"
        );
        q.observe(2, Duration::from_millis(2), 1); // 1 ms per sample: 3 ms waiting
        let _kept = submit(&q, &v, batch(&v, 0, 3), Duration::from_secs(30)).unwrap();
        // 6 ms of work waiting now: refused at once, naming the flag
        match submit(&q, &v, batch(&v, 0, 1), Duration::from_secs(30)) {
            Err(ApiError::Overloaded(m)) => assert!(m.contains("--max-queue-wait-ms"), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        // one batch 50 times slower is an outlier of the median, not a new estimate
        q.observe(2, Duration::from_millis(2), 1);
        q.observe(2, Duration::from_millis(100), 1);
        assert_eq!(q.lock().per_sample_s, 1e-3);
        // two instances halve the estimate
        q.lock().settings.instances = 2;
        assert!(submit(&q, &v, batch(&v, 0, 1), Duration::from_secs(30)).is_ok());
    }

    #[test]
    fn the_queue_takes_a_burst_unless_it_refused_lately() {
        let cfg = |burst| QueueConfig {
            max_batch: 4,
            max_queue_delay_us: 0,
            max_queue: 6,
            max_queue_burst: burst,
            burst_cooldown_ms: 50,
            max_queue_wait_ms: 0,
            idle_spin_us: 0,
        };
        let refused = |r: Result<Reservation, ApiError>, flag: &str| match r {
            Err(ApiError::Overloaded(m)) => assert!(m.contains(flag), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        };
        // off: 6 samples
        let q = Arc::new(Queue::new(cfg(0), Arc::new(Metrics::new())));
        let _a = q.reserve(5).unwrap();
        refused(q.reserve(5), "(--max-queue)");

        let q = Arc::new(Queue::new(cfg(12), Arc::new(Metrics::new())));
        // nothing refused yet: up to 12
        let a = q.reserve(5).unwrap();
        let b = q.reserve(5).unwrap();
        refused(q.reserve(3), "(--max-queue-burst)");
        // within the cooldown of that refusal: 6, even with room freed
        drop(b);
        refused(q.reserve(2), "(--max-queue)");
        let c = q.reserve(1).unwrap();
        // the cooldown restarts with each refusal
        std::thread::sleep(Duration::from_millis(30));
        refused(q.reserve(1), "(--max-queue)");
        std::thread::sleep(Duration::from_millis(30));
        refused(q.reserve(1), "(--max-queue)");
        // none for longer than the cooldown: the burst room again
        std::thread::sleep(Duration::from_millis(60));
        let _d = q.reserve(6).unwrap();
        drop((a, c));
        let _e = q.reserve(6).unwrap();
        // a request larger than --max-queue is 413 even when a burst would hold it
        assert!(matches!(q.reserve(7), Err(ApiError::TooLarge(_))));
    }
}
