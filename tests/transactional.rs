//! Transactional endpoints (`#[idempotent(store = "pg", transactional)]`) on the local
//! PostgreSQL: the handler's ledger write and the stored response commit together or not at all.
//! In-process cases cover every way a handler can end; the process cases (`kill -9`, three
//! instances, TLS) are in `transactional_processes.rs`.

mod common;

use actix_web::{dev::ServerHandle, error, post, web, HttpResponse};
use common::{pg, problem};
use idem::{idempotent, IdempotencyContext, MemoryStore};
// PostgreSQL items come from the runtime: `idem` re-exports them with its own `postgres`
// feature, which a package cannot turn on for its own tests.
use idem_runtime::IdemTx;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Deserialize, Serialize, Clone)]
struct Entry {
    amount: i64,
    /// How the handler ends after its write: "" (201), "500", "409-sql" (bad SQL, then 409),
    /// "panic", "commit" (commits the transaction itself, then 201).
    #[serde(default)]
    end: String,
}

/// Per-app state: the ledger table, handler runs, and a stall the next run takes after writing.
struct Ledger {
    table: String,
    runs: AtomicUsize,
    stall_next_ms: AtomicU64,
}

async fn write(
    tx: &IdemTx,
    ledger: &Ledger,
    entry: &Entry,
) -> actix_web::Result<(i64, Option<HttpResponse>)> {
    ledger.runs.fetch_add(1, Ordering::SeqCst);
    let db = tx.client().await?;
    let id: i64 = db
        .query_one(
            &format!(
                "INSERT INTO {} (amount) VALUES ($1) RETURNING id",
                ledger.table
            ),
            &[&entry.amount],
        )
        .await
        .map_err(error::ErrorInternalServerError)?
        .get(0);
    drop(db);
    let stall = ledger.stall_next_ms.swap(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(stall)).await;
    let early = match entry.end.as_str() {
        "500" => Some(HttpResponse::InternalServerError().json(json!({"error": "boom"}))),
        "409-sql" => {
            // The handler's own SQL fails, which aborts the transaction; it answers 409.
            let db = tx.client().await?;
            let failed = db.execute("SELECT * FROM no_such_table", &[]).await;
            assert!(failed.is_err());
            Some(HttpResponse::Conflict().json(json!({"error": "insufficient funds"})))
        }
        "panic" => panic!("handler panics after its write"),
        // 9 MiB: over the default `max_response_bytes`.
        "big" => Some(
            HttpResponse::Created()
                .content_type("application/octet-stream")
                .body(vec![b'x'; 9 << 20]),
        ),
        "commit" => {
            // Against the rules: the handler ends the runtime's transaction itself.
            let db = tx.client().await?;
            db.batch_execute("COMMIT")
                .await
                .map_err(error::ErrorInternalServerError)?;
            None
        }
        _ => None,
    };
    Ok((id, early))
}

#[post("/ledger")]
#[idempotent(store = "pg", transactional, lease = "1s", guarantee = "result")]
async fn post_ledger(
    tx: IdemTx,
    ctx: IdempotencyContext,
    entry: web::Json<Entry>,
    ledger: web::Data<Ledger>,
) -> actix_web::Result<HttpResponse> {
    let (id, early) = write(&tx, &ledger, &entry).await?;
    Ok(early.unwrap_or_else(|| {
        HttpResponse::Created().json(json!({"id": id, "attempt": ctx.attempt()}))
    }))
}

#[post("/ledger-optional")]
#[idempotent(store = "pg", transactional, required = false)]
async fn ledger_optional(
    tx: IdemTx,
    entry: web::Json<Entry>,
    ledger: web::Data<Ledger>,
) -> actix_web::Result<HttpResponse> {
    let (id, early) = write(&tx, &ledger, &entry).await?;
    Ok(early.unwrap_or_else(|| HttpResponse::Created().json(json!({ "id": id }))))
}

/// Transactional, but on the app's default store (memory): a configuration error.
#[post("/ledger-on-memory")]
#[idempotent(transactional)]
async fn ledger_on_memory(tx: IdemTx) -> actix_web::Result<HttpResponse> {
    tx.client().await?;
    Ok(HttpResponse::Created().finish())
}

/// Takes an `IdemTx` without being transactional: a programming error, answered with a 500.
#[post("/not-transactional")]
#[idempotent(store = "pg")]
async fn not_transactional(tx: IdemTx) -> HttpResponse {
    let _ = tx;
    HttpResponse::Created().finish()
}

