//! Transactional endpoints (feature `postgres`): `#[idempotent(store = "pg", transactional)]`.
//!
//! The record is taken (`begin`) in its own committed statement, so duplicates see it in
//! progress at once. Then the handler gets a transaction on the same PostgreSQL database
//! ([`IdemTx`]); its writes and the stored response are committed together:
//!
//! ```text
//! begin (autocommit)  →  BEGIN  →  handler's writes  →  fenced UPDATE of the record  →  COMMIT
//! ```
//!
//! A crash anywhere before `COMMIT` leaves neither the writes nor the response: PostgreSQL rolls
//! the transaction back when the connection dies, the record's lease runs out, and the retry runs
//! the handler once. A handler that lost its lease (stalled past it while another attempt took
//! over) finds its fenced `UPDATE` refused and its writes are rolled back, so two attempts can
//! never both commit.

use actix_web::{dev, FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use std::future::{ready, Ready};
use std::ops::Deref;
use std::sync::Arc;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

use super::{problem_response, reject};
use crate::engine::{deadline, Engine, Ticket};
use crate::flow::execute::Verdict;
use crate::observe::Outcome;
use crate::problem::{Problem, ProblemKind};
use crate::store::postgres::{TxConn, TxEnd};

/// An extractor for `#[idempotent(transactional)]` handlers: the open PostgreSQL transaction in
/// which the handler writes, and in which the runtime then stores its response.
///
/// Do not `COMMIT` or `ROLLBACK` it yourself: the runtime commits after storing the response,
/// and rolls back when the handler fails (an extractor error, a panic, a 5xx under
/// `guarantee = "result"`). Use `SAVEPOINT`s for partial rollbacks.
///
/// ```ignore
/// // Not compiled here: the attribute comes from `idem`, which depends on this crate
/// // (tests/ui/pass/transactional.rs compiles this shape).
/// #[post("/charges")]
/// #[idempotent(store = "pg", transactional)]
/// async fn charge(tx: IdemTx, body: web::Json<Charge>) -> actix_web::Result<HttpResponse> {
///     let db = tx.client().await?;
///     db.execute("INSERT INTO ledger (account, amount) VALUES ($1, $2)", &[&body.account, &body.amount])
///         .await
///         .map_err(actix_web::error::ErrorInternalServerError)?;
///     Ok(HttpResponse::Created().finish())
/// }
/// ```
#[derive(Clone)]
pub struct IdemTx {
    conn: Arc<Mutex<Option<TxConn>>>,
}

impl std::fmt::Debug for IdemTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdemTx").finish_non_exhaustive()
    }
}

/// The transaction's connection, borrowed from an [`IdemTx`]. Derefs to the pool's client
/// wrapper and through it to [`tokio_postgres::Client`]: `execute`, `query`, and
/// `prepare_cached` for statements prepared once per connection. Shared access only: the
/// transaction is the runtime's to end.
pub struct TxClient<'a>(MappedMutexGuard<'a, deadpool_postgres::ClientWrapper>);

impl std::fmt::Debug for TxClient<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxClient").finish_non_exhaustive()
    }
}

impl Deref for TxClient<'_> {
    type Target = deadpool_postgres::ClientWrapper;

    fn deref(&self) -> &deadpool_postgres::ClientWrapper {
        &self.0
    }
}

/// The transaction of an [`IdemTx`] is no longer open: the handler kept it past its own end
/// (in a spawned task, say), after the runtime committed or rolled it back.
#[derive(Debug, thiserror::Error)]
#[error("the idempotent transaction has already ended; use IdemTx only inside its handler")]
pub struct TxEnded;

impl ResponseError for TxEnded {
    fn error_response(&self) -> HttpResponse {
        reject(ProblemKind::Internal, self.to_string())
    }
}

impl IdemTx {
    /// The connection the transaction is open on. Holds the transaction's lock while borrowed:
    /// drop it before awaiting anything long that does not need the database.
    pub async fn client(&self) -> Result<TxClient<'_>, TxEnded> {
        MutexGuard::try_map(self.conn.lock().await, |c| {
            c.as_mut().and_then(TxConn::client_mut)
        })
        .map(TxClient)
        .map_err(|_| TxEnded)
    }

    /// Takes the transaction back from the handler; `None` if it was already taken.
    async fn take(&self) -> Option<TxConn> {
        self.conn.lock().await.take()
    }
}

impl FromRequest for IdemTx {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut dev::Payload) -> Self::Future {
        ready(req.extensions().get::<IdemTx>().cloned().ok_or_else(|| {
            actix_web::error::ErrorInternalServerError(
                "IdemTx exists only in a handler marked #[idempotent(transactional)] whose store \
                 is a PostgresStore",
            )
        }))
    }
}

/// The store that can run a handler's transaction: the engine's store, or the one it wraps
/// (through [`Store::transactional`](crate::Store::transactional)).
fn transactional(engine: &Engine) -> Option<&crate::PostgresStore> {
    engine.store().transactional().map(|t| t.postgres())
}

/// The 500 of a transactional endpoint whose store is not a `PostgresStore` (nor wraps one).
fn not_postgres() -> HttpResponse {
    tracing::error!("idem: a transactional endpoint's store is not a PostgresStore, nor a store whose Store::transactional returns one");
    reject(
        ProblemKind::Internal,
        "this endpoint is transactional but its idempotency store is not PostgreSQL",
    )
}

/// Opens the handler's transaction and hands it to the request's extensions.
pub(super) async fn open(engine: &Engine, req: &HttpRequest) -> Result<IdemTx, HttpResponse> {
    let Some(pg) = transactional(engine) else {
        return Err(not_postgres());
    };
    let conn = deadline("begin_transaction", engine.store_timeout(), pg.open_tx())
        .await
        .map_err(|e| problem_response(&engine.store_problem(&e)))?;
    let tx = IdemTx {
        conn: Arc::new(Mutex::new(Some(conn))),
    };
    req.extensions_mut().insert(tx.clone());
    Ok(tx)
}

