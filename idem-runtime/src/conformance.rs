//! The store conformance suite: the behaviour every [`Store`] must have, as one generic set of
//! cases. Run it against your store with [`store_conformance_tests!`](crate::store_conformance_tests):
//!
//! ```ignore
//! // Not a doctest: the macro expands to #[test] functions, which a doctest would not run.
//! // tests/store_conformance.rs runs exactly this.
//! idem_runtime::store_conformance_tests!(async { idem_runtime::MemoryStore::default() });
//! ```
//!
//! Each case panics with a message naming the broken rule. Cases use leases and TTLs of a few
//! hundred milliseconds and sleep past them, so the suite takes a few seconds.

use std::sync::Arc;
use std::time::Duration;

mod tentative;
pub use tentative::{discard_is_fenced, tentative_records_are_gone_once_lapsed};

use crate::{
    Begin, Fenced, FencingToken, Fingerprint, RecordState, StorageKey, Store, StoreError,
    StoredResponse,
};

/// Generates one `#[test]` per conformance case.
///
/// - `store_conformance_tests!(async { store })`: `store` is built afresh for every case.
/// - `store_conformance_tests!(guarded async { Some((guard, store)) })`: `guard` lives as long as
///   the case (a server process, say); `None` skips the case (print why before returning it).
#[macro_export]
macro_rules! store_conformance_tests {
    (guarded $make:expr) => {
        $crate::store_conformance_tests!(@cases [guarded] $make);
    };
    ($make:expr) => {
        $crate::store_conformance_tests!(@cases [plain] $make);
    };
    (@cases [$mode:ident] $make:expr) => {
        $crate::store_conformance_tests!(@each [$mode] $make;
            begin_on_absent_key_acquires,
            duplicate_in_progress_is_reported,
            other_payload_is_a_mismatch,
            complete_then_replay_is_byte_exact,
            only_the_lease_holder_may_write,
            expired_lease_is_taken_over_and_fenced,
            lapsed_lease_nobody_took_still_belongs_to_its_holder,
            release_frees_the_key,
            give_back_frees_the_key_and_fences_its_holder,
            renew_extends_the_lease,
            completed_record_expires_after_ttl,
            get_reports_each_state,
            wait_returns_on_completion,
            parallel_begins_acquire_once,
            keys_are_independent,
            attempts_count_releases_and_takeovers,
            purge_forgets_any_record,
            begin_now_answers_only_what_begin_would,
            tentative_records_are_gone_once_lapsed,
            discard_is_fenced,
        );
    };
    (@each [$mode:ident] $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::block_on(async {
                    $crate::store_conformance_tests!(@run [$mode] $make, $case);
                });
            }
        )*
    };
    (@run [plain] $make:expr, $case:ident) => {
        let store = $make.await;
        $crate::conformance::$case(::std::sync::Arc::new(store)).await;
    };
    (@run [guarded] $make:expr, $case:ident) => {
        let ::core::option::Option::Some((_guard, store)) = $make.await else {
            return;
        };
        $crate::conformance::$case(::std::sync::Arc::new(store)).await;
    };
}

/// Runs `f` on a fresh current-thread runtime with timers.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime")
        .block_on(f)
}

const LEASE: Duration = Duration::from_millis(400);
const TTL: Duration = Duration::from_secs(60);
/// How long a record that is not completed is kept (to count attempts).
const KEEP: Duration = Duration::from_secs(60);

fn unique_key(tag: &str) -> StorageKey {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let key = crate::key::parse_key(format!("{tag}-{nanos}-{n}").as_bytes())
        .unwrap_or_else(|e| panic!("test key is valid: {e}"));
    StorageKey::scoped("idem-conformance:", "conformance", b"", &key)
}

fn fp(body: &str) -> Fingerprint {
    Fingerprint::strict("POST", "/conformance", "application/json", body.as_bytes())
}

fn response(n: u8) -> StoredResponse {
    let location = format!("/things/{n}");
    StoredResponse::new(
        201,
        [
            ("content-type", "application/octet-stream"),
            ("location", location.as_str()),
        ],
        // Every byte value, so a store that mangles binary bodies fails.
        (0..=255u8).chain([n]).collect::<Vec<u8>>(),
    )
}

async fn acquire(store: &dyn Store, key: &StorageKey, lease: Duration) -> FencingToken {
    match store.begin(key, &fp("a"), lease, KEEP).await {
        Ok(Begin::Acquired { token: t, .. }) => t,
        other => panic!("begin on a free key must acquire, got {other:?}"),
    }
}

