//! Query-size distributions: fixed, normal, lognormal, from a file; the 1024 cap; parse errors.

use dlrs_loadgen::dist::{MAX_QUERY_SIZE, QuerySize};

fn stats(v: &[usize]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<usize>() as f64 / n;
    let var = v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, var.sqrt())
}

#[test]
fn fixed_is_exact() {
    let q = QuerySize::parse("fixed:37").unwrap();
    assert_eq!(q, QuerySize::Fixed(37));
    assert!(q.draw(1000, 1).iter().all(|&n| n == 37));
    assert_eq!(q.name(), "fixed:37");
    assert!(
        QuerySize::parse("fixed:5000")
            .unwrap()
            .draw(10, 1)
            .iter()
            .all(|&n| n == MAX_QUERY_SIZE)
    );
}

#[test]
fn normal_has_its_mean_and_sd() {
    let q = QuerySize::parse("normal:165,16").unwrap();
    let v = q.draw(100_000, 3);
    let (m, sd) = stats(&v);
    assert!((m - 165.0).abs() < 0.5, "mean {m}, want 165");
    // rounding to integers adds 1/12 to the variance
    assert!((sd - 16.0).abs() < 0.4, "sd {sd}, want 16");
    assert!(v.iter().all(|&n| (1..=MAX_QUERY_SIZE).contains(&n)));
    assert_ne!(v, q.draw(100_000, 4), "another seed, other sizes");
    assert_eq!(v, q.draw(100_000, 3), "the same seed, the same sizes");
}

#[test]
fn sizes_are_capped_at_1024_and_at_least_1() {
    let big = QuerySize::parse("normal:3000,50").unwrap().draw(1000, 1);
    assert!(
        big.iter().all(|&n| n == 1024),
        "everything above 1024 is capped to 1024"
    );
    let wide = QuerySize::parse("normal:900,400").unwrap().draw(20_000, 1);
    assert_eq!(*wide.iter().max().unwrap(), 1024);
    assert!(
        wide.iter().filter(|&&n| n == 1024).count() > 20_000 / 10,
        "the cap holds the upper tail"
    );
    let small = QuerySize::parse("normal:0,1").unwrap().draw(1000, 1);
    assert!(
        small.iter().all(|&n| (1..=5).contains(&n)),
        "sizes are at least 1: {:?}",
        &small[..10]
    );
    assert!(
        small.iter().filter(|&&n| n == 1).count() > 800,
        "negative draws become 1"
    );
    let ln = QuerySize::parse("lognormal:9,1").unwrap().draw(1000, 1);
    assert!(ln.iter().all(|&n| (1..=1024).contains(&n)));
}

#[test]
fn lognormal_parameters_are_those_of_the_log() {
    let v = QuerySize::parse("lognormal:4.5,0.5")
        .unwrap()
        .draw(50_000, 5);
    let mut s = v.clone();
    s.sort();
    let median = s[s.len() / 2] as f64;
    assert!(
        (median - 4.5f64.exp()).abs() < 3.0,
        "median {median}, want e^4.5 = {}",
        4.5f64.exp()
    );
    let logs: Vec<f64> = v.iter().map(|&n| (n as f64).ln()).collect();
    let m = logs.iter().sum::<f64>() / logs.len() as f64;
    let sd = (logs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / logs.len() as f64).sqrt();
    assert!(
        (m - 4.5).abs() < 0.02 && (sd - 0.5).abs() < 0.02,
        "log mean {m}, log sd {sd}"
    );
}

#[test]
fn file_sizes_follow_their_weights() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sizes.txt");
    std::fs::write(&path, "# size weight\n10 1\n\n20, 3\n5000\n").unwrap();
    let q = QuerySize::parse(&format!("file:{}", path.display())).unwrap();
    assert_eq!(q.name(), format!("file:{}", path.display()));
    let v = q.draw(50_000, 2);
    let share = |k: usize| v.iter().filter(|&&n| n == k).count() as f64 / v.len() as f64;
    assert!((share(10) - 0.2).abs() < 0.01, "size 10: {}", share(10));
    assert!((share(20) - 0.6).abs() < 0.01, "size 20: {}", share(20));
    assert!(
        (share(1024) - 0.2).abs() < 0.01,
        "size 5000 capped to 1024: {}",
        share(1024)
    );
    assert!(
        (share(10) + share(20) + share(1024) - 1.0).abs() < 1e-12,
        "no other sizes"
    );

    // plain observations, one per line
    std::fs::write(&path, "7\n7\n9\n").unwrap();
    let v = QuerySize::parse(&format!("file:{}", path.display()))
        .unwrap()
        .draw(30_000, 1);
    let sevens = v.iter().filter(|&&n| n == 7).count() as f64 / v.len() as f64;
    assert!((sevens - 2.0 / 3.0).abs() < 0.015, "{sevens}");
    assert!(v.iter().all(|&n| n == 7 || n == 9));
}

#[test]
fn bad_specs_are_refused_with_the_reason() {
    for bad in [
        "fixed:0",
        "fixed:x",
        "normal:165",
        "normal:165,-1",
        "normal:a,b",
        "lognormal:1,2,3",
        "poisson:3",
        "",
    ] {
        assert!(QuerySize::parse(bad).is_err(), "{bad} should be refused");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.txt");
    std::fs::write(&path, "10\n0\n").unwrap();
    let e = QuerySize::parse(&format!("file:{}", path.display()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 2"), "{e}");
    std::fs::write(&path, "10 1 2\n").unwrap();
    let e = QuerySize::parse(&format!("file:{}", path.display()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 1"), "{e}");
    std::fs::write(&path, "# nothing\n").unwrap();
    assert!(QuerySize::parse(&format!("file:{}", path.display())).is_err());
    let e = QuerySize::parse("file:/nonexistent/sizes.txt").unwrap_err();
    assert!(format!("{e:#}").contains("/nonexistent/sizes.txt"), "{e:#}");
}
