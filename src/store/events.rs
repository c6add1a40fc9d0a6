//! The invalidation subscriber: listens on `{p}events` (SPEC §4) so that a
//! key revoked, rotated or changed anywhere leaves every replica's cache
//! within the revocation bound (SPEC §11), and tells the caller when it may
//! have missed events, so the cache can be cleared.
//!
//! It speaks RESP3 on its own connection (Redis 6 or newer): redis-rs then
//! delivers pub/sub messages and the loss of the connection as push messages
//! on a tokio channel. A PING every few seconds catches a connection that
//! died silently (no FIN/RST, e.g. a vanished NAT entry), which would
//! otherwise look like a quiet channel while revocations go unheard.
//!
//! On a Redis Cluster ([`spawn_subscriber_on`] with the cluster's nodes) it
//! subscribes on one node: a cluster delivers a classic `PUBLISH`, sent to
//! any node, to the subscribers of every node (over the cluster bus), so
//! one subscription hears every change. When that node can't be reached or
//! the subscription is lost, the next attempt goes to the next node of the
//! list, so a dead master costs one reconnect, not a blind spot. (Not
//! sharded pub/sub: `SPUBLISH` would need the channel's slot, and the
//! SPEC §4 channel name has no hash tag.) A node that still answers PING
//! but is cut off from the rest of the cluster would go quiet instead; the
//! cache `ttl` bounds revocation then, as during any lost subscription.

use std::time::Duration;

use ::redis::{
    AsyncConnectionConfig, Client, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind,
    RedisResult, Value,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::redis::Backoff;
use super::KeyHash;
use crate::config::{redact_url, redact_urls_in};

/// Reconnect backoff: a lost subscription is a revocation blind spot.
const RECONNECT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(2));
/// Connecting and subscribing must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Liveness check of an idle subscription.
const PING_INTERVAL: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Parses `invalidate <64 hex> <unix ms>`; anything else is `None`.
pub fn parse_event(msg: &str) -> Option<(KeyHash, u64)> {
    let mut parts = msg.split_ascii_whitespace();
    if parts.next()? != "invalidate" {
        return None;
    }
    let hash = KeyHash::from_hex(parts.next()?)?;
    let ms = parts.next()?;
    if !ms.bytes().all(|b| b.is_ascii_digit()) || parts.next().is_some() {
        return None;
    }
    Some((hash, ms.parse().ok()?))
}

/// Subscribes to `{p}events` and calls `on_invalidate(hash,
/// published_unix_ms)` for each well-formed `invalidate` message.
///
/// `on_resubscribe()` is called whenever a subscription is established after
/// events may have been missed: after every reconnection, and also after a
/// first subscription that only succeeded on a later attempt (the caller's
/// cache may hold records from before). Not after a first attempt that
/// succeeded. It is called once the new subscription is confirmed, so a
/// cache cleared then misses nothing published afterwards.
///
/// Reconnects by itself with backoff (100 ms -> 2 s), forever, until
/// `shutdown` turns `true` (or its sender is dropped: nobody could stop it
/// any more). Malformed messages are logged at debug and ignored.
pub fn spawn_subscriber(
    redis_url: String,
    prefix: String,
    on_invalidate: impl Fn(KeyHash, u64) + Send + Sync + 'static,
    on_resubscribe: impl Fn() + Send + Sync + 'static,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    spawn_subscriber_on(vec![redis_url], prefix, on_invalidate, on_resubscribe, shutdown)
}

/// [`spawn_subscriber`] for one of several servers, the nodes of a Redis
/// Cluster (`store.redis.cluster_nodes`): it subscribes on the first,
/// and each failed or lost subscription moves on to the next, round the
/// list. With one URL it is `spawn_subscriber`. Nodes whose URL does not
/// parse are logged and skipped; with none left it logs an error and ends.
pub fn spawn_subscriber_on(
    redis_urls: Vec<String>,
    prefix: String,
    on_invalidate: impl Fn(KeyHash, u64) + Send + Sync + 'static,
    on_resubscribe: impl Fn() + Send + Sync + 'static,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(subscribe_forever(
        redis_urls,
        format!("{prefix}events"),
        on_invalidate,
        on_resubscribe,
        shutdown,
    ))
}

