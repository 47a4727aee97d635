use idem::idempotent;

#[idempotent(key = "Idempotency-Key")]
async fn no_kind() {}

#[idempotent(key = "heder:Idempotency-Key")]
async fn unknown_kind() {}

#[idempotent(key = ["form:_idem", "query:a b", "cookie:"])]
async fn bad_names() {}

#[idempotent(key = ["form:_idem", "form:_idem"])]
async fn twice() {}

#[idempotent(key = [])]
async fn empty() {}

#[idempotent(key = 5)]
async fn not_a_string() {}

fn main() {}
