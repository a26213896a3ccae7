//! The in-process twin: the same arrivals and queries, no HTTP. Queries go straight into the
//! queue of `dlrs serve` (its own `Queue` and compute instances: the same batching, deadline
//! and admission code), so HTTP's share of the latency is the difference; latency counts from
//! each query's scheduled time.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use dlrs_model::Batch;
use dlrs_serve::{ApiError, Controller, Hooks, Job, Metrics, Queue, QueueConfig, ReplyTo, Version};

use crate::driver::{Measure, Results, spawn_dispatcher, start_instant};
use crate::error::LoadgenError;
use crate::stats::{Report, Status};

/// The serving settings: `dlrs serve`'s queue rules, deadline and compute layout.
#[derive(Clone, Debug)]
pub struct Batching {
    /// batching and admission, as `dlrs serve`'s
    pub queue: QueueConfig,
    /// a query not computed this long after it was queued is answered 504
    pub deadline: Duration,
    /// compute instances
    pub instances: usize,
    /// threads per instance
    pub threads: usize,
    /// the scheduler, kept across measurements (a search's steps) as a server keeps it:
    /// when set, it chooses the layout and batching (`instances`, `threads` and `queue`'s
    /// max batch, delay and wait bound are its starting point or its pins)
    pub controller: Option<Arc<Controller>>,
}

/// One measurement of the twin: Poisson arrivals at `m.qps` for `m.duration_s`, query `i`
/// being `queries[i % len]`, computed on `version` by `dlrs serve`'s queue and instances
/// (`hooks` run before each forward pass, for tests).
pub fn measure(
    version: &Arc<Version>,
    queries: &Arc<Vec<Arc<Batch>>>,
    batching: &Batching,
    hooks: &Hooks,
    m: &Measure,
) -> Result<Report, LoadgenError> {
    if batching.queue.max_batch < 1 {
        return Err(LoadgenError::flag("--max-batch", "must be at least 1"));
    }
    if queries.is_empty() {
        return Err(LoadgenError::NoQueries("send"));
    }
    let offsets = Arc::new(m.schedule()?);
    let sizes: Vec<usize> = (0..offsets.len())
        .map(|i| queries[i % queries.len()].size())
        .collect();
    let metrics = Arc::new(Metrics::new());
    // compute at the default priority: with no HTTP threads beside them, a nice value
    // (serve's --compute-nice) would change nothing here
    let (queue, instances) = match &batching.controller {
        Some(c) => {
            let queue = Arc::new(Queue::controlled(
                batching.queue.clone(),
                metrics,
                Arc::clone(c),
            ));
            let handles = dlrs_serve::spawn_controlled(&queue, 0, hooks);
            (queue, handles)
        }
        None => {
            let queue = Arc::new(Queue::new(batching.queue.clone(), metrics));
            let handles =
                dlrs_serve::spawn_instances(&queue, batching.instances, batching.threads, 0, hooks);
            (queue, handles)
        }
    };
    let instances = instances.map_err(|source| LoadgenError::Start {
        what: "the compute threads",
        source,
    })?;
    let start = start_instant();
    let results = Arc::new(Results::new(start, offsets.len()));
    let stop = Arc::new(AtomicBool::new(false));
    let dispatcher = {
        let (queue, queries, results, version) = (
            Arc::clone(&queue),
            Arc::clone(queries),
            Arc::clone(&results),
            Arc::clone(version),
        );
        let deadline = batching.deadline;
        spawn_dispatcher(
            start,
            Arc::clone(&offsets),
            Arc::clone(&stop),
            m.slice,
            move |job| {
                let batch = Arc::clone(&queries[job.index % queries.len()]);
                let n = batch.size();
                let answer = Arc::clone(&results);
                let reply = ReplyTo::Call(Box::new(move |r| answer.record(job, status(r, n))));
                let submitted = queue.submit(
                    Job {
                        model: Arc::clone(&version),
                        batch,
                        deadline: Instant::now() + deadline,
                        reply,
                        request_id: None,
                    },
                    None,
                );
                if let Err(e) = submitted {
                    results.record(job, status(Err(e), n));
                }
                true
            },
        )
    };
    // with a load step, the scheduler's settings through the run, four looks a second
    let sampler = match (&batching.controller, m.step) {
        (Some(c), Some(_)) => {
            let (c, stop) = (Arc::clone(c), Arc::clone(&stop));
            Some(std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = Instant::now()
                        .saturating_duration_since(start)
                        .as_secs_f64();
                    seen.push((t, c.settings().describe()));
                    std::thread::sleep(Duration::from_millis(250));
                }
                seen
            }))
        }
        _ => None,
    };
    let deadline = start + Duration::from_secs_f64(m.duration_s + m.drain_s);
    results.wait_all(deadline);
    let ended = results.close();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = dispatcher.join();
    // whatever is still queued is not computed (batches computing now finish)
    queue.abort();
    for h in instances {
        let _ = h.join();
    }
    let mut report = results.report(m, &offsets, &sizes, ended);
    if let Some(seen) = sampler.and_then(|s| s.join().ok()) {
        for s in &mut report.timeline {
            // the settings of the last look before the second ended
            s.scheduler = seen
                .iter()
                .rev()
                .find(|(t, _)| *t < (s.t + 1) as f64)
                .map(|(_, d)| d.clone());
        }
    }
    Ok(report)
}

/// The outcome of a query of `n` samples answered `r`, as the HTTP load would see it.
fn status(r: Result<Vec<f32>, ApiError>, n: usize) -> Status {
    match r {
        Ok(scores) if scores.len() == n => Status::Ok,
        Ok(_) => Status::BadResponse,
        Err(ApiError::Internal(_)) => Status::Failed,
        Err(e) => Status::Http(e.status().as_u16()),
    }
}
