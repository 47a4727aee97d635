// Both orders of the route attribute and #[idempotent], with #[get] too.
#![deny(warnings)]

use actix_web::{get, post, web, App, HttpResponse, Responder};
use idem::{idempotent, Idempotency};

#[derive(serde::Deserialize)]
struct NewPayment {
    amount: i64,
}

/// Route first: actix-web-codegen expands first and re-emits our attribute inside `register`.
#[post("/payments")]
#[idempotent(ttl = "24h", guarantee = "strict", on_conflict = "retry_after")]
async fn route_first(body: web::Json<NewPayment>) -> impl Responder {
    HttpResponse::Created().json(body.amount)
}

/// Ours first: we keep `#[post]` on the function we emit.
#[idempotent(ttl = "15m")]
#[post("/orders")]
pub async fn ours_first(body: web::Json<NewPayment>) -> impl Responder {
    HttpResponse::Created().json(body.amount)
}

#[get("/report")]
#[idempotent(required = false)]
async fn with_get() -> &'static str {
    "report"
}

#[idempotent]
#[get("/report2")]
async fn with_get_ours_first() -> String {
    String::from("report")
}

fn main() {
    let idem = Idempotency::builder().unscoped().build();
    let _app = App::new()
        .app_data(idem)
        .service(route_first)
        .service(ours_first)
        .service(with_get)
        .service(with_get_ours_first);
}
