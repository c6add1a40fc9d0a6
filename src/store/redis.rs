//! The Redis key store: SPEC §4's layout, exactly, so other systems can
//! provision keys by writing it (`{p}` is `store.redis.key_prefix`):
//!
//! | key | type | contents |
//! |---|---|---|
//! | `{p}key:{sha256hex}` | hash | `id name owner env scopes plan created_at expires_at revoked_at description display_prefix last_used_at` |
//! | `{p}id:{key_id}` | string | the key's sha256hex |
//! | `{p}owner:{owner}` | set | the owner's key ids |
//! | `{p}events` | pub/sub | `invalidate {sha256hex} {unix ms}` on every change |
//! | `{p}usage:{key_id}` | hash | requests per UTC day, field `YYYY-MM-DD`, 35-day TTL (SPEC §8) |
//! | `{p}creations:{owner}` | sorted set | management API creations of the last hour (ms scores) |
//!
//! Availability (SPEC §9): keyward must start, and keep answering, while
//! Redis is down. So the store connects in the background (exponential
//! backoff with jitter, 100 ms -> 5 s), every operation is bounded in time
//! (`get` and `ping` by `store.redis.timeout`; the CLI's and management
//! API's operations by `max(timeout, 1 s)`), and once the connection is
//! known to be broken (an I/O error, or three timeouts in a row) the
//! store *fails fast*: calls return `Unavailable` at once instead of each
//! request waiting out its timeout, while a background probe PINGs (100 ms
//! -> 1 s; a cluster gets a stricter check, below) until Redis answers
//! again. [`RedisStore::is_up`] reports that
//! state for `/readyz` and the `keyward_store_up` gauge.
//!
//! Records are read as other writers may have written them (see
//! `parse_record`). Operations by key id (`get_by_id`, `revoke`,
//! `set_expires_at`) need the `{p}id:` index; a hash provisioned without it
//! is still served and listed, but can't be found by id.
//!
//! # TLS
//! A `rediss://` URL (or cluster node) speaks TLS through rustls (ring),
//! checking the server's certificate and host name against the system's
//! roots (rustls-native-certs; `SSL_CERT_FILE` / `SSL_CERT_DIR` name a
//! private CA instead). `#insecure`, redis-rs's switch that turns the
//! checks off, is refused at start (`check_tls`): fail closed.
//!
//! # Redis Cluster
//! With `store.redis.cluster_nodes` the same operations run on a
//! [`ClusterConnection`] instead of a `ConnectionManager` (`Conn`):
//! redis-rs routes each command by its key's hash slot, follows `MOVED`
//! and `ASK`, and refreshes its slot map when the cluster changes (a
//! failover, a resharding). Reads go to masters only: a replica lags, and a
//! revoked key read from one could still look active. The availability
//! rules above hold unchanged, for the cluster as one unit: any
//! connection-level error (a dead node, `CLUSTERDOWN`, `TRYAGAIN`) trips
//! the store, and the probe counts it up again only once every master
//! `CLUSTER SLOTS` names, asked by its address, answers `CLUSTER INFO` with
//! `cluster_state:ok` (`health`), so a failover is one stretch of
//! fail-fast (the stale cache, or 503) rather than a stream of timeouts or
//! a store flapping up and down. While redis-rs reconnects to a node that went away it holds
//! the cluster connection's other commands back too, for up to
//! `max(timeout, 1 s)` (its connect timeout); the per-operation budgets
//! bound what a caller waits meanwhile.
//!
//! SPEC §4's key names stay as they are (other systems write them), so a
//! key's hash, its id index and its owner set live on different slots, and
//! the steps that span them can't be one script there:
//!
//! - **insert** is three single-slot steps, in an order that never shows a
//!   half-written key: claim `{p}id:{id}` (a script: set it, or find it held
//!   by this very hash from an earlier try, or refuse: id taken), `SADD` the
//!   owner set, then write the hash with a one-key script that refuses a
//!   hash another key holds. The hash is the last write, so a key becomes
//!   servable, findable by id and listable by owner in one step; a refused
//!   insert takes its owner-set entry and id claim back. What is weaker than
//!   on one Redis: an insert cut off between the steps (the process killed,
//!   Redis gone for longer than the retry) can leave an id claim and an
//!   owner-set entry that lead to no key (never served, never listed, the
//!   id never used again: ids are random), and two inserts racing for one
//!   hash can both appear in the owner set for the moment the loser takes
//!   to undo its claim.
//! - **touch_last_used** runs its script once per hash slot of each batch,
//!   the batch's slots in parallel; bulk reads (`list`, usage writes) send
//!   one pipeline per slot, in parallel, since redis-rs refuses a pipeline
//!   that spans slots.
//! - **list** `SCAN`s every master in turn (from `CLUSTER SLOTS`).
//! - **revoke / set_expires_at** are one key and a `PUBLISH`; a cluster
//!   delivers a `PUBLISH` to the subscribers of every node, so the events
//!   subscriber may listen on any one of them (`events.rs`).
//!
//! The rate limiter's counters carry a hash tag (`src/ratelimit/redis.rs`)
//! and the other scripts touch one key each, so no command is `CROSSSLOT`.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, Weak};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::{ClusterClient, ClusterClientBuilder};
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use ::redis::{
    Client, Cmd, ErrorKind, FromRedisValue, IntoConnectionInfo, Pipeline, RedisError, RedisFuture,
    RedisResult, Script, Value,
};
use arc_swap::ArcSwapOption;
use rand::Rng;
use tokio::sync::{watch, Notify};

use super::{sort_listing, KeyHash, KeyRecord, KeyStore, StoreError};
use crate::config::{redact_url, RedisConfig};

/// Backoff of the background connect (the brief's 100 ms -> 5 s).
const CONNECT_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// Backoff of the health probe once a connection existed: a PING is cheap,
/// and every second of it is a second of 503s after Redis is back. Capped
/// at 1 s so a replica recovers within about a second of Redis returning
/// (tests/faults.rs measures it under load).
const PROBE_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(1));
/// How often an idle, healthy store PINGs, so `is_up` notices an outage
/// without waiting for traffic.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// Connecting (TCP + AUTH + SELECT), probing and operations off the request
/// path get at least this long: `store.redis.timeout` (50 ms by default) is
/// the request path's budget, too tight for a fresh connection or a script
/// load over a real network.
const MIN_ADMIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Timeouts in a row after which the store counts as down (one slow reply
/// under load must not fail the whole store over).
const TIMEOUTS_TO_TRIP: u32 = 3;
/// Commands per pipeline in bulk reads, and keys per script call in
/// `touch_last_used` and `add_usage`, so each round trip stays small enough
/// for the per-command timeout.
const BATCH: usize = 100;
/// Redirections and retries redis-rs may spend on one cluster command: a
/// `MOVED`, then an `ASK` during a slot migration, then one retry after a
/// reconnect. More would only wait out an outage that the store's own
/// fail-fast handles better (and the operation's budget cuts them off).
const CLUSTER_RETRIES: u32 = 3;
/// redis-rs's wait before a cluster retry (`TRYAGAIN`, `CLUSTERDOWN`), in
/// ms, from 10 to at most 100: its defaults (1.28 s and up) exceed every
/// budget of the store.
const CLUSTER_RETRY_WAIT_MS: (u64, u64) = (10, 100);
/// Redis Cluster's hash slots (the key space is split into this many).
const CLUSTER_SLOTS: u16 = 16_384;

/// The Redis store. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    prefix: String,
    timeout: Duration,
    /// Connect, probe, and operations off the request path (CLI,
    /// management API, last-used flushes): `max(timeout, 1 s)`. A
    /// `keys revoke` must not fail because a script load over a
    /// cross-zone link needed three round trips of 20 ms.
    admin_timeout: Duration,
    /// The URL with its password masked (for a cluster, `cluster [<node>
    /// …]`, each masked): the only form that is logged.
    shown_url: String,
    /// `store.redis.cluster_nodes` is set: the cluster-mode steps of the
    /// module doc apply.
    cluster: bool,
    /// `None` until the first connection succeeds. The connection then
    /// reconnects by itself (driven by commands and the probe).
    conn: ArcSwapOption<Conn>,
    /// A second connection for the bulk operations ([`Op::bulk`]): the
    /// flusher's last-used and usage writes, listings. On the shared
    /// connection a flush of 10,000 busy keys queued 20,000 commands ahead
    /// of the request path's `EVALSHA`s on the one socket (head-of-line
    /// blocking, the harness's p99). `None` until made; the bulk
    /// operations use `conn` meanwhile.
    bulk: ArcSwapOption<Conn>,
    /// `true` while the last command or probe succeeded.
    up: watch::Sender<bool>,
    timeouts_in_a_row: AtomicU32,
    /// Wakes the supervisor when the store trips. Shared with the task by
    /// its own `Arc`, so the task never keeps `Inner` alive.
    tripped: Arc<Notify>,
    supervisor: OnceLock<tokio::task::AbortHandle>,
}

