//! Helpers of the load generator's tests: a tiny model in a tempdir and a `dlrs serve` on
//! 127.0.0.1:0 (as crates/serve's own tests do), and a stand-in server.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dlrs_model::{DlrmConfig, Model};

pub const NAME: &str = "tiny";

pub fn config() -> DlrmConfig {
    DlrmConfig::from_json_str(
        r#"{"arch_mlp_bot": "4-8-4", "arch_mlp_top": "6-1", "arch_embedding_size": "10-20-5",
            "arch_sparse_feature_size": 4, "arch_interaction_op": "dot"}"#,
    )
    .unwrap()
}

/// A tempdir holding `<tmp>/tiny`, a random model.
pub struct ModelDir {
    pub tmp: tempfile::TempDir,
}

impl ModelDir {
    pub fn new(seed: u64) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        Model::random(config(), seed)
            .unwrap()
            .save(&tmp.path().join(NAME))
            .unwrap();
        ModelDir { tmp }
    }
    pub fn dir(&self) -> PathBuf {
        self.tmp.path().join(NAME)
    }
}

/// `dlrs serve` on its own thread and runtime, stopped on drop.
pub struct Server {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), dlrs_serve::ServeError>>>,
}

/// `dlrs serve`'s options for the model in `m`, its directory not watched (a test reloads by
/// request if at all).
pub fn serve_args(m: &ModelDir) -> dlrs_serve::ServeConfig {
    let mut sa = dlrs_serve::ServeConfig::new(m.dir());
    sa.watch_interval_ms = 0;
    sa
}

impl Server {
    pub fn start(args: dlrs_serve::ServeConfig) -> Server {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                dlrs_serve::serve(args, listener, async move {
                    let _ = rx.await;
                })
                .await
            })
        });
        let addr = addr_rx.recv().unwrap();
        // wait until it answers
        let t0 = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "server did not come up"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Server {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves `app` on 127.0.0.1:0 from a runtime of `workers` threads (a stand-in server for
/// what `dlrs serve` is not); the runtime must outlive the requests.
pub fn serve_app(app: axum::Router, workers: usize) -> (tokio::runtime::Runtime, SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move { axum::serve(listener, app).await });
    (rt, addr)
}