struct Server {
    addr: SocketAddr,
    ledger: web::Data<Ledger>,
    client: reqwest::Client,
    handle: ServerHandle,
    db: idem_runtime::tokio_postgres::Client,
    records: String,
}

impl Server {
    /// The app on a ledger and records table of its own; `None` when PostgreSQL is unreachable
    /// (outside CI).
    async fn start(test: &str, renew_leases: bool) -> Option<Server> {
        let records = pg::table("idem_tx");
        let store = pg::store(test, &records).await?;
        let db = pg::client().await;
        let table = pg::table("ledger_tx");
        db.batch_execute(&format!(
            "CREATE TABLE {table} (id bigserial PRIMARY KEY, amount bigint NOT NULL)"
        ))
        .await
        .expect("create the ledger");
        let idem = common::builder()
            .store(MemoryStore::default())
            .named_store("pg", store)
            .renew_leases(renew_leases)
            // `/ledger`'s 1 s lease is renewed every 333 ms; a renewal must fit in that.
            .store_timeout(Duration::from_millis(300))
            .build();
        let ledger = web::Data::new(Ledger {
            table,
            runs: AtomicUsize::new(0),
            stall_next_ms: AtomicU64::new(0),
        });
        let l = ledger.clone();
        let (addr, handle) = common::serve(2, move |cfg| {
            cfg.app_data(idem.clone())
                .app_data(l.clone())
                .service(post_ledger)
                .service(ledger_optional)
                .service(ledger_on_memory)
                .service(not_transactional);
        });
        Some(Server {
            addr,
            ledger,
            client: common::client(),
            handle,
            db,
            records,
        })
    }

    fn post(&self, path: &str, key: Option<&str>, entry: &Entry) -> reqwest::RequestBuilder {
        let b = self
            .client
            .post(format!("http://{}{path}", self.addr))
            .json(entry);
        match key {
            Some(k) => b.header("Idempotency-Key", k),
            None => b,
        }
    }

    async fn rows(&self) -> i64 {
        pg::count(&self.db, &self.ledger.table).await
    }

    fn runs(&self) -> usize {
        self.ledger.runs.load(Ordering::SeqCst)
    }

    async fn stop(self) {
        self.handle.stop(false).await;
        pg::drop_tables(&self.db, &[&self.ledger.table, &self.records]).await;
    }
}

fn entry(amount: i64, end: &str) -> Entry {
    Entry {
        amount,
        end: end.into(),
    }
}

