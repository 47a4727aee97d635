use idem::idempotent;

#[idempotent(ttll = "1h", on_conflit = "retry_after", colour = "blue")]
async fn handler() -> &'static str {
    "ok"
}

fn main() {}
