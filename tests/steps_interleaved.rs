//! Takeovers interleaved, inside PostgreSQL, with the commit of a step by a holder whose lease
//! lapsed (a store slower than its renewals), on the local PostgreSQL: the step's commit is
//! held open by a deferred trigger waiting on an advisory lock, so that another request's
//! `begin` takes its snapshot before the step is visible and meets the step's row lock. That
//! `begin` must still see the step: a retry with another payload gets 422 (it does not resume
//! the steps), and a new operation under an expired key does not inherit the old one's step.

mod common;

use common::rides::{drop_tables, idem, post_as, rides, setup, World};
use idem_runtime::tokio_postgres::Client;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Advisory locks the rows table's triggers wait on: the first before a row is inserted (the
/// step's own code, before its fence), the second at the step's commit (after its fence).
struct Holds {
    before: i64,
    at_commit: i64,
}

/// Makes every insert into `rows` wait on `holds` (both taken here first, on `db`'s session).
async fn hold_steps(db: &Client, rows: &str, holds: &Holds) {
    let (b, c) = (holds.before, holds.at_commit);
    db.batch_execute(&format!(
        "CREATE FUNCTION {rows}_before() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM pg_advisory_xact_lock_shared({b}); RETURN NEW; END $$;
         CREATE FUNCTION {rows}_commit() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM pg_advisory_xact_lock_shared({c}); RETURN NULL; END $$;
         CREATE TRIGGER {rows}_before BEFORE INSERT ON {rows}
           FOR EACH ROW EXECUTE FUNCTION {rows}_before();
         CREATE CONSTRAINT TRIGGER {rows}_commit AFTER INSERT ON {rows}
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {rows}_commit();
         SELECT pg_advisory_lock({b}), pg_advisory_lock({c});"
    ))
    .await
    .unwrap();
}

/// Releases the advisory lock `lock` held by `db`'s session.
async fn unlock(db: &Client, lock: i64) {
    db.execute("SELECT pg_advisory_unlock($1)", &[&lock])
        .await
        .unwrap();
}

/// Drops the tables and the trigger functions.
async fn clean_up(db: &Client, tables: &[String]) {
    let rows = &tables[0];
    drop_tables(db, tables).await;
    let functions = format!("DROP FUNCTION IF EXISTS {rows}_before(), {rows}_commit()");
    db.batch_execute(&functions).await.unwrap();
}

/// Waits until a session waits for the advisory lock `lock`.
async fn until_waiting_on(db: &Client, lock: i64) {
    let sql = "SELECT count(*) FROM pg_locks
                WHERE locktype = 'advisory' AND NOT granted AND classid = 0 AND objid = $1::bigint::oid";
    until(db, sql, &lock).await;
}

/// Waits until a statement naming `table` waits for a row lock.
async fn until_blocked_on(db: &Client, table: &str) {
    let sql = "SELECT count(*) FROM pg_stat_activity
                WHERE wait_event_type = 'Lock' AND wait_event <> 'advisory'
                  AND strpos(query, $1) > 0";
    until(db, sql, &table).await;
}