/// What the store's commands run on. Both reconnect by themselves; this
/// enum only dispatches, so the request path's one command costs what it
/// did on a bare `ConnectionManager`.
#[derive(Clone)]
enum Conn {
    /// One Redis (`store.redis.url`).
    Single(ConnectionManager),
    /// A Redis Cluster (`store.redis.cluster_nodes`).
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// How the supervisor makes a [`Conn`].
enum Connector {
    Single(Client, ConnectionManagerConfig),
    Cluster(ClusterClient),
}

impl Connector {
    async fn connect(&self) -> RedisResult<Conn> {
        match self {
            Connector::Single(client, config) => {
                ConnectionManager::new_with_config(client.clone(), config.clone())
                    .await
                    .map(Conn::Single)
            }
            // Connects to the seed nodes, reads the slot map from one of
            // them and connects to every node it names.
            Connector::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.supervisor.get() {
            task.abort();
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.inner.shown_url)
            .field("prefix", &self.inner.prefix)
            .field("up", &self.is_up())
            .finish()
    }
}

/// Atomically: refuse a taken hash or id, write the hash (only the fields
/// that are set), the id index and the owner set. The very same key (same
/// hash, same id) already there counts as inserted, so retrying an insert
/// whose reply was lost to a dropped connection is safe.
/// KEYS: `{p}key:{hex}`, `{p}id:{id}`, `{p}owner:{owner}`.
/// ARGV: hex, id, then field/value pairs. Returns 0, 1 (hash taken), 2 (id taken).
const INSERT_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'id') == ARGV[2] and redis.call('GET', KEYS[2]) == ARGV[1] then
    return 0
  end
  return 1
end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX') then return 2 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('SADD', KEYS[3], ARGV[2])
return 0
";
static INSERT: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(INSERT_LUA));

/// Cluster insert, step 1: claims `{p}id:{id}` for a hash. Returns 1 when
/// claimed now, 2 when this hash holds it already (an earlier try of the
/// same insert), 0 when another hash holds it (id taken).
/// KEYS: `{p}id:{id}`. ARGV: hex.
const CLAIM_ID_LUA: &str = r"
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then return 2 end
if current then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
";
static CLAIM_ID: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(CLAIM_ID_LUA));

/// Cluster insert, last step: writes the hash unless another key holds it.
/// The very same key (same id) there already counts as written. Returns 0
/// (written) or 1 (hash taken).
/// KEYS: `{p}key:{hex}`. ARGV: id, then field/value pairs.
const WRITE_HASH_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'id') == ARGV[1] then return 0 end
  return 1
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 0
";
static WRITE_HASH: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(WRITE_HASH_LUA));

/// Cluster insert, undo of a refused insert: drops the id claim, only while
/// it still names this hash (never another insert's claim).
/// KEYS: `{p}id:{id}`. ARGV: hex.
const RELEASE_ID_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
";
static RELEASE_ID: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(RELEASE_ID_LUA));

/// Atomically change one field and announce it, so no replica can miss a
/// change that happened (the event and the write are one step).
/// KEYS: `{p}key:{hex}`. ARGV: `revoke` | `expire` | `unexpire`, Unix
/// seconds, hex, channel. Returns the record's fields, or nil if the hash is
/// gone. `revoke` keeps an earlier `revoked_at`. The event's milliseconds
/// come from the Redis server's clock, at the moment of publishing, which is
/// what `keyward_revocation_lag_seconds` measures from (SPEC §11).
const MODIFY_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if ARGV[1] == 'revoke' then
  local current = tonumber(redis.call('HGET', KEYS[1], 'revoked_at'))
  if current == nil or current > tonumber(ARGV[2]) then
    redis.call('HSET', KEYS[1], 'revoked_at', ARGV[2])
  end
elseif ARGV[1] == 'expire' then
  redis.call('HSET', KEYS[1], 'expires_at', ARGV[2])
else
  redis.call('HDEL', KEYS[1], 'expires_at')
end
local now = redis.call('TIME')
local ms = now[1] .. string.format('%03d', math.floor(tonumber(now[2]) / 1000))
redis.call('PUBLISH', ARGV[4], 'invalidate ' .. ARGV[3] .. ' ' .. ms)
return redis.call('HGETALL', KEYS[1])
";
static MODIFY: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(MODIFY_LUA));

/// Sets `last_used_at` for each `KEYS[i]` to `ARGV[i]`, only on records that
/// exist (a deleted key must not come back as a hash holding nothing but a
/// time) and never moving time backwards (two replicas flushing out of
/// order). One call per flush chunk rather than one per key: the writes are
/// off the request path, but every call still costs Redis a command. On a
/// cluster, one call per hash slot of the chunk.
const TOUCH_LUA: &str = r"
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    local current = tonumber(redis.call('HGET', key, 'last_used_at'))
    if current == nil or current < tonumber(ARGV[i]) then
      redis.call('HSET', key, 'last_used_at', ARGV[i])
    end
  end
end
return 0
";

/// Adds a chunk of usage counts (SPEC §8): KEYS are `{p}usage:{key_id}`
/// hashes, ARGV the retention in seconds, then a `YYYY-MM-DD` field and a
/// count per key, in KEYS order. One call per 100 keys instead of an
/// `HINCRBY` and an `EXPIRE` per key, which made a flush of 10,000 busy keys
/// 20,000 commands and replies: in keyward that was ~8.5k instructions a
/// key more (`bench/profile.sh`, a flush of 1,000 keys: 225.8M → 217.3M
/// instructions over the same 3,000 requests).
const USAGE_LUA: &str = r"
for i, key in ipairs(KEYS) do
  redis.call('HINCRBY', key, ARGV[2 * i], ARGV[2 * i + 1])
  redis.call('EXPIRE', key, ARGV[1])
end
return 0
";

/// A Lua script for [`RedisStore::eval_script`]: its source and its SHA-1
/// digest (what `EVALSHA` names it by), computed once.
#[derive(Debug, Clone)]
pub struct LuaScript {
    source: &'static str,
    sha1: String,
}

impl LuaScript {
    pub fn new(source: &'static str) -> LuaScript {
        LuaScript { source, sha1: Script::new(source).get_hash().to_owned() }
    }

    /// The hex SHA-1 digest, as `SCRIPT LOAD` would return it.
    pub fn sha1(&self) -> &str {
        &self.sha1
    }
}

/// `<verb> <script> <numkeys> <keys…> <args…>` in one buffer sized up front.
fn script_cmd(verb: &str, script: &[u8], keys: &[String], args: &[u64]) -> Cmd {
    let key_bytes: usize = keys.iter().map(String::len).sum();
    // u64::MAX has 20 digits; numkeys is a few.
    let size = verb.len() + script.len() + 4 + key_bytes + 20 * args.len();
    let mut cmd = Cmd::with_capacity(3 + keys.len() + args.len(), size);
    cmd.arg(verb).arg(script).arg(keys.len());
    for key in keys {
        cmd.arg(key.as_bytes());
    }
    for arg in args {
        cmd.arg(*arg);
    }
    cmd
}

/// `EVALSHA` of one of the store's own scripts, and on `NOSCRIPT` (a
/// restarted, flushed or newly promoted Redis: each cluster node caches
/// scripts on its own) one `EVAL` of the source, which caches it again.
/// Not redis-rs's `Script::invoke_async`: it recovers with `SCRIPT LOAD`,
/// which a cluster sends to every node, so one unreachable node (a replica
/// even) would fail a revoke.
async fn invoke<T: FromRedisValue>(
    conn: &mut Conn,
    script: &LuaScript,
    keys: &[&str],
    args: &[&str],
) -> RedisResult<T> {
    let call = |verb: &str, body: &[u8]| {
        let mut cmd = ::redis::cmd(verb);
        cmd.arg(body).arg(keys.len()).arg(keys).arg(args);
        cmd
    };
    match call("EVALSHA", script.sha1.as_bytes()).query_async(conn).await {
        Err(e) if e.kind() == ErrorKind::NoScriptError => {
            call("EVAL", script.source.as_bytes()).query_async(conn).await
        }
        other => other,
    }
}

