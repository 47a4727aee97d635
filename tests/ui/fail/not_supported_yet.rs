use idem::idempotent;

#[idempotent(store = "pg")]
async fn named_store() -> &'static str {
    "ok"
}

fn main() {}
