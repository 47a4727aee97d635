use idem::idempotent;

#[idempotent(replay_headers = ["Set-Cookie", "x request", "X-Request-Id"])]
async fn handler() -> &'static str {
    "ok"
}

fn main() {}