/// Independent commands, each with the hash slot of its key, sent at once;
/// their replies come back in order. On one Redis that is one pipeline (one
/// round trip). A cluster refuses a pipeline whose keys span slots, so there
/// it is one pipeline per slot, all in parallel (redis-rs sends each to the
/// slot's master, over that node's one multiplexed connection).
async fn query_batch(conn: &mut Conn, batch: &[(u16, Cmd)]) -> RedisResult<Vec<Value>> {
    let cluster = match conn {
        Conn::Single(_) => {
            let mut pipe = ::redis::pipe();
            for (_, cmd) in batch {
                pipe.add_command(cmd.clone());
            }
            return pipe.query_async(conn).await;
        }
        Conn::Cluster(cluster) => cluster,
    };
    let mut by_slot: HashMap<u16, Vec<usize>> = HashMap::new();
    for (i, (slot, _)) in batch.iter().enumerate() {
        by_slot.entry(*slot).or_default().push(i);
    }
    let calls = by_slot.into_values().map(|indices| {
        let mut pipe = ::redis::pipe();
        for &i in &indices {
            pipe.add_command(batch[i].1.clone());
        }
        let mut conn = cluster.clone();
        async move {
            let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
            Ok::<_, RedisError>((indices, replies))
        }
    });
    let mut out = vec![Value::Nil; batch.len()];
    for (indices, replies) in futures_util::future::try_join_all(calls).await? {
        if replies.len() != indices.len() {
            return Err(RedisError::from((
                ErrorKind::TypeError,
                "a pipeline answered with the wrong number of replies",
            )));
        }
        for (i, reply) in indices.into_iter().zip(replies) {
            out[i] = reply;
        }
    }
    Ok(out)
}

/// Each reply of [`query_batch`] as a `T`.
fn replies_as<T: FromRedisValue>(replies: Vec<Value>) -> RedisResult<Vec<T>> {
    replies.into_iter().map(T::from_owned_redis_value).collect()
}

/// The Redis Cluster hash slot of a key: CRC16 (XMODEM) of the key, or of
/// the part between its first `{` and the next `}` when that is not empty
/// (the hash tag), modulo 16384, as the cluster specification defines it.
/// For grouping a batch by slot (redis-rs keeps its own copy private).
fn slot_of(key: &[u8]) -> u16 {
    let tag = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tag.unwrap_or(key)) % CLUSTER_SLOTS
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 == 0 { crc << 1 } else { (crc << 1) ^ 0x1021 };
        }
    }
    crc
}

/// A master of a cluster, as `CLUSTER SLOTS` names it, and one slot it
/// serves.
struct Master {
    host: String,
    port: u16,
    slot: u16,
}

impl Master {
    /// Routing to this very node, by its address: redis-rs answers with an
    /// error when it has no connection there (and rebuilds its slot map),
    /// where routing by slot would fall back to a random node and so SCAN
    /// or check the wrong one. A node that names no host is reached by
    /// slot.
    fn routing(&self) -> RoutingInfo {
        let node = if self.host.is_empty() || self.host == "?" {
            SingleNodeRoutingInfo::SpecificNode(Route::new(self.slot, SlotAddr::Master))
        } else {
            SingleNodeRoutingInfo::ByAddress { host: self.host.clone(), port: self.port }
        };
        RoutingInfo::SingleNode(node)
    }
}

/// Every master serving slots, from `CLUSTER SLOTS` (per range `[start,
/// end, [host, port, …], replicas…]`) on any node.
async fn cluster_masters(conn: &mut ClusterConnection) -> RedisResult<Vec<Master>> {
    let ranges: Vec<Value> = ::redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    let unexpected = || RedisError::from((ErrorKind::TypeError, "unexpected CLUSTER SLOTS reply"));
    let mut masters: HashMap<(String, u16), u16> = HashMap::new();
    for range in &ranges {
        let Value::Array(range) = range else { return Err(unexpected()) };
        let (Some(Value::Int(start)), Some(Value::Array(master))) = (range.first(), range.get(2))
        else {
            return Err(unexpected());
        };
        let (Some(host), Some(Value::Int(port))) = (master.first(), master.get(1)) else {
            return Err(unexpected());
        };
        let host = match host {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            Value::SimpleString(s) => s.clone(),
            _ => return Err(unexpected()),
        };
        let start = u16::try_from(*start).map_err(|_| unexpected())?;
        let port = u16::try_from(*port).map_err(|_| unexpected())?;
        masters.entry((host, port)).or_insert(start);
    }
    Ok(masters.into_iter().map(|((host, port), slot)| Master { host, port, slot }).collect())
}

/// One page of `SCAN cursor MATCH pattern COUNT 1000`, on one Redis or on
/// one master of a cluster.
async fn scan_page(
    conn: &mut Conn,
    master: Option<&Master>,
    cursor: u64,
    pattern: &str,
) -> RedisResult<(u64, Vec<String>)> {
    let mut cmd = ::redis::cmd("SCAN");
    cmd.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
    match (conn, master) {
        (Conn::Cluster(cluster), Some(master)) => FromRedisValue::from_owned_redis_value(
            cluster.route_command(&cmd, master.routing()).await?,
        ),
        (conn, _) => cmd.query_async(conn).await,
    }
}

/// The probe's and `ping`'s health check. One Redis: PING. A cluster: every
/// master `CLUSTER SLOTS` names answers `CLUSTER INFO` with
/// `cluster_state:ok`, each asked by its address. So a cluster that
/// answers but can't serve every slot counts as down: a master that just
/// died (still in the slot map until the others agree it failed), or one
/// failed with no replica promoted yet. A looser check (PING, which redis-rs
/// sends only to the masters it still holds a connection to) let the store
/// flap up on every probe and down on the next request, a dozen times in
/// one failover.
async fn health(conn: &mut Conn) -> RedisResult<()> {
    let cluster = match conn {
        Conn::Single(single) => return ::redis::cmd("PING").query_async::<()>(single).await,
        Conn::Cluster(cluster) => cluster,
    };
    let masters = cluster_masters(cluster).await?;
    let mut info_cmd = ::redis::cmd("CLUSTER");
    info_cmd.arg("INFO");
    // All at once: the periodic check runs on the request path's budget.
    let checks = masters.iter().map(|master| {
        let (mut cluster, info_cmd) = (cluster.clone(), &info_cmd);
        async move {
            let info: String = FromRedisValue::from_owned_redis_value(
                cluster.route_command(info_cmd, master.routing()).await?,
            )?;
            if info.lines().any(|line| line.trim() == "cluster_state:ok") {
                Ok(())
            } else {
                Err(RedisError::from((
                    ErrorKind::ClusterDown,
                    "cluster_state is not ok",
                    format!("{}:{}", master.host, master.port),
                )))
            }
        }
    });
    futures_util::future::try_join_all(checks).await.map(|_| ())
}

/// The cluster insert of the module doc: claim the id, join the owner set,
/// then write the hash; a refused hash takes the first two back. Returns
/// what `INSERT_LUA` would: 0, 1 (hash taken) or 2 (id taken). Each step
/// is idempotent, so `run`'s retry after a broken connection redoes the
/// ones already done harmlessly (the claim finds the id held by this
/// hash). `hash_args`: the id, then the field/value pairs.
async fn insert_in_cluster(
    conn: &mut Conn,
    key: &str,
    id_key: &str,
    owner_key: &str,
    hex: &str,
    id: &str,
    hash_args: &[&str],
) -> RedisResult<i64> {
    let claimed: i64 = invoke(conn, &CLAIM_ID, &[id_key], &[hex]).await?;
    if claimed == 0 {
        return Ok(2);
    }
    ::redis::cmd("SADD").arg(owner_key).arg(id).query_async::<()>(conn).await?;
    let written: i64 = invoke(conn, &WRITE_HASH, &[key], hash_args).await?;
    if written != 0 {
        // Another key holds the hash, so no key has this id: neither the
        // owner-set entry nor the claim may stay (the claim only while it
        // still names this hash).
        ::redis::cmd("SREM").arg(owner_key).arg(id).query_async::<()>(conn).await?;
        invoke::<()>(conn, &RELEASE_ID, &[id_key], &[hex]).await?;
        return Ok(1);
    }
    Ok(0)
}

/// Takes one creation of an owner's sliding window, by the server's clock.
/// KEYS: `{p}creations:{owner}` (a sorted set of creation times in ms).
/// ARGV: window seconds, max, a unique member suffix. Returns -1 when
/// taken, else the milliseconds until the oldest creation leaves the window.
const CREATION_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local w = tonumber(ARGV[1]) * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - w)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + w - now)
end
redis.call('ZADD', KEYS[1], now, now .. '-' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], w)
return -1
";

