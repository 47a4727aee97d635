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
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{NoTls, Socket};

use super::waiters::{Waiters, POLL_EVERY};
use super::{Begin, Fenced, Store, StoreError};
pub(crate) use errors::failed;
use errors::pool_failed;
use listen::listen_forever;
use sql::Statements;
pub(crate) use tx::{TxConn, TxEnd};

mod begin;
mod errors;
mod listen;
mod sql;
mod steps;
mod tx;
use crate::{FencingToken, Fingerprint, Record, RecordState, StorageKey, StoredResponse};
pub(crate) use steps::{Abandoned, RecordedStep};

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
    /// Shared: a clone (one per transactional attempt, the reaper, the completer) copies no
    /// string.
    table: Arc<str>,
    sql: Arc<Statements>,
    steps: Arc<steps::StepSql>,
    waiters: Arc<Waiters>,
    /// Purges and erasures by any client, from the `LISTEN` connection (for `CachedStore`).
    invalidations: tokio::sync::broadcast::Sender<crate::store::Invalidation>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
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

    /// The records table's name.
    pub(crate) fn table_name(&self) -> &str {
        &self.table
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_failed)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let t = &self.table;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(failed)?;
        tx.execute("SELECT pg_advisory_xact_lock(7420551)", &[])
            .await
            .map_err(failed)?;
        tx.batch_execute(&format!(
            "CREATE SEQUENCE IF NOT EXISTS {t}_token;
             CREATE TABLE IF NOT EXISTS {t} (
                 key text COLLATE \"C\" PRIMARY KEY,
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
        .map_err(failed)?;
        self.migrate_steps(&tx).await?;
        tx.commit().await.map_err(failed)
    }

    /// Deletes expired rows, at most 1000 per statement, every 5 s, for as long as the runtime
    /// lives.
    async fn reap_forever(self) {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if let Err(error) = self.reap_all().await {
                tracing::warn!(%error, "idem: reaping expired records failed");
            }
        }
    }

    /// Deletes every expired row, in batches of at most 1000 on one pooled connection (taken
    /// once: a pool busy with requests does not make the reaper wait for each batch). Returns
    /// how many it deleted. The reaper task calls this every 5 s; exposed for benchmarks.
    #[doc(hidden)]
    pub async fn reap_all(&self) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let mut reaped = 0;
        loop {
            let n = c.execute(&self.sql.reap, &[]).await.map_err(failed)?;
            reaped += n;
            if n < 1000 {
                return Ok(reaped);
            }
        }
    }

    /// One pass of the reaper: deletes at most 1000 expired rows, never one that a concurrent
    /// `begin` took over meanwhile. Returns how many it deleted. The reaper task calls this every
    /// 5 s; exposed for tests.
    #[doc(hidden)]
    pub async fn reap_once(&self) -> Result<u64, StoreError> {
        let c = self.client().await?;
        c.execute(&self.sql.reap, &[]).await.map_err(failed)
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
            .map_err(failed)
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
#[derive(Clone)]
pub struct PostgresStoreBuilder<T = NoTls> {
    config: String,
    table: String,
    max_connections: usize,
    tls: T,
}

/// The connection string as the driver reads it, its password hidden (a logged builder never
/// shows it).
impl<T> std::fmt::Debug for PostgresStoreBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let config = self.config.parse::<tokio_postgres::Config>();
        let mut d = f.debug_struct("PostgresStoreBuilder");
        match &config {
            Ok(config) => d.field("config", config),
            Err(_) => d.field("config", &"(unparsable)"),
        };
        d.field("table", &self.table)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
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
            return Err(StoreError::Config(
                format!("invalid table name `{table}`: 1 to 50 letters, digits and `_`").into(),
            ));
        }
        let pg: tokio_postgres::Config = self
            .config
            .parse()
            .map_err(|e| StoreError::Config(Box::new(e)))?;
        let pool = Pool::builder(Manager::new(pg.clone(), self.tls.clone()))
            .max_size(self.max_connections)
            .build()
            .map_err(|e| StoreError::Config(Box::new(e)))?;
        let store = PostgresStore {
            pool,
            sql: Arc::new(Statements::new(&table)),
            steps: Arc::new(steps::StepSql::new(&table)),
            table: Arc::from(table),
            waiters: Arc::new(Waiters::default()),
            invalidations: tokio::sync::broadcast::channel(1024).0,
        };
        store.migrate().await?;
        let reaper = store.clone();
        tokio::spawn(async move { reaper.reap_forever().await });
        tokio::spawn(listen_forever(
            pg,
            self.tls,
            listen::Channels {
                done: store.sql.channel.clone(),
                purged: store.sql.purged.clone(),
                erased: store.sql.erased.clone(),
            },
            listen::Sinks {
                waiters: Arc::downgrade(&store.waiters),
                invalidations: store.invalidations.clone(),
            },
        ));
        Ok(store)
    }
}

