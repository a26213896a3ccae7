//! Hot reload (POST load and the directory watcher, a broken version refused, no failures
//! under load) and graceful shutdown.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use dlrs_model::CONFIG_FILE;

#[test]
fn post_load_swaps_in_the_new_model_and_refuses_a_broken_one() {
    let md = ModelDir::new(1);
    let srv = Server::start(md.args());
    let load = format!("/v2/repository/models/{NAME}/load");
    let mut rng = Lcg(4);
    let s = samples(&mut rng, 4);
    let old = reference(&md.model, &s);
    assert_close(&srv.infer(&s).scores(), &old);

    let m2 = replace_model(&md.dir(), 2);
    let new = reference(&m2, &s);
    assert!(
        old.iter().zip(&new).any(|(a, b)| (a - b).abs() > 1e-4),
        "seeds give the same scores"
    );
    let r = srv.post(&load, "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["version"], "2");
    let r = srv.infer(&s);
    assert_close(&r.scores(), &new);
    assert_eq!(r.json()["model_version"], "2");

    // a broken config: refused, version 2 keeps serving
    atomic_write(&md.dir(), CONFIG_FILE, r#"{"arch_mlp_bot": "4-8-4"}"#);
    let r = srv.post(&load, "");
    assert_eq!(r.status, 500, "{}", r.body);
    let err = r.error();
    assert!(
        err.contains("config.json is invalid") && err.contains("still serving version 2"),
        "{err}"
    );
    assert_close(&srv.infer(&s).scores(), &new);
    assert_eq!(srv.get("/v2/health/ready").0, 200);
    // truncated weights: refused too
    m2.save(&md.dir()).unwrap();
    atomic_write(&md.dir(), "model.safetensors", "garbage");
    let r = srv.post(&load, "");
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.error().contains("model.safetensors"), "{}", r.body);
    assert_close(&srv.infer(&s).scores(), &new);

    let m = srv.metrics();
    assert_eq!(
        metric(&m, "dlrs_model_reloads_total", r#"result="ok""#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "dlrs_model_reloads_total", r#"result="error""#),
        Some(2.0),
        "{m}"
    );
    assert_eq!(metric(&m, "dlrs_model_version", ""), Some(2.0), "{m}");
    srv.stop().unwrap();
}

#[test]
fn the_watcher_reloads_files_replaced_by_rename() {
    let md = ModelDir::new(1);
    let mut args = md.args();
    args.watch_interval_ms = 50;
    let srv = Server::start(args);
    let mut rng = Lcg(5);
    let s = samples(&mut rng, 3);
    assert_close(&srv.infer(&s).scores(), &reference(&md.model, &s));
    let m3 = replace_model(&md.dir(), 3);
    let want = reference(&m3, &s);
    eventually("the watcher's reload", || {
        let got = srv.infer(&s).scores();
        got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-6)
    });
    // a broken version found by the watcher is refused; the last good one keeps serving
    atomic_write(&md.dir(), CONFIG_FILE, "{");
    eventually("the failed reload", || {
        metric(
            &srv.metrics(),
            "dlrs_model_reloads_total",
            r#"result="error""#,
        )
        .is_some_and(|n| n >= 1.0)
    });
    assert_close(&srv.infer(&s).scores(), &want);
    srv.stop().unwrap();
}

#[test]
fn reloads_into_kept_memory_serve_each_new_version_exactly() {
    // --keep-reload-memory: each reload copies into the replaced version's memory (kept, not
    // zeroed); the scores must be those of the version loaded, never a mix with the last
    let md = ModelDir::new(1);
    let mut args = md.args();
    args.keep_reload_memory = true;
    let srv = Server::start(args);
    let kept = dlrs_model::tables::spare_table_memory();
    assert!(
        kept > 0,
        "memory for a second copy of the tables is held from the start"
    );
    let mut rng = Lcg(8);
    let s = samples(&mut rng, 4);
    let load = format!("/v2/repository/models/{NAME}/load");
    for i in 0..4u64 {
        let seed = 2 + i;
        let m = replace_model(&md.dir(), seed);
        let r = srv.post(&load, "");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_close(&srv.infer(&s).scores(), &reference(&m, &s));
    }
    // the replaced version's memory went back (its last request done, on a background thread)
    eventually("the replaced version's memory kept again", || {
        dlrs_model::tables::spare_table_memory() == kept
    });
    srv.stop().unwrap();
}

#[test]
fn no_request_fails_during_reloads() {
    let md = ModelDir::new(1);
    let srv = Server::start(md.args());
    let m2 = dlrs_model::Model::random(config(), 2).unwrap();
    let mut rng = Lcg(6);
    let s = samples(&mut rng, 5);
    let (want1, want2) = (reference(&md.model, &s), reference(&m2, &s));
    let stop = AtomicBool::new(false);
    let answered = AtomicUsize::new(0);
    std::thread::scope(|sc| {
        for _ in 0..3 {
            sc.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let r = srv.infer(&s);
                    assert_eq!(
                        r.status, 200,
                        "a request failed during a reload: {}",
                        r.body
                    );
                    let got = r.scores();
                    let close = |w: &[f32]| got.iter().zip(w).all(|(a, b)| (a - b).abs() <= 1e-6);
                    assert!(
                        close(&want1) || close(&want2),
                        "scores of neither version: {got:?}"
                    );
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        for i in 0..8u64 {
            replace_model(&md.dir(), 2 - i % 2);
            let r = srv.post(&format!("/v2/repository/models/{NAME}/load"), "");
            assert_eq!(r.status, 200, "{}", r.body);
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(answered.load(Ordering::Relaxed) > 10);
    srv.stop().unwrap();
}

#[test]
fn shutdown_turns_unready_refuses_new_requests_and_finishes_in_flight_ones() {
    let md = ModelDir::new(1);
    let gate = Gate::new();
    let mut args = md.args();
    args.hooks = gate.hook();
    let mut srv = Server::start(args);
    let mut rng = Lcg(8);
    let s = samples(&mut rng, 2);
    let want = reference(&md.model, &s);
    let agent = agent();
    let url = srv.url(&format!("/v2/models/{NAME}/infer"));
    let body = v2_request(&s, None).to_string();
    let in_flight = std::thread::spawn(move || {
        let mut r = agent.post(&url).send(&body).unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    });
    gate.wait_entered(1);
    srv.trigger_shutdown();
    eventually("readiness false", || srv.get("/v2/health/ready").0 == 503);
    assert_eq!(srv.get(&format!("/v2/models/{NAME}/ready")).0, 503);
    assert_eq!(srv.get("/v2/health/live").0, 200);
    let r = srv.infer(&s);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.error().contains("shutting down"), "{}", r.body);
    assert!(
        !srv.is_finished(),
        "serve returned with a request in flight"
    );
    gate.open();
    let (status, body) = in_flight.join().unwrap();
    assert_eq!(status, 200, "{body}");
    let got: Vec<f32> =
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
    assert_close(&got, &want);
    eventually("serve to return", || srv.is_finished());
    srv.stop().unwrap();
}

/// Makes `path` a FIFO (no writer: a plain open of it blocks forever).
fn mkfifo(path: &std::path::Path) {
    let _ = std::fs::remove_file(path);
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo reads a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn reloads_refuse_fifos_devices_and_huge_files_at_once_and_a_good_one_follows() {
    // regression: a FIFO as config.json wedged the reload path for good (the reload thread
    // blocked opening it, holding the reload lock), and /dev/zero as config.json was read
    // without end (3 GB in 4 s, from the watcher alone)
    let md = ModelDir::new(1);
    let mut args = md.args();
    args.watch_interval_ms = 50;
    let srv = Server::start(args);
    let load = format!("/v2/repository/models/{NAME}/load");
    let mut rng = Lcg(4);
    let s = samples(&mut rng, 3);
    let good_config = std::fs::read_to_string(md.dir().join(CONFIG_FILE)).unwrap();
    let weights = md.dir().join("model.safetensors");
    let good_weights = std::fs::read(&weights).unwrap();
    let config = md.dir().join(CONFIG_FILE);

    type Breaker = Box<dyn Fn(&std::path::Path)>;
    let cases: Vec<(&str, Breaker, &str)> = vec![
        (
            "config.json",
            Box::new(mkfifo),
            "not a regular file (a FIFO)",
        ),
        (
            "config.json",
            Box::new(|p| {
                let _ = std::fs::remove_file(p);
                std::os::unix::fs::symlink("/dev/zero", p).unwrap()
            }),
            "not a regular file (a character device)",
        ),
        (
            "config.json",
            Box::new(|p| {
                let _ = std::fs::remove_file(p);
                std::fs::File::create(p).unwrap().set_len(4 << 30).unwrap()
            }),
            "4294967296 bytes: larger than the 1 MiB a config.json may have",
        ),
        (
            "model.safetensors",
            Box::new(mkfifo),
            "not a regular file (a FIFO)",
        ),
        (
            "model.safetensors",
            Box::new(|p| {
                let _ = std::fs::remove_file(p);
                std::os::unix::fs::symlink("/dev/urandom", p).unwrap()
            }),
            "not a regular file (a character device)",
        ),
        (
            "model.safetensors",
            Box::new(|p| {
                let _ = std::fs::remove_file(p);
                std::fs::create_dir(p).unwrap()
            }),
            "not a regular file (a directory)",
        ),
    ];
    for (i, (file, break_it, want)) in cases.iter().enumerate() {
        let path = md.dir().join(file);
        break_it(&path);
        let t0 = std::time::Instant::now();
        let r = srv.post(&load, "");
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "{file}: {:?}",
            t0.elapsed()
        );
        assert_eq!(r.status, 500, "{file}: {}", r.body);
        let err = r.error();
        assert!(err.contains(want), "{file}: {err}");
        assert!(err.contains(file), "{file}: {err}");
        assert!(!err.contains("os error"), "{file}: {err}");
        // the watcher met the same files: it must not have wedged the reload path either
        std::thread::sleep(Duration::from_millis(120));
        // put the real file back: the next reload succeeds at once
        if path.is_dir() {
            std::fs::remove_dir(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
        if *file == "config.json" {
            std::fs::write(&config, &good_config).unwrap();
        } else {
            std::fs::write(&weights, &good_weights).unwrap();
        }
        let m = replace_model(&md.dir(), 10 + i as u64);
        let t0 = std::time::Instant::now();
        let r = srv.post(&load, "");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!(r.status, 200, "{file}: {}", r.body);
        assert_close(&srv.infer(&s).scores(), &reference(&m, &s));
    }
    srv.stop().unwrap();
}

#[test]
fn a_reload_stuck_past_its_timeout_is_abandoned_and_the_next_one_succeeds() {
    let md = ModelDir::new(1);
    let release = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let mut args = md.args();
    args.reload_timeout_ms = 300;
    let stuck = Arc::new(AtomicUsize::new(0));
    {
        let (release, stuck) = (Arc::clone(&release), Arc::clone(&stuck));
        // the first reload blocks (as on a file that never answers) until released
        args.hooks.before_load = Some(Arc::new(move || {
            if stuck.fetch_add(1, Ordering::SeqCst) == 0 {
                let (m, cv) = &*release;
                let mut go = m.lock().unwrap();
                while !*go {
                    go = cv.wait(go).unwrap();
                }
            }
        }));
    }
    let srv = Server::start(args);
    let load = format!("/v2/repository/models/{NAME}/load");
    let mut rng = Lcg(5);
    let s = samples(&mut rng, 3);
    let m2 = replace_model(&md.dir(), 2);
    let t0 = std::time::Instant::now();
    let r = srv.post(&load, "");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(
        r.error().contains("longer than --reload-timeout-ms 300")
            && r.error().contains("still serving version 1"),
        "{}",
        r.body
    );
    assert_close(&srv.infer(&s).scores(), &reference(&md.model, &s));
    // the stuck thread still holds its reload; the next one proceeds anyway
    let r = srv.post(&load, "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["version"], "2");
    assert_close(&srv.infer(&s).scores(), &reference(&m2, &s));
    // the abandoned load ends later: its version is dropped, never served
    {
        let (m, cv) = &*release;
        *m.lock().unwrap() = true;
        cv.notify_all();
    }
    std::thread::sleep(Duration::from_millis(200));
    let r = srv.infer(&s);
    assert_eq!(r.json()["model_version"], "2");
    assert_close(&r.scores(), &reference(&m2, &s));
    srv.stop().unwrap();
}

#[test]
fn drain_timeout_bounds_shutdown_with_a_client_sending_its_body_slowly() {
    // regression: with --drain-timeout-ms 1000 the server exited only when
    // --body-timeout-ms (7 s) cut the slow body off
    use std::io::Write;
    let md = ModelDir::new(1);
    let mut args = md.args();
    args.drain_timeout_ms = 500;
    args.body_timeout_ms = 20_000;
    let mut srv = Server::start(args);
    let mut sock = std::net::TcpStream::connect(srv.addr).unwrap();
    write!(
        sock,
        "POST /v2/models/{NAME}/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"inputs\": ["
    )
    .unwrap();
    sock.flush().unwrap();
    // the request is in progress (its body half sent) when shutdown starts
    std::thread::sleep(Duration::from_millis(200));
    let t0 = std::time::Instant::now();
    srv.trigger_shutdown();
    eventually("serve to return", || srv.is_finished());
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "shutdown took {took:?} with --drain-timeout-ms 500"
    );
    srv.stop().unwrap();
}