impl RedisStore {
    /// Starts the store and its background connect; never waits for the
    /// network. Must be called inside a tokio runtime. Refuses a config
    /// with neither a URL nor cluster nodes, and URLs redis-rs can't use
    /// (for a cluster also a unix socket, or a database other than 0: a
    /// cluster has only database 0).
    pub fn new(config: &RedisConfig) -> Result<RedisStore, StoreError> {
        let admin_timeout = config.timeout.max(MIN_ADMIN_TIMEOUT);
        let (connector, shown_url) = match config.url.as_deref() {
            Some(url) => {
                let shown_url = redact_url(url);
                let invalid = |why: String| {
                    StoreError::Invalid(format!("invalid Redis URL {shown_url}: {why}"))
                };
                let info = url.into_connection_info().map_err(|e| invalid(describe(&e)))?;
                check_tls(&info).map_err(invalid)?;
                let client = Client::open(info).map_err(|e| invalid(describe(&e)))?;
                // One connection attempt per manager reconnect, each
                // bounded: the backoff between attempts is ours
                // (supervise), so a reconnect never holds commands for a
                // series of retries.
                let manager_config = ConnectionManagerConfig::new()
                    .set_number_of_retries(0)
                    .set_connection_timeout(admin_timeout);
                (Connector::Single(client, manager_config), shown_url)
            }
            None if config.cluster_nodes.is_empty() => {
                return Err(StoreError::Invalid("store.redis.url is not set".to_owned()));
            }
            None => {
                let client = cluster_client(&config.cluster_nodes, admin_timeout)?;
                (Connector::Cluster(client), shown_nodes(&config.cluster_nodes))
            }
        };
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            StoreError::Unavailable(
                "the Redis store must be started inside a tokio runtime".to_owned(),
            )
        })?;
        let tripped = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            admin_timeout,
            shown_url,
            cluster: matches!(connector, Connector::Cluster(_)),
            conn: ArcSwapOption::empty(),
            bulk: ArcSwapOption::empty(),
            up: watch::Sender::new(false),
            timeouts_in_a_row: AtomicU32::new(0),
            tripped: tripped.clone(),
            supervisor: OnceLock::new(),
        });
        let task = runtime.spawn(supervise(Arc::downgrade(&inner), tripped, connector));
        let _ = inner.supervisor.set(task.abort_handle());
        Ok(RedisStore { inner })
    }

    /// Whether the store runs on a Redis Cluster (`store.redis.cluster_nodes`).
    pub fn is_cluster(&self) -> bool {
        self.inner.cluster
    }

    /// Whether the store is up: connected, and the last command or health
    /// check did not find it down (a lone timeout does not count; three in a
    /// row do). For `/readyz` and the `keyward_store_up` gauge. `false` until
    /// the first connection.
    pub fn is_up(&self) -> bool {
        *self.inner.up.borrow()
    }

    /// Waits up to `within` for the store to be up (the CLI, which would
    /// otherwise race the background connect). `Unavailable` on time out.
    pub async fn wait_until_up(&self, within: Duration) -> Result<(), StoreError> {
        let mut up = self.inner.up.subscribe();
        let came_up =
            matches!(tokio::time::timeout(within, up.wait_for(|up| *up)).await, Ok(Ok(_)));
        if came_up {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!(
                "no answer from Redis at {} within {within:?}",
                self.inner.shown_url
            )))
        }
    }

    /// `store.redis.key_prefix`.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The pub/sub channel of invalidations: `{p}events`.
    pub fn events_channel(&self) -> String {
        format!("{}events", self.inner.prefix)
    }

    fn key_of(&self, hash: &KeyHash) -> String {
        format!("{}key:{}", self.inner.prefix, hash.to_hex())
    }

    fn id_key(&self, id: &str) -> String {
        format!("{}id:{id}", self.inner.prefix)
    }

    fn owner_key(&self, owner: &str) -> String {
        format!("{}owner:{owner}", self.inner.prefix)
    }

    /// `{p}usage:{key_id}`: requests per UTC day (SPEC §8).
    fn usage_key(&self, id: &str) -> String {
        format!("{}usage:{id}", self.inner.prefix)
    }

    /// Runs one operation under the store's rules: fail fast while down,
    /// one time budget for the whole operation (`store.redis.timeout` on the
    /// request path, `max(timeout, 1 s)` off it), and a single retry
    /// when the connection broke under it (the manager is reconnecting
    /// already; a Redis restart or an idle-timeout close should not fail the
    /// call that noticed it). Every operation is idempotent (insert too, see
    /// `INSERT_LUA`), so a retry after a lost reply is harmless.
    async fn run<T, F, Fut>(&self, op: Op, f: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let inner = &*self.inner;
        let bulk = if op.bulk() { inner.bulk.load_full() } else { None };
        let Some(conn) = bulk.or_else(|| inner.conn.load_full()) else {
            return Err(StoreError::Unavailable(format!(
                "not connected to Redis at {} yet",
                inner.shown_url
            )));
        };
        if !*inner.up.borrow() {
            return Err(StoreError::Unavailable(format!(
                "Redis at {} is down; retrying in the background",
                inner.shown_url
            )));
        }
        let mut broke = false;
        let attempt = async {
            match f((*conn).clone()).await {
                Err(e) if is_connection_error(&e) => {
                    broke = true;
                    f((*conn).clone()).await
                }
                other => other,
            }
        };
        let budget = if op.on_request_path() { inner.timeout } else { inner.admin_timeout };
        match tokio::time::timeout(budget, attempt).await {
            Ok(Ok(value)) => {
                inner.timeouts_in_a_row.store(0, Ordering::Relaxed);
                Ok(value)
            }
            Ok(Err(e)) => Err(inner.failed(op, &e)),
            Err(_) => {
                let in_a_row = inner.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                if broke || in_a_row >= TIMEOUTS_TO_TRIP {
                    inner.trip(op, "timed out");
                }
                Err(StoreError::Timeout)
            }
        }
    }

    /// Runs a rate-limit script (`src/ratelimit/redis.rs`) over the key
    /// store's connection, under the same rules as `get`: fail fast while
    /// down, bounded by `store.redis.timeout`. Added for the limiter so it
    /// shares this connection and its outage handling instead of keeping
    /// its own.
    ///
    /// One plain `EVALSHA <sha1> <numkeys> <keys…> <args…>` command, and on
    /// `NOSCRIPT` (a restarted or flushed Redis) one `EVAL` of the source,
    /// which also caches the script again: the first call after a flush
    /// costs one extra round trip, the others none. (redis-rs's
    /// `Script::invoke_async` would copy every key and argument into its
    /// own buffers first, then recover with `SCRIPT LOAD` and a second
    /// `EVALSHA`; this is the request path's only Redis call.)
    ///
    /// `run` retries once when the connection broke under the call; for a
    /// counting script a lost *reply* can then count one request twice,
    /// which errs on the safe side and needs a connection drop to happen.
    pub async fn eval_script<T: FromRedisValue>(
        &self,
        script: &LuaScript,
        keys: &[String],
        args: &[u64],
    ) -> Result<T, StoreError> {
        let evalsha = script_cmd("EVALSHA", script.sha1.as_bytes(), keys, args);
        self.run(Op::RateLimit, |mut c| {
            let evalsha = &evalsha;
            async move {
                match evalsha.query_async(&mut c).await {
                    Err(e) if e.kind() == ErrorKind::NoScriptError => {
                        let eval = script_cmd("EVAL", script.source.as_bytes(), keys, args);
                        eval.query_async(&mut c).await
                    }
                    other => other,
                }
            }
        })
        .await
    }

    /// HGETALLs of many hashes, pipelined in batches.
    async fn fetch_records(
        &self,
        hashes: &[KeyHash],
    ) -> Result<Vec<(KeyHash, Option<HashMap<String, String>>)>, StoreError> {
        let mut out = Vec::with_capacity(hashes.len());
        for chunk in hashes.chunks(BATCH) {
            let batch: Vec<(u16, Cmd)> = chunk
                .iter()
                .map(|hash| {
                    let key = self.key_of(hash);
                    (self.slot(&key), ::redis::cmd("HGETALL").arg(key).to_owned())
                })
                .collect();
            let maps: Vec<HashMap<String, String>> = self.run_batch(Op::List, &batch).await?;
            out.extend(chunk.iter().zip(maps).map(|(h, m)| (*h, (!m.is_empty()).then_some(m))));
        }
        Ok(out)
    }

    /// The hash slot of `key` on a cluster (0 on one Redis, where it does
    /// not matter), for [`query_batch`].
    fn slot(&self, key: &str) -> u16 {
        if self.inner.cluster {
            slot_of(key.as_bytes())
        } else {
            0
        }
    }

    /// One `EVAL` of `script` per hash slot among `calls` (a script's keys
    /// must share a slot on a cluster; on one Redis it is one call): KEYS are
    /// the calls' keys, ARGV `head` (if any), then what `args` writes for
    /// each call, in KEYS order. EVAL rather than EVALSHA: nothing to recover
    /// after a restart's NOSCRIPT, and Redis caches the compiled script by
    /// its digest.
    fn eval_per_slot<A>(
        &self,
        script: &str,
        head: Option<u64>,
        calls: impl Iterator<Item = (String, A)>,
        args: impl Fn(&mut Cmd, &A),
    ) -> Vec<(u16, Cmd)> {
        let mut by_slot: HashMap<u16, Vec<(String, A)>> = HashMap::new();
        for (key, a) in calls {
            by_slot.entry(self.slot(&key)).or_default().push((key, a));
        }
        by_slot
            .into_iter()
            .map(|(slot, calls)| {
                let mut cmd = ::redis::cmd("EVAL");
                cmd.arg(script).arg(calls.len());
                for (key, _) in &calls {
                    cmd.arg(key);
                }
                if let Some(head) = head {
                    cmd.arg(head);
                }
                for (_, a) in &calls {
                    args(&mut cmd, a);
                }
                (slot, cmd)
            })
            .collect()
    }

    /// [`query_batch`] as one operation under the store's rules, each reply
    /// read as a `T`.
    async fn run_batch<T: FromRedisValue>(
        &self,
        op: Op,
        batch: &[(u16, Cmd)],
    ) -> Result<Vec<T>, StoreError> {
        let replies = self.run(op, |mut c| async move { query_batch(&mut c, batch).await }).await?;
        replies_as(replies).map_err(|e| self.inner.failed(op, &e))
    }

    /// Resolves a key id to its hash through `{p}id:{id}`.
    async fn hash_of_id(&self, id: &str) -> Result<Option<KeyHash>, StoreError> {
        let key = self.id_key(id);
        let hex: Option<String> = self
            .run(Op::GetById, |mut c| {
                let key = &key;
                async move { ::redis::cmd("GET").arg(key).query_async(&mut c).await }
            })
            .await?;
        match hex {
            None => Ok(None),
            Some(hex) => KeyHash::from_hex(hex.trim()).map(Some).ok_or_else(|| {
                StoreError::Invalid(format!(
                    "{}id:{id} does not hold a SHA-256 hex digest",
                    self.inner.prefix
                ))
            }),
        }
    }

    /// `revoke` / `set_expires_at`: one script call that changes the field and
    /// publishes `invalidate`. `action` is the script's ARGV[1].
    async fn modify(
        &self,
        id: &str,
        op: Op,
        action: &'static str,
        at: Option<u64>,
    ) -> Result<KeyRecord, StoreError> {
        let not_found = || StoreError::NotFound(format!("no key with id {id:?}"));
        let hash = self.hash_of_id(id).await?.ok_or_else(not_found)?;
        let key = self.key_of(&hash);
        let hex = hash.to_hex();
        let channel = self.events_channel();
        let at = at.unwrap_or(0).to_string();
        let (keys, args) = ([key.as_str()], [action, &at, &hex, &channel]);
        let fields: Option<HashMap<String, String>> = self
            .run(op, |mut c| {
                let (keys, args) = (&keys, &args);
                async move { invoke(&mut c, &MODIFY, keys, args).await }
            })
            .await?;
        // The id index points at a hash that is gone: as good as no key.
        let fields = fields.ok_or_else(not_found)?;
        let record = parse_logged(&hash, &fields)?;
        tracing::debug!(key_id = %record.id, action, "published invalidate");
        Ok(record)
    }
}

