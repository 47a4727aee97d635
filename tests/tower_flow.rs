//! The tower layer on a real axum server, against the actix-web adapter serving the same
//! endpoint: a replay is the first response; a storm of 100 duplicates runs once; a client that
//! resets mid-handler does not cancel it; and every refusal (400, 409, 413, 422) is the same
//! problem+json, status and headers from both adapters.

mod common;

use actix_web::{post, web, HttpRequest, HttpResponse};
use axum::routing::post as axum_post;
use common::tower::{echo, serve, Runs};
use idem::{idempotent, Idempotency, MemoryStore};
use idem_runtime::tower::IdempotencyLayer;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The endpoint as the actix-web adapter serves it.
#[post("/echo")]
#[idempotent(name = "echo", ttl = "1h", max_body = "1KiB", lease = "10s")]
async fn echo_actix(runs: web::Data<Runs>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    common::tower::echo_actix(&runs, &req, body).await
}

/// The same endpoint's policy for the tower layer.
fn policy() -> &'static idem_runtime::__private_v0_1::Policy {
    idem::policy!(name = "echo", ttl = "1h", max_body = "1KiB", lease = "10s")
}

fn idem() -> Idempotency {
    common::builder().store(MemoryStore::default()).build()
}

/// The axum app: `/echo` behind the layer (`on_conflict` as `policy` says), `/wait` waiting for
/// a duplicate's first request.
fn axum_app(runs: Runs) -> SocketAddr {
    serve(move || async move {
        let idem = idem();
        let wait = idem::policy!(
            name = "wait",
            ttl = "1h",
            on_conflict = "wait",
            wait_timeout = "10s"
        );
        axum::Router::new()
            .route(
                "/echo",
                axum_post(echo).layer(IdempotencyLayer::new(&idem, policy())),
            )
            .route(
                "/wait",
                axum_post(echo).layer(IdempotencyLayer::new(&idem, wait)),
            )
            .with_state(runs)
    })
}

fn actix_app(runs: Runs) -> SocketAddr {
    let idem = idem();
    let (addr, _handle) = common::serve(1, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(web::Data::new(runs.clone()))
            .service(echo_actix);
    });
    addr
}

fn post(
    addr: SocketAddr,
    path: &str,
    key: Option<&str>,
    body: &'static str,
) -> reqwest::RequestBuilder {
    let r = common::client()
        .post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .header("authorization", "acct-1")
        .body(body);
    match key {
        Some(k) => r.header("idempotency-key", k),
        None => r,
    }
}

