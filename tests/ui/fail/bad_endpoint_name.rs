use idem::idempotent;

#[idempotent(name = "")]
async fn empty() -> &'static str {
    "x"
}

#[idempotent(name = "9lives")]
async fn digit_first() -> &'static str {
    "x"
}

#[idempotent(name = "payments create")]
async fn space() -> &'static str {
    "x"
}

#[idempotent(name = 42)]
async fn not_a_string() -> &'static str {
    "x"
}

fn main() {}
