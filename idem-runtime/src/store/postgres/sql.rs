//! The SQL the store sends, written once per table.

/// Every statement the store sends, written once for its table (and prepared once per
/// connection).
pub(super) struct Statements {
    /// The channel completions and releases of marked rows, and purges, are notified on.
    pub(super) channel: String,
    /// The channel purges are notified on (the storage key).
    pub(super) purged: String,
    /// The channel erasures are notified on (the storage-key prefix).
    pub(super) erased: String,
    /// Notifies an erasure of `$1` (a prefix) to every instance.
    pub(super) notify_erased: String,
    pub(super) begin: String,
    pub(super) get: String,
    pub(super) purge: String,
    /// Deletes at most 1000 rows whose key lies in `[$1, $2)` (byte order: one principal's);
    /// `= ANY(ARRAY(…))` keeps both the range and the delete on the primary-key index (an `IN`
    /// subquery plans as a hash join over the whole table).
    pub(super) purge_range: String,
    /// Deletes expired rows, at most 1000 per statement.
    pub(super) reap: String,
    pub(super) complete: String,
    pub(super) release: String,
    /// Gives the lease back, leaving the record as the takeover found it (`taken`): see
    /// `Store::give_back`.
    pub(super) give_back: String,
    pub(super) renew: String,
    /// Makes a tentative record an operation's (`Store::confirm`).
    pub(super) confirm: String,
    /// Deletes the holder's record (`Store::discard`).
    pub(super) discard: String,
    /// Marks a row in progress as waited on, so that its completion notifies.
    pub(super) mark_waiting: String,
    /// The completion inside a transactional handler's transaction.
    pub(super) complete_in_tx: String,
}

