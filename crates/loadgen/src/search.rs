//! Latency-bounded throughput: the highest offered rate whose p99 stays under a target.

use serde::Serialize;

use crate::error::LoadgenError;
use crate::stats::Report;

/// One measured rate of a search.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// 1-based, in the order measured
    pub step: usize,
    /// failed queries within the plan's `max_error_rate` and p99 <= the target
    pub meets_target: bool,
    #[serde(flatten)]
    pub report: Report,
}

/// Every measured point and the best one that met the target.
#[derive(Clone, Debug)]
pub struct Search {
    pub target_p99_ms: f64,
    pub points: Vec<Point>,
}

impl Search {
    /// The point of the highest offered rate that met the target.
    pub fn best(&self) -> Option<&Point> {
        self.points
            .iter()
            .filter(|p| p.meets_target)
            .max_by(|a, b| a.report.offered_qps.total_cmp(&b.report.offered_qps))
    }
}

/// The search's knobs.
#[derive(Clone, Copy, Debug)]
pub struct SearchPlan {
    pub target_p99_ms: f64,
    /// the first rate tried
    pub start_qps: f64,
    /// most measurements
    pub max_steps: usize,
    /// stop bisecting when the failing rate is within this factor of the passing one
    pub tolerance: f64,
    /// give up below this rate
    pub min_qps: f64,
    /// share of a step's queries that may fail (503 when the queue is full, timeouts, ...)
    /// with the step still meeting the target; 0: any failure is a miss
    pub max_error_rate: f64,
}

impl SearchPlan {
    pub fn new(target_p99_ms: f64, start_qps: f64, max_steps: usize) -> Self {
        SearchPlan {
            target_p99_ms,
            start_qps,
            max_steps,
            tolerance: 1.05,
            min_qps: 0.5,
            max_error_rate: 0.0,
        }
    }
}

/// One search, step by step: [`Searcher::next_qps`] says which rate to measure next (none
/// when the search is done) and [`Searcher::record`] takes its measurement. [`search`] runs
/// one to its end; [`search_paired`] runs two in turn, so that both see the same stretch of
/// a machine whose speed drifts.
///
/// The rule: double the rate from `start_qps` while the target holds (halve while it does
/// not), then bisect between the best passing and the lowest failing rate until they are
/// within `tolerance` or `max_steps` measurements were taken.
#[derive(Clone, Debug)]
pub struct Searcher {
    plan: SearchPlan,
    points: Vec<Point>,
    /// the highest rate that met the target and the lowest that did not
    lo: Option<f64>,
    hi: Option<f64>,
    next: Option<f64>,
}

impl Searcher {
    pub fn new(plan: SearchPlan) -> Result<Self, LoadgenError> {
        if !(plan.target_p99_ms.is_finite() && plan.target_p99_ms > 0.0) {
            return Err(LoadgenError::flag("--target-p99-ms", "must be positive"));
        }
        if !(0.0..1.0).contains(&plan.max_error_rate) {
            return Err(LoadgenError::flag(
                "--max-error-rate",
                "must be at least 0 and below 1",
            ));
        }
        if plan.max_steps < 1 {
            return Err(LoadgenError::flag("--max-steps", "must be at least 1"));
        }
        Ok(Searcher {
            plan,
            points: Vec::new(),
            lo: None,
            hi: None,
            next: Some(plan.start_qps),
        })
    }

    /// The rate to measure next; `None` once the search has ended.
    pub fn next_qps(&self) -> Option<f64> {
        self.next
    }

    /// The 1-based number of the next measurement.
    pub fn next_step(&self) -> usize {
        self.points.len() + 1
    }

    /// Takes the measurement of the rate [`Searcher::next_qps`] gave and returns its point.
    ///
    /// # Panics
    /// When the search has already ended.
    pub fn record(&mut self, report: Report) -> &Point {
        let qps = self.next.expect("Searcher::record after the search ended");
        let plan = &self.plan;
        let meets = report.meets(plan.target_p99_ms, plan.max_error_rate);
        self.points.push(Point {
            step: self.points.len() + 1,
            meets_target: meets,
            report,
        });
        if meets {
            self.lo = Some(self.lo.map_or(qps, |l| l.max(qps)));
        } else {
            self.hi = Some(self.hi.map_or(qps, |h| h.min(qps)));
        }
        self.next = if self.points.len() >= plan.max_steps {
            None
        } else {
            match (self.lo, self.hi) {
                (Some(l), None) => Some(l * 2.0),
                (None, Some(h)) => (h / 2.0 >= plan.min_qps).then_some(h / 2.0),
                (Some(l), Some(h)) => (h > l * plan.tolerance).then_some((l + h) / 2.0),
                (None, None) => unreachable!("every step sets lo or hi"),
            }
        };
        self.points.last().expect("just pushed")
    }

    pub fn finish(self) -> Search {
        Search {
            target_p99_ms: self.plan.target_p99_ms,
            points: self.points,
        }
    }
}

/// Runs one [`Searcher`] to its end. `measure(step, qps)` takes one measurement; `on_point`
/// sees each point as it is measured.
pub fn search(
    plan: SearchPlan,
    mut measure: impl FnMut(usize, f64) -> Result<Report, LoadgenError>,
    mut on_point: impl FnMut(&Point),
) -> Result<Search, LoadgenError> {
    let mut s = Searcher::new(plan)?;
    while let Some(qps) = s.next_qps() {
        let report = measure(s.next_step(), qps)?;
        on_point(s.record(report));
    }
    Ok(s.finish())
}

/// Runs two searches in turn, one measurement of each per round, so that a stretch of
/// time when the machine runs slower falls on both rather than on whichever was running
/// (an A/B comparison of two serving paths). The order alternates by round (A B, B A, A B,
/// ...), so neither side always follows the other's load. A side whose search ended waits
/// for the other. `measure(side, step, qps)` takes one measurement of side 0 or 1;
/// `on_point(side, point)` sees each point.
pub fn search_paired(
    plans: [SearchPlan; 2],
    mut measure: impl FnMut(usize, usize, f64) -> Result<Report, LoadgenError>,
    mut on_point: impl FnMut(usize, &Point),
) -> Result<[Search; 2], LoadgenError> {
    let mut s = [Searcher::new(plans[0])?, Searcher::new(plans[1])?];
    for round in 0.. {
        if s.iter().all(|x| x.next_qps().is_none()) {
            break;
        }
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            if let Some(qps) = s[side].next_qps() {
                let report = measure(side, s[side].next_step(), qps)?;
                on_point(side, s[side].record(report));
            }
        }
    }
    let [a, b] = s;
    Ok([a.finish(), b.finish()])
}
