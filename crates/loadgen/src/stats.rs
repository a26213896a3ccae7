//! Outcomes of queries, percentiles and the report of one measurement.

use std::collections::BTreeMap;

use serde::Serialize;

/// What became of one query.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Status {
    /// answered 200 with one score per sample
    Ok,
    /// answered with another HTTP status
    Http(u16),
    /// answered 200 but not with one score per sample (or not parseable)
    BadResponse,
    /// the connection failed (refused, reset, closed mid-answer)
    Transport,
    /// not answered by the end of the drain
    Timeout,
    /// the in-process forward pass returned an error (twin only)
    Failed,
}

/// One query's outcome: its status and its latency in seconds, measured from its
/// *scheduled* send time (for a timeout: until the drain ended).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    pub status: Status,
    pub latency_s: f64,
}

/// The `q`-th percentile (0 < q <= 100) of `values` by the nearest-rank method: the
/// smallest value that at least `q`% of the values are less than or equal to, i.e.
/// `sorted[ceil(q / 100 * n) - 1]`. `None` for no values. Reorders `values`.
pub fn percentile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let n = values.len();
    let rank = ((q / 100.0) * n as f64).ceil() as usize;
    let k = rank.clamp(1, n) - 1;
    let (_, v, _) = values.select_nth_unstable_by(k, f64::total_cmp);
    Some(*v)
}

/// Latency percentiles in milliseconds (of the queries answered 200).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
}

impl Latency {
    /// Percentiles of `seconds`, reported in milliseconds.
    pub fn of(seconds: &[f64]) -> Self {
        if seconds.is_empty() {
            return Latency::default();
        }
        let mut v: Vec<f64> = seconds.iter().map(|s| s * 1e3).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let mut p = |q| percentile(&mut v, q);
        Latency {
            p50: p(50.0),
            p95: p(95.0),
            p99: p(99.0),
            p999: p(99.9),
            max: p(100.0),
            mean: Some(mean),
        }
    }
}

/// Failed queries, by kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Errors {
    /// answers other than 200, by status code
    pub by_status: BTreeMap<String, u64>,
    /// 200 answers without one score per sample
    pub bad_response: u64,
    /// connection failures
    pub transport: u64,
    /// not answered by the end of the drain
    pub timeout: u64,
    /// forward passes that failed (twin only)
    pub failed: u64,
    /// all of the above
    pub total: u64,
}

/// The report of one measurement (one offered rate for one duration).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// the Poisson arrival rate asked for
    pub offered_qps: f64,
    /// the arrival window, seconds
    pub duration_s: f64,
    /// queries scheduled (all of them are sent or time out)
    pub queries: u64,
    /// queries answered 200
    pub ok: u64,
    /// samples of the queries answered 200
    pub ok_samples: u64,
    /// `ok / window`, where the window is the duration or, if later, the last answer
    pub achieved_qps: f64,
    /// `ok_samples / window`
    pub samples_per_s: f64,
    /// mean samples per scheduled query
    pub mean_query_size: f64,
    /// of the queries answered 200, from their scheduled send time
    pub latency_ms: Latency,
    /// of the queries answered with another status, by status (how fast a 503 comes back
    /// under overload), from their scheduled send time
    pub error_latency_ms: BTreeMap<String, Latency>,
    pub errors: Errors,
    /// when the slowest query answered 200 was scheduled, seconds from the start (filled in
    /// by [`Report::locate`])
    pub slowest_at_s: Option<f64>,
    /// failed queries by the second of the schedule they were due in (whole seconds from the
    /// start; only seconds with failures): when a stall or a reload cost requests
    pub failures_by_second: BTreeMap<u64, u64>,
    /// the server's scheduler settings (`--target-p99-ms`) at the end of the measurement,
    /// when it runs one
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,
    /// per second of the schedule, with `--step`: what was due and how it went
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<Second>,
}

/// One second of a measurement's schedule (`--step`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Second {
    /// whole seconds from the start
    pub t: u64,
    /// queries due in it
    pub queries: u64,
    /// of them, answered 200
    pub ok: u64,
    /// p99 of those answered 200, from their scheduled times
    pub p99_ms: Option<f64>,
    /// the scheduler's settings at the end of the second (the twin, with a scheduler)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,
}

