//! What idem decided, for operators: one outcome per idempotent request (a `tracing` event and,
//! with feature `metrics`, a counter), store-call latency, lease renewals and losses, and memory
//! store occupancy. Keys appear only hashed; raw keys and credentials never do.
//!
//! Metrics (through the `metrics` facade; install any recorder, e.g. Prometheus):
//!
//! | name | kind | labels |
//! | --- | --- | --- |
//! | `idem_requests_total` | counter | `endpoint`, `outcome` |
//! | `idem_store_call_seconds` | histogram | `op` (`begin`, `complete`, `release`, `renew`, `get`) |
//! | `idem_store_errors_total` | counter | `op` |
//! | `idem_lease_renewals_total` | counter | |
//! | `idem_lease_lost_total` | counter | |
//! | `idem_reattempts_total` | counter | (acquisitions with attempt > 1: after a release or a lapsed lease) |
//! | `idem_store_full_total` | counter | (new keys refused by a full store) |
//! | `idem_memory_store_bytes`, `idem_memory_store_entries` | gauge | |

use std::time::Duration;

/// How one idempotent request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The handler ran (its response is stored, or released under `result` for a 5xx).
    Executed,
    /// The stored response was replayed.
    Replayed,
    /// A duplicate in progress got 409.
    Conflict,
    /// The key was reused with another payload: 422.
    Mismatch,
    /// Refused before anything ran: bad or missing key, body too large, extractor error, …
    Rejected,
    /// The store failed (503, or run unprotected under `on_store_error = "proceed"`).
    StoreError,
    /// A duplicate got 202 (`accepted` or `webhook`).
    Accepted,
    /// A duplicate waited for the first and got its replay (`wait`).
    Waited,
}

impl Outcome {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Executed => "executed",
            Outcome::Replayed => "replayed",
            Outcome::Conflict => "conflict",
            Outcome::Mismatch => "mismatch",
            Outcome::Rejected => "rejected",
            Outcome::StoreError => "store_error",
            Outcome::Accepted => "accepted",
            Outcome::Waited => "waited",
        }
    }
}

/// Whether `endpoint` is not in `seen` yet (and notes it): for what is logged once per endpoint,
/// where every request of the endpoint would fail alike (a misconfiguration).
pub(crate) fn first_time(
    seen: &std::sync::Mutex<Vec<&'static str>>,
    endpoint: &'static str,
) -> bool {
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    let first = !seen.contains(&endpoint);
    if first {
        seen.push(endpoint);
    }
    first
}

