//! The Redis tier against a real cluster on loopback ports (see common/mod.rs): push, then
//! predictions bit-identical to the local tables; interrupted and resumed pushes; nodes
//! that hang, die or fail over.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Cluster, have_redis, model_dir};
use dlrs_model::synth::{IdDist, synth_batch};
use dlrs_model::{Batch, Executor, Model, ModelError, RowFormat, Workspace};
use dlrs_redis::{OnMiss, PushOptions, TierError, TierOptions, load_model, push};

fn push_opts(c: &Cluster, ns: &str) -> PushOptions {
    PushOptions {
        namespace: ns.into(),
        partitions: 8,
        window_bytes: 4096,
        ..PushOptions::new(c.addrs())
    }
}

fn tier_opts(c: &Cluster, ns: &str) -> TierOptions {
    TierOptions {
        namespace: ns.into(),
        timeout: Duration::from_millis(300),
        retries: 1,
        ..TierOptions::new(c.addrs())
    }
}

fn scores(m: &Model, b: &Batch) -> Result<Vec<f32>, ModelError> {
    let exec = Executor::new(2).unwrap();
    m.forward(b, &mut Workspace::default(), &exec)
        .map(|s| s.to_vec())
}

fn counter(m: &Model, name: &str) -> u64 {
    m.remote
        .as_ref()
        .unwrap()
        .counters()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap()
        .1
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn predictions_from_redis_are_bit_identical_to_local_tables() {
    if !have_redis() {
        return;
    }
    let c = Cluster::start(3, 0);
    let tmp = tempfile::tempdir().unwrap();
    for (i, f) in [
        RowFormat::F32,
        RowFormat::F16,
        RowFormat::Int8,
        RowFormat::Int4,
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tmp.path().join(f.name());
        let cfg = model_dir(&dir, f, 10 + i as u64);
        let report = push(&dir, &push_opts(&c, "exact"), |_, _| {}).unwrap();
        assert!(!report.already);
        assert_eq!(report.rows, 3000 + 500 + 41);
        let local = Model::load(&dir).unwrap();
        let mut opts = tier_opts(&c, "exact");
        // a small cache: hits, misses and evictions in every batch
        opts.cache_bytes = 200 * (EMB_STRIDE_MAX + 32);
        let remote = load_model(&dir, &opts).unwrap();
        for seed in 0..4 {
            for dist in [IdDist::Zipf(1.05), IdDist::Uniform] {
                let b = synth_batch(&cfg, 64, 5, dist, seed).unwrap();
                let want = scores(&local, &b).unwrap();
                let got = scores(&remote, &b).unwrap();
                assert_eq!(bits(&got), bits(&want), "{} seed {seed} {dist:?}", f.name());
            }
        }
        assert!(counter(&remote, "cache_hits") > 0, "{}", f.name());
        assert!(counter(&remote, "rows_fetched") > 0);
        // one round of commands per batch that missed: at most tables x partitions each
        assert!(counter(&remote, "commands") <= counter(&remote, "fetches") * 3 * 8);
        // a second push of the same tables writes nothing
        let again = push(&dir, &push_opts(&c, "exact"), |_, _| {}).unwrap();
        assert!(again.already && again.rows == 0);
    }
}

/// Largest row stride of the test model's formats (fp32, D 8).
const EMB_STRIDE_MAX: usize = 32;

#[test]
fn a_half_pushed_model_is_never_visible_and_a_push_resumes() {
    if !have_redis() {
        return;
    }
    let c = Cluster::start(3, 0);
    let tmp = tempfile::tempdir().unwrap();
    let (old, new) = (tmp.path().join("old"), tmp.path().join("new"));
    model_dir(&old, RowFormat::Int8, 1);
    let cfg = model_dir(&new, RowFormat::Int8, 2);
    push(&old, &push_opts(&c, "ns"), |_, _| {}).unwrap();

    // interrupted after 5 windows of 4 KiB
    let mut cut = push_opts(&c, "ns");
    cut.stop_after_windows = Some(5);
    assert!(push(&new, &cut, |_, _| {}).is_err());
    match load_model(&new, &tier_opts(&c, "ns")) {
        Err(TierError::NotPushed { current, .. }) => {
            assert!(current.contains("last push holds tables"), "{current}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a half-pushed model loaded"),
    }
    // the previous version keeps serving
    let old_remote = load_model(&old, &tier_opts(&c, "ns")).unwrap();
    let b = synth_batch(&cfg, 32, 3, IdDist::Uniform, 5).unwrap();
    assert_eq!(
        bits(&scores(&old_remote, &b).unwrap()),
        bits(&scores(&Model::load(&old).unwrap(), &b).unwrap())
    );

    // the second run starts where the first stopped
    let mut last = (0, 0);
    let r = push(&new, &push_opts(&c, "ns"), |d, t| last = (d, t)).unwrap();
    assert!(r.resumed_rows > 0, "{r:?}");
    assert_eq!(r.resumed_rows + r.rows, 3000 + 500 + 41);
    assert_eq!(last.0, last.1, "progress ends at the total");
    let remote = load_model(&new, &tier_opts(&c, "ns")).unwrap();
    for seed in 0..3 {
        let b = synth_batch(&cfg, 64, 4, IdDist::Uniform, seed).unwrap();
        assert_eq!(
            bits(&scores(&remote, &b).unwrap()),
            bits(&scores(&Model::load(&new).unwrap(), &b).unwrap())
        );
    }
}

#[test]
fn a_model_dir_that_was_not_pushed_is_a_clear_error() {
    if !have_redis() {
        return;
    }
    let c = Cluster::start(3, 0);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    model_dir(&dir, RowFormat::F32, 3);
    let e = load_model(&dir, &tier_opts(&c, "empty")).err().unwrap();
    let msg = e.to_string();
    assert!(
        msg.contains("holds no complete push") && msg.contains("holds no model"),
        "{msg}"
    );
    assert!(msg.contains("dlrs push"), "{msg}");
}

/// A model on the tier without a cache, failing batches on a miss (`strict`) or pooling
/// zero rows (`lenient`).
fn strict_and_lenient(dir: &Path, c: &Cluster, ns: &str) -> (Model, Model) {
    let mut strict = tier_opts(c, ns);
    strict.cache_bytes = 0;
    let mut lenient = strict.clone();
    lenient.on_miss = OnMiss::Zero;
    (
        load_model(dir, &strict).unwrap(),
        load_model(dir, &lenient).unwrap(),
    )
}

/// Single-sample batches, so that some touch only live nodes: each is either refused by
/// the tier or scored exactly as the local tables score it; with `OnMiss::Zero` every one
/// is scored, the ones refused with zero rows counted.
fn check_partial_outage(local: &Model, strict: &Model, lenient: &Model) {
    let cfg = &local.config;
    let (mut ok, mut failed) = (0, 0);
    for seed in 0..40 {
        let b = synth_batch(cfg, 1, 1, IdDist::Uniform, 100 + seed).unwrap();
        let want = scores(local, &b).unwrap();
        let t0 = Instant::now();
        let got = scores(strict, &b);
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "a batch took {:?}",
            t0.elapsed()
        );
        match got {
            Ok(s) => {
                ok += 1;
                assert_eq!(bits(&s), bits(&want), "a wrong score at seed {seed}");
                assert_eq!(bits(&scores(lenient, &b).unwrap()), bits(&want));
            }
            Err(ModelError::Unavailable { tier, .. }) => {
                failed += 1;
                assert_eq!(tier, "redis");
                let zeros = counter(lenient, "zero_rows");
                scores(lenient, &b).expect("zero rows instead of an error");
                assert!(counter(lenient, "zero_rows") > zeros);
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert!(ok > 0, "no sample was served from the live nodes");
    assert!(failed > 0, "no sample needed the dead node");
}

#[test]
fn a_dead_or_hung_node_fails_its_batches_clearly_and_never_gives_a_wrong_row() {
    if !have_redis() {
        return;
    }
    let mut c = Cluster::start(3, 0);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    model_dir(&dir, RowFormat::F32, 4);
    push(&dir, &push_opts(&c, "faults"), |_, _| {}).unwrap();
    let local = Model::load(&dir).unwrap();

    // a hung node (SIGSTOP): its batches fail at the deadline; it recovers when resumed
    let mut opts = tier_opts(&c, "faults");
    opts.cache_bytes = 0;
    let remote = load_model(&dir, &opts).unwrap();
    let b = synth_batch(&local.config, 64, 4, IdDist::Uniform, 9).unwrap();
    c.nodes[1].pause(true);
    let t0 = Instant::now();
    let e = scores(&remote, &b).unwrap_err();
    let took = t0.elapsed();
    c.nodes[1].pause(false);
    assert!(matches!(e, ModelError::Unavailable { .. }), "{e}");
    assert!(e.to_string().contains("redis"), "{e}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let t0 = Instant::now();
    loop {
        match scores(&remote, &b) {
            Ok(s) => {
                assert_eq!(bits(&s), bits(&scores(&local, &b).unwrap()));
                break;
            }
            Err(e) => assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no recovery after the node resumed: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // a dead node (SIGKILL), no replicas: batches that need its rows fail, others are served
    let (strict, lenient) = strict_and_lenient(&dir, &c, "faults");
    c.nodes[2].kill();
    check_partial_outage(&local, &strict, &lenient);
}

#[test]
fn a_master_failing_over_to_its_replica_serves_again_with_the_same_rows() {
    if !have_redis() {
        return;
    }
    let mut c = Cluster::start(3, 1);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    model_dir(&dir, RowFormat::Int4, 5);
    push(&dir, &push_opts(&c, "ha"), |_, _| {}).unwrap();
    c.wait_replicated(Duration::from_secs(20));
    let local = Model::load(&dir).unwrap();
    let mut opts = tier_opts(&c, "ha");
    opts.cache_bytes = 0;
    let remote = load_model(&dir, &opts).unwrap();
    let b = synth_batch(&local.config, 64, 4, IdDist::Uniform, 11).unwrap();
    let want = bits(&scores(&local, &b).unwrap());
    assert_eq!(bits(&scores(&remote, &b).unwrap()), want);

    let victim = c.masters()[0];
    c.nodes[victim].kill();
    // during the failover batches fail (clearly, and never with a wrong score); after it
    // the client follows the new slot owner (MOVED) and every batch is served again
    let t0 = Instant::now();
    let mut errors = 0;
    loop {
        match scores(&remote, &b) {
            Ok(s) => {
                assert_eq!(bits(&s), want);
                let m = c.masters();
                if m.len() == 3 && !m.contains(&victim) {
                    break;
                }
            }
            Err(e @ ModelError::Unavailable { .. }) => {
                errors += 1;
                if errors % 10 == 1 {
                    eprintln!(
                        "failover: {:?}: {e}; masters {:?}",
                        t0.elapsed(),
                        c.masters()
                    );
                }
            }
            Err(e) => panic!("{e}"),
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no failover in 30 s ({errors} failed batches)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for seed in 0..5 {
        let b = synth_batch(&local.config, 64, 4, IdDist::Uniform, 50 + seed).unwrap();
        assert_eq!(
            bits(&scores(&remote, &b).unwrap()),
            bits(&scores(&local, &b).unwrap())
        );
    }
    eprintln!(
        "failover: {errors} failed batches in {:?} (one every 50 ms)",
        t0.elapsed()
    );
}
