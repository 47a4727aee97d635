// Keys from a query parameter, a form field, a cookie, or several in order of preference.
#![deny(warnings)]

use actix_web::{post, web, App, HttpResponse};
use idem::{idempotent, Idempotency};

#[post("/deep-link")]
#[idempotent(key = "query:idem")]
async fn deep_link() -> HttpResponse {
    HttpResponse::Created().finish()
}

#[derive(serde::Deserialize)]
struct Order {
    item: String,
}

#[post("/checkout")]
#[idempotent(key = ["header:Idempotency-Key", "form:_idem"], on_conflict = "wait")]
async fn checkout(order: web::Form<Order>) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header(("location", format!("/receipts/{}", order.item)))
        .finish()
}

#[post("/session")]
#[idempotent(key = ["cookie:idem", "header:X-Request-Key"])]
async fn session() -> HttpResponse {
    HttpResponse::Created().finish()
}

fn main() {
    let _hidden: String = idem::form_key_input("_idem");
    let idem = Idempotency::builder().unscoped().build();
    let _app = App::new()
        .app_data(idem)
        .service(deep_link)
        .service(checkout)
        .service(session);
}
