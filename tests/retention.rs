//! Retention a client can see: a kept response carries `Idempotency-Expires` (when its key is
//! forgotten), every replay the same date; a 4xx kept for `client_error_ttl` says so; an app
//! can turn it off; and a retry after that date runs as a new operation.

mod common;

use actix_web::http::header::HttpDate;
use actix_web::{post, web, HttpResponse};
use idem::idempotent;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

#[post("/hour")]
#[idempotent(name = "hour", ttl = "1h", client_error_ttl = "1m")]
async fn hour(runs: web::Data<AtomicUsize>, q: web::Query<Bad>) -> HttpResponse {
    runs.fetch_add(1, Ordering::SeqCst);
    if q.bad {
        HttpResponse::BadRequest().json(serde_json::json!({ "error": "no" }))
    } else {
        HttpResponse::Created().json(serde_json::json!({ "ok": true }))
    }
}

#[derive(serde::Deserialize)]
struct Bad {
    #[serde(default)]
    bad: bool,
}

#[post("/second")]
#[idempotent(name = "second", ttl = "1s")]
async fn second(runs: web::Data<AtomicUsize>) -> HttpResponse {
    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
    HttpResponse::Created().json(serde_json::json!({ "run": n }))
}

/// A handler that sets the header itself, on an endpoint that allow-lists it.
#[post("/own")]
#[idempotent(name = "own", ttl = "1h", replay_headers = ["idempotency-expires"])]
async fn own() -> HttpResponse {
    HttpResponse::Created()
        .insert_header(("idempotency-expires", "Thu, 01 Jan 2099 00:00:00 GMT"))
        .json(serde_json::json!({ "ok": true }))
}

fn start(expiry_header: bool) -> (String, web::Data<AtomicUsize>, actix_web::dev::ServerHandle) {
    // `/second`'s lease is half its 1 s ttl; renewals every lease/3 must fit the store deadline.
    let idem = common::builder()
        .expiry_header(expiry_header)
        .store_timeout(Duration::from_millis(100))
        .build();
    let runs = web::Data::new(AtomicUsize::new(0));
    let r = runs.clone();
    let (addr, handle) = common::serve(1, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(r.clone())
            .service(hour)
            .service(second)
            .service(own);
    });
    (format!("http://{addr}"), runs, handle)
}

async fn post(url: String, key: &str) -> reqwest::Response {
    common::client()
        .post(url)
        .header("Idempotency-Key", key)
        .send()
        .await
        .expect("request")
}

/// The `Idempotency-Expires` date, as seconds from now.
fn expires_in(resp: &reqwest::Response) -> Option<i64> {
    let v = resp.headers().get("idempotency-expires")?.to_str().ok()?;
    let at = SystemTime::from(HttpDate::from_str(v).expect("an HTTP-date"));
    Some(match at.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    })
}

#[actix_rt::test]
async fn kept_responses_say_when_their_key_is_forgotten() {
    let (base, runs, handle) = start(true);
    let first = post(format!("{base}/hour"), "k1").await;
    assert_eq!(first.status(), 201);
    let secs = expires_in(&first).expect("Idempotency-Expires on the first answer");
    assert!((3590..=3600).contains(&secs), "{secs}");
    let date = first.headers()["idempotency-expires"].clone();
    let again = post(format!("{base}/hour"), "k1").await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(
        again.headers()["idempotency-expires"],
        date,
        "replays say the same"
    );

    let bad = post(format!("{base}/hour?bad=true"), "k2").await;
    assert_eq!(bad.status(), 400);
    let secs = expires_in(&bad).expect("on a kept 4xx too");
    assert!((50..=60).contains(&secs), "client_error_ttl: {secs}");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    handle.stop(true).await;
}

/// The record's date is the one kept, once: a handler's own header, even allow-listed, is not
/// kept beside it (replays carried two dates).
#[actix_rt::test]
async fn a_replay_carries_one_date_the_records() {
    let (base, _runs, handle) = start(true);
    let first = post(format!("{base}/own"), "k1").await;
    assert_eq!(first.status(), 201);
    let again = post(format!("{base}/own"), "k1").await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let dates: Vec<_> = again
        .headers()
        .get_all("idempotency-expires")
        .iter()
        .collect();
    assert_eq!(dates.len(), 1, "one date: {dates:?}");
    assert!(expires_in(&again).is_some_and(|s| (3590..=3600).contains(&s)));
    handle.stop(true).await;
}

#[actix_rt::test]
async fn an_app_can_turn_the_header_off() {
    let (base, _runs, handle) = start(false);
    let first = post(format!("{base}/hour"), "k1").await;
    assert_eq!(first.status(), 201);
    assert!(expires_in(&first).is_none());
    let again = post(format!("{base}/hour"), "k1").await;
    assert!(expires_in(&again).is_none());
    handle.stop(true).await;
}

#[actix_rt::test]
async fn a_retry_after_the_date_runs_as_a_new_operation() {
    let (base, runs, handle) = start(true);
    let first = post(format!("{base}/second"), "k1").await;
    assert_eq!(first.status(), 201);
    assert!(expires_in(&first).is_some_and(|s| s <= 1));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let later = post(format!("{base}/second"), "k1").await;
    assert_eq!(later.status(), 201);
    assert!(!later.headers().contains_key("idempotent-replayed"));
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the forgotten key ran again"
    );
    handle.stop(true).await;
}
