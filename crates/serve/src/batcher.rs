//! The bounded queue and the batcher thread: merges queued requests into batches, runs the
//! forward pass behind a panic guard and hands each request its scores.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dlrs_model::{Bags, Batch, DlrmConfig, Executor, Workspace};
use tokio::sync::oneshot;

use crate::Hooks;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::state::Version;

pub type Reply = Result<Vec<f32>, ApiError>;

/// One admitted request.
pub struct Job {
    /// the model version its batch was validated against (and will run on)
    pub model: Arc<Version>,
    pub batch: Batch,
    pub deadline: Instant,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<Reply>,
    /// samples handed to a batch so far (a request larger than a batch goes in chunks)
    dispatched: usize,
    scores: Vec<f32>,
}

impl Job {
    pub fn new(model: Arc<Version>, batch: Batch, deadline: Instant, reply: oneshot::Sender<Reply>) -> Self {
        Job { model, batch, deadline, enqueued: Instant::now(), reply, dispatched: 0, scores: Vec::new() }
    }
    fn len(&self) -> usize {
        self.batch.size()
    }
}

/// The admission side of the queue: counts waiting samples against the capacity.
pub struct Queue {
    tx: Mutex<Option<Sender<Job>>>,
    waiting: AtomicUsize,
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl Queue {
    pub fn new(tx: Sender<Job>, capacity: usize, metrics: Arc<Metrics>) -> Self {
        Queue { tx: Mutex::new(Some(tx)), waiting: AtomicUsize::new(0), capacity, metrics }
    }

    /// Admits a job or refuses it at once.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        let n = job.len();
        if n > self.capacity {
            return Err(ApiError::TooLarge(format!(
                "the request has {n} samples; the server queues at most {} (--max-queue)",
                self.capacity
            )));
        }
        let admitted = self.waiting.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
            (w + n <= self.capacity).then_some(w + n)
        });
        if let Err(w) = admitted {
            return Err(ApiError::Overloaded(format!(
                "queue full: {w} of {} samples waiting, the request has {n}; retry later",
                self.capacity
            )));
        }
        self.metrics.queue_depth.increment(n as f64);
        let sent = match &*self.tx.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(tx) => tx.send(job).is_ok(),
            None => false,
        };
        if !sent {
            self.release(n);
            return Err(ApiError::ShuttingDown("the server is shutting down".into()));
        }
        Ok(())
    }

    /// Samples left the queue (computed, expired or failed).
    fn release(&self, n: usize) {
        if n > 0 {
            self.waiting.fetch_sub(n, Ordering::AcqRel);
            self.metrics.queue_depth.decrement(n as f64);
        }
    }

    /// Closes the queue: the batcher finishes what it holds and exits.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

pub struct BatcherConfig {
    pub max_batch: usize,
    pub max_delay: Duration,
    pub hooks: Hooks,
}

/// The batcher thread's body: runs until the queue is closed and drained. A panic outside
/// the forward pass' own guard (a bug) restarts the loop with fresh state; the requests it
/// held get 500 (their reply channels drop).
pub fn run(rx: Receiver<Job>, queue: Arc<Queue>, exec: Executor, cfg: BatcherConfig, metrics: Arc<Metrics>) {
    let mut b = Batcher { rx, queue, exec, cfg, metrics, ws: Workspace::default(), pending: VecDeque::new() };
    loop {
        match catch_unwind(AssertUnwindSafe(|| b.run())) {
            Ok(()) => return,
            Err(_) => {
                eprintln!("dlrs serve: the batcher panicked outside a forward pass; restarting it");
                for job in std::mem::take(&mut b.pending) {
                    b.queue.release(job.len() - job.dispatched);
                }
                b.ws = Workspace::default();
            }
        }
    }
}

struct Batcher {
    rx: Receiver<Job>,
    queue: Arc<Queue>,
    exec: Executor,
    cfg: BatcherConfig,
    metrics: Arc<Metrics>,
    ws: Workspace,
    /// jobs taken from the channel and not yet answered, in arrival order; the first may
    /// be partly computed
    pending: VecDeque<Job>,
}

/// `(index into pending, first row, end row)` of one job's part of a batch.
type Segment = (usize, usize, usize);

impl Batcher {
    fn run(&mut self) {
        let mut closed = false;
        loop {
            if self.pending.is_empty() {
                if closed {
                    return;
                }
                match self.rx.recv() {
                    Ok(j) => self.pending.push_back(j),
                    Err(_) => return,
                }
            }
            // gather more until the batch is full or the oldest request waited long enough
            let window_end = self.pending[0].enqueued + self.cfg.max_delay;
            while !closed && !self.plan().1 {
                let now = Instant::now();
                let got = if now >= window_end {
                    self.rx.try_recv().map_err(|e| matches!(e, TryRecvError::Disconnected))
                } else {
                    self.rx.recv_timeout(window_end - now).map_err(|e| matches!(e, RecvTimeoutError::Disconnected))
                };
                match got {
                    Ok(j) => self.pending.push_back(j),
                    Err(disconnected) => {
                        closed = disconnected;
                        break;
                    }
                }
            }
            self.drop_expired();
            if self.pending.is_empty() {
                continue;
            }
            let (segments, _) = self.plan();
            self.compute(&segments);
        }
    }

