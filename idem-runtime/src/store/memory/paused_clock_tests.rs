//! The memory store on a paused runtime: the clock a simulation moves.

use std::time::Duration;

use crate::store::{Begin, Store};
use crate::{Fingerprint, MemoryStore, StorageKey, StoredResponse};

/// On a paused runtime, moving the clock moves the memory store's leases and TTLs, and the
/// wall clock with them: what a simulation relies on.
#[tokio::test(start_paused = true)]
async fn a_paused_clock_moves_leases_ttls_and_the_wall_clock() {
    let store = MemoryStore::default();
    let key = StorageKey::scoped(
        "idem:",
        "clock",
        b"",
        &crate::key::parse_key(b"k-1").unwrap(),
    );
    let fp = Fingerprint([7; 32]);
    let (lease, ttl) = (Duration::from_secs(30), Duration::from_secs(3600));
    assert!(matches!(
        store.begin(&key, &fp, lease, ttl).await.unwrap(),
        Begin::Acquired { attempt: 1, .. }
    ));
    let wall = crate::clock::wall();
    tokio::time::advance(lease + Duration::from_millis(1)).await;
    let moved = crate::clock::wall().duration_since(wall).unwrap();
    assert!(
        moved >= lease && moved < lease + Duration::from_secs(1),
        "{moved:?}"
    );
    let Begin::Acquired { token, attempt: 2 } = store.begin(&key, &fp, lease, ttl).await.unwrap()
    else {
        panic!("the lease lapsed in virtual time");
    };
    store
        .complete(
            &key,
            token,
            &StoredResponse::new(201, [("a", "b")], b"done"),
            ttl,
        )
        .await
        .unwrap();
    assert!(matches!(
        store.begin(&key, &fp, lease, ttl).await.unwrap(),
        Begin::Replay(_)
    ));
    tokio::time::advance(ttl).await;
    assert!(matches!(
        store.begin(&key, &fp, lease, ttl).await.unwrap(),
        Begin::Acquired { attempt: 1, .. }
    ));
}
