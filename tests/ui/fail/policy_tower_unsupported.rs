// What the tower layer does not do yet is refused at compile time, and a bad value is reported
// as the attribute reports it.
fn main() {
    let _ = idem::policy!(name = "b", transactional);
    let _ = idem::policy!(name = "c", ttl = "forever");
}
