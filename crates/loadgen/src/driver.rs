//! What the HTTP load and the twin share: the dispatcher thread that releases each query at
//! its scheduled instant, and the table of outcomes that the answering side fills.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::stats::{Outcome, Report, Status};

/// A query released by the dispatcher: its index in the schedule and the instant it was
/// scheduled for (latency counts from there, however late it is actually sent).
#[derive(Clone, Copy, Debug)]
pub struct Job {
    pub index: usize,
    pub scheduled: Instant,
}

/// Starts the dispatcher thread (asking for `slice`): for each offset (seconds after
/// `start`, ascending) it sleeps until that instant and calls `send`. It stops early when
/// `stop` is set or when `send` returns false. Sleeping happens on this thread, never on the
/// answering side, so a slow answer delays no arrival (open loop).
pub fn spawn_dispatcher(
    start: Instant,
    offsets: Arc<Vec<f64>>,
    stop: Arc<AtomicBool>,
    slice: Duration,
    mut send: impl FnMut(Job) -> bool + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("dlrs-loadgen-dispatch".into())
        .spawn(move || {
            ask_for_slice(slice);
            for (index, &t) in offsets.iter().enumerate() {
                let scheduled = start + Duration::from_secs_f64(t);
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let now = Instant::now();
                    if now >= scheduled {
                        break;
                    }
                    // wake at least every 50 ms to notice `stop`
                    std::thread::sleep((scheduled - now).min(Duration::from_millis(50)));
                }
                if !send(Job { index, scheduled }) {
                    return;
                }
            }
        })
        .expect("spawning the dispatcher thread")
}

/// The outcomes of one measurement, filled in by whoever answers the queries.
pub struct Results {
    start: Instant,
    inner: Mutex<Inner>,
    all_done: Condvar,
}

struct Inner {
    outcomes: Vec<Option<Outcome>>,
    done: usize,
    last_answer: Option<Instant>,
    /// no more records (the drain is over)
    closed: bool,
}

impl Results {
    pub fn new(start: Instant, n: usize) -> Self {
        Results {
            start,
            inner: Mutex::new(Inner {
                outcomes: vec![None; n],
                done: 0,
                last_answer: None,
                closed: false,
            }),
            all_done: Condvar::new(),
        }
    }

    /// Records that `job` finished now with `status` (the first record of a job counts;
    /// nothing counts once [`Results::close`] was called).
    pub fn record(&self, job: Job, status: Status) {
        let now = Instant::now();
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.closed {
            return;
        }
        let slot = &mut g.outcomes[job.index];
        if slot.is_some() {
            return;
        }
        *slot = Some(Outcome {
            status,
            latency_s: now.saturating_duration_since(job.scheduled).as_secs_f64(),
        });
        g.done += 1;
        g.last_answer = Some(g.last_answer.map_or(now, |t| t.max(now)));
        if g.done == g.outcomes.len() {
            self.all_done.notify_all();
        }
    }

    /// Ends the measurement: answers recorded from now on are ignored (their queries count
    /// as timeouts). Returns the instant it closed.
    pub fn close(&self) -> Instant {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.closed = true;
        Instant::now()
    }

    /// Waits until every query has an outcome or `deadline` passes; true if all are done.
    pub fn wait_all(&self, deadline: Instant) -> bool {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if g.done == g.outcomes.len() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .all_done
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The report of measurement `m`: queries without an outcome count as timeouts whose
    /// latency runs from their scheduled time to `ended`. `offsets` are the scheduled offsets
    /// from the start; with a load step the report has its per-second timeline.
    pub fn report(&self, m: &Measure, offsets: &[f64], sizes: &[usize], ended: Instant) -> Report {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let end_s = ended.saturating_duration_since(self.start).as_secs_f64();
        let outcomes: Vec<Outcome> = g
            .outcomes
            .iter()
            .zip(offsets)
            .map(|(o, &t)| {
                o.unwrap_or(Outcome {
                    status: Status::Timeout,
                    latency_s: (end_s - t).max(0.0),
                })
            })
            .collect();
        let last = g.last_answer.map_or(0.0, |t| {
            t.saturating_duration_since(self.start).as_secs_f64()
        });
        let mut r = Report::new(m.qps, m.duration_s, &outcomes, sizes, last);
        r.locate(&outcomes, offsets);
        if m.step.is_some() {
            r.timeline(&outcomes, offsets);
        }
        r
    }
}

/// Everything one measurement needs besides its target.
#[derive(Clone, Debug)]
pub struct Measure {
    pub qps: f64,
    pub duration_s: f64,
    /// longest wait for answers after the last arrival; then unanswered queries time out
    pub drain_s: f64,
    pub seed: u64,
    /// the scheduler slice the dispatcher asks for (`--slice-us`; zero: the default)
    pub slice: Duration,
    /// `--step`: the rate changes for a while (the report then has a timeline)
    pub step: Option<crate::dist::LoadStep>,
}

impl Measure {
    /// The arrival offsets of this measurement: Poisson at `qps`, with its load step.
    pub fn schedule(&self) -> Result<Vec<f64>, crate::error::LoadgenError> {
        crate::dist::stepped_schedule(self.qps, self.duration_s, self.seed, self.step)
    }
}

/// Asks for `slice` on the calling thread (`--slice-us`; see
/// [`dlrs_model::sys::ask_for_thread_slice`]).
pub fn ask_for_slice(slice: Duration) {
    dlrs_model::sys::ask_for_thread_slice(
        slice,
        &format!("dlrs loadgen: --slice-us {}", slice.as_micros()),
    );
}

/// The instant a measurement starts: a moment from now, so the dispatcher starts on time.
pub fn start_instant() -> Instant {
    Instant::now() + Duration::from_millis(20)
}
