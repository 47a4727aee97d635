//! Rotating the keys that seal stored responses: records sealed under key 1 replay after key 2
//! is put first; once key 1 is removed they are refused (500 `record-unreadable`, logged) — never
//! run again, never answered with anything else. Three app instances in turn on one store, as a
//! rolling rotation would have them.

mod common;

use actix_web::{post, web, HttpResponse};
use idem::{idempotent, MemoryStore};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};

const SECRET: &[u8] = b"rotation-test-app-secret-0123456789abcdef";

#[post("/pay")]
#[idempotent(name = "pay")]
async fn pay(runs: web::Data<AtomicUsize>) -> HttpResponse {
    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
    HttpResponse::Created().json(json!({ "run": n }))
}

struct App {
    base: String,
    handle: actix_web::dev::ServerHandle,
}

/// An instance on `store` sealing with `keys` (newest first); `runs` counts executions across
/// all instances.
fn instance(store: &MemoryStore, keys: &[&[u8]], runs: &web::Data<AtomicUsize>) -> App {
    let idem = common::builder()
        .secret(SECRET)
        .sealing_keys(keys.iter().map(|k| k.to_vec()))
        .store(store.clone())
        .build();
    let r = runs.clone();
    let (addr, handle) = common::serve(1, move |cfg| {
        cfg.app_data(idem.clone()).app_data(r.clone()).service(pay);
    });
    App {
        base: format!("http://{addr}"),
        handle,
    }
}

async fn send(app: &App, key: &str) -> reqwest::Response {
    common::client()
        .post(format!("{}/pay", app.base))
        .header("Idempotency-Key", key)
        .json(&json!({ "amount": 1 }))
        .send()
        .await
        .expect("request")
}

#[actix_rt::test]
async fn records_replay_across_a_rotation_and_are_refused_once_their_key_is_removed() {
    let store = MemoryStore::default();
    let runs = web::Data::new(AtomicUsize::new(0));

    let before = instance(&store, &[b"sealing-key-1"], &runs);
    let first = send(&before, "op-1").await;
    assert_eq!(first.status(), 201);
    let first = first.bytes().await.expect("body");
    before.handle.stop(true).await;

    // Key 2 put first: the old record replays; new records are sealed under key 2.
    let during = instance(&store, &[b"sealing-key-2", b"sealing-key-1"], &runs);
    let again = send(&during, "op-1").await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.bytes().await.expect("body"), first);
    let second = send(&during, "op-2").await;
    assert_eq!(second.status(), 201);
    let second = second.bytes().await.expect("body");
    during.handle.stop(true).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    // Key 1 removed: its record is found and refused; key 2's still replays.
    let after = instance(&store, &[b"sealing-key-2"], &runs);
    let refused = common::problem(send(&after, "op-1").await, 500).await;
    assert_eq!(refused["type"], "urn:idem:problem:record-unreadable");
    let replay = send(&after, "op-2").await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.bytes().await.expect("body"), second);
    assert_eq!(runs.load(Ordering::SeqCst), 2, "nothing ran again");
    after.handle.stop(true).await;
}
