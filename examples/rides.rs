//! A multi-step operation with recovery points: `POST /rides` creates a ride (a row in
//! PostgreSQL), charges it at a card processor (another process: `examples/processor.rs`), and
//! queues its receipt (an outbox row). Each step records its result as it finishes; a crash
//! anywhere in between is finished by the client's retry or, without one, by the completer —
//! one ride, one charge, one receipt.
//!
//! ```text
//! PORT=8093 cargo run --example processor &
//! PORT=8092 PROCESSOR_URL=http://127.0.0.1:8093 cargo run --example rides
//! curl -X POST localhost:8092/rides -H 'Idempotency-Key: r1' -H 'Content-Type: application/json' \
//!      -d '{"rider": "ada", "fare": 1200}'
//! ```
//!
//! Environment: `IDEM_PG` (libpq string; default the local `test` database), `RIDES_TABLE`
//! (prefix of its tables; default `rides`: `rides`, `rides_outbox`), `IDEM_TABLE` (the records;
//! default `idem_records`), `PROCESSOR_URL`, `COMPLETER_MS` (the completer's period, default
//! 500; `0` turns it off), `RIDES_SCOPE` (`header`: keys scoped by `X-Account-Id`; default
//! unscoped), `IDEM_SECRET` and `IDEM_PREVIOUS_SECRETS` (comma-separated, during a rotation of
//! the secret), and `RIDES_FAILPOINT`: `after:create_ride`, `during:charge` (the
//! processor answered, its result not yet recorded), `after:charge` or `after:send_receipt` —
//! the process `kill -9`s itself there, the first time it gets there.

use actix_web::{post, web, App, HttpResponse, HttpServer};
use idem::{idempotent, Idempotency};
use idem_runtime::tokio_postgres::{self, NoTls};
// PostgreSQL items come from the runtime: `idem` re-exports them with its own `postgres`
// feature, which a package cannot turn on for its own examples.
use idem_runtime::{PostgresStore, StepError, Steps};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Deserialize)]
struct NewRide {
    rider: String,
    fare: i64,
}

/// The processor's charge, as its API answers.
#[derive(Serialize, Deserialize)]
struct Charge {
    id: String,
    amount: i64,
}

struct Rides {
    table: String,
    processor: String,
    http: reqwest::Client,
    failpoint: String,
}

impl Rides {
    /// `kill -9` of this very process at the failpoint `here`, if it is the one set.
    fn failpoint(&self, here: &str) {
        if self.failpoint == here {
            println!("failpoint {here}: kill -9");
            let _ = std::process::Command::new("kill")
                .args(["-9", &std::process::id().to_string()])
                .status();
            // The signal is on its way; nothing after this point runs.
            std::thread::sleep(Duration::from_secs(60));
        }
    }

