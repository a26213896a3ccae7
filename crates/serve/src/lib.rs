//! `dlrs serve`: a DLRM inference server speaking the KServe v2 (Open Inference Protocol)
//! HTTP/JSON protocol, with dynamic batching, a bounded queue, per-request deadlines,
//! Prometheus metrics, hot reload and graceful shutdown.
//!
//! # Endpoints
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /v2/health/live` | 200 `{"live": true}` |
//! | `GET /v2/health/ready` | 200 `{"ready": true}`; 503 `{"ready": false}` once shutting down |
//! | `GET /v2` | server metadata (`name`, `version`, `extensions`) |
//! | `GET /v2/models/{name}[/versions/{v}]` | model metadata: `name`, `versions`, `platform: "dlrs"`, `inputs`, `outputs`, `parameters` (`n_dense`, `embedding_dim`, `table_rows` as `"R0-R1-..."`) |
//! | `GET /v2/models/{name}[/versions/{v}]/ready` | 200 `{"name", "ready": true}`; 503 once shutting down |
//! | `POST /v2/models/{name}[/versions/{v}]/infer` | KServe v2 inference (below) |
//! | `POST /v1/models/{name}/predict` | `{"samples": [{"dense": [..], "sparse": [[..], ..]}, ..]}` → `{"scores": [..]}` |
//! | `POST /v2/repository/models/{name}/load` | reloads the model directory and swaps it in (below) |
//! | `GET /v2/systemsharedmemory/status` | `[{"name", "key", "offset", "byte_size"}, ..]`: the registered system shared memory regions (below) |
//! | `GET /v2/systemsharedmemory/region/{region}/status` | that region's status (a one-element array); 404 naming it when not registered |
//! | `POST /v2/systemsharedmemory/region/{region}/register` | `{"key": "/NAME", "offset": N, "byte_size": N}`: maps and registers a region (needs `--allow-client-shm`) |
//! | `POST /v2/systemsharedmemory/region/{region}/unregister` | unregisters it (a name not registered is no error, as in Triton) |
//! | `POST /v2/systemsharedmemory/unregister` | unregisters every region |
//! | `GET /metrics` | Prometheus text format |
//!
//! `{name}` is `--name` (default: the model directory's file name); another name is 404.
//! `{v}` must be the version being served (1 at start, +1 per successful reload).
//!
//! ## KServe v2 inference
//!
//! Inputs (all three required, any order, no others):
//!
//! - `dense`, `FP32`, shape `[B, n_dense]`;
//! - `lengths`, `INT32`, shape `[B, n_tables]`: `lengths[b][t]` ids in the bag of sample `b`,
//!   table `t`;
//! - `indices`, `INT64`, shape `[N]`, `N` = the sum of `lengths`: row-major, bag `(b, t)` takes
//!   the next `lengths[b][t]` ids. Ids are row indices of table `t`, never clamped or remapped.
//!
//! The output is `score`, `FP32`, shape `[B, 1]` (click probabilities); `"id"` is echoed.
//! Tensor `data` may be flat or nested. The binary tensor data extension is supported both
//! ways: an input with `"parameters": {"binary_data_size": n}` takes its data (little-endian)
//! from the bytes after the JSON header, whose length the `Inference-Header-Content-Length`
//! header gives; an output requested with `"parameters": {"binary_data": true}` (or a request
//! with `"parameters": {"binary_data_output": true}`) comes back the same way.
//!
//! ## System shared memory
//!
//! Triton's system shared memory extension (what `tritonclient.utils.shared_memory` and
//! perf_analyzer's `--shared-memory system` use), for clients on the same machine, enabled by
//! `--allow-client-shm` (a registering client makes the server map, read and write a
//! `/dev/shm` object of its choice: only for trusted local clients; without the flag,
//! registering is 403 and the metadata does not list `system_shared_memory`). A client
//! registers a range of a POSIX shared memory object once: `POST
//! /v2/systemsharedmemory/region/{region}/register` with `{"key": "/NAME", "offset": N,
//! "byte_size": N}` opens `/dev/shm/NAME` (one path component: no other `/`, not `..`;
//! symbolic links are not followed), checks that the range lies in the object and maps it
//! shared, read-write. A name already registered is a 400 naming it; at most 64 regions are
//! kept (400 beyond). An input whose `parameters` carry `"shared_memory_region": REGION,
//! "shared_memory_byte_size": N` (and optionally `"shared_memory_offset": O`, default 0,
//! counted from the region's start) then takes its `N` bytes, little-endian as binary data,
//! from there instead of `data` or the body; they are checked like binary data (the size
//! against the shape and datatype, ids range-checked, dense values finite, lengths summing to
//! the ids), and read once into the batch, so a client writing the region meanwhile can only
//! produce values that fail or pass those checks. A requested output with the same parameters
//! is written there (the range must hold `B x 4` bytes) and answered with those parameters and
//! no data. Every error is a 400 naming the tensor and parameter: a region not registered, a
//! range past the region's end, a size not matching the shape, data given both in the request
//! and in shared memory. A region unregistered while requests use it stays mapped until they
//! are answered; the client may unlink the object once it is registered. The client must not
//! shrink the object while it is registered: reading a page past its end faults (SIGBUS) and
//! stops the server, as with Triton. `dlrs loadgen --shared-memory system` sends its queries
//! this way.
//!
//! # Batching
//!
//! An inference request is parsed and validated in full (every error names the tensor or
//! field), then enters a queue bounded in *samples* (`--max-queue`) and, with
//! `--max-queue-wait-ms`, in *time*: a request is refused (503) when the work already waiting
//! ahead of it, estimated from the measured compute time per sample (a moving average over
//! the batches computed) and the number of instances, exceeds that many milliseconds. The
//! time bound fits every query size (a sample bound that suits 165-sample queries of 80 ids
//! each is loose for small ones) and adapts when the compute threads slow down. A request with binary
//! tensors declares its batch size in its JSON header, which comes first: room for it is held
//! in the queue as soon as that header is in, so under overload it gets its 503 before its
//! binary data is read (the queue depth counts held room). `--instances` compute
//! threads (default: one per `--threads`) each own an [`Executor`](dlrs_model::Executor) of
//! `--threads / --instances` threads and a [`Workspace`](dlrs_model::Workspace), and take
//! batches from the queue independently (like Triton's instance groups: a batch split across
//! threads waits for its slowest part, so one instance per thread keeps a compute thread
//! preempted by HTTP work from idling the other). An instance takes the oldest request, then
//! keeps taking requests until the batch holds `--max-batch` samples, the next request does
//! not fit, or `--max-queue-delay-us` has passed since the oldest request was queued (a
//! request that already waited that long while the instances were busy is batched with
//! whatever is queued, without waiting further). Requests are merged whole and in arrival
//! order; a request larger than `--max-batch` is split into chunks of `--max-batch` samples
//! (which may run on different instances) and answered once all are done. A request larger than the whole
//! queue (`--max-queue`) can never be admitted and gets 413. Requests parsed against
//! different model versions (around a reload) are never merged: each batch runs on the
//! version its requests were validated against.
//!
//! # Deadlines
//!
//! A request's deadline is the `x-dlrs-deadline-ms` header (milliseconds from the moment the
//! request's headers were read; fractional values allowed) or `--default-deadline-ms`; a v2
//! request's Triton-style `"parameters": {"timeout": us}` (microseconds) shortens it. A
//! request is answered by its deadline: with its scores, or with 504. The batcher drops
//! requests whose deadline passed (or whose client went away) before it computes them, so
//! no computation starts for an expired request; a deadline of 0 is answered 504 at once.
//!
//! # Status codes
//!
//! Every error body is JSON `{"error": "..."}` naming the offending field, tensor or header.
//!
//! | status | when |
//! |---|---|
//! | 400 | malformed JSON; unknown, missing or duplicate input; wrong datatype or shape; data count not matching the shape; negative lengths; lengths not summing to the ids; id out of range (names sample and table); non-finite dense value; unknown output; bad `x-dlrs-deadline-ms`; a bad shared memory registration or reference (see above) |
//! | 403 | registering a shared memory region without `--allow-client-shm` |
//! | 404 | unknown model name or version; unknown path; status of a shared memory region not registered |
//! | 405 | known path, wrong method |
//! | 408 | the body did not arrive within `--body-timeout-ms` (slow clients) |
//! | 413 | body over `--max-body-bytes` (refused from `Content-Length` before it is read, or as soon as a streamed body crosses it); a request of more samples than `--max-queue` |
//! | 500 | a panic or error while computing the request's batch (that batch only; the server keeps serving); a reload that failed (the old version keeps serving) |
//! | 503 | queue full (`Retry-After: 1`, answered at once); request bodies in memory over `--max-body-memory-bytes` (`Retry-After: 1`, at once); over `--max-connections` (`Retry-After: 1`, then the connection is closed); shutting down (`Retry-After: 1`) |
//! | 504 | deadline passed before the request was computed or answered |
//!
//! # Connections
//!
//! HTTP/1.1 only. At most `--max-connections` (default 1024) connections are open at once;
//! a connection beyond them is answered `503` with `Retry-After: 1` and a JSON error at once,
//! without its request being read, and closed (and closed without an answer when even those
//! refusals pile up). A new connection must deliver its first request's headers within
//! `--header-timeout-ms` (default 5000); on a keep-alive connection the clock starts at the
//! first byte of each next request, and the wait for that byte is bounded by
//! `--idle-timeout-ms` (default 60000); writing a response is bounded by `--write-timeout-ms`
//! (default 10000). A connection over any of these limits is closed without an answer, so
//! clients that open connections and send nothing, drip header bytes, or never read their
//! answers hold nothing for long. Bodies have their own limits (`--body-timeout-ms`: 408,
//! `--max-body-bytes`: 413), and all bodies in memory together are bounded by
//! `--max-body-memory-bytes` (default 256 MiB; counted as they arrive, released once
//! parsed): a request whose body would go over it gets 503 at once. An error answered before
//! the request's body was read in full (from its headers, or 408, 413, 503 while reading it)
//! says `Connection: close`, and the connection closes after it, the rest of the body unread.
//! The response write has no timeout of its own.
//!
//! # Reload
//!
//! `POST /v2/repository/models/{name}/load` loads the model directory again beside the
//! serving version and swaps it in atomically; requests already parsed finish on the version
//! they were parsed against, so no request fails during a reload. A version that fails to
//! load is refused (500, naming the file and field) and the old version keeps serving. The
//! directory is also watched: every `--watch-interval-ms` (default 1000, 0 = off) the
//! server stats `config.json` and `model.safetensors` (device, inode, size, mtime, ctime;
//! symlinks followed) and reloads the same way when they changed, e.g. after an atomic
//! rename of new files or a symlink swap. A broken version found by the watcher is logged
//! and not retried until the files change again.
//!
//! A reload reads only regular files within their size bounds (see `dlrs_model::files`): a
//! FIFO, a device or an oversized `config.json` is refused at once. A reload that still takes
//! longer than `--reload-timeout-ms` (a file system that stops answering) is abandoned with a
//! 500: its thread ends on its own and its result is dropped, and the next reload proceeds.
//! At most four abandoned reloads may be pending; beyond that reloads are refused until one
//! ends.
//!
//! # Shutdown
//!
//! On SIGTERM or SIGINT ([`run`]) or when the `shutdown` future completes ([`serve`]):
//! readiness turns false (503), new inference requests get 503, the listener keeps
//! answering until the requests in flight have finished, then the server stops accepting,
//! closes the connections with no request in progress (idle, or still sending headers),
//! lets the others finish their request, and returns. `--drain-timeout-ms` bounds all of it
//! from the signal: at the bound every connection still open is closed (a client still
//! sending a body, say) and the server returns.
//!
//! # Metrics
//!
//! `dlrs_requests_total{endpoint, status}`, `dlrs_request_duration_seconds{endpoint}`,
//! `dlrs_queue_depth_samples`, `dlrs_inflight_requests`, `dlrs_batch_size` (samples per
//! computed batch), `dlrs_queue_wait_seconds` (queued → computing), `dlrs_compute_seconds`
//! (one batch's forward pass), `dlrs_expired_requests_total`, `dlrs_model_reloads_total{result}`,
//! `dlrs_model_version`, `dlrs_connections` (open), `dlrs_connections_refused_total`,
//! `dlrs_connections_timed_out_total{phase}` (`header` or `idle`), `dlrs_shm_inputs_total`
//! (inputs read from system shared memory).

