//! The app the fault suite (`tests/faults.rs`) kills, restarts, stops with SIGTERM and starves of
//! Redis: one idempotent endpoint with a short lease, counting its executions in Redis so that
//! the count survives the process. SIGTERM drains the operations in flight before it stops
//! (`Idempotency::serve`).
//!
//! ```text
//! IDEM_REDIS_URL=redis://127.0.0.1:6379 PORT=8090 cargo run --example fault_app
//! curl -X POST localhost:8090/work -H 'Idempotency-Key: k' -H 'Content-Type: application/json' -d '{"delay_ms": 5000}'
//! # kill -9 it mid-request, start it again, retry: 409 until the 2 s lease ends, then it runs once more
//! ```

use actix_web::{post, web, App, HttpResponse, HttpServer};
use idem::{idempotent, Idempotency, RedisStore};
use redis::AsyncCommands;
use std::time::Duration;

/// Where executions are counted: outside this process.
const COUNTER: &str = "idem-faults:executions";

#[derive(serde::Deserialize)]
struct Job {
    #[serde(default)]
    delay_ms: u64,
}

#[post("/work")]
#[idempotent(lease = "2s", ttl = "1h")]
async fn work(
    job: web::Json<Job>,
    counter: web::Data<redis::aio::MultiplexedConnection>,
) -> HttpResponse {
    let mut c = counter.get_ref().clone();
    let run: i64 = match c.incr(COUNTER, 1).await {
        Ok(n) => n,
        Err(e) => return HttpResponse::ServiceUnavailable().body(format!("counter: {e}")),
    };
    tokio::time::sleep(Duration::from_millis(job.delay_ms)).await;
    HttpResponse::Created().json(serde_json::json!({ "run": run, "pid": std::process::id() }))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let url = std::env::var("IDEM_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    // The counter may live elsewhere than the records (the suite puts a proxy in front of the
    // records' Redis only).
    let counter_url = std::env::var("COUNTER_REDIS_URL").unwrap_or_else(|_| url.clone());
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8090);
    let store = RedisStore::builder()
        .url(url)
        .response_timeout(Duration::from_millis(500))
        .connect()
        .await
        .map_err(std::io::Error::other)?;
    let counter = redis::Client::open(counter_url)
        .map_err(std::io::Error::other)?
        .get_multiplexed_async_connection()
        .await
        .map_err(std::io::Error::other)?;
    // 500 ms: a 2 s lease is renewed every 666 ms, and each renewal must fit in a third of it.
    let idem = Idempotency::builder()
        .unscoped()
        .store(store)
        .store_timeout(Duration::from_millis(500))
        .build();
    let counter = web::Data::new(counter);
    let app_idem = idem.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(app_idem.clone())
            .app_data(counter.clone())
            .service(work)
    })
    .workers(2)
    // SIGTERM is handled by `serve`, which drains the operations in flight first.
    .disable_signals()
    .bind(("127.0.0.1", port))?
    .run();
    idem.serve(server, Duration::from_secs(30)).await
}
