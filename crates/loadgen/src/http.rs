//! The HTTP side. The measured queries go out as HTTP/1.1 requests encoded once per pooled
//! query, written on a pool of keep-alive connections by the dispatcher itself, their
//! answers parsed with `httparse` by one task per connection (see `Wire`); hyper's client
//! serves the few control requests (metadata, shared memory registration).
//!
//! A query waits while every connection is busy; since its latency counts from its
//! scheduled time, that wait is measured, not hidden.

use std::collections::VecDeque;
use std::io::{IoSlice, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use dlrs_model::DlrmConfig;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, Uri, header};
use hyper_util::rt::TokioIo;

use crate::driver::{Job, Measure, Results, spawn_dispatcher, start_instant};
use crate::error::{BoxError, LoadgenError};
use crate::payload::{Body, Protocol, answer_ok};
use crate::stats::{Report, Status};

/// Where the queries go.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// the address connected to (resolved once from the URL's host)
    pub addr: SocketAddr,
    /// the URL's authority, sent as `Host`
    pub host: String,
    /// the URL's path without a trailing `/` (usually empty)
    pub base: String,
    pub model: String,
    pub protocol: Protocol,
}

impl Endpoint {
    /// Parses `http://HOST[:PORT][/PREFIX]` and resolves HOST (connections go only to the
    /// address the user gave).
    pub async fn resolve(url: &str, model: &str, protocol: Protocol) -> Result<Self, LoadgenError> {
        let uri = Uri::from_str(url).map_err(|source| LoadgenError::Url {
            url: url.to_string(),
            source,
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(s) => {
                return Err(LoadgenError::flag(
                    "--url",
                    format!("`{url}`: scheme {s} is not supported (only http)"),
                ));
            }
            None => {
                return Err(LoadgenError::flag(
                    "--url",
                    format!("`{url}`: expected http://HOST:PORT"),
                ));
            }
        }
        let auth = uri
            .authority()
            .ok_or_else(|| LoadgenError::flag("--url", format!("`{url}` has no host")))?;
        let port = auth.port_u16().unwrap_or(80);
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        let addr = tokio::net::lookup_host((host, port))
            .await
            .map_err(|source| LoadgenError::Resolve {
                host: host.to_string(),
                source,
            })?
            .next()
            .ok_or_else(|| LoadgenError::NoAddress {
                host: host.to_string(),
            })?;
        if model.is_empty() || model.contains('/') {
            return Err(LoadgenError::flag(
                "--model",
                format!("`{model}`: expected a model name"),
            ));
        }
        Ok(Endpoint {
            addr,
            host: auth.as_str().to_string(),
            base: uri.path().trim_end_matches('/').to_string(),
            model: model.to_string(),
            protocol,
        })
    }

    fn infer_path(&self) -> String {
        match self.protocol {
            Protocol::V2 => format!("{}/v2/models/{}/infer", self.base, self.model),
            Protocol::V1 => format!("{}/v1/models/{}/predict", self.base, self.model),
        }
    }

    /// Opens a TCP connection (no Nagle delay; nonblocking, as tokio left it).
    pub async fn connect_stream(&self) -> Result<std::net::TcpStream, LoadgenError> {
        let addr = self.addr;
        let stream =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|source| LoadgenError::ConnectTimeout { addr, source })?
                .map_err(|source| LoadgenError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        stream
            .into_std()
            .map_err(|source| LoadgenError::Connect { addr, source })
    }

    /// Opens one keep-alive HTTP/1.1 connection driven by hyper (requests besides the
    /// measured queries).
    pub async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, LoadgenError> {
        let addr = self.addr;
        let stream = tokio::net::TcpStream::from_std(self.connect_stream().await?)
            .map_err(|source| LoadgenError::Connect { addr, source })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| LoadgenError::Handshake { addr, source })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// `GET` of `path` under the base; the status and body.
    pub async fn get(&self, path: &str) -> Result<(u16, Bytes), LoadgenError> {
        self.call(Method::GET, path, Bytes::new()).await
    }

    /// `POST` of the JSON `body` to `path` under the base; the status and body.
    pub async fn post(&self, path: &str, body: String) -> Result<(u16, Bytes), LoadgenError> {
        self.call(Method::POST, path, Bytes::from(body)).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(u16, Bytes), LoadgenError> {
        let failed = |source: BoxError| LoadgenError::Request {
            method: method.to_string(),
            path: path.to_string(),
            source,
        };
        let mut s = self.connect().await?;
        let mut req = Request::builder()
            .method(&method)
            .uri(format!("{}{path}", self.base))
            .header(header::HOST, &self.host);
        if !body.is_empty() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(body)).map_err(|e| failed(Box::new(e)))?;
        let resp = tokio::time::timeout(Duration::from_secs(10), s.send_request(req))
            .await
            .map_err(|source| LoadgenError::RequestTimeout {
                method: method.to_string(),
                path: path.to_string(),
                source,
            })?
            .map_err(|e| failed(Box::new(e)))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|source| LoadgenError::ReadAnswer {
                method: method.to_string(),
                path: path.to_string(),
                source,
            })?
            .to_bytes();
        Ok((status, body))
    }

