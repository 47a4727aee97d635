use actix_web::{post, HttpResponse};
use idem::idempotent;

// `strict` (the default) promises byte-exact replays: redaction would break that.
#[post("/a")]
#[idempotent(redact = ["/card/number"])]
async fn implicit() -> HttpResponse {
    HttpResponse::Ok().finish()
}

#[post("/b")]
#[idempotent(guarantee = "strict", redact = ["/card"])]
async fn explicit() -> HttpResponse {
    HttpResponse::Ok().finish()
}

fn main() {}
