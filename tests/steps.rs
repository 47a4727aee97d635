//! Multi-step operations in-process, on the local PostgreSQL: a retry after a failed attempt
//! resumes at the first unfinished step (finished steps return their recorded result), a
//! foreign step gets the same downstream key on every attempt, changed step names are an
//! error, and `Steps` off PostgreSQL says why. The `kill -9` cases are in
//! `recovery_processes.rs`.

mod common;

use actix_web::{post, web, HttpResponse};
use common::rides::{
    die_after_first_step, drop_tables, idem, kinds, post, rides, setup, until_receipt, World,
};
use idem::idempotent;
// PostgreSQL items come from the runtime: `idem` re-exports them with its own `postgres`
// feature, which a package cannot turn on for its own tests.
use idem_runtime::{StepError, Steps};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[post("/memory_steps")]
#[idempotent(name = "memory_steps", guarantee = "result")]
async fn memory_steps(steps: Steps) -> Result<HttpResponse, StepError> {
    steps
        .foreign("noop", async |_| Ok::<_, std::io::Error>(1))
        .await?;
    Ok(HttpResponse::Ok().finish())
}

/// The app on `store`.
macro_rules! app {
    ($store:expr, $world:expr) => {
        app!($store, $world, true)
    };
    ($store:expr, $world:expr, $renew:expr) => {
        actix_web::test::init_service(
            actix_web::App::new()
                .app_data(idem(&$store, $renew))
                .app_data($world.clone())
                .service(rides),
        )
        .await
    };
}

#[actix_web::test]
async fn a_retry_resumes_at_the_first_unfinished_step() {
    let Some((store, world, db, tables)) =
        setup("a_retry_resumes_at_the_first_unfinished_step").await
    else {
        return;
    };
    let app = app!(store, world);
    for (i, boundary) in ["create_ride", "charge"].into_iter().enumerate() {
        let key = format!("resume-{i}");
        *world.fail_after.lock().unwrap() = boundary.into();
        let calls = world.processor_calls.load(Ordering::SeqCst);
        let (status, _, _) = post(&app, "/rides", &key).await;
        assert_eq!(status, 503, "the first attempt fails after {boundary}");
        // The retry runs the handler again; the finished steps return their results.
        let (status, replayed, body) = post(&app, "/rides", &key).await;
        assert_eq!((status, replayed), (201, false), "{boundary}: {body}");
        let (again, replayed, body2) = post(&app, "/rides", &key).await;
        assert_eq!((again, replayed), (201, true));
        assert_eq!(body, body2);
        assert_eq!(
            world.processor_calls.load(Ordering::SeqCst) - calls,
            1,
            "{boundary}: one charge"
        );
        assert_eq!(
            kinds(&db, &tables[0]).await,
            (i as i64 + 1, i as i64 + 1),
            "{boundary}: one ride and one receipt per operation"
        );
    }
    // A foreign step's downstream key is the same on every attempt, and differs per operation.
    let keys = world.downstream_keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_ne!(keys[0], keys[1]);
    assert_eq!(keys[0].len(), 32);
    assert_eq!(
        *world.context_keys.lock().unwrap(),
        keys,
        "IdempotencyContext agrees"
    );
    drop_tables(&db, &tables).await;
}

#[actix_web::test]
async fn a_renamed_step_is_an_error_not_a_skip() {
    let Some((store, world, db, tables)) = setup("a_renamed_step_is_an_error_not_a_skip").await
    else {
        return;
    };
    let app = app!(store, world);
    *world.fail_after.lock().unwrap() = "charge".into();
    assert_eq!(post(&app, "/rides", "renamed").await.0, 503);
    world.renamed.store(true, Ordering::SeqCst);
    let (status, _, body) = post(&app, "/rides", "renamed").await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["type"], "urn:idem:problem:steps-changed");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("`charge_card`") && detail.contains("`charge`"),
        "{detail}"
    );
    // Not kept: once the deploy is fixed forward, the retry finishes the operation.
    world.renamed.store(false, Ordering::SeqCst);
    let (status, replayed, _) = post(&app, "/rides", "renamed").await;
    assert_eq!((status, replayed), (201, false));
    assert_eq!(world.processor_calls.load(Ordering::SeqCst), 1);
    assert_eq!(kinds(&db, &tables[0]).await, (1, 1));
    drop_tables(&db, &tables).await;
}

