//! The PostgreSQL reaper against a concurrent `begin`, with two sessions and no timing: the
//! reaper must never delete a row that another session revived while the reaper looked at it.

mod common;

use common::pg;
use std::time::{Duration, Instant};

/// Session A revives an expired row (as `begin` takes an expired key over) and holds it; the
/// reaper runs meanwhile; A commits. The revived row must survive, and an expired row nobody
/// touches is still reaped.
#[actix_web::test]
async fn the_reaper_never_deletes_a_row_a_concurrent_begin_revived() {
    let table = pg::table("reaper");
    let Some(store) = pg::store(
        "the_reaper_never_deletes_a_row_a_concurrent_begin_revived",
        &table,
    )
    .await
    else {
        return;
    };
    let db = pg::client().await;
    db.batch_execute(&format!(
        "INSERT INTO {table} (key, fingerprint, state, token, attempt, acquired_at, lease_until, expires_at)
         VALUES ('revived', '\\x00', 'c', 1, 1, now() - interval '2 hours', now() - interval '2 hours', now() - interval '1 hour'),
                ('stale',   '\\x00', 'c', 2, 1, now() - interval '2 hours', now() - interval '2 hours', now() - interval '1 hour')"
    ))
    .await
    .expect("insert expired rows");

    // Session A: the takeover, not yet committed.
    let a = pg::client().await;
    a.batch_execute(&format!(
        "BEGIN; UPDATE {table} SET state = 'p', token = 3, attempt = 2, acquired_at = now(),
                lease_until = now() + interval '1 hour', expires_at = now() + interval '1 day'
          WHERE key = 'revived'"
    ))
    .await
    .expect("session A revives the row");

    // The reaper, in session B: it either skips the locked row or waits for it.
    let reaper = store.clone();
    let reap = tokio::spawn(async move { reaper.reap_once().await });
    let started = Instant::now();
    loop {
        if reap.is_finished() {
            break;
        }
        let waiting: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE wait_event_type = 'Lock' AND query LIKE 'DELETE FROM %' AND datname = current_database()",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the reaper neither ran nor waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.batch_execute("COMMIT").await.expect("session A commits");
    let reaped = reap.await.expect("reaper task").expect("reap");

    let rows: Vec<String> = db
        .query(&format!("SELECT key FROM {table} ORDER BY key"), &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        rows,
        ["revived"],
        "the revived row survives; the stale one is reaped"
    );
    assert_eq!(reaped, 1);
    pg::drop_tables(&db, &[&table]).await;
}

/// `live` live rows, analyzed (the statistics say nothing has expired), then `expired` expired
/// ones: what a busy table looks like to the planner between two autovacuum analyses.
async fn stale_statistics(
    db: &idem_runtime::tokio_postgres::Client,
    table: &str,
    live: u32,
    expired: u32,
) {
    db.batch_execute(&format!(
        "INSERT INTO {table} (key, fingerprint, state, token, attempt, acquired_at, lease_until, expires_at)
         SELECT 'live-' || g, '\\x00', 'c', g, 1, now(), now(), now() + interval '1 day'
           FROM generate_series(1, {live}) g;
         ANALYZE {table};
         INSERT INTO {table} (key, fingerprint, state, token, attempt, acquired_at, lease_until, expires_at)
         SELECT 'gone-' || g, '\\x00', 'c', g, 1, now(), now(), now() - interval '1 second'
           FROM generate_series(1, {expired}) g;"
    ))
    .await
    .expect("rows");
}

/// A reaper batch stays a batch when the planner does not expect expired rows (statistics taken
/// before they expired, as on any busy table): at most 1000 rows per statement, so that each
/// statement's locks and time stay bounded, and a pass over many expired rows is many short
/// statements.
#[actix_web::test]
async fn a_reaper_batch_deletes_at_most_1000_rows_whatever_the_statistics() {
    let table = pg::table("reaper_batch");
    let Some(store) = pg::store(
        "a_reaper_batch_deletes_at_most_1000_rows_whatever_the_statistics",
        &table,
    )
    .await
    else {
        return;
    };
    let db = pg::client().await;
    stale_statistics(&db, &table, 20000, 3000).await;
    let first = store.reap_once().await.expect("one batch");
    assert!(first <= 1000, "one batch deleted {first} rows");
    let all = first + store.reap_all().await.expect("a pass");
    assert_eq!(all, 3000, "every expired row, and only those");
    assert_eq!(pg::count(&db, &table).await, 20000);
    pg::drop_tables(&db, &[&table]).await;
}

/// A reaper batch costs what its 1000 rows cost, however many rows have expired: with
/// statistics that expect none expired, the delete must still find its batch by primary key,
/// not walk every expired row of the expiry index and filter. Counted in index tuples read
/// (PostgreSQL's own statistics), not timed.
#[actix_web::test]
async fn a_reaper_batch_reads_its_batch_not_every_expired_row() {
    let table = pg::table("reaper_reads");
    let Some(store) = pg::store(
        "a_reaper_batch_reads_its_batch_not_every_expired_row",
        &table,
    )
    .await
    else {
        return;
    };
    let db = pg::client().await;
    stale_statistics(&db, &table, 20000, 20000).await;
    let sql = format!(
        "SELECT pg_stat_clear_snapshot(), (SELECT idx_tup_read FROM pg_stat_user_indexes
          WHERE indexrelname = '{table}_expires')"
    );
    let read = async || -> i64 {
        let row = db.query_one(&sql, &[]).await.expect("index statistics");
        row.get(1)
    };
    let before = read().await;
    assert_eq!(store.reap_once().await.expect("one batch"), 1000);
    // An idle backend hands its counters to the view within ~10 s; wait for them (bounded).
    let mut after = read().await;
    for _ in 0..150 {
        if after > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = read().await;
    }
    let tuples = after - before;
    assert!(
        tuples > 0 && tuples < 5_000,
        "one batch of 1000 read {tuples} entries of the expiry index (20000 expired rows)"
    );
    pg::drop_tables(&db, &[&table]).await;
}
