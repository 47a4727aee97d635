//! The operator routes: look at, or forget, one request's record. They exist only when
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

/// `POST /admin/idempotency/{inspect|purge}` with a JSON [`RecordRef`].
async fn act(
    req: HttpRequest,
    action: web::Path<String>,
    body: web::Bytes,
    idem: web::Data<Idempotency>,
) -> HttpResponse {
    if !allowed(&req) {
        return super::problem(StatusCode::NOT_FOUND, "not found");
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
    match result {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(e) => super::problem(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// The admin resource, to mount on the app.
pub fn routes() -> actix_web::Resource {
    web::resource("/admin/idempotency/{action}").route(web::post().to(act))
}
