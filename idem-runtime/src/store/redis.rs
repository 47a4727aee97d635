//! Redis and Redis Cluster stores.
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
//! token is the server's `TIME` in microseconds at acquisition, so it grows with every takeover.
//!
//! Round trips: `begin` and `complete` are one `EVALSHA` each, so a first request costs 2, a replay
//! or a duplicate in progress 1. Scripts are loaded when the store connects; a server that lost
//! them (restart, failover, `SCRIPT FLUSH`) answers `NOSCRIPT`, and the call is resent once as
//! `EVAL`, which runs it, while every script is loaded again in the background: no request fails
//! for it.

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, RedisError, ServerErrorKind, Value};
use std::sync::Arc;
use std::time::Duration;

use super::redis_notify::{self, Waiters};
use super::{Begin, Fenced, Store, StoreError};
use crate::{FencingToken, Fingerprint, Record, RecordState, StorageKey, StoredResponse};

/// Where the response starts in a record (Lua's 1-based offsets below are `HEADER + 1` = 72).
const HEADER: usize = 1 + 32 + 16 + 6 + 16;
const TOKEN: std::ops::Range<usize> = 33..49;
const ATTEMPT: std::ops::Range<usize> = 49..55;

/// `now`: the server's clock in ms; `token`: its clock in µs, 16 digits.
const CLOCK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

const BEGIN: &str = r"
local v = redis.call('GET', KEYS[1])
local attempt = 1
if v then
  local st = string.sub(v, 1, 1)
  if st == 'c' then
    if string.sub(v, 2, 33) ~= ARGV[1] then return {'M'} end
    return {'C', string.sub(v, 72)}
  end
  if st == 'p' then
    local left = tonumber(string.sub(v, 56, 71)) - now
    if left > 0 then
      if string.sub(v, 2, 33) ~= ARGV[1] then return {'M'} end
      return {'P', left}
    end
  end
  -- Six digits: clamped, so that a key retried a million times keeps a well-formed record.
  attempt = math.min(tonumber(string.sub(v, 50, 55)) + 1, 999999)
end
local token = t[1] .. string.format('%06d', tonumber(t[2]))
local lease = tonumber(ARGV[2])
redis.call('SET', KEYS[1],
  'p' .. ARGV[1] .. token .. string.format('%06d', attempt) .. string.format('%016d', now + lease),
  'PX', math.max(lease, tonumber(ARGV[3])))
return {'A', token, attempt}
";

/// The fence shared by complete, release and renew: the record must be in progress and held by
/// ARGV[1]. A lease that ran out while nobody took the key over still belongs to its holder (a
/// takeover hands out a new token, which this check refuses), so a late renewal re-extends it
/// and a late completion is kept instead of running the operation again.
const HELD: &str = r"
local v = redis.call('GET', KEYS[1])
if (not v) or string.sub(v, 1, 1) ~= 'p' or string.sub(v, 34, 49) ~= ARGV[1] then return 0 end
";

const COMPLETE_TAIL: &str = r"
redis.call('SET', KEYS[1], 'c' .. string.sub(v, 2, 71) .. ARGV[2], 'PX', ARGV[3])
redis.call('PUBLISH', 'idem:done', KEYS[1])
return 1
";

const RELEASE_TAIL: &str = r"
redis.call('SET', KEYS[1], 'r' .. string.sub(v, 2, 71), 'KEEPTTL')
redis.call('PUBLISH', 'idem:done', KEYS[1])
return 1
";

const RENEW_TAIL: &str = r"
local lease = tonumber(ARGV[2])
redis.call('SET', KEYS[1], string.sub(v, 1, 55) .. string.format('%016d', now + lease), 'KEEPTTL')
if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
return 1
";

const PURGE: &str = r"
local n = redis.call('DEL', KEYS[1])
redis.call('PUBLISH', 'idem:done', KEYS[1])
return n
";

