//! OpenAPI docs of idempotent handlers (`idem::openapi`, feature `utoipa`): the key parameter,
//! the replay header, the problem responses and `x-idempotency` appear without being written,
//! and `#[utoipa::path]` works above or below `#[idempotent]` — same document, same behaviour.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::{post, web, HttpResponse};
use idem::idempotent;
// `idem::openapi` with the `utoipa` feature; a package cannot turn its own feature on for its tests.
use idem_runtime::openapi::IdempotencyDocs;
use idem_runtime::testing::{assert_idempotent, Probe};
use serde_json::{json, Value};
use utoipa::OpenApi;

#[derive(serde::Deserialize, utoipa::ToSchema)]
struct NewPayment {
    #[allow(dead_code)]
    amount: u64,
}

static RAN: AtomicU64 = AtomicU64::new(0);

/// Annotation above the attribute.
#[utoipa::path(post, path = "/above", responses((status = 201, description = "Paid")))]
#[idempotent(name = "payments.above", ttl = "24h")]
async fn above(body: web::Json<NewPayment>) -> HttpResponse {
    RAN.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Created().json(json!({ "amount": body.amount }))
}

/// Annotation below the attribute.
#[idempotent(name = "payments.below", ttl = "24h")]
#[utoipa::path(post, path = "/below", responses((status = 201, description = "Paid")))]
async fn below(body: web::Json<NewPayment>) -> HttpResponse {
    RAN.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Created().json(json!({ "amount": body.amount }))
}

/// With actix's route macro, utoipa reads the route from it; annotation first.
#[utoipa::path(responses((status = 201, description = "Paid")))]
#[post("/routed_above/{account}")]
#[idempotent(name = "routed", guarantee = "result")]
async fn routed_above(account: web::Path<String>, body: web::Json<NewPayment>) -> HttpResponse {
    RAN.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Created().json(json!({ "account": *account, "amount": body.amount }))
}

/// The same with `#[idempotent]` above both.
#[idempotent(name = "routed.below", guarantee = "result")]
#[utoipa::path(responses((status = 201, description = "Paid")))]
#[post("/routed_below/{account}")]
async fn routed_below(account: web::Path<String>, body: web::Json<NewPayment>) -> HttpResponse {
    RAN.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Created().json(json!({ "account": *account, "amount": body.amount }))
}

/// Keys from a query parameter or a cookie, optional; duplicates get 202 + a status resource.
#[utoipa::path(
    post,
    path = "/sources",
    responses(
        (status = 200, description = "Done"),
        (status = 409, description = "The handler's own conflict")
    )
)]
#[idempotent(
    key = ["query:idem_key", "cookie:idem"],
    required = false,
    on_conflict = "accepted",
    on_store_error = "proceed"
)]
async fn sources() -> HttpResponse {
    HttpResponse::Ok().finish()
}

/// Duplicates get their answer by signed webhook.
#[utoipa::path(post, path = "/hooked", responses((status = 201, description = "Done")))]
#[idempotent(on_conflict = "webhook", guarantee = "semantic", fingerprint = ["/amount"])]
async fn hooked() -> HttpResponse {
    HttpResponse::Created().finish()
}

/// Not idempotent: left alone.
#[utoipa::path(post, path = "/plain", responses((status = 200, description = "Done")))]
#[allow(dead_code)] // documented, not served
async fn plain() -> HttpResponse {
    HttpResponse::Ok().finish()
}

#[derive(OpenApi)]
#[openapi(
    paths(above, below, routed_above, routed_below, sources, hooked, plain),
    modifiers(&IdempotencyDocs)
)]
struct ApiDoc;

fn doc() -> Value {
    serde_json::to_value(ApiDoc::openapi()).expect("the document serializes")
}

fn operation(doc: &Value, path: &str) -> Value {
    doc["paths"][path]["post"].clone()
}

/// The operation without what differs by design between two handlers (ids, doc comments,
/// endpoint names).
fn shape(mut op: Value) -> Value {
    if let Some(o) = op.as_object_mut() {
        for field in ["operationId", "summary", "description"] {
            o.remove(field);
        }
    }
    op["x-idempotency"]["name"] = Value::Null;
    op
}

