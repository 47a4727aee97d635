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
use crate::{RecordState, StorageKey};

/// 202 Accepted pointing at the status resource of `key`.
pub(crate) fn accepted(status_path: &str, key: &StorageKey) -> HttpResponse {
    let location = format!("{}/{}", status_path.trim_end_matches('/'), key.status_id());
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
    // The record lives in whichever store its endpoint uses.
    for engine in idem.engines() {
        match engine.get(&key).await {
            Ok(None) => continue,
            Ok(Some(rec)) => {
                return match rec.state {
                    RecordState::Completed { response } => replay(&response),
                    RecordState::InProgress { .. } => accepted(idem.status_path(), &key),
                }
            }
            Err(e) => return super::problem_response(&engine.store_problem(&e)),
        }
    }
    not_found()
}
