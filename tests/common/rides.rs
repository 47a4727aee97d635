//! A multi-step rides app in-process, on the local PostgreSQL, for the `Steps` and completer
//! tests: a ride row (`create_ride`), a charge at a counted fake processor (`charge`, a foreign
//! step whose downstream keys are recorded) and a receipt row (`send_receipt`), with switches
//! that fail, stall or rename steps to play crashes and deploys.

use actix_web::{post, web, HttpResponse};
use idem::{idempotent, IdempotencyContext};
use idem_runtime::tokio_postgres::Client;
use idem_runtime::{StepError, Steps};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::pg;

/// The app's state: its rows table, calls to the "processor", and what the next run does.
pub struct World {
    pub rows: String,
    pub processor_calls: AtomicU64,
    pub downstream_keys: Mutex<Vec<String>>,
    /// What `IdempotencyContext::downstream_key` said for the same step.
    pub context_keys: Mutex<Vec<String>>,
    /// Fail the next run right after this step ("" for none).
    pub fail_after: Mutex<String>,
    /// Call the second step `charge_card` instead of `charge` (a deploy renamed it).
    pub renamed: AtomicBool,
    /// Hang forever right after this step ("" for none): the instance "dies" there, its lease
    /// runs out (the test app does not renew it).
    pub stall_after: Mutex<String>,
    /// Fail every run after `charge`.
    pub fail_forever: AtomicBool,
    /// The processor refuses this many more charges (the foreign step returns an error).
    pub charge_failures: AtomicU32,
}

impl World {
    fn fail_here(&self, step: &str) -> bool {
        let mut f = self.fail_after.lock().unwrap();
        if *f == step {
            f.clear();
            return true;
        }
        step == "charge" && self.fail_forever.load(Ordering::SeqCst)
    }

    async fn maybe_stall(&self, step: &str) {
        let stall = {
            let mut s = self.stall_after.lock().unwrap();
            let here = *s == step;
            if here {
                s.clear();
            }
            here
        };
        if stall {
            std::future::pending::<()>().await;
        }
    }

    /// The downstream keys the processor was called with, each once.
    pub fn distinct_downstream_keys(&self) -> usize {
        let mut keys = self.downstream_keys.lock().unwrap().clone();
        keys.sort();
        keys.dedup();
        keys.len()
    }
}

/// A ride's request body.
#[derive(serde::Deserialize)]
pub struct NewRide {
    pub rider: String,
}

/// The rides handler's body, shared by the endpoints of both guarantees.
pub async fn ride(
    body: web::Json<NewRide>,
    steps: &Steps,
    ctx: &IdempotencyContext,
    world: &World,
) -> Result<HttpResponse, StepError> {
    let table = world.rows.clone();
    let ride: i64 = steps
        .run("create_ride", async |tx| {
            let sql = format!("INSERT INTO {table} (kind, what) VALUES ('ride', $1) RETURNING id");
            tx.query_one(&sql, &[&body.rider]).await.map(|r| r.get(0))
        })
        .await?;
    world.maybe_stall("create_ride").await;
    if world.fail_here("create_ride") {
        return Ok(HttpResponse::ServiceUnavailable().finish());
    }
    let charge_step = if world.renamed.load(Ordering::SeqCst) {
        "charge_card"
    } else {
        "charge"
    };
    let rider = body.rider.clone();
    let charge: String = steps
        .foreign(charge_step, async |key| {
            world.processor_calls.fetch_add(1, Ordering::SeqCst);
            world.downstream_keys.lock().unwrap().push(key.to_owned());
            let same = ctx.downstream_key(charge_step);
            world.context_keys.lock().unwrap().push(same);
            let refuse = world
                .charge_failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if refuse {
                return Err(std::io::Error::other("the processor is down"));
            }
            Ok(format!("ch_{ride}_{rider}"))
        })
        .await?;
    if world.fail_here("charge") {
        return Ok(HttpResponse::ServiceUnavailable().finish());
    }
    let table = world.rows.clone();
    steps
        .run("send_receipt", async |tx| {
            let sql = format!("INSERT INTO {table} (kind, what) VALUES ('receipt', $1)");
            tx.execute(&sql, &[&charge]).await
        })
        .await?;
    Ok(
        HttpResponse::Created()
            .json(json!({ "ride": ride, "charge": charge, "rider": body.rider })),
    )
}

#[post("/rides")]
#[idempotent(store = "pg", guarantee = "result", name = "rides", lease = "1s")]
pub async fn rides(
    body: web::Json<NewRide>,
    steps: Steps,
    ctx: IdempotencyContext,
    world: web::Data<World>,
) -> Result<HttpResponse, StepError> {
    ride(body, &steps, &ctx, &world).await
}

