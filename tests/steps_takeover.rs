//! Who may take over an operation with steps, in-process on the local PostgreSQL: a retry with
//! another payload never resumes (and never replays) an unfinished operation's steps; a key
//! reused after its record expired starts a new operation, whatever happened to its first
//! attempt; and a step's failure is never an operation's final answer, whatever the guarantee.

mod common;

use actix_web::{post, web, HttpResponse};
use common::rides::{
    drop_tables, idem, kinds, post, post_as, ride, rides, setup, stored_requests, NewRide, World,
};
use idem::{idempotent, IdempotencyContext};
use idem_runtime::{StepError, Steps};
use serde_json::json;
use std::sync::atomic::Ordering;

/// The app on `store`.
macro_rules! app {
    ($store:expr, $world:expr) => {
        actix_web::test::init_service(
            actix_web::App::new()
                .app_data(idem(&$store, true))
                .app_data($world.clone())
                .service(rides)
                .service(strict_rides)
                .service(steps_first),
        )
        .await
    };
}

/// `Steps` under another name: what the attribute cannot see through at compile time.
type Recovering = Steps;

#[post("/strict_rides")]
#[idempotent(store = "pg", name = "strict_rides", lease = "1s")]
async fn strict_rides(
    body: web::Json<NewRide>,
    steps: Recovering,
    ctx: IdempotencyContext,
    world: web::Data<World>,
) -> Result<HttpResponse, StepError> {
    ride(body, &steps, &ctx, &world).await
}

#[post("/steps_first")]
#[idempotent(store = "pg", name = "steps_first", guarantee = "result", lease = "1s")]
async fn steps_first(
    steps: Steps,
    body: web::Json<NewRide>,
    ctx: IdempotencyContext,
    world: web::Data<World>,
) -> Result<HttpResponse, StepError> {
    ride(body, &steps, &ctx, &world).await
}

/// `Steps` is extracted before the body: a body the extractor refuses (400) ran nothing, so it
/// leaves no stored request behind, and the corrected body (another fingerprint) is the
/// operation's first real attempt, not a key reused for another payload (422).
#[actix_web::test]
async fn a_refused_body_after_steps_leaves_the_key_free() {
    let Some((store, world, db, tables)) =
        setup("a_refused_body_after_steps_leaves_the_key_free").await
    else {
        return;
    };
    let app = app!(store, world);
    let req = actix_web::test::TestRequest::post()
        .uri("/steps_first")
        .insert_header(("Idempotency-Key", "k8"))
        .insert_header(("content-type", "application/json"))
        .set_payload("{\"rider\": 7}")
        .to_request();
    let refused = actix_web::test::call_service(&app, req).await;
    assert_eq!(refused.status().as_u16(), 400);
    assert_eq!(stored_requests(&db, &tables[1]).await, 0, "nothing kept");
    let (status, replayed, body) = post(&app, "/steps_first", "k8").await;
    assert_eq!((status, replayed), (201, false), "{body}");
    assert_eq!(kinds(&db, &tables[0]).await, (1, 1));
    drop_tables(&db, &tables).await;
}

/// `Steps` stored its request, then could not read the recorded steps (the store failed; here
/// a column renamed under it): the attempt ran nothing, so its stored request goes too.
#[actix_web::test]
async fn a_failed_start_leaves_no_stored_request() {
    let Some((store, world, db, tables)) = setup("a_failed_start_leaves_no_stored_request").await
    else {
        return;
    };
    let app = app!(store, world);
    let steps = format!("{}_steps", tables[1]);
    let rename = |from: &str, to: &str| format!("ALTER TABLE {steps} RENAME COLUMN {from} TO {to}");
    db.batch_execute(&rename("result", "result_away"))
        .await
        .unwrap();
    let (status, _, body) = post(&app, "/rides", "k11").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(stored_requests(&db, &tables[1]).await, 0, "nothing kept");
    db.batch_execute(&rename("result_away", "result"))
        .await
        .unwrap();
    let (status, _, body) = post_as(&app, "/rides", "k11", &[], json!({ "rider": "bob" })).await;
    assert_eq!(status, 201, "{body}");
    drop_tables(&db, &tables).await;
}

