//! A payments ledger on PostgreSQL with a transactional idempotent endpoint: the ledger row and
//! the stored response commit together, or neither does. The transactional suite
//! (`tests/transactional.rs`) kills it with `kill -9` between the ledger write and the response,
//! and runs three of it side by side on one database.
//!
//! ```text
//! PORT=8091 cargo run --example ledger_app        # IDEM_PG=… to use another database
//! curl -X POST localhost:8091/charges -H 'Idempotency-Key: k1' -H 'Content-Type: application/json' \
//!      -d '{"account": "acct_1", "amount": 500}'
//! ```
//!
//! Environment: `IDEM_PG` (libpq string; default the local `test` database), `LEDGER_TABLE`
//! (default `ledger`; its executions are counted in `<LEDGER_TABLE>_runs`), `IDEM_TABLE` (the
//! records; default `idem_records`), `STALL_AFTER_WRITE_MS` (the handler waits this long after
//! its ledger write, before answering: the window the crash test kills in).

use actix_web::{error, post, web, App, HttpResponse, HttpServer};
use idem::{idempotent, Idempotency, IdempotencyContext};
use idem_runtime::tokio_postgres::{self, NoTls};
// PostgreSQL items come from the runtime: `idem` re-exports them with its own `postgres`
// feature, which a package cannot turn on for its own tests.
use idem_runtime::{IdemTx, PostgresStore};
use std::time::Duration;

#[derive(serde::Deserialize)]
struct NewCharge {
    account: String,
    amount: i64,
}

struct Settings {
    ledger: String,
    stall: Duration,
    /// An autocommit connection: executions are counted outside the handler's transaction, so
    /// that a crashed attempt is still counted.
    runs: tokio_postgres::Client,
}

#[post("/charges")]
#[idempotent(
    store = "pg",
    transactional,
    lease = "2s",
    on_conflict = "wait",
    wait_timeout = "30s"
)]
async fn charge(
    tx: IdemTx,
    ctx: IdempotencyContext,
    body: web::Json<NewCharge>,
    settings: web::Data<Settings>,
) -> actix_web::Result<HttpResponse> {
    let db = tx.client().await?;
    let row = db
        .query_one(
            &format!(
                "INSERT INTO {} (operation, account, amount) VALUES ($1, $2, $3) RETURNING id",
                settings.ledger
            ),
            &[&ctx.key(), &body.account, &body.amount],
        )
        .await
        .map_err(error::ErrorInternalServerError)?;
    let id: i64 = row.get(0);
    drop(db);
    settings
        .runs
        .execute(
            &format!("INSERT INTO {}_runs (pid) VALUES ($1)", settings.ledger),
            &[&(std::process::id() as i32)],
        )
        .await
        .map_err(error::ErrorInternalServerError)?;
    tokio::time::sleep(settings.stall).await;
    Ok(HttpResponse::Created().json(serde_json::json!({
        "id": id,
        "account": body.account,
        "amount": body.amount,
        "attempt": ctx.attempt(),
    })))
}

/// Creates the ledger tables (under an advisory lock: several instances may start at once).
async fn migrate(db: &tokio_postgres::Client, ledger: &str) -> Result<(), tokio_postgres::Error> {
    db.batch_execute(&format!(
        "BEGIN;
         SELECT pg_advisory_xact_lock(7420552);
         CREATE TABLE IF NOT EXISTS {ledger} (
             id bigserial PRIMARY KEY, operation text NOT NULL, account text NOT NULL,
             amount bigint NOT NULL, at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE IF NOT EXISTS {ledger}_runs (pid integer NOT NULL);
         COMMIT;"
    ))
    .await
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let pg = env_or(
        "IDEM_PG",
        "host=127.0.0.1 port=5432 user=postgres dbname=test",
    );
    let ledger = env_or("LEDGER_TABLE", "ledger");
    if ledger.is_empty()
        || !ledger
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(std::io::Error::other(
            "LEDGER_TABLE: letters, digits and `_`",
        ));
    }
    let port: u16 = env_or("PORT", "8091")
        .parse()
        .map_err(std::io::Error::other)?;
    let stall = Duration::from_millis(env_or("STALL_AFTER_WRITE_MS", "0").parse().unwrap_or(0));

    let store = PostgresStore::builder(&pg)
        .table(&env_or("IDEM_TABLE", "idem_records"))
        .max_connections(8)
        .connect()
        .await
        .map_err(std::io::Error::other)?;
    let (runs, connection) = tokio_postgres::connect(&pg, NoTls)
        .await
        .map_err(std::io::Error::other)?;
    actix_web::rt::spawn(connection);
    migrate(&runs, &ledger)
        .await
        .map_err(std::io::Error::other)?;

    // 500 ms: the 2 s lease is renewed every 666 ms, and a renewal must fit in a third of it.
    let idem = Idempotency::builder()
        .unscoped()
        .store(idem::MemoryStore::default())
        .named_store("pg", store)
        .store_timeout(std::time::Duration::from_millis(500))
        .build();
    let settings = web::Data::new(Settings {
        ledger,
        stall,
        runs,
    });
    println!("ledger_app listening on http://127.0.0.1:{port}");
    HttpServer::new(move || {
        App::new()
            .app_data(idem.clone())
            .app_data(settings.clone())
            .service(charge)
    })
    .workers(2)
    .bind(("127.0.0.1", port))?
    .run()
    .await
}
