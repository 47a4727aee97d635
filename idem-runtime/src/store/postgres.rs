//! The PostgreSQL store (feature `postgres`): the most durable home for records, one row each.
//!
//! `begin` is one statement (an `INSERT … ON CONFLICT … DO UPDATE … WHERE` that only takes a
//! record over when it is free, wrapped so that the same round trip also returns the live row it
//! did not take). Leases, TTLs and ages come from the database clock (`now()`), fencing tokens
//! from a sequence, and every write after `begin` is fenced by the token. A reaper task
//! deletes expired rows in bounded batches. The table is created by [`PostgresStore::connect`]
//! (under an advisory lock, so concurrent starts do not race).
//!
//! A request that waits on a record in progress (`on_conflict = "wait"`, webhooks) marks the row
//! `waiting`; the completion or release of a marked row `NOTIFY`s the channel `<table>_done`
//! with the storage key (an unmarked one notifies nobody: `NOTIFY` serializes commits, so it is
//! paid only when someone listens). One `LISTEN`ing connection per store wakes the local
//! waiters, which also re-read the record now and then in case a notification is lost. A notification
//! sent inside a transaction is delivered when it commits, so a transactional completion wakes
//! waiters only once its writes are visible.
//!
//! For `#[idempotent(transactional)]` endpoints the store also opens the handler's transaction
//! and writes the completion inside it (see [`IdemTx`](crate::IdemTx)).

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{Manager, Pool};
use futures_util::StreamExt;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, NoTls, Socket};

use super::waiters::{Waiters, POLL_EVERY};
use super::{Begin, Fenced, Store, StoreError};
use crate::{FencingToken, Fingerprint, Record, RecordState, StorageKey, StoredResponse};

/// A [`Store`] on PostgreSQL. Cheap to clone; clones share the pool.
///
/// ```no_run
/// # async fn demo() -> Result<(), idem_runtime::StoreError> {
/// let store = idem_runtime::PostgresStore::connect("host=127.0.0.1 user=postgres dbname=app").await?;
/// # let _ = store; Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    table: String,
    sql: Arc<Statements>,
    waiters: Arc<Waiters>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn ms(d: Duration) -> i64 {
    d.as_millis().clamp(1, i64::MAX as u128) as i64
}

impl PostgresStore {
    /// Connects with a libpq-style string (`host=… user=… dbname=…`) or a `postgres://` URL,
    /// and creates the table `idem_records` if it is missing.
    pub async fn connect(config: &str) -> Result<Self, StoreError> {
        Self::connect_table(config, "idem_records").await
    }

    /// Like [`connect`](Self::connect), with records in `table` (letters, digits and `_`).
    pub async fn connect_table(config: &str, table: &str) -> Result<Self, StoreError> {
        Self::builder(config).table(table).connect().await
    }