impl Inner {
    /// Turns a Redis error into a `StoreError`, tripping the store when the
    /// error says the connection (not the data) is the problem.
    fn failed(&self, op: Op, e: &RedisError) -> StoreError {
        let detail = describe(e);
        if e.kind() == ErrorKind::ReadOnly {
            return StoreError::ReadOnly(format!("Redis refused a write: {detail}"));
        }
        if e.kind() == ErrorKind::TypeError || e.code() == Some("WRONGTYPE") {
            return StoreError::Invalid(format!("unexpected data in Redis: {detail}"));
        }
        if is_connection_error(e) {
            self.trip(op, &detail);
        }
        StoreError::Unavailable(detail)
    }

    /// Marks the store down (once per outage) and wakes the probe.
    fn trip(&self, op: Op, why: &str) {
        if self.set_up(false) {
            tracing::warn!(
                url = %self.shown_url,
                op = op.name(),
                error = why,
                "key store unreachable; failing fast until Redis answers again"
            );
            self.tripped.notify_one();
        }
    }

    /// Returns whether the state changed.
    fn set_up(&self, up: bool) -> bool {
        self.up.send_if_modified(|current| {
            let changed = *current != up;
            *current = up;
            changed
        })
    }

    /// One health check ([`health`]) straight through the connection,
    /// bypassing fail-fast.
    async fn probe(&self) -> Result<(), String> {
        let Some(conn) = self.conn.load_full() else {
            return Err("not connected".to_owned());
        };
        let mut conn = (*conn).clone();
        match tokio::time::timeout(self.admin_timeout, health(&mut conn)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err("health check timed out".to_owned()),
        }
    }
}

/// The store's operations, named as the trait's methods (for logs, and for
/// a later `keyward_store_errors_total{op}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Get,
    GetById,
    List,
    Insert,
    Revoke,
    SetExpiresAt,
    TouchLastUsed,
    /// `add_usage` and `usage` (SPEC §8 usage counts).
    Usage,
    Ping,
    /// [`RedisStore::eval_script`]: the rate limiter's one call per request.
    RateLimit,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::GetById => "get_by_id",
            Op::List => "list",
            Op::Insert => "insert",
            Op::Revoke => "revoke",
            Op::SetExpiresAt => "set_expires_at",
            Op::TouchLastUsed => "touch_last_used",
            Op::Usage => "usage",
            Op::Ping => "ping",
            Op::RateLimit => "rate_limit",
        }
    }

    /// `get` and `rate_limit` serve requests; `ping` answers `/readyz`,
    /// which must fail as fast as the request path would. The rest may take
    /// longer.
    fn on_request_path(self) -> bool {
        matches!(self, Op::Get | Op::Ping | Op::RateLimit)
    }

    /// Many commands at once, off the request path: run on the store's
    /// second connection so they never queue ahead of a request's command.
    fn bulk(self) -> bool {
        matches!(self, Op::TouchLastUsed | Op::Usage | Op::List)
    }
}

/// Makes the bulk connection ([`Inner::bulk`]). Once made it reconnects by
/// itself like the first; until then the first serves its operations, and
/// the supervisor tries again at the next health check.
async fn connect_bulk(inner: &Inner, connector: &Connector) {
    match tokio::time::timeout(inner.admin_timeout, connector.connect()).await {
        Ok(Ok(bulk)) => inner.bulk.store(Some(Arc::new(bulk))),
        Ok(Err(e)) => tracing::debug!(error = %describe(&e), "no bulk Redis connection yet"),
        Err(_) => tracing::debug!("no bulk Redis connection yet: connect timed out"),
    }
}