    /// The model's config, as far as queries need it: dense and table counts from the KServe
    /// v2 metadata (`GET /v2/models/{name}`: `dense` `[-1, n_dense]`, `lengths`
    /// `[-1, n_tables]`), the tables' row counts from its `parameters.table_rows`
    /// (`"R0-R1-..."`, as `dlrs serve` publishes it). With `model_dir`, the config is
    /// `model_dir/config.json`, checked against the metadata. Without it the MLP widths are
    /// stand-ins (queries carry only dense features and ids).
    pub async fn model_config(&self, model_dir: Option<&Path>) -> Result<DlrmConfig, LoadgenError> {
        let path = format!("/v2/models/{}", self.model);
        let (status, body) = self.get(&path).await?;
        let text = String::from_utf8_lossy(&body);
        if status != 200 {
            return Err(LoadgenError::metadata(
                &path,
                format!("HTTP {status}: {}", text.trim()),
            ));
        }
        let meta: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| LoadgenError::Metadata {
                path: path.clone(),
                msg: format!("not JSON: {}", text.trim()),
                source: Some(Box::new(e)),
            })?;
        let (nd, nt) = (
            input_width(&meta, &path, "dense")?,
            input_width(&meta, &path, "lengths")?,
        );
        let params = &meta["parameters"];
        let rows = table_rows(&params["table_rows"], &path, nt)?;

        let Some(dir) = model_dir else {
            let Some(rows) = rows else {
                return Err(LoadgenError::metadata(
                    &path,
                    format!(
                        "the metadata gives {nd} dense features and {nt} tables but not the tables' row counts \
                         (no parameters.table_rows: not dlrs serve, or an older one); pass --model-dir DIR \
                         (the served model directory, or a copy of its config.json)"
                    ),
                ));
            };
            let d = params["embedding_dim"].as_u64().unwrap_or(1).max(1);
            let stand_in = serde_json::json!({
                "arch_mlp_bot": format!("{nd}-{d}"),
                "arch_mlp_top": "1",
                "arch_embedding_size": rows.iter().map(usize::to_string).collect::<Vec<_>>().join("-"),
                "arch_sparse_feature_size": d,
                "arch_interaction_op": "cat",
            });
            return DlrmConfig::from_json_str(&stand_in.to_string()).map_err(|e| {
                LoadgenError::Metadata {
                    path: path.clone(),
                    msg: format!("the metadata does not describe a model: {meta}"),
                    source: Some(Box::new(e)),
                }
            });
        };
        let file = dir.join("config.json");
        let cfg = DlrmConfig::load(&file)?;
        if cfg.n_dense() != nd || cfg.n_tables() != nt {
            return Err(LoadgenError::ModelDirMismatch {
                msg: format!(
                    "has {} dense features and {} tables; the served model \"{}\" has {nd} and {nt}",
                    cfg.n_dense(),
                    cfg.n_tables(),
                    self.model
                ),
                file,
            });
        }
        if let Some(rows) = rows
            && cfg.tables != rows
        {
            return Err(LoadgenError::ModelDirMismatch {
                msg: format!(
                    "has tables of {:?} rows; the served model \"{}\" has {rows:?}",
                    cfg.tables, self.model
                ),
                file,
            });
        }
        Ok(cfg)
    }
}

