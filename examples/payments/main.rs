//! The main job: a payments API whose `POST /payments` is idempotent.
//!
//! ```text
//! cargo run --example payments
//! curl -si -X POST localhost:8080/payments -H 'Idempotency-Key: k1' \
//!      -H 'Content-Type: application/json' -d '{"amount": 1000, "currency": "EUR"}'
//! curl -s localhost:8080/stats
//! ```
//!
//! Listens on 127.0.0.1:8080 (`PORT` overrides). The handler waits `PAYMENT_DELAY_MS`
//! (default 200) to stand for a card processor.
//!
//! Requests authenticate like a payments API (`auth.rs`): `Authorization: Bearer <api key>`,
//! each key belonging to an account, and idempotency keys are scoped by the account. Without
//! `Authorization` a request belongs to the public account, so plain `curl` works. The app
//! secret comes from `IDEM_SECRET` (a development default otherwise, announced at startup); it
//! also seals the stored responses (encryption at rest). SIGTERM or Ctrl-C drains the
//! payments in flight before the server stops.
//!
//! `GET /checkout` is a server-rendered shop form with no JavaScript at all: the page carries
//! a fresh key in a hidden field (`idem::form_key_input`), `POST /checkout` is idempotent on
//! that field and answers 303 to the receipt, so a double click, a re-submit after the back
//! button, or a reload places one order and shows one receipt.
//!
//! `GET /openapi.json` is the API's OpenAPI 3.1 document, with the `Idempotency-Key` header and
//! idem's answers (400/409/422/…) documented from the attributes (`idem::openapi`); `/docs/`
//! shows it in Swagger UI, served from the binary.
//!
//! Records live in memory unless `IDEM_REDIS_URL` is set: one URL for a single Redis, several
//! (comma-separated) or `IDEM_REDIS_CLUSTER=1` for a Redis Cluster. Run several copies on
//! different ports against one Redis and a duplicate still runs once. A Redis whose
//! `maxmemory-policy` may evict records is refused at start unless
//! `IDEM_REDIS_ALLOW_EVICTION=1`.

mod accounts;
mod admin;
mod api_docs;
mod auth;

use actix_web::http::StatusCode;
use actix_web::{get, post, web, App, HttpResponse, HttpServer, Responder};
use idem::{idempotent, Idempotency, MemoryStore, RedisStore};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Deserialize, utoipa::ToSchema)]
struct NewPayment {
    amount: i64,
    currency: String,
}

#[derive(Serialize, Clone, utoipa::ToSchema)]
struct Payment {
    id: String,
    amount: i64,
    currency: String,
    status: &'static str,
}

/// An order placed through the checkout form.
#[derive(Clone)]
struct Order {
    id: String,
    item: String,
    quantity: u32,
}

/// The demo's "database": money movements and orders made, and handler bodies actually run per
/// endpoint.
#[derive(Default)]
struct Ledger {
    payments: Mutex<HashMap<String, Payment>>,
    orders: Mutex<HashMap<String, Order>>,
    executions: [AtomicU64; 4],
    next_id: AtomicU64,
    delay: Duration,
}

/// The idempotent endpoints, in `/stats` order.
#[derive(Clone, Copy)]
enum Kind {
    Payment,
    Transfer,
    Refund,
    Order,
}

impl Kind {
    const ALL: [(Kind, &'static str); 4] = [
        (Kind::Payment, "payments"),
        (Kind::Transfer, "transfers"),
        (Kind::Refund, "refunds"),
        (Kind::Order, "orders"),
    ];

    fn prefix(self) -> &'static str {
        match self {
            Kind::Payment => "pay",
            Kind::Transfer => "tr",
            Kind::Refund => "re",
            Kind::Order => "ord",
        }
    }
}

fn problem(status: StatusCode, detail: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/problem+json")
        .json(serde_json::json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": detail,
        }))
}

