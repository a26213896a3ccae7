//! `--shared-memory system`: Triton's system shared memory extension (perf_analyzer's
//! `--shared-memory system`). The pool's input tensors are written once into one POSIX
//! shared memory object made for the run (`/dev/shm/dlrs-loadgen-PID-N`, created with
//! `O_CREAT | O_EXCL`), registered with the server as one region; each request is then a
//! small JSON body naming its tensors' offsets in that region.
//!
//! The object is unlinked as soon as the server has mapped it (the server's mapping keeps
//! the memory alive), so nothing is left in /dev/shm whatever happens to the load generator
//! after that; the region is unregistered when the run ends, fails, or is interrupted
//! (SIGINT / SIGTERM), by a guard ([`ShmPool`]'s `Drop`) and a signal task.

use std::io::{BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlrs_model::DlrmConfig;

use crate::error::LoadgenError;
use crate::http::Endpoint;
use crate::payload::{Body, Workload};

/// Where the input tensors go: `--shared-memory`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SharedMemory {
    /// in the request bodies (JSON or binary tensor data)
    #[default]
    None,
    /// in one system shared memory region registered with the server
    System,
}

impl SharedMemory {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(SharedMemory::None),
            "system" => Ok(SharedMemory::System),
            _ => Err(format!("`{s}`: expected none or system")),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            SharedMemory::None => "none",
            SharedMemory::System => "system",
        }
    }
}

/// What is left to undo: the object's name (until unlinked) and the registration (until
/// unregistered).
#[derive(Default)]
struct Cleanup {
    path: Option<PathBuf>,
    unregister: Option<Unregister>,
}

impl Cleanup {
    fn run(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
        if let Some(u) = self.unregister.take()
            && let Err(e) = u.run()
        {
            tracing::warn!(
                "could not unregister shared memory region \"{}\": {e}",
                u.region
            );
        }
    }
}

/// `POST .../region/{region}/unregister`, sent with a blocking socket so that it works from
/// a destructor or a signal handler task, whatever state the runtime is in.
struct Unregister {
    addr: SocketAddr,
    host: String,
    path: String,
    region: String,
}

impl Unregister {
    /// Sends the request; an error is the socket's, or the status of an answer other than
    /// 200 (`HTTP 404`).
    fn run(&self) -> std::io::Result<()> {
        let t = Duration::from_secs(5);
        let mut s = TcpStream::connect_timeout(&self.addr, t)?;
        s.set_read_timeout(Some(t))?;
        s.set_write_timeout(Some(t))?;
        write!(
            s,
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.path, self.host
        )?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        let status = String::from_utf8_lossy(&head[9..12]).into_owned();
        if !(head.starts_with(b"HTTP/1.") && status == "200") {
            return Err(std::io::Error::other(format!("HTTP {status}")));
        }
        Ok(())
    }
}

/// The pool's tensors in a registered region; unregisters it (and removes the object if
/// registration never happened) on drop.
pub struct ShmPool {
    /// the object's key, `/dlrs-loadgen-PID-N`
    pub key: String,
    /// the region's name on the server (the key without its slash)
    pub region: String,
    /// bytes of the object (= of the region)
    pub byte_size: u64,
    cleanup: Arc<Mutex<Cleanup>>,
    signals: Option<tokio::task::JoinHandle<()>>,
}

impl ShmPool {
    /// Generates the pool of `workload` into a new shared memory object, registers it with
    /// the server `ep` and returns it with the pool's request bodies.
    pub fn create(
        rt: &tokio::runtime::Runtime,
        ep: &Endpoint,
        workload: &Workload,
        cfg: &DlrmConfig,
    ) -> Result<(ShmPool, Vec<Body>), LoadgenError> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let region = format!(
            "dlrs-loadgen-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let key = format!("/{region}");
        let path = PathBuf::from("/dev/shm").join(&region);
        let cleanup = Arc::new(Mutex::new(Cleanup::default()));
        // from here on, an interrupted run leaves nothing behind
        let signals = rt.spawn(on_signal(Arc::clone(&cleanup)));
        let mut pool = ShmPool {
            key,
            region,
            byte_size: 0,
            cleanup,
            signals: Some(signals),
        };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| LoadgenError::ShmCreate {
                path: path.clone(),
                source,
            })?;
        pool.lock().path = Some(path.clone());

        // each tensor at an 8-byte aligned offset, written through the file (a full tmpfs is
        // an error here, not a fault on a mapped page)
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let mut at = 0u64;
        let writing = |source| LoadgenError::ShmWrite {
            path: path.clone(),
            source,
        };
        let bodies = workload.shm_bodies(cfg, &pool.region, &mut |bytes| {
            let offset = at;
            let pad = bytes.len().next_multiple_of(8) - bytes.len();
            w.write_all(bytes).map_err(writing)?;
            w.write_all(&[0; 8][..pad]).map_err(writing)?;
            at += (bytes.len() + pad) as u64;
            Ok(offset)
        })?;
        w.flush().map_err(writing)?;
        drop(w);
        if at == 0 {
            return Err(LoadgenError::NoQueries("write to shared memory"));
        }
        pool.byte_size = at;

        let reg = format!("/v2/systemsharedmemory/region/{}/register", pool.region);
        let body = serde_json::json!({"key": pool.key, "offset": 0, "byte_size": at}).to_string();
        let (status, answer) = rt.block_on(ep.post(&reg, body))?;
        if status != 200 {
            return Err(LoadgenError::Register {
                region: pool.region.clone(),
                path: reg,
                status,
                answer: String::from_utf8_lossy(&answer).trim().to_string(),
            });
        }
        let mut c = pool.lock();
        c.unregister = Some(Unregister {
            addr: ep.addr,
            host: ep.host.clone(),
            path: format!(
                "{}/v2/systemsharedmemory/region/{}/unregister",
                ep.base, pool.region
            ),
            region: pool.region.clone(),
        });
        // the server has mapped the object: its name is no longer needed
        if let Some(p) = c.path.take() {
            std::fs::remove_file(&p).map_err(|source| LoadgenError::ShmRemove {
                path: p.clone(),
                source,
            })?;
        }
        drop(c);
        Ok((pool, bodies))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cleanup> {
        self.cleanup.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for ShmPool {
    fn drop(&mut self) {
        if let Some(h) = self.signals.take() {
            h.abort();
        }
        self.lock().run();
    }
}

/// On SIGINT or SIGTERM: undoes `cleanup` and exits (130).
async fn on_signal(cleanup: Arc<Mutex<Cleanup>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    tracing::warn!("interrupted; removing the shared memory region");
    let _ = tokio::task::spawn_blocking(move || {
        cleanup.lock().unwrap_or_else(|p| p.into_inner()).run();
    })
    .await;
    std::process::exit(130);
}
