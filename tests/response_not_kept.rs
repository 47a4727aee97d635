//! Responses that cannot be kept for replay, and other answers that must not run a finished
//! operation again: the operation ran, so retries get a marker, never a second execution.

mod common;

use common::{problem, start, Charge};
use idem::{Idempotency, MemoryStore};

fn idem() -> Idempotency {
    common::builder().store(MemoryStore::default()).build()
}

/// A 9 MiB response with the default 8 MiB limit: the first client gets all of it; the retry
/// gets the documented marker with the original status, never a second execution.
#[actix_web::test]
async fn a_response_too_big_to_keep_is_sent_once_and_marked() {
    let srv = start(Some(idem()));
    let send = || srv.post("/big", "big-1").send();
    let first = send().await.unwrap();
    assert_eq!(first.status(), 201);
    assert_eq!(first.headers().get("x-run").unwrap(), "1");
    assert_eq!(
        first.headers().get("content-type").unwrap(),
        "application/octet-stream"
    );
    let body = first.bytes().await.unwrap();
    assert_eq!(
        body.len(),
        9 << 20,
        "the first client gets the whole response"
    );
    assert!(body.iter().all(|b| *b == b'x'));

    let retry = send().await.unwrap();
    assert_eq!(retry.headers().get("idempotent-replayed").unwrap(), "true");
    let marker = problem(retry, 201).await;
    assert_eq!(marker["type"], "urn:idem:problem:response-not-kept");
    assert_eq!(marker["original_content_type"], "application/octet-stream");
    assert_eq!(marker["reason"], "too-large");
    assert_eq!(srv.count(|c| &c.big), 1, "one execution");
}

/// A body stream that fails mid-way: the operation ran; its retry gets the marker with the
/// original status.
#[actix_web::test]
async fn a_response_body_that_fails_runs_once() {
    let srv = start(Some(idem()));
    let send = || srv.post("/broken-stream", "broken-1").send();
    let first = send().await;
    // The client sees the stream break where the handler's body failed.
    if let Ok(r) = first {
        assert_eq!(r.status(), 202);
        assert!(r.bytes().await.is_err(), "the body is cut off");
    }
    let retry = send().await.unwrap();
    assert_eq!(retry.headers().get("idempotent-replayed").unwrap(), "true");
    let marker = problem(retry, 202).await;
    assert_eq!(marker["type"], "urn:idem:problem:response-not-kept");
    assert_eq!(marker["original_content_type"], "application/json");
    assert_eq!(marker["reason"], "body-failed");
    assert_eq!(srv.count(|c| &c.broken), 1, "one execution");
}

/// A lease shorter than three store deadlines serves: its renewals get a deadline of their
/// own (at most lease/6), instead of the endpoint answering 500 to every request.
#[actix_web::test]
async fn a_lease_shorter_than_the_store_deadline_serves() {
    // `/slow` has a 1 s lease; the default store deadline is 2 s.
    let srv = start(Some(idem()));
    let body = Charge {
        amount: 1,
        delay_ms: 0,
    };
    let r = srv.post("/slow", "short").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(srv.count(|c| &c.slow), 1);
}

/// What a record keeps of a body is its own bytes: a body sliced from a larger buffer (here
/// 16 bytes of 1 MiB) is copied, so that a record never holds memory its store does not count —
/// an echo of a request body, a slice of the connection's read buffer, once kept a whole buffer
/// per record.
#[actix_web::test]
async fn a_kept_body_does_not_hold_the_buffer_it_was_sliced_from() {
    use actix_web::web::Bytes;
    use actix_web::{test, web, App, HttpResponse};

    #[actix_web::post("/slice")]
    #[idem::idempotent]
    async fn slice(big: web::Data<Bytes>) -> HttpResponse {
        HttpResponse::Created().body(big.slice(..16))
    }

    let big = web::Data::new(Bytes::from(vec![b'x'; 1 << 20]));
    let app = test::init_service(
        App::new()
            .app_data(idem())
            .app_data(big.clone())
            .service(slice),
    )
    .await;
    let send = || {
        test::TestRequest::post()
            .uri("/slice")
            .insert_header(("Idempotency-Key", "slice-1"))
            .to_request()
    };
    let first = test::call_and_read_body(&app, send()).await;
    assert_eq!(first.len(), 16);
    drop(first);
    assert!(
        big.is_unique(),
        "the record holds (a slice of) the 1 MiB buffer its body came from"
    );
    let resp = test::call_service(&app, send()).await;
    assert_eq!(resp.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(test::read_body(resp).await, Bytes::from(vec![b'x'; 16]));
}
