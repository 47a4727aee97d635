use idem::idempotent;

#[idempotent(ttl = "1h", ttl = "2h")]
async fn handler() -> &'static str {
    "ok"
}

fn main() {}
