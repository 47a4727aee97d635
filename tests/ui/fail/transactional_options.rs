use idem::idempotent;

// `transactional` is a flag, given once, and it cannot fail open.
#[idempotent(store = "pg", transactional = true)]
async fn with_value() {}

#[idempotent(store = "pg", transactional, transactional)]
async fn twice() {}

#[idempotent(store = "pg", transactional, on_store_error = "proceed")]
async fn fails_open() {}

fn main() {}
