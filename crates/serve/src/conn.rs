//! Connections: the accept loop, the bound on open connections, the header-read and idle
//! timeouts, and graceful shutdown (see the crate docs, "Connections").
//!
//! Each connection is served by hyper's HTTP/1.1 server in its own task beside a watchdog
//! that knows the connection's phase:
//!
//! - *head*: from accept (a new connection) or from the first byte after an idle wait, until
//!   hyper has read the whole request head; bounded by `--header-timeout-ms`;
//! - *busy*: a request is being handled (body reading and compute have their own limits:
//!   `--body-timeout-ms`, deadlines);
//!
//! and, in any phase, a socket write that cannot proceed (the client does not read its
//! answers and the buffers are full) is bounded by `--write-timeout-ms`;
//! - *idle*: a keep-alive connection between requests; bounded by `--idle-timeout-ms`.
//!
//! A connection over its phase's limit is closed without an answer (hyper's own
//! `header_read_timeout` would do for the head, but it runs from the end of the previous
//! response, so it would also cut idle keep-alive connections at the same, short, limit).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::service::Service as _;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::config::ServeConfig;
use crate::error::ServeError;
use crate::metrics::Metrics;

/// Connections being refused (answered 503 and drained) at once; beyond it a connection over
/// `--max-connections` is closed without an answer.
const REFUSING_AT_ONCE: usize = 64;
/// How long a refused connection is kept to let the client read its 503.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// The connection limits of [`ServeConfig`], checked.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
}

impl Limits {
    /// Checks the connection and body-memory settings of `config`.
    pub fn from_config(config: &ServeConfig) -> Result<Self, ServeError> {
        const MAX_CONNECTIONS: usize = 1 << 20;
        if !(1..=MAX_CONNECTIONS).contains(&config.max_connections) {
            return Err(ServeError::flag(
                "--max-connections",
                format!("must be between 1 and {MAX_CONNECTIONS}"),
            ));
        }
        for (flag, ms) in [
            ("--header-timeout-ms", config.header_timeout_ms),
            ("--idle-timeout-ms", config.idle_timeout_ms),
            ("--write-timeout-ms", config.write_timeout_ms),
        ] {
            if ms < 1 {
                return Err(ServeError::flag(flag, "must be at least 1"));
            }
        }
        if config.max_body_memory_bytes < config.max_body_bytes {
            return Err(ServeError::flag(
                "--max-body-memory-bytes",
                format!(
                    "({}) must be at least --max-body-bytes ({}), or the largest body could never be read",
                    config.max_body_memory_bytes, config.max_body_bytes
                ),
            ));
        }
        Ok(Limits {
            max_connections: config.max_connections,
            header_timeout: Duration::from_millis(config.header_timeout_ms),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            write_timeout: Duration::from_millis(config.write_timeout_ms),
        })
    }
}

/// What the connections are told: keep serving, stop (finish the request in progress, then
/// close), or close now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Serving,
    Graceful,
    Now,
}

/// Serves `app` on `listener` until `shutdown` completes with a deadline; then stops
/// accepting, closes the connections with no request in progress, lets the others finish
/// their request until the deadline, closes whatever is still open at the deadline (a client
/// still sending its body, say), and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = Instant>,
) -> io::Result<()> {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(REFUSING_AT_ONCE));
    let (stop_tx, stop_rx) = watch::channel(Stop::Serving);
    let mut shutdown = pin!(shutdown);
    let deadline = loop {
        let stream = tokio::select! {
            d = &mut shutdown => break d,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    // answers are small: never hold one back waiting for an ACK (Nagle)
                    let _ = stream.set_nodelay(true);
                    stream
                }
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // e.g. out of file descriptors: wait for some to be released
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::select! {
                        d = &mut shutdown => break d,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        match Arc::clone(&open).try_acquire_owned() {
            Ok(permit) => {
                metrics.connections.increment(1.0);
                let (app, metrics, stop) = (app.clone(), Arc::clone(&metrics), stop_rx.clone());
                tokio::spawn(async move {
                    connection(stream, app, limits, stop, &metrics).await;
                    metrics.connections.decrement(1.0);
                    drop(permit);
                });
            }
            Err(_) => refuse(stream, limits.max_connections, &refusing, &metrics),
        }
    };
    drop(listener);
    let _ = stop_tx.send(Stop::Graceful);
    // every connection task holds a permit until it ends
    let all = limits.max_connections as u32;
    if tokio::time::timeout_at(deadline.into(), open.acquire_many(all))
        .await
        .is_err()
    {
        // the drain deadline: close what is left (each task returns at its next poll)
        let _ = stop_tx.send(Stop::Now);
        let _ = tokio::time::timeout(CLOSE_NOW_GRACE, open.acquire_many(all)).await;
    }
    Ok(())
}

/// How long the connections closed at the drain deadline are given to end.
const CLOSE_NOW_GRACE: Duration = Duration::from_millis(200);

/// Errors of one incoming connection (not of the listener): skip it and keep accepting.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Answers a connection over `--max-connections` with 503 and `Retry-After: 1`, then closes
/// it. What the client sends meanwhile is read and dropped for up to [`REFUSAL_LINGER`], so
/// that the close is not a reset that could destroy the answer before the client reads it.
/// When [`REFUSING_AT_ONCE`] refusals are already lingering, the connection is closed at once.
fn refuse(mut stream: TcpStream, max: usize, refusing: &Arc<Semaphore>, metrics: &Metrics) {
    metrics.connections_refused.increment(1);
    let Ok(permit) = Arc::clone(refusing).try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let body = serde_json::json!({
            "error": format!("too many connections: {max} open (--max-connections); retry later")
        })
        .to_string();
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
             connection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            stream.write_all(answer.as_bytes()).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            io::Result::Ok(())
        })
        .await;
    });
}