mod batcher;
mod conn;
mod error;
mod http;
mod kserve;
mod metrics;
mod shm;
mod state;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dlrs_model::{Batch, TableMode};

pub use batcher::{BatcherConfig, Job, Queue, Reply, ReplyTo, spawn as spawn_instances};
pub use error::ApiError;
pub use metrics::Metrics;
pub use state::Version;

/// Options of `dlrs serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// model directory (config.json + model.safetensors)
    #[arg(long)]
    pub model: PathBuf,
    /// model name in URLs (default: the directory's file name)
    #[arg(long)]
    pub name: Option<String>,
    /// address to listen on
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub addr: String,
    /// the batching and admission rules (shared with `dlrs twin`)
    #[command(flatten)]
    pub queue: QueueArgs,
    /// threads of the forward pass, over all instances
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// compute instances: batches computed at once, each on --threads / --instances threads
    /// (default: one per thread)
    #[arg(long)]
    pub instances: Option<usize>,
    /// threads that run HTTP (tokio workers: accept, read and parse requests, answer)
    #[arg(long, default_value_t = 2)]
    pub http_threads: usize,
    /// nice value of the compute instances' threads (0-19; Linux). Above 0 the HTTP threads
    /// preempt them when the cores are saturated, so requests are read, refused (503) or
    /// queued at once instead of waiting behind a batch's compute
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub compute_nice: i32,
    /// time slice the HTTP threads ask the scheduler for, in microseconds (Linux 6.12+,
    /// EEVDF; 0, the default: the kernel's). A slice shorter than the compute threads' lets a
    /// waking HTTP thread preempt a running batch at once instead of after the batch's slice
    /// (on a 250 Hz kernel up to a 4 ms tick). Threads keep their nice value. With
    /// --compute-nice 10 under overload, 100 cut the HTTP and client threads' waits for a
    /// core of over 2 ms by two thirds (docs/benchmarks.md)
    #[arg(long, default_value_t = 0)]
    pub http_slice_us: u64,
    /// mmap: map the model file; ram: copy tables into huge pages
    #[arg(long, default_value = "ram", value_parser = parse_table_mode)]
    pub tables: TableMode,
    /// with --tables ram: hold memory for a second copy of the tables from the start, so a
    /// reload copies the new version into memory that is already resident (the replaced
    /// version's memory is kept for the next one) instead of into fresh pages. Costs twice
    /// the tables' memory. On VMs that hand freed memory back to the host (free page
    /// reporting), the first touch of fresh pages stalls the vCPUs (both cores, 26-43 ms at a
    /// time while 4 GB was copied here) and a reload under load refuses requests
    #[arg(long)]
    pub keep_reload_memory: bool,
    /// deadline of requests without an x-dlrs-deadline-ms header, in milliseconds
    #[arg(long, default_value_t = 1000)]
    pub default_deadline_ms: u64,
    /// largest request body; larger ones get 413 before they are read
    #[arg(long, default_value_t = 32 << 20)]
    pub max_body_bytes: usize,
    /// time allowed to receive a request body, in milliseconds (then 408)
    #[arg(long, default_value_t = 10_000)]
    pub body_timeout_ms: u64,
    /// how often to check the model files for a new version, in milliseconds (0: never)
    #[arg(long, default_value_t = 1000)]
    pub watch_interval_ms: u64,
    /// on shutdown, the longest the server waits, in milliseconds, for requests in flight
    /// and connections still sending or receiving one; at the bound it closes them and exits
    #[arg(long, default_value_t = 30_000)]
    pub drain_timeout_ms: u64,
    /// longest a reload may take to load the new version, in milliseconds; a slower one is
    /// abandoned (the old version keeps serving, later reloads proceed)
    #[arg(long, default_value_t = 600_000)]
    pub reload_timeout_ms: u64,
    /// most open connections; beyond it a new connection is answered 503 and closed
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// time allowed to receive a request's headers, in milliseconds, from its first byte (or
    /// from accept on a new connection); then the connection is closed
    #[arg(long, default_value_t = 5000)]
    pub header_timeout_ms: u64,
    /// longest a keep-alive connection waits for its next request, in milliseconds
    #[arg(long, default_value_t = 60_000)]
    pub idle_timeout_ms: u64,
    /// time allowed to write a response, in milliseconds (a client that does not read its
    /// answers); then the connection is closed
    #[arg(long, default_value_t = 10_000)]
    pub write_timeout_ms: u64,
    /// most request-body bytes held in memory at once by all requests together (bodies
    /// being received or parsed); beyond it requests get 503
    #[arg(long, default_value_t = 256 << 20)]
    pub max_body_memory_bytes: usize,
    /// let local clients register system shared memory regions (Triton's system shared
    /// memory extension: inputs read from, outputs written to /dev/shm objects the client
    /// names); only for trusted local clients
    #[arg(long)]
    pub allow_client_shm: bool,
    /// test hooks (not a command-line option)
    #[arg(skip)]
    #[doc(hidden)]
    pub hooks: Hooks,
}

