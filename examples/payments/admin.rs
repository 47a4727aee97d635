//! The operator routes: look at, or forget, one request's record, or erase every record of one
//! account (`{"principal": "acct_a"}` to `/admin/idempotency/erase`). They exist only when
//! `IDEM_ADMIN_TOKEN` is set; the token is checked first, in constant time, before the body is
//! even parsed, and the idempotency key travels in the body (never in a URL that proxies log).
//!
//! ```text
//! curl -X POST localhost:8080/admin/idempotency/inspect -H "Authorization: Bearer $IDEM_ADMIN_TOKEN" \
//!      -H 'Content-Type: application/json' \
//!      -d '{"endpoint": "payments.create", "principal": "acct_a", "key": "k1"}'
//! ```

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use idem::Idempotency;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Which record an operator asks about: the endpoint's name, the account, the key.
#[derive(Deserialize)]
struct RecordRef {
    endpoint: String,
    #[serde(default)]
    principal: String,
    key: String,
}

/// Whether `req` carries the admin token; compares digests, in time independent of where they
/// differ.
fn allowed(req: &HttpRequest) -> bool {
    let Ok(token) = std::env::var("IDEM_ADMIN_TOKEN") else {
        return false;
    };
    let sent = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let (a, b) = (
        Sha256::digest(token.as_bytes()),
        Sha256::digest(sent.as_bytes()),
    );
    let differ = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    !token.is_empty() && differ == 0
}

/// Whose records an erasure removes.
#[derive(Deserialize)]
struct PrincipalRef {
    principal: String,
}

/// `POST /admin/idempotency/{inspect|purge}` with a JSON [`RecordRef`], or `erase` with a
/// [`PrincipalRef`].
async fn act(
    req: HttpRequest,
    action: web::Path<String>,
    body: web::Bytes,
    idem: web::Data<Idempotency>,
) -> HttpResponse {
    if !allowed(&req) {
        return super::problem(StatusCode::NOT_FOUND, "not found");
    }
    if action.as_str() == "erase" {
        let p: PrincipalRef = match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => {
                return super::problem(
                    StatusCode::BAD_REQUEST,
                    &format!("expected {{\"principal\"}}: {e}"),
                )
            }
        };
        return answer(
            idem.erase_principal(&p.principal)
                .await
                .map(|erased| serde_json::json!({ "erased": erased })),
        );
    }
    let r: RecordRef = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return super::problem(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"endpoint\", \"principal\", \"key\"}}: {e}"),
            )
        }
    };
    let result = match action.as_str() {
        "purge" => idem
            .purge(&r.endpoint, &r.principal, &r.key)
            .await
            .map(|purged| serde_json::json!({ "purged": purged })),
        "inspect" => idem
            .inspect(&r.endpoint, &r.principal, &r.key)
            .await
            .map(|info| serde_json::json!({ "record": info })),
        _ => return super::problem(StatusCode::NOT_FOUND, "not found"),
    };
    answer(result)
}

/// 200 with `v`; 400 for a key no client could send, 503 when the store failed.
fn answer(result: Result<serde_json::Value, idem::OperatorError>) -> HttpResponse {
    match result {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(idem::OperatorError::Key(e)) => super::problem(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e) => super::problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// The admin resource, to mount on the app.
pub fn routes() -> actix_web::Resource {
    web::resource("/admin/idempotency/{action}").route(web::post().to(act))
}
