//! Hot reload (POST load and the directory watcher, a broken version refused, no failures
//! under load) and graceful shutdown.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use dlrs_model::forward::CONFIG_FILE;

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
    let kept = dlrs_model::table::spare_table_memory();
    assert!(kept > 0, "memory for a second copy of the tables is held from the start");
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
        dlrs_model::table::spare_table_memory() == kept
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
