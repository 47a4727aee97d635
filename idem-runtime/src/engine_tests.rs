//! The engine's decisions against a scripted store: each `begin` answers what the script says,
//! so every branch of the flow is reached without a real store or timing.

use async_trait::async_trait;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Decision, Engine};
use crate::problem::ProblemKind;
use crate::store::{Begin, Fenced, Store, StoreError};
use crate::{
    FencingToken, Fingerprint, OnConflict, OnStoreError, Policy, Record, StorageKey, StoredResponse,
};

/// A store that answers `begin` and `wait` from scripts, and counts releases.
#[derive(Default)]
struct Scripted {
    begins: Mutex<VecDeque<Result<Begin, StoreError>>>,
    waits: Mutex<VecDeque<Result<(), StoreError>>>,
    releases: AtomicUsize,
}

#[async_trait]
impl Store for Scripted {
    async fn begin(
        &self,
        _: &StorageKey,
        _: &Fingerprint,
        _: Duration,
        _: Duration,
    ) -> Result<Begin, StoreError> {
        self.begins
            .lock()
            .unwrap()
            .pop_front()
            .expect("the script has a begin left")
    }
    async fn complete(
        &self,
        _: &StorageKey,
        _: FencingToken,
        _: &StoredResponse,
        _: Duration,
    ) -> Result<Fenced, StoreError> {
        Ok(Fenced::Done)
    }
    async fn release(&self, _: &StorageKey, _: FencingToken) -> Result<Fenced, StoreError> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        Ok(Fenced::Done)
    }
    async fn renew(
        &self,
        _: &StorageKey,
        _: FencingToken,
        _: Duration,
    ) -> Result<Fenced, StoreError> {
        Ok(Fenced::Done)
    }
    async fn purge(&self, _: &StorageKey) -> Result<bool, StoreError> {
        Ok(false)
    }
    async fn get(&self, _: &StorageKey) -> Result<Option<Record>, StoreError> {
        Ok(None)
    }
    async fn wait(&self, _: &StorageKey, _: Duration) -> Result<(), StoreError> {
        self.waits.lock().unwrap().pop_front().unwrap_or(Ok(()))
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(f)
}

fn acquired() -> Result<Begin, StoreError> {
    Ok(Begin::Acquired {
        token: FencingToken(7),
        attempt: 2,
    })
}

fn in_progress() -> Result<Begin, StoreError> {
    Ok(Begin::InProgress {
        lease_left: Duration::from_secs(5),
    })
}

fn replayed() -> Result<Begin, StoreError> {
    Ok(Begin::Replay(StoredResponse::new(
        201,
        None::<(&str, &str)>,
        b"done",
    )))
}

fn key(principal: &[u8]) -> StorageKey {
    let k = crate::key::parse_key(b"k").unwrap();
    StorageKey::scoped("t:", "engine", principal, &k)
}

/// Runs one `begin` through an engine over `script`, under `policy`.
fn decide(
    script: Vec<Result<Begin, StoreError>>,
    waits: Vec<Result<(), StoreError>>,
    policy: Policy,
    admission: Option<(u32, Duration)>,
    principals: &[&[u8]],
) -> (Vec<Decision>, Arc<Scripted>) {
    let store = Arc::new(Scripted::default());
    *store.begins.lock().unwrap() = script.into();
    *store.waits.lock().unwrap() = waits.into();
    let engine = Arc::new(
        Engine::new(store.clone(), Duration::from_secs(1), &[]).with_admission(
            admission.map(|(n, per)| Arc::new(crate::admission::Admission::new(n, per))),
        ),
    );
    let fp = Fingerprint([0; 32]);
    let decisions = block_on(async {
        let mut out = Vec::new();
        for p in principals {
            out.push(engine.begin(&policy, key(p), fp, &[]).await);
        }
        out
    });
    (decisions, store)
}

fn policy(on_conflict: OnConflict, on_store_error: OnStoreError) -> Policy {
    let mut p = Policy::new("engine");
    p.on_conflict = on_conflict;
    p.on_store_error = on_store_error;
    p.wait_timeout = Duration::from_secs(5);
    p
}

fn kind(d: &Decision) -> Option<(ProblemKind, u16, Option<u64>)> {
    match d {
        Decision::Reject(p) => Some((p.kind, p.status(), p.retry_after)),
        _ => None,
    }
}

