//! The app secret rotated with records in flight, on a shared private Redis: a retry whose
//! record was written under the previous secret replays it (or is answered as in progress)
//! instead of running again, and a rolling deploy — instances writing under the old and the new
//! secret, each knowing both — runs every key of a storm of retries once.

mod common;

use actix_web::{post, web, HttpResponse};
use common::redis::{available, RedisServer};
use idem::{idempotent, Idempotency, RedisStore};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const OLD: &[u8] = b"the-old-app-secret-0123456789abcdef";
const NEW: &[u8] = b"the-new-app-secret-0123456789abcdef";
/// As a secret of these helpers: none (an app without a secret; as a previous one, its records).
const NONE: &[u8] = b"";

/// Runs of the handler body, across every instance.
#[derive(Default)]
struct Runs(AtomicUsize);

#[post("/pay")]
#[idempotent]
async fn pay(req: actix_web::HttpRequest, runs: web::Data<Runs>) -> HttpResponse {
    charge(req, runs).await
}

/// `/pay`, whose duplicates wait for the first request instead of answering 409.
#[post("/pay-wait")]
#[idempotent(on_conflict = "wait")]
async fn pay_wait(req: actix_web::HttpRequest, runs: web::Data<Runs>) -> HttpResponse {
    charge(req, runs).await
}

/// Counts a run, waits `X-Delay-Ms`, answers 201 with the run's number.
async fn charge(req: actix_web::HttpRequest, runs: web::Data<Runs>) -> HttpResponse {
    let n = runs.0.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(common::delay_of(&req)).await;
    HttpResponse::Created().body(format!("charge {n}"))
}

/// Answers 503 on the first run of all (released under `result`), 201 with the run's number
/// after.
#[post("/flaky")]
#[idempotent(guarantee = "result")]
async fn flaky(runs: web::Data<Runs>) -> HttpResponse {
    let n = runs.0.fetch_add(1, Ordering::SeqCst) + 1;
    if n == 1 {
        return HttpResponse::ServiceUnavailable().finish();
    }
    HttpResponse::Created().body(format!("charge {n}"))
}

#[post("/quick")]
#[idempotent(lease = "1s")]
async fn quick(runs: web::Data<Runs>) -> HttpResponse {
    let n = runs.0.fetch_add(1, Ordering::SeqCst) + 1;
    HttpResponse::Created().body(format!("charge {n}"))
}

/// `builder` writing under `secret` and looking under `previous` ([`NONE`] for either: no
/// secret).
fn with_secrets<S>(
    builder: idem::IdempotencyBuilder<S>,
    secret: &[u8],
    previous: &[&[u8]],
) -> idem::IdempotencyBuilder<S> {
    let builder = match secret {
        NONE => builder,
        secret => builder.secret(secret.to_vec()),
    };
    let builder = match previous.contains(&NONE) {
        true => builder.previously_without_secret(),
        false => builder,
    };
    builder.previous_secrets(previous.iter().map(|s| s.to_vec()))
}

/// An `Idempotency` on the Redis at `url`, writing under `secret` and looking under `previous`.
async fn app_on(url: &str, secret: &[u8], previous: &[&[u8]]) -> Idempotency {
    let store = RedisStore::connect(url).await.expect("connect");
    with_secrets(common::builder().store(store), secret, previous).build()
}

/// `app_on`, on a shared memory store.
fn on_memory(store: &idem::MemoryStore, secret: &[u8], previous: &[&[u8]]) -> Idempotency {
    with_secrets(common::builder().store(store.clone()), secret, previous).build()
}

/// The rotated app (the new secret, the old one as previous) on a `FaultyStore` over `redis`,
/// its fleet check already run: its own deletes do not take a fault meant for a look's clean-up.
/// (It reports a step-0 instance beside step 2 when there is one, and that is right.)
async fn rotated_on_faulty(
    redis: &RedisServer,
) -> (idem_runtime::testing::FaultyStore<RedisStore>, Idempotency) {
    let store = idem_runtime::testing::FaultyStore::new(
        RedisStore::connect(&redis.url()).await.expect("connect"),
    );
    let idem = common::builder()
        .store(store.clone())
        .secret(NEW.to_vec())
        .previous_secrets([OLD.to_vec()])
        .build();
    let _ = idem.check_secret().await;
    (store, idem)
}

/// The body of `response`, a replay (201).
async fn replayed(response: reqwest::Response) -> String {
    let (status, headers) = (response.status(), response.headers().clone());
    let body = response.text().await.unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(headers["idempotent-replayed"], "true", "{body}");
    body
}

