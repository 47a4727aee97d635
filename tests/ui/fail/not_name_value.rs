use idem::idempotent;

#[idempotent(strict, ttl("1h"))]
async fn handler() -> &'static str {
    "ok"
}

fn main() {}
