//! The main job as a newcomer runs it: the `payments` example as its own process, driven over
//! loopback the way the README's curl commands do. The HTTP contract's tests run against both
//! demos, actix-web's and axum's (`DEMOS`); the admin routes and the checkout form are the actix
//! demo's own.

mod common;

use common::demo::{executions, executions_now, start_demo, start_demo_of, DEMOS};
// `idem::testing` with the `testing` feature; a package cannot turn its own feature on for its tests.
use idem_runtime::testing::{assert_idempotent_at, Probe};

#[actix_web::test]
async fn curl_twice_one_execution() {
    for demo in DEMOS {
        let (_demo, base) = start_demo_of(demo, None, 100).await;
        curl_twice(&base).await;
    }
}

#[actix_web::test]
async fn curl_twice_one_execution_on_redis() {
    if !common::redis::available("curl_twice_one_execution_on_redis") {
        return;
    }
    for demo in DEMOS {
        curl_twice_on_redis(demo).await;
    }
}

async fn curl_twice_on_redis(demo: &str) {
    let redis = common::redis::RedisServer::start();
    let port = common::demo::free_port();
    let env = [
        ("PAYMENT_DELAY_MS", "100".to_owned()),
        ("IDEM_REDIS_URL", redis.url()),
    ];
    let (_demo, log) = common::demo::start_example_logged(demo, port, &env).await;
    let base = format!("http://127.0.0.1:{port}");
    curl_twice(&base).await;
    assert!(redis.calls("evalsha") >= 4, "the demo used the Redis store");
    // Encryption at rest is on in the demo: Redis holds no payment in clear.
    let keys = redis.cli(&["KEYS", "*"]).expect("KEYS");
    let mut dump = String::new();
    for key in keys.lines().filter(|k| !k.is_empty()) {
        dump.push_str(&redis.cli(&["GET", key]).unwrap_or_default());
    }
    assert!(!dump.is_empty(), "records were written");
    // Words long enough not to turn up by chance in ciphertext.
    for clear in ["succeeded", "pay_000"] {
        assert!(
            !dump.contains(clear),
            "`{clear}` is readable in Redis: {dump}"
        );
    }
    // Without IDEM_SECRET, it says it runs on its public development secret.
    let stderr = std::fs::read_to_string(log).expect("the demo's stderr");
    assert!(stderr.contains("DEVELOPMENT secret"), "{stderr}");
}

