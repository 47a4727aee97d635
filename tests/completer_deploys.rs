//! The completer across deploys and expiry, in-process on the local PostgreSQL: refusals met
//! while an instance drains or limits (before its handler ran) use up no attempt and never
//! strand an operation; a stored request that no longer reaches an idempotent endpoint is not
//! re-sent again and again; an operation past its record's expiry is not started again.

mod common;

use actix_web::{web, HttpResponse};
use common::gate::{ada, app, completer, crashed, scoped, scoped_builder, stop, Crashed, Kind};
use common::rides::{drop_tables, kinds, post_as, until_receipt, until_receipts, World, SECRET};
use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// During a rolling deploy the completer's requests meet 409 (the client's own retry holds the
/// key), 429 and 503 (draining): none of them uses up an attempt, so an operation with
/// `max_attempts(2)` still finishes after four such answers.
#[actix_web::test]
async fn a_rolling_deploy_does_not_use_up_attempts() {
    let Some(Crashed {
        store,
        world,
        db,
        tables,
        gate,
    }) = crashed("a_rolling_deploy_does_not_use_up_attempts", "k6").await
    else {
        return;
    };
    *gate.refuse_with.lock().unwrap() = vec![503, 429, 409, 503];
    gate.refuse.store(4, Ordering::SeqCst);
    let _c = completer(
        scoped(Kind::Header, &store, true, "idem:", SECRET),
        &world,
        &gate,
        2,
    );
    until_receipt(&db, &tables[0], Duration::from_secs(10)).await;
    assert_eq!(
        gate.refuse.load(Ordering::SeqCst),
        0,
        "all four refusals were met"
    );
    assert_eq!(kinds(&db, &tables[0]).await, (1, 1));
    assert_eq!(world.processor_calls.load(Ordering::SeqCst), 1);
    drop_tables(&db, &tables).await;
}

/// An operation left unfinished past its record's expiry (its row not reaped yet) is over: the
/// key is free for a new operation of its client. The completer does not start it again — a
/// second ride, and a charge under a new downstream key the processor cannot deduplicate.
#[actix_web::test]
async fn the_completer_leaves_an_expired_operation_alone() {
    let Some(Crashed {
        store,
        world,
        db,
        tables,
        gate,
    }) = crashed("the_completer_leaves_an_expired_operation_alone", "x1").await
    else {
        return;
    };
    let idem = |renew| scoped(Kind::Header, &store, renew, "idem:", SECRET);
    let expire = format!(
        "UPDATE {} SET expires_at = now() - interval '1 second', lease_until = now() - interval '1 second'",
        tables[1]
    );
    db.batch_execute(&expire).await.unwrap();
    let c = completer(idem(true), &world, &gate, 5);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop(c).await;
    assert_eq!(kinds(&db, &tables[0]).await, (1, 0), "not run again");
    assert_eq!(world.processor_calls.load(Ordering::SeqCst), 0);
    drop_tables(&db, &tables).await;
}

/// The completer's first request is refused by the admission limit (429; a drain's 503 comes
/// after `begin` took the record over and released it): the attempt is given back, and the
/// operation must still be claimed again once the limit lets it through, not stranded as
/// "released by its client".
#[actix_web::test]
async fn a_refusal_after_the_takeover_does_not_strand_the_operation() {
    let Some(Crashed {
        store,
        world,
        db,
        tables,
        gate,
    }) = crashed(
        "a_refusal_after_the_takeover_does_not_strand_the_operation",
        "k9",
    )
    .await
    else {
        return;
    };
    // One new operation per principal every 2 s: the warm-up below takes ada's, so the
    // completer's first request is refused after its takeover.
    let limited = scoped_builder(Kind::Header, &store, true, "idem:", SECRET)
        .admission_limit(1, Duration::from_secs(2))
        .build();
    let live =
        actix_web::test::init_service(app(limited.clone(), world.clone(), gate.clone())).await;
    let headers = ada("Bearer tok-1");
    let warm = post_as(&live, "/rides", "warm", &headers, json!({ "rider": "ada" })).await;
    assert_eq!(warm.0, 201, "{:?}", warm.2);
    let c = completer(limited, &world, &gate, 5);
    until_receipts(&db, &tables[0], 2, Duration::from_secs(8)).await;
    stop(c).await;
    assert_eq!(kinds(&db, &tables[0]).await, (2, 2));
    assert_eq!(
        world.processor_calls.load(Ordering::SeqCst),
        2,
        "one per operation"
    );
    drop_tables(&db, &tables).await;
}

/// The plain handler a deploy put on the idempotent endpoint's route: its runs, and the status
/// it answers.
struct Plain {
    runs: AtomicU32,
    status: u16,
}

async fn plain_rides(plain: web::Data<Plain>) -> HttpResponse {
    plain.runs.fetch_add(1, Ordering::SeqCst);
    HttpResponse::build(actix_web::http::StatusCode::from_u16(plain.status).unwrap()).finish()
}

