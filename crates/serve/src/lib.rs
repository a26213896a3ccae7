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
//! | 503 | queue full (`Retry-After: 1`, answered at once); request bodies in memory over `--max-body-memory-bytes` (`Retry-After: 1`, at once); over `--max-connections` (`Retry-After: 1`, then the connection is closed); shutting down (`Retry-After: 1`); with `--tables redis://...`, the Redis tier did not deliver the batch's rows within `--redis-timeout-ms` (`Retry-After: 1`, the message names the tier and table) |
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
//!
//! # Logs
//!
//! The server logs through `tracing` (the `dlrs` binary writes the lines to stderr, as text
//! or JSON, at the levels `RUST_LOG` sets): start and stop, reloads, shutdown, and batches
//! that panicked (naming their requests' ids). Each HTTP request is handled inside a span
//! `request{id=...}`, so the lines logged while it is handled (a reload asked for by
//! `POST .../load`, say) carry its id, and every answer carries the id in an `x-request-id`
//! header. The id is the request's own `x-request-id` header when it has one (1 to 128
//! visible ASCII characters), else a v2 inference request's `"id"` (of the same form) once
//! the request is parsed, else one generated by the server. At `debug` level every answer is
//! logged with its status and time.
//!
//! # The crate
//!
//! [`run`] and [`serve`] take a [`ServeConfig`] (the flags above as plain fields, named after
//! them; [`ServeConfig::new`] gives their defaults; the flags themselves belong to the `dlrs`
//! binary) and fail with a [`ServeError`] naming the setting or file at fault. A request's
//! failure is an [`ApiError`], mapped to its status explicitly. The batching rules,
//! [`QueueConfig`], are shared with the in-process twin (`dlrs-loadgen`), which runs the
//! same [`Queue`] and compute instances ([`spawn_instances`]).
//!
//! Inside: `config` (the settings), `state` (versions, reloads, shutdown), `conn` (the
//! accept loop and connection timeouts), `http` (routes and handlers), `request_id`,
//! `kserve` (the protocol: requests into validated batches, tensor decoding, responses),
//! `batcher` (the queue and compute instances), `control` (the live scheduler of
//! `--target-p99-ms`), `shm` (registered shared memory regions),
//! `metrics`, `error`.

mod batcher;
mod config;
mod conn;
pub mod control;
mod error;
mod http;
mod kserve;
mod metrics;
mod request_id;
mod shm;
mod state;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use batcher::{
    Controller, Job, Queue, Reply, ReplyTo, spawn as spawn_instances, spawn_controlled,
};
pub use config::{BatchHook, Hooks, QueueConfig, ServeConfig, compute_layout};
pub use control::{ControlConfig, Settings};
pub use error::{ApiError, ServeError};
pub use metrics::Metrics;
pub use request_id::REQUEST_ID_HEADER;
pub use state::Version;

/// Runs the server on `config.addr` until SIGTERM or SIGINT, then drains and returns.
pub fn run(config: ServeConfig) -> Result<(), ServeError> {
    let rt = http_runtime(&config)?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&config.addr)
            .await
            .map_err(|source| ServeError::Listen {
                addr: config.addr.clone(),
                source,
            })?;
        serve(config, listener, shutdown_signal()).await
    })
}

/// The tokio runtime the HTTP side runs on: `--http-threads` workers named `dlrs-http`, each
/// asking for `--http-slice-us` slices (a failure to is reported once and changes nothing).
pub fn http_runtime(config: &ServeConfig) -> Result<tokio::runtime::Runtime, ServeError> {
    if config.http_threads < 1 {
        return Err(ServeError::flag("--http-threads", "must be at least 1"));
    }
    let slice = Duration::from_micros(config.http_slice_us);
    let what = format!("dlrs serve: --http-slice-us {}", config.http_slice_us);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.http_threads)
        .enable_all()
        .thread_name("dlrs-http")
        .on_thread_start(move || dlrs_model::sys::ask_for_thread_slice(slice, &what))
        .build()
        .map_err(ServeError::Runtime)
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
            tracing::warn!("cannot watch SIGTERM ({e}); only SIGINT shuts down");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Serves on `listener` until `shutdown` completes, then drains (see the crate docs) and
/// returns. Loads the model first; a model that does not load is an error.
pub async fn serve(
    config: ServeConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    config.queue.check()?;
    let limits = conn::Limits::from_config(&config)?;
    let state = state::AppState::start(config).await?;
    let addr = listener.local_addr().map_err(ServeError::ListenerAddress)?;
    tracing::info!(
        "model \"{}\" (version 1) from {} on http://{addr}",
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
                std::time::Instant::now() + Duration::from_millis(state.config.drain_timeout_ms);
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
    served.map_err(ServeError::Http)?;
    tracing::info!("stopped");
    Ok(())
}
