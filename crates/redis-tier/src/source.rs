//! [`RedisTables`]: a model's tables read from a Redis Cluster, behind the local row cache.
//!
//! Per batch ([`RemoteTables::prepare_all`], every table at once):
//!
//! 1. each table's ids are deduplicated; each distinct row gets a slot in the table's
//!    [`Staging`], and `staging.slots` maps every id of the batch to its slot;
//! 2. fresh rows in the cache are copied into their slots;
//! 3. the misses of all tables are grouped by partition, one `HMGET` per partition, all sent
//!    at once: the cluster client multiplexes them on one connection per node, so a batch
//!    costs one round trip per node, in parallel over the nodes;
//! 4. each value's tag is checked against the pushed tables' digest, the table and the row
//!    id (a value of another push, another row or with a flipped bit is never served), the
//!    row is staged and cached.
//!
//! Pooling then runs the table kernel ([`dlrs_kernels::gather::bag_sum`]) over the staged
//! rows with the slots as row indices: the same kernel over the same bytes in the same
//! order as a local table, so the results are bit for bit the local ones.
//!
//! A partition that fails (node down, slow, failing over; the client's bounded retries
//! and the deadline spent) fails the batch with [`RowError::Unavailable`], or with
//! [`OnMiss::Zero`] stages zero rows for its ids, counted in `zero_rows`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use dlrs_kernels::gather::{Bags, Pooled, Rows, bag_sum};
use dlrs_model::tables::{PoolScratch, RemoteTables, RowError, RowSource, Staging, TableShape};
use dlrs_model::{DlrmConfig, Model, TableMode};
use futures_util::future::join_all;
use redis::AsyncCommands;

use crate::cache::{IntBuild, RowLru};
use crate::conn::Conn;
use crate::error::TierError;
use crate::layout::{
    Keys, LAYOUT, VersionRecord, decode, digest_seed, field, partition_of, table_records,
    tables_digest,
};

/// The tier's name in errors and metrics.
pub const TIER: &str = "redis";

/// What a batch does with a row Redis cannot deliver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnMiss {
    /// fail the batch (a server answers 503 naming the tier)
    #[default]
    Error,
    /// pool a zero row in its place, counted in `zero_rows`
    Zero,
}

impl OnMiss {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "error" => Some(OnMiss::Error),
            "zero" => Some(OnMiss::Zero),
            _ => None,
        }
    }
}

/// How a model reads its tables from Redis.
#[derive(Clone, Debug, PartialEq)]
pub struct TierOptions {
    /// `redis://HOST:PORT` of some nodes of the cluster (the client finds the others)
    pub nodes: Vec<String>,
    /// `--namespace`
    pub namespace: String,
    /// `--redis-timeout-ms`: the deadline of one batch's fetch (retries included)
    pub timeout: Duration,
    /// `--redis-retries`: most retries of a command (redirections included)
    pub retries: u32,
    /// `--row-cache`: bytes of the local row cache (0: none)
    pub cache_bytes: usize,
    /// `--cache-ttl-ms`: the staleness bound of cached rows
    pub cache_ttl: Duration,
    /// `--on-miss`
    pub on_miss: OnMiss,
}

impl TierOptions {
    /// Defaults for nodes `nodes`: namespace `default`, 200 ms per batch, 2 retries, a
    /// 256 MiB cache whose rows are at most 60 s old, failing batches on a miss.
    pub fn new(nodes: Vec<String>) -> Self {
        TierOptions {
            nodes,
            namespace: "default".into(),
            timeout: Duration::from_millis(200),
            retries: 2,
            cache_bytes: 256 << 20,
            cache_ttl: Duration::from_secs(60),
            on_miss: OnMiss::Error,
        }
    }
}

/// Counters since the tier was connected.
#[derive(Default, Debug)]
struct Counters {
    /// lookups of distinct rows per batch (duplicates within a batch counted once)
    rows: AtomicU64,
    cache_hits: AtomicU64,
    fetched: AtomicU64,
    /// batches that fetched anything, and the HMGETs they sent
    fetches: AtomicU64,
    commands: AtomicU64,
    fetch_micros: AtomicU64,
    failed_commands: AtomicU64,
    failed_batches: AtomicU64,
    zero_rows: AtomicU64,
}

struct Table {
    shape: TableShape,
    stride: usize,
}

struct Inner {
    conn: Conn,
    keys: Keys,
    digest: String,
    seed: u64,
    partitions: usize,
    tables: Vec<Table>,
    cache: RowLru,
    opts: TierOptions,
    counters: Counters,
}

