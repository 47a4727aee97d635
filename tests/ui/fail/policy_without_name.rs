// A tower policy must name its endpoint: the layer does not know the route.
fn main() {
    let _ = idem::policy!(ttl = "24h", on_conflict = "wait");
}
