//! The Poisson arrival schedule: right mean rate, exponential, independent inter-arrivals.

use dlrs_loadgen::dist::poisson_schedule;

fn gaps(t: &[f64]) -> Vec<f64> {
    std::iter::once(t[0])
        .chain(t.windows(2).map(|w| w[1] - w[0]))
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn sd(v: &[f64]) -> f64 {
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

#[test]
fn arrivals_have_the_asked_rate_and_stay_in_the_window() {
    for (qps, secs, seed) in [(1000.0, 100.0, 1), (37.5, 400.0, 7), (20_000.0, 5.0, 3)] {
        let t = poisson_schedule(qps, secs, seed).unwrap();
        let want = qps * secs;
        // Poisson count: sd = sqrt(want) (<= 1% of want here); allow 4 sd
        let tol = 4.0 * want.sqrt();
        assert!(
            (t.len() as f64 - want).abs() <= tol,
            "{qps} QPS x {secs} s: {} arrivals, want {want} +- {tol}",
            t.len()
        );
        assert!(
            t.windows(2).all(|w| w[0] <= w[1]),
            "arrival times must not decrease"
        );
        assert!(
            t[0] >= 0.0 && *t.last().unwrap() < secs,
            "arrivals outside [0, {secs})"
        );
    }
}

#[test]
fn inter_arrival_times_are_exponential_and_independent() {
    let qps = 1000.0;
    let t = poisson_schedule(qps, 100.0, 42).unwrap();
    let g = gaps(&t);
    let n = g.len() as f64;
    // mean 1/qps, coefficient of variation 1 (a uniform or fixed spacing has CV far below 1)
    let m = mean(&g);
    assert!(
        (m * qps - 1.0).abs() < 0.02,
        "mean gap {m} s, want {}",
        1.0 / qps
    );
    let cv = sd(&g) / m;
    assert!(
        (cv - 1.0).abs() < 0.03,
        "coefficient of variation {cv}, exponential has 1"
    );
    // Kolmogorov-Smirnov distance to the exponential CDF: critical value at 1% is 1.63/sqrt(n)
    let mut s = g.clone();
    s.sort_by(f64::total_cmp);
    let d = s
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let f = 1.0 - (-qps * x).exp();
            (f - i as f64 / n).abs().max(((i + 1) as f64 / n - f).abs())
        })
        .fold(0.0, f64::max);
    assert!(
        d < 1.63 / n.sqrt(),
        "KS distance {d} to Exp({qps}) over {n} gaps, critical {}",
        1.63 / n.sqrt()
    );
    // memorylessness in one number: P(gap > mean) = 1/e
    let over = g.iter().filter(|&&x| x > 1.0 / qps).count() as f64 / n;
    assert!(
        (over - (-1.0f64).exp()).abs() < 0.01,
        "P(gap > 1/qps) = {over}, want 1/e"
    );
    // independence: lag-1 autocorrelation of the gaps near 0
    let r1 =
        g.windows(2).map(|w| (w[0] - m) * (w[1] - m)).sum::<f64>() / ((n - 1.0) * sd(&g).powi(2));
    assert!(r1.abs() < 0.02, "lag-1 autocorrelation {r1}");
    // counts per 100 ms window are Poisson: variance / mean (index of dispersion) near 1
    let mut counts = vec![0.0; 1000];
    for &x in &t {
        counts[(x * 10.0) as usize] += 1.0;
    }
    let disp = sd(&counts).powi(2) / mean(&counts);
    assert!(
        (0.85..1.15).contains(&disp),
        "index of dispersion {disp}, Poisson has 1"
    );
}

#[test]
fn the_seed_fixes_the_schedule() {
    let a = poisson_schedule(500.0, 2.0, 9).unwrap();
    assert_eq!(a, poisson_schedule(500.0, 2.0, 9).unwrap());
    assert_ne!(a, poisson_schedule(500.0, 2.0, 10).unwrap());
}

#[test]
fn bad_rates_and_durations_are_refused() {
    assert!(poisson_schedule(0.0, 1.0, 1).is_err());
    assert!(poisson_schedule(-5.0, 1.0, 1).is_err());
    assert!(poisson_schedule(f64::NAN, 1.0, 1).is_err());
    assert!(poisson_schedule(10.0, 0.0, 1).is_err());
    let e = poisson_schedule(1e9, 3600.0, 1).unwrap_err().to_string();
    assert!(e.contains("queries"), "{e}");
}

#[test]
fn a_load_step_multiplies_the_rate_for_its_window_only() {
    use dlrs_loadgen::dist::{LoadStep, stepped_schedule};
    let step = LoadStep::parse("20:30:2").unwrap();
    assert_eq!((step.at_s, step.for_s, step.factor), (20.0, 30.0, 2.0));
    let t = stepped_schedule(200.0, 80.0, 5, Some(step)).unwrap();
    assert!(t.windows(2).all(|w| w[0] <= w[1]), "sorted");
    let rate = |a: f64, b: f64| t.iter().filter(|&&x| x >= a && x < b).count() as f64 / (b - a);
    // 4000 / 12000 / 6000 expected arrivals: within 5%
    for (a, b, want) in [(0.0, 20.0, 200.0), (20.0, 50.0, 400.0), (50.0, 80.0, 200.0)] {
        let got = rate(a, b);
        assert!(
            (got / want - 1.0).abs() < 0.05,
            "{a}-{b} s: {got} QPS, want {want}"
        );
    }
    // a step down works too, and no step is the plain Poisson schedule
    let down = stepped_schedule(200.0, 40.0, 5, Some(LoadStep::parse("10:10:0.25").unwrap()));
    let down = down.unwrap();
    let n = down.iter().filter(|&&x| (10.0..20.0).contains(&x)).count() as f64 / 10.0;
    assert!((n / 50.0 - 1.0).abs() < 0.15, "{n}");
    assert_eq!(
        stepped_schedule(200.0, 5.0, 5, None).unwrap(),
        dlrs_loadgen::dist::poisson_schedule(200.0, 5.0, 5).unwrap()
    );
    for bad in ["20:30", "a:1:2", "1:2:0", "1:-2:2", "1:2:3:4"] {
        assert!(LoadStep::parse(bad).is_err(), "{bad}");
    }
}
