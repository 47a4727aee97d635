//! `strict`, `result` and `semantic` on a real server; `IdempotencyContext`; per-endpoint
//! replay headers.

mod common;

use common::{problem, start, TestServer};
use serde_json::{json, Value};

fn server() -> TestServer {
    start(Some(common::builder().build()))
}

async fn send(srv: &TestServer, path: &str, key: &str, body: &str) -> reqwest::Response {
    srv.post(path, key)
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

fn replayed(r: &reqwest::Response) -> bool {
    r.headers().contains_key("idempotent-replayed")
}

#[actix_web::test]
async fn result_ignores_key_order_whitespace_and_number_spelling() {
    let srv = server();
    let first = send(
        &srv,
        "/result",
        "r1",
        r#"{"amount":100,"currency":"EUR","items":[1,2]}"#,
    )
    .await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    for same in [
        r#"{"currency":"EUR","items":[1,2],"amount":100}"#,
        "{ \"items\" : [ 1.0, 2 ],\n \"amount\": 1e2, \"currency\": \"\\u0045UR\" }",
    ] {
        let r = send(&srv, "/result", "r1", same).await;
        assert!(replayed(&r), "{same}");
        assert_eq!(r.json::<Value>().await.unwrap(), first);
    }
    // Array order and values still count.
    let p = problem(
        send(
            &srv,
            "/result",
            "r1",
            r#"{"amount":100,"currency":"EUR","items":[2,1]}"#,
        )
        .await,
        422,
    )
    .await;
    assert_eq!(p["type"], "urn:idem:problem:key-reused");
    problem(
        send(
            &srv,
            "/result",
            "r1",
            r#"{"amount":101,"currency":"EUR","items":[1,2]}"#,
        )
        .await,
        422,
    )
    .await;
    assert_eq!(srv.count(|c| &c.result), 1);
}

#[actix_web::test]
async fn strict_refuses_the_same_json_spelled_differently() {
    let srv = server();
    let r = send(&srv, "/charge", "s1", r#"{"amount":100,"delay_ms":0}"#).await;
    assert_eq!(r.status(), 201);
    problem(
        send(&srv, "/charge", "s1", r#"{"delay_ms":0,"amount":100}"#).await,
        422,
    )
    .await;
    assert_eq!(srv.count(|c| &c.charge), 1);
}

#[actix_web::test]
async fn semantic_counts_only_the_listed_fields() {
    let srv = server();
    let first = send(
        &srv,
        "/semantic",
        "m1",
        r#"{"amount":5,"currency":"EUR","note":"first"}"#,
    )
    .await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let r = send(
        &srv,
        "/semantic",
        "m1",
        r#"{"note":"changed","currency":"EUR","amount":5.0,"extra":[1]}"#,
    )
    .await;
    assert!(
        replayed(&r),
        "an unlisted field changed: still the same request"
    );
    assert_eq!(r.json::<Value>().await.unwrap(), first);
    problem(
        send(
            &srv,
            "/semantic",
            "m1",
            r#"{"amount":6,"currency":"EUR","note":"first"}"#,
        )
        .await,
        422,
    )
    .await;
    problem(
        send(&srv, "/semantic", "m1", r#"{"amount":5,"currency":"USD"}"#).await,
        422,
    )
    .await;

    // A missing field counts as null, consistently.
    let a = send(&srv, "/semantic", "m2", r#"{"amount":7}"#).await;
    assert_eq!(a.status(), 201);
    let b = send(
        &srv,
        "/semantic",
        "m2",
        r#"{"amount":7,"currency":null,"note":"x"}"#,
    )
    .await;
    assert!(replayed(&b));
    assert_eq!(srv.count(|c| &c.semantic), 2);
}

#[actix_web::test]
async fn server_errors_are_retried_under_result_and_replayed_under_strict() {
    let srv = server();
    let failed = send(&srv, "/result", "e1", r#"{"fail":true}"#).await;
    assert_eq!(failed.status(), 500);
    let failed: Value = failed.json().await.unwrap();
    assert_eq!(failed["attempt"], 1);
    let again = send(&srv, "/result", "e1", r#"{"fail":true}"#).await;
    assert_eq!(again.status(), 500);
    assert!(
        !replayed(&again),
        "a 5xx under result is not cached: the retry runs"
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["attempt"], 2, "IdempotencyContext counts the attempt");
    assert_eq!(
        again["key"], failed["key"],
        "the operation id is stable across attempts"
    );
    assert!(
        again["token"].as_u64() > failed["token"].as_u64(),
        "a later attempt fences the earlier"
    );
    assert_eq!(srv.count(|c| &c.result), 2);

    // 4xx and 2xx are kept: the client's corrected request under a new key replays.
    let ok = send(&srv, "/result", "e2", "{}").await;
    assert_eq!(ok.status(), 201);
    assert!(replayed(&send(&srv, "/result", "e2", "{}").await));

    // strict keeps the 500 (the /fails handler returns Err → 500).
    let r = srv.post("/fails", "e3").send().await.unwrap();
    assert_eq!(r.status(), 500);
    let r = srv.post("/fails", "e3").send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert!(replayed(&r));
    assert_eq!(srv.count(|c| &c.fails), 1);
}

#[actix_web::test]
async fn context_key_is_opaque_and_scoped() {
    let srv = server();
    let body: Value = send(&srv, "/result", "raw-key-123", "{}")
        .await
        .json()
        .await
        .unwrap();
    let key = body["key"].as_str().unwrap();
    assert!(!key.contains("raw-key-123"));
    assert_eq!(key.len(), 16 + 1 + 64);
    assert_eq!(body["attempt"], 1);
    let other: Value = srv
        .post("/result", "raw-key-123")
        .header("Authorization", "Bearer someone-else")
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(other["key"], body["key"]);
}

#[actix_web::test]
async fn endpoint_replay_headers_add_to_the_app_list() {
    let srv = server();
    let first = send(&srv, "/result", "h1", "{}").await;
    let trace = first.headers().get("x-trace").cloned().unwrap();
    let again = send(&srv, "/result", "h1", "{}").await;
    assert!(replayed(&again));
    assert_eq!(
        again.headers().get("x-trace"),
        Some(&trace),
        "replay_headers = [\"X-Trace\"]"
    );
    // The same header is not replayed where the endpoint did not ask for it.
    let first = srv
        .post("/semantic", "h2")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(first.headers().contains_key("x-trace"));
    let again = srv
        .post("/semantic", "h2")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(replayed(&again));
    assert!(!again.headers().contains_key("x-trace"));
}

/// Under `result`, a gzip-encoded body is fingerprinted decoded: the same JSON compressed at
/// another level (other bytes on the wire) is the same request; other JSON is not; a corrupt or
/// bomb-sized gzip body is refused before anything runs.
#[actix_web::test]
async fn result_fingerprints_the_decoded_body() {
    use std::io::Write;
    let srv = server();
    let gzip = |json: &str, level: u32| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        gz.write_all(json.as_bytes()).unwrap();
        gz.finish().unwrap()
    };
    let send = |key: &'static str, body: Vec<u8>| {
        srv.post("/result", key)
            .header("Content-Type", "application/json")
            .header("Content-Encoding", "gzip")
            .body(body)
            .send()
    };
    let json =
        r#"{"amount": 100, "currency": "EUR", "note": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#;
    let (fast, best) = (gzip(json, 1), gzip(json, 9));
    assert_ne!(fast, best, "two encodings of one body");
    let first = send("gz-r", fast).await.unwrap();
    assert_eq!(first.status(), 201);
    let again = send("gz-r", best).await.unwrap();
    assert!(replayed(&again), "the same JSON, however compressed");
    let other = send("gz-r", gzip(r#"{"amount": 101}"#, 6)).await.unwrap();
    problem(other, 422).await;

    let p = problem(
        send("gz-bad", b"\x1f\x8b not gzip".to_vec()).await.unwrap(),
        400,
    )
    .await;
    assert_eq!(p["type"], "urn:idem:problem:body-unreadable");
    // 3 MiB of zeros compress to a few KiB; decoded they pass the 2 MiB limit.
    let bomb = {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![b' '; 3 << 20]).unwrap();
        gz.finish().unwrap()
    };
    problem(send("gz-bomb", bomb).await.unwrap(), 413).await;
    assert_eq!(srv.count(|c| &c.result), 1);
}
