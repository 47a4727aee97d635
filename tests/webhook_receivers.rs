//! Webhook receivers with secrets of their own, on real loopback servers: a delivery made for
//! receiver A does not verify at receiver B — under B's secret, and not even under A's secret
//! at B's origin (`v2` binds the origin) — every delivery has an id of its own, and a
//! receiver's secret rotates with deliveries in flight: both signatures are sent, and either
//! secret verifies.

mod common;

use common::hooks::{receiver, Deliveries, Delivery as Got};
use common::{builder, start, Charge};
use idem_runtime::webhook::{verify, verify_delivery, Delivery};
use std::time::{Duration, Instant};

const TOLERANCE: Duration = Duration::from_secs(300);

/// The first delivery `got` receives (waiting up to 10 s).
async fn first(got: &Deliveries) -> Got {
    let t0 = Instant::now();
    loop {
        if let Some(d) = got.lock().unwrap().first().cloned() {
            return d;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no delivery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `d` verifies under `secret` at the receiver whose origin is `origin`: (v1, v2).
fn verifies(d: &Got, secret: &[u8], origin: &str) -> (bool, bool) {
    let status: u16 = d.status.parse().unwrap();
    let v1 = verify(secret, &d.signature, &d.key, status, &d.body, TOLERANCE).is_ok();
    let delivery = Delivery {
        id: &d.id,
        origin,
        key: &d.key,
        status,
        body: &d.body,
    };
    let v2 = verify_delivery(secret, &d.signature, &delivery, TOLERANCE).is_ok();
    (v1, v2)
}

/// A first request to `/webhook` with `key` (slow), then a duplicate with a callback to `hook`:
/// 202, and the delivery follows once the first completes.
async fn duplicate_with_callback(srv: &common::TestServer, key: &str, hook: &str) {
    let dup = duplicate_as(srv, None, key, hook).await;
    assert_eq!(dup.status(), 202);
}

/// A first request to `/webhook` with `key` (slow) as `principal` (its `Authorization`, the
/// test app's scope; none: anonymous), and its duplicate with a callback to `hook`: the
/// duplicate's answer.
async fn duplicate_as(
    srv: &common::TestServer,
    principal: Option<&str>,
    key: &str,
    hook: &str,
) -> reqwest::Response {
    let slow = Charge {
        amount: 1,
        delay_ms: 1200,
    };
    let as_principal = |r: reqwest::RequestBuilder| match principal {
        Some(p) => r.header("Authorization", p),
        None => r,
    };
    let first = as_principal(srv.post("/webhook", key)).json(&slow).send();
    let dup = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        as_principal(srv.post("/webhook", key))
            .header("Idempotency-Callback", hook)
            .json(&slow)
            .send()
            .await
            .unwrap()
    };
    let (first, dup) = tokio::join!(first, dup);
    assert_eq!(first.unwrap().status(), 201);
    dup
}

#[actix_web::test]
async fn a_delivery_for_one_receiver_does_not_verify_at_another() {
    let (a, got_a, ha) = receiver();
    let (b, _got_b, hb) = receiver();
    let srv = start(Some(
        builder()
            .webhook_receiver(format!("{a}/hooks"), [b"secret-of-a".to_vec()])
            .webhook_receiver(format!("{b}/hooks"), [b"secret-of-b".to_vec()])
            .build(),
    ));
    duplicate_with_callback(&srv, "r-1", &format!("{a}/hooks/in")).await;
    let d = first(&got_a).await;
    assert_eq!(d.id.len(), 32, "a delivery id: {:?}", d.id);
    assert_eq!(verifies(&d, b"secret-of-a", &a), (true, true), "at A");
    assert_eq!(verifies(&d, b"secret-of-b", &b), (false, false), "at B");
    // Even a receiver holding A's secret (a shared app-wide secret) refuses it by its v2 at
    // another origin.
    assert!(!verifies(&d, b"secret-of-a", &b).1, "v2 binds A's origin");
    // Another delivery, another id.
    duplicate_with_callback(&srv, "r-2", &format!("{a}/hooks/in")).await;
    let t0 = Instant::now();
    while got_a.lock().unwrap().len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(10), "no second delivery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = got_a.lock().unwrap()[1].clone();
    assert_ne!(second.id, d.id);
    ha.stop(false).await;
    hb.stop(false).await;
}

/// Receiver A's secret rotates while deliveries are in flight: the app is configured with the
/// new and the old secret, every delivery is signed under both, and A verifies it with either
/// (whichever it has switched to); receiver B's secret is unaffected.
#[actix_web::test]
async fn a_receivers_secret_rotates_with_deliveries_in_flight() {
    let (a, got_a, ha) = receiver();
    let srv = start(Some(
        builder()
            .webhook_receiver(format!("{a}/hooks"), [b"a-new".to_vec(), b"a-old".to_vec()])
            .webhook_secret(b"app-wide".as_slice())
            .build(),
    ));
    duplicate_with_callback(&srv, "rot-1", &format!("{a}/hooks/in")).await;
    let d = first(&got_a).await;
    assert_eq!(verifies(&d, b"a-new", &a), (true, true), "the new secret");
    assert_eq!(verifies(&d, b"a-old", &a), (true, true), "the old secret");
    assert_eq!(
        verifies(&d, b"app-wide", &a),
        (false, false),
        "a receiver with its own secrets is not signed under the app-wide one"
    );
    ha.stop(false).await;
}

/// Receivers owned by their tenants (`webhook_receiver_of`): tenant A naming tenant B's receiver
/// is refused (400 `callback-invalid`) — A cannot have its response delivered to B, signed under
/// B's secret, for a key A chose — while B's own duplicates are delivered there and verify.
#[actix_web::test]
async fn a_tenant_cannot_name_another_tenants_receiver() {
    let (b, got_b, hb) = receiver();
    let srv = start(Some(
        builder()
            .webhook_receiver_of("tenant-a", format!("{b}/a"), [b"secret-of-a".to_vec()])
            .webhook_receiver_of("tenant-b", format!("{b}/hooks"), [b"secret-of-b".to_vec()])
            .build(),
    ));
    let refused = duplicate_as(
        &srv,
        Some("tenant-a"),
        "b-order-42",
        &format!("{b}/hooks/in"),
    )
    .await;
    assert_eq!(refused.status(), 400);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("callback-invalid"),
        "{problem}"
    );
    let own = duplicate_as(
        &srv,
        Some("tenant-b"),
        "b-order-43",
        &format!("{b}/hooks/in"),
    )
    .await;
    assert_eq!(own.status(), 202);
    let d = first(&got_b).await;
    assert_eq!(d.key, "b-order-43", "only tenant B's delivery arrived");
    assert_eq!(verifies(&d, b"secret-of-b", &b), (true, true));
    hb.stop(false).await;
}