/// Under `result`, a first attempt charged and then answered 5xx (released). A retry with a
/// corrected body is a different request under a used key: 422, not the old body's charge.
/// The original body then resumes the operation.
#[actix_web::test]
async fn a_changed_payload_does_not_resume_the_steps() {
    let Some((store, world, db, tables)) =
        setup("a_changed_payload_does_not_resume_the_steps").await
    else {
        return;
    };
    let app = app!(store, world);
    *world.fail_after.lock().unwrap() = "charge".into();
    assert_eq!(post(&app, "/rides", "k2").await.0, 503);
    let (status, replayed, body) =
        post_as(&app, "/rides", "k2", &[], json!({ "rider": "bob" })).await;
    assert_eq!((status, replayed), (422, false), "{body}");
    assert_eq!(body["type"], "urn:idem:problem:key-reused");
    assert_eq!(world.processor_calls.load(Ordering::SeqCst), 1);
    let (status, _, body) = post(&app, "/rides", "k2").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["rider"], "ada");
    assert_eq!(world.processor_calls.load(Ordering::SeqCst), 1);
    assert_eq!(kinds(&db, &tables[0]).await, (1, 1));
    drop_tables(&db, &tables).await;
}

/// A key reused after its record expired (not reaped yet) is a new operation, even when the new
/// operation's first attempt was released before `Steps` ran (an extractor's 400): carol gets
/// her own ride and charge, not ada's.
#[actix_web::test]
async fn a_key_reused_after_expiry_starts_afresh() {
    let Some((store, world, db, tables)) = setup("a_key_reused_after_expiry_starts_afresh").await
    else {
        return;
    };
    let app = app!(store, world);
    let (status, _, first) = post(&app, "/rides", "k3").await;
    assert_eq!(status, 201, "{first}");
    let expire = format!(
        "UPDATE {} SET expires_at = now() - interval '1 second'",
        tables[1]
    );
    db.batch_execute(&expire).await.unwrap();
    // The new operation's first attempt: its body is not JSON, refused by the extractor.
    let req = actix_web::test::TestRequest::post()
        .uri("/rides")
        .insert_header(("Idempotency-Key", "k3"))
        .insert_header(("content-type", "application/json"))
        .set_payload("{not json")
        .to_request();
    let refused = actix_web::test::call_service(&app, req).await;
    assert_eq!(refused.status().as_u16(), 400);
    let (status, replayed, body) =
        post_as(&app, "/rides", "k3", &[], json!({ "rider": "carol" })).await;
    assert_eq!((status, replayed), (201, false), "{body}");
    assert_eq!(body["rider"], "carol");
    assert_ne!(body["ride"], first["ride"], "a ride of carol's own");
    assert_eq!(body["charge"], format!("ch_{}_carol", body["ride"]));
    assert_eq!(world.processor_calls.load(Ordering::SeqCst), 2);
    assert_eq!(world.distinct_downstream_keys(), 2);
    assert_eq!(kinds(&db, &tables[0]).await, (2, 2));
    // And directly, without a refused attempt in between.
    db.batch_execute(&expire).await.unwrap();
    let (status, _, again) = post_as(&app, "/rides", "k3", &[], json!({ "rider": "dan" })).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["charge"], format!("ch_{}_dan", again["ride"]));
    assert_eq!(kinds(&db, &tables[0]).await, (3, 3));
    drop_tables(&db, &tables).await;
}

/// A step's failure (the processor down) under `strict` — reached through a type alias the
/// attribute cannot see — is not kept as the operation's final answer while the operation is
/// half done: the retry resumes it.
#[actix_web::test]
async fn a_failed_step_is_never_the_final_answer() {
    let Some((store, world, db, tables)) = setup("a_failed_step_is_never_the_final_answer").await
    else {
        return;
    };
    let app = app!(store, world);
    world.charge_failures.store(1, Ordering::SeqCst);
    let (status, _, body) = post(&app, "/strict_rides", "k7").await;
    assert!(status >= 500, "{status} {body}");
    let (status, replayed, body) = post(&app, "/strict_rides", "k7").await;
    assert_eq!((status, replayed), (201, false), "{body}");
    assert_eq!(kinds(&db, &tables[0]).await, (1, 1));
    assert_eq!(
        world.processor_calls.load(Ordering::SeqCst),
        2,
        "refused, then charged"
    );
    let (status, replayed, again) = post(&app, "/strict_rides", "k7").await;
    assert_eq!((status, replayed), (201, true));
    assert_eq!(body, again);
    drop_tables(&db, &tables).await;
}