/// The body all three handlers share: validate, wait for "the card processor", record.
async fn move_money(kind: Kind, body: &NewPayment, ledger: &Ledger) -> HttpResponse {
    ledger.executions[kind as usize].fetch_add(1, Ordering::SeqCst);
    // Validation inside the handler is an execution like any other: its 400 is cached, as Stripe
    // does, so a retry with the same key gets the same answer.
    if body.amount <= 0 {
        return problem(
            StatusCode::BAD_REQUEST,
            "amount must be a positive integer (minor units)",
        );
    }
    if body.currency.len() != 3 || !body.currency.bytes().all(|b| b.is_ascii_alphabetic()) {
        return problem(
            StatusCode::BAD_REQUEST,
            "currency must be a 3-letter ISO 4217 code",
        );
    }
    // Stands for the card processor's round trip.
    tokio::time::sleep(ledger.delay).await;
    let n = ledger.next_id.fetch_add(1, Ordering::SeqCst) + 1;
    let payment = Payment {
        id: format!("{}_{n:06}", kind.prefix()),
        amount: body.amount,
        currency: body.currency.to_ascii_uppercase(),
        status: "succeeded",
    };
    if let Ok(mut map) = ledger.payments.lock() {
        map.insert(payment.id.clone(), payment.clone());
    }
    HttpResponse::Created()
        .insert_header(("Location", format!("/payments/{}", payment.id)))
        .json(payment)
}

/// Moves money once per `Idempotency-Key`.
///
/// A duplicate sent while the first runs gets 409 + `Retry-After`.
#[utoipa::path(tag = "payments", responses(
    (status = 201, description = "The payment", body = Payment),
    (status = 400, description = "Invalid amount or currency (kept: a retry gets it again)"),
))]
#[post("/payments")]
#[idempotent(
    name = "payments.create",
    ttl = "24h",
    guarantee = "strict",
    on_conflict = "retry_after"
)]
async fn create_payment(body: web::Json<NewPayment>, ledger: web::Data<Ledger>) -> HttpResponse {
    move_money(Kind::Payment, &body, &ledger).await
}

/// Moves money once per `Idempotency-Key`.
///
/// A duplicate sent while the first runs waits for it and gets its response.
#[utoipa::path(tag = "payments", responses(
    (status = 201, description = "The transfer", body = Payment),
    (status = 400, description = "Invalid amount or currency (kept: a retry gets it again)"),
))]
#[post("/transfers")]
#[idempotent(
    name = "transfers.create",
    ttl = "24h",
    on_conflict = "wait",
    wait_timeout = "10s"
)]
async fn create_transfer(body: web::Json<NewPayment>, ledger: web::Data<Ledger>) -> HttpResponse {
    move_money(Kind::Transfer, &body, &ledger).await
}

/// Moves money once per `Idempotency-Key`.
///
/// A duplicate sent while the first runs gets 202 + `Location` of a status resource.
#[utoipa::path(tag = "payments", responses(
    (status = 201, description = "The refund", body = Payment),
    (status = 400, description = "Invalid amount or currency (kept: a retry gets it again)"),
))]
#[post("/refunds")]
#[idempotent(name = "refunds.create", ttl = "24h", on_conflict = "accepted")]
async fn create_refund(body: web::Json<NewPayment>, ledger: web::Data<Ledger>) -> HttpResponse {
    move_money(Kind::Refund, &body, &ledger).await
}

/// A payment made earlier.
#[utoipa::path(tag = "payments", responses(
    (status = 200, description = "The payment", body = Payment),
    (status = 404, description = "No such payment"),
))]
#[get("/payments/{id}")]
async fn get_payment(id: web::Path<String>, ledger: web::Data<Ledger>) -> HttpResponse {
    let found = ledger
        .payments
        .lock()
        .ok()
        .and_then(|m| m.get(id.as_str()).cloned());
    match found {
        Some(p) => HttpResponse::Ok().json(p),
        None => problem(StatusCode::NOT_FOUND, "no such payment"),
    }
}

/// The page: a Pay button that follows the client half of the pattern (see payments.html).
#[get("/")]
async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(include_str!("payments.html"))
}

/// HTML-escapes text for the server-rendered pages.
fn html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page_html(status: StatusCode, title: &str, body: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
             <body><h1>{title}</h1>{body}</body></html>"
        ))
}

