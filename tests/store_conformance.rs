//! The store conformance suite against the memory store.

idem_runtime::store_conformance_tests!(async { idem::MemoryStore::default() });

/// The replay cache in front of a store keeps every promise of the store behind it.
mod cached {
    idem_runtime::store_conformance_tests!(async {
        idem::CachedStore::new(idem::MemoryStore::default(), 1 << 20)
    });
}

/// The cap: new keys are refused with `Full` once reached, live records are never evicted, and
/// expired records make room again.
mod memory_cap {
    use idem::{
        Begin, Fenced, Fingerprint, MemoryStore, StorageKey, Store, StoreError, StoredResponse,
    };
    use std::time::Duration;

    const KEEP: Duration = Duration::from_secs(60);

    fn key(i: usize) -> StorageKey {
        let k = idem::IdempotencyKey::parse(format!("k{i}").as_bytes()).unwrap();
        StorageKey::scoped("t:", "cap", b"", &k)
    }

    /// The conformance case every store at capacity passes (Redis at `maxmemory`:
    /// `tests/full_store.rs`).
    #[test]
    fn a_memory_store_with_no_room_answers_full() {
        idem_runtime::conformance::block_on(async {
            let store = MemoryStore::builder().max_bytes(0).build();
            idem_runtime::conformance::at_capacity_answers_full(std::sync::Arc::new(store)).await;
        });
    }

    #[test]
    fn full_store_refuses_new_keys_and_keeps_live_ones() {
        idem_runtime::conformance::block_on(async {
            let store = MemoryStore::builder()
                .max_bytes(4096)
                .sweep_every(None)
                .build();
            let fp = Fingerprint::strict("POST", "/", "", b"x");
            let lease = Duration::from_millis(300);
            let mut admitted = Vec::new();
            let mut refused = 0;
            for i in 0..100 {
                match store.begin(&key(i), &fp, lease, KEEP).await {
                    Ok(Begin::Acquired { token: t, .. }) => admitted.push((i, t)),
                    Err(StoreError::Full) => refused += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(
                !admitted.is_empty() && refused > 0,
                "admitted {} refused {refused}",
                admitted.len()
            );
            assert!(store.used_bytes() <= 4096);
            // Every admitted record is still there and can complete.
            let resp = StoredResponse::new(200, None::<(&str, &str)>, "ok");
            for (i, t) in &admitted {
                assert_eq!(
                    store
                        .complete(&key(*i), *t, &resp, Duration::from_secs(60))
                        .await
                        .ok(),
                    Some(Fenced::Done),
                    "live record {i} was lost"
                );
                assert!(matches!(
                    store.begin(&key(*i), &fp, lease, KEEP).await,
                    Ok(Begin::Replay(_))
                ));
            }
            // Still full: completed records are live for their TTL.
            assert!(matches!(
                store.begin(&key(1000), &fp, lease, KEEP).await,
                Err(StoreError::Full)
            ));
        });
    }

    #[test]
    fn lapsed_records_make_room_and_expired_ones_are_swept() {
        idem_runtime::conformance::block_on(async {
            let store = MemoryStore::builder()
                .max_bytes(2048)
                .sweep_every(None)
                .build();
            let fp = Fingerprint::strict("POST", "/", "", b"x");
            let lease = Duration::from_millis(200);
            let mut i = 0;
            while let Ok(Begin::Acquired { .. }) = store.begin(&key(i), &fp, lease, KEEP).await {
                i += 1;
            }
            assert!(i > 1);
            tokio::time::sleep(Duration::from_millis(300)).await;
            // Lapsed leases are no longer live: a full store evicts them (losing only their
            // attempt counts) to admit a new key.
            assert!(matches!(
                store.begin(&key(5000), &fp, lease, lease).await,
                Ok(Begin::Acquired { .. })
            ));
            // Records whose keep ran out too are dropped by the sweeper.
            let before = store.len();
            tokio::time::sleep(Duration::from_millis(300)).await;
            store.sweep();
            assert_eq!(
                store.len(),
                before - 1,
                "the key kept for `lease` only is swept"
            );
        });
    }
}
