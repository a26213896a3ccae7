//! The latency-bounded throughput search, on a synthetic system with a known capacity.

use dlrs_loadgen::search::{SearchPlan, search, search_paired};
use dlrs_loadgen::stats::{Outcome, Report, Status};

/// A system of capacity `cap` QPS: below it p99 grows like an M/M/1 queue, above it
/// queries time out.
fn system(cap: f64, qps: f64) -> Report {
    let n = 200;
    let outcomes: Vec<Outcome> = if qps < cap {
        let p = 1.0 / (cap - qps); // mean sojourn, s
        (0..n)
            .map(|i| Outcome {
                status: Status::Ok,
                latency_s: p * (1.0 + 4.0 * i as f64 / n as f64),
            })
            .collect()
    } else {
        (0..n)
            .map(|_| Outcome {
                status: Status::Timeout,
                latency_s: 5.0,
            })
            .collect()
    };
    Report::new(qps, 1.0, &outcomes, &vec![1; n], 1.0)
}

#[test]
fn finds_the_rate_where_p99_crosses_the_target() {
    // p99 ~ 5 / (cap - qps) s; with cap 1000 and target 50 ms: qps < 900
    let mut seen = Vec::new();
    let s = search(
        SearchPlan::new(50.0, 10.0, 30),
        |_, q| Ok(system(1000.0, q)),
        |p| seen.push(p.report.offered_qps),
    )
    .unwrap();
    let best = s.best().expect("a passing rate");
    let q = best.report.offered_qps;
    assert!(
        (900.0 / 1.05 - 1.0..=900.0).contains(&q),
        "best {q}, want just under 900"
    );
    assert_eq!(seen.len(), s.points.len(), "every point is reported");
    assert_eq!(s.points[0].report.offered_qps, 10.0);
    assert_eq!(s.points[1].report.offered_qps, 20.0, "the ramp doubles");
    assert!(
        s.points
            .iter()
            .all(|p| p.meets_target == (p.report.offered_qps < 900.0))
    );
    assert!(
        s.points.len() < 30,
        "stops once within 5%: {} steps",
        s.points.len()
    );
}

#[test]
fn ramps_down_when_the_first_rate_misses() {
    let s = search(
        SearchPlan::new(50.0, 5000.0, 30),
        |_, q| Ok(system(1000.0, q)),
        |_| {},
    )
    .unwrap();
    assert!(!s.points[0].meets_target);
    assert_eq!(s.points[1].report.offered_qps, 2500.0, "halves");
    let q = s.best().unwrap().report.offered_qps;
    assert!((850.0..=900.0).contains(&q), "{q}");
}

#[test]
fn respects_max_steps_and_reports_no_rate_when_none_passes() {
    let s = search(
        SearchPlan::new(50.0, 10.0, 3),
        |_, q| Ok(system(1000.0, q)),
        |_| {},
    )
    .unwrap();
    assert_eq!(s.points.len(), 3);
    let none = search(
        SearchPlan::new(50.0, 10.0, 50),
        |_, q| Ok(system(0.0, q)),
        |_| {},
    )
    .unwrap();
    assert!(none.best().is_none());
    assert!(none.points.len() < 50, "gives up below the minimum rate");
}

#[test]
fn an_error_allowance_lets_rare_failures_pass() {
    // the capacity system, but one query in 200 of every step refused (a 503)
    let rare = |q: f64| {
        let mut r = system(1000.0, q);
        if q < 1000.0 {
            let n = 200;
            let mut outcomes: Vec<Outcome> = (0..n)
                .map(|i| Outcome {
                    status: Status::Ok,
                    latency_s: (1.0 / (1000.0 - q)) * (1.0 + 4.0 * i as f64 / n as f64),
                })
                .collect();
            outcomes[0] = Outcome {
                status: Status::Http(503),
                latency_s: 0.001,
            };
            r = Report::new(q, 1.0, &outcomes, &vec![1; n], 1.0);
        }
        r
    };
    let strict = search(SearchPlan::new(50.0, 10.0, 30), |_, q| Ok(rare(q)), |_| {}).unwrap();
    assert!(strict.best().is_none(), "any failure is a miss by default");
    let plan = SearchPlan {
        max_error_rate: 0.01,
        ..SearchPlan::new(50.0, 10.0, 30)
    };
    let lenient = search(plan, |_, q| Ok(rare(q)), |_| {}).unwrap();
    let q = lenient.best().expect("a passing rate").report.offered_qps;
    assert!((800.0..=900.0).contains(&q), "best {q}");
    let bad = SearchPlan {
        max_error_rate: 1.0,
        ..SearchPlan::new(50.0, 10.0, 30)
    };
    assert!(search(bad, |_, q| Ok(rare(q)), |_| {}).is_err());
}

#[test]
fn a_paired_search_takes_turns_and_finds_what_each_search_finds_alone() {
    // side 0 a system of capacity 1000, side 1 of 3000 and cut short at 4 steps
    let caps = [1000.0, 3000.0];
    let plans = [
        SearchPlan::new(50.0, 100.0, 30),
        SearchPlan::new(50.0, 100.0, 4),
    ];
    let alone: Vec<Vec<f64>> = caps
        .iter()
        .zip(plans)
        .map(|(&c, plan)| {
            let s = search(plan, |_, q| Ok(system(c, q)), |_| {}).unwrap();
            s.points.iter().map(|p| p.report.offered_qps).collect()
        })
        .collect();
    let mut order = Vec::new();
    let mut seen = [0usize; 2];
    let [a, b] = search_paired(
        plans,
        |side, step, q| {
            order.push((side, step));
            Ok(system(caps[side], q))
        },
        |side, _| seen[side] += 1,
    )
    .unwrap();
    for (s, want) in [a, b].iter().zip(&alone) {
        let got: Vec<f64> = s.points.iter().map(|p| p.report.offered_qps).collect();
        assert_eq!(&got, want, "the same rates as the search alone");
    }
    assert_eq!(seen, [alone[0].len(), alone[1].len()]);
    assert!(
        alone[0].len() != alone[1].len(),
        "the test needs one side to end first"
    );
    // rounds alternate A B, B A, ... while both run; then the longer one goes on alone
    let both = alone[0].len().min(alone[1].len());
    for (round, pair) in order[..2 * both].chunks(2).enumerate() {
        let first = if round % 2 == 0 { 0 } else { 1 };
        assert_eq!(
            pair,
            [(first, round + 1), (1 - first, round + 1)],
            "round {round}"
        );
    }
    let longer = if alone[0].len() > both { 0 } else { 1 };
    assert!(order[2 * both..].iter().all(|&(side, _)| side == longer));
    assert_eq!(order.len(), alone[0].len() + alone[1].len());
}
