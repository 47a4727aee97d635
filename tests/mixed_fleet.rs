//! One endpoint served by an actix-web instance and an axum instance (the tower layer) on one
//! private Redis: the same `name`, principal and key reach the same record whichever adapter
//! answers, so 300 concurrent duplicates spread across both run the handler once.

mod common;

use actix_web::{post, web, HttpRequest, HttpResponse};
use axum::routing::post as axum_post;
use common::redis::{available, RedisServer};
use common::tower::{echo, serve, Runs};
use idem::{idempotent, Idempotency, RedisStore};
use idem_runtime::tower::IdempotencyLayer;
use std::sync::atomic::Ordering;

#[post("/payments")]
#[idempotent(
    name = "payments.create",
    ttl = "1h",
    on_conflict = "wait",
    wait_timeout = "20s"
)]
async fn create(runs: web::Data<Runs>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    common::tower::echo_actix(&runs, &req, body).await
}

fn idem(store: RedisStore) -> Idempotency {
    common::builder().store(store).build()
}

#[actix_web::test]
async fn actix_and_axum_on_one_redis_run_300_duplicates_once() {
    if !available("actix_and_axum_on_one_redis_run_300_duplicates_once") {
        return;
    }
    let redis = RedisServer::start();
    let runs = Runs::default();

    let store = RedisStore::connect(&redis.url()).await.expect("connect");
    let idem_a = idem(store);
    let runs_a = runs.clone();
    let (actix, _handle) = common::serve(2, move |cfg| {
        cfg.app_data(idem_a.clone())
            .app_data(web::Data::new(runs_a.clone()))
            .service(create);
    });

    let (url, runs_t) = (redis.url(), runs.clone());
    let axum = serve(move || async move {
        // Connected on the axum app's own runtime, which drives it.
        let store = RedisStore::connect(&url).await.expect("connect");
        let policy = idem::policy!(
            name = "payments.create",
            ttl = "1h",
            on_conflict = "wait",
            wait_timeout = "20s"
        );
        axum::Router::new()
            .route(
                "/payments",
                axum_post(echo).layer(IdempotencyLayer::new(&idem(store), policy)),
            )
            .with_state(runs_t)
    });

    let client = common::client();
    let sends = (0..300).map(|i| {
        let to = if i % 2 == 0 { actix } else { axum };
        let client = client.clone();
        async move {
            let r = client
                .post(format!("http://{to}/payments"))
                .header("idempotency-key", "pay-mixed-1")
                .header("authorization", "acct-7")
                .header("content-type", "application/json")
                .header("x-delay-ms", "400")
                .body(r#"{"amount":4200}"#)
                .send()
                .await
                .expect("an answer");
            let replayed = r.headers().get("idempotent-replayed").is_some();
            (
                r.status().as_u16(),
                replayed,
                r.text().await.expect("a body"),
            )
        }
    });
    let answers = futures_util::future::join_all(sends).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "one execution across both adapters"
    );
    for (status, _, body) in &answers {
        assert_eq!(*status, 201);
        assert_eq!(body, r#"{"amount":4200}"#);
    }
    assert_eq!(
        answers.iter().filter(|(_, replayed, _)| *replayed).count(),
        299,
        "every duplicate got the first response"
    );
    // The answers from each adapter include replays of the other's execution.
    let from = |even: bool| {
        answers
            .iter()
            .enumerate()
            .filter(|(i, (_, replayed, _))| (i % 2 == 0) == even && *replayed)
            .count()
    };
    assert!(from(true) >= 149 && from(false) >= 149);
}
