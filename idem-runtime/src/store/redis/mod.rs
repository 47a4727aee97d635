//! Redis stores: one server, a Redis Cluster, or the master a set of Sentinels names.
//!
//! One Redis string per record, every operation one single-key Lua script (so a cluster never
//! sees a cross-slot command), and leases and TTLs as Redis expiries, on the server's clock.
//!
//! A record is `state (1 byte) ‖ fingerprint (32 raw bytes) ‖ token (16 digits) ‖ attempt
//! (6 digits) ‖ lease end (16 digits, server ms) ‖ response`, where the state is `p` (in progress),
//! `c` (completed) or `r` (released: free, kept only to count attempts) and the response is
//! [`StoredResponse::encode`]: the body stays raw bytes. The lease end lives in the value, checked
//! against the server's `TIME` by every script, so a record that is not completed can outlive its
//! lease (as a Redis expiry, for `keep`) and still count attempts across takeovers. The fencing
//! token is the server's `TIME` in microseconds at acquisition, or the key's previous token + 1 if
//! that is larger: it grows with every takeover, even after a failover to a replica whose clock
//! is behind.
//!
//! With [`durability`](RedisStoreBuilder::durability), `WAIT n timeout` follows every write in
//! the same round trip (2 round trips for a first request, 4 commands). Redis that may evict
//! records (`maxmemory-policy` other than `noeviction`) is refused unless
//! [`allow_eviction`](RedisStoreBuilder::allow_eviction) says otherwise.
//!
//! Round trips: `begin` and `complete` are one `EVALSHA` each, so a first request costs 2, a replay
//! or a duplicate in progress 1. Scripts are loaded when the store connects; a server that lost
//! them (restart, failover, `SCRIPT FLUSH`) answers `NOSCRIPT`, and the call is resent once as
//! `EVAL`, which runs it, while every script is loaded again in the background: no request fails
//! for it.

use async_trait::async_trait;
use bytes::Bytes;
use redis::{ErrorKind, RedisError, ServerErrorKind, Value};
use std::sync::Arc;
use std::time::Duration;

use super::{Begin, Fenced, Store, StoreError};
use crate::{FencingToken, Fingerprint, Record, RecordState, StorageKey, StoredResponse};
use conn::Conn;
use notify::Waiters;
use scripts::{Script, Scripts, ATTEMPT, HEADER, TOKEN};

mod builder;
mod conn;
mod eviction;
mod index;
mod notify;
mod scripts;

pub use builder::RedisStoreBuilder;