#[test]
fn a_free_key_executes_with_its_token_and_attempt() {
    let (d, _) = decide(
        vec![acquired()],
        vec![],
        policy(OnConflict::RetryAfter, OnStoreError::Reject),
        None,
        &[b""],
    );
    match &d[0] {
        Decision::Execute(t) => assert_eq!((t.token(), t.attempt()), (FencingToken(7), 2)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn replays_mismatches_and_duplicates_get_their_answers() {
    let p = policy(OnConflict::RetryAfter, OnStoreError::Reject);
    let (d, _) = decide(vec![replayed()], vec![], p, None, &[b""]);
    assert!(
        matches!(&d[0], Decision::Replay { waited: false, response } if response.status() == 201)
    );
    let (d, _) = decide(vec![Ok(Begin::Mismatch)], vec![], p, None, &[b""]);
    assert_eq!(
        kind(&d[0]).map(|k| (k.0, k.1)),
        Some((ProblemKind::KeyReused, 422))
    );
    let (d, _) = decide(vec![in_progress()], vec![], p, None, &[b""]);
    assert_eq!(kind(&d[0]), Some((ProblemKind::InProgress, 409, Some(1))));
    let (d, _) = decide(
        vec![in_progress()],
        vec![],
        policy(OnConflict::Accepted, OnStoreError::Reject),
        None,
        &[b""],
    );
    assert!(matches!(&d[0], Decision::Accepted(_)));
    let (d, _) = decide(
        vec![in_progress()],
        vec![],
        policy(OnConflict::Webhook, OnStoreError::Reject),
        None,
        &[b""],
    );
    assert!(matches!(&d[0], Decision::Webhook(_)));
}

#[test]
fn a_waiting_duplicate_gets_the_replay_it_waited_for() {
    let p = policy(OnConflict::Wait, OnStoreError::Reject);
    let (d, _) = decide(
        vec![in_progress(), replayed()],
        vec![Ok(())],
        p,
        None,
        &[b""],
    );
    assert!(matches!(&d[0], Decision::Replay { waited: true, .. }));
    // Released meanwhile: the duplicate runs itself.
    let (d, _) = decide(
        vec![in_progress(), acquired()],
        vec![Ok(())],
        p,
        None,
        &[b""],
    );
    assert!(matches!(&d[0], Decision::Execute(_)));
}

#[test]
fn a_store_failure_while_waiting_never_runs_unprotected() {
    let p = policy(OnConflict::Wait, OnStoreError::Proceed);
    let down = || Err(StoreError::Unavailable("down".into()));
    let (d, _) = decide(vec![in_progress()], vec![down()], p, None, &[b""]);
    assert_eq!(
        kind(&d[0]).map(|k| (k.0, k.1)),
        Some((ProblemKind::StoreUnavailable, 503))
    );
}

#[test]
fn store_errors_fail_closed_or_open_per_policy_but_full_always_closes() {
    let down = || Err(StoreError::Unavailable("down".into()));
    let (d, _) = decide(
        vec![down()],
        vec![],
        policy(OnConflict::RetryAfter, OnStoreError::Reject),
        None,
        &[b""],
    );
    assert_eq!(kind(&d[0]).map(|k| k.1), Some(503));
    let (d, _) = decide(
        vec![down()],
        vec![],
        policy(OnConflict::RetryAfter, OnStoreError::Proceed),
        None,
        &[b""],
    );
    assert!(matches!(&d[0], Decision::Unprotected));
    let (d, _) = decide(
        vec![Err(StoreError::Full)],
        vec![],
        policy(OnConflict::RetryAfter, OnStoreError::Proceed),
        None,
        &[b""],
    );
    assert_eq!(kind(&d[0]).map(|k| (k.1, k.2)), Some((503, Some(5))));
    let (d, _) = decide(
        vec![Err(StoreError::PrincipalFull)],
        vec![],
        policy(OnConflict::RetryAfter, OnStoreError::Proceed),
        None,
        &[b""],
    );
    assert_eq!(
        kind(&d[0]).map(|k| (k.0, k.1)),
        Some((ProblemKind::TooManyKeys, 429))
    );
}

#[test]
fn the_admission_limit_refuses_new_keys_before_begin_for_that_principal_only() {
    let p = policy(OnConflict::RetryAfter, OnStoreError::Reject);
    // New operations: their keys' first acquisitions.
    let fresh = || {
        Ok(Begin::Acquired {
            token: FencingToken(7),
            attempt: 1,
        })
    };
    let (d, store) = decide(
        vec![fresh(), fresh()],
        vec![],
        p,
        Some((1, Duration::from_secs(60))),
        &[b"flooder", b"flooder", b"someone-else"],
    );
    assert!(matches!(&d[0], Decision::Execute(_)));
    assert_eq!(
        kind(&d[1]).map(|k| (k.0, k.1)),
        Some((ProblemKind::TooManyKeys, 429))
    );
    assert!(matches!(&d[2], Decision::Execute(_)));
    // The refused key has no record (the store's `get` says so): it never reached `begin`, so
    // nothing was written and nothing needs giving back.
    assert_eq!(store.releases.load(Ordering::SeqCst), 0);
    assert!(
        store.begins.lock().unwrap().is_empty(),
        "two begins, not three"
    );
}
