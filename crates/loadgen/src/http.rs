//! The HTTP side: a lean HTTP/1.1 client on hyper's connection API, one task per pooled
//! keep-alive connection, each taking the next released query from a shared queue.
//!
//! A query waits in that queue while every connection is busy; since its latency counts
//! from its scheduled time, that wait is measured, not hidden.

use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use dlrs_model::DlrmConfig;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, Uri, header};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use crate::driver::{Job, Measure, Results, spawn_dispatcher, start_instant};
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
    pub async fn resolve(url: &str, model: &str, protocol: Protocol) -> anyhow::Result<Self> {
        let uri = Uri::from_str(url).with_context(|| format!("--url `{url}` is not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(s) => bail!("--url `{url}`: scheme {s} is not supported (only http)"),
            None => bail!("--url `{url}`: expected http://HOST:PORT"),
        }
        let auth = uri
            .authority()
            .with_context(|| format!("--url `{url}` has no host"))?;
        let port = auth.port_u16().unwrap_or(80);
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        let addr = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        ensure!(
            !model.is_empty() && !model.contains('/'),
            "--model `{model}`: expected a model name"
        );
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

    /// Opens one keep-alive HTTP/1.1 connection.
    pub async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(self.addr),
        )
        .await
        .with_context(|| format!("connecting to {} timed out", self.addr))?
        .with_context(|| format!("connecting to {}", self.addr))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP handshake with {}", self.addr))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// `GET` of `path` under the base; the status and body.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Bytes)> {
        self.call(Method::GET, path, Bytes::new()).await
    }

    /// `POST` of the JSON `body` to `path` under the base; the status and body.
    pub async fn post(&self, path: &str, body: String) -> anyhow::Result<(u16, Bytes)> {
        self.call(Method::POST, path, Bytes::from(body)).await
    }

    async fn call(&self, method: Method, path: &str, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
        let mut s = self.connect().await?;
        let mut req = Request::builder()
            .method(&method)
            .uri(format!("{}{path}", self.base))
            .header(header::HOST, &self.host);
        if !body.is_empty() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(body))?;
        let resp = tokio::time::timeout(Duration::from_secs(10), s.send_request(req))
            .await
            .with_context(|| format!("{method} {path} timed out"))?
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading {method} {path}"))?
            .to_bytes();
        Ok((status, body))
    }

    /// The model's config, as far as queries need it: dense and table counts from the KServe
    /// v2 metadata (`GET /v2/models/{name}`: `dense` `[-1, n_dense]`, `lengths`
    /// `[-1, n_tables]`), the tables' row counts from its `parameters.table_rows`
    /// (`"R0-R1-..."`, as `dlrs serve` publishes it). With `model_dir`, the config is
    /// `model_dir/config.json`, checked against the metadata. Without it the MLP widths are
    /// stand-ins (queries carry only dense features and ids).
    pub async fn model_config(&self, model_dir: Option<&Path>) -> anyhow::Result<DlrmConfig> {
        let path = format!("/v2/models/{}", self.model);
        let (status, body) = self.get(&path).await?;
        let text = String::from_utf8_lossy(&body);
        ensure!(status == 200, "GET {path}: HTTP {status}: {}", text.trim());
        let meta: serde_json::Value = serde_json::from_slice(&body)
            .with_context(|| format!("GET {path}: not JSON: {}", text.trim()))?;
        let dim = |name: &str| -> anyhow::Result<usize> {
            let inputs = meta["inputs"]
                .as_array()
                .with_context(|| format!("GET {path}: no \"inputs\" in {meta}"))?;
            let inp = inputs.iter().find(|i| i["name"] == name).with_context(|| {
                format!("GET {path}: no input \"{name}\" (is this a dlrs model?)")
            })?;
            inp["shape"]
                .as_array()
                .and_then(|s| s.get(1))
                .and_then(|d| d.as_u64())
                .map(|d| d as usize)
                .with_context(|| {
                    format!("GET {path}: input \"{name}\" has no shape [-1, N]: {inp}")
                })
        };
        let (nd, nt) = (dim("dense")?, dim("lengths")?);
        let params = &meta["parameters"];
        let rows = match &params["table_rows"] {
            serde_json::Value::Null => None,
            v => {
                let rows = v
                    .as_str()
                    .and_then(|s| s.split('-').map(|r| r.trim().parse::<usize>().ok()).collect::<Option<Vec<_>>>())
                    .with_context(|| {
                        format!("GET {path}: parameters.table_rows {v} is not a string of row counts like \"1000-20-5\"")
                    })?;
                ensure!(
                    rows.len() == nt,
                    "GET {path}: parameters.table_rows gives {} tables, input \"lengths\" has {nt}",
                    rows.len()
                );
                Some(rows)
            }
        };

        let Some(dir) = model_dir else {
            let Some(rows) = rows else {
                bail!(
                    "GET {path}: the metadata gives {nd} dense features and {nt} tables but not the tables' row counts \
                     (no parameters.table_rows: not dlrs serve, or an older one); pass --model-dir DIR \
                     (the served model directory, or a copy of its config.json)"
                )
            };
            let d = params["embedding_dim"].as_u64().unwrap_or(1).max(1);
            let stand_in = serde_json::json!({
                "arch_mlp_bot": format!("{nd}-{d}"),
                "arch_mlp_top": "1",
                "arch_embedding_size": rows.iter().map(usize::to_string).collect::<Vec<_>>().join("-"),
                "arch_sparse_feature_size": d,
                "arch_interaction_op": "cat",
            });
            return DlrmConfig::from_json_str(&stand_in.to_string()).with_context(|| {
                format!("GET {path}: the metadata does not describe a model: {meta}")
            });
        };
        let file = dir.join("config.json");
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let cfg =
            DlrmConfig::from_json_str(&text).with_context(|| format!("{}", file.display()))?;
        ensure!(
            cfg.n_dense() == nd && cfg.n_tables() == nt,
            "{} has {} dense features and {} tables; the served model \"{}\" has {nd} and {nt}",
            file.display(),
            cfg.n_dense(),
            cfg.n_tables(),
            self.model
        );
        if let Some(rows) = rows {
            ensure!(
                cfg.tables == rows,
                "{} has tables of {:?} rows; the served model \"{}\" has {rows:?}",
                file.display(),
                cfg.tables,
                self.model
            );
        }
        Ok(cfg)
    }
}

