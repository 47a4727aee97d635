//! Redaction: an endpoint's `redact` pointers are blanked in the stored copy of its response.
//! The first client gets the full answer; replays get `"[redacted]"` in their place and
//! everything else unchanged; a body the pointers cannot apply to (not JSON) is not stored at
//! all — replays get the `response-not-kept` marker, never the unredacted body, and nothing runs
//! again. (With `strict` the option is a compile error: `tests/ui/fail/redact_strict.rs`.)

mod common;

use actix_web::{post, web, HttpResponse};
use idem::{idempotent, MemoryStore};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};

#[post("/cards")]
#[idempotent(name = "cards", guarantee = "result", redact = ["/card/number", "/card/cvc", "/absent"])]
async fn cards(runs: web::Data<AtomicUsize>) -> HttpResponse {
    runs.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Created().json(json!({
        "id": "card_1",
        "card": { "number": "4242424242424242", "cvc": "123", "last4": "4242" },
    }))
}

#[post("/text")]
#[idempotent(name = "text", guarantee = "result", redact = ["/card/number"])]
async fn text(runs: web::Data<AtomicUsize>) -> HttpResponse {
    runs.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Created()
        .content_type("text/plain")
        .body("number 4242424242424242")
}

#[actix_rt::test]
async fn replays_get_the_redacted_copy_and_the_first_client_the_whole() {
    let store = MemoryStore::default();
    let idem = common::builder().store(store.clone()).build();
    let runs = web::Data::new(AtomicUsize::new(0));
    let r = runs.clone();
    let (addr, handle) = common::serve(1, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(r.clone())
            .service(cards)
            .service(text);
    });
    let send = |path: &'static str| {
        common::client()
            .post(format!("http://{addr}{path}"))
            .header("Idempotency-Key", "k1")
            .send()
    };

    let first: Value = send("/cards")
        .await
        .expect("first")
        .json()
        .await
        .expect("json");
    assert_eq!(first["card"]["number"], "4242424242424242");
    let again = send("/cards").await.expect("replay");
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["card"]["number"], "[redacted]");
    assert_eq!(again["card"]["cvc"], "[redacted]");
    assert_eq!(again["card"]["last4"], "4242");
    assert_eq!(again["id"], "card_1");
    assert!(
        again.get("absent").is_none(),
        "a pointer that matches nothing adds nothing"
    );

    let first_text = send("/text").await.expect("first");
    assert_eq!(
        first_text.text().await.expect("body"),
        "number 4242424242424242"
    );
    let marker = common::problem(send("/text").await.expect("replay"), 201).await;
    assert_eq!(marker["type"], "urn:idem:problem:response-not-kept");
    assert_eq!(marker["reason"], "unredactable");
    assert_eq!(runs.load(Ordering::SeqCst), 2, "nothing ran again");

    // The store never held the number (this app has no secret, so records are in clear).
    let dump = format!("{:?}", store.dump());
    let held: Vec<u8> = store
        .dump()
        .into_iter()
        .filter_map(|(_, r)| match r.state {
            idem::RecordState::Completed { response } => Some(response.body().to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(
        !String::from_utf8_lossy(&held).contains("4242424242424242"),
        "{dump}"
    );
    handle.stop(true).await;
}
