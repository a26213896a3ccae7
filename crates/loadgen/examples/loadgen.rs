//! The load generator as a library: a short open-loop load against a running `dlrs serve`,
//! set up in code rather than by flags (`dlrs loadgen` is the command-line way).
//!
//! `cargo run --release -p dlrs-loadgen --example loadgen -- http://127.0.0.1:8000 MODEL [QPS]`

use dlrs_loadgen::dist::QuerySize;
use dlrs_loadgen::{LoadConfig, LoadgenConfig};

fn main() {
    let mut argv = std::env::args().skip(1);
    let (Some(url), Some(model)) = (argv.next(), argv.next()) else {
        eprintln!("usage: loadgen URL MODEL [QPS]");
        std::process::exit(2);
    };
    let qps = argv
        .next()
        .map_or(50.0, |q| q.parse().expect("QPS: a number"));
    let config = LoadgenConfig {
        load: LoadConfig {
            qps,
            duration: 5.0,
            query_size: QuerySize::Fixed(16),
            ..LoadConfig::default()
        },
        ..LoadgenConfig::new(url, model)
    };
    let report = dlrs_loadgen::loadgen_json(config).unwrap_or_else(|e| {
        // the error, then each cause (an OS error, an HTTP client's) after a colon
        let mut msg = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            msg += &format!(": {c}");
            cause = c.source();
        }
        eprintln!("error: {msg}");
        std::process::exit(1);
    });
    println!(
        "{} queries, p99 {} ms",
        report["queries"], report["latency_ms"]["p99"]
    );
}