async fn until(
    db: &Client,
    sql: &str,
    param: &(dyn idem_runtime::tokio_postgres::types::ToSql + Sync),
) {
    let t0 = Instant::now();
    loop {
        let n: i64 = db.query_one(sql, &[param]).await.unwrap().get(0);
        if n > 0 {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "never waited: {sql}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// ada's first attempt stalls inside its first step's transaction; meanwhile its record is
/// made `lapsed` (an SQL `SET` on the record row: its lease, and maybe its expiry), the step
/// is fenced and left waiting at its commit, and `body` is sent with the same key — its
/// `begin` waits for the step's row lock (when it `blocks`: it needs the row) and goes on once
/// the step committed; then each of `then`, in turn. Returns the answers to ada's attempt, to
/// `body` and to each of `then`.
async fn interleave(
    test: &str,
    holds: Holds,
    lapsed: &str,
    body: Body,
    blocks: bool,
    then: &[Body],
) -> Option<(Answer, Answer, Vec<Answer>, Client, Vec<String>)> {
    let (store, world, db, tables) = setup(test).await?;
    let app = actix_web::test::init_service(
        actix_web::App::new()
            .app_data(idem(&store, false))
            .app_data(world.clone())
            .service(rides),
    )
    .await;
    hold_steps(&db, &tables[0], &holds).await;
    let first = post_as(&app, "/rides", "i1", &[], json!({ "rider": "ada" }));
    let script = async {
        until_waiting_on(&db, holds.before).await;
        let lapse = format!("UPDATE {} SET {lapsed}", tables[1]);
        db.batch_execute(&lapse).await.unwrap();
        unlock(&db, holds.before).await;
        until_waiting_on(&db, holds.at_commit).await;
        let release = async {
            if blocks {
                until_blocked_on(&db, &format!("INSERT INTO {} AS r", tables[1])).await;
            }
        };
        let (other, ()) = tokio::join!(send(&app, body), async {
            release.await;
            if blocks {
                unlock(&db, holds.at_commit).await;
            }
        });
        if !blocks {
            unlock(&db, holds.at_commit).await;
        }
        other
    };
    let (first, other) = tokio::join!(first, script);
    let mut after = Vec::new();
    for body in then {
        after.push(send(&app, body.clone()).await);
    }
    let _: &World = &world;
    Some((first, other, after, db, tables))
}

/// An answer: status, whether it was a replay, the JSON body.
type Answer = (u16, bool, Value);

/// A request body: JSON, or raw bytes sent as JSON (that its extractor may refuse).
#[derive(Clone)]
enum Body {
    Json(Value),
    Raw(&'static str),
}

/// POSTs `body` to `/rides` with the key `i1`.
async fn send<S: idem_runtime::testing::TestApp>(app: &S, body: Body) -> Answer {
    match body {
        Body::Json(v) => post_as(app, "/rides", "i1", &[], v).await,
        Body::Raw(raw) => {
            let req = actix_web::test::TestRequest::post()
                .uri("/rides")
                .insert_header(("Idempotency-Key", "i1"))
                .insert_header(("content-type", "application/json"))
                .set_payload(raw)
                .to_request();
            let resp = actix_web::test::call_service(app, req).await;
            (resp.status().as_u16(), false, Value::Null)
        }
    }
}

/// The lapsed holder's first step commits while a retry with another payload begins: the
/// retry is refused (422) without waiting for the step — the stored request, committed before
/// any step ran, already says the operation is held — and ada's operation goes on under its
/// own lease.
#[actix_web::test]
async fn a_step_committed_during_a_takeover_still_refuses_another_payload() {
    let holds = Holds {
        before: 7_320_011,
        at_commit: 7_320_012,
    };
    let lapsed = "lease_until = now() - interval '1 second'";
    let Some((first, other, _, db, tables)) = interleave(
        "a_step_committed_during_a_takeover_still_refuses_another_payload",
        holds,
        lapsed,
        Body::Json(json!({ "rider": "bob" })),
        false,
        &[],
    )
    .await
    else {
        return;
    };
    assert_eq!(other.0, 422, "another payload: {:?}", other.2);
    assert_eq!(first.0, 201, "{:?}", first.2);
    assert_eq!(first.2["rider"], "ada");
    clean_up(&db, &tables).await;
}

/// The holder's record expired (not reaped yet) and its first step commits while carol's new
/// operation under the key begins: carol's operation starts afresh — her own ride, not ada's.
#[actix_web::test]
async fn a_step_committed_during_an_expired_takeover_is_not_inherited() {
    let holds = Holds {
        before: 7_320_021,
        at_commit: 7_320_022,
    };
    let lapsed =
        "lease_until = now() - interval '1 second', expires_at = now() - interval '1 second'";
    let Some((_, other, _, db, tables)) = interleave(
        "a_step_committed_during_an_expired_takeover_is_not_inherited",
        holds,
        lapsed,
        Body::Json(json!({ "rider": "carol" })),
        true,
        &[],
    )
    .await
    else {
        return;
    };
    assert_eq!(other.0, 201, "{:?}", other.2);
    assert_eq!(other.2["rider"], "carol");
    let carol: Vec<i64> = db
        .query(
            &format!(
                "SELECT id FROM {} WHERE kind = 'ride' AND what = 'carol'",
                tables[0]
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(carol.len(), 1, "carol's own ride was created");
    assert_eq!(other.2["ride"], carol[0], "and answered, not ada's");
    clean_up(&db, &tables).await;
}

/// As above, but the new operation's first attempt is refused before `Steps` ran (its body
/// does not parse: 400), so the old operation's step is still there: it must not hold the key
/// against carol's corrected body (a 422 until the TTL ends), which starts afresh.
#[actix_web::test]
async fn a_stale_step_does_not_lock_the_key_of_a_new_operation() {
    let holds = Holds {
        before: 7_320_031,
        at_commit: 7_320_032,
    };
    let lapsed =
        "lease_until = now() - interval '1 second', expires_at = now() - interval '1 second'";
    let Some((_, refused, after, db, tables)) = interleave(
        "a_stale_step_does_not_lock_the_key_of_a_new_operation",
        holds,
        lapsed,
        Body::Raw("{\"rider\": 7}"),
        true,
        &[Body::Json(json!({ "rider": "carol" }))],
    )
    .await
    else {
        return;
    };
    assert_eq!(refused.0, 400);
    let carol = &after[0];
    assert_eq!(carol.0, 201, "{:?}", carol.2);
    assert_eq!(carol.2["rider"], "carol");
    clean_up(&db, &tables).await;
}
