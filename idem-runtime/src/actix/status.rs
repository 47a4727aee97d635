//! `on_conflict = "accepted"` on actix-web: 202 + `Location` of a status resource, and the
//! resource itself (what they answer: `flow/status.rs`).

use actix_web::http::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use actix_web::{web, HttpRequest, HttpResponse};

use super::config::find;
use super::{problem_response, replay};
use crate::flow::status::{accepted_body, location, lookup, Status};
use crate::StorageKey;

/// 202 Accepted pointing at the status resource of `key`.
pub(crate) fn accepted(status_path: &str, key: &StorageKey) -> HttpResponse {
    let location = location(status_path, key);
    HttpResponse::Accepted()
        .insert_header((RETRY_AFTER, "1"))
        .insert_header((CONTENT_TYPE, "application/json"))
        .insert_header((LOCATION, location.clone()))
        .body(accepted_body(&location))
}

/// `GET {status_path}/{id}`: 202 + `Retry-After` while in progress, the stored response (with
/// `Idempotent-Replayed: true`) once done, 404 when unknown, expired or someone else's.
pub(crate) async fn status(req: HttpRequest, id: web::Path<String>) -> HttpResponse {
    let Some(idem) = find(&req) else {
        return super::not_configured("status resource");
    };
    let principal = match idem.principal_of(&req) {
        Ok(p) => p,
        Err(p) => return problem_response(&p),
    };
    match lookup(&idem, &principal, &id, req.query_string()).await {
        Status::Done(response) => replay(&response),
        Status::Running(key) => accepted(idem.status_path(), &key),
        Status::Problem(p) => problem_response(&p),
    }
}