#[actix_web::test]
async fn steps_off_postgres_say_why() {
    let app = actix_web::test::init_service(
        actix_web::App::new()
            .app_data(common::builder().build())
            .service(memory_steps),
    )
    .await;
    let (status, _, body) = post(&app, "/memory_steps", "m1").await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["type"], "urn:idem:problem:internal");
    assert!(body["detail"]
        .as_str()
        .is_some_and(|d| d.contains("PostgreSQL")));
}

/// The completer's app: the same routes, data and `Idempotency`, built on its own thread.
fn completer(
    store: &idem_runtime::PostgresStore,
    world: &web::Data<World>,
    max_attempts: u32,
) -> idem_runtime::Completer {
    let idem = idem(store, true);
    let world = world.clone();
    idem.completer()
        .every(Duration::from_millis(100))
        .backoff(Duration::from_millis(100))
        .max_attempts(max_attempts)
        .start({
            let idem = idem.clone();
            move || {
                actix_web::App::new()
                    .app_data(idem)
                    .app_data(world)
                    .service(rides)
            }
        })
}

#[actix_web::test]
async fn the_completer_finishes_an_abandoned_operation_without_its_client() {
    let Some((store, world, db, tables)) =
        setup("the_completer_finishes_an_abandoned_operation_without_its_client").await
    else {
        return;
    };
    // An instance that dies after the first step: its lease (1 s) is not renewed.
    let dying = app!(store, world, false);
    die_after_first_step(&world, post(&dying, "/rides", "lost")).await;
    let _completer = completer(&store, &world, 5);
    // Bound: the lease (1 s) + the completer's period (100 ms) + the handler.
    let took = until_receipt(&db, &tables[0], Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(
        kinds(&db, &tables[0]).await,
        (1, 1),
        "one ride, one receipt"
    );
    assert_eq!(world.processor_calls.load(Ordering::SeqCst), 1);
    // The client's later retry replays the final response.
    let live = app!(store, world);
    let (status, replayed, body) = post(&live, "/rides", "lost").await;
    assert_eq!((status, replayed), (201, true), "{body}");
    assert_eq!(body["charge"], format!("ch_{}_ada", body["ride"]));
    drop_tables(&db, &tables).await;
}

#[actix_web::test]
async fn an_operation_that_cannot_finish_ends_in_a_recorded_failure() {
    let Some((store, world, db, tables)) =
        setup("an_operation_that_cannot_finish_ends_in_a_recorded_failure").await
    else {
        return;
    };
    let dying = app!(store, world, false);
    die_after_first_step(&world, post(&dying, "/rides", "doomed")).await;
    // Every later run fails after the charge (a processor answer the handler cannot use).
    world.fail_forever.store(true, Ordering::SeqCst);
    let _completer = completer(&store, &world, 2);
    let live = app!(store, world);
    let t0 = Instant::now();
    let (status, replayed, body) = loop {
        let answer = post(&live, "/rides", "doomed").await;
        // In flight (409) or released by a completer attempt and re-run here (503): not yet.
        if answer.1 {
            break answer;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no terminal failure: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((status, replayed), (500, true), "{body}");
    assert_eq!(body["type"], "urn:idem:problem:operation-failed");
    // Not run again: one charge; the finished steps stay as they are.
    assert_eq!(world.processor_calls.load(Ordering::SeqCst), 1);
    assert_eq!(kinds(&db, &tables[0]).await, (1, 0));
    let (again, replayed, _) = post(&live, "/rides", "doomed").await;
    assert_eq!((again, replayed), (500, true));
    // The operator API shows the failure and how far the operation got.
    let info = idem(&store, true)
        .inspect("rides", "", "doomed")
        .await
        .unwrap()
        .expect("the record");
    assert_eq!(
        info.problem.as_deref(),
        Some("urn:idem:problem:operation-failed")
    );
    assert_eq!(info.steps, ["create_ride", "charge"]);
    drop_tables(&db, &tables).await;
}
