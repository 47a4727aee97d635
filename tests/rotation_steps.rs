//! A multi-step operation across a rotation of the app secret, in-process on the local
//! PostgreSQL: an operation started under the old secret is resumed — by its client's retry or
//! by the completer — on instances with the new secret and the old one as previous, under its
//! recorded key and with the downstream keys it started with: one ride, one charge key.

mod common;

use common::gate::{ada, app, completer, crashed, gate, scoped_builder, stop, Crashed, Kind};
use common::rides::{drop_tables, kinds, post_as, setup, until_receipt, SECRET};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;

const NEW: &str = "the-new-steps-secret-0123456789abcdef";

/// The app after the rotation: the new secret, the old one as previous.
fn rotated(store: &idem_runtime::PostgresStore) -> idem::Idempotency {
    scoped_builder(Kind::Header, store, true, "idem:", NEW)
        .previous_secrets([SECRET.as_bytes().to_vec()])
        .build()
}

/// One ride, one receipt and one charge under one downstream key; then the test's tables go.
async fn charged_once(
    world: &actix_web::web::Data<common::rides::World>,
    db: &idem_runtime::tokio_postgres::Client,
    tables: &[String],
) {
    assert_eq!(
        world.processor_calls.load(Ordering::SeqCst),
        1,
        "charged once"
    );
    assert_eq!(world.distinct_downstream_keys(), 1, "one downstream key");
    assert_eq!(kinds(db, &tables[0]).await, (1, 1), "one ride, one receipt");
    drop_tables(db, tables).await;
}

/// The app after the rotation on `faulty` (a `FaultyStore` over the PostgreSQL store), its
/// fleet check already done: its own deletes do not take a fault meant for a look.
async fn rotated_on(
    faulty: &idem_runtime::testing::FaultyStore<idem_runtime::PostgresStore>,
) -> idem::Idempotency {
    let idem = idem::Idempotency::builder()
        .scope_by_header(actix_web::http::header::HeaderName::from_static(
            "x-account-id",
        ))
        .secret(NEW.to_owned())
        .previous_secrets([SECRET.as_bytes().to_vec()])
        .key_prefix("idem:")
        .store_timeout(Duration::from_millis(300))
        .renew_leases(true)
        .named_store("pg", faulty.clone())
        .build();
    let _ = idem.check_secret().await;
    idem
}

/// The first attempt, under the old secret, charged at a processor that refused (the call
/// happened, under its downstream key), and answered 5xx; the client's retry reaches an
/// instance with the rotated secret: the operation resumes — no second ride — and the charge is
/// retried under the same downstream key.
#[actix_web::test]
async fn a_client_retry_resumes_its_operation_across_a_rotation() {
    let test = "a_client_retry_resumes_its_operation_across_a_rotation";
    let Some((store, world, db, tables)) = setup(test).await else {
        return;
    };
    let gate = gate();
    let headers = ada("Bearer tok-1");
    let before = scoped_builder(Kind::Header, &store, true, "idem:", SECRET).build();
    let before = actix_web::test::init_service(app(before, world.clone(), gate.clone())).await;
    world.charge_failures.store(1, Ordering::SeqCst);
    let failed = post_as(
        &before,
        "/rides",
        "rot-1",
        &headers,
        json!({ "rider": "ada" }),
    )
    .await;
    assert!(failed.0 >= 500, "{:?}", failed);
    let after =
        actix_web::test::init_service(app(rotated(&store), world.clone(), gate.clone())).await;
    let done = post_as(
        &after,
        "/rides",
        "rot-1",
        &headers,
        json!({ "rider": "ada" }),
    )
    .await;
    assert_eq!(done.0, 201, "{:?}", done.2);
    assert_eq!(
        kinds(&db, &tables[0]).await,
        (1, 1),
        "one ride, one receipt"
    );
    assert_eq!(
        world.processor_calls.load(Ordering::SeqCst),
        2,
        "refused, then charged"
    );
    assert_eq!(world.distinct_downstream_keys(), 1, "one downstream key");
    drop_tables(&db, &tables).await;
}