/// The row source of one table (see [`RedisTables`]).
pub struct RedisTable {
    inner: Arc<Inner>,
    t: usize,
}

/// A model's tables in a Redis Cluster, as pushed by [`crate::push`]: set as
/// [`Model::remote`], the forward reads every table through it.
pub struct RedisTables {
    inner: Arc<Inner>,
    tables: Vec<RedisTable>,
}

/// Loads the model directory `dir` (config and MLPs; the tables file is mapped, never read)
/// and attaches the tables pushed to Redis under `opts.namespace`. Fails, naming what to
/// do, when the namespace holds no complete push of the directory's tables.
pub fn load_model(dir: &Path, opts: &TierOptions) -> Result<Model, TierError> {
    let mut model = Model::load_with(dir, TableMode::Mmap)?;
    let tables = RedisTables::connect(dir, &model.config, opts)?;
    model.remote = Some(Arc::new(tables));
    Ok(model)
}

impl RedisTables {
    /// Connects to the cluster and checks that it holds a complete push of the tables of
    /// the model in `dir` (its digest's version record, written last by a push).
    pub fn connect(dir: &Path, config: &DlrmConfig, opts: &TierOptions) -> Result<Self, TierError> {
        if opts.timeout.is_zero() {
            return Err(TierError::Flag {
                flag: "--redis-timeout-ms",
                msg: "must be positive".into(),
            });
        }
        let keys = Keys::new(&opts.namespace)?;
        let digest = tables_digest(dir, config)?;
        let conn = Conn::connect(&opts.nodes, opts.timeout, opts.retries)?;
        let record = read_record(&conn, &keys, &digest, opts.timeout)?;
        let Some(record) = record else {
            let cur = read_current(&conn, &keys, opts.timeout)?;
            return Err(TierError::NotPushed {
                ns: keys.namespace().to_string(),
                digest,
                current: match cur {
                    Some(c) => format!(", its last push holds tables {c}"),
                    None => ", it holds no model".into(),
                },
            });
        };
        let mismatch = |msg: String| TierError::Mismatch {
            ns: keys.namespace().to_string(),
            digest: digest.clone(),
            msg,
        };
        if record.layout != LAYOUT || record.digest != digest || record.partitions == 0 {
            return Err(mismatch(format!(
                "has layout {}, digest {}, {} partitions (this dlrs reads layout {LAYOUT})",
                record.layout, record.digest, record.partitions
            )));
        }
        if record.tables != table_records(config) {
            return Err(mismatch(
                "lists other table shapes or row formats than the model's config.json".into(),
            ));
        }
        let tables: Vec<Table> = record
            .tables
            .iter()
            .zip(&config.table_formats)
            .map(|(r, &format)| Table {
                shape: TableShape {
                    rows: r.rows,
                    dim: r.dim,
                    format,
                },
                stride: r.stride,
            })
            .collect();
        let max_stride = tables.iter().map(|t| t.stride).max().unwrap_or(0);
        let inner = Arc::new(Inner {
            conn,
            seed: digest_seed(&digest),
            digest,
            keys,
            partitions: record.partitions,
            cache: RowLru::new(opts.cache_bytes, max_stride, opts.cache_ttl),
            tables,
            opts: opts.clone(),
            counters: Counters::default(),
        });
        tracing::info!(
            "redis tier: namespace `{}`, tables {} ({} partitions each) on {}; row cache {} rows",
            inner.keys.namespace(),
            inner.digest,
            inner.partitions,
            inner.conn.nodes.join(","),
            inner.cache.capacity()
        );
        let tables = (0..inner.tables.len())
            .map(|t| RedisTable {
                inner: Arc::clone(&inner),
                t,
            })
            .collect();
        Ok(RedisTables { inner, tables })
    }

    /// The digest of the tables served.
    pub fn digest(&self) -> &str {
        &self.inner.digest
    }
}

pub(crate) fn read_record(
    conn: &Conn,
    keys: &Keys,
    digest: &str,
    timeout: Duration,
) -> Result<Option<VersionRecord>, TierError> {
    let key = keys.model(digest);
    let mut c = conn.conn.clone();
    let what = format!("reading {key}");
    let text: Option<String> = conn.run(timeout * 2, what.clone(), async move {
        c.get(&key).await.map_err(|e| TierError::redis(what, e))
    })?;
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| TierError::Mismatch {
            ns: keys.namespace().to_string(),
            digest: digest.to_string(),
            msg: format!("is not a version record this dlrs reads: {e}"),
        })
    })
    .transpose()
}