/// `begin` on an absent key acquires it.
pub async fn begin_on_absent_key_acquires(store: Arc<impl Store>) {
    let key = unique_key("absent");
    acquire(&*store, &key, LEASE).await;
}

/// A second `begin` with the same fingerprint while the first runs reports it in progress.
pub async fn duplicate_in_progress_is_reported(store: Arc<impl Store>) {
    let key = unique_key("dup");
    acquire(&*store, &key, LEASE).await;
    match store.begin(&key, &fp("a"), LEASE, KEEP).await {
        Ok(Begin::InProgress { lease_left }) => {
            assert!(
                lease_left <= LEASE,
                "lease_left {lease_left:?} exceeds the lease"
            )
        }
        other => panic!("duplicate while in progress must be InProgress, got {other:?}"),
    }
}

/// Another fingerprint under the same key is a mismatch, in progress and completed.
pub async fn other_payload_is_a_mismatch(store: Arc<impl Store>) {
    let key = unique_key("mismatch");
    let t = acquire(&*store, &key, LEASE).await;
    assert_eq!(
        store.begin(&key, &fp("b"), LEASE, KEEP).await.ok(),
        Some(Begin::Mismatch),
        "other payload while in progress"
    );
    assert_eq!(
        store.complete(&key, t, &response(1), TTL).await.ok(),
        Some(Fenced::Done)
    );
    assert_eq!(
        store.begin(&key, &fp("b"), LEASE, KEEP).await.ok(),
        Some(Begin::Mismatch),
        "other payload once completed"
    );
}

/// After `complete`, `begin` replays exactly the stored response.
pub async fn complete_then_replay_is_byte_exact(store: Arc<impl Store>) {
    let key = unique_key("replay");
    let t = acquire(&*store, &key, LEASE).await;
    assert_eq!(
        store.complete(&key, t, &response(7), TTL).await.ok(),
        Some(Fenced::Done)
    );
    for _ in 0..2 {
        match store.begin(&key, &fp("a"), LEASE, KEEP).await {
            Ok(Begin::Replay(r)) => assert_eq!(r, response(7)),
            other => panic!("completed key must replay, got {other:?}"),
        }
    }
}

/// `complete`, `renew` and `release` with a token that does not hold the lease change nothing.
pub async fn only_the_lease_holder_may_write(store: Arc<impl Store>) {
    let key = unique_key("fence");
    let t = acquire(&*store, &key, LEASE).await;
    let wrong = FencingToken(t.0.wrapping_add(1_000_003));
    assert_eq!(
        store.complete(&key, wrong, &response(1), TTL).await.ok(),
        Some(Fenced::Lost)
    );
    assert_eq!(
        store.renew(&key, wrong, LEASE).await.ok(),
        Some(Fenced::Lost)
    );
    assert_eq!(store.release(&key, wrong).await.ok(), Some(Fenced::Lost));
    assert!(matches!(
        store.begin(&key, &fp("a"), LEASE, KEEP).await,
        Ok(Begin::InProgress { .. })
    ));
    let absent = unique_key("fence-absent");
    assert_eq!(
        store.complete(&absent, t, &response(1), TTL).await.ok(),
        Some(Fenced::Lost)
    );
}

/// When a lease runs out (a crashed worker), the next `begin` takes over with a new token and
/// the old holder can no longer complete: the new owner's record stands.
pub async fn expired_lease_is_taken_over_and_fenced(store: Arc<impl Store>) {
    let key = unique_key("takeover");
    let short = Duration::from_millis(200);
    let old = acquire(&*store, &key, short).await;
    tokio::time::sleep(short + Duration::from_millis(150)).await;
    let new = acquire(&*store, &key, LEASE).await;
    assert_ne!(old, new, "a takeover must hand out a new token");
    assert_eq!(
        store.complete(&key, old, &response(1), TTL).await.ok(),
        Some(Fenced::Lost)
    );
    assert_eq!(
        store.complete(&key, new, &response(2), TTL).await.ok(),
        Some(Fenced::Done)
    );
    match store.begin(&key, &fp("a"), LEASE, KEEP).await {
        Ok(Begin::Replay(r)) => assert_eq!(r, response(2), "the new owner's record stands"),
        other => panic!("expected the new owner's replay, got {other:?}"),
    }
}