/// An operation abandoned after its first step under the old secret (its instance died) is
/// finished by the completer of an instance with the rotated secret, once, and its client's
/// retry there replays it.
#[actix_web::test]
async fn the_completer_finishes_an_operation_across_a_rotation() {
    let Some(Crashed {
        store,
        world,
        db,
        tables,
        gate,
    }) = crashed(
        "the_completer_finishes_an_operation_across_a_rotation",
        "rot-2",
    )
    .await
    else {
        return;
    };
    let c = completer(rotated(&store), &world, &gate, 3);
    until_receipt(&db, &tables[0], Duration::from_secs(10)).await;
    stop(c).await;
    assert_eq!(kinds(&db, &tables[0]).await, (1, 1));
    assert_eq!(world.processor_calls.load(Ordering::SeqCst), 1);
    let after =
        actix_web::test::init_service(app(rotated(&store), world.clone(), gate.clone())).await;
    let replay = post_as(
        &after,
        "/rides",
        "rot-2",
        &ada("Bearer tok-1"),
        json!({ "rider": "ada" }),
    )
    .await;
    assert_eq!((replay.0, replay.1), (201, true), "{:?}", replay.2);
    assert_eq!(world.distinct_downstream_keys(), 1);
    drop_tables(&db, &tables).await;
}

/// A retry that takes over its released operation under the current secret, and finds the old
/// secret's key held by another request (an instance hanging on it), gives its record back as
/// it found it — 409 — instead of deleting it: the charge it recorded stays recorded (deleted,
/// the next attempt would charge again under a new downstream key).
#[actix_web::test]
async fn a_taken_over_operation_is_not_given_up_for_an_earlier_key() {
    let test = "a_taken_over_operation_is_not_given_up_for_an_earlier_key";
    let Some((store, world, db, tables)) = setup(test).await else {
        return;
    };
    let gate = gate();
    let headers = ada("Bearer tok-1");
    let body = || json!({ "rider": "ada" });
    let after =
        actix_web::test::init_service(app(rotated(&store), world.clone(), gate.clone())).await;
    // Charged, then 5xx under `result`: released with its charge recorded, under the new key.
    *world.fail_after.lock().unwrap() = "charge".into();
    assert_eq!(
        post_as(&after, "/rides", "t-1", &headers, body()).await.0,
        503
    );
    let steps = format!("{}_steps", tables[1]);
    let recorded = common::pg::count(&db, &steps).await;
    assert!(recorded >= 2, "the ride and the charge are recorded");
    // Another request holds the old secret's key (it hangs after its ride).
    let old = scoped_builder(Kind::Header, &store, true, "idem:", SECRET).build();
    let old = actix_web::test::init_service(app(old, world.clone(), gate.clone())).await;
    *world.stall_after.lock().unwrap() = "create_ride".into();
    let hanging = post_as(&old, "/rides", "t-1", &headers, body());
    let retry = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        post_as(&after, "/rides", "t-1", &headers, body()).await
    };
    let retry = tokio::select! {
        _ = hanging => panic!("the old key's request hangs"),
        r = retry => r,
    };
    assert_eq!(retry.0, 409, "{:?}", retry.2);
    assert!(
        common::pg::count(&db, &steps).await >= recorded,
        "the recorded steps stay"
    );
    assert_eq!(world.processor_calls.load(Ordering::SeqCst), 1);
    drop_tables(&db, &tables).await;
}

/// A look under the old secret that finds nothing, and whose delete of the record it made
/// is lost, leaves an empty record under the old key while the operation runs — and records its
/// charge — under the new one. Once that empty record's lease lapses, the operation's retry must
/// resume where its steps are (the new key), never the empty old record: resumed there, the
/// charge would run again under the old secret's downstream key — a second charge. The empty
/// record is tentative (gone once lapsed); on a store without tentative records, the retry
/// finds where the steps are.
#[actix_web::test]
async fn a_lost_delete_under_the_old_secret_does_not_charge_twice() {
    lost_delete_under_the_old_secret(true).await;
}

/// [`a_lost_delete_under_the_old_secret_does_not_charge_twice`] on a store on the `Store`
/// defaults (no tentative records).
#[actix_web::test]
async fn a_lost_delete_without_tentative_records_does_not_charge_twice() {
    lost_delete_under_the_old_secret(false).await;
}

/// The other way round: the operation charged under the old secret (released), its retry on a
/// rotated instance resumes it there and cannot delete the record it made under the new key.
/// Once that record lapsed, the next retry resumes under the old one, where the charge is
/// recorded — the current key's record is the empty one (tentative, or told apart by where the
/// steps are on a store without tentative records).
#[actix_web::test]
async fn a_lost_give_up_under_the_new_secret_does_not_charge_twice() {
    lost_give_up_under_the_new_secret(true).await;
}

