//! What the `dlrs` binary's integration tests share.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Starts `dlrs serve ARGS --addr 127.0.0.1:0` and returns the child and the URL it says it
/// listens on (read from its log); its log is drained from then on, so it never blocks on
/// a full pipe.
pub fn spawn_serve(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dlrs"))
        .arg("serve")
        .args(args)
        .args(["--addr", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let url = loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "server exited before listening"
        );
        if let Some(i) = line.find("http://") {
            break line[i..].trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in err.lines() {});
    (child, url)
}
