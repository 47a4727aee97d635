//! The request flow end to end, against a real `HttpServer` on loopback with the memory store.
// The expansion of every handler in `common` must be clean under the strictest lints.
#![deny(warnings, clippy::all)]

mod common;

use common::{client, problem, start, Charge};
use idem::{Idempotency, MemoryStore};
use std::io::Write;
use std::time::Duration;

fn idem() -> Idempotency {
    common::builder()
        .store(MemoryStore::default())
        .replay_headers(["X-Request-Id"])
        // The memory store answers at once; a short deadline admits the 1 s leases of `/slow`
        // and `/short-ttl` (a lease must be longer than three store deadlines).
        .store_timeout(Duration::from_millis(150))
        .build()
}

fn charge(amount: i64, delay_ms: u64) -> Charge {
    Charge { amount, delay_ms }
}

#[actix_web::test]
async fn sequential_retry_replays_byte_for_byte() {
    let srv = start(Some(idem()));
    let send = || srv.post("/charge", "order-1").json(&charge(100, 0)).send();
    let first = send().await.unwrap();
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    assert!(
        first.headers().get("set-cookie").is_some(),
        "the first caller gets the full response"
    );
    let first_headers = first.headers().clone();
    let first_body = first.bytes().await.unwrap();

    for _ in 0..3 {
        let again = send().await.unwrap();
        assert_eq!(again.status(), 201);
        let h = again.headers().clone();
        assert_eq!(h.get("idempotent-replayed").unwrap(), "true");
        for name in ["content-type", "location", "etag", "x-request-id"] {
            assert_eq!(h.get(name), first_headers.get(name), "header {name}");
        }
        assert!(
            h.get("set-cookie").is_none(),
            "Set-Cookie is never replayed"
        );
        assert!(
            h.get("x-not-allowed").is_none(),
            "only allow-listed headers are replayed"
        );
        assert_eq!(again.bytes().await.unwrap(), first_body);
    }
    assert_eq!(srv.count(|c| &c.charge), 1);
}