    /// A store with settings other than the defaults (table `idem_records`, 16 pooled
    /// connections):
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), idem_runtime::StoreError> {
    /// let store = idem_runtime::PostgresStore::builder("host=127.0.0.1 user=postgres dbname=app")
    ///     .table("payments_idempotency")
    ///     .max_connections(8)
    ///     .connect()
    ///     .await?;
    /// # let _ = store; Ok(()) }
    /// ```
    pub fn builder(config: &str) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            config: config.to_owned(),
            table: "idem_records".into(),
            max_connections: 16,
            tls: NoTls,
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(unavailable)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let t = &self.table;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(unavailable)?;
        tx.execute("SELECT pg_advisory_xact_lock(7420551)", &[])
            .await
            .map_err(unavailable)?;
        tx.batch_execute(&format!(
            "CREATE SEQUENCE IF NOT EXISTS {t}_token;
             CREATE TABLE IF NOT EXISTS {t} (
                 key text PRIMARY KEY,
                 fingerprint bytea NOT NULL,
                 state char(1) NOT NULL,
                 token bigint NOT NULL,
                 attempt integer NOT NULL,
                 acquired_at timestamptz NOT NULL,
                 lease_until timestamptz NOT NULL,
                 expires_at timestamptz NOT NULL,
                 response bytea
             );
             ALTER TABLE {t} ADD COLUMN IF NOT EXISTS waiting boolean NOT NULL DEFAULT false;
             CREATE INDEX IF NOT EXISTS {t}_expires ON {t} (expires_at);"
        ))
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    /// Deletes expired rows, at most 1000 per statement, every 5 s, for as long as the runtime
    /// lives.
    async fn reap_forever(self) {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            loop {
                match self.reap_once().await {
                    Ok(n) if n >= 1000 => continue,
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(%error, "idem: reaping expired records failed");
                        break;
                    }
                }
            }
        }
    }

    /// One pass of the reaper: deletes at most 1000 expired rows, never one that a concurrent
    /// `begin` took over meanwhile. Returns how many it deleted. The reaper task calls this every
    /// 5 s; exposed for tests.
    #[doc(hidden)]
    pub async fn reap_once(&self) -> Result<u64, StoreError> {
        let c = self.client().await?;
        c.execute(&self.sql.reap, &[]).await.map_err(unavailable)
    }

    /// Runs one of the fenced statements of [`Statements`] on `client`.
    async fn fenced_on(
        client: &deadpool_postgres::ClientWrapper,
        sql: &str,
        key: &StorageKey,
        token: FencingToken,
        extra: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Fenced, tokio_postgres::Error> {
        let token = token.0 as i64;
        let key = key.as_str();
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&key, &token];
        params.extend_from_slice(extra);
        let statement = client.prepare_cached(sql).await?;
        let n = client.execute(&statement, &params).await?;
        Ok(if n == 1 { Fenced::Done } else { Fenced::Lost })
    }

    /// Runs one fenced update on a pooled connection.
    async fn fenced(
        &self,
        sql: &str,
        key: &StorageKey,
        token: FencingToken,
        extra: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Fenced, StoreError> {
        let client = self.client().await?;
        Self::fenced_on(&client, sql, key, token, extra)
            .await
            .map_err(unavailable)
    }

    /// Takes a pooled connection and opens a transaction on it, for a transactional handler.
    pub(crate) async fn open_tx(&self) -> Result<TxConn, StoreError> {
        let client = self.client().await?;
        let conn = TxConn { obj: Some(client) };
        conn.batch("BEGIN").await.map_err(unavailable)?;
        Ok(conn)
    }

    /// Writes the completion of `key` inside the transaction of `conn` (fenced like
    /// [`Store::complete`]) and commits, in one round trip: the fenced `UPDATE` and `COMMIT`
    /// are sent together. The `UPDATE` raises an error when the lease is lost, which aborts the
    /// transaction, so the `COMMIT` behind it can only roll back: the handler's writes never
    /// commit without the record.
    pub(crate) async fn complete_and_commit(
        &self,
        mut conn: TxConn,
        key: &StorageKey,
        token: FencingToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> TxEnd {
        let Some(client) = conn.obj.as_deref() else {
            return TxEnd::Lost;
        };
        let statement = match client.prepare_cached(&self.sql.complete_in_tx).await {
            Ok(s) => s,
            // Preparing fails in a transaction the handler's SQL already aborted.
            Err(e) => return TxEnd::RolledBack(e),
        };
        let (body, ttl) = (response.encode().to_vec(), ms(ttl));
        let token = token.0 as i64;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&key.as_str(), &token, &body, &ttl];
        // Both requests leave before either answer is read.
        let (completed, committed) = tokio::join!(
            client.query(&statement, &params),
            client.batch_execute("COMMIT")
        );
        use tokio_postgres::error::SqlState;
        let end = match (completed, committed) {
            (Ok(_), Ok(())) => TxEnd::Committed,
            (Err(e), Ok(())) if e.code() == Some(&SqlState::INVALID_ARGUMENT_FOR_LOG) => {
                TxEnd::EndedByHandler
            }
            (Err(e), Ok(())) if e.code() == Some(&SqlState::DIVISION_BY_ZERO) => TxEnd::Lost,
            // The `COMMIT` of an aborted transaction is a `ROLLBACK`.
            (Err(e), Ok(())) => TxEnd::RolledBack(e),
            (Err(e), Err(_)) => return TxEnd::RolledBack(e),
            (Ok(_), Err(e)) => return TxEnd::Unknown(e),
        };
        // The transaction ended cleanly: the connection goes back to the pool.
        drop(conn.obj.take());
        end
    }
}