/// An instance serving `app_on(redis, secret, previous)`.
async fn instance(
    redis: &RedisServer,
    secret: &[u8],
    previous: &[&[u8]],
    runs: &web::Data<Runs>,
) -> std::net::SocketAddr {
    let idem = app_on(&redis.url(), secret, previous).await;
    let runs = runs.clone();
    common::serve(2, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(runs.clone())
            .service(pay)
            .service(pay_wait)
            .service(flaky)
            .service(quick);
    })
    .0
}

async fn send(addr: std::net::SocketAddr, key: &str, delay_ms: u64) -> reqwest::Response {
    send_to(addr, "/pay", key, delay_ms).await
}

async fn send_to(
    addr: std::net::SocketAddr,
    path: &str,
    key: &str,
    delay_ms: u64,
) -> reqwest::Response {
    common::client()
        .post(format!("http://{addr}{path}"))
        .header("Idempotency-Key", key)
        .header("x-delay-ms", delay_ms.to_string())
        .send()
        .await
        .expect("an answer")
}

/// Rotated between a first request and its retry: the retry, on an instance with the new
/// secret and the old one as previous, replays the first response; a duplicate of one still
/// running under the old secret is answered as in progress (or, under `wait`, waits for it and
/// replays it). An instance with only the new
/// secret (what a rotation was before previous secrets) runs the retry again.
#[actix_web::test]
async fn a_retry_across_a_rotation_replays() {
    if !available("a_retry_across_a_rotation_replays") {
        return;
    }
    let redis = RedisServer::start();
    let runs = web::Data::new(Runs::default());
    let before = instance(&redis, OLD, &[], &runs).await;
    let after = instance(&redis, NEW, &[OLD], &runs).await;
    let first = send(before, "k-1", 0).await;
    assert_eq!(first.status(), 201);
    let first = first.text().await.unwrap();
    let retry = send(after, "k-1", 0).await;
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(
        retry.text().await.unwrap(),
        first,
        "the sealed record opens"
    );
    assert_eq!(runs.0.load(Ordering::SeqCst), 1, "0 re-executions");
    // A retry of it again on the new instance still replays (the look is made every time).
    let again = send(after, "k-1", 0).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    // One still running under the old secret: in progress, not a second run.
    let (slow, dup) = tokio::join!(send(before, "k-2", 1500), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        send(after, "k-2", 0).await
    });
    assert_eq!(slow.status(), 201);
    assert_eq!(dup.status(), 409);
    assert_eq!(runs.0.load(Ordering::SeqCst), 2);
    // Under `wait`, that duplicate waits for the run under the old secret and replays it.
    let (slow, dup) = tokio::join!(send_to(before, "/pay-wait", "k-3", 1500), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        send_to(after, "/pay-wait", "k-3", 0).await
    });
    assert_eq!(slow.status(), 201);
    assert_eq!(dup.status(), 201);
    assert_eq!(dup.headers()["idempotent-replayed"], "true");
    let (slow, dup) = (slow.text().await.unwrap(), dup.text().await.unwrap());
    assert_eq!(
        dup, slow,
        "the waiting duplicate replays the first response"
    );
    assert_eq!(runs.0.load(Ordering::SeqCst), 3);
    // Without the previous secret, the same retry runs again: the defect this fixes.
    let unaware = instance(&redis, NEW, &[], &runs).await;
    assert_eq!(send(unaware, "k-1", 0).await.status(), 201);
    assert_eq!(runs.0.load(Ordering::SeqCst), 4, "ran again without it");
}

/// A rolling deploy in step 2 of a rotation: instances writing under the old secret (and
/// looking under the new) beside instances writing under the new (and looking under the old),
/// under a storm of concurrent retries of 10 keys sent to both: each key runs once, and every
/// answer is 201 or 409.
#[actix_web::test]
async fn a_rolling_deploy_across_a_rotation_runs_each_key_once() {
    if !available("a_rolling_deploy_across_a_rotation_runs_each_key_once") {
        return;
    }
    let redis = RedisServer::start();
    let runs = web::Data::new(Runs::default());
    let old = instance(&redis, OLD, &[NEW], &runs).await;
    let new = instance(&redis, NEW, &[OLD], &runs).await;
    storm([old, new], "storm", &runs).await;
}

