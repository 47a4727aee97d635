//! The sweeper: drops expired records so that their memory comes back, a bounded number of
//! entries per tick (expired records are invisible to reads before that already).

use std::sync::Weak;
use std::time::Duration;

use crate::clock::Instant;

use super::{Inner, SHARDS};

/// Entries the sweeper walks per tick, at most (it walks whole shards, round robin, until past
/// this): its work per tick stays flat however many records the store holds; at 10^7 records a
/// full cycle takes ~50 ticks. Expired records it has not reached yet are already invisible
/// (expiry is checked on every read) and are dropped first when the store is full.
const SWEEP_BUDGET: usize = 200_000;

/// The sweeper thread's loop: a budgeted sweep every `every`, until the store is dropped.
pub(super) fn run(weak: Weak<Inner>, every: Duration) {
    let mut next = 0;
    loop {
        std::thread::sleep(every);
        match weak.upgrade() {
            Some(inner) => next = inner.sweep_some(Instant::now(), next, SWEEP_BUDGET),
            None => return,
        }
    }
}

impl Inner {
    pub(super) fn sweep(&self, now: Instant) {
        for shard in 0..SHARDS {
            self.sweep_shard(shard, now);
        }
    }

    /// Sweeps whole shards from `from` on, round robin, until `budget` entries were walked or
    /// every shard was; returns the shard to start from next time.
    pub(super) fn sweep_some(&self, now: Instant, from: usize, budget: usize) -> usize {
        let (mut shard, mut walked) = (from % SHARDS, 0);
        for _ in 0..SHARDS {
            walked += self.sweep_shard(shard, now);
            shard = (shard + 1) % SHARDS;
            if walked >= budget {
                break;
            }
        }
        shard
    }

    /// Drops the expired records of one shard; returns how many entries it walked.
    fn sweep_shard(&self, shard: usize, now: Instant) -> usize {
        // Taken out under the shard's lock, freed after it: freeing a shard's worth of cold
        // records (about 3 µs each, measured) takes milliseconds, which a request for a key of
        // this shard would otherwise wait.
        let mut gone = Vec::new();
        let walked = {
            let mut map = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
            map.remove_where(
                |_, e| e.expires_at <= now,
                |k, e| {
                    self.unaccount(&k, &e);
                    gone.push((k, e));
                },
            );
            map.len() + gone.len()
        };
        for (_, e) in gone {
            e.drop_waking();
        }
        walked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Fingerprint, IdempotencyKey, StorageKey, Store, StoredResponse};

    #[tokio::test]
    async fn a_budgeted_tick_walks_some_shards_and_the_cycle_all_of_them() {
        let store = crate::MemoryStore::builder().sweep_every(None).build();
        let fp = Fingerprint::strict("POST", "/", "", b"");
        let resp = StoredResponse::new(201, None::<(&str, &str)>, "");
        for i in 0..2000 {
            let raw = IdempotencyKey::parse(format!("k{i}").as_bytes()).unwrap();
            let key = StorageKey::scoped("t:", "e", b"", &raw);
            let Ok(crate::Begin::Acquired { token, .. }) = store
                .begin(&key, &fp, Duration::from_secs(5), Duration::from_secs(5))
                .await
            else {
                panic!("acquired");
            };
            store
                .complete(&key, token, &resp, Duration::from_millis(1))
                .await
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
        // A budget of one entry: one shard per tick.
        let next = store.inner.sweep_some(Instant::now(), 0, 1);
        assert_eq!(next, 1);
        assert!(store.len() < 2000 && store.len() > 1500, "{}", store.len());
        // Round robin from there: a full cycle drops the rest.
        let mut at = next;
        for _ in 1..SHARDS {
            at = store.inner.sweep_some(Instant::now(), at, 1);
        }
        assert_eq!(at, 0);
        assert_eq!(store.len(), 0);
    }
}
