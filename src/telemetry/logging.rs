//! tracing setup: `--log-format json|text`, level from `--log-level` /
//! `KEYWARD_LOG_LEVEL` (an `EnvFilter` directive such as `info` or
//! `keyward=debug,hyper=warn`). Logs go to stdout, one event per line.
//!
//! Never log a secret: no event anywhere in keyward takes an API key, a token
//! or an `Authorization` value as a field (SPEC §9).

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, event fields at the top level.
    Json,
    /// Human-readable lines.
    Text,
}

/// Where log lines go: stdout for the server, stderr for one-shot commands
/// whose stdout is their output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    Stderr,
}

/// Installs the global subscriber. Returns an error message when the level
/// directive does not parse.
pub fn init(format: LogFormat, level: &str, target: LogTarget) -> Result<(), String> {
    let filter = EnvFilter::try_new(level)
        .map_err(|e| format!("--log-level (KEYWARD_LOG_LEVEL): invalid level {level:?}: {e}"))?;
    let writer = tracing_subscriber::fmt::writer::BoxMakeWriter::new(match target {
        LogTarget::Stdout => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stdout),
        LogTarget::Stderr => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    result.map_err(|e| format!("cannot install the log subscriber: {e}"))
}
