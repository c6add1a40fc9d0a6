//! The one wiring file: load the config, build the `Runtime`, bind the
//! listeners, handle signals, reload (config and TLS certificates), drain.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::auth::keyring::Keyring;
use crate::clock;
use crate::config::{Config, ConfigErrors, Overrides, StoreKind};
use crate::mgmt::Management;
use crate::proxy::{forward, Proxy};
use crate::ratelimit::Limiter;
use crate::runtime::{Runtime, RuntimeError};
use crate::server::admin::{self, AdminState};
use crate::server::{self, ListenerSettings};
use crate::store::{events, KeyStore, Store, StoreError};
use crate::telemetry::Metrics;
use crate::tls::{self, CertResolver, TlsError};

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
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A certificate, key or CA file that does not load (fail closed: no
    /// start without the TLS that was asked for).
    #[error("{0}")]
    Tls(#[from] TlsError),
}

impl AppError {
    /// SPEC §1: 2 for config errors, 1 for runtime failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Config(_) | AppError::Runtime(_) | AppError::Tls(_) => 2,
            AppError::Store(e) if !e.is_outage() => 2,
            AppError::Bind { .. } | AppError::Signals(_) | AppError::Store(_) => 1,
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

/// Called once both listeners are bound, with their addresses (`demo`
/// prints its banner from here).
pub type OnListening = Box<dyn FnOnce(std::net::SocketAddr, std::net::SocketAddr) + Send>;

/// `keyward serve`: runs until SIGTERM/SIGINT, then drains and returns.
pub async fn serve(source: ConfigSource) -> Result<(), AppError> {
    let config = source.load()?;
    let store = Store::from_config(&config.store)?;
    run(config, store, Some(source), None).await
}

/// Runs the proxy with `config` and `store` until SIGTERM/SIGINT. With a
/// `source`, SIGHUP reloads the config from it.
pub async fn run(
    config: Config,
    store: Store,
    source: Option<ConfigSource>,
    on_listening: Option<OnListening>,
) -> Result<(), AppError> {
    // SIGTERM: Kubernetes (and docker stop) start a graceful shutdown.
    // SIGINT: Ctrl-C in a terminal, same thing.
    // SIGHUP: the operator (or a config-reloader sidecar) asks for a reload.
    let mut sigterm = signal(SignalKind::terminate()).map_err(AppError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AppError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(AppError::Signals)?;

    let config = Arc::new(config);
    let limiter = Limiter::new(&config, &store);
    let runtime =
        Arc::new(ArcSwap::from_pointee(Runtime::new(config.clone())?.with_limiter(&limiter)));
    // TLS on the main listener: the certificate must load before anything
    // listens (fail closed); whether the listener speaks TLS is fixed now.
    let certs = match &config.tls {
        Some(paths) => {
            let key = tls::load_certified_key(paths)?;
            log_certificate(paths, &key);
            Some(Arc::new(CertResolver::new(key)))
        }
        None => None,
    };
    let acceptor = match &certs {
        Some(resolver) => {
            Some(tokio_rustls::TlsAcceptor::from(tls::server_config(resolver.clone())?))
        }
        None => None,
    };
    let client = forward::client(&config.upstream)?;
    let metrics = Arc::new(Metrics::new());
    let keyring = Arc::new(Keyring::new(&config, store));

    // Give the store a moment to connect, so the first requests after a
    // start don't get 503 while Redis is in fact up. If it is down, keyward
    // starts anyway (SPEC §9) and /readyz says so.
    if keyring.store.wait_until_up(STARTUP_STORE_WAIT).await.is_err() {
        warn!(
            store = keyring.store.kind_name(),
            "key store not reachable at start; serving, not ready"
        );
    }
    let proxy_listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| AppError::Bind { what: "listen", addr: config.listen, source })?;
    let admin_listener = TcpListener::bind(config.admin.listen).await.map_err(|source| {
        AppError::Bind { what: "admin.listen", addr: config.admin.listen, source }
    })?;
    let proxy_addr = proxy_listener.local_addr().unwrap_or(config.listen);
    let admin_addr = admin_listener.local_addr().unwrap_or(config.admin.listen);

    // X-Forwarded-Proto (SPEC §6): how clients reach this listener.
    let proto = if acceptor.is_some() { "https" } else { "http" };
    let management = Arc::new(Management::new());
    let proxy = Arc::new(Proxy::new(
        runtime.clone(),
        client,
        metrics.clone(),
        keyring.clone(),
        proto,
        management.clone(),
    ));
    let admin_state = Arc::new(AdminState {
        metrics: metrics.clone(),
        ready: false.into(),
        store: keyring.store.clone(),
    });
    let settings = ListenerSettings {
        header_read_timeout: config.limits.header_read_timeout,
        max_header_bytes: config.limits.max_header_bytes,
        shutdown_grace: config.shutdown_grace,
    };

    let (stop_proxy, proxy_stopped) = watch::channel(false);
    let (stop_admin, admin_stopped) = watch::channel(false);
    let (stop_background, background_stopped) = watch::channel(false);
    let mut background = vec![
        tokio::spawn(flush_last_used(keyring.clone(), metrics.clone(), background_stopped.clone())),
        tokio::spawn(watch_store(keyring.clone(), metrics.clone(), background_stopped.clone())),
    ];
    if let Some(sub) = subscribe(&config, &keyring, &metrics, background_stopped) {
        background.push(sub);
    }
    let proxy_task = tokio::spawn(server::run_proxy(
        proxy_listener,
        proxy,
        metrics.clone(),
        settings,
        acceptor,
        proxy_stopped,
    ));
    let admin_task =
        tokio::spawn(admin::run_admin(admin_listener, admin_state.clone(), admin_stopped));
    admin_state.ready.store(true, Ordering::Relaxed);
    info!(
        proxy = %proxy_addr,
        admin = %admin_addr,
        tls = certs.is_some(),
        upstream = %config.upstream.url,
        store = keyring.store.kind_name(),
        config = %source.as_ref().map(|s| s.path.display().to_string()).unwrap_or_default(),
        version = env!("CARGO_PKG_VERSION"),
        runtime = ?tokio::runtime::Handle::current().runtime_flavor(),
        "listening"
    );
    let pending = runtime.load().not_enforced_yet();
    if !pending.is_empty() {
        warn!(settings = ?pending, "configured but not enforced by this build yet");
    }
    if let Some(f) = on_listening {
        f(proxy_addr, admin_addr);
    }

    // The config file (and a memory store's keys file, the TLS certificate
    // and key, and the JWKS file) are also watched: polled once a second, which
    // notices a Kubernetes ConfigMap or Secret update (a symlink swap) as
    // well as an edit in place.
    let keys_file = match &keyring.store {
        Store::Memory(m) => m.path().map(|p| p.to_path_buf()),
        Store::Redis(_) => None,
    };
    let mut config_stamp = source.as_ref().map(|s| FileStamp::of(&s.path));
    let mut keys_stamp = keys_file.as_deref().map(FileStamp::of);
    let mut file_stamps = FileStamps::of(&runtime.load().config);
    let mut poll = tokio::time::interval(std::time::Duration::from_secs(1));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let (config_changed, keys_changed) = tokio::select! {
            _ = sigterm.recv() => { info!(signal = "SIGTERM", "shutting down"); break; }
            _ = sigint.recv() => { info!(signal = "SIGINT", "shutting down"); break; }
            _ = sighup.recv() => {
                // Stamped before the files are read, so a write that lands
                // after the reload read them is still noticed.
                file_stamps.changed();
                (true, true)
            }
            _ = poll.tick() => (
                // `|`, not `||`: every stamp is brought up to date.
                changed(&mut config_stamp, source.as_ref().map(|s| s.path.as_path()))
                    | file_stamps.changed(),
                changed(&mut keys_stamp, keys_file.as_deref()),
            ),
        };
        if config_changed {
            if let Some(source) = &source {
                reload(source, &runtime, &limiter, certs.as_deref(), &metrics);
                // A reload may name other certificate or JWKS files.
                file_stamps.follow(&runtime.load().config);
            }
        }
        if keys_changed {
            if let Store::Memory(m) = &keyring.store {
                reload_keys_file(m, &keyring);
            }
        }
    }

    // Readiness goes first so load balancers stop sending new work.
    admin_state.ready.store(false, Ordering::Relaxed);
    let _ = stop_proxy.send(true);
    if let Err(e) = proxy_task.await {
        error!(error = %e, "proxy task failed");
    }
    // Last-used times are flushed once more on the way out (SPEC §9).
    let _ = stop_background.send(true);
    for task in background {
        let _ = task.await;
    }
    let _ = stop_admin.send(true);
    let _ = admin_task.await;
    info!("stopped");
    Ok(())
}

/// What identifies one version of a file: a change of any part means the
/// file was edited or replaced (mtime alone misses a same-second edit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    /// The stamp of the file `path` points to (following symlinks); a
    /// missing file has the all-empty stamp.
    fn of(path: &std::path::Path) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(path) {
            Ok(m) => FileStamp { modified: m.modified().ok(), len: m.len(), inode: m.ino() },
            Err(_) => FileStamp { modified: None, len: 0, inode: 0 },
        }
    }
}

