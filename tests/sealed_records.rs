//! Encryption at rest, end to end on every store: after traffic whose responses carry a marker,
//! a dump of the store (Redis `SCAN` + `GET`, PostgreSQL `SELECT`, the memory store's records)
//! holds the marker nowhere, in clear or in hex; clients holding their key still get
//! byte-identical replays; a record copied over another key is refused (500
//! `record-unreadable`), and nothing runs again. Real servers: a private `redis-server`, the
//! local PostgreSQL.

mod common;

use actix_web::{post, web, HttpResponse};
use common::redis::{available, RedisServer};
use idem::{idempotent, Idempotency, MemoryStore};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const MARKER: &str = "MARKER-9c1e";
const SECRET: &[u8] = b"sealed-records-test-secret-0123456789abcdef";

#[derive(Default)]
struct Runs(AtomicUsize);

#[post("/pay")]
#[idempotent(name = "pay")]
async fn pay(runs: web::Data<Runs>) -> HttpResponse {
    let n = runs.0.fetch_add(1, Ordering::SeqCst) + 1;
    HttpResponse::Created()
        .insert_header(("Location", format!("/pay/{MARKER}-{n}")))
        .json(json!({ "card": format!("{MARKER}-4242"), "run": n }))
}

/// Slower than `respond_async_after`: the first client gets 202 and a status URL.
#[post("/later")]
#[idempotent(name = "later", on_conflict = "accepted", respond_async_after = "50ms")]
async fn later(runs: web::Data<Runs>) -> HttpResponse {
    runs.0.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    HttpResponse::Created().json(json!({ "card": format!("{MARKER}-later") }))
}

struct App {
    base: String,
    runs: web::Data<Runs>,
    handle: actix_web::dev::ServerHandle,
}

fn start(idem: Idempotency) -> App {
    let runs = web::Data::new(Runs::default());
    let r = runs.clone();
    let (addr, handle) = common::serve(1, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(r.clone())
            .service(pay)
            .service(later)
            .service(idem.status_service());
    });
    App {
        base: format!("http://{addr}"),
        runs,
        handle,
    }
}

fn secret_builder() -> idem::IdempotencyBuilder<idem::Scoped> {
    common::builder().secret(SECRET)
}

/// What one request got: status, Location, body.
async fn send(app: &App, key: &str) -> (u16, String, Vec<u8>, bool) {
    let resp = common::client()
        .post(format!("{}/pay", app.base))
        .header("Idempotency-Key", key)
        .json(&json!({ "amount": 1 }))
        .send()
        .await
        .expect("request");
    let replayed = resp.headers().contains_key("idempotent-replayed");
    let location = resp
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap_or("").to_owned())
        .unwrap_or_default();
    let status = resp.status().as_u16();
    (
        status,
        location,
        resp.bytes().await.expect("body").to_vec(),
        replayed,
    )
}