/// 8 rounds of concurrent retries of 10 keys (`prefix-0` to `prefix-9`) sent to both
/// `instances` (the first round slow): every answer is 201 or 409, and each key ran once.
async fn storm(instances: [std::net::SocketAddr; 2], prefix: &str, runs: &web::Data<Runs>) {
    let before = runs.0.load(Ordering::SeqCst);
    let mut statuses = Vec::new();
    for round in 0..8 {
        let sends = (0..10).flat_map(|k| {
            let key = format!("{prefix}-{k}");
            let delay = if round == 0 { 300 } else { 0 };
            instances.map(move |addr| {
                let key = key.clone();
                async move { send(addr, &key, delay).await.status().as_u16() }
            })
        });
        statuses.extend(futures_util::future::join_all(sends).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        statuses.iter().all(|s| matches!(s, 201 | 409)),
        "only 201 or 409: {statuses:?}"
    );
    // Every key ran by now (each got a 201 at some point): once each.
    let finals: Vec<u16> = futures_util::future::join_all((0..10).map(|k| {
        let key = format!("{prefix}-{k}");
        async move { send(instances[1], &key, 0).await.status().as_u16() }
    }))
    .await;
    assert!(finals.iter().all(|s| *s == 201), "{finals:?}");
    assert_eq!(runs.0.load(Ordering::SeqCst) - before, 10, "each key once");
}

/// Adopting a first secret — an app that ran without one, as the startup warning asks — in the
/// three steps of a rotation, "no secret" being the old one: a retry of a record written
/// without a secret replays on an instance with it, and one written with it replays on an
/// instance still without it (the sealed record opens); a duplicate of one in flight without a
/// secret is answered as in progress; a rolling deploy of steps 1 and 2 runs each key of a
/// storm once. Adopting the secret alone (all there was before) runs the retry again.
#[actix_web::test]
async fn adopting_a_first_secret_runs_no_retry_again() {
    if !available("adopting_a_first_secret_runs_no_retry_again") {
        return;
    }
    let redis = RedisServer::start();
    let runs = web::Data::new(Runs::default());
    let step0 = instance(&redis, NONE, &[], &runs).await;
    let step1 = instance(&redis, NONE, &[NEW], &runs).await;
    let step2 = instance(&redis, NEW, &[NONE], &runs).await;
    // Written without a secret, retried with it.
    let first = send(step0, "a-1", 0).await.text().await.unwrap();
    assert_eq!(replayed(send(step2, "a-1", 0).await).await, first);
    // Written with it, retried without it: the sealed record opens.
    let first = send(step2, "a-2", 0).await.text().await.unwrap();
    assert_eq!(replayed(send(step1, "a-2", 0).await).await, first);
    assert_eq!(runs.0.load(Ordering::SeqCst), 2, "0 re-executions");
    // In flight without a secret: the duplicate with it is answered as in progress.
    let (slow, dup) = tokio::join!(send(step1, "a-3", 1500), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        send(step2, "a-3", 0).await
    });
    assert_eq!((slow.status().as_u16(), dup.status().as_u16()), (201, 409));
    assert_eq!(runs.0.load(Ordering::SeqCst), 3);
    storm([step1, step2], "adopt", &runs).await;
    // Without the look, adopting the secret runs the retry again: the defect this fixes.
    let unaware = instance(&redis, NEW, &[], &runs).await;
    assert_eq!(send(unaware, "a-1", 0).await.status(), 201);
    assert_eq!(runs.0.load(Ordering::SeqCst), 14, "ran again without it");
}

/// While a first secret is adopted, an operation released on an instance with the secret and
/// resumed (under the secret's key) on one still without it is sealed under the secret: its
/// replay opens on either instance (it was kept in clear, and answered 500 record-unreadable
/// on the instance with the secret; found by the simulator).
#[actix_web::test]
async fn an_operation_resumed_while_adopting_a_secret_replays_everywhere() {
    if !available("an_operation_resumed_while_adopting_a_secret_replays_everywhere") {
        return;
    }
    let redis = RedisServer::start();
    let runs = web::Data::new(Runs::default());
    let step1 = instance(&redis, NONE, &[NEW], &runs).await;
    let step2 = instance(&redis, NEW, &[NONE], &runs).await;
    assert_eq!(send_to(step2, "/flaky", "r-1", 0).await.status(), 503);
    let done = send_to(step1, "/flaky", "r-1", 0).await;
    assert_eq!(done.status(), 201);
    let done = done.text().await.unwrap();
    for at in [step2, step1] {
        assert_eq!(replayed(send_to(at, "/flaky", "r-1", 0).await).await, done);
    }
    assert_eq!(runs.0.load(Ordering::SeqCst), 2);
}

