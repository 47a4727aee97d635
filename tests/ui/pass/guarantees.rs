// Every guarantee, JSON pointers with escapes, IdempotencyContext and per-endpoint replay headers.
#![deny(warnings)]

use actix_web::{post, web, App, HttpResponse};
use idem::{idempotent, IdempotencyContext};

#[post("/strict")]
#[idempotent(guarantee = "strict")]
async fn strict(body: web::Bytes) -> HttpResponse {
    HttpResponse::Ok().body(body)
}

#[post("/result")]
#[idempotent(guarantee = "result", replay_headers = ["X-Request-Id", "x-trace"])]
async fn result(ctx: IdempotencyContext) -> HttpResponse {
    HttpResponse::Ok().body(format!("{} {} {}", ctx.key(), ctx.token().0, ctx.attempt()))
}

#[post("/semantic")]
#[idempotent(guarantee = "semantic", fingerprint = ["/amount", "/currency", "/meta/a~1b", "/items/0"])]
async fn semantic(ctx: Option<IdempotencyContext>, body: web::Json<serde_json::Value>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "attempt": ctx.map(|c| c.attempt()), "body": body.0 }))
}

fn main() {
    let _app = App::new().service(strict).service(result).service(semantic);
}
