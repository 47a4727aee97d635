//! # idem — idempotent actix-web handlers by declaration
//!
//! ```ignore
//! use actix_web::{post, web, App, HttpServer, Responder};
//! use idem::{idempotent, Idempotency, MemoryStore};
//!
//! #[post("/payments")]
//! #[idempotent(ttl = "24h", guarantee = "strict", on_conflict = "retry_after")]
//! async fn create(body: web::Json<serde_json::Value>) -> impl Responder {
//!     web::Json(body.into_inner())
//! }
//!
//! let idem = Idempotency::builder().unscoped().store(MemoryStore::default()).build();
//! HttpServer::new(move || App::new().app_data(idem.clone()).service(create));
//! ```
//!
//! Every retry, double click or parallel duplicate carrying the same `Idempotency-Key` has the
//! effect of one request: the handler runs once and every retry gets the first response back,
//! with `Idempotent-Replayed: true`. See the README for the options and status codes.

pub use idem_macros::idempotent;
pub use idem_runtime::*;
