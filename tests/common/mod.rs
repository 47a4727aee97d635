//! A real actix-web `HttpServer` on a loopback port, with idempotent handlers that count their
//! executions, for the integration tests.
#![allow(dead_code)]

pub mod demo;
pub mod gate;
pub mod hooks;
pub mod pg;
pub mod proxy;
pub mod redis;
pub mod rides;
pub mod sentinel;
pub mod tower;

use actix_web::{dev::ServerHandle, web, App, HttpRequest, HttpResponse, HttpServer};
use idem::{idempotent, Idempotency};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Handler bodies actually run, per handler.
#[derive(Default)]
pub struct Counters {
    pub charge: AtomicUsize,
    pub slow: AtomicUsize,
    pub short_ttl: AtomicUsize,
    pub optional: AtomicUsize,
    pub small: AtomicUsize,
    pub panics: AtomicUsize,
    pub fails: AtomicUsize,
    pub proceed: AtomicUsize,
    pub mixed: AtomicUsize,
    pub form: AtomicUsize,
    pub wait: AtomicUsize,
    pub accepted: AtomicUsize,
    pub webhook: AtomicUsize,
    pub result: AtomicUsize,
    pub semantic: AtomicUsize,
    pub big: AtomicUsize,
    pub broken: AtomicUsize,
    pub progress: AtomicUsize,
}

#[derive(Deserialize, Serialize)]
pub struct Charge {
    pub amount: i64,
    #[serde(default)]
    pub delay_ms: u64,
}

