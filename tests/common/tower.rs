//! An axum app behind idem's tower layer, on a free loopback port, in a thread of its own with a
//! multi-threaded tokio runtime (as axum apps run); and one handler served the same way by both
//! adapters, for comparing them.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Serves the router `make` builds (inside the app's runtime, so that stores it connects are
/// driven there). The runtime lives as long as the test process.
pub fn serve<F, Fut>(make: F) -> SocketAddr
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = axum::Router>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime for the axum app");
        rt.block_on(async move {
            let router = make().await;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind a loopback port");
            let _ = tx.send(listener.local_addr().expect("its address"));
            let _ = axum::serve(listener, router).await;
        });
    });
    rx.recv().expect("the axum app's address")
}

/// Executions of the handler, shared by every app of a test.
pub type Runs = Arc<AtomicUsize>;

/// The handler of the comparisons: counts its run, waits `X-Delay-Ms` if asked, and answers 201
/// with its body (as JSON) and `X-Run: <n>`.
pub async fn echo(
    State(runs): State<Runs>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(delay(headers.get("x-delay-ms").map(|v| v.as_bytes()))).await;
    (
        StatusCode::CREATED,
        [
            ("content-type", "application/json".to_owned()),
            ("x-run", n.to_string()),
        ],
        body,
    )
}

/// The delay a request asks for.
pub fn delay(header: Option<&[u8]>) -> Duration {
    let ms = header
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Duration::from_millis(ms)
}

/// The same handler's body for an actix-web `#[idempotent]` endpoint.
pub async fn echo_actix(
    runs: &Runs,
    req: &actix_web::HttpRequest,
    body: actix_web::web::Bytes,
) -> actix_web::HttpResponse {
    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(delay(req.headers().get("x-delay-ms").map(|v| v.as_bytes()))).await;
    actix_web::HttpResponse::Created()
        .content_type("application/json")
        .insert_header(("x-run", n.to_string()))
        .body(body)
}