#[actix_web::test]
async fn hundred_parallel_duplicates_run_once() {
    let srv = start(Some(idem()));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let req = srv.post("/charge", "storm").json(&charge(5, 300));
        tasks.push(actix_web::rt::spawn(async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let retry_after = r.headers().get("retry-after").is_some();
            let replayed = r.headers().get("idempotent-replayed").is_some();
            (status, retry_after, replayed, r.bytes().await.unwrap())
        }));
    }
    let mut executed_body = None;
    let (mut fresh, mut conflicts, mut replays) = (0, 0, 0);
    let mut bodies = Vec::new();
    for t in tasks {
        let (status, retry_after, replayed, body) = t.await.unwrap();
        match status {
            201 if !replayed => {
                fresh += 1;
                executed_body = Some(body);
            }
            201 => {
                replays += 1;
                bodies.push(body);
            }
            409 => {
                assert!(retry_after, "409 carries Retry-After");
                conflicts += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(fresh, 1, "exactly one request ran the handler");
    assert_eq!(fresh + conflicts + replays, 100);
    let executed_body = executed_body.unwrap();
    assert!(bodies.iter().all(|b| *b == executed_body));
    assert_eq!(srv.count(|c| &c.charge), 1);
}

#[actix_web::test]
async fn same_key_other_payload_is_422() {
    let srv = start(Some(idem()));
    let ok = srv
        .post("/charge", "k")
        .json(&charge(1, 0))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 201);
    let other = srv
        .post("/charge", "k")
        .json(&charge(2, 0))
        .send()
        .await
        .unwrap();
    let p = problem(other, 422).await;
    assert_eq!(p["type"], "urn:idem:problem:key-reused");
    assert_eq!(srv.count(|c| &c.charge), 1);
}

#[actix_web::test]
async fn missing_key_is_400_unless_optional() {
    let srv = start(Some(idem()));
    let c = client();
    let r = c
        .post(srv.url("/charge"))
        .json(&charge(1, 0))
        .send()
        .await
        .unwrap();
    let p = problem(r, 400).await;
    assert_eq!(p["type"], "urn:idem:problem:key-missing");
    assert_eq!(srv.count(|c| &c.charge), 0);

    for _ in 0..2 {
        let r = c.post(srv.url("/optional")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        srv.count(|c| &c.optional),
        2,
        "no key, not required: runs plainly"
    );
}

#[actix_web::test]
async fn malformed_keys_are_400() {
    let srv = start(Some(idem()));
    let c = client();
    let long = "k".repeat(256);
    let cases: Vec<Vec<&[u8]>> = vec![
        vec![long.as_bytes()],
        vec![b"tab\there"],
        vec![b"caf\xc3\xa9"],
        vec![b""],
        vec![b"\"unterminated"],
        vec![b"one", b"two"],
        vec![b"same", b"same"],
    ];
    for values in cases {
        let mut req = c.post(srv.url("/charge")).json(&charge(1, 0));
        for v in &values {
            req = req.header(
                "Idempotency-Key",
                reqwest::header::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        let p = problem(req.send().await.unwrap(), 400).await;
        assert_eq!(p["type"], "urn:idem:problem:key-invalid", "{values:?}");
    }
    // The longest valid key and the sf-string form both work, and are the same key.
    let ok = "k".repeat(255);
    for v in [ok.clone(), format!("\"{ok}\"")] {
        let r = srv
            .post("/charge", v)
            .json(&charge(1, 0))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    assert_eq!(srv.count(|c| &c.charge), 1);
}

#[actix_web::test]
async fn invalid_json_is_400_and_not_cached() {
    let srv = start(Some(idem()));
    let bad = srv
        .post("/charge", "fix-me")
        .header("Content-Type", "application/json")
        .body("{\"amount\": ")
        .send()
        .await
        .unwrap();
    let p = problem(bad, 400).await;
    assert_eq!(p["type"], "urn:idem:problem:request-invalid");
    let fixed = srv
        .post("/charge", "fix-me")
        .json(&charge(3, 0))
        .send()
        .await
        .unwrap();
    assert_eq!(fixed.status(), 201, "the corrected retry runs");
    assert!(fixed.headers().get("idempotent-replayed").is_none());
    assert_eq!(srv.count(|c| &c.charge), 1);
}

#[actix_web::test]
async fn completed_record_expires_after_ttl() {
    let srv = start(Some(idem()));
    let send = || srv.post("/short-ttl", "ttl").send();
    assert_eq!(send().await.unwrap().text().await.unwrap(), "run 1");
    assert_eq!(send().await.unwrap().text().await.unwrap(), "run 1");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(send().await.unwrap().text().await.unwrap(), "run 2");
    assert_eq!(srv.count(|c| &c.short_ttl), 2);
}

#[actix_web::test]
async fn client_disconnect_does_not_cancel_the_handler() {
    let srv = start(Some(idem()));
    srv.send_then_reset(
        "/charge",
        "gone",
        &charge(9, 500),
        Duration::from_millis(100),
    )
    .await;

    let r = srv
        .retry_until_done("/charge", "gone", &charge(9, 500))
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(srv.count(|c| &c.charge), 1, "the handler finished once");
}

/// Under `strict` (the default) a panic is an answer like a returned 500: kept and replayed, so
/// the side effects the handler made before it panicked never happen twice.
#[actix_web::test]
async fn panicking_handler_under_strict_replays_its_500() {
    let srv = start(Some(idem()));
    let send = || srv.post("/panics", "boom").send();
    let p = problem(send().await.unwrap(), 500).await;
    assert_eq!(p["type"], "urn:idem:problem:handler-failed");
    let r = send().await.unwrap();
    assert_eq!(r.headers().get("idempotent-replayed").unwrap(), "true");
    let again = problem(r, 500).await;
    assert_eq!(again, p, "the retry replays the first answer");
    assert_eq!(srv.count(|c| &c.panics), 1, "one execution");
}

/// Under `result` a panic is a 5xx, which that guarantee does not keep: released, and the retry
/// runs the handler again.
#[actix_web::test]
async fn panicking_handler_under_result_releases_the_key() {
    let srv = start(Some(idem()));
    let send = || srv.post("/panics-result", "boom").send();
    let p = problem(send().await.unwrap(), 500).await;
    assert_eq!(p["type"], "urn:idem:problem:handler-failed");
    let r = send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "recovered");
    let r = send().await.unwrap();
    assert_eq!(r.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(srv.count(|c| &c.panics), 2);
}

#[actix_web::test]
async fn handler_errors_are_replayed_under_strict() {
    let srv = start(Some(idem()));
    let send = || srv.post("/fails", "e").send();
    let first = send().await.unwrap();
    assert_eq!(first.status(), 500);
    let first_body = first.text().await.unwrap();
    let again = send().await.unwrap();
    assert_eq!(again.status(), 500);
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.text().await.unwrap(), first_body);
    assert_eq!(srv.count(|c| &c.fails), 1);
}

#[actix_web::test]
async fn gzip_body_is_buffered_raw_and_decoded_once() {
    let srv = start(Some(idem()));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&serde_json::to_vec(&charge(42, 0)).unwrap())
        .unwrap();
    let body = gz.finish().unwrap();
    let send = || {
        srv.post("/charge", "gz")
            .header("Content-Type", "application/json")
            .header("Content-Encoding", "gzip")
            .body(body.clone())
            .send()
    };
    let r = send().await.unwrap();
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["amount"], 42);
    let again = send().await.unwrap();
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(srv.count(|c| &c.charge), 1);
}

#[actix_web::test]
async fn principals_never_share_a_key() {
    let srv = start(Some(idem()));
    let send = |who: &'static str| {
        srv.post("/charge", "shared-key")
            .header("Authorization", format!("Bearer {who}"))
            .json(&charge(10, 0))
            .send()
    };
    let alice: serde_json::Value = send("alice").await.unwrap().json().await.unwrap();
    let bob: serde_json::Value = send("bob").await.unwrap().json().await.unwrap();
    assert_ne!(alice["charge"], bob["charge"], "bob ran his own request");
    let alice2 = send("alice").await.unwrap();
    assert_eq!(alice2.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(alice2.json::<serde_json::Value>().await.unwrap(), alice);
    let bob2: serde_json::Value = send("bob").await.unwrap().json().await.unwrap();
    assert_eq!(bob2, bob);
    assert_eq!(srv.count(|c| &c.charge), 2);
}

#[actix_web::test]
async fn custom_scope_function_separates_accounts() {
    let idem = common::builder()
        .scope(|req| {
            req.headers()
                .get("x-account")
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        })
        .build();
    let srv = start(Some(idem));
    for account in ["a", "b", "a"] {
        let r = srv
            .post("/charge", "k")
            .header("X-Account", account)
            .json(&charge(1, 0))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    assert_eq!(srv.count(|c| &c.charge), 2);
}

#[actix_web::test]
async fn full_memory_store_is_503_and_keeps_live_records() {
    let store = MemoryStore::builder()
        .max_bytes(3 * 1024)
        .sweep_every(None)
        .build();
    let srv = start(Some(common::builder().store(store.clone()).build()));
    let mut admitted = Vec::new();
    let mut full = 0;
    for i in 0..40 {
        let key = format!("cap-{i}");
        let r = srv
            .post("/charge", key.clone())
            .json(&charge(i, 0))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            201 => admitted.push((key, i, r.bytes().await.unwrap())),
            503 => {
                assert!(r.headers().get("retry-after").is_some());
                problem(r, 503).await;
                full += 1;
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert!(
        !admitted.is_empty() && full > 0,
        "{} admitted, {full} refused",
        admitted.len()
    );
    for (key, i, body) in &admitted {
        let r = srv
            .post("/charge", key.clone())
            .json(&charge(*i, 0))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.headers().get("idempotent-replayed").unwrap(),
            "true",
            "{key} lost"
        );
        assert_eq!(&r.bytes().await.unwrap(), body);
    }
    assert_eq!(srv.count(|c| &c.charge), admitted.len());
}

#[actix_web::test]
async fn store_errors_fail_closed_or_open_per_policy() {
    // A store with no room at all: every `begin` fails with `Full`.
    let store = MemoryStore::builder().max_bytes(0).build();
    let srv = start(Some(common::builder().store(store).build()));
    let r = srv
        .post("/charge", "x")
        .json(&charge(1, 0))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("retry-after").is_some());
    problem(r, 503).await;
    assert_eq!(
        srv.count(|c| &c.charge),
        0,
        "reject: the handler does not run"
    );

    // A full store answered: it is not unreachable, and a flood must not be able to switch
    // idempotency off, so even `proceed` fails closed here.
    let r = srv.post("/proceed", "x").send().await.unwrap();
    assert!(r.headers().get("retry-after").is_some());
    problem(r, 503).await;
    assert_eq!(
        srv.count(|c| &c.proceed),
        0,
        "proceed: a full store never runs the handler unprotected"
    );
}

#[actix_web::test]
async fn body_over_max_body_is_413() {
    let srv = start(Some(idem()));
    let r = srv
        .post("/small", "big")
        .body(vec![b'x'; 1025])
        .send()
        .await
        .unwrap();
    problem(r, 413).await;
    let r = srv
        .post("/small", "fits")
        .body(vec![b'x'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "1024 bytes");
    assert_eq!(srv.count(|c| &c.small), 1);
}

#[actix_web::test]
async fn chunked_body_over_max_body_is_413() {
    let srv = start(Some(idem()));
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..4).map(|_| Ok(vec![b'y'; 400])).collect();
    let r = client()
        .post(srv.url("/small"))
        .header("Idempotency-Key", "chunked")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    problem(r, 413).await;
    assert_eq!(srv.count(|c| &c.small), 0);
}

#[actix_web::test]
async fn lease_is_renewed_while_a_slow_handler_runs() {
    let srv = start(Some(idem()));
    let c = client();
    let url = srv.url("/slow");
    let first = {
        let req = c
            .post(&url)
            .header("Idempotency-Key", "slow")
            .json(&charge(1, 3500));
        actix_web::rt::spawn(async move { req.send().await.unwrap().status() })
    };
    // Past the 1 s lease: only renewal keeps the key held.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let dup = c
        .post(&url)
        .header("Idempotency-Key", "slow")
        .json(&charge(1, 3500))
        .send()
        .await
        .unwrap();
    assert_eq!(dup.status(), 409);
    assert_eq!(first.await.unwrap(), 200);
    let r = srv
        .retry_until_done("/slow", "slow", &charge(1, 3500))
        .await;
    assert_eq!(r.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(srv.count(|c| &c.slow), 1);
}

#[actix_web::test]
async fn extractors_are_rerun_on_the_buffered_request() {
    let srv = start(Some(idem()));
    let r = srv
        .post("/mixed/acct-7/3?note=hi", "m")
        .json(&charge(11, 0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v,
        serde_json::json!({"account": "acct-7", "n": 3, "note": "hi", "method": "POST", "amount": 11})
    );
    // A missing query field is the extractor's 400, as problem+json, and not cached.
    let r = srv
        .post("/mixed/acct-7/3", "m2")
        .json(&charge(11, 0))
        .send()
        .await
        .unwrap();
    problem(r, 400).await;
    assert_eq!(srv.count(|c| &c.mixed), 1);

    let send = || {
        srv.post("/form", "f")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("item=book")
            .send()
    };
    assert_eq!(
        send().await.unwrap().text().await.unwrap(),
        "ordered book (run 1)"
    );
    assert_eq!(
        send().await.unwrap().text().await.unwrap(),
        "ordered book (run 1)"
    );
}

#[actix_web::test]
async fn app_without_idempotency_answers_500_problem() {
    let srv = start(None);
    let r = client()
        .post(srv.url("/charge"))
        .header("Idempotency-Key", "k")
        .json(&charge(1, 0))
        .send()
        .await
        .unwrap();
    let p = problem(r, 500).await;
    assert_eq!(p["type"], "urn:idem:problem:internal");
    assert_eq!(srv.count(|c| &c.charge), 0);
}
