// #[routes], a hand-registered handler, every supported option, and `crate`.
#![deny(warnings)]

use actix_web::{routes, web, App, HttpResponse};
use idem::idempotent;

#[routes]
#[post("/v1/charges")]
#[post("/v2/charges")]
#[idempotent(ttl = "1h30m")]
async fn charges() -> HttpResponse {
    HttpResponse::Created().finish()
}

#[idempotent(ttl = "7d")]
#[routes]
#[post("/v1/refunds")]
#[put("/v1/refunds")]
async fn refunds() -> HttpResponse {
    HttpResponse::Created().finish()
}

/// Documented handlers keep their docs.
#[idempotent(
    ttl = "30d",
    lease = "10s",
    guarantee = "strict",
    on_conflict = "retry_after",
    required = true,
    on_store_error = "proceed",
    max_body = "64KiB",
    crate = "::idem",
)]
pub async fn by_hand(body: web::Bytes) -> HttpResponse {
    HttpResponse::Ok().body(body)
}

mod renamed {
    pub use idem as my_idem;
}

#[idempotent(crate = "crate::renamed::my_idem", ttl = "1s", on_store_error = "reject", store = "pg")]
async fn renamed_crate() -> &'static str {
    "ok"
}

fn main() {
    let _app = App::new()
        .service(charges)
        .service(refunds)
        .route("/by-hand", web::post().to(by_hand))
        .route("/renamed", web::post().to(renamed_crate));
}
