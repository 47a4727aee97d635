use idem::idempotent;

#[idempotent(ttl = "1m", lease = "1m")]
async fn equal() -> &'static str {
    "ok"
}

#[idempotent(ttl = "10s", lease = "30s")]
async fn longer() -> &'static str {
    "ok"
}

fn main() {}