#[test]
fn the_order_of_the_annotations_does_not_matter() {
    let doc = doc();
    let (a, b) = (operation(&doc, "/above"), operation(&doc, "/below"));
    assert_eq!(shape(a.clone()), shape(b), "above vs below");
    // utoipa read the handler itself, not the raw-request function the attribute registers.
    assert_eq!(
        a["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/NewPayment",
        "{a:#}"
    );

    let (a, b) = (
        operation(&doc, "/routed_above/{account}"),
        operation(&doc, "/routed_below/{account}"),
    );
    assert_eq!(shape(a.clone()), shape(b), "with #[post], above vs below");
    let params = a["parameters"].as_array().expect("parameters");
    assert!(
        params
            .iter()
            .any(|p| p["name"] == "account" && p["in"] == "path"),
        "the handler's own path parameter is documented: {params:#?}"
    );
}

#[test]
fn an_idempotent_operation_documents_its_key_replays_and_problems() {
    let doc = doc();
    let op = operation(&doc, "/above");
    let key = op["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "Idempotency-Key"))
        .unwrap_or_else(|| panic!("no key parameter: {op:#}"));
    assert_eq!(key["in"], "header");
    assert_eq!(key["required"], true);
    assert_eq!(key["schema"]["maxLength"], 255);

    assert_eq!(
        op["responses"]["201"]["headers"]["Idempotent-Replayed"]["schema"]["enum"],
        json!(["true"])
    );
    for status in ["400", "409", "413", "422", "429", "503"] {
        let r = &op["responses"][status];
        assert_eq!(
            r["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/IdempotencyProblem",
            "{status}: {r:#}"
        );
    }
    for status in ["409", "429", "503"] {
        assert!(
            op["responses"][status]["headers"]["Retry-After"].is_object(),
            "{status} carries Retry-After: {op:#}"
        );
    }
    assert!(op["responses"]["400"]["description"]
        .as_str()
        .is_some_and(|d| d.contains("urn:idem:problem:key-missing")));
    assert!(op["responses"]["422"]["description"]
        .as_str()
        .is_some_and(|d| d.contains("urn:idem:problem:key-reused")));
    assert!(
        op["responses"]["202"].is_null(),
        "retry_after answers 409, not 202"
    );

    let x = &op["x-idempotency"];
    assert_eq!(x["ttl"], "24h");
    assert_eq!(x["ttl_seconds"], 86_400);
    assert_eq!(x["guarantee"], "strict");
    assert_eq!(x["on_conflict"], "retry_after");
    assert_eq!(x["name"], "payments.above");
    assert_eq!(
        x["key"],
        json!([{ "in": "header", "name": "Idempotency-Key" }])
    );

    let problem = &doc["components"]["schemas"]["IdempotencyProblem"];
    assert_eq!(problem["required"], json!(["type", "title", "status"]));
}

#[test]
fn key_sources_conflict_policies_and_own_responses_are_respected() {
    let doc = doc();
    let op = operation(&doc, "/sources");
    let params = op["parameters"].as_array().expect("parameters");
    let find = |name: &str| params.iter().find(|p| p["name"] == name).cloned();
    let query = find("idem_key").expect("query key");
    assert_eq!(query["in"], "query");
    assert_eq!(query["required"], false);
    assert_eq!(find("idem").expect("cookie key")["in"], "cookie");
    assert!(
        find("Idempotency-Key").is_none(),
        "own key sources replace the header"
    );
    // The handler's own 409 keeps its description and gains the problem body.
    assert_eq!(
        op["responses"]["409"]["description"],
        "The handler's own conflict"
    );
    assert!(op["responses"]["409"]["content"]["application/problem+json"].is_object());
    assert!(op["responses"]["202"]["headers"]["Location"].is_object());
    let bad = op["responses"]["400"]["description"].as_str().unwrap_or("");
    assert!(
        !bad.contains("key-missing"),
        "an optional key is never missing: {bad}"
    );
    let unavailable = op["responses"]["503"]["description"].as_str().unwrap_or("");
    assert!(
        !unavailable.contains("store-unavailable"),
        "on_store_error = proceed runs instead: {unavailable}"
    );

    let op = operation(&doc, "/hooked");
    assert!(op["parameters"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["name"] == "Idempotency-Callback")));
    assert!(op["responses"]["202"].is_object());
    assert_eq!(op["x-idempotency"]["fingerprint"], json!(["/amount"]));

    let op = operation(&doc, "/plain");
    assert!(op["x-idempotency"].is_null(), "{op:#}");
    assert!(op["responses"]["409"].is_null(), "{op:#}");
}

/// The same operations without the modifier, documented by hand below.
#[derive(OpenApi)]
#[openapi(paths(above, plain))]
struct Bare;

#[test]
fn a_custom_key_header_is_documented() {
    let mut doc = Bare::openapi();
    let documented = IdempotencyDocs::with_header("X-Idempotency-Key").apply(&mut doc);
    assert_eq!(documented, ["above"], "only the idempotent operation");
    let doc = serde_json::to_value(&doc).expect("serializes");
    let params = &doc["paths"]["/above"]["post"]["parameters"];
    let names: Vec<&str> = params
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["X-Idempotency-Key"], "{params:#}");
}

/// Both orders still make the handler idempotent, with its own extractors.
#[actix_web::test]
async fn both_orders_still_run_once() {
    let app = actix_web::test::init_service(
        actix_web::App::new()
            .app_data(common::builder().build())
            .route("/above", web::post().to(above))
            .route("/below", web::post().to(below))
            .service(routed_above)
            .service(routed_below),
    )
    .await;
    for path in [
        "/above",
        "/below",
        "/routed_above/acct_1",
        "/routed_below/acct_1",
    ] {
        let probe = Probe::post(path, || RAN.load(Ordering::SeqCst)).json(r#"{"amount":5}"#);
        assert_idempotent(&app, &probe).await;
    }
}
