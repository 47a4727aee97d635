use idem::idempotent;

#[idempotent(ttl = "24x")]
async fn handler() -> &'static str {
    "ok"
}

// The item survives the error: only the attribute's own error is reported, not a missing fn.
fn main() {
    let _ = handler;
}