const GET: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
local st = string.sub(v, 1, 1)
if st == 'c' then return {v, redis.call('PTTL', KEYS[1])} end
if st == 'p' then
  local left = tonumber(string.sub(v, 56, 71)) - now
  if left > 0 then return {v, left} end
end
return false
";

/// A script with its SHA-1, sent as `EVALSHA` and resent as `EVAL` on `NOSCRIPT`.
struct Script {
    code: String,
    sha: String,
}

impl Script {
    fn new(code: String) -> Self {
        let sha = redis::Script::new(&code).get_hash().to_string();
        Script { code, sha }
    }
}

struct Scripts {
    begin: Script,
    complete: Script,
    release: Script,
    renew: Script,
    get: Script,
    purge: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            begin: Script::new(format!("{CLOCK}{BEGIN}")),
            complete: Script::new(format!("{CLOCK}{HELD}{COMPLETE_TAIL}")),
            release: Script::new(format!("{CLOCK}{HELD}{RELEASE_TAIL}")),
            renew: Script::new(format!("{CLOCK}{HELD}{RENEW_TAIL}")),
            get: Script::new(format!("{CLOCK}{GET}")),
            purge: Script::new(PURGE.into()),
        }
    }

    fn all(&self) -> [&Script; 6] {
        [
            &self.begin,
            &self.complete,
            &self.release,
            &self.renew,
            &self.get,
            &self.purge,
        ]
    }
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query(&self, cmd: &Cmd) -> Result<Value, RedisError> {
        match self.clone() {
            Conn::Single(mut c) => cmd.query_async(&mut c).await,
            Conn::Cluster(mut c) => cmd.query_async(&mut c).await,
        }
    }
}

/// A [`Store`] on Redis (one server) or Redis Cluster. Cheap to clone; clones share connections.
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
    /// Set while the scripts are being loaded again after a `NOSCRIPT`: one reload at a time,
    /// however many calls met the lost scripts at once.
    reloading: Arc<std::sync::atomic::AtomicBool>,
}