/// The world of one test: its store, state, a client and the tables to drop.
pub async fn setup(
    test: &str,
) -> Option<(
    idem_runtime::PostgresStore,
    web::Data<World>,
    Client,
    Vec<String>,
)> {
    let records = pg::table("steps_rec");
    let store = pg::store(test, &records).await?;
    let db = pg::client().await;
    let rows = pg::table("steps_rows");
    db.batch_execute(&format!(
        "CREATE TABLE {rows} (id bigserial PRIMARY KEY, kind text NOT NULL, what text NOT NULL)"
    ))
    .await
    .unwrap();
    let world = web::Data::new(World {
        rows: rows.clone(),
        processor_calls: AtomicU64::new(0),
        downstream_keys: Mutex::new(Vec::new()),
        context_keys: Mutex::new(Vec::new()),
        fail_after: Mutex::new(String::new()),
        renamed: AtomicBool::new(false),
        stall_after: Mutex::new(String::new()),
        fail_forever: AtomicBool::new(false),
        charge_failures: AtomicU32::new(0),
    });
    Some((store, world, db, vec![rows, records]))
}

/// The secret of the test apps.
pub const SECRET: &str = "steps-test-secret-0123456789abcdef";

/// The `Idempotency` of the test apps on `store`, scoped by `Authorization`: sealing under one
/// secret, a store deadline short enough for a 1 s lease; `renew` off plays an instance that
/// died (its lease lapses).
pub fn idem(store: &idem_runtime::PostgresStore, renew: bool) -> idem::Idempotency {
    super::builder()
        .secret(SECRET)
        .store_timeout(Duration::from_millis(300))
        .renew_leases(renew)
        .named_store("pg", store.clone())
        .build()
}

/// POSTs `body` to `path` with `key` and `headers`: status, whether it was a replay, the JSON
/// body.
pub async fn post_as<S: idem_runtime::testing::TestApp>(
    app: &S,
    path: &str,
    key: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (u16, bool, Value) {
    let mut req = actix_web::test::TestRequest::post()
        .uri(path)
        .insert_header(("Idempotency-Key", key))
        .set_json(body);
    for (name, value) in headers {
        req = req.append_header((*name, *value));
    }
    let resp = actix_web::test::call_service(app, req.to_request()).await;
    let status = resp.status().as_u16();
    let replayed = resp.headers().contains_key("idempotent-replayed");
    let body = actix_web::test::read_body(resp).await;
    (
        status,
        replayed,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

/// POSTs ada's ride with `key`: status, whether it was a replay, the JSON body.
pub async fn post<S: idem_runtime::testing::TestApp>(
    app: &S,
    path: &str,
    key: &str,
) -> (u16, bool, Value) {
    post_as(app, path, key, &[], json!({ "rider": "ada" })).await
}

/// Rides and receipts in `rows`.
pub async fn kinds(db: &Client, rows: &str) -> (i64, i64) {
    let r = db
        .query_one(
            &format!(
                "SELECT count(*) FILTER (WHERE kind = 'ride'), count(*) FILTER (WHERE kind = 'receipt') FROM {rows}"
            ),
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

/// Waits (at most `within`) until `rows` holds a receipt.
pub async fn until_receipt(db: &Client, rows: &str, within: Duration) -> Duration {
    until_receipts(db, rows, 1, within).await
}

/// Waits (at most `within`) until `rows` holds `n` receipts.
pub async fn until_receipts(db: &Client, rows: &str, n: i64, within: Duration) -> Duration {
    let t0 = Instant::now();
    while kinds(db, rows).await.1 < n {
        assert!(t0.elapsed() < within, "not finished within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t0.elapsed()
}

/// Stored requests (`<records>_requests` rows) left in `records`.
pub async fn stored_requests(db: &Client, records: &str) -> i64 {
    pg::count(db, &format!("{records}_requests")).await
}

/// Sends `request` to an app playing an instance that dies right after its first step: it
/// hangs there (the test app does not renew its lease, which lapses) and gets no answer.
pub async fn die_after_first_step<F: std::future::Future>(world: &World, request: F) {
    *world.stall_after.lock().unwrap() = "create_ride".into();
    let answer = tokio::time::timeout(Duration::from_millis(300), request).await;
    assert!(
        answer.is_err(),
        "the first attempt hangs, as a dead instance would"
    );
}

/// Drops the tables `setup` made.
pub async fn drop_tables(db: &Client, tables: &[String]) {
    pg::drop_tables(db, &tables.iter().map(String::as_str).collect::<Vec<_>>()).await;
}
