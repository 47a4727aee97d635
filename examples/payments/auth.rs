//! The demo authenticates like a payments API (the accounts: `accounts.rs`): this middleware
//! resolves a request's account and puts it in its extensions. The admin routes are outside this
//! mapping (they have their own token).

use actix_web::body::{BoxBody, EitherBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::HttpMessage;

use super::accounts::{AccountId, ApiKeys};

/// Middleware: resolves the account (401 problem+json for a bad key) and inserts it into the
/// request's extensions, where `scope_by_extension::<AccountId>()` finds it.
pub async fn authenticate(
    keys: ApiKeys,
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<EitherBody<BoxBody>>, actix_web::Error> {
    if req.path().starts_with("/admin/") {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    }
    let authorization = req.headers().get("authorization").map(|v| v.as_bytes());
    match keys.account(authorization) {
        Some(account) => {
            req.extensions_mut().insert(AccountId(account));
            next.call(req)
                .await
                .map(ServiceResponse::map_into_left_body)
        }
        None => {
            let mut resp = super::problem(
                StatusCode::UNAUTHORIZED,
                "unknown API key: send `Authorization: Bearer <api key>`, or no Authorization \
                 header for the public account",
            );
            resp.headers_mut().insert(
                actix_web::http::header::WWW_AUTHENTICATE,
                actix_web::http::header::HeaderValue::from_static("Bearer"),
            );
            Ok(req.into_response(resp).map_into_right_body())
        }
    }
}