pub(crate) fn read_current(
    conn: &Conn,
    keys: &Keys,
    timeout: Duration,
) -> Result<Option<String>, TierError> {
    let key = keys.current();
    let mut c = conn.conn.clone();
    let what = format!("reading {key}");
    conn.run(timeout * 2, what.clone(), async move {
        c.get(&key).await.map_err(|e| TierError::redis(what, e))
    })
}

/// A missing row: `(job, slot, id)`.
type Miss = (usize, u32, u32);
/// One table's part of a batch: `(table, ids, staging)`.
type Job<'a> = (usize, &'a [u32], &'a mut Staging);
/// An HMGET's values in its rows' order, or why it failed.
type Fetched = Result<Vec<Option<Vec<u8>>>, String>;

/// One HMGET: a partition's missing rows.
struct Request {
    key: String,
    rows: Vec<Miss>,
}

impl Inner {
    fn prepare(&self, jobs: &mut [Job<'_>]) -> Result<(), (usize, RowError)> {
        let mut misses: HashMap<(usize, usize), Vec<Miss>> = HashMap::new();
        let mut distinct = 0u64;
        let mut hits = 0u64;
        for (j, (t, ids, st)) in jobs.iter_mut().enumerate() {
            let t = *t;
            let stride = self.tables[t].stride;
            st.ids.clear();
            st.slots.clear();
            st.rows.clear();
            let mut seen: HashMap<u32, u32, IntBuild> =
                HashMap::with_capacity_and_hasher(ids.len(), IntBuild::default());
            for &id in ids.iter() {
                let next = st.ids.len() as u32;
                let slot = *seen.entry(id).or_insert_with(|| {
                    st.ids.push(id);
                    next
                });
                st.slots.push(slot);
            }
            st.rows.resize(st.ids.len() * stride, 0);
            distinct += st.ids.len() as u64;
            for (slot, &id) in st.ids.iter().enumerate() {
                let out = &mut st.rows[slot * stride..(slot + 1) * stride];
                if self.cache.get(t, id, out) {
                    hits += 1;
                } else {
                    misses
                        .entry((t, partition_of(id, self.partitions)))
                        .or_default()
                        .push((j, slot as u32, id));
                }
            }
        }
        let c = &self.counters;
        c.rows.fetch_add(distinct, Relaxed);
        c.cache_hits.fetch_add(hits, Relaxed);
        if misses.is_empty() {
            return Ok(());
        }
        let requests: Vec<(usize, Request)> = misses
            .into_iter()
            .map(|((t, p), rows)| {
                (
                    t,
                    Request {
                        key: self.keys.partition(&self.digest, t, p),
                        rows,
                    },
                )
            })
            .collect();
        c.fetches.fetch_add(1, Relaxed);
        c.commands.fetch_add(requests.len() as u64, Relaxed);
        let t0 = Instant::now();
        let results = self.fetch(&requests);
        c.fetch_micros
            .fetch_add(t0.elapsed().as_micros() as u64, Relaxed);
        let mut first_err: Option<(usize, String)> = None;
        let mut zero = 0u64;
        let mut fetched = 0u64;
        for ((t, req), res) in requests.iter().zip(results) {
            let t = *t;
            let stride = self.tables[t].stride;
            match res {
                Ok(values) => {
                    for (&(j, slot, id), v) in req.rows.iter().zip(values) {
                        let out = &mut jobs[j].2.rows[slot as usize * stride..][..stride];
                        match v
                            .as_deref()
                            .and_then(|v| decode(self.seed, t, id, stride, v))
                        {
                            Some(row) => {
                                out.copy_from_slice(row);
                                self.cache.insert(t, id, row);
                                fetched += 1;
                            }
                            None => {
                                let why = if v.is_none() {
                                    "is missing (keys deleted, or a node lost its data)"
                                } else {
                                    "does not match its tag (another push's or a damaged value)"
                                };
                                first_err.get_or_insert_with(|| {
                                    (t, format!("row {id} in {} {why}", req.key))
                                });
                                out.fill(0);
                                zero += 1;
                            }
                        }
                    }
                }
                Err(msg) => {
                    c.failed_commands.fetch_add(1, Relaxed);
                    first_err.get_or_insert((t, msg));
                    for &(j, slot, _) in &req.rows {
                        jobs[j].2.rows[slot as usize * stride..][..stride].fill(0);
                    }
                    zero += req.rows.len() as u64;
                }
            }
        }
        c.fetched.fetch_add(fetched, Relaxed);
        match first_err {
            None => Ok(()),
            Some(_) if self.opts.on_miss == OnMiss::Zero => {
                c.zero_rows.fetch_add(zero, Relaxed);
                Ok(())
            }
            Some((t, msg)) => {
                c.failed_batches.fetch_add(1, Relaxed);
                Err((t, RowError::Unavailable { tier: TIER, msg }))
            }
        }
    }

    /// Sends every request at once and waits for all of them, each bounded by the
    /// deadline: per request, the values in its rows' order, or why it failed.
    fn fetch(&self, requests: &[(usize, Request)]) -> Vec<Fetched> {
        let deadline = self.opts.timeout;
        let cmds: Vec<(String, redis::Cmd)> = requests
            .iter()
            .map(|(_, r)| {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(&r.key);
                for &(_, _, id) in &r.rows {
                    cmd.arg(&field(id)[..]);
                }
                (r.key.clone(), cmd)
            })
            .collect();
        let n = cmds.len();
        let conn = self.conn.conn.clone();
        let fut = async move {
            let sends = cmds.into_iter().map(|(key, cmd)| {
                let mut c = conn.clone();
                async move {
                    match tokio::time::timeout(
                        deadline,
                        cmd.query_async::<Vec<Option<Vec<u8>>>>(&mut c),
                    )
                    .await
                    {
                        Ok(Ok(v)) => Ok(v),
                        Ok(Err(e)) => Err(format!("HMGET {key}: {e}")),
                        Err(_) => Err(format!(
                            "HMGET {key}: no answer within {} ms",
                            deadline.as_millis()
                        )),
                    }
                }
            });
            Ok(join_all(sends).await)
        };
        // the futures bound themselves by the deadline; the margin only covers scheduling
        match self
            .conn
            .run(deadline + Duration::from_millis(50), "fetching rows", fut)
        {
            Ok(v) => v
                .into_iter()
                .zip(requests)
                .map(|(r, (_, req))| {
                    r.and_then(|v| {
                        if v.len() == req.rows.len() {
                            Ok(v)
                        } else {
                            Err(format!(
                                "HMGET {}: {} values for {} fields",
                                req.key,
                                v.len(),
                                req.rows.len()
                            ))
                        }
                    })
                })
                .collect(),
            Err(e) => vec![Err(e.to_string()); n],
        }
    }
}

impl RowSource for RedisTable {
    fn shape(&self) -> TableShape {
        self.inner.tables[self.t].shape
    }

