// Any return type that implements Responder, Result included.
#![deny(warnings)]

use actix_web::{http::StatusCode, post, web, App, HttpResponse, Responder, ResponseError};
use idem::idempotent;

#[derive(Debug)]
struct PaymentError;

impl std::fmt::Display for PaymentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("card declined")
    }
}

impl ResponseError for PaymentError {
    fn status_code(&self) -> StatusCode {
        StatusCode::PAYMENT_REQUIRED
    }
}

#[post("/a")]
#[idempotent]
async fn result_actix() -> Result<HttpResponse, actix_web::Error> {
    Ok(HttpResponse::Ok().finish())
}

#[post("/b")]
#[idempotent]
async fn result_custom() -> Result<web::Json<u32>, PaymentError> {
    Err(PaymentError)
}

#[post("/c")]
#[idempotent]
async fn actix_result() -> actix_web::Result<String> {
    Ok("ok".into())
}

#[post("/d")]
#[idempotent]
async fn impl_responder() -> impl Responder {
    ("created", StatusCode::CREATED)
}

#[post("/e")]
#[idempotent]
async fn either() -> actix_web::Either<String, HttpResponse> {
    actix_web::Either::Left("left".into())
}

fn main() {
    let _app = App::new()
        .service(result_actix)
        .service(result_custom)
        .service(actix_result)
        .service(impl_responder)
        .service(either);
}
