//! Rotating the app secret: previous secrets used for lookup only.
//!
//! Storage keys, fingerprints and downstream keys are derived from the app secret, so a new
//! secret alone would not find the records written under the old one: every operation retried
//! across the deploy would run again. With `IdempotencyBuilder::previous_secrets` every
//! acquisition of a key under the current secret is also looked up under each previous one —
//! by a `begin` on that key, under the lease the current key is held by:
//! - nothing there (a fresh acquisition): that record goes, and the request runs under the
//!   current secret;
//! - a completed record: the old response is replayed (422 for another payload);
//! - one in progress: the duplicate is answered as in progress (`wait` waits for it; the other
//!   policies answer 409);
//! - a released or abandoned operation: the request *resumes* it under its old key and its old
//!   derivation — its steps, its downstream keys — so a processor never sees a second key for
//!   one operation.
//!
//! In those three cases the current key is given up: deleted when this request's `begin` made
//! it (the next request under it is new again, and looks again), given back as found when it
//! was acquired again (its recorded steps stay).
//!
//! The records a request makes while it looks — under its current key and under the earlier
//! ones — are tentative (`Store::begin_tentative`); the current one becomes the operation's
//! (`Store::confirm`) only when nothing was found. So a delete the store refuses leaves a record
//! that is as if it had never been once its lease lapsed: a retry, on an instance of either
//! step of a rolling rotation, finds the operation where it ran. Only a store without tentative
//! records (the `Store` defaults) leaves a record a later request acquires again beside the
//! operation's — see `where_it_runs`.
//!
//! Holding its own key while it looks under another is what makes two instances safe during a
//! rolling deploy, as long as each one knows the secret the other writes under: of two requests
//! that each hold one key and look under the other, at most one finds the other's key free.

use std::sync::Arc;

use crate::engine::{deadline, Decision, Engine, Ticket};
use crate::secret::KeyDerivation;
use crate::store::Begin;
use crate::{Fingerprint, OnConflict, Policy, Problem, StorageKey};

/// A request's storage key and fingerprint under one previous secret.
#[derive(Debug, Clone)]
pub(crate) struct Earlier {
    pub(crate) key: StorageKey,
    pub(crate) fingerprint: Fingerprint,
    /// The previous secret's derivation: an operation resumed under it keeps its downstream
    /// keys.
    pub(crate) derivation: Arc<KeyDerivation>,
}

/// What the records under previous secrets say about a request that holds its current key.
pub(crate) enum Looked {
    /// Nothing under them: run under the current key.
    Run(Ticket),
    /// Answered from them (a replay, a refusal) or resumed under one (`Execute`).
    Decided(Decision),
    /// In progress under this earlier key (the first), and the endpoint waits: wait for it,
    /// then begin again under the current key (the second, given up meanwhile).
    Wait(StorageKey, StorageKey),
}

/// Which of two acquired keys holds an operation.
enum Side {
    Current,
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Earlier,
}

