//! Recovery points on PostgreSQL: the steps an operation finished, the request that started
//! it (for the completer), and the completer's claim on operations whose lease lapsed.
//!
//! Two tables beside the records, their rows deleted with their record (`ON DELETE CASCADE`:
//! the reaper, a purge, an erasure):
//! - `{t}_steps (key, seq, name, result)`: one row per finished step. A step is written only
//!   while its attempt holds the lease: the insert locks the record row (`FOR UPDATE`) and
//!   checks its token, so a takeover either waits for the step's commit (and then sees it) or
//!   has already happened (and the step is rolled back).
//! - `{t}_requests (key, request, attempts, next_try, failed_at)`: the sealed request
//!   of an operation with steps, and the completer's bookkeeping.

use std::time::Duration;

use super::{failed, ms, PostgresStore};
use crate::store::{Fenced, StoreError};
use crate::{FencingToken, StorageKey};

/// The statements of the step tables of one record table.
pub(super) struct StepSql {
    migrate: String,
    clear: String,
    put_request: String,
    load: String,
    /// Inserts one finished step, fenced: `$1` key, `$2` token, `$3` seq, `$4` name,
    /// `$5` result. One row affected, or none when the lease is lost.
    pub(super) put_step: String,
    claim: String,
    fail: String,
}

impl StepSql {
    pub(super) fn new(t: &str) -> Self {
        // The record row, locked, while `$2` holds its lease (a lapsed lease nobody took over
        // still belongs to its holder, as for `complete`).
        let fence =
            format!("SELECT key FROM {t} WHERE key = $1 AND token = $2 AND state = 'p' FOR UPDATE");
        StepSql {
            migrate: format!(
                "CREATE TABLE IF NOT EXISTS {t}_steps (
                     key text COLLATE \"C\" NOT NULL REFERENCES {t} (key) ON DELETE CASCADE,
                     seq integer NOT NULL,
                     name text NOT NULL,
                     result bytea NOT NULL,
                     token bigint NOT NULL,
                     done_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                     PRIMARY KEY (key, seq));
                 CREATE TABLE IF NOT EXISTS {t}_requests (
                     key text COLLATE \"C\" PRIMARY KEY REFERENCES {t} (key) ON DELETE CASCADE,
                     request bytea NOT NULL,
                     attempts integer NOT NULL DEFAULT 0,
                     next_try timestamptz NOT NULL DEFAULT now(),
                     failed_at timestamptz);"
            ),
            // A first attempt (a new operation) drops what an expired operation under the same
            // key may have left, in the record row it reuses.
            clear: format!(
                "WITH fence AS ({fence}),
                      s AS (DELETE FROM {t}_steps WHERE key = (SELECT key FROM fence))
                 DELETE FROM {t}_requests WHERE key = (SELECT key FROM fence)"
            ),
            put_request: format!(
                "WITH fence AS ({fence})
                 INSERT INTO {t}_requests (key, request)
                 SELECT key, $3 FROM fence
                 ON CONFLICT (key) DO UPDATE SET request = EXCLUDED.request"
            ),
            load: format!("SELECT seq, name, result FROM {t}_steps WHERE key = $1 ORDER BY seq"),
            put_step: format!(
                "WITH fence AS ({fence})
                 INSERT INTO {t}_steps (key, seq, name, result, token)
                 SELECT key, $3, $4, $5, $2 FROM fence"
            ),
            // Operations whose lease lapsed before they completed (their instance died), or that
            // a completer's own attempt released (a 5xx under `result`), not failed for good,
            // due: claimed by one completer (`SKIP LOCKED`) and pushed back by the backoff, so
            // that completers of several instances share the work. An operation a client's
            // attempt released is the client's to retry.
            claim: format!(
                "UPDATE {t}_requests q
                    SET attempts = q.attempts + 1,
                        next_try = now() + $2::bigint * power(2, least(q.attempts, 8)) * interval '1 millisecond'
                  WHERE q.key = ANY(ARRAY(
                        SELECT q2.key FROM {t}_requests q2 JOIN {t} r ON r.key = q2.key
                         WHERE q2.failed_at IS NULL AND q2.next_try <= now()
                           AND ((r.state = 'p' AND r.lease_until < now())
                             OR (r.state = 'r' AND q2.attempts > 0))
                         ORDER BY q2.next_try
                         LIMIT $1
                         FOR UPDATE OF q2 SKIP LOCKED))
                 RETURNING q.key, q.request, q.attempts"
            ),
            fail: format!("UPDATE {t}_requests SET failed_at = now() WHERE key = $1"),
        }
    }
}

