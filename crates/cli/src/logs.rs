//! Logs: every library logs through `tracing`; the binary installs the subscriber. Levels
//! come from `RUST_LOG` (default `info`, e.g. `RUST_LOG=dlrs_serve=debug`), lines go to
//! stderr, as text or, with `--log-format json`, one JSON object per line for log shippers.

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-12-07T12:00:00.000Z  INFO dlrs_serve: message key=value`
    #[default]
    Text,
    /// one JSON object per line: timestamp, level, target, fields and the current spans
    Json,
}

/// Installs the process's log subscriber (once; a second call changes nothing).
pub fn init(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