/// One query sent on `conn` (opened or reopened first if needed); its status.
async fn send_one(
    ep: &Endpoint,
    path: &str,
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    body: &Body,
) -> Status {
    // a connection the server closed (or that failed) is replaced before sending
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        *conn = ep.connect().await.ok();
    }
    let Some(c) = conn.as_mut() else {
        return Status::Transport;
    };
    if c.ready().await.is_err() {
        *conn = ep.connect().await.ok();
        let Some(c2) = conn.as_mut() else {
            return Status::Transport;
        };
        if c2.ready().await.is_err() {
            *conn = None;
            return Status::Transport;
        }
    }
    let c = conn.as_mut().expect("connected above");
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, &ep.host)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(h) = body.header_len {
        req = req.header("inference-header-content-length", h);
    }
    let req = req
        .body(Full::new(body.bytes.clone()))
        .expect("a valid request");
    let resp = match c.send_request(req).await {
        Ok(r) => r,
        Err(_) => {
            *conn = None;
            return Status::Transport;
        }
    };
    let code = resp.status().as_u16();
    let bytes = match resp.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            *conn = None;
            return Status::Transport;
        }
    };
    if code != 200 {
        return Status::Http(code);
    }
    if answer_ok(ep.protocol, &bytes, body.size) {
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
) -> anyhow::Result<Report> {
    ensure!(connections >= 1, "--connections must be at least 1");
    ensure!(!bodies.is_empty(), "no queries to send");
    let offsets = Arc::new(crate::dist::poisson_schedule(m.qps, m.duration_s, m.seed)?);
    let sizes: Vec<usize> = (0..offsets.len())
        .map(|i| bodies[i % bodies.len()].size)
        .collect();

    // every connection is open before the clock starts
    let conns = rt.block_on(async {
        let mut v = Vec::with_capacity(connections);
        for _ in 0..connections {
            v.push(ep.connect().await?);
        }
        anyhow::Ok(v)
    })?;

    let start = start_instant();
    let results = Arc::new(Results::new(start, offsets.len()));
    let (tx, rx) = mpsc::unbounded_channel::<Job>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let path: Arc<str> = ep.infer_path().into();
    let workers: Vec<_> = conns
        .into_iter()
        .map(|c| {
            let (ep, rx, results, bodies, path) = (
                Arc::clone(ep),
                Arc::clone(&rx),
                Arc::clone(&results),
                Arc::clone(bodies),
                Arc::clone(&path),
            );
            rt.spawn(async move {
                let mut conn = Some(c);
                loop {
                    let job = { rx.lock().await.recv().await };
                    let Some(job) = job else { return };
                    let body = &bodies[job.index % bodies.len()];
                    let status = send_one(&ep, &path, &mut conn, body).await;
                    results.record(job, status);
                }
            })
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let dispatcher = spawn_dispatcher(start, Arc::clone(&offsets), Arc::clone(&stop), m.slice, move |job| {
        tx.send(job).is_ok()
    });
    let deadline = start + Duration::from_secs_f64(m.duration_s + m.drain_s);
    results.wait_all(deadline);
    let ended = results.close();
    stop.store(true, Ordering::Relaxed);
    let _ = dispatcher.join();
    for w in &workers {
        w.abort();
    }
    rt.block_on(async {
        for w in workers {
            let _ = w.await;
        }
    });
    Ok(results.report(m.qps, m.duration_s, &offsets, &sizes, ended))
}