/// A [`Store`] on Redis: one server, a cluster, or the master named by Sentinels. Cheap to
/// clone; clones share connections. See "Running Redis for idempotency" in `docs/stores.md` for the
/// settings it needs (`noeviction`, persistence, replication).
///
/// ```no_run
/// # async fn demo() -> Result<(), idem_runtime::StoreError> {
/// use idem_runtime::RedisStore;
/// let single = RedisStore::connect("redis://:secret@127.0.0.1:6379/2").await?;
/// let cluster = RedisStore::builder()
///     .cluster(["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"])
///     .connect()
///     .await?;
/// # let _ = (single, cluster); Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    scripts: Arc<Scripts>,
    waiters: Arc<Waiters>,
    /// Purges and erasures by any client, from the subscription (for `CachedStore`).
    invalidations: tokio::sync::broadcast::Sender<crate::store::Invalidation>,
    /// Set while the scripts are being loaded again after a `NOSCRIPT`: one reload at a time,
    /// however many calls met the lost scripts at once.
    reloading: Arc<std::sync::atomic::AtomicBool>,
    /// `WAIT replicas timeout` behind every write, when set.
    durability: Option<(u32, Duration)>,
    /// The eviction watcher's verdict.
    watch: Arc<eviction::Watch>,
    /// The `maxmemory-policy` found at connect.
    policy: Arc<str>,
    /// Whether records are indexed per principal (a cluster: see `index.rs`).
    indexed: bool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("durability", &self.durability)
            .field("maxmemory_policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// A driver error as a store error, keeping it as the source: what only the operator can fix
/// (a refused password or ACL permission, a bad client setting, a service Sentinel does not
/// know) is [`StoreError::Config`]; a server at `maxmemory` [`StoreError::Full`]; anything else (I/O, timeouts, a failover in progress)
/// [`StoreError::Unavailable`].
fn failed(e: RedisError) -> StoreError {
    use redis::{ErrorKind, ServerErrorKind};
    let config = matches!(
        e.kind(),
        ErrorKind::AuthenticationFailed
            | ErrorKind::InvalidClientConfig
            | ErrorKind::MasterNameNotFoundBySentinel
            | ErrorKind::EmptySentinelList
            | ErrorKind::Server(ServerErrorKind::NoPerm)
    ) || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"));
    // At `maxmemory` under `noeviction` (the only policy idem accepts) every write is refused
    // with `OOM`: an answer from a store at capacity, not an outage, so `Full`, which
    // `on_store_error = "proceed"` never runs unprotected (a flood must not be able to switch
    // idempotency off). The code is lost on the way in two cases the text still shows: inside
    // a pipeline (`durability` sends every write with `WAIT`), and inside a script on Redis
    // before 7 (`ERR Error running script … -OOM command not allowed …`).
    let full = e.code() == Some("OOM")
        || e.to_string()
            .contains("command not allowed when used memory > 'maxmemory'");
    if config {
        StoreError::Config(Box::new(e))
    } else if full {
        tracing::warn!(error = %e, "idem: Redis is at capacity; refusing requests until it has room");
        StoreError::Full
    } else {
        StoreError::Unavailable(Box::new(e))
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.into())
}

fn token_arg(t: FencingToken) -> String {
    format!("{:016}", t.0)
}

fn parse_number<T: std::str::FromStr>(raw: &[u8], what: &str) -> Result<T, StoreError> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt(what))
}

fn parse_token(raw: &[u8]) -> Result<FencingToken, StoreError> {
    parse_number(raw, "fencing token").map(FencingToken)
}

fn millis(d: Duration) -> u64 {
    // Redis rejects a zero expiry.
    (d.as_millis() as u64).max(1)
}

fn fenced(v: Value) -> Result<Fenced, StoreError> {
    match v {
        Value::Int(1) => Ok(Fenced::Done),
        Value::Int(0) => Ok(Fenced::Lost),
        _ => Err(corrupt("unexpected script answer")),
    }
}

fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

impl RedisStore {
    /// A builder: `redis://127.0.0.1:6379`, single server.
    pub fn builder() -> RedisStoreBuilder {
        RedisStoreBuilder::default()
    }

    /// The `maxmemory-policy` found at connect (`noeviction` unless eviction was allowed).
    pub fn eviction_policy(&self) -> &str {
        &self.policy
    }