    /// The processor's `POST /charges`, deduplicated there on `key`.
    async fn charge(&self, key: &str, amount: i64) -> Result<Charge, reqwest::Error> {
        self.http
            .post(format!("{}/charges", self.processor))
            .header("Idempotency-Key", key)
            .json(&serde_json::json!({ "amount": amount }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }
}

#[post("/rides")]
#[idempotent(
    store = "pg",
    name = "rides.create",
    guarantee = "result",
    lease = "2s",
    ttl = "24h"
)]
async fn create_ride(
    body: web::Json<NewRide>,
    steps: Steps,
    rides: web::Data<Rides>,
) -> Result<HttpResponse, StepError> {
    let t = &rides.table;
    // Step 1, in PostgreSQL: the ride row and its recovery point commit together.
    let ride: i64 = steps
        .run("create_ride", async |tx| {
            let sql = format!("INSERT INTO {t} (rider, fare) VALUES ($1, $2) RETURNING id");
            tx.query_one(&sql, &[&body.rider, &body.fare])
                .await
                .map(|row| row.get(0))
        })
        .await?;
    rides.failpoint("after:create_ride");
    // Step 2, at the processor: the derived key makes a repeated call a replay there.
    let charge: Charge = steps
        .foreign("charge", async |key| {
            let charge = rides.charge(key, body.fare).await?;
            rides.failpoint("during:charge");
            Ok::<_, reqwest::Error>(charge)
        })
        .await?;
    rides.failpoint("after:charge");
    // Step 3, in PostgreSQL: the receipt goes to the outbox.
    steps
        .run("send_receipt", async |tx| {
            let sql = format!("INSERT INTO {t}_outbox (ride, charge) VALUES ($1, $2)");
            tx.execute(&sql, &[&ride, &charge.id]).await
        })
        .await?;
    rides.failpoint("after:send_receipt");
    Ok(HttpResponse::Created().json(serde_json::json!({
        "ride": ride,
        "charge": charge.id,
        "amount": charge.amount,
        "receipt": "queued",
    })))
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
    let table = env_or("RIDES_TABLE", "rides");
    if table.is_empty()
        || !table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(std::io::Error::other(
            "RIDES_TABLE: letters, digits and `_`",
        ));
    }
    let port: u16 = env_or("PORT", "8092")
        .parse()
        .map_err(std::io::Error::other)?;
    let completer_ms: u64 = env_or("COMPLETER_MS", "500").parse().unwrap_or(500);

    let store = PostgresStore::builder(&pg)
        .table(&env_or("IDEM_TABLE", "idem_records"))
        .max_connections(8)
        .connect()
        .await
        .map_err(std::io::Error::other)?;
    let (db, connection) = tokio_postgres::connect(&pg, NoTls)
        .await
        .map_err(std::io::Error::other)?;
    actix_web::rt::spawn(connection);
    db.batch_execute(&format!(
        "BEGIN;
         SELECT pg_advisory_xact_lock(7420553);
         CREATE TABLE IF NOT EXISTS {table} (
             id bigserial PRIMARY KEY, rider text NOT NULL, fare bigint NOT NULL);
         CREATE TABLE IF NOT EXISTS {table}_outbox (
             id bigserial PRIMARY KEY, ride bigint NOT NULL, charge text NOT NULL);
         COMMIT;"
    ))
    .await
    .map_err(std::io::Error::other)?;

    // The secret seals the stored requests and step results, and derives the processor keys:
    // every instance (and every restart) needs the same one.
    let secret = env_or(
        "IDEM_SECRET",
        "rides-demo-secret: set IDEM_SECRET in production",
    );
    // 500 ms: the 2 s lease is renewed every 666 ms, and a renewal must fit in a third of it.
    // `RIDES_SCOPE=header`: keys belong to the account a gateway put in `X-Account-Id`.
    let builder = match env_or("RIDES_SCOPE", "").as_str() {
        "header" => Idempotency::builder().scope_by_header(
            actix_web::http::header::HeaderName::from_static("x-account-id"),
        ),
        _ => Idempotency::builder().unscoped(),
    };
    // `IDEM_PREVIOUS_SECRETS` (comma-separated): secrets used before `IDEM_SECRET`, looked up
    // only, while a rotation runs (docs/secrets.md).
    let previous: Vec<Vec<u8>> = env_or("IDEM_PREVIOUS_SECRETS", "")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.as_bytes().to_vec())
        .collect();
    let idem = builder
        .secret(secret)
        .previous_secrets(previous)
        .named_store("pg", store)
        .store_timeout(Duration::from_millis(500))
        .build();
    let rides = web::Data::new(Rides {
        table,
        processor: env_or("PROCESSOR_URL", "http://127.0.0.1:8093"),
        http: reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(std::io::Error::other)?,
        failpoint: env_or("RIDES_FAILPOINT", ""),
    });
    let app = {
        let (idem, rides) = (idem.clone(), rides.clone());
        move || {
            App::new()
                .app_data(idem.clone())
                .app_data(rides.clone())
                .service(create_ride)
        }
    };
    // Finishes what a crashed instance left, without waiting for its client.
    let _completer = (completer_ms > 0).then(|| {
        idem.completer()
            .every(Duration::from_millis(completer_ms))
            .start(app.clone())
    });
    println!("rides listening on http://127.0.0.1:{port}");
    HttpServer::new(app)
        .workers(2)
        .bind(("127.0.0.1", port))?
        .run()
        .await
}