impl Report {
    /// Summarizes `outcomes` (one per scheduled query, with `sizes[i]` samples each) of a
    /// measurement whose arrivals spanned `duration_s`; `last_answer_s` is when the last
    /// answer came, from the start.
    pub fn new(
        offered_qps: f64,
        duration_s: f64,
        outcomes: &[Outcome],
        sizes: &[usize],
        last_answer_s: f64,
    ) -> Self {
        assert_eq!(outcomes.len(), sizes.len());
        let mut errors = Errors::default();
        let mut ok_lat = Vec::with_capacity(outcomes.len());
        let mut ok_samples = 0u64;
        let mut error_lat: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for (o, &n) in outcomes.iter().zip(sizes) {
            match o.status {
                Status::Ok => {
                    ok_lat.push(o.latency_s);
                    ok_samples += n as u64;
                }
                Status::Http(code) => {
                    *errors.by_status.entry(code.to_string()).or_default() += 1;
                    error_lat
                        .entry(code.to_string())
                        .or_default()
                        .push(o.latency_s);
                }
                Status::BadResponse => errors.bad_response += 1,
                Status::Transport => errors.transport += 1,
                Status::Timeout => errors.timeout += 1,
                Status::Failed => errors.failed += 1,
            }
        }
        errors.total = outcomes.len() as u64 - ok_lat.len() as u64;
        let window = duration_s.max(last_answer_s);
        let total_samples: u64 = sizes.iter().map(|&n| n as u64).sum();
        Report {
            offered_qps,
            duration_s,
            queries: outcomes.len() as u64,
            ok: ok_lat.len() as u64,
            ok_samples,
            achieved_qps: ok_lat.len() as f64 / window,
            samples_per_s: ok_samples as f64 / window,
            mean_query_size: if sizes.is_empty() {
                0.0
            } else {
                total_samples as f64 / sizes.len() as f64
            },
            latency_ms: Latency::of(&ok_lat),
            error_latency_ms: error_lat
                .iter()
                .map(|(k, v)| (k.clone(), Latency::of(v)))
                .collect(),
            errors,
            slowest_at_s: None,
            failures_by_second: BTreeMap::new(),
            scheduler: None,
            timeline: Vec::new(),
        }
    }

    /// Fills in when things happened: `offsets[i]` is when query `i` of `outcomes` was
    /// scheduled, seconds from the start.
    pub fn locate(&mut self, outcomes: &[Outcome], offsets: &[f64]) {
        assert_eq!(outcomes.len(), offsets.len());
        let mut slowest: Option<(f64, f64)> = None;
        self.failures_by_second.clear();
        for (o, &t) in outcomes.iter().zip(offsets) {
            if o.status == Status::Ok {
                if slowest.is_none_or(|(l, _)| o.latency_s > l) {
                    slowest = Some((o.latency_s, t));
                }
            } else {
                *self.failures_by_second.entry(t as u64).or_default() += 1;
            }
        }
        self.slowest_at_s = slowest.map(|(_, t)| t);
    }

    /// Fills in the per-second timeline: `offsets[i]` is when query `i` of `outcomes` was
    /// scheduled, seconds from the start.
    pub fn timeline(&mut self, outcomes: &[Outcome], offsets: &[f64]) {
        let secs = offsets.last().map_or(0, |t| *t as usize + 1);
        let mut lat: Vec<Vec<f64>> = vec![Vec::new(); secs];
        self.timeline = (0..secs as u64)
            .map(|t| Second {
                t,
                ..Second::default()
            })
            .collect();
        for (o, &t) in outcomes.iter().zip(offsets) {
            let s = &mut self.timeline[t as usize];
            s.queries += 1;
            if o.status == Status::Ok {
                s.ok += 1;
                lat[t as usize].push(o.latency_s);
            }
        }
        for (s, l) in self.timeline.iter_mut().zip(lat) {
            s.p99_ms = Latency::of(&l).p99;
        }
    }

    /// Whether this point keeps the target: at most `max_error_rate` of its queries failed
    /// (0: none), at least one was answered, and the answers' p99 is <= `target_ms`.
    pub fn meets(&self, target_ms: f64, max_error_rate: f64) -> bool {
        self.errors.total as f64 <= max_error_rate * self.queries as f64
            && self.ok > 0
            && self.latency_ms.p99.is_some_and(|p| p <= target_ms)
    }

    /// The error counts in one line (`none` without errors).
    pub fn errors_line(&self) -> String {
        let e = &self.errors;
        if e.total == 0 {
            return "none".into();
        }
        let mut parts: Vec<String> = e
            .by_status
            .iter()
            .map(|(k, v)| format!("HTTP {k}: {v}"))
            .collect();
        for (name, n) in [
            ("bad response", e.bad_response),
            ("transport", e.transport),
            ("timeout", e.timeout),
            ("failed", e.failed),
        ] {
            if n > 0 {
                parts.push(format!("{name}: {n}"));
            }
        }
        parts.join(", ")
    }
}

/// Formats milliseconds for people (`-` for none).
pub fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v < 10.0 => format!("{v:.3}"),
        Some(v) if v < 1000.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_counts_each_second_and_its_p99() {
        let ok = |ms: f64| Outcome {
            status: Status::Ok,
            latency_s: ms / 1e3,
        };
        let failed = Outcome {
            status: Status::Http(503),
            latency_s: 0.001,
        };
        let outcomes = [ok(2.0), ok(4.0), failed, ok(9.0), ok(1.0)];
        let offsets = [0.1, 0.5, 1.2, 1.9, 3.0];
        let mut r = Report::new(10.0, 4.0, &outcomes, &[1; 5], 3.1);
        r.timeline(&outcomes, &offsets);
        let got: Vec<(u64, u64, u64, Option<f64>)> = r
            .timeline
            .iter()
            .map(|s| (s.t, s.queries, s.ok, s.p99_ms))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 2, 2, Some(4.0)),
                (1, 2, 1, Some(9.0)),
                (2, 0, 0, None),
                (3, 1, 1, Some(1.0)),
            ]
        );
    }
}
