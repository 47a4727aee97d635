//! A fake card processor for the rides example (`examples/rides.rs`): a process of its own, so
//! that it outlives the app's crashes, idempotent on `Idempotency-Key` like a real processor
//! (with idem itself, on its memory store), and counting what it saw.
//!
//! ```text
//! PORT=8093 cargo run --example processor
//! curl -X POST localhost:8093/charges -H 'Idempotency-Key: k1' -H 'Content-Type: application/json' -d '{"amount": 1200}'
//! curl localhost:8093/stats        # {"requests": 1, "charges": 1}
//! ```
//!
//! `requests` counts every `POST /charges` received, replays included; `charges` the charges
//! actually made (distinct keys).

use actix_web::{get, middleware, post, web, App, HttpResponse, HttpServer};
use idem::{idempotent, Idempotency, MemoryStore};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    charges: AtomicU64,
}

#[derive(serde::Deserialize)]
struct NewCharge {
    amount: i64,
}

#[post("/charges")]
#[idempotent(name = "charges.create", ttl = "24h")]
async fn charge(body: web::Json<NewCharge>, counts: web::Data<Counts>) -> HttpResponse {
    let n = counts.charges.fetch_add(1, Ordering::SeqCst) + 1;
    HttpResponse::Created().json(serde_json::json!({
        "id": format!("ch_{n:06}"),
        "amount": body.amount,
    }))
}

#[get("/stats")]
async fn stats(counts: web::Data<Counts>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "requests": counts.requests.load(Ordering::SeqCst),
        "charges": counts.charges.load(Ordering::SeqCst),
    }))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .unwrap_or_else(|_| "8093".into())
        .parse()
        .map_err(std::io::Error::other)?;
    let idem = Idempotency::builder()
        .unscoped()
        .store(MemoryStore::default())
        .build();
    let counts = web::Data::new(Counts::default());
    println!("processor listening on http://127.0.0.1:{port}");
    HttpServer::new(move || {
        let seen = counts.clone();
        App::new()
            .app_data(idem.clone())
            .app_data(counts.clone())
            .wrap(middleware::from_fn(
                move |req: actix_web::dev::ServiceRequest,
                      next: middleware::Next<actix_web::body::BoxBody>| {
                    let seen = seen.clone();
                    async move {
                        if req.path() == "/charges" {
                            seen.requests.fetch_add(1, Ordering::SeqCst);
                        }
                        next.call(req).await
                    }
                },
            ))
            .service(charge)
            .service(stats)
    })
    .workers(1)
    .bind(("127.0.0.1", port))?
    .run()
    .await
}
