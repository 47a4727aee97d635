//! Flood: a million unique keys against a memory store capped at 64 MiB. Resident memory stays
//! bounded, new keys are refused (503 over HTTP) once full, and every record admitted, completed
//! and inside its TTL still replays.

use idem::{
    Begin, Fenced, Fingerprint, MemoryStore, StorageKey, Store, StoreError, StoredResponse,
};
use std::time::Duration;

const CAP: usize = 64 << 20;
const KEYS: u64 = 1_000_000;

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[test]
fn a_million_keys_against_a_64_mib_store() {
    idem_runtime::conformance::block_on(async {
        let store = MemoryStore::builder().max_bytes(CAP).build();
        let fp = Fingerprint::strict("POST", "/flood", "application/json", b"{}");
        let resp = StoredResponse::new(
            201,
            [("content-type", "application/json")],
            "{\"id\":\"pay_000001\",\"status\":\"succeeded\"}",
        );
        // Storage keys as the engine makes them (principal tag + 64 hex), without hashing a
        // million keys in a debug build.
        let tag = {
            let k = idem::IdempotencyKey::parse(b"x").unwrap();
            StorageKey::scoped("", "flood", b"", &k).status_id()[..16].to_owned()
        };
        let key = |i: u64| {
            StorageKey::from_status_id("flood:", &format!("{tag}-{i:064x}"), b"")
                .expect("well formed")
        };
        let rss_before = rss_bytes();
        let (mut admitted, mut refused) = (0u64, 0u64);
        for i in 0..KEYS {
            let k = key(i);
            match store
                .begin(&k, &fp, Duration::from_secs(30), Duration::from_secs(3600))
                .await
            {
                Ok(Begin::Acquired { token, .. }) => {
                    admitted += 1;
                    let done = store
                        .complete(&k, token, &resp, Duration::from_secs(3600))
                        .await;
                    assert_eq!(done.ok(), Some(Fenced::Done));
                }
                Err(StoreError::Full) => refused += 1,
                other => panic!("key {i}: {other:?}"),
            }
        }
        let grown = rss_bytes().saturating_sub(rss_before);
        println!(
            "flood: {admitted} admitted, {refused} refused, store charges {} B, RSS grew {} MiB",
            store.used_bytes(),
            grown >> 20
        );
        assert!(refused > 0, "the cap was reached");
        assert_eq!(admitted + refused, KEYS);
        assert!(
            store.used_bytes() <= CAP,
            "the accounting never passes the cap"
        );
        // The charge per record is calibrated against resident memory: the cap holds within 25 %.
        assert!(
            grown <= CAP + CAP / 4,
            "resident memory bounded: grew {} MiB",
            grown >> 20
        );
        // Every admitted record is live and replays.
        let mut replayed = 0u64;
        for i in 0..KEYS {
            match store
                .begin(
                    &key(i),
                    &fp,
                    Duration::from_secs(30),
                    Duration::from_secs(3600),
                )
                .await
            {
                Ok(Begin::Replay(r)) => {
                    assert_eq!(r, resp);
                    replayed += 1;
                }
                Err(StoreError::Full) => {}
                other => panic!("key {i}: {other:?}"),
            }
        }
        assert_eq!(replayed, admitted, "no completed record was lost");
    });
}