/// How a transactional completion ended.
pub(crate) enum TxEnd {
    /// The handler's writes and the stored response committed.
    Committed,
    /// The lease had been lost (another attempt took over): rolled back.
    Lost,
    /// The handler ended the transaction itself (`COMMIT` or `ROLLBACK` through `IdemTx`):
    /// whatever it wrote is as it left it, and the record was not written.
    EndedByHandler,
    /// The transaction failed (usually the handler's own SQL) and was rolled back.
    RolledBack(tokio_postgres::Error),
    /// `COMMIT` did not answer cleanly: whether it committed is unknown here.
    Unknown(tokio_postgres::Error),
}

/// Every statement the store sends, written once for its table (and prepared once per
/// connection).
struct Statements {
    /// The channel completions and releases of marked rows are notified on.
    channel: String,
    begin: String,
    get: String,
    purge: String,
    /// Deletes expired rows, at most 1000 per statement.
    reap: String,
    complete: String,
    release: String,
    renew: String,
    /// Marks a row in progress as waited on, so that its completion notifies.
    mark_waiting: String,
    /// The completion inside a transactional handler's transaction.
    complete_in_tx: String,
}

impl Statements {
    fn new(t: &str) -> Self {
        let channel = format!("{t}_done");
        // A token-checked update: a lease that ran out while nobody took the key over still
        // belongs to its holder (a takeover hands out a new token). `clock_timestamp()`, not
        // `now()`, in the `SET`s: inside a transaction `now()` is the time it began.
        let fenced = |set: &str| {
            format!(
                "UPDATE {t} SET {set}
                  WHERE key = $1 AND token = $2 AND state = 'p'
                  RETURNING key, waiting"
            )
        };
        // ... that also notifies the channel with the key when a waiter marked the row.
        let notifying = |set: &str| {
            format!(
                "WITH u AS ({}) SELECT CASE WHEN waiting THEN pg_notify('{channel}', key) END FROM u",
                fenced(set)
            )
        };
        Statements {
            begin: format!(
                "WITH live AS (
               SELECT token, attempt, fingerprint, state, lease_until, response FROM {t}
                WHERE key = $1
                  AND ((state = 'c' AND expires_at > now()) OR (state = 'p' AND lease_until > now()))),
             taken AS (
               INSERT INTO {t} AS r (key, fingerprint, state, token, attempt, acquired_at, lease_until, expires_at)
               SELECT $1, $2, 'p', nextval('{t}_token'), 1, now(),
                      now() + $3::bigint * interval '1 millisecond',
                      now() + greatest($3::bigint, $4::bigint) * interval '1 millisecond'
                WHERE NOT EXISTS (SELECT 1 FROM live)
               ON CONFLICT (key) DO UPDATE SET
                 fingerprint = EXCLUDED.fingerprint, state = 'p', token = EXCLUDED.token,
                 attempt = CASE WHEN r.expires_at > now() THEN r.attempt + 1 ELSE 1 END,
                 acquired_at = now(), lease_until = EXCLUDED.lease_until,
                 expires_at = EXCLUDED.expires_at, response = NULL
               WHERE NOT ((r.state = 'c' AND r.expires_at > now())
                       OR (r.state = 'p' AND r.lease_until > now()))
               RETURNING token, attempt)
             SELECT true, token, attempt, NULL::bytea, NULL::text, NULL::bigint, NULL::bytea FROM taken
             UNION ALL
             SELECT false, token, attempt, fingerprint, state::text,
                    (extract(epoch FROM (lease_until - now())) * 1000)::bigint, response
               FROM live"
            ),
            get: format!(
                "SELECT fingerprint, state::text, token, attempt,
                    (extract(epoch FROM acquired_at) * 1000000)::bigint,
                    (extract(epoch FROM (CASE WHEN state = 'p' THEN lease_until ELSE expires_at END - now())) * 1000)::bigint,
                    response
               FROM {t} WHERE key = $1
                AND ((state = 'c' AND expires_at > now()) OR (state = 'p' AND lease_until > now()))"
            ),
            purge: format!("DELETE FROM {t} WHERE key = $1"),
            // The predicate is repeated outside: under READ COMMITTED a row the subquery picked
            // but a concurrent `begin` revived meanwhile is re-checked only against the outer
            // `WHERE` (EvalPlanQual), so without it a live record would be deleted. `SKIP LOCKED`
            // also keeps the reaper off rows being written right now.
            reap: format!(
                "DELETE FROM {t} WHERE expires_at < now() AND key IN
                   (SELECT key FROM {t} WHERE expires_at < now() LIMIT 1000 FOR UPDATE SKIP LOCKED)"
            ),
            complete: notifying(COMPLETE_SET),
            release: notifying("state = 'r'"),
            renew: fenced(
                "lease_until = clock_timestamp() + $3::bigint * interval '1 millisecond',
                 expires_at = greatest(expires_at, clock_timestamp() + $3::bigint * interval '1 millisecond')",
            ),
            mark_waiting: format!(
                "UPDATE {t} SET waiting = true WHERE key = $1 AND state = 'p' AND NOT waiting"
            ),
            // Two guards that fail the whole statement, its `UPDATE` included, on values the
            // planner cannot fold away: `ln(0)` when the statement runs outside a transaction
            // block (the handler ended ours: its transaction started with this very
            // statement), `1 / 0` when no row was updated (the lease was lost).
            complete_in_tx: format!(
                "WITH u AS ({})
                 SELECT ln(CASE WHEN now() = statement_timestamp() THEN 0 ELSE 1 END),
                        1 / (CASE WHEN u.key IS NULL THEN 0 ELSE 1 END),
                        CASE WHEN u.waiting THEN pg_notify('{channel}', u.key) END
                   FROM (SELECT 1) AS one LEFT JOIN u ON true",
                fenced(COMPLETE_SET)
            ),
            channel,
        }
    }
}