impl Statements {
    pub(super) fn new(t: &str) -> Self {
        let channel = format!("{t}_done");
        // Whether the operation of the record row `r` (under `$1`) recorded steps or keeps its
        // request: its own, not older than its `started` — what an earlier operation's lapsed
        // holder committed during a takeover stays until `Steps` drops it, and holds nothing.
        let has_steps = |r: &str| {
            format!(
                "(EXISTS (SELECT 1 FROM {t}_requests q WHERE q.key = $1 AND q.op >= {r}.started)
                  OR EXISTS (SELECT 1 FROM {t}_steps s WHERE s.key = $1 AND s.token >= {r}.started))"
            )
        };
        let (held_steps, taken_steps) = (has_steps(t), has_steps("r"));
        // A token-checked update: a lease that ran out while nobody took the key over still
        // belongs to its holder (a takeover hands out a new token). `clock_timestamp()`, not
        // `now()`, in the `SET`s: inside a transaction `now()` is the time it began.
        let fenced = |set: &str| {
            format!(
                "UPDATE {t} SET {set}
                  WHERE key = $1 AND token = $2 AND state IN ('p', 't')
                  RETURNING key, waiting"
            )
        };
        // ... that also notifies the channel with the key when a waiter marked the row.
        let notifying = |set: &str, also: &str| {
            format!(
                "WITH u AS ({}){also} SELECT CASE WHEN waiting THEN pg_notify('{channel}', key) END FROM u",
                fenced(set)
            )
        };
        // A completed operation's stored request (with the credentials it carried) goes with
        // its completion: nothing is left to resume.
        let forget_request =
            format!(", forgotten AS (DELETE FROM {t}_requests WHERE key = (SELECT key FROM u))");
        Statements {
            // Besides the insert or takeover: a row of an unexpired operation that recorded
            // steps or keeps its request (`held`) is not taken over by another payload — that
            // retry gets 422, it does not resume (or replay) those steps. A takeover that
            // starts a new operation (attempt 1: a fresh row, or an expired one not reaped yet)
            // drops what an earlier operation under the key left in the step tables, and
            // records its own token as `started`: a step that the earlier operation's lapsed
            // holder committed while this statement waited for the row is not in its snapshot,
            // so not dropped here, but it carries an older token than `started` — `Steps`
            // drops it (`put_request`) and never loads it. An insert leaves `started` 0: a row
            // that did not exist has no steps (they go with their record). `$5` is the state of
            // a record made where there was none: `t` (tentative, see `Store::begin_tentative`)
            // or `p`; a tentative row whose lease lapsed counts as none.
            begin: format!(
                "WITH live AS (
               SELECT token, attempt, fingerprint, state, lease_until, response FROM {t}
                WHERE key = $1
                  AND ((state = 'c' AND expires_at > now()) OR (state IN ('p', 't') AND lease_until > now()))),
             held AS (
               SELECT fingerprint FROM {t}
                WHERE key = $1 AND expires_at > now() AND fingerprint <> $2
                  AND NOT EXISTS (SELECT 1 FROM live) AND {held_steps}),
             taken AS (
               INSERT INTO {t} AS r (key, fingerprint, state, token, attempt, acquired_at, lease_until, expires_at)
               SELECT $1, $2, $5::text, nextval('{t}_token'), 1, now(),
                      now() + $3::bigint * interval '1 millisecond',
                      now() + greatest($3::bigint, $4::bigint) * interval '1 millisecond'
                WHERE NOT EXISTS (SELECT 1 FROM live) AND NOT EXISTS (SELECT 1 FROM held)
               ON CONFLICT (key) DO UPDATE SET
                 fingerprint = EXCLUDED.fingerprint, token = EXCLUDED.token,
                 state = CASE WHEN r.expires_at > now() AND r.state <> 't' THEN 'p' ELSE EXCLUDED.state END,
                 attempt = CASE WHEN r.expires_at > now() AND r.state <> 't' THEN r.attempt + 1 ELSE 1 END,
                 started = CASE WHEN r.expires_at > now() AND r.state <> 't' THEN r.started ELSE EXCLUDED.token END,
                 taken = r.state,
                 acquired_at = now(), lease_until = EXCLUDED.lease_until,
                 expires_at = EXCLUDED.expires_at, response = NULL
               WHERE NOT ((r.state = 'c' AND r.expires_at > now())
                       OR (r.state IN ('p', 't') AND r.lease_until > now()))
                 AND NOT (r.expires_at > now() AND r.fingerprint <> EXCLUDED.fingerprint
                          AND {taken_steps})
               RETURNING token, attempt),
             fresh AS (SELECT 1 FROM taken WHERE attempt = 1),
             old_steps AS (DELETE FROM {t}_steps WHERE key = $1 AND EXISTS (SELECT 1 FROM fresh)),
             old_request AS (DELETE FROM {t}_requests WHERE key = $1 AND EXISTS (SELECT 1 FROM fresh))
             SELECT true, token, attempt, NULL::bytea, NULL::text, NULL::bigint, NULL::bytea FROM taken
             UNION ALL
             SELECT false, token, attempt, fingerprint, state::text,
                    (extract(epoch FROM (lease_until - now())) * 1000)::bigint, response
               FROM live
             UNION ALL
             SELECT false, NULL::bigint, NULL::integer, fingerprint, 'r', NULL::bigint, NULL::bytea
               FROM held"
            ),
            get: format!(
                "SELECT fingerprint, state::text, token, attempt,
                    (extract(epoch FROM acquired_at) * 1000000)::bigint,
                    (extract(epoch FROM (CASE WHEN state = 'c' THEN expires_at ELSE lease_until END - now())) * 1000)::bigint,
                    response
               FROM {t} WHERE key = $1
                AND ((state = 'c' AND expires_at > now()) OR (state IN ('p', 't') AND lease_until > now()))"
            ),
            // Notified, so that other instances' replay caches drop it (and waiters wake).
            purge: format!(
                "WITH d AS (DELETE FROM {t} WHERE key = $1 RETURNING key)
                 SELECT pg_notify('{t}_purged', key) FROM d"
            ),
            purged: format!("{t}_purged"),
            notify_erased: format!("SELECT pg_notify('{t}_erased', $1)"),
            erased: format!("{t}_erased"),
            purge_range: format!(
                "DELETE FROM {t} WHERE key = ANY(ARRAY(SELECT key FROM {t} \
                 WHERE key COLLATE \"C\" >= $1 AND key COLLATE \"C\" < $2 LIMIT 1000))"
            ),
            // The predicate is repeated outside: under READ COMMITTED a row the subquery picked
            // but a concurrent `begin` revived meanwhile is re-checked only against the outer
            // `WHERE` (EvalPlanQual), so without it a live record would be deleted. `SKIP LOCKED`
            // also keeps the reaper off rows being written right now. `= ANY(ARRAY(…))` runs the
            // subquery once: with `IN`, statistics that expect no expired row (taken before they
            // expired) plan a nested loop that re-runs the locking subquery for every outer row —
            // quadratic, and deleting far more than the batch. The outer recheck is written so
            // that no index can serve it (`+ interval '0'`): the same statistics would otherwise
            // walk every expired entry of the expiry index to filter the batch out of them
            // (10.9 s per batch among 10^6 expired rows) instead of 1000 primary-key lookups.
            reap: format!(
                "DELETE FROM {t} WHERE key = ANY(ARRAY(
                   SELECT key FROM {t} WHERE expires_at < now() LIMIT 1000 FOR UPDATE SKIP LOCKED))
                   AND expires_at + interval '0' < now()"
            ),
            complete: notifying(COMPLETE_SET, &forget_request),
            // A tentative record released is as if it had never been: its lease ends.
            release: notifying(
                "lease_until = CASE WHEN state = 't' THEN now() - interval '1 millisecond' ELSE lease_until END,
                 state = CASE WHEN state = 't' THEN 't' ELSE 'r' END",
                "",
            ),
            // As the takeover found it: released when it was (its client's to retry), or when
            // nothing came before this attempt; otherwise in progress with its lease lapsed, as
            // the crash that abandoned it left it (the completer's to finish).
            give_back: notifying(
                "state = CASE WHEN state = 't' THEN 't' WHEN attempt = 1 OR taken = 'r' THEN 'r' ELSE 'p' END,
                 lease_until = now() - interval '1 millisecond'",
                "",
            ),
            renew: fenced(LEASE_SET),
            confirm: fenced(&format!("state = 'p', {LEASE_SET}")),
            discard: format!(
                "WITH d AS (DELETE FROM {t} WHERE key = $1 AND token = $2 AND state IN ('p', 't')
                   RETURNING key, waiting)
                 SELECT CASE WHEN waiting THEN pg_notify('{channel}', key) END FROM d"
            ),
            mark_waiting: format!(
                "UPDATE {t} SET waiting = true WHERE key = $1 AND state IN ('p', 't') AND NOT waiting"
            ),
            // Two guards that fail the whole statement, its `UPDATE` included, on values the
            // planner cannot fold away: `ln(0)` when the statement runs outside a transaction
            // block (the handler ended ours: its transaction started with this very
            // statement), `1 / 0` when no row was updated (the lease was lost).
            complete_in_tx: format!(
                "WITH u AS ({}){forget_request}
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

/// The `SET` of a renewal (and of a confirmation): the lease ends `$3` ms from now, and the
/// record lives at least as long.
const LEASE_SET: &str = "lease_until = clock_timestamp() + $3::bigint * interval '1 millisecond',
     expires_at = greatest(expires_at, clock_timestamp() + $3::bigint * interval '1 millisecond')";

/// The `SET` of a completion: `$3` the encoded response, `$4` the TTL in milliseconds.
const COMPLETE_SET: &str = "state = 'c', response = $3,
     expires_at = clock_timestamp() + $4::bigint * interval '1 millisecond'";
