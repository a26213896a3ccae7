//! `--compute-nice`, alone in its test binary: it reads the nice value of every thread of
//! the process, so no other test's server may run beside it.

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
    assert!(nice_of("dlrs-http").iter().all(|&n| n == 0), "{threads:?}");
    srv.stop().unwrap();
}