fn parse_table_mode(s: &str) -> Result<TableMode, String> {
    TableMode::parse(s).ok_or_else(|| format!("`{s}`: expected mmap or ram"))
}

/// The batching and admission rules: the options `dlrs serve` and `dlrs twin` share, so that
/// the twin queues exactly as the server does.
#[derive(clap::Args, Debug, Clone)]
pub struct QueueArgs {
    /// most samples computed in one batch (larger ones are split)
    #[arg(long, default_value_t = 256)]
    pub max_batch: usize,
    /// longest a queued request waits for more to batch with, in microseconds
    #[arg(long, default_value_t = 500)]
    pub max_queue_delay_us: u64,
    /// most samples waiting in the queue; beyond it requests get 503 at once
    #[arg(long, default_value_t = 4096)]
    pub max_queue: usize,
    /// most samples waiting when no request was refused within the last
    /// --burst-cooldown-ms: room for a burst of arrivals (bunched by a stall) at a load the
    /// server keeps up with. Within the cooldown of a refusal, as under overload, --max-queue
    /// bounds the queue. 0 or at most --max-queue: off
    #[arg(long, default_value_t = 0)]
    pub max_queue_burst: usize,
    /// how long after a refusal --max-queue applies instead of --max-queue-burst, in
    /// milliseconds
    #[arg(long, default_value_t = 100)]
    pub burst_cooldown_ms: u64,
    /// most estimated work waiting ahead of a new request, in milliseconds (waiting samples
    /// times the median compute time per sample of the last 32 batches, over the
    /// instances); beyond it requests get 503 at once. 0: no bound by time (only --max-queue)
    #[arg(long, default_value_t = 0)]
    pub max_queue_wait_ms: u64,
}

