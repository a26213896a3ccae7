//! `dlrs push`: a model's tables into a Redis Cluster, in their row formats.
//!
//! The tables are read from the mapped model file a window of rows at a time (each row
//! checked against the file's checksums on the way), cut by partition into one `HSET` per
//! partition, and the window's commands sent at once (pipelined per node by the cluster
//! client); memory stays at about two windows. After each window the rows written so far
//! are recorded in the push's progress hash, so an interrupted push resumes where it
//! stopped. The version record is written after the last row, then the namespace's
//! `current` pointer: until then no server accepts the tables (see [`crate::layout`]).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dlrs_model::{Model, TableMode};
use futures_util::future::join_all;
use redis::AsyncCommands;

use crate::conn::Conn;
use crate::error::TierError;
use crate::layout::{Keys, VersionRecord, digest_seed, encode, field, partition_of, tables_digest};
use crate::source::read_record;

/// How `dlrs push` writes.
#[derive(Clone, Debug, PartialEq)]
pub struct PushOptions {
    /// `redis://HOST:PORT` of some nodes of the cluster
    pub nodes: Vec<String>,
    /// `--namespace`
    pub namespace: String,
    /// `--partitions`: partitions per table (fixed for a push; a resumed push keeps its own)
    pub partitions: usize,
    /// `--window-bytes`: row bytes read and sent per window
    pub window_bytes: usize,
    /// `--timeout-ms`: the deadline of one window's commands
    pub timeout: Duration,
    /// `--retries`: most retries of a window whose commands failed
    pub retries: u32,
    /// stop (with an error) after this many windows: tests of an interrupted push
    #[doc(hidden)]
    pub stop_after_windows: Option<usize>,
}

impl PushOptions {
    /// Defaults for nodes `nodes`: namespace `default`, 16 partitions per table, 8 MiB
    /// windows, 30 s per window, 3 retries.
    pub fn new(nodes: Vec<String>) -> Self {
        PushOptions {
            nodes,
            namespace: "default".into(),
            partitions: 16,
            window_bytes: 8 << 20,
            timeout: Duration::from_secs(30),
            retries: 3,
            stop_after_windows: None,
        }
    }
}

/// What a push did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushReport {
    /// the tables' digest, their name in Redis
    pub digest: String,
    pub partitions: usize,
    /// rows and row bytes written by this run
    pub rows: u64,
    pub bytes: u64,
    /// rows an earlier, interrupted run had written (skipped)
    pub resumed_rows: u64,
    /// the tables were pushed completely already: nothing written but the pointer
    pub already: bool,
}

