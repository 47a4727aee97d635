//! Who a request belongs to, when headers lie or are missing, on both adapters (real servers,
//! memory store): a scope header sent twice — two lines, as a gateway that appends its
//! authenticated value behind the client's produces, or a comma list — is a 400, never the
//! first value's replay; a keyed request without a principal is refused unless the app allows
//! anonymous requests, which then run in a scope of their own; requests without a key are not
//! concerned.

mod common;

use actix_web::http::header::HeaderName;
use actix_web::{post, web, HttpRequest, HttpResponse};
use axum::routing::post as axum_post;
use common::tower::{echo, serve, Runs};
use idem::{idempotent, Idempotency, IdempotencyBuilder, MemoryStore, Scoped};
use idem_runtime::tower::IdempotencyLayer;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

#[post("/pay")]
#[idempotent(name = "pay", ttl = "1h")]
async fn pay(runs: web::Data<Runs>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    common::tower::echo_actix(&runs, &req, body).await
}

#[post("/optional")]
#[idempotent(name = "optional", ttl = "1h", required = false)]
async fn optional(runs: web::Data<Runs>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    common::tower::echo_actix(&runs, &req, body).await
}

/// What an auth middleware would insert; none does here.
struct Account(String);

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How the app scopes its keys.
#[derive(Clone, Copy, Debug)]
enum Scope {
    Header,
    Extension,
}

fn builder(scope: Scope) -> IdempotencyBuilder<Scoped> {
    let b = Idempotency::builder().store(MemoryStore::default());
    match scope {
        Scope::Header => b.scope_by_header(HeaderName::from_static("x-account-id")),
        Scope::Extension => b.scope_by_extension::<Account>(),
    }
}

/// The two endpoints on the actix-web adapter.
fn actix_app(idem: Idempotency, runs: Runs) -> SocketAddr {
    let runs = web::Data::new(runs);
    common::serve(1, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(runs.clone())
            .service(pay)
            .service(optional);
    })
    .0
}

/// The same endpoints behind the tower layer, in an axum app.
fn axum_app(idem: Idempotency, runs: Runs) -> SocketAddr {
    serve(move || async move {
        let pay_policy = idem::policy!(name = "pay", ttl = "1h");
        let optional_policy = idem::policy!(name = "optional", ttl = "1h", required = false);
        axum::Router::new()
            .route(
                "/pay",
                axum_post(echo).layer(IdempotencyLayer::new(&idem, pay_policy)),
            )
            .route(
                "/optional",
                axum_post(echo).layer(IdempotencyLayer::new(&idem, optional_policy)),
            )
            .with_state(runs)
    })
}

/// Starts `adapter`'s app on `idem`.
fn app(adapter: &str, idem: Idempotency, runs: Runs) -> SocketAddr {
    match adapter {
        "actix" => actix_app(idem, runs),
        _ => axum_app(idem, runs),
    }
}

/// POSTs `{"n":1}` to `path` with `key` (if any) and these `X-Account-Id` lines: status,
/// whether replayed, the body.
async fn post(
    addr: SocketAddr,
    path: &str,
    key: Option<&str>,
    accounts: &[&str],
) -> (u16, bool, Value) {
    let accounts: Vec<&[u8]> = accounts.iter().map(|a| a.as_bytes()).collect();
    post_raw(addr, path, key, &accounts).await
}

/// [`post`] with raw `X-Account-Id` values.
async fn post_raw(
    addr: SocketAddr,
    path: &str,
    key: Option<&str>,
    accounts: &[&[u8]],
) -> (u16, bool, Value) {
    let mut req = common::client()
        .post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(r#"{"n":1}"#);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    for a in accounts {
        let value = reqwest::header::HeaderValue::from_bytes(a).expect("a header value");
        req = req.header("x-account-id", value);
    }
    let resp = req.send().await.expect("the app answers");
    let status = resp.status().as_u16();
    let replayed = resp.headers().contains_key("idempotent-replayed");
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, replayed, body)
}

const ADAPTERS: [&str; 2] = ["actix", "tower"];

