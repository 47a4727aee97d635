use idem::idempotent;

#[idempotent(ttl = "1m", lease = "1m")]
async fn equal() -> &'static str {
    "ok"
}

#[idempotent(ttl = "10s", lease = "30s")]
async fn longer() -> &'static str {
    "ok"
}

// The combinations of ttl ∈ {2 s, 1 min, 24 h} and lease ∈ {default, 5 s, 60 s} that can never
// work (`tests/timing_options.rs` serves every other one).
#[idempotent(ttl = "2s", lease = "5s")]
async fn ttl_2s_lease_5s() -> &'static str {
    "ok"
}

#[idempotent(ttl = "2s", lease = "60s")]
async fn ttl_2s_lease_60s() -> &'static str {
    "ok"
}

#[idempotent(ttl = "1m", lease = "60s")]
async fn ttl_1m_lease_60s() -> &'static str {
    "ok"
}

fn main() {}