impl super::sealed::Sealed for PostgresStore {}

impl super::TransactionalStore for PostgresStore {
    fn postgres(&self) -> &PostgresStore {
        self
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn transactional(&self) -> Option<&dyn super::TransactionalStore> {
        Some(self)
    }

    async fn begin(
        &self,
        key: &StorageKey,
        fingerprint: &Fingerprint,
        lease: Duration,
        keep: Duration,
    ) -> Result<Begin, StoreError> {
        self.begin_as(key, fingerprint, lease, keep, "p").await
    }

    async fn begin_tentative(
        &self,
        key: &StorageKey,
        fingerprint: &Fingerprint,
        lease: Duration,
        keep: Duration,
    ) -> Result<Begin, StoreError> {
        self.begin_as(key, fingerprint, lease, keep, "t").await
    }

    async fn discard(&self, key: &StorageKey, token: FencingToken) -> Result<Fenced, StoreError> {
        self.fenced(&self.sql.discard, key, token, &[]).await
    }

    async fn confirm(
        &self,
        key: &StorageKey,
        token: FencingToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        let lease = ms(lease);
        self.fenced(&self.sql.confirm, key, token, &[&lease]).await
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

    async fn give_back(&self, key: &StorageKey, token: FencingToken) -> Result<Fenced, StoreError> {
        self.fenced(&self.sql.give_back, key, token, &[]).await
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

    async fn wait(&self, key: &StorageKey, timeout: Duration) -> Result<(), StoreError> {
        // Ask for a notification before the first read: a completion after the mark notifies,
        // one before it is seen by the read.
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.sql.mark_waiting)
            .await
            .map_err(failed)?;
        client
            .execute(&statement, &[&key.as_str()])
            .await
            .map_err(failed)?;
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
            .map_err(failed)?;
        Ok(n > 0)
    }

    /// Batches of at most 1000 rows over the key range `[key_prefix, next prefix)`: an index
    /// range scan on tables this version created (their key is `COLLATE "C"`), a sequential
    /// one on older tables.
    async fn purge_prefix(&self, key_prefix: &str) -> Result<u64, StoreError> {
        // The first string after every string that starts with `key_prefix`, in byte order.
        let mut end = key_prefix.as_bytes().to_vec();
        while end.last() == Some(&0xff) {
            end.pop();
        }
        let Some(last) = end.last_mut() else {
            return Err(StoreError::Config(
                "an empty prefix would erase everything".into(),
            ));
        };
        *last += 1;
        let end = String::from_utf8(end)
            .map_err(|_| StoreError::Config("a principal prefix must be ASCII".into()))?;
        let client = self.client().await?;
        let mut removed = 0;
        let erased = loop {
            let n = match client
                .execute(&self.sql.purge_range, &[&key_prefix, &end])
                .await
            {
                Ok(n) => n,
                Err(e) => break Err(failed(e)),
            };
            removed += n;
            if n < 1000 {
                break Ok(removed);
            }
        };
        // Every instance's replay cache drops the prefix, also after a partial erasure.
        if let Err(error) = client
            .execute(&self.sql.notify_erased, &[&key_prefix])
            .await
        {
            tracing::warn!(%error, "idem: notifying an erasure to other instances failed; their replay caches forget it within their max_age");
        }
        erased
    }

    fn invalidations(
        &self,
    ) -> Option<tokio::sync::broadcast::Receiver<crate::store::Invalidation>> {
        Some(self.invalidations.subscribe())
    }

    async fn get(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(&self.sql.get).await.map_err(failed)?;
        let rows = client
            .query(&statement, &[&key.as_str()])
            .await
            .map_err(failed)?;
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
            "p" | "t" => RecordState::InProgress {
                token: FencingToken(row.get::<_, i64>(2) as u64),
            },
            _ => RecordState::Completed {
                response: StoredResponse::decode(Bytes::from(
                    row.get::<_, Option<Vec<u8>>>(6).unwrap_or_default(),
                ))
                .map_err(|e| StoreError::Corrupt(Box::new(e)))?,
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