    /// The next batch: a prefix of `pending` (same model version; whole jobs, except that a
    /// job larger than a batch is cut into `max_batch` chunks), and whether it is full
    /// (nothing more could join it).
    fn plan(&self) -> (Vec<Segment>, bool) {
        let Some(first) = self.pending.front() else { return (Vec::new(), false) };
        plan_batch(
            self.pending.iter().map(|job| (job.len(), job.dispatched, Arc::ptr_eq(&job.model, &first.model))),
            self.cfg.max_batch,
        )
    }

    /// Answers 504 to (or forgets, when the client went away) every job whose deadline has
    /// passed, so that no computation starts for it.
    fn drop_expired(&mut self) {
        let now = Instant::now();
        let queue = &self.queue;
        let metrics = &self.metrics;
        self.pending.retain_mut(|job| {
            let gone = job.reply.is_closed();
            if !gone && job.deadline > now {
                return true;
            }
            queue.release(job.len() - job.dispatched);
            metrics.expired.increment(1);
            if !gone {
                let reply = std::mem::replace(&mut job.reply, oneshot::channel().0);
                let _ = reply.send(Err(ApiError::DeadlineExceeded(format!(
                    "deadline passed after {} ms in the queue; the request was not computed",
                    job.enqueued.elapsed().as_millis()
                ))));
            }
            false
        });
    }

    fn compute(&mut self, segments: &[Segment]) {
        let start = Instant::now();
        let size: usize = segments.iter().map(|&(_, r0, r1)| r1 - r0).sum();
        for &(i, r0, r1) in segments {
            let job = &mut self.pending[i];
            if r0 == 0 {
                self.metrics.queue_wait.record((start - job.enqueued).as_secs_f64());
            }
            job.dispatched = r1;
        }
        self.queue.release(size);
        let model = Arc::clone(&self.pending[0].model);
        let hooks = &self.cfg.hooks;
        let (pending, ws, exec) = (&self.pending, &mut self.ws, &self.exec);
        let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<Vec<f32>, ApiError> {
            let batch = assemble(&model.model.config, pending, segments)?;
            if let Some(h) = &hooks.before_forward {
                h(&batch);
            }
            let scores = model.model.forward(&batch, ws, exec).map_err(ApiError::from_compute)?;
            Ok(scores.to_vec())
        }));
        self.metrics.compute.record(start.elapsed().as_secs_f64());
        self.metrics.batch_size.record(size as f64);
        let result = match outcome {
            Ok(r) => r,
            Err(panic) => {
                self.ws = Workspace::default();
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                eprintln!("dlrs serve: a batch of {size} samples panicked: {what}; its requests get 500");
                Err(ApiError::Internal(format!("the computation of this request's batch panicked: {what}")))
            }
        };
        match result {
            Ok(scores) if scores.len() == size => {
                let mut at = 0;
                for &(i, r0, r1) in segments {
                    self.pending[i].scores.extend_from_slice(&scores[at..at + r1 - r0]);
                    at += r1 - r0;
                }
                // answer the jobs that are complete (all but possibly a split last one)
                while self.pending.front().is_some_and(|j| j.scores.len() == j.len()) {
                    let job = self.pending.pop_front().expect("front exists");
                    let _ = job.reply.send(Ok(job.scores));
                }
            }
            Ok(scores) => self.fail(
                segments.len(),
                ApiError::Internal(format!("the forward pass returned {} scores for {size} samples", scores.len())),
            ),
            Err(e) => self.fail(segments.len(), e),
        }
    }

    /// Answers the first `n` pending jobs with `err`.
    fn fail(&mut self, n: usize, err: ApiError) {
        for job in self.pending.drain(..n) {
            self.queue.release(job.len() - job.dispatched);
            let _ = job.reply.send(Err(err.clone()));
        }
    }
}