/// [`a_lost_give_up_under_the_new_secret_does_not_charge_twice`] on a store on the `Store`
/// defaults (no tentative records).
#[actix_web::test]
async fn a_lost_give_up_without_tentative_records_does_not_charge_twice() {
    lost_give_up_under_the_new_secret(false).await;
}

/// The rotated app's store: a `FaultyStore` over `store`, with or without tentative records.
fn faulty_over(
    store: &idem_runtime::PostgresStore,
    tentative: bool,
) -> idem_runtime::testing::FaultyStore<idem_runtime::PostgresStore> {
    let faulty = idem_runtime::testing::FaultyStore::new(store.clone());
    if !tentative {
        faulty.without_tentative_records();
    }
    faulty
}

async fn lost_delete_under_the_old_secret(tentative: bool) {
    use idem_runtime::testing::{Fault, Op};
    let test = if tentative {
        "a_lost_delete_under_the_old_secret_does_not_charge_twice"
    } else {
        "a_lost_delete_without_tentative_records_does_not_charge_twice"
    };
    let Some((store, world, db, tables)) = setup(test).await else {
        return;
    };
    let gate = gate();
    let headers = ada("Bearer tok-1");
    let body = || json!({ "rider": "ada" });
    let faulty = faulty_over(&store, tentative);
    let idem = rotated_on(&faulty).await;
    let after = actix_web::test::init_service(app(idem, world.clone(), gate.clone())).await;
    // The look's delete of the old key's record fails; the ride and the charge are recorded
    // under the new key, then the attempt answers 5xx (released).
    // Every delete fails while the record's lease is held: the first try and its retries.
    faulty.inject(Op::Purge, Fault::Fail, 100);
    *world.fail_after.lock().unwrap() = "charge".into();
    let first = post_as(&after, "/rides", "lost-1", &headers, body()).await;
    assert_eq!(first.0, 503, "{:?}", first.2);
    assert!(faulty.faults_fired() >= 1, "the look's delete failed");
    assert_eq!(world.processor_calls.load(Ordering::SeqCst), 1);
    // The empty record under the old key lapses (the endpoint's lease is 1 s).
    tokio::time::sleep(Duration::from_millis(1300)).await;
    faulty.heal();
    let retry = post_as(&after, "/rides", "lost-1", &headers, body()).await;
    assert_eq!(retry.0, 201, "{:?}", retry.2);
    charged_once(&world, &db, &tables).await;
}

async fn lost_give_up_under_the_new_secret(tentative: bool) {
    use idem_runtime::testing::{Fault, Op};
    let test = if tentative {
        "a_lost_give_up_under_the_new_secret_does_not_charge_twice"
    } else {
        "a_lost_give_up_without_tentative_records_does_not_charge_twice"
    };
    let Some((store, world, db, tables)) = setup(test).await else {
        return;
    };
    let gate = gate();
    let headers = ada("Bearer tok-1");
    let body = || json!({ "rider": "ada" });
    let before = scoped_builder(Kind::Header, &store, true, "idem:", SECRET).build();
    let before = actix_web::test::init_service(app(before, world.clone(), gate.clone())).await;
    *world.fail_after.lock().unwrap() = "charge".into();
    assert_eq!(
        post_as(&before, "/rides", "lost-2", &headers, body())
            .await
            .0,
        503
    );
    let faulty = faulty_over(&store, tentative);
    let after = rotated_on(&faulty).await;
    let after = actix_web::test::init_service(app(after, world.clone(), gate.clone())).await;
    // Resumed under the old key, released again; the new key's record is not deleted.
    // Every delete fails while the record's lease is held: the first try and its retries.
    faulty.inject(Op::Purge, Fault::Fail, 100);
    *world.fail_after.lock().unwrap() = "charge".into();
    let resumed = post_as(&after, "/rides", "lost-2", &headers, body()).await;
    assert_eq!(resumed.0, 503, "{:?}", resumed.2);
    assert!(faulty.faults_fired() >= 1, "the give-up's delete failed");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    faulty.heal();
    let retry = post_as(&after, "/rides", "lost-2", &headers, body()).await;
    assert_eq!(retry.0, 201, "{:?}", retry.2);
    charged_once(&world, &db, &tables).await;
}
