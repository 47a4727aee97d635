use idem::idempotent;

#[idempotent(ttl = "31d")]
async fn too_long() -> &'static str {
    "ok"
}

#[idempotent(ttl = "500ms")]
async fn too_short() -> &'static str {
    "ok"
}

fn main() {}