/// The batch of `segments`: the job's own batch when it is one whole job, else the rows of
/// each segment concatenated (validated again by `Batch::from_parts`).
fn assemble<'a>(cfg: &DlrmConfig, pending: &'a VecDeque<Job>, segments: &[Segment]) -> Result<Cow<'a, Batch>, ApiError> {
    if let [(i, 0, r1)] = *segments {
        if r1 == pending[i].len() {
            return Ok(Cow::Borrowed(&pending[i].batch));
        }
    }
    let nd = cfg.n_dense();
    let nt = cfg.n_tables();
    let size: usize = segments.iter().map(|&(_, r0, r1)| r1 - r0).sum();
    let mut dense = Vec::with_capacity(size * nd);
    let mut bags: Vec<Bags> = (0..nt).map(|_| Bags { offsets: Vec::with_capacity(size + 1), ids: Vec::new() }).collect();
    for b in &mut bags {
        b.offsets.push(0);
    }
    for &(i, r0, r1) in segments {
        let src = &pending[i].batch;
        dense.extend_from_slice(&src.dense()[r0 * nd..r1 * nd]);
        for (dst, s) in bags.iter_mut().zip(src.bags()) {
            let (lo, hi) = (s.offsets[r0] as usize, s.offsets[r1] as usize);
            let base = dst.ids.len();
            if base + (hi - lo) > u32::MAX as usize {
                return Err(ApiError::TooLarge("more than 2^32 ids of one table in one batch".into()));
            }
            dst.ids.extend_from_slice(&s.ids[lo..hi]);
            dst.offsets.extend(s.offsets[r0 + 1..=r1].iter().map(|&o| (o as usize - lo + base) as u32));
        }
    }
    Batch::from_parts(cfg, size, dense, bags).map(Cow::Owned).map_err(ApiError::from_compute)
}

/// The batching rule, shared by the server and its in-process twin (`dlrs twin`): given the
/// queued requests in arrival order as `(samples, samples already dispatched, same model
/// version as the first)`, the next batch as `(request index, first row, end row)` segments
/// (whole requests; a request larger than `max` is cut into `max`-sample chunks; a request
/// of another version ends the batch), and whether the batch is full (nothing more could join).
pub fn plan_batch(queued: impl IntoIterator<Item = (usize, usize, bool)>, max: usize) -> (Vec<Segment>, bool) {
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

    fn version() -> Arc<Version> {
        let cfg = DlrmConfig::from_json_str(
            r#"{"arch_mlp_bot":"2-4","arch_mlp_top":"3-1","arch_embedding_size":"5-3",
                "arch_sparse_feature_size":4,"arch_interaction_op":"cat"}"#,
        )
        .unwrap();
        Arc::new(Version { model: Model::random(cfg, 1).unwrap(), number: 1 })
    }

    fn sample(i: u32) -> Sample {
        Sample { dense: vec![i as f32, 0.5], sparse: vec![(0..i % 3).map(|k| (i + k) % 5).collect(), vec![i % 3]], label: None }
    }

    fn job(v: &Arc<Version>, from: u32, n: u32) -> Job {
        let cfg = &v.model.config;
        let mut b = Batch::empty(cfg);
        for i in from..from + n {
            b.push(cfg, &sample(i)).unwrap();
        }
        Job::new(Arc::clone(v), b, Instant::now() + Duration::from_secs(60), oneshot::channel().0)
    }

    #[test]
    fn assembled_segments_equal_the_samples_pushed_in_order() {
        let v = version();
        let pending: VecDeque<Job> = [job(&v, 0, 3), job(&v, 3, 4), job(&v, 7, 2)].into();
        // the tail of job 0, all of job 1, the head of job 2
        let got = assemble(&v.model.config, &pending, &[(0, 1, 3), (1, 0, 4), (2, 0, 1)]).unwrap();
        let mut want = Batch::empty(&v.model.config);
        for i in 1..8 {
            want.push(&v.model.config, &sample(i)).unwrap();
        }
        assert_eq!(*got, want);
        assert!(matches!(assemble(&v.model.config, &pending, &[(1, 0, 4)]).unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn plan_merges_whole_jobs_splits_big_ones_and_never_mixes_versions() {
        let (v1, v2) = (version(), version());
        let metrics = Arc::new(Metrics::new());
        let (tx, rx) = std::sync::mpsc::channel();
        let queue = Arc::new(Queue::new(tx, 100, Arc::clone(&metrics)));
        let cfg = BatcherConfig { max_batch: 4, max_delay: Duration::ZERO, hooks: Hooks::default() };
        let mut b = Batcher {
            rx,
            queue,
            exec: Executor::new(1).unwrap(),
            cfg,
            metrics,
            ws: Workspace::default(),
            pending: VecDeque::new(),
        };
        b.pending = [job(&v1, 0, 1), job(&v1, 1, 2), job(&v1, 3, 2)].into();
        assert_eq!(b.plan(), (vec![(0, 0, 1), (1, 0, 2)], true), "the third job does not fit whole");
        b.pending = [job(&v1, 0, 6), job(&v1, 6, 1)].into();
        assert_eq!(b.plan(), (vec![(0, 0, 4)], true), "a job larger than a batch is cut");
        b.pending[0].dispatched = 4;
        assert_eq!(b.plan(), (vec![(0, 4, 6), (1, 0, 1)], false), "its rest is batched with the next");
        b.pending = [job(&v1, 0, 1), job(&v2, 1, 1)].into();
        assert_eq!(b.plan(), (vec![(0, 0, 1)], true), "another version waits for the next batch");
    }
}
