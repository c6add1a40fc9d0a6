//! The command line (SPEC §1), clap derive. Every flag also reads its
//! `KEYWARD_*` environment variable; clap gives flags precedence over the
//! environment, and both beat the file (`config::Overrides`).

pub mod keys;
pub mod verify;

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
    /// Log format [default: json; text for `demo`].
    #[arg(long, env = "KEYWARD_LOG_FORMAT", value_enum, global = true)]
    pub log_format: Option<LogFormat>,
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
    /// Try keyward in one command: memory store, built-in echo upstream, a fresh test key.
    Demo(DemoArgs),
    /// Inspect the route table.
    Routes {
        #[command(flatten)]
        config: ServeArgs,
        #[command(subcommand)]
        command: RoutesCommand,
    },
    /// Check one signed-identity header (SPEC §11): exit 0 valid, 1 invalid or too old.
    VerifySignature(verify::VerifyArgs),
    /// Manage API keys in the configured store.
    Keys {
        #[command(flatten)]
        store: ServeArgs,
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum RoutesCommand {
    /// Which route `METHOD PATH` matches, its auth mode, scopes and plan; or why none does.
    Explain {
        /// e.g. GET
        method: String,
        /// e.g. /v1/jobs/42 (a query string is ignored, as in matching)
        path: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Proxy listen address.
    #[arg(long, env = "KEYWARD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Admin listen address.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_listen: String,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The YAML config file.
    #[arg(long, env = "KEYWARD_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Proxy listen address (overrides `listen`).
    #[arg(long, env = "KEYWARD_LISTEN", global = true)]
    pub listen: Option<String>,
    /// Upstream URL (overrides `upstream.url`).
    #[arg(long, env = "KEYWARD_UPSTREAM", global = true)]
    pub upstream: Option<String>,
    /// Redis URL (overrides `store.redis.url`).
    #[arg(long, env = "KEYWARD_REDIS_URL", global = true)]
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
