use idem::idempotent;

#[idempotent(fingerprint = ["/amount"])]
async fn fingerprint_without_semantic() -> &'static str {
    "ok"
}

#[idempotent(guarantee = "result", fingerprint = ["/amount"])]
async fn fingerprint_with_result() -> &'static str {
    "ok"
}

#[idempotent(guarantee = "semantic")]
async fn semantic_without_fingerprint() -> &'static str {
    "ok"
}

#[idempotent(guarantee = "semantic", fingerprint = ["amount", "/a~2b", "/ok", "/ok"])]
async fn malformed_pointers() -> &'static str {
    "ok"
}

#[idempotent(guarantee = "semantic", fingerprint = "/amount")]
async fn not_an_array() -> &'static str {
    "ok"
}

#[idempotent(guarantee = "semantic", fingerprint = [])]
async fn empty_array() -> &'static str {
    "ok"
}

fn main() {}