/// The `SET` of a completion: `$3` the encoded response, `$4` the TTL in milliseconds.
const COMPLETE_SET: &str = "state = 'c', response = $3,
     expires_at = clock_timestamp() + $4::bigint * interval '1 millisecond'";

/// A pooled connection with a transaction open on it. Committed or rolled back explicitly; if
/// it is dropped while the transaction is open (a panic, a cancelled task), the connection is
/// closed instead of going back to the pool, and PostgreSQL rolls the transaction back.
pub(crate) struct TxConn {
    obj: Option<deadpool_postgres::Object>,
}

impl TxConn {
    /// The connection, while the transaction is open.
    pub(crate) fn client_mut(&mut self) -> Option<&mut deadpool_postgres::ClientWrapper> {
        self.obj.as_deref_mut()
    }

    async fn batch(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        match &self.obj {
            Some(c) => c.batch_execute(sql).await,
            None => Ok(()),
        }
    }

    /// Ends the transaction with `COMMIT` (or `ROLLBACK`); the connection goes back to the pool
    /// only when that statement succeeded.
    async fn finish(mut self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.batch(sql).await?;
        // Done cleanly: back to the pool rather than closed by `Drop`.
        drop(self.obj.take());
        Ok(())
    }

    /// `COMMIT`.
    pub(crate) async fn commit(self) -> Result<(), tokio_postgres::Error> {
        self.finish("COMMIT").await
    }

    /// `ROLLBACK`; a failure is logged (the connection is closed, which rolls back as well).
    pub(crate) async fn rollback(self) {
        if let Err(error) = self.finish("ROLLBACK").await {
            tracing::warn!(%error, "idem: ROLLBACK failed; the connection is closed instead");
        }
    }
}

impl Drop for TxConn {
    fn drop(&mut self) {
        if let Some(obj) = self.obj.take() {
            // Detached from the pool, the client is dropped and its connection closed.
            drop(deadpool_postgres::Object::take(obj));
        }
    }
}

/// Keeps one `LISTEN` connection on `channel` for as long as `waiters` lives, reconnecting with
/// a short backoff.
async fn listen_forever<T: Tls>(
    config: tokio_postgres::Config,
    tls: T,
    channel: String,
    waiters: Weak<Waiters>,
) {
    while waiters.strong_count() > 0 {
        if let Err(error) = listen(&config, tls.clone(), &channel, &waiters).await {
            tracing::debug!(%error, "idem: PostgreSQL LISTEN connection failed; retrying");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn listen<T: Tls>(
    config: &tokio_postgres::Config,
    tls: T,
    channel: &str,
    waiters: &Weak<Waiters>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tls).await?;
    // Notifications arrive through the connection, which this task drives.
    let to_wake = waiters.clone();
    let mut driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => match to_wake.upgrade() {
                    Some(w) => w.wake(n.payload()),
                    None => return,
                },
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "idem: PostgreSQL LISTEN connection ended");
                    return;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .await?;
    loop {
        tokio::select! {
            _ = &mut driver => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                if waiters.strong_count() == 0 {
                    driver.abort();
                    return Ok(());
                }
            }
        }
    }
}

