//! The payments demo on axum: the same HTTP contract as `examples/payments` (actix-web) — `POST
//! /payments`, `/transfers`, `/refunds`, `GET /idempotency/{id}`, `/payments/{id}`, `/stats`,
//! `/metrics`, API keys scoped by account, `IDEM_REDIS_URL`, `IDEM_SECRET`, `PORT`,
//! `PAYMENT_DELAY_MS` — through idem's tower layer. The demo-contract tests run against both.
//!
//! ```text
//! cargo run --example axum_payments
//! curl -si -X POST localhost:8080/payments -H 'Idempotency-Key: k1' \
//!      -H 'Content-Type: application/json' -d '{"amount": 1000, "currency": "EUR"}'
//! ```
//!
//! An actix-web instance of `examples/payments` and this one, on one Redis with one
//! `IDEM_SECRET`, serve the same records: the endpoints have the same names.

#[path = "payments/accounts.rs"]
mod accounts;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use idem_runtime::tower::{IdempotencyLayer, StatusService};
use idem_runtime::{Idempotency, MemoryStore, RedisStore};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// The demo's "database", and the handler bodies actually run per endpoint (`/stats` order;
/// `orders` is the actix demo's checkout form, which this one does not have).
#[derive(Default)]
struct Ledger {
    payments: Mutex<HashMap<String, Payment>>,
    executions: [AtomicU64; 4],
    next_id: AtomicU64,
    delay: Duration,
}

const ENDPOINTS: [&str; 4] = ["payments", "transfers", "refunds", "orders"];
const PREFIXES: [&str; 3] = ["pay", "tr", "re"];

type App = Arc<Ledger>;

fn problem(status: StatusCode, detail: &str) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

/// The body the three handlers share: validate, wait for "the card processor", record.
async fn move_money(kind: usize, body: NewPayment, ledger: &Ledger) -> Response {
    ledger.executions[kind].fetch_add(1, Ordering::SeqCst);
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
    tokio::time::sleep(ledger.delay).await;
    let n = ledger.next_id.fetch_add(1, Ordering::SeqCst) + 1;
    let payment = Payment {
        id: format!("{}_{n:06}", PREFIXES[kind]),
        amount: body.amount,
        currency: body.currency.to_ascii_uppercase(),
        status: "succeeded",
    };
    if let Ok(mut map) = ledger.payments.lock() {
        map.insert(payment.id.clone(), payment.clone());
    }
    let location = format!("/payments/{}", payment.id);
    (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(payment),
    )
        .into_response()
}

async fn create_payment(State(app): State<App>, Json(body): Json<NewPayment>) -> Response {
    move_money(0, body, &app).await
}

async fn create_transfer(State(app): State<App>, Json(body): Json<NewPayment>) -> Response {
    move_money(1, body, &app).await
}

async fn create_refund(State(app): State<App>, Json(body): Json<NewPayment>) -> Response {
    move_money(2, body, &app).await
}

async fn get_payment(State(app): State<App>, Path(id): Path<String>) -> Response {
    let found = app.payments.lock().ok().and_then(|m| m.get(&id).cloned());
    match found {
        Some(p) => Json(p).into_response(),
        None => problem(StatusCode::NOT_FOUND, "no such payment"),
    }
}

async fn stats(State(app): State<App>) -> Json<serde_json::Value> {
    let executions: serde_json::Map<String, serde_json::Value> = ENDPOINTS
        .iter()
        .enumerate()
        .map(|(i, name)| {
            (
                name.to_string(),
                app.executions[i].load(Ordering::SeqCst).into(),
            )
        })
        .collect();
    Json(serde_json::json!({ "executions": executions }))
}

/// Resolves the account of the API key (401 for an unknown one) into the request's
/// extensions, where `scope_by_extension::<AccountId>()` finds it.
async fn authenticate(keys: accounts::ApiKeys, mut req: Request, next: Next) -> Response {
    // As in the actix demo, operator routes are outside the API keys (this demo has none: 404).
    if req.uri().path().starts_with("/admin/") {
        return next.run(req).await;
    }
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match keys.account(authorization) {
        Some(account) => {
            req.extensions_mut().insert(accounts::AccountId(account));
            next.run(req).await
        }
        None => {
            let mut resp = problem(
                StatusCode::UNAUTHORIZED,
                "unknown API key: send `Authorization: Bearer <api key>`, or no Authorization \
                 header for the public account",
            );
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
    }
}

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = setting("PORT", 8080);
    let ledger = Arc::new(Ledger {
        delay: Duration::from_millis(setting("PAYMENT_DELAY_MS", 200)),
        ..Ledger::default()
    });
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let (builder, store_name) = match std::env::var("IDEM_REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => (
            Idempotency::builder().store(RedisStore::connect(url.trim()).await?),
            "Redis store",
        ),
        _ => (
            Idempotency::builder().store(MemoryStore::default()),
            "memory store",
        ),
    };
    let secret = accounts::app_secret();
    let idem = builder
        .scope_by_extension::<accounts::AccountId>()
        .secret(secret)
        .build();
    // The same names as the actix demo's endpoints: the same records.
    let layer = |policy| IdempotencyLayer::new(&idem, policy);
    let payments = idem::policy!(
        name = "payments.create",
        ttl = "24h",
        guarantee = "strict",
        on_conflict = "retry_after"
    );
    let transfers = idem::policy!(
        name = "transfers.create",
        ttl = "24h",
        on_conflict = "wait",
        wait_timeout = "10s"
    );
    let refunds = idem::policy!(
        name = "refunds.create",
        ttl = "24h",
        on_conflict = "accepted"
    );
    let ledger_for_metrics = ledger.clone();
    let metrics = move || {
        let (ledger, prometheus) = (ledger_for_metrics.clone(), prometheus.clone());
        async move {
            let mut out = prometheus.render();
            out.push_str(
                "# HELP payments_demo_executions_total Handler bodies actually run.\n\
                 # TYPE payments_demo_executions_total counter\n",
            );
            for (i, name) in ENDPOINTS.iter().enumerate() {
                let n = ledger.executions[i].load(Ordering::SeqCst);
                out.push_str(&format!(
                    "payments_demo_executions_total{{endpoint=\"{name}\"}} {n}\n"
                ));
            }
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
        }
    };
    let keys = accounts::ApiKeys::from_env();
    let app = Router::new()
        .route("/payments", post(create_payment).layer(layer(payments)))
        .route("/transfers", post(create_transfer).layer(layer(transfers)))
        .route("/refunds", post(create_refund).layer(layer(refunds)))
        .route("/payments/{id}", get(get_payment))
        .route_service("/idempotency/{id}", StatusService::new(&idem))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn(move |req, next| {
            authenticate(keys.clone(), req, next)
        }))
        .with_state(ledger);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("payments demo (axum) on http://127.0.0.1:{port} ({store_name})");
    // On Ctrl-C or SIGTERM: stop accepting, then let the payments in flight store their records.
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await?;
    idem.drain(Duration::from_secs(30)).await;
    Ok(())
}