/// Why a subscription ended.
enum Ended {
    Shutdown,
    Lost(String),
}

async fn subscribe_forever(
    redis_urls: Vec<String>,
    channel: String,
    on_invalidate: impl Fn(KeyHash, u64) + Send + Sync + 'static,
    on_resubscribe: impl Fn() + Send + Sync + 'static,
    mut shutdown: watch::Receiver<bool>,
) {
    // (client, the URL with its password masked: the only form logged)
    let mut nodes = Vec::with_capacity(redis_urls.len());
    for url in redis_urls {
        let shown_url = redact_url(&url);
        match resp3_client(&url) {
            Ok(client) => nodes.push((client, shown_url)),
            Err(e) => {
                tracing::error!(url = %shown_url, error = %describe(&e), "cannot subscribe to key invalidations there: invalid Redis URL");
            }
        }
    }
    if nodes.is_empty() {
        tracing::error!("cannot subscribe to key invalidations: no usable Redis URL");
        return;
    }

    let mut backoff = Backoff::new(RECONNECT_BACKOFF);
    // Events may have been missed: a connection was lost or never made.
    let mut missed = false;
    // The node to try next: the same one while it serves, the next after it
    // failed.
    let mut next = 0;
    loop {
        let (client, shown_url) = &nodes[next];
        let (tx, rx) = mpsc::unbounded_channel();
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, subscribe(client, &channel, tx));
        let attempt = tokio::select! {
            _ = shutdown_fired(&mut shutdown) => return,
            attempt = attempt => attempt,
        };
        match attempt {
            Ok(Ok(conn)) => {
                if missed {
                    tracing::info!(url = %shown_url, %channel, "resubscribed to key invalidations; every cached key is looked up again");
                    on_resubscribe();
                } else {
                    tracing::debug!(url = %shown_url, %channel, "subscribed to key invalidations");
                }
                backoff = Backoff::new(RECONNECT_BACKOFF);
                match listen(conn, rx, &channel, &on_invalidate, &mut shutdown).await {
                    Ended::Shutdown => return,
                    Ended::Lost(why) => {
                        tracing::warn!(url = %shown_url, error = %why, "lost the key invalidation subscription; reconnecting (the cache ttl bounds revocation meanwhile)");
                    }
                }
            }
            Ok(Err(e)) => {
                let error = describe(&e);
                if missed {
                    tracing::debug!(url = %shown_url, %error, "key invalidation subscription still down");
                } else {
                    tracing::warn!(url = %shown_url, %error, "cannot subscribe to key invalidations yet; retrying");
                }
            }
            Err(_) => {
                tracing::debug!(url = %shown_url, "subscribing to key invalidations timed out");
            }
        }
        missed = true;
        next = (next + 1) % nodes.len();
        // The backoff applies whichever node comes next: it starts at
        // 100 ms, so moving on to a live node costs little, and a cluster
        // that is down as a whole is not hammered.
        tokio::select! {
            _ = shutdown_fired(&mut shutdown) => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// A client for the URL, forced to RESP3 (push messages need it) whatever
/// the URL says; TLS as the store has it (`rediss://`, never `#insecure`).
fn resp3_client(redis_url: &str) -> RedisResult<Client> {
    let mut info = redis_url.into_connection_info()?;
    super::redis::check_tls(&info).map_err(|why| {
        ::redis::RedisError::from((::redis::ErrorKind::InvalidClientConfig, "refused", why))
    })?;
    info.redis.protocol = ProtocolVersion::RESP3;
    Client::open(info)
}

/// Connects and subscribes; returns once Redis has confirmed the
/// subscription. Pushes (messages, disconnection) go to `tx`.
async fn subscribe(
    client: &Client,
    channel: &str,
    tx: mpsc::UnboundedSender<PushInfo>,
) -> RedisResult<::redis::aio::MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(PING_TIMEOUT)
        .set_push_sender(tx);
    let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
    conn.subscribe(channel).await?;
    Ok(conn)
}

/// Delivers messages until the connection is lost or shutdown fires.
async fn listen(
    mut conn: ::redis::aio::MultiplexedConnection,
    mut rx: mpsc::UnboundedReceiver<PushInfo>,
    channel: &str,
    on_invalidate: &(impl Fn(KeyHash, u64) + Send + Sync),
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await; // The first tick is immediate; we just subscribed.
    loop {
        tokio::select! {
            _ = shutdown_fired(shutdown) => return Ended::Shutdown,
            push = rx.recv() => {
                let Some(push) = push else {
                    return Ended::Lost("the connection closed".to_owned());
                };
                match push.kind {
                    PushKind::Disconnection => return Ended::Lost("the connection closed".to_owned()),
                    PushKind::Message => deliver(&push.data, channel, on_invalidate),
                    _ => {}
                }
            }
            _ = ping.tick() => {
                let ping_cmd = ::redis::cmd("PING");
                let answer = ping_cmd.query_async::<Value>(&mut conn);
                match tokio::time::timeout(PING_TIMEOUT, answer).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Ended::Lost(describe(&e)),
                    Err(_) => return Ended::Lost("no answer to PING".to_owned()),
                }
            }
        }
    }
}

