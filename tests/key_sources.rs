//! Keys beyond the header: `key = "query:…" | "form:…" | "cookie:…"`, several in order of
//! preference, the same validation for each, and a form field that stays out of the fingerprint.

mod common;

use actix_web::{dev::ServerHandle, post, web, HttpResponse};
use common::problem;
use idem::idempotent;
use reqwest::header::{CONTENT_TYPE, COOKIE};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Default)]
struct Runs(AtomicUsize);

fn ran(runs: &Runs, body: &[u8]) -> HttpResponse {
    let run = runs.0.fetch_add(1, Ordering::SeqCst) + 1;
    HttpResponse::Created().json(serde_json::json!({ "run": run, "bytes": body.len() }))
}

#[post("/any")]
#[idempotent(key = ["header:Idempotency-Key", "form:_idem", "query:idem", "cookie:idem"], max_body = "4KiB")]
async fn any(body: web::Bytes, runs: web::Data<Runs>) -> HttpResponse {
    ran(&runs, &body)
}

#[post("/cookie-first")]
#[idempotent(key = ["cookie:idem", "query:idem"])]
async fn cookie_first(body: web::Bytes, runs: web::Data<Runs>) -> HttpResponse {
    ran(&runs, &body)
}

#[derive(serde::Deserialize)]
struct Order {
    item: String,
}

/// The server-rendered form's shape: the handler's `web::Form` ignores the key field.
#[post("/form-only")]
#[idempotent(key = "form:_idem", on_conflict = "wait")]
async fn form_only(order: web::Form<Order>, runs: web::Data<Runs>) -> HttpResponse {
    ran(&runs, order.item.as_bytes())
}

struct Server {
    addr: SocketAddr,
    runs: web::Data<Runs>,
    client: reqwest::Client,
    _handle: ServerHandle,
}

fn start() -> Server {
    let runs = web::Data::new(Runs::default());
    let r = runs.clone();
    let idem = common::builder().build();
    let (addr, handle) = common::serve(1, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(r.clone())
            .service(any)
            .service(cookie_first)
            .service(form_only);
    });
    Server {
        addr,
        runs,
        client: common::client(),
        _handle: handle,
    }
}

const FORM: &str = "application/x-www-form-urlencoded";

impl Server {
    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(format!("http://{}{path}", self.addr))
    }

    fn form(&self, path: &str, body: &str) -> reqwest::RequestBuilder {
        self.post(path)
            .header(CONTENT_TYPE, FORM)
            .body(body.to_owned())
    }

    fn runs(&self) -> usize {
        self.runs.0.load(Ordering::SeqCst)
    }
}

async fn status(r: reqwest::RequestBuilder) -> (u16, bool) {
    let r = r.send().await.expect("response");
    (
        r.status().as_u16(),
        r.headers().contains_key("idempotent-replayed"),
    )
}

fn multipart(boundary: &str, key: &str, item: &str) -> (String, String) {
    (
        format!("multipart/form-data; boundary={boundary}"),
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"item\"\r\n\r\n{item}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"_idem\"\r\n\r\n{key}\r\n\
             --{boundary}--\r\n"
        ),
    )
}

#[actix_web::test]
async fn every_source_carries_a_key() {
    let s = start();
    // Each twice: one execution, then its replay.
    for _ in 0..2 {
        let header = s.post("/any").header("Idempotency-Key", "h1").body("x");
        let query = s.post("/any?idem=q1").body("x");
        let form = s.form("/any", "item=x&_idem=f1");
        let (ct, body) = multipart("b0undary", "m1", "x");
        let multi = s.post("/any").header(CONTENT_TYPE, ct).body(body);
        let cookie = s
            .post("/any")
            .header(COOKIE, "theme=dark; idem=c1")
            .body("x");
        for r in [header, query, form, multi, cookie] {
            let (code, _) = status(r).await;
            assert_eq!(code, 201);
        }
    }
    assert_eq!(s.runs(), 5, "one execution per key, whatever its source");
    let (code, replayed) = status(s.post("/any?idem=q1").body("x")).await;
    assert_eq!((code, replayed), (201, true));
}

#[actix_web::test]
async fn the_first_source_present_wins() {
    let s = start();
    // Header before form: the form's key is ignored while the header is there.
    let both = || {
        s.form("/any", "item=x&_idem=from-form")
            .header("Idempotency-Key", "from-header")
    };
    assert_eq!(status(both()).await, (201, false));
    assert_eq!(status(both()).await, (201, true));
    assert_eq!(
        status(s.form("/any", "item=x&_idem=from-form")).await,
        (201, false),
        "the form's key was never used"
    );
    // Form before query.
    let (code, replayed) = status(s.form("/any?idem=from-query", "item=x&_idem=from-form")).await;
    assert_eq!((code, replayed), (201, true), "the form key above");
    // Cookie before query on the other endpoint.
    let r = || {
        s.post("/cookie-first?idem=q")
            .header(COOKIE, "idem=c")
            .body("x")
    };
    assert_eq!(status(r()).await, (201, false));
    assert_eq!(
        status(s.post("/cookie-first?idem=q").body("x")).await,
        (201, false),
        "the query's key was never used"
    );
    assert_eq!(status(r()).await, (201, true));
    // A key is a key, whichever source carried it.
    assert_eq!(
        status(s.post("/cookie-first?idem=c").body("x")).await,
        (201, true)
    );
    assert_eq!(s.runs(), 4);
}

