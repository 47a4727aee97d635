//! The README's "Testing your handlers" example, compiled and run. `the_readme_shows_this_code`
//! keeps the README's copy identical to the code between the markers below (but for the crate
//! path: a package cannot turn its own `testing` feature on for its tests, so this file reaches
//! `idem::testing` as `idem_runtime::testing`).

// README example begins
use actix_web::http::header::AUTHORIZATION;
use actix_web::{post, web, App, HttpResponse};
use idem::{idempotent, Idempotency};
use idem_runtime::testing::{assert_idempotent, Probe};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
struct Db {
    charges: AtomicU64,
}

#[derive(serde::Deserialize)]
struct NewPayment {
    amount: u64,
}

#[post("/payments")]
#[idempotent(name = "payments.create", ttl = "24h")]
async fn create_payment(body: web::Json<NewPayment>, db: web::Data<Db>) -> HttpResponse {
    let n = db.charges.fetch_add(1, Ordering::SeqCst) + 1;
    HttpResponse::Created().json(serde_json::json!({ "charge": n, "amount": body.amount }))
}

#[actix_web::test]
async fn create_payment_is_idempotent() {
    let db = web::Data::new(Db::default());
    let app = actix_web::test::init_service(
        App::new()
            .app_data(
                Idempotency::builder()
                    .scope_by_header(AUTHORIZATION)
                    .build(),
            )
            .app_data(db.clone())
            .service(create_payment),
    )
    .await;
    let charges = db.clone();
    let probe = Probe::post("/payments", move || charges.charges.load(Ordering::SeqCst))
        .json(r#"{"amount": 1000}"#)
        .changed_body(r#"{"amount": 2000}"#)
        // Keys are scoped by the caller: a keyed request that says nobody is refused (400).
        .header("authorization", "Bearer sk_test_1");
    assert_idempotent(&app, &probe).await;
}
// README example ends

#[test]
fn the_readme_shows_this_code() {
    let this = include_str!("readme_testing.rs");
    let code = this
        .split("// README example begins\n")
        .nth(1)
        .and_then(|rest| rest.split("// README example ends").next())
        .expect("markers")
        .replace("idem_runtime::testing", "idem::testing");
    let readme = include_str!("../README.md");
    assert!(
        readme.contains(&code),
        "README.md's \"Testing your handlers\" example differs from tests/readme_testing.rs:\n{code}"
    );
}