/// A running server; stopped when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub counters: web::Data<Counters>,
    pub idem: Option<Idempotency>,
    client: reqwest::Client,
    handle: ServerHandle,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A POST to `path` carrying `key` as its `Idempotency-Key`.
    pub fn post(&self, path: &str, key: impl AsRef<str>) -> reqwest::RequestBuilder {
        self.client
            .post(self.url(path))
            .header("Idempotency-Key", key.as_ref())
    }

    /// Polls with the same key until the answer is no longer 409 (bounded: 10 s).
    pub async fn retry_until_done(
        &self,
        path: &str,
        key: &str,
        body: &Charge,
    ) -> reqwest::Response {
        for _ in 0..100 {
            let r = self
                .post(path, key)
                .json(body)
                .send()
                .await
                .expect("response");
            if r.status() != 409 {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("still in progress after 10 s");
    }

    /// Sends a JSON POST over a raw socket, waits `after`, then resets the connection (linger 0),
    /// which makes actix-web drop the request's future, as a client that hangs up does.
    pub async fn send_then_reset(&self, path: &str, key: &str, body: &Charge, after: Duration) {
        reset_after(self.addr, path, key, body, after).await
    }

    /// A JSON POST to `path` without any key; its status.
    pub async fn client_post_without_key(&self, path: &str) -> u16 {
        self.client
            .post(self.url(path))
            .json(&Charge {
                amount: 1,
                delay_ms: 0,
            })
            .send()
            .await
            .expect("response")
            .status()
            .as_u16()
    }

    pub fn count(&self, f: impl Fn(&Counters) -> &AtomicUsize) -> usize {
        f(&self.counters).load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let h = self.handle.clone();
        actix_web::rt::spawn(async move { h.stop(false).await });
    }
}

/// An `Idempotency` builder as the tests use it: keys scoped by the `Authorization` header (a
/// test's stand-in for an account; real apps scope by the account their auth resolved).
pub fn builder() -> idem::IdempotencyBuilder<idem::Scoped> {
    // Most tests send no credential: they opt into the anonymous scope.
    Idempotency::builder()
        .scope_by_header(actix_web::http::header::AUTHORIZATION)
        .allow_anonymous()
}

/// Starts the test app on 127.0.0.1 with `idem` registered (or none, with `None`).
pub fn start(idem: Option<Idempotency>) -> TestServer {
    start_with(idem, web::Data::new(Counters::default()))
}

/// Like [`start`], counting executions in `counters` (shared by several app instances).
pub fn start_with(idem: Option<Idempotency>, counters: web::Data<Counters>) -> TestServer {
    let c = counters.clone();
    let registered = idem.clone();
    let (addr, handle) = serve(2, move |cfg| {
        cfg.app_data(c.clone()).configure(routes);
        if let Some(i) = &idem {
            cfg.app_data(i.clone()).service(i.status_service());
        }
    });
    TestServer {
        addr,
        counters,
        idem: registered,
        client: client(),
        handle,
    }
}

/// Runs an app made by `configure` on a free loopback port, with `workers` workers, on the
/// current actix runtime; stopped through the handle (or with the runtime).
pub fn serve(
    workers: usize,
    configure: impl Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
) -> (SocketAddr, ServerHandle) {
    let server = HttpServer::new(move || App::new().configure(configure.clone()))
        .workers(workers)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .expect("bind a loopback port");
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    (addr, handle)
}

/// See [`TestServer::send_then_reset`].
pub async fn reset_after(addr: SocketAddr, path: &str, key: &str, body: &Charge, after: Duration) {
    use tokio::io::AsyncWriteExt;
    let body = serde_json::to_vec(body).expect("json");
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nIdempotency-Key: {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    sock.write_all(&raw).await.expect("send");
    tokio::time::sleep(after).await;
    sock.set_zero_linger().expect("linger 0");
    drop(sock);
}

/// The request's `X-Delay-Ms` (0 without one): how long a test handler works.
pub fn delay_of(req: &actix_web::HttpRequest) -> Duration {
    let ms = req
        .headers()
        .get("x-delay-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Duration::from_millis(ms)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(200)
        .build()
        .expect("reqwest client")
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(charge)
        .service(slow)
        .service(slow_long_lease)
        .service(short_ttl)
        .service(optional)
        .service(small)
        .service(panics)
        .service(fails)
        .service(proceed)
        .service(mixed)
        .service(form)
        .service(wait)
        .service(wait_short)
        .service(accepted)
        .service(accepted_async)
        .service(webhook)
        .service(result)
        .service(semantic)
        .service(durable)
        .service(big)
        .service(broken_stream)
        .service(panics_result)
        .service(progress)
        .service(wait_proceed);
}

/// Kept in the store registered as "pg" (a named store).
#[actix_web::post("/durable")]
#[idempotent(store = "pg")]
async fn durable(body: web::Json<Charge>, counters: web::Data<Counters>) -> HttpResponse {
    charge_like(&counters.charge, &body).await
}

/// The body of the guarantee handlers: anything JSON, with an optional `"fail": true`.
#[derive(Deserialize)]
pub struct MaybeFail {
    #[serde(default)]
    pub fail: bool,
}

/// What a guarantee handler answers: the run number and its `IdempotencyContext`; 500 on
/// `"fail": true`. Sets a header only the endpoint's own `replay_headers` keep.
fn guarantee_answer(n: usize, order: &MaybeFail, ctx: &idem::IdempotencyContext) -> HttpResponse {
    let body = serde_json::json!({
        "run": n,
        "attempt": ctx.attempt(),
        "key": ctx.key(),
        "token": ctx.token().0,
    });
    let mut resp = if order.fail {
        HttpResponse::InternalServerError()
    } else {
        HttpResponse::Created()
    };
    resp.insert_header(("X-Trace", format!("trace-{n}")))
        .json(body)
}

#[actix_web::post("/result")]
#[idempotent(guarantee = "result", replay_headers = ["X-Trace"])]
async fn result(
    order: web::Json<MaybeFail>,
    ctx: idem::IdempotencyContext,
    counters: web::Data<Counters>,
) -> HttpResponse {
    let n = counters.result.fetch_add(1, Ordering::SeqCst) + 1;
    guarantee_answer(n, &order, &ctx)
}

#[actix_web::post("/semantic")]
#[idempotent(guarantee = "semantic", fingerprint = ["/amount", "/currency"])]
async fn semantic(
    order: web::Json<MaybeFail>,
    ctx: idem::IdempotencyContext,
    counters: web::Data<Counters>,
) -> HttpResponse {
    let n = counters.semantic.fetch_add(1, Ordering::SeqCst) + 1;
    guarantee_answer(n, &order, &ctx)
}

/// A charge-like answer from the conflict-policy handlers: 201, a Location and the run number.
async fn charge_like(counter: &AtomicUsize, body: &Charge) -> HttpResponse {
    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(body.delay_ms)).await;
    HttpResponse::Created()
        .insert_header(("Location", format!("/things/{n}")))
        .json(serde_json::json!({ "run": n, "amount": body.amount }))
}

#[actix_web::post("/wait")]
#[idempotent(on_conflict = "wait", wait_timeout = "5s")]
async fn wait(body: web::Json<Charge>, counters: web::Data<Counters>) -> HttpResponse {
    charge_like(&counters.wait, &body).await
}

#[actix_web::post("/wait-short")]
#[idempotent(on_conflict = "wait", wait_timeout = "300ms")]
async fn wait_short(body: web::Json<Charge>, counters: web::Data<Counters>) -> HttpResponse {
    charge_like(&counters.wait, &body).await
}

#[actix_web::post("/accepted")]
#[idempotent(on_conflict = "accepted")]
async fn accepted(body: web::Json<Charge>, counters: web::Data<Counters>) -> HttpResponse {
    charge_like(&counters.accepted, &body).await
}

#[actix_web::post("/accepted-async")]
#[idempotent(on_conflict = "accepted", respond_async_after = "200ms")]
async fn accepted_async(body: web::Json<Charge>, counters: web::Data<Counters>) -> HttpResponse {
    charge_like(&counters.accepted, &body).await
}

#[actix_web::post("/webhook")]
#[idempotent(on_conflict = "webhook")]
async fn webhook(body: web::Json<Charge>, counters: web::Data<Counters>) -> HttpResponse {
    charge_like(&counters.webhook, &body).await
}

/// The main test handler: counts, waits `delay_ms`, answers 201 with headers that are and are
/// not replayable.
#[actix_web::post("/charge")]
#[idempotent(ttl = "1h")]
async fn charge(body: web::Json<Charge>, counters: web::Data<Counters>) -> HttpResponse {
    let n = counters.charge.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(body.delay_ms)).await;
    HttpResponse::Created()
        .insert_header(("Location", format!("/charges/{n}")))
        .insert_header(("ETag", format!("\"v{n}\"")))
        .insert_header(("Set-Cookie", "session=secret; HttpOnly"))
        .insert_header(("X-Request-Id", format!("req-{n}")))
        .insert_header(("X-Not-Allowed", "1"))
        .json(serde_json::json!({ "charge": n, "amount": body.amount }))
}

/// Like `slow`, with a 3 s lease: room for a check "within the lease" on a busy machine.
#[idempotent(lease = "3s", ttl = "1h")]
#[actix_web::post("/slow-long-lease")]
async fn slow_long_lease(body: web::Json<Charge>, counters: web::Data<Counters>) -> HttpResponse {
    let n = counters.slow.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(body.delay_ms)).await;
    HttpResponse::Ok().json(serde_json::json!({ "slow": n }))
}

