//! `--compute-nice` and `--http-slice-us`, alone in their test binary: they read the nice
//! value or slice of every thread of the process, so no other test's server may run beside
//! them (nextest runs each test in its own process).

mod common;

use common::*;

/// `--compute-nice`: the compute instances' threads (and their executors' pool threads) run at
/// that nice value, the HTTP threads at the process's; the server answers as usual.
#[test]
#[cfg(target_os = "linux")]
fn compute_nice_lowers_only_the_compute_threads() {
    let md = ModelDir::new(1);
    let mut args = md.args();
    args.compute_nice = 7;
    args.threads = 4;
    args.instances = Some(2);
    let srv = Server::start(args);
    let s = samples(&mut Lcg(3), 2);
    assert_close(&srv.infer(&s).scores(), &reference(&md.model, &s));
    // (thread name, nice) of every thread of this process
    let threads: Vec<(String, i64)> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.ok()?.path().join("stat")).ok()?;
            let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            // after the name: state is field 3, nice field 19
            Some((name.to_string(), rest.split(' ').nth(16)?.parse().ok()?))
        })
        .collect();
    let nice_of = |prefix: &str| -> Vec<i64> {
        threads.iter().filter(|(n, _)| n.starts_with(prefix)).map(|t| t.1).collect()
    };
    let (batchers, workers) = (nice_of("dlrs-batcher"), nice_of("dlrs-worker"));
    assert_eq!(batchers, vec![7, 7], "{threads:?}");
    assert_eq!(workers.len(), 4, "two executors of two threads: {threads:?}");
    assert!(workers.iter().all(|&n| n == 7), "{threads:?}");
    let http = nice_of("dlrs-http");
    assert!(http.len() >= 2, "two workers (and any blocking-pool threads): {threads:?}");
    assert!(http.iter().all(|&n| n == 0), "{threads:?}");
    srv.stop().unwrap();
}

/// `--http-slice-us`: the HTTP threads ask for that slice (EEVDF's `se.slice` in
/// /proc/<tid>/sched), the compute threads keep the kernel's default.
#[test]
#[cfg(target_os = "linux")]
fn http_threads_ask_for_short_slices() {
    let md = ModelDir::new(1);
    let mut args = md.args();
    args.http_slice_us = 250;
    let srv = Server::start(args);
    let s = samples(&mut Lcg(5), 2);
    assert_close(&srv.infer(&s).scores(), &reference(&md.model, &s));
    // (thread name, se.slice in ns) of every thread of this process
    let slices: Vec<(String, u64)> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| {
            let dir = e.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?.trim().to_string();
            let sched = std::fs::read_to_string(dir.join("sched")).ok()?;
            let line = sched.lines().find(|l| l.starts_with("se.slice"))?;
            Some((name, line.rsplit(':').next()?.trim().parse().ok()?))
        })
        .collect();
    if slices.is_empty() {
        // a kernel before EEVDF's custom slices (6.12) has no se.slice to read
        eprintln!("no se.slice in /proc/<tid>/sched: skipped");
        srv.stop().unwrap();
        return;
    }
    let of = |prefix: &str| -> Vec<u64> {
        slices.iter().filter(|(n, _)| n.starts_with(prefix)).map(|t| t.1).collect()
    };
    let (http, batchers) = (of("dlrs-http"), of("dlrs-batcher"));
    assert!(http.len() >= 2, "two workers (and any blocking-pool threads): {slices:?}");
    assert!(http.iter().all(|&ns| ns == 250_000), "{slices:?}");
    assert!(!batchers.is_empty() && batchers.iter().all(|&ns| ns != 250_000), "{slices:?}");
    srv.stop().unwrap();
}
