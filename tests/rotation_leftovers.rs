//! Records a rotation of the app secret leaves behind when a delete is lost, in a rolling
//! deploy: instances of step 1 (writing under the old secret, looking under the new) beside
//! instances of step 2 (writing under the new, looking under the old), on one private Redis.
//! A request holds its current key while it looks under the other secret, and gives one of
//! the two up; when the store refuses that delete, an empty record stays under one key while
//! the operation lives under the other. A plain handler records nothing, so only the store can
//! tell the two apart: its retry on either step's instance must run where the operation ran,
//! with the downstream key the processor already saw.

mod common;

use actix_web::{post, web, HttpResponse};
use common::redis::{available, RedisServer};
use idem::{idempotent, Idempotency, RedisStore};
use idem_runtime::testing::{Fault, FaultyStore, Op};
use std::sync::Mutex;
use std::time::Duration;

const OLD: &[u8] = b"the-old-app-secret-0123456789abcdef";
const NEW: &[u8] = b"the-new-app-secret-0123456789abcdef";

/// The downstream keys each run would send a processor, across every instance.
type Sent = web::Data<Mutex<Vec<String>>>;

/// Answers 503 on its first run (released under `result`), 201 after; each run records the
/// downstream key it would send a processor, then waits `X-Delay-Ms`.
#[post("/downstream")]
#[idempotent(lease = "1s", guarantee = "result")]
async fn downstream(
    req: actix_web::HttpRequest,
    ctx: idem::IdempotencyContext,
    sent: Sent,
) -> HttpResponse {
    let first = {
        let mut sent = sent.lock().unwrap();
        sent.push(ctx.downstream_key("charge"));
        sent.len() == 1
    };
    tokio::time::sleep(common::delay_of(&req)).await;
    if first {
        return HttpResponse::ServiceUnavailable().finish();
    }
    HttpResponse::Created().finish()
}

/// An instance writing under `secret` and looking under `previous`, on a `FaultyStore` over
/// `redis` (its fleet check already run, so that its deletes do not meet a fault scripted for
/// a request).
async fn instance(
    redis: &RedisServer,
    secret: &[u8],
    previous: &[&[u8]],
    sent: &Sent,
) -> (FaultyStore<RedisStore>, std::net::SocketAddr) {
    let store = FaultyStore::new(RedisStore::connect(&redis.url()).await.expect("connect"));
    let idem: Idempotency = common::builder()
        .store(store.clone())
        .secret(secret.to_vec())
        .previous_secrets(previous.iter().map(|s| s.to_vec()))
        .build();
    assert!(idem.check_secret().await.expect("a fleet check"));
    let sent = sent.clone();
    let addr = common::serve(2, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(sent.clone())
            .service(downstream);
    })
    .0;
    (store, addr)
}

async fn post(addr: std::net::SocketAddr, delay_ms: u64) -> reqwest::Response {
    common::client()
        .post(format!("http://{addr}/downstream"))
        .header("Idempotency-Key", "d-1")
        .header("x-delay-ms", delay_ms.to_string())
        .send()
        .await
        .expect("an answer")
}

/// The operation's runs each sent one downstream key: all the same.
fn one_downstream_key(sent: &Sent, runs: usize) {
    let sent = sent.lock().unwrap().clone();
    assert_eq!(sent.len(), runs, "{sent:?}");
    assert!(
        sent.iter().all(|k| *k == sent[0]),
        "one downstream key for one operation: {sent:?}"
    );
}

/// A step-1 instance runs the operation under the old key (released: 503) after its look made
/// a record under the new key and could not delete it. Its retry reaches a step-2 instance,
/// whose current key is that empty record: it runs where the operation ran, under the old key.
#[actix_web::test]
async fn a_look_left_under_the_other_steps_key_keeps_the_downstream_key() {
    if !available("a_look_left_under_the_other_steps_key_keeps_the_downstream_key") {
        return;
    }
    let redis = RedisServer::start();
    let sent = Sent::default();
    let (step1, at_step1) = instance(&redis, OLD, &[NEW], &sent).await;
    let (_, at_step2) = instance(&redis, NEW, &[OLD], &sent).await;
    // Every delete fails while the look's record is held: the first try and its retries.
    step1.inject(Op::Purge, Fault::Fail, 100);
    assert_eq!(post(at_step1, 0).await.status(), 503);
    assert!(step1.faults_fired() >= 1, "the look's delete failed");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    step1.heal();
    assert_eq!(post(at_step2, 0).await.status(), 201);
    one_downstream_key(&sent, 2);
}