/// Slower than its lease: renewal must keep duplicates out.
#[idempotent(lease = "1s", ttl = "1h")]
#[actix_web::post("/slow")]
async fn slow(body: web::Json<Charge>, counters: web::Data<Counters>) -> HttpResponse {
    let n = counters.slow.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(body.delay_ms)).await;
    HttpResponse::Ok().json(serde_json::json!({ "slow": n }))
}

#[actix_web::post("/short-ttl")]
#[idempotent(ttl = "1s")]
async fn short_ttl(counters: web::Data<Counters>) -> String {
    let n = counters.short_ttl.fetch_add(1, Ordering::SeqCst) + 1;
    format!("run {n}")
}

#[actix_web::post("/optional")]
#[idempotent(required = false)]
async fn optional(counters: web::Data<Counters>) -> String {
    let n = counters.optional.fetch_add(1, Ordering::SeqCst) + 1;
    format!("run {n}")
}

#[actix_web::post("/small")]
#[idempotent(max_body = "1KiB")]
async fn small(body: web::Bytes, counters: web::Data<Counters>) -> String {
    counters.small.fetch_add(1, Ordering::SeqCst);
    format!("{} bytes", body.len())
}

/// Panics on its first run only.
#[actix_web::post("/panics")]
#[idempotent]
async fn panics(counters: web::Data<Counters>) -> &'static str {
    if counters.panics.fetch_add(1, Ordering::SeqCst) == 0 {
        panic!("first run panics (expected by the test)");
    }
    "recovered"
}

/// Panics on its first run only, under `result`: a panic is then a released 5xx.
#[actix_web::post("/panics-result")]
#[idempotent(guarantee = "result")]
async fn panics_result(counters: web::Data<Counters>) -> &'static str {
    if counters.panics.fetch_add(1, Ordering::SeqCst) == 0 {
        panic!("first run panics (expected by the test)");
    }
    "recovered"
}

