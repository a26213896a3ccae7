//! `dlrs loadgen`'s and `dlrs twin`'s flags, converted into [`dlrs_loadgen::LoadgenConfig`]
//! and [`dlrs_loadgen::TwinConfig`].

use std::path::PathBuf;

use dlrs_loadgen::dist::QuerySize;
use dlrs_loadgen::payload::Protocol;
use dlrs_loadgen::shm::SharedMemory;
use dlrs_loadgen::{LoadConfig, LoadgenConfig, TwinConfig, VersusConfig};
use dlrs_model::synth::IdDist;

use super::serve::QueueArgs;

fn parse_dist(s: &str) -> Result<IdDist, String> {
    IdDist::parse(s).map_err(|e| e.to_string())
}

/// The load's options, shared by `dlrs loadgen` and `dlrs twin`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Poisson arrival rate, queries per second (with --target-p99-ms: the first rate tried)
    #[arg(long, default_value_t = 100.0)]
    pub qps: f64,
    /// seconds of arrivals (with --target-p99-ms: of each step)
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// samples per query: fixed:N, normal:MU,SIGMA, lognormal:MU,SIGMA (of ln size) or
    /// file:PATH (`N` or `N WEIGHT` per line); capped at 1024
    #[arg(long, default_value = "normal:165,16", value_parser = QuerySize::parse)]
    pub query_size: QuerySize,
    /// how ids are drawn over a table's rows: uniform or zipf:S
    #[arg(long, default_value = "uniform", value_parser = parse_dist)]
    pub dist: IdDist,
    /// ids per bag (every sample, every table)
    #[arg(long, default_value_t = 1)]
    pub ids_per_table: usize,
    /// search for the highest QPS whose p99 stays at or under this many milliseconds
    #[arg(long)]
    pub target_p99_ms: Option<f64>,
    /// most measurements of a search
    #[arg(long, default_value_t = 12)]
    pub max_steps: usize,
    /// share of a search step's queries that may fail (e.g. a few 503s when a Poisson burst
    /// overflows --max-queue) with the step still meeting the target; the p99 is that of the
    /// answered queries. 0: any failure is a miss
    #[arg(long, default_value_t = 0.0)]
    pub max_error_rate: f64,
    /// print exactly one JSON object on stdout
    #[arg(long)]
    pub json: bool,
    /// draw the search's curve to FILE.svg or FILE.png (needs --target-p99-ms)
    #[arg(long, requires = "target_p99_ms")]
    pub plot: Option<PathBuf>,
    /// seed of the arrivals, query sizes and samples
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// seconds of load at --qps before measuring, not reported (0: none)
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// longest wait for answers after the last arrival, seconds; then they time out
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// distinct queries generated before the run (query i is pool entry i mod pool)
    #[arg(long, default_value_t = 2048)]
    pub pool: usize,
    /// a load step, AT:FOR:FACTOR: the rate is FACTOR times --qps from AT seconds for FOR
    /// seconds, then falls back (e.g. 20:30:2 in a --duration 80 run); the report then gives
    /// each second's p99 (and, in the twin with a scheduler, its settings)
    #[arg(long, value_parser = dlrs_loadgen::dist::LoadStep::parse)]
    pub step: Option<dlrs_loadgen::dist::LoadStep>,
    /// time slice the threads that send queries and take answers ask the scheduler for, in
    /// microseconds (Linux 6.12+; 0, the default: the kernel's), as serve's --http-slice-us:
    /// on cores shared with the server's compute they then run when they wake instead of
    /// after a batch's slice, so less of the latency measured is the client's own wait
    #[arg(long, default_value_t = 0)]
    pub slice_us: u64,
}