/// A lease that ran out while nobody took the key over still belongs to its holder: a late
/// renewal re-extends it (duplicates then see it in progress again) and a late completion is
/// kept. Only a takeover, which hands out a new token, fences the old holder out.
pub async fn lapsed_lease_nobody_took_still_belongs_to_its_holder(store: Arc<impl Store>) {
    let key = unique_key("lapsed");
    let short = Duration::from_millis(200);
    let t = acquire(&*store, &key, short).await;
    tokio::time::sleep(short + Duration::from_millis(150)).await;
    assert_eq!(
        store.renew(&key, t, LEASE).await.ok(),
        Some(Fenced::Done),
        "a late renewal by the holder nobody replaced re-extends its lease"
    );
    assert!(
        matches!(
            store.begin(&key, &fp("a"), LEASE, KEEP).await,
            Ok(Begin::InProgress { .. })
        ),
        "the re-extended lease keeps duplicates out"
    );
    let other = unique_key("lapsed-complete");
    let t2 = acquire(&*store, &other, short).await;
    tokio::time::sleep(short + Duration::from_millis(150)).await;
    assert_eq!(
        store.complete(&other, t2, &response(5), TTL).await.ok(),
        Some(Fenced::Done),
        "a late completion by the holder nobody replaced is kept"
    );
    match store.begin(&other, &fp("a"), LEASE, KEEP).await {
        Ok(Begin::Replay(r)) => assert_eq!(r, response(5)),
        other => panic!("expected the late completion's replay, got {other:?}"),
    }
}

/// `release` by the holder deletes the record, so the next `begin` acquires again.
pub async fn release_frees_the_key(store: Arc<impl Store>) {
    let key = unique_key("release");
    let t = acquire(&*store, &key, LEASE).await;
    assert_eq!(store.release(&key, t).await.ok(), Some(Fenced::Done));
    assert!(store.get(&key).await.ok().flatten().is_none());
    let t2 = acquire(&*store, &key, LEASE).await;
    assert_ne!(t, t2);
}

/// `give_back` by the holder frees the key at once, as a release does, and fences the holder
/// out once another request took the key over.
pub async fn give_back_frees_the_key_and_fences_its_holder(store: Arc<impl Store>) {
    let key = unique_key("give_back");
    let t = acquire(&*store, &key, LEASE).await;
    assert_eq!(store.give_back(&key, t).await.ok(), Some(Fenced::Done));
    assert!(store.get(&key).await.ok().flatten().is_none());
    let t2 = acquire(&*store, &key, LEASE).await;
    assert_ne!(t, t2);
    assert_eq!(store.give_back(&key, t).await.ok(), Some(Fenced::Lost));
    assert_eq!(
        store.complete(&key, t, &response(1), TTL).await.ok(),
        Some(Fenced::Lost)
    );
}

/// A store at its capacity (made full by the caller: a Redis at `maxmemory`, a memory store
/// with no room) answers `begin` of a new key with [`StoreError::Full`] — an answer, not an
/// outage, so that `on_store_error = "proceed"` never runs such a request unprotected — and
/// still reads.
pub async fn at_capacity_answers_full(store: Arc<impl Store>) {
    let key = unique_key("full");
    let begun = store.begin(&key, &fp("a"), LEASE, TTL).await;
    assert!(
        matches!(begun, Err(StoreError::Full)),
        "a full store answers Full, got {begun:?}"
    );
    assert!(matches!(store.get(&key).await, Ok(None)));
}

/// `renew` pushes the lease's end out, so a slow handler keeps its key.
pub async fn renew_extends_the_lease(store: Arc<impl Store>) {
    let key = unique_key("renew");
    let lease = Duration::from_millis(300);
    let t = acquire(&*store, &key, lease).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(store.renew(&key, t, lease).await.ok(), Some(Fenced::Done));
    }
    // 450 ms after begin: past the first lease, still held thanks to renewal.
    assert!(matches!(
        store.begin(&key, &fp("a"), lease, KEEP).await,
        Ok(Begin::InProgress { .. })
    ));
    assert_eq!(
        store.complete(&key, t, &response(3), TTL).await.ok(),
        Some(Fenced::Done)
    );
}

