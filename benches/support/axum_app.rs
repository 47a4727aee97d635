//! The load benchmark's axum app: the same JSON handler as the actix app's, plain (`/plain`) and
//! behind idem's tower layer on the memory store (`/idem`), served by one thread (a
//! current-thread tokio runtime, as the actix app has one worker).

use axum::routing::post;
use axum::Json;
use idem::{Idempotency, MemoryStore};
use idem_runtime::tower::IdempotencyLayer;
use std::net::SocketAddr;

async fn handler(
    Json(body): Json<serde_json::Value>,
) -> (axum::http::StatusCode, Json<serde_json::Value>) {
    (
        axum::http::StatusCode::CREATED,
        Json(serde_json::json!({
            "id": "pay_000001",
            "amount": body["amount"],
            "currency": body["currency"],
            "status": "succeeded",
        })),
    )
}

/// Starts the axum app; its address.
pub(crate) fn serve_axum() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let idem = Idempotency::builder()
                .unscoped()
                .store(MemoryStore::builder().max_bytes(4 << 30).build())
                .build();
            let policy = idem::policy!(name = "load.axum", ttl = "1h");
            let app = axum::Router::new().route("/plain", post(handler)).route(
                "/idem",
                post(handler).layer(IdempotencyLayer::new(&idem, policy)),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let _ = tx.send(listener.local_addr().expect("address"));
            let _ = axum::serve(listener, app).await;
        });
    });
    rx.recv().expect("axum address")
}
