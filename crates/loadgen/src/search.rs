//! Latency-bounded throughput: the highest offered rate whose p99 stays under a target.

use serde::Serialize;

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

/// Searches by doubling the rate from `start_qps` while the target holds (halving while it
/// does not), then bisecting between the best passing and the lowest failing rate until
/// they are within `tolerance` or `max_steps` measurements were taken. `measure(step, qps)`
/// takes one measurement; `on_point` sees each point as it is measured.
pub fn search(
    plan: SearchPlan,
    mut measure: impl FnMut(usize, f64) -> anyhow::Result<Report>,
    mut on_point: impl FnMut(&Point),
) -> anyhow::Result<Search> {
    anyhow::ensure!(
        plan.target_p99_ms.is_finite() && plan.target_p99_ms > 0.0,
        "--target-p99-ms must be positive"
    );
    anyhow::ensure!(
        (0.0..1.0).contains(&plan.max_error_rate),
        "--max-error-rate must be at least 0 and below 1"
    );
    anyhow::ensure!(plan.max_steps >= 1, "--max-steps must be at least 1");
    let mut points = Vec::new();
    let (mut lo, mut hi): (Option<f64>, Option<f64>) = (None, None);
    let mut qps = plan.start_qps;
    for step in 1..=plan.max_steps {
        let report = measure(step, qps)?;
        let meets = report.meets(plan.target_p99_ms, plan.max_error_rate);
        let p = Point {
            step,
            meets_target: meets,
            report,
        };
        on_point(&p);
        points.push(p);
        if meets {
            lo = Some(lo.map_or(qps, |l| l.max(qps)));
        } else {
            hi = Some(hi.map_or(qps, |h| h.min(qps)));
        }
        qps = match (lo, hi) {
            (Some(l), None) => l * 2.0,
            (None, Some(h)) => {
                if h / 2.0 < plan.min_qps {
                    break;
                }
                h / 2.0
            }
            (Some(l), Some(h)) => {
                if h <= l * plan.tolerance {
                    break;
                }
                (l + h) / 2.0
            }
            (None, None) => unreachable!("every step sets lo or hi"),
        };
    }
    Ok(Search {
        target_p99_ms: plan.target_p99_ms,
        points,
    })
}