/// The fleet check (`Idempotency::check_secret`, also run in the background): the instances of
/// each step of a rotation agree with those of the step before, but a rotation that skipped its
/// first step — one instance writing under the old secret and knowing nothing else, one under
/// the new — is a disagreement, reported by the instance that can see it.
#[actix_web::test]
async fn instances_that_disagree_on_the_secrets_fail_clearly() {
    if !available("instances_that_disagree_on_the_secrets_fail_clearly") {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url();
    let step0 = app_on(&url, OLD, &[]).await;
    let step1 = app_on(&url, OLD, &[NEW]).await;
    assert!(step0.check_secret().await.unwrap());
    assert!(step1.check_secret().await.unwrap(), "steps 0 and 1 agree");
    assert!(step0.check_secret().await.unwrap());
    // Once step 1 is done everywhere (no step-0 instance checked for two periods: a fresh
    // store here), steps 1 and 2 agree.
    let next = RedisServer::start();
    let step1 = app_on(&next.url(), OLD, &[NEW]).await;
    let step2 = app_on(&next.url(), NEW, &[OLD]).await;
    assert!(step1.check_secret().await.unwrap());
    assert!(step2.check_secret().await.unwrap(), "steps 1 and 2 agree");
    assert!(step1.check_secret().await.unwrap());
    // Step 2 beside an instance that never looked under the new secret.
    let skipped = RedisServer::start();
    let unaware = app_on(&skipped.url(), OLD, &[]).await;
    let rotated = app_on(&skipped.url(), NEW, &[OLD]).await;
    assert!(unaware.check_secret().await.unwrap());
    assert!(
        !rotated.check_secret().await.unwrap(),
        "an instance writes under the old secret without looking under the new"
    );
    // Adopting a first secret: the same steps, "no secret" the old one.
    let adopting = RedisServer::start();
    let none = app_on(&adopting.url(), NONE, &[]).await;
    let step1 = app_on(&adopting.url(), NONE, &[NEW]).await;
    assert!(none.check_secret().await.unwrap());
    assert!(
        step1.check_secret().await.unwrap(),
        "adopting: steps 0 and 1 agree"
    );
    let skipped = RedisServer::start();
    let none = app_on(&skipped.url(), NONE, &[]).await;
    let adopted = app_on(&skipped.url(), NEW, &[NONE]).await;
    assert!(none.check_secret().await.unwrap());
    assert!(
        !adopted.check_secret().await.unwrap(),
        "a secret adopted without its first step"
    );
    // And two secrets with nothing in common.
    let strangers = RedisServer::start();
    let a = app_on(&strangers.url(), OLD, &[]).await;
    let b = app_on(&strangers.url(), NEW, &[]).await;
    assert!(a.check_secret().await.unwrap());
    assert!(!b.check_secret().await.unwrap());
}

/// A copy-paste at step 3 — the current secret also listed as previous — is harmless: it is
/// dropped, and new keys run (they would otherwise find their own record and answer 409).
#[actix_web::test]
async fn the_current_secret_among_the_previous_ones_is_ignored() {
    if !available("the_current_secret_among_the_previous_ones_is_ignored") {
        return;
    }
    let redis = RedisServer::start();
    let runs = web::Data::new(Runs::default());
    let app = instance(&redis, NEW, &[NEW, OLD], &runs).await;
    assert_eq!(send(app, "self-1", 0).await.status(), 201);
    let again = send(app, "self-1", 0).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(runs.0.load(Ordering::SeqCst), 1);
}

/// The operator's tools see records written under a previous secret: an erasure of a principal
/// after a rotation removes them too (its retry then runs afresh instead of replaying the old
/// response).
#[actix_web::test]
async fn erasure_reaches_records_of_a_previous_secret() {
    if !available("erasure_reaches_records_of_a_previous_secret") {
        return;
    }
    let redis = RedisServer::start();
    let runs = web::Data::new(Runs::default());
    let before = instance(&redis, OLD, &[], &runs).await;
    assert_eq!(send(before, "gdpr-1", 0).await.status(), 201);
    let rotated = app_on(&redis.url(), NEW, &[OLD]).await;
    let found = rotated.inspect("POST /pay", "", "gdpr-1").await.unwrap();
    assert!(found.is_some(), "inspect finds the old secret's record");
    assert!(rotated.erase_principal("").await.unwrap() >= 1);
    assert!(rotated
        .inspect("POST /pay", "", "gdpr-1")
        .await
        .unwrap()
        .is_none());
}

/// The look's clean-up fails (the store refused to delete the record the retry made under the
/// current secret): that record is left in progress, and once its lease lapsed the next retry
/// takes it over as a second attempt — and still looks under the previous secret, replaying
/// instead of running the operation a second time.
#[actix_web::test]
async fn a_failed_clean_up_after_a_look_never_runs_the_key_again() {
    use idem_runtime::testing::{Fault, Op};
    if !available("a_failed_clean_up_after_a_look_never_runs_the_key_again") {
        return;
    }
    let redis = RedisServer::start();
    let runs = web::Data::new(Runs::default());
    let before = instance(&redis, OLD, &[], &runs).await;
    let post = |addr: std::net::SocketAddr| async move {
        common::client()
            .post(format!("http://{addr}/quick"))
            .header("Idempotency-Key", "q-1")
            .send()
            .await
            .expect("an answer")
    };
    assert_eq!(post(before).await.status(), 201);
    let (store, idem) = rotated_on_faulty(&redis).await;
    let r = runs.clone();
    let after = common::serve(2, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(r.clone())
            .service(quick);
    })
    .0;
    // Every delete fails while the record's lease is held: the first try and its retries.
    store.inject(Op::Purge, Fault::Fail, 100);
    let replay = post(after).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    store.heal();
    let again = post(after).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(runs.0.load(Ordering::SeqCst), 1, "never run again");
}