/// A TLS connector for the store's connections: `NoTls` (the default), or any
/// `tokio-postgres` connector (`tokio-postgres-rustls`, `postgres-native-tls`, …) given to
/// [`PostgresStoreBuilder::tls`]. Implemented for every type that qualifies.
pub trait Tls:
    MakeTlsConnect<Socket, Stream = Self::TlsStream, TlsConnect = Self::Connector>
    + Clone
    + Sync
    + Send
    + 'static
{
    /// The encrypted stream.
    type TlsStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Sync + Send + 'static;
    /// The per-connection connector.
    type Connector: TlsConnect<Socket, Stream = Self::TlsStream, Future = Self::Handshake>
        + Sync
        + Send;
    /// The handshake.
    type Handshake: Send;
}

impl<T> Tls for T
where
    T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
    T::Stream: Sync + Send + 'static,
    T::TlsConnect: Sync + Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    type TlsStream = T::Stream;
    type Connector = T::TlsConnect;
    type Handshake = <T::TlsConnect as TlsConnect<Socket>>::Future;
}

/// Settings of a [`PostgresStore`]; see [`PostgresStore::builder`].
#[derive(Debug, Clone)]
pub struct PostgresStoreBuilder<T = NoTls> {
    config: String,
    table: String,
    max_connections: usize,
    tls: T,
}

impl<T> PostgresStoreBuilder<T> {
    /// The records' table (letters, digits and `_`; default `idem_records`). Its token sequence
    /// is `<table>_token` and its notification channel `<table>_done`.
    pub fn table(mut self, table: &str) -> Self {
        self.table = table.to_owned();
        self
    }