    /// Connects to one Redis server at `url`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder().url(url).connect().await
    }

    /// Loads every script (on every primary, in a cluster). Called on connect; call it again
    /// after a failover to spare the first requests their `NOSCRIPT` retry.
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        for s in self.scripts.all() {
            let mut cmd = redis::cmd("SCRIPT");
            cmd.arg("LOAD").arg(s.code.as_bytes());
            self.conn.query(&cmd).await.map_err(failed)?;
        }
        Ok(())
    }

    /// Runs `script` on `key`: one `EVALSHA`, or on `NOSCRIPT` one more round trip as `EVAL`.
    /// A write (`writes`) on a durable store is followed by `WAIT` in the same round trip, and
    /// its answer comes back as [`Unreplicated`] when too few replicas acknowledged it.
    async fn eval(
        &self,
        script: &Script,
        key: &StorageKey,
        index: Option<&str>,
        args: &[&[u8]],
        writes: bool,
    ) -> Result<Result<Value, Unreplicated>, StoreError> {
        self.watch.check()?;
        let durability = self.durability.filter(|_| writes);
        let send = |cmd: redis::Cmd| async move {
            match durability {
                None => self.conn.query(&cmd).await.map(Ok),
                Some((replicas, timeout)) => {
                    let (value, acked) = self.conn.query_then_wait(&cmd, replicas, timeout).await?;
                    Ok(if acked >= i64::from(replicas) {
                        Ok(value)
                    } else {
                        Err(Unreplicated { value, acked })
                    })
                }
            }
        };
        let build = |verb: &str, body: &str| {
            let mut cmd = redis::cmd(verb);
            cmd.arg(body);
            match index {
                Some(index) => cmd.arg(2).arg(key.as_str()).arg(index),
                None => cmd.arg(1).arg(key.as_str()),
            };
            for a in args {
                cmd.arg(*a);
            }
            cmd
        };
        match send(build("EVALSHA", &script.sha)).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                // Reload every script in the background, so the other operations do not each
                // pay their own NOSCRIPT round trip; one reload at a time.
                use std::sync::atomic::Ordering;
                if !self.reloading.swap(true, Ordering::AcqRel) {
                    tracing::info!("idem: Redis lost its scripts (restart, failover or SCRIPT FLUSH); resending as EVAL and reloading them");
                    let store = self.clone();
                    tokio::spawn(async move {
                        if let Err(error) = store.load_scripts().await {
                            tracing::warn!(%error, "idem: reloading the Redis scripts failed; calls fall back to EVAL");
                        }
                        store.reloading.store(false, Ordering::Release);
                    });
                }
                send(build("EVAL", &script.code)).await.map_err(failed)
            }
            other => other.map_err(failed),
        }
    }

    /// A write that must be replicated: an unacknowledged one is an error (retried by the
    /// engine like any failed write; every write is fenced and safe to repeat).
    /// A write fenced by `token` (the script's first argument, before `args`).
    async fn fenced_write(
        &self,
        script: &Script,
        key: &StorageKey,
        token: FencingToken,
        args: &[&[u8]],
    ) -> Result<Fenced, StoreError> {
        let token = token_arg(token);
        let mut all: Vec<&[u8]> = Vec::with_capacity(args.len() + 1);
        all.push(token.as_bytes());
        all.extend_from_slice(args);
        fenced(self.write(script, key, &all).await?)
    }

    async fn write(
        &self,
        script: &Script,
        key: &StorageKey,
        args: &[&[u8]],
    ) -> Result<Value, StoreError> {
        self.eval(script, key, None, args, true)
            .await?
            .map_err(|u| u.error(self.durability))
    }

    /// A read: never waits for replicas.
    async fn read(&self, script: &Script, key: &StorageKey) -> Result<Value, StoreError> {
        self.eval(script, key, None, &[], false)
            .await
            .map(|answer| answer.unwrap_or_else(|u| u.value))
    }
}

/// A write fewer replicas acknowledged than the store's durability asks for.
struct Unreplicated {
    value: Value,
    acked: i64,
}

impl Unreplicated {
    fn error(self, durability: Option<(u32, Duration)>) -> StoreError {
        let (replicas, timeout) = durability.unwrap_or_default();
        StoreError::Unavailable(
            format!(
                "the write reached {} of the {replicas} replica(s) it needs within {timeout:?}",
                self.acked
            )
            .into(),
        )
    }
}

