// Every answer to a duplicate in flight, with the options that belong to each.
#![deny(warnings)]

use actix_web::{post, web, App, HttpResponse};
use idem::{idempotent, Idempotency};

#[post("/a")]
#[idempotent(on_conflict = "retry_after")]
async fn retry_after() -> HttpResponse {
    HttpResponse::Ok().finish()
}

#[post("/b")]
#[idempotent(on_conflict = "wait", wait_timeout = "15s")]
async fn wait(body: web::Bytes) -> HttpResponse {
    HttpResponse::Ok().body(body)
}

#[post("/c")]
#[idempotent(on_conflict = "accepted", respond_async_after = "2s")]
async fn accepted() -> HttpResponse {
    HttpResponse::Created().finish()
}

#[post("/d")]
#[idempotent(on_conflict = "webhook", ttl = "1h")]
async fn webhook() -> HttpResponse {
    HttpResponse::Created().finish()
}

fn main() {
    let idem = Idempotency::builder().unscoped()
        .webhook_allow(["http://127.0.0.1:9000/hooks"])
        .webhook_secret("s3cret")
        .build();
    let _app = App::new()
        .app_data(idem.clone())
        .service(idem.status_service())
        .service(retry_after)
        .service(wait)
        .service(accepted)
        .service(webhook);
}