/// The checkout form, rendered with a fresh key in a hidden field. `no-cache`: a new visit gets
/// a new key, while the back button shows the cached page, whose key places no second order.
#[get("/checkout")]
async fn checkout_form() -> HttpResponse {
    form_page(StatusCode::OK, "Checkout", "")
}

/// The form page; after a refusal it says why, and carries a new key for the corrected order
/// (the refused one stays the answer to its own key).
fn form_page(status: StatusCode, title: &str, note: &str) -> HttpResponse {
    let mut resp = page_html(
        status,
        title,
        &format!(
            "{note}<form method=\"post\" action=\"/checkout\">\
             {hidden}\
             <label>Item <select name=\"item\" id=\"item\">\
             <option>Rust in Action</option><option>Zero To Production</option></select></label>\
             <label>Quantity <input name=\"quantity\" id=\"quantity\" type=\"number\" \
             value=\"1\" min=\"1\" max=\"10\"></label>\
             <button id=\"place\" type=\"submit\">Place order</button></form>",
            hidden = idem::form_key_input("_idem"),
        ),
    );
    resp.headers_mut().insert(
        actix_web::http::header::CACHE_CONTROL,
        actix_web::http::header::HeaderValue::from_static("no-cache"),
    );
    resp
}

#[derive(Deserialize, utoipa::ToSchema)]
struct CheckoutForm {
    item: String,
    quantity: u32,
}

/// Places the order once per rendered form: a duplicate in flight waits for the first and gets
/// the same 303, so every submission of one form lands on one receipt. A duplicate that waited
/// 3 s gets 409; reloading that page (resubmitting the form) lands on the receipt too.
#[utoipa::path(tag = "shop", responses(
    (status = 303, description = "To the order's receipt"),
    (status = 422, description = "Item or quantity refused (an HTML page)"),
))]
#[post("/checkout")]
#[idempotent(
    name = "checkout.place",
    key = "form:_idem",
    on_conflict = "wait",
    wait_timeout = "3s",
    max_body = "16KiB"
)]
async fn place_order(form: web::Form<CheckoutForm>, ledger: web::Data<Ledger>) -> HttpResponse {
    ledger.executions[Kind::Order as usize].fetch_add(1, Ordering::SeqCst);
    let item = form.item.trim();
    if item.is_empty() || item.len() > 100 || !(1..=10).contains(&form.quantity) {
        let why = "<p id=\"why\">Choose an item and a quantity from 1 to 10.</p>";
        return form_page(StatusCode::UNPROCESSABLE_ENTITY, "Order not placed", why);
    }
    tokio::time::sleep(ledger.delay).await;
    let n = ledger.next_id.fetch_add(1, Ordering::SeqCst) + 1;
    let order = Order {
        id: format!("{}_{n:06}", Kind::Order.prefix()),
        item: item.to_owned(),
        quantity: form.quantity,
    };
    if let Ok(mut map) = ledger.orders.lock() {
        map.insert(order.id.clone(), order.clone());
    }
    HttpResponse::SeeOther()
        .insert_header(("Location", format!("/receipts/{}", order.id)))
        .finish()
}

#[get("/receipts/{id}")]
async fn receipt(id: web::Path<String>, ledger: web::Data<Ledger>) -> HttpResponse {
    let found = ledger
        .orders
        .lock()
        .ok()
        .and_then(|m| m.get(id.as_str()).cloned());
    match found {
        Some(o) => page_html(
            StatusCode::OK,
            "Thank you",
            &format!(
                "<p>Order <b id=\"order\">{}</b>: {} × {}</p><p><a href=\"/checkout\">Order again</a></p>",
                html(&o.id),
                o.quantity,
                html(&o.item)
            ),
        ),
        None => page_html(StatusCode::NOT_FOUND, "No such order", ""),
    }
}

