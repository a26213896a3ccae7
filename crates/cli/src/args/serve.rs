//! `dlrs serve`'s flags, converted into [`dlrs_serve::ServeConfig`]; the batching flags
//! (shared with `dlrs twin`) into [`dlrs_serve::QueueConfig`].

use std::path::PathBuf;

use dlrs_serve::{ControlConfig, QueueConfig, ServeConfig};

use super::redis::{RedisArgs, Tables};

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
    /// (default: one per thread; with --target-p99-ms, the scheduler's choice)
    #[arg(long)]
    pub instances: Option<usize>,
    /// the scheduler's target, in milliseconds: a controller watches the latencies, the
    /// load and the query sizes and tunes the threads per batch (and so the instances), the
    /// largest batch, the batching delay and the admission bound towards it (docs/serving.md,
    /// "The scheduler"). --instances, --max-batch, --max-queue-delay-us and
    /// --max-queue-wait-ms, when given, pin their setting
    #[arg(long)]
    pub target_p99_ms: Option<f64>,
    /// the percentile of latency --target-p99-ms bounds
    #[arg(long, default_value_t = 99.0, requires = "target_p99_ms")]
    pub target_percentile: f64,
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
    /// mmap: map the model file; ram: copy tables into huge pages; redis://HOST:PORT[,...]:
    /// read the rows from a Redis Cluster (`dlrs push`) behind a local cache, the MLPs from
    /// the model directory
    #[arg(long, default_value = "ram", value_parser = super::redis::parse_tables)]
    pub tables: Tables,
    /// with --tables redis://...: the namespace, the local cache and the failure policy
    #[command(flatten)]
    pub redis: RedisArgs,
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
}

/// The batching and admission rules: the options `dlrs serve` and `dlrs twin` share, so that
/// the twin queues exactly as the server does.
#[derive(clap::Args, Debug, Clone)]
pub struct QueueArgs {
    /// most samples computed in one batch (larger ones are split) [default: 256]
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// longest a queued request waits for more to batch with, in microseconds [default: 500]
    #[arg(long)]
    pub max_queue_delay_us: Option<u64>,
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
    /// [default: 0]
    #[arg(long)]
    pub max_queue_wait_ms: Option<u64>,
    /// how long a compute instance that finds the queue empty keeps its threads busy
    /// waiting for the next request before it sleeps, in microseconds (OpenMP's active wait,
    /// KMP_BLOCKTIME): a batch that arrives at idle cores waits for them to wake (1.5-2 ms
    /// for RMC1 on a 2-vCPU Zen 4 VM). Costs CPU while idle. [default: 0; with
    /// --target-p99-ms, 20000]
    #[arg(long)]
    pub idle_spin_us: Option<u64>,
}

impl QueueArgs {
    /// The scheduler's settings for `target_ms` at `percentile`: the flags given pin theirs.
    pub fn control(
        &self,
        target_ms: f64,
        percentile: f64,
        instances: Option<usize>,
    ) -> ControlConfig {
        ControlConfig {
            percentile,
            pin_instances: instances,
            pin_max_batch: self.max_batch,
            pin_delay_us: self.max_queue_delay_us,
            pin_wait_ms: self.max_queue_wait_ms,
            pin_spin_us: self.idle_spin_us,
            ..ControlConfig::new(target_ms)
        }
    }
}

impl From<QueueArgs> for QueueConfig {
    fn from(a: QueueArgs) -> Self {
        let d = QueueConfig::default();
        QueueConfig {
            max_batch: a.max_batch.unwrap_or(d.max_batch),
            max_queue_delay_us: a.max_queue_delay_us.unwrap_or(d.max_queue_delay_us),
            max_queue: a.max_queue,
            max_queue_burst: a.max_queue_burst,
            burst_cooldown_ms: a.burst_cooldown_ms,
            max_queue_wait_ms: a.max_queue_wait_ms.unwrap_or(d.max_queue_wait_ms),
            idle_spin_us: a.idle_spin_us.unwrap_or(d.idle_spin_us),
        }
    }
}

