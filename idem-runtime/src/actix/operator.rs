//! The operator API: look at, or forget, the record of one request — "did this payment run
//! twice?", "why does this client get 409?", "let this customer retry".

use serde::Serialize;

use super::config::Idempotency;
use crate::key::parse_key;
use crate::{KeyError, RecordState, StorageKey, StoreError};

/// What [`Idempotency::inspect`] finds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RecordInfo {
    /// `in_progress` or `completed`.
    pub state: &'static str,
    /// How many times the key was acquired (1 for the first run).
    pub attempt: u32,
    /// Time since the current attempt acquired the key, when the store knows.
    pub age_ms: Option<u64>,
    /// Time left on the lease (in progress) or the TTL (completed).
    pub expires_in_ms: u64,
    /// Hex fingerprint of the request that made the record (an HMAC under the app secret).
    pub fingerprint: String,
    /// The stored response's status, once completed.
    pub status: Option<u16>,
    /// The storage key (hashed), as it appears in logs.
    pub storage_key: String,
    /// The `type` of a stored problem answer (`urn:idem:problem:operation-failed` for an
    /// operation the completer gave up on), once completed.
    pub problem: Option<String>,
    /// The steps the operation finished, in order (an endpoint with `Steps`, on PostgreSQL).
    pub steps: Vec<String>,
}

/// The `type` of `stored` when it is a problem answer this app can open.
fn problem_type(key: &StorageKey, stored: &crate::StoredResponse) -> Option<String> {
    let opened = key.open(stored.clone()).ok()?;
    let is_problem = opened.headers().any(|(n, v)| {
        n.eq_ignore_ascii_case("content-type") && v.starts_with(b"application/problem+json")
    });
    if !is_problem {
        return None;
    }
    let body: serde_json::Value = serde_json::from_slice(opened.body()).ok()?;
    body["type"].as_str().map(str::to_owned)
}

/// Why an operator call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorError {
    /// The key is not one a client could have sent.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The store could not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Idempotency {
    /// The storage keys the record of `key` may be under: the current secret's, then each
    /// previous one's.
    fn storage_keys_of(
        &self,
        endpoint: &str,
        principal: &str,
        key: &str,
    ) -> Result<Vec<StorageKey>, KeyError> {
        let key = parse_key(key.as_bytes())?;
        Ok(self
            .derivations()
            .map(|d| {
                // With the raw key, what the record's sealed response opens with.
                let seal = self.shared.seal_for(d, key.as_str());
                d.storage_key(self.prefix(), endpoint, principal.as_bytes(), &key)
                    .sealed_with(seal)
            })
            .collect())
    }

    /// The record of `key` sent by `principal` to `endpoint`, if live (in the default store or
    /// any named one).
    ///
    /// `endpoint` is the endpoint's stable name (`name = "payments.create"`, or its method and
    /// route pattern, `POST /payments`: what the logs and metrics show); `principal` is what the app's scope returns for the client's requests (its
    /// account id, say), or `""` for anonymous requests and unscoped apps.
    pub async fn inspect(
        &self,
        endpoint: &str,
        principal: &str,
        key: &str,
    ) -> Result<Option<RecordInfo>, OperatorError> {
        let mut found = None;
        'keys: for storage_key in self.storage_keys_of(endpoint, principal, key)? {
            for engine in self.engines() {
                if let Some(rec) = engine.get(&storage_key).await? {
                    found = Some((rec, engine, storage_key));
                    break 'keys;
                }
            }
        }
        let Some((rec, engine, storage_key)) = found else {
            return Ok(None);
        };
        let (state, status, problem) = match &rec.state {
            RecordState::InProgress { .. } => ("in_progress", None, None),
            RecordState::Completed { response } => (
                "completed",
                Some(response.status()),
                problem_type(&storage_key, response),
            ),
        };
        #[cfg(feature = "postgres")]
        let steps = match engine.store().transactional() {
            Some(tx) => tx.postgres().step_names(&storage_key).await?,
            None => Vec::new(),
        };
        #[cfg(not(feature = "postgres"))]
        let steps = {
            let _ = engine;
            Vec::new()
        };
        let age_ms = rec
            .acquired_at
            .and_then(|t| crate::clock::wall().duration_since(t).ok())
            .map(|d| d.as_millis() as u64);
        Ok(Some(RecordInfo {
            state,
            attempt: rec.attempt,
            age_ms,
            expires_in_ms: rec.expires_in.as_millis() as u64,
            fingerprint: rec.fingerprint.to_hex(),
            status,
            storage_key: storage_key.to_string(),
            problem,
            steps,
        }))
    }

    /// Forgets the record of `key` sent by `principal` to `endpoint`, whatever its state: the
    /// next request with that key runs afresh. Returns whether there was one. For support cases
    /// only: purging a completed record lets a retry charge again.
    pub async fn purge(
        &self,
        endpoint: &str,
        principal: &str,
        key: &str,
    ) -> Result<bool, OperatorError> {
        // The record lives in whichever store its endpoint uses, under whichever secret wrote
        // it.
        let mut purged = false;
        for storage_key in self.storage_keys_of(endpoint, principal, key)? {
            for engine in self.engines() {
                purged |= engine.purge(&storage_key).await?;
            }
        }
        Ok(purged)
    }

    /// Erases every record of `principal` — every endpoint and key, completed or in progress —
    /// in every store of this app, and returns how many records went (a GDPR-style erasure;
    /// `principal` as for [`inspect`](Self::inspect)). A principal's keys share a storage-key
    /// prefix (its tag), which each store finds in bounded batches: the memory store walks its
    /// records, PostgreSQL deletes a key range 1000 rows at a time, a single Redis `SCAN`s and
    /// `UNLINK`s, a Redis Cluster empties the principal's index in each slot (docs/stores.md,
    /// "Erasing a principal"). Each
    /// store gets at most a minute ([`StoreError::Timeout`] after that: call again to finish).
    /// Afterwards a retry of any of the principal's operations runs afresh, and an operation of
    /// theirs still in flight may complete unrecorded: erase once the principal is inactive.
    pub async fn erase_principal(&self, principal: &str) -> Result<u64, OperatorError> {
        const LIMIT: std::time::Duration = std::time::Duration::from_secs(60);
        let mut erased = 0;
        // Under every secret the app knows: records written under a previous one too.
        for derivation in self.derivations() {
            let prefix = derivation.principal_prefix(self.prefix(), principal.as_bytes());
            for engine in self.engines() {
                erased += tokio::time::timeout(LIMIT, engine.store().purge_prefix(&prefix))
                    .await
                    .unwrap_or(Err(StoreError::Timeout(LIMIT)))?;
            }
        }
        Ok(erased)
    }
}
