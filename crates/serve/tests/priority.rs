//! `--compute-nice` and `--http-slice-us`, alone in their test binary: they read the nice
//! value or slice of every thread of the process, so no other test's server may run beside
//! them (nextest runs each test in its own process).

mod common;

use common::*;

/// A server with `args`, checked to answer a request correctly.
fn answering_server(md: &ModelDir, args: dlrs_serve::ServeConfig) -> Server {
    let srv = Server::start(args);
    let s = samples(&mut Lcg(3), 2);
    assert_close(&srv.infer(&s).scores(), &reference(&md.model, &s));
    srv
}

/// `(thread name, value)` of every thread of this process whose `/proc/self/task/<tid>`
/// directory `read` gets a value from.
fn per_thread<T>(read: impl Fn(&std::path::Path) -> Option<T>) -> Vec<(String, T)> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| {
            let dir = e.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm"))
                .ok()?
                .trim()
                .to_string();
            Some((name, read(&dir)?))
        })
        .collect()
}

/// The values of the threads whose names start with `prefix`.
fn of<T: Copy>(threads: &[(String, T)], prefix: &str) -> Vec<T> {
    threads
        .iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .map(|t| t.1)
        .collect()
}

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
    let srv = answering_server(&md, args);
    let threads = per_thread(|dir| {
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // after the name: state is field 3, nice field 19
        stat.rsplit_once(") ")?
            .1
            .split(' ')
            .nth(16)?
            .parse::<i64>()
            .ok()
    });
    let (batchers, workers) = (of(&threads, "dlrs-batcher"), of(&threads, "dlrs-worker"));
    assert_eq!(batchers, vec![7, 7], "{threads:?}");
    assert_eq!(
        workers.len(),
        4,
        "two executors of two threads: {threads:?}"
    );
    assert!(workers.iter().all(|&n| n == 7), "{threads:?}");
    let http = of(&threads, "dlrs-http");
    assert!(
        http.len() >= 2,
        "two workers (and any blocking-pool threads): {threads:?}"
    );
    // the process's own nice value (0 unless the suite runs under `nice`)
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            s.rsplit_once(") ")?
                .1
                .split(' ')
                .nth(16)?
                .parse::<i64>()
                .ok()
        })
        .expect("the process's nice value");
    assert!(http.iter().all(|&n| n == own), "{own}: {threads:?}");
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
    let srv = answering_server(&md, args);
    let slices = per_thread(|dir| {
        let sched = std::fs::read_to_string(dir.join("sched")).ok()?;
        let line = sched.lines().find(|l| l.starts_with("se.slice"))?;
        line.rsplit(':').next()?.trim().parse::<u64>().ok()
    });
    if slices.is_empty() {
        // a kernel before EEVDF's custom slices (6.12) has no se.slice to read
        eprintln!("no se.slice in /proc/<tid>/sched: skipped");
        srv.stop().unwrap();
        return;
    }
    let (http, batchers) = (of(&slices, "dlrs-http"), of(&slices, "dlrs-batcher"));
    assert!(
        http.len() >= 2,
        "two workers (and any blocking-pool threads): {slices:?}"
    );
    assert!(http.iter().all(|&ns| ns == 250_000), "{slices:?}");
    assert!(
        !batchers.is_empty() && batchers.iter().all(|&ns| ns != 250_000),
        "{slices:?}"
    );
    srv.stop().unwrap();
}
