use idem::idempotent;

#[idempotent(ttl = "1h")]
fn handler() -> &'static str {
    "ok"
}

fn main() {}