    fn prepare(&self, ids: &[u32], staging: &mut Staging) -> Result<(), RowError> {
        self.inner
            .prepare(&mut [(self.t, ids, staging)])
            .map_err(|(_, e)| e)
    }

    fn pool(&self, bags: Bags, out: Pooled, staging: &Staging, _: &mut PoolScratch) {
        let tb = &self.inner.tables[self.t];
        assert_eq!(
            bags.ids.len(),
            staging.slots.len(),
            "a Redis table pools the ids it prepared (not behind a row cache)"
        );
        let rows = Rows::new(tb.shape.format, &staging.rows, tb.stride, tb.shape.dim);
        bag_sum(rows, Bags::new(bags.offsets, &staging.slots), out)
    }
}

impl RemoteTables for RedisTables {
    fn tier(&self) -> &'static str {
        TIER
    }

    fn table(&self, t: usize) -> &dyn RowSource {
        &self.tables[t]
    }

    fn prepare_all(
        &self,
        ids: &[&[u32]],
        staging: &mut [Staging],
    ) -> Result<(), (usize, RowError)> {
        let mut jobs: Vec<Job<'_>> = ids
            .iter()
            .zip(staging.iter_mut())
            .enumerate()
            .map(|(t, (ids, st))| (t, *ids, st))
            .collect();
        self.inner.prepare(&mut jobs)
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.inner.counters;
        vec![
            ("row_lookups", c.rows.load(Relaxed)),
            ("cache_hits", c.cache_hits.load(Relaxed)),
            ("rows_fetched", c.fetched.load(Relaxed)),
            ("fetches", c.fetches.load(Relaxed)),
            ("commands", c.commands.load(Relaxed)),
            ("fetch_micros", c.fetch_micros.load(Relaxed)),
            ("failed_commands", c.failed_commands.load(Relaxed)),
            ("failed_batches", c.failed_batches.load(Relaxed)),
            ("zero_rows", c.zero_rows.load(Relaxed)),
        ]
    }
}