#[actix_web::test]
async fn a_replay_through_the_layer_is_the_first_response() {
    let runs = Runs::default();
    let app = axum_app(runs.clone());
    let first = post(app, "/echo", Some("k-1"), r#"{"amount":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let expires = first.headers().get("idempotency-expires").cloned();
    assert!(
        expires.is_some(),
        "a kept answer says how long its key is kept"
    );
    assert_eq!(first.text().await.unwrap(), r#"{"amount":1}"#);

    let again = post(app, "/echo", Some("k-1"), r#"{"amount":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.headers().get("idempotency-expires").cloned(), expires);
    assert_eq!(
        again.headers().get("content-type").unwrap(),
        "application/json"
    );
    assert!(
        again.headers().get("x-run").is_none(),
        "not a replayed header"
    );
    assert_eq!(again.text().await.unwrap(), r#"{"amount":1}"#);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[actix_web::test]
async fn a_storm_of_100_duplicates_through_the_layer_runs_once() {
    let runs = Runs::default();
    let app = axum_app(runs.clone());
    let sends = (0..100).map(|_| async move {
        let r = post(app, "/wait", Some("storm-1"), r#"{"amount":7}"#)
            .header("x-delay-ms", "300")
            .send()
            .await
            .unwrap();
        let replayed = r.headers().get("idempotent-replayed").is_some();
        (r.status().as_u16(), replayed, r.text().await.unwrap())
    });
    let answers = futures_util::future::join_all(sends).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one execution");
    assert!(answers
        .iter()
        .all(|(s, _, b)| *s == 201 && b == r#"{"amount":7}"#));
    assert_eq!(
        answers.iter().filter(|(_, replayed, _)| *replayed).count(),
        99
    );
}

#[actix_web::test]
async fn a_client_reset_mid_handler_does_not_cancel_it() {
    use tokio::io::AsyncWriteExt;
    let runs = Runs::default();
    let app = axum_app(runs.clone());
    let body = r#"{"amount":3}"#;
    let raw = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nIdempotency-Key: rst-1\r\nAuthorization: acct-1\r\n\
         X-Delay-Ms: 400\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut sock = tokio::net::TcpStream::connect(app).await.unwrap();
    sock.write_all(raw.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    sock.set_zero_linger().unwrap();
    drop(sock); // RST while the handler sleeps
    tokio::time::sleep(Duration::from_millis(700)).await;
    let retry = post(app, "/echo", Some("rst-1"), body)
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the reset did not cancel it, nor run it again"
    );
}

/// Status, `content-type`, `retry-after` and the problem document of one answer.
async fn answer(r: reqwest::RequestBuilder) -> (u16, String, Option<String>, serde_json::Value) {
    let r = r.send().await.unwrap();
    let header = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
    let (status, ct, retry) = (
        r.status().as_u16(),
        header("content-type"),
        header("retry-after"),
    );
    (
        status,
        ct.unwrap_or_default(),
        retry,
        r.json().await.unwrap(),
    )
}

#[actix_web::test]
async fn refusals_are_the_same_problems_from_both_adapters() {
    let (a_runs, t_runs) = (Runs::default(), Runs::default());
    let (actix, tower) = (actix_app(a_runs.clone()), axum_app(t_runs.clone()));
    let long_key = "k".repeat(300);
    let big: &'static str = Box::leak("x".repeat(2048).into_boxed_str());
    for app in [actix, tower] {
        // A first request for the mismatch, and one in flight for the conflict.
        assert_eq!(
            post(app, "/echo", Some("used"), r#"{"a":1}"#)
                .send()
                .await
                .unwrap()
                .status(),
            201
        );
        tokio::spawn(
            post(app, "/echo", Some("busy"), "{}")
                .header("x-delay-ms", "1500")
                .send(),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cases: [(&str, Option<&str>, &'static str, u16); 5] = [
        ("missing key", None, "{}", 400),
        ("invalid key", Some(&long_key), "{}", 400),
        (
            "key reused for another payload",
            Some("used"),
            r#"{"a":2}"#,
            422,
        ),
        ("in progress", Some("busy"), "{}", 409),
        ("body over max_body", Some("big"), big, 413),
    ];
    for (case, key, body, status) in cases {
        let from_actix = answer(post(actix, "/echo", key, body)).await;
        let from_tower = answer(post(tower, "/echo", key, body)).await;
        assert_eq!(from_actix.0, status, "{case}: actix status");
        assert_eq!(from_actix.1, "application/problem+json", "{case}");
        assert_eq!(
            from_tower, from_actix,
            "{case}: the tower layer answers as actix-web does"
        );
    }
    assert_eq!(a_runs.load(Ordering::SeqCst), 2);
    assert_eq!(t_runs.load(Ordering::SeqCst), 2);
}

/// What an auth middleware resolved a request to: the account keys are scoped by.
#[derive(Clone)]
struct Account(String);

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `scope_by_extension` under tower: the account an auth middleware put in the request's
/// extensions scopes the key, so two accounts with one key run twice, and each replays its own.
#[actix_web::test]
async fn an_extension_scopes_keys_behind_the_layer() {
    use axum::extract::Request;
    use axum::middleware::{from_fn, Next};
    let runs = Runs::default();
    let app = serve({
        let runs = runs.clone();
        move || async move {
            let idem = Idempotency::builder()
                .store(MemoryStore::default())
                .scope_by_extension::<Account>()
                .build();
            let auth = async |mut req: Request, next: Next| {
                let account = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(|v| Account(format!("acct-of-{v}")));
                if let Some(account) = account {
                    req.extensions_mut().insert(account);
                }
                next.run(req).await
            };
            axum::Router::new()
                .route(
                    "/echo",
                    axum_post(echo).layer(IdempotencyLayer::new(&idem, policy())),
                )
                .layer(from_fn(auth))
                .with_state(runs)
        }
    });
    let send = |who: &'static str, body: &'static str| {
        common::client()
            .post(format!("http://{app}/echo"))
            .header("authorization", who)
            .header("idempotency-key", "shared-key")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let a = send("alice", r#"{"a":1}"#).await.unwrap();
    assert_eq!(a.text().await.unwrap(), r#"{"a":1}"#);
    let b = send("bob", r#"{"b":2}"#).await.unwrap();
    assert_eq!(b.status(), 201, "another account's key is its own");
    assert_eq!(b.text().await.unwrap(), r#"{"b":2}"#);
    let a2 = send("alice", r#"{"a":1}"#).await.unwrap();
    assert_eq!(a2.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(a2.text().await.unwrap(), r#"{"a":1}"#);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[post("/refund")]
#[idempotent(name = "refund", ttl = "1h", on_conflict = "accepted", lease = "10s")]
async fn refund_actix(runs: web::Data<Runs>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    common::tower::echo_actix(&runs, &req, body).await
}

/// `on_conflict = "accepted"` behind the layer: a duplicate in flight gets 202 and the `Location`
/// of a status resource (`StatusService`), which answers 202 while the first request runs and
/// its response once done — the same answers, byte for byte, as the actix-web adapter's.
#[actix_web::test]
async fn accepted_and_the_status_resource_match_the_actix_adapter() {
    use idem_runtime::tower::StatusService;
    let (a_runs, t_runs) = (Runs::default(), Runs::default());
    let actix = {
        let (idem, a_runs) = (idem(), a_runs.clone());
        let (addr, _handle) = common::serve(1, move |cfg| {
            cfg.app_data(idem.clone())
                .app_data(web::Data::new(a_runs.clone()))
                .service(refund_actix)
                .service(idem.status_service());
        });
        addr
    };
    let tower = serve({
        let runs = t_runs.clone();
        move || async move {
            let idem = idem();
            let policy = idem::policy!(
                name = "refund",
                ttl = "1h",
                on_conflict = "accepted",
                lease = "10s"
            );
            axum::Router::new()
                .route(
                    "/refund",
                    axum_post(echo).layer(IdempotencyLayer::new(&idem, policy)),
                )
                .route_service("/idempotency/{id}", StatusService::new(&idem))
                .with_state(runs)
        }
    });
    /// Status, `location`, body.
    async fn seen(r: reqwest::RequestBuilder) -> (u16, Option<String>, String) {
        let r = r.send().await.unwrap();
        let location = r
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned());
        (r.status().as_u16(), location, r.text().await.unwrap())
    }
    let mut answers = Vec::new();
    for app in [actix, tower] {
        tokio::spawn(
            post(app, "/refund", Some("r-1"), r#"{"r":1}"#)
                .header("x-delay-ms", "700")
                .send(),
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        let dup = seen(post(app, "/refund", Some("r-1"), r#"{"r":1}"#)).await;
        assert_eq!(dup.0, 202, "a duplicate in flight is accepted");
        let location = dup.1.clone().expect("a Location");
        assert!(location.starts_with("/idempotency/"), "{location}");
        let get = || {
            common::client()
                .get(format!("http://{app}{location}"))
                .header("authorization", "acct-1")
        };
        let running = seen(get()).await;
        tokio::time::sleep(Duration::from_millis(900)).await;
        let done = get().send().await.unwrap();
        assert_eq!(done.status(), 201);
        assert_eq!(done.headers().get("idempotent-replayed").unwrap(), "true");
        let done = done.text().await.unwrap();
        let other = common::client()
            .get(format!("http://{app}{location}"))
            .header("authorization", "acct-2");
        let foreign = seen(other).await.0;
        answers.push((dup, running, done, foreign));
    }
    assert_eq!(answers[0].3, 404, "another principal does not see it");
    assert_eq!(
        answers[1], answers[0],
        "the layer answers as actix-web does"
    );
    assert_eq!(a_runs.load(Ordering::SeqCst), 1);
    assert_eq!(t_runs.load(Ordering::SeqCst), 1);
}

/// One delivery a webhook receiver got: path, signature header, status header, body.
type Delivery = (String, String, String, Vec<u8>);

/// `on_conflict = "webhook"` behind the layer: duplicates get 202, and once the first request
/// completes each duplicate's callback gets the first response, signed; without a callback a
/// duplicate gets 400. One run.
#[actix_web::test]
async fn webhooks_behind_the_layer_deliver_the_first_response() {
    const SECRET: &[u8] = b"tower-webhook-secret";
    let got: std::sync::Arc<std::sync::Mutex<Vec<Delivery>>> = Default::default();
    let receiver = {
        let got = got.clone();
        let (addr, _handle) = common::serve(1, move |cfg| {
            let got = got.clone();
            cfg.default_service(web::post().to(move |req: HttpRequest, body: web::Bytes| {
                let got = got.clone();
                async move {
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .map(|v| v.to_str().unwrap_or_default().to_owned())
                            .unwrap_or_default()
                    };
                    let d = (
                        req.path().to_owned(),
                        h("idempotency-signature"),
                        h("idempotency-status"),
                        body.to_vec(),
                    );
                    got.lock().unwrap().push(d);
                    HttpResponse::NoContent().finish()
                }
            }));
        });
        format!("http://{addr}")
    };
    let runs = Runs::default();
    let hooks = format!("{receiver}/hooks");
    let app = serve({
        let runs = runs.clone();
        move || async move {
            let idem = common::builder()
                .store(MemoryStore::default())
                .webhook_allow([hooks])
                .webhook_secret(SECRET)
                .build();
            let policy = idem::policy!(
                name = "hook",
                ttl = "1h",
                on_conflict = "webhook",
                lease = "10s"
            );
            axum::Router::new()
                .route(
                    "/hook",
                    axum_post(echo).layer(IdempotencyLayer::new(&idem, policy)),
                )
                .with_state(runs)
        }
    });
    let first = tokio::spawn(
        post(app, "/hook", Some("h-1"), r#"{"h":1}"#)
            .header("x-delay-ms", "500")
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    for i in 0..3 {
        let dup = post(app, "/hook", Some("h-1"), r#"{"h":1}"#)
            .header("idempotency-callback", format!("{receiver}/hooks/{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(dup.status(), 202, "a duplicate is promised a webhook");
    }
    let (status, ct, _, p) = answer(post(app, "/hook", Some("h-1"), r#"{"h":1}"#)).await;
    assert_eq!(
        (status, ct.as_str()),
        (400, "application/problem+json"),
        "no callback: {p}"
    );
    assert_eq!(p["type"], "urn:idem:problem:callback-invalid");
    assert_eq!(first.await.unwrap().unwrap().status(), 201);
    let started = std::time::Instant::now();
    while got.lock().unwrap().len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "deliveries missing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deliveries = got.lock().unwrap().clone();
    assert_eq!(deliveries.len(), 3);
    for (path, signature, status, body) in &deliveries {
        assert!(path.starts_with("/hooks/"), "{path}");
        assert_eq!(status, "201");
        assert_eq!(body, br#"{"h":1}"#);
        idem::webhook::verify(
            SECRET,
            signature,
            "h-1",
            201,
            body,
            Duration::from_secs(300),
        )
        .expect("a signed delivery");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A store that is down is the same 503 from both adapters (the endpoint fails closed): the
/// Redis behind both apps is killed.
#[actix_web::test]
async fn a_store_down_is_the_same_503_from_both_adapters() {
    use common::redis::{available, RedisServer};
    use idem::RedisStore;
    if !available("a_store_down_is_the_same_503_from_both_adapters") {
        return;
    }
    let mut redis = RedisServer::start();
    let with = |store: RedisStore| {
        common::builder()
            .store(store)
            .store_timeout(Duration::from_millis(300))
            .build()
    };
    let idem_a = with(RedisStore::connect(&redis.url()).await.expect("connect"));
    let runs = Runs::default();
    let actix = {
        let runs = runs.clone();
        let (addr, _handle) = common::serve(1, move |cfg| {
            cfg.app_data(idem_a.clone())
                .app_data(web::Data::new(runs.clone()))
                .service(echo_actix);
        });
        addr
    };
    let url = redis.url();
    let tower = serve({
        let runs = runs.clone();
        move || async move {
            let idem = with(RedisStore::connect(&url).await.expect("connect"));
            axum::Router::new()
                .route(
                    "/echo",
                    axum_post(echo).layer(IdempotencyLayer::new(&idem, policy())),
                )
                .with_state(runs)
        }
    });
    redis.kill();
    let from_actix = answer(post(actix, "/echo", Some("down-1"), "{}")).await;
    let from_tower = answer(post(tower, "/echo", Some("down-1"), "{}")).await;
    assert_eq!(from_actix.0, 503, "{from_actix:?}");
    assert!(from_actix.2.is_some(), "with Retry-After");
    assert_eq!(from_tower, from_actix);
    assert_eq!(runs.load(Ordering::SeqCst), 0, "nothing ran unprotected");
}
