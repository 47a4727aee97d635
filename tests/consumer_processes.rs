//! `examples/consumer.rs` as a real process on a private Redis and the local PostgreSQL: 1,000
//! messages in a stream, the consumer `kill -9`ed twice mid-stream and started again. The
//! messages in flight at each kill are redelivered (`XAUTOCLAIM`), and each message's effect —
//! a ledger row, which a second application would duplicate — is applied exactly once.

mod common;

use common::demo::example_binary;
use common::redis::{available, RedisServer};
use redis::AsyncCommands;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MESSAGES: usize = 1000;

/// One consumer process, its output in a file.
fn start(redis: &RedisServer, ledger: &str, records: &str, out: &std::path::Path) -> Child {
    let log = std::fs::File::create(out).expect("a log file");
    Command::new(example_binary("consumer"))
        .env("IDEM_REDIS_URL", redis.url())
        .env("IDEM_PG", common::pg::config())
        .env("STREAM", "payments")
        .env("GROUP", "ledger")
        .env("LEDGER_TABLE", ledger)
        .env("RECORDS_TABLE", records)
        .env("EFFECT_DELAY_MS", "2")
        .env("ACK_DELAY_MS", "2")
        .env("RUST_LOG", "off")
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .expect("start the consumer")
}

/// Waits until `done` says so, at most `limit`.
async fn until(limit: Duration, mut done: impl AsyncFnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_twice_applies_each_message_exactly_once() {
    let test = "a_consumer_killed_twice_applies_each_message_exactly_once";
    let records = common::pg::table("consumer_records");
    // Checks that PostgreSQL is there (and creates the records table).
    if !available(test) || common::pg::store(test, &records).await.is_none() {
        return;
    }
    let ledger = format!("{records}_ledger");
    let db = common::pg::client().await;
    db.batch_execute(&format!(
        "CREATE TABLE {ledger} (msg_id text NOT NULL, account text NOT NULL, amount bigint NOT NULL)"
    ))
    .await
    .expect("create the ledger");
    let redis = RedisServer::start();
    let mut con = redis::Client::open(redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let () = con
        .xgroup_create_mkstream("payments", "ledger", "$")
        .await
        .expect("group");
    for i in 0..MESSAGES {
        let account = format!("acct-{}", i % 7);
        let _: String = con
            .xadd(
                "payments",
                "*",
                &[("account", account), ("amount", i.to_string())],
            )
            .await
            .expect("xadd");
    }

    let rows = async || common::pg::count(&db, &ledger).await as usize;
    let dir = std::env::temp_dir();
    let logs: Vec<_> = (0..3)
        .map(|run| dir.join(format!("{records}_run{run}.log")))
        .collect();
    // Killed twice mid-stream, then left to finish.
    for (run, kill_at) in [(0, 200), (1, 600)] {
        let mut consumer = start(&redis, &ledger, &records, &logs[run]);
        let reached = until(Duration::from_secs(60), async || rows().await >= kill_at).await;
        consumer.kill().expect("kill -9"); // SIGKILL
        let _ = consumer.wait();
        assert!(reached, "run {run}: {kill_at} rows not reached");
    }
    let mut consumer = start(&redis, &ledger, &records, &logs[2]);
    let pending = async |con: &mut redis::aio::MultiplexedConnection| -> usize {
        let summary: redis::Value = redis::cmd("XPENDING")
            .arg("payments")
            .arg("ledger")
            .query_async(con)
            .await
            .expect("xpending");
        match summary {
            redis::Value::Array(parts) => match parts.first() {
                Some(redis::Value::Int(n)) => *n as usize,
                _ => usize::MAX,
            },
            _ => usize::MAX,
        }
    };
    let drained = until(Duration::from_secs(90), async || {
        rows().await >= MESSAGES && pending(&mut con).await == 0
    })
    .await;
    consumer.kill().expect("kill");
    let _ = consumer.wait();

    let applied = rows().await;
    let distinct: i64 = db
        .query_one(&format!("SELECT count(DISTINCT msg_id) FROM {ledger}"), &[])
        .await
        .expect("distinct")
        .get(0);
    let redelivered: usize = logs
        .iter()
        .map(|log| {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("redelivered "))
                .count()
        })
        .sum();
    println!("{MESSAGES} messages, 2 kills: {applied} ledger rows, {distinct} distinct messages, {redelivered} redeliveries");
    assert!(drained, "the stream was not drained: {applied} rows");
    assert_eq!(applied, MESSAGES, "every effect exactly once");
    assert_eq!(distinct as usize, MESSAGES);
    assert!(
        redelivered > 0,
        "messages in flight at the kills were redelivered"
    );

    db.batch_execute(&format!("DROP TABLE {ledger}"))
        .await
        .expect("drop the ledger");
    common::pg::drop_tables(&db, &[&records]).await;
    for log in logs {
        let _ = std::fs::remove_file(log);
    }
}