#[actix_web::test]
async fn the_ledger_row_and_the_response_commit_together() {
    let Some(s) = Server::start("the_ledger_row_and_the_response_commit_together", true).await
    else {
        return;
    };
    let first = s
        .post("/ledger", Some("k1"), &entry(100, ""))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = s
        .post("/ledger", Some("k1"), &entry(100, ""))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!((s.rows().await, s.runs()), (1, 1));
    // The record of `k1` on `POST /ledger`, anonymous, under the unkeyed derivation.
    let key = idem::StorageKey::scoped(
        "idem:",
        "POST /ledger",
        b"",
        &idem::IdempotencyKey::parse(b"k1").unwrap(),
    );
    let state: String =
        s.db.query_one(
            &format!("SELECT state::text FROM {} WHERE key = $1", s.records),
            &[&key.as_str()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "c");
    s.stop().await;
}

/// A response too big to keep: the "not kept" marker commits with the ledger row; the retry gets
/// the marker, never a second row.
#[actix_web::test]
async fn a_response_too_big_to_keep_commits_its_marker_with_the_row() {
    let test = "a_response_too_big_to_keep_commits_its_marker_with_the_row";
    let Some(s) = Server::start(test, true).await else {
        return;
    };
    let send = || s.post("/ledger", Some("big"), &entry(7, "big")).send();
    let first = send().await.unwrap();
    assert_eq!(first.status(), 201);
    assert_eq!(first.bytes().await.unwrap().len(), 9 << 20);
    let retry = send().await.unwrap();
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let marker = problem(retry, 201).await;
    assert_eq!(marker["type"], "urn:idem:problem:response-not-kept");
    assert_eq!((s.rows().await, s.runs()), (1, 1));
    s.stop().await;
}

/// Every failure after the write rolls it back and releases the key: the retry runs again.
#[actix_web::test]
async fn a_failing_handler_leaves_no_row_and_the_retry_runs_again() {
    let Some(s) = Server::start(
        "a_failing_handler_leaves_no_row_and_the_retry_runs_again",
        true,
    )
    .await
    else {
        return;
    };
    // A 5xx under `result`: not kept.
    for _ in 0..2 {
        let r = s
            .post("/ledger", Some("k500"), &entry(1, "500"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500);
        assert!(!r.headers().contains_key("idempotent-replayed"));
    }
    assert_eq!((s.rows().await, s.runs()), (0, 2));
    // The handler's SQL failed (transaction aborted): its own 409 comes back, nothing kept.
    for _ in 0..2 {
        let r = s
            .post("/ledger", Some("ksql"), &entry(2, "409-sql"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 409);
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"],
            "insufficient funds"
        );
    }
    assert_eq!((s.rows().await, s.runs()), (0, 4));
    // A panic after the write.
    let r = s
        .post("/ledger", Some("kpanic"), &entry(3, "panic"))
        .send()
        .await
        .unwrap();
    problem(r, 500).await;
    assert_eq!((s.rows().await, s.runs()), (0, 5));
    // The released key runs again (here, for a body that succeeds under a fresh key).
    let r = s
        .post("/ledger", Some("kpanic2"), &entry(3, ""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["attempt"], 1);
    assert_eq!(s.rows().await, 1);
    s.stop().await;
}

/// A handler that stalls past its lease (renewal off) is taken over; the takeover commits, the
/// stalled attempt's fenced completion is refused and its write rolled back: one row.
#[actix_web::test]
async fn an_attempt_that_lost_its_lease_cannot_commit() {
    let Some(s) = Server::start("an_attempt_that_lost_its_lease_cannot_commit", false).await else {
        return;
    };
    s.ledger.stall_next_ms.store(2500, Ordering::SeqCst);
    let stalled = s.post("/ledger", Some("lease"), &entry(7, "")).send();
    let stalled = actix_web::rt::spawn(stalled);
    // Once the first attempt has written, let its 1 s lease lapse.
    let started = Instant::now();
    while s.runs() < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the first attempt never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let takeover = s
        .post("/ledger", Some("lease"), &entry(7, ""))
        .send()
        .await
        .unwrap();
    assert_eq!(takeover.status(), 201);
    let takeover: Value = takeover.json().await.unwrap();
    assert_eq!(takeover["attempt"], 2);
    let stalled = stalled.await.unwrap().unwrap();
    let p = problem(stalled, 409).await;
    assert!(p["detail"].as_str().unwrap().contains("rolled back"), "{p}");
    assert_eq!((s.rows().await, s.runs()), (1, 2));
    let replay = s
        .post("/ledger", Some("lease"), &entry(7, ""))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.json::<Value>().await.unwrap(), takeover);
    s.stop().await;
}

#[actix_web::test]
async fn a_keyless_request_still_gets_its_transaction() {
    let Some(s) = Server::start("a_keyless_request_still_gets_its_transaction", true).await else {
        return;
    };
    let r = s
        .post("/ledger-optional", None, &entry(5, ""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = s
        .post("/ledger-optional", None, &entry(5, "500"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!((s.rows().await, s.runs()), (1, 2));
    s.stop().await;
}

#[actix_web::test]
async fn misconfigured_transactions_are_a_clear_500() {
    let Some(s) = Server::start("misconfigured_transactions_are_a_clear_500", true).await else {
        return;
    };
    let r = s
        .post("/ledger-on-memory", Some("m"), &entry(1, ""))
        .send()
        .await
        .unwrap();
    let p = problem(r, 500).await;
    assert!(
        p["detail"].as_str().unwrap().contains("not PostgreSQL"),
        "{p}"
    );
    let r = s
        .post("/not-transactional", Some("n"), &entry(1, ""))
        .send()
        .await
        .unwrap();
    let p = problem(r, 500).await;
    assert!(
        p["detail"].as_str().unwrap().contains("transactional"),
        "{p}"
    );
    s.stop().await;
}

/// A handler that commits the transaction itself (which it must not) is caught: its writes are
/// committed already, so the response is kept the way a cache store would keep it, and a retry
/// replays instead of writing again.
#[actix_web::test]
async fn a_handler_that_commits_itself_still_gets_one_execution() {
    let Some(s) = Server::start(
        "a_handler_that_commits_itself_still_gets_one_execution",
        true,
    )
    .await
    else {
        return;
    };
    let first = s
        .post("/ledger", Some("self"), &entry(9, "commit"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let again = s
        .post("/ledger", Some("self"), &entry(9, "commit"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!((s.rows().await, s.runs()), (1, 1));
    s.stop().await;
}
