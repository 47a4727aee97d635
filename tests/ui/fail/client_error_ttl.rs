use idem::idempotent;

#[idempotent(ttl = "1h", client_error_ttl = "2h")]
async fn longer_than_ttl() -> &'static str {
    "x"
}

#[idempotent(client_error_ttl = "soon")]
async fn not_a_duration() -> &'static str {
    "x"
}

fn main() {}
