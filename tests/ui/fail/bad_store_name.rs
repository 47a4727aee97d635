use idem::idempotent;

#[idempotent(store = "")]
async fn empty() -> &'static str {
    "ok"
}

#[idempotent(store = "two words")]
async fn spaced() -> &'static str {
    "ok"
}

#[idempotent(store = pg)]
async fn not_a_string() -> &'static str {
    "ok"
}

fn main() {}