/// The `N` of input `name`'s shape `[-1, N]` in the metadata `meta` (of `GET path`).
fn input_width(meta: &serde_json::Value, path: &str, name: &str) -> Result<usize, LoadgenError> {
    let inputs = meta["inputs"]
        .as_array()
        .ok_or_else(|| LoadgenError::metadata(path, format!("no \"inputs\" in {meta}")))?;
    let inp = inputs.iter().find(|i| i["name"] == name).ok_or_else(|| {
        LoadgenError::metadata(path, format!("no input \"{name}\" (is this a dlrs model?)"))
    })?;
    inp["shape"]
        .as_array()
        .and_then(|s| s.get(1))
        .and_then(|d| d.as_u64())
        .map(|d| d as usize)
        .ok_or_else(|| {
            LoadgenError::metadata(
                path,
                format!("input \"{name}\" has no shape [-1, N]: {inp}"),
            )
        })
}

/// The tables' row counts of the metadata's `parameters.table_rows` (`"R0-R1-..."`; `None`
/// when absent), which must be `nt`.
fn table_rows(
    v: &serde_json::Value,
    path: &str,
    nt: usize,
) -> Result<Option<Vec<usize>>, LoadgenError> {
    if v.is_null() {
        return Ok(None);
    }
    let rows = v
        .as_str()
        .and_then(|s| {
            s.split('-')
                .map(|r| r.trim().parse::<usize>().ok())
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| {
            LoadgenError::metadata(
                path,
                format!(
                    "parameters.table_rows {v} is not a string of row counts like \"1000-20-5\""
                ),
            )
        })?;
    if rows.len() != nt {
        return Err(LoadgenError::metadata(
            path,
            format!(
                "parameters.table_rows gives {} tables, input \"lengths\" has {nt}",
                rows.len()
            ),
        ));
    }
    Ok(Some(rows))
}

/// Where a measurement's queries go and how they are sent: the HTTP/1.1 requests are
/// encoded once (head and body; only the body's bytes are shared with `bodies`), so sending
/// a query is one `writev`.
///
/// Threads: the dispatcher writes a released query itself on an idle connection (no
/// handover to another thread: a wakeup and two context switches less per query than
/// giving it to the connection's task); each connection's tokio task reads the answers and
/// sends the query that waited longest when its connection frees up. A request the socket
/// does not take at once (a large body) is finished by the connection's task.
struct Wire {
    ep: Arc<Endpoint>,
    requests: Vec<Encoded>,
    conns: Vec<Conn>,
    /// connections without a query in flight, and queries waiting for one
    sched: Mutex<Sched>,
    results: Arc<Results>,
}

/// One query's request, ready to write.
struct Encoded {
    head: Vec<u8>,
    body: Bytes,
    size: usize,
}

impl Encoded {
    fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    /// The request's bytes from offset `at` on, as at most two slices.
    fn rest(&self, at: usize) -> [&[u8]; 2] {
        let h = self.head.len();
        if at < h {
            [&self.head[at..], &self.body[..]]
        } else {
            [&[], &self.body[at - h..]]
        }
    }
}

#[derive(Default)]
struct Sched {
    /// in the order they went idle: the one idle longest is used first, so that no
    /// connection sits idle long enough for the server's idle timeout to close it (a query
    /// sent as it closes would fail)
    idle: VecDeque<usize>,
    waiting: VecDeque<Job>,
}

/// One keep-alive connection: the write side (a `dup` of the socket its task reads from;
/// `None` while there is no socket) and the query in flight.
struct Conn {
    writer: Mutex<Option<std::net::TcpStream>>,
    flight: Mutex<Option<Flight>>,
    /// the task has bytes of the request in flight to write
    write_more: tokio::sync::Notify,
}

#[derive(Clone, Copy)]
struct Flight {
    job: Job,
    /// bytes of its request written so far
    written: usize,
}

/// Requests at most this long are written by the dispatcher; longer ones by the connection's
/// task (a blocked write must not hold up the next arrivals).
const INLINE_WRITE: usize = 64 << 10;

impl Wire {
    fn new(ep: &Arc<Endpoint>, bodies: &[Body], connections: usize, results: Arc<Results>) -> Self {
        let path = ep.infer_path();
        let requests = bodies
            .iter()
            .map(|b| {
                let mut head = format!(
                    "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
                    ep.host,
                    b.bytes.len()
                );
                if let Some(h) = b.header_len {
                    head.push_str(&format!("inference-header-content-length: {h}\r\n"));
                }
                head.push_str("\r\n");
                Encoded {
                    head: head.into_bytes(),
                    body: b.bytes.clone(),
                    size: b.size,
                }
            })
            .collect();
        let conns = (0..connections)
            .map(|_| Conn {
                writer: Mutex::new(None),
                flight: Mutex::new(None),
                write_more: tokio::sync::Notify::new(),
            })
            .collect();
        Wire {
            ep: Arc::clone(ep),
            requests,
            conns,
            sched: Mutex::new(Sched::default()),
            results,
        }
    }

    fn request(&self, job: &Job) -> &Encoded {
        &self.requests[job.index % self.requests.len()]
    }

    /// A released query: sent now on an idle connection, or queued until one frees up.
    fn release(&self, job: Job) {
        let idle = {
            let mut s = lock(&self.sched);
            let c = s.idle.pop_front();
            if c.is_none() {
                s.waiting.push_back(job);
            }
            c
        };
        if let Some(c) = idle {
            self.start(c, job);
        }
    }

    /// Puts `job` in flight on connection `c` (idle, with a socket) and writes as much of its
    /// request as the socket takes at once if it is short; the connection's task writes the
    /// rest. The write happens under the flight's lock, so an early answer is not taken
    /// before `written` says how much of the request went out.
    fn start(&self, c: usize, job: Job) {
        let conn = &self.conns[c];
        let req = self.request(&job);
        let mut flight = lock(&conn.flight);
        let mut written = 0;
        if req.len() <= INLINE_WRITE
            && let Some(w) = lock(&conn.writer).as_ref()
        {
            written = write_some(w, req);
        }
        *flight = Some(Flight { job, written });
        drop(flight);
        if written < req.len() {
            conn.write_more.notify_one();
        }
    }

    /// The query in flight on `c` ended with `status`; the connection takes the next waiting
    /// query or goes idle (`open`: it has a socket to send on).
    fn finish(&self, c: usize, status: Option<Status>, open: bool) {
        if let Some(f) = lock(&self.conns[c].flight).take() {
            self.results
                .record(f.job, status.unwrap_or(Status::Transport));
        }
        if !open {
            return;
        }
        let next = {
            let mut s = lock(&self.sched);
            let j = s.waiting.pop_front();
            if j.is_none() {
                debug_assert!(!s.idle.contains(&c), "connection {c} is idle already");
                s.idle.push_back(c);
            }
            j
        };
        if let Some(job) = next {
            self.start(c, job);
        }
    }

    /// Connection `c`'s task: opens its socket, reads the answers, finishes requests the
    /// dispatcher could not write whole, and reconnects when the server closes.
    async fn run(self: Arc<Self>, c: usize, first: tokio::net::TcpStream) {
        let mut stream = Some(first);
        let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
        loop {
            let conn = &self.conns[c];
            let Some(s) = stream.as_ref() else {
                // no socket (the server closed it, or it failed): reconnect. A query the
                // dispatcher put on this connection meanwhile goes out whole on the new one.
                match self.ep.connect_stream().await {
                    Ok(s) => {
                        stream = Some(self.adopt(c, s));
                        // whatever the old socket left half read is not the new one's
                        buf.clear();
                        let resend = lock(&conn.flight).as_mut().map(|f| f.written = 0).is_some();
                        if resend {
                            conn.write_more.notify_one();
                        } else {
                            self.finish(c, None, true);
                        }
                    }
                    Err(_) if lock(&conn.flight).is_some() => self.finish(c, None, false),
                    Err(_) => {
                        // give the waiting queries a transport error, as a failed connect
                        // would, instead of letting them wait for the drain to end
                        let job = lock(&self.sched).waiting.pop_front();
                        match job {
                            Some(job) => self.results.record(job, Status::Transport),
                            None => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                }
                continue;
            };
            tokio::select! {
                // the rest of a request first: an answer read before it went out must still
                // wait for it (below), as the connection carries nothing else until it has
                biased;
                () = conn.write_more.notified() => {
                    let Some(f) = *lock(&conn.flight) else { continue };
                    let req = self.request(&f.job);
                    // on failure the flight stays as it is: the server may have answered
                    // before closing (read below), else the read sees the end
                    if write_rest(s, req, f.written).await.is_ok()
                        && let Some(g) = lock(&conn.flight).as_mut()
                        && g.job.index == f.job.index
                    {
                        g.written = req.len();
                    }
                }
                r = s.readable() => {
                    let read = match r {
                        Ok(()) => read_some(s, &mut buf),
                        Err(e) => Err(e),
                    };
                    match read {
                        Ok(0) => {
                            // closed by the server: what is in flight has no answer
                            self.drop_socket(c, &mut stream);
                            continue;
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(_) => {
                            self.drop_socket(c, &mut stream);
                            continue;
                        }
                    }
                    let (code, body, len, close) = match parse_answer(&buf) {
                        Answer::Partial => continue,
                        Answer::Bad => {
                            // not an answer this client can delimit: it counts as one that
                            // could not be parsed, and the connection is given up
                            self.finish(c, Some(Status::BadResponse), false);
                            self.drop_socket(c, &mut stream);
                            continue;
                        }
                        Answer::Done { code, body, len, close } => (code, body, len, close),
                    };
                    let flight = *lock(&conn.flight);
                    let Some(f) = flight else {
                        // an answer to nothing (e.g. the server's idle timeout): not a
                        // connection to trust
                        self.drop_socket(c, &mut stream);
                        continue;
                    };
                    let req = self.request(&f.job);
                    let status = answer_status(self.ep.protocol, code, &buf[body..len], req.size);
                    buf.drain(..len);
                    // answered before all of the request went out (an early error): the rest
                    // goes out before the connection carries another request
                    let unsent = f.written < req.len();
                    if close || (unsent && write_rest(s, req, f.written).await.is_err()) {
                        self.finish(c, Some(status), false);
                        self.drop_socket(c, &mut stream);
                    } else {
                        self.finish(c, Some(status), true);
                    }
                }
            }
        }
    }

    /// Takes a new socket for connection `c`: the task reads from the returned stream, the
    /// dispatcher writes through a `dup` of it.
    fn adopt(&self, c: usize, s: std::net::TcpStream) -> tokio::net::TcpStream {
        let w = s.try_clone().ok();
        *lock(&self.conns[c].writer) = w;
        tokio::net::TcpStream::from_std(s).expect("a nonblocking socket in a runtime")
    }

    /// The socket of `c` failed or closed: the query in flight counts as a transport error,
    /// and the connection is no longer idle (it is again once reconnected).
    fn drop_socket(&self, c: usize, stream: &mut Option<tokio::net::TcpStream>) {
        *lock(&self.conns[c].writer) = None;
        *stream = None;
        self.finish(c, None, false);
        lock(&self.sched).idle.retain(|&i| i != c);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes what the nonblocking socket `w` takes of `req` now; the bytes written.
fn write_some(mut w: &std::net::TcpStream, req: &Encoded) -> usize {
    let mut at = 0;
    while at < req.len() {
        let [a, b] = req.rest(at);
        match w.write_vectored(&[IoSlice::new(a), IoSlice::new(b)]) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    at
}

/// Writes `req` from byte `at` to its end.
async fn write_rest(
    s: &tokio::net::TcpStream,
    req: &Encoded,
    mut at: usize,
) -> std::io::Result<()> {
    while at < req.len() {
        s.writable().await?;
        let [a, b] = req.rest(at);
        match s.try_write_vectored(&[IoSlice::new(a), IoSlice::new(b)]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads what the socket has into `buf` (growing it); the bytes read, 0 at the end.
fn read_some(s: &tokio::net::TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    buf.reserve(16 << 10);
    s.try_read_buf(buf)
}

/// What the bytes read so far hold.
#[derive(Debug, PartialEq)]
enum Answer {
    /// not a whole answer yet
    Partial,
    /// not HTTP/1.1 this client understands (no `content-length`, or chunked)
    Bad,
    /// an answer: its status, where its body starts and ends, and whether the server
    /// closes the connection after it
    Done {
        code: u16,
        body: usize,
        len: usize,
        close: bool,
    },
}

fn parse_answer(buf: &[u8]) -> Answer {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let head = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Answer::Partial,
        Err(_) => return Answer::Bad,
    };
    let Some(code) = r.code else {
        return Answer::Bad;
    };
    let mut length = None;
    let mut close = r.version == Some(0);
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_none() {
                return Answer::Bad;
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Answer::Bad;
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            close = v.split(',').any(|t| t.trim() == "close");
        }
    }
    // a body-less status (1xx, 204, 304) has none; every other answer here must say its length
    let length = match (code, length) {
        (100..=199 | 204 | 304, _) => 0,
        (_, Some(n)) => n,
        (_, None) => return Answer::Bad,
    };
    if buf.len() < head + length {
        return Answer::Partial;
    }
    Answer::Done {
        code,
        body: head,
        len: head + length,
        close,
    }
}

/// The outcome of an answer with status `code` and `body` to a query of `size` samples.
fn answer_status(protocol: Protocol, code: u16, body: &[u8], size: usize) -> Status {
    if code != 200 {
        Status::Http(code)
    } else if answer_ok(protocol, body, size) {
        Status::Ok
    } else {
        Status::BadResponse
    }
}

/// One measurement: Poisson arrivals at `m.qps` for `m.duration_s` against `ep` over
/// `connections` keep-alive connections, query `i` being `bodies[i % len]`.
pub fn measure(
    rt: &tokio::runtime::Runtime,
    ep: &Arc<Endpoint>,
    connections: usize,
    bodies: &Arc<Vec<Body>>,
    m: &Measure,
) -> Result<Report, LoadgenError> {
    if connections < 1 {
        return Err(LoadgenError::flag("--connections", "must be at least 1"));
    }
    if bodies.is_empty() {
        return Err(LoadgenError::NoQueries("send"));
    }
    let offsets = Arc::new(m.schedule()?);
    let sizes: Vec<usize> = (0..offsets.len())
        .map(|i| bodies[i % bodies.len()].size)
        .collect();

    // every connection is open before the clock starts
    let sockets = rt.block_on(async {
        let mut v = Vec::with_capacity(connections);
        for _ in 0..connections {
            v.push(ep.connect_stream().await?);
        }
        Ok::<_, LoadgenError>(v)
    })?;
    let start = start_instant();
    let results = Arc::new(Results::new(start, offsets.len()));
    let wire = Arc::new(Wire::new(ep, bodies, connections, Arc::clone(&results)));
    let tasks: Vec<_> = {
        let _in_rt = rt.enter();
        sockets
            .into_iter()
            .enumerate()
            .map(|(c, s)| {
                let s = wire.adopt(c, s);
                lock(&wire.sched).idle.push_back(c);
                rt.spawn(Arc::clone(&wire).run(c, s))
            })
            .collect()
    };

    let stop = Arc::new(AtomicBool::new(false));
    let dispatcher = {
        let wire = Arc::clone(&wire);
        spawn_dispatcher(
            start,
            Arc::clone(&offsets),
            Arc::clone(&stop),
            m.slice,
            move |job| {
                wire.release(job);
                true
            },
        )
    };
    let deadline = start + Duration::from_secs_f64(m.duration_s + m.drain_s);
    results.wait_all(deadline);
    let ended = results.close();
    stop.store(true, Ordering::Relaxed);
    let _ = dispatcher.join();
    for t in &tasks {
        t.abort();
    }
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
    Ok(results.report(m, &offsets, &sizes, ended))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_whole_or_not_at_all() {
        let ok =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5\r\n\r\nhello";
        let head = ok.len() - 5;
        assert_eq!(
            parse_answer(ok),
            Answer::Done {
                code: 200,
                body: head,
                len: ok.len(),
                close: false
            }
        );
        for cut in 0..ok.len() {
            assert_eq!(parse_answer(&ok[..cut]), Answer::Partial, "cut at {cut}");
        }
        // a second answer behind the first is left for later
        let two = [&ok[..], &ok[..]].concat();
        assert_eq!(
            parse_answer(&two),
            Answer::Done {
                code: 200,
                body: head,
                len: ok.len(),
                close: false
            }
        );
        let close = b"HTTP/1.1 413 Payload Too Large\r\nConnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            parse_answer(close),
            Answer::Done {
                code: 413,
                body: close.len(),
                len: close.len(),
                close: true
            }
        );
        let http10 = b"HTTP/1.0 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
        assert!(matches!(
            parse_answer(http10),
            Answer::Done {
                code: 503,
                close: true,
                ..
            }
        ));
        for bad in [
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert_eq!(
                parse_answer(bad),
                Answer::Bad,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            parse_answer(b"HTTP/1.1 204 No Content\r\n\r\n"),
            Answer::Done { code: 204, .. }
        ));
    }

    #[test]
    fn a_request_is_written_from_any_offset() {
        let req = Encoded {
            head: b"HEAD".to_vec(),
            body: Bytes::from_static(b"body"),
            size: 1,
        };
        for at in 0..=req.len() {
            let [a, b] = req.rest(at);
            assert_eq!([a, b].concat(), b"HEADbody"[at..].to_vec(), "from {at}");
        }
    }
}