/// Whether the file at `path` changed since `stamp`, updating `stamp`.
fn changed(stamp: &mut Option<FileStamp>, path: Option<&std::path::Path>) -> bool {
    let (Some(old), Some(path)) = (stamp.as_mut(), path) else { return false };
    let now = FileStamp::of(path);
    if now == *old {
        return false;
    }
    *old = now;
    true
}

/// The stamps of the files the config names and the `Runtime` reads (the
/// TLS certificate and key, the JWKS file), to notice a rotation
/// (cert-manager, a renewed Secret, a new signing key) without a SIGHUP.
struct FileStamps(Vec<(std::path::PathBuf, FileStamp)>);

impl FileStamps {
    fn of(config: &Config) -> FileStamps {
        let tls = config.tls.as_ref().map(|t| [t.cert.clone(), t.key.clone()]);
        let jwks = config.jwt.as_ref().and_then(|j| j.jwks_file.clone());
        let paths = tls.into_iter().flatten().chain(jwks);
        FileStamps(paths.map(|p| (p.clone(), FileStamp::of(&p))).collect())
    }

    /// Watches the files `config` names from now on; stamps of files already
    /// watched are kept (re-stamping them now could hide a write that
    /// landed after the reload read them).
    fn follow(&mut self, config: &Config) {
        let next = FileStamps::of(config);
        if next.0.iter().map(|(p, _)| p).ne(self.0.iter().map(|(p, _)| p)) {
            *self = next;
        }
    }