/// The names of every metric idem exports (through the `metrics` facade, feature `metrics`): one
/// place to read them, and the only place they are spelled.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) mod metric {
    /// New keys refused by the per-principal admission limit.
    pub(crate) const ADMISSION_REFUSED_TOTAL: &str = "idem_admission_refused_total";
    /// Keyed requests refused because they carry no principal (a scoped app that does not
    /// allow anonymous requests).
    pub(crate) const PRINCIPAL_MISSING_TOTAL: &str = "idem_principal_missing_total";
    /// Keyed requests refused because the scope header came with more than one value.
    pub(crate) const SCOPE_AMBIGUOUS_TOTAL: &str = "idem_scope_ambiguous_total";
    /// Completions given up after the lease could no longer be held.
    pub(crate) const COMPLETE_ABANDONED_TOTAL: &str = "idem_complete_abandoned_total";
    /// Leases lost to another request (fenced out).
    pub(crate) const LEASE_LOST_TOTAL: &str = "idem_lease_lost_total";
    /// Requests answered from, or resumed under, a record written under a previous app secret
    /// (`previous_secrets`): zero for a whole `ttl` says the rotation can end.
    pub(crate) const EARLIER_SECRET_TOTAL: &str = "idem_earlier_secret_total";
    /// Handlers whose lease renewals stopped because they ran past `max_run_time`.
    pub(crate) const RUN_TIME_EXCEEDED_TOTAL: &str = "idem_run_time_exceeded_total";
    /// Lease renewals that succeeded.
    pub(crate) const LEASE_RENEWALS_TOTAL: &str = "idem_lease_renewals_total";
    /// Bytes held by the memory store.
    pub(crate) const MEMORY_STORE_BYTES: &str = "idem_memory_store_bytes";
    /// Records held by the memory store.
    pub(crate) const MEMORY_STORE_ENTRIES: &str = "idem_memory_store_entries";
    /// `begin`s refused because the principal held its share of a memory store.
    pub(crate) const PRINCIPAL_FULL_TOTAL: &str = "idem_principal_full_total";
    /// Acquisitions of a key after an earlier attempt (a release or a lapsed lease).
    pub(crate) const REATTEMPTS_TOTAL: &str = "idem_reattempts_total";
    /// Completed records that could not be opened (`record-unreadable`).
    pub(crate) const RECORD_UNREADABLE_TOTAL: &str = "idem_record_unreadable_total";
    /// Keys Redis evicted (with `allow_eviction()`).
    pub(crate) const REDIS_EVICTED_KEYS_TOTAL: &str = "idem_redis_evicted_keys_total";
    /// Requests by `endpoint` and `outcome` (executed, replayed, waited, conflict, mismatch, accepted, rejected, store_error).
    pub(crate) const REQUESTS_TOTAL: &str = "idem_requests_total";
    /// Responses completed with the `response-not-kept` marker.
    pub(crate) const RESPONSE_NOT_KEPT_TOTAL: &str = "idem_response_not_kept_total";
    /// Checks that found instances disagreeing on the app secret.
    pub(crate) const SECRET_MISMATCH_TOTAL: &str = "idem_secret_mismatch_total";
    /// Latency of each store call, by `op`.
    pub(crate) const STORE_CALL_SECONDS: &str = "idem_store_call_seconds";
    /// Store calls that failed, by `op`.
    pub(crate) const STORE_ERRORS_TOTAL: &str = "idem_store_errors_total";
    /// `begin`s refused because the store was full.
    pub(crate) const STORE_FULL_TOTAL: &str = "idem_store_full_total";
}

/// Records the outcome of one request on `endpoint`; `key` is the hashed key (a status id).
pub(crate) fn outcome(endpoint: &'static str, key: Option<&str>, outcome: Outcome) {
    tracing::info!(
        target: "idem",
        endpoint,
        key = key.unwrap_or(""),
        outcome = outcome.as_str(),
        "idem: {}",
        outcome.as_str()
    );
    #[cfg(feature = "metrics")]
    metrics::counter!(metric::REQUESTS_TOTAL, "endpoint" => endpoint, "outcome" => outcome.as_str())
        .increment(1);
}

/// Adds `n` to the counter `name`.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn count_by(name: &'static str, n: u64) {
    #[cfg(feature = "metrics")]
    metrics::counter!(name).increment(n);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, n);
}

/// Records one store call's latency and whether it failed.
pub(crate) fn store_call(op: &'static str, took: Duration, failed: bool) {
    tracing::trace!(target: "idem", op, micros = took.as_micros() as u64, failed, "idem: store call");
    #[cfg(feature = "metrics")]
    {
        metrics::histogram!(metric::STORE_CALL_SECONDS, "op" => op).record(took.as_secs_f64());
        if failed {
            metrics::counter!(metric::STORE_ERRORS_TOTAL, "op" => op).increment(1);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (op, took, failed);
}

/// Counts one event without labels.
pub(crate) fn count(name: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(name).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = name;
}

/// Publishes the memory store's occupancy.
pub(crate) fn memory_store(bytes: usize, entries: usize) {
    #[cfg(feature = "metrics")]
    {
        metrics::gauge!(metric::MEMORY_STORE_BYTES).set(bytes as f64);
        metrics::gauge!(metric::MEMORY_STORE_ENTRIES).set(entries as f64);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (bytes, entries);
}