impl QueueArgs {
    /// The queue's rules from the options.
    pub fn config(&self) -> BatcherConfig {
        BatcherConfig {
            max_batch: self.max_batch,
            max_delay: Duration::from_micros(self.max_queue_delay_us),
            max_queue: self.max_queue,
            max_queue_burst: self.max_queue_burst,
            burst_cooldown: Duration::from_millis(self.burst_cooldown_ms),
            max_wait: (self.max_queue_wait_ms > 0)
                .then(|| Duration::from_millis(self.max_queue_wait_ms)),
        }
    }
}

impl ServeArgs {
    /// The options `dlrs serve --model DIR` gets (every other option at its default).
    pub fn new(model: impl Into<PathBuf>) -> Self {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ServeArgs,
        }
        let model: PathBuf = model.into();
        let argv = [
            std::ffi::OsString::from("serve"),
            "--model".into(),
            model.into_os_string(),
        ];
        <Cli as clap::Parser>::try_parse_from(argv)
            .expect("defaults parse")
            .args
    }

    /// `(instances, threads per instance)` from `--instances` and `--threads`.
    pub fn compute_layout(&self) -> anyhow::Result<(usize, usize)> {
        compute_layout(self.threads, self.instances)
    }

    /// The model name used in URLs.
    pub fn model_name(&self) -> String {
        // the path's own last component (a symlink's name, not its target's), else the
        // canonical directory's (for `.` and the like)
        let own = self
            .model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        self.name.clone().or(own).unwrap_or_else(|| {
            let dir = std::fs::canonicalize(&self.model).unwrap_or_else(|_| self.model.clone());
            dir.file_name()
                .map_or_else(|| "model".to_string(), |n| n.to_string_lossy().into_owned())
        })
    }
}