/// The victim's operation is never replayed to a request whose scope header is doubled — as
/// two lines or as one comma list — whichever value comes first: 400 `scope-ambiguous`, and
/// nothing runs.
#[actix_web::test]
async fn a_doubled_scope_header_is_refused_not_resolved_to_its_first_value() {
    for adapter in ADAPTERS {
        let runs = Runs::default();
        let addr = app(adapter, builder(Scope::Header).build(), runs.clone());
        let (status, _, _) = post(addr, "/pay", Some("K"), &["victim"]).await;
        assert_eq!(status, 201, "{adapter}");
        for accounts in [&["victim", "attacker"][..], &["victim, attacker"]] {
            let (status, replayed, body) = post(addr, "/pay", Some("K"), accounts).await;
            assert_eq!(
                (status, replayed),
                (400, false),
                "{adapter} {accounts:?}: {body}"
            );
            assert_eq!(
                body["type"], "urn:idem:problem:scope-ambiguous",
                "{adapter}"
            );
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "{adapter}: nothing else ran"
        );
        // The victim's own retry still replays.
        let (status, replayed, _) = post(addr, "/pay", Some("K"), &["victim"]).await;
        assert_eq!((status, replayed), (201, true), "{adapter}");
    }
}

/// A keyed request that does not say who it belongs to — no scope header, no extension set by
/// middleware — is refused (400 `principal-missing`) and runs nothing; without a key it runs.
#[actix_web::test]
async fn a_keyed_request_without_a_principal_is_refused() {
    for adapter in ADAPTERS {
        for scope in [Scope::Header, Scope::Extension] {
            let runs = Runs::default();
            let addr = app(adapter, builder(scope).build(), runs.clone());
            let (status, _, body) = post(addr, "/pay", Some("K"), &[]).await;
            assert_eq!(status, 400, "{adapter} {scope:?}: {body}");
            assert_eq!(body["type"], "urn:idem:problem:principal-missing");
            let (status, _, body) = post(addr, "/optional", Some("K2"), &[]).await;
            assert_eq!(status, 400, "{adapter} {scope:?}: {body}");
            assert_eq!(
                runs.load(Ordering::SeqCst),
                0,
                "{adapter} {scope:?}: nothing ran"
            );
            let (status, _, _) = post(addr, "/optional", None, &[]).await;
            assert_eq!(status, 201, "{adapter} {scope:?}: no key, no scope needed");
            assert_eq!(runs.load(Ordering::SeqCst), 1);
        }
    }
}

/// With `allow_anonymous()`, keyed requests without a principal run, in one anonymous scope of
/// their own: an anonymous retry replays the anonymous operation, and never an account's under
/// the same key (nor the other way round).
#[actix_web::test]
async fn anonymous_requests_run_in_a_scope_of_their_own_when_allowed() {
    for adapter in ADAPTERS {
        let runs = Runs::default();
        let idem = builder(Scope::Header).allow_anonymous().build();
        let addr = app(adapter, idem, runs.clone());
        let (status, replayed, _) = post(addr, "/pay", Some("K"), &[]).await;
        assert_eq!((status, replayed), (201, false), "{adapter}");
        let (status, replayed, _) = post(addr, "/pay", Some("K"), &[]).await;
        assert_eq!(
            (status, replayed),
            (201, true),
            "{adapter}: the anonymous replay"
        );
        let (status, replayed, _) = post(addr, "/pay", Some("K"), &["victim"]).await;
        assert_eq!(
            (status, replayed),
            (201, false),
            "{adapter}: the account's own"
        );
        let (status, replayed, _) = post(addr, "/pay", Some("K"), &[""]).await;
        assert_eq!(
            (status, replayed),
            (201, true),
            "{adapter}: an empty value is anonymous"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 2, "{adapter}");
        // Ambiguity is refused even so.
        let (status, _, _) = post(addr, "/pay", Some("K"), &["victim", "attacker"]).await;
        assert_eq!(status, 400, "{adapter}");
    }
}

/// Two accounts whose ids differ only in bytes that are not UTF-8 (a gateway forwarding a
/// Latin-1 user name) would be one principal if read lossily: such a value is refused (400
/// `scope-ambiguous`), never run.
#[actix_web::test]
async fn a_scope_header_that_is_not_utf8_is_refused() {
    for adapter in ADAPTERS {
        let runs = Runs::default();
        let addr = app(adapter, builder(Scope::Header).build(), runs.clone());
        for name in [b"j\xFCrgen".as_slice(), b"j\xF6rgen"] {
            let (status, _, body) = post_raw(addr, "/pay", Some("K"), &[name]).await;
            assert_eq!(status, 400, "{adapter}: {body}");
            assert_eq!(body["type"], "urn:idem:problem:scope-ambiguous");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 0, "{adapter}: nothing ran");
    }
}
