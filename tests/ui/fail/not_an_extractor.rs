use actix_web::{post, web};
use idem::idempotent;

struct NotAnExtractor;

#[post("/x")]
#[idempotent]
async fn handler(body: web::Bytes, oops: NotAnExtractor) -> &'static str {
    let _ = (body, oops);
    "x"
}

fn main() {}
