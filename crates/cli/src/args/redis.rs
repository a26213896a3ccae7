//! The Redis Cluster tier's flags: `dlrs push`'s, and those of `predict`, `bench` and
//! `serve` with `--tables redis://...`, converted into [`dlrs_redis`]'s options.

use std::path::PathBuf;
use std::time::Duration;

use dlrs_model::TableMode;
use dlrs_redis::{OnMiss, PushOptions, TierOptions};

/// Where a model's tables are read from: `mmap`, `ram`, or `redis://HOST:PORT[,...]`.
#[derive(Clone, Debug, PartialEq)]
pub enum Tables {
    Local(TableMode),
    Redis(Vec<String>),
}

impl Tables {
    /// How the model file's tables are held: a Redis model maps the file (header and MLPs
    /// only are read).
    pub fn mode(&self) -> TableMode {
        match self {
            Tables::Local(m) => *m,
            Tables::Redis(_) => TableMode::Mmap,
        }
    }
}

pub(crate) fn parse_tables(s: &str) -> Result<Tables, String> {
    if s.starts_with("redis://") {
        return dlrs_redis::parse_nodes(s)
            .map(Tables::Redis)
            .map_err(|e| e.to_string());
    }
    TableMode::parse(s)
        .map(Tables::Local)
        .ok_or_else(|| format!("`{s}`: expected mmap, ram or redis://HOST:PORT[,HOST:PORT...]"))
}

fn parse_on_miss(s: &str) -> Result<OnMiss, String> {
    OnMiss::parse(s).ok_or_else(|| format!("`{s}`: expected error or zero"))
}

/// How rows are read from Redis (with `--tables redis://...`).
#[derive(clap::Args, Debug, Clone)]
pub struct RedisArgs {
    /// namespace of the tables in Redis (with --tables redis://...; `dlrs push --namespace`)
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// bytes of the local cache of rows fetched from Redis (e.g. 64M, 2G; 0: none)
    #[arg(long, default_value = "256M", value_parser = crate::bench::parse_bytes)]
    pub redis_cache: usize,
    /// staleness bound of a cached row, in milliseconds: older rows are fetched again
    #[arg(long, default_value_t = 60_000)]
    pub cache_ttl_ms: u64,
    /// a row Redis cannot deliver in time: error (the batch fails; 503 from a server) or
    /// zero (a zero row is pooled in its place, counted in the tier's zero_rows)
    #[arg(long, default_value = "error", value_parser = parse_on_miss)]
    pub on_miss: OnMiss,
    /// deadline of one batch's fetch from Redis, in milliseconds, retries included
    #[arg(long, default_value_t = 200)]
    pub redis_timeout_ms: u64,
    /// most retries of a Redis command (redirections included) within the deadline
    #[arg(long, default_value_t = 2)]
    pub redis_retries: u32,
}

impl RedisArgs {
    pub fn options(&self, nodes: Vec<String>) -> TierOptions {
        TierOptions {
            nodes,
            namespace: self.namespace.clone(),
            timeout: Duration::from_millis(self.redis_timeout_ms),
            retries: self.redis_retries,
            cache_bytes: self.redis_cache,
            cache_ttl: Duration::from_millis(self.cache_ttl_ms),
            on_miss: self.on_miss,
        }
    }
}

/// Options of `dlrs push`.
#[derive(clap::Args, Debug, Clone)]
pub struct PushArgs {
    /// model directory (config.json + model.safetensors with a checksum manifest)
    #[arg(long)]
    pub model: PathBuf,
    /// nodes of the Redis Cluster: redis://HOST:PORT[,HOST:PORT...] (any of them will do)
    #[arg(long)]
    pub redis: String,
    /// namespace of the tables (servers name the same with --namespace)
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// partitions per table, each one Redis hash under its own hash tag (one node)
    #[arg(long, default_value_t = 16)]
    pub partitions: usize,
    /// row bytes read and sent at a time (bounds the memory of the push)
    #[arg(long, default_value = "8M", value_parser = crate::bench::parse_bytes)]
    pub window_bytes: usize,
    /// deadline of one window's writes, in milliseconds
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// retries of a window whose writes failed (then the push stops; run it again to resume)
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
}

impl PushArgs {
    pub fn options(&self) -> Result<PushOptions, dlrs_redis::TierError> {
        Ok(PushOptions {
            namespace: self.namespace.clone(),
            partitions: self.partitions,
            window_bytes: self.window_bytes,
            timeout: Duration::from_millis(self.timeout_ms),
            retries: self.retries,
            ..PushOptions::new(dlrs_redis::parse_nodes(&self.redis)?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_parse_as_a_mode_or_redis_nodes() {
        assert_eq!(parse_tables("ram").unwrap(), Tables::Local(TableMode::Ram));
        assert_eq!(
            parse_tables("redis://127.0.0.1:7000,127.0.0.1:7001").unwrap(),
            Tables::Redis(vec![
                "redis://127.0.0.1:7000".into(),
                "redis://127.0.0.1:7001".into()
            ])
        );
        assert!(parse_tables("disk").unwrap_err().contains("redis://"));
        assert!(parse_tables("redis://nope").is_err());
    }

    #[test]
    fn the_flags_defaults_are_the_librarys() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            r: RedisArgs,
        }
        let a = Cli::try_parse_from(["x"]).unwrap().r;
        assert_eq!(a.options(vec![]), TierOptions::new(vec![]));
    }
}
