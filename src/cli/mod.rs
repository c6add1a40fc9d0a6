//! The command line (SPEC §1), clap derive. Every flag also reads its
//! `KEYWARD_*` environment variable; clap gives flags precedence over the
//! environment, and both beat the file (`config::Overrides`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Overrides;
use crate::telemetry::logging::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "keyward",
    version,
    about = "A sidecar reverse-proxy authenticator: API keys, scopes and rate limits in front of any HTTP service."
)]
pub struct Cli {
    /// Log format.
    #[arg(
        long,
        env = "KEYWARD_LOG_FORMAT",
        value_enum,
        default_value = "json",
        global = true
    )]
    pub log_format: LogFormat,
    /// Log level or tracing filter directive (`info`, `debug`, `keyward=debug,hyper=warn`).
    #[arg(long, env = "KEYWARD_LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy and the admin listener.
    Serve(ServeArgs),
    /// Load and validate the config; print a summary (exit 0) or the errors (exit 2).
    CheckConfig(ServeArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The YAML config file.
    #[arg(long, env = "KEYWARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Proxy listen address (overrides `listen`).
    #[arg(long, env = "KEYWARD_LISTEN")]
    pub listen: Option<String>,
    /// Upstream URL (overrides `upstream.url`).
    #[arg(long, env = "KEYWARD_UPSTREAM")]
    pub upstream: Option<String>,
    /// Redis URL (overrides `store.redis.url`).
    #[arg(long, env = "KEYWARD_REDIS_URL")]
    pub redis_url: Option<String>,
}

impl ServeArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            upstream: self.upstream.clone(),
            redis_url: self.redis_url.clone(),
        }
    }
}