    /// Whether either file changed since the last call (both are re-stamped).
    fn changed(&mut self) -> bool {
        let mut any = false;
        for (path, stamp) in &mut self.0 {
            let now = FileStamp::of(path);
            any |= now != *stamp;
            *stamp = now;
        }
        any
    }
}

/// Logs which certificate the listener serves from now on (its SHA-256
/// fingerprint: public, unlike the key).
fn log_certificate(paths: &crate::config::TlsConfig, key: &rustls::sign::CertifiedKey) {
    info!(
        cert = %paths.cert.display(),
        sha256 = %tls::fingerprint(key),
        chain = key.cert.len(),
        "tls certificate loaded"
    );
}

/// How long `serve` waits for the key store before it starts listening.
const STARTUP_STORE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How often pending last-used times are written.
const LAST_USED_FLUSH: std::time::Duration = std::time::Duration::from_secs(10);

/// Writes coalesced last-used times and usage counts (SPEC §8) off the
/// request path, and once more at shutdown.
async fn flush_last_used(
    keyring: Arc<Keyring>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(LAST_USED_FLUSH) => false,
            _ = stop.changed() => true,
        };
        // Part by part (one cache shard at a time), so no moment holds
        // every busy key's pending write at once; failures are logged once
        // per flush, not per part.
        let (mut touch_failed, mut usage_failed) = (None, None);
        let (started, mut touched, mut counted) = (clock::now(), 0, 0);
        for part in 0..keyring.cache.pending_parts() {
            let (batch, usage) = keyring.cache.drain_pending(part);
            (touched, counted) = (touched + batch.len(), counted + usage.len());
            if !batch.is_empty() {
                if let Err(e) = keyring.store.touch_last_used(&batch).await {
                    metrics.store_errors.with_label_values(&["touch"]).inc();
                    let keys = touch_failed.take().map_or(0, |(_, n)| n) + batch.len();
                    touch_failed = Some((e, keys));
                }
            }
            if !usage.is_empty() {
                if let Err(e) = keyring.store.add_usage(&usage).await {
                    metrics.store_errors.with_label_values(&["usage"]).inc();
                    let counts = usage_failed.take().map_or(0, |(_, n)| n) + usage.len();
                    usage_failed = Some((e, counts));
                    // Kept for the next flush rather than lost to an outage.
                    keyring.cache.usage.restore(usage);
                }
            }
        }
        if touched + counted > 0 {
            let ms = started.elapsed().as_secs_f64() * 1e3;
            debug!(touched, counted, ms, "flushed last-used times and usage counts");
        }
        if let Some((e, keys)) = touch_failed {
            warn!(error = %e, keys, "could not record last-used times");
        }
        if let Some((e, counts)) = usage_failed {
            warn!(error = %e, counts, "could not record usage counts; retrying at the next flush");
        }
        if stopping {
            return;
        }
    }
}

