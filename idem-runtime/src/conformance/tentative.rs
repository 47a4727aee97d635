//! The conformance cases of giving a key up: tentative records (`Store::begin_tentative`,
//! `Store::confirm`) and `Store::discard`.

use std::sync::Arc;
use std::time::Duration;

use super::{fp, response, unique_key, KEEP, LEASE, TTL};
use crate::{Begin, Fenced, FencingToken, Store};

/// `begin_tentative`'s answer that acquired, as (token, attempt).
fn acquired(answer: Result<Begin, crate::StoreError>, what: &str) -> (FencingToken, u32) {
    match answer {
        Ok(Begin::Acquired { token, attempt }) => (token, attempt),
        other => panic!("{what}: expected to acquire, got {other:?}"),
    }
}

/// A tentative record is in progress while its lease lasts, and once the lease lapsed it is as
/// if it had never been (the next `begin` is a first attempt, `get` shows nothing), unless it
/// was confirmed: then it is an operation's, counted and kept like any other. A record that was
/// there is taken over as `begin` takes it over, not tentatively; a tentative record released
/// is gone; `confirm` is fenced.
pub async fn tentative_records_are_gone_once_lapsed(store: Arc<impl Store>) {
    let short = Duration::from_millis(200);
    let past = short + Duration::from_millis(150);
    // Live: in progress for a duplicate and for `get`.
    let key = unique_key("tentative");
    let (_, a1) = acquired(
        store.begin_tentative(&key, &fp("a"), short, KEEP).await,
        "tentative on an absent key",
    );
    assert_eq!(a1, 1);
    assert!(matches!(
        store.begin(&key, &fp("a"), LEASE, KEEP).await,
        Ok(Begin::InProgress { .. })
    ));
    assert!(matches!(
        store.begin(&key, &fp("b"), LEASE, KEEP).await,
        Ok(Begin::Mismatch)
    ));
    assert!(
        store.get(&key).await.ok().flatten().is_some(),
        "live: shown"
    );
    // Lapsed: as if it had never been.
    tokio::time::sleep(past).await;
    assert!(store.get(&key).await.ok().flatten().is_none(), "lapsed");
    let (t, a) = acquired(
        store.begin_tentative(&key, &fp("b"), short, KEEP).await,
        "after a lapsed tentative record, with another payload",
    );
    assert_eq!(a, 1, "a lapsed tentative record counts no attempt");
    // Confirmed: an operation's.
    assert_eq!(
        store.confirm(&key, FencingToken(t.0 ^ 1), short).await.ok(),
        Some(Fenced::Lost),
        "confirm is fenced"
    );
    assert_eq!(store.confirm(&key, t, short).await.ok(), Some(Fenced::Done));
    tokio::time::sleep(past).await;
    let (_, a) = acquired(
        store.begin_tentative(&key, &fp("b"), short, KEEP).await,
        "a confirmed record whose lease lapsed",
    );
    assert_eq!(
        a, 2,
        "the confirmed operation is taken over as a second attempt"
    );
    // Taken over, it is not tentative: lapsed again, it is a third attempt.
    tokio::time::sleep(past).await;
    let (t, a) = acquired(
        store.begin_tentative(&key, &fp("b"), LEASE, KEEP).await,
        "a taken-over record whose lease lapsed",
    );
    assert_eq!(a, 3);
    assert_eq!(
        store.complete(&key, t, &response(3), TTL).await.ok(),
        Some(Fenced::Done)
    );
    assert!(matches!(
        store.begin_tentative(&key, &fp("b"), LEASE, KEEP).await,
        Ok(Begin::Replay(_))
    ));
    // Released: gone.
    let key = unique_key("tentative-released");
    let (t, _) = acquired(
        store.begin_tentative(&key, &fp("a"), LEASE, KEEP).await,
        "tentative",
    );
    assert_eq!(store.release(&key, t).await.ok(), Some(Fenced::Done));
    let (_, a) = acquired(
        store.begin(&key, &fp("a"), LEASE, KEEP).await,
        "after a released tentative record",
    );
    assert_eq!(a, 1, "a released tentative record counts no attempt");
    // A released operation is taken over as its next attempt, tentatively or not.
    let key = unique_key("tentative-after-release");
    let t = super::acquire(&*store, &key, LEASE).await;
    assert_eq!(store.release(&key, t).await.ok(), Some(Fenced::Done));
    let (_, a) = acquired(
        store.begin_tentative(&key, &fp("a"), short, KEEP).await,
        "a released operation",
    );
    assert_eq!(a, 2);
    tokio::time::sleep(past).await;
    let (_, a) = acquired(
        store.begin(&key, &fp("a"), LEASE, KEEP).await,
        "its lapsed takeover",
    );
    assert_eq!(a, 3, "a takeover is never tentative");
}

/// `discard` deletes the record its token holds, and only that: once the lease lapsed and
/// another request took the key over, the old holder's discard leaves the new record alone.
pub async fn discard_is_fenced(store: Arc<impl Store>) {
    let short = Duration::from_millis(200);
    let key = unique_key("discard");
    let (old, _) = acquired(
        store.begin_tentative(&key, &fp("a"), short, KEEP).await,
        "tentative on an absent key",
    );
    tokio::time::sleep(short + Duration::from_millis(150)).await;
    let (new, _) = acquired(
        store.begin(&key, &fp("a"), LEASE, KEEP).await,
        "after the lapse",
    );
    assert_eq!(
        store.discard(&key, old).await.ok(),
        Some(Fenced::Lost),
        "a lapsed holder's discard is fenced"
    );
    assert!(
        store.get(&key).await.ok().flatten().is_some(),
        "the new holder's record stays"
    );
    assert_eq!(store.discard(&key, new).await.ok(), Some(Fenced::Done));
    assert!(store.get(&key).await.ok().flatten().is_none(), "discarded");
    let (_, attempt) = acquired(
        store.begin(&key, &fp("a"), LEASE, KEEP).await,
        "after the discard",
    );
    assert_eq!(attempt, 1, "a discarded record counts no attempt");
}
