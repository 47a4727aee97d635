use idem::idempotent;

#[idempotent]
async fn handler<T: Send>() -> &'static str {
    "ok"
}

fn main() {}