/// The README's two curls (and a cached 400), checked against `GET /stats`.
async fn curl_twice(base: &str) {
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let pay = |key: &'static str, amount: i64| {
        c.post(format!("{base}/payments"))
            .header("Idempotency-Key", key)
            .json(&serde_json::json!({ "amount": amount, "currency": "EUR" }))
            .send()
    };

    let first = pay("readme-1", 1000).await.unwrap();
    assert_eq!(first.status(), 201);
    let location = first.headers().get("location").cloned().unwrap();
    let body: serde_json::Value = first.json().await.unwrap();
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["amount"], 1000);

    let second = pay("readme-1", 1000).await.unwrap();
    assert_eq!(second.status(), 201);
    assert_eq!(second.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(second.headers().get("location"), Some(&location));
    assert_eq!(second.json::<serde_json::Value>().await.unwrap(), body);

    assert_eq!(executions(base).await["payments"], 1);

    // The payment the replay points at exists once.
    let got = c
        .get(format!("{base}{}", location.to_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);

    // Invalid amount: the handler's own 400, cached like any response (Stripe does the same).
    let bad = pay("readme-2", 0).await.unwrap();
    assert_eq!(bad.status(), 400);
    let again = pay("readme-2", 0).await.unwrap();
    assert_eq!(again.status(), 400);
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(executions(base).await["payments"], 2);
}

/// `POST /transfers` waits for its twin; `POST /refunds` answers a twin with 202 + a status
/// resource that ends with the refund.
/// The testing kit on the demo itself: each JSON endpoint survives a retry, parallel
/// duplicates, a changed body and a client hanging up mid-payment.
#[actix_web::test]
async fn the_demo_passes_the_testing_kit() {
    for demo in DEMOS {
        testing_kit(demo).await;
    }
}

async fn testing_kit(demo: &str) {
    let (_demo, base) = start_demo_of(demo, None, 300).await;
    for (path, endpoint) in [
        ("/payments", "payments"),
        ("/transfers", "transfers"),
        ("/refunds", "refunds"),
    ] {
        let at = base.clone();
        let probe = Probe::post(path, move || executions_now(&at, endpoint))
            .json(r#"{"amount": 1000, "currency": "EUR"}"#)
            .changed_body(r#"{"amount": 2000, "currency": "EUR"}"#);
        assert_idempotent_at(&base, &probe).await;
    }
}

#[actix_web::test]
async fn transfers_wait_and_refunds_accept() {
    for demo in DEMOS {
        transfers_and_refunds(demo).await;
    }
}

async fn transfers_and_refunds(demo: &str) {
    let (_demo, base) = start_demo_of(demo, None, 100).await;
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let send = |path: &'static str, key: &'static str| {
        c.post(format!("{base}{path}"))
            .header("Idempotency-Key", key)
            .json(&serde_json::json!({ "amount": 700, "currency": "USD" }))
            .send()
    };

    let (a, b) = tokio::join!(send("/transfers", "t1"), send("/transfers", "t1"));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (201, 201));
    let replayed = [&a, &b]
        .iter()
        .filter(|r| r.headers().contains_key("idempotent-replayed"))
        .count();
    assert_eq!(replayed, 1, "one ran, the other waited for its response");
    assert_eq!(a.text().await.unwrap(), b.text().await.unwrap());

    let first = {
        let req = send("/refunds", "r1");
        actix_web::rt::spawn(req)
    };
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let twin = send("/refunds", "r1").await.unwrap();
    assert_eq!(twin.status(), 202);
    let location = twin
        .headers()
        .get("location")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(first.await.unwrap().unwrap().status(), 201);
    let done = c.get(format!("{base}{location}")).send().await.unwrap();
    assert_eq!(done.status(), 201);
    assert_eq!(done.headers().get("idempotent-replayed").unwrap(), "true");

    assert_eq!(
        executions(&base).await,
        serde_json::json!({ "payments": 0, "transfers": 1, "refunds": 1, "orders": 0 })
    );
}

/// `GET /metrics` shows idem's counters after a few requests; the admin route is off without
/// `IDEM_ADMIN_TOKEN`.
#[actix_web::test]
async fn metrics_show_outcomes_and_admin_is_off_by_default() {
    for demo in DEMOS {
        metrics_and_no_admin(demo).await;
    }
}

async fn metrics_and_no_admin(demo: &str) {
    let (_demo, base) = start_demo_of(demo, None, 10).await;
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    for _ in 0..2 {
        let r = c
            .post(format!("{base}/payments"))
            .header("Idempotency-Key", "m1")
            .json(&serde_json::json!({ "amount": 5, "currency": "EUR" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let text = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"idem_requests_total{endpoint="payments.create",outcome="executed"} 1"#,
        r#"idem_requests_total{endpoint="payments.create",outcome="replayed"} 1"#,
        r#"payments_demo_executions_total{endpoint="payments"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from:\n{text}"
        );
    }
    assert!(text.contains("idem_store_call_seconds"));
    let admin = c
        .post(format!("{base}/admin/idempotency/inspect"))
        .json(&serde_json::json!({ "endpoint": "payments.create", "key": "m1" }))
        .header("Authorization", "Bearer anything")
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 404, "no IDEM_ADMIN_TOKEN, no admin route");
}

/// With `IDEM_ADMIN_TOKEN`, an operator inspects a payment's record, purges it, and erases the
/// account's records.
#[actix_web::test]
async fn admin_route_inspects_and_purges_with_the_token() {
    let port = common::demo::free_port();
    let env = [
        ("PAYMENT_DELAY_MS", "10".to_string()),
        ("IDEM_ADMIN_TOKEN", "op-secret".to_string()),
    ];
    let _demo = common::demo::start_example("payments", port, &env).await;
    let base = format!("http://127.0.0.1:{port}");
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let pay = || {
        c.post(format!("{base}/payments"))
            .header("Idempotency-Key", "support-1")
            .header("Authorization", "Bearer sk_test_a1")
            .json(&serde_json::json!({ "amount": 5, "currency": "EUR" }))
            .send()
    };
    assert_eq!(pay().await.unwrap().status(), 201);
    // The key travels in the body; the record is named by the endpoint's name and the account.
    let record = serde_json::json!({
        "endpoint": "payments.create",
        "principal": "acct_a",
        "key": "support-1",
    });
    let wrong = c
        .post(format!("{base}/admin/idempotency/inspect"))
        .header("Authorization", "Bearer nope")
        .body("not even JSON: the token is checked first")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 404);
    let admin = |action: &str| {
        let req = c
            .post(format!("{base}/admin/idempotency/{action}"))
            .header("Authorization", "Bearer op-secret")
            .json(&record);
        async move {
            req.send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let info = admin("inspect").await;
    assert_eq!(info["record"]["state"], "completed");
    assert_eq!(info["record"]["status"], 201);
    assert_eq!(info["record"]["attempt"], 1);
    assert_eq!(admin("purge").await["purged"], true);
    let gone = admin("inspect").await;
    assert!(gone["record"].is_null());

    // Erasure of the account: its record (made again) goes, nothing else is touched.
    assert_eq!(pay().await.unwrap().status(), 201);
    let erased: serde_json::Value = c
        .post(format!("{base}/admin/idempotency/erase"))
        .header("Authorization", "Bearer op-secret")
        .json(&serde_json::json!({ "principal": "acct_a" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(erased["erased"], 1);
    assert!(admin("inspect").await["record"].is_null());
}

/// Keys belong to the account, not to the credential: a rotated API key of the same account
/// replays, another account runs its own payment with the same key, an unknown key is 401, and
/// no `Authorization` at all is the public account.
#[actix_web::test]
async fn keys_are_scoped_by_the_account_behind_the_api_key() {
    for demo in DEMOS {
        scoped_by_account(demo).await;
    }
}

async fn scoped_by_account(demo: &str) {
    let (_demo, base) = start_demo_of(demo, None, 10).await;
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let pay = |api_key: Option<&'static str>| {
        let mut req = c
            .post(format!("{base}/payments"))
            .header("Idempotency-Key", "same-key")
            .json(&serde_json::json!({ "amount": 700, "currency": "EUR" }));
        if let Some(k) = api_key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        req.send()
    };
    let a1 = pay(Some("sk_test_a1")).await.unwrap();
    assert_eq!(a1.status(), 201);
    assert!(a1.headers().get("idempotent-replayed").is_none());
    let a1: serde_json::Value = a1.json().await.unwrap();
    let a2 = pay(Some("sk_test_a2")).await.unwrap();
    assert_eq!(a2.status(), 201);
    assert_eq!(
        a2.headers().get("idempotent-replayed").unwrap(),
        "true",
        "a rotated key of the same account replays"
    );
    assert_eq!(a2.json::<serde_json::Value>().await.unwrap(), a1);
    let b1 = pay(Some("sk_test_b1")).await.unwrap();
    assert_eq!(b1.status(), 201);
    assert!(
        b1.headers().get("idempotent-replayed").is_none(),
        "another account never gets account A's payment"
    );
    assert_ne!(
        b1.json::<serde_json::Value>().await.unwrap()["id"],
        a1["id"]
    );
    let unknown = pay(Some("sk_test_nope")).await.unwrap();
    assert_eq!(unknown.status(), 401);
    assert_eq!(
        unknown.headers()["content-type"],
        "application/problem+json"
    );
    let p: serde_json::Value = unknown.json().await.unwrap();
    assert!(p["detail"].as_str().unwrap().contains("API key"));
    let anonymous = pay(None).await.unwrap();
    assert_eq!(anonymous.status(), 201, "anonymous curl still works");
    assert!(anonymous.headers().get("idempotent-replayed").is_none());
    assert_eq!(
        executions(&base).await["payments"],
        3,
        "acct_a once, acct_b once, acct_public once"
    );
}

/// The checkout form's HTTP contract: a hidden key per render, 303 to the receipt, the same 303
/// for every submission of one form (even two at once), a new key on the next render.
#[actix_web::test]
async fn checkout_form_places_one_order_per_render() {
    let (_demo, base) = start_demo(None, 300).await;
    let c = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let render = || async {
        let page = c
            .get(format!("{base}/checkout"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let at = page.find("name=\"_idem\" value=\"").expect("a hidden key") + 20;
        page[at..at + 36].to_owned()
    };
    let key = render().await;
    assert_ne!(render().await, key, "every render mints a new key");
    let submit = |key: String| {
        c.post(format!("{base}/checkout"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("item=Rust+in+Action&quantity=2&_idem={key}"))
            .send()
    };
    let (a, b) = tokio::join!(submit(key.clone()), submit(key.clone()));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (303, 303));
    let receipt = a.headers()["location"].to_str().unwrap().to_owned();
    assert!(receipt.starts_with("/receipts/ord_"), "{receipt}");
    assert_eq!(b.headers()["location"], receipt.as_str());
    assert_eq!(
        submit(key).await.unwrap().headers()["location"],
        receipt.as_str()
    );
    assert_eq!(executions(&base).await["orders"], 1);
    let page = c.get(format!("{base}{receipt}")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("2 × Rust in Action"));

    // A form without its key is refused before anything runs.
    let missing = c
        .post(format!("{base}/checkout"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("item=x&quantity=1")
        .send()
        .await
        .unwrap();
    common::problem(missing, 400).await;
    assert_eq!(executions(&base).await["orders"], 1);
}