impl RedisStore {
    /// `begin`; `state` `t` for `begin_tentative` (see `Store::begin_tentative`).
    async fn begin_as(
        &self,
        key: &StorageKey,
        fingerprint: &Fingerprint,
        lease: Duration,
        keep: Duration,
        state: &[u8],
    ) -> Result<Begin, StoreError> {
        let lease_ms = millis(lease).to_string();
        let keep_ms = millis(keep).to_string();
        let index = self.indexed.then(|| index::index_of(key)).flatten();
        let (v, replicated) = match self
            .eval(
                &self.scripts.begin,
                key,
                index.as_deref(),
                &[
                    &fingerprint.0,
                    lease_ms.as_bytes(),
                    keep_ms.as_bytes(),
                    state,
                ],
                true,
            )
            .await?
        {
            Ok(v) => (v, None),
            Err(u) => {
                let acked = u.acked;
                (u.value, Some(acked))
            }
        };
        let Value::Array(items) = v else {
            return Err(corrupt("begin answer"));
        };
        let tag = items.first().and_then(bytes_of);
        match (tag, items.get(1)) {
            (Some(b"A"), Some(t)) => {
                let token = parse_token(bytes_of(t).ok_or_else(|| corrupt("token"))?)?;
                if let Some(acked) = replicated {
                    // A lease the replicas may not have: a failover now would let a duplicate
                    // run beside this one. Fail closed, and give the key back.
                    if let Err(error) = self.release(key, token).await {
                        tracing::warn!(%error, "idem: releasing an unreplicated begin failed; it frees itself when its lease ends");
                    }
                    return Err(Unreplicated {
                        value: Value::Nil,
                        acked,
                    }
                    .error(self.durability));
                }
                Ok(Begin::Acquired {
                    token,
                    attempt: match items.get(2) {
                        Some(Value::Int(n)) => u32::try_from(*n).map_err(|_| corrupt("attempt"))?,
                        _ => return Err(corrupt("attempt")),
                    },
                })
            }
            (Some(b"M"), _) => Ok(Begin::Mismatch),
            (Some(b"P"), Some(Value::Int(ms))) => Ok(Begin::InProgress {
                lease_left: Duration::from_millis((*ms).max(0) as u64),
            }),
            (Some(b"C"), Some(Value::BulkString(resp))) => Ok(Begin::Replay(
                StoredResponse::decode(Bytes::copy_from_slice(resp))
                    .map_err(|e| StoreError::Corrupt(Box::new(e)))?,
            )),
            _ => Err(corrupt("begin answer")),
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn begin(
        &self,
        key: &StorageKey,
        fingerprint: &Fingerprint,
        lease: Duration,
        keep: Duration,
    ) -> Result<Begin, StoreError> {
        self.begin_as(key, fingerprint, lease, keep, b"p").await
    }

    async fn begin_tentative(
        &self,
        key: &StorageKey,
        fingerprint: &Fingerprint,
        lease: Duration,
        keep: Duration,
    ) -> Result<Begin, StoreError> {
        self.begin_as(key, fingerprint, lease, keep, b"t").await
    }

    async fn discard(&self, key: &StorageKey, token: FencingToken) -> Result<Fenced, StoreError> {
        self.fenced_write(&self.scripts.discard, key, token, &[])
            .await
    }

    async fn confirm(
        &self,
        key: &StorageKey,
        token: FencingToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        let lease_ms = millis(lease).to_string();
        self.fenced_write(&self.scripts.confirm, key, token, &[lease_ms.as_bytes()])
            .await
    }

    async fn complete(
        &self,
        key: &StorageKey,
        token: FencingToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<Fenced, StoreError> {
        let ttl_ms = millis(ttl).to_string();
        let encoded = response.encode();
        let args: [&[u8]; 2] = [&encoded, ttl_ms.as_bytes()];
        self.fenced_write(&self.scripts.complete, key, token, &args)
            .await
    }

    async fn release(&self, key: &StorageKey, token: FencingToken) -> Result<Fenced, StoreError> {
        self.fenced_write(&self.scripts.release, key, token, &[])
            .await
    }

    async fn renew(
        &self,
        key: &StorageKey,
        token: FencingToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        let lease_ms = millis(lease).to_string();
        self.fenced_write(&self.scripts.renew, key, token, &[lease_ms.as_bytes()])
            .await
    }

    async fn wait(&self, key: &StorageKey, timeout: Duration) -> Result<(), StoreError> {
        let wake = self.waiters.register(key.as_str());
        super::settle(self, key, timeout, super::waiters::POLL_EVERY, Some(&wake)).await
    }

    async fn purge(&self, key: &StorageKey) -> Result<bool, StoreError> {
        match self.write(&self.scripts.purge, key, &[]).await? {
            Value::Int(n) => Ok(n > 0),
            _ => Err(corrupt("purge answer")),
        }
    }

    /// A single server: `SCAN … MATCH <prefix>* COUNT 1000` and `UNLINK` per batch (never
    /// blocks the server, but visits the whole keyspace). A cluster: the principal's index in
    /// each slot (`index.rs`), never a scan.
    async fn purge_prefix(&self, key_prefix: &str) -> Result<u64, StoreError> {
        let erased = self.erase(key_prefix).await;
        // Every instance's replay cache drops the prefix, also after a partial erasure.
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(notify::ERASED).arg(key_prefix);
        if let Err(error) = self.conn.query(&publish).await {
            tracing::warn!(%error, "idem: publishing an erasure to other instances failed; their replay caches forget it within their max_age");
        }
        erased
    }

    fn invalidations(
        &self,
    ) -> Option<tokio::sync::broadcast::Receiver<crate::store::Invalidation>> {
        Some(self.invalidations.subscribe())
    }

    async fn get(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        let v = self.read(&self.scripts.get, key).await?;
        let items = match v {
            Value::Nil => return Ok(None),
            Value::Array(items) => items,
            _ => return Err(corrupt("get answer")),
        };
        let (Some(Value::BulkString(raw)), Some(Value::Int(pttl))) = (items.first(), items.get(1))
        else {
            return Err(corrupt("get answer"));
        };
        if raw.len() < HEADER {
            return Err(corrupt("record header"));
        }
        let mut fp = [0u8; 32];
        fp.copy_from_slice(&raw[1..33]);
        let state = match raw[0] {
            b'p' | b't' => RecordState::InProgress {
                token: parse_token(&raw[TOKEN])?,
            },
            b'c' => RecordState::Completed {
                response: StoredResponse::decode(Bytes::copy_from_slice(&raw[HEADER..]))
                    .map_err(|e| StoreError::Corrupt(Box::new(e)))?,
            },
            _ => return Err(corrupt("record state")),
        };
        let token = parse_token(&raw[TOKEN])?;
        Ok(Some(Record {
            fingerprint: Fingerprint(fp),
            state,
            attempt: parse_number(&raw[ATTEMPT], "attempt")?,
            // The token is the server's clock in µs at acquisition.
            acquired_at: std::time::UNIX_EPOCH.checked_add(Duration::from_micros(token.0)),
            expires_in: Duration::from_millis((*pttl).max(0) as u64),
        }))
    }
}

impl RedisStore {
    /// The erasure itself: a single server `SCAN`s and `UNLINK`s; a cluster empties the
    /// principal's index in each slot.
    async fn erase(&self, key_prefix: &str) -> Result<u64, StoreError> {
        if self.indexed {
            return index::erase(&self.conn, key_prefix).await;
        }
        let mut pattern = String::with_capacity(key_prefix.len() + 1);
        for c in key_prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        let (mut cursor, mut removed) = (0u64, 0u64);
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let answer = self.conn.query(&scan).await.map_err(failed)?;
            let (next, keys): (u64, Vec<String>) =
                redis::from_redis_value(answer).map_err(|_| corrupt("SCAN answer"))?;
            if !keys.is_empty() {
                let mut unlink = redis::cmd("UNLINK");
                unlink.arg(&keys);
                let answer = self.conn.query(&unlink).await.map_err(failed)?;
                let n: u64 =
                    redis::from_redis_value(answer).map_err(|_| corrupt("UNLINK answer"))?;
                removed += n;
            }
            cursor = next;
            if cursor == 0 {
                return Ok(removed);
            }
        }
    }
}