/// A completed record lives for its TTL, then the key is free again.
pub async fn completed_record_expires_after_ttl(store: Arc<impl Store>) {
    let key = unique_key("ttl");
    let t = acquire(&*store, &key, LEASE).await;
    let ttl = Duration::from_millis(300);
    assert_eq!(
        store.complete(&key, t, &response(4), ttl).await.ok(),
        Some(Fenced::Done)
    );
    assert!(matches!(
        store.begin(&key, &fp("a"), LEASE, KEEP).await,
        Ok(Begin::Replay(_))
    ));
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    acquire(&*store, &key, LEASE).await;
}

/// `get` reads absent, in-progress and completed records with their fingerprint and expiry.
pub async fn get_reports_each_state(store: Arc<impl Store>) {
    let key = unique_key("get");
    assert!(store.get(&key).await.ok().flatten().is_none());
    let t = acquire(&*store, &key, LEASE).await;
    let rec = store
        .get(&key)
        .await
        .ok()
        .flatten()
        .expect("in-progress record");
    assert_eq!(rec.fingerprint, fp("a"));
    assert_eq!(rec.state, RecordState::InProgress { token: t });
    assert!(rec.expires_in <= LEASE);
    assert_eq!(
        store.complete(&key, t, &response(5), TTL).await.ok(),
        Some(Fenced::Done)
    );
    let rec = store
        .get(&key)
        .await
        .ok()
        .flatten()
        .expect("completed record");
    assert_eq!(
        rec.state,
        RecordState::Completed {
            response: response(5)
        }
    );
    assert!(rec.expires_in <= TTL && rec.expires_in > TTL / 2);
}

/// `wait` returns once the record completes, well before its timeout.
pub async fn wait_returns_on_completion(store: Arc<impl Store>) {
    let key = unique_key("wait");
    let lease = Duration::from_secs(30);
    let t = acquire(&*store, &key, lease).await;
    let s2 = store.clone();
    let k2 = key.clone();
    let finisher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s2.complete(&k2, t, &response(6), TTL).await.ok()
    });
    let started = std::time::Instant::now();
    store
        .wait(&key, Duration::from_secs(20))
        .await
        .expect("wait succeeds");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "wait must return on completion, not at its timeout"
    );
    assert_eq!(finisher.await.ok().flatten(), Some(Fenced::Done));
    assert!(matches!(
        store.begin(&key, &fp("a"), LEASE, KEEP).await,
        Ok(Begin::Replay(_))
    ));
}

/// Of many concurrent `begin`s on one key, exactly one acquires.
pub async fn parallel_begins_acquire_once(store: Arc<impl Store>) {
    let key = unique_key("race");
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let s = store.clone();
            let k = key.clone();
            tokio::spawn(async move { s.begin(&k, &fp("a"), LEASE, KEEP).await })
        })
        .collect();
    let mut acquired = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(Begin::Acquired { .. }) => acquired += 1,
            Ok(Begin::InProgress { .. }) => {}
            other => panic!("unexpected answer in a race: {other:?}"),
        }
    }
    assert_eq!(acquired, 1, "exactly one begin may acquire a key");
}

/// Records of different keys do not affect each other.
pub async fn keys_are_independent(store: Arc<impl Store>) {
    let a = unique_key("indep-a");
    let b = unique_key("indep-b");
    let ta = acquire(&*store, &a, LEASE).await;
    let tb = acquire(&*store, &b, LEASE).await;
    assert_eq!(
        store.complete(&a, ta, &response(8), TTL).await.ok(),
        Some(Fenced::Done)
    );
    assert!(matches!(
        store.begin(&b, &fp("a"), LEASE, KEEP).await,
        Ok(Begin::InProgress { .. })
    ));
    assert_eq!(store.release(&b, tb).await.ok(), Some(Fenced::Done));
    assert!(matches!(
        store.begin(&a, &fp("a"), LEASE, KEEP).await,
        Ok(Begin::Replay(_))
    ));
}

