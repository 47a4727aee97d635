// Any extractor mix actix-web accepts, from none up to 16.
#![deny(warnings)]

use actix_web::{post, web, App, HttpRequest, HttpResponse};
use idem::idempotent;

#[derive(serde::Deserialize)]
struct Body {
    n: u32,
}

#[derive(serde::Deserialize)]
struct Q {
    page: Option<u32>,
}

struct Db;

#[post("/none")]
#[idempotent]
async fn none() -> HttpResponse {
    HttpResponse::Ok().finish()
}

#[post("/json/{id}")]
#[idempotent]
async fn json_path_query(
    id: web::Path<u64>,
    q: web::Query<Q>,
    body: web::Json<Body>,
    db: web::Data<Db>,
    req: HttpRequest,
) -> HttpResponse {
    let _ = (&db, req.method());
    HttpResponse::Ok().body(format!("{} {:?} {}", id, q.page, body.n))
}

#[post("/bytes")]
#[idempotent]
async fn bytes(body: web::Bytes) -> HttpResponse {
    HttpResponse::Ok().body(body)
}

#[post("/form")]
#[idempotent]
async fn form(web::Form(b): web::Form<Body>) -> String {
    b.n.to_string()
}

#[post("/destructured/{a}/{b}")]
#[idempotent]
async fn destructured(path: web::Path<(String, u32)>, _: HttpRequest) -> String {
    let (a, b) = path.into_inner();
    format!("{a}{b}")
}

#[post("/sixteen")]
#[idempotent]
#[allow(clippy::too_many_arguments)]
async fn sixteen(
    _a: HttpRequest,
    _b: HttpRequest,
    _c: HttpRequest,
    _d: HttpRequest,
    _e: HttpRequest,
    _f: HttpRequest,
    _g: HttpRequest,
    _h: HttpRequest,
    _i: HttpRequest,
    _j: HttpRequest,
    _k: HttpRequest,
    _l: HttpRequest,
    _m: HttpRequest,
    _n: HttpRequest,
    _o: HttpRequest,
    _p: web::Bytes,
) -> &'static str {
    "ok"
}

fn main() {
    let _app = App::new()
        .app_data(web::Data::new(Db))
        .service(none)
        .service(json_path_query)
        .service(bytes)
        .service(form)
        .service(destructured)
        .service(sixteen);
}
