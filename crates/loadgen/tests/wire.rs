//! The measuring client against servers that misbehave at the socket level: every query
//! gets an outcome (none is left to the drain), and a connection is reused only when the
//! previous request and answer are whole.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dlrs_loadgen::driver::Measure;
use dlrs_loadgen::http::{self, Endpoint};
use dlrs_loadgen::payload::{Body, Protocol};
use dlrs_loadgen::stats::Report;

/// A request as the fake servers read it: the content length, after the head.
fn read_head(r: &mut BufReader<TcpStream>) -> Option<usize> {
    let mut len = None;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            return len;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().ok();
        }
    }
}

fn score_answer(size: usize) -> Vec<u8> {
    let data = vec!["0.5"; size].join(",");
    let body = format!(
        r#"{{"model_name":"fake","outputs":[{{"name":"score","datatype":"FP32","shape":[{size},1],"data":[{data}]}}]}}"#
    );
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves each accepted connection with `handle` on its own thread; counts the accepts.
fn fake(handle: fn(BufReader<TcpStream>)) -> (String, Arc<AtomicUsize>) {
    fake_with_rcvbuf(handle, None)
}

/// [`fake`], its accepted sockets receiving into `rcvbuf` bytes at most (so that a client's
/// write of more stops part way).
fn fake_with_rcvbuf(
    handle: fn(BufReader<TcpStream>),
    rcvbuf: Option<i32>,
) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    if let Some(n) = rcvbuf {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid socket and a pointer to an int of the size passed.
        let r = unsafe {
            libc::setsockopt(
                l.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&n as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
    }
    let url = format!("http://{}", l.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let n = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            n.fetch_add(1, Ordering::Relaxed);
            std::thread::spawn(move || handle(BufReader::new(s)));
        }
    });
    (url, accepted)
}

/// 50 queries/s for 1 s over `connections`, bodies of `body_len` bytes (3 samples each);
/// the report and how long the measurement took.
fn run(url: &str, connections: usize, body_len: usize) -> (Report, Duration) {
    let body = Body {
        bytes: Bytes::from(vec![b'x'; body_len]),
        header_len: None,
        size: 3,
    };
    let t = Instant::now();
    let r = run_bodies(url, connections, vec![body], 50.0, 1.0);
    (r, t.elapsed())
}

/// `qps` queries/s of `bodies` for `secs` over `connections`.
fn run_bodies(url: &str, connections: usize, bodies: Vec<Body>, qps: f64, secs: f64) -> Report {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let ep = Arc::new(
        rt.block_on(Endpoint::resolve(url, "fake", Protocol::V2))
            .unwrap(),
    );
    let m = Measure {
        qps,
        duration_s: secs,
        drain_s: 20.0,
        seed: 7,
        slice: Duration::ZERO,
        step: None,
    };
    http::measure(&rt, &ep, connections, &Arc::new(bodies), &m).unwrap()
}

#[test]
fn answers_on_kept_alive_connections_count_ok() {
    let (url, accepted) = fake(|mut r| {
        while let Some(len) = read_head(&mut r) {
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            r.get_mut().write_all(&score_answer(3)).unwrap();
        }
    });
    let (rep, took) = run(&url, 4, 100);
    assert!(rep.queries > 20, "{rep:?}");
    assert_eq!(rep.ok, rep.queries, "{rep:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        4,
        "connections are kept alive"
    );
}

