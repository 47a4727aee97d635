//! Transactional completions: the handler's transaction, and the fenced `UPDATE` + `COMMIT` that
//! end it in one round trip.

use std::time::Duration;

use super::{failed, ms, PostgresStore};
use crate::store::StoreError;
use crate::{FencingToken, StorageKey, StoredResponse};

impl PostgresStore {
    /// Takes a pooled connection and opens a transaction on it, for a transactional handler.
    pub(crate) async fn open_tx(&self) -> Result<TxConn, StoreError> {
        let client = self.client().await?;
        let conn = TxConn { obj: Some(client) };
        conn.batch("BEGIN").await.map_err(failed)?;
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
