//! Percentiles (nearest rank) against a sorted-array reference, and the report's counting.

use dlrs_loadgen::stats::{Latency, Outcome, Report, Status, percentile};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The reference: sort, then take rank ceil(q/100 * n) (1-based; at least 1).
fn reference(values: &[f64], q: f64) -> f64 {
    let mut s = values.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((q / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

#[test]
fn percentiles_match_the_sorted_reference() {
    let mut rng = SmallRng::seed_from_u64(11);
    let qs = [0.1, 1.0, 25.0, 50.0, 90.0, 95.0, 99.0, 99.9, 99.99, 100.0];
    for n in (1..=130).chain([999, 1000, 1001, 12_345]) {
        for kind in 0..3 {
            let v: Vec<f64> = (0..n)
                .map(|_| match kind {
                    0 => rng.random::<f64>(),
                    1 => (rng.random_range(0..5)) as f64, // many ties
                    _ => (-rng.random::<f64>().ln()).powi(3), // heavy tail
                })
                .collect();
            for q in qs {
                let mut w = v.clone();
                assert_eq!(
                    percentile(&mut w, q),
                    Some(reference(&v, q)),
                    "n {n}, kind {kind}, q {q}"
                );
            }
        }
    }
    assert_eq!(percentile(&mut [], 50.0), None);
}

#[test]
fn percentiles_of_one_to_a_hundred() {
    let v: Vec<f64> = (1..=100).rev().map(|i| i as f64).collect();
    let p = |q| percentile(&mut v.clone(), q).unwrap();
    assert_eq!(
        (p(50.0), p(95.0), p(99.0), p(99.9), p(100.0), p(0.5)),
        (50.0, 95.0, 99.0, 100.0, 100.0, 1.0)
    );
    let l = Latency::of(&v.iter().map(|ms| ms / 1e3).collect::<Vec<_>>());
    let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-9;
    assert!(
        close(l.p50, 50.0) && close(l.p99, 99.0) && close(l.p999, 100.0) && close(l.max, 100.0),
        "{l:?}"
    );
    assert!(close(l.mean, 50.5), "{l:?}");
}

#[test]
fn the_report_counts_errors_apart_and_takes_percentiles_of_ok_answers() {
    let ok = |ms: f64| Outcome {
        status: Status::Ok,
        latency_s: ms / 1e3,
    };
    let mut outcomes: Vec<Outcome> = (1..=10).map(|i| ok(i as f64)).collect();
    outcomes.push(Outcome {
        status: Status::Http(503),
        latency_s: 0.0001,
    });
    outcomes.push(Outcome {
        status: Status::Http(503),
        latency_s: 0.0001,
    });
    outcomes.push(Outcome {
        status: Status::Http(400),
        latency_s: 0.0001,
    });
    outcomes.push(Outcome {
        status: Status::Transport,
        latency_s: 0.0,
    });
    outcomes.push(Outcome {
        status: Status::Timeout,
        latency_s: 9.0,
    });
    outcomes.push(Outcome {
        status: Status::BadResponse,
        latency_s: 0.001,
    });
    let sizes: Vec<usize> = (0..outcomes.len()).map(|i| i + 1).collect();
    let r = Report::new(8.0, 2.0, &outcomes, &sizes, 1.5);
    assert_eq!((r.queries, r.ok, r.ok_samples), (16, 10, 55));
    assert_eq!(r.errors.by_status.get("503"), Some(&2));
    assert_eq!(r.errors.by_status.get("400"), Some(&1));
    assert_eq!(
        (
            r.errors.transport,
            r.errors.timeout,
            r.errors.bad_response,
            r.errors.total
        ),
        (1, 1, 1, 6)
    );
    assert_eq!(r.latency_ms.p50, Some(5.0));
    assert_eq!(
        r.latency_ms.max,
        Some(10.0),
        "errors are not in the latency percentiles"
    );
    assert!((r.achieved_qps - 5.0).abs() < 1e-12 && (r.samples_per_s - 27.5).abs() < 1e-12);
    // the last answer after the window widens it
    let r2 = Report::new(8.0, 2.0, &outcomes, &sizes, 4.0);
    assert!((r2.achieved_qps - 2.5).abs() < 1e-12);
    assert!(!r.meets(100.0, 0.0), "errors miss the target");
    // 6 failed of 16 queries: within a 40% allowance, not within 35%
    assert_eq!(r.queries, 16);
    assert!(r.meets(100.0, 0.4) && !r.meets(100.0, 0.35));
    assert!(!r.meets(4.0, 0.4), "the answers' p99 still counts");
    // when: the slowest answer and the failures by scheduled second
    let mut located = r.clone();
    let offsets: Vec<f64> = (0..outcomes.len()).map(|i| i as f64 * 0.25).collect();
    located.locate(&outcomes, &offsets);
    // the ten answers come first, the slowest (10 ms) last, at 9 x 0.25 s; the six failures
    // are due at 2.5 .. 3.75 s
    assert_eq!(located.slowest_at_s, Some(2.25));
    assert_eq!(
        located.failures_by_second,
        std::collections::BTreeMap::from([(2, 2), (3, 4)])
    );
    assert_eq!(
        located.failures_by_second.values().sum::<u64>(),
        r.errors.total
    );
    let clean = Report::new(8.0, 2.0, &outcomes[..10], &sizes[..10], 1.0);
    assert!(clean.meets(10.0, 0.0) && !clean.meets(9.5, 0.0));
    assert_eq!(clean.errors_line(), "none");
    assert!(
        r.errors_line().contains("HTTP 503: 2") && r.errors_line().contains("timeout: 1"),
        "{}",
        r.errors_line()
    );
}