/// One finished step as recorded: its place, name and (sealed) result.
#[derive(Debug, Clone)]
pub(crate) struct RecordedStep {
    pub(crate) seq: i32,
    pub(crate) name: String,
    pub(crate) result: Vec<u8>,
}

/// An operation the completer claimed.
#[derive(Debug)]
pub(crate) struct Abandoned {
    pub(crate) key: String,
    /// The sealed request that started it.
    pub(crate) request: Vec<u8>,
    /// Completer attempts so far, this one included.
    pub(crate) attempts: u32,
}

impl PostgresStore {
    /// Creates the step tables (inside the migration's transaction).
    pub(super) async fn migrate_steps(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
    ) -> Result<(), StoreError> {
        tx.batch_execute(&self.steps.migrate).await.map_err(failed)
    }

    /// At the start of an attempt with steps: clears what an expired operation left (on a first
    /// attempt), keeps the request that started it (`request`, sealed) for the completer, and
    /// returns the steps already finished, in order. Fenced: nothing is written once the lease
    /// is lost.
    pub(crate) async fn start_steps(
        &self,
        key: &StorageKey,
        token: FencingToken,
        attempt: u32,
        request: &[u8],
    ) -> Result<Vec<RecordedStep>, StoreError> {
        let c = self.client().await?;
        let (k, t) = (key.as_str(), token.0 as i64);
        if attempt <= 1 {
            c.execute(&self.steps.clear, &[&k, &t])
                .await
                .map_err(failed)?;
        }
        c.execute(&self.steps.put_request, &[&k, &t, &request])
            .await
            .map_err(failed)?;
        let rows = c.query(&self.steps.load, &[&k]).await.map_err(failed)?;
        rows.iter()
            .map(|r| {
                Ok(RecordedStep {
                    seq: r.try_get(0).map_err(failed)?,
                    name: r.try_get(1).map_err(failed)?,
                    result: r.try_get(2).map_err(failed)?,
                })
            })
            .collect()
    }

    /// The names of the steps the operation `key` finished, in order.
    pub(crate) async fn step_names(&self, key: &StorageKey) -> Result<Vec<String>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(&self.steps.load, &[&key.as_str()])
            .await
            .map_err(failed)?;
        rows.iter().map(|r| r.try_get(1).map_err(failed)).collect()
    }

    /// A pooled connection for a step's own transaction.
    pub(crate) async fn step_connection(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.client().await
    }

    /// The fenced insert of a finished step (see [`StepSql::put_step`]), on `client`: inside a
    /// step's transaction, or on its own.
    pub(crate) async fn put_step_on(
        &self,
        client: &impl tokio_postgres::GenericClient,
        key: &StorageKey,
        token: FencingToken,
        seq: i32,
        name: &str,
        result: &[u8],
    ) -> Result<Fenced, tokio_postgres::Error> {
        let (k, t) = (key.as_str(), token.0 as i64);
        let n = client
            .execute(&self.steps.put_step, &[&k, &t, &seq, &name, &result])
            .await?;
        Ok(if n == 1 { Fenced::Done } else { Fenced::Lost })
    }

    /// Claims at most `limit` operations whose lease lapsed before completion, pushing each
    /// one's next try back by `backoff · 2^attempts` (capped at 2^8).
    pub(crate) async fn claim_abandoned(
        &self,
        limit: i64,
        backoff: Duration,
    ) -> Result<Vec<Abandoned>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(&self.steps.claim, &[&limit, &ms(backoff)])
            .await
            .map_err(failed)?;
        rows.iter()
            .map(|r| {
                Ok(Abandoned {
                    key: r.try_get(0).map_err(failed)?,
                    request: r.try_get(1).map_err(failed)?,
                    attempts: r.try_get::<_, i32>(2).map_err(failed)?.max(0) as u32,
                })
            })
            .collect()
    }

    /// Marks the operation `key` as failed for good: the completer leaves it alone.
    pub(crate) async fn mark_failed(&self, key: &str) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(&self.steps.fail, &[&key]).await.map_err(failed)?;
        Ok(())
    }
}