/// Ten operations, each retried: the retry is a byte-identical replay.
async fn traffic(app: &App, tag: &str) {
    for i in 0..10 {
        let key = format!("{tag}-{i}");
        let first = send(app, &key).await;
        assert_eq!(first.0, 201);
        assert!(String::from_utf8_lossy(&first.2).contains(MARKER));
        let again = send(app, &key).await;
        assert!(again.3, "a replay");
        assert_eq!((again.0, &again.1, &again.2), (first.0, &first.1, &first.2));
    }
    assert_eq!(app.runs.0.load(Ordering::SeqCst), 10);
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn assert_nothing_readable(dump: &[u8], store: &str) {
    let found = |needle: &[u8]| dump.windows(needle.len()).any(|w| w == needle);
    assert!(!dump.is_empty(), "{store}: the dump is empty");
    // Long needles only: four digits such as the card's last ones turn up by chance in hex
    // ciphertext and timestamps.
    for needle in [MARKER.to_owned(), hex(MARKER)] {
        assert!(
            !found(needle.as_bytes()),
            "{store}: `{needle}` is readable in the store"
        );
    }
    // The plain fingerprint of the request body would be a guessing oracle: only a keyed one
    // is kept.
    let plain = idem::Fingerprint::strict("POST", "/pay", "application/json", br#"{"amount":1}"#);
    let plain_hex: String = plain.0.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!found(&plain.0), "{store}: the plain fingerprint is kept");
    assert!(
        !found(plain_hex.as_bytes()),
        "{store}: the plain fingerprint is kept (hex)"
    );
}

/// Retries each of `keys` after their records were swapped: refused, never run again.
async fn assert_swapped_records_refused(app: &App, keys: &[&str]) {
    let runs = app.runs.0.load(Ordering::SeqCst);
    for key in keys {
        let resp = common::client()
            .post(format!("{}/pay", app.base))
            .header("Idempotency-Key", *key)
            .json(&json!({ "amount": 1 }))
            .send()
            .await
            .expect("request");
        let p = common::problem(resp, 500).await;
        assert_eq!(
            p["type"], "urn:idem:problem:record-unreadable",
            "{key}: {p}"
        );
    }
    assert_eq!(app.runs.0.load(Ordering::SeqCst), runs, "nothing ran again");
}

#[actix_rt::test]
async fn the_memory_store_holds_nothing_readable() {
    let store = MemoryStore::default();
    let app = start(secret_builder().store(store.clone()).build());
    traffic(&app, "mem").await;
    let mut dump = Vec::new();
    for (key, record) in store.dump() {
        dump.extend_from_slice(key.as_bytes());
        dump.extend_from_slice(format!("{record:?}").as_bytes());
        if let idem::RecordState::Completed { response } = record.state {
            dump.extend_from_slice(&response.encode());
        }
    }
    assert_nothing_readable(&dump, "memory");
    app.handle.stop(true).await;
}

#[actix_rt::test]
async fn redis_holds_nothing_readable_and_refuses_swapped_records() {
    if !available("redis_holds_nothing_readable_and_refuses_swapped_records") {
        return;
    }
    let server = RedisServer::start();
    let store = idem::RedisStore::connect(&server.url())
        .await
        .expect("connect");
    let app = start(secret_builder().store(store).build());
    traffic(&app, "redis").await;
    let client = redis::Client::open(server.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    let mut dump = Vec::new();
    let mut values = Vec::new();
    for k in &keys {
        let v: Vec<u8> = redis::cmd("GET")
            .arg(k)
            .query_async(&mut conn)
            .await
            .expect("GET");
        dump.extend_from_slice(k.as_bytes());
        dump.extend_from_slice(&v);
        values.push(v);
    }
    assert_nothing_readable(&dump, "redis");

    // Every payment record's value moved to the next one's key (TTLs kept): each key now holds
    // another's. Only the records of this traffic (the same request body, so the same
    // fingerprint at bytes 1..33): the app's secret-check record would make a mismatch instead.
    let fingerprint = |v: &Vec<u8>| v.get(1..33).map(<[u8]>::to_vec);
    let common = values.iter().filter_map(fingerprint).max_by_key(|f| {
        values
            .iter()
            .filter(|v| fingerprint(v).as_ref() == Some(f))
            .count()
    });
    let (keys, values): (Vec<_>, Vec<_>) = keys
        .iter()
        .zip(values.iter())
        .filter(|(_, v)| fingerprint(v) == common)
        .unzip();
    assert_eq!(keys.len(), 10, "the ten payment records");
    for (i, k) in keys.iter().enumerate() {
        let v = values[(i + 1) % values.len()];
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg(v)
            .arg("KEEPTTL")
            .query_async(&mut conn)
            .await
            .expect("SET");
    }
    assert_swapped_records_refused(&app, &["redis-0", "redis-5", "redis-9"]).await;
    app.handle.stop(true).await;
}

#[actix_rt::test]
async fn postgresql_holds_nothing_readable_and_refuses_swapped_records() {
    let table = common::pg::table("idem_sealed");
    let Some(store) = common::pg::store("sealed records (PostgreSQL)", &table).await else {
        return;
    };
    let app = start(secret_builder().store(store).build());
    traffic(&app, "pg").await;
    let db = common::pg::client().await;
    let rows = db
        .query(&format!("SELECT row_to_json(t)::text FROM {table} t"), &[])
        .await
        .expect("dump");
    let dump: Vec<u8> = rows
        .iter()
        .flat_map(|r| r.get::<_, String>(0).into_bytes())
        .collect();
    assert_nothing_readable(&dump, "postgresql");

    let completed = db
        .query(
            &format!("SELECT key, response FROM {table} WHERE state = 'c' ORDER BY key"),
            &[],
        )
        .await
        .expect("records");
    for (i, row) in completed.iter().enumerate() {
        let next: Vec<u8> = completed[(i + 1) % completed.len()].get(1);
        let key: String = row.get(0);
        db.execute(
            &format!("UPDATE {table} SET response = $1 WHERE key = $2"),
            &[&next, &key],
        )
        .await
        .expect("swap");
    }
    assert_swapped_records_refused(&app, &["pg-0", "pg-5", "pg-9"]).await;
    app.handle.stop(true).await;
    common::pg::drop_tables(&db, &[&table]).await;
}

/// The status resource of `accepted` keeps working: its Location carries a token that opens the
/// sealed result; without the token the result is not shown.
#[actix_rt::test]
async fn a_status_url_opens_the_sealed_result_with_its_token_only() {
    let app = start(secret_builder().build());
    let client = common::client();
    let resp = client
        .post(format!("{}/later", app.base))
        .header("Idempotency-Key", "later-1")
        .json(&json!({}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(location.contains("?t="), "{location}");
    assert!(
        !location.contains("later-1"),
        "the raw key is not in the URL"
    );
    let done = loop {
        let r = client
            .get(format!("{}{location}", app.base))
            .send()
            .await
            .expect("poll");
        if r.status() != 202 {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done.status(), 201);
    assert!(done.text().await.expect("body").contains(MARKER));
    let bare = location.split('?').next().unwrap_or_default();
    let without = client
        .get(format!("{}{bare}", app.base))
        .send()
        .await
        .expect("poll");
    let p = common::problem(without, 404).await;
    assert!(p["detail"].as_str().unwrap_or("").contains("token"), "{p}");
    let forged = client
        .get(format!("{}{bare}?t=00112233", app.base))
        .send()
        .await
        .expect("poll");
    common::problem(forged, 404).await;
    assert_eq!(app.runs.0.load(Ordering::SeqCst), 1);
    app.handle.stop(true).await;
}

/// Without a secret nothing is sealed: the memory store holds the response as the handler made
/// it (the README says so; this keeps the statement true).
#[actix_rt::test]
async fn without_a_secret_records_are_kept_in_clear() {
    let store = MemoryStore::default();
    let app = start(common::builder().store(store.clone()).build());
    let first = send(&app, "clear-1").await;
    assert_eq!(first.0, 201);
    let clear = store.dump().into_iter().any(|(_, r)| {
        matches!(r.state, idem::RecordState::Completed { response }
            if String::from_utf8_lossy(response.body()).contains(MARKER))
    });
    assert!(clear);
    app.handle.stop(true).await;
}

/// A transactional endpoint: the sealed record commits with the handler's own row, and a retry
/// opens it.
#[post("/ledger")]
#[idempotent(name = "ledger", transactional)]
async fn ledger(
    tx: idem_runtime::IdemTx,
    table: web::Data<String>,
) -> actix_web::Result<HttpResponse> {
    let db = tx.client().await?;
    db.execute(
        &format!("INSERT INTO {} DEFAULT VALUES", table.get_ref()),
        &[],
    )
    .await
    .map_err(actix_web::error::ErrorInternalServerError)?;
    Ok(HttpResponse::Created().json(json!({ "entry": format!("{MARKER}-ledger") })))
}

#[actix_rt::test]
async fn a_transactional_record_is_sealed_and_replays() {
    let records = common::pg::table("idem_sealed_tx");
    let Some(store) = common::pg::store("sealed transactional records", &records).await else {
        return;
    };
    let db = common::pg::client().await;
    let rows = common::pg::table("ledger_sealed");
    db.batch_execute(&format!("CREATE TABLE {rows} (id bigserial PRIMARY KEY)"))
        .await
        .expect("create the ledger");
    let idem = secret_builder().store(store).build();
    let t = web::Data::new(rows.clone());
    let (addr, handle) = common::serve(1, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(t.clone())
            .service(ledger);
    });
    let send = || {
        common::client()
            .post(format!("http://{addr}/ledger"))
            .header("Idempotency-Key", "tx-1")
            .send()
    };
    let first = send().await.expect("first");
    assert_eq!(first.status(), 201);
    let first = first.bytes().await.expect("body");
    let again = send().await.expect("retry");
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.bytes().await.expect("body"), first);
    assert_eq!(common::pg::count(&db, &rows).await, 1, "one row");
    let dump: String = db
        .query(
            &format!("SELECT row_to_json(t)::text FROM {records} t"),
            &[],
        )
        .await
        .expect("dump")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    assert_nothing_readable(dump.as_bytes(), "postgresql (transactional)");
    handle.stop(true).await;
    common::pg::drop_tables(&db, &[&records, &rows]).await;
}