/// Every acquisition of a key gets the next attempt number, across releases and lease takeovers;
/// a completed record reports the attempt that completed it.
pub async fn attempts_count_releases_and_takeovers(store: Arc<impl Store>) {
    let key = unique_key("attempts");
    let short = Duration::from_millis(200);
    let attempt_of = |b: Result<Begin, crate::StoreError>| match b {
        Ok(Begin::Acquired { token, attempt }) => (token, attempt),
        other => panic!("expected to acquire, got {other:?}"),
    };
    let (t1, a1) = attempt_of(store.begin(&key, &fp("a"), LEASE, KEEP).await);
    assert_eq!(a1, 1);
    assert_eq!(store.release(&key, t1).await.ok(), Some(Fenced::Done));
    assert!(
        store.get(&key).await.ok().flatten().is_none(),
        "released: free"
    );
    let (_, a2) = attempt_of(store.begin(&key, &fp("a"), short, KEEP).await);
    assert_eq!(a2, 2, "after a release");
    tokio::time::sleep(short + Duration::from_millis(150)).await;
    assert!(
        store.get(&key).await.ok().flatten().is_none(),
        "lapsed lease: free"
    );
    let (t3, a3) = attempt_of(store.begin(&key, &fp("a"), LEASE, KEEP).await);
    assert_eq!(a3, 3, "after a takeover");
    assert_eq!(
        store.complete(&key, t3, &response(9), TTL).await.ok(),
        Some(Fenced::Done)
    );
    let rec = store.get(&key).await.ok().flatten().expect("completed");
    assert_eq!(rec.attempt, 3);
    // A fresh key starts again at 1.
    let (_, fresh) = attempt_of(
        store
            .begin(&unique_key("attempts-fresh"), &fp("a"), LEASE, KEEP)
            .await,
    );
    assert_eq!(fresh, 1);
}

/// `purge` forgets a record in any state; the key then runs afresh.
pub async fn purge_forgets_any_record(store: Arc<impl Store>) {
    let key = unique_key("purge");
    assert_eq!(
        store.purge(&key).await.ok(),
        Some(false),
        "nothing to purge"
    );
    let t = acquire(&*store, &key, LEASE).await;
    assert_eq!(store.purge(&key).await.ok(), Some(true), "in progress");
    assert!(store.get(&key).await.ok().flatten().is_none());
    assert_eq!(
        store.complete(&key, t, &response(1), TTL).await.ok(),
        Some(Fenced::Lost)
    );
    let t = acquire(&*store, &key, LEASE).await;
    assert_eq!(
        store.complete(&key, t, &response(2), TTL).await.ok(),
        Some(Fenced::Done)
    );
    assert_eq!(store.purge(&key).await.ok(), Some(true), "completed");
    acquire(&*store, &key, LEASE).await;
}

/// `begin_now` (an answer from memory, without the store) says nothing `begin` would not: no
/// acquisition, no answer for a record in progress, the same replay and mismatch, and nothing
/// once the record was purged or has expired.
pub async fn begin_now_answers_only_what_begin_would(store: Arc<impl Store>) {
    let key = unique_key("now");
    assert_eq!(store.begin_now(&key, &fp("a")), None, "absent key");
    let t = acquire(&*store, &key, LEASE).await;
    assert_eq!(store.begin_now(&key, &fp("a")), None, "in progress");
    assert!(
        matches!(
            store.begin_now(&key, &fp("b")),
            None | Some(Begin::Mismatch)
        ),
        "other payload while in progress"
    );
    let ttl = Duration::from_millis(1_500);
    assert_eq!(
        store.complete(&key, t, &response(5), ttl).await.ok(),
        Some(Fenced::Done)
    );
    // A replay through `begin` first, as a cache would need to hold the record.
    assert!(matches!(
        store.begin(&key, &fp("a"), LEASE, KEEP).await,
        Ok(Begin::Replay(_))
    ));
    match store.begin_now(&key, &fp("a")) {
        None => {}
        Some(Begin::Replay(r)) => assert_eq!(r, response(5), "begin_now's replay"),
        other => panic!("a completed key answers None or its replay, got {other:?}"),
    }
    assert!(
        matches!(
            store.begin_now(&key, &fp("b")),
            None | Some(Begin::Mismatch)
        ),
        "other payload once completed"
    );
    assert_eq!(store.purge(&key).await.ok(), Some(true));
    assert_eq!(store.begin_now(&key, &fp("a")), None, "purged");

    let t = acquire(&*store, &key, LEASE).await;
    assert_eq!(
        store.complete(&key, t, &response(6), ttl).await.ok(),
        Some(Fenced::Done)
    );
    assert!(matches!(
        store.begin(&key, &fp("a"), LEASE, KEEP).await,
        Ok(Begin::Replay(_))
    ));
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    assert_eq!(store.begin_now(&key, &fp("a")), None, "expired");
    assert_eq!(
        store.begin_now(&key, &fp("b")),
        None,
        "expired, other payload"
    );
}