/// `(instances, threads per instance)`: `threads` split evenly over `instances` (default: one
/// instance per thread).
pub fn compute_layout(threads: usize, instances: Option<usize>) -> anyhow::Result<(usize, usize)> {
    anyhow::ensure!(threads >= 1, "--threads must be at least 1");
    let instances = instances.unwrap_or(threads);
    anyhow::ensure!(
        instances >= 1 && threads.is_multiple_of(instances),
        "--instances {instances} must divide --threads {threads} (each instance gets the same number of threads)"
    );
    Ok((instances, threads / instances))
}

/// Fault-injection points for tests. Not part of the command line.
#[derive(Clone, Default)]
#[doc(hidden)]
pub struct Hooks {
    /// Runs on the batcher thread just before each batch's forward pass, inside the panic
    /// guard (a test can block here to hold a batch, or panic to simulate a crash).
    pub before_forward: Option<BatchHook>,
    /// Runs on the reload thread before a new version is loaded (a test can block here to
    /// wedge a reload).
    pub before_load: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// A function run on a batch (see [`Hooks`]).
#[doc(hidden)]
pub type BatchHook = Arc<dyn Fn(&Batch) + Send + Sync>;

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("before_forward", &self.before_forward.is_some())
            .field("before_load", &self.before_load.is_some())
            .finish()
    }
}

