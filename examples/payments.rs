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
//! Records live in memory unless `IDEM_REDIS_URL` is set: one URL for a single Redis, several
//! (comma-separated) or `IDEM_REDIS_CLUSTER=1` for a Redis Cluster. Run several copies on
//! different ports against one Redis and a duplicate still runs once.

use actix_web::http::StatusCode;
use actix_web::{get, post, web, App, HttpResponse, HttpServer, Responder};
use idem::{idempotent, Idempotency, MemoryStore, RedisStore};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Deserialize)]
struct NewPayment {
    amount: i64,
    currency: String,
}

#[derive(Serialize, Clone)]
struct Payment {
    id: String,
    amount: i64,
    currency: String,
    status: &'static str,
}

/// The demo's "database": money movements made, and handler bodies actually run per endpoint.
#[derive(Default)]
struct Ledger {
    payments: Mutex<HashMap<String, Payment>>,
    executions: [AtomicU64; 3],
    next_id: AtomicU64,
    delay: Duration,
}

/// The three idempotent endpoints, in `/stats` order.
#[derive(Clone, Copy)]
enum Kind {
    Payment,
    Transfer,
    Refund,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Payment => "pay",
            Kind::Transfer => "tr",
            Kind::Refund => "re",
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

/// A duplicate sent while the first runs gets 409 + `Retry-After`.
#[post("/payments")]
#[idempotent(ttl = "24h", guarantee = "strict", on_conflict = "retry_after")]
async fn create_payment(body: web::Json<NewPayment>, ledger: web::Data<Ledger>) -> HttpResponse {
    move_money(Kind::Payment, &body, &ledger).await
}

/// A duplicate sent while the first runs waits for it and gets its response.
#[post("/transfers")]
#[idempotent(ttl = "24h", on_conflict = "wait", wait_timeout = "10s")]
async fn create_transfer(body: web::Json<NewPayment>, ledger: web::Data<Ledger>) -> HttpResponse {
    move_money(Kind::Transfer, &body, &ledger).await
}

/// A duplicate sent while the first runs gets 202 + `Location` of a status resource.
#[post("/refunds")]
#[idempotent(ttl = "24h", on_conflict = "accepted")]
async fn create_refund(body: web::Json<NewPayment>, ledger: web::Data<Ledger>) -> HttpResponse {
    move_money(Kind::Refund, &body, &ledger).await
}

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
    for (kind, name) in [
        (Kind::Payment, "payments"),
        (Kind::Transfer, "transfers"),
        (Kind::Refund, "refunds"),
    ] {
        let n = ledger.executions[kind as usize].load(Ordering::SeqCst);
        out.push_str(&format!(
            "payments_demo_executions_total{{endpoint=\"{name}\"}} {n}\n"
        ));
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out)
}

/// Which record an operator asks about: `?endpoint=payments::create_payment&key=…` and, for
/// a request that carried `Authorization`, `&principal=` its hash (`idem::default_principal`).
#[derive(Deserialize)]
struct AdminQuery {
    endpoint: String,
    #[serde(default)]
    principal: String,
    key: String,
}

/// The operator routes exist only when `IDEM_ADMIN_TOKEN` is set, and want it as a bearer token.
fn admin_allowed(req: &actix_web::HttpRequest) -> bool {
    let Ok(token) = std::env::var("IDEM_ADMIN_TOKEN") else {
        return false;
    };
    let sent = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    !token.is_empty() && sent == Some(token.as_str())
}

/// `GET /admin/idempotency?…`: the record's state, attempt, age, expiry and fingerprint.
/// `DELETE` the same: forget it (a support case).
async fn admin(
    req: actix_web::HttpRequest,
    q: web::Query<AdminQuery>,
    idem: web::Data<Idempotency>,
) -> HttpResponse {
    if !admin_allowed(&req) {
        return problem(StatusCode::NOT_FOUND, "not found");
    }
    let result = if req.method() == actix_web::http::Method::DELETE {
        idem.purge(&q.endpoint, &q.principal, &q.key)
            .await
            .map(|purged| serde_json::json!({ "purged": purged }))
    } else {
        idem.inspect(&q.endpoint, &q.principal, &q.key)
            .await
            .map(|info| serde_json::json!({ "record": info }))
    };
    match result {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(e) => problem(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

#[get("/stats")]
async fn stats(ledger: web::Data<Ledger>) -> impl Responder {
    let n = |k: Kind| ledger.executions[k as usize].load(Ordering::SeqCst);
    web::Json(serde_json::json!({
        "executions": {
            "payments": n(Kind::Payment),
            "transfers": n(Kind::Transfer),
            "refunds": n(Kind::Refund),
        }
    }))
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
            let builder = if cluster {
                RedisStore::builder().cluster(urls)
            } else {
                RedisStore::builder().url(urls[0].clone())
            };
            let store = builder.connect().await.map_err(std::io::Error::other)?;
            let name = if cluster {
                "Redis Cluster store"
            } else {
                "Redis store"
            };
            (Idempotency::builder().store(store).build(), name)
        }
        _ => (
            Idempotency::builder().store(MemoryStore::default()).build(),
            "memory store",
        ),
    };
    println!("payments demo on http://127.0.0.1:{port} ({store_name})");
    HttpServer::new(move || {
        App::new()
            .app_data(idem.clone())
            .app_data(ledger.clone())
            .app_data(prometheus.clone())
            .app_data(web::Data::new(idem.clone()))
            .service(idem.status_service())
            .route("/admin/idempotency", web::get().to(admin))
            .route("/admin/idempotency", web::delete().to(admin))
            .service(create_payment)
            .service(create_transfer)
            .service(create_refund)
            .service(get_payment)
            .service(stats)
            .service(page)
            .service(metrics)
    })
    .bind(("127.0.0.1", port))?
    .run()
    .await
}
