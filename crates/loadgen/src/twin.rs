//! The in-process twin: the same arrivals and queries, no HTTP. A batcher thread merges
//! queued queries the way `dlrs serve` does and runs the forward pass; latency counts from
//! each query's scheduled time, so HTTP's share of the latency is the difference.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use anyhow::ensure;
use dlrs_model::{Bags, Batch, DlrmConfig};

use crate::driver::{Job, Measure, Results, spawn_dispatcher, start_instant};
use crate::stats::{Report, Status};

/// The batching policy (the same knobs as `dlrs serve`).
#[derive(Clone, Copy, Debug)]
pub struct Batching {
    /// most samples in one forward pass; larger queries are split into chunks
    pub max_batch: usize,
    /// longest the oldest queued query waits for others to join its batch
    pub max_queue_delay: Duration,
}

struct Pending {
    job: Job,
    arrived: Instant,
    size: usize,
    /// samples handed to batches so far
    dispatched: usize,
}

/// `(index into pending, first row, end row)`.
type Segment = (usize, usize, usize);

/// The next batch: whole queries in arrival order (the first one's next chunk if it is
/// larger than a batch) and whether the batch is full (nothing more can join).
fn plan(pending: &VecDeque<Pending>, max: usize) -> (Vec<Segment>, bool) {
    dlrs_serve::plan_batch(pending.iter().map(|p| (p.size, p.dispatched, true)), max)
}

/// The rows of `segments` as one batch (borrowed when it is one whole query).
fn assemble<'a>(
    cfg: &DlrmConfig,
    queries: &'a [Batch],
    pending: &VecDeque<Pending>,
    segments: &[Segment],
) -> anyhow::Result<Cow<'a, Batch>> {
    let q = |i: usize| &queries[pending[i].job.index % queries.len()];
    if let [(i, 0, r1)] = *segments {
        if r1 == pending[i].size {
            return Ok(Cow::Borrowed(q(i)));
        }
    }
    let nd = cfg.n_dense();
    let size: usize = segments.iter().map(|&(_, r0, r1)| r1 - r0).sum();
    let mut dense = Vec::with_capacity(size * nd);
    let mut bags: Vec<Bags> = (0..cfg.n_tables())
        .map(|_| Bags {
            offsets: vec![0],
            ids: Vec::new(),
        })
        .collect();
    for &(i, r0, r1) in segments {
        let src = q(i);
        dense.extend_from_slice(&src.dense()[r0 * nd..r1 * nd]);
        for (dst, s) in bags.iter_mut().zip(src.bags()) {
            let (lo, hi) = (s.offsets[r0] as usize, s.offsets[r1] as usize);
            let base = dst.ids.len();
            dst.ids.extend_from_slice(&s.ids[lo..hi]);
            dst.offsets.extend(
                s.offsets[r0 + 1..=r1]
                    .iter()
                    .map(|&o| (o as usize - lo + base) as u32),
            );
        }
    }
    Ok(Cow::Owned(Batch::from_parts(cfg, size, dense, bags)?))
}

/// The batcher loop: runs until the dispatcher is done and every query is answered, or
/// `stop` is set. `compute` runs one batch and returns how many scores it produced.
fn batcher(
    rx: mpsc::Receiver<(Job, Instant)>,
    cfg: &DlrmConfig,
    queries: &[Batch],
    b: Batching,
    results: &Results,
    stop: &AtomicBool,
    compute: &mut (dyn FnMut(&Batch) -> anyhow::Result<usize> + Send),
) {
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut closed = false;
    let push = |pending: &mut VecDeque<Pending>, (job, arrived): (Job, Instant)| {
        let size = queries[job.index % queries.len()].size();
        pending.push_back(Pending {
            job,
            arrived,
            size,
            dispatched: 0,
        });
    };
    while !stop.load(Ordering::Relaxed) {
        if pending.is_empty() {
            if closed {
                return;
            }
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(j) => push(&mut pending, j),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        // gather until the batch is full or the oldest query waited long enough
        let window_end = pending[0].arrived + b.max_queue_delay;
        while !closed && !plan(&pending, b.max_batch).1 {
            let now = Instant::now();
            let got = if now >= window_end {
                rx.try_recv()
                    .map_err(|e| matches!(e, TryRecvError::Disconnected))
            } else {
                rx.recv_timeout(window_end - now)
                    .map_err(|e| matches!(e, RecvTimeoutError::Disconnected))
            };
            match got {
                Ok(j) => push(&mut pending, j),
                Err(disconnected) => {
                    closed = disconnected;
                    break;
                }
            }
        }
        let (segments, _) = plan(&pending, b.max_batch);
        let size: usize = segments.iter().map(|&(_, r0, r1)| r1 - r0).sum();
        let outcome = assemble(cfg, queries, &pending, &segments).and_then(|batch| compute(&batch));
        let n_segments = segments.len();
        for &(i, _, r1) in &segments {
            pending[i].dispatched = r1;
        }
        let status = match outcome {
            Ok(n) if n == size => Status::Ok,
            Ok(_) => Status::BadResponse,
            Err(_) => Status::Failed,
        };
        if status == Status::Ok {
            // answer the queries that are complete (all but possibly a split last one)
            while pending.front().is_some_and(|p| p.dispatched == p.size) {
                let p = pending.pop_front().expect("front exists");
                results.record(p.job, Status::Ok);
            }
        } else {
            for p in pending.drain(..n_segments) {
                results.record(p.job, status);
            }
        }
    }
}

/// One measurement of the twin: Poisson arrivals at `m.qps` for `m.duration_s`, query `i`
/// being `queries[i % len]`, batched by `batching`, each batch run by `compute` (which
/// returns the number of scores) on a batcher thread.
pub fn measure(
    cfg: &DlrmConfig,
    queries: &Arc<Vec<Batch>>,
    batching: Batching,
    compute: &mut (dyn FnMut(&Batch) -> anyhow::Result<usize> + Send),
    m: &Measure,
) -> anyhow::Result<Report> {
    ensure!(batching.max_batch >= 1, "--max-batch must be at least 1");
    ensure!(!queries.is_empty(), "no queries to send");
    let offsets = Arc::new(crate::dist::poisson_schedule(m.qps, m.duration_s, m.seed)?);
    let sizes: Vec<usize> = (0..offsets.len())
        .map(|i| queries[i % queries.len()].size())
        .collect();
    let start = start_instant();
    let results = Results::new(start, offsets.len());
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<(Job, Instant)>();
    let dispatcher = spawn_dispatcher(start, Arc::clone(&offsets), Arc::clone(&stop), move |job| {
        tx.send((job, Instant::now())).is_ok()
    });
    let deadline = start + Duration::from_secs_f64(m.duration_s + m.drain_s);
    let ended = std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("dlrs-twin-batcher".into())
            .spawn_scoped(s, || {
                batcher(rx, cfg, queries, batching, &results, &stop, compute)
            })
            .expect("spawning the batcher thread");
        results.wait_all(deadline);
        let ended = results.close();
        stop.store(true, Ordering::Relaxed);
        let _ = worker.join();
        ended
    });
    let _ = dispatcher.join();
    Ok(results.report(m.qps, m.duration_s, &offsets, &sizes, ended))
}
