//! Connections: slow-header and silent clients are closed by --header-timeout-ms while good
//! traffic goes on, idle keep-alive connections live until --idle-timeout-ms, connections over
//! --max-connections get 503 with Retry-After, and bodies beyond --max-body-memory-bytes 503.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn good() -> String {
    json!({"inputs": [
        {"name": "dense", "datatype": "FP32", "shape": [1, 4], "data": [0.1, 0.2, 0.3, 0.4]},
        {"name": "lengths", "datatype": "INT32", "shape": [1, 3], "data": [1, 0, 1]},
        {"name": "indices", "datatype": "INT64", "shape": [2], "data": [9, 4]},
    ]})
    .to_string()
}

fn connect(srv: &Server) -> TcpStream {
    let c = TcpStream::connect(srv.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c
}

/// Blocks until the server closes `c` (EOF or reset); how long that took from `t0`. Panics
/// if it sends anything instead.
fn wait_closed(c: &mut TcpStream, t0: Instant) -> Duration {
    let mut buf = [0u8; 1024];
    match c.read(&mut buf) {
        Ok(0) => t0.elapsed(),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => t0.elapsed(),
        Ok(n) => panic!(
            "expected a close, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => panic!("expected a close, got {e} after {:?}", t0.elapsed()),
    }
}

/// One response read off a keep-alive connection: (status, head, body); `None` on a close.
fn read_response(c: &mut TcpStream) -> Option<(u16, String, String)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_string();
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0usize);
            if out.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap();
                return Some((status, head, text[end + 4..end + 4 + len].to_string()));
            }
        }
        match c.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
            Err(e) => panic!(
                "reading a response: {e} (got {:?})",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
}