/// Runs the server on `args.addr` until SIGTERM or SIGINT, then drains and returns.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let rt = http_runtime(&args)?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.addr)
            .await
            .with_context(|| format!("listening on {}", args.addr))?;
        serve(args, listener, shutdown_signal()).await
    })
}

/// The tokio runtime the HTTP side runs on: `--http-threads` workers named `dlrs-http`, each
/// asking for `--http-slice-us` slices (a failure to is reported once and changes nothing).
pub fn http_runtime(args: &ServeArgs) -> anyhow::Result<tokio::runtime::Runtime> {
    anyhow::ensure!(args.http_threads >= 1, "--http-threads must be at least 1");
    let slice = std::time::Duration::from_micros(args.http_slice_us);
    let what = format!("dlrs serve: --http-slice-us {}", args.http_slice_us);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.http_threads)
        .enable_all()
        .thread_name("dlrs-http")
        .on_thread_start(move || dlrs_model::sys::ask_for_thread_slice(slice, &what))
        .build()
        .context("starting the tokio runtime")
}

/// Completes on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            eprintln!("dlrs serve: cannot watch SIGTERM ({e}); only SIGINT shuts down");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Serves on `listener` until `shutdown` completes, then drains (see the crate docs) and
/// returns. Loads the model first; a model that does not load is an error.
pub async fn serve(
    args: ServeArgs,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    anyhow::ensure!(args.queue.max_batch >= 1, "--max-batch must be at least 1");
    anyhow::ensure!(args.queue.max_queue >= 1, "--max-queue must be at least 1");
    let limits = conn::Limits::from_args(&args)?;
    let state = state::AppState::start(args).await?;
    let addr = listener
        .local_addr()
        .context("reading the listener's address")?;
    eprintln!(
        "dlrs serve: model \"{}\" (version 1) from {} on http://{addr}",
        state.name,
        state.dir.display()
    );

    let background = state.spawn_background();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<std::time::Instant>();
    let drainer = {
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            shutdown.await;
            // --drain-timeout-ms bounds the whole shutdown from here: the wait for requests
            // in flight and then for connections still receiving or answering one
            let deadline =
                std::time::Instant::now() + Duration::from_millis(state.args.drain_timeout_ms);
            state.drain(deadline).await;
            let _ = stop_tx.send(deadline);
        })
    };
    let app = http::router(Arc::clone(&state));
    let served = conn::serve(
        listener,
        app,
        limits,
        Arc::clone(&state.metrics),
        async move {
            match stop_rx.await {
                Ok(deadline) => deadline,
                // the drainer is gone (it cannot be before sending): stop now
                Err(_) => std::time::Instant::now(),
            }
        },
    )
    .await;
    drainer.abort();
    for task in background {
        task.abort();
    }
    state.stop().await;
    served.context("serving HTTP")?;
    eprintln!("dlrs serve: stopped");
    Ok(())
}