/// idem's metrics (outcomes, store latency, leases, memory store) and the demo's own execution
/// counts, in Prometheus' text format.
#[get("/metrics")]
async fn metrics(
    ledger: web::Data<Ledger>,
    prometheus: web::Data<metrics_exporter_prometheus::PrometheusHandle>,
) -> HttpResponse {
    let mut out = prometheus.render();
    out.push_str(
        "# HELP payments_demo_executions_total Handler bodies actually run.\n\
         # TYPE payments_demo_executions_total counter\n",
    );
    for (kind, name) in Kind::ALL {
        let n = ledger.executions[kind as usize].load(Ordering::SeqCst);
        out.push_str(&format!(
            "payments_demo_executions_total{{endpoint=\"{name}\"}} {n}\n"
        ));
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out)
}

#[get("/stats")]
async fn stats(ledger: web::Data<Ledger>) -> impl Responder {
    let executions: serde_json::Map<String, serde_json::Value> = Kind::ALL
        .iter()
        .map(|(k, name)| {
            let n = ledger.executions[*k as usize].load(Ordering::SeqCst);
            (name.to_string(), n.into())
        })
        .collect();
    web::Json(serde_json::json!({ "executions": executions }))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let delay_ms: u64 = std::env::var("PAYMENT_DELAY_MS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(200);
    let ledger = web::Data::new(Ledger {
        delay: Duration::from_millis(delay_ms),
        ..Ledger::default()
    });
    let prometheus = web::Data::new(
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .map_err(std::io::Error::other)?,
    );
    let (idem, store_name) = match std::env::var("IDEM_REDIS_URL") {
        Ok(urls) if !urls.trim().is_empty() => {
            let urls: Vec<String> = urls.split(',').map(|u| u.trim().to_string()).collect();
            let cluster =
                urls.len() > 1 || std::env::var("IDEM_REDIS_CLUSTER").is_ok_and(|v| v == "1");
            let mut builder = if cluster {
                RedisStore::builder().cluster(urls)
            } else {
                RedisStore::builder().url(urls[0].clone())
            };
            // A Redis that may evict records is refused unless this says otherwise.
            let allow_eviction = std::env::var("IDEM_REDIS_ALLOW_EVICTION").is_ok_and(|v| v == "1");
            if allow_eviction {
                builder = builder.allow_eviction();
            }
            let store = builder.connect().await.map_err(std::io::Error::other)?;
            if store.eviction_policy() != "noeviction" {
                eprintln!(
                    "warning: Redis maxmemory-policy is {}; eviction allowed \
                     (IDEM_REDIS_ALLOW_EVICTION=1): an evicted record's retry runs again",
                    store.eviction_policy()
                );
            }
            let name = if cluster {
                "Redis Cluster store"
            } else {
                "Redis store"
            };
            (Idempotency::builder().store(store), name)
        }
        _ => (
            Idempotency::builder().store(MemoryStore::default()),
            "memory store",
        ),
    };
    // Keys are scoped by the account the API key belongs to. Every instance must share the
    // secret, which also seals what the store keeps of each response (encryption at rest); the
    // demo has a development default for trying it out, and says so.
    let secret = accounts::app_secret();
    let idem = idem
        .scope_by_extension::<accounts::AccountId>()
        .secret(secret)
        .build();
    let keys = accounts::ApiKeys::from_env();
    println!("payments demo on http://127.0.0.1:{port} ({store_name})");
    let app_idem = idem.clone();
    let server = HttpServer::new(move || {
        let idem = app_idem.clone();
        let keys = keys.clone();
        App::new()
            .wrap(actix_web::middleware::from_fn(move |req, next| {
                auth::authenticate(keys.clone(), req, next)
            }))
            .app_data(idem.clone())
            .app_data(ledger.clone())
            .app_data(prometheus.clone())
            .app_data(web::Data::new(idem.clone()))
            .service(idem.status_service())
            .service(admin::routes())
            .service(create_payment)
            .service(create_transfer)
            .service(create_refund)
            .service(get_payment)
            .service(checkout_form)
            .service(place_order)
            .service(receipt)
            .service(stats)
            .service(page)
            .service(metrics)
            .service(api_docs::routes())
    })
    // SIGTERM and Ctrl-C are handled by `serve`: it lets the payments in flight finish and
    // store their records (even those whose client hung up) before the server stops.
    .disable_signals()
    .bind(("127.0.0.1", port))?
    .run();
    idem.serve(server, Duration::from_secs(30)).await
}