#[actix_web::test]
async fn a_malformed_key_is_a_400_in_every_source() {
    let s = start();
    let long = "k".repeat(256);
    let cases = [
        (
            s.post("/any").header("Idempotency-Key", "a b").body("x"),
            "header `idempotency-key`",
        ),
        (
            s.form("/any", &format!("item=x&_idem={long}")),
            "form field `_idem`",
        ),
        (s.form("/any", "_idem=a&_idem=b"), "form field `_idem`"),
        (
            s.post("/any?idem=%E2%9C%93").body("x"),
            "query parameter `idem`",
        ),
        (s.post("/any?idem=").body("x"), "query parameter `idem`"),
        (
            s.post("/any").header(COOKIE, "idem=a; idem=b").body("x"),
            "cookie `idem`",
        ),
        (
            s.post("/any")
                .header(CONTENT_TYPE, "multipart/form-data; boundary=zz")
                .body("--zz\r\nbroken"),
            "form field `_idem`",
        ),
        // Malformed in the first source present, valid in a later one: still refused.
        (s.form("/any?idem=fine", "_idem=%00"), "form field `_idem`"),
    ];
    for (req, source) in cases {
        let p = problem(req.send().await.unwrap(), 400).await;
        assert_eq!(p["type"], "urn:idem:problem:key-invalid");
        let detail = p["detail"].as_str().unwrap();
        assert!(detail.starts_with(source), "{detail}");
    }
    let p = problem(s.post("/any").body("x").send().await.unwrap(), 400).await;
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("form field `_idem`") && detail.contains("cookie `idem`"),
        "{detail}"
    );
    // The body limit holds for form keys too.
    let big = format!("_idem=k&item={}", "x".repeat(5000));
    problem(s.form("/any", &big).send().await.unwrap(), 413).await;
    assert_eq!(s.runs(), 0);
}

#[actix_web::test]
async fn the_key_field_is_not_part_of_the_fingerprint() {
    let s = start();
    // Same header key, the form's own `_idem` differs: still the same request.
    let with = |field: &str| {
        s.form("/any", &format!("item=book&_idem={field}&qty=1"))
            .header("Idempotency-Key", "fp-1")
    };
    assert_eq!(status(with("a")).await, (201, false));
    assert_eq!(status(with("b")).await, (201, true));
    // Other fields still count.
    let other = s
        .form("/any", "item=pen&_idem=a&qty=1")
        .header("Idempotency-Key", "fp-1");
    problem(other.send().await.unwrap(), 422).await;
    // A browser picks a new multipart boundary for every submission: not a different request.
    for boundary in ["----WebKitFormBoundaryA1", "----WebKitFormBoundaryZ9"] {
        let (ct, body) = multipart(boundary, "mp-1", "book");
        let (code, _) = status(s.post("/any").header(CONTENT_TYPE, ct).body(body)).await;
        assert_eq!(code, 201);
    }
    assert_eq!(s.runs(), 2);
}

#[actix_web::test]
async fn a_plain_form_posts_its_hidden_key() {
    let s = start();
    let key = idem::form_key();
    let body = format!("item=book&_idem={key}");
    let first: serde_json::Value = s
        .form("/form-only", &body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let again = s.form("/form-only", &body).send().await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<serde_json::Value>().await.unwrap(), first);
    // A fresh form render, a fresh key: a new order.
    let next = format!("item=book&_idem={}", idem::form_key());
    assert_eq!(status(s.form("/form-only", &next)).await, (201, false));
    assert_eq!(s.runs(), 2);
}

/// A gzip-encoded form still yields its key (and its fingerprint is of the decoded fields).
#[actix_web::test]
async fn a_gzip_form_is_read_decoded() {
    use std::io::Write;
    let s = start();
    let gzip = |form: &str| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(form.as_bytes()).unwrap();
        gz.finish().unwrap()
    };
    let send = |body: Vec<u8>| {
        s.post("/form-only")
            .header(CONTENT_TYPE, FORM)
            .header("Content-Encoding", "gzip")
            .body(body)
    };
    assert_eq!(
        status(send(gzip("item=book&_idem=gz-1"))).await,
        (201, false)
    );
    // The same form, sent plain this time: the same request.
    assert_eq!(
        status(s.form("/form-only", "item=book&_idem=gz-1")).await,
        (201, true)
    );
    assert_eq!(s.runs(), 1);
}
