// `idem::policy!` takes the attribute's options and gives a `&'static` policy.
fn main() {
    let p: &'static idem::__private_v0_1::Policy = idem::policy!(
        name = "payments.create",
        ttl = "24h",
        guarantee = "semantic",
        fingerprint = ["/amount", "/currency"],
        on_conflict = "wait",
        wait_timeout = "5s",
        max_body = "64KiB",
        key = ["header:Idempotency-Key", "query:key"],
    );
    assert_eq!(p.name, Some("payments.create"));
}
