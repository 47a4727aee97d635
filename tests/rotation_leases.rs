//! A rotation's look (a `begin` under each previous secret, and the clean-up of what it made)
//! takes store time out of the request's lease. Whatever it took, the handler starts with a
//! whole lease — never one a duplicate can take over before the first renewal lands — and a
//! short lease on a healthy store is still served.

mod common;

use actix_web::{post, web, HttpResponse};
use idem::{idempotent, Idempotency, MemoryStore};
use idem_runtime::testing::{Condition, Fault, FaultyStore, Op};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const OLD: &[u8] = b"the-old-app-secret-0123456789abcdef";
const NEW: &[u8] = b"the-new-app-secret-0123456789abcdef";

/// Runs of the handlers, across every instance.
#[derive(Default)]
struct Runs(AtomicUsize);

/// Answers 503 on the first run of all (released under `result`); later runs work 1.5 s (their
/// 1 s lease renewed), then 201.
#[post("/slow")]
#[idempotent(lease = "1s", guarantee = "result")]
async fn slow(req: actix_web::HttpRequest, runs: web::Data<Runs>) -> HttpResponse {
    let n = runs.0.fetch_add(1, Ordering::SeqCst) + 1;
    if n == 1 && req.headers().contains_key("x-fail-first") {
        return HttpResponse::ServiceUnavailable().finish();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    HttpResponse::Created().finish()
}

/// The attribute's shortest lease.
#[post("/short")]
#[idempotent(lease = "100ms", ttl = "1m")]
async fn short(runs: web::Data<Runs>) -> HttpResponse {
    runs.0.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Created().finish()
}

/// An instance writing under `secret` and looking under `previous` (if any), on a
/// `FaultyStore` over `memory`.
async fn instance(
    memory: &MemoryStore,
    secret: &[u8],
    previous: Option<&[u8]>,
    runs: &web::Data<Runs>,
) -> (FaultyStore<MemoryStore>, std::net::SocketAddr) {
    let store = FaultyStore::new(memory.clone());
    let idem: Idempotency = common::builder()
        .store(store.clone())
        .secret(secret.to_vec())
        .previous_secrets(previous.map(<[u8]>::to_vec))
        .build();
    assert!(idem.check_secret().await.expect("a fleet check"));
    let runs = runs.clone();
    let addr = common::serve(2, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(runs.clone())
            .service(slow)
            .service(short);
    })
    .0;
    (store, addr)
}

async fn send(addr: std::net::SocketAddr, path: &str, key: &str, after_ms: u64) -> u16 {
    tokio::time::sleep(Duration::from_millis(after_ms)).await;
    common::client()
        .post(format!("http://{addr}{path}"))
        .header("Idempotency-Key", key)
        .header("x-fail-first", "1")
        .send()
        .await
        .expect("an answer")
        .status()
        .as_u16()
}

/// Every call within its deadline — the look's `begin` 800 ms (store deadline 2 s), the
/// `confirm` and the first renewal 150 ms (lease/6 = 166 ms) — yet the handler started with
/// 50 ms of its lease left, its first renewal landed after it, and a duplicate took the key
/// over and ran too. The `confirm` now renews the lease.
#[actix_web::test]
async fn a_slow_look_still_starts_the_handler_with_a_whole_lease() {
    let runs = web::Data::new(Runs::default());
    runs.0.store(1, Ordering::SeqCst); // no 503 first here
    let (store, addr) = instance(&MemoryStore::default(), NEW, Some(OLD), &runs).await;
    // The request's own `begin` passes; its look (a `begin` under the old key) is slow.
    store.inject(Op::Begin, Fault::Delay(Duration::ZERO), 1);
    store.inject(Op::Begin, Fault::Delay(Duration::from_millis(800)), 1);
    store.inject(Op::Confirm, Fault::Delay(Duration::from_millis(150)), 1);
    store.inject(Op::Renew, Fault::Delay(Duration::from_millis(150)), 1);
    let answers = tokio::join!(
        send(addr, "/slow", "g-1", 0),
        send(addr, "/slow", "g-1", 1030)
    );
    assert_eq!(answers, (201, 409));
    assert_eq!(runs.0.load(Ordering::SeqCst), 2, "one run");
}

/// An operation released under the old key is resumed by an instance of step 2, whose
/// clean-up of its own new key answers in 1.2 s (store deadline 2 s), past the resumed lease
/// (1 s): the handler started anyway, and a retry meanwhile took the old key over and ran too.
/// The resumed lease is now renewed before the handler starts (fenced: lost to the retry, the
/// resumed request answers 409 instead).
#[actix_web::test]
async fn a_resumed_operation_starts_with_a_whole_lease() {
    let memory = MemoryStore::default();
    let runs = web::Data::new(Runs::default());
    let (_, step1) = instance(&memory, OLD, Some(NEW), &runs).await;
    let (step2_store, step2) = instance(&memory, NEW, Some(OLD), &runs).await;
    assert_eq!(send(step1, "/slow", "r-1", 0).await, 503);
    step2_store.inject(Op::Purge, Fault::Delay(Duration::from_millis(1200)), 1);
    let answers = tokio::join!(
        send(step2, "/slow", "r-1", 0),
        send(step2, "/slow", "r-1", 1100)
    );
    // The resumed request lost its lease to the retry (409), or kept it (the retry got 409).
    let mut answers = [answers.0, answers.1];
    answers.sort();
    assert_eq!(answers, [201, 409]);
    assert_eq!(runs.0.load(Ordering::SeqCst), 2, "released once, run once");
}

/// The attribute's shortest lease (100 ms) on a healthy store answering in 30 ms: served during
/// a rotation as without one (every new operation got 503 while a look's calls were counted
/// against the lease).
#[actix_web::test]
async fn a_short_lease_is_served_during_a_rotation() {
    for previous in [None, Some(OLD)] {
        let runs = web::Data::new(Runs::default());
        let (store, addr) = instance(&MemoryStore::default(), NEW, previous, &runs).await;
        store.set_condition(Condition::Slow(Duration::from_millis(30)));
        let mut answers = Vec::new();
        for i in 0..5 {
            answers.push(send(addr, "/short", &format!("s-{i}"), 0).await);
        }
        assert_eq!(answers, [201; 5], "previous secret: {}", previous.is_some());
        assert_eq!(runs.0.load(Ordering::SeqCst), 5);
    }
}

/// The `confirm` lands at once but its answer comes back 1.1 s later (a slow network, a
/// replica `WAIT`), within the store deadline (2 s) but past the 1 s lease it renewed: a
/// duplicate took the lapsed key over meanwhile and runs. The first request must not start its
/// handler with no lease left (it did: two runs); it answers 503.
#[actix_web::test]
async fn a_late_confirm_answer_does_not_start_the_handler() {
    let runs = web::Data::new(Runs::default());
    runs.0.store(1, Ordering::SeqCst); // no 503 first here
    let (store, addr) = instance(&MemoryStore::default(), NEW, Some(OLD), &runs).await;
    store.inject(
        Op::Confirm,
        Fault::SlowAnswer(Duration::from_millis(1100)),
        1,
    );
    let answers = tokio::join!(
        send(addr, "/slow", "l-1", 0),
        send(addr, "/slow", "l-1", 1050)
    );
    assert_eq!(answers, (503, 201));
    assert_eq!(runs.0.load(Ordering::SeqCst), 2, "one run");
}