impl From<ServeArgs> for ServeConfig {
    fn from(a: ServeArgs) -> Self {
        let control = a
            .target_p99_ms
            .map(|t| a.queue.control(t, a.target_percentile, a.instances));
        ServeConfig {
            name: a.name,
            addr: a.addr,
            queue: a.queue.into(),
            threads: a.threads,
            instances: a.instances,
            control,
            http_threads: a.http_threads,
            compute_nice: a.compute_nice,
            http_slice_us: a.http_slice_us,
            tables: a.tables.mode(),
            redis: match &a.tables {
                Tables::Redis(nodes) => Some(a.redis.options(nodes.clone())),
                Tables::Local(_) => None,
            },
            keep_reload_memory: a.keep_reload_memory,
            default_deadline_ms: a.default_deadline_ms,
            max_body_bytes: a.max_body_bytes,
            body_timeout_ms: a.body_timeout_ms,
            watch_interval_ms: a.watch_interval_ms,
            drain_timeout_ms: a.drain_timeout_ms,
            reload_timeout_ms: a.reload_timeout_ms,
            max_connections: a.max_connections,
            header_timeout_ms: a.header_timeout_ms,
            idle_timeout_ms: a.idle_timeout_ms,
            write_timeout_ms: a.write_timeout_ms,
            max_body_memory_bytes: a.max_body_memory_bytes,
            allow_client_shm: a.allow_client_shm,
            // not a command-line option
            ..ServeConfig::new(a.model)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use dlrs_model::TableMode;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn parse(argv: &[&str]) -> Result<ServeConfig, clap::Error> {
        Cli::try_parse_from(std::iter::once("serve").chain(argv.iter().copied()))
            .map(|c| c.args.into())
    }

    #[test]
    fn the_flags_defaults_are_the_librarys() {
        assert_eq!(parse(&["--model", "m"]).unwrap(), ServeConfig::new("m"));
        assert!(parse(&[]).is_err(), "--model is required");
    }

    #[test]
    fn every_flag_sets_its_own_field() {
        let got = parse(&[
            "--model",
            "m",
            "--name",
            "n",
            "--addr",
            "0.0.0.0:1",
            "--max-batch",
            "3",
            "--max-queue-delay-us",
            "4",
            "--max-queue",
            "5",
            "--max-queue-burst",
            "6",
            "--burst-cooldown-ms",
            "7",
            "--max-queue-wait-ms",
            "8",
            "--idle-spin-us",
            "31",
            "--threads",
            "9",
            "--instances",
            "3",
            "--http-threads",
            "10",
            "--compute-nice",
            "11",
            "--http-slice-us",
            "12",
            "--tables",
            "mmap",
            "--keep-reload-memory",
            "--default-deadline-ms",
            "13",
            "--max-body-bytes",
            "14",
            "--body-timeout-ms",
            "15",
            "--watch-interval-ms",
            "16",
            "--drain-timeout-ms",
            "17",
            "--reload-timeout-ms",
            "18",
            "--max-connections",
            "19",
            "--header-timeout-ms",
            "20",
            "--idle-timeout-ms",
            "21",
            "--write-timeout-ms",
            "22",
            "--max-body-memory-bytes",
            "23",
            "--allow-client-shm",
        ])
        .unwrap();
        let want = ServeConfig {
            name: Some("n".into()),
            addr: "0.0.0.0:1".into(),
            queue: QueueConfig {
                max_batch: 3,
                max_queue_delay_us: 4,
                max_queue: 5,
                max_queue_burst: 6,
                burst_cooldown_ms: 7,
                max_queue_wait_ms: 8,
                idle_spin_us: 31,
            },
            threads: 9,
            instances: Some(3),
            http_threads: 10,
            compute_nice: 11,
            http_slice_us: 12,
            tables: TableMode::Mmap,
            keep_reload_memory: true,
            default_deadline_ms: 13,
            max_body_bytes: 14,
            body_timeout_ms: 15,
            watch_interval_ms: 16,
            drain_timeout_ms: 17,
            reload_timeout_ms: 18,
            max_connections: 19,
            header_timeout_ms: 20,
            idle_timeout_ms: 21,
            write_timeout_ms: 22,
            max_body_memory_bytes: 23,
            allow_client_shm: true,
            ..ServeConfig::new("m")
        };
        assert_eq!(got.redis, None);
        assert_eq!(got, want);
    }

    #[test]
    fn a_target_turns_the_scheduler_on_and_given_flags_pin_their_settings() {
        assert_eq!(parse(&["--model", "m"]).unwrap().control, None);
        let c = parse(&["--model", "m", "--target-p99-ms", "10"]).unwrap();
        assert_eq!(c.control, Some(ControlConfig::new(10.0)));
        let c = parse(&[
            "--model",
            "m",
            "--target-p99-ms",
            "25",
            "--target-percentile",
            "99.9",
            "--max-batch",
            "128",
            "--instances",
            "1",
        ])
        .unwrap();
        let want = ControlConfig {
            percentile: 99.9,
            pin_instances: Some(1),
            pin_max_batch: Some(128),
            ..ControlConfig::new(25.0)
        };
        assert_eq!(c.control, Some(want));
        assert_eq!(c.queue.max_batch, 128);
        assert!(
            parse(&["--model", "m", "--target-percentile", "99"]).is_err(),
            "a percentile without a target"
        );
    }

    #[test]
    fn values_are_checked_as_they_are_parsed() {
        assert!(parse(&["--model", "m", "--compute-nice", "20"]).is_err());
        assert!(parse(&["--model", "m", "--compute-nice", "-1"]).is_err());
        let e = parse(&["--model", "m", "--tables", "disk"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("`disk`: expected mmap, ram or redis://"),
            "{e}"
        );
    }
}