    /// Pooled connections (default 16, at least 2). A transactional handler holds one for its
    /// whole run while its lease is renewed through another, so a pool of one could starve the
    /// renewal; the store keeps one more, outside the pool, for `LISTEN`.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(2);
        self
    }

    /// Encrypts every connection with `tls` (a `tokio-postgres` TLS connector; whether and how
    /// the server's certificate is checked is the connector's business, and the connection
    /// string's `sslmode` says whether TLS is required).
    pub fn tls<U: Tls>(self, tls: U) -> PostgresStoreBuilder<U> {
        PostgresStoreBuilder {
            config: self.config,
            table: self.table,
            max_connections: self.max_connections,
            tls,
        }
    }

    /// Connects, creates the table if it is missing, and starts the reaper and the listener.
    pub async fn connect(self) -> Result<PostgresStore, StoreError>
    where
        T: Tls,
    {
        let table = self.table;
        if table.is_empty()
            || table.len() > 50
            || !table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(StoreError::Unavailable(format!(
                "invalid table name `{table}`: 1 to 50 letters, digits and `_`"
            )));
        }
        let pg: tokio_postgres::Config = self.config.parse().map_err(unavailable)?;
        let pool = Pool::builder(Manager::new(pg.clone(), self.tls.clone()))
            .max_size(self.max_connections)
            .build()
            .map_err(unavailable)?;
        let store = PostgresStore {
            pool,
            sql: Arc::new(Statements::new(&table)),
            table,
            waiters: Arc::new(Waiters::default()),
        };
        store.migrate().await?;
        let reaper = store.clone();
        tokio::spawn(async move { reaper.reap_forever().await });
        tokio::spawn(listen_forever(
            pg,
            self.tls,
            store.sql.channel.clone(),
            Arc::downgrade(&store.waiters),
        ));
        Ok(store)
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn begin(
        &self,
        key: &StorageKey,
        fingerprint: &Fingerprint,
        lease: Duration,
        keep: Duration,
    ) -> Result<Begin, StoreError> {
        // A live row (completed, or leased) is read and returned without writing or locking
        // anything: replays and duplicates in flight cost one indexed read. Otherwise the insert
        // (or the takeover of a released, lapsed or expired row) happens in the same statement;
        // its `WHERE` re-checks the row under its lock, for a rival that got there first.
        let client = self.client().await?;
        // Prepared once per connection: after that, `begin` is one round trip.
        let statement = client
            .prepare_cached(&self.sql.begin)
            .await
            .map_err(unavailable)?;
        let (lease_ms, keep_ms) = (ms(lease), ms(keep));
        // A concurrent insert committed between this statement's snapshot and its conflict
        // check leaves it with no row to show: ask again, once.
        for _ in 0..2 {
            let rows = client
                .query(
                    &statement,
                    &[
                        &key.as_str(),
                        &fingerprint.0.as_slice(),
                        &lease_ms,
                        &keep_ms,
                    ],
                )
                .await
                .map_err(unavailable)?;
            let Some(row) = rows.first() else { continue };
            if row.get::<_, bool>(0) {
                return Ok(Begin::Acquired {
                    token: FencingToken(row.get::<_, i64>(1) as u64),
                    attempt: row.get::<_, i32>(2).max(1) as u32,
                });
            }
            let fp: Vec<u8> = row.get(3);
            if fp != fingerprint.0 {
                return Ok(Begin::Mismatch);
            }
            let state: String = row.get(4);
            return match state.as_str() {
                "p" => Ok(Begin::InProgress {
                    lease_left: Duration::from_millis(row.get::<_, i64>(5).max(0) as u64),
                }),
                _ => {
                    let raw: Option<Vec<u8>> = row.get(6);
                    let resp = StoredResponse::decode(Bytes::from(raw.unwrap_or_default()))
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    Ok(Begin::Replay(resp))
                }
            };
        }
        Err(StoreError::Unavailable(
            "begin found neither a free nor a live record".into(),
        ))
    }

    async fn complete(
        &self,
        key: &StorageKey,
        token: FencingToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<Fenced, StoreError> {
        let body = response.encode().to_vec();
        let ttl = ms(ttl);
        self.fenced(&self.sql.complete, key, token, &[&body, &ttl])
            .await
    }

    async fn release(&self, key: &StorageKey, token: FencingToken) -> Result<Fenced, StoreError> {
        self.fenced(&self.sql.release, key, token, &[]).await
    }

    async fn renew(
        &self,
        key: &StorageKey,
        token: FencingToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        let lease = ms(lease);
        self.fenced(&self.sql.renew, key, token, &[&lease]).await
    }

    fn as_postgres(&self) -> Option<&PostgresStore> {
        Some(self)
    }

    async fn wait(&self, key: &StorageKey, timeout: Duration) -> Result<(), StoreError> {
        // Ask for a notification before the first read: a completion after the mark notifies,
        // one before it is seen by the read.
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.sql.mark_waiting)
            .await
            .map_err(unavailable)?;
        client
            .execute(&statement, &[&key.as_str()])
            .await
            .map_err(unavailable)?;
        drop(client);
        let wake = self.waiters.register(key.as_str());
        super::settle(self, key, timeout, POLL_EVERY, Some(&wake)).await
    }

    async fn purge(&self, key: &StorageKey) -> Result<bool, StoreError> {
        let n = self
            .client()
            .await?
            .execute(&self.sql.purge, &[&key.as_str()])
            .await
            .map_err(unavailable)?;
        Ok(n > 0)
    }

    async fn get(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.sql.get)
            .await
            .map_err(unavailable)?;
        let rows = client
            .query(&statement, &[&key.as_str()])
            .await
            .map_err(unavailable)?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let fp: Vec<u8> = row.get(0);
        let fingerprint = Fingerprint(
            fp.try_into()
                .map_err(|_| StoreError::Corrupt("fingerprint length".into()))?,
        );
        let state: String = row.get(1);
        let state = match state.as_str() {
            "p" => RecordState::InProgress {
                token: FencingToken(row.get::<_, i64>(2) as u64),
            },
            _ => RecordState::Completed {
                response: StoredResponse::decode(Bytes::from(
                    row.get::<_, Option<Vec<u8>>>(6).unwrap_or_default(),
                ))
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            },
        };
        Ok(Some(Record {
            fingerprint,
            state,
            attempt: row.get::<_, i32>(3).max(1) as u32,
            acquired_at: SystemTime::UNIX_EPOCH
                .checked_add(Duration::from_micros(row.get::<_, i64>(4).max(0) as u64)),
            expires_in: Duration::from_millis(row.get::<_, i64>(5).max(0) as u64),
        }))
    }
}