/// One pub/sub message: `[channel, payload]`.
fn deliver(data: &[Value], channel: &str, on_invalidate: &impl Fn(KeyHash, u64)) {
    let text = |v: &Value| match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok().map(str::to_owned),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let (Some(from), Some(payload)) = (data.first().and_then(text), data.get(1).and_then(text))
    else {
        tracing::debug!("ignoring a pub/sub message of unexpected shape");
        return;
    };
    if from != channel {
        return;
    }
    match parse_event(&payload) {
        Some((hash, ms)) => on_invalidate(hash, ms),
        // Bounded: a stranger's junk on our channel must not flood the log.
        None => tracing::debug!(
            message = %payload.chars().take(100).collect::<String>(),
            "ignoring a malformed message on the events channel"
        ),
    }
}

/// Resolves when shutdown is signalled, or when its sender is gone.
async fn shutdown_fired(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

fn describe(e: &::redis::RedisError) -> String {
    redact_urls_in(&e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn well_formed_invalidate_parses_to_hash_and_millis() {
        let (hash, ms) = parse_event(&format!("invalidate {HEX} 1793491200123")).expect("valid");
        assert_eq!(hash, KeyHash::of("abc"));
        assert_eq!(ms, 1_793_491_200_123);
        assert!(parse_event(&format!("invalidate {} 1", HEX.to_uppercase())).is_some());
    }

    #[test]
    fn malformed_events_are_ignored() {
        for bad in [
            String::new(),
            "invalidate".to_owned(),
            format!("invalidate {HEX}"),
            format!("invalidate {HEX} soon"),
            format!("invalidate {HEX} -1"),
            format!("invalidate {HEX} +1"),
            format!("invalidate {HEX} 1 extra"),
            format!("invalidate {} 1", &HEX[..63]),
            format!("invalidate {}zz 1", &HEX[..62]),
            format!("revoke {HEX} 1"),
            format!("INVALIDATE {HEX} 1"),
            format!("invalidate {HEX} 99999999999999999999999"),
        ] {
            assert_eq!(parse_event(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_our_channel_and_valid_payloads_reach_the_callback() {
        use std::sync::Mutex;
        let got = Mutex::new(Vec::new());
        let record = |h: KeyHash, ms: u64| got.lock().expect("lock").push((h, ms));
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let good = format!("invalidate {HEX} 7");
        deliver(&[bulk("kw:events"), bulk(&good)], "kw:events", &record);
        deliver(&[bulk("other:events"), bulk(&good)], "kw:events", &record);
        deliver(&[bulk("kw:events"), bulk("junk")], "kw:events", &record);
        deliver(&[bulk("kw:events")], "kw:events", &record);
        assert_eq!(*got.lock().expect("lock"), [(KeyHash::of("abc"), 7)]);
    }
}