/// A duplicate reaches a step-2 instance while the operation runs under the old key on a
/// step-1 instance: 409, and the step-2 instance gives its new key up — a delete the store
/// refuses. The operation answers 503 (released). The retry, on the step-2 instance once that
/// empty record's lease lapsed, runs where the operation ran, under the old key.
#[actix_web::test]
async fn a_give_up_left_under_the_current_key_keeps_the_downstream_key() {
    if !available("a_give_up_left_under_the_current_key_keeps_the_downstream_key") {
        return;
    }
    let redis = RedisServer::start();
    let sent = Sent::default();
    let (_, at_step1) = instance(&redis, OLD, &[NEW], &sent).await;
    let (step2, at_step2) = instance(&redis, NEW, &[OLD], &sent).await;
    let (first, duplicate) = tokio::join!(post(at_step1, 800), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        step2.inject(Op::Purge, Fault::Fail, 100);
        post(at_step2, 0).await
    });
    assert_eq!(first.status(), 503);
    assert_eq!(duplicate.status(), 409);
    assert!(step2.faults_fired() >= 1, "the give-up's delete failed");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    step2.heal();
    assert_eq!(post(at_step2, 0).await.status(), 201);
    one_downstream_key(&sent, 2);
}

/// One step, no mixed fleet: the look under the previous secret finds nothing, and its delete
/// of the record it made there fails: the operation runs under the current secret (and answers
/// 5xx, released), while an empty record stays under the old key. Once that record's lease
/// lapsed, the retry runs where the operation ran — under the current key, with the downstream
/// key it sent the first time — not in the empty record under the old key, whose downstream key
/// the processor never saw.
#[actix_web::test]
async fn a_lost_delete_under_the_old_secret_keeps_the_downstream_key() {
    if !available("a_lost_delete_under_the_old_secret_keeps_the_downstream_key") {
        return;
    }
    let redis = RedisServer::start();
    let sent = Sent::default();
    let (store, addr) = instance(&redis, NEW, &[OLD], &sent).await;
    // Every delete fails while the record's lease is held: the first try and its retries.
    store.inject(Op::Purge, Fault::Fail, 100);
    assert_eq!(post(addr, 0).await.status(), 503);
    assert!(store.faults_fired() >= 1, "the look's delete failed");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    store.heal();
    assert_eq!(post(addr, 0).await.status(), 201);
    one_downstream_key(&sent, 2);
}

/// Runs of `slow`, across every instance.
#[derive(Default)]
struct Runs(std::sync::atomic::AtomicUsize);

/// Counts a run, works 1.5 s (renewing its 1 s lease), answers 201.
#[post("/slow")]
#[idempotent(lease = "1s")]
async fn slow(runs: web::Data<Runs>) -> HttpResponse {
    runs.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    HttpResponse::Created().finish()
}

/// The `confirm` that makes a request's key its operation's is slow, past the request's
/// lease and the store deadline: the request gives up (503), and neither runs nor deletes the
/// key — by then another request holds it, and the give-up's delete is fenced. (Found by
/// review: the unfenced delete, sent after the store deadline of 2 s, removed the record of
/// the request that had taken the lapsed key over and was running, and a third request ran
/// the operation again; it still does with an unfenced delete.)
#[actix_web::test]
async fn a_slow_confirm_neither_runs_nor_deletes_another_holders_key() {
    if !available("a_slow_confirm_neither_runs_nor_deletes_another_holders_key") {
        return;
    }
    let redis = RedisServer::start();
    let store = FaultyStore::new(RedisStore::connect(&redis.url()).await.expect("connect"));
    let idem: Idempotency = common::builder()
        .store(store.clone())
        .store_timeout(Duration::from_secs(2))
        .secret(NEW.to_vec())
        .previous_secrets([OLD.to_vec()])
        .build();
    assert!(idem.check_secret().await.expect("a fleet check"));
    let runs = web::Data::new(Runs::default());
    let r = runs.clone();
    let addr = common::serve(2, move |cfg| {
        cfg.app_data(idem.clone()).app_data(r.clone()).service(slow);
    })
    .0;
    let send = |after_ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        common::client()
            .post(format!("http://{addr}/slow"))
            .header("Idempotency-Key", "c-1")
            .send()
            .await
            .expect("an answer")
            .status()
            .as_u16()
    };
    store.inject(Op::Confirm, Fault::Delay(Duration::from_secs(4)), 1);
    // The second after the first one's lease lapsed; the third once the first one's store
    // deadline ended, while the second still runs.
    let answers = tokio::join!(send(0), send(1100), send(2300));
    assert_eq!(answers, (503, 201, 409));
    assert_eq!(runs.0.load(std::sync::atomic::Ordering::SeqCst), 1);
}
