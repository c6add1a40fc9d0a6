//! The one wiring file: load the config, build the `Runtime`, bind the
//! listeners, handle signals, reload, drain.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::{Config, ConfigErrors, Overrides};
use crate::proxy::{forward, Proxy};
use crate::runtime::{Runtime, RuntimeError};
use crate::server::admin::{self, AdminState};
use crate::server::{self, ListenerSettings};
use crate::telemetry::Metrics;

/// Why `serve` could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

impl AppError {
    /// SPEC §1: 2 for config errors, 1 for runtime failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Config(_) | AppError::Runtime(_) => 2,
            AppError::Bind { .. } | AppError::Signals(_) => 1,
        }
    }
}

/// Where the config came from, so SIGHUP can load it again the same way.
pub struct ConfigSource {
    pub path: PathBuf,
    pub overrides: Overrides,
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config, ConfigErrors> {
        Config::load(&self.path, &self.overrides)
    }
}

/// `keyward serve`: runs until SIGTERM/SIGINT, then drains and returns.
pub async fn serve(source: ConfigSource) -> Result<(), AppError> {
    let config = Arc::new(source.load()?);
    let runtime = Arc::new(ArcSwap::from_pointee(Runtime::new(config.clone())?));
    let metrics = Arc::new(Metrics::new());

    let proxy_listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| AppError::Bind {
                what: "listen",
                addr: config.listen,
                source,
            })?;
    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .map_err(|source| AppError::Bind {
            what: "admin.listen",
            addr: config.admin.listen,
            source,
        })?;
    let proxy_addr = proxy_listener.local_addr().unwrap_or(config.listen);
    let admin_addr = admin_listener.local_addr().unwrap_or(config.admin.listen);

    // SIGTERM: Kubernetes (and docker stop) start a graceful shutdown.
    // SIGINT: Ctrl-C in a terminal, same thing.
    // SIGHUP: the operator (or a config-reloader sidecar) asks for a reload.
    let mut sigterm = signal(SignalKind::terminate()).map_err(AppError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AppError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(AppError::Signals)?;

    let client = forward::client(&config.upstream);
    let proxy = Arc::new(Proxy::new(runtime.clone(), client, metrics.clone(), "http"));
    let admin_state = Arc::new(AdminState {
        metrics: metrics.clone(),
        ready: false.into(),
    });
    let settings = ListenerSettings {
        header_read_timeout: config.limits.header_read_timeout,
        max_header_bytes: config.limits.max_header_bytes,
        shutdown_grace: config.shutdown_grace,
    };

    let (stop_proxy, proxy_stopped) = watch::channel(false);
    let (stop_admin, admin_stopped) = watch::channel(false);
    let proxy_task = tokio::spawn(server::run_proxy(
        proxy_listener,
        proxy,
        metrics.clone(),
        settings,
        proxy_stopped,
    ));
    let admin_task = tokio::spawn(admin::run_admin(
        admin_listener,
        admin_state.clone(),
        admin_stopped,
    ));
    admin_state.ready.store(true, Ordering::Relaxed);
    info!(
        proxy = %proxy_addr,
        admin = %admin_addr,
        upstream = %config.upstream.url,
        config = %source.path.display(),
        version = env!("CARGO_PKG_VERSION"),
        "listening"
    );

    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!(signal = "SIGTERM", "shutting down"); break; }
            _ = sigint.recv() => { info!(signal = "SIGINT", "shutting down"); break; }
            _ = sighup.recv() => reload(&source, &runtime, &metrics),
        }
    }

    // Readiness goes first so load balancers stop sending new work.
    admin_state.ready.store(false, Ordering::Relaxed);
    let _ = stop_proxy.send(true);
    if let Err(e) = proxy_task.await {
        error!(error = %e, "proxy task failed");
    }
    let _ = stop_admin.send(true);
    let _ = admin_task.await;
    info!("stopped");
    Ok(())
}

/// Builds a whole new snapshot and swaps it in; an invalid config is refused
/// and the old one keeps serving (SPEC §9). The listener addresses and the
/// listener's own limits (header read timeout, buffer sizes) need a restart.
fn reload(source: &ConfigSource, runtime: &ArcSwap<Runtime>, metrics: &Metrics) {
    let result = source
        .load()
        .map_err(|e| e.to_string())
        .and_then(|c| Runtime::new(Arc::new(c)).map_err(|e| e.to_string()));
    match result {
        Ok(rt) => {
            runtime.store(Arc::new(rt));
            metrics.config_reloads.with_label_values(&["success"]).inc();
            info!(config = %source.path.display(), "config reloaded");
        }
        Err(e) => {
            metrics.config_reloads.with_label_values(&["error"]).inc();
            warn!(config = %source.path.display(), error = %e, "config reload refused; keeping the running config");
        }
    }
}
