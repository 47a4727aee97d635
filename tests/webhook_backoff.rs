//! A webhook delivery waits for the first request's response by reading the store; a store that
//! fails at once (down, refusing) must not turn that wait into a busy loop: the reads back off.

mod common;

use common::{builder, start, Charge};
use idem::MemoryStore;
use idem_runtime::testing::{Fault, FaultyStore, Op};
use std::time::Duration;

#[actix_web::test]
async fn a_webhook_wait_backs_off_from_a_failing_store() {
    let store = FaultyStore::new(MemoryStore::default());
    let srv = start(Some(
        builder()
            .store(store.clone())
            .webhook_allow(["http://127.0.0.1:9/hooks".to_string()])
            .webhook_secret(b"webhook-backoff-secret".as_slice())
            .build(),
    ));
    let slow = Charge {
        amount: 1,
        delay_ms: 1500,
    };
    let first = srv.post("/webhook", "w-1").json(&slow).send();
    let first = actix_web::rt::spawn(async move { first.await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The store's reads fail at once from now on (down, or refusing); its `begin` still answers
    // the duplicate.
    store.inject(Op::Get, Fault::Fail, 100_000);
    store.inject(Op::Wait, Fault::Fail, 100_000);
    let reads = || store.calls(Op::Get) + store.calls(Op::Wait);
    let before = reads();
    let dup = srv
        .post("/webhook", "w-1")
        .header("Idempotency-Callback", "http://127.0.0.1:9/hooks/x")
        .json(&slow)
        .send()
        .await
        .unwrap();
    assert_eq!(dup.status(), 202, "the duplicate is promised a webhook");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = reads() - before;
    assert!(
        during <= 20,
        "{during} store reads in a second: the delivery's wait spins"
    );
    let _ = first.await;
}