#[test]
fn slow_header_and_silent_clients_are_closed_while_good_requests_go_on() {
    let md = ModelDir::new(1);
    let mut args = md.args();
    args.header_timeout_ms = 400;
    let srv = Server::start(args);
    let path = format!("/v2/models/{NAME}/infer");
    std::thread::scope(|sc| {
        // half a request line, then nothing
        let half = sc.spawn(|| {
            let mut c = connect(&srv);
            let t0 = Instant::now();
            c.write_all(format!("POST {path} HT").as_bytes()).unwrap();
            wait_closed(&mut c, t0)
        });
        // connects and sends nothing at all
        let silent = sc.spawn(|| {
            let mut c = connect(&srv);
            wait_closed(&mut c, Instant::now())
        });
        // drips a header byte every 50 ms: dripping does not extend the deadline
        let drip = sc.spawn(|| {
            let mut c = connect(&srv);
            let t0 = Instant::now();
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nX-Slow: {}",
                "a".repeat(200)
            );
            for b in head.bytes() {
                if c.write_all(&[b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
                if t0.elapsed() > Duration::from_secs(5) {
                    break;
                }
            }
            wait_closed(&mut c, t0)
        });
        // good traffic alongside is answered at once
        for _ in 0..20 {
            let t0 = Instant::now();
            let r = srv.post(&path, &good());
            assert_eq!(r.status, 200, "{}", r.body);
            assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
            std::thread::sleep(Duration::from_millis(10));
        }
        for (what, t) in [
            ("half request line", half),
            ("silent", silent),
            ("dripping", drip),
        ] {
            let took = t.join().unwrap();
            assert!(
                took >= Duration::from_millis(350) && took < Duration::from_secs(3),
                "{what}: closed after {took:?} (header timeout 400 ms)"
            );
        }
    });
    let m = srv.metrics();
    assert_eq!(
        metric(&m, "dlrs_connections_timed_out_total", r#"phase="header""#),
        Some(3.0),
        "{m}"
    );
    let r = srv.post(&path, &good());
    assert_eq!(r.status, 200, "{}", r.body);
    srv.stop().unwrap();
}

#[test]
fn idle_keep_alive_connections_outlive_the_header_timeout_until_the_idle_timeout() {
    let md = ModelDir::new(1);
    let mut args = md.args();
    args.header_timeout_ms = 200;
    args.idle_timeout_ms = 1000;
    let srv = Server::start(args);
    let mut c = connect(&srv);
    c.write_all(get_request("/v2/health/live").as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut c).map(|r| r.0), Some(200));
    // idle for longer than the header timeout: still open
    std::thread::sleep(Duration::from_millis(500));
    c.write_all(get_request("/v2/health/ready").as_bytes())
        .unwrap();
    let (status, _, body) = read_response(&mut c).expect("the idle connection was closed early");
    assert_eq!((status, body.as_str()), (200, r#"{"ready":true}"#));
    // idle for longer than the idle timeout: closed
    let t0 = Instant::now();
    let took = wait_closed(&mut c, t0);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );
    // (the test client's own pooled connection may have idled out too)
    let m = srv.metrics();
    assert!(
        metric(&m, "dlrs_connections_timed_out_total", r#"phase="idle""#).is_some_and(|n| n >= 1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "dlrs_connections_timed_out_total", r#"phase="header""#),
        None,
        "{m}"
    );
    srv.stop().unwrap();
}

#[test]
fn connections_over_the_limit_get_503_with_retry_after() {
    let md = ModelDir::new(1);
    let mut args = md.args();
    args.max_connections = 3;
    let srv = Server::start(args);
    // the test client's agent may hold a pooled connection: open connections (each proven
    // accepted by an answer) until one is refused
    let mut open = Vec::new();
    let refused = loop {
        assert!(
            open.len() <= 3,
            "{} connections accepted with --max-connections 3",
            open.len()
        );
        let mut c = connect(&srv);
        c.write_all(get_request("/v2/health/live").as_bytes())
            .unwrap();
        let (status, head, body) = read_response(&mut c).expect("no answer");
        if status == 200 {
            open.push(c);
            continue;
        }
        // the refusal closes the connection
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        assert_eq!(read_response(&mut c), None);
        break (status, head, body);
    };
    assert!(open.len() >= 2, "refused after {} connections", open.len());
    let (status, head, body) = refused;
    assert_eq!(status, 503, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("too many connections: 3 open (--max-connections)"),
        "{body}"
    );

    // a closed connection frees its slot
    drop(open.pop());
    eventually("a slot to free up", || {
        let mut c = connect(&srv);
        c.write_all(get_request("/v2/health/live").as_bytes())
            .unwrap();
        read_response(&mut c).is_some_and(|r| r.0 == 200)
    });
    drop(open);
    let m = srv.metrics();
    assert!(
        metric(&m, "dlrs_connections_refused_total", "").is_some_and(|n| n >= 1.0),
        "{m}"
    );
    srv.stop().unwrap();
}

#[test]
fn bodies_over_the_memory_budget_get_503_until_memory_frees() {
    let md = ModelDir::new(1);
    let mut args = md.args();
    args.max_body_bytes = 4096;
    args.max_body_memory_bytes = 6000;
    args.body_timeout_ms = 3000; // the window in which the slow body is held (wide for loaded CI machines)
    let srv = Server::start(args);
    let path = format!("/v2/models/{NAME}/infer");
    // a good request padded to 3000 bytes (JSON allows trailing whitespace)
    let padded = format!("{:<3000}", good());
    // a client that sends 3500 bytes of a 4000-byte body and stalls holds 3500 bytes; a probe
    // that is still being read when the slow body arrives makes the slow body the one refused,
    // so an attempt where that happened is tried again
    let attempt = || {
        std::thread::scope(|sc| {
            let (sent_tx, sent) = std::sync::mpsc::channel();
            let (srv, path) = (&srv, &path);
            let slow = sc.spawn(move || {
                let mut c = connect(srv);
                let head = format!(
                    "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n{}",
                    " ".repeat(3500)
                );
                c.write_all(head.as_bytes()).unwrap();
                sent_tx.send(()).unwrap();
                read_response(&mut c).expect("no answer to the slow body")
            });
            sent.recv().unwrap();
            std::thread::sleep(Duration::from_millis(50));
            let t0 = Instant::now();
            loop {
                if slow.is_finished() {
                    let (status, _, body) = slow.join().unwrap();
                    assert_eq!(status, 503, "{body}");
                    return false;
                }
                let r = srv.post(path, &padded);
                if r.status == 200 {
                    assert!(
                        t0.elapsed() < Duration::from_secs(10),
                        "the slow body was never held"
                    );
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                assert_eq!(r.status, 503, "{}", r.body);
                assert_eq!(r.retry_after.as_deref(), Some("1"));
                assert!(
                    r.error()
                        .contains("of 6000 bytes in use (--max-body-memory-bytes)"),
                    "{}",
                    r.body
                );
                break;
            }
            let (status, _, body) = slow.join().unwrap();
            assert_eq!(status, 408, "{body}");
            true
        })
    };
    assert!(
        (0..5).any(|_| attempt()),
        "the slow body lost the race for memory 5 times"
    );
    // the slow body is gone, and its bytes with it
    let r = srv.post(&path, &padded);
    assert_eq!(r.status, 200, "{}", r.body);
    srv.stop().unwrap();
}

#[test]
fn an_error_before_the_body_is_read_closes_the_connection_and_says_so() {
    let md = ModelDir::new(1);
    let srv = Server::start(md.args());
    // refused from the headers, the body (only partly sent) never read: Connection: close
    let mut c = connect(&srv);
    let head = format!(
        "POST /v1/models/{NAME}/predict HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: 3\r\n\
         Content-Length: 100\r\n\r\n{{\"samples\""
    );
    c.write_all(head.as_bytes()).unwrap();
    let (status, head, body) = read_response(&mut c).expect("no answer");
    assert_eq!(status, 400, "{body}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert_eq!(read_response(&mut c), None, "the connection stays open");

    // an error found in a body read in full keeps the connection
    let mut c = connect(&srv);
    let bad = "{\"inputs\": 5}";
    let req = format!(
        "POST /v2/models/{NAME}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{bad}",
        bad.len()
    );
    c.write_all(req.as_bytes()).unwrap();
    let (status, head, body) = read_response(&mut c).expect("no answer");
    assert_eq!(status, 400, "{body}");
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    c.write_all(get_request("/v2/health/live").as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut c).map(|r| r.0), Some(200));
    srv.stop().unwrap();
}

#[test]
fn connection_flags_have_their_defaults_and_are_checked() {
    let md = ModelDir::new(1);
    let a = dlrs_serve::ServeConfig::new(md.dir());
    assert_eq!(
        (
            a.max_connections,
            a.header_timeout_ms,
            a.idle_timeout_ms,
            a.write_timeout_ms
        ),
        (1024, 5000, 60_000, 10_000)
    );
    assert_eq!(a.max_body_memory_bytes, 256 << 20);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = |args: dlrs_serve::ServeConfig| {
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            dlrs_serve::serve(args, l, std::future::pending()).await
        })
    };
    let mut args = md.args();
    args.max_body_memory_bytes = args.max_body_bytes - 1;
    let e = start(args).unwrap_err();
    assert!(
        format!("{e:#}").contains("--max-body-memory-bytes"),
        "{e:#}"
    );
    let mut args = md.args();
    args.max_connections = 0;
    let e = start(args).unwrap_err();
    assert!(format!("{e:#}").contains("--max-connections"), "{e:#}");
    let mut args = md.args();
    args.header_timeout_ms = 0;
    let e = start(args).unwrap_err();
    assert!(format!("{e:#}").contains("--header-timeout-ms"), "{e:#}");
    let mut args = md.args();
    args.write_timeout_ms = 0;
    let e = start(args).unwrap_err();
    assert!(format!("{e:#}").contains("--write-timeout-ms"), "{e:#}");
}

/// A client that sends requests and never reads the answers fills the socket buffers; the
/// response it blocks is given --write-timeout-ms, then the connection is closed (counted),
/// while other clients are served.
#[test]
fn a_client_that_never_reads_its_answers_is_closed_after_the_write_timeout() {
    let md = ModelDir::new(1);
    let mut args = md.args();
    args.write_timeout_ms = 300;
    let srv = Server::start(args);
    let c = connect(&srv);
    // pipelined GETs, never read: 64 MiB of metadata answers cannot fit in socket buffers
    let request = get_request(&format!("/v2/models/{NAME}"));
    let writer = {
        let mut c = c.try_clone().unwrap();
        std::thread::spawn(move || {
            let batch = request.repeat(1000);
            // stops when the server closes the connection
            while c.write_all(batch.as_bytes()).is_ok() {}
        })
    };
    eventually("the write timeout to close the connection", || {
        metric(
            &srv.metrics(),
            "dlrs_connections_timed_out_total",
            r#"phase="write""#,
        ) == Some(1.0)
    });
    writer.join().unwrap();
    let (status, _) = srv.get("/v2/health/ready");
    assert_eq!(status, 200);
    drop(c);
    srv.stop().unwrap();
}