/// Builder for [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisStoreBuilder {
    urls: Vec<String>,
    cluster: bool,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl RedisStoreBuilder {
    /// One Redis server: `redis://[:password@]host:port[/db]` (`rediss://` with feature
    /// `redis-tls`).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.urls = vec![url.into()];
        self.cluster = false;
        self
    }

    /// A Redis Cluster, reached through any of these seed nodes.
    pub fn cluster<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.urls = urls.into_iter().map(Into::into).collect();
        self.cluster = true;
        self
    }

    /// Deadline for establishing a connection (default 1 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Deadline for one command's answer inside the client (default 500 ms). The engine puts its
    /// own `store_timeout` around every call as well.
    pub fn response_timeout(mut self, t: Duration) -> Self {
        self.response_timeout = t;
        self
    }

    /// Connects, and loads the scripts on every primary.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        let conn = if self.cluster {
            let client = ClusterClient::builder(self.urls.clone())
                .connection_timeout(self.connect_timeout)
                .response_timeout(self.response_timeout)
                .build()
                .map_err(unavailable)?;
            Conn::Cluster(client.get_async_connection().await.map_err(unavailable)?)
        } else {
            let url = self
                .urls
                .first()
                .ok_or_else(|| StoreError::Unavailable("no Redis URL given".into()))?;
            let client = redis::Client::open(url.as_str()).map_err(unavailable)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.connect_timeout))
                .set_response_timeout(Some(self.response_timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            Conn::Single(
                ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(unavailable)?,
            )
        };
        let store = RedisStore {
            conn,
            scripts: Arc::new(Scripts::new()),
            waiters: Arc::new(Waiters::default()),
            reloading: Arc::default(),
        };
        store.load_scripts().await?;
        tokio::spawn(redis_notify::subscribe(
            self.urls,
            Arc::downgrade(&store.waiters),
        ));
        Ok(store)
    }
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_string())
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
        RedisStoreBuilder {
            urls: vec!["redis://127.0.0.1:6379".into()],
            cluster: false,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_millis(500),
        }
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
            self.conn.query(&cmd).await.map_err(unavailable)?;
        }
        Ok(())
    }

    /// Runs `script` on `key`: one `EVALSHA`, or on `NOSCRIPT` one more round trip as `EVAL`.
    async fn eval(
        &self,
        script: &Script,
        key: &StorageKey,
        args: &[&[u8]],
    ) -> Result<Value, StoreError> {
        let build = |verb: &str, body: &str| {
            let mut cmd = redis::cmd(verb);
            cmd.arg(body).arg(1).arg(key.as_str());
            for a in args {
                cmd.arg(*a);
            }
            cmd
        };
        match self.conn.query(&build("EVALSHA", &script.sha)).await {
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
                self.conn
                    .query(&build("EVAL", &script.code))
                    .await
                    .map_err(unavailable)
            }
            other => other.map_err(unavailable),
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
        let lease_ms = millis(lease).to_string();
        let keep_ms = millis(keep).to_string();
        let v = self
            .eval(
                &self.scripts.begin,
                key,
                &[&fingerprint.0, lease_ms.as_bytes(), keep_ms.as_bytes()],
            )
            .await?;
        let Value::Array(items) = v else {
            return Err(corrupt("begin answer"));
        };
        let tag = items.first().and_then(bytes_of);
        match (tag, items.get(1)) {
            (Some(b"A"), Some(t)) => Ok(Begin::Acquired {
                token: parse_token(bytes_of(t).ok_or_else(|| corrupt("token"))?)?,
                attempt: match items.get(2) {
                    Some(Value::Int(n)) => u32::try_from(*n).map_err(|_| corrupt("attempt"))?,
                    _ => return Err(corrupt("attempt")),
                },
            }),
            (Some(b"M"), _) => Ok(Begin::Mismatch),
            (Some(b"P"), Some(Value::Int(ms))) => Ok(Begin::InProgress {
                lease_left: Duration::from_millis((*ms).max(0) as u64),
            }),
            (Some(b"C"), Some(Value::BulkString(resp))) => Ok(Begin::Replay(
                StoredResponse::decode(Bytes::copy_from_slice(resp))
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            )),
            _ => Err(corrupt("begin answer")),
        }
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
        let token = token_arg(token);
        fenced(
            self.eval(
                &self.scripts.complete,
                key,
                &[token.as_bytes(), &encoded, ttl_ms.as_bytes()],
            )
            .await?,
        )
    }

    async fn release(&self, key: &StorageKey, token: FencingToken) -> Result<Fenced, StoreError> {
        let token = token_arg(token);
        fenced(
            self.eval(&self.scripts.release, key, &[token.as_bytes()])
                .await?,
        )
    }

    async fn renew(
        &self,
        key: &StorageKey,
        token: FencingToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        let token = token_arg(token);
        let lease_ms = millis(lease).to_string();
        fenced(
            self.eval(
                &self.scripts.renew,
                key,
                &[token.as_bytes(), lease_ms.as_bytes()],
            )
            .await?,
        )
    }

    async fn wait(&self, key: &StorageKey, timeout: Duration) -> Result<(), StoreError> {
        let wake = self.waiters.register(key.as_str());
        super::settle(self, key, timeout, super::waiters::POLL_EVERY, Some(&wake)).await
    }

    async fn purge(&self, key: &StorageKey) -> Result<bool, StoreError> {
        match self.eval(&self.scripts.purge, key, &[]).await? {
            Value::Int(n) => Ok(n > 0),
            _ => Err(corrupt("purge answer")),
        }
    }

    async fn get(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        let v = self.eval(&self.scripts.get, key, &[]).await?;
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
            b'p' => RecordState::InProgress {
                token: parse_token(&raw[TOKEN])?,
            },
            b'c' => RecordState::Completed {
                response: StoredResponse::decode(Bytes::copy_from_slice(&raw[HEADER..]))
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
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