impl Engine {
    /// Looks under each of `earlier` for the request that holds `ticket` (its current key);
    /// see the module docs. Any answer but "nothing" gives the current key up: deleted when
    /// this request's `begin` made it (the next request under it is new again, and looks
    /// again), given back as found when it was acquired again (its recorded steps stay).
    pub(crate) async fn look_under_earlier(
        self: &Arc<Self>,
        policy: &Policy,
        ticket: Ticket,
        earlier: &[Earlier],
    ) -> Looked {
        for e in earlier {
            let sent = tokio::time::Instant::now();
            let answer = deadline(
                "begin",
                self.store_timeout(),
                self.store()
                    .begin_tentative(&e.key, &e.fingerprint, policy.lease, policy.ttl),
            )
            .await;
            let looked = match answer {
                Ok(Begin::Acquired { token, attempt: 1 }) => {
                    // Nothing was there: the record this look made goes.
                    Ticket::new(self.clone(), e.key.clone(), (token, 1), policy, sent)
                        .forget()
                        .await;
                    continue;
                }
                Ok(Begin::Acquired { token, attempt }) => {
                    let resumed =
                        Ticket::new(self.clone(), e.key.clone(), (token, attempt), policy, sent)
                            .with_derivation(e.derivation.clone());
                    if ticket.attempt() <= 1 {
                        // Nothing under the current key: the operation lives here.
                        Looked::Decided(Decision::Execute(resumed))
                    } else {
                        // Both keys were acquired again: one holds the operation, the other
                        // a record a lost delete left behind (see `where_it_runs`).
                        match self.where_it_runs(&ticket, &resumed).await {
                            Ok(Side::Earlier) => Looked::Decided(Decision::Execute(resumed)),
                            Ok(Side::Current) => {
                                resumed.forget().await;
                                continue;
                            }
                            Err(problem) => {
                                let _ = resumed.give_back_once().await;
                                Looked::Decided(Decision::Reject(problem))
                            }
                        }
                    }
                }
                Ok(Begin::Replay(stored)) => {
                    Looked::Decided(match crate::engine::opened(policy, &e.key, stored) {
                        Ok(response) => Decision::Replay {
                            response,
                            waited: false,
                        },
                        Err(problem) => Decision::Reject(problem),
                    })
                }
                Ok(Begin::Mismatch) => {
                    Looked::Decided(Decision::Reject(crate::engine::key_reused()))
                }
                Ok(Begin::InProgress { .. }) if policy.on_conflict == OnConflict::Wait => {
                    Looked::Wait(e.key.clone(), ticket.key().clone())
                }
                Ok(Begin::InProgress { .. }) => {
                    Looked::Decided(Decision::Reject(crate::engine::in_progress()))
                }
                // The earlier key could not be read: whether the operation ran is unknown, so
                // nothing runs (whatever `on_store_error` says).
                Err(error) => {
                    tracing::error!(endpoint = policy.endpoint, %error, "idem: looking up a record under a previous secret failed; rejecting the request");
                    Looked::Decided(Decision::Reject(self.store_problem(&error)))
                }
            };
            crate::observe::count(crate::observe::metric::EARLIER_SECRET_TOTAL);
            if ticket.attempt() <= 1 {
                // A record this request's `begin` just made: it goes, so that the next request
                // under the current key is new again, and looks again.
                ticket.forget().await;
            } else if let Err(error) = ticket.give_back_once().await {
                // Acquired again (a released or abandoned operation lives here too): given
                // back as found, never deleted — its recorded steps stay.
                tracing::warn!(key = %ticket.key(), %error, "idem: could not give a key back; it frees itself when its lease ends");
            }
            return looked;
        }
        Looked::Run(ticket)
    }

    /// Which of two keys, both acquired again (attempt > 1), holds the operation a request
    /// resumes: the current one (`current`) or the earlier one (`earlier`). With the built-in
    /// stores this does not happen (a record a look or a give-up could not delete was tentative,
    /// and is gone once lapsed); a store without tentative records (the `Store` defaults), or a
    /// record left by a version before them, leaves one the request acquires again. Only one
    /// ran the operation. The one whose operation started its steps (it stored its request,
    /// before any step ran) holds it: resumed anywhere else, a step would run again under
    /// another downstream key. When neither did (no steps, or a store without them), nothing
    /// tells them apart and the current key runs it (docs/failure-behaviour.md).
    async fn where_it_runs(&self, current: &Ticket, earlier: &Ticket) -> Result<Side, Problem> {
        #[cfg(feature = "postgres")]
        if let Some(tx) = self.store().transactional() {
            let pg = tx.postgres();
            let timeout = self.store_timeout();
            let (earlier_started, current_started) = match tokio::try_join!(
                deadline("started_steps", timeout, pg.started_steps(earlier.key())),
                deadline("started_steps", timeout, pg.started_steps(current.key())),
            ) {
                Ok(both) => both,
                Err(error) => {
                    tracing::error!(%error, "idem: could not read where an operation started its steps; rejecting the request");
                    return Err(self.store_problem(&error));
                }
            };
            return match (earlier_started, current_started) {
                (true, true) => {
                    tracing::error!(key = %current.key(), earlier = %earlier.key(), "idem: one operation started steps under two secrets; nothing runs until an operator purges one of them");
                    Err(self.store_problem(&crate::StoreError::Corrupt(
                        "steps under two secrets".into(),
                    )))
                }
                (true, false) => Ok(Side::Earlier),
                (false, _) => Ok(Side::Current),
            };
        }
        let _ = (current, earlier);
        Ok(Side::Current)
    }
}
