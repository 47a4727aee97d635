use idem::idempotent;

#[idempotent(on_conflict = "retry", guarantee = "strikt", on_store_error = "ignore")]
async fn handler() -> &'static str {
    "ok"
}

fn main() {}
