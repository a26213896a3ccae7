//! The cluster connection: the `redis` crate's async cluster client (it follows MOVED and
//! ASK redirections and refreshes its slot map) on a small tokio runtime of the tier's own,
//! driven from synchronous callers with a deadline.

use std::future::Future;
use std::sync::mpsc;
use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

use crate::error::TierError;

/// Parses `redis://HOST:PORT[,HOST:PORT...]` (the scheme may be repeated on every address)
/// into one `redis://HOST:PORT` per node.
pub fn parse_nodes(s: &str) -> Result<Vec<String>, TierError> {
    let bad = || TierError::Address(s.to_string());
    let rest = s.strip_prefix("redis://").ok_or_else(bad)?;
    let nodes: Vec<String> = rest
        .split(',')
        .map(|a| {
            a.trim()
                .trim_start_matches("redis://")
                .trim_end_matches('/')
        })
        .map(|a| {
            let (host, port) = a.rsplit_once(':').ok_or_else(bad)?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad());
            }
            Ok(format!("redis://{host}:{port}"))
        })
        .collect::<Result<_, _>>()?;
    if nodes.is_empty() {
        return Err(bad());
    }
    Ok(nodes)
}

/// A cluster connection and the runtime its I/O runs on.
pub(crate) struct Conn {
    rt: Option<tokio::runtime::Runtime>,
    pub(crate) conn: ClusterConnection,
    pub(crate) nodes: Vec<String>,
}

impl Conn {
    /// Connects to the cluster through `nodes` (any subset of it); each command is bounded
    /// by `timeout` and retried at most `retries` times (redirections included).
    pub(crate) fn connect(
        nodes: &[String],
        timeout: Duration,
        retries: u32,
    ) -> Result<Self, TierError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dlrs-redis")
            .enable_all()
            .build()
            .map_err(TierError::Runtime)?;
        let wait_ms = (timeout.as_millis() as u64 / 4).max(1);
        let client = ClusterClient::builder(nodes.to_vec())
            .retries(retries)
            .min_retry_wait(wait_ms.min(10))
            .max_retry_wait(wait_ms)
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .overall_response_timeout(Some(timeout))
            .build()
            .map_err(|e| TierError::redis(format!("cluster {}", nodes.join(",")), e))?;
        let what = format!("connecting to the cluster at {}", nodes.join(","));
        let conn = run_on(
            &rt,
            timeout + Duration::from_secs(1),
            what.clone(),
            async move {
                client
                    .get_async_connection()
                    .await
                    .map_err(|e| TierError::redis(what, e))
            },
        )?;
        Ok(Conn {
            rt: Some(rt),
            conn,
            nodes: nodes.to_vec(),
        })
    }

    /// Runs `fut` on the tier's runtime and waits for it at most `deadline` (the future
    /// should bound itself by the same deadline; this bound is what the caller relies on).
    pub(crate) fn run<T: Send + 'static>(
        &self,
        deadline: Duration,
        what: impl Into<String>,
        fut: impl Future<Output = Result<T, TierError>> + Send + 'static,
    ) -> Result<T, TierError> {
        run_on(
            self.rt.as_ref().expect("a runtime until dropped"),
            deadline,
            what.into(),
            fut,
        )
    }
}

fn run_on<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    deadline: Duration,
    what: String,
    fut: impl Future<Output = Result<T, TierError>> + Send + 'static,
) -> Result<T, TierError> {
    // spawned and waited on through a std channel: callable from any thread, including a
    // thread of another tokio runtime
    let (tx, rx) = mpsc::sync_channel(1);
    let task = rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    match rx.recv_timeout(deadline) {
        Ok(r) => r,
        Err(_) => {
            task.abort();
            Err(TierError::Redis {
                what,
                msg: format!("no answer within {} ms", deadline.as_millis()),
            })
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // never blocks, so a connection may be dropped on any thread (an async one too)
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_into_nodes() {
        assert_eq!(
            parse_nodes("redis://127.0.0.1:7000,127.0.0.1:7001").unwrap(),
            ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]
        );
        assert_eq!(
            parse_nodes("redis://h:1,redis://g:2/").unwrap(),
            ["redis://h:1", "redis://g:2"]
        );
        for bad in [
            "127.0.0.1:7000",
            "redis://",
            "redis://h",
            "redis://h:x",
            "redis://:1",
        ] {
            assert!(parse_nodes(bad).is_err(), "{bad}");
        }
    }
}