/// A deploy moved the route of an operation the completer resumes to a handler idem does not
/// run (not `#[idempotent]`), answering 200 or 202 ("enqueued"): its request is sent once and
/// the operation is then left to its client (marked failed for the completer), not re-sent
/// until `max_attempts` is used up — nor, for the 202, refunded until the record expires.
#[actix_web::test]
async fn a_request_that_no_longer_reaches_idem_is_not_re_sent() {
    for status in [200, 202] {
        let key = format!("moved-{status}");
        let test = "a_request_that_no_longer_reaches_idem_is_not_re_sent";
        let Some(Crashed {
            store,
            world,
            db,
            tables,
            ..
        }) = crashed(test, &key).await
        else {
            return;
        };
        let plain = web::Data::new(Plain {
            runs: AtomicU32::new(0),
            status,
        });
        let idem = scoped(Kind::Header, &store, true, "idem:", SECRET);
        let c = {
            let (idem2, world, plain) = (idem.clone(), world.clone(), plain.clone());
            idem.completer()
                .every(Duration::from_millis(100))
                .backoff(Duration::from_millis(100))
                .max_attempts(5)
                .start(move || {
                    actix_web::App::new()
                        .app_data(idem2)
                        .app_data::<web::Data<World>>(world)
                        .app_data(plain)
                        .route("/rides", web::post().to(plain_rides))
                })
        };
        tokio::time::sleep(Duration::from_millis(2500)).await;
        stop(c).await;
        assert_eq!(plain.runs.load(Ordering::SeqCst), 1, "{status}: sent once");
        let failed: bool = db
            .query_one(
                &format!("SELECT failed_at IS NOT NULL FROM {}_requests", tables[1]),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(failed, "{status}: left to its client");
        drop_tables(&db, &tables).await;
    }
}

/// A middleware in front of the endpoint fails once (500: its identity provider blinked, a
/// failover): that is an attempt like a handler's 5xx, tried again after the backoff — not a
/// sign that the route moved, and not the end of the operation.
#[actix_web::test]
async fn a_middleware_hiccup_is_an_attempt_not_the_end() {
    let Some(Crashed {
        store,
        world,
        db,
        tables,
        gate,
    }) = crashed("a_middleware_hiccup_is_an_attempt_not_the_end", "h1").await
    else {
        return;
    };
    *gate.refuse_with.lock().unwrap() = vec![500];
    gate.refuse.store(1, Ordering::SeqCst);
    let c = completer(
        scoped(Kind::Header, &store, true, "idem:", SECRET),
        &world,
        &gate,
        3,
    );
    until_receipt(&db, &tables[0], Duration::from_secs(6)).await;
    stop(c).await;
    assert_eq!(gate.refuse.load(Ordering::SeqCst), 0, "the 500 was met");
    assert_eq!(kinds(&db, &tables[0]).await, (1, 1));
    assert_eq!(world.processor_calls.load(Ordering::SeqCst), 1);
    drop_tables(&db, &tables).await;
}

/// A *client's* retry of an abandoned operation reaches an instance that started draining: it
/// takes the record over, then is refused (503). The refusal gives the lease back as it found
/// it — lapsed — instead of releasing the record as if the client's run had failed (which
/// leaves a released operation to its client): the completer still finishes it, once.
#[actix_web::test]
async fn a_drained_client_retry_leaves_the_operation_to_the_completer() {
    let Some(Crashed {
        store,
        world,
        db,
        tables,
        gate,
    }) = crashed(
        "a_drained_client_retry_leaves_the_operation_to_the_completer",
        "d1",
    )
    .await
    else {
        return;
    };
    let idem = || scoped(Kind::Header, &store, true, "idem:", SECRET);
    let lapse = format!(
        "UPDATE {} SET lease_until = now() - interval '1 second'",
        tables[1]
    );
    db.batch_execute(&lapse).await.unwrap();
    let draining = idem();
    assert!(draining.drain(Duration::from_millis(10)).await);
    let leaving = actix_web::test::init_service(app(draining, world.clone(), gate.clone())).await;
    let headers = ada("Bearer tok-1");
    let refused = post_as(
        &leaving,
        "/rides",
        "d1",
        &headers,
        json!({ "rider": "ada" }),
    )
    .await;
    assert_eq!(refused.0, 503, "{:?}", refused.2);
    let c = completer(idem(), &world, &gate, 5);
    until_receipt(&db, &tables[0], Duration::from_secs(10)).await;
    stop(c).await;
    assert_eq!(kinds(&db, &tables[0]).await, (1, 1));
    assert_eq!(world.processor_calls.load(Ordering::SeqCst), 1);
    drop_tables(&db, &tables).await;
}

/// An operation its client's own attempt released (a 5xx under `result`) is that client's to
/// retry, not the completer's. A retry of it refused by a draining instance gives the lease
/// back as it found it — released — so the completer still leaves it alone, and the client's
/// next retry finishes it.
#[actix_web::test]
async fn a_drained_retry_of_a_released_operation_stays_its_clients() {
    let test = "a_drained_retry_of_a_released_operation_stays_its_clients";
    let Some((store, world, db, tables)) = common::rides::setup(test).await else {
        return;
    };
    let gate = common::gate::gate();
    let idem = || scoped(Kind::Header, &store, true, "idem:", SECRET);
    let live = actix_web::test::init_service(app(idem(), world.clone(), gate.clone())).await;
    let headers = ada("Bearer tok-1");
    let body = || json!({ "rider": "ada" });
    *world.fail_after.lock().unwrap() = "charge".into();
    let failed = post_as(&live, "/rides", "r1", &headers, body()).await;
    assert_eq!(failed.0, 503, "released under `result`: {:?}", failed.2);
    let draining = idem();
    assert!(draining.drain(Duration::from_millis(10)).await);
    let leaving = actix_web::test::init_service(app(draining, world.clone(), gate.clone())).await;
    let refused = post_as(&leaving, "/rides", "r1", &headers, body()).await;
    assert_eq!(refused.0, 503, "{:?}", refused.2);
    let c = completer(idem(), &world, &gate, 5);
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop(c).await;
    assert_eq!(
        kinds(&db, &tables[0]).await,
        (1, 0),
        "not resumed by the completer"
    );
    let done = post_as(&live, "/rides", "r1", &headers, body()).await;
    assert_eq!(done.0, 201, "{:?}", done.2);
    assert_eq!(kinds(&db, &tables[0]).await, (1, 1));
    assert_eq!(world.processor_calls.load(Ordering::SeqCst), 1);
    drop_tables(&db, &tables).await;
}
