//! The demo authenticates like a payments API: `Authorization: Bearer <api key>`, each key
//! belonging to an account. Idempotency keys are scoped by the *account*, so a rotated key of the
//! same account replays, and another account's request never reaches this one's records.
//!
//! Keys: `IDEM_DEMO_KEYS="sk_x=acct_x,sk_y=acct_y"`, by default `sk_test_a1` and `sk_test_a2`
//! (a rotation) for `acct_a` and `sk_test_b1` for `acct_b`. No `Authorization` at all is the
//! anonymous account `acct_public`, so plain `curl` lines work; an unknown or malformed key is
//! 401. The admin routes are outside this mapping (they have their own token).

use actix_web::body::{BoxBody, EitherBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::HttpMessage;
use std::collections::HashMap;
use std::sync::Arc;

/// The account a request belongs to: what the idempotency keys are scoped by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountId(pub String);

impl std::fmt::Display for AccountId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The account of requests without `Authorization`.
pub const ANONYMOUS: &str = "acct_public";

/// API key → account.
#[derive(Clone)]
pub struct ApiKeys(Arc<HashMap<String, String>>);

impl ApiKeys {
    /// From `IDEM_DEMO_KEYS`, or the default keys.
    pub fn from_env() -> Self {
        let spec = std::env::var("IDEM_DEMO_KEYS")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| "sk_test_a1=acct_a,sk_test_a2=acct_a,sk_test_b1=acct_b".into());
        let keys = spec
            .split(',')
            .filter_map(|pair| {
                let (key, account) = pair.split_once('=')?;
                let (key, account) = (key.trim(), account.trim());
                (!key.is_empty() && !account.is_empty())
                    .then(|| (key.to_owned(), account.to_owned()))
            })
            .collect();
        ApiKeys(Arc::new(keys))
    }

    /// The account of `req`: anonymous without `Authorization`, `None` for a key that is unknown
    /// or not a bearer token.
    fn account(&self, req: &ServiceRequest) -> Option<String> {
        let Some(value) = req.headers().get("authorization") else {
            return Some(ANONYMOUS.to_owned());
        };
        let value = value.to_str().ok()?;
        let (scheme, key) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        self.0.get(key.trim()).cloned()
    }
}

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
    match keys.account(&req) {
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
