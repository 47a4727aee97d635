use idem::idempotent;

#[idempotent(ttl = 24, required = "yes", guarantee = strict, max_body = "lots", crate = "not a path")]
async fn handler() -> &'static str {
    "ok"
}

fn main() {}
