//! Multi-step operations across crashes (issue: recovery points): `examples/rides.rs` creates a
//! ride (PostgreSQL), charges it at `examples/processor.rs` (a process of its own that counts
//! requests and distinct charges) and queues a receipt (an outbox row). At each step boundary
//! the app `kill -9`s itself; then it restarts and either the client retries, or nobody does
//! and the completer finishes the operation. Every time: exactly one ride, one charge, one
//! receipt, and the client's (later) retry gets the final response.

mod common;

use common::demo::{free_port, start_example, Demo};
use common::pg;
use serde_json::{json, Value};
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

/// Where the app kills itself: after each step, and inside the charge step between the
/// processor's answer and its record.
const BOUNDARIES: [&str; 4] = [
    "after:create_ride",
    "during:charge",
    "after:charge",
    "after:send_receipt",
];

/// One run's world: a processor, fresh tables, and how to start the rides app on them.
struct World {
    _processor: Demo,
    processor: String,
    rides: String,
    records: String,
    db: idem_runtime::tokio_postgres::Client,
}

impl World {
    async fn new() -> World {
        let port = free_port();
        let processor = start_example("processor", port, &[]).await;
        World {
            _processor: processor,
            processor: format!("http://127.0.0.1:{port}"),
            rides: pg::table("rides"),
            records: pg::table("rides_rec"),
            db: pg::client().await,
        }
    }

    /// The rides app on a free port: its process and base URL.
    async fn app(&self, failpoint: &str, completer_ms: u64) -> (Demo, String) {
        self.app_scoped(failpoint, completer_ms, "").await
    }

    /// Like [`app`](Self::app), its keys scoped as `RIDES_SCOPE=scope` says.
    async fn app_scoped(&self, failpoint: &str, completer_ms: u64, scope: &str) -> (Demo, String) {
        self.app_with(failpoint, completer_ms, &[("RIDES_SCOPE", scope)])
            .await
    }

