use idem::idempotent;

#[idempotent(guarantee = "result")]
async fn result() -> &'static str {
    "ok"
}

#[idempotent(guarantee = "semantic", fingerprint = ["/amount"])]
async fn semantic() -> &'static str {
    "ok"
}

#[idempotent(store = "pg")]
async fn named_store() -> &'static str {
    "ok"
}

fn main() {}