/// Keeps `keyward_store_up` current (the Redis store probes its own
/// connection; this mirrors it into the gauge every second).
async fn watch_store(
    keyring: Arc<Keyring>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut was_up = None;
    loop {
        let up = keyring.store.is_up();
        metrics.store_up.set(i64::from(up));
        if was_up != Some(up) {
            if up {
                info!(store = keyring.store.kind_name(), "key store reachable");
            } else {
                warn!(store = keyring.store.kind_name(), "key store unreachable");
            }
            was_up = Some(up);
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Subscribes to `{p}events` (Redis store only): each `invalidate` evicts
/// the key from this replica's cache and records the revocation lag; after
/// a reconnect the whole cache is dropped, since events may have been missed.
fn subscribe(
    config: &Config,
    keyring: &Arc<Keyring>,
    metrics: &Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    if config.store.kind != StoreKind::Redis {
        return None;
    }
    // One server, or any node of a cluster (events.rs: a cluster delivers
    // every PUBLISH to every node).
    let urls = match &config.store.redis.url {
        Some(url) => vec![url.clone()],
        None => config.store.redis.cluster_nodes.clone(),
    };
    if urls.is_empty() {
        return None;
    }
    let (k1, k2, m) = (keyring.clone(), keyring.clone(), metrics.clone());
    Some(events::spawn_subscriber_on(
        urls,
        config.store.redis.key_prefix.clone(),
        move |hash, published_ms| {
            k1.invalidate(&hash);
            let now_ms = clock::unix_millis();
            m.revocation_lag.observe(now_ms.saturating_sub(published_ms) as f64 / 1000.0);
        },
        move || k2.recheck_all(clock::now()),
        stop,
    ))
}

/// SIGHUP with the memory store: re-read the keys file, drop the cache.
fn reload_keys_file(store: &crate::store::MemoryStore, keyring: &Keyring) {
    match store.reload() {
        Ok(n) => {
            keyring.clear();
            info!(keys = n, "keys file reloaded");
        }
        Err(e) => warn!(error = %e, "keys file reload refused; keeping the loaded keys"),
    }
}

/// Builds a whole new snapshot and swaps it in; an invalid config is refused
/// and the old one keeps serving (SPEC §9). With TLS the certificate and
/// key are loaded again too, and a pair that does not load fails the whole
/// reload, so the old certificate keeps serving (fail closed). The new
/// certificate is used by new handshakes; open connections go on. The
/// listener addresses, the listener's own limits (header read timeout,
/// buffer sizes), whether it speaks TLS at all, and the upstream client
/// (`connect_timeout`, `ca_file`) need a restart.
fn reload(
    source: &ConfigSource,
    runtime: &ArcSwap<Runtime>,
    limiter: &Limiter,
    certs: Option<&CertResolver>,
    metrics: &Metrics,
) {
    let result =
        source.load().map_err(|e| e.to_string()).and_then(|c| {
            let rt = Runtime::new(Arc::new(c)).map_err(|e| e.to_string())?.with_limiter(limiter);
            let key =
                match (&rt.config.tls, certs) {
                    (Some(paths), Some(_)) => {
                        Some(tls::load_certified_key(paths).map_err(|e| e.to_string())?)
                    }
                    (None, None) => None,
                    // Turning TLS on or off means rebinding the listener: refused
                    // rather than half-applied (plain HTTP where TLS was asked for
                    // would expose keys).
                    (Some(_), None) => return Err(
                        "tls: the listener was started without TLS; turning TLS on needs a restart"
                            .to_owned(),
                    ),
                    (None, Some(_)) => return Err(
                        "tls: the listener was started with TLS; turning TLS off needs a restart"
                            .to_owned(),
                    ),
                };
            Ok((rt, key))
        });
    match result {
        Ok((rt, key)) => {
            let running = runtime.load();
            if rt.config.upstream.ca_file != running.config.upstream.ca_file
                || rt.config.upstream.connect_timeout != running.config.upstream.connect_timeout
            {
                warn!("upstream.ca_file and upstream.connect_timeout changes take effect at the next restart");
            }
            if let (Some(key), Some(certs), Some(paths)) = (key, certs, &rt.config.tls) {
                if tls::fingerprint(&key) != tls::fingerprint(&certs.current()) {
                    log_certificate(paths, &key);
                }
                certs.set(key);
            }
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
