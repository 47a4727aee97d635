//! The one clock the runtime reads: tokio's [`Instant`](tokio::time::Instant) for leases, TTLs,
//! waits and rate limits, and [`wall`] for the few wall-clock times it shows (the
//! `Idempotency-Expires` header, a record's acquisition time, webhook timestamps).
//!
//! Outside a runtime whose clock is paused, tokio's `Instant` is `std::time::Instant`. A
//! simulation on a current-thread runtime started paused (`tokio::time::pause`, feature
//! `test-util`) moves this clock with `tokio::time::advance` — leases lapse and records expire
//! in virtual time, and one seed gives one history — with no cost on the request path of a real
//! one. (A `MemoryStore`'s sweeper is a thread of its own, on the real clock: a simulation builds
//! its store with `sweep_every(None)`, expiry then being checked on every read.)

use std::time::SystemTime;

pub(crate) use tokio::time::Instant;

/// The wall clock, moved by as much as the runtime's clock was moved (a paused clock advanced
/// past real time, or left behind it); `SystemTime::now()` on a real clock.
pub(crate) fn wall() -> SystemTime {
    let now = SystemTime::now();
    let real = std::time::Instant::now();
    let ours = Instant::now().into_std();
    if ours >= real {
        now + (ours - real)
    } else {
        now - (real - ours)
    }
}

#[cfg(test)]
mod tests {
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
        let wall = super::wall();
        tokio::time::advance(lease + Duration::from_millis(1)).await;
        let moved = super::wall().duration_since(wall).unwrap();
        assert!(
            moved >= lease && moved < lease + Duration::from_secs(1),
            "{moved:?}"
        );
        let Begin::Acquired { token, attempt: 2 } =
            store.begin(&key, &fp, lease, ttl).await.unwrap()
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
}