    /// Like [`app`](Self::app), with `extra` environment.
    async fn app_with(
        &self,
        failpoint: &str,
        completer_ms: u64,
        extra: &[(&str, &str)],
    ) -> (Demo, String) {
        let port = free_port();
        let mut env = vec![
            ("PROCESSOR_URL", self.processor.clone()),
            ("RIDES_TABLE", self.rides.clone()),
            ("IDEM_TABLE", self.records.clone()),
            ("RIDES_FAILPOINT", failpoint.to_owned()),
            ("COMPLETER_MS", completer_ms.to_string()),
            ("IDEM_PG", pg::config()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let app = start_example("rides", port, &env).await;
        (app, format!("http://127.0.0.1:{port}"))
    }

    async fn count(&self, table: &str) -> i64 {
        pg::count(&self.db, table).await
    }

    async fn processor_stats(&self) -> Value {
        common::client()
            .get(format!("{}/stats", self.processor))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// One ride, one receipt, one charge made at the processor.
    async fn assert_exactly_once(&self, case: &str) {
        assert_eq!(self.count(&self.rides).await, 1, "{case}: rides");
        assert_eq!(
            self.count(&format!("{}_outbox", self.rides)).await,
            1,
            "{case}: receipts"
        );
        let stats = self.processor_stats().await;
        assert_eq!(stats["charges"], 1, "{case}: charges made: {stats}");
    }

    /// Whether the operation finished: its receipt is queued and its stored request (kept from
    /// its first attempt until it completes) is gone.
    async fn completed(&self) -> bool {
        let outbox = format!("{}_outbox", self.rides);
        let requests = format!("{}_requests", self.records);
        self.count(&outbox).await == 1 && self.count(&requests).await == 0
    }

    async fn drop_tables(&self) {
        let outbox = format!("{}_outbox", self.rides);
        pg::drop_tables(&self.db, &[&self.rides, &outbox, &self.records]).await;
    }
}

/// Whether the local PostgreSQL is there (one skip line if not; a failure with `CI` set).
async fn pg_available(test: &str) -> bool {
    let probe = pg::table("probe");
    if pg::store(test, &probe).await.is_none() {
        return false;
    }
    pg::drop_tables(&pg::client().await, &[&probe]).await;
    true
}

async fn post(base: &str, key: &str) -> Result<(u16, bool, Value), reqwest::Error> {
    post_as(base, key, "").await
}

/// Like [`post`], sent for `account` (`X-Account-Id`) unless it is empty.
async fn post_as(
    base: &str,
    key: &str,
    account: &str,
) -> Result<(u16, bool, Value), reqwest::Error> {
    let mut r = common::client()
        .post(format!("{base}/rides"))
        .header("Idempotency-Key", key);
    if !account.is_empty() {
        r = r.header("x-account-id", account);
    }
    let r = r
        .json(&json!({ "rider": "ada", "fare": 1200 }))
        .send()
        .await?;
    let status = r.status().as_u16();
    let replayed = r.headers().contains_key("idempotent-replayed");
    let body = r.json().await.unwrap_or(Value::Null);
    Ok((status, replayed, body))
}

/// The first attempt: the request dies with the app, killed by signal 9 at `failpoint`.
async fn crash(world: &World, failpoint: &str, key: &str) {
    let (mut app, base) = world.app(failpoint, 0).await;
    let answer = post(&base, key).await;
    assert!(answer.is_err(), "{failpoint}: the app answered: {answer:?}");
    let status = app.exited(Duration::from_secs(10)).await;
    assert_eq!(
        status.and_then(|s| s.signal()),
        Some(9),
        "{failpoint}: killed by SIGKILL"
    );
}

#[actix_web::test]
async fn a_client_retry_after_a_kill_at_each_boundary_finishes_once() {
    if !pg_available("a_client_retry_after_a_kill_at_each_boundary_finishes_once").await {
        return;
    }
    for failpoint in BOUNDARIES {
        let world = World::new().await;
        let key = format!("retry-{failpoint}");
        crash(&world, failpoint, &key).await;
        // Restarted without a completer: only the client brings the operation to its end.
        let (_app, base) = world.app("", 0).await;
        let t0 = Instant::now();
        let (status, replayed, body) = loop {
            let answer = post(&base, &key).await.expect("the restarted app answers");
            // 409 while the dead attempt's lease (2 s) runs out.
            if answer.0 != 409 {
                break answer;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{failpoint}: still 409"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(status, 201, "{failpoint}: {body}");
        // After the last step the operation had finished but for its record: the retry runs the
        // handler once more, every step replayed from its record.
        assert!(!replayed, "{failpoint}: the retry finished it");
        world.assert_exactly_once(failpoint).await;
        let (again, replayed, body2) = post(&base, &key).await.unwrap();
        assert_eq!((again, replayed), (201, true), "{failpoint}");
        assert_eq!(body, body2, "{failpoint}: the same response");
        if failpoint == "during:charge" {
            // The processor saw the charge twice and made it once: the derived key.
            assert_eq!(world.processor_stats().await["requests"], 2);
        }
        world.drop_tables().await;
    }
}

#[actix_web::test]
async fn without_a_client_retry_the_completer_finishes_within_its_bound() {
    if !pg_available("without_a_client_retry_the_completer_finishes_within_its_bound").await {
        return;
    }
    for failpoint in BOUNDARIES {
        let world = World::new().await;
        let key = format!("completer-{failpoint}");
        crash(&world, failpoint, &key).await;
        // Restarted with its completer (every 200 ms); the client stays away.
        let (_app, base) = world.app("", 200).await;
        let t0 = Instant::now();
        loop {
            if world.completed().await {
                eprintln!(
                    "{failpoint}: finished by the completer {:?} after the restart",
                    t0.elapsed()
                );
                break;
            }
            // The bound: the lease (2 s) + the completer's period (0.2 s) + the handler and the
            // app's start (well under 1 s here).
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "{failpoint}: not finished within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        world.assert_exactly_once(failpoint).await;
        let (status, replayed, body) = post(&base, &key).await.unwrap();
        assert_eq!((status, replayed), (201, true), "{failpoint}: {body}");
        assert_eq!(body["receipt"], "queued");
        world.drop_tables().await;
    }
}

/// Keys scoped by the account a gateway puts in `X-Account-Id`, a header the stored request
/// does not keep: killed after its first step, the operation is finished by the restarted app's
/// completer under its recorded account (not as an anonymous request: a second ride and charge),
/// and the client's retry replays it.
#[actix_web::test]
async fn the_completer_resumes_a_killed_operation_under_its_account() {
    if !pg_available("the_completer_resumes_a_killed_operation_under_its_account").await {
        return;
    }
    let world = World::new().await;
    let (mut app, base) = world.app_scoped("after:create_ride", 0, "header").await;
    assert!(post_as(&base, "scoped", "acct_ada").await.is_err());
    let status = app.exited(Duration::from_secs(10)).await;
    assert_eq!(status.and_then(|s| s.signal()), Some(9));
    let (_app, base) = world.app_scoped("", 200, "header").await;
    let t0 = Instant::now();
    while !world.completed().await {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "not finished within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A second operation, had the completer started one, would show within a few passes.
    tokio::time::sleep(Duration::from_millis(600)).await;
    world.assert_exactly_once("scoped").await;
    let (status, replayed, body) = post_as(&base, "scoped", "acct_ada").await.unwrap();
    assert_eq!((status, replayed), (201, true), "{body}");
    world.assert_exactly_once("scoped, after the retry").await;
    assert_eq!(world.processor_stats().await["requests"], 1);
    world.drop_tables().await;
}

/// The app secret rotated while an operation was in flight: the app is killed after the
/// processor answered the charge and before its result was recorded, under the old secret; it
/// restarts with the new secret and the old one as previous, and its completer finishes the
/// operation under its recorded key and the old derivation — the processor sees the charge
/// again under the same downstream key and makes it once.
#[actix_web::test]
async fn a_rotation_mid_operation_charges_once() {
    if !pg_available("a_rotation_mid_operation_charges_once").await {
        return;
    }
    let world = World::new().await;
    let old = [("IDEM_SECRET", "rides-old-secret-0123456789abcdef")];
    let (mut app, base) = world.app_with("during:charge", 0, &old).await;
    assert!(post(&base, "rotated").await.is_err());
    let status = app.exited(Duration::from_secs(10)).await;
    assert_eq!(status.and_then(|s| s.signal()), Some(9));
    let rotated = [
        ("IDEM_SECRET", "rides-new-secret-0123456789abcdef"),
        ("IDEM_PREVIOUS_SECRETS", "rides-old-secret-0123456789abcdef"),
    ];
    let (_app, base) = world.app_with("", 200, &rotated).await;
    let t0 = Instant::now();
    while !world.completed().await {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "not finished within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    world.assert_exactly_once("rotated").await;
    assert_eq!(
        world.processor_stats().await["requests"],
        2,
        "seen twice under one key, made once"
    );
    let (status, replayed, body) = post(&base, "rotated").await.unwrap();
    assert_eq!((status, replayed), (201, true), "{body}");
    world.drop_tables().await;
}
