//! Who and what a key belongs to: endpoint names that survive renames and moves, one name per
//! handler, accounts from a request extension, and instances that must agree on the secret.

mod common;

use actix_web::{post, web, HttpMessage, HttpResponse};
use idem::{idempotent, Idempotency, MemoryStore};
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Default)]
struct Runs(AtomicUsize);

async fn pay(runs: &Runs, who: &str) -> HttpResponse {
    let n = runs.0.fetch_add(1, Ordering::SeqCst) + 1;
    HttpResponse::Created().json(serde_json::json!({ "payment": n, "by": who }))
}

/// The handler as deployed first.
mod v1 {
    use super::*;

    #[post("/pay")]
    #[idempotent(name = "payments.create")]
    pub async fn create(runs: web::Data<Runs>) -> HttpResponse {
        pay(&runs, "v1::create").await
    }

    /// No `name`: known as `POST /pay-default`.
    #[post("/pay-default")]
    #[idempotent]
    pub async fn unnamed(runs: web::Data<Runs>) -> HttpResponse {
        pay(&runs, "v1::unnamed").await
    }
}

/// The next deploy: the handler moved to another module and was renamed; its `name` stayed.
mod billing {
    pub mod v2 {
        use super::super::*;

        #[post("/pay")]
        #[idempotent(name = "payments.create")]
        pub async fn create_payment(runs: web::Data<Runs>) -> HttpResponse {
            pay(&runs, "billing::v2::create_payment").await
        }

        #[post("/pay-default")]
        #[idempotent]
        pub async fn unnamed_renamed(runs: web::Data<Runs>) -> HttpResponse {
            pay(&runs, "billing::v2::unnamed_renamed").await
        }

        /// Claims a name another handler of the same app owns.
        #[post("/pay-again")]
        #[idempotent(name = "payments.create")]
        pub async fn squatter(runs: web::Data<Runs>) -> HttpResponse {
            pay(&runs, "billing::v2::squatter").await
        }
    }
}

fn app(
    store: MemoryStore,
    runs: web::Data<Runs>,
    v2: bool,
) -> (std::net::SocketAddr, actix_web::dev::ServerHandle) {
    let idem = common::builder().store(store).build();
    common::serve(1, move |cfg| {
        cfg.app_data(idem.clone()).app_data(runs.clone());
        if v2 {
            cfg.service(billing::v2::create_payment)
                .service(billing::v2::unnamed_renamed)
                .service(billing::v2::squatter);
        } else {
            cfg.service(v1::create).service(v1::unnamed);
        }
    })
}

async fn send(addr: std::net::SocketAddr, path: &str, key: &str) -> reqwest::Response {
    common::client()
        .post(format!("http://{addr}{path}"))
        .header("Idempotency-Key", key)
        .send()
        .await
        .expect("response")
}

/// Records written before a deploy replay after it, though the handler moved and was renamed:
/// by its `name`, or by method and route when it has none.
#[actix_web::test]
async fn records_outlive_a_handler_moved_and_renamed() {
    let store = MemoryStore::default();
    let runs = web::Data::new(Runs::default());
    let (before, old) = app(store.clone(), runs.clone(), false);
    let (after, _new) = app(store.clone(), runs.clone(), true);
    for path in ["/pay", "/pay-default"] {
        let first = send(before, path, "deploy-1").await;
        assert_eq!(first.status(), 201);
        let first: serde_json::Value = first.json().await.unwrap();
        assert!(first["by"].as_str().unwrap().starts_with("v1::"));
        let retry = send(after, path, "deploy-1").await;
        assert_eq!(
            retry.headers().get("idempotent-replayed").unwrap(),
            "true",
            "{path}"
        );
        assert_eq!(retry.json::<serde_json::Value>().await.unwrap(), first);
    }
    assert_eq!(
        runs.0.load(Ordering::SeqCst),
        2,
        "one execution per endpoint"
    );
    old.stop(false).await;
}