/// Serves one connection until it ends, its phase's timeout passes, or shutdown closes it.
async fn connection(
    stream: TcpStream,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<Stop>,
    metrics: &Metrics,
) {
    let clock = Arc::new(Clock::new());
    let io = TokioIo::new(Watched {
        io: stream,
        clock: Arc::clone(&clock),
    });
    let svc = {
        let (inner, clock) = (TowerToHyperService::new(app), Arc::clone(&clock));
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            clock.start_request();
            let answer = inner.call(req);
            let clock = Arc::clone(&clock);
            async move {
                let resp = answer.await?;
                Ok::<_, Infallible>(resp.map(|body| Tracked { body, clock }))
            }
        })
    };
    let mut conn = pin!(hyper::server::conn::http1::Builder::new().serve_connection(io, svc));
    // the watchdog wakes at least this often, so it never misses a phase change by more
    // than the shortest limit (and so never closes late)
    let period = limits
        .header_timeout
        .min(limits.idle_timeout)
        .min(limits.write_timeout);
    let mut stopping = false;
    if *stop.borrow() != Stop::Serving {
        return;
    }
    loop {
        let now = Instant::now();
        let wake = match clock.limit(&limits) {
            Some((until, _)) => until.min(now + period),
            None => now + period,
        };
        tokio::select! {
            _ = conn.as_mut() => return,
            changed = stop.changed() => match *stop.borrow_and_update() {
                // the server's accept loop is gone: nothing will wait for this connection
                _ if changed.is_err() => return,
                Stop::Serving => {}
                Stop::Graceful if !stopping => {
                    stopping = true;
                    // hyper finishes the request in progress, then closes
                    conn.as_mut().graceful_shutdown();
                }
                Stop::Graceful => {}
                // the drain deadline passed: dropping the connection closes it
                Stop::Now => return,
            },
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        match clock.limit(&limits) {
            // shutting down: a connection with no request in progress is closed at once
            Some((_, phase)) if stopping && phase != "write" => return,
            Some((until, phase)) if Instant::now() >= until => {
                metrics.connection_timed_out(phase);
                return;
            }
            _ => {}
        }
    }
}

const IDLE: u64 = 0;
const HEAD: u64 = 1;
const BUSY: u64 = 2;

/// A connection's phase and since when, packed in one atomic: `micros since base << 2 | phase`.
/// Written only by the connection's own task; read by its watchdog.
struct Clock {
    base: Instant,
    state: AtomicU64,
    /// micros since base + 1 when a socket write first could not proceed; 0 while writes go
    write_blocked: AtomicU64,
}

impl Clock {
    /// A new connection waits for its first request head.
    fn new() -> Self {
        Clock {
            base: Instant::now(),
            state: AtomicU64::new(HEAD),
            write_blocked: AtomicU64::new(0),
        }
    }

    fn set(&self, phase: u64) {
        let micros = self.base.elapsed().as_micros() as u64;
        self.state.store(micros << 2 | phase, Ordering::Release);
    }

    /// Bytes arrived: an idle connection starts reading a request head.
    fn on_bytes(&self) {
        let s = self.state.load(Ordering::Acquire);
        if s & 3 == IDLE {
            self.set(HEAD);
        }
    }

    /// hyper has read a request head and calls the service.
    fn start_request(&self) {
        self.set(BUSY);
    }

    /// The response is written (or dropped): the connection waits for the next request.
    fn end_request(&self) {
        self.set(IDLE);
    }

    /// A socket write returned: `pending` if it could not proceed.
    fn on_write<T>(&self, r: &Poll<T>) {
        let blocked = self.write_blocked.load(Ordering::Relaxed);
        match (r.is_pending(), blocked) {
            (true, 0) => self.write_blocked.store(
                self.base.elapsed().as_micros() as u64 + 1,
                Ordering::Relaxed,
            ),
            (false, b) if b != 0 => self.write_blocked.store(0, Ordering::Relaxed),
            _ => {}
        }
    }

    /// When the current phase (or a blocked write) runs out, and its name; `None` while a
    /// request is handled and its writes go.
    fn limit(&self, limits: &Limits) -> Option<(Instant, &'static str)> {
        let blocked = self.write_blocked.load(Ordering::Relaxed);
        if blocked != 0 {
            return Some((
                self.base + Duration::from_micros(blocked - 1) + limits.write_timeout,
                "write",
            ));
        }
        let s = self.state.load(Ordering::Acquire);
        let since = self.base + Duration::from_micros(s >> 2);
        match s & 3 {
            IDLE => Some((since + limits.idle_timeout, "idle")),
            HEAD => Some((since + limits.header_timeout, "header")),
            _ => None,
        }
    }
}

/// The connection's socket, telling the clock when bytes arrive.
struct Watched {
    io: TcpStream,
    clock: Arc<Clock>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.on_bytes();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.clock.on_write(&r);
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.clock.on_write(&r);
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A response body that ends its request's busy phase when hyper drops it (written, or the
/// connection gone).
struct Tracked {
    body: axum::body::Body,
    clock: Arc<Clock>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.clock.end_request();
    }
}

impl HttpBody for Tracked {
    type Data = <axum::body::Body as HttpBody>::Data;
    type Error = <axum::body::Body as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