/// A rotation whose first step is half done when its second starts: one instance still writes
/// under the old secret alone, another under the old one looking under the new, a third under
/// the new one. The instance without the new secret would run again every retry of an operation
/// the third wrote: whichever order they check in, the check reports it (it reported nothing
/// when an instance of step 1 checked last).
#[actix_web::test]
async fn a_half_done_first_step_is_reported_whatever_the_order_of_checks() {
    let orders: [[usize; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for order in orders {
        let store = idem::MemoryStore::default();
        let fleet = [
            on_memory(&store, OLD, &[]),
            on_memory(&store, OLD, &[NEW]),
            on_memory(&store, NEW, &[OLD]),
        ];
        let mut reports = Vec::new();
        for round in 0..2 {
            for &i in &order {
                reports.push((round, i, fleet[i].check_secret().await.unwrap()));
            }
        }
        assert!(
            reports.iter().any(|(round, i, agreed)| *round == 1 && *i == 2 && !agreed),
            "the instance writing under the new secret reports the disagreement: {order:?} {reports:?}"
        );
    }
    // The steps done in order never report one.
    let store = idem::MemoryStore::default();
    let fleet = [
        on_memory(&store, OLD, &[NEW]),
        on_memory(&store, NEW, &[OLD]),
        on_memory(&store, OLD, &[NEW]),
    ];
    for _ in 0..2 {
        for instance in &fleet {
            assert!(instance.check_secret().await.unwrap());
        }
    }
}

/// With an `admission_limit`, a retry answered from a previous secret's record is not a new
/// operation: it spends no admission (a principal's new key after it still runs), and a
/// principal at its limit still gets its replay (not 429).
#[actix_web::test]
async fn admission_counts_only_new_operations_across_a_rotation() {
    let store = idem::MemoryStore::default();
    let runs = web::Data::new(Runs::default());
    let serve_on = |idem: Idempotency| {
        let runs = runs.clone();
        common::serve(1, move |cfg| {
            cfg.app_data(idem.clone())
                .app_data(runs.clone())
                .service(pay);
        })
        .0
    };
    let limited = |secret: &[u8], previous: &[&[u8]]| {
        let builder = common::builder()
            .store(store.clone())
            .admission_limit(1, Duration::from_secs(3600));
        with_secrets(builder, secret, previous).build()
    };
    for key in ["adm-1", "adm-2"] {
        let first = serve_on(limited(OLD, &[]));
        assert_eq!(send(first, key, 0).await.status(), 201);
    }
    let rotated = serve_on(limited(NEW, &[OLD]));
    // A replay spends nothing: the principal's one new key still runs afterwards.
    replayed(send(rotated, "adm-1", 0).await).await;
    assert_eq!(send(rotated, "adm-3", 0).await.status(), 201);
    // At its limit now, its retries still replay.
    assert_eq!(send(rotated, "adm-4", 0).await.status(), 429);
    replayed(send(rotated, "adm-2", 0).await).await;
    assert_eq!(runs.0.load(Ordering::SeqCst), 3);
}
