//! `on_conflict = "accepted"`, whatever the framework: the `Location` of a status resource, and
//! what `GET {status_path}/{id}` answers.
//!
//! A status id is the record's storage key without its prefix: a 16-hex tag of the principal and
//! 64 hex of an HMAC over endpoint, principal and key (keyed by the app secret). It cannot be
//! guessed without the key, and a principal whose tag differs gets 404 without the store being
//! asked.

use crate::actix::Idempotency;
use crate::problem::{Problem, ProblemKind};
use crate::seal::Unreadable;
use crate::{RecordState, StorageKey, StoredResponse};

/// The status resource's URL for `key`: with sealed records, it carries the token that lets its
/// holder open the result.
pub(crate) fn location(status_path: &str, key: &StorageKey) -> String {
    let mut location = format!("{}/{}", status_path.trim_end_matches('/'), key.status_id());
    if let Some(token) = key.status_token() {
        location.push_str("?t=");
        location.push_str(&token);
    }
    location
}

/// The body of a 202 that points at the status resource.
pub(crate) fn accepted_body(location: &str) -> String {
    serde_json::json!({ "status": "processing", "location": location }).to_string()
}

/// What a status resource answers.
pub(crate) enum Status {
    /// Done: the stored response, replayed.
    Done(StoredResponse),
    /// Still running: 202 pointing at itself.
    Running(StorageKey),
    /// 404, 500 or 503.
    Problem(Problem),
}

fn not_found() -> Problem {
    Problem::new(
        ProblemKind::StatusNotFound,
        "no idempotent request with this status id is known to you; it may have expired",
    )
}

/// `GET {status_path}/{id}` by `principal`, with the request's query (`t=` carries the token of
/// a sealed record).
pub(crate) async fn lookup(idem: &Idempotency, principal: &str, id: &str, query: &str) -> Status {
    let shared = &idem.shared;
    // The id's tag says which secret's derivation issued it (a previous one's, during a
    // rotation).
    let Some((key, keyed)) = idem.derivations().find_map(|d| {
        d.status_key(idem.prefix(), id, principal.as_bytes())
            .map(|key| (key, d.is_keyed()))
    }) else {
        return Status::Problem(not_found());
    };
    let token = query.split('&').find_map(|p| p.strip_prefix("t="));
    // A record in clear opens without a token when it was written without a secret.
    let seal = match (&shared.sealer, token) {
        (Some(sealer), Some(t)) => sealer
            .from_token(key.as_str(), t)
            .map(|seal| seal.for_derivation(keyed)),
        _ => None,
    };
    let key = key.sealed_with(seal);
    // The record lives in whichever store its endpoint uses.
    for engine in idem.engines() {
        match engine.get(&key).await {
            Ok(None) => continue,
            Ok(Some(rec)) => {
                return match rec.state {
                    RecordState::Completed { response } => match key.open(response) {
                        Ok(response) => Status::Done(response),
                        // Sealed, and this URL lacks its token (or carries a wrong one).
                        Err(Unreadable::NoKey) => Status::Problem(Problem::new(
                            ProblemKind::StatusNotFound,
                            "this status URL lacks the token (`?t=…`) its Location carried; \
                             use the whole Location",
                        )),
                        Err(why) => {
                            Status::Problem(crate::engine::unreadable("status resource", &key, why))
                        }
                    },
                    RecordState::InProgress { .. } => Status::Running(key),
                };
            }
            Err(e) => return Status::Problem(engine.store_problem(&e)),
        }
    }
    Status::Problem(not_found())
}
