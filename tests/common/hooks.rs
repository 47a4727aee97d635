//! A real webhook receiver on loopback that keeps every delivery it gets.

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use std::sync::{Arc, Mutex};

/// What the local webhook receiver got.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub path: String,
    pub signature: String,
    /// The `Idempotency-Delivery` id.
    pub id: String,
    pub status: String,
    pub key: String,
    pub body: Vec<u8>,
}

pub type Deliveries = Arc<Mutex<Vec<Delivery>>>;

async fn receive(req: HttpRequest, body: web::Bytes, got: web::Data<Deliveries>) -> HttpResponse {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    got.lock().unwrap().push(Delivery {
        path: req.path().to_owned(),
        signature: h("idempotency-signature"),
        id: h("idempotency-delivery"),
        status: h("idempotency-status"),
        key: h("idempotency-key"),
        body: body.to_vec(),
    });
    HttpResponse::NoContent().finish()
}

/// A real HTTP receiver on loopback; returns its base URL and what it received.
pub fn receiver() -> (String, Deliveries, actix_web::dev::ServerHandle) {
    let got: Deliveries = Arc::default();
    let data = web::Data::new(got.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .default_service(web::post().to(receive))
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .unwrap();
    let base = format!("http://{}", server.addrs()[0]);
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    (base, got, handle)
}
