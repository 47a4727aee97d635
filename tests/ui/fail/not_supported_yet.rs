use idem::idempotent;

#[idempotent(on_conflict = "wait")]
async fn waits() -> &'static str {
    "ok"
}

#[idempotent(on_conflict = "accepted")]
async fn accepts() -> &'static str {
    "ok"
}

#[idempotent(on_conflict = "webhook")]
async fn calls_back() -> &'static str {
    "ok"
}

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