/// Ends the transaction of one execution as its verdict says, and answers.
pub(super) async fn finish(
    tx: IdemTx,
    ticket: &Ticket,
    verdict: Verdict<HttpResponse>,
) -> (HttpResponse, Outcome) {
    let Some(conn) = tx.take().await else {
        ticket.release().await;
        return (
            reject(ProblemKind::Internal, "the transaction was lost"),
            Outcome::Executed,
        );
    };
    let (resp, stored) = match verdict {
        Verdict::Keep(resp, stored) => (resp, stored),
        Verdict::Release(resp) => {
            rollback(conn, ticket).await;
            ticket.release().await;
            return (resp, Outcome::Executed);
        }
        Verdict::Refused(resp) => {
            rollback(conn, ticket).await;
            ticket.release().await;
            return (resp, Outcome::Rejected);
        }
    };
    let engine = ticket.engine();
    let Some(pg) = transactional(engine) else {
        // `open` checked this already.
        return (not_postgres(), Outcome::Executed);
    };
    let limit = engine.store_timeout();
    let sealed = ticket.key().to_stored(&stored);
    let end = deadline("complete", limit, async {
        Ok(pg
            .complete_and_commit(
                conn,
                ticket.key(),
                ticket.token(),
                &sealed,
                ticket.ttl_for(stored.status()),
            )
            .await)
    })
    .await;
    match end {
        Ok(TxEnd::Committed) => (resp, Outcome::Executed),
        Ok(TxEnd::Lost) => {
            crate::observe::count(crate::observe::metric::LEASE_LOST_TOTAL);
            tracing::warn!(key = %ticket.key(), "idem: lease lost before commit; the handler's writes were rolled back");
            let p = Problem::new(
                ProblemKind::InProgress,
                "this attempt outlived its lease and another took over; its writes were rolled \
                 back. Retry with the same key to get the outcome",
            )
            .retry_after(1);
            (problem_response(&p), Outcome::Executed)
        }
        Ok(TxEnd::EndedByHandler) => {
            // Its writes may be committed already: keep the response the way a cache store
            // would, so that a retry replays rather than running again.
            tracing::error!(key = %ticket.key(), "idem: the handler ended its transaction itself (COMMIT/ROLLBACK through IdemTx); its writes and the record were not committed together");
            ticket.complete(&stored).await;
            (resp, Outcome::Executed)
        }
        Ok(TxEnd::RolledBack(error)) => {
            // Usually the handler's own SQL failed and aborted the transaction.
            ticket.release().await;
            tracing::error!(key = %ticket.key(), %error, "idem: the handler's transaction failed and was rolled back; nothing stored");
            let status = resp.status();
            if status.is_client_error() || status.is_server_error() {
                // The handler already says what went wrong; nothing was kept.
                return (resp, Outcome::Executed);
            }
            let p = Problem::new(
                ProblemKind::HandlerFailed,
                "the handler's transaction could not be committed (its SQL failed); nothing \
                 was kept, so a retry with the same key runs it again",
            );
            (problem_response(&p), Outcome::Executed)
        }
        Ok(TxEnd::Unknown(error)) => commit_unknown(ticket, &error).await,
        Err(error) => commit_unknown(ticket, &error).await,
    }
}

/// `COMMIT` did not answer (an error, or past the store deadline). Committed or not, a retry is
/// safe: it replays if the commit happened, and this release (a no-op on a completed record)
/// lets it run at once if not.
async fn commit_unknown(ticket: &Ticket, error: &dyn std::fmt::Display) -> (HttpResponse, Outcome) {
    ticket.release().await;
    tracing::error!(key = %ticket.key(), %error, "idem: COMMIT did not answer; outcome unknown to this process");
    let p = Problem::new(
        ProblemKind::StoreUnavailable,
        "the transaction's commit did not complete; retry with the same key: you get the \
         stored response if it committed, a single new execution if it did not",
    )
    .retry_after(1);
    (problem_response(&p), Outcome::StoreError)
}

/// `ROLLBACK` under the store deadline; past it, the connection is closed (which rolls back).
async fn rollback(conn: TxConn, ticket: &Ticket) {
    let limit = ticket.engine().store_timeout();
    if tokio::time::timeout(limit, conn.rollback()).await.is_err() {
        tracing::warn!(key = %ticket.key(), "idem: ROLLBACK timed out; the connection was closed instead");
    }
}

/// A transactional endpoint called without a key where keys are optional: the handler still
/// gets its transaction, committed unless the handler failed.
pub(super) async fn plain<F, Fut>(
    engine: &Engine,
    req: HttpRequest,
    payload: dev::Payload,
    handler: F,
) -> HttpResponse
where
    F: FnOnce(HttpRequest, dev::Payload) -> Fut,
    Fut: std::future::Future<Output = super::HandlerResult>,
{
    let tx = match open(engine, &req).await {
        Ok(tx) => tx,
        Err(resp) => return resp,
    };
    let resp = super::plain(req, payload, handler).await;
    let Some(conn) = tx.take().await else {
        return resp;
    };
    if resp.status().is_server_error() {
        conn.rollback().await;
        return resp;
    }
    match conn.commit().await {
        Ok(()) => resp,
        Err(error) => {
            tracing::error!(%error, "idem: COMMIT of a keyless transactional request failed");
            reject(
                ProblemKind::HandlerFailed,
                "the handler's transaction could not be committed",
            )
        }
    }
}