/// 9 MiB: over the default `max_response_bytes` (8 MiB). Answers 201 with the run number in a
/// header, and a body of `delay_ms`-independent bytes.
#[actix_web::post("/big")]
#[idempotent]
async fn big(counters: web::Data<Counters>) -> HttpResponse {
    let n = counters.big.fetch_add(1, Ordering::SeqCst) + 1;
    HttpResponse::Created()
        .insert_header(("X-Run", n.to_string()))
        .content_type("application/octet-stream")
        .body(vec![b'x'; 9 << 20])
}

/// A streamed body that fails after its first chunk.
#[actix_web::post("/broken-stream")]
#[idempotent]
async fn broken_stream(counters: web::Data<Counters>) -> HttpResponse {
    counters.broken.fetch_add(1, Ordering::SeqCst);
    let chunks: Vec<Result<web::Bytes, std::io::Error>> = vec![
        Ok(web::Bytes::from_static(b"{\"partial\":")),
        Err(std::io::Error::other("the report generator crashed")),
    ];
    HttpResponse::Accepted()
        .content_type("application/json")
        .streaming(futures_util::stream::iter(chunks))
}

/// Runs for `delay_ms` in 10 ms steps and answers the longest gap between two steps: how long
/// the handler was not polled. Its lease is 1.5 s (renewed every 500 ms).
#[actix_web::post("/progress")]
#[idempotent(lease = "1500ms", ttl = "1h")]
async fn progress(body: web::Json<Charge>, counters: web::Data<Counters>) -> HttpResponse {
    let n = counters.progress.fetch_add(1, Ordering::SeqCst) + 1;
    let until = std::time::Instant::now() + Duration::from_millis(body.delay_ms);
    let mut last = std::time::Instant::now();
    let mut max_gap = Duration::ZERO;
    while std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
        max_gap = max_gap.max(last.elapsed());
        last = std::time::Instant::now();
    }
    HttpResponse::Ok()
        .json(serde_json::json!({ "run": n, "max_gap_ms": max_gap.as_millis() as u64 }))
}

/// `wait` for duplicates and `proceed` on store errors: a duplicate whose wait fails must still
/// never run.
#[actix_web::post("/wait-proceed")]
#[idempotent(
    on_conflict = "wait",
    wait_timeout = "10s",
    on_store_error = "proceed",
    lease = "3s"
)]
async fn wait_proceed(body: web::Json<Charge>, counters: web::Data<Counters>) -> HttpResponse {
    charge_like(&counters.wait, &body).await
}

/// Returns `Err` (a 500): under `strict` that is a response like any other, and is replayed.
#[actix_web::post("/fails")]
#[idempotent]
async fn fails(counters: web::Data<Counters>) -> Result<HttpResponse, actix_web::Error> {
    let n = counters.fails.fetch_add(1, Ordering::SeqCst) + 1;
    Err(actix_web::error::ErrorInternalServerError(format!(
        "processor down (run {n})"
    )))
}

#[actix_web::post("/proceed")]
#[idempotent(on_store_error = "proceed")]
async fn proceed(counters: web::Data<Counters>) -> String {
    let n = counters.proceed.fetch_add(1, Ordering::SeqCst) + 1;
    format!("run {n}")
}

#[derive(Deserialize)]
pub struct Q {
    pub note: String,
}

/// Path, query, the request and app data, all re-extracted from the buffered request.
#[actix_web::post("/mixed/{account}/{n}")]
#[idempotent]
async fn mixed(
    path: web::Path<(String, u32)>,
    q: web::Query<Q>,
    req: HttpRequest,
    body: web::Json<Charge>,
    counters: web::Data<Counters>,
) -> actix_web::Result<web::Json<serde_json::Value>> {
    counters.mixed.fetch_add(1, Ordering::SeqCst);
    let (account, n) = path.into_inner();
    Ok(web::Json(serde_json::json!({
        "account": account,
        "n": n,
        "note": q.note,
        "method": req.method().as_str(),
        "amount": body.amount,
    })))
}

#[derive(Deserialize)]
pub struct Order {
    pub item: String,
}

#[actix_web::post("/form")]
#[idempotent]
async fn form(f: web::Form<Order>, counters: web::Data<Counters>) -> String {
    let n = counters.form.fetch_add(1, Ordering::SeqCst) + 1;
    format!("ordered {} (run {n})", f.item)
}

/// Parses a problem+json body and checks its shape.
pub async fn problem(resp: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let v: serde_json::Value = resp.json().await.expect("problem+json body");
    assert_eq!(v["status"], status);
    assert!(v["type"]
        .as_str()
        .is_some_and(|t| t.starts_with("urn:idem:problem:")));
    assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()));
    v
}
