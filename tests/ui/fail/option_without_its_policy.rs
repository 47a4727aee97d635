use idem::idempotent;

#[idempotent(wait_timeout = "5s")]
async fn waits_without_wait() -> &'static str {
    "ok"
}

#[idempotent(on_conflict = "accepted", wait_timeout = "5s")]
async fn waits_with_accepted() -> &'static str {
    "ok"
}

#[idempotent(respond_async_after = "2s")]
async fn async_without_accepted() -> &'static str {
    "ok"
}

#[idempotent(on_conflict = "wait", respond_async_after = "2s", wait_timeout = "10m")]
async fn async_with_wait() -> &'static str {
    "ok"
}

fn main() {}