/// Pushes the tables of the model in `dir`; `progress(done, total)` in row bytes.
pub fn push(
    dir: &Path,
    opts: &PushOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<PushReport, TierError> {
    if opts.partitions == 0 || opts.partitions > 16384 {
        return Err(TierError::Flag {
            flag: "--partitions",
            msg: format!("{} is not within 1..=16384", opts.partitions),
        });
    }
    if opts.window_bytes == 0 || opts.timeout.is_zero() {
        return Err(TierError::Flag {
            flag: "--window-bytes/--timeout-ms",
            msg: "must be positive".into(),
        });
    }
    let keys = Keys::new(&opts.namespace)?;
    let model = Model::load_with(dir, TableMode::Mmap)?;
    let config = &model.config;
    let digest = tables_digest(dir, config)?;
    let seed = digest_seed(&digest);
    let conn = Conn::connect(&opts.nodes, opts.timeout, opts.retries)?;
    let total: u64 = model
        .weights
        .tables
        .iter()
        .map(|t| t.size_bytes() as u64)
        .sum();
    let all_rows: u64 = config.tables.iter().map(|&r| r as u64).sum();

    let set_current = || -> Result<(), TierError> {
        let (key, d) = (keys.current(), digest.clone());
        let mut c = conn.conn.clone();
        let what = format!("SET {key}");
        conn.run(opts.timeout, what.clone(), async move {
            c.set::<_, _, ()>(&key, &d)
                .await
                .map_err(|e| TierError::redis(what, e))
        })?;
        Ok(())
    };

    if let Some(rec) = read_record(&conn, &keys, &digest, opts.timeout)? {
        set_current()?;
        progress(total, total);
        return Ok(PushReport {
            digest,
            partitions: rec.partitions,
            rows: 0,
            bytes: 0,
            resumed_rows: all_rows,
            already: true,
        });
    }

    // the progress of an interrupted push of the same tables: partitions, rows per table
    let pkey = keys.progress(&digest);
    let done: Vec<(String, u64)> = {
        let (mut c, k) = (conn.conn.clone(), pkey.clone());
        let what = format!("HGETALL {pkey}");
        conn.run(opts.timeout, what.clone(), async move {
            c.hgetall(&k).await.map_err(|e| TierError::redis(what, e))
        })?
    };
    let get = |f: &str| done.iter().find(|(k, _)| k == f).map(|(_, v)| *v);
    let partitions = match get("partitions") {
        Some(p) if p as usize != opts.partitions => {
            tracing::warn!(
                "resuming a push of {p} partitions per table (--partitions {} ignored)",
                opts.partitions
            );
            p as usize
        }
        Some(p) => p as usize,
        None => {
            let (mut c, k, p) = (conn.conn.clone(), pkey.clone(), opts.partitions);
            let what = format!("HSET {pkey}");
            conn.run(opts.timeout, what.clone(), async move {
                c.hset::<_, _, _, ()>(&k, "partitions", p)
                    .await
                    .map_err(|e| TierError::redis(what, e))
            })?;
            opts.partitions
        }
    };

    let mut report = PushReport {
        digest: digest.clone(),
        partitions,
        rows: 0,
        bytes: 0,
        resumed_rows: 0,
        already: false,
    };
    let mut sent = 0u64;
    let mut windows = 0usize;
    let mut value = Vec::new();
    for (t, table) in model.weights.tables.iter().enumerate() {
        let (rows, stride) = (table.rows(), table.stride());
        let start = (get(&format!("t{t}")).unwrap_or(0) as usize).min(rows);
        report.resumed_rows += start as u64;
        sent += (start * stride) as u64;
        progress(sent, total);
        let window = (opts.window_bytes / stride).max(1);
        let mut r0 = start;
        while r0 < rows {
            if opts.stop_after_windows == Some(windows) {
                return Err(TierError::redis(
                    "push",
                    format!("stopped after {windows} windows (test hook)"),
                ));
            }
            let r1 = (r0 + window).min(rows);
            let ids: Vec<u32> = (r0 as u32..r1 as u32).collect();
            table.verify_rows(&ids).map_err(|shard| {
                TierError::Model(dlrs_model::ModelError::Corrupt {
                    path: dir.join(dlrs_model::WEIGHTS_FILE),
                    tensor: format!("emb_l.{t}.weight"),
                    msg: format!("shard {shard} does not match its checksum"),
                })
            })?;
            let bytes = table.bytes();
            let mut cmds: Vec<redis::Cmd> = (0..partitions)
                .map(|p| {
                    let mut c = redis::cmd("HSET");
                    c.arg(keys.partition(&digest, t, p));
                    c
                })
                .collect();
            let mut used = vec![false; partitions];
            for &id in &ids {
                let p = partition_of(id, partitions);
                let row = &bytes[id as usize * stride..][..stride];
                encode(seed, t, id, row, &mut value);
                cmds[p].arg(&field(id)[..]).arg(&value[..]);
                used[p] = true;
            }
            let cmds: Vec<redis::Cmd> = cmds
                .into_iter()
                .zip(used)
                .filter_map(|(c, u)| u.then_some(c))
                .collect();
            send_window(&conn, cmds, opts, &format!("table {t} rows {r0}..{r1}"))?;
            // the rows up to r1 are in: record it (a resumed push starts there)
            let (mut c, k, f) = (conn.conn.clone(), pkey.clone(), format!("t{t}"));
            let what = format!("HSET {pkey}");
            conn.run(opts.timeout, what.clone(), async move {
                c.hset::<_, _, _, ()>(&k, f, r1 as u64)
                    .await
                    .map_err(|e| TierError::redis(what, e))
            })?;
            report.rows += (r1 - r0) as u64;
            report.bytes += ((r1 - r0) * stride) as u64;
            sent += ((r1 - r0) * stride) as u64;
            progress(sent, total);
            windows += 1;
            r0 = r1;
        }
    }

    // every row is in: the version record, then the pointer, then the progress goes
    let pushed_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let record = VersionRecord::new(
        config,
        &digest,
        partitions,
        pushed_at,
        dir.display().to_string(),
    );
    let text = serde_json::to_string(&record).expect("a record serializes");
    let (mut c, k) = (conn.conn.clone(), keys.model(&digest));
    let what = format!("SET {k}");
    conn.run(opts.timeout, what.clone(), async move {
        c.set::<_, _, ()>(&k, text)
            .await
            .map_err(|e| TierError::redis(what, e))
    })?;
    set_current()?;
    let (mut c, k) = (conn.conn.clone(), pkey.clone());
    let what = format!("DEL {pkey}");
    conn.run(opts.timeout, what.clone(), async move {
        c.del::<_, ()>(&k)
            .await
            .map_err(|e| TierError::redis(what, e))
    })?;
    Ok(report)
}

/// Sends a window's commands at once; retries the whole window (writes are idempotent) up
/// to `opts.retries` times.
fn send_window(
    conn: &Conn,
    cmds: Vec<redis::Cmd>,
    opts: &PushOptions,
    what: &str,
) -> Result<(), TierError> {
    let mut attempt = 0;
    loop {
        let c = conn.conn.clone();
        let batch = cmds.clone();
        let deadline = opts.timeout;
        let res = conn.run(
            deadline + Duration::from_secs(1),
            what.to_string(),
            async move {
                let sends = batch.into_iter().map(|cmd| {
                    let mut c = c.clone();
                    async move {
                        tokio::time::timeout(deadline, cmd.query_async::<()>(&mut c))
                            .await
                            .map_err(|_| format!("no answer within {} ms", deadline.as_millis()))?
                            .map_err(|e| e.to_string())
                    }
                });
                let errs: Vec<String> = join_all(sends)
                    .await
                    .into_iter()
                    .filter_map(Result::err)
                    .collect();
                match errs.first() {
                    None => Ok(()),
                    Some(e) => Err(TierError::redis("HSET", e)),
                }
            },
        );
        match res {
            Ok(()) => return Ok(()),
            Err(e) if attempt < opts.retries => {
                attempt += 1;
                tracing::warn!("push: {what}: {e}; retry {attempt} of {}", opts.retries);
                std::thread::sleep(Duration::from_millis(200 * attempt as u64));
            }
            Err(e) => {
                return Err(TierError::redis(
                    format!("push: {what}"),
                    format!("{e} (after {attempt} retries; run the push again to resume)"),
                ));
            }
        }
    }
}
