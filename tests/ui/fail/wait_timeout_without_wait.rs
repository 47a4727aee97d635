use idem::idempotent;

#[idempotent(wait_timeout = "5s")]
async fn handler() -> &'static str {
    "ok"
}

fn main() {}
