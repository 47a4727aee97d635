//! A PostgreSQL pool exhausted by long transactions, on the local PostgreSQL: `Steps` waits for
//! a pooled connection no longer than the store deadline, then answers 503 with `Retry-After`;
//! the retry, once a connection is free, runs the operation once.

mod common;

use actix_web::{dev::Payload, post, FromRequest, HttpRequest, HttpResponse};
use idem::idempotent;
use idem_runtime::{IdemTx, PostgresStore, StepError, Steps};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// An extractor that takes 600 ms (a slow body, an auth lookup): it runs after `begin` and
/// before `Steps`.
struct Pause;

impl FromRequest for Pause {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(_: &HttpRequest, _: &mut Payload) -> Self::Future {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            Ok(Pause)
        })
    }
}

/// Holds its transaction (one of the pool's two connections) for 3 s.
#[post("/hold")]
#[idempotent(store = "pg", transactional)]
async fn hold(tx: IdemTx) -> actix_web::Result<HttpResponse> {
    let db = tx.client().await?;
    db.execute("SELECT pg_sleep(3)", &[])
        .await
        .map_err(actix_web::error::ErrorInternalServerError)?;
    Ok(HttpResponse::Created().finish())
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[post("/steps")]
#[idempotent(store = "pg", guarantee = "result")]
async fn steps(_pause: Pause, steps: Steps) -> Result<HttpResponse, StepError> {
    let n: i64 = steps
        .run("one", async |tx| {
            RUNS.fetch_add(1, Ordering::SeqCst);
            tx.query_one("SELECT 1::bigint", &[])
                .await
                .map(|r| r.get(0))
        })
        .await?;
    Ok(HttpResponse::Created().body(n.to_string()))
}

#[actix_web::test]
async fn steps_wait_for_a_connection_no_longer_than_the_store_deadline() {
    let table = common::pg::table("pool_rec");
    let store = match PostgresStore::builder(&common::pg::config())
        .table(&table)
        .max_connections(2)
        .connect()
        .await
    {
        Ok(s) => s,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped steps_wait_for_a_connection_no_longer_than_the_store_deadline: no PostgreSQL ({e})");
            return;
        }
        Err(e) => panic!("PostgreSQL is required in CI: {e}"),
    };
    let idem = common::builder()
        .secret(b"pool-test-secret-0123456789abcdef".to_vec())
        .store_timeout(Duration::from_millis(500))
        .named_store("pg", store)
        .build();
    let app = actix_web::test::init_service(
        actix_web::App::new()
            .app_data(idem)
            .service(hold)
            .service(steps),
    )
    .await;
    let post = |path: &'static str, key: &'static str| {
        let req = actix_web::test::TestRequest::post()
            .uri(path)
            .insert_header(("Idempotency-Key", key))
            .to_request();
        actix_web::test::call_service(&app, req)
    };
    assert_eq!(post("/steps", "warm").await.status(), 201);
    // The pool's two connections are taken by two transactions while the steps' extractor
    // pauses.
    let (waited, held, held_too) = tokio::join!(
        post("/steps", "s-1"),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            post("/hold", "h-1").await
        },
        async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            post("/hold", "h-2").await
        }
    );
    assert_eq!(held_too.status(), 201);
    assert_eq!(held.status(), 201);
    assert_eq!(waited.status(), 503, "no connection within the deadline");
    assert!(waited.headers().contains_key("retry-after"));
    assert_eq!(RUNS.load(Ordering::SeqCst), 1, "only the warm-up ran");
    // The refused attempt's key is released once the pool has room (its release is retried
    // in the background): the client's retries after `Retry-After` get 409 until then.
    let t0 = std::time::Instant::now();
    let again = loop {
        let r = post("/steps", "s-1").await;
        if r.status() != 409 || t0.elapsed() > Duration::from_secs(10) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        again.status(),
        201,
        "the retry runs once a connection is free"
    );
    assert_eq!(RUNS.load(Ordering::SeqCst), 2);
    let db = common::pg::client().await;
    common::pg::drop_tables(&db, &[&table]).await;
}