#[test]
fn connections_the_server_closes_while_idle_are_reopened_and_answers_stay_paired() {
    // the server closes a connection 20 ms after its last answer (an idle timeout), and
    // answers each query with as many scores as the query's body says it has samples: an
    // answer paired with another query would be a bad response, a connection used twice
    // at once a lost query
    let (url, accepted) = fake(|mut r| {
        r.get_ref()
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        while let Some(len) = read_head(&mut r) {
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let size: usize = String::from_utf8_lossy(&body)
                .trim_matches('x')
                .parse()
                .unwrap();
            r.get_mut().write_all(&score_answer(size)).unwrap();
        }
    });
    let bodies: Vec<Body> = (1..=5)
        .map(|n| Body {
            bytes: Bytes::from(format!("xx{n}xx")),
            header_len: None,
            size: n,
        })
        .collect();
    let rep = run_bodies(&url, 8, bodies, 200.0, 2.0);
    assert!(rep.queries > 200, "{rep:?}");
    // a query sent just as the server closes its connection fails (as with any client that
    // does not retry a POST); nothing else may
    let e = &rep.errors;
    assert_eq!((e.bad_response, e.timeout, e.failed), (0, 0, 0), "{rep:?}");
    assert_eq!(rep.ok + e.transport, rep.queries, "{rep:?}");
    assert!(e.transport * 20 < rep.queries, "{rep:?}");
    assert!(
        accepted.load(Ordering::Relaxed) > 16,
        "the idle connections were closed and reopened"
    );
}

#[test]
fn large_bodies_read_slowly_are_written_whole() {
    // 3 MB bodies: more than a socket takes at once, so the connection's task writes the
    // rest while the server reads in small pieces
    let (url, accepted) = fake(|mut r| {
        while let Some(len) = read_head(&mut r) {
            let mut left = len;
            let mut chunk = [0u8; 64 << 10];
            while left > 0 {
                let n = r.read(&mut chunk[..left.min(64 << 10)]).unwrap();
                assert!(n > 0);
                left -= n;
            }
            r.get_mut().write_all(&score_answer(3)).unwrap();
        }
    });
    let (rep, _) = run(&url, 2, 3 << 20);
    assert_eq!(rep.ok, rep.queries, "{rep:?}");
    assert_eq!(accepted.load(Ordering::Relaxed), 2);
}

#[test]
fn an_early_answer_waits_for_the_rest_of_the_request_before_the_next() {
    // like dlrs serve refusing a request at its head: the answer goes out first, then the
    // body is drained; a client that sent the next request on top of the unsent rest would
    // get it read as body (and the count below would not add up)
    // 60 KB requests (written by the dispatcher) and 2 MB ones (by the connection's task),
    // against 4 KB of receive buffer: the answer comes while the request is still going out
    let (url, accepted) = fake_with_rcvbuf(
        |mut r| {
            while let Some(len) = read_head(&mut r) {
                let refused = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 0\r\n\r\n";
                r.get_mut().write_all(refused).unwrap();
                std::thread::sleep(Duration::from_millis(5));
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                assert!(
                    body.iter().all(|&b| b == b'x'),
                    "a request was written into another's body"
                );
            }
        },
        Some(4096),
    );
    for body_len in [60 << 10, 2 << 20] {
        let (rep, _) = run(&url, 2, body_len);
        assert_eq!(
            rep.errors.by_status.get("503").copied(),
            Some(rep.queries),
            "{rep:?}"
        );
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 4);
}

#[test]
fn a_server_that_closes_without_answering_gives_transport_errors_not_timeouts() {
    let (url, _) = fake(|mut r| {
        let _ = read_head(&mut r);
    });
    let (rep, took) = run(&url, 4, 100);
    assert!(rep.queries > 20, "{rep:?}");
    assert_eq!(rep.errors.transport, rep.queries, "{rep:?}");
    assert!(
        took < Duration::from_secs(10),
        "no query waited for the drain: {took:?}"
    );
}

#[test]
fn an_answer_without_a_length_is_a_bad_response() {
    let (url, _) = fake(|mut r| {
        while read_head(&mut r).is_some() {
            let chunked =
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
            if r.get_mut().write_all(chunked).is_err() {
                return;
            }
        }
    });
    let (rep, took) = run(&url, 4, 100);
    assert_eq!(rep.errors.bad_response, rep.queries, "{rep:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}