/// One name, one handler per app: a second handler claiming it answers 500 and names both.
#[actix_web::test]
async fn a_name_belongs_to_one_handler() {
    let runs = web::Data::new(Runs::default());
    let (addr, _h) = app(MemoryStore::default(), runs.clone(), true);
    assert_eq!(send(addr, "/pay", "a").await.status(), 201);
    let p = common::problem(send(addr, "/pay-again", "b").await, 500).await;
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("payments.create") && detail.contains("create_payment"),
        "{detail}"
    );
    assert_eq!(runs.0.load(Ordering::SeqCst), 1, "the squatter never ran");
}

/// What an app's auth middleware inserts.
#[derive(Clone)]
struct AccountId(&'static str);

impl std::fmt::Display for AccountId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Keys scoped by a request extension: two credentials of one account share records, two
/// accounts never do, whatever headers they send.
#[actix_web::test]
async fn accounts_from_a_request_extension_scope_the_keys() {
    let runs = web::Data::new(Runs::default());
    let idem = Idempotency::builder()
        .scope_by_extension::<AccountId>()
        .secret(b"scoping-test-secret-0123456789abcdef".to_vec())
        .build();
    let r = runs.clone();
    let (addr, _h) = common::serve(1, move |cfg| {
        cfg.app_data(idem.clone()).app_data(r.clone()).service(
            web::scope("")
                .wrap(actix_web::middleware::from_fn(
                    |req: actix_web::dev::ServiceRequest, next: actix_web::middleware::Next<_>| {
                        // Credentials map to accounts: `tok-a1` and `tok-a2` are both account A.
                        let account = match req.headers().get("x-token").map(|v| v.as_bytes()) {
                            Some(b"tok-a1" | b"tok-a2") => Some(AccountId("acct_a")),
                            Some(b"tok-b") => Some(AccountId("acct_b")),
                            _ => None,
                        };
                        if let Some(a) = account {
                            req.extensions_mut().insert(a);
                        }
                        next.call(req)
                    },
                ))
                .service(v1::create),
        );
    });
    let send_as = |token: &'static str| {
        common::client()
            .post(format!("http://{addr}/pay"))
            .header("Idempotency-Key", "shared-key")
            .header("x-token", token)
            .send()
    };
    let a1 = send_as("tok-a1").await.unwrap();
    assert!(a1.headers().get("idempotent-replayed").is_none());
    let a2 = send_as("tok-a2").await.unwrap();
    assert_eq!(a2.headers().get("idempotent-replayed").unwrap(), "true");
    let b = send_as("tok-b").await.unwrap();
    assert!(b.headers().get("idempotent-replayed").is_none());
    assert_eq!(runs.0.load(Ordering::SeqCst), 2);
}

/// Instances of one app on one store compare their secrets through it: the same secret agrees,
/// another secret (or none) is reported.
#[actix_web::test]
async fn instances_that_disagree_on_the_secret_are_reported() {
    let store = MemoryStore::default();
    let with = |secret: Option<&[u8]>| {
        let b = Idempotency::builder().store(store.clone()).unscoped();
        match secret {
            Some(s) => b.secret(s.to_vec()).build(),
            None => b.build(),
        }
    };
    assert!(with(Some(b"one secret")).check_secret().await.unwrap());
    assert!(with(Some(b"one secret")).check_secret().await.unwrap());
    assert!(!with(Some(b"another secret")).check_secret().await.unwrap());
    assert!(!with(None).check_secret().await.unwrap());
}

/// An unnamed handler serving as the default service (no route pattern) is named after the
/// handler, not after each request path: names live as long as the app, so a client must not be
/// able to mint one per path. One name means one operation per key across paths: the same key
/// on another path is the same key with another payload (422).
#[actix_web::test]
async fn a_default_service_does_not_mint_a_name_per_path() {
    #[idempotent]
    async fn anywhere(runs: web::Data<Runs>) -> HttpResponse {
        pay(&runs, "anywhere").await
    }
    let runs = web::Data::new(Runs::default());
    let idem = common::builder().build();
    let r = runs.clone();
    let (addr, _h) = common::serve(1, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(r.clone())
            .default_service(web::post().to(anywhere));
    });
    assert_eq!(send(addr, "/a", "k").await.status(), 201);
    common::problem(send(addr, "/b/c", "k").await, 422).await;
    assert_eq!(runs.0.load(Ordering::SeqCst), 1);
}
