use idem::{Idempotency, MemoryStore};

fn main() {
    // Who a request belongs to was never said: this must not build.
    let _idem = Idempotency::builder().store(MemoryStore::default()).build();
}