/// The background half of the store: first connect with backoff, then
/// watch health. Holds only a `Weak` so dropping the last `RedisStore`
/// ends it (`Inner::drop` also aborts it).
async fn supervise(store: Weak<Inner>, tripped: Arc<Notify>, connector: Connector) {
    let mut backoff = Backoff::new(CONNECT_BACKOFF);
    let mut attempts = 0u32;
    loop {
        let Some(inner) = store.upgrade() else { return };
        let error = match tokio::time::timeout(inner.admin_timeout, connector.connect()).await {
            Ok(Ok(conn)) => {
                inner.conn.store(Some(Arc::new(conn)));
                inner.timeouts_in_a_row.store(0, Ordering::Relaxed);
                inner.set_up(true);
                tracing::info!(url = %inner.shown_url, "connected to the Redis key store");
                connect_bulk(&inner, &connector).await;
                break;
            }
            Ok(Err(e)) => describe(&e),
            Err(_) => "connection timed out".to_owned(),
        };
        // The first failure is worth a warning; the retries that follow
        // would only repeat it every few seconds.
        if attempts == 0 {
            tracing::warn!(url = %inner.shown_url, error = %error, "cannot reach the Redis key store yet; retrying in the background");
        } else {
            tracing::debug!(url = %inner.shown_url, error = %error, attempts, "Redis key store still unreachable");
        }
        attempts += 1;
        drop(inner);
        tokio::time::sleep(backoff.next_delay()).await;
    }

    loop {
        // Up: wait for a trip, checking health now and then meanwhile.
        let woken = tokio::select! {
            _ = tripped.notified() => true,
            _ = tokio::time::sleep(HEALTH_INTERVAL) => false,
        };
        let Some(inner) = store.upgrade() else { return };
        if !woken {
            if inner.bulk.load().is_none() {
                connect_bulk(&inner, &connector).await;
            }
            // Through the normal path, so a failure trips the store.
            let _ = RedisStore { inner }.ping().await;
            continue;
        }
        drop(inner);

        // Down: probe at once (a single dropped connection is usually back
        // in one round trip), then with backoff until Redis answers.
        let mut backoff = Backoff::new(PROBE_BACKOFF);
        loop {
            let Some(inner) = store.upgrade() else { return };
            if *inner.up.borrow() {
                break;
            }
            match inner.probe().await {
                Ok(()) => {
                    inner.timeouts_in_a_row.store(0, Ordering::Relaxed);
                    inner.set_up(true);
                    tracing::info!(url = %inner.shown_url, "Redis key store reachable again");
                    break;
                }
                Err(e) => {
                    tracing::debug!(url = %inner.shown_url, error = %e, "Redis key store still down")
                }
            }
            drop(inner);
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

impl KeyStore for RedisStore {
    /// One HGETALL: the request path's only round trip.
    async fn get(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        let key = self.key_of(hash);
        let fields: HashMap<String, String> = self
            .run(Op::Get, |mut c| {
                let key = &key;
                async move { ::redis::cmd("HGETALL").arg(key).query_async(&mut c).await }
            })
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        parse_logged(hash, &fields).map(Some)
    }

    async fn get_by_id(&self, id: &str) -> Result<Option<(KeyHash, KeyRecord)>, StoreError> {
        let Some(hash) = self.hash_of_id(id).await? else {
            return Ok(None);
        };
        Ok(self.get(&hash).await?.map(|record| (hash, record)))
    }

    async fn list(&self, owner: Option<&str>) -> Result<Vec<(KeyHash, KeyRecord)>, StoreError> {
        let hashes: Vec<KeyHash> = match owner {
            None => self.scan_hashes().await?,
            Some(owner) => self.owner_hashes(owner).await?,
        };
        let mut out = Vec::with_capacity(hashes.len());
        for (hash, fields) in self.fetch_records(&hashes).await? {
            let Some(fields) = fields else { continue };
            // One bad record (written by some other system) must not hide
            // every other key from the operator; it is logged instead.
            let Ok(record) = parse_logged(&hash, &fields) else {
                continue;
            };
            if owner.is_some_and(|o| record.owner != o) {
                continue;
            }
            out.push((hash, record));
        }
        sort_listing(&mut out);
        Ok(out)
    }

    async fn insert(&self, hash: &KeyHash, record: &KeyRecord) -> Result<(), StoreError> {
        super::check_record(record).map_err(|p| StoreError::Invalid(p.to_string()))?;
        let (key, id_key, owner_key) =
            (self.key_of(hash), self.id_key(&record.id), self.owner_key(&record.owner));
        let hex = hash.to_hex();
        let fields = fields_of(record);
        let mut args = vec![hex.as_str(), record.id.as_str()];
        for (name, value) in &fields {
            args.extend([*name, value.as_str()]);
        }
        let outcome: i64 = if self.inner.cluster {
            // From `args`: the id, then the field/value pairs.
            let hash_args = &args[1..];
            self.run(Op::Insert, |mut c| {
                let (key, id_key, owner_key, hex) = (&key, &id_key, &owner_key, &hex);
                let id = &record.id;
                async move {
                    insert_in_cluster(&mut c, key, id_key, owner_key, hex, id, hash_args).await
                }
            })
            .await?
        } else {
            let keys = [key.as_str(), id_key.as_str(), owner_key.as_str()];
            self.run(Op::Insert, |mut c| {
                let (keys, args) = (&keys, &args);
                async move { invoke(&mut c, &INSERT, keys, args).await }
            })
            .await?
        };
        match outcome {
            0 => Ok(()),
            1 => Err(StoreError::Conflict("a key with the same hash exists already".to_owned())),
            _ => Err(StoreError::Conflict(format!("a key with id {:?} exists already", record.id))),
        }
    }

    async fn revoke(&self, id: &str, at: u64) -> Result<KeyRecord, StoreError> {
        self.modify(id, Op::Revoke, "revoke", Some(at)).await
    }

    async fn set_expires_at(&self, id: &str, at: Option<u64>) -> Result<KeyRecord, StoreError> {
        match at {
            Some(at) => self.modify(id, Op::SetExpiresAt, "expire", Some(at)).await,
            None => self.modify(id, Op::SetExpiresAt, "unexpire", None).await,
        }
    }

    async fn touch_last_used(&self, batch: &[(KeyHash, u64)]) -> Result<(), StoreError> {
        for chunk in batch.chunks(BATCH) {
            let touches = chunk.iter().map(|(hash, at)| (self.key_of(hash), *at));
            let calls = self.eval_per_slot(TOUCH_LUA, None, touches, |cmd, at| {
                cmd.arg(*at);
            });
            self.run_batch::<Value>(Op::TouchLastUsed, &calls).await?;
        }
        Ok(())
    }

    async fn add_usage(&self, batch: &[super::usage::UsageDelta]) -> Result<(), StoreError> {
        let ttl = super::usage::RETENTION_DAYS * 86_400;
        // Nearly always one day for the whole batch (two around midnight).
        let mut dates: Vec<(u32, String)> = Vec::with_capacity(2);
        for (_, day, _) in batch {
            if !dates.iter().any(|(d, _)| d == day) {
                dates.push((*day, super::usage::date_of(*day)));
            }
        }
        for chunk in batch.chunks(BATCH) {
            let counts = chunk.iter().map(|(id, day, n)| (self.usage_key(id), (*day, *n)));
            let calls = self.eval_per_slot(USAGE_LUA, Some(ttl), counts, |cmd, (day, n)| {
                let (_, date) =
                    dates.iter().find(|(d, _)| d == day).expect("every day of the batch is dated");
                cmd.arg(date).arg(*n);
            });
            self.run_batch::<Value>(Op::Usage, &calls).await?;
        }
        Ok(())
    }

    async fn usage(&self, id: &str, days: &[u32]) -> Result<Vec<u64>, StoreError> {
        if days.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = ::redis::cmd("HMGET");
        cmd.arg(self.usage_key(id));
        for day in days {
            cmd.arg(super::usage::date_of(*day));
        }
        let counts: Vec<Option<u64>> = self
            .run(Op::Usage, |mut c| {
                let cmd = &cmd;
                async move { cmd.query_async(&mut c).await }
            })
            .await?;
        Ok(counts.into_iter().map(Option::unwrap_or_default).collect())
    }

    async fn reserve_creation(
        &self,
        owner: &str,
        window_s: u64,
        max: u32,
    ) -> Result<Option<u64>, StoreError> {
        let key = format!("{}creations:{owner}", self.inner.prefix);
        let member = crate::auth::key::new_key_id();
        let mut cmd = ::redis::cmd("EVAL");
        cmd.arg(CREATION_LUA).arg(1).arg(&key).arg(window_s).arg(max).arg(&member);
        let wait_ms: i64 = self
            .run(Op::Insert, |mut c| {
                let cmd = &cmd;
                async move { cmd.query_async(&mut c).await }
            })
            .await?;
        Ok(u64::try_from(wait_ms).ok().map(|ms| ms.div_ceil(1000).max(1)))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(Op::Ping, |mut c| async move { health(&mut c).await }).await
    }
}

impl RedisStore {
    /// Every `{p}key:{hex}` (SCAN, so Redis keeps serving meanwhile; fine
    /// for an operator's listing, never used on the request path). On a
    /// cluster, every master in turn.
    async fn scan_hashes(&self) -> Result<Vec<KeyHash>, StoreError> {
        let key_prefix = format!("{}key:", self.inner.prefix);
        let pattern = format!("{}*", glob_escape(&key_prefix));
        // One Redis: one pass (`None`); a cluster: one per master.
        let masters: Vec<Option<Master>> = if self.inner.cluster {
            let masters = self.run(Op::List, |c| async move {
                match c {
                    Conn::Cluster(mut cluster) => cluster_masters(&mut cluster).await,
                    Conn::Single(_) => Ok(Vec::new()),
                }
            });
            masters.await?.into_iter().map(Some).collect()
        } else {
            vec![None]
        };
        // SCAN may return a key twice; the set also sorts.
        let mut found = BTreeSet::new();
        for master in &masters {
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = self
                    .run(Op::List, |mut c| {
                        let pattern = &pattern;
                        async move { scan_page(&mut c, master.as_ref(), cursor, pattern).await }
                    })
                    .await?;
                found.extend(
                    keys.iter()
                        .filter_map(|k| k.strip_prefix(&key_prefix))
                        .filter_map(KeyHash::from_hex),
                );
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(found.into_iter().collect())
    }

    /// The hashes of the ids in `{p}owner:{owner}`, each once; ids whose
    /// index is gone are skipped.
    async fn owner_hashes(&self, owner: &str) -> Result<Vec<KeyHash>, StoreError> {
        let set = self.owner_key(owner);
        let ids: Vec<String> = self
            .run(Op::List, |mut c| {
                let set = &set;
                async move { ::redis::cmd("SMEMBERS").arg(set).query_async(&mut c).await }
            })
            .await?;
        let mut hashes = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH) {
            let batch: Vec<(u16, Cmd)> = chunk
                .iter()
                .map(|id| {
                    let key = self.id_key(id);
                    (self.slot(&key), ::redis::cmd("GET").arg(key).to_owned())
                })
                .collect();
            let hexes: Vec<Option<String>> = self.run_batch(Op::List, &batch).await?;
            hashes.extend(hexes.iter().flatten().filter_map(|h| KeyHash::from_hex(h.trim())));
        }
        // Two ids naming one hash (on a cluster, an insert that lost a race
        // for that hash, for the moment its undo takes) list the key once.
        hashes.sort_unstable();
        hashes.dedup();
        Ok(hashes)
    }
}

// ---------------------------------------------------------------------------
// Records <-> hash fields

/// The hash fields of a record: only the fields that are set (absent
/// `expires_at` = never, absent `revoked_at` = active, SPEC §4).
fn fields_of(r: &KeyRecord) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("id", r.id.clone()),
        ("name", r.name.clone()),
        ("owner", r.owner.clone()),
        ("scopes", r.scopes.join(" ")),
        ("created_at", r.created_at.to_string()),
        ("display_prefix", r.display_prefix.clone()),
    ];
    let optional = [
        ("env", r.env.clone()),
        ("plan", r.plan.clone()),
        ("description", r.description.clone()),
        ("expires_at", r.expires_at.map(|t| t.to_string())),
        ("revoked_at", r.revoked_at.map(|t| t.to_string())),
        ("last_used_at", r.last_used_at.map(|t| t.to_string())),
    ];
    fields.extend(optional.into_iter().filter_map(|(n, v)| v.map(|v| (n, v))));
    fields
}

/// Reads a record as another system may have written it: missing optional
/// fields are `None`, empty `env`/`plan`/`description` are `None`, `scopes`
/// splits on whitespace (and commas), times are decimal Unix seconds (a
/// fraction is dropped). Without `id` or `owner` it is not a record.
///
/// Scope names that SPEC §10 does not allow are dropped (and returned, to be
/// logged) rather than forwarded to the upstream. Unknown fields are ignored.
pub(crate) fn parse_record(
    fields: &HashMap<String, String>,
) -> Result<(KeyRecord, Vec<String>), String> {
    let text = |name: &str| fields.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let time = |name: &str| -> Result<Option<u64>, String> {
        let Some(v) = text(name) else { return Ok(None) };
        let whole = match v.split_once('.') {
            Some((whole, frac)) if frac.bytes().all(|b| b.is_ascii_digit()) => whole,
            _ => v,
        };
        whole
            .parse::<u64>()
            .map(Some)
            .map_err(|_| format!("field {name}: {v:?} is not a Unix time in seconds"))
    };
    let (mut scopes, mut dropped) = (Vec::new(), Vec::new());
    for scope in text("scopes")
        .unwrap_or_default()
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
    {
        if crate::config::is_valid_scope(scope) {
            scopes.push(scope.to_owned());
        } else {
            dropped.push(scope.to_owned());
        }
    }
    let record = KeyRecord {
        id: text("id").ok_or("no id field")?.to_owned(),
        name: text("name").unwrap_or_default().to_owned(),
        owner: text("owner").ok_or("no owner field")?.to_owned(),
        env: text("env").map(str::to_owned),
        scopes,
        plan: text("plan").map(str::to_owned),
        created_at: time("created_at")?.unwrap_or(0),
        expires_at: time("expires_at")?,
        revoked_at: time("revoked_at")?,
        description: text("description").map(str::to_owned),
        display_prefix: text("display_prefix").unwrap_or_default().to_owned(),
        last_used_at: time("last_used_at")?,
    };
    super::check_record(&record).map_err(|p| p.to_string())?;
    Ok((record, dropped))
}

/// [`parse_record`], logging what it refuses or drops (by hash, which is not
/// secret; never by key).
fn parse_logged(hash: &KeyHash, fields: &HashMap<String, String>) -> Result<KeyRecord, StoreError> {
    match parse_record(fields) {
        Ok((record, dropped)) => {
            if !dropped.is_empty() {
                tracing::warn!(key_hash = %hash, key_id = %record.id, dropped = ?dropped, "ignoring scopes that are not valid scope names");
            }
            Ok(record)
        }
        Err(why) => {
            tracing::warn!(key_hash = %hash, error = %why, "unreadable key record in Redis");
            Err(StoreError::Invalid(format!("key record {hash}: {why}")))
        }
    }
}

// ---------------------------------------------------------------------------
// Small helpers

/// The cluster client for `store.redis.cluster_nodes`, the seed nodes (it
/// learns the others from them). Connect and response timeouts are the
/// store's budget off the request path; retries are few and short
/// ([`CLUSTER_RETRIES`]).
fn cluster_client(nodes: &[String], admin_timeout: Duration) -> Result<ClusterClient, StoreError> {
    let mut infos = Vec::with_capacity(nodes.len());
    for node in nodes {
        let invalid = |why: String| {
            StoreError::Invalid(format!("invalid Redis Cluster node {}: {why}", redact_url(node)))
        };
        let info = node.as_str().into_connection_info().map_err(|e| invalid(describe(&e)))?;
        check_tls(&info).map_err(invalid)?;
        if info.redis.db != 0 {
            return Err(invalid(format!(
                "a Redis Cluster has only database 0, not {}",
                info.redis.db
            )));
        }
        infos.push(info);
    }
    ClusterClientBuilder::new(infos)
        .connection_timeout(admin_timeout)
        .response_timeout(admin_timeout)
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(CLUSTER_RETRY_WAIT_MS.0)
        .max_retry_wait(CLUSTER_RETRY_WAIT_MS.1)
        .build()
        .map_err(|e| {
            StoreError::Invalid(format!(
                "invalid Redis Cluster nodes {}: {}",
                shown_nodes(nodes),
                describe(&e)
            ))
        })
}

/// For a `rediss://` address: refuses `#insecure` (redis-rs's switch that
/// turns certificate checks off; a man in the middle could then answer
/// lookups and admit any key) and makes sure rustls has its crypto
/// provider. redis-rs builds its TLS config with `ClientConfig::builder()`,
/// which takes the process-wide default provider; keyward passes its own
/// everywhere else (`crate::tls::provider`), so it installs that same one
/// as the default here (a no-op when one is installed already) rather
/// than leave the choice to whichever rustls features the build enables.
pub(crate) fn check_tls(info: &::redis::ConnectionInfo) -> Result<(), String> {
    match &info.addr {
        ::redis::ConnectionAddr::TcpTls { insecure: true, .. } => Err(
            "#insecure turns off TLS certificate checks; keyward refuses it (trust a private CA \
             with SSL_CERT_FILE instead)"
                .to_owned(),
        ),
        ::redis::ConnectionAddr::TcpTls { .. } => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `cluster [<node> …]`, passwords masked: how logs name a cluster.
fn shown_nodes(nodes: &[String]) -> String {
    let shown: Vec<String> = nodes.iter().map(|n| redact_url(n)).collect();
    format!("cluster [{}]", shown.join(" "))
}

/// An error worth failing the store over: the connection, not the data.
fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::BusyLoadingError
                | ErrorKind::TryAgain
                | ErrorKind::MasterDown
                | ErrorKind::ClusterDown
        )
}

/// A Redis error as text, with any URL password masked (redis-rs errors may
/// quote the connection address).
fn describe(e: &RedisError) -> String {
    crate::config::redact_urls_in(&e.to_string())
}

/// Escapes SCAN's glob characters in a literal prefix.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Exponential backoff with jitter: each delay is drawn from [d/2, d], d
/// doubling from `min` to `max`, so replicas that lost Redis together don't
/// reconnect in lockstep.
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new((min, max): (Duration, Duration)) -> Backoff {
        Backoff { next: min, max }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        let half = d / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn benchmark_style_fields_parse_with_defaults_for_the_rest() {
        let (r, dropped) = parse_record(&map(&[
            ("id", "key_1"),
            ("name", "bench"),
            ("owner", "acme"),
            ("env", "live"),
            ("scopes", "jobs:read jobs:write"),
            ("plan", "free"),
            ("created_at", "1793491200"),
            ("display_prefix", "kw_live_abcd"),
        ]))
        .expect("parses");
        assert!(dropped.is_empty());
        assert_eq!(
            r,
            KeyRecord {
                id: "key_1".into(),
                name: "bench".into(),
                owner: "acme".into(),
                env: Some("live".into()),
                scopes: vec!["jobs:read".into(), "jobs:write".into()],
                plan: Some("free".into()),
                created_at: 1_793_491_200,
                expires_at: None,
                revoked_at: None,
                description: None,
                display_prefix: "kw_live_abcd".into(),
                last_used_at: None,
            }
        );
    }

    #[test]
    fn lenient_forms_other_writers_use_are_accepted() {
        let (r, _) = parse_record(&map(&[
            ("id", "key_1"),
            ("owner", "acme"),
            ("env", ""),
            ("plan", ""),
            ("description", ""),
            ("scopes", "  a:read,b:write\tc  "),
            ("created_at", " 1700000000.75 "),
            ("expires_at", ""),
            ("revoked_at", "1700000001"),
            ("some_other_system_field", "x"),
        ]))
        .expect("parses");
        assert_eq!((r.env, r.plan, r.description), (None, None, None));
        assert_eq!(r.scopes, ["a:read", "b:write", "c"]);
        assert_eq!(r.created_at, 1_700_000_000);
        assert_eq!((r.expires_at, r.revoked_at), (None, Some(1_700_000_001)));
        assert_eq!((r.name.as_str(), r.display_prefix.as_str()), ("", ""));
    }

    #[test]
    fn a_record_without_id_or_owner_or_with_a_bad_time_is_invalid() {
        assert!(parse_record(&map(&[("owner", "acme")])).is_err());
        assert!(parse_record(&map(&[("id", "key_1")])).is_err());
        assert!(parse_record(&map(&[("id", " "), ("owner", "acme")])).is_err());
        let err = parse_record(&map(&[("id", "k"), ("owner", "o"), ("expires_at", "soon")]))
            .expect_err("bad time");
        assert!(err.contains("expires_at"), "{err}");
        assert!(parse_record(&map(&[("id", "k"), ("owner", "o"), ("created_at", "-5")])).is_err());
        assert!(parse_record(&map(&[("id", "k\r\nX-Evil: 1"), ("owner", "o")])).is_err());
    }

    #[test]
    fn scopes_that_are_not_scope_names_are_dropped_not_forwarded() {
        let (r, dropped) =
            parse_record(&map(&[("id", "k"), ("owner", "o"), ("scopes", "jobs:read * Admin:All")]))
                .expect("parses");
        assert_eq!(r.scopes, ["jobs:read"]);
        assert_eq!(dropped, ["*", "Admin:All"]);
    }

    #[test]
    fn fields_written_round_trip_through_the_parser() {
        let r = KeyRecord {
            id: "key_1".into(),
            name: "ci runner".into(),
            owner: "acme".into(),
            env: Some("test".into()),
            scopes: vec!["jobs:read".into()],
            plan: None,
            created_at: 5,
            expires_at: Some(6),
            revoked_at: None,
            description: Some("multi word".into()),
            display_prefix: "kw_test_abcd".into(),
            last_used_at: Some(7),
        };
        let fields = fields_of(&r);
        let names: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
        assert!(!names.contains(&"plan") && !names.contains(&"revoked_at"), "{names:?}");
        let as_map = fields.into_iter().map(|(n, v)| (n.to_owned(), v)).collect();
        assert_eq!(parse_record(&as_map).expect("parses").0, r);
    }

    #[test]
    fn scan_patterns_escape_glob_characters_of_the_prefix() {
        assert_eq!(glob_escape("keyward:key:"), "keyward:key:");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_in_the_upper_half() {
        let mut b = Backoff::new((Duration::from_millis(100), Duration::from_secs(5)));
        let mut ceiling = Duration::from_millis(100);
        for _ in 0..12 {
            let d = b.next_delay();
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            ceiling = (ceiling * 2).min(Duration::from_secs(5));
        }
    }

    #[test]
    fn slots_follow_the_cluster_spec_hash_tags_included() {
        // The CRC16 check value of the cluster specification's reference.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        // `CLUSTER KEYSLOT foo` on a real Redis.
        assert_eq!(slot_of(b"foo"), 12_182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"{user1000}.followers"));
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        // The spec's edge cases: only the first `{`, an empty tag counts
        // for nothing, and the tag ends at the first `}` after it.
        assert_eq!(slot_of(b"foo{}{bar}"), crc16(b"foo{}{bar}") % CLUSTER_SLOTS);
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
        assert_eq!(slot_of(b"foo{bar}{zap}"), slot_of(b"bar"));
        assert_eq!(slot_of(b"foo{bar"), crc16(b"foo{bar") % CLUSTER_SLOTS);
    }

    #[tokio::test]
    async fn a_cluster_config_starts_a_cluster_store_in_the_background() {
        let config = RedisConfig {
            url: None,
            // Nothing listens there; the store starts anyway (SPEC §9).
            cluster_nodes: vec!["redis://127.0.0.1:1".into(), "redis://127.0.0.1:2".into()],
            ..RedisConfig::default()
        };
        let store = RedisStore::new(&config).expect("a cluster store");
        assert!(store.is_cluster() && !store.is_up());
        assert!(format!("{store:?}").contains("cluster [redis://127.0.0.1:1"), "{store:?}");
        let err = store.get(&KeyHash::of("k")).await.expect_err("not connected");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    }

    #[test]
    fn cluster_nodes_redis_rs_cannot_use_are_refused_without_the_password() {
        for (nodes, why) in [
            (vec!["redis://:hunter2@10.0.0.1:6379/3"], "only database 0"),
            (vec!["redis+unix:///run/redis.sock"], "unix socket"),
            (vec!["redis://:hunter2@10.0.0.1:6379", "redis://:other@10.0.0.2:6379"], "password"),
        ] {
            let config = RedisConfig {
                url: None,
                cluster_nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
                ..RedisConfig::default()
            };
            let err = RedisStore::new(&config).expect_err("refused").to_string();
            assert!(err.contains(why), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[tokio::test]
    async fn rediss_urls_are_accepted_and_insecure_ones_refused() {
        let tls = |url: &str| RedisConfig { url: Some(url.into()), ..RedisConfig::default() };
        let store = RedisStore::new(&tls("rediss://:hunter2@127.0.0.1:1/0")).expect("TLS is built");
        assert!(!store.is_up());
        let nodes = |url: &str| RedisConfig {
            url: None,
            cluster_nodes: vec![url.into()],
            ..RedisConfig::default()
        };
        RedisStore::new(&nodes("rediss://127.0.0.1:1")).expect("TLS cluster nodes too");
        for config in [
            tls("rediss://:hunter2@127.0.0.1:1/0#insecure"),
            nodes("rediss://:hunter2@127.0.0.1:1/#insecure"),
        ] {
            let err = RedisStore::new(&config).expect_err("#insecure").to_string();
            assert!(err.contains("#insecure turns off TLS certificate checks"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn a_bad_url_error_never_shows_the_password() {
        let config =
            RedisConfig { url: Some("redis://user:hunter2@[bad".into()), ..RedisConfig::default() };
        let err = RedisStore::new(&config).expect_err("bad url").to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