/// Options of `dlrs loadgen`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadgenArgs {
    /// the server, http://HOST:PORT (e.g. http://127.0.0.1:8000)
    #[arg(long)]
    pub url: String,
    /// the model's name on the server
    #[arg(long)]
    pub model: String,
    /// the served model's directory; its config.json gives the tables' row counts when the
    /// server's metadata does not (dlrs serve publishes them as parameters.table_rows)
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// v2: KServe v2 infer (dense/lengths/indices); v1: /v1/models/{name}/predict
    #[arg(long, default_value = "v2", value_parser = Protocol::parse)]
    pub protocol: Protocol,
    /// send v2 tensors with the binary tensor data extension instead of JSON
    #[arg(long)]
    pub binary: bool,
    /// none: tensors in the request bodies; system: the pool's tensors in one POSIX shared
    /// memory object registered with the server once, each request naming its offsets
    /// (Triton's system shared memory extension, as perf_analyzer's --shared-memory system;
    /// the server runs on this machine with --allow-client-shm). Needs --protocol v2
    #[arg(long, default_value = "none", value_parser = SharedMemory::parse)]
    pub shared_memory: SharedMemory,
    /// keep-alive connections (a query waits while all are busy; the wait counts)
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// Options of `dlrs twin`.
#[derive(clap::Args, Debug, Clone)]
pub struct TwinArgs {
    /// model directory (config.json + model.safetensors), tables loaded into RAM
    #[arg(long)]
    pub model: PathBuf,
    /// threads of the forward pass, over all instances
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// compute instances, as `dlrs serve --instances` (default: one per thread)
    #[arg(long)]
    pub instances: Option<usize>,
    /// batching and admission, with `dlrs serve`'s options and defaults
    #[command(flatten)]
    pub queue: QueueArgs,
    /// a query not computed this many milliseconds after it was queued gets 504, as
    /// `dlrs serve --default-deadline-ms`
    #[arg(long, default_value_t = 1000)]
    pub deadline_ms: u64,
    /// with --target-p99-ms, search with the batching flags' settings as given (or their
    /// defaults) instead of under `dlrs serve --target-p99-ms`'s scheduler, which the
    /// twin otherwise runs with the same target (flags given still pin their setting)
    #[arg(long)]
    pub static_settings: bool,
    #[command(flatten)]
    pub versus: VersusArgs,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// `dlrs twin --versus-url`: the same load over HTTP against a running `dlrs serve`, in turn
/// with the twin's, so that both figures come from the same stretch of time.
#[derive(clap::Args, Debug, Clone)]
pub struct VersusArgs {
    /// also load a `dlrs serve` at this URL (started with the same batching options), a
    /// step of each in turn (HTTP, twin; twin, HTTP; ...), each step after --warmup seconds
    /// at its rate, and report HTTP / twin: a machine whose speed drifts then slows both
    /// searches alike instead of whichever ran during the slow minutes
    #[arg(long)]
    pub versus_url: Option<String>,
    /// the model's name on that server
    #[arg(long, requires = "versus_url")]
    pub versus_model: Option<String>,
    /// send the HTTP load's tensors as `dlrs loadgen --binary` does
    #[arg(long, requires = "versus_url")]
    pub versus_binary: bool,
    /// put the HTTP load's tensors in shared memory, as `dlrs loadgen --shared-memory`
    #[arg(long, default_value = "none", value_parser = SharedMemory::parse, requires = "versus_url")]
    pub versus_shared_memory: SharedMemory,
    /// keep-alive connections of the HTTP load, as `dlrs loadgen --connections`
    #[arg(long, default_value_t = 64, requires = "versus_url")]
    pub versus_connections: usize,
}

impl From<LoadArgs> for LoadConfig {
    fn from(a: LoadArgs) -> Self {
        LoadConfig {
            qps: a.qps,
            duration: a.duration,
            query_size: a.query_size,
            dist: a.dist,
            ids_per_table: a.ids_per_table,
            target_p99_ms: a.target_p99_ms,
            max_steps: a.max_steps,
            max_error_rate: a.max_error_rate,
            json: a.json,
            plot: a.plot,
            seed: a.seed,
            warmup: a.warmup,
            drain: a.drain,
            pool: a.pool,
            step: a.step,
            slice_us: a.slice_us,
        }
    }
}

impl From<LoadgenArgs> for LoadgenConfig {
    fn from(a: LoadgenArgs) -> Self {
        LoadgenConfig {
            model_dir: a.model_dir,
            protocol: a.protocol,
            binary: a.binary,
            shared_memory: a.shared_memory,
            connections: a.connections,
            load: a.load.into(),
            ..LoadgenConfig::new(a.url, a.model)
        }
    }
}

impl From<VersusArgs> for VersusConfig {
    fn from(a: VersusArgs) -> Self {
        VersusConfig {
            url: a.versus_url,
            model: a.versus_model,
            binary: a.versus_binary,
            shared_memory: a.versus_shared_memory,
            connections: a.versus_connections,
        }
    }
}

impl From<TwinArgs> for TwinConfig {
    fn from(a: TwinArgs) -> Self {
        let control = match a.load.target_p99_ms {
            Some(t) if !a.static_settings => Some(a.queue.control(t, 99.0, a.instances)),
            _ => None,
        };
        TwinConfig {
            threads: a.threads,
            instances: a.instances,
            control,
            queue: a.queue.into(),
            deadline_ms: a.deadline_ms,
            versus: a.versus.into(),
            load: a.load.into(),
            ..TwinConfig::new(a.model)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use dlrs_serve::QueueConfig;

    use super::*;

    #[derive(Parser)]
    struct LoadgenCli {
        #[command(flatten)]
        args: LoadgenArgs,
    }

    #[derive(Parser)]
    struct TwinCli {
        #[command(flatten)]
        args: TwinArgs,
    }

    /// `dlrs loadgen ARGS...` as clap parses and converts it.
    fn loadgen(argv: &[&str]) -> Result<LoadgenConfig, clap::Error> {
        LoadgenCli::try_parse_from(std::iter::once("loadgen").chain(argv.iter().copied()))
            .map(|c| c.args.into())
    }

    /// `dlrs twin ARGS...` as clap parses and converts it.
    fn twin(argv: &[&str]) -> Result<TwinConfig, clap::Error> {
        TwinCli::try_parse_from(std::iter::once("twin").chain(argv.iter().copied()))
            .map(|c| c.args.into())
    }

    #[test]
    fn the_flags_defaults_are_the_librarys() {
        assert_eq!(
            loadgen(&["--url", "http://127.0.0.1:1", "--model", "m"]).unwrap(),
            LoadgenConfig::new("http://127.0.0.1:1", "m")
        );
        assert_eq!(twin(&["--model", "/x"]).unwrap(), TwinConfig::new("/x"));
        assert!(loadgen(&["--model", "m"]).is_err(), "--url is required");
        assert!(twin(&[]).is_err(), "--model is required");
    }

    #[test]
    fn bad_values_and_lone_flags_are_refused_as_they_are_parsed() {
        let base = ["--url", "u", "--model", "m"];
        let with = |more: &[&'static str]| {
            let mut v = base.to_vec();
            v.extend(more);
            loadgen(&v)
        };
        assert!(
            with(&["--plot", "x.svg"]).is_err(),
            "--plot needs --target-p99-ms"
        );
        assert!(with(&["--plot", "x.svg", "--target-p99-ms", "5"]).is_ok());
        assert!(with(&["--query-size", "gamma:1"]).is_err());
        assert!(with(&["--dist", "zipf:0"]).is_err());
        assert!(with(&["--protocol", "v3"]).is_err());
        assert!(with(&["--shared-memory", "cuda"]).is_err());
        let e = with(&["--query-size", "fixed:0"]).unwrap_err().to_string();
        assert!(
            e.contains("--query-size fixed:0: a query has at least 1 sample"),
            "{e}"
        );
        for lone in [
            &["--versus-model", "m"][..],
            &["--versus-binary"],
            &["--versus-shared-memory", "system"],
            &["--versus-connections", "2"],
        ] {
            let mut v = vec!["--model", "/x"];
            v.extend(lone);
            assert!(twin(&v).is_err(), "{lone:?} needs --versus-url");
        }
    }

    #[test]
    fn every_flag_sets_its_own_field() {
        let load = [
            "--step",
            "2:3:1.5",
            "--qps",
            "7",
            "--duration",
            "3",
            "--query-size",
            "fixed:9",
            "--dist",
            "zipf:1.5",
            "--ids-per-table",
            "4",
            "--target-p99-ms",
            "12",
            "--max-steps",
            "5",
            "--max-error-rate",
            "0.02",
            "--json",
            "--plot",
            "c.svg",
            "--seed",
            "8",
            "--warmup",
            "0.5",
            "--drain",
            "2",
            "--pool",
            "16",
            "--slice-us",
            "100",
        ];
        let want_load = LoadConfig {
            qps: 7.0,
            duration: 3.0,
            query_size: QuerySize::Fixed(9),
            dist: IdDist::Zipf(1.5),
            ids_per_table: 4,
            target_p99_ms: Some(12.0),
            max_steps: 5,
            max_error_rate: 0.02,
            json: true,
            plot: Some("c.svg".into()),
            seed: 8,
            warmup: 0.5,
            drain: 2.0,
            pool: 16,
            step: Some(dlrs_loadgen::dist::LoadStep {
                at_s: 2.0,
                for_s: 3.0,
                factor: 1.5,
            }),
            slice_us: 100,
        };
        let mut argv = vec![
            "--url",
            "http://h:1",
            "--model",
            "m",
            "--model-dir",
            "/d",
            "--protocol",
            "v1",
            "--binary",
            "--shared-memory",
            "system",
            "--connections",
            "3",
        ];
        argv.extend(load);
        assert_eq!(
            loadgen(&argv).unwrap(),
            LoadgenConfig {
                url: "http://h:1".into(),
                model: "m".into(),
                model_dir: Some("/d".into()),
                protocol: Protocol::V1,
                binary: true,
                shared_memory: SharedMemory::System,
                connections: 3,
                load: want_load.clone(),
            }
        );
        let mut argv = vec![
            "--model",
            "/x",
            "--threads",
            "4",
            "--instances",
            "2",
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
            "--deadline-ms",
            "9",
            "--versus-url",
            "http://v:2",
            "--versus-model",
            "vm",
            "--versus-binary",
            "--versus-shared-memory",
            "system",
            "--versus-connections",
            "10",
        ];
        argv.extend(load);
        assert_eq!(
            twin(&argv).unwrap(),
            TwinConfig {
                model: "/x".into(),
                threads: 4,
                instances: Some(2),
                queue: QueueConfig {
                    max_batch: 3,
                    max_queue_delay_us: 4,
                    max_queue: 5,
                    max_queue_burst: 6,
                    burst_cooldown_ms: 7,
                    max_queue_wait_ms: 8,
                    idle_spin_us: 31,
                },
                // a target without --static-settings: the scheduler, every flag given pinned
                control: Some(dlrs_serve::ControlConfig {
                    pin_instances: Some(2),
                    pin_max_batch: Some(3),
                    pin_delay_us: Some(4),
                    pin_wait_ms: Some(8),
                    pin_spin_us: Some(31),
                    ..dlrs_serve::ControlConfig::new(12.0)
                }),
                deadline_ms: 9,
                versus: VersusConfig {
                    url: Some("http://v:2".into()),
                    model: Some("vm".into()),
                    binary: true,
                    shared_memory: SharedMemory::System,
                    connections: 10,
                },
                load: want_load,
            }
        );
        argv.push("--static-settings");
        assert_eq!(twin(&argv).unwrap().control, None);
    }
}
