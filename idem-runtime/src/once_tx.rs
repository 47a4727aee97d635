//! Idempotent functions whose effect is SQL (feature `postgres`): the effect and its record
//! commit in one PostgreSQL transaction, so that a crash anywhere — even between the effect and
//! the record — leaves both or neither, and the next delivery runs the function exactly once.

use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::panic::AssertUnwindSafe;

use crate::engine::{deadline, Ticket};
use crate::flow::execute::ReleaseOnDrop;
use crate::once::{stored, Began, Once, OnceError};
use crate::store::postgres::{TxConn, TxEnd};

impl Once {
    /// Like [`run`](Self::run), on a `PostgresStore` (or a store that wraps one): `f` gets the
    /// client of an open transaction on the store's database, and its writes commit together
    /// with the stored value (`BEGIN` → `f`'s SQL → fenced record update → `COMMIT`). `Err` or
    /// a panic from `f` rolls its writes back and stores nothing. Do not `COMMIT` or `ROLLBACK`
    /// yourself; use savepoints for partial rollbacks.
    pub async fn run_in_tx<A, T, E, F>(&self, key: &str, args: &A, f: F) -> Result<T, OnceError<E>>
    where
        A: Serialize + ?Sized,
        T: Serialize + DeserializeOwned,
        F: AsyncFnOnce(&deadpool_postgres::ClientWrapper) -> Result<T, E>,
    {
        let ticket = match self.begin(key, args).await? {
            Began::Done(value) => return Ok(value),
            Began::Run(ticket) => ticket,
        };
        let engine = ticket.engine();
        let Some(pg) = engine.store().transactional().map(|t| t.postgres()) else {
            ticket.release().await;
            return Err(OnceError::Store(
                "run_in_tx needs a PostgresStore (or a store whose Store::transactional returns one)"
                    .into(),
            ));
        };
        let limit = engine.store_timeout();
        let mut conn = match deadline("begin_transaction", limit, pg.open_tx()).await {
            Ok(conn) => conn,
            Err(e) => {
                ticket.release().await;
                return Err(OnceError::Store(e.to_string()));
            }
        };
        let mut armed = ReleaseOnDrop::new(self.idem(), &ticket);
        let ran = match conn.client_mut() {
            Some(client) => {
                let client = &*client;
                Some(
                    ticket
                        .keep_alive(AssertUnwindSafe(f(client)).catch_unwind())
                        .await,
                )
            }
            None => None,
        };
        armed.disarm();
        let value = match ran {
            Some(Ok(Ok(value))) => value,
            Some(Ok(Err(e))) => {
                rolled_back(conn, &ticket).await;
                return Err(OnceError::Failed(e));
            }
            Some(Err(_)) => {
                tracing::error!(key = %ticket.key(), "idem: an idempotent function panicked; its transaction was rolled back");
                rolled_back(conn, &ticket).await;
                return Err(OnceError::Panicked);
            }
            None => {
                rolled_back(conn, &ticket).await;
                return Err(OnceError::Store("the transaction was lost".into()));
            }
        };
        let record = stored(&value);
        let sealed = ticket.key().to_stored(&record);
        let ttl = ticket.ttl_for(record.status());
        let end = deadline("complete", limit, async {
            Ok(pg
                .complete_and_commit(conn, ticket.key(), ticket.token(), &sealed, ttl)
                .await)
        })
        .await;
        match end {
            Ok(TxEnd::Committed) => Ok(value),
            // Another call took the key over: these writes were rolled back; its value is the
            // key's.
            Ok(TxEnd::Lost) => Err(OnceError::InProgress),
            Ok(TxEnd::EndedByHandler) => {
                // Its writes may be committed: keep the value, so that the key is not run again.
                tracing::error!(key = %ticket.key(), "idem: an idempotent function ended its transaction itself; its writes and the record were not committed together");
                ticket.complete(&record).await;
                Ok(value)
            }
            Ok(TxEnd::RolledBack(error)) => {
                ticket.release().await;
                Err(OnceError::Store(format!(
                    "the transaction failed and was rolled back (nothing happened): {error}"
                )))
            }
            Ok(TxEnd::Unknown(error)) => {
                ticket.release().await;
                Err(OnceError::CommitUnknown(error.to_string()))
            }
            Err(error) => {
                ticket.release().await;
                Err(OnceError::CommitUnknown(error.to_string()))
            }
        }
    }
}

/// Rolls the transaction back (closing the connection past the store deadline) and frees the
/// key for the next call.
async fn rolled_back(conn: TxConn, ticket: &Ticket) {
    let limit = ticket.engine().store_timeout();
    if tokio::time::timeout(limit, conn.rollback()).await.is_err() {
        tracing::warn!(key = %ticket.key(), "idem: ROLLBACK timed out; the connection was closed instead");
    }
    ticket.release().await;
}
