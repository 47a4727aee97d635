//! Recovery points on PostgreSQL: the steps an operation finished, the request that started
//! it (for the completer), and the completer's claim on operations whose lease lapsed.
//!
//! Two tables beside the records, their rows deleted with their record (`ON DELETE CASCADE`:
//! the reaper, a purge, an erasure):
//! - `{t}_steps (key, seq, name, result, token)`: one row per finished step. A step is written only
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
    put_request: String,
    load: String,
    /// Inserts one finished step, fenced: `$1` key, `$2` token, `$3` seq, `$4` name,
    /// `$5` result. One row affected, or none when the lease is lost.
    pub(super) put_step: String,
    claim: String,
    fail: String,
    forget: String,
    refund: String,
    started: String,
}

impl StepSql {
    pub(super) fn new(t: &str) -> Self {
        // The record row, locked, while `$2` holds its lease (a lapsed lease nobody took over
        // still belongs to its holder, as for `complete`).
        let fence = format!(
            "SELECT key, started FROM {t} WHERE key = $1 AND token = $2 AND state = 'p' FOR UPDATE"
        );
        // Written by this operation: steps carry the token of the attempt that wrote them, and
        // the operation's first token is its record's `started` (see `begin`).
        let ours = format!("token >= (SELECT started FROM {t} WHERE key = $1)");
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
                     failed_at timestamptz);
                 ALTER TABLE {t}_requests ADD COLUMN IF NOT EXISTS op bigint NOT NULL DEFAULT 0;
                 ALTER TABLE {t}_requests ADD COLUMN IF NOT EXISTS claims integer NOT NULL DEFAULT 0;
                 ALTER TABLE {t} ADD COLUMN IF NOT EXISTS started bigint NOT NULL DEFAULT 0;
                 ALTER TABLE {t} ADD COLUMN IF NOT EXISTS taken char(1) NOT NULL DEFAULT 'n';"
            ),
            // Kept for the completer, unless a completer gave the operation up: then the row
            // keeps only its id (the request stays blank, and no credential comes back). What
            // an earlier operation under the key left (older than `started`: see `begin`) goes
            // first: its steps, and its request row, replaced whole.
            put_request: format!(
                "WITH fence AS ({fence}),
                 stale AS (DELETE FROM {t}_steps
                            WHERE key = $1 AND token < (SELECT started FROM fence))
                 INSERT INTO {t}_requests AS q (key, request, op)
                 SELECT key, $3, $2 FROM fence
                 ON CONFLICT (key) DO UPDATE SET
                     request = CASE WHEN q.op < (SELECT started FROM fence) OR q.failed_at IS NULL
                                    THEN EXCLUDED.request ELSE ''::bytea END,
                     attempts = CASE WHEN q.op < (SELECT started FROM fence) THEN 0 ELSE q.attempts END,
                     claims = CASE WHEN q.op < (SELECT started FROM fence) THEN 0 ELSE q.claims END,
                     next_try = CASE WHEN q.op < (SELECT started FROM fence) THEN now() ELSE q.next_try END,
                     failed_at = CASE WHEN q.op < (SELECT started FROM fence) THEN NULL ELSE q.failed_at END,
                     op = CASE WHEN q.op < (SELECT started FROM fence) THEN EXCLUDED.op ELSE q.op END
                 RETURNING op"
            ),
            load: format!(
                "SELECT seq, name, result FROM {t}_steps WHERE key = $1 AND {ours} ORDER BY seq"
            ),
            put_step: format!(
                "WITH fence AS ({fence})
                 INSERT INTO {t}_steps (key, seq, name, result, token)
                 SELECT key, $3, $4, $5, $2 FROM fence"
            ),
            // Operations whose lease lapsed before they completed (their instance died), or that
            // a completer's own attempt released (a 5xx under `result`, or a refusal after its
            // takeover: `claims` counts claims, never given back, where `attempts` may be), not
            // failed for good, due: claimed by one completer (`SKIP LOCKED`) and pushed back by
            // a backoff that grows with every claim, so that completers of several instances
            // share the work. An operation a client's attempt released is the client's to retry.
            // A request an earlier operation under the key left (older than the record's
            // `started`, see `begin`) is not this operation's: never re-sent.
            claim: format!(
                "UPDATE {t}_requests q
                    SET attempts = q.attempts + 1, claims = q.claims + 1,
                        next_try = now() + $2::bigint * power(2, least(q.claims, 8)) * interval '1 millisecond'
                  WHERE q.key = ANY(ARRAY(
                        SELECT q2.key FROM {t}_requests q2 JOIN {t} r ON r.key = q2.key
                         WHERE q2.failed_at IS NULL AND q2.next_try <= now()
                           AND starts_with(q2.key, $3)
                           AND substr(q2.key, length($3) + 1) ~ '^[0-9a-f]{{16}}-[0-9a-f]{{64}}$'
                           AND r.expires_at > now() AND q2.op >= r.started
                           AND ((r.state = 'p' AND r.lease_until < now())
                             OR (r.state = 'r' AND (q2.claims > 0 OR q2.attempts > 0)))
                         ORDER BY q2.next_try
                         LIMIT $1
                         FOR UPDATE OF q2 SKIP LOCKED))
                 RETURNING q.key, q.request, q.attempts"
            ),
            // The request is blanked: the completer will not re-send it, and the credentials it
            // carried go; the row stays, so the operation still has a stored request (a retry
            // with another payload gets 422, see `begin`).
            fail: format!(
                "UPDATE {t}_requests SET failed_at = now(), request = ''::bytea WHERE key = $1"
            ),
            // The request an attempt stored when nothing ran after all (an extractor after
            // `Steps` refused the request): only if this attempt started the operation's steps
            // (`op` is its token) and no step is recorded, while it holds the lease.
            forget: format!(
                "DELETE FROM {t}_requests q USING {t} r
                  WHERE q.key = $1 AND q.op = $2 AND r.key = $1 AND r.token = $2
                    AND r.state = 'p'
                    AND NOT EXISTS (SELECT 1 FROM {t}_steps s WHERE s.key = $1)"
            ),
            refund: format!(
                "UPDATE {t}_requests SET attempts = greatest(attempts - 1, 0) WHERE key = $1"
            ),
            // This operation's request row (`put_request` writes it before any step runs).
            started: format!(
                "SELECT EXISTS (SELECT 1 FROM {t}_requests q JOIN {t} r ON r.key = q.key
                                 WHERE q.key = $1 AND q.op >= r.started)"
            ),
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

    /// At the start of an attempt with steps: keeps the request that started it (`request`,
    /// sealed) for the completer, and returns the operation's id (the token of its first
    /// attempt with steps; 0 for one recorded before ids were kept) — or `None` when the lease
    /// is lost (fenced: nothing is written). What an earlier operation under the key left is
    /// dropped by the `begin` that started this one.
    pub(crate) async fn put_request(
        &self,
        key: &StorageKey,
        token: FencingToken,
        request: &[u8],
    ) -> Result<Option<i64>, StoreError> {
        let c = self.client().await?;
        let (k, t) = (key.as_str(), token.0 as i64);
        let row = c
            .query_opt(&self.steps.put_request, &[&k, &t, &request])
            .await
            .map_err(failed)?;
        row.map(|r| r.try_get(0).map_err(failed)).transpose()
    }

    /// The steps the operation `key` finished, in order.
    pub(crate) async fn load_steps(
        &self,
        key: &StorageKey,
    ) -> Result<Vec<RecordedStep>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(&self.steps.load, &[&key.as_str()])
            .await
            .map_err(failed)?;
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

    /// Whether the operation `key` holds started its steps: it stored its request, which it
    /// does before any step runs (a step may have run since, or be running at a processor).
    pub(crate) async fn started_steps(&self, key: &StorageKey) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_one(&self.steps.started, &[&key.as_str()])
            .await
            .map_err(failed)?;
        row.try_get(0).map_err(failed)
    }

    /// The names of the steps the operation `key` finished, in order.
    pub(crate) async fn step_names(&self, key: &StorageKey) -> Result<Vec<String>, StoreError> {
        let steps = self.load_steps(key).await?;
        Ok(steps.into_iter().map(|s| s.name).collect())
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

    /// Claims at most `limit` unexpired operations of the app whose storage keys start with
    /// `prefix` and whose lease lapsed before completion (an expired one is over: its key is
    /// free for a new operation), pushing each one's next try back by
    /// `backoff · 2^attempts` (capped at 2^8). Only keys of exactly that app's shape (the prefix,
    /// then a principal tag and an id) are claimed: another app on the same table, under
    /// another prefix (even one that starts with this one), is left alone.
    pub(crate) async fn claim_abandoned(
        &self,
        limit: i64,
        backoff: Duration,
        prefix: &str,
    ) -> Result<Vec<Abandoned>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(&self.steps.claim, &[&limit, &ms(backoff), &prefix])
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

    /// Deletes the request the attempt holding `token` stored for `key`, when nothing ran after
    /// all: it started the operation's steps and none is recorded (see [`StepSql`]'s `forget`).
    pub(crate) async fn forget_request(
        &self,
        key: &StorageKey,
        token: FencingToken,
    ) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(&self.steps.forget, &[&key.as_str(), &(token.0 as i64)])
            .await
            .map_err(failed)?;
        Ok(())
    }

    /// Gives back the attempt the last claim of `key` counted: its request met a refusal that
    /// says nothing about the operation (409 while the client's own retry runs, 429, 503 while
    /// an instance drains).
    pub(crate) async fn refund_attempt(&self, key: &str) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(&self.steps.refund, &[&key])
            .await
            .map_err(failed)?;
        Ok(())
    }

    /// Marks the operation `key` as failed for good: the completer leaves it alone (its client's
    /// retry may still finish it), and its stored request is blanked.
    pub(crate) async fn mark_failed(&self, key: &str) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(&self.steps.fail, &[&key]).await.map_err(failed)?;
        Ok(())
    }
}
