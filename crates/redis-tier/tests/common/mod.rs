//! A Redis Cluster on loopback ports for the tests: `redis-server` processes with
//! `cluster-enabled yes` in a temp dir each, joined by `redis-cli --cluster create`, stopped
//! when dropped. scripts/install-redis.sh installs Debian's redis-server.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dlrs_model::{DlrmConfig, Model, RowFormat};

/// `true` when redis-server and redis-cli are on PATH; else says why the test is skipped.
pub fn have_redis() -> bool {
    let ok = |b: &str| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ok("redis-server") && ok("redis-cli") {
        return true;
    }
    eprintln!(
        "SKIPPED: redis-server or redis-cli not found on PATH (scripts/install-redis.sh installs them)"
    );
    false
}

/// A port whose cluster bus port (+10000) is free too.
fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

pub struct Node {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn start(port: u16, dir: &Path) -> Node {
        std::fs::create_dir_all(dir).unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                "--cluster-require-full-coverage",
                "no",
                // a replica may always take over (the default refuses one whose link to its
                // master has been down for a while), and syncs at once (no 5 s wait)
                "--cluster-replica-validity-factor",
                "0",
                "--repl-diskless-sync-delay",
                "0",
                "--appendonly",
                "no",
                "--save",
                "",
                "--protected-mode",
                "no",
                "--dir",
                dir.to_str().unwrap(),
                "--logfile",
                "redis.log",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        let node = Node {
            port,
            dir: dir.to_path_buf(),
            child: Some(child),
        };
        let t0 = Instant::now();
        while cli(port, &["PING"]).trim() != "PONG" {
            assert!(t0.elapsed() < Duration::from_secs(10), "redis on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        node
    }

    /// SIGKILL: the node is gone at once.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP / SIGCONT: the node hangs (a slow node), then resumes.
    pub fn pause(&self, on: bool) {
        let pid = self.child.as_ref().expect("running").id();
        let sig = if on { "-STOP" } else { "-CONT" };
        Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // a paused node would not die of SIGKILL until resumed on some kernels' views
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// `redis-cli -p port ARGS...`'s output.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// `masters` masters with `replicas` replicas each, every slot covered and the state ok.
    pub fn start(masters: usize, replicas: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let n = masters * (1 + replicas);
        let nodes: Vec<Node> = (0..n)
            .map(|i| Node::start(free_port(), &dir.path().join(format!("n{i}"))))
            .collect();
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend([
            "--cluster-replicas".into(),
            replicas.to_string(),
            "--cluster-yes".into(),
        ]);
        let out = Command::new("redis-cli")
            .args(&args)
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = Cluster { nodes, _dir: dir };
        c.wait_ok(Duration::from_secs(20));
        c
    }

    /// Waits until every running node reports `cluster_state:ok` and knows every node.
    pub fn wait_ok(&self, within: Duration) {
        let t0 = Instant::now();
        let want = format!("cluster_known_nodes:{}", self.nodes.len());
        loop {
            let ok = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                let info = cli(n.port, &["CLUSTER", "INFO"]);
                let repl = cli(n.port, &["INFO", "replication"]);
                info.contains("cluster_state:ok")
                    && info.contains(&want)
                    && (repl.contains("role:master") || repl.contains("master_link_status:up"))
            });
            if ok {
                return;
            }
            assert!(t0.elapsed() < within, "cluster not ok in {within:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every replica has every write its master took (replication offsets).
    pub fn wait_replicated(&self, within: Duration) {
        let t0 = Instant::now();
        let num = |text: &str, key: &str| -> Option<u64> {
            let at = text.find(key)? + key.len();
            text[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        };
        loop {
            let caught_up = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                let repl = cli(n.port, &["INFO", "replication"]);
                if !repl.contains("role:master") || repl.contains("connected_slaves:0") {
                    return true;
                }
                let master = num(&repl, "master_repl_offset:");
                let replica = num(&repl, ",offset=");
                master.is_some() && replica >= master
            });
            if caught_up {
                return;
            }
            assert!(
                t0.elapsed() < within,
                "replicas not caught up in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis://127.0.0.1:P,...` of every node.
    pub fn url(&self) -> String {
        let ports: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis://{}", ports.join(","))
    }

    pub fn addrs(&self) -> Vec<String> {
        dlrs_redis::parse_nodes(&self.url()).unwrap()
    }

    /// The masters' indices (per `CLUSTER NODES` of a running node).
    pub fn masters(&self) -> Vec<usize> {
        let live = self.nodes.iter().find(|n| n.child.is_some()).unwrap();
        let text = cli(live.port, &["CLUSTER", "NODES"]);
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                text.lines().any(|l| {
                    l.contains(&format!("127.0.0.1:{}@", n.port))
                        && l.contains("master")
                        && !l.contains("fail")
                })
            })
            .map(|(i, _)| i)
            .collect()
    }
}

/// A small model directory with a checksum manifest: 3 tables, D 8 (odd strides per
/// format), a dot interaction.
pub fn model_dir(dir: &Path, format: RowFormat, seed: u64) -> DlrmConfig {
    let cfg = DlrmConfig::from_json_str(
        r#"{"arch_mlp_bot":"4-16-8","arch_mlp_top":"16-1","arch_embedding_size":"3000-500-41",
            "arch_sparse_feature_size":8,"arch_interaction_op":"dot"}"#,
    )
    .unwrap()
    .with_format(format);
    Model::write_random(&cfg, seed, dir, |_| {}).unwrap();
    cfg
}
