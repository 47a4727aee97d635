//! `on_conflict = "accepted"`: 202 + `Location` of a status resource, and the resource itself.
//!
//! A status id is the record's storage key without its prefix: a 16-hex tag of the principal and
//! 64 hex of an HMAC over endpoint, principal and key (keyed by the app secret). It cannot be guessed without the key, and
//! a principal whose tag differs gets 404 without the store being asked.

use actix_web::http::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use actix_web::{web, HttpRequest, HttpResponse};

use super::config::find;
use super::{reject, replay};
use crate::problem::ProblemKind;
use crate::seal::Unreadable;
use crate::{RecordState, StorageKey};

/// 202 Accepted pointing at the status resource of `key`.
pub(crate) fn accepted(status_path: &str, key: &StorageKey) -> HttpResponse {
    let mut location = format!("{}/{}", status_path.trim_end_matches('/'), key.status_id());
    // With sealed records, the token that lets this URL's holder open the result.
    if let Some(token) = key.status_token() {
        location.push_str("?t=");
        location.push_str(&token);
    }
    let body = serde_json::json!({ "status": "processing", "location": location });
    HttpResponse::Accepted()
        .insert_header((LOCATION, location))
        .insert_header((RETRY_AFTER, "1"))
        .insert_header((CONTENT_TYPE, "application/json"))
        .body(body.to_string())
}

fn not_found() -> HttpResponse {
    reject(
        ProblemKind::StatusNotFound,
        "no idempotent request with this status id is known to you; it may have expired",
    )
}

/// `GET {status_path}/{id}`: 202 + `Retry-After` while in progress, the stored response (with
/// `Idempotent-Replayed: true`) once done, 404 when unknown, expired or someone else's.
pub(crate) async fn status(req: HttpRequest, id: web::Path<String>) -> HttpResponse {
    let Some(idem) = find(&req) else {
        return super::not_configured("status resource");
    };
    let principal = idem.principal(&req);
    let Some(key) = idem
        .shared
        .derivation
        .status_key(idem.prefix(), &id, principal.as_bytes())
    else {
        return not_found();
    };
    let token = req
        .query_string()
        .split('&')
        .find_map(|p| p.strip_prefix("t="));
    let seal = match (&idem.shared.sealer, token) {
        (Some(sealer), Some(t)) => sealer.from_token(key.as_str(), t),
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
                        Ok(response) => replay(&response),
                        // Sealed, and this URL lacks its token (or carries a wrong one).
                        Err(Unreadable::NoKey) => reject(
                            ProblemKind::StatusNotFound,
                            "this status URL lacks the token (`?t=…`) its Location carried; \
                             use the whole Location",
                        ),
                        Err(why) => super::problem_response(&crate::engine::unreadable(
                            "status resource",
                            &key,
                            why,
                        )),
                    },
                    RecordState::InProgress { .. } => accepted(idem.status_path(), &key),
                };
            }
            Err(e) => return super::problem_response(&engine.store_problem(&e)),
        }
    }
    not_found()
}
