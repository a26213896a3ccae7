//! `dlrs loadgen` and its in-process twin: open-loop load for latency-bounded throughput.
//!
//! # The load
//!
//! Queries arrive as a Poisson process of rate `--qps` (exponential inter-arrival times drawn
//! from `--seed`) for `--duration` seconds. A dispatcher thread releases each query at its
//! scheduled instant, whatever happened to earlier ones (open loop), and **latency counts from
//! the scheduled instant**: a query that waits for a free connection, or is released late
//! because the client fell behind, carries that wait in its latency, so coordinated omission
//! cannot hide a stall. After the last arrival the run waits at most `--drain` seconds
//! (default 5) for answers; queries still unanswered then count as timeouts.
//!
//! Each query carries a number of samples drawn from `--query-size` (`fixed:N`,
//! `normal:MU,SIGMA` (default `normal:165,16`, DeepRecSys' production-like size),
//! `lognormal:MU,SIGMA` (of the size's logarithm) or `file:PATH` (one `N` or `N WEIGHT` per
//! line)), rounded and clamped to `1..=1024` as DeepRecSys caps it. Samples are synthetic:
//! standard-normal dense features and `--ids-per-table` ids per bag drawn by `--dist`
//! (`uniform` or `zipf:S`, [`dlrs_model::synth`]). A pool of `--pool` distinct queries
//! (default 2048; fewer if their batches would take over 256 MB) is generated and encoded before the
//! clock starts; query `i` is pool entry `i mod pool`, so generation never sits on the send
//! path. The HTTP load and the twin draw
//! the same pool and the same arrivals from the same seed.
//!
//! # HTTP (`dlrs loadgen`)
//!
//! `--url http://HOST:PORT` (only the address given is contacted), `--model NAME`. The model's
//! dense and table counts come from its KServe v2 metadata (`GET /v2/models/{name}`: `dense`
//! `[-1, n_dense]`, `lengths` `[-1, n_tables]`), the tables' row counts (the range of the ids
//! drawn) from its `parameters.table_rows`, which `dlrs serve` publishes. For a server that
//! does not, `--model-dir DIR` gives them (`DIR/config.json`, checked against the metadata).
//! Queries go as
//! `POST /v2/models/{name}/infer` with `dense`/`lengths`/`indices` (`--protocol v2`, the
//! default; JSON tensor data, or with `--binary` the binary tensor data extension) or as
//! `POST /v1/models/{name}/predict` (`--protocol v1`), over `--connections` keep-alive
//! HTTP/1.1 connections (default 64) opened before the clock starts. A 200 answer counts as ok
//! when it carries one score per sample.
//!
//! With `--shared-memory system` (Triton's system shared memory extension, as perf_analyzer
//! calls it) the pool's input tensors are written once into one POSIX shared memory object
//! (`/dev/shm/dlrs-loadgen-PID-N`), registered with the server as one region; each request
//! is then a small JSON body naming its tensors' offsets there (scores still come back in the
//! answer). The object is unlinked once the server has mapped it, and the region is
//! unregistered when the run ends, fails or is interrupted. The server must run on the same
//! machine, started with `--allow-client-shm`; `--binary` then changes nothing.
//!
//! # Twin (`dlrs twin`)
//!
//! The same arrivals and queries against the model in process (`--model DIR`, tables in RAM),
//! submitted straight into `dlrs serve`'s own queue and compute instances (the same code:
//! batching up to `--max-batch` samples within `--max-queue-delay-us`, `--max-queue`
//! admission with 503, `--deadline-ms` expiry with 504, `--instances` over `--threads`).
//! HTTP's share of the latency ("serving overhead") is the difference between the two at the
//! same target.
//!
//! # Output
//!
//! Offered and achieved QPS, samples/s, latency p50/p95/p99/p99.9/max/mean in ms of the
//! queries answered ok, and failures: by HTTP status, bad answers, transport errors,
//! timeouts. With `--json`, exactly one JSON object on stdout (the lines for people go to
//! the log instead, i.e. to stderr at level info in the `dlrs` binary):
//!
//! - always: `mode` (`"http"` or `"twin"`), `query_size`, `dist`, `ids_per_table`, `seed`,
//!   `pool` (the pool's actual size), `warmup_s`, `drain_s`; HTTP: `url`, `model`, `model_dir`, `protocol`, `binary`,
//!   `shared_memory` (`none` or `system`), `transport` (`json`, `binary` or
//!   `system_shared_memory`), `connections`; twin: `model_dir`, `threads`, `instances`, `max_batch`,
//!   `max_queue_delay_us`, `max_queue`, `max_queue_burst`, `burst_cooldown_ms`,
//!   `max_queue_wait_ms`, `deadline_ms`;
//! - one measurement: `offered_qps`, `duration_s`, `queries`, `ok`, `ok_samples`,
//!   `achieved_qps`, `samples_per_s`, `mean_query_size`, `latency_ms.{p50, p95, p99, p999,
//!   max, mean}` (null without ok answers), `errors.{by_status, bad_response, transport,
//!   timeout, failed, total}`, `error_latency_ms` (by status), `slowest_at_s` (when the
//!   slowest ok query was due, seconds from the start), `failures_by_second` (failed queries
//!   by the whole second they were due in);
//! - a search (`--target-p99-ms X`): `target_p99_ms`, `step_duration_s`, `points` (each a
//!   measurement as above plus `step` and `meets_target`), `latency_bounded` (`offered_qps`,
//!   `achieved_qps`, `samples_per_s`, `p50_ms`, `p99_ms` of the best point, or null), `plot`.
//!
//! # Search (`--target-p99-ms X`)
//!
//! Latency-bounded throughput: starting at `--qps`, the rate doubles while the target holds
//! (halves while it does not), then bisects between the best passing and the lowest failing
//! rate until they are within 5% or `--max-steps` (default 12) measurements of `--duration`
//! seconds each were taken. A point meets the target when no query failed and its p99 <= X.
//! Every point is printed; `--plot FILE.svg|FILE.png` draws p99 and p50 against the offered
//! rate with the target as a horizontal line.
//!
//! # The crate
//!
//! The entry points ([`run`](fn@run), [`run_twin`], [`loadgen_json`], [`twin_json`]) take plain
//! settings ([`LoadgenConfig`], [`TwinConfig`], both holding a [`LoadConfig`]) whose
//! defaults are the flags' (the flags themselves belong to the `dlrs` binary), and fail
//! with a [`LoadgenError`] naming the flag, file or request at fault.
//!
//! - [`config`]: the settings; [`run`](mod@run): the entry points, setting the loads up and
//!   driving the measurements or searches; `report`: the lines for people and the JSON
//!   object;
//! - [`driver`]: the open-loop dispatcher and the table of outcomes both loads share;
//!   [`http`] and [`twin`]: the two loads; [`stats`]: percentiles and one measurement's
//!   [`Report`](stats::Report); [`search`]: the latency-bounded throughput search;
//! - [`dist`], [`payload`], [`shm`], [`plot`]: arrivals and query sizes, the queries and
//!   their bodies, system shared memory, the curve.

pub mod config;
pub mod dist;
pub mod driver;
pub mod error;
pub mod http;
pub mod payload;
pub mod plot;
mod report;
pub mod run;
pub mod search;
pub mod shm;
pub mod stats;
pub mod twin;

pub use config::{LoadConfig, LoadgenConfig, TwinConfig, VersusConfig};
pub use error::LoadgenError;
pub use run::{loadgen_json, run, run_twin, twin_json};
